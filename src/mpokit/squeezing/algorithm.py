"""Dimension squeezing, MPOP Algorithm 2: cut, fine-tune, re-evaluate, until delta, a budget or a step limit."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from ..layers.base import MPOModule
from ..training import build_optimizer, default_loss
from .checkpoint import load_state, restore_model, save_state
from .log import plot_squeeze_log, write_log
from .modules import find_mpo_modules, resolve_budget, set_lfa_trainable, spectra_of
from .selection import Cut, OutputMetric, check_score, check_step_size, select_cuts
from .training import check_training_settings, evaluate, resolve_task, run_steps

__all__ = ["SqueezeResult", "squeeze"]


@dataclass
class SqueezeResult:
    """What :func:`squeeze` did. ``rows[0]`` is the starting point (step 0); ``initial`` and ``final`` are the
    held-out metrics before squeezing and of the last accepted step."""

    model: nn.Module
    rows: list[dict]
    stop_reason: str
    initial: dict[str, float]
    final: dict[str, float]
    params: int
    budget: int | None
    steps: int
    finetune_steps_total: int = 0
    resumed_from_step: int | None = None
    bond_dims: dict[str, tuple[int, ...]] = field(default_factory=dict)


@dataclass
class _Progress:
    """Where a squeeze is: everything a checkpoint restores besides the model."""

    rows: list[dict]
    step: int  # cut steps made
    pos: int  # next training batch
    p0: dict  # metrics before squeezing
    stop_reason: str | None
    ft_total: int  # fine-tuning steps made
    resumed_from: int | None = None


def squeeze(
    model: nn.Module,
    *,
    train_batches: Sequence,
    eval_batches: Sequence | None = None,
    eval_fn: Callable[[nn.Module], Mapping[str, float]] | None = None,
    task=None,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor] | None = None,
    delta: float | None = None,
    target_params: int | None = None,
    target_ratio: float | None = None,
    max_steps: int = 1000,
    step_size: int | float = 1,
    matrices_per_step: int = 1,
    score: str = "bound",
    monitor: str = "loss",
    finetune_steps: int = 10,
    lr: float = 2e-5,
    mpo_lr: float | None = None,
    weight_decay: float = 0.0,
    max_grad_norm: float | None = 1.0,
    targets: Sequence[str] | None = None,
    rollback: bool = True,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int = 1,
    log_path: str | os.PathLike | None = None,
    plot_path: str | os.PathLike | None = None,
    seed: int = 0,
    on_step: Callable[[nn.Module, dict, torch.optim.Optimizer | None], None] | None = None,
    progress: bool = False,
    identity: Mapping | None = None,
    calibration=None,
) -> SqueezeResult:
    """Dimension squeezing (MPOP Algorithm 2) of every MPO layer of ``model``, in place.

    Args:
        train_batches: a sequence of batches (dicts with ``labels`` for HF models, or
            ``(x, y)`` tuples); step ``t`` of fine-tuning uses ``train_batches[t % len]``,
            so a resumed run sees the same batches.
        eval_batches / eval_fn: held-out batches, scored by :func:`~mpokit.squeezing.evaluate`
            with ``task``, or a callable ``model -> {metric: value}`` (with the ``monitor`` metric).
        task: ``"classify"`` (default), ``"regress"``, ``"lm"`` or a :class:`mpokit.tasks.Task`: the
            metrics of ``eval_batches`` (the task's loss, and its primary metric, also plotted).
        loss_fn: ``(model, batch) -> loss``; default HF ``out.loss`` or cross-entropy.
        delta: stop when ``|p - p~| > delta`` (``p`` = the ``monitor`` metric before squeezing,
            by default the task loss). With ``rollback`` the violating cut is undone (the
            returned model is the last one within delta).
        monitor: the held-out metric that ``delta`` bounds (default ``"loss"``).
        target_params / target_ratio: parameter budget of the MPO matrices (absolute, or a
            fraction of their dense size); cutting continues until it is met.
        max_steps: at most this many cut steps.
        step_size: int ``s``: central bonds ``d -> d - s``; float ``f`` in (0, 1):
            ``d -> d - ceil(f d)`` ("chunked" cuts).
        matrices_per_step: how many matrices (the cheapest ones) are cut before each
            round of fine-tuning (1 = the paper's algorithm); with a budget, the cuts of
            a step stop as soon as the budget is met.
        score: how cuts are ranked, see :data:`SCORES` (default: bound increase, as MPOP).
        finetune_steps, lr, mpo_lr, weight_decay, max_grad_norm: the fine-tuning after
            every cut (AdamW; MPO cores at ``mpo_lr``). Central cores are frozen; auxiliary
            cores train; other parameters keep their ``requires_grad``.
        checkpoint_dir: resume from / save to this folder (safetensors + JSON).
        log_path: write ``<log_path>.json`` and ``<log_path>.csv``; plot_path: PNG.
        on_step: called after every step as ``on_step(model, row, optimizer)``.
        identity: JSON fields that name what is squeezed (e.g. the source model's path and hash and the
            data); saved in the checkpoint, and a checkpoint saved under another identity is refused.
        calibration: a :class:`mpokit.calibration.CalibrationStats` covering every squeezed matrix (by the
            name of the module it belongs to): cuts are then ranked by their output error on that data,
            ``tr((W - W') C (W - W')^T)`` with ``W`` the matrix as it is at that step, instead of the
            Frobenius bound (:class:`~mpokit.squeezing.selection.OutputMetric`).

    Rows (the log) hold the step, the cuts, the parameters, the bounds, the training loss, the held-out
    ``loss``, the ``monitored`` value and every held-out metric under ``metrics``, and ``accepted``.
    """
    check_training_settings(delta, max_steps, finetune_steps, lr, mpo_lr, monitor)
    check_step_size(step_size)
    check_score(score)
    _check_inputs(train_batches, eval_batches, eval_fn, matrices_per_step)
    modules = find_mpo_modules(model, targets)
    objectives = _objectives(modules, calibration) if calibration is not None else None
    if delta is None and target_params is None and target_ratio is None and max_steps == 0:
        raise ValueError("nothing would stop the squeeze sensibly: give delta, a budget or max_steps > 0")
    has_budget = target_params is not None or target_ratio is not None
    budget = resolve_budget(modules, target_params, target_ratio) if has_budget else None
    task_obj = resolve_task(task)
    eval_fn = eval_fn or (lambda m: evaluate(m, eval_batches, task_obj))
    loss_fn = loss_fn or default_loss
    dense_total = sum(m.dense_params for m in modules.values())
    settings = {
        "delta": delta, "budget": budget, "max_steps": max_steps, "step_size": step_size,
        "matrices_per_step": matrices_per_step, "score": score, "monitor": monitor, "finetune_steps": finetune_steps,
        "lr": lr, "mpo_lr": mpo_lr, "weight_decay": weight_decay, "seed": seed, "targets": sorted(modules),
        "task": None if task is None else task_obj.name, "identity": _json_ready(identity),
    }
    if objectives is not None:  # only then: checkpoints of Frobenius-ranked runs keep their settings
        settings["ranking"] = "output error"

    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    run = _resume(ckpt, settings, model, modules) if ckpt is not None else None
    if run is None:
        torch.manual_seed(seed)
        set_lfa_trainable(modules)
        p0 = dict(eval_fn(model))
        _check_monitored(p0, monitor)
        params = _mpo_params(modules)
        row = _row(0, [], params, dense_total, 0.0, modules, None, p0, monitor, True)
        run = _Progress(rows=[row], step=0, pos=0, p0=p0, stop_reason=None, ft_total=0)
        if on_step is not None:
            on_step(model, row, None)

    bar = _progress_bar(max_steps, run.step) if progress else None
    while run.stop_reason is None:
        params = _mpo_params(modules)
        if budget is not None and params <= budget:
            run.stop_reason = "budget"
            break
        if run.step >= max_steps:
            run.stop_reason = "max_steps"
            break
        regauged: dict = {}
        spectra = spectra_of(modules, regauged)
        metrics = None if objectives is None else {n: _output_metric(regauged[n], objectives[n]) for n in modules}
        cuts = select_cuts(spectra, step_size, matrices_per_step, score, metrics)
        if not cuts:
            run.stop_reason = "exhausted"
            break
        snapshot = _snapshot(model, modules) if delta is not None and rollback else None
        cuts, step_bound = _apply_cuts(modules, regauged, cuts, params, budget)
        optimizer = build_optimizer(model, lr, mpo_lr, weight_decay)
        run.pos, train_loss = run_steps(model, optimizer, train_batches, run.pos, finetune_steps, loss_fn, max_grad_norm)
        run.ft_total += finetune_steps
        metrics = dict(eval_fn(model))
        run.step += 1
        accepted = delta is None or abs(metrics[monitor] - run.p0[monitor]) <= delta
        row = _row(run.step, cuts, _mpo_params(modules), dense_total, step_bound, modules, train_loss, metrics,
                   monitor, accepted)
        run.rows.append(row)
        if on_step is not None:
            on_step(model, row, optimizer)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(params=row["params"], loss=f"{row['loss']:.4f}")
        if not accepted:
            run.stop_reason = "delta"
            if snapshot is not None:
                _restore(model, modules, snapshot)
        if ckpt is not None and (run.stop_reason is not None or run.step % checkpoint_every == 0):
            _save(ckpt, model, modules, run, settings)
        if log_path is not None:
            write_log(run.rows, Path(log_path))
    if bar is not None:
        bar.close()

    if ckpt is not None:
        _save(ckpt, model, modules, run, settings)
    if log_path is not None:
        write_log(run.rows, Path(log_path))
    accepted_rows = [r for r in run.rows if r["accepted"]]
    if plot_path is not None:
        plot_squeeze_log(accepted_rows, plot_path, metric=task_obj.primary_metric[0])
    return SqueezeResult(
        model=model, rows=run.rows, stop_reason=run.stop_reason, initial=run.p0,
        final=dict(accepted_rows[-1]["metrics"]),
        params=_mpo_params(modules), budget=budget, steps=run.step,
        finetune_steps_total=run.ft_total, resumed_from_step=run.resumed_from,
        bond_dims={n: m.bond_dims for n, m in modules.items()},
    )


def _check_inputs(train_batches, eval_batches, eval_fn, matrices_per_step) -> None:
    if eval_fn is None and eval_batches is None:
        raise ValueError("give eval_batches (held-out batches) or eval_fn(model) -> {'loss': ..., ...}")
    if not hasattr(train_batches, "__getitem__") or not hasattr(train_batches, "__len__") or len(train_batches) == 0:
        raise TypeError(
            f"train_batches must be a non-empty sequence (list) of batches so a resumed run can replay them, "
            f"got {type(train_batches).__name__}; e.g. train_batches=list(dataloader)"
        )
    if isinstance(matrices_per_step, bool) or not isinstance(matrices_per_step, int) or matrices_per_step < 1:
        raise ValueError(f"matrices_per_step must be an int >= 1, got {matrices_per_step!r}; e.g. matrices_per_step=1")


def _host_name(name: str) -> str:
    """The module an MPO belongs to: a parametrized weight lives at ``<host>.parametrizations.weight.0``."""
    marker = ".parametrizations."
    return name.split(marker)[0] if marker in name else name


def _objectives(modules: Mapping[str, MPOModule], calibration) -> dict[str, dict]:
    """``{matrix: {"C": ...} or {"row_weights": ...}}`` from the calibration statistics, every matrix covered."""
    from ..calibration import CalibrationStats

    if not isinstance(calibration, CalibrationStats):
        raise TypeError(f"calibration must be a CalibrationStats (mpokit.calibration.collect_calibration(model, batches, "
                        f"targets)), got {type(calibration).__name__}")
    missing = [n for n in modules if _host_name(n) not in calibration]
    if missing:
        raise ValueError(f"the calibration statistics have nothing for the MPO matrices {missing[:3]}"
                         f"{'...' if len(missing) > 3 else ''}; collect them for these modules, e.g. "
                         f"collect_calibration(model, batches, targets={[_host_name(n) for n in missing[:2]]}), or "
                         "restrict the squeeze with targets=[...]")
    return {n: calibration.objective(_host_name(n)) for n in modules}


def _output_metric(mpo, objective: dict) -> OutputMetric:
    """The output error of truncating ``mpo`` (re-gauged, the matrix as it is now) to given bonds."""
    from ..aware.objective import output_error

    W = mpo.to_matrix().double()
    norm = math.sqrt(max(output_error(W, torch.zeros_like(W), **objective), 0.0))

    def error(dims: tuple[int, ...]) -> float:
        return output_error(W, mpo.truncate(max_bond=list(dims)).to_matrix().double(), **objective)

    return OutputMetric(error, norm)


def _json_ready(identity: Mapping | None) -> dict | None:
    """``identity`` as plain JSON data (so it compares equal to what a checkpoint read back)."""
    import json

    if identity is None:
        return None
    if not isinstance(identity, Mapping):
        raise TypeError(f"identity must be a mapping of JSON fields or None, got {type(identity).__name__}; "
                        "e.g. identity={'source': 'runs/dense/best'}")
    try:
        return json.loads(json.dumps(dict(identity)))
    except (TypeError, ValueError) as e:
        raise TypeError(f"identity must hold JSON data only (str, numbers, lists, dicts): {e}") from None


def _check_monitored(metrics: Mapping, monitor: str) -> None:
    """The first evaluation must give ``monitor`` as a finite number (else ``delta`` would compare nothing)."""
    value = metrics.get(monitor)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"monitor={monitor!r} is not a metric of the evaluation (it gives {sorted(metrics)}); "
                         f"e.g. monitor='loss'")
    if not math.isfinite(value):
        raise ValueError(f"the monitored metric {monitor!r} is {value} before squeezing, so |p - p~| > delta cannot "
                         f"be tested; monitor another metric, e.g. monitor='loss'")


def _mpo_params(modules: Mapping[str, MPOModule]) -> int:
    return sum(m.num_mpo_params for m in modules.values())


def _progress_bar(max_steps: int, initial: int):
    from tqdm.auto import tqdm

    return tqdm(total=max_steps if max_steps < 10_000 else None, initial=initial, desc="squeeze")


def _apply_cuts(modules, regauged, cuts: Sequence[Cut], params: int, budget: int | None) -> tuple[list[Cut], float]:
    """Truncates the re-gauged MPOs of ``cuts`` (cheapest first; with a budget, only until it is met).

    Returns the cuts applied and their combined bound ``sqrt(sum of squared bound increases)``.
    """
    step_bound, applied = 0.0, []
    for cut in cuts:
        layer, current = modules[cut.name], regauged[cut.name]
        # = layer.truncate_(max_bond=...), reusing the MPO just re-gauged instead of re-gauging again
        truncated = current.truncate(max_bond=list(cut.new_dims))
        layer.load_mpo_(truncated)
        got = float(truncated.error_bound - current.error_bound)
        layer.error_bound += got
        assert layer.bond_dims == cut.new_dims, (layer.bond_dims, cut.new_dims)
        step_bound = math.sqrt(step_bound**2 + got**2)
        applied.append(cut)
        params -= cut.params_removed
        if budget is not None and params <= budget:
            break
    return applied, step_bound


def _row(step, cuts: Sequence[Cut], params, dense_total, step_bound, modules, train_loss, metrics, monitor,
         accepted) -> dict:
    """One log row; step 0 (no cuts) is the starting point."""
    return {
        "step": step, "matrix": ",".join(c.name for c in cuts) if cuts else None,
        "bonds": [list(c.bonds) for c in cuts] if cuts else None,
        "old_dims": [list(c.old_dims) for c in cuts] if cuts else None,
        "new_dims": [list(c.new_dims) for c in cuts] if cuts else None,
        "params": params, "params_ratio": params / dense_total, "step_bound": step_bound,
        "total_bound": sum(m.error_bound for m in modules.values()), "train_loss": train_loss,
        "loss": metrics.get("loss"), "monitored": metrics[monitor], "metrics": dict(metrics), "accepted": accepted,
    }


def _snapshot(model, modules) -> tuple:
    """What a rolled-back cut restores: the state dict and the error bounds."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, {n: m.error_bound for n, m in modules.items()}


def _restore(model, modules, snapshot) -> None:
    state, bounds = snapshot
    model.load_state_dict(state)
    for n, b in bounds.items():
        modules[n].error_bound = b
    set_lfa_trainable(modules)


def _resume(ckpt: Path, settings: dict, model, modules) -> _Progress | None:
    """The progress saved in ``ckpt`` (the model and RNG restored), or None when there is none."""
    state = load_state(ckpt, settings)
    if state is None:
        return None
    restore_model(ckpt, model)
    for name, b in state["error_bounds"].items():
        modules[name].error_bound = b
    set_lfa_trainable(modules)
    return _Progress(
        rows=state["rows"], step=state["step"], pos=state["batch_pos"], p0=state["initial"],
        stop_reason=state.get("stop_reason"), ft_total=state["finetune_steps_total"], resumed_from=state["step"],
    )


def _save(ckpt: Path, model, modules, run: _Progress, settings: dict) -> None:
    save_state(ckpt, model, modules, run.rows, run.step, run.pos, run.p0, run.stop_reason, run.ft_total, settings)
