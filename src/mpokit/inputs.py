"""From the options every command shares (data, task, sizes, lengths) to tokenised DataLoaders.

The step between :mod:`mpokit.data` (files and named sets -> a checked :class:`~mpokit.data.TaskData`),
:mod:`mpokit.tasks` (tokenising, batching, metrics) and the jobs (fine-tuning, evaluation, squeezing,
compression with calibration data):

* :class:`DataSpec`: a validated dataclass of those options, JSON-serialisable for reports and resume checks;
* :func:`read_data` -> ``(TaskData, Task)``: the data read and checked, the task resolved;
* :func:`build_loaders` -> :class:`Loaders`: random subsets (``train_size`` etc.: rows for classify /
  regress, blocks for lm; seeded by ``split_seed``), tokenised splits, the train loader shuffled by its
  own ``torch.Generator`` (seeded by the run's seed; its state is part of the training state, so a
  resumed run draws the same batches as an unbroken one), and the encoding stats (truncations, blocks).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

__all__ = ["DataSpec", "Loaders", "read_data", "build_loaders", "subset_indices"]

_SIZES = ("train_size", "validation_size", "test_size")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass
class DataSpec:
    """Where the data comes from and how it is cut. ``data`` is a file, a ``save_to_disk`` folder or a
    registered name (see :mod:`mpokit.data.registry`); sizes are ints >= 1 or None (everything)."""

    data: str | None = None
    validation_data: str | None = None
    test_data: str | None = None
    validation_split: float | None = None
    test_split: float | None = None
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str | None = "label"
    task: str | None = None
    max_length: int = 64
    block_size: int | None = None
    train_size: int | None = None
    validation_size: int | None = None
    test_size: int | None = None
    split_seed: int = 0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise a ValueError naming the first bad field (checked again at the point of use)."""
        if self.data is None:
            raise ValueError("no training data: give data=, e.g. data='train.csv' (CSV, TSV, JSON, JSON Lines, "
                             "Parquet, text) or a registered data set name")
        for name in _SIZES:
            v = getattr(self, name)
            if v is not None and (not _is_int(v) or v < 1):
                raise ValueError(f"{name} must be an int >= 1, or None for all examples ('all' on the command line), "
                                 f"got {v!r}; e.g. {name}=2000")
        if not _is_int(self.max_length) or self.max_length < 2:
            raise ValueError(f"max_length must be an int >= 2, got {self.max_length!r}; e.g. max_length=128")
        if self.block_size is not None and (not _is_int(self.block_size) or self.block_size < 2):
            raise ValueError(f"block_size must be an int >= 2 or None (= max_length), got {self.block_size!r}; "
                             "e.g. block_size=256")
        if not _is_int(self.split_seed) or self.split_seed < 0:
            raise ValueError(f"split_seed must be an int >= 0, got {self.split_seed!r}; e.g. split_seed=0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Loaders:
    """The DataLoaders of one run (None for a missing split) and what was used."""

    train: Any
    validation: Any
    test: Any
    sizes: dict[str, int]
    full_sizes: dict[str, int]
    stats: dict[str, dict]
    shuffle_generator: torch.Generator | None = None
    info: dict = field(default_factory=dict)

    def splits(self) -> dict[str, Any]:
        return {k: v for k, v in (("train", self.train), ("validation", self.validation), ("test", self.test))
                if v is not None}


def read_data(spec: DataSpec):
    """``(TaskData, Task)`` for ``spec`` (every data error raised here, before any model is loaded)."""
    from .data import load_data
    from .tasks import get_task

    spec.validate()
    data = load_data(spec.data, validation=spec.validation_data, test=spec.test_data,
                     validation_split=spec.validation_split, test_split=spec.test_split,
                     text_column=spec.text_column, text_pair_column=spec.text_pair_column,
                     label_column=spec.label_column, task=spec.task, seed=spec.split_seed)
    return data, get_task(data.task)


def subset_indices(n: int, size: int | None, seed: int) -> list[int] | None:
    """Sorted indices of a random subset of ``size`` out of ``n`` (``random.Random(seed)``); None keeps all."""
    if size is None or size >= n:
        return None
    return sorted(random.Random(seed).sample(range(n), size))


def build_loaders(task, data, tokenizer, spec: DataSpec, *, batch_size: int, eval_batch_size: int | None = None,
                  shuffle_seed: int = 0) -> Loaders:
    """Tokenised DataLoaders for every split of ``data`` (see the module docstring)."""
    from torch.utils.data import DataLoader, Subset

    spec.validate()
    for name, v in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
        if v is not None and (not _is_int(v) or v < 1):
            raise ValueError(f"{name} must be an int >= 1, got {v!r}; e.g. {name}=32")
    wanted = {"train": spec.train_size, "validation": spec.validation_size, "test": spec.test_size}
    full = data.sizes()
    rows_first = data.task != "lm"
    if rows_first:  # classify / regress: subset the rows, then tokenise only those
        for split, ds in data.splits().items():
            keep = subset_indices(len(ds), wanted[split], spec.split_seed)
            if keep is not None:
                setattr(data, split, ds.select(keep))
    encoded = task.encode(data, tokenizer, max_length=spec.max_length, block_size=spec.block_size)
    collate = task.collate(tokenizer)
    out: dict[str, Any] = {"train": None, "validation": None, "test": None}
    sizes, generator = {}, None
    for split, dataset in encoded.splits().items():
        if not rows_first:
            full[split] = len(dataset)
            keep = subset_indices(len(dataset), wanted[split], spec.split_seed)
            if keep is not None:
                dataset = Subset(dataset, keep)
        sizes[split] = len(dataset)
        if split == "train":
            generator = torch.Generator().manual_seed(shuffle_seed)
        out[split] = DataLoader(dataset, batch_size=batch_size if split == "train" else (eval_batch_size or batch_size),
                                shuffle=split == "train", generator=generator if split == "train" else None,
                                collate_fn=collate)
    unit = "rows" if rows_first else "blocks"
    return Loaders(train=out["train"], validation=out["validation"], test=out["test"], sizes=sizes, full_sizes=full,
                   stats=encoded.stats, shuffle_generator=generator, info={"size_unit": unit, **data.info})
