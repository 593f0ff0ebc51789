"""mpokit.aware.layouts: candidate layouts and the per-matrix layout search."""

from __future__ import annotations

import math

import pytest
import torch

from mpokit import shapes
from mpokit.aware import Layout, candidate_layouts, relative_output_error, search_layout


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
    return W, X.T @ X / N


@pytest.mark.parametrize("size", [(24, 18), (576, 1536), (1536, 576), (192, 576), (30522, 384)])
def test_candidate_layouts_hold_low_rank_interleaved_2_to_5_and_a_hybrid(size):
    out, inn = size
    layouts = candidate_layouts(out, inn)
    names = [lay.name for lay in layouts]
    for n in range(2, 6):
        om, im = shapes.choose_modes(out, inn, n)
        assert Layout(f"interleaved-{n}", om, im) in layouts
    assert Layout("low-rank", (out, 1), (1, inn)) in layouts
    hybrids = [lay for lay in layouts if lay.name.startswith("hybrid")]
    assert hybrids and len(names) == len(set((lay.out_modes, lay.in_modes) for lay in layouts))
    out_hybrid = next(lay for lay in hybrids if lay.name == "hybrid-out")
    assert out_hybrid.exact_whitening and out_hybrid.in_modes == (1, 1, inn)
    for lay in layouts:
        assert math.prod(lay.out_modes) >= out and math.prod(lay.in_modes) >= inn
        assert Layout.from_dict(lay.to_dict()) == lay


def test_candidate_layouts_reject_bad_sizes():
    with pytest.raises(ValueError, match="positive int"):
        candidate_layouts(0, 5)
    with pytest.raises(ValueError, match="positive int"):
        candidate_layouts(4, 2.5)


def test_the_chosen_layout_has_the_lowest_output_error_of_its_trials():
    W, C = _data(24, 18, seed=1)
    search = search_layout(W, C, max_params=200, max_sweeps=4, fit_top=3)
    errors = {t.layout.name: t.rel_output_error for t in search.trials}
    assert search.layout.name in errors
    assert errors[search.layout.name] <= min(errors.values()) * (1 + 1e-6)  # the lowest (a tie: the fewer params)
    assert relative_output_error(W, search.best.mpo.to_matrix(), C) == pytest.approx(errors[search.layout.name],
                                                                                     rel=1e-10)
    assert sum(1 for t in search.trials if t.sweeps > 0) <= 3
    for t in search.trials:
        assert t.params <= 200 and t.params == shapes.mpo_num_params(t.layout.out_modes, t.layout.in_modes, t.bond_dims)
        assert 0.0 <= t.rel_output_error <= 1.0 + 1e-12 and t.rel_weight_error >= 0.0
    # every trial reports exact errors: refit one unswept layout alone at its start and compare
    unswept = next(t for t in search.trials if t.sweeps == 0)
    alone = search_layout(W, C, max_params=200, layouts=[unswept.layout], max_sweeps=0)
    assert alone.trials[0].rel_output_error == pytest.approx(unswept.rel_output_error, rel=1e-12)


def test_search_skips_layouts_over_the_budget_and_rejects_a_budget_below_all():
    W, C = _data(24, 18, seed=2)
    big = Layout("low-rank", (24, 1), (1, 18))  # needs 42 parameters at rank 1
    small = Layout("interleaved-3", (2, 3, 4), (3, 3, 2))  # needs 23
    search = search_layout(W, C, max_params=30, layouts=[big, small], max_sweeps=1)
    assert [t.layout for t in search.trials] == [small]
    with pytest.raises(ValueError, match="below the smallest MPO of every layout"):
        search_layout(W, C, max_params=10, layouts=[big, small])
    with pytest.raises(TypeError, match="Layout"):
        search_layout(W, C, max_params=100, layouts=[((24, 1), (1, 18))])


def test_search_with_row_weights():
    g = torch.Generator().manual_seed(3)
    W = torch.randn(40, 12, generator=g, dtype=torch.float64)
    r = torch.rand(40, generator=g, dtype=torch.float64) ** 4
    r[:5] = 0.0
    search = search_layout(W, row_weights=r, max_params=240, max_sweeps=3)
    assert search.best.transposed
    best = min(t.rel_output_error for t in search.trials)
    assert relative_output_error(W, search.best.mpo.to_matrix(), row_weights=r) == pytest.approx(best, rel=1e-10)


