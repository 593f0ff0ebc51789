"""Reading user data files into Hugging Face ``datasets`` objects, and the error bad data raises.

``datasets`` is imported lazily, inside the functions that read.

Supported inputs (:data:`SUPPORTED_EXTENSIONS`):

============ ===================================================================
``.csv``     comma-separated values, first row = column names
``.tsv``     tab-separated values, first row = column names
``.json``    a JSON array of records, or JSON Lines
``.jsonl``   JSON Lines: one record (object) per line
``.parquet`` Apache Parquet
``.txt``     plain text, one document per line, read into the column ``text``
folder       written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``
============ ===================================================================

In CSV/TSV files only an empty cell is a missing value (``NA``, ``null``, ``None`` stay text); the
column types are inferred by pandas (``1``/``0`` -> int64, ``0.5`` -> float64, anything else -> string).
Plain-text files keep empty lines as empty documents.

* :class:`DataError` (a ``ValueError``): every problem with the data itself (missing file, unknown
  extension, empty file, missing column, bad labels); the message names the value, the rule and a
  valid example.
* :func:`read_source(path)` -> ``datasets.Dataset`` or ``datasets.DatasetDict`` (a ``DatasetDict``
  only for a ``DatasetDict.save_to_disk`` folder).
* :func:`looks_like_path(value)`: whether a ``train=`` argument is meant as a path (it exists, holds a
  path separator or has a file extension) rather than a registered data set name.
* :func:`column_values(dataset, name)`: one column as a Python list.
* :func:`split_of(source, role, path)`: one split of a ``DatasetDict`` for the role ``train``,
  ``validation`` or ``test`` (aliases :data:`ROLE_ALIASES`).
"""

from __future__ import annotations

import contextlib
import os
import pathlib

__all__ = ["DataError", "SUPPORTED_EXTENSIONS", "ROLE_ALIASES", "read_source", "looks_like_path", "split_of",
           "column_values"]

# extension -> (datasets builder, extra keyword arguments of the builder)
_BUILDERS = {
    ".csv": ("csv", {"keep_default_na": False, "na_values": [""]}),
    ".tsv": ("csv", {"sep": "\t", "keep_default_na": False, "na_values": [""]}),
    ".json": ("json", {}),
    ".jsonl": ("json", {}),
    ".parquet": ("parquet", {}),
    ".txt": ("text", {}),
}
SUPPORTED_EXTENSIONS = tuple(_BUILDERS)
ROLE_ALIASES = {"train": ("train",), "validation": ("validation", "valid", "dev", "val"), "test": ("test",)}


class DataError(ValueError):
    """Bad training data (file, column or label); raised while loading, before any training."""


def looks_like_path(value: str | os.PathLike) -> bool:
    """True when ``value`` exists, holds a path separator or ends in a file extension (``a.csv``)."""
    text = os.fspath(value)
    return os.path.exists(text) or os.sep in text or "/" in text or pathlib.PurePath(text).suffix != ""


@contextlib.contextmanager
def _quiet_progress():
    """Hide the ``datasets`` progress bars while reading, restoring their previous state afterwards."""
    import datasets

    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


def read_source(path: str | os.PathLike):
    """The rows of one file or ``save_to_disk`` folder: a ``Dataset`` (a ``DatasetDict`` for a dict folder).

    Raises :class:`DataError` for a missing path, an unsupported extension, an empty file (0 bytes or
    no rows), a folder that ``save_to_disk`` did not write, or a file the reader cannot parse.
    """
    path = pathlib.Path(path)
    if not path.exists():
        raise DataError(f"no file or folder {str(path)!r}; pass an existing file, e.g. train='data/train.csv'")
    if path.is_dir():
        return _read_folder(path)
    suffix = path.suffix.lower()
    if suffix not in _BUILDERS:
        raise DataError(
            f"unsupported file extension {path.suffix or '(none)'!r} of {str(path)!r}; supported: "
            f"{', '.join(SUPPORTED_EXTENSIONS)} or a folder written by Dataset.save_to_disk, e.g. train='data/train.csv'")
    if path.stat().st_size == 0:
        raise DataError(f"{str(path)!r} is empty (0 bytes); a {suffix} file needs rows, e.g. 'text,label' then 'a fine film,pos'")
    import datasets

    builder, options = _BUILDERS[suffix]
    try:
        with _quiet_progress():
            dataset = datasets.load_dataset(builder, data_files=str(path), split="train", **options)
    except ValueError as exc:
        if "corresponds to no data" in str(exc):
            raise DataError(f"{str(path)!r} has no rows (only a header?); add at least one row of data") from exc
        raise DataError(f"could not read {str(path)!r} as {suffix}: {exc}") from exc
    except Exception as exc:  # the readers raise pyarrow, pandas and json errors of many types
        cause = _root_cause(exc)
        hint = "; save it as UTF-8 text" if isinstance(cause, UnicodeDecodeError) else ""
        raise DataError(f"could not read {str(path)!r} as {suffix}: {type(cause).__name__}: {cause}{hint}") from exc
    if len(dataset) == 0:
        raise DataError(f"{str(path)!r} has no rows; add at least one row of data")
    return dataset


def _root_cause(exc: BaseException) -> BaseException:
    """The reader's own error inside ``datasets``' DatasetGenerationError ("An error occurred while generating the
    dataset" says nothing about the file): the innermost explicit cause."""
    seen = {id(exc)}
    while exc.__cause__ is not None and id(exc.__cause__) not in seen:
        exc = exc.__cause__
        seen.add(id(exc))
    return exc


def _read_folder(path: pathlib.Path):
    if not ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        raise DataError(
            f"folder {str(path)!r} was not written by Dataset.save_to_disk / DatasetDict.save_to_disk (no "
            f"state.json or dataset_dict.json); pass such a folder or a file ({', '.join(SUPPORTED_EXTENSIONS)})")
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:  # a damaged folder fails inside pyarrow or json
        raise DataError(f"could not read the save_to_disk folder {str(path)!r}: {type(exc).__name__}: {exc}") from exc
    parts = loaded.values() if isinstance(loaded, datasets.DatasetDict) else [loaded]
    if not loaded or any(len(part) == 0 for part in parts):
        raise DataError(f"the save_to_disk folder {str(path)!r} holds an empty split; every split needs rows")
    return loaded


def split_of(source, role: str, path, *, required: bool = True):
    """The ``Dataset`` of ``role`` in ``source``: ``source`` itself when it is a ``Dataset``; else the
    ``DatasetDict`` key named like the role (:data:`ROLE_ALIASES`), or its only key for a validation or
    test source. Returns None when ``required`` is false and no key matches."""
    import datasets

    if not isinstance(source, datasets.DatasetDict):
        return source
    for key in ROLE_ALIASES[role]:
        if key in source:
            return source[key]
    if role != "train" and required and len(source) == 1:
        return next(iter(source.values()))
    if not required:
        return None
    raise DataError(
        f"the DatasetDict folder {str(path)!r} has no {role!r} split (its splits: {sorted(source)}); "
        f"name one of them {ROLE_ALIASES[role][0]!r}, e.g. DatasetDict({{'{ROLE_ALIASES[role][0]}': ...}}).save_to_disk(...)")


def column_values(dataset, name: str) -> list:
    """All values of column ``name`` as a Python list (``dataset[name]`` is a lazy ``Column`` in datasets >= 4)."""
    return dataset.select_columns([name])[:][name]
