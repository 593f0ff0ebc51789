"""mpokit.aware.als: the output-aware MPO fit, against references (float64 throughout)."""

from __future__ import annotations

import math

import pytest
import torch

from mpokit import MPO
from mpokit.aware import damped_cholesky, fit_mpo, relative_output_error, truncate_fit
from mpokit.aware import als
from mpokit.mpo import rebuild_matrix


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # small float64 kernels: one thread avoids oversubscribing a shared machine; restored afterwards
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _data(out, inn, seed=0, N=400, rank=None):
    """``W (out, in)`` with a decaying spectrum and correlated inputs ``X (N, in)``, ``C = X^T X / N``."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(out, inn, generator=g, dtype=torch.float64)
    r = rank or inn
    mix = torch.randn(r, inn, generator=g, dtype=torch.float64) * torch.linspace(3.0, 0.2, inn, dtype=torch.float64)
    X = torch.randn(N, r, generator=g, dtype=torch.float64) @ mix
    return W, X, X.T @ X / N


LAYOUTS = [  # (out_modes, in_modes) of a 24 x 18 matrix
    ((4, 6), (3, 6)),  # interleaved-2
    ((2, 3, 4), (3, 3, 2)),  # interleaved-3
    ((2, 3, 2, 2), (3, 2, 3, 1)),  # interleaved-4
    ((24, 1), (1, 18)),  # low-rank
    ((4, 6, 1), (1, 1, 18)),  # hybrid-out
    ((24, 1, 1), (1, 3, 6)),  # hybrid-in
]


@pytest.mark.parametrize("out_modes,in_modes", LAYOUTS)
@pytest.mark.parametrize("dense_limit", [2048, 1])  # 1: every core without Kronecker structure goes through CG
def test_the_objective_never_increases_over_sweeps(out_modes, in_modes, dense_limit):
    W, _, C = _data(24, 18, seed=1)
    fit = fit_mpo(W, C, out_modes=out_modes, in_modes=in_modes, max_params=200, max_sweeps=6, tol=0.0,
                  dense_limit=dense_limit)
    h = fit.history
    assert len(h) == fit.sweeps + 1 and fit.sweeps >= 1
    assert all(b <= a for a, b in zip(h, h[1:])), h
    assert fit.mpo.num_params <= 200
    # the reported error is the output error of the returned matrix, and error_bound / reference_norm state it
    measured = relative_output_error(W, fit.mpo.to_matrix(), C)
    assert measured == pytest.approx(h[-1], rel=1e-10)
    assert fit.mpo.error_bound ** 2 == pytest.approx(fit.objective, rel=1e-12)
    assert fit.mpo.reference_norm ** 2 == pytest.approx(float(torch.trace(W @ C @ W.T)), rel=1e-12)
    assert fit.mpo.rel_error_bound == pytest.approx(measured, rel=1e-10)
    if dense_limit == 1 and len(out_modes) > 2:
        assert fit.routes.get("cg", 0) > 0 or set(fit.routes) == {"kron"}


@pytest.mark.parametrize("out_modes,in_modes", LAYOUTS[:4])
@pytest.mark.parametrize("identity", ["C=None", "C=I"])
def test_with_identity_statistics_the_start_is_tt_svd(out_modes, in_modes, identity):
    W, _, _ = _data(24, 18, seed=2)
    C = None if identity == "C=None" else torch.eye(18, dtype=torch.float64)
    fit = fit_mpo(W, C, out_modes=out_modes, in_modes=in_modes, max_params=220, max_sweeps=4, tol=0.0)
    tt = MPO.from_matrix(W, out_modes, in_modes, max_bond=list(fit.mpo.bond_dims))
    tt_error = float((W - tt.to_matrix()).pow(2).sum())
    start = fit.history[0] ** 2 * float(W.pow(2).sum())
    assert start == pytest.approx(tt_error, rel=1e-10)
    assert fit.history[-1] ** 2 * float(W.pow(2).sum()) <= tt_error * (1 + 1e-12)
    if identity == "C=None":
        assert fit.init == "tt-svd"


def _planted(out_modes, in_modes, bonds, rank, seed):
    """``W = M + N``: ``M`` an MPO with ``bonds`` in the layout, ``N`` in the null space of ``X`` (``N X^T = 0``)."""
    g = torch.Generator().manual_seed(seed)
    out, inn = math.prod(out_modes), math.prod(in_modes)
    X = torch.randn(300, rank, generator=g, dtype=torch.float64) @ torch.randn(rank, inn, generator=g, dtype=torch.float64)
    null = torch.linalg.svd(X)[2][rank:]  # (in - rank, in): X null^T = 0
    dims = (1, *bonds, 1)
    cores = [torch.randn(dims[k], i, j, dims[k + 1], generator=g, dtype=torch.float64)
             for k, (i, j) in enumerate(zip(out_modes, in_modes))]
    M = rebuild_matrix(cores)
    M = M / M.norm()
    N = torch.randn(out, inn - rank, generator=g, dtype=torch.float64) @ null
    # ||N|| = 0.1 ||M||: the float64 floor of evaluating f, eps ||C|| ||N||^2, then sits well below the 1e-8 target
    N = 0.1 * N / N.norm()
    return M, N, X


@pytest.mark.parametrize("out_modes,in_modes,bonds", [
    ((4, 6), (3, 6), (5,)),
    ((2, 3, 4), (3, 3, 2), (3, 6)),
    ((24, 1), (1, 18), (4,)),
    ((4, 6, 1), (1, 1, 18), (3, 5)),
])
def test_planted_structure_under_a_rank_deficient_C_is_recovered(out_modes, in_modes, bonds):
    M, N, X = _planted(out_modes, in_modes, bonds, rank=15, seed=3)
    C = X.T @ X / X.shape[0]
    W = M + N
    assert float((N @ X.T).norm()) < 1e-12
    fit = fit_mpo(W, C, out_modes=out_modes, in_modes=in_modes, bond_dims=bonds, max_sweeps=300, tol=0.0)
    assert fit.mpo.bond_dims == bonds
    recovered = float(((fit.mpo.to_matrix() - M) @ X.T).norm() / (M @ X.T).norm())
    assert recovered <= 1e-8, (recovered, fit.sweeps, fit.init)
    plain = MPO.from_matrix(W, out_modes, in_modes, max_bond=list(bonds)).to_matrix()
    missed = float(((plain - M) @ X.T).norm() / (M @ X.T).norm())
    assert missed > 1e-2, missed


def _local_minimiser(prob, cores, k):
    """Reference: the exact least-squares core ``k`` from the dense Jacobian of ``G -> W'`` (lstsq)."""
    shape = cores[k].shape

    def rebuilt(g):
        cs = list(cores)
        cs[k] = g.reshape(shape)
        return rebuild_matrix(cs)

    A = torch.autograd.functional.jacobian(rebuilt, torch.zeros(cores[k].numel(), dtype=torch.float64))
    C = prob.metric.dense
    H = torch.einsum("rjn,jk,rkm->nm", A, C, A)
    b = torch.einsum("rjn,jk,rk->n", A, C, prob.W)
    return torch.linalg.lstsq(H, b, rcond=1e-13).solution.reshape(shape)