def test_layout_searches_name_their_candidates():
    from mpokit.aware.layouts import layouts_for

    every = layouts_for(1536, 576, "all")
    assert [lay.name for lay in every] == [lay.name for lay in candidate_layouts(1536, 576)]
    exact = layouts_for(1536, 576, "exact")
    assert [lay.name for lay in exact] == ["low-rank", "hybrid-out"] and all(lay.exact_whitening for lay in exact)
    rows = layouts_for(1000, 64, "exact", row_weighted=True)  # an embedding: the metric is over the rows
    assert [lay.name for lay in rows] == ["low-rank", "hybrid-in"] and all(lay.exact_row_whitening for lay in rows)
    (only,) = layouts_for(1536, 576, "none", n_cores=3)
    assert only.name == "interleaved-3" and only.n_cores == 3
    with pytest.raises(ValueError, match="layout search must be one of .*'all', 'exact', 'none'.*got 'fast'"):
        layouts_for(10, 10, "fast")


def test_exact_search_equals_svd_whitened_or_beats_it_and_its_curve_matches():
    from mpokit.aware import approximate, error_curve
    from mpokit.aware.layouts import layouts_for

    torch.manual_seed(3)
    W = torch.randn(48, 36, dtype=torch.float64)
    X = torch.randn(400, 36, dtype=torch.float64) * torch.logspace(0, -1.5, 36, dtype=torch.float64)
    C = X.T @ X / 400
    exact = layouts_for(48, 36, "exact")
    a = approximate("mpo-aware", W, max_params=W.numel() // 3, C=C, layouts=exact)
    s = approximate("svd-whitened", W, max_params=W.numel() // 3, C=C)
    assert a.layout.name in ("low-rank", "hybrid-out") and a.rel_output_error <= s.rel_output_error + 1e-12
    assert all(t["layout"]["name"] in ("low-rank", "hybrid-out") for t in a.detail["trials"])
    # the curve over the exact layouts: the whitened SVD's, or below it (hybrid-out points)
    curve, svd = error_curve("mpo-aware", W, C=C, layouts=exact), error_curve("svd-whitened", W, C=C)
    for p, e in zip(svd.params, svd.errors):
        below = [ce for cp, ce in zip(curve.params, curve.errors) if cp <= p]
        assert below and min(below) <= e + 1e-12
    # the interleaved-only curve differs: it holds no low-rank point
    (inter,) = layouts_for(48, 36, "none", n_cores=3)
    only = error_curve("mpo-aware", W, C=C, layouts=[inter])
    assert only.params[0] == inter.min_params


def test_whitened_low_rank_is_taken_as_is_and_sweeps_would_not_improve_it():
    """The low-rank layout's whitened start is the minimiser at its rank: the search gives it no sweeps, and
    sweeps run by hand from it do not lower the objective (beyond rounding)."""
    from mpokit.aware import fit_mpo

    torch.manual_seed(5)
    W = torch.randn(40, 30, dtype=torch.float64)
    X = torch.randn(300, 30, dtype=torch.float64) * torch.logspace(0, -1, 30, dtype=torch.float64)
    C = X.T @ X / 300
    low = Layout("low-rank", (40, 1), (1, 30))
    search = search_layout(W, C, max_params=W.numel() // 3, layouts=[low])
    (trial,) = search.trials
    assert trial.sweeps == 0 and trial.init == "whitened" and search.best.sweeps == 0
    swept = fit_mpo(W, C, out_modes=low.out_modes, in_modes=low.in_modes, max_params=W.numel() // 3, max_sweeps=4,
                    init="whitened")
    assert swept.history[-1] >= search.best.history[-1] * (1 - 1e-9)


def test_a_tie_goes_to_the_layout_with_fewer_parameters():
    """A hybrid-out layout whose first bond is full is the low-rank layout split losslessly: the same error with
    more parameters. The search keeps the low-rank one."""
    torch.manual_seed(2)
    W = torch.randn(32, 24, dtype=torch.float64)
    X = torch.randn(200, 24, dtype=torch.float64)
    C = X.T @ X / 200
    low = Layout("low-rank", (32, 1), (1, 24))
    hybrid = Layout("hybrid-out", (4, 8, 1), (1, 1, 24))  # bond 1 at most 4: lossless at these sizes
    budget = 4 * 8 * 4 + 4 * 8 * 6 + 6 * 24  # room for bonds (4, 6): rank 6 either way
    search = search_layout(W, C, max_params=budget, layouts=[hybrid, low])
    errors = {t.layout.name: t.rel_output_error for t in search.trials}
    assert abs(errors["hybrid-out"] - errors["low-rank"]) <= 1e-9 * errors["low-rank"]
    assert search.layout.name == "low-rank"
