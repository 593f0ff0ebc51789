"""Dimension squeezing (MPOP §4.2, Algorithm 2) and direct truncation (MPOP_dir).

Squeezing compresses a model that holds MPO layers (any :class:`mpokit.layers.MPOModule`)
gradually:

1. evaluate the task loss ``p`` on held-out batches;
2. re-gauge every candidate matrix (``layer.mpo()`` = :meth:`MPO.from_cores`), so its
   singular values are those of its *current* (trained) cores;
3. propose, for every matrix, its next cut: the bonds of the central core
   ``(d_{c-1}, i_c, j_c, d_c)`` go from ``d`` to ``d - step`` (the other bonds are
   lowered only where :func:`mpokit.shapes.consistent_bond_dims` requires it);
4. cut the matrix whose cut raises its error bound least (see :func:`cut_score`);
5. rebuild the optimizer (the cut replaced the core Parameters), fine-tune the
   auxiliary cores (central cores frozen) plus the model's other trainables;
6. re-evaluate ``p~``; stop when ``|p - p~| > delta``, when the parameter budget is
   met, when ``max_steps`` cuts were made, or when no cut is left.

The bound of a cut comes from the precomputed singular values ``lambda_k`` of each
bond k (MPOP Eq. 3-4, squared form): keeping ``d'_k`` values at every bond gives
``||W - W'||_F <= sqrt(sum_k eps_k^2)``, ``eps_k^2 = sum_{i > d'_k} lambda_{k,i}^2``.
Right after re-gauging nothing is discarded yet, so that is the increase.

The selection logic is pure (:func:`propose_cut`, :func:`select_cuts`,
:func:`allocate_direct`); :func:`squeeze` and :func:`truncate_directly` apply it.
Checkpoints are safetensors + JSON (RNG state as plain integers), written atomically.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from . import shapes
from .io import atomic_write_bytes as _atomic_write_bytes
from .io import atomic_write_text as _atomic_write_text
from .layers.base import MPOModule

__all__ = [
    "SCORES",
    "MatrixSpectrum",
    "Cut",
    "SqueezeResult",
    "central_bonds",
    "propose_cut",
    "select_cuts",
    "allocate_direct",
    "find_mpo_modules",
    "spectra_of",
    "resolve_budget",
    "min_squeezable_params",
    "squeeze",
    "truncate_directly",
    "build_optimizer",
    "finetune",
    "evaluate",
    "plot_squeeze_log",
    "COMPRESSION_METHODS",
    "compress_to_budget",
    "encoder_mpo_config",
]

SCORES = ("bound", "relative", "per_param")
"""How cuts are ranked:

