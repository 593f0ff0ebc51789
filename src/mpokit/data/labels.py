"""The task a label column implies, and its labels as class ids or numbers, with the checks on them.

Task inference (``task=None``), from the type of the training label column:

* no label column -> ``"lm"``;
* strings, integers, booleans or a ``datasets.ClassLabel`` -> ``"classify"``;
* floats -> ``"regress"``, always: a float column that holds only whole numbers (``1.0``, ``2.0``)
  is still a regression target. Write the labels as integers or strings, or pass
  ``task="classify"``, to classify them (whole-number floats are then read as integers).

Class ids (``task="classify"``):

* a ``ClassLabel`` column keeps its ids and its names;
* integers keep their values when the training labels are exactly ``0..K-1``; otherwise the sorted
  distinct values become ids ``0..K-1`` (e.g. ``{-1, 1}`` -> ``-1: 0, 1: 1``), named ``str(value)``;
* strings: the sorted distinct training strings become ids ``0..K-1`` (deterministic);
* booleans: ``False`` -> 0, ``True`` -> 1.

Checks (each a :class:`~mpokit.data.sources.DataError` naming the split and row, 0-based, header not
counted): missing labels (None, NaN or empty strings, and ``nan`` / ``NA`` / ``null`` / ``inf`` among numbers
read as text from a CSV); a single class in training; a validation or test
label that never occurs in training; regression labels that are not finite numbers.

* :data:`TASK_NAMES`: ``("classify", "regress", "lm")``.
* :func:`infer_task(feature)`: the task of a label ``datasets`` feature (None: no label column).
* :func:`encode_labels(task, columns, features, column)` -> :class:`Labels`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .sources import DataError

__all__ = ["TASK_NAMES", "Labels", "infer_task", "label_kind", "encode_labels"]

TASK_NAMES = ("classify", "regress", "lm")


@dataclass(frozen=True)
class Labels:
    """Encoded labels per split: ``values[split]`` is a list of class ids (classify) or floats (regress).

    ``names``: class names, index = id (classify; None for regress); ``info``: how they were made.
    """

    values: dict[str, list]
    names: list[str] | None
    info: dict = field(default_factory=dict)


def label_kind(feature) -> str:
    """``"class_label"``, ``"string"``, ``"int"``, ``"float"`` or ``"bool"`` for a ``datasets`` feature."""
    import datasets

    if isinstance(feature, datasets.ClassLabel):
        return "class_label"
    dtype = getattr(feature, "dtype", None) if isinstance(feature, datasets.Value) else None
    if dtype in ("string", "large_string"):
        return "string"
    if dtype == "bool":
        return "bool"
    if dtype is not None and dtype.startswith(("int", "uint")):
        return "int"
    if dtype is not None and dtype.startswith("float"):
        return "float"
    raise DataError(f"the label column holds {feature}, not numbers or strings; use labels like 'pos'/'neg', 0/1 or 0.75")


def infer_task(feature) -> str:
    """``"lm"`` for ``feature=None`` (no label column), ``"regress"`` for floats, else ``"classify"``."""
    if feature is None:
        return "lm"
    return "regress" if label_kind(feature) == "float" else "classify"


def _check_present(values: list, split: str, column: str) -> None:
    for row, value in enumerate(values):
        missing = value is None or (isinstance(value, float) and math.isnan(value))
        if missing or (isinstance(value, str) and not value.strip()):
            raise DataError(
                f"{split} row {row} has an empty label ({value!r}) in column {column!r}; every row needs a label, "
                f"e.g. 'pos' or 1 (drop or fill that row)")


# How a missing number is spelled in a text file; CSV/TSV readers keep these as text (only an empty cell is missing).
_MISSING_NUMBER = frozenset({"nan", "na", "n/a", "null", "none", "inf", "-inf", "+inf", "infinity", "-infinity"})


def _check_numbers_as_text(values: list, split: str, column: str) -> None:
    """Numbers read as text because some cells say ``nan`` / ``NA`` / ``null`` / ``inf``: those rows have no
    usable label (without this, ``nan`` would become a class of its own and the numbers class names)."""
    odd, numbers = None, 0
    for row, value in enumerate(values):
        if not isinstance(value, str):
            return
        text = value.strip()
        if text.lower() in _MISSING_NUMBER:
            odd = (row, value) if odd is None else odd
            continue
        try:
            float(text)
        except ValueError:
            return  # a real text label: classes
        numbers += 1
    if odd is not None and numbers:
        raise DataError(
            f"{split} row {odd[0]} has no usable label ({odd[1]!r}) in column {column!r}, whose other labels are "
            f"numbers; every row needs a finite label, e.g. 0.75 or 1 (drop or fill that row)")


def encode_labels(task: str, columns: dict[str, list], features: dict, column: str) -> Labels:
    """Class ids or floats for ``columns[split]`` (the raw label values; ``"train"`` required).

    ``features[split]`` is the ``datasets`` feature of the label column in that split.
    """
    for split, values in columns.items():
        _check_present(values, split, column)
        _check_numbers_as_text(values, split, column)
    if task == "classify":
        return _encode_classes(columns, features, column)
    if task == "regress":
        return _encode_numbers(columns, features, column)
    raise ValueError(f"labels are encoded for 'classify' or 'regress', got task={task!r}")


def _class_keys(values: list, feature, split: str, column: str) -> list:
    """Comparable keys: ClassLabel ids -> names, whole floats -> ints, other values unchanged."""
    kind = label_kind(feature)
    if kind == "class_label":
        return [feature.int2str(int(v)) for v in values]
    if kind == "float":
        keys = []
        for row, value in enumerate(values):
            if not float(value).is_integer():
                raise DataError(
                    f"task='classify' needs class labels, but {split} row {row} of column {column!r} is {value!r}, not a "
                    f"whole number; use task='regress' for numeric targets, or labels like 0/1 or 'pos'/'neg'")
            keys.append(int(value))
        return keys
    if kind == "bool":
        return [int(v) for v in values]
    return list(values)


def _encode_classes(columns: dict[str, list], features: dict, column: str) -> Labels:
    keys = {split: _class_keys(values, features[split], split, column) for split, values in columns.items()}
    train_feature = features["train"]
    seen = sorted(set(keys["train"]))
    kind = label_kind(train_feature)
    if kind == "class_label":
        names = list(train_feature.names)
        mapping = {name: i for i, name in enumerate(names)}
        how = "ClassLabel ids kept"
    elif kind in ("int", "bool", "float") and seen == list(range(len(seen))):
        names = [str(v) if kind != "bool" else str(bool(v)) for v in seen]
        mapping = {v: v for v in seen}
        how = "integer labels kept (0..K-1)"
    else:
        names = [str(v) for v in seen]
        mapping = {v: i for i, v in enumerate(seen)}
        how = f"sorted distinct {kind} labels mapped to ids 0..{len(seen) - 1}"
    if len(seen) < 2:
        raise DataError(
            f"the training labels (column {column!r}) hold a single class {seen[0]!r} in {len(keys['train'])} rows; "
            f"classification needs at least two classes, e.g. labels 'neg' and 'pos' (or task='regress' for numbers)")
    seen_set = set(seen)
    for split, split_keys in keys.items():
        for row, key in enumerate(split_keys):
            if key not in seen_set:
                raise DataError(
                    f"{split} label {key!r} (row {row}) never occurs in the training labels {seen}; every "
                    f"{split} class must appear in training (add such rows to training or drop that row)")
    values = {split: [mapping[k] for k in split_keys] for split, split_keys in keys.items()}
    counts = {split: {names[i]: ids.count(i) for i in range(len(names))} for split, ids in values.items()}
    info = {"label_kind": kind, "encoding": how, "num_labels": len(names), "class_counts": counts}
    return Labels(values, names, info)


def _encode_numbers(columns: dict[str, list], features: dict, column: str) -> Labels:
    values = {}
    for split, raw in columns.items():
        kind = label_kind(features[split])
        if kind in ("class_label", "bool"):
            raise DataError(
                f"task='regress' needs numeric labels, but column {column!r} of {split} holds {kind} values; "
                f"use task='classify', or numbers like 0.75")
        numbers = []
        for row, value in enumerate(raw):
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise DataError(
                    f"task='regress' needs numeric labels, but {split} row {row} of column {column!r} is {value!r}, "
                    f"not a number; write numbers like 0.75, or use task='classify'") from None
            if not math.isfinite(number):
                raise DataError(f"{split} row {row} of column {column!r} is {value!r}; regression labels must be finite, e.g. 0.75")
            numbers.append(number)
        values[split] = numbers
    info = {"label_kind": label_kind(features["train"]), "encoding": "float", "num_labels": 1}
    return Labels(values, None, info)
