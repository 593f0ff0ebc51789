"""Offline loaders for the real datasets (Rotten Tomatoes sentences, Penn Treebank)."""

from .ptb import PTBCorpus, batchify, bptt_windows, load_ptb
from .rotten_tomatoes import RottenTomatoes, TextSplit, load_rotten_tomatoes
from .vocab import Vocabulary, build_text_vocab, encode_padded, tokenize_words

__all__ = [
    "RottenTomatoes",
    "TextSplit",
    "load_rotten_tomatoes",
    "PTBCorpus",
    "load_ptb",
    "batchify",
    "bptt_windows",
    "Vocabulary",
    "build_text_vocab",
    "tokenize_words",
    "encode_padded",
]
