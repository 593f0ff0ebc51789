"""The output-aware objective and its whitening.

Conventions: a weight ``W`` is ``(out, in)`` (``y = x W^T``); ``C = X^T X / N`` is the ``(in, in)`` second moment of
the layer's inputs ``X (N, in)``, float64. The output error of an approximation ``W'`` is

    f(W') = tr((W' - W) C (W' - W)^T) = ||(W' - W) X^T||_F^2 / N.

For an embedding (``W (num_embeddings, dim)``, rows looked up by token) the objective weights rows instead:
``sum_o r_o ||W_o - W'_o||^2`` with ``r`` the token frequencies (``row_weights``); with neither, Frobenius.

Whitening. With ``C + lam * mean(diag C) * I = L L^T`` (:func:`damped_cholesky`), ``f(W') ~= ||(W' - W) L||_F^2``:
SVD-LLM truncates the SVD of ``W L``. For an MPO whose in modes are split over several cores no single ``L`` can
be absorbed into the cores, so :func:`kron_factors` builds a Kronecker whitening ``C ~= C_1 (x) ... (x) C_n`` over
the in modes (``C_k`` the partial trace of ``C`` over the other modes, normalised) with damped Cholesky factors
``L_k``; ``K = L_1 (x) ... (x) L_n`` then acts mode by mode (:func:`mode_multiply`).

Inside the package a second moment is a :class:`Metric`: dense ``(J, J)`` or diagonal ``(J,)`` (row weights after
transposition, or the identity), so that a 30k-token embedding never forms a 30k x 30k matrix.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = [
    "damped_cholesky",
    "output_error",
    "relative_output_error",
    "Metric",
    "kron_factors",
    "mode_multiply",
]


# ---------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------


def _check_matrix(name: str, W) -> None:
    if not isinstance(W, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(W).__name__}; e.g. torch.randn(1536, 576)")
    if W.dim() != 2 or W.numel() == 0:
        raise ValueError(f"{name} must be a non-empty 2-D (out, in) matrix, got shape {tuple(W.shape)}; "
                         f"e.g. a Linear weight of shape (1536, 576)")
    if not W.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {W.dtype}; e.g. {name}.float()")
    if not bool(torch.isfinite(W).all()):
        raise ValueError(f"{name} has {int((~torch.isfinite(W)).sum())} NaN or inf entries; e.g. torch.nan_to_num({name})")


def check_stats(W: torch.Tensor, C, row_weights) -> None:
    """Validate the second moment ``C (in, in)`` or the ``row_weights (out,)`` given for ``W (out, in)``."""
    if C is not None and row_weights is not None:
        raise ValueError("give C (the input second moment, for a Linear) or row_weights (token frequencies, for an "
                         "embedding), not both; e.g. C=X.T @ X / len(X)")
    out_features, in_features = W.shape
    if C is not None:
        if not isinstance(C, torch.Tensor) or not C.is_floating_point():
            raise TypeError(f"C must be a floating-point torch.Tensor of shape ({in_features}, {in_features}), got "
                            f"{type(C).__name__}; e.g. C = X.T.double() @ X.double() / len(X)")
        if tuple(C.shape) != (in_features, in_features):
            raise ValueError(f"C has shape {tuple(C.shape)}, but W {tuple(W.shape)} needs ({in_features}, {in_features}) "
                             f"(in x in, the second moment of the inputs); e.g. C = X.T @ X / len(X) with X (N, {in_features})")
        if not bool(torch.isfinite(C).all()):
            raise ValueError(f"C has {int((~torch.isfinite(C)).sum())} NaN or inf entries; a second moment is finite, "
                             f"e.g. accumulate X.T @ X in float64")
    if row_weights is not None:
        if not isinstance(row_weights, torch.Tensor) or not row_weights.is_floating_point():
            raise TypeError(f"row_weights must be a floating-point tensor of shape ({out_features},), got "
                            f"{type(row_weights).__name__}; e.g. token counts as torch.float64")
        if tuple(row_weights.shape) != (out_features,):
            raise ValueError(f"row_weights has shape {tuple(row_weights.shape)}, but W {tuple(W.shape)} needs "
                             f"({out_features},) (one weight per row); e.g. torch.bincount(ids, minlength={out_features})")
        if not bool(torch.isfinite(row_weights).all()) or bool((row_weights < 0).any()):
            raise ValueError("row_weights must be finite and >= 0 (token frequencies); e.g. counts / counts.sum()")


def _check_damping(damping) -> float:
    if isinstance(damping, bool) or not isinstance(damping, numbers.Real) or not (0.0 <= float(damping) < 1.0):
        raise ValueError(f"damping must be a number in [0, 1) (relative to mean(diag C)), got {damping!r}; e.g. damping=1e-6")
    return float(damping)


# ---------------------------------------------------------------------------
# the objective
# ---------------------------------------------------------------------------


def damped_cholesky(C: torch.Tensor, damping: float = 1e-6) -> tuple[torch.Tensor, float]:
    """Lower ``L`` with ``C + lam * mean(diag C) * I = L L^T`` (float64), and the ``lam`` used.

    ``lam`` starts at ``damping`` and grows x10 until the factorisation succeeds, so a rank-deficient or singular
    ``C`` gets a finite ``L``, never NaN. An all-zero ``C`` (no signal at all) raises ``ValueError``, and so does
    one that is still not positive definite at ``lam = 1`` (not a second moment).
    """
    damping = _check_damping(damping)
    if not isinstance(C, torch.Tensor) or not C.is_floating_point() or C.dim() != 2 or C.shape[0] != C.shape[1]:
        raise ValueError(f"C must be a square floating-point matrix (in, in), got "
                         f"{tuple(C.shape) if isinstance(C, torch.Tensor) else type(C).__name__}; e.g. X.T @ X / len(X)")
    if not bool(torch.isfinite(C).all()):
        raise ValueError("C has NaN or inf entries; a second moment is finite, e.g. accumulate X.T @ X in float64")
    C = C.double()
    C = (C + C.T) / 2
    scale = float(torch.diagonal(C).mean()) if C.numel() else 0.0
    if scale <= 0.0 and float(C.abs().max()) == 0.0:
        raise ValueError("C is all-zero: the inputs carry no signal; calibrate on real inputs, "
                         "e.g. C = X.T @ X / len(X) with X not all zero")
    if scale <= 0.0:
        raise ValueError(f"C has mean(diag C) = {scale!r} <= 0, so it is not positive semi-definite; a second moment "
                         "X.T @ X / N is, e.g. check that C was not built from a difference")
    eye = torch.eye(C.shape[0], dtype=C.dtype, device=C.device)
    lam = damping
    while True:
        L, info = torch.linalg.cholesky_ex(C + (lam * scale) * eye)
        if int(info) == 0 and bool(torch.isfinite(L).all()):
            return L, lam
        lam = lam * 10.0 if lam > 0 else 1e-12
        if lam > 1.0:
            raise ValueError("C is not positive semi-definite (Cholesky fails even with damping 1 x mean(diag C)); "
                             "a second moment X.T @ X / N is, e.g. check that C was not built from a difference")


def output_error(W: torch.Tensor, W_approx: torch.Tensor, C: torch.Tensor | None = None,
                 row_weights: torch.Tensor | None = None) -> float:
    """``tr((W - W') C (W - W')^T)``; with ``row_weights (out,)`` instead ``sum_o r_o ||W_o - W'_o||^2``; with neither
    ``||W - W'||_F^2``. Computed in float64."""
    _check_matrix("W", W)
    if not isinstance(W_approx, torch.Tensor) or tuple(W_approx.shape) != tuple(W.shape):
        raise ValueError(f"W_approx must be a tensor of W's shape {tuple(W.shape)}, got "
                         f"{tuple(W_approx.shape) if isinstance(W_approx, torch.Tensor) else type(W_approx).__name__}")
    check_stats(W, C, row_weights)
    D = W.double() - W_approx.double()
    if C is not None:
        return float(((D @ C.double()) * D).sum())
    if row_weights is not None:
        return float((row_weights.double()[:, None] * D * D).sum())
    return float((D * D).sum())


