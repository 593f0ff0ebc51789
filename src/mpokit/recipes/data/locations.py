"""Where the data files live when ``MPOKIT_DATA_DIR`` is set (see :mod:`mpokit.recipes.data.files`)."""

from __future__ import annotations

import os
import pathlib

ENV = "MPOKIT_DATA_DIR"
RT_FILE = "rotten_tomatoes_corpus_full.csv.bz2"


def ptb_file(split: str) -> str:
    return f"ptb.{split}.txt"


def data_dir() -> pathlib.Path | None:
    """``$MPOKIT_DATA_DIR`` as a path, or None when unset or empty."""
    value = os.environ.get(ENV, "").strip()
    return pathlib.Path(value) if value else None


def data_file(name: str) -> pathlib.Path | None:
    """``$MPOKIT_DATA_DIR/name`` when the variable is set (the file must exist), else None."""
    folder = data_dir()
    if folder is None:
        return None
    path = folder / name
    if not path.is_file():
        raise FileNotFoundError(
            f"{ENV}={folder} but {path} is missing; write the files with `python -m mpokit.recipes.data.files {folder}` "
            f"on a machine with the data packages, or unset {ENV} to read the packages")
    return path