@pytest.mark.parametrize("out_modes,in_modes", [((3, 4), (4, 3)), ((2, 3, 2), (2, 3, 2)), ((12, 1), (1, 12)),
                                                ((3, 4, 1), (1, 1, 12)), ((12, 1, 1), (1, 3, 4))])
def test_every_solver_route_gives_the_exact_local_minimiser(out_modes, in_modes):
    W, _, C = _data(12, 12, seed=4)
    stats, _ = als._prepare(W, C, None)
    prob = als._Problem(stats, out_modes, in_modes, 1e-6)
    start, _, _, _ = als._init(prob, {"max_params": 80})
    one = torch.ones(1, 1, 1, dtype=torch.float64)
    for k in range(len(start)):
        cores = als._right_canonical(start)
        for m in range(k):
            als._qr_right(cores, m)
        P, Q = one, one
        for m in range(k):
            P = als._grow_left(P, cores[m])
        for m in range(len(cores) - 1, k, -1):
            Q = als._grow_right(cores[m], Q)
        G0 = cores[k]
        a, o, j, b = G0.shape
        B = als._adjoint(P, prob.Y, Q, o, j)
        best = prob.objective([*cores[:k], _local_minimiser(prob, cores, k), *cores[k + 1:]])
        solved = {
            "basis": als._solve_dense(als._hessian_basis(prob, P, Q, a, j, b), G0, B),
            "ppqqA": als._solve_dense(als._hessian_ppqq(prob, P, Q, a, j, b, "A"), G0, B),
            "ppqqB": als._solve_dense(als._hessian_ppqq(prob, P, Q, a, j, b, "B"), G0, B),
            "cg": als._solve_cg(prob, P, Q, G0, B, k, iters=200, rtol=1e-14),
        }
        if sum(1 for s in (P.shape[1], j, Q.shape[2]) if s > 1) <= 1:
            solved["kron"] = als._solve_kron(prob, P, Q, G0, B, k)
        for route, G in solved.items():
            f = prob.objective([*cores[:k], G, *cores[k + 1:]])
            assert f == pytest.approx(best, rel=1e-10), (route, k, f, best)


