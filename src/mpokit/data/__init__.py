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

# User data for tasks (files, named data sets, checked splits); `datasets` is imported lazily.
from .registry import NamedDataset, dataset_names, get_dataset, register_dataset
from .sources import SUPPORTED_EXTENSIONS, DataError
from .task_data import TaskData, load_data

__all__ += ["DataError", "SUPPORTED_EXTENSIONS", "TaskData", "load_data", "NamedDataset", "register_dataset",
            "get_dataset", "dataset_names"]
