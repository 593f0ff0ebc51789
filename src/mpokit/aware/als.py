"""Output-aware MPO fitting: a whitened TT-SVD start, then ALS sweeps on ``f = tr((W' - W) C (W' - W)^T)``.

Shapes. ``W (I, J)`` is zero-padded to ``prod(out_modes) x prod(in_modes)``; core ``k`` is ``(a, o, j, b) =
(d_{k-1}, i_k, j_k, d_k)``. At core ``k`` the left environment ``P (x, p, a) = (O_<k, J_<k, d_{k-1})`` contracts
cores ``0..k-1`` and the right one ``Q (b, y, r) = (d_k, O_>k, J_>k)`` cores ``k+1..n-1``, so that

    W'[(x, o, y), (p, j, r)] = sum_{a, b} P[x, p, a] G[a, o, j, b] Q[b, y, r].

``W'`` is linear in ``G``: ``f`` is a quadratic whose Hessian is ``I_o (x) H`` with ``H`` of size
``(a j b)^2`` shared by every out slice ``o``; the right-hand side is ``B = A^*(W C)`` (``A^*`` the adjoint of
``G -> W'``). Each core update is the exact minimiser given the others, by one of three routes:

* ``kron``: when at most one of ``J_<k, j_k, J_>k`` exceeds 1 (every core of the low-rank and hybrid-out layouts),
  ``H = E_L (x) M (x) E_R`` exactly; closed form with the small factors' pseudo-inverses, and for a dense
  ``M = C`` a few steps preconditioned by the whitening Cholesky factor (no eigen-decomposition of ``C``).
* ``dense``: ``H`` formed explicitly when ``a j b <= dense_limit`` and forming it costs no more than the conjugate
  gradient; proximal Cholesky steps ``G <- G + (H + eps I)^{-1} (B - H G)`` (each one decreases ``f``).
* ``cg``: conjugate gradient warm-started from the current core, one step size per out slice, preconditioned by
  the Kronecker approximation of ``H`` built from the whitening factors. Each matvec is ``A^*(A(V) C)``.

The orthogonality centre moves with QR (left-to-right) and LQ (right-to-left), so cores left of the centre are
left-orthogonal and those right of it right-orthogonal. A sweep solves cores ``0..n-2`` moving right, then
``n-1..1`` moving left. A sweep whose objective would be larger than before is discarded, so the history never
increases.

Initialisation. ``W`` is whitened over its in modes, ``W~ = W K`` with ``K = L_1 (x) ... (x) L_n``
(:func:`mpokit.aware.objective.kron_factors`), decomposed by TT-SVD at the budget, and each core's in index is
multiplied back by ``L_k^{-1}``: still an exact MPO. When one core holds all the in modes this is exact whitening
("whitened"; for the low-rank layout it is SVD-LLM), otherwise "kron-whitened". Plain TT-SVD of ``W`` at the same
bonds is evaluated too, and the sweeps start from the better ("tt-svd" when it wins).

Padding. Modes that multiply past the size zero-pad ``W``. Padded columns get zero second moment, so they leave
``f`` unchanged. Padded rows are fitted to zero (they are sliced off by ``to_matrix``; this may cost a little of the
budget); the reported objective counts only the real rows.

Row weights (embeddings) are the column-weighted problem for ``W^T`` with ``C = diag(row_weights)``: fitted on the
transpose, whose cores have ``i`` and ``j`` swapped back at the end.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .. import shapes
from ..mpo import MPO, rebuild_matrix
from .objective import Metric, _check_matrix, check_stats, damped_cholesky, invert_factors, kron_factors, mode_multiply

__all__ = ["FitResult", "fit_mpo", "truncate_fit", "INITS"]

INITS = ("whitened", "kron-whitened", "tt-svd")


@dataclass
class FitResult:
    """An output-aware MPO of ``W (out, in)``.

    Attributes:
        mpo: cores ``(d_{k-1}, i_k, j_k, d_k)``, shape ``(out, in)``. Its ``singular_values`` are the data-aware
            per-bond spectra: the Schmidt values of the fitted MPO in whitened coordinates (``W' K``, exactly the
            output metric when one core holds all the in modes, the Kronecker approximation otherwise), so that
            ranking cuts by them ranks them by output error. ``error_bound = sqrt(final objective)`` and
            ``reference_norm = sqrt(tr(W C W^T))``, both in the output metric. The gauge is that of the whitened
            cores.
        history: relative output error ``sqrt(f / tr(W C W^T))``: ``[init, after sweep 1, ...]``, never increasing.
        init: ``"whitened" | "kron-whitened" | "tt-svd"``: which initialisation the sweeps started from.
        sweeps: sweeps kept. converged: the relative improvement of ``f`` fell below ``tol`` (or ``f`` reached 0).
        factors: the whitening factor of each core's in index (``L_k``, lower triangular, or a vector when
            diagonal); ``transposed``: the fit ran on ``W^T`` (row weights), so the factors act on the out modes.
        objective, reference: the final ``f`` and ``tr(W C W^T)``.
        routes: how many core updates each solver route took (``kron``, ``basis``/``ppqqA``/``ppqqB``, ``cg``).
    """

    mpo: MPO
    history: list[float]
    init: str
    sweeps: int
    converged: bool
    factors: tuple[torch.Tensor, ...] = field(default=(), repr=False)
    transposed: bool = False
    objective: float = 0.0
    reference: float = 0.0
    routes: dict = field(default_factory=dict, repr=False)

    @property
    def rel_output_error(self) -> float:
        return self.history[-1]


# ---------------------------------------------------------------------------
# the problem: one matrix under one metric, and its padding for one layout
# ---------------------------------------------------------------------------


class _Stats:
    """``W (out, in)`` float64 with its metric over the in index, ``Y = W C`` and ``f0 = tr(W C W^T)``, shared by
    every layout tried on it."""

    def __init__(self, W: torch.Tensor, metric: Metric, identity: bool, work_dtype=torch.float64):
        self.W = W
        self.work_dtype = work_dtype  # the precision of the SVDs (that of the input weight, at least float32)
        self.metric = metric
        self.identity = identity  # C = I (Frobenius): no whitening, the init is plain TT-SVD
        self.Y = metric.apply(W)
        self.f0 = float((self.Y * W).sum())
        self._factors: dict = {}

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.W.shape[0]), int(self.W.shape[1]))

    def factors(self, in_modes: Sequence[int], damping: float):
        """Kronecker whitening factors for ``in_modes``, a function giving their inverses, and the damping used.

        Cached by the modes of size > 1 (and the padded size), so layouts that split the in modes alike (the
        low-rank and hybrid-out layouts both keep ``in`` whole) share one Cholesky factorisation.
        """
        big = tuple(m for m in in_modes if m > 1)
        key = (big, damping)
        if key not in self._factors:
            device = self.W.device
            if self.identity:
                facs = [torch.ones(m, dtype=torch.float64, device=device) for m in big]
                self._factors[key] = (facs, facs, 0.0)
            else:
                facs, lam = kron_factors(self.metric.padded(math.prod(big)), big, damping)
                self._factors[key] = (facs, None, lam)
        facs, inv, lam = self._factors[key]
        if inv is None:  # the inverses, for the CG preconditioner only: computed on first use
            return self._expand(facs, in_modes), lambda: self._inverse(key, in_modes), lam
        return self._expand(facs, in_modes), lambda: self._expand(inv, in_modes), lam

    def _inverse(self, key, in_modes):
        facs, inv, lam = self._factors[key]
        if inv is None:
            inv = invert_factors(facs)
            self._factors[key] = (facs, inv, lam)
        return self._expand(inv, in_modes)

    def _expand(self, facs, in_modes):
        """Factors for the modes of size > 1, with ``[[1]]`` (or ``[1]``) for the modes of size 1."""
        diag = self.identity or self.metric.is_diag
        one = (torch.ones(1, dtype=torch.float64, device=self.W.device) if diag
               else torch.ones(1, 1, dtype=torch.float64, device=self.W.device))
        it = iter(facs)
        return [next(it) if m > 1 else one for m in in_modes]


class _Problem:
    """``_Stats`` padded to one layout: ``W (I, J)``, ``Y = W C (I, J)``, the metric over ``J``."""

    def __init__(self, stats: _Stats, out_modes: Sequence[int], in_modes: Sequence[int], damping: float):
        self.stats = stats
        self.out_modes, self.in_modes = tuple(out_modes), tuple(in_modes)
        self.I, self.J = math.prod(out_modes), math.prod(in_modes)
        out, inn = stats.shape
        pad = (0, self.J - inn, 0, self.I - out)
        self.W = torch.nn.functional.pad(stats.W, pad) if pad != (0, 0, 0, 0) else stats.W
        self.Y = torch.nn.functional.pad(stats.Y, pad) if pad != (0, 0, 0, 0) else stats.Y
        self.metric = stats.metric.padded(self.J)
        self.factors, self._inverses, self.lam = stats.factors(in_modes, damping)
        self.exact = sum(1 for m in in_modes if m > 1) <= 1  # one core holds every in mode: exact whitening

    @property
    def inv_factors(self) -> list[torch.Tensor]:
        """``L_k^{-1}`` per core (computed once, on first use)."""
        return self._inverses()

    def objective(self, cores: Sequence[torch.Tensor]) -> float:
        """``f`` on the real rows (padded columns have zero second moment)."""
        D = rebuild_matrix(cores) - self.W
        return self.metric.quad(D[: self.stats.shape[0]])


# ---------------------------------------------------------------------------
# environments and the linear map G -> W'
# ---------------------------------------------------------------------------


def _grow_left(P: torch.Tensor, core: torch.Tensor) -> torch.Tensor:
    """``P (x, p, a)`` and core ``(a, o, j, b)`` -> ``(x o, p j, b)``."""
    x, p, _ = P.shape
    _, o, j, b = core.shape
    return torch.einsum("xpa,aojb->xopjb", P, core).reshape(x * o, p * j, b)


def _grow_right(core: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
    """core ``(a, o, j, b)`` and ``Q (b, y, r)`` -> ``(a, o y, j r)``."""
    a, o, j, _ = core.shape
    _, y, r = Q.shape
    return torch.einsum("aojb,byr->aoyjr", core, Q).reshape(a, o * y, j * r)


def _forward(P: torch.Tensor, G: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
    """``W'`` for core ``G (a, o, j, b)`` between ``P (x, p, a)`` and ``Q (b, y, r)``: ``(x o y, p j r)``."""
    x, p, _ = P.shape
    _, o, j, _ = G.shape
    _, y, r = Q.shape
    t = torch.einsum("xpa,aojb->xpojb", P, G)
    return torch.einsum("xpojb,byr->xoypjr", t, Q).reshape(x * o * y, p * j * r)


