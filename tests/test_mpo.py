"""The MPO format against references: float64 exactness, direct SVDs of the unfoldings,
Eckart-Young, error bounds, gauge identities, bad input."""

from __future__ import annotations

import math

import pytest
import torch
from _mpo_reference import left_block, pad_to, random_matrix, rank_r_svd, right_block, unfolding

from mpokit import MPO, rebuild_matrix
from mpokit.mpo import GAUGES

# ---------------------------------------------------------------------------
# exactness at full bonds
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(768, 768), (3072, 768), (768, 3072), (1536, 384), (384, 1536), (30522, 384)])
def test_float64_full_bond_reconstruction_is_exact(shape):
    w = random_matrix(*shape, seed=1)
    mpo = MPO.from_matrix(w)
    rebuilt = mpo.to_matrix()
    assert rebuilt.shape == shape and rebuilt.dtype == torch.float64
    rel = float((rebuilt - w).norm() / w.norm())
    assert rel < 1e-10, f"relative reconstruction error {rel:.3e} for {shape}"
    assert mpo.error_bound == 0.0
    assert mpo.n_cores == 5


def test_padded_size_records_padding_and_slices_it_off():
    w = random_matrix(30522, 16, seed=2)
    mpo = MPO.from_matrix(w, n_cores=5)
    assert mpo.shape == (30522, 16)
    padded_rows = mpo.padded_shape[0]
    assert padded_rows == math.prod(mpo.out_modes) and 30522 < padded_rows <= 30522 * 1.02
    # the padded rows of the full contraction are (numerically) zero
    full = rebuild_matrix(mpo.cores)
    assert full.shape == mpo.padded_shape
    assert float(full[30522:].abs().max()) < 1e-12
    assert float((mpo.to_matrix() - w).norm() / w.norm()) < 1e-10


def test_explicit_padding_needs_pad_true():
    w = random_matrix(30522, 16, seed=3)
    modes_out, modes_in = (6, 8, 10, 8, 8), (1, 2, 2, 2, 2)  # the paper's 30720 padding
    with pytest.raises(ValueError, match="30720"):
        MPO.from_matrix(w, out_modes=modes_out, in_modes=modes_in)
    mpo = MPO.from_matrix(w, out_modes=modes_out, in_modes=modes_in, pad=True)
    assert mpo.padded_shape == (30720, 16)
    assert float((mpo.to_matrix() - w).norm() / w.norm()) < 1e-10


@pytest.mark.parametrize(
    "out_modes, in_modes, expected",
    [
        ((3, 4, 4, 4, 4), (4, 4, 4, 4, 3), (12, 192, 192, 12)),  # BERT attention (method.md section 3)
        ((4, 4, 8, 6, 4), (3, 4, 4, 4, 4), (12, 192, 384, 16)),  # BERT FFN in, weight 3072x768
        ((2, 3, 4), (5, 1, 2), (10, 8)),
        ((1, 7, 1), (1, 1, 5), (1, 5)),
    ],
)
def test_full_rank_bond_dims_are_min_of_left_and_right_products(out_modes, in_modes, expected):
    w = random_matrix(math.prod(out_modes), math.prod(in_modes), seed=4)
    mpo = MPO.from_matrix(w, out_modes=out_modes, in_modes=in_modes)
    sizes = [i * j for i, j in zip(out_modes, in_modes)]
    formula = tuple(min(math.prod(sizes[: k + 1]), math.prod(sizes[k + 1 :])) for k in range(len(sizes) - 1))
    assert mpo.bond_dims == formula == expected
    assert mpo.num_params == sum(
        d0 * i * j * d1 for d0, i, j, d1 in zip((1, *expected), out_modes, in_modes, (*expected, 1))
    )
    assert mpo.compression_ratio == pytest.approx(mpo.num_params / w.numel())
    assert mpo.central_index == (len(out_modes) - 1) // 2


# ---------------------------------------------------------------------------
# singular values are those of the unfoldings
# ---------------------------------------------------------------------------


