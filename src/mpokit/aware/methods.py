"""Every compression method of the harness, on one matrix, behind one interface.

``approximate(method, W, max_params=..., C=..., row_weights=...)`` returns an :class:`Approximation` of
``W (out, in)`` with at most ``max_params`` stored parameters (MPO core entries, or nonzeros for pruning) and its
relative output error under the statistics given (``C (in, in)``, or ``row_weights (out,)``; Frobenius when none).

| method | what it keeps |
|---|---|
| ``mpo`` | TT-SVD (:meth:`mpokit.MPO.from_matrix`, ``n_cores``, interleaved modes) |
| ``mpo-aware`` | :func:`mpokit.aware.layouts.search_layout`: whitened start, ALS sweeps, best layout |
| ``svd`` | truncated SVD, as the 2-core low-rank-layout MPO |
| ``svd-whitened`` | SVD-LLM: SVD of ``W L`` (``L L^T = C`` damped), ``W' = U S V^T L^{-1}``; ``L^{-1}`` in the in core |
| ``magnitude`` | the ``max_params`` entries of largest ``abs(W)`` |
| ``2:4`` | per row, in each group of 4 consecutive inputs, the 2 of largest ``abs(W) * sqrt(C_jj)`` (``abs(W)`` without C) |
| ``wanda`` | per row, the ``max_params // out`` entries of largest ``abs(W_ij) * sqrt(C_jj)`` |

Methods are registered in :data:`METHODS` (name -> function); :data:`NEEDS` says which statistics each requires.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .. import shapes
from ..mpo import MPO
from .als import _finish, _init_whitened, _prepare, _Problem, _problem_modes
from .layouts import Layout, search_layout
from .objective import _check_matrix, check_stats, relative_output_error

__all__ = ["Approximation", "METHODS", "NEEDS", "approximate"]


@dataclass
class Approximation:
    """``W' (out, in)`` of one method at one budget, with its errors."""

    method: str
    matrix: torch.Tensor
    params: int
    mpo: MPO | None
    mask: torch.Tensor | None
    layout: Layout | None
    rel_output_error: float
    rel_weight_error: float
    detail: dict = field(default_factory=dict)


def _result(method: str, W: torch.Tensor, matrix: torch.Tensor, params: int, C, row_weights, *, mpo=None, mask=None,
            layout=None, detail=None) -> Approximation:
    matrix = matrix.to(W.dtype)
    ref = float(torch.linalg.vector_norm(W.double()))
    weight = float(torch.linalg.vector_norm(W.double() - matrix.double())) / ref if ref > 0 else 0.0
    return Approximation(method, matrix, int(params), mpo, mask, layout,
                         relative_output_error(W, matrix, C, row_weights), weight, dict(detail or {}))


def _low_rank(W: torch.Tensor) -> Layout:
    return Layout("low-rank", (int(W.shape[0]), 1), (1, int(W.shape[1])))


def _check_budget(method: str, max_params: int, smallest: int, what: str, example: int) -> None:
    if max_params < smallest:
        raise ValueError(f"method {method!r}: max_params={max_params} is below {what} ({smallest} parameters); "
                         f"e.g. max_params={example}")


# ---------------------------------------------------------------------------
# the methods
# ---------------------------------------------------------------------------


