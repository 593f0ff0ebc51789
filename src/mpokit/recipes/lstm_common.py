"""Shared pieces of the LSTM experiments: the three methods under one LSTM-weight budget.

Methods (``METHODS``):

* ``"dense"``: ``nn.LSTM`` (rate 1);
* ``"mpo"``: :class:`mpokit.layers.lstm.MPOLSTM` trained from scratch (random init, as in the
  MPO-LSTM paper): every W (4H x X) and U (4H x H) is one MPO with the gates stacked in the first
  out mode and a uniform bond chosen per rate by :func:`mpokit.layers.lstm.bond_dim_for_rate`
  (four cores by default, as in the paper; the configs' ``mpo_cores`` changes that);
* ``"pruning"``: ``nn.LSTM`` whose W and U are pruned gradually by magnitude (cubic schedule,
  :class:`mpokit.baselines.lstm_pruning.LSTMPruner`) to **exactly** as many non-zeros as the
  MPO-LSTM of the same rate has parameters, then fine-tuned;
* ``"mpo_gradual"`` (not in the default grid): MPO-LSTM that starts dense like pruning does -- the
  exact (full-bond) MPO of the dense LSTM's init -- and has its bonds cut on pruning's cubic schedule
  (:class:`mpokit.bond_schedule.GradualBondTruncation`) down to the bonds of ``"mpo"`` at the same
  rate, then fine-tuned; each cut core inherits its predecessor's Adam state. Same final budget and
  same schedule steps as pruning.

Rate = dense W+U weight count / compressed W+U count (biases, embeddings and output layers are
dense in every method and not part of the rate).
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, replace
from typing import Sequence

import torch
from torch import nn

from .. import shapes

METHODS = ("dense", "mpo", "pruning", "mpo_gradual")
DEFAULT_METHODS = ("dense", "mpo", "pruning")  # the experiments' grid unless ``methods`` says otherwise
COMPRESSED_METHODS = ("pruning", "mpo", "mpo_gradual")  # report / plot order
PAPER_RATES = (5, 10, 15, 20, 25, 50, 75, 100)
METHOD_LABELS = {"dense": "dense LSTM", "mpo": "MPO-LSTM", "pruning": "pruning-LSTM",
                 "mpo_gradual": "MPO-LSTM (gradual truncation)"}


def check_methods_rates(methods: Sequence[str], rates: Sequence[float]) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """Validate the method names and rates of an experiment grid."""
    methods = tuple(methods)
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise ValueError(f"unknown methods {bad or methods}; choose from {METHODS}, e.g. ('dense', 'mpo', 'pruning')")
    rates = tuple(float(r) if not float(r).is_integer() else int(r) for r in rates)
    if any(not (r > 1 and math.isfinite(r)) for r in rates):
        raise ValueError(f"rates must be finite numbers > 1 (dense / compressed), got {rates}; e.g. (10, 50, 100)")
    return methods, rates


def check_learning_rates(lr: float, lr_grid: Sequence[float]) -> None:
    """Validate a config's learning rate and its optional grid (every value finite and > 0)."""
    for value in (lr, *lr_grid):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"learning rates must be finite numbers > 0, got lr={lr!r}, lr_grid={tuple(lr_grid)!r}; "
                             "e.g. lr_grid=(3e-4, 1e-3, 3e-3)")
    if len(set(lr_grid)) != len(tuple(lr_grid)):
        raise ValueError(f"lr_grid has repeated values: {tuple(lr_grid)}; e.g. (3e-4, 1e-3, 3e-3)")


def check_mpo_cores(n_cores) -> None:
    """Validate the number of cores per MPO of an experiment (an int >= 2: one core is the dense matrix)."""
    if isinstance(n_cores, bool) or not isinstance(n_cores, int) or n_cores < 2:
        raise ValueError(f"mpo_cores must be an int >= 2 (one core is the dense matrix), got {n_cores!r}; e.g. mpo_cores=4")


def check_hh_share(share) -> None:
    """Validate the share of the MPO budget given to the hidden-to-hidden matrices U (None: even rates)."""
    if share is None:
        return
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share < 1:
        raise ValueError(f"mpo_hh_share must be a number strictly between 0 and 1 (the fraction of the MPO budget "
                         f"given to U), got {share!r}; e.g. mpo_hh_share=0.8, or None for one rate for W and U")