def _assert_svals_match_unfoldings(mpo: MPO, padded: torch.Tensor, rtol: float) -> None:
    scale = float(padded.norm())
    for bond, s in enumerate(mpo.singular_values):
        direct = torch.linalg.svdvals(unfolding(padded, mpo.out_modes, mpo.in_modes, bond))
        assert s.shape[0] == mpo.bond_dims[bond]
        assert torch.all(s[:-1] >= s[1:] - 1e-12 * scale), f"bond {bond} not descending"
        ours = s.double()
        torch.testing.assert_close(ours, direct[: ours.shape[0]].double(), atol=rtol * scale, rtol=0)
        # whatever was not kept is (numerically) zero
        assert float(direct[ours.shape[0]:].norm()) <= rtol * scale


@pytest.mark.parametrize("gauge", GAUGES)
@pytest.mark.parametrize(
    "shape, modes",
    [((768, 768), None), ((3072, 768), None), ((61, 97), None), ((24, 30), ((2, 3, 4), (5, 3, 2)))],
)
def test_singular_values_equal_svd_of_unfolding(shape, modes, gauge):
    w = random_matrix(*shape, seed=5)
    kwargs = {} if modes is None else {"out_modes": modes[0], "in_modes": modes[1]}
    mpo = MPO.from_matrix(w, gauge=gauge, **kwargs)
    _assert_svals_match_unfoldings(mpo, pad_to(w, *mpo.padded_shape), rtol=1e-12)


@pytest.mark.parametrize("gauge", GAUGES)
def test_singular_values_after_truncation_are_those_of_the_truncated_tensor(gauge):
    w = random_matrix(256, 192, seed=6)
    mpo = MPO.from_matrix(w, gauge=gauge).truncate(max_bond=9)
    _assert_svals_match_unfoldings(mpo, rebuild_matrix(mpo.cores), rtol=1e-11)


def test_singular_values_of_arbitrary_cores_via_from_cores():
    gen = torch.Generator().manual_seed(7)
    dims = (1, 3, 5, 2, 1)
    cores = [torch.randn(dims[k], 2 + k % 2, 3, dims[k + 1], generator=gen, dtype=torch.float64) for k in range(4)]
    mpo = MPO.from_cores(cores)
    dense = rebuild_matrix(cores)
    torch.testing.assert_close(mpo.to_matrix(), dense, atol=1e-12, rtol=0)
    _assert_svals_match_unfoldings(mpo, dense, rtol=1e-12)


def test_float32_singular_values_match_float64_svd():
    w = random_matrix(768, 768, seed=8, dtype=torch.float32)
    mpo = MPO.from_matrix(w)
    assert mpo.dtype == torch.float32 and all(s.dtype == torch.float32 for s in mpo.singular_values)
    _assert_svals_match_unfoldings(mpo, w.double(), rtol=1e-6)


def test_entropy_from_singular_values():
    w = random_matrix(64, 81, seed=9)
    mpo = MPO.from_matrix(w, out_modes=(4, 4, 4), in_modes=(3, 9, 3))
    for bond, entropy in enumerate(mpo.entropy()):
        s = torch.linalg.svdvals(unfolding(w, mpo.out_modes, mpo.in_modes, bond))
        v = s**2 / (s**2).sum()
        v = v[v > 0]
        assert entropy == pytest.approx(float(-(v * v.log()).sum()), rel=1e-9)
        assert 0 < entropy <= math.log(mpo.bond_dims[bond]) + 1e-9
    # a rank-one matrix that is a Kronecker product has zero entropy at every bond
    kron = torch.kron(torch.kron(torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 9, dtype=torch.float64)),
                      torch.randn(4, 3, dtype=torch.float64))
    assert MPO.from_matrix(kron, out_modes=(4, 4, 4), in_modes=(3, 9, 3)).entropy() == pytest.approx([0, 0], abs=1e-10)


# ---------------------------------------------------------------------------
# truncation: error bound, budgets, Eckart-Young
# ---------------------------------------------------------------------------

CRITERIA = [
    {"max_bond": 1},
    {"max_bond": 7},
    {"max_bond": (3, 40, 50, 2)},
    {"rel_error": 0.0},
    {"rel_error": 0.1},
    {"rel_error": 0.5},
    {"max_params": 200},
    {"max_params": 5_000},
    {"max_params": 60_000},
]