def _mpo(W, *, max_params, C=None, row_weights=None, n_cores=5, gauge="symmetric"):
    if isinstance(n_cores, bool) or not isinstance(n_cores, numbers.Integral) or n_cores < 1:
        raise ValueError(f"n_cores must be a positive int, got {n_cores!r}; e.g. n_cores=5")
    om, im = shapes.choose_modes(int(W.shape[0]), int(W.shape[1]), int(n_cores))
    _check_budget("mpo", max_params, shapes.min_num_params(om, im), f"the smallest {n_cores}-core MPO (all bonds 1)",
                  max(W.numel() // 2, shapes.min_num_params(om, im)))
    mpo = MPO.from_matrix(W.detach(), om, im, max_params=max_params, gauge=gauge, pad=True)
    return _result("mpo", W, mpo.to_matrix(), mpo.num_params, C, row_weights, mpo=mpo,
                   layout=Layout(f"interleaved-{n_cores}", om, im))


def _mpo_aware(W, *, max_params, C=None, row_weights=None, n_cores=5, **options):
    layouts = options.pop("layouts", None)
    search = search_layout(W.detach(), C, max_params=max_params, row_weights=row_weights, layouts=layouts, **options)
    fit = search.best
    detail = {"history": list(fit.history), "init": fit.init, "sweeps": fit.sweeps, "converged": fit.converged,
              "layout": search.layout.to_dict(), "trials": [t.to_dict() for t in search.trials], "fit": fit}
    return _result("mpo-aware", W, fit.mpo.to_matrix(), fit.mpo.num_params, C, row_weights, mpo=fit.mpo,
                   layout=search.layout, detail=detail)


def _svd(W, *, max_params, C=None, row_weights=None, n_cores=5, gauge="symmetric"):
    layout = _low_rank(W)
    _check_budget("svd", max_params, layout.min_params, "rank 1 (out + in)", max(W.numel() // 2, layout.min_params))
    mpo = MPO.from_matrix(W.detach(), layout.out_modes, layout.in_modes, max_params=max_params, gauge=gauge)
    return _result("svd", W, mpo.to_matrix(), mpo.num_params, C, row_weights, mpo=mpo, layout=layout,
                   detail={"rank": mpo.bond_dims[0]})


def _svd_whitened(W, *, max_params, C=None, row_weights=None, n_cores=5, gauge="symmetric", damping=1e-6):
    layout = _low_rank(W)
    _check_budget("svd-whitened", max_params, layout.min_params, "rank 1 (out + in)",
                  max(W.numel() // 2, layout.min_params))
    stats, transposed = _prepare(W.detach(), C, row_weights)
    pm_out, pm_in = _problem_modes(layout.out_modes, layout.in_modes, transposed)
    prob = _Problem(stats, pm_out, pm_in, damping)
    cores, f, _, dims = _init_whitened(prob, {"max_params": max_params})
    mpo = _finish(prob, cores, f, gauge, W.dtype, transposed)
    return _result("svd-whitened", W, mpo.to_matrix(), mpo.num_params, C, row_weights, mpo=mpo, layout=layout,
                   detail={"rank": dims[0], "damping": prob.lam})


def _magnitude(W, *, max_params, C=None, row_weights=None, n_cores=5):
    keep = min(max_params, W.numel())
    flat = W.detach().abs().flatten()
    mask = torch.zeros(W.numel(), dtype=torch.bool, device=W.device)
    mask[torch.topk(flat, keep, sorted=False).indices] = True
    mask = mask.reshape(W.shape)
    return _result("magnitude", W, W.detach() * mask, int(mask.sum()), C, row_weights, mask=mask)


def _column_scale(C) -> torch.Tensor | None:
    """``||X_col|| / sqrt(N) = sqrt(C_jj)``: the Wanda activation norm per input."""
    return None if C is None else torch.diagonal(C.double()).clamp_min(0).sqrt()


def _two_four(W, *, max_params, C=None, row_weights=None, n_cores=5):
    out_features, in_features = W.shape
    if in_features % 4:
        raise ValueError(f"method '2:4' needs in_features divisible by 4 (groups of 4 consecutive inputs), got "
                         f"{in_features}; e.g. a ({out_features}, {in_features - in_features % 4 or 4}) weight, or "
                         f"method='magnitude'")
    half = W.numel() // 2
    _check_budget("2:4", max_params, half, "what 2:4 keeps (exactly half of every group of 4)", half)
    score = W.detach().double().abs()
    scale = _column_scale(C)
    if scale is not None:
        score = score * scale
    groups = score.reshape(out_features, in_features // 4, 4)
    top = torch.topk(groups, 2, dim=-1).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, top, True).reshape(W.shape)
    return _result("2:4", W, W.detach() * mask, int(mask.sum()), C, row_weights, mask=mask)


def _wanda(W, *, max_params, C=None, row_weights=None, n_cores=5):
    out_features, in_features = W.shape
    per_row = min(max_params // out_features, in_features)
    _check_budget("wanda", max_params, out_features, "one weight per output row (Wanda prunes every row alike)",
                  max(W.numel() // 2, out_features))
    score = W.detach().double().abs() * _column_scale(C)
    top = torch.topk(score, per_row, dim=1).indices
    mask = torch.zeros(W.shape, dtype=torch.bool, device=W.device).scatter_(1, top, True)
    return _result("wanda", W, W.detach() * mask, int(mask.sum()), C, row_weights, mask=mask,
                   detail={"per_row": per_row})


METHODS: dict[str, Callable[..., Approximation]] = {
    "mpo": _mpo,
    "mpo-aware": _mpo_aware,
    "svd": _svd,
    "svd-whitened": _svd_whitened,
    "magnitude": _magnitude,
    "2:4": _two_four,
    "wanda": _wanda,
}

# which statistics a method cannot run without: "C" (input second moment) or "C or row_weights"
NEEDS: dict[str, str] = {"mpo-aware": "C or row_weights", "svd-whitened": "C or row_weights", "wanda": "C"}


def approximate(method: str, W: torch.Tensor, *, max_params: int, C: torch.Tensor | None = None,
                row_weights: torch.Tensor | None = None, n_cores: int = 5, **options) -> Approximation:
    """``W (out, in)`` compressed by ``method`` (a key of :data:`METHODS`) to at most ``max_params`` parameters.

    ``options`` go to the method: ``mpo-aware`` takes those of :func:`search_layout` (``layouts``, ``max_sweeps``,
    ``tol``, ``fit_top``, ...), ``svd-whitened`` ``damping``, ``mpo``/``svd`` ``gauge``. Bad input raises
    ``ValueError`` before any work: an unknown method, a method run without the statistics it needs, a budget the
    method cannot meet.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(METHODS)}, e.g. method='mpo-aware'")
    _check_matrix("W", W)
    check_stats(W, C, row_weights)
    need = NEEDS.get(method)
    if need == "C" and C is None:
        raise ValueError(f"method {method!r} needs C, the input second moment (in, in) = X.T @ X / N; "
                         f"e.g. approximate({method!r}, W, max_params=..., C=C)"
                         + (", or method='magnitude' for an embedding" if row_weights is not None else ""))
    if need == "C or row_weights" and C is None and row_weights is None:
        raise ValueError(f"method {method!r} needs calibration statistics: C (in, in) = X.T @ X / N for a Linear, or "
                         f"row_weights (out,) for an embedding; e.g. approximate({method!r}, W, max_params=..., C=C)")
    if isinstance(max_params, bool) or not isinstance(max_params, numbers.Integral) or max_params < 1:
        raise ValueError(f"max_params must be an int >= 1, got {max_params!r}; e.g. max_params={W.numel() // 2}")
    return METHODS[method](W, max_params=int(max_params), C=C, row_weights=row_weights, n_cores=n_cores, **options)
