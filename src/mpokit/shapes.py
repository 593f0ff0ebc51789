"""Factorising sizes into modes, bond-dimension formulas and parameter counts.

Conventions (used across mpokit):

* A matrix ``W`` has shape ``(out_features, in_features)``, the orientation of
  ``nn.Linear.weight``.
* ``out_modes = (i_1, ..., i_n)`` factor ``out_features``; ``in_modes =
  (j_1, ..., j_n)`` factor ``in_features``.
* Core ``k`` has shape ``(d_{k-1}, i_k, j_k, d_k)`` with ``d_0 = d_n = 1``.
* ``bond_dims`` lists the ``n - 1`` internal bonds ``(d_1, ..., d_{n-1})``.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Sequence

__all__ = [
    "factorize",
    "choose_modes",
    "full_bond_dims",
    "mpo_num_params",
    "min_num_params",
    "consistent_bond_dims",
    "central_index",
    "central_bond",
    "validate_modes",
]


def _prime_factors(n: int) -> list[int]:
    factors, p = [], 2
    while p * p <= n:
        while n % p == 0:
            factors.append(p)
            n //= p
        p += 1
    if n > 1:
        factors.append(n)
    return factors


def _balanced_split(size: int, n: int) -> tuple[int, ...] | None:
    """Split ``size`` exactly into ``n`` factors as evenly as possible, or None.

    Greedy: the largest prime first, into the bin with the smallest product.
    Returns None when a prime factor is too large for a balanced split.
    """
    primes = sorted(_prime_factors(size), reverse=True)
    if len(primes) and primes[0] > max(2.0, 2.0 * size ** (1.0 / n)) and n > 1:
        return None
    bins = [1] * n
    for p in primes:
        k = min(range(n), key=lambda b: bins[b])
        bins[k] *= p
    return tuple(sorted(bins))


@lru_cache(maxsize=1024, typed=True)  # typed: a cached 1 must not answer for True, nor 768 for 768.0
def factorize(size: int, n: int, max_padding: float = 0.02) -> tuple[int, ...]:
    """Balanced factorisation of ``size`` into ``n`` modes, ascending.

    The product of the returned modes is ``size`` when ``size`` factors well
    (768 -> (3, 4, 4, 4, 4)). Sizes that do not (primes, 30522) are padded up to
    the nearest size within ``max_padding`` (relative) that does: 30522 ->
    (6, 8, 8, 8, 10), whose product is 30720. The caller records the padding
    ``prod(modes) - size`` and slices it off on reconstruction.

    Modes of size 1 appear when ``size`` is small: ``factorize(6, 3)`` is
    ``(1, 2, 3)``.
    """
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}; e.g. factorize(768, 5)")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n (number of modes) must be a positive int, got {n!r}; e.g. factorize(768, 5)")
    if n == 1:
        return (size,)
    best: tuple[float, tuple[int, ...]] | None = None
    limit = size + max(1, int(math.ceil(size * max_padding)))
    for padded in range(size, limit + 1):
        split = _balanced_split(padded, n)
        if split is None:
            continue
        # Prefer little padding, then balance (ratio of largest to smallest mode).
        imbalance = split[-1] / split[0]
        score = (padded - size) / size * 50.0 + math.log(imbalance)
        if best is None or score < best[0]:
            best = (score, split)
        if padded == size and imbalance <= 2.0:
            break
    if best is None:  # tiny sizes with a big prime: accept the plain split
        bins = [1] * (n - 1) + [size]
        return tuple(sorted(bins))
    return best[1]


def choose_modes(out_features: int, in_features: int, n: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Default (out_modes, in_modes) for a matrix of shape (out_features, in_features).

    Out modes ascend and in modes descend, so that the products ``i_k * j_k``
    are even; the pairs are then ordered small-large-small so that the central
    core is the largest and the auxiliary cores at the ends are small
    (768x768 -> out (3,4,4,4,4), in (4,4,4,4,3): bonds 12, 192, 192, 12).
    """
    out_modes = list(factorize(out_features, n))
    in_modes = list(factorize(in_features, n))[::-1]
    pairs = sorted(zip(out_modes, in_modes), key=lambda p: (p[0] * p[1], p[0]))
    # Mountain order: the smallest pairs go to the ends, the largest to the middle.
    left, right = [], []
    for idx, pair in enumerate(pairs):
        (left if idx % 2 == 0 else right).append(pair)
    ordered = left + right[::-1]
    return tuple(p[0] for p in ordered), tuple(p[1] for p in ordered)