* ``"bound"``: the increase of the matrix's error bound ``||W - W'||_F`` (MPOP);
* ``"relative"``: that increase divided by ``||W||_F`` (scale-free across matrices);
* ``"per_param"``: increase of the *squared* bound per parameter removed (best use of a budget).
"""

STATE_VERSION = 1
STATE_FILE = "squeeze_state.json"


# ---------------------------------------------------------------------------
# pure selection logic
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MatrixSpectrum:
    """What the selection needs to know about one MPO matrix (pure data).

    ``singular_values[k]`` are the descending singular values of bond k (they may be
    longer than ``bond_dims[k]`` when a planned truncation is measured against a
    precomputed spectrum, as in :func:`allocate_direct`). ``norm`` is ``||W||_F``.
    """

    name: str
    out_modes: tuple[int, ...]
    in_modes: tuple[int, ...]
    bond_dims: tuple[int, ...]
    singular_values: tuple[torch.Tensor, ...]
    norm: float

    @property
    def num_params(self) -> int:
        return shapes.mpo_num_params(self.out_modes, self.in_modes, self.bond_dims)


@dataclass(frozen=True)
class Cut:
    """One proposed cut of one matrix: ``old_dims -> new_dims``.

    ``bound`` is the increase of the matrix's Frobenius error bound,
    ``sqrt(E(new)) - sqrt(E(old))`` with ``E(d) = sum_k sum_{i >= d_k} lambda_{k,i}^2``
    (``E(old) = 0`` right after a re-gauge). ``score`` ranks cuts (lower is better).
    """

    name: str
    bonds: tuple[int, ...]
    old_dims: tuple[int, ...]
    new_dims: tuple[int, ...]
    bound: float
    params_before: int
    params_after: int
    score: float

    @property
    def params_removed(self) -> int:
        return self.params_before - self.params_after


def central_bonds(n_cores: int) -> tuple[int, ...]:
    """Indices into ``bond_dims`` of the central core's bonds: ``(c-1, c)`` with ``c = (n-1)//2``.

    n = 5 -> (1, 2); n = 3 -> (0, 1); n = 2 -> (0,); n = 1 -> ().
    """
    c = shapes.central_index(n_cores)
    return tuple(b for b in (c - 1, c) if 0 <= b < n_cores - 1)


def _step_for(dim: int, step_size: int | float) -> int:
    """Bond reduction: an int is a fixed step; a float in (0, 1) a fraction of ``dim`` (rounded up)."""
    if isinstance(step_size, float):
        return max(1, math.ceil(step_size * dim))
    return int(step_size)


def _tail_energy(svals: Sequence[torch.Tensor], dims: Sequence[int]) -> float:
    """``sum_k sum_{i >= d_k} lambda_{k,i}^2`` in float64."""
    return float(sum(float((s[d:].double() ** 2).sum()) for s, d in zip(svals, dims)))


def _check_step_size(step_size) -> None:
    ok_int = isinstance(step_size, int) and not isinstance(step_size, bool) and step_size >= 1
    ok_float = isinstance(step_size, float) and 0.0 < step_size < 1.0
    if not (ok_int or ok_float):
        raise ValueError(
            f"step_size must be an int >= 1 (bonds d -> d - step) or a float in (0, 1) "
            f"(a fraction of each bond), got {step_size!r}; e.g. step_size=1 or step_size=0.1"
        )


def _check_score(score) -> None:
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}; e.g. score='bound'")


def propose_cut(spectrum: MatrixSpectrum, step_size: int | float = 1, score: str = "bound") -> Cut | None:
    """The next cut of one matrix: its central core's bonds ``d -> max(1, d - step)``.

    Other bonds are lowered only as far as :func:`shapes.consistent_bond_dims` needs.
    Returns None when no central bond can shrink.
    """
    _check_step_size(step_size)
    _check_score(score)
    dims = tuple(int(d) for d in spectrum.bond_dims)
    caps = list(dims)
    cut = []
    for b in central_bonds(len(spectrum.out_modes)):
        if dims[b] > 1:
            caps[b] = max(1, dims[b] - _step_for(dims[b], step_size))
            cut.append(b)
    if not cut:
        return None
    new = tuple(shapes.consistent_bond_dims(spectrum.out_modes, spectrum.in_modes, caps))
    new = tuple(min(a, b) for a, b in zip(new, dims))
    if new == dims:
        return None
    e_old = _tail_energy(spectrum.singular_values, dims)
    e_new = _tail_energy(spectrum.singular_values, new)
    bound = math.sqrt(e_new) - math.sqrt(e_old)
    before = shapes.mpo_num_params(spectrum.out_modes, spectrum.in_modes, dims)
    after = shapes.mpo_num_params(spectrum.out_modes, spectrum.in_modes, new)
    return Cut(spectrum.name, tuple(cut), dims, new, bound, before, after, cut_score(score, bound, e_new - e_old, before - after, spectrum.norm))


def cut_score(score: str, bound: float, energy_increase: float, params_removed: int, norm: float) -> float:
    """Rank of a cut under ``score`` (lower is better); see :data:`SCORES`."""
    if score == "bound":
        return bound
    if score == "relative":
        return bound / norm if norm > 0 else 0.0
    return energy_increase / max(params_removed, 1)


def select_cuts(
    spectra: Sequence[MatrixSpectrum], step_size: int | float = 1, count: int = 1, score: str = "bound"
) -> list[Cut]:
    """The ``count`` cheapest cuts, one per matrix, sorted by ``(score, name)``."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"count (matrices cut per step) must be an int >= 1, got {count!r}; e.g. count=1")
    cuts = [c for c in (propose_cut(s, step_size, score) for s in spectra) if c is not None]
    cuts.sort(key=lambda c: (c.score, c.name))
    return cuts[:count]


def allocate_direct(
    spectra: Sequence[MatrixSpectrum], target_params: int, score: str = "per_param", step_size: int | float = 1
) -> dict[str, tuple[int, ...]]:
    """MPOP_dir allocation: global greedy over central-bond cuts, all from the precomputed spectra.

    Repeatedly applies the cheapest next cut (same cut family and score as
    :func:`select_cuts`, but never re-gauging) until the total parameters are
    ``<= target_params`` or no cut is left. Returns planned bond dims per matrix.
    """
    current = {s.name: s for s in spectra}
    total = sum(s.num_params for s in spectra)
    proposals = {s.name: propose_cut(s, step_size, score) for s in spectra}
    while total > target_params:
        live = [c for c in proposals.values() if c is not None]
        if not live:
            break
        best = min(live, key=lambda c: (c.score, c.name))
        spec = current[best.name]
        current[best.name] = MatrixSpectrum(
            spec.name, spec.out_modes, spec.in_modes, best.new_dims, spec.singular_values, spec.norm
        )
        total -= best.params_removed
        proposals[best.name] = propose_cut(current[best.name], step_size, score)
    return {name: s.bond_dims for name, s in current.items()}


# ---------------------------------------------------------------------------
# model helpers
# ---------------------------------------------------------------------------