def _adjoint(P: torch.Tensor, Y: torch.Tensor, Q: torch.Tensor, o: int, j: int) -> torch.Tensor:
    """The adjoint of :func:`_forward`: ``Y (x o y, p j r)`` -> ``(a, o, j, b)``."""
    x, p, _ = P.shape
    _, y, r = Q.shape
    t = torch.einsum("xoypjr,byr->xopjb", Y.reshape(x, o, y, p, j, r), Q)
    return torch.einsum("xopjb,xpa->aojb", t, P)


def _slice_dot(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Per out slice inner products of two ``(a, o, j, b)`` tensors: ``(o,)``."""
    return (u * v).sum(dim=(0, 2, 3))


def _per_slice(s: torch.Tensor) -> torch.Tensor:
    return s.reshape(1, -1, 1, 1)


# ---------------------------------------------------------------------------
# the three solvers
# ---------------------------------------------------------------------------


def _gram_with_metric(E: torch.Tensor, metric: Metric | None) -> torch.Tensor:
    """``sum_x E_x^T C E_x`` for ``E (x, p, a)`` (``C`` over ``p``; identity when ``metric`` is None): ``(a, a)``."""
    if metric is None:
        return torch.einsum("xpa,xpc->ac", E, E)
    EC = metric.apply(E.permute(0, 2, 1))  # (x, a, p)
    return torch.einsum("xap,xpc->ac", EC, E)


def _pinv_sym(E: torch.Tensor) -> torch.Tensor:
    """Pseudo-inverse of a small symmetric PSD matrix (eigenvalues below 1e-13 of the largest dropped)."""
    lam, U = torch.linalg.eigh((E + E.T) / 2)
    top = float(lam.abs().max()) if lam.numel() else 0.0
    keep = lam > top * 1e-13
    inv = torch.where(keep, 1.0 / torch.where(keep, lam, torch.ones_like(lam)), torch.zeros_like(lam))
    return (U * inv) @ U.T


def _solve_kron(prob: _Problem, P, Q, G0, B, k: int, steps: int = 4) -> torch.Tensor:
    """Update when ``H = E_L (x) M (x) E_R`` (at most one of ``J_<k, j, J_>k`` exceeds 1).

    ``E_L = sum_x P_x^T C' P_x`` and ``E_R`` likewise, with ``C' = C`` on the side that holds the in modes (else
    the identity); ``M = C`` when core ``k`` holds them. Closed form ``G0 + H^+ (B - H G0)`` with the factors'
    pseudo-inverses, except for a dense ``M``, whose damped Cholesky factor (
    the whitening factor of this core, ``L L^T = C + lam mean(diag C) I``) gives steps
    ``G <- G + (E_L^+ (x) (L L^T)^{-1} (x) E_R^+)(B - H G)``: the preconditioner dominates ``H``, so each step
    decreases ``f``; they stop when a step changes ``G`` by less than 1e-9 of its norm (at most ``steps``).
    """
    p, j, r = P.shape[1], G0.shape[2], Q.shape[2]
    metric = prob.metric
    E_L = _gram_with_metric(P, metric if p > 1 else None)
    iL = _pinv_sym(E_L)
    E_R = _gram_with_metric(Q.permute(1, 2, 0), metric if r > 1 else None)  # (y, r, b) -> (b, b)
    iR = _pinv_sym(E_R)

    def sides(T, L_, R_):
        return torch.einsum("ac,cojd,bd->aojb", L_, T, R_)

    if j > 1 and not metric.is_diag:
        chol = prob.factors[k]  # (j, j) lower: one core holds every in mode, so this is chol(C + damping)
        a, o, _, b = G0.shape
        G = G0
        for _ in range(steps):
            HG = torch.einsum("aojb,jk->aokb", sides(G, E_L, E_R), metric.dense)
            Z = sides(B - HG, iL, iR).permute(0, 1, 3, 2).reshape(-1, j)  # (a o b, j)
            step = torch.cholesky_solve(Z.T, chol).T.reshape(a, o, b, j).permute(0, 1, 3, 2)
            G = G + step
            if float(step.norm()) <= 1e-9 * float(G.norm()):
                break
        return G
    if j > 1:  # diagonal metric over the in modes of this core
        c = metric.diag
        m, minv = c, torch.where(c > float(c.max()) * 1e-13, 1.0 / c.clamp_min(torch.finfo(c.dtype).tiny),
                                 torch.zeros_like(c))
    elif p == 1 and r == 1:  # J = 1: the metric is a scalar
        m = (metric.diag if metric.is_diag else metric.dense.reshape(1)).reshape(1)
        minv = torch.where(m > 0, 1.0 / m.clamp_min(torch.finfo(m.dtype).tiny), torch.zeros_like(m))
    else:
        m = minv = torch.ones(1, dtype=G0.dtype, device=G0.device)
    HG0 = sides(G0, E_L, E_R) * m.reshape(1, 1, -1, 1)
    return G0 + sides(B - HG0, iL, iR) * minv.reshape(1, 1, -1, 1)


def _hessian_basis(prob: _Problem, P, Q, a: int, j: int, b: int, chunk_elems: int = 1 << 24) -> torch.Tensor:
    """``H (N, N)``, ``N = a j b``, as ``A^*(A(e) C)`` over the basis ``e`` of one out slice, in chunks."""
    N = a * j * b
    x, y = P.shape[0], Q.shape[1]
    per = max(1, chunk_elems // max(1, x * y * prob.J))
    rows = []
    eye = torch.eye(N, dtype=P.dtype, device=P.device)
    for lo in range(0, N, per):
        E = eye[lo: lo + per].reshape(-1, a, 1, j, b)  # (n, a, 1, j, b)
        n = E.shape[0]
        t = torch.einsum("xpa,nahjb->nxpjb", P, E)
        F = torch.einsum("nxpjb,byr->nxypjr", t, Q).reshape(n, x * y, -1)  # (n, x y, J)
        F = prob.metric.apply(F).reshape(n, x, y, P.shape[1], j, Q.shape[2])
        t = torch.einsum("nxypjr,byr->nxpjb", F, Q)
        rows.append(torch.einsum("nxpjb,xpa->najb", t, P).reshape(n, N))
    return torch.cat(rows, 0)


def _hessian_ppqq(prob: _Problem, P, Q, a: int, j: int, b: int, order: str) -> torch.Tensor:
    """``H`` from the environment Grams ``PP (p, a, p', a')``, ``QQ (b, r, b', r')`` and the dense metric."""
    p, r = P.shape[1], Q.shape[2]
    PP = torch.einsum("xpa,xqc->paqc", P, P)
    QQ = torch.einsum("byr,dys->brds", Q, Q)
    C6 = prob.metric.dense.reshape(p, j, r, p, j, r)
    if order == "A":
        T = torch.einsum("paqc,pjrqks->ajrcks", PP, C6)
        H = torch.einsum("ajrcks,brds->ajbckd", T, QQ)
    else:
        T = torch.einsum("pjrqks,brds->pjbqkd", C6, QQ)
        H = torch.einsum("pjbqkd,paqc->ajbckd", T, PP)
    N = a * j * b
    return H.reshape(N, N)


def _solve_dense(H: torch.Tensor, G0: torch.Tensor, B: torch.Tensor, steps: int = 3) -> torch.Tensor:
    """Proximal Cholesky steps ``G <- G + (H + eps I)^{-1} (B - H G)`` for all out slices at once."""
    a, o, j, b = G0.shape
    N = a * j * b
    H = (H + H.T) / 2
    if float(torch.diagonal(H).abs().max()) <= 0.0:
        return G0
    L, _ = damped_cholesky(H, 1e-12)
    g = G0.permute(0, 2, 3, 1).reshape(N, o)
    rhs = B.permute(0, 2, 3, 1).reshape(N, o)
    for _ in range(steps):
        g = g + torch.cholesky_solve(rhs - H @ g, L)
    return g.reshape(a, j, b, o).permute(0, 3, 1, 2)


def _preconditioner(prob: _Problem, P, Q, k: int):
    """``z = (E_L (x) C_k (x) E_R)^{-1} r`` from the Kronecker whitening: exact when ``C`` is a Kronecker product."""
    x, p, a = P.shape
    b, y, r = Q.shape
    Pt = mode_multiply(P.permute(0, 2, 1).reshape(x * a, p), prob.factors[:k], prob.in_modes[:k]).reshape(x, a, p)
    Qt = mode_multiply(Q.reshape(b * y, r), prob.factors[k + 1:], prob.in_modes[k + 1:]).reshape(b, y, r)
    E_L = torch.einsum("xap,xcp->ac", Pt, Pt)
    E_R = torch.einsum("byr,cyr->bc", Qt, Qt)

    def inverse(E):
        try:
            L, _ = damped_cholesky(E, 1e-10)
        except ValueError:
            return torch.eye(E.shape[0], dtype=E.dtype, device=E.device)
        return torch.cholesky_inverse(L)

    iL, iR = inverse(E_L), inverse(E_R)
    Linv = prob.inv_factors[k]
    if Linv.dim() == 1:
        iM = (Linv * Linv)
        return lambda R: torch.einsum("ac,cojd,bd->aojb", iL, R * iM.reshape(1, 1, -1, 1), iR)
    iM = Linv.T @ Linv  # (L L^T)^{-1}
    return lambda R: torch.einsum("ac,cokd,kj,bd->aojb", iL, R, iM, iR)


def _solve_cg(prob: _Problem, P, Q, G0, B, k: int, iters: int, rtol: float) -> torch.Tensor:
    """Preconditioned conjugate gradient from ``G0``, one step size per out slice (a minimiser of the same
    quadratic in each slice, so ``f`` never increases in exact arithmetic)."""
    o, j = G0.shape[1], G0.shape[2]

    def H(V):
        return _adjoint(P, prob.metric.apply(_forward(P, V, Q)), Q, o, j)

    M = _preconditioner(prob, P, Q, k)
    X = G0.clone()
    R = B - H(X)
    bnorm = _slice_dot(B, B).sqrt()
    Z = M(R)
    D = Z.clone()
    rz = _slice_dot(R, Z)
    for _ in range(iters):
        if bool((_slice_dot(R, R).sqrt() <= rtol * bnorm).all()):
            break
        HD = H(D)
        dHd = _slice_dot(D, HD)
        alpha = torch.where(dHd > 0, rz / torch.where(dHd > 0, dHd, torch.ones_like(dHd)), torch.zeros_like(dHd))
        X = X + _per_slice(alpha) * D
        R = R - _per_slice(alpha) * HD
        Z = M(R)
        rz_new = _slice_dot(R, Z)
        beta = torch.where(rz > 0, rz_new / torch.where(rz > 0, rz, torch.ones_like(rz)), torch.zeros_like(rz))
        D = Z + _per_slice(beta) * D
        rz = rz_new
    return X


@dataclass(frozen=True)
class _SolverOptions:
    dense_limit: int = 2048
    cg_iters: int = 12
    cg_rtol: float = 1e-8


def _choose_route(prob: _Problem, P, Q, G0, opts: _SolverOptions) -> str:
    """``"kron"``, ``"basis"``/``"ppqqA"``/``"ppqqB"`` (explicit H) or ``"cg"``, by structure and a flop estimate."""
    x, p, a = P.shape
    b, y, r = Q.shape
    o, j = G0.shape[1], G0.shape[2]
    if sum(1 for s in (p, j, r) if s > 1) <= 1:
        return "kron"
    I, J = prob.I, prob.J
    diag = prob.metric.is_diag
    apply_cost = I * J * (1 if diag else J)
    cg = opts.cg_iters * (apply_cost + 2 * I * J * (a + b))
    N = a * j * b
    if N > opts.dense_limit:
        return "cg"
    costs = {"basis": N * (x * y) * J * ((1 if diag else J) + 2 * (a + b)) + N ** 3 / 3}
    if not diag:
        form = x * (p * a) ** 2 + y * (b * r) ** 2 + N ** 3 / 3
        costs["ppqqA"] = form + a * a * J * J + a * a * j * j * r * r * b * b
        costs["ppqqB"] = form + b * b * J * J + a * a * j * j * p * p * b * b
        if a * a * J * J > 5e7:
            costs.pop("ppqqA")
        if b * b * J * J > 5e7:
            costs.pop("ppqqB")
    route, cost = min(costs.items(), key=lambda kv: kv[1])
    return route if cost <= cg else "cg"


def _solve(prob: _Problem, P, Q, G0, k: int, opts: _SolverOptions, routes: dict) -> torch.Tensor:
    o, j = G0.shape[1], G0.shape[2]
    a, b = G0.shape[0], G0.shape[3]
    B = _adjoint(P, prob.Y, Q, o, j)
    route = _choose_route(prob, P, Q, G0, opts)
    routes[route] = routes.get(route, 0) + 1
    if route == "kron":
        return _solve_kron(prob, P, Q, G0, B, k)
    if route == "cg":
        return _solve_cg(prob, P, Q, G0, B, k, opts.cg_iters, opts.cg_rtol)
    if route == "basis":
        H = _hessian_basis(prob, P, Q, a, j, b)
    else:
        H = _hessian_ppqq(prob, P, Q, a, j, b, route[-1])
    return _solve_dense(H, G0, B)


# ---------------------------------------------------------------------------
# canonical form and sweeps
# ---------------------------------------------------------------------------


def _qr_right(cores: list[torch.Tensor], k: int) -> None:
    """Core ``k`` left-orthogonal, its ``R`` pushed into core ``k + 1`` (in place)."""
    a, o, j, b = cores[k].shape
    q, rr = torch.linalg.qr(cores[k].reshape(a * o * j, b))
    cores[k] = q.reshape(a, o, j, q.shape[1])
    cores[k + 1] = torch.einsum("ab,bojd->aojd", rr, cores[k + 1])


def _lq_left(cores: list[torch.Tensor], k: int) -> None:
    """Core ``k`` right-orthogonal (rows orthonormal), its ``L`` pushed into core ``k - 1`` (in place)."""
    a, o, j, b = cores[k].shape
    q, rr = torch.linalg.qr(cores[k].reshape(a, o * j * b).T)
    cores[k] = q.T.reshape(q.shape[1], o, j, b)
    cores[k - 1] = torch.einsum("aojb,cb->aojc", cores[k - 1], rr)


def _right_canonical(cores: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    out = list(cores)
    for k in range(len(out) - 1, 0, -1):
        _lq_left(out, k)
    return out


def _sweep(prob: _Problem, cores: list[torch.Tensor], opts: _SolverOptions, routes: dict) -> list[torch.Tensor]:
    """One sweep from a right-canonical MPO (centre at core 0); returns it right-canonical again."""
    n = len(cores)
    cores = list(cores)
    one = torch.ones(1, 1, 1, dtype=cores[0].dtype, device=cores[0].device)
    if n == 1:
        cores[0] = _solve(prob, one, one, cores[0], 0, opts, routes)
        return cores
    rights = [None] * n  # rights[k] = environment of cores k+1.. (b, y, r)
    rights[n - 1] = one
    for k in range(n - 1, 0, -1):
        rights[k - 1] = _grow_right(cores[k], rights[k])
    lefts = [None] * n  # lefts[k] = environment of cores ..k-1 (x, p, a)
    lefts[0] = one
    for k in range(n - 1):  # right pass
        cores[k] = _solve(prob, lefts[k], rights[k], cores[k], k, opts, routes)
        _qr_right(cores, k)
        lefts[k + 1] = _grow_left(lefts[k], cores[k])
    right = one
    for k in range(n - 1, 0, -1):  # left pass
        cores[k] = _solve(prob, lefts[k], right, cores[k], k, opts, routes)
        _lq_left(cores, k)
        right = _grow_right(cores[k], right)
    return cores


def _run_sweeps(prob: _Problem, cores: list[torch.Tensor], f: float, max_sweeps: int, tol: float,
                opts: _SolverOptions, routes: dict) -> tuple[list[torch.Tensor], list[float], int, bool]:
    """Sweeps until the relative improvement of ``f`` is below ``tol`` or ``max_sweeps``; returns the cores, the
    objective after each kept sweep, the sweeps kept and whether it converged."""
    values: list[float] = []
    f0 = prob.stats.f0
    cores = _right_canonical(cores)
    sweeps, converged = 0, False
    if f <= 1e-30 * f0:
        return cores, values, 0, True
    for _ in range(max_sweeps):
        new = _sweep(prob, cores, opts, routes)
        f_new = prob.objective(new)
        if not math.isfinite(f_new) or f_new > f:
            converged = True  # no further decrease: the sweep is discarded
            break
        improvement = (f - f_new) / f
        cores, f = new, f_new
        values.append(f)
        sweeps += 1
        if f <= 1e-30 * f0 or improvement < tol:
            converged = True
            break
    return cores, values, sweeps, converged


# ---------------------------------------------------------------------------
# initialisation
# ---------------------------------------------------------------------------


def _times_in(core: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """Core ``(a, o, j, b)`` with its in index multiplied by ``M (j, j')`` (or a diagonal vector)."""
    if M.dim() == 1:
        if M.numel() == 1 and core.shape[2] == 1:
            return core * M[0]
        return core * M.reshape(1, 1, -1, 1)
    return torch.einsum("aojb,jk->aokb", core, M)


def _tt_svd(matrix: torch.Tensor, out_modes, in_modes, criterion: dict, work_dtype=torch.float64) -> MPO:
    """TT-SVD at ``criterion`` in the right gauge: ``MPO.from_matrix(..., gauge="right", **criterion)``, except that
    two cores are sliced from the one SVD (a truncated SVD) instead of re-rounded by two more SVD sweeps.

    The SVDs run in ``work_dtype`` (float32: mpokit's Gram-matrix SVD, accurate to ~1e-8 of the largest singular
    value); the cores come back in float64.
    """
    exact = MPO.from_matrix(matrix.to(work_dtype), out_modes, in_modes, gauge="right").to(dtype=torch.float64)
    if "max_params" in criterion:
        dims = exact._dims_for_max_params(criterion["max_params"])
    else:
        dims = [min(c, d) for c, d in zip(criterion["max_bond"], exact.bond_dims)]
    dims = list(shapes.consistent_bond_dims(out_modes, in_modes, dims))
    if len(dims) != 1:
        return exact.truncate(max_bond=dims)
    d = dims[0]
    return MPO(cores=(exact.cores[0][..., :d].contiguous(), exact.cores[1][:d].contiguous()), shape=exact.shape,
               singular_values=(exact.singular_values[0][:d],), gauge="right",
               error_bound=exact.truncation_bound(dims), reference_norm=exact.reference_norm)


def _init_whitened(prob: _Problem, criterion: dict):
    """TT-SVD of the whitened ``W K`` at ``criterion``, un-whitened: ``(cores, f, init name, bond dims)``.

    ``criterion`` is ``{"max_params": n}`` or ``{"max_bond": [d_1, ..]}``; the bonds come from the whitened spectra.
    """
    Wt = mode_multiply(prob.W, prob.factors, prob.in_modes)
    white = _tt_svd(Wt, prob.out_modes, prob.in_modes, criterion, prob.stats.work_dtype)
    cores = [_divide_in(c, L) for c, L in zip(white.cores, prob.factors)]
    name = "tt-svd" if prob.stats.identity else ("whitened" if prob.exact else "kron-whitened")
    return cores, prob.objective(cores), name, list(white.bond_dims)


def _divide_in(core: torch.Tensor, L: torch.Tensor) -> torch.Tensor:
    """Core ``(a, o, j, b)`` with its in index multiplied by ``L^{-1}`` (``L`` lower triangular, or a vector):
    a triangular solve, no inverse formed."""
    a, o, j, b = core.shape
    if L.dim() == 1:
        safe = torch.where(L > 0, L, torch.ones_like(L))
        return torch.where(L.reshape(1, 1, -1, 1) > 0, core / safe.reshape(1, 1, -1, 1), torch.zeros_like(core))
    X = core.permute(0, 1, 3, 2).reshape(-1, j)  # (a o b, j)
    X = torch.linalg.solve_triangular(L, X, upper=False, left=False)  # X L^{-1}
    return X.reshape(a, o, b, j).permute(0, 1, 3, 2).contiguous()


def _init_plain(prob: _Problem, dims: Sequence[int]):
    """Plain TT-SVD of ``W`` at the bonds ``dims``: ``(cores, f)``, or None when it cannot reach them."""
    plain = _tt_svd(prob.W, prob.out_modes, prob.in_modes, {"max_bond": list(dims)}, prob.stats.work_dtype)
    cores = list(plain.cores)
    if [int(c.shape[3]) for c in cores[:-1]] != list(dims):
        return None
    return cores, prob.objective(cores)


def _init(prob: _Problem, criterion: dict, which: str = "best"):
    """The start of the sweeps, ``(cores, f, init name, bond dims)``: the better of the whitened TT-SVD and plain
    TT-SVD at the same bonds (``which="best"``), or the one named."""
    cores, f, name, dims = _init_whitened(prob, criterion)
    if prob.stats.identity or which == "whitened":
        return cores, f, name, dims
    plain = _init_plain(prob, dims)
    if plain is not None and (which == "tt-svd" or plain[1] < f):
        return plain[0], plain[1], "tt-svd", dims
    return cores, f, name, dims


def _finish(prob: _Problem, cores: Sequence[torch.Tensor], f: float, gauge: str, dtype, transposed: bool) -> MPO:
    """The MPO in ``gauge`` with data-aware spectra (Schmidt values in whitened coordinates), in ``dtype``."""
    whitened = [_times_in(c, L) for c, L in zip(cores, prob.factors)]
    canon = MPO.from_cores([c.to(prob.stats.work_dtype) for c in whitened], gauge=gauge).to(dtype=torch.float64)
    out = [_divide_in(c, L) for c, L in zip(canon.cores, prob.factors)]
    shape = prob.stats.shape
    if transposed:
        out = [c.permute(0, 2, 1, 3) for c in out]
        shape = (shape[1], shape[0])
    return MPO(
        cores=tuple(c.contiguous().to(dtype) for c in out),
        shape=tuple(shape),
        singular_values=tuple(s.to(dtype) for s in canon.singular_values),
        gauge=gauge,
        error_bound=math.sqrt(max(f, 0.0)),
        reference_norm=math.sqrt(max(prob.stats.f0, 0.0)),
    )


# ---------------------------------------------------------------------------
# the public entry point
# ---------------------------------------------------------------------------


def _check_int(name: str, value, lo: int, example: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {value!r}; e.g. {example}")
    return int(value)


def _prepare(W: torch.Tensor, C, row_weights) -> tuple[_Stats, bool]:
    """Validated float64 statistics; row weights become the column metric of ``W^T`` (``transposed`` True)."""
    _check_matrix("W", W)
    check_stats(W, C, row_weights)
    W64 = W.detach().to(torch.float64)
    work = torch.float64 if W.dtype == torch.float64 else torch.float32
    if row_weights is not None:
        stats = _Stats(W64.T.contiguous(), Metric.of(W.shape[0], None, row_weights.detach()), identity=False,
                       work_dtype=work)
        transposed = True
    else:
        stats = _Stats(W64, Metric.of(W.shape[1], None if C is None else C.detach(), device=W.device),
                       identity=C is None, work_dtype=work)
        transposed = False
    if stats.f0 <= 0.0:
        raise ValueError("W has zero output under these statistics (tr(W C W^T) = 0): nothing to fit; "
                         "fit with C=None (Frobenius) instead, e.g. fit_mpo(W, out_modes=..., in_modes=...)")
    return stats, transposed


def _problem_modes(out_modes, in_modes, transposed: bool):
    return (tuple(in_modes), tuple(out_modes)) if transposed else (tuple(out_modes), tuple(in_modes))


def _check_layout(W: torch.Tensor, out_modes, in_modes, max_params, bond_dims):
    out_modes, in_modes = shapes.validate_modes(out_modes, in_modes)
    for name, modes, size in (("out_modes", out_modes, W.shape[0]), ("in_modes", in_modes, W.shape[1])):
        if math.prod(modes) < size:
            raise ValueError(f"{name} {modes} multiply to {math.prod(modes)} < {size}; modes must cover the size "
                             f"(a larger product zero-pads), e.g. {name}={shapes.factorize(int(size), len(modes))}")
    if (max_params is None) == (bond_dims is None):
        raise ValueError("give exactly one of max_params (a parameter budget) and bond_dims (one per bond); "
                         f"e.g. max_params={W.numel() // 2}")
    if max_params is not None:
        smallest = shapes.min_num_params(out_modes, in_modes)
        max_params = _check_int("max_params", max_params, 1, f"max_params={W.numel() // 2}")
        if max_params < smallest:
            raise ValueError(f"max_params={max_params} is below the smallest MPO of out {out_modes} x in {in_modes} "
                             f"(all bonds 1: {smallest} parameters); e.g. max_params={max(smallest * 4, W.numel() // 2)}")
        return out_modes, in_modes, {"max_params": max_params}
    if isinstance(bond_dims, (str, bytes)) or not isinstance(bond_dims, Sequence) or len(bond_dims) != len(out_modes) - 1:
        raise ValueError(f"bond_dims must hold one int per bond ({len(out_modes) - 1}), got {bond_dims!r}; "
                         f"e.g. bond_dims={(8,) * (len(out_modes) - 1)}")
    dims = [_check_int("bond_dims entries", d, 1, "bond_dims=(8, 8)") for d in bond_dims]
    return out_modes, in_modes, {"max_bond": dims}


def _check_fit_options(max_sweeps, tol, gauge):
    _check_int("max_sweeps", max_sweeps, 0, "max_sweeps=8")
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not (tol >= 0):
        raise ValueError(f"tol must be a number >= 0 (relative improvement of the objective per sweep), got {tol!r}; "
                         "e.g. tol=1e-4")
    from ..mpo import GAUGES
    if gauge not in GAUGES:
        raise ValueError(f"gauge must be one of {GAUGES}, got {gauge!r}; e.g. gauge='symmetric'")


def fit_mpo(
    W: torch.Tensor,
    C: torch.Tensor | None = None,
    *,
    out_modes: Sequence[int],
    in_modes: Sequence[int],
    max_params: int | None = None,
    bond_dims: Sequence[int] | None = None,
    row_weights: torch.Tensor | None = None,
    max_sweeps: int = 8,
    tol: float = 1e-4,
    gauge: str = "symmetric",
    damping: float = 1e-6,
    init: str = "best",
    dense_limit: int = 2048,
    cg_iters: int = 12,
) -> FitResult:
    """Output-aware MPO of ``W (out, in)`` under ``C (in, in)`` (or ``row_weights (out,)``; neither: Frobenius).

    Exactly one of ``max_params`` / ``bond_dims``. ``init`` is ``"best"`` (the better of the whitened TT-SVD and
    plain TT-SVD), ``"whitened"`` or ``"tt-svd"``. ``damping`` is that of the whitening factors
    (:func:`mpokit.aware.objective.damped_cholesky`). See the module docstring for the algorithm.
    """
    stats, transposed = _prepare(W, C, row_weights)
    out_modes, in_modes, criterion = _check_layout(W, out_modes, in_modes, max_params, bond_dims)
    _check_fit_options(max_sweeps, tol, gauge)
    if init not in ("best", "whitened", "tt-svd"):
        raise ValueError(f"init must be 'best', 'whitened' or 'tt-svd', got {init!r}; e.g. init='best'")
    opts = _SolverOptions(dense_limit=_check_int("dense_limit", dense_limit, 1, "dense_limit=2048"),
                          cg_iters=_check_int("cg_iters", cg_iters, 1, "cg_iters=12"))
    pm_out, pm_in = _problem_modes(out_modes, in_modes, transposed)
    prob = _Problem(stats, pm_out, pm_in, damping)
    return _fit_problem(prob, criterion, max_sweeps, tol, gauge, W.dtype, transposed, opts, init)


def _fit_problem(prob: _Problem, criterion: dict, max_sweeps: int, tol: float, gauge: str, dtype,
                 transposed: bool, opts: _SolverOptions | None = None, which: str = "best",
                 start=None) -> FitResult:
    """Initialise (or continue from ``start = (cores, f, init name, history)``) and sweep."""
    opts = opts or _SolverOptions()
    f0 = prob.stats.f0
    if start is None:
        cores, f, name, _ = _init(prob, criterion, which)
        history = [math.sqrt(max(f, 0.0) / f0)]
    else:
        cores, f, name, history = start
        history = list(history)
    routes: dict = {}
    cores, values, sweeps, converged = _run_sweeps(prob, cores, f, max_sweeps, tol, opts, routes)
    if values:
        f = values[-1]
    history += [math.sqrt(max(v, 0.0) / f0) for v in values]
    mpo = _finish(prob, cores, f, gauge, dtype, transposed)
    factors = tuple(prob.factors)
    return FitResult(mpo=mpo, history=history, init=name, sweeps=sweeps, converged=converged or max_sweeps == 0,
                     factors=factors, transposed=transposed, objective=f, reference=f0, routes=routes)


def truncate_fit(fit: FitResult, max_bond=None, rel_error=None, max_params=None) -> MPO:
    """Truncate a fitted MPO in whitened coordinates, so the discarded Schmidt values are output-error ones.

    The cores are whitened (``L_k`` on each in index; on the out index when the fit was transposed), truncated by
    :meth:`mpokit.MPO.truncate` (one criterion, as there), and un-whitened. The result keeps the whitened spectra;
    its ``error_bound`` adds the whitened truncation bound to the fit's (an estimate in the output metric, exact
    when one core holds all the in modes).
    """
    if not fit.factors:
        return fit.mpo.truncate(max_bond=max_bond, rel_error=rel_error, max_params=max_params)
    dtype = fit.mpo.dtype
    cores = [c.double() for c in fit.mpo.cores]
    if fit.transposed:
        cores = [c.permute(0, 2, 1, 3) for c in cores]
    whitened = [_times_in(c, L) for c, L in zip(cores, fit.factors)]
    shape = fit.mpo.shape if not fit.transposed else (fit.mpo.shape[1], fit.mpo.shape[0])
    base = MPO.from_cores(whitened, shape=shape, gauge=fit.mpo.gauge)
    cut = base.truncate(max_bond=max_bond, rel_error=rel_error, max_params=max_params)
    out = [_divide_in(c.double(), L) for c, L in zip(cut.cores, fit.factors)]
    if fit.transposed:
        out = [c.permute(0, 2, 1, 3) for c in out]
    return MPO(cores=tuple(c.contiguous().to(dtype) for c in out), shape=fit.mpo.shape,
               singular_values=tuple(s.to(dtype) for s in cut.singular_values), gauge=fit.mpo.gauge,
               error_bound=fit.mpo.error_bound + cut.error_bound, reference_norm=fit.mpo.reference_norm)