def validate_modes(out_modes: Sequence[int], in_modes: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Check that both mode tuples are positive ints of the same length."""
    for name, modes in (("out_modes", out_modes), ("in_modes", in_modes)):
        if not isinstance(modes, (tuple, list)) or len(modes) == 0:
            raise TypeError(f"{name} must be a non-empty tuple of ints, got {modes!r}; e.g. (3, 4, 4, 4, 4)")
        if any((not isinstance(m, int)) or isinstance(m, bool) or m < 1 for m in modes):
            raise ValueError(f"{name} must hold positive ints, got {tuple(modes)!r}; e.g. (3, 4, 4, 4, 4)")
    if len(out_modes) != len(in_modes):
        raise ValueError(
            f"out_modes {tuple(out_modes)} has {len(out_modes)} modes but in_modes {tuple(in_modes)} has "
            f"{len(in_modes)}; both need one mode per core, e.g. out (3,4,4,4,4) with in (4,4,4,4,3)"
        )
    return tuple(out_modes), tuple(in_modes)


def full_bond_dims(out_modes: Sequence[int], in_modes: Sequence[int]) -> tuple[int, ...]:
    """Exact bond dimensions ``d_k = min(prod_{m<=k} i_m j_m, prod_{m>k} i_m j_m)`` (MPOP Eq. 2)."""
    sizes = [i * j for i, j in zip(out_modes, in_modes)]
    total = math.prod(sizes)
    dims, left = [], 1
    for s in sizes[:-1]:
        left *= s
        dims.append(min(left, total // left))
    return tuple(dims)


def consistent_bond_dims(out_modes: Sequence[int], in_modes: Sequence[int], caps: Sequence[int]) -> tuple[int, ...]:
    """Cap bonds at ``caps`` and make them reachable: ``d_k <= d_{k-1} i_k j_k`` and ``d_k <= i_{k+1} j_{k+1} d_{k+1}``."""
    sizes = [i * j for i, j in zip(out_modes, in_modes)]
    dims = [min(c, f) for c, f in zip(caps, full_bond_dims(out_modes, in_modes))]
    n = len(sizes)
    for k in range(len(dims)):  # left to right
        prev = 1 if k == 0 else dims[k - 1]
        dims[k] = min(dims[k], prev * sizes[k])
    for k in reversed(range(len(dims))):  # right to left
        nxt = 1 if k == n - 2 else dims[k + 1]
        dims[k] = min(dims[k], sizes[k + 1] * nxt)
    return tuple(max(1, d) for d in dims)


def mpo_num_params(out_modes: Sequence[int], in_modes: Sequence[int], bond_dims: Sequence[int]) -> int:
    """``sum_k d_{k-1} i_k j_k d_k`` (MPO-LSTM Eq. 8)."""
    dims = (1, *bond_dims, 1)
    return sum(dims[k] * i * j * dims[k + 1] for k, (i, j) in enumerate(zip(out_modes, in_modes)))


def min_num_params(out_modes: Sequence[int], in_modes: Sequence[int]) -> int:
    """Parameters of the smallest MPO (all bonds 1)."""
    return sum(i * j for i, j in zip(out_modes, in_modes))


def central_index(n: int) -> int:
    """Index of the central core, ``(n - 1) // 2`` (2 for n = 5)."""
    return (n - 1) // 2


def central_bond(n: int) -> int:
    """Index into ``bond_dims`` of the bond on the left of the central core (1 for n = 5; 0 for n = 2)."""
    return max(0, n // 2 - 1)
