"""mpokit.aware.objective: the output error, damped Cholesky and the Kronecker whitening, against closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from mpokit.aware import damped_cholesky, output_error, relative_output_error
from mpokit.aware.objective import Metric, kron_factors, mode_multiply


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # small float64 kernels: one thread avoids oversubscribing a shared machine; restored afterwards
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _second_moment(n_in: int, N: int = 300, seed: int = 0, rank: int | None = None):
    g = torch.Generator().manual_seed(seed)
    r = rank or n_in
    X = torch.randn(N, r, generator=g, dtype=torch.float64) @ torch.randn(r, n_in, generator=g, dtype=torch.float64)
    return X, X.T @ X / N


def test_damped_cholesky_of_a_positive_definite_matrix_uses_the_first_damping():
    _, C = _second_moment(10)
    L, lam = damped_cholesky(C, 1e-6)
    mu = float(torch.diagonal(C).mean())
    assert lam == 1e-6
    assert torch.allclose(L, torch.tril(L))
    assert torch.allclose(L @ L.T, C + lam * mu * torch.eye(10, dtype=torch.float64), atol=1e-12 * mu, rtol=0)


@pytest.mark.parametrize("kind", ["rank-1", "zero column", "rank-1 with zero column"])
def test_damped_cholesky_of_a_singular_matrix_is_finite_and_exact_to_the_damping(kind):
    g = torch.Generator().manual_seed(1)
    v = torch.randn(8, 1, generator=g, dtype=torch.float64)
    if kind == "rank-1":
        C = v @ v.T
    else:
        _, C = _second_moment(8, seed=2, rank=None if kind == "zero column" else 1)
        C[:, 3] = 0
        C[3, :] = 0
    L, lam = damped_cholesky(C)
    mu = float(torch.diagonal(C).mean())
    assert bool(torch.isfinite(L).all())
    eye = torch.eye(8, dtype=torch.float64)
    assert torch.allclose(L @ L.T, C + lam * mu * eye, atol=1e-10 * mu, rtol=0)
    # the reconstruction of C itself is off by exactly the damping, lam * mean(diag C) per diagonal entry
    assert torch.linalg.matrix_norm(L @ L.T - C) == pytest.approx(lam * mu * math.sqrt(8), rel=1e-6)
    assert lam <= 1e-4


def test_damped_cholesky_rejects_bad_matrices():
    with pytest.raises(ValueError, match="all-zero"):
        damped_cholesky(torch.zeros(5, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="square"):
        damped_cholesky(torch.ones(4, 5, dtype=torch.float64))
    bad = torch.eye(3, dtype=torch.float64)
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        damped_cholesky(bad)
    with pytest.raises(ValueError, match="positive semi-definite"):
        damped_cholesky(torch.diag(torch.tensor([1.0, 1.0, -50.0], dtype=torch.float64)))
    with pytest.raises(ValueError, match="damping"):
        damped_cholesky(torch.eye(3, dtype=torch.float64), damping=-1.0)


def test_output_error_is_the_output_residual_on_the_inputs():
    g = torch.Generator().manual_seed(3)
    X, C = _second_moment(7, N=50, seed=3)
    W = torch.randn(5, 7, generator=g, dtype=torch.float64)
    Wp = W + 0.1 * torch.randn(5, 7, generator=g, dtype=torch.float64)
    by_hand = float(((W - Wp) @ X.T).pow(2).sum()) / 50
    assert output_error(W, Wp, C) == pytest.approx(by_hand, rel=1e-12)
    assert output_error(W, Wp) == pytest.approx(float((W - Wp).pow(2).sum()), rel=1e-12)
    r = torch.rand(5, generator=g, dtype=torch.float64)
    assert output_error(W, Wp, row_weights=r) == pytest.approx(float((r[:, None] * (W - Wp) ** 2).sum()), rel=1e-12)
    assert relative_output_error(W, torch.zeros_like(W), C) == pytest.approx(1.0)
    assert relative_output_error(W, Wp, C) == pytest.approx(math.sqrt(by_hand / (float((W @ X.T).pow(2).sum()) / 50)),
                                                           rel=1e-12)
    assert relative_output_error(W, W.float(), C) < 1e-6  # another dtype is compared in float64


def test_output_error_rejects_bad_statistics():
    W = torch.randn(4, 6, dtype=torch.float64)
    with pytest.raises(ValueError, match="not both"):
        output_error(W, W, torch.eye(6, dtype=torch.float64), torch.ones(4, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"\(6, 6\)"):
        output_error(W, W, torch.eye(4, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"\(4,\)"):
        output_error(W, W, row_weights=torch.ones(6, dtype=torch.float64))
    with pytest.raises(ValueError, match=">= 0"):
        output_error(W, W, row_weights=-torch.ones(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="shape"):
        output_error(W, W[:, :5])


def test_partial_traces_match_explicit_sums():
    _, C = _second_moment(12, seed=4)
    m = Metric(dense=C)
    t = C.reshape(2, 3, 2, 2, 3, 2)
    assert torch.allclose(m.partial_trace((2, 3, 2), 0), torch.einsum("abcdbc->ad", t))
    assert torch.allclose(m.partial_trace((2, 3, 2), 1), torch.einsum("abcaec->be", t))
    assert torch.allclose(m.partial_trace((2, 3, 2), 2), torch.einsum("abcabf->cf", t))
    d = Metric(diag=torch.diagonal(C).clone())
    assert torch.allclose(d.partial_trace((2, 3, 2), 1), torch.diagonal(m.block((2, 3, 2), 1, 2).dense))


def test_kron_factors_are_exact_for_a_kronecker_product_and_for_one_mode():
    _, A = _second_moment(3, seed=5)
    _, B = _second_moment(4, seed=6)
    C = torch.kron(A, B)
    factors, lam = kron_factors(Metric(dense=C), (3, 4), damping=0.0)
    K = torch.kron(factors[0], factors[1])
    assert lam == 0.0
    assert torch.allclose(K @ K.T, C, atol=1e-10 * float(C.abs().max()), rtol=0)
    # mode_multiply is multiplication by the Kronecker product
    X = torch.randn(5, 12, dtype=torch.float64)
    assert torch.allclose(mode_multiply(X, factors, (3, 4)), X @ K, atol=1e-12, rtol=0)
    # a single mode of size > 1: the factor is damped_cholesky(C) itself
    factors, _ = kron_factors(Metric(dense=C), (1, 12, 1))
    L, _ = damped_cholesky(C)
    assert torch.allclose(factors[1], L, atol=1e-12, rtol=0)
    assert factors[0].shape == (1, 1) and float(factors[0]) == 1.0