@pytest.mark.parametrize("gauge", GAUGES)
@pytest.mark.parametrize("criterion", CRITERIA, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_truncation_error_within_reported_bound(criterion, gauge, dtype):
    w = random_matrix(384, 256, seed=10, dtype=dtype, decay=0.97)
    exact = MPO.from_matrix(w, gauge=gauge)
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    for mpo in (MPO.from_matrix(w, gauge=gauge, **criterion), exact.truncate(**criterion)):
        assert mpo.gauge == gauge and mpo.dtype == dtype
        err = float((mpo.to_matrix().double() - w.double()).norm())
        norm = float(w.double().norm())
        assert err <= mpo.error_bound + tol * norm, f"error {err:.6e} > bound {mpo.error_bound:.6e} for {criterion}"
        assert mpo.rel_error_bound == pytest.approx(mpo.error_bound / norm, rel=1e-6)
        if "max_bond" in criterion:
            caps = criterion["max_bond"]
            caps = [caps] * 4 if isinstance(caps, int) else caps
            assert all(d <= c for d, c in zip(mpo.bond_dims, caps)), (mpo.bond_dims, caps)
        if "rel_error" in criterion:
            assert err / norm <= criterion["rel_error"] + tol, f"relative error {err / norm:.4f} over the budget"
            assert mpo.rel_error_bound <= criterion["rel_error"] + 1e-9
        if "max_params" in criterion:
            assert mpo.num_params <= criterion["max_params"]
        assert all(torch.isfinite(c).all() for c in mpo.cores)


def test_rel_error_budget_is_used_not_wasted():
    """The budget is met, and a looser budget gives a smaller MPO."""
    w = random_matrix(256, 256, seed=11, decay=0.98)
    sizes = []
    for budget in (0.01, 0.1, 0.3, 0.6):
        mpo = MPO.from_matrix(w, rel_error=budget)
        rel = float((mpo.to_matrix() - w).norm() / w.norm())
        assert rel <= budget, f"rel error {rel:.4f} over budget {budget}"
        sizes.append(mpo.num_params)
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] < sizes[0]


def test_bound_is_sqrt_of_summed_discarded_energy():
    w = random_matrix(128, 128, seed=12)
    exact = MPO.from_matrix(w)
    caps = (4, 20, 30, 5)
    cut = exact.truncate(max_bond=caps)
    expected = math.sqrt(sum(float((s[c:].double() ** 2).sum()) for s, c in zip(exact.singular_values, cut.bond_dims)))
    assert cut.error_bound == pytest.approx(expected, rel=1e-9)
    # truncating again adds the second step's bound (triangle inequality)
    again = cut.truncate(max_bond=3)
    err = float((again.to_matrix() - w).norm())
    assert again.error_bound >= cut.error_bound and err <= again.error_bound + 1e-10


@pytest.mark.parametrize("gauge", GAUGES)
@pytest.mark.parametrize("rank", [1, 5, 17, 40])
def test_two_cores_with_unit_modes_is_the_truncated_svd(rank, gauge):
    """Modes (out, 1) x (1, in): the single bond is the SVD of W itself, so truncation is Eckart-Young."""
    w = random_matrix(60, 45, seed=13)
    best = rank_r_svd(w, rank)
    tail = float(torch.linalg.svdvals(w)[rank:].pow(2).sum().sqrt())
    for mpo in (
        MPO.from_matrix(w, out_modes=(60, 1), in_modes=(1, 45), max_bond=rank, gauge=gauge),
        MPO.from_matrix(w, out_modes=(60, 1), in_modes=(1, 45), gauge=gauge).truncate(max_bond=rank),
    ):
        assert mpo.bond_dims == (rank,)
        assert [tuple(c.shape) for c in mpo.cores] == [(1, 60, 1, rank), (rank, 1, 45, 1)]
        torch.testing.assert_close(mpo.to_matrix(), best, atol=1e-10, rtol=0)
        assert mpo.error_bound == pytest.approx(tail, rel=1e-9)  # the bound is tight for n = 2
        torch.testing.assert_close(mpo.singular_values[0], torch.linalg.svdvals(w)[:rank], atol=1e-10, rtol=0)


