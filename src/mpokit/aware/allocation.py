"""Splitting a global parameter budget across matrices by the marginal decrease of output error.

:func:`error_curve` gives, per matrix and method, a cheap estimate of the relative output error squared at a grid
of budgets, from spectra only (no ALS):

* ``svd`` / ``svd-whitened``: exact. For the SVD ``W = U S V^T`` (whitened: ``W L = U S V^T``) the discarded part is
  ``U_{>r} S V_{>r}^T`` (times ``L^{-1}``), whose output error is ``sum_{i>r} s_i^2 (V^T C' V)_ii`` with
  ``C' = C`` (whitened: ``L^{-1} C L^{-T}``), a cumulative sum.
* ``mpo-aware``: per candidate layout (``layouts``, default every candidate), the truncation bound ``sum_k eps_k^2`` of the Kronecker-whitened TT-SVD
  relative to ``||W K||^2`` (exact whitening for the low-rank and hybrid-out layouts), the minimum over layouts;
  the low-rank layout's is the exact whitened-SVD curve above.
* ``mpo``: TT-SVD minimises the weight error, so its curve is the Frobenius truncation bound (weight metric).
* ``magnitude`` / ``wanda``: the pruned entries' ``W_ij^2 C_jj`` (exact with row weights or without statistics; the
  diagonal approximation of the output error with a dense ``C``). ``2:4`` has one budget: its exact error.

:func:`allocate_budget` walks the lower convex hull of every curve, spending parameters where
``sum(weight * error^2)`` falls fastest per parameter.
"""

from __future__ import annotations

import heapq
import math
import numbers
from dataclasses import dataclass

import torch

from .. import shapes
from ..mpo import MPO
from .als import _prepare, _Problem, _problem_modes
from .layouts import Layout, candidate_layouts
from .methods import METHODS, NEEDS, approximate
from .objective import _check_matrix, check_stats, mode_multiply

__all__ = ["ErrorCurve", "error_curve", "allocate_budget"]


@dataclass
class ErrorCurve:
    """``params`` increasing; ``errors`` the relative output error squared at each (a cheap estimate)."""

    params: list[int]
    errors: list[float]


def _grid(dense: int, smallest: int, points: int) -> list[int]:
    budgets = {smallest} | {max(smallest, round(dense * i / points)) for i in range(1, points + 1)}
    return sorted(b for b in budgets if b >= smallest)


def _monotone(pairs) -> ErrorCurve:
    """Strictly increasing params, keeping the smallest error seen at or below each."""
    best: dict[int, float] = {}
    for p, e in pairs:
        best[p] = min(e, best.get(p, math.inf))
    params, errors = [], []
    for p in sorted(best):
        params.append(int(p))
        errors.append(float(min(best[p], errors[-1]) if errors else best[p]))
    return ErrorCurve(params, errors)