def relative_output_error(W: torch.Tensor, W_approx: torch.Tensor, C: torch.Tensor | None = None,
                          row_weights: torch.Tensor | None = None) -> float:
    """``sqrt(output_error(W, W') / output_error(W, 0))``: 0 for a perfect fit, 1 for ``W' = 0``.

    When ``W`` itself has zero output (``W C W^T = 0``) the ratio is 0 if ``W'`` has zero output error too, else inf.
    """
    num = output_error(W, W_approx, C, row_weights)
    den = output_error(W, torch.zeros_like(W), C, row_weights)
    if den <= 0.0:
        return 0.0 if num <= 0.0 else math.inf
    return math.sqrt(max(num, 0.0) / den)


# ---------------------------------------------------------------------------
# a second moment inside the package: dense (J, J) or diagonal (J,)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Metric:
    """A second moment over ``J`` columns: ``dense`` (J, J) or ``diag`` (J,) (exactly one is set), float64."""

    dense: torch.Tensor | None = None
    diag: torch.Tensor | None = None

    @classmethod
    def of(cls, in_features: int, C: torch.Tensor | None, diag: torch.Tensor | None = None, *,
           device=None) -> "Metric":
        if C is not None:
            C = C.double()
            return cls(dense=(C + C.T) / 2)
        if diag is not None:
            return cls(diag=diag.double())
        return cls(diag=torch.ones(in_features, dtype=torch.float64, device=device))

    @property
    def size(self) -> int:
        return int(self.dense.shape[0] if self.dense is not None else self.diag.shape[0])

    @property
    def is_diag(self) -> bool:
        return self.diag is not None

    def padded(self, size: int) -> "Metric":
        """Zero second moment for ``size - J`` padded columns (they never receive input)."""
        extra = size - self.size
        if extra == 0:
            return self
        if self.is_diag:
            return Metric(diag=torch.nn.functional.pad(self.diag, (0, extra)))
        return Metric(dense=torch.nn.functional.pad(self.dense, (0, extra, 0, extra)))

    def apply(self, Y: torch.Tensor) -> torch.Tensor:
        """``Y C`` for ``Y (..., J)``."""
        return Y @ self.dense if self.dense is not None else Y * self.diag

    def quad(self, D: torch.Tensor) -> float:
        """``tr(D C D^T)`` for ``D (rows, J)``."""
        return float((self.apply(D) * D).sum())

    def trace(self) -> float:
        return float(torch.diagonal(self.dense).sum() if self.dense is not None else self.diag.sum())

    def mean_diag(self) -> float:
        return self.trace() / max(self.size, 1)

    def partial_trace(self, modes: Sequence[int], k: int) -> torch.Tensor:
        """``tr_{m != k} C``: (j_k, j_k) dense, or (j_k,) for a diagonal metric. ``modes`` multiply to ``J``."""
        n = len(modes)
        if self.is_diag:
            t = self.diag.reshape(*modes)
            others = [m for m in range(n) if m != k]
            return t.sum(dim=others) if others else t
        t = self.dense.reshape(*modes, *modes)
        # move (j_k, j_k') to the front, the others as (R, R), and take the trace over R
        perm = [k, n + k] + [m for m in range(n) if m != k] + [n + m for m in range(n) if m != k]
        rest = self.size // modes[k]
        t = t.permute(perm).reshape(modes[k], modes[k], rest, rest)
        return torch.diagonal(t, dim1=2, dim2=3).sum(-1)

    def block(self, modes: Sequence[int], lo: int, hi: int) -> "Metric":
        """The second moment of the modes ``lo..hi-1`` alone (partial trace over the others), as a Metric."""
        n = len(modes)
        inner = math.prod(modes[lo:hi])
        if self.is_diag:
            t = self.diag.reshape(math.prod(modes[:lo]), inner, math.prod(modes[hi:]))
            return Metric(diag=t.sum(dim=(0, 2)))
        t = self.dense.reshape(math.prod(modes[:lo]), inner, math.prod(modes[hi:]),
                               math.prod(modes[:lo]), inner, math.prod(modes[hi:]))
        return Metric(dense=torch.einsum("aibajb->ij", t))


