"""The model side of squeezing: finding MPO layers, their spectra, budgets, LFA trainability, the optimizer."""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
from torch import nn

from .. import shapes
from ..layers.base import MPOModule
from .selection import MatrixSpectrum, central_bonds

__all__ = ["find_mpo_modules", "spectra_of", "min_squeezable_params", "resolve_budget", "set_lfa_trainable"]



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


def set_lfa_trainable(modules: Mapping[str, MPOModule]) -> None:
    """Central cores frozen, auxiliary cores trainable (MPOP's LFA); other params untouched."""
    for m in modules.values():
        for p in m.central_parameters():
            p.requires_grad_(False)
        for p in m.auxiliary_parameters():
            p.requires_grad_(True)