# ---------------------------------------------------------------------------
# gauges
# ---------------------------------------------------------------------------


def _eye(n, like):
    return torch.eye(n, dtype=like.dtype)


@pytest.mark.parametrize("truncate", [False, True])
@pytest.mark.parametrize("shape, modes", [((96, 120), ((2, 3, 4, 4), (5, 2, 3, 4))), ((768, 768), None)])
def test_symmetric_gauge_left_and_right_blocks_are_sqrt_lambda(shape, modes, truncate):
    w = random_matrix(*shape, seed=14)
    kwargs = {} if modes is None else {"out_modes": modes[0], "in_modes": modes[1]}
    mpo = MPO.from_matrix(w, gauge="symmetric", max_bond=10 if truncate else None, **kwargs)
    for bond, s in enumerate(mpo.singular_values):
        left, right = left_block(mpo.cores, bond), right_block(mpo.cores, bond)
        scale = float(s[0])
        torch.testing.assert_close(left.T @ left, torch.diag(s), atol=1e-10 * scale, rtol=0)
        torch.testing.assert_close(right @ right.T, torch.diag(s), atol=1e-10 * scale, rtol=0)
        # and the two blocks multiply back to the unfolding
        torch.testing.assert_close(left @ right, unfolding(rebuild_matrix(mpo.cores), mpo.out_modes, mpo.in_modes, bond))


@pytest.mark.parametrize("n_cores", [2, 3, 4, 5, 6])
def test_center_gauge_is_mixed_canonical(n_cores):
    w = random_matrix(256, 243, seed=15)
    mpo = MPO.from_matrix(w, n_cores=n_cores, gauge="center")
    center = mpo.central_index
    for k, core in enumerate(mpo.cores):
        a, i, j, d = core.shape
        if k < center:  # left-orthogonal
            m = core.reshape(a * i * j, d)
            torch.testing.assert_close(m.T @ m, _eye(d, m), atol=1e-10, rtol=0)
        elif k > center:  # right-orthogonal
            m = core.reshape(a, i * j * d)
            torch.testing.assert_close(m @ m.T, _eye(a, m), atol=1e-10, rtol=0)
    # all the norm sits in the central core
    assert float(mpo.cores[center].norm()) == pytest.approx(float(w.norm()), rel=1e-10)
    assert float((mpo.to_matrix() - w).norm() / w.norm()) < 1e-10


def test_right_gauge_is_right_canonical():
    w = random_matrix(96, 120, seed=16)
    mpo = MPO.from_matrix(w, out_modes=(2, 3, 4, 4), in_modes=(5, 2, 3, 4), gauge="right")
    for core in mpo.cores[1:]:
        m = core.reshape(core.shape[0], -1)
        torch.testing.assert_close(m @ m.T, _eye(m.shape[0], m), atol=1e-10, rtol=0)


def test_with_gauge_changes_form_not_tensor():
    w = random_matrix(128, 96, seed=17)
    sym = MPO.from_matrix(w, gauge="symmetric")
    for gauge in GAUGES:
        other = sym.with_gauge(gauge)
        assert other.gauge == gauge and other.bond_dims == sym.bond_dims
        torch.testing.assert_close(other.to_matrix(), w, atol=1e-10, rtol=0)
        for a, b in zip(other.singular_values, sym.singular_values):
            torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


# ---------------------------------------------------------------------------
# degenerate inputs, dtypes, devices
# ---------------------------------------------------------------------------