def _damped_diag_sqrt(c: torch.Tensor, damping: float) -> tuple[torch.Tensor, float]:
    """The diagonal counterpart of :func:`damped_cholesky`: ``sqrt(c + damping * mean(c))``."""
    scale = float(c.mean())
    if scale <= 0.0:
        raise ValueError("the second moment is all zero (mean weight 0): nothing to fit; e.g. row_weights from "
                         "token counts with at least one token seen")
    return (c + damping * scale).clamp_min(0).sqrt(), damping


def kron_factors(metric: Metric, modes: Sequence[int], damping: float = 1e-6) -> tuple[list[torch.Tensor], float]:
    """Per-mode whitening factors ``L_k`` with ``C ~= (L_1 L_1^T) (x) ... (x) (L_n L_n^T)``, and the largest damping.

    ``C_k = tr_{m != k} C / (tr C)^{(n' - 1) / n'}`` over the ``n'`` modes of size > 1 (exact for a Kronecker
    product; exactly ``C`` when one mode holds all of ``J``), ``L_k`` its damped Cholesky factor (lower, dense) or,
    for a diagonal metric, ``sqrt`` of the damped diagonal (a vector). Modes of size 1 get ``L_k = [[1]]`` / ``[1]``.
    """
    big = [k for k, m in enumerate(modes) if m > 1]
    one = lambda: (torch.ones(1, dtype=torch.float64, device=_device(metric)) if metric.is_diag  # noqa: E731
                   else torch.ones(1, 1, dtype=torch.float64, device=_device(metric)))
    factors: list[torch.Tensor] = [one() for _ in modes]
    lam_max = 0.0
    total = metric.trace()
    if total <= 0.0:
        raise ValueError("the second moment is all zero: the inputs carry no signal; calibrate on real inputs")
    norm = total ** ((len(big) - 1) / len(big)) if big else 1.0
    for k in big:
        ck = metric.partial_trace(modes, k) / norm
        if metric.is_diag:
            factors[k], lam = _damped_diag_sqrt(ck, damping)
        else:
            factors[k], lam = damped_cholesky(ck, damping)
        lam_max = max(lam_max, lam)
    return factors, lam_max


