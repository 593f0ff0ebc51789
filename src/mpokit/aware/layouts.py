"""Layouts (how a matrix's modes are split over cores) and the per-matrix layout search.

A layout is ``(out_modes, in_modes)`` for ``W (out, in)``: core ``k`` has shape ``(d_{k-1}, i_k, j_k, d_k)``.

* ``"interleaved-n"``: :func:`mpokit.shapes.choose_modes` (every core holds out and in modes; the MPOP layout).
* ``"low-rank"``: ``((out, 1), (1, in))``: a 2-core MPO is a truncated SVD; whitened, it is SVD-LLM.
* ``"hybrid-out"``: ``((o_1, o_2, 1), (1, 1, in))``: a low-rank ``A B`` whose ``A (out, d)`` is itself a 2-core
  MPO; all in modes sit in the last core, so its whitening is exact.
* ``"hybrid-in"``: ``((out, 1, 1), (1, j_1, j_2))``: a low-rank ``A B`` whose ``B (d, in)`` is a 2-core MPO.

:func:`search_layout` initialises every layout that fits the budget from its whitened TT-SVD (cheap: one TT-SVD
and one objective each), ranks them by that exact output error, runs the ALS sweeps only on the best ``fit_top``
(from the better of the whitened and plain TT-SVD starts), and keeps the layout with the lowest output error.
Two shortcuts where the whitening is exact (one core holds every in mode): the plain TT-SVD start is not tried
(it minimises the weight error in a metric the whitened start already gets exactly), and the low-rank layout
gets no sweeps, since its whitened start is the minimiser at its rank (Eckart-Young in whitened coordinates,
up to the damping of ``C``).
The low-rank layout's whitened start *is* SVD-LLM, so the chosen layout is never worse than ``svd-whitened``.

Which candidates are tried is a *layout search* (:data:`LAYOUT_SEARCHES`, :func:`layouts_for`):

* ``"all"``: every candidate above (the most accurate; each layout costs a TT-SVD, the best two their sweeps);
* ``"exact"``: the layouts whose whitening is exact, so their start is already the whitened optimum of their
  truncation and their sweeps take the closed-form route: low-rank and hybrid-out (for row weights, whose metric
  is over the out index: low-rank and hybrid-in). Several times faster than ``"all"``; never worse than
  ``svd-whitened`` either;
* ``"none"``: the ``n_cores`` interleaved layout only (MPOP's).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .. import shapes
from ..mpo import rebuild_matrix
from .als import (FitResult, _check_fit_options, _check_int, _fit_problem, _init_plain, _init_whitened, _prepare,
                  _Problem, _problem_modes, _SolverOptions)

__all__ = ["Layout", "candidate_layouts", "LAYOUT_SEARCHES", "layouts_for", "LayoutTrial", "LayoutSearch",
           "search_layout"]

LAYOUT_SEARCHES = ("all", "exact", "none")


@dataclass(frozen=True)
class Layout:
    """``name`` (e.g. ``"interleaved-3"``, ``"low-rank"``, ``"hybrid-out"``) and the modes of ``W (out, in)``."""

    name: str
    out_modes: tuple[int, ...]
    in_modes: tuple[int, ...]

    @property
    def n_cores(self) -> int:
        return len(self.out_modes)

    @property
    def min_params(self) -> int:
        """Parameters with every bond 1."""
        return shapes.min_num_params(self.out_modes, self.in_modes)

    @property
    def exact_whitening(self) -> bool:
        """One core holds all the in modes, so whitening by ``chol(C)`` is exact."""
        return sum(1 for m in self.in_modes if m > 1) <= 1

    @property
    def is_low_rank(self) -> bool:
        """``((out, 1), (1, in))``: the 2-core layout of a truncated SVD."""
        return self.n_cores == 2 and self.out_modes[1] == 1 and self.in_modes[0] == 1

    @property
    def exact_row_whitening(self) -> bool:
        """One core holds all the out modes, so row weights (a metric over the out index) whiten exactly."""
        return sum(1 for m in self.out_modes if m > 1) <= 1

    def to_dict(self) -> dict:
        return {"name": self.name, "out_modes": list(self.out_modes), "in_modes": list(self.in_modes)}

    @classmethod
    def from_dict(cls, d: dict) -> "Layout":
        return cls(str(d["name"]), tuple(int(m) for m in d["out_modes"]), tuple(int(m) for m in d["in_modes"]))


def _check_size(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}; e.g. {name}=576")
    return int(value)


def candidate_layouts(out_features: int, in_features: int) -> list[Layout]:
    """Interleaved n = 2..5, low-rank, hybrid-out and hybrid-in layouts of an ``(out, in)`` matrix (duplicates
    dropped). Interleaved and hybrid modes may zero-pad sizes that do not factor well (see ``shapes.factorize``)."""
    out_features = _check_size("out_features", out_features)
    in_features = _check_size("in_features", in_features)
    found: list[Layout] = []
    for n in range(2, 6):
        om, im = shapes.choose_modes(out_features, in_features, n)
        found.append(Layout(f"interleaved-{n}", tuple(om), tuple(im)))
    found.append(Layout("low-rank", (out_features, 1), (1, in_features)))
    o1, o2 = shapes.factorize(out_features, 2)
    found.append(Layout("hybrid-out", (o1, o2, 1), (1, 1, in_features)))
    j1, j2 = shapes.factorize(in_features, 2)
    found.append(Layout("hybrid-in", (out_features, 1, 1), (1, j1, j2)))
    unique, seen = [], set()
    for layout in found:
        key = (layout.out_modes, layout.in_modes)
        if key not in seen:
            seen.add(key)
            unique.append(layout)
    return unique


def layouts_for(out_features: int, in_features: int, search: str = "all", *, n_cores: int = 5,
                row_weighted: bool = False) -> list[Layout]:
    """The candidates a layout ``search`` (``"all"``, ``"exact"`` or ``"none"``, see the module docstring) tries on
    an ``(out, in)`` matrix; ``row_weighted``: the metric is over the out index (an embedding's row weights)."""
    if search not in LAYOUT_SEARCHES:
        raise ValueError(f"layout search must be one of {LAYOUT_SEARCHES}, got {search!r}; e.g. 'exact'")
    if search == "none":
        n = _check_size("n_cores", n_cores)
        return [Layout(f"interleaved-{n}", *map(tuple, shapes.choose_modes(int(out_features), int(in_features), n)))]
    found = candidate_layouts(out_features, in_features)
    if search == "all":
        return found
    return [lay for lay in found if (lay.exact_row_whitening if row_weighted else lay.exact_whitening)]


@dataclass
class LayoutTrial:
    """One layout tried at the budget. ``rel_output_error`` is exact: after ``sweeps`` ALS sweeps (0: the whitened
    TT-SVD start only, for layouts ranked below ``fit_top``)."""

    layout: Layout
    params: int
    bond_dims: tuple[int, ...]
    rel_output_error: float
    rel_weight_error: float
    init: str = "whitened"
    sweeps: int = 0

    def to_dict(self) -> dict:
        return {"layout": self.layout.to_dict(), "params": self.params, "bond_dims": list(self.bond_dims),
                "rel_output_error": self.rel_output_error, "rel_weight_error": self.rel_weight_error,
                "init": self.init, "sweeps": self.sweeps}


@dataclass
class LayoutSearch:
    best: FitResult
    layout: Layout
    trials: list[LayoutTrial]


def _rel_weight_error(W: torch.Tensor, approx: torch.Tensor) -> float:
    ref = float(torch.linalg.vector_norm(W.double()))
    diff = float(torch.linalg.vector_norm(W.double() - approx.double()))
    return diff / ref if ref > 0 else 0.0


def _matrix(prob: _Problem, cores, transposed: bool) -> torch.Tensor:
    """``W'`` of the problem's cores, in ``W``'s orientation and size."""
    rows, cols = prob.stats.shape
    full = rebuild_matrix(cores)[:rows, :cols]
    return full.T if transposed else full


def search_layout(
    W: torch.Tensor,
    C: torch.Tensor | None = None,
    *,
    max_params: int,
    row_weights: torch.Tensor | None = None,
    layouts: Sequence[Layout] | None = None,
    max_sweeps: int = 8,
    tol: float = 1e-4,
    fit_top: int = 2,
    damping: float = 1e-6,
    gauge: str = "symmetric",
    dense_limit: int = 2048,
    cg_iters: int = 12,
) -> LayoutSearch:
    """The layout with the lowest output error at ``max_params`` (see the module docstring).

    Layouts whose smallest MPO (all bonds 1) exceeds ``max_params`` are skipped; if none fits, ``ValueError``.
    """
    stats, transposed = _prepare(W, C, row_weights)
    _check_fit_options(max_sweeps, tol, gauge)
    fit_top = _check_int("fit_top", fit_top, 1, "fit_top=2")
    max_params = _check_int("max_params", max_params, 1, f"max_params={W.numel() // 2}")
    out_features, in_features = W.shape
    layouts = candidate_layouts(out_features, in_features) if layouts is None else list(layouts)
    for layout in layouts:
        if not isinstance(layout, Layout):
            raise TypeError(f"layouts must hold Layout objects, got {type(layout).__name__}; "
                            f"e.g. Layout('low-rank', ({out_features}, 1), (1, {in_features}))")
        for name, modes, size in (("out_modes", layout.out_modes, out_features), ("in_modes", layout.in_modes, in_features)):
            if math.prod(modes) < size:
                raise ValueError(f"layout {layout.name!r}: {name} {modes} multiply to {math.prod(modes)} < {size}; "
                                 f"e.g. {name}={shapes.factorize(int(size), len(modes))}")
    fitting = [lay for lay in layouts if lay.min_params <= max_params]
    if not fitting:
        smallest = min(layouts, key=lambda lay: lay.min_params) if layouts else None
        raise ValueError(
            f"max_params={max_params} is below the smallest MPO of every layout"
            + (f" (the smallest, {smallest.name!r}, needs {smallest.min_params} parameters with all bonds 1)" if smallest else "")
            + f"; e.g. max_params={max(W.numel() // 2, smallest.min_params if smallest else 1)}"
        )
    opts = _SolverOptions(dense_limit=dense_limit, cg_iters=cg_iters)
    criterion = {"max_params": max_params}
    starts = []
    for layout in fitting:
        pm_out, pm_in = _problem_modes(layout.out_modes, layout.in_modes, transposed)
        prob = _Problem(stats, pm_out, pm_in, damping)
        cores, f, name, dims = _init_whitened(prob, criterion)
        starts.append((f, layout, prob, cores, name, dims))
    order = sorted(range(len(starts)), key=lambda i: starts[i][0])
    fits: dict[int, FitResult] = {}
    for i in order[:fit_top]:
        f, layout, prob, cores, name, dims = starts[i]
        if not stats.identity and not prob.exact:
            plain = _init_plain(prob, dims)
            if plain is not None and plain[1] < f:
                cores, f, name = plain[0], plain[1], "tt-svd"
        history = [math.sqrt(max(f, 0.0) / stats.f0)]
        optimal = layout.is_low_rank and not stats.identity  # whitened low rank: already the minimiser
        fits[i] = _fit_problem(prob, criterion, 0 if optimal else max_sweeps, tol, gauge, W.dtype, transposed, opts,
                               start=(cores, f, name, history))
    trials = []
    for i, (f, layout, prob, cores, name, dims) in enumerate(starts):
        if i in fits:
            fit = fits[i]
            trials.append(LayoutTrial(layout, fit.mpo.num_params, fit.mpo.bond_dims, fit.history[-1],
                                      _rel_weight_error(W, fit.mpo.to_matrix()), fit.init, fit.sweeps))
            continue
        params = shapes.mpo_num_params(layout.out_modes, layout.in_modes, dims)
        trials.append(LayoutTrial(layout, params, tuple(dims), math.sqrt(max(f, 0.0) / stats.f0),
                                  _rel_weight_error(W, _matrix(prob, cores, transposed)), name, 0))
    # lowest output error; a tie (within 1e-6 relative: the SVDs of a float32 weight run in float32, e.g. a hybrid
    # whose extra split is lossless) goes to the fewer parameters, so no layout is chosen for a rounding-level gain
    # it pays for in parameters
    lowest = min(fits[i].history[-1] for i in fits)
    tied = [i for i in fits if fits[i].history[-1] <= lowest * (1 + 1e-6) + 1e-15]
    best_i = min(tied, key=lambda i: (fits[i].mpo.num_params, fits[i].history[-1]))
    return LayoutSearch(best=fits[best_i], layout=starts[best_i][1], trials=trials)