def _degenerate_matrices():
    gen = torch.Generator().manual_seed(18)
    low_rank = torch.randn(64, 3, generator=gen, dtype=torch.float64) @ torch.randn(3, 96, generator=gen, dtype=torch.float64)
    block = torch.zeros(64, 96, dtype=torch.float64)
    block[:8, :8] = torch.randn(8, 8, generator=gen, dtype=torch.float64)
    return {
        "rank-3": low_rank,
        "zero": torch.zeros(64, 96, dtype=torch.float64),
        "one-block": block,
        "padded-primes": torch.randn(97, 61, generator=gen, dtype=torch.float64),
        "padded-rank-1": torch.outer(torch.randn(101, generator=gen, dtype=torch.float64), torch.ones(53, dtype=torch.float64)),
    }


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("gauge", GAUGES)
@pytest.mark.parametrize("name", list(_degenerate_matrices()))
def test_rank_deficient_and_padded_matrices_stay_finite(name, gauge, dtype):
    w = _degenerate_matrices()[name].to(dtype)
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    scale = max(float(w.double().norm()), 1.0)
    mpo = MPO.from_matrix(w, gauge=gauge)
    cut = mpo.truncate(max_bond=2)
    for m in (mpo, cut, mpo.with_gauge("symmetric"), MPO.from_cores(mpo.cores, shape=mpo.shape, gauge=gauge)):
        assert all(bool(torch.isfinite(c).all()) for c in m.cores), f"inf/NaN in cores ({name}, {gauge})"
        assert all(bool(torch.isfinite(s).all()) for s in m.singular_values)
        assert all(math.isfinite(e) for e in m.entropy())
        assert math.isfinite(m.error_bound)
    assert float((mpo.to_matrix().double() - w.double()).norm()) <= tol * scale
    assert float((cut.to_matrix().double() - w.double()).norm()) <= cut.error_bound + tol * scale


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 2e-6), (torch.float64, 1e-12)])
def test_dtype_is_kept(dtype, tol):
    w = random_matrix(768, 768, seed=19, dtype=dtype)
    mpo = MPO.from_matrix(w)
    assert mpo.dtype == dtype and mpo.to_matrix().dtype == dtype
    assert float((mpo.to_matrix() - w).norm() / w.norm()) < tol
    cut = mpo.truncate(max_bond=16)
    assert cut.dtype == dtype


def test_half_precision_input_comes_back_in_its_dtype():
    w = random_matrix(64, 48, seed=20, dtype=torch.bfloat16)
    mpo = MPO.from_matrix(w)
    assert mpo.dtype == torch.bfloat16
    assert float((mpo.to_matrix().double() - w.double()).norm() / w.double().norm()) < 2e-2


def test_to_moves_dtype():
    mpo = MPO.from_matrix(random_matrix(32, 32, seed=21))
    single = mpo.to(dtype=torch.float32)
    assert single.dtype == torch.float32 and single.singular_values[0].dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_cpu(dtype):
    w = random_matrix(768, 3072, seed=22, dtype=dtype)
    cpu = MPO.from_matrix(w, max_bond=64)
    gpu = MPO.from_matrix(w.cuda(), max_bond=64)
    assert gpu.device.type == "cuda" and gpu.bond_dims == cpu.bond_dims
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    assert float((gpu.to_matrix().cpu() - cpu.to_matrix()).norm() / cpu.to_matrix().norm()) < tol


# ---------------------------------------------------------------------------
# bad input: clear errors naming the value
# ---------------------------------------------------------------------------

W768 = torch.randn(768, 768)