def find_mpo_modules(model: nn.Module, targets: Sequence[str] | None = None) -> dict[str, MPOModule]:
    """The model's MPO layers by qualified name (found by type: ``isinstance(m, MPOModule)``).

    ``targets`` restricts to those names; an unknown name raises a ValueError.
    """
    found = {name: m for name, m in model.named_modules() if isinstance(m, MPOModule)}
    if targets is None:
        if not found:
            raise ValueError(
                "the model holds no MPO layers (mpokit.layers.MPOModule); compress it first, "
                "e.g. mpokit.compress(model, mpokit.MPOConfig(...))"
            )
        return found
    if isinstance(targets, str):
        targets = [targets]
    unknown = [t for t in targets if t not in found]
    if unknown:
        sample = list(found)[:3]
        raise ValueError(f"unknown target(s) {unknown}: not MPO layers of this model; valid names e.g. {sample}")
    return {t: found[t] for t in targets}


def spectra_of(modules: Mapping[str, MPOModule], mpos: dict | None = None) -> list[MatrixSpectrum]:
    """Re-gauge every module's current cores and return their exact spectra (no grad).

    When ``mpos`` (a dict) is given, the re-gauged :class:`MPO` of each module is stored in it.
    """
    out = []
    for name, m in modules.items():
        mpo = m.mpo()
        if mpos is not None:
            mpos[name] = mpo
        out.append(MatrixSpectrum(name, mpo.out_modes, mpo.in_modes, mpo.bond_dims, tuple(s.detach().cpu() for s in mpo.singular_values), mpo.reference_norm))
    return out


def min_squeezable_params(modules: Mapping[str, MPOModule]) -> int:
    """Parameters left when every central bond is cut to 1 (the smallest a squeeze can reach)."""
    total = 0
    for m in modules.values():
        caps = list(m.bond_dims)
        for b in central_bonds(m.n_cores):
            caps[b] = 1
        dims = shapes.consistent_bond_dims(m.out_modes, m.in_modes, caps)
        dims = [min(a, b) for a, b in zip(dims, m.bond_dims)]
        total += shapes.mpo_num_params(m.out_modes, m.in_modes, dims)
    return total


def resolve_budget(
    modules: Mapping[str, MPOModule], target_params: int | None = None, target_ratio: float | None = None
) -> int | None:
    """Absolute parameter budget for the MPO matrices, validated.

    ``target_ratio`` is relative to the *dense* size of those matrices (``sum rows*cols``),
    so 0.5 means half the parameters of the uncompressed matrices.
    """
    if target_params is not None and target_ratio is not None:
        raise ValueError(
            f"give one budget, got target_params={target_params!r} and target_ratio={target_ratio!r}; "
            "e.g. target_ratio=0.5"
        )
    current = sum(m.num_mpo_params for m in modules.values())
    dense = sum(m.dense_params for m in modules.values())
    if target_ratio is not None:
        if isinstance(target_ratio, bool) or not isinstance(target_ratio, (int, float)) or not target_ratio > 0:
            raise ValueError(
                f"target_ratio must be a number > 0 (fraction of the dense parameters of the MPO matrices), "
                f"got {target_ratio!r}; e.g. target_ratio=0.5"
            )
        target_params = int(math.floor(target_ratio * dense))
    if target_params is None:
        return None
    if isinstance(target_params, bool) or not isinstance(target_params, int):
        raise TypeError(f"target_params must be an int, got {target_params!r}; e.g. target_params={current // 2}")
    smallest = min_squeezable_params(modules)
    if target_params > current:
        raise ValueError(
            f"budget {target_params} parameters is above the current size of the MPO matrices ({current}; "
            f"dense {dense}); nothing to cut. Give a smaller budget, e.g. target_params={current // 2} "
            f"or target_ratio={round(0.5 * current / dense, 3)}"
        )
    if target_params < smallest:
        raise ValueError(
            f"budget {target_params} parameters is below the minimum reachable by cutting central bonds "
            f"({smallest}, every central bond at 1); e.g. target_params={max(smallest, current // 2)}"
        )
    return target_params


def _set_trainable_for_squeeze(modules: Mapping[str, MPOModule]) -> None:
    """Central cores frozen, auxiliary cores trainable (MPOP's LFA); other params untouched."""
    for m in modules.values():
        for p in m.central_parameters():
            p.requires_grad_(False)
        for p in m.auxiliary_parameters():
            p.requires_grad_(True)


def build_optimizer(
    model: nn.Module, lr: float, mpo_lr: float | None = None, weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    """AdamW over exactly the live trainable parameters.

    Two groups: MPO cores (``mpo_lr``, default ``lr``) and everything else (``lr``),
    decided by structure (parameters of MPOModule layers), not by names.
    """
    mpo_ids = {id(p) for m in model.modules() if isinstance(m, MPOModule) for p in m.cores}
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("the model has no trainable parameters; nothing to fine-tune (check requires_grad)")
    mpo_params = [p for p in trainable if id(p) in mpo_ids]
    other = [p for p in trainable if id(p) not in mpo_ids]
    groups = []
    if mpo_params:
        groups.append({"params": mpo_params, "lr": lr if mpo_lr is None else mpo_lr})
    if other:
        groups.append({"params": other, "lr": lr})
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)


