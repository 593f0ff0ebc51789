"""Factorising sizes into modes, bond formulas and parameter counts."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpokit import choose_modes, factorize, full_bond_dims
from mpokit.shapes import (
    central_bond,
    central_index,
    consistent_bond_dims,
    min_num_params,
    mpo_num_params,
    validate_modes,
)


@pytest.mark.parametrize(
    "size, n, expected",
    [
        (768, 5, (3, 4, 4, 4, 4)),  # the reference code's BERT factorisation
        (1024, 5, (4, 4, 4, 4, 4)),
        (384, 5, (2, 3, 4, 4, 4)),
        (6, 3, (1, 2, 3)),  # modes of size 1 for small sizes
        (1, 4, (1, 1, 1, 1)),
        (768, 1, (768,)),
    ],
)
def test_factorize_exact_sizes(size, n, expected):
    assert factorize(size, n) == expected
    assert math.prod(factorize(size, n)) == size


@pytest.mark.parametrize("size", [30522, 30521, 997, 2053])
def test_factorize_pads_sizes_that_do_not_factor_well(size):
    modes = factorize(size, 5)
    padded = math.prod(modes)
    assert size < padded <= size * 1.02 + 1, (size, modes, padded)
    assert max(modes) / min(modes) <= 4, f"{modes} is not balanced"


def test_factorize_30522_like_bert_vocabulary():
    modes = factorize(30522, 5)
    assert len(modes) == 5 and 30522 <= math.prod(modes) <= 30720


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.integers(1, 50_000), st.integers(1, 6))
def test_factorize_properties(size, n):
    modes = factorize(size, n)
    assert len(modes) == n and all(isinstance(m, int) and m >= 1 for m in modes)
    assert list(modes) == sorted(modes)
    padded = math.prod(modes)
    assert size <= padded <= size + max(1, math.ceil(size * 0.02))


@pytest.mark.parametrize("size, n", [(0, 5), (-3, 5), (768, 0), (7.5, 2), (True, 2), (768, 2.0)])
def test_factorize_bad_input(size, n):
    factorize(1, 2), factorize(768, 5), factorize(768, 2)  # cached valid calls must not answer for bad ones
    with pytest.raises(ValueError) as info:
        factorize(size, n)
    assert repr(size if not isinstance(size, int) or size < 1 or isinstance(size, bool) else n) in str(info.value)
    assert "e.g." in str(info.value)


def test_choose_modes_bert_attention_and_ffn():
    out_modes, in_modes = choose_modes(768, 768, 5)
    assert (out_modes, in_modes) == ((3, 4, 4, 4, 4), (4, 4, 4, 4, 3))
    assert full_bond_dims(out_modes, in_modes) == (12, 192, 192, 12)
    out_modes, in_modes = choose_modes(3072, 768, 5)
    assert math.prod(out_modes) == 3072 and math.prod(in_modes) == 768
    # the central core is the largest, the end cores the smallest
    sizes = [i * j for i, j in zip(out_modes, in_modes)]
    assert sizes[2] == max(sizes) and max(sizes[0], sizes[-1]) <= min(sizes[1], sizes[3])


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.integers(1, 5000), st.integers(1, 5000), st.integers(1, 6))
def test_choose_modes_properties(out_features, in_features, n):
    out_modes, in_modes = choose_modes(out_features, in_features, n)
    assert len(out_modes) == len(in_modes) == n
    assert sorted(out_modes) == sorted(factorize(out_features, n))
    assert sorted(in_modes) == sorted(factorize(in_features, n))


def test_full_bond_dims_formula():
    out_modes, in_modes = (4, 4, 8, 6, 4), (3, 4, 4, 4, 4)  # BERT FFN in (method.md section 3)
    assert full_bond_dims(out_modes, in_modes) == (12, 192, 384, 16)
    sizes = [i * j for i, j in zip(out_modes, in_modes)]
    assert full_bond_dims(out_modes, in_modes) == tuple(
        min(math.prod(sizes[: k + 1]), math.prod(sizes[k + 1 :])) for k in range(4)
    )
    assert full_bond_dims((5,), (7,)) == ()


def test_parameter_counts():
    out_modes, in_modes = (3, 4, 4, 4, 4), (4, 4, 4, 4, 3)
    dims = (12, 192, 192, 12)
    assert mpo_num_params(out_modes, in_modes, dims) == 1 * 12 * 12 + 12 * 16 * 192 + 192 * 16 * 192 + 192 * 16 * 12 + 12 * 12
    assert min_num_params(out_modes, in_modes) == mpo_num_params(out_modes, in_modes, (1, 1, 1, 1)) == 72


def test_consistent_bond_dims_are_reachable():
    out_modes, in_modes = (2, 3, 4), (5, 1, 2)  # sizes 10, 3, 8
    assert consistent_bond_dims(out_modes, in_modes, (100, 100)) == full_bond_dims(out_modes, in_modes) == (10, 8)
    # d_1 = 1 limits d_2 to d_1 * i_2 * j_2 = 3
    assert consistent_bond_dims(out_modes, in_modes, (1, 100)) == (1, 3)
    # d_2 = 1 limits d_1 to i_2 * j_2 * d_2 = 3
    assert consistent_bond_dims(out_modes, in_modes, (100, 1)) == (3, 1)


@pytest.mark.parametrize("n, index, bond", [(1, 0, 0), (2, 0, 0), (3, 1, 0), (4, 1, 1), (5, 2, 1), (6, 2, 2)])
def test_central_index_and_bond(n, index, bond):
    assert central_index(n) == index
    assert central_bond(n) == bond


@pytest.mark.parametrize(
    "out_modes, in_modes, error, fragment",
    [
        ((3, 4), (4, 4, 4), ValueError, "(3, 4) has 2 modes"),
        ((3, 0), (4, 4), ValueError, "(3, 0)"),
        ([], [], TypeError, "[]"),
        ("34", (4, 4), TypeError, "'34'"),
        ((3, 2.0), (4, 4), ValueError, "(3, 2.0)"),
    ],
)
def test_validate_modes_errors(out_modes, in_modes, error, fragment):
    with pytest.raises(error) as info:
        validate_modes(out_modes, in_modes)
    assert fragment in str(info.value) and "e.g." in str(info.value)
