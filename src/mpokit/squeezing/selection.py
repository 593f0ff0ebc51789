"""Which central bonds to cut, from singular values alone (pure; no model, no training).

The bound of a cut comes from the precomputed singular values ``lambda_k`` of each
bond k (MPOP Eq. 3-4, squared form): keeping ``d'_k`` values at every bond gives
``||W - W'||_F <= sqrt(sum_k eps_k^2)``, ``eps_k^2 = sum_{i > d'_k} lambda_{k,i}^2``.
Right after re-gauging nothing is discarded yet, so that is the increase.

Data-aware ranking: given an :class:`OutputMetric` per matrix (the squared output error
``tr((W - W') C (W - W')^T)`` of a truncation to given bonds, under calibration statistics, and the
reference ``sqrt(tr(W C W^T))``), a cut's ``bound`` is its output error instead of the Frobenius
bound, and every score ranks by it (:func:`propose_cut`, :func:`select_cuts`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch

from .. import shapes

__all__ = ["SCORES", "MatrixSpectrum", "OutputMetric", "Cut", "central_bonds", "propose_cut", "cut_score",
           "select_cuts", "allocate_direct", "check_step_size", "check_score"]

SCORES = ("bound", "relative", "per_param")
"""How cuts are ranked:

* ``"bound"``: the increase of the matrix's error bound ``||W - W'||_F`` (MPOP);
* ``"relative"``: that increase divided by ``||W||_F`` (scale-free across matrices);
* ``"per_param"``: increase of the *squared* bound per parameter removed (best use of a budget).
"""


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
class OutputMetric:
    """The data-aware error of truncating one matrix (as it is now, right after a re-gauge).

    ``error(new_dims)`` is the squared output error ``tr((W - W') C (W - W')^T)`` of the matrix truncated to
    the bonds ``new_dims`` (0 at its current bonds); ``norm`` is ``sqrt(tr(W C W^T))`` (for ``"relative"``).
    """

    error: Callable[[tuple[int, ...]], float]
    norm: float


@dataclass(frozen=True)
class Cut:
    """One proposed cut of one matrix: ``old_dims -> new_dims``.

    ``bound`` is the increase of the matrix's Frobenius error bound,
    ``sqrt(E(new)) - sqrt(E(old))`` with ``E(d) = sum_k sum_{i >= d_k} lambda_{k,i}^2``
    (``E(old) = 0`` right after a re-gauge), or with an :class:`OutputMetric` the output error
    ``sqrt(metric.error(new))``. ``score`` ranks cuts (lower is better).
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


def check_step_size(step_size) -> None:
    ok_int = isinstance(step_size, int) and not isinstance(step_size, bool) and step_size >= 1
    ok_float = isinstance(step_size, float) and 0.0 < step_size < 1.0
    if not (ok_int or ok_float):
        raise ValueError(
            f"step_size must be an int >= 1 (bonds d -> d - step) or a float in (0, 1) "
            f"(a fraction of each bond), got {step_size!r}; e.g. step_size=1 or step_size=0.1"
        )


def check_score(score) -> None:
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}; e.g. score='bound'")


def propose_cut(spectrum: MatrixSpectrum, step_size: int | float = 1, score: str = "bound",
                metric: OutputMetric | None = None) -> Cut | None:
    """The next cut of one matrix: its central core's bonds ``d -> max(1, d - step)``.

    Other bonds are lowered only as far as :func:`shapes.consistent_bond_dims` needs.
    Returns None when no central bond can shrink. With ``metric`` the cut is measured by its output
    error (the spectrum must be the current one: nothing discarded yet).
    """
    check_step_size(step_size)
    check_score(score)
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
    if metric is None:
        e_old = _tail_energy(spectrum.singular_values, dims)
        e_new = _tail_energy(spectrum.singular_values, new)
        norm = spectrum.norm
    else:
        e_old, e_new, norm = 0.0, max(float(metric.error(new)), 0.0), metric.norm
    bound = math.sqrt(e_new) - math.sqrt(e_old)
    before = shapes.mpo_num_params(spectrum.out_modes, spectrum.in_modes, dims)
    after = shapes.mpo_num_params(spectrum.out_modes, spectrum.in_modes, new)
    return Cut(spectrum.name, tuple(cut), dims, new, bound, before, after, cut_score(score, bound, e_new - e_old, before - after, norm))


def cut_score(score: str, bound: float, energy_increase: float, params_removed: int, norm: float) -> float:
    """Rank of a cut under ``score`` (lower is better); see :data:`SCORES`."""
    if score == "bound":
        return bound
    if score == "relative":
        return bound / norm if norm > 0 else 0.0
    return energy_increase / max(params_removed, 1)


def select_cuts(
    spectra: Sequence[MatrixSpectrum], step_size: int | float = 1, count: int = 1, score: str = "bound",
    metrics: Mapping[str, OutputMetric] | None = None,
) -> list[Cut]:
    """The ``count`` cheapest cuts, one per matrix, sorted by ``(score, name)``.

    ``metrics`` (name -> :class:`OutputMetric`, one for every spectrum) ranks by output error instead.
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"count (matrices cut per step) must be an int >= 1, got {count!r}; e.g. count=1")
    if metrics is not None:
        missing = [s.name for s in spectra if s.name not in metrics]
        if missing:
            raise ValueError(f"data-aware ranking needs an OutputMetric for every matrix; none for {missing[:3]}")
    cuts = [c for c in (propose_cut(s, step_size, score, None if metrics is None else metrics[s.name])
                        for s in spectra) if c is not None]
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
