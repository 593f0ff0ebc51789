"""Word-level tokenizer and vocabulary (built from a training split only).

The tokenizer lower-cases and splits into words and single punctuation marks::

    >>> tokenize_words("It's a GREAT film!")
    ['it', "'s", 'a', 'great', 'film', '!']
    >>> tokenize_words("Don't go")
    ['do', "n't", 'go']

A :class:`Vocabulary` maps tokens to ids. Id 0 is ``<pad>`` and id 1 is ``<unk>`` when those
specials are requested (the default for classification); a corpus whose text already contains
``<unk>`` uses a vocabulary without that special.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import torch

PAD = "<pad>"
UNK = "<unk>"

_TOKEN_RE = re.compile(r"n't|'[a-z]+|[a-z0-9]+(?:-[a-z0-9]+)*|[^\sa-z0-9]")


def tokenize_words(text: str) -> list[str]:
    """Lower-case ``text`` and split it into words, clitics ("'s") and punctuation marks."""
    if not isinstance(text, str):
        raise TypeError(f"tokenize_words expects a str, got {type(text).__name__}; e.g. tokenize_words('a fine film')")
    return _TOKEN_RE.findall(text.lower().replace("n't", " n't"))


@dataclass
class Vocabulary:
    """Token <-> id mapping. ``itos[i]`` is the token of id ``i``; ``unk_token`` absorbs unknown words."""

    itos: list[str]
    unk_token: str = UNK
    pad_token: str | None = PAD
    stoi: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if len(set(self.itos)) != len(self.itos):
            raise ValueError("Vocabulary.itos has duplicate tokens; every token must appear once, e.g. ['<pad>', '<unk>', 'the']")
        self.stoi = {t: i for i, t in enumerate(self.itos)}
        if self.unk_token not in self.stoi:
            raise ValueError(f"unk_token {self.unk_token!r} is not in the vocabulary; include it, e.g. itos=['{self.unk_token}', ...]")
        if self.pad_token is not None and self.pad_token not in self.stoi:
            raise ValueError(f"pad_token {self.pad_token!r} is not in the vocabulary; include it or pass pad_token=None")

    @classmethod
    def build(
        cls,
        token_lists: Iterable[Sequence[str]],
        max_size: int | None = None,
        min_freq: int = 1,
        specials: Sequence[str] = (PAD, UNK),
        unk_token: str = UNK,
        pad_token: str | None = PAD,
    ) -> "Vocabulary":
        """Count tokens and keep the most frequent ones (ties broken alphabetically, so the result is
        deterministic). ``max_size`` counts the specials too."""
        if max_size is not None and max_size < len(specials):
            raise ValueError(f"max_size={max_size} is smaller than the {len(specials)} specials {tuple(specials)}; e.g. max_size=20000")
        if min_freq < 1:
            raise ValueError(f"min_freq must be >= 1, got {min_freq}; e.g. min_freq=2")
        counts = Counter(tok for toks in token_lists for tok in toks)
        for s in specials:
            counts.pop(s, None)
        ranked = sorted((t for t, c in counts.items() if c >= min_freq), key=lambda t: (-counts[t], t))
        if max_size is not None:
            ranked = ranked[: max_size - len(specials)]
        return cls(list(specials) + ranked, unk_token=unk_token, pad_token=pad_token)

    def __len__(self) -> int:
        return len(self.itos)

    @property
    def unk_id(self) -> int:
        return self.stoi[self.unk_token]

    @property
    def pad_id(self) -> int | None:
        return None if self.pad_token is None else self.stoi[self.pad_token]

    def encode(self, tokens: Sequence[str]) -> list[int]:
        unk = self.unk_id
        return [self.stoi.get(t, unk) for t in tokens]

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.itos[int(i)] for i in ids]

    def to_json(self) -> str:
        return json.dumps({"version": 1, "itos": self.itos, "unk_token": self.unk_token, "pad_token": self.pad_token})

    @classmethod
    def from_json(cls, text: str) -> "Vocabulary":
        d = json.loads(text)
        if d.get("version") != 1:
            raise ValueError(f"unsupported Vocabulary JSON version {d.get('version')!r}; expected 1")
        return cls(d["itos"], unk_token=d["unk_token"], pad_token=d["pad_token"])


def encode_padded(
    texts: Sequence[str], vocab: Vocabulary, max_len: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenize and encode texts to a right-padded id matrix.

    Returns ``ids`` (N, max_len) int64 and ``lengths`` (N,) int64 (each >= 1; an empty text becomes
    one ``<unk>``). Texts longer than ``max_len`` are cut.
    """
    if vocab.pad_id is None:
        raise ValueError("encode_padded needs a vocabulary with a pad_token, e.g. Vocabulary.build(..., specials=('<pad>', '<unk>'))")
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}; e.g. max_len=64")
    ids = torch.full((len(texts), max_len), vocab.pad_id, dtype=torch.long)  # (N, T)
    lengths = torch.empty(len(texts), dtype=torch.long)  # (N,)
    for n, text in enumerate(texts):
        seq = vocab.encode(tokenize_words(text))[:max_len] or [vocab.unk_id]
        ids[n, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        lengths[n] = len(seq)
    return ids, lengths


def build_text_vocab(texts: Iterable[str], max_size: int | None = None, min_freq: int = 1) -> Vocabulary:
    """Vocabulary (``<pad>`` = 0, ``<unk>`` = 1, then words by frequency) of tokenized ``texts``.

    Build it from the training split only (tests/test_data.py asserts the sizes for the recipes' data).
    """
    return Vocabulary.build((tokenize_words(t) for t in texts), max_size=max_size, min_freq=min_freq)
