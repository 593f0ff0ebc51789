"""Global unstructured magnitude pruning of chosen matrices (baseline of MPOP squeezing).

:func:`magnitude_prune_` keeps the ``target_params`` largest-magnitude entries across *all*
target weight matrices together (one global threshold, Han et al. 2015) and zeroes the rest.
The mask is persistent: each module gets a ``torch.nn.utils.prune`` re-parametrisation
(``weight_orig`` Parameter, ``weight_mask`` buffer, ``weight = weight_orig * weight_mask``
recomputed before every forward), so the gradient of a pruned entry is zero and the entry
stays zero through any fine-tuning. :func:`make_pruning_permanent_` folds the masks in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn
from torch.nn.utils import prune

__all__ = ["PruneResult", "magnitude_prune_", "global_magnitude_masks", "kept_params", "make_pruning_permanent_"]


@dataclass
class PruneResult:
    """``kept`` non-zero entries of ``dense`` in the target matrices; ``threshold`` = smallest kept |w|."""

    targets: list[str]
    dense: int
    kept: int
    budget: int
    threshold: float


def _resolve_targets(model: nn.Module, targets: Sequence[str] | None) -> dict[str, nn.Module]:
    modules = dict(model.named_modules())
    if targets is None:
        found = {n: m for n, m in modules.items() if isinstance(m, nn.Linear)}
        if not found:
            raise ValueError("the model has no nn.Linear modules to prune; pass targets=[...] with module names")
        return found
    if isinstance(targets, str):
        targets = [targets]
    unknown = [t for t in targets if t not in modules or not isinstance(getattr(modules[t], "weight", None), torch.Tensor)]
    if unknown:
        sample = [n for n, m in modules.items() if isinstance(m, nn.Linear)][:3]
        raise ValueError(f"unknown target(s) {unknown}: not modules with a weight in this model; valid names e.g. {sample}")
    return {t: modules[t] for t in targets}


def _budget(dense: int, target_params, target_ratio) -> int:
    if target_params is not None and target_ratio is not None:
        raise ValueError(f"give one budget, got target_params={target_params!r} and target_ratio={target_ratio!r}; e.g. target_ratio=0.5")
    if target_ratio is not None:
        if isinstance(target_ratio, bool) or not isinstance(target_ratio, (int, float)) or not 0 < target_ratio <= 1:
            raise ValueError(f"target_ratio must be in (0, 1] (fraction of the dense entries kept), got {target_ratio!r}; e.g. target_ratio=0.5")
        target_params = int(math.floor(target_ratio * dense))
    if target_params is None:
        raise ValueError("magnitude pruning needs a budget: target_params=... or target_ratio=..., e.g. target_ratio=0.5")
    if isinstance(target_params, bool) or not isinstance(target_params, int) or not 1 <= target_params <= dense:
        raise ValueError(
            f"target_params must be an int in [1, {dense}] (entries kept of the target matrices), got {target_params!r}; "
            f"e.g. target_params={dense // 2}"
        )
    return target_params


def global_magnitude_masks(weights: Sequence[torch.Tensor], keep: int) -> tuple[list[torch.Tensor], float]:
    """Pure: boolean masks keeping exactly the ``keep`` largest |w| over all ``weights`` (ties by position)."""
    flat = torch.cat([w.detach().abs().reshape(-1).float() for w in weights])
    idx = torch.topk(flat, keep, sorted=False).indices
    keep_flat = torch.zeros_like(flat, dtype=torch.bool)
    keep_flat[idx] = True
    masks, start = [], 0
    for w in weights:
        masks.append(keep_flat[start : start + w.numel()].reshape(w.shape).to(w.device))
        start += w.numel()
    threshold = float(flat[idx].min()) if keep > 0 else float("inf")
    return masks, threshold


@torch.no_grad()
def magnitude_prune_(
    model: nn.Module,
    targets: Sequence[str] | None = None,
    *,
    target_params: int | None = None,
    target_ratio: float | None = None,
) -> PruneResult:
    """Prune ``targets`` (module names; default every nn.Linear) in place to a global budget.

    ``target_ratio`` is the fraction of the target matrices' entries kept. Modules that
    already carry a mask are pruned further (their current effective weight is ranked).
    """
    modules = _resolve_targets(model, targets)
    weights = [m.weight for m in modules.values()]
    dense = sum(w.numel() for w in weights)
    budget = _budget(dense, target_params, target_ratio)
    masks, threshold = global_magnitude_masks(weights, budget)
    for (name, module), mask in zip(modules.items(), masks):
        if prune.is_pruned(module) and hasattr(module, "weight_mask"):
            mask = mask & module.weight_mask.bool()
            prune.remove(module, "weight")
        prune.custom_from_mask(module, "weight", mask.to(module.weight.dtype))
    return PruneResult(list(modules), dense, kept_params(model, list(modules)), budget, threshold)


def kept_params(model: nn.Module, targets: Sequence[str]) -> int:
    """Non-zero entries of the targets' effective weights."""
    modules = dict(model.named_modules())
    return sum(int((modules[t].weight != 0).sum()) for t in targets)


def make_pruning_permanent_(model: nn.Module) -> None:
    """Fold every prune mask into a plain ``weight`` Parameter (zeros stay, masks go)."""
    for module in model.modules():
        if prune.is_pruned(module) and hasattr(module, "weight_mask"):
            prune.remove(module, "weight")
