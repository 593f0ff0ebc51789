"""mpokit.aware.methods and .allocation: every method of the harness on one matrix, and the budget split."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from mpokit.aware import (METHODS, ErrorCurve, Layout, allocate_budget, approximate, damped_cholesky, error_curve,
                          relative_output_error)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # small float64 kernels: one thread avoids oversubscribing a shared machine; restored afterwards
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _data(out, inn, seed=0, N=400):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(out, inn, generator=g, dtype=torch.float64)
    mix = torch.randn(inn, inn, generator=g, dtype=torch.float64) * torch.linspace(3.0, 0.2, inn, dtype=torch.float64)
    X = torch.randn(N, inn, generator=g, dtype=torch.float64) @ mix
    return W, X, X.T @ X / N


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_meets_its_budget_and_reports_its_errors(method):
    W, X, C = _data(24, 16, seed=1)
    budget = W.numel() // 2
    a = approximate(method, W, max_params=budget, C=C, n_cores=3, max_sweeps=2) if method == "mpo-aware" else \
        approximate(method, W, max_params=budget, C=C, n_cores=3)
    assert a.method == method and a.matrix.shape == W.shape and a.matrix.dtype == W.dtype
    assert a.params <= budget
    out = float(((W - a.matrix) @ X.T).pow(2).sum()) / X.shape[0]
    ref = float((W @ X.T).pow(2).sum()) / X.shape[0]
    assert a.rel_output_error == pytest.approx(math.sqrt(out / ref), rel=1e-10)
    assert a.rel_weight_error == pytest.approx(float((W - a.matrix).norm() / W.norm()), rel=1e-12)
    if a.mpo is not None:
        assert a.params == a.mpo.num_params
        assert torch.allclose(a.mpo.to_matrix(), a.matrix)
        assert a.layout is not None
    if a.mask is not None:
        assert a.mask.dtype == torch.bool and a.params == int(a.mask.sum())
        assert bool((a.matrix[~a.mask] == 0).all()) and torch.equal(a.matrix[a.mask], W[a.mask])
    if method == "magnitude":
        assert a.params == budget
        assert float(W[a.mask].abs().min()) >= float(W[~a.mask].abs().max())
    if method == "2:4":
        assert bool((a.mask.reshape(24, 4, 4).sum(-1) == 2).all())
    if method == "wanda":
        assert bool((a.mask.sum(1) == budget // 24).all())


def test_frobenius_errors_without_statistics():
    W, _, _ = _data(20, 12, seed=2)
    for method in ("mpo", "svd", "magnitude", "2:4"):
        a = approximate(method, W, max_params=120)
        assert a.rel_output_error == pytest.approx(a.rel_weight_error, rel=1e-12)


def test_svd_whitened_is_svd_llm_and_mpo_aware_is_never_worse():
    W, X, C = _data(24, 18, seed=3)
    budget = 7 * (24 + 18)
    a = approximate("svd-whitened", W, max_params=budget, C=C)
    L, _ = damped_cholesky(C)
    U, S, Vh = torch.linalg.svd(W @ L, full_matrices=False)
    closed = (U[:, :7] * S[:7]) @ Vh[:7] @ torch.linalg.inv(L)
    assert a.mpo.bond_dims == (7,) and a.params == budget
    assert torch.allclose(a.matrix, closed, atol=1e-10 * float(closed.abs().max()), rtol=0)
    # core 0 (1, out, 1, r) and core 1 (r, 1, in, 1): the whitening sits in the in core
    assert a.mpo.cores[0].shape == (1, 24, 1, 7) and a.mpo.cores[1].shape == (7, 1, 18, 1)
    aware = approximate("mpo-aware", W, max_params=budget, C=C, max_sweeps=3)
    assert any(t["layout"]["name"] == "low-rank" for t in aware.detail["trials"])
    assert aware.rel_output_error <= a.rel_output_error + 1e-10
    only_low_rank = approximate("mpo-aware", W, max_params=budget, C=C,
                                layouts=[Layout("low-rank", (24, 1), (1, 18))])
    assert only_low_rank.rel_output_error <= a.rel_output_error + 1e-10


def test_svd_whitened_with_row_weights_whitens_the_rows():
    g = torch.Generator().manual_seed(4)
    W = torch.randn(30, 8, generator=g, dtype=torch.float64)
    r = torch.rand(30, generator=g, dtype=torch.float64) + 0.1
    a = approximate("svd-whitened", W, max_params=3 * 38, row_weights=r)
    D = r.sqrt()[:, None]
    U, S, Vh = torch.linalg.svd(D * W, full_matrices=False)  # row-weighted Eckart-Young
    closed = ((U[:, :3] * S[:3]) @ Vh[:3]) / D
    assert torch.allclose(a.matrix, closed, atol=1e-5, rtol=0)  # to the damping 1e-6 mean(r)
    assert a.rel_output_error == pytest.approx(relative_output_error(W, closed, row_weights=r), rel=1e-5)


def test_wanda_scores_by_weight_times_activation_norm():
    W = torch.tensor([[4.0, -3.0, 2.0, 1.0], [1.0, 2.0, -3.0, 4.0]], dtype=torch.float64)
    C = torch.diag(torch.tensor([0.01, 1.0, 4.0, 1.0], dtype=torch.float64))  # sqrt: 0.1, 1, 2, 1
    # scores: row 0 = 0.4, 3, 4, 1 -> keeps columns 2, 1; row 1 = 0.1, 2, 6, 4 -> keeps columns 2, 3
    a = approximate("wanda", W, max_params=4, C=C)
    expected = torch.tensor([[False, True, True, False], [False, False, True, True]])
    assert torch.equal(a.mask, expected)
    m = approximate("magnitude", W, max_params=4)  # magnitude alone keeps the two 4s and the two 3s
    assert torch.equal(m.mask, W.abs() >= 3)


def test_two_four_uses_the_activation_norm_when_given():
    W = torch.tensor([[4.0, 3.0, 2.0, 1.0]], dtype=torch.float64)
    C = torch.diag(torch.tensor([0.01, 0.01, 1.0, 1.0], dtype=torch.float64))
    assert torch.equal(approximate("2:4", W, max_params=2).mask, torch.tensor([[True, True, False, False]]))
    assert torch.equal(approximate("2:4", W, max_params=2, C=C).mask, torch.tensor([[False, False, True, True]]))


def test_bad_input_names_the_problem_and_a_valid_example():
    W, _, C = _data(24, 16, seed=5)
    cases = [
        (dict(method="lora", max_params=100), "unknown method"),
        (dict(method="wanda", max_params=100), "needs C"),
        (dict(method="svd-whitened", max_params=100), "needs calibration"),
        (dict(method="mpo-aware", max_params=100), "needs calibration"),
        (dict(method="svd", max_params=10), "below rank 1"),
        (dict(method="mpo", max_params=5, n_cores=3), "below the smallest 3-core MPO"),
        (dict(method="mpo-aware", max_params=10, C=C), "below the smallest MPO of every layout"),
        (dict(method="2:4", max_params=100), "2:4 keeps"),
        (dict(method="wanda", max_params=10, C=C), "one weight per output row"),
        (dict(method="magnitude", max_params=0), "max_params must be an int >= 1"),
    ]
    for kwargs, message in cases:
        method = kwargs.pop("method")
        with pytest.raises(ValueError, match=message) as info:
            approximate(method, W, **kwargs)
        assert "e.g." in str(info.value), str(info.value)
    with pytest.raises(ValueError, match="divisible by 4"):
        approximate("2:4", torch.randn(4, 6, dtype=torch.float64), max_params=12)


# ---------------------------------------------------------------------------
# error curves and the budget split
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["svd", "svd-whitened"])
def test_svd_error_curves_are_exact(method):
    W, _, C = _data(24, 18, seed=6)
    curve = error_curve(method, W, C=C, points=6)
    assert curve.params == sorted(curve.params) and len(curve.params) >= 4
    assert all(b <= a for a, b in zip(curve.errors, curve.errors[1:]))
    for p, e in zip(curve.params, curve.errors):
        a = approximate(method, W, max_params=p, C=C)
        assert a.params == p
        assert e == pytest.approx(a.rel_output_error ** 2, rel=1e-8, abs=1e-14)


def test_mpo_aware_and_pruning_curves_are_decreasing_estimates():
    W, _, C = _data(24, 16, seed=7)
    aware = error_curve("mpo-aware", W, C=C, points=8)
    whitened = error_curve("svd-whitened", W, C=C, points=8)
    assert all(b <= a for a, b in zip(aware.errors, aware.errors[1:]))
    # the aware curve contains the whitened-SVD one: never above it at the same parameters
    for p, e in zip(whitened.params, whitened.errors):
        below = [ea for pa, ea in zip(aware.params, aware.errors) if pa <= p]
        assert below and min(below) <= e + 1e-12
    mag = error_curve("magnitude", W, points=4)  # exact without statistics
    for p, e in zip(mag.params, mag.errors):
        assert e == pytest.approx(approximate("magnitude", W, max_params=p).rel_output_error ** 2, rel=1e-10)
    wanda = error_curve("wanda", W, C=C, points=4)
    assert wanda.params == sorted(wanda.params) and all(0 <= e <= 1.0 for e in wanda.errors)
    two_four = error_curve("2:4", W, C=C)
    assert two_four.params == [W.numel() // 2]
    with pytest.raises(ValueError, match="needs"):
        error_curve("mpo-aware", W)


def test_allocate_budget_respects_the_total_and_feeds_the_steeper_curve():
    params = [100, 200, 300, 400, 500]
    flat = ErrorCurve(params, [0.50, 0.45, 0.41, 0.38, 0.36])
    steep = ErrorCurve(params, [0.90, 0.40, 0.15, 0.05, 0.01])
    out = allocate_budget({"flat": flat, "steep": steep}, 600)
    assert sum(out.values()) <= 600
    assert out["steep"] > out["flat"]
    # drops per 100 parameters: steep 0.5, 0.25, 0.1, 0.04; flat 0.05, 0.04, ...: the fourth step goes to flat
    assert out == {"flat": 200, "steep": 400}
    weighted = allocate_budget({"flat": flat, "steep": steep}, 600, weights={"flat": 100.0})
    assert weighted["flat"] > out["flat"]
    with pytest.raises(ValueError, match="below the sum of the smallest points"):
        allocate_budget({"flat": flat, "steep": steep}, 150)
    with pytest.raises(ValueError, match="must increase"):
        allocate_budget({"bad": ErrorCurve([2, 1], [0.5, 0.4])}, 10)


def test_allocate_budget_equals_brute_force_on_convex_curves():
    g = torch.Generator().manual_seed(8)
    curves = {}
    for name in "abc":
        drops = sorted((torch.rand(4, generator=g, dtype=torch.float64) * 0.3).tolist(), reverse=True)
        errors = [1.0]
        for d in drops:  # decreasing drops per equal step: a convex curve
            errors.append(errors[-1] - d)
        curves[name] = ErrorCurve([10, 20, 30, 40, 50], errors)
    weights = {"a": 1.0, "b": 2.0, "c": 0.5}
    for total in range(30, 160, 10):
        greedy = allocate_budget(curves, total, weights)
        best = min(
            (combo for combo in itertools.product(range(5), repeat=3)
             if sum(curves[n].params[i] for n, i in zip("abc", combo)) <= total),
            key=lambda combo: sum(weights[n] * curves[n].errors[i] for n, i in zip("abc", combo)),
        )
        value = lambda alloc: sum(weights[n] * curves[n].errors[curves[n].params.index(alloc[n])] for n in "abc")  # noqa: E731
        assert value(greedy) == pytest.approx(value({n: curves[n].params[i] for n, i in zip("abc", best)}), abs=1e-12)
        assert sum(greedy.values()) <= total
