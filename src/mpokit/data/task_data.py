"""User data for a task: :func:`load_data` reads files or a named data set into a checked :class:`TaskData`.

::

    load_data(train, *, validation=None, test=None, validation_split=None, test_split=None,
              text_column="text", text_pair_column=None, label_column="label", task=None, seed=0) -> TaskData

* ``train``: a file or ``save_to_disk`` folder (formats: :mod:`mpokit.data.sources`), a registered
  data set name (:mod:`mpokit.data.registry`; the recipes register theirs), or a
  ``datasets.Dataset`` / ``DatasetDict``. A ``DatasetDict`` (folder, name or object) brings its
  ``validation`` (or ``valid``/``dev``/``val``) and ``test`` splits along; ``validation=`` / ``test=``
  (a path or a ``Dataset``) replace them.
* ``validation_split`` / ``test_split``: fractions in (0, 1), sum < 1, carved out of ``train``
  (seeded by ``seed``; stratified by class for ``classify``; see :mod:`mpokit.data.splits`). Asking
  for a split that the data already has is an error.
* ``task``: ``"classify"``, ``"regress"``, ``"lm"`` or None. None takes the named data set's task, else
  infers it from the training labels (:mod:`mpokit.data.labels`: floats -> regress; strings, integers,
  booleans, ClassLabel -> classify). With no label column the task is ``lm`` only when the training data
  has no other columns than the text column(s) (a ``.txt`` file, a JSON Lines file of ``{"text": ...}``)
  or ``label_column=None``; otherwise the label column is probably misnamed and a :class:`DataError`
  lists the columns.
* ``text_pair_column``: the second text of sentence-pair tasks (tokenised as ``(text, text_pair)``).

The splits of the result hold exactly the used columns: text, the text pair if any, and the label as a
``ClassLabel`` (classify: ids, names = :attr:`TaskData.label_names`) or float64 (regress); ``lm`` keeps
the text only. A missing text (null, an empty CSV cell) is an error; an empty string is a text.

Every problem raises :class:`~mpokit.data.sources.DataError` here, before any model is built.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from .labels import TASK_NAMES, encode_labels, infer_task
from .registry import get_dataset
from .sources import DataError, column_values, looks_like_path, read_source, split_of
from .splits import check_fractions, split_indices

__all__ = ["TaskData", "load_data"]

ROLES = ("train", "validation", "test")


@dataclass
class TaskData:
    """Checked splits for one task.

    ``train`` / ``validation`` / ``test``: ``datasets.Dataset`` (None when absent) with the columns
    ``text_column``, ``text_pair_column`` (if any) and ``label_column`` (None for ``lm``).
    ``label_names``: classify only, index = class id. ``info``: sources, sizes, task, labels and how the
    splits were made (JSON-serialisable, for reports).
    """

    train: Any
    validation: Any
    test: Any
    task: str
    text_column: str
    text_pair_column: str | None = None
    label_column: str | None = None
    label_names: list[str] | None = None
    info: dict = field(default_factory=dict)

    @property
    def num_labels(self) -> int | None:
        """Number of classes (classify), 1 (regress) or None (lm)."""
        if self.task == "classify":
            return len(self.label_names)
        return 1 if self.task == "regress" else None

    def splits(self) -> dict[str, Any]:
        """The present splits by name, in the order train, validation, test."""
        return {role: getattr(self, role) for role in ROLES if getattr(self, role) is not None}

    def sizes(self) -> dict[str, int]:
        """Rows per present split, e.g. ``{'train': 800, 'validation': 100, 'test': 100}``."""
        return {role: len(ds) for role, ds in self.splits().items()}


def _check_arguments(task, seed, text_column, text_pair_column, label_column) -> None:
    if task is not None and task not in TASK_NAMES:
        raise DataError(f"unknown task {task!r}; choose one of {list(TASK_NAMES)} or None to infer it, e.g. task='classify'")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise DataError(f"seed must be an int, got {seed!r}; e.g. seed=0")
    for name, value in (("text_column", text_column), ("text_pair_column", text_pair_column), ("label_column", label_column)):
        if value is not None and (not isinstance(value, str) or not value):
            raise DataError(f"{name} must be a column name, got {value!r}; e.g. {name}='text'")
    if text_column is None:
        raise DataError("text_column must name the text column, got None; e.g. text_column='text'")
    names = [c for c in (text_column, text_pair_column, label_column) if c is not None]
    if len(set(names)) != len(names):
        raise DataError(f"text_column, text_pair_column and label_column must differ, got {names}; e.g. 'text', 'label'")


def _resolve(value, role: str):
    """(source, description, named data set or None) for a path, a registered name (train only) or a
    ``Dataset`` / ``DatasetDict`` object; a name becomes a ``DatasetDict`` of its splits."""
    import datasets

    if isinstance(value, (datasets.Dataset, datasets.DatasetDict)):
        return value, f"<{type(value).__name__} object>", None
    if isinstance(value, (str, os.PathLike)):
        if looks_like_path(value) or role != "train":
            return read_source(value), os.fspath(value), None
        named = get_dataset(value)
        parts = {r: getattr(named, r) for r in ROLES if getattr(named, r) is not None}
        return datasets.DatasetDict(parts), f"data set {value!r}", named
    raise DataError(f"{role} must be a path, a data set name or a datasets.Dataset, got {type(value).__name__}; "
                    f"e.g. {role}='data/{role}.csv'")


def _gather_splits(train, validation, test):
    """Raw ``Dataset`` per role, where each came from, and the named data set (or None)."""
    import datasets

    source, where, named = _resolve(train, "train")
    raw = {"train": split_of(source, "train", where)}
    sources = {"train": where}
    if isinstance(source, datasets.DatasetDict):
        for role in ("validation", "test"):
            part = split_of(source, role, where, required=False)
            if part is not None:
                raw[role], sources[role] = part, where
    for role, value in (("validation", validation), ("test", test)):
        if value is not None:
            part_source, part_where, _ = _resolve(value, role)
            raw[role], sources[role] = split_of(part_source, role, part_where), part_where
    return raw, sources, named


def _require_columns(raw: dict, sources: dict, columns: dict[str, str]) -> None:
    """``columns``: argument name -> column name; each column must exist in every split."""
    for role, ds in raw.items():
        for argument, column in columns.items():
            if column not in ds.column_names:
                raise DataError(f"{role} ({sources[role]}) has no column {column!r} ({argument}); its columns: "
                                f"{ds.column_names}; pass the right name, e.g. {argument}={ds.column_names[0]!r}")


def _resolve_task(task, named, train_ds, where, text_columns, label_column):
    """(task, how it was chosen); raises when labels are needed but absent, or absent and ambiguous."""
    has_label = label_column is not None and label_column in train_ds.column_names
    if task is None and named is not None and named.task is not None:
        task, how = named.task, "the data set's task"
    elif task is None:
        if not has_label and label_column is not None:
            others = [c for c in train_ds.column_names if c not in text_columns]
            if others:
                raise DataError(
                    f"train ({where}) has no label column {label_column!r} but other columns {others}; pass "
                    f"label_column=NAME (e.g. label_column={others[0]!r}) to classify or regress, or task='lm' "
                    f"to train a language model on {text_columns[0]!r}")
        task = infer_task(train_ds.features[label_column] if has_label else None)
        how = "inferred from the labels" if has_label else "inferred: no label column"
    else:
        how = "given"
    if task != "lm" and not has_label:
        raise DataError(
            f"task={task!r} needs labels, but train ({where}) has no column {label_column!r}; its columns: "
            f"{train_ds.column_names}; pass label_column=NAME, or task='lm' for text without labels")
    return task, how


def _texts(ds, column: str, role: str, where: str) -> list[str]:
    feature = ds.features[column]
    if getattr(feature, "dtype", None) not in ("string", "large_string"):
        raise DataError(f"column {column!r} of {role} ({where}) holds {feature}, not text; name a text column, "
                        f"e.g. text_column='text'")
    values = column_values(ds, column)
    for row, value in enumerate(values):
        if value is None:
            raise DataError(f"{role} row {row} of {where} has no text in column {column!r}; fill or drop that row")
    return values


def _carve(data: dict, fractions: dict, seed: int, labels, sources: dict) -> dict:
    """Split ``data["train"]`` into train and the roles of ``fractions``; records the split in ``sources``."""
    for role in fractions:
        if role in data:
            raise DataError(
                f"{role}_split={fractions[role]!r} asks to carve a {role} split, but the data already has one "
                f"({sources[role]}); drop {role}_split or the {role} data")
    rows = split_indices(len(data["train"]), fractions, seed, labels)
    train = data["train"]
    for role in fractions:
        data[role] = train.select(rows[role])
        sources[role] = f"{fractions[role]:g} of train"
    data["train"] = train.select(rows["train"])
    return data


def load_data(train, *, validation=None, test=None, validation_split: float | None = None,
              test_split: float | None = None, text_column: str = "text", text_pair_column: str | None = None,
              label_column: str | None = "label", task: str | None = None, seed: int = 0) -> TaskData:
    """Read, check and split the data of one task (see the module docstring)."""
    import datasets

    _check_arguments(task, seed, text_column, text_pair_column, label_column)
    check_fractions(validation_split, test_split)
    raw, sources, named = _gather_splits(train, validation, test)
    text_columns = [c for c in (text_column, text_pair_column) if c is not None]
    _require_columns(raw, sources, {a: c for a, c in (("text_column", text_column),
                                                       ("text_pair_column", text_pair_column)) if c is not None})
    task, how = _resolve_task(task, named, raw["train"], sources["train"], text_columns, label_column)
    if task != "lm":
        _require_columns(raw, sources, {"label_column": label_column})
    columns = {c: {role: _texts(ds, c, role, sources[role]) for role, ds in raw.items()} for c in text_columns}
    features = {c: datasets.Value("string") for c in text_columns}
    labels = None
    if task != "lm":
        labels = encode_labels(task, {r: column_values(ds, label_column) for r, ds in raw.items()},
                               {r: ds.features[label_column] for r, ds in raw.items()}, label_column)
        columns[label_column] = labels.values
        features[label_column] = (datasets.ClassLabel(names=labels.names) if task == "classify"
                                  else datasets.Value("float64"))
    data = {role: datasets.Dataset.from_dict({c: columns[c][role] for c in features}, features=datasets.Features(features))
            for role in raw}
    fractions = {r: f for r, f in (("validation", validation_split), ("test", test_split)) if f is not None}
    if fractions:
        stratify = labels.values["train"] if task == "classify" else None
        data = _carve(data, fractions, seed, stratify, sources)
    info = {
        "task": task,
        "task_choice": how,
        "sources": {r: sources[r] for r in ROLES if r in data},
        "sizes": {r: len(data[r]) for r in ROLES if r in data},
        "columns": {"text": text_column, "text_pair": text_pair_column, "label": label_column if task != "lm" else None},
        "splits": {r: {"from": "train", "fraction": fractions[r], "seed": seed, "stratified": task == "classify"}
                   for r in fractions},
    }
    if labels is not None:
        info["labels"] = {k: v for k, v in labels.info.items() if k != "class_counts"}
        if task == "classify":
            info["labels"]["names"] = list(labels.names)
            info["labels"]["class_counts"] = {
                r: _class_counts(column_values(data[r], label_column), labels.names) for r in ROLES if r in data}
    if named is not None:
        info["dataset"] = dict(named.info)
    return TaskData(
        train=data["train"], validation=data.get("validation"), test=data.get("test"), task=task,
        text_column=text_column, text_pair_column=text_pair_column,
        label_column=label_column if task != "lm" else None,
        label_names=list(labels.names) if task == "classify" else None, info=info)


def _class_counts(ids: list[int], names: list[str]) -> dict[str, int]:
    counts = [0] * len(names)
    for i in ids:
        counts[i] += 1
    return dict(zip(names, counts))