@pytest.mark.parametrize(
    "call, error, fragments",
    [
        (lambda: MPO.from_matrix(torch.randn(3, 4, 5)), ValueError, ["2-D", "(3, 4, 5)"]),
        (lambda: MPO.from_matrix(torch.randn(12)), ValueError, ["2-D", "(12,)"]),
        (lambda: MPO.from_matrix(W768.numpy()), TypeError, ["torch.Tensor", "ndarray"]),
        (lambda: MPO.from_matrix(torch.ones(4, 4, dtype=torch.int64)), TypeError, ["floating point", "int64"]),
        (lambda: MPO.from_matrix(torch.tensor([[1.0, float("nan")], [0.0, 1.0]])), ValueError, ["1 NaN or inf"]),
        (lambda: MPO.from_matrix(torch.tensor([[1.0, float("inf")], [float("-inf"), 1.0]])), ValueError, ["2 NaN or inf"]),
        (lambda: MPO.from_matrix(W768, out_modes=(4, 4, 4, 4, 4), in_modes=(4, 4, 4, 4, 3)), ValueError,
         ["out_modes", "(4, 4, 4, 4, 4)", "1024", "768"]),
        (lambda: MPO.from_matrix(W768, out_modes=(3, 4, 4, 4, 4), in_modes=(4, 4, 4, 4)), ValueError,
         ["(3, 4, 4, 4, 4)", "(4, 4, 4, 4)", "5", "4"]),
        (lambda: MPO.from_matrix(W768, out_modes=(3, 4, 4, 4, 4), in_modes=(4, 4, 4, 4, 2)), ValueError,
         ["in_modes", "512", "768"]),
        (lambda: MPO.from_matrix(W768, out_modes=(3, 0, 4), in_modes=(4, 4, 4)), ValueError, ["out_modes", "(3, 0, 4)"]),
        (lambda: MPO.from_matrix(W768, max_bond=0), ValueError, ["max_bond", "0"]),
        (lambda: MPO.from_matrix(W768, max_bond=-3), ValueError, ["max_bond", "-3"]),
        (lambda: MPO.from_matrix(W768, max_bond=(4, 0, 4, 4)), ValueError, ["max_bond", "(4, 0, 4, 4)"]),
        (lambda: MPO.from_matrix(W768, max_bond=(4, 4)), ValueError, ["one cap per bond", "(4, 4)"]),
        (lambda: MPO.from_matrix(W768, rel_error=1.0), ValueError, ["rel_error", "[0, 1)", "1.0"]),
        (lambda: MPO.from_matrix(W768, rel_error=-0.1), ValueError, ["rel_error", "-0.1"]),
        (lambda: MPO.from_matrix(W768, rel_error=1.5), ValueError, ["rel_error", "1.5"]),
        (lambda: MPO.from_matrix(W768, max_params=10), ValueError, ["max_params=10", "smallest", "72"]),
        (lambda: MPO.from_matrix(W768, max_bond=8, rel_error=0.1), ValueError, ["max_bond", "rel_error", "at most one"]),
        (lambda: MPO.from_matrix(W768, max_bond=8, max_params=10_000), ValueError, ["max_bond", "max_params"]),
        (lambda: MPO.from_matrix(W768, rel_error=0.1, max_params=10_000), ValueError, ["rel_error", "max_params"]),
        (lambda: MPO.from_matrix(W768, gauge="left"), ValueError, ["gauge", "'left'", "symmetric"]),
        (lambda: MPO.from_matrix(W768, n_cores=0), ValueError, ["n_cores", "0"]),
        (lambda: MPO.from_matrix(torch.randn(8, 8), max_bond=2).truncate(), ValueError, ["criterion", "max_bond"]),
        (lambda: MPO.from_matrix(torch.randn(8, 8)).truncate(max_bond=2, rel_error=0.1), ValueError, ["at most one"]),
        (lambda: MPO.from_matrix(torch.randn(8, 8)).truncate(rel_error=2.0), ValueError, ["rel_error", "2.0"]),
        (lambda: MPO.from_matrix(torch.randn(8, 8)).with_gauge("vidal"), ValueError, ["'vidal'"]),
    ],
)
def test_bad_input_raises_clear_error(call, error, fragments):
    with pytest.raises(error) as info:
        call()
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in error message: {message}"
    assert "e.g." in message, f"no example of a valid value in: {message}"


@pytest.mark.parametrize(
    "cores, fragments",
    [
        ([torch.randn(2, 3, 3, 1)], ["outer bonds", "d_0=2"]),
        ([torch.randn(1, 3, 3, 2), torch.randn(4, 3, 3, 1)], ["bond 0", "2", "4"]),
        ([torch.randn(3, 3, 2)], ["4-D", "(3, 3, 2)"]),
        ([], ["at least one core"]),
    ],
)
def test_bad_cores_raise_clear_error(cores, fragments):
    with pytest.raises(ValueError) as info:
        MPO.from_cores(cores)
    for fragment in fragments:
        assert fragment in str(info.value), f"{fragment!r} not in error message: {info.value}"