# ---------------------------------------------------------------------------
# training and evaluation callbacks (default: HF-style batches or (x, y) tuples)
# ---------------------------------------------------------------------------


def _to_device(batch, device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _forward(model: nn.Module, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, logits, labels)`` for a dict batch with ``labels`` (HF) or an ``(x, y)`` tuple."""
    if isinstance(batch, Mapping):
        out = model(**batch)
        logits = out.logits if hasattr(out, "logits") else (out["logits"] if isinstance(out, Mapping) else out)
        labels = batch["labels"]
        loss = getattr(out, "loss", None)
        if loss is None:
            loss = nn.functional.cross_entropy(logits, labels)
        return loss, logits, labels
    x, y = batch
    logits = model(x)
    return nn.functional.cross_entropy(logits, y), logits, y


def default_loss(model: nn.Module, batch) -> torch.Tensor:
    """Task loss of one batch (HF ``out.loss``, or cross-entropy for ``(x, y)``)."""
    return _forward(model, batch)[0]


@torch.no_grad()
def evaluate(model: nn.Module, batches: Sequence) -> dict[str, float]:
    """Mean loss (per example) and accuracy over ``batches``, in eval mode."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, loss_sum, correct = 0, 0.0, 0
    for batch in batches:
        batch = _to_device(batch, device)
        loss, logits, labels = _forward(model, batch)
        n = int(labels.shape[0])
        total += n
        loss_sum += float(loss) * n
        correct += int((logits.argmax(-1) == labels).sum())
    model.train(was_training)
    if total == 0:
        raise ValueError("eval_batches is empty; give at least one held-out batch")
    return {"loss": loss_sum / total, "accuracy": correct / total}


def _finetune(model, optimizer, train_batches, start: int, steps: int, loss_fn, max_grad_norm) -> tuple[int, float]:
    """``steps`` optimizer steps on batches ``start, start+1, ...`` (cyclic). Returns (next position, mean loss)."""
    if steps == 0:
        return start, float("nan")
    device = next(model.parameters()).device
    model.train()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    losses = []
    pos = start
    for _ in range(steps):
        batch = _to_device(train_batches[pos % len(train_batches)], device)
        pos += 1
        loss = loss_fn(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()
        losses.append(float(loss.detach()))
    model.eval()
    return pos, sum(losses) / len(losses)


def finetune(
    model: nn.Module,
    train_batches: Sequence,
    steps: int,
    *,
    lr: float = 2e-5,
    mpo_lr: float | None = None,
    weight_decay: float = 0.0,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor] | None = None,
    start: int = 0,
    max_grad_norm: float | None = 1.0,
) -> tuple[int, float]:
    """The fine-tuning used after every cut, on its own (baselines get exactly the same).

    AdamW (:func:`build_optimizer`) over the live trainable parameters, ``steps`` steps on
    ``train_batches[start], train_batches[start + 1], ...`` (cyclic). Returns
    ``(next batch position, mean training loss)``.
    """
    _validate_common(None, 0, steps, lr, mpo_lr, "loss")
    optimizer = build_optimizer(model, lr, mpo_lr, weight_decay)
    return _finetune(model, optimizer, train_batches, start, steps, loss_fn or default_loss, max_grad_norm)


# ---------------------------------------------------------------------------
# checkpoints (safetensors + JSON, atomic)
# ---------------------------------------------------------------------------


def _save_model(model: nn.Module, path: Path) -> None:
    from safetensors.torch import save as st_save

    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    _atomic_write_bytes(path, st_save(tensors))


def _load_model(model: nn.Module, path: Path) -> None:
    from safetensors.torch import load_file

    if not path.is_file():
        raise ValueError(f"checkpoint model file {path} is missing; the squeeze checkpoint is incomplete")
    try:
        state = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types
        raise ValueError(f"checkpoint model file {path} is corrupt or truncated ({exc}); delete the checkpoint dir") from exc
    device = next(model.parameters()).device
    model.load_state_dict({k: v.to(device) for k, v in state.items()}, strict=True)


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state().tolist()}
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def _set_rng_state(state: Mapping) -> None:
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


# ---------------------------------------------------------------------------
# logs and plots
# ---------------------------------------------------------------------------

LOG_FIELDS = (
    "step", "matrix", "bonds", "old_dims", "new_dims", "params", "params_ratio", "step_bound",
    "total_bound", "train_loss", "loss", "accuracy", "accepted",
)


