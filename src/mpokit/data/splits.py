"""Carving validation and test splits out of the training rows: seeded, stratified by class when asked.

* :func:`check_fractions(validation_split, test_split)`: each given fraction in (0, 1), their sum < 1.
* :func:`split_indices(n, fractions, seed, labels=None)` -> ``{"train", "validation", "test": sorted
  row indices}`` (a role without a fraction gets no key).

Sizes: a role with fraction ``f`` gets ``max(1, round(f * n))`` rows. Unstratified (``labels=None``),
one ``numpy.random.default_rng(seed)`` permutation of the rows is cut into test, validation and train.
Stratified (``labels`` = class ids), each class ``c`` with ``n_c`` rows gives about ``f * n_c`` rows to
each role: the role's total is shared out by largest remainders (ties: larger class, then smaller id),
and every class keeps at least one row in training, so a carved split never holds a class that training
lacks. Within each class the rows are drawn from one seeded permutation per class. Indices come back
sorted, so every split keeps the file order.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .sources import DataError

__all__ = ["HELD_OUT", "check_fractions", "split_indices"]

HELD_OUT = ("validation", "test")


def check_fractions(validation_split: float | None, test_split: float | None) -> None:
    """Raise :class:`DataError` unless each given fraction is a number in (0, 1) and their sum is < 1."""
    given = {name: f for name, f in (("validation_split", validation_split), ("test_split", test_split)) if f is not None}
    for name, fraction in given.items():
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
            raise DataError(f"{name} must be a fraction in (0, 1), got {fraction!r}; e.g. {name}=0.1")
    if len(given) == 2 and sum(given.values()) >= 1:
        raise DataError(
            f"validation_split + test_split must be < 1 to leave training rows, got {validation_split!r} + "
            f"{test_split!r} = {sum(given.values()):g}; e.g. validation_split=0.1, test_split=0.1")


def split_indices(n: int, fractions: dict[str, float], seed: int,
                  labels: Sequence[int] | None = None) -> dict[str, list[int]]:
    """Row indices of ``train`` and of each role in ``fractions`` (``"validation"``/``"test"``), sorted."""
    check_fractions(fractions.get("validation"), fractions.get("test"))
    targets = {role: max(1, round(fractions[role] * n)) for role in HELD_OUT if role in fractions}
    if sum(targets.values()) >= n:
        raise DataError(
            f"{_describe(fractions)} of {n} training rows leaves no rows for training; use smaller fractions "
            f"or more data, e.g. validation_split=0.1 with at least 20 rows")
    rng = np.random.default_rng(seed)
    if labels is None:
        order = rng.permutation(n).tolist()
        parts, start = {}, 0
        for role in ("test", "validation"):
            if role in targets:
                parts[role] = order[start : start + targets[role]]
                start += targets[role]
        parts["train"] = order[start:]
    else:
        parts = _stratified(np.asarray(labels), targets, rng, fractions)
    return {role: sorted(rows) for role, rows in parts.items()}


def _describe(fractions: dict[str, float]) -> str:
    return " and ".join(f"{role}_split={fractions[role]!r}" for role in HELD_OUT if role in fractions)


def _share(total: int, quotas: dict[int, float], caps: dict[int, int], sizes: dict[int, int]) -> dict[int, int]:
    """Integers ``<= caps`` close to ``quotas`` (per class) summing to ``total`` where the caps allow:
    floors first, then one more each by largest remainder (ties: larger class, smaller id), repeated."""
    counts = {c: min(math.floor(q), caps[c]) for c, q in quotas.items()}
    order = sorted(quotas, key=lambda c: (-(quotas[c] - math.floor(quotas[c])), -sizes[c], c))
    left = total - sum(counts.values())
    while left > 0 and any(counts[c] < caps[c] for c in order):
        for c in order:
            if left > 0 and counts[c] < caps[c]:
                counts[c] += 1
                left -= 1
    return counts


def _stratified(labels: np.ndarray, targets: dict[str, int], rng: np.random.Generator,
                fractions: dict[str, float]) -> dict[str, list[int]]:
    classes = sorted(int(c) for c in np.unique(labels))
    members = {c: rng.permutation(np.flatnonzero(labels == c)).tolist() for c in classes}
    sizes = {c: len(rows) for c, rows in members.items()}
    taken = {c: 0 for c in classes}
    parts: dict[str, list[int]] = {}
    for role in ("test", "validation"):
        if role not in targets:
            continue
        quotas = {c: fractions[role] * sizes[c] for c in classes}
        caps = {c: max(0, sizes[c] - taken[c] - 1) for c in classes}  # one row of each class stays in train
        counts = _share(targets[role], quotas, caps, sizes)
        parts[role] = [i for c in classes for i in members[c][taken[c] : taken[c] + counts[c]]]
        for c in classes:
            taken[c] += counts[c]
        if not parts[role]:
            raise DataError(
                f"{role}_split={fractions[role]!r} takes no rows from {len(labels)} training rows: every class keeps "
                f"one row in training; pass a {role} file or use more data")
    parts["train"] = [i for c in classes for i in members[c][taken[c] :]]
    return parts