def split_rates(input_size: int, hidden_size: int, rate: float, hh_share: float | None) -> tuple[float, float]:
    """(rate of W, rate of U) that give U the fraction ``hh_share`` of the W+U budget at ``rate``
    (``(rate, rate)`` when ``hh_share`` is None). Example: 256, 256, 10, 0.82 -> (27.8, 6.1)."""
    check_hh_share(hh_share)
    if hh_share is None:
        return rate, rate
    dense_w, dense_u = 4 * hidden_size * input_size, 4 * hidden_size * hidden_size
    budget = (dense_w + dense_u) / rate
    return dense_w / ((1 - hh_share) * budget), dense_u / (hh_share * budget)


def set_seed(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def mpo_lstm_shapes(input_size: int, hidden_size: int, num_layers: int, rate: float, n_cores: int = 4,
                    hh_share: float | None = None) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """``(out_modes, in_modes, bond_dims)`` of each W / U (``weight_ih_l0``, ``weight_hh_l0``, ...) of an
    MPOLSTM at ``rate`` with ``n_cores`` cores (W and U at the rates of :func:`split_rates` when
    ``hh_share`` is given), from the modes and bond formula alone (no module is built, no RNG is touched)."""
    from ..layers.lstm import bond_dim_for_rate, gate_modes, lstm_modes

    hidden_modes = lstm_modes(hidden_size, n_cores)
    out_modes = gate_modes(hidden_modes)
    out = {}
    for layer in range(num_layers):
        in_modes = lstm_modes(input_size if layer == 0 else hidden_size, n_cores)
        rates = dict(zip(("ih", "hh"), split_rates(input_size, hidden_size, rate, hh_share)))
        for kind, cols in (("ih", in_modes), ("hh", hidden_modes)):
            d = bond_dim_for_rate(out_modes, cols, rates[kind])
            out[f"weight_{kind}_l{layer}"] = (out_modes, cols, shapes.consistent_bond_dims(out_modes, cols, [d] * (len(out_modes) - 1)))
    return out


def mpo_lstm_weight_counts(input_size: int, hidden_size: int, num_layers: int, rate: float, n_cores: int = 4,
                           hh_share: float | None = None) -> dict[str, int]:
    """MPO parameters of each W / U of an MPOLSTM at ``rate`` with ``n_cores`` cores (see :func:`mpo_lstm_shapes`)."""
    return {name: shapes.mpo_num_params(*spec)
            for name, spec in mpo_lstm_shapes(input_size, hidden_size, num_layers, rate, n_cores, hh_share).items()}


def dense_lstm_weight_count(input_size: int, hidden_size: int, num_layers: int) -> int:
    """W + U entries of a unidirectional ``nn.LSTM`` (biases excluded)."""
    return sum(4 * hidden_size * ((input_size if layer == 0 else hidden_size) + hidden_size) for layer in range(num_layers))


@dataclass
class LSTMBuild:
    """An LSTM built for one method and rate, plus what the experiment needs to know about it."""

    method: str
    rate: float  # target rate (1 for dense)
    lstm: nn.Module
    dense_weights: int  # W + U entries of the dense LSTM
    budget: int  # W + U weights the method may keep (MPO parameters / pruning non-zeros)
    pruner_nonzeros: int | None = None  # pruning only: final non-zeros handed to LSTMPruner
    final_bonds: dict | None = None  # mpo_gradual only: name -> bonds at the end of the truncation schedule

    def bond_dims(self) -> str:
        """Final bonds of each W / U (``name:d1xd2x...;...``), "" for dense and pruning."""
        if self.final_bonds is not None:
            return ";".join(f"{name}:{'x'.join(map(str, b))}" for name, b in self.final_bonds.items())
        if self.method != "mpo":
            return ""
        return ";".join(f"{name}:{'x'.join(map(str, m.bond_dims))}" for name, m in self.lstm.weight_modules())


def build_lstm(method: str, input_size: int, hidden_size: int, num_layers: int, rate: float, *, dropout: float = 0.0,
               batch_first: bool = False, mpo_cores: int = 4, mpo_hh_share: float | None = None) -> LSTMBuild:
    """The LSTM of ``method`` at ``rate`` (ignored for dense). The pruning LSTM starts dense; attach an
    :class:`~mpokit.baselines.lstm_pruning.LSTMPruner` with ``final_nonzeros=build.budget``; the
    ``mpo_gradual`` LSTM starts as the exact MPO of a dense init (:func:`compression_schedule` builds
    both schedules). ``mpo_cores``: cores per MPO (the MPO-LSTM's, and through the budget also pruning's).
    ``mpo_hh_share``: fraction of the MPO budget given to the U matrices (:func:`split_rates`; None:
    W and U at the same rate); pruning's budget follows the resulting MPO count."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {METHODS}, e.g. 'mpo'")
    dense = dense_lstm_weight_count(input_size, hidden_size, num_layers)
    kwargs = dict(num_layers=num_layers, dropout=dropout, batch_first=batch_first)
    if method == "dense":
        return LSTMBuild(method, 1, nn.LSTM(input_size, hidden_size, **kwargs), dense, dense)
    check_hh_share(mpo_hh_share)
    if mpo_hh_share is not None and num_layers > 1 and input_size != hidden_size:
        raise ValueError(f"mpo_hh_share needs input_size == hidden_size when num_layers > 1 (one W rate for every "
                         f"layer), got {input_size} and {hidden_size}; e.g. embed_dim=hidden_size=256")
    budget = sum(mpo_lstm_weight_counts(input_size, hidden_size, num_layers, rate, mpo_cores, mpo_hh_share).values())
    rate_ih, rate_hh = split_rates(input_size, hidden_size, rate, mpo_hh_share)
    if method == "mpo":
        from ..layers.lstm import MPOLSTM

        lstm = MPOLSTM(input_size, hidden_size, rate_ih=rate_ih, rate_hh=rate_hh, n_cores=mpo_cores, **kwargs)
        if lstm.num_weight_params() != budget:  # internal invariant: both use the same bond formula
            raise AssertionError(f"MPOLSTM has {lstm.num_weight_params()} weights, the budget formula says {budget}")
        return LSTMBuild(method, rate, lstm, dense, budget)
    if method == "mpo_gradual":
        from ..layers.lstm import MPOLSTM

        lstm = MPOLSTM.from_lstm(nn.LSTM(input_size, hidden_size, **kwargs), n_cores=mpo_cores)  # exact: full bonds
        shapes_ = mpo_lstm_shapes(input_size, hidden_size, num_layers, rate, mpo_cores, mpo_hh_share)
        final = {name: spec[2] for name, spec in shapes_.items()}
        return LSTMBuild(method, rate, lstm, dense, budget, final_bonds=final)
    return LSTMBuild(method, rate, nn.LSTM(input_size, hidden_size, **kwargs), dense, budget, pruner_nonzeros=budget)


def compression_schedule(build: LSTMBuild, total_steps: int, begin: float, end: float, frequency: int):
    """The schedule that compresses ``build.lstm`` during training (None for dense and mpo): gradual
    magnitude pruning for ``pruning``, gradual bond truncation for ``mpo_gradual``, both on the cubic
    schedule from step ``round(begin * total_steps)`` to ``round(end * total_steps)``, every
    ``frequency`` steps. Call ``schedule.step(step)`` after each optimizer step; when it returns True
    for ``mpo_gradual``, the cores are new Parameters (:func:`mpokit.bond_schedule.sync_optimizer`)."""
    begin_step, end_step = round(begin * total_steps), round(end * total_steps)
    if build.method == "pruning":
        from ..baselines.lstm_pruning import LSTMPruner

        return LSTMPruner(build.lstm, final_nonzeros=build.pruner_nonzeros, begin_step=begin_step, end_step=end_step,
                          frequency=frequency)
    if build.method == "mpo_gradual":
        from ..bond_schedule import GradualBondTruncation

        return GradualBondTruncation(dict(build.lstm.weight_modules()), build.final_bonds, begin_step=begin_step,
                                     end_step=end_step, frequency=frequency)
    return None


def schedule_step(schedule, step: int, optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
    """Advance ``schedule`` (if any) after optimizer step ``step``; re-point ``optimizer`` (one group over
    :func:`dense_parameters`) at the live parameters when a cut replaced cores, handing each cut core's
    Adam state on to its successor (:func:`mpokit.bond_schedule.hand_on_state`: a restart would move
    every element by the full lr after each of the schedule's cuts)."""
    if schedule is not None and schedule.step(step):
        from ..bond_schedule import sync_optimizer

        sync_optimizer(optimizer, dense_parameters(model), carry=getattr(schedule, "replaced", ()))


def check_schedule_finished(schedule) -> None:
    """Internal invariant: the compression schedule reached its budget within training."""
    if schedule is None or schedule.finished():
        return
    if hasattr(schedule, "kept"):
        raise AssertionError(f"pruning kept {schedule.kept()} weights, more than the budget {schedule.final_nonzeros}")
    raise AssertionError(f"bond truncation left {schedule.num_params()} MPO parameters, more than the budget {schedule.final_params}")


def lstm_weight_count(lstm: nn.Module) -> int:
    """Stored W + U weights: MPO parameters for an MPOLSTM, non-zeros of the (masked) matrices for an
    ``nn.LSTM`` (all entries when dense and non-zero)."""
    if hasattr(lstm, "num_weight_params"):
        return int(lstm.num_weight_params())
    from ..baselines.lstm_pruning import effective_weight, lstm_weight_names

    with torch.no_grad():
        return sum(int(torch.count_nonzero(effective_weight(lstm, n))) for n in lstm_weight_names(lstm))


def model_param_count(model: nn.Module) -> int:
    """Whole-model stored parameters; pruned (masked-out) entries are not counted."""
    total = 0
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if name.endswith("_orig") and hasattr(module, name[: -len("_orig")] + "_mask"):
                total += int(getattr(module, name[: -len("_orig")] + "_mask").sum())
            else:
                total += p.numel()
    return total


def make_optimizers(model: nn.Module, lr: float) -> list[torch.optim.Optimizer]:
    """Adam for the dense parameters and SparseAdam for sparse embeddings (``nn.Embedding(sparse=True)``):
    only the rows a batch uses are updated, which keeps large vocabularies cheap on CPU."""
    sparse = [m.weight for m in model.modules() if isinstance(m, nn.Embedding) and m.sparse]
    ids = {id(p) for p in sparse}
    dense = [p for p in model.parameters() if id(p) not in ids]
    opts: list[torch.optim.Optimizer] = [torch.optim.Adam(dense, lr=lr)]
    if sparse:
        opts.append(torch.optim.SparseAdam(sparse, lr=lr))
    return opts


def dense_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters whose gradients are dense (what gradient clipping acts on)."""
    ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding) and m.sparse}
    return [p for p in model.parameters() if id(p) not in ids]


class Timer:
    """Wall-clock seconds of a ``with`` block (``timer.seconds``), including queued CUDA work."""

    def __enter__(self):
        if torch.cuda.is_initialized():
            torch.cuda.synchronize()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if torch.cuda.is_initialized():  # GPU work is asynchronous: time it to completion
            torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self._t0
        return False


def log_epoch(label: str, epoch: int, epochs: int, losses: Sequence[float], seconds: float, metric: str,
              valid: float | None) -> str:
    """One line per epoch for logs (used when progress bars are off): mean training loss of the epoch,
    validation metric when it was measured, seconds; e.g. ``mpo r10 s0 epoch 3/6: train loss 4.8123, ...``."""
    line = f"{label} epoch {epoch}/{epochs}: train loss {sum(losses) / max(len(losses), 1):.4f}"
    if valid is not None:
        line += f", valid {metric} {valid:.3f}"
    line += f", {seconds:.1f} s"
    print(line, flush=True)
    return line


def run_record(task: str, metric_name: str, cfg, method: str, rate: float, seed: int, best: tuple, losses: Sequence[float],
               model: nn.Module, build: LSTMBuild, train_s: Sequence[float], infer_s: Sequence[float]) -> dict:
    """One row of ``runs.csv``: the best (valid, test, epoch), loss trend, weight counts and times per epoch."""
    k = max(1, min(10, len(losses) // 4))
    weights = lstm_weight_count(model.lstm)
    return {
        "task": task, "preset": cfg.preset, "method": method, "rate": rate, "seed": seed, "lr": cfg.lr,
        "metric_name": metric_name, "metric_valid": best[0], "metric_test": best[1], "best_epoch": best[2],
        "epochs": cfg.epochs, "first_loss": sum(losses[:k]) / k, "last_loss": sum(losses[-k:]) / k,
        "lstm_dense_weights": build.dense_weights, "lstm_weights": weights,
        "achieved_rate": build.dense_weights / weights, "model_params": model_param_count(model),
        "bond_dims": build.bond_dims(), "sparsity": 1.0 - weights / build.dense_weights,
        "train_s_per_epoch": sum(train_s) / len(train_s), "infer_s_per_epoch": sum(infer_s) / len(infer_s),
    }


def preset_config(presets: dict, preset: str, **overrides):
    """A preset with some fields replaced (``None`` values are ignored)."""
    if preset not in presets:
        raise ValueError(f"unknown preset {preset!r}; choose from {tuple(presets)}, e.g. 'smoke'")
    return replace(presets[preset], **{k: v for k, v in overrides.items() if v is not None})