def _write_log(rows: list[dict], log_path: Path) -> None:
    """``<log_path>.json`` (all rows) and ``<log_path>.csv`` (one line per step); a .json/.csv suffix is dropped first."""
    base = log_path.with_suffix("") if log_path.suffix in (".json", ".csv") else log_path
    json_path, csv_path = base.with_name(base.name + ".json"), base.with_name(base.name + ".csv")
    _atomic_write_text(json_path, json.dumps(rows, indent=1))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=LOG_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (json.dumps(v) if isinstance(v, (list, tuple)) else v) for k, v in r.items()})
    _atomic_write_text(csv_path, buf.getvalue())


def plot_squeeze_log(rows: Sequence[Mapping], path: str | os.PathLike, title: str = "dimension squeezing") -> Path:
    """PNG of loss and accuracy against the parameters of the MPO matrices."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    params = [r["params"] for r in rows]
    fig, ax1 = plt.subplots(figsize=(6, 4))
    ax1.plot(params, [r["loss"] for r in rows], "o-", color="tab:red", label="loss")
    ax1.set_xlabel("parameters in MPO matrices")
    ax1.set_ylabel("held-out loss", color="tab:red")
    ax1.invert_xaxis()
    if all(r.get("accuracy") is not None for r in rows):
        ax2 = ax1.twinx()
        ax2.plot(params, [r["accuracy"] for r in rows], "s-", color="tab:blue", label="accuracy")
        ax2.set_ylabel("held-out accuracy", color="tab:blue")
    ax1.set_title(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------
# the algorithm
# ---------------------------------------------------------------------------


@dataclass
class SqueezeResult:
    """What :func:`squeeze` did. ``rows[0]`` is the starting point (step 0)."""

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


def _validate_common(delta, max_steps, finetune_steps, lr, mpo_lr, monitor):
    if delta is not None and (isinstance(delta, bool) or not isinstance(delta, (int, float)) or delta < 0 or math.isnan(delta)):
        raise ValueError(f"delta must be a number >= 0 (allowed |p - p~| change of the monitored metric), got {delta!r}; e.g. delta=0.05")
    for name, v in (("max_steps", max_steps), ("finetune_steps", finetune_steps)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{name} must be an int >= 0, got {v!r}; e.g. {name}=10")
    for name, v in (("lr", lr), ("mpo_lr", mpo_lr)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0):
            raise ValueError(f"{name} must be a number > 0, got {v!r}; e.g. {name}=2e-5")
    if monitor not in ("loss", "accuracy"):
        raise ValueError(f"monitor must be 'loss' or 'accuracy', got {monitor!r}; e.g. monitor='loss'")


def _settings_fingerprint(**kw) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in kw.items()}


def squeeze(
    model: nn.Module,
    *,
    train_batches: Sequence,
    eval_batches: Sequence | None = None,
    eval_fn: Callable[[nn.Module], Mapping[str, float]] | None = None,
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
) -> SqueezeResult:
    """Dimension squeezing (MPOP Algorithm 2) of every MPO layer of ``model``, in place.

    Args:
        train_batches: a sequence of batches (dicts with ``labels`` for HF models, or
            ``(x, y)`` tuples); step ``t`` of fine-tuning uses ``train_batches[t % len]``,
            so a resumed run sees the same batches.
        eval_batches / eval_fn: held-out batches, or a callable ``model -> {"loss", "accuracy"}``.
        loss_fn: ``(model, batch) -> loss``; default HF ``out.loss`` or cross-entropy.
        delta: stop when ``|p - p~| > delta`` (``p`` = monitored metric before squeezing).
            With ``rollback`` the violating cut is undone (the returned model is the last
            one within delta).
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
    """
    _validate_common(delta, max_steps, finetune_steps, lr, mpo_lr, monitor)
    _check_step_size(step_size)
    _check_score(score)
    if eval_fn is None and eval_batches is None:
        raise ValueError("give eval_batches (held-out batches) or eval_fn(model) -> {'loss': ..., 'accuracy': ...}")
    if not hasattr(train_batches, "__getitem__") or not hasattr(train_batches, "__len__") or len(train_batches) == 0:
        raise TypeError(
            f"train_batches must be a non-empty sequence (list) of batches so a resumed run can replay them, "
            f"got {type(train_batches).__name__}; e.g. train_batches=list(dataloader)"
        )
    if isinstance(matrices_per_step, bool) or not isinstance(matrices_per_step, int) or matrices_per_step < 1:
        raise ValueError(f"matrices_per_step must be an int >= 1, got {matrices_per_step!r}; e.g. matrices_per_step=1")
    modules = find_mpo_modules(model, targets)
    if delta is None and target_params is None and target_ratio is None and max_steps == 0:
        raise ValueError("nothing would stop the squeeze sensibly: give delta, a budget or max_steps > 0")
    budget = resolve_budget(modules, target_params, target_ratio) if (target_params is not None or target_ratio is not None) else None
    eval_fn = eval_fn or (lambda m: evaluate(m, eval_batches))
    loss_fn = loss_fn or default_loss
    dense_total = sum(m.dense_params for m in modules.values())
    settings = _settings_fingerprint(
        delta=delta, budget=budget, max_steps=max_steps, step_size=step_size, matrices_per_step=matrices_per_step,
        score=score, monitor=monitor, finetune_steps=finetune_steps, lr=lr, mpo_lr=mpo_lr,
        weight_decay=weight_decay, seed=seed, targets=sorted(modules),
    )

    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    state = _load_state(ckpt, settings) if ckpt is not None else None
    resumed_from = None
    if state is not None:
        _load_model(model, ckpt / state["model_file"])
        for name, b in state["error_bounds"].items():
            modules[name].error_bound = b
        _set_trainable_for_squeeze(modules)
        _set_rng_state(state["rng"])
        rows, step, pos = state["rows"], state["step"], state["batch_pos"]
        p0, stop_reason, ft_total = state["initial"], state.get("stop_reason"), state["finetune_steps_total"]
        resumed_from = step
    else:
        torch.manual_seed(seed)
        _set_trainable_for_squeeze(modules)
        p0 = dict(eval_fn(model))
        params = sum(m.num_mpo_params for m in modules.values())
        rows = [{
            "step": 0, "matrix": None, "bonds": None, "old_dims": None, "new_dims": None, "params": params,
            "params_ratio": params / dense_total, "step_bound": 0.0,
            "total_bound": sum(m.error_bound for m in modules.values()), "train_loss": None,
            "loss": p0.get("loss"), "accuracy": p0.get("accuracy"), "accepted": True,
        }]
        step, pos, stop_reason, ft_total = 0, 0, None, 0
        if on_step is not None:
            on_step(model, rows[0], None)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=max_steps if max_steps < 10_000 else None, initial=step, desc="squeeze")
    while stop_reason is None:
        params = sum(m.num_mpo_params for m in modules.values())
        if budget is not None and params <= budget:
            stop_reason = "budget"
            break
        if step >= max_steps:
            stop_reason = "max_steps"
            break
        regauged: dict = {}
        cuts = select_cuts(spectra_of(modules, regauged), step_size, matrices_per_step, score)
        if not cuts:
            stop_reason = "exhausted"
            break
        snapshot = None
        if delta is not None and rollback:
            snapshot = ({k: v.detach().clone() for k, v in model.state_dict().items()}, {n: m.error_bound for n, m in modules.items()}, torch.get_rng_state())
        step_bound, applied = 0.0, []
        for cut in cuts:  # cheapest first; with a budget, stop as soon as it is met
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
        cuts = applied
        optimizer = build_optimizer(model, lr, mpo_lr, weight_decay)
        pos, train_loss = _finetune(model, optimizer, train_batches, pos, finetune_steps, loss_fn, max_grad_norm)
        ft_total += finetune_steps
        metrics = dict(eval_fn(model))
        step += 1
        params = sum(m.num_mpo_params for m in modules.values())
        accepted = delta is None or abs(metrics[monitor] - p0[monitor]) <= delta
        row = {
            "step": step, "matrix": ",".join(c.name for c in cuts), "bonds": [list(c.bonds) for c in cuts],
            "old_dims": [list(c.old_dims) for c in cuts], "new_dims": [list(c.new_dims) for c in cuts],
            "params": params, "params_ratio": params / dense_total, "step_bound": step_bound,
            "total_bound": sum(m.error_bound for m in modules.values()), "train_loss": train_loss,
            "loss": metrics.get("loss"), "accuracy": metrics.get("accuracy"), "accepted": accepted,
        }
        rows.append(row)
        if on_step is not None:
            on_step(model, row, optimizer)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(params=params, loss=f"{row['loss']:.4f}")
        if not accepted:
            stop_reason = "delta"
            if snapshot is not None:
                model.load_state_dict(snapshot[0])
                for n, b in snapshot[1].items():
                    modules[n].error_bound = b
                _set_trainable_for_squeeze(modules)
        if ckpt is not None and (stop_reason is not None or step % checkpoint_every == 0):
            _save_state(ckpt, model, modules, rows, step, pos, p0, stop_reason, ft_total, settings)
        if log_path is not None:
            _write_log(rows, Path(log_path))
    if bar is not None:
        bar.close()

    if ckpt is not None:
        _save_state(ckpt, model, modules, rows, step, pos, p0, stop_reason, ft_total, settings)
    if log_path is not None:
        _write_log(rows, Path(log_path))
    if plot_path is not None:
        plot_squeeze_log([r for r in rows if r["accepted"]], plot_path)
    final_row = [r for r in rows if r["accepted"]][-1]
    return SqueezeResult(
        model=model, rows=rows, stop_reason=stop_reason, initial=p0,
        final={"loss": final_row["loss"], "accuracy": final_row["accuracy"]},
        params=sum(m.num_mpo_params for m in modules.values()), budget=budget, steps=step,
        finetune_steps_total=ft_total, resumed_from_step=resumed_from,
        bond_dims={n: m.bond_dims for n, m in modules.items()},
    )


def _save_state(ckpt: Path, model, modules, rows, step, pos, p0, stop_reason, ft_total, settings) -> None:
    model_file = f"squeeze_model_step{step:05d}.safetensors"
    _save_model(model, ckpt / model_file)
    old = None
    if (ckpt / STATE_FILE).is_file():
        try:
            old = json.loads((ckpt / STATE_FILE).read_text())["model_file"]
        except (ValueError, KeyError):
            old = None
    state = {
        "version": STATE_VERSION, "step": step, "batch_pos": pos, "rng": _rng_state(), "initial": p0,
        "rows": rows, "stop_reason": stop_reason, "finetune_steps_total": ft_total,
        "error_bounds": {n: m.error_bound for n, m in modules.items()},
        "bond_dims": {n: list(m.bond_dims) for n, m in modules.items()},
        "settings": settings, "model_file": model_file,
    }
    _atomic_write_text(ckpt / STATE_FILE, json.dumps(state))
    if old and old != model_file and (ckpt / old).is_file():
        (ckpt / old).unlink()


def _load_state(ckpt: Path, settings: dict) -> dict | None:
    path = ckpt / STATE_FILE
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text())
    except ValueError as exc:
        raise ValueError(f"squeeze checkpoint {path} is not valid JSON ({exc}); delete {ckpt} to start over") from exc
    if state.get("version") != STATE_VERSION:
        raise ValueError(f"squeeze checkpoint {path} has version {state.get('version')!r}, expected {STATE_VERSION}")
    saved = state.get("settings", {})
    diff = {k: (saved.get(k), v) for k, v in json.loads(json.dumps(settings)).items() if saved.get(k) != v}
    if diff:
        raise ValueError(
            f"squeeze checkpoint {ckpt} was written with other settings {diff} (saved, given); "
            f"resume with the same settings or use a new checkpoint_dir"
        )
    return state


# ---------------------------------------------------------------------------
# MPOP_dir: direct truncation to a budget in one call
# ---------------------------------------------------------------------------


@dataclass
class DirectResult:
    """What :func:`truncate_directly` did."""

    bond_dims: dict[str, tuple[int, ...]]
    bounds: dict[str, float]
    params_before: int
    params: int
    budget: int


@torch.no_grad()
def truncate_directly(
    model: nn.Module,
    target_params: int | None = None,
    *,
    target_ratio: float | None = None,
    targets: Sequence[str] | None = None,
    score: str = "per_param",
    step_size: int | float = 1,
) -> DirectResult:
    """MPOP_dir: truncate every MPO layer of ``model`` at once to a parameter budget.

    The budget is allocated across matrices by :func:`allocate_direct` (a global greedy
    over central-bond cuts ranked by ``score``, from the singular values computed once),
    then each layer is truncated once (``layer.truncate_``). No fine-tuning in between.
    """
    _check_score(score)
    _check_step_size(step_size)
    modules = find_mpo_modules(model, targets)
    if target_params is None and target_ratio is None:
        raise ValueError("truncate_directly needs a budget: target_params=... or target_ratio=..., e.g. target_ratio=0.5")
    budget = resolve_budget(modules, target_params, target_ratio)
    before = sum(m.num_mpo_params for m in modules.values())
    plan = allocate_direct(spectra_of(modules), budget, score, step_size)
    bounds = {}
    for name, dims in plan.items():
        bounds[name] = modules[name].truncate_(max_bond=list(dims)) if tuple(dims) != modules[name].bond_dims else 0.0
    return DirectResult(
        bond_dims={n: m.bond_dims for n, m in modules.items()}, bounds=bounds, params_before=before,
        params=sum(m.num_mpo_params for m in modules.values()), budget=budget,
    )


# ---------------------------------------------------------------------------
# one entry point for every compression method to a budget (used by `mpokit squeeze`)
# ---------------------------------------------------------------------------

COMPRESSION_METHODS = ("squeeze", "direct", "prune", "lowrank")


def encoder_mpo_config():
    """MPOConfig for the encoder's attention and FFN matrices only (n = 5, exact), LFA, embeddings frozen."""
    from .config import MPOConfig, MPOLayerConfig

    return MPOConfig(embedding=None, other=None, attention=MPOLayerConfig(n_cores=5), ffn=MPOLayerConfig(n_cores=5),
                     trainable="auxiliary", train_embeddings=False)