def _device(metric: Metric):
    return (metric.dense if metric.dense is not None else metric.diag).device


def mode_multiply(X: torch.Tensor, factors: Sequence[torch.Tensor], modes: Sequence[int]) -> torch.Tensor:
    """``X (rows, J) -> X (M_1 (x) ... (x) M_n)`` with ``J = prod(modes)``; a 1-D factor is a diagonal ``M_k``.

    Mode ``k`` of the column index is multiplied on the right by ``M_k (j_k, j_k)``:
    ``out[r, .., j', ..] = sum_j X[r, .., j, ..] M_k[j, j']``. Modes whose factor is ``[[1]]`` are skipped.
    """
    rows = X.shape[0]
    t = X.reshape(rows, *modes)
    for k, M in enumerate(factors):
        if modes[k] == 1:
            if M.dim() == 2:
                t = t * M[0, 0]
            else:
                t = t * M[0]
            continue
        if M.dim() == 1:
            shape = [1] * (len(modes) + 1)
            shape[k + 1] = modes[k]
            t = t * M.reshape(shape)
        else:
            t = torch.movedim(torch.tensordot(t, M, dims=([k + 1], [0])), -1, k + 1)
    return t.reshape(rows, -1)


def invert_factors(factors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """``L_k^{-1}`` for lower-triangular (dense) factors, ``1 / L_k`` for diagonal ones."""
    out = []
    for L in factors:
        if L.dim() == 1:
            out.append(torch.where(L > 0, 1.0 / L.clamp_min(torch.finfo(L.dtype).tiny), torch.zeros_like(L)))
        else:
            eye = torch.eye(L.shape[0], dtype=L.dtype, device=L.device)
            out.append(torch.linalg.solve_triangular(L, eye, upper=False))
    return out