def _svd_curve(stats, whiten: bool, budgets, damping: float) -> list[tuple[int, float]]:
    """Exact output error of the (whitened) truncated SVD at each budget's rank."""
    W = stats.W  # (rows, J) in the problem's orientation
    rows, J = W.shape
    metric = stats.metric
    if whiten and not stats.identity:
        prob = _Problem(stats, (rows, 1), (1, J), damping)
        L = prob.factors[1]
        Wt = W * L if L.dim() == 1 else W @ L
        _, s, vh = torch.linalg.svd(Wt, full_matrices=False)
        # rows v_i^T L^{-1}
        B = torch.linalg.solve_triangular(L, vh, upper=False, left=False) if L.dim() == 2 else vh / L
    else:
        _, s, vh = torch.linalg.svd(W, full_matrices=False)
        B = vh
    weight = (metric.apply(B) * B).sum(1)  # (V^T C' V)_ii
    tail = torch.flip(torch.cumsum(torch.flip(s * s * weight, [0]), 0), [0])  # tail[r] = sum_{i >= r}
    tail = torch.cat([tail, tail.new_zeros(1)])
    pairs = []
    for b in budgets:
        r = min(b // (rows + J), s.numel())
        if r >= 1:
            pairs.append((r * (rows + J), float(tail[r]) / stats.f0))
    return pairs


def _mpo_curve(stats, layouts, budgets, damping: float, whiten: bool) -> list[tuple[int, float]]:
    pairs = []
    for out_modes, in_modes in layouts:
        prob = _Problem(stats, out_modes, in_modes, damping)
        Wt = mode_multiply(prob.W, prob.factors, prob.in_modes) if whiten else prob.W
        exact = MPO.from_matrix(Wt, prob.out_modes, prob.in_modes, gauge="right")
        ref = float((Wt * Wt).sum())
        smallest = shapes.min_num_params(out_modes, in_modes)
        for b in budgets:
            if b < smallest:
                continue
            dims = exact._dims_for_max_params(b)
            params = shapes.mpo_num_params(out_modes, in_modes, dims)
            pairs.append((params, exact.truncation_bound(dims) ** 2 / ref if ref > 0 else 0.0))
    return pairs


def _pruning_curve(method: str, W: torch.Tensor, C, row_weights, budgets, f0: float) -> list[tuple[int, float]]:
    W2 = W.double() ** 2
    if C is not None:
        cost = W2 * torch.diagonal(C.double())
    elif row_weights is not None:
        cost = W2 * row_weights.double()[:, None]
    else:
        cost = W2
    pairs = []
    if method == "magnitude":
        order = torch.argsort(W.double().abs().flatten(), descending=True)
        kept = torch.cumsum(cost.flatten()[order], 0)
        total = float(cost.sum())
        for b in budgets:
            k = min(b, W.numel())
            pairs.append((k, max(total - float(kept[k - 1]), 0.0) / f0))
        return pairs
    out = W.shape[0]
    score = W.double().abs() * torch.diagonal(C.double()).clamp_min(0).sqrt()
    order = torch.argsort(score, dim=1, descending=True)
    kept = torch.cumsum(torch.gather(cost, 1, order), 1).sum(0)  # (in,): kept cost at k per row
    total = float(cost.sum())
    for b in budgets:
        k = min(b // out, W.shape[1])
        if k >= 1:
            pairs.append((k * out, max(total - float(kept[k - 1]), 0.0) / f0))
    return pairs


def error_curve(method: str, W: torch.Tensor, *, C: torch.Tensor | None = None,
                row_weights: torch.Tensor | None = None, n_cores: int = 5, points: int = 16,
                damping: float = 1e-6, layouts: list[Layout] | None = None) -> ErrorCurve:
    """Relative output error squared against parameters for ``method`` on ``W (out, in)`` (see the module
    docstring); ``points`` budgets evenly spaced up to the dense size, plus the smallest the method allows.
    ``layouts``: the candidates of ``mpo-aware`` (those its layout search will try; default every candidate)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(METHODS)}, e.g. method='mpo-aware'")
    _check_matrix("W", W)
    check_stats(W, C, row_weights)
    if isinstance(points, bool) or not isinstance(points, numbers.Integral) or points < 1:
        raise ValueError(f"points must be an int >= 1, got {points!r}; e.g. points=16")
    need = NEEDS.get(method)
    if (need == "C" and C is None) or (need == "C or row_weights" and C is None and row_weights is None):
        raise ValueError(f"method {method!r} needs {need}; e.g. error_curve({method!r}, W, C=C)")
    out_features, in_features = W.shape
    dense = W.numel()
    if method == "2:4":
        a = approximate("2:4", W, max_params=dense // 2, C=C, row_weights=row_weights)
        return ErrorCurve([a.params], [a.rel_output_error ** 2])
    stats, transposed = _prepare(W, C, row_weights)
    if method in ("magnitude", "wanda"):
        smallest = 1 if method == "magnitude" else out_features
        return _monotone(_pruning_curve(method, W, C, row_weights, _grid(dense, smallest, points), stats.f0))
    rank1 = out_features + in_features
    if method in ("svd", "svd-whitened"):
        return _monotone(_svd_curve(stats, method == "svd-whitened", _grid(dense, rank1, points), damping))
    if method == "mpo":
        om, im = shapes.choose_modes(out_features, in_features, n_cores)
        pm = _problem_modes(om, im, transposed)
        budgets = _grid(dense, shapes.min_num_params(om, im), points)
        return _monotone(_mpo_curve(stats, [pm], budgets, damping, whiten=False))
    layouts = candidate_layouts(out_features, in_features) if layouts is None else list(layouts)
    if not layouts:
        raise ValueError("layouts must hold at least one Layout; e.g. candidate_layouts(out, in)")
    low_rank = any(lay.is_low_rank for lay in layouts)  # its curve is the exact whitened SVD's
    modes = [_problem_modes(lay.out_modes, lay.in_modes, transposed) for lay in layouts if not lay.is_low_rank]
    smallest = min(([rank1] if low_rank else []) + [shapes.min_num_params(o, i) for o, i in modes])
    budgets = _grid(dense, smallest, points)
    pairs = _mpo_curve(stats, modes, budgets, damping, whiten=True)
    if low_rank:
        pairs += _svd_curve(stats, True, budgets, damping)
    return _monotone(pairs)


def _hull(params: list[int], values: list[float]) -> list[tuple[int, float]]:
    """The lower convex hull of ``(params, values)``, decreasing in value (points that do not help are dropped)."""
    pts = []
    for p, v in zip(params, values):
        if pts and v >= pts[-1][1]:
            continue  # more parameters, no less error: never worth it
        while len(pts) >= 2:
            (p1, v1), (p2, v2) = pts[-2], pts[-1]
            # drop the middle point if it lies on or above the chord from p1 to p
            if (v2 - v1) * (p - p1) >= (v - v1) * (p2 - p1):
                pts.pop()
            else:
                break
        pts.append((p, v))
    return pts


def allocate_budget(curves: dict[str, ErrorCurve], total_params: int,
                    weights: dict[str, float] | None = None) -> dict[str, int]:
    """Parameters per matrix with ``sum <= total_params``, greedy on each curve's lower convex hull.

    Every matrix starts at its smallest point; then, repeatedly, the hull segment with the largest decrease of
    ``weight * error^2`` per parameter that still fits is taken (a matrix whose next segment does not fit keeps its
    current point). Raises ``ValueError`` if the smallest points alone exceed ``total_params``.
    """
    if not isinstance(curves, dict) or not curves:
        raise ValueError("curves must be a non-empty dict name -> ErrorCurve; e.g. {'q': error_curve('svd', W)}")
    if isinstance(total_params, bool) or not isinstance(total_params, numbers.Integral):
        raise ValueError(f"total_params must be an int, got {total_params!r}; e.g. total_params=1_000_000")
    weights = dict(weights or {})
    hulls = {}
    for name, curve in curves.items():
        if not isinstance(curve, ErrorCurve) or not curve.params or len(curve.params) != len(curve.errors):
            raise ValueError(f"curve {name!r} must be an ErrorCurve with as many params as errors (at least one); "
                             f"e.g. error_curve('svd', W)")
        if any(b <= a for a, b in zip(curve.params, curve.params[1:])):
            raise ValueError(f"curve {name!r} params must increase, got {curve.params}; e.g. [100, 200, 400]")
        w = float(weights.get(name, 1.0))
        if not (w >= 0) or math.isinf(w):
            raise ValueError(f"weight of {name!r} must be a finite number >= 0, got {w!r}; e.g. 1.0")
        hulls[name] = _hull(list(curve.params), [w * e for e in curve.errors])
    chosen = {name: 0 for name in hulls}
    spent = sum(h[0][0] for h in hulls.values())
    if spent > total_params:
        raise ValueError(f"total_params={total_params} is below the sum of the smallest points of the curves "
                         f"({spent}); e.g. total_params={spent}")
    heap = []

    def push(name):
        i, h = chosen[name], hulls[name]
        if i + 1 < len(h):
            (p0, v0), (p1, v1) = h[i], h[i + 1]
            heapq.heappush(heap, (-(v0 - v1) / (p1 - p0), name))

    for name in hulls:
        push(name)
    while heap:
        _, name = heapq.heappop(heap)
        i, h = chosen[name], hulls[name]
        cost = h[i + 1][0] - h[i][0]
        if spent + cost > total_params:
            continue
        spent += cost
        chosen[name] = i + 1
        push(name)
    return {name: hulls[name][chosen[name]][0] for name in hulls}