def _lfa_(model: nn.Module) -> None:
    for layer in find_mpo_modules(model).values():
        _set_trainable_for_squeeze({"": layer})


def _method_squeeze(model, *, target_ratio, train_batches, eval_batches, finetune_steps, lr, mpo_lr, seed, **kw):
    if not any(isinstance(m, MPOModule) for m in model.modules()):
        from .surgery import compress

        compress(model, encoder_mpo_config())
    res = squeeze(model, train_batches=train_batches, eval_batches=eval_batches, target_ratio=target_ratio,
                  finetune_steps=finetune_steps, lr=lr, mpo_lr=mpo_lr, seed=seed, max_steps=100_000, **kw)
    return {"params": res.params, "steps": res.steps, "finetune_steps": res.finetune_steps_total,
            "stop_reason": res.stop_reason, "bond_dims": {k: list(v) for k, v in res.bond_dims.items()}}


def _method_direct(model, *, target_ratio, train_batches, finetune_steps, lr, mpo_lr, score="per_param", **_):
    if not any(isinstance(m, MPOModule) for m in model.modules()):
        from .surgery import compress

        compress(model, encoder_mpo_config())
    res = truncate_directly(model, target_ratio=target_ratio, score=score)
    _lfa_(model)
    finetune(model, train_batches, finetune_steps, lr=lr, mpo_lr=mpo_lr)
    return {"params": res.params, "finetune_steps": finetune_steps, "bond_dims": {k: list(v) for k, v in res.bond_dims.items()}}