def test_row_weights_fit_the_transpose_under_a_diagonal_metric():
    g = torch.Generator().manual_seed(5)
    W = torch.randn(30, 8, generator=g, dtype=torch.float64)  # an embedding: 30 tokens x 8 dims
    r = torch.rand(30, generator=g, dtype=torch.float64) ** 3
    r[[2, 7, 11]] = 0.0  # tokens never seen
    modes = dict(out_modes=(5, 6), in_modes=(2, 4))
    fit = fit_mpo(W, row_weights=r, max_params=120, max_sweeps=5, tol=0.0, **modes)
    ref = fit_mpo(W.T.contiguous(), torch.diag(r), out_modes=(2, 4), in_modes=(5, 6), max_params=120, max_sweeps=5,
                  tol=0.0)
    assert fit.transposed and fit.mpo.shape == (30, 8) and fit.mpo.out_modes == (5, 6)
    assert fit.history == pytest.approx(ref.history, rel=1e-8)
    assert torch.allclose(fit.mpo.to_matrix(), ref.mpo.to_matrix().T, atol=1e-8, rtol=0)
    assert relative_output_error(W, fit.mpo.to_matrix(), row_weights=r) == pytest.approx(fit.history[-1], rel=1e-10)
    assert all(b <= a for a, b in zip(fit.history, fit.history[1:]))


@pytest.mark.parametrize("kind", ["rank-1", "zero column"])
def test_singular_C_gives_a_finite_fit(kind):
    W, X, C = _data(24, 18, seed=6)
    if kind == "rank-1":
        v = X[:1].T
        C = v @ v.T
    else:
        C[:, 4] = 0
        C[4, :] = 0
    for out_modes, in_modes in (((2, 3, 4), (3, 3, 2)), ((24, 1), (1, 18))):
        fit = fit_mpo(W, C, out_modes=out_modes, in_modes=in_modes, max_params=150, max_sweeps=3)
        Wp = fit.mpo.to_matrix()
        assert bool(torch.isfinite(Wp).all()) and all(bool(torch.isfinite(c).all()) for c in fit.mpo.cores)
        assert all(math.isfinite(h) for h in fit.history)
        assert relative_output_error(W, Wp, C) == pytest.approx(fit.history[-1], rel=1e-8, abs=1e-7)


def test_padded_layout_counts_only_the_real_rows_and_columns():
    W, _, C = _data(22, 17, seed=7)  # modes (2, 3, 4) x (3, 3, 2) pad 22 -> 24 rows and 17 -> 18 columns
    fit = fit_mpo(W, C, out_modes=(2, 3, 4), in_modes=(3, 3, 2), max_params=200, max_sweeps=5, tol=0.0)
    assert fit.mpo.shape == (22, 17) and fit.mpo.padded_shape == (24, 18)
    assert all(b <= a for a, b in zip(fit.history, fit.history[1:]))
    assert relative_output_error(W, fit.mpo.to_matrix(), C) == pytest.approx(fit.history[-1], rel=1e-10)


def test_low_rank_spectra_are_the_whitened_singular_values_and_truncation_is_svd_llm():
    W, _, C = _data(24, 18, seed=8)
    L, _ = damped_cholesky(C)
    fit = fit_mpo(W, C, out_modes=(24, 1), in_modes=(1, 18), max_params=6 * 42, max_sweeps=0)
    assert fit.init == "whitened" and fit.mpo.bond_dims == (6,)
    s = torch.linalg.svdvals(W @ L)
    assert torch.allclose(fit.mpo.singular_values[0], s[:6], rtol=1e-10, atol=0)
    # truncating in whitened coordinates is SVD-LLM at the smaller rank
    cut = truncate_fit(fit, max_bond=3)
    U, S, Vh = torch.linalg.svd(W @ L, full_matrices=False)
    closed = (U[:, :3] * S[:3]) @ Vh[:3] @ torch.linalg.inv(L)
    assert cut.bond_dims == (3,)
    assert torch.allclose(cut.to_matrix(), closed, atol=1e-10 * float(closed.abs().max()), rtol=0)
    assert torch.allclose(cut.singular_values[0], s[:3], rtol=1e-10, atol=0)


def test_fit_rejects_bad_input_before_any_work():
    W, _, C = _data(24, 18, seed=9)
    modes = dict(out_modes=(4, 6), in_modes=(3, 6))
    with pytest.raises(ValueError, match="exactly one of max_params"):
        fit_mpo(W, C, **modes)
    with pytest.raises(ValueError, match="exactly one of max_params"):
        fit_mpo(W, C, max_params=100, bond_dims=(3,), **modes)
    with pytest.raises(ValueError, match="smallest MPO"):
        fit_mpo(W, C, max_params=10, **modes)
    with pytest.raises(ValueError, match=r"\(18, 18\)"):
        fit_mpo(W, C[:5, :5], max_params=100, **modes)
    with pytest.raises(ValueError, match="multiply to"):
        fit_mpo(W, C, out_modes=(4, 5), in_modes=(3, 6), max_params=100)
    with pytest.raises(ValueError, match="zero output"):
        fit_mpo(torch.zeros(24, 18, dtype=torch.float64), C, max_params=100, **modes)
    with pytest.raises(ValueError, match="init"):
        fit_mpo(W, C, max_params=100, init="random", **modes)
    with pytest.raises(ValueError, match="bond_dims"):
        fit_mpo(W, C, bond_dims=(3, 3), **modes)
