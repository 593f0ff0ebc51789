"""MPOP_dir: truncate every MPO layer of a model to a parameter budget in one call, no fine-tuning between cuts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from .modules import find_mpo_modules, resolve_budget, spectra_of
from .selection import allocate_direct, check_score, check_step_size

__all__ = ["DirectResult", "truncate_directly"]


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
    check_score(score)
    check_step_size(step_size)
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