def _dense_targets(model, targets):
    if any(isinstance(m, MPOModule) for m in model.modules()):
        raise ValueError("pruning and low-rank baselines start from the dense model; this one already holds MPO layers "
                         "(use mpokit.merge_and_unload(model) first, or pass the dense fine-tuned model)")
    if targets is None:
        from .surgery import find_targets

        targets = [name for name, _, _ in find_targets(model, encoder_mpo_config())]
    return targets


def _method_prune(model, *, target_ratio, train_batches, finetune_steps, lr, targets=None, **_):
    from .baselines.pruning import kept_params, magnitude_prune_
    from .surgery import mark_trainable

    targets = _dense_targets(model, targets)
    mark_trainable(model, encoder_mpo_config())
    magnitude_prune_(model, targets, target_ratio=target_ratio)
    finetune(model, train_batches, finetune_steps, lr=lr)
    return {"params": kept_params(model, targets), "finetune_steps": finetune_steps, "targets": targets}


def _method_lowrank(model, *, target_ratio, train_batches, finetune_steps, lr, targets=None, **_):
    from .baselines.lowrank import lowrank_
    from .surgery import mark_trainable

    targets = _dense_targets(model, targets)
    res = lowrank_(model, targets, target_ratio=target_ratio)
    mark_trainable(model, encoder_mpo_config())
    finetune(model, train_batches, finetune_steps, lr=lr)
    return {"params": res.params, "finetune_steps": finetune_steps, "ranks": res.ranks, "targets": targets}


