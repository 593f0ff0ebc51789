"""Property-based tests (hypothesis) of the MPO format over random shapes, modes (including
modes of size 1), ranks, bond caps, budgets, gauges and dtypes.

Examples are derandomised so CI is reproducible; set MPOKIT_HYPOTHESIS_EXAMPLES=500 to search harder.
"""

from __future__ import annotations

import math
import os

import torch
from _mpo_reference import left_block, right_block, unfolding
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mpokit import MPO
from mpokit.mpo import GAUGES
from mpokit.shapes import full_bond_dims, min_num_params

SETTINGS = settings(
    max_examples=int(os.environ.get("MPOKIT_HYPOTHESIS_EXAMPLES", "40")),
    deadline=None,
    derandomize="MPOKIT_HYPOTHESIS_EXAMPLES" not in os.environ,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@st.composite
def mpo_cases(draw):
    """(W, out_modes, in_modes, gauge, dtype, full_rank)."""
    n = draw(st.integers(1, 4))
    out_modes = tuple(draw(st.lists(st.integers(1, 4), min_size=n, max_size=n)))
    in_modes = tuple(draw(st.lists(st.integers(1, 4), min_size=n, max_size=n)))
    rows, cols = math.prod(out_modes), math.prod(in_modes)
    dtype = draw(st.sampled_from([torch.float64, torch.float32]))
    gauge = draw(st.sampled_from(GAUGES))
    rank = draw(st.one_of(st.none(), st.integers(0, 3)))  # None: generic (full rank)
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    if rank is None:
        w = torch.randn(rows, cols, generator=gen, dtype=torch.float64)
    else:
        w = torch.randn(rows, rank, generator=gen, dtype=torch.float64) @ torch.randn(rank, cols, generator=gen, dtype=torch.float64)
    return w.to(dtype), out_modes, in_modes, gauge, dtype, rank is None


def _tol(dtype) -> float:
    return 1e-10 if dtype == torch.float64 else 2e-5


def _err(mpo: MPO, w: torch.Tensor) -> float:
    return float((mpo.to_matrix().double() - w.double()).norm())


@SETTINGS
@given(mpo_cases())
def test_exact_decomposition_properties(case):
    w, out_modes, in_modes, gauge, dtype, full_rank = case
    mpo = MPO.from_matrix(w, out_modes=out_modes, in_modes=in_modes, gauge=gauge)
    norm = max(float(w.double().norm()), 1e-30)
    tol = _tol(dtype)
    assert mpo.dtype == dtype and mpo.shape == tuple(w.shape)
    assert mpo.out_modes == out_modes and mpo.in_modes == in_modes
    assert all(bool(torch.isfinite(c).all()) for c in mpo.cores)
    assert _err(mpo, w) <= tol * norm
    full = full_bond_dims(out_modes, in_modes)
    assert mpo.bond_dims == full if full_rank else all(d <= f for d, f in zip(mpo.bond_dims, full))
    for bond, s in enumerate(mpo.singular_values):
        direct = torch.linalg.svdvals(unfolding(w.double(), out_modes, in_modes, bond))
        assert torch.allclose(s.double(), direct[: s.shape[0]], atol=tol * norm, rtol=0)
    entropies = mpo.entropy()
    assert len(entropies) == len(out_modes) - 1
    assert all(-1e-9 <= e <= math.log(max(d, 1)) + 1e-6 for e, d in zip(entropies, mpo.bond_dims))


@SETTINGS
@given(mpo_cases(), st.integers(1, 12))
def test_bond_cap_properties(case, cap):
    w, out_modes, in_modes, gauge, dtype, _ = case
    mpo = MPO.from_matrix(w, out_modes=out_modes, in_modes=in_modes, gauge=gauge, max_bond=cap)
    norm = float(w.double().norm())
    assert all(d <= cap for d in mpo.bond_dims)
    assert all(bool(torch.isfinite(c).all()) for c in mpo.cores)
    assert _err(mpo, w) <= mpo.error_bound + _tol(dtype) * max(norm, 1.0)
    assert mpo.gauge == gauge and mpo.dtype == dtype


@SETTINGS
@given(mpo_cases(), st.floats(0.0, 0.95))
def test_rel_error_budget_properties(case, budget):
    w, out_modes, in_modes, gauge, dtype, _ = case
    mpo = MPO.from_matrix(w, out_modes=out_modes, in_modes=in_modes, gauge=gauge, rel_error=budget)
    norm = float(w.double().norm())
    err = _err(mpo, w)
    assert err <= mpo.error_bound + _tol(dtype) * max(norm, 1.0)
    if norm > 0:
        assert err / norm <= budget + _tol(dtype)


@SETTINGS
@given(mpo_cases(), st.floats(0.0, 1.0))
def test_parameter_budget_properties(case, fraction):
    w, out_modes, in_modes, gauge, dtype, _ = case
    exact = MPO.from_matrix(w, out_modes=out_modes, in_modes=in_modes, gauge=gauge)
    smallest = min_num_params(out_modes, in_modes)
    budget = smallest + int(fraction * (exact.num_params - smallest))
    mpo = exact.truncate(max_params=budget)
    assert mpo.num_params <= budget
    assert _err(mpo, w) <= mpo.error_bound + _tol(dtype) * max(float(w.double().norm()), 1.0)


@SETTINGS
@given(mpo_cases(), st.integers(1, 6))
def test_symmetric_gauge_identities_hold_after_truncation(case, cap):
    w, out_modes, in_modes, _, _, _ = case
    mpo = MPO.from_matrix(w.double(), out_modes=out_modes, in_modes=in_modes, gauge="symmetric", max_bond=cap)
    scale = max(float(w.double().norm()), 1.0)
    for bond, s in enumerate(mpo.singular_values):
        left, right = left_block(mpo.cores, bond), right_block(mpo.cores, bond)
        assert torch.allclose(left.T @ left, torch.diag(s), atol=1e-10 * scale, rtol=0)
        assert torch.allclose(right @ right.T, torch.diag(s), atol=1e-10 * scale, rtol=0)


@SETTINGS
@given(st.integers(1, 300), st.integers(1, 300), st.integers(1, 5), st.sampled_from(GAUGES), st.integers(0, 2**31 - 1))
def test_automatic_modes_and_padding(rows, cols, n_cores, gauge, seed):
    w = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    mpo = MPO.from_matrix(w, n_cores=n_cores, gauge=gauge)
    assert mpo.n_cores == n_cores and mpo.shape == (rows, cols)
    padded_rows, padded_cols = mpo.padded_shape
    assert rows <= padded_rows <= rows + max(1, math.ceil(rows * 0.02))
    assert cols <= padded_cols <= cols + max(1, math.ceil(cols * 0.02))
    assert float((mpo.to_matrix() - w).norm()) <= 1e-10 * float(w.norm())
    cut = mpo.truncate(max_bond=2)
    assert float((cut.to_matrix() - w).norm()) <= cut.error_bound + 1e-10 * float(w.norm())
