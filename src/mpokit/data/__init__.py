"""Data for tasks: your own files or a registered named set, read, checked and split (names no data set).

* :func:`load_data` -> :class:`TaskData` (:mod:`.task_data`), from files (:mod:`.sources`: CSV, TSV, JSON,
  JSON Lines, Parquet, text, ``save_to_disk`` folders) or names (:mod:`.registry`; the recipes register
  their own); labels and task inference (:mod:`.labels`); seeded, stratified splits
  (:mod:`.splits`);
* a word-level vocabulary for models without a tokenizer (:mod:`.vocab`, used by the LSTM recipes).
"""

from .vocab import Vocabulary, build_text_vocab, encode_padded, tokenize_words

__all__ = [
    "Vocabulary",
    "build_text_vocab",
    "tokenize_words",
    "encode_padded",
]

from .registry import NamedDataset, dataset_names, get_dataset, register_dataset
from .sources import SUPPORTED_EXTENSIONS, DataError
from .task_data import TaskData, load_data

__all__ += ["DataError", "SUPPORTED_EXTENSIONS", "TaskData", "load_data", "NamedDataset", "register_dataset",
            "get_dataset", "dataset_names"]