_METHOD_HANDLERS = {"squeeze": _method_squeeze, "direct": _method_direct, "prune": _method_prune, "lowrank": _method_lowrank}


def compress_to_budget(
    model: nn.Module,
    method: str,
    *,
    target_ratio: float,
    train_batches: Sequence,
    eval_batches: Sequence,
    finetune_steps: int = 48,
    lr: float = 5e-5,
    mpo_lr: float | None = None,
    seed: int = 0,
    **options,
) -> dict:
    """Compress the encoder matrices of a (fine-tuned) transformers model to ``target_ratio`` with ``method``.

    * ``"squeeze"``: MPO (exact) then :func:`squeeze` (``finetune_steps`` after every cut);
    * ``"direct"``: MPO then :func:`truncate_directly` (MPOP_dir), then ``finetune_steps``;
    * ``"prune"``: global magnitude pruning, then ``finetune_steps``;
    * ``"lowrank"``: per-matrix truncated SVD, then ``finetune_steps``.

    Extra ``options`` go to the handler (e.g. ``step_size``, ``matrices_per_step``, ``score``,
    ``checkpoint_dir``, ``log_path``, ``plot_path`` for squeezing). Returns a report dict
    with ``params``, ``dense_params`` and held-out ``loss`` / ``accuracy`` after compression.
    """
    if method not in _METHOD_HANDLERS:
        raise ValueError(f"method must be one of {COMPRESSION_METHODS}, got {method!r}; e.g. method='squeeze'")
    torch.manual_seed(seed)
    info = _METHOD_HANDLERS[method](model, target_ratio=target_ratio, train_batches=train_batches, eval_batches=eval_batches,
                                    finetune_steps=finetune_steps, lr=lr, mpo_lr=mpo_lr, seed=seed, **options)
    if method in ("squeeze", "direct"):
        info["dense_params"] = sum(m.dense_params for m in find_mpo_modules(model).values())
    else:
        info["dense_params"] = sum(model.get_submodule(t).weight.numel() for t in info["targets"])
    info.update(method=method, target_ratio=target_ratio, ratio=info["params"] / info["dense_params"])
    info.update({f"eval_{k}": v for k, v in evaluate(model, eval_batches).items()})
    return info
