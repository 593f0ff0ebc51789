"""Gradual magnitude pruning of LSTM weights (Zhu & Gupta 2017), the baseline of MPO-LSTM.

Only the input-to-hidden ``W`` (``weight_ih_l*``) and hidden-to-hidden ``U`` (``weight_hh_l*``)
matrices of an ``nn.LSTM`` are pruned; biases, embeddings and heads stay dense.

* :func:`cubic_sparsity` is the schedule (Zhu & Gupta 2017, Eq. 1)::

      s_t = s_f + (s_i - s_f) * (1 - (t - t_0) / (n Δt))^3     for t_0 <= t <= t_0 + n Δt

* :class:`LSTMPruner` puts a ``torch.nn.utils.prune`` mask on each W / U (the module then holds
  ``weight_ih_l0_orig`` (Parameter) and ``weight_ih_l0_mask`` (buffer), and every forward uses
  ``orig * mask``). :meth:`LSTMPruner.step`, called after each optimizer step, shrinks the masks
  to the scheduled sparsity by magnitude; a pruned weight never comes back (masks only shrink) and
  its gradient is zero, so it stays zero through training.
* :func:`save_pruned` / :func:`load_pruned` write and read any model holding such masks as
  safetensors + JSON (no pickle, atomic writes); the masks survive the round trip.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
from dataclasses import dataclass
from typing import Mapping

import torch
from torch import nn
from torch.nn.utils import prune

from ..atomic import atomic_write_text, atomic_write_with

__all__ = [
    "cubic_sparsity",
    "lstm_weight_names",
    "effective_weight",
    "split_nonzeros",
    "LSTMPruner",
    "pruned_tensors",
    "save_pruned",
    "load_pruned",
]

CHECKPOINT_WEIGHTS = "model.safetensors"
CHECKPOINT_META = "pruning.json"
_FORMAT_VERSION = 1


def cubic_sparsity(step: int, final_sparsity: float, begin_step: int, end_step: int, initial_sparsity: float = 0.0) -> float:
    """Sparsity at ``step`` of the cubic schedule from ``initial_sparsity`` (at ``begin_step``) to
    ``final_sparsity`` (at ``end_step`` and after). Before ``begin_step`` it is 0."""
    for name, s in (("final_sparsity", final_sparsity), ("initial_sparsity", initial_sparsity)):
        if not 0.0 <= s < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {s}; e.g. 0.9 keeps 10% of the weights")
    if not 0 <= begin_step <= end_step:
        raise ValueError(f"need 0 <= begin_step <= end_step, got begin_step={begin_step}, end_step={end_step}; e.g. 100, 1000")
    if step < begin_step:
        return 0.0
    if step >= end_step or end_step == begin_step:
        return final_sparsity
    progress = (step - begin_step) / (end_step - begin_step)
    return final_sparsity + (initial_sparsity - final_sparsity) * (1.0 - progress) ** 3


def lstm_weight_names(lstm: nn.LSTM) -> list[str]:
    """Names of the W (``weight_ih_l*``) and U (``weight_hh_l*``) matrices of an ``nn.LSTM``."""
    if not isinstance(lstm, nn.LSTM):
        raise TypeError(f"expected an nn.LSTM, got {type(lstm).__name__}; e.g. nn.LSTM(256, 256)")
    return [n for n in lstm._flat_weights_names if n.startswith(("weight_ih_l", "weight_hh_l"))]


def split_nonzeros(numels: Mapping[str, int], total: int) -> dict[str, int]:
    """Share ``total`` kept weights among tensors in proportion to their sizes (uniform sparsity),
    exactly: the parts sum to ``total`` (largest remainders get the leftovers)."""
    size = sum(numels.values())
    if not 1 <= total <= size:
        raise ValueError(f"total non-zeros must be in [1, {size}], got {total}; e.g. {size // 10} for rate 10")
    exact = {k: total * n / size for k, n in numels.items()}
    keep = {k: math.floor(v) for k, v in exact.items()}
    leftover = total - sum(keep.values())
    for k in sorted(exact, key=lambda k: keep[k] - exact[k])[:leftover]:
        keep[k] += 1
    return keep


def effective_weight(module: nn.Module, name: str) -> torch.Tensor:
    """The effective (masked) weight: ``orig * mask`` when pruned, else the parameter itself."""
    if hasattr(module, name + "_mask"):
        return getattr(module, name + "_orig") * getattr(module, name + "_mask")
    return getattr(module, name)


@dataclass
class _Target:
    name: str
    numel: int
    final_keep: int


class LSTMPruner:
    """Gradual magnitude pruning of the W / U matrices of one ``nn.LSTM``.

    Give the final budget either as ``final_nonzeros`` (total kept W+U weights, shared in proportion
    to the tensor sizes) or as ``rate`` (dense W+U count / kept count). The sparsity follows
    :func:`cubic_sparsity` between ``begin_step`` and ``end_step``; masks are updated every
    ``frequency`` steps. Call :meth:`step` after every ``optimizer.step()``.

    Example::

        pruner = LSTMPruner(model.lstm, rate=10, begin_step=100, end_step=1000, frequency=50)
        for step, batch in enumerate(batches):
            loss.backward(); opt.step(); pruner.step(step)
    """

    def __init__(
        self,
        lstm: nn.LSTM,
        *,
        final_nonzeros: int | None = None,
        rate: float | None = None,
        begin_step: int = 0,
        end_step: int = 0,
        frequency: int = 1,
        initial_sparsity: float = 0.0,
    ):
        names = lstm_weight_names(lstm)
        numels = {n: getattr(lstm, n).numel() for n in names}
        dense = sum(numels.values())
        if (final_nonzeros is None) == (rate is None):
            raise ValueError("give exactly one of final_nonzeros or rate; e.g. LSTMPruner(lstm, rate=10)")
        if rate is not None:
            if not rate >= 1:
                raise ValueError(f"rate must be >= 1 (dense / kept weights), got {rate}; e.g. rate=10")
            final_nonzeros = max(1, round(dense / rate))
        if frequency < 1:
            raise ValueError(f"frequency must be >= 1 step, got {frequency}; e.g. frequency=50")
        keep = split_nonzeros(numels, int(final_nonzeros))
        self.lstm = lstm
        self.targets = [_Target(n, numels[n], keep[n]) for n in names]
        self.begin_step, self.end_step, self.frequency = int(begin_step), int(end_step), int(frequency)
        self.initial_sparsity = float(initial_sparsity)
        cubic_sparsity(0, 0.0, self.begin_step, self.end_step, self.initial_sparsity)  # validates the steps
        for t in self.targets:
            if not hasattr(lstm, t.name + "_mask"):
                prune.custom_from_mask(lstm, t.name, torch.ones_like(getattr(lstm, t.name), dtype=torch.bool))

    @property
    def dense_weights(self) -> int:
        return sum(t.numel for t in self.targets)

    @property
    def final_nonzeros(self) -> int:
        return sum(t.final_keep for t in self.targets)

    def keep_at(self, step: int) -> dict[str, int]:
        """Weights to keep per tensor at ``step`` (the schedule, evaluated per tensor)."""
        out = {}
        for t in self.targets:
            s_final = 1.0 - t.final_keep / t.numel
            s = cubic_sparsity(step, s_final, self.begin_step, self.end_step, min(self.initial_sparsity, s_final))
            out[t.name] = t.final_keep if step >= self.end_step else max(t.final_keep, t.numel - math.floor(s * t.numel))
        return out

    @torch.no_grad()
    def apply_keep(self, keep: Mapping[str, int]) -> None:
        """Shrink each mask to its ``keep[name]`` largest-magnitude surviving weights."""
        for t in self.targets:
            mask = getattr(self.lstm, t.name + "_mask")
            orig = getattr(self.lstm, t.name + "_orig")
            k = int(keep[t.name])
            if int(mask.sum()) <= k:
                continue
            score = (orig.abs() * mask).flatten()
            score[~mask.flatten().bool()] = -1.0  # pruned weights rank last: masks only shrink
            new = torch.zeros(mask.numel(), dtype=mask.dtype, device=mask.device)
            new[torch.topk(score, k, sorted=False).indices] = 1
            mask.copy_(new.view_as(mask))
            orig.mul_(mask)  # the raw parameter holds zeros too
            setattr(self.lstm, t.name, orig * mask)  # refresh the attribute now (each forward recomputes it)

    def step(self, step: int) -> bool:
        """Update the masks if ``step`` is a pruning step; returns whether they changed."""
        due = step >= self.end_step or (step >= self.begin_step and (step - self.begin_step) % self.frequency == 0)
        if not due or self.finished():
            return False
        self.apply_keep(self.keep_at(step))
        return True

    def finalize(self) -> None:
        """Jump to the final sparsity now."""
        self.apply_keep({t.name: t.final_keep for t in self.targets})

    def nonzeros(self) -> int:
        """Non-zero entries of the effective (masked) W and U."""
        return sum(int(torch.count_nonzero(effective_weight(self.lstm, t.name))) for t in self.targets)

    def kept(self) -> int:
        """Entries the masks keep (>= :meth:`nonzeros`; equal unless a kept weight is exactly 0)."""
        return sum(int(getattr(self.lstm, t.name + "_mask").sum()) for t in self.targets)

    def finished(self) -> bool:
        return self.kept() <= self.final_nonzeros

    def sparsity(self) -> float:
        return 1.0 - self.kept() / self.dense_weights


def pruned_tensors(model: nn.Module) -> list[tuple[str, str]]:
    """(module path, tensor name) of every ``torch.nn.utils.prune`` mask in ``model``."""
    out = []
    for path, module in model.named_modules():
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, prune.BasePruningMethod):
                out.append((path, hook._tensor_name))
    return sorted(out)


def save_pruned(model: nn.Module, directory: str | os.PathLike, extra: Mapping | None = None) -> pathlib.Path:
    """Save ``model`` (its state dict, masks included) to ``directory/model.safetensors`` and the list
    of pruned tensors (plus ``extra`` JSON-able metadata) to ``directory/pruning.json``."""
    from safetensors.torch import save_file

    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {"format_version": _FORMAT_VERSION, "pruned": [list(p) for p in pruned_tensors(model)], "extra": dict(extra or {})}
    atomic_write_with(directory / CHECKPOINT_WEIGHTS, lambda tmp: save_file(state, tmp))
    atomic_write_text(directory / CHECKPOINT_META, json.dumps(meta, indent=2))
    return directory


def load_pruned(model: nn.Module, directory: str | os.PathLike) -> dict:
    """Load a :func:`save_pruned` checkpoint into a freshly built ``model`` of the same architecture:
    re-creates the masks, then loads weights and masks strictly. Returns the JSON metadata."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = pathlib.Path(directory)
    meta_path, weights_path = directory / CHECKPOINT_META, directory / CHECKPOINT_WEIGHTS
    for p in (meta_path, weights_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p} is missing; a pruned checkpoint has {CHECKPOINT_WEIGHTS} and {CHECKPOINT_META} (see save_pruned)")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{meta_path} is not valid JSON ({e}); the checkpoint is corrupt") from e
    if meta.get("format_version") != _FORMAT_VERSION:
        raise ValueError(f"{meta_path}: unsupported format_version {meta.get('format_version')!r}, expected {_FORMAT_VERSION}")
    modules = dict(model.named_modules())
    existing = set(pruned_tensors(model))
    for path, name in meta["pruned"]:
        if path not in modules or not hasattr(modules[path], name):
            raise ValueError(f"checkpoint prunes {path or '<root>'}.{name}, which this model does not have; build the same architecture")
        if (path, name) not in existing:
            prune.identity(modules[path], name)
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{weights_path} could not be read ({e}); the checkpoint is corrupt or truncated") from e
    model.load_state_dict(state, strict=True)
    return meta
