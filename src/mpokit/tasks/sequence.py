"""Shared by classify and regress: one example per text (or text pair), a sequence classification model.

Encoding: every text, or ``(text, text_pair)`` for sentence pairs, is tokenised with the tokenizer's
special tokens; an encoding longer than ``max_length`` tokens is tokenised again with
``truncation=True, max_length=max_length`` (for pairs the tokenizer's ``longest_first``). The stats of a
split: ``examples``, ``truncated`` (how many encodings were cut), ``longest`` (tokens before cutting),
``tokens`` (after cutting) and ``max_length``.
"""

from __future__ import annotations

from torch import nn

from ..data.sources import column_values
from .base import EncodedData, EncodedSplit, ModelMismatchError, Task, check_length, unwrap_model

__all__ = ["SequenceTask", "encode_texts", "is_sequence_classifier"]


def encode_texts(tokenizer, texts: list[str], pairs: list[str] | None, max_length: int) -> tuple[dict[str, list], dict]:
    """(columns ``input_ids`` [+ ``token_type_ids``] of lists of ints, stats) for one split."""
    full = tokenizer(texts, pairs, truncation=False, verbose=False)
    columns = {"input_ids": list(full["input_ids"])}
    if "token_type_ids" in full:
        columns["token_type_ids"] = list(full["token_type_ids"])
    lengths = [len(ids) for ids in columns["input_ids"]]
    over = [i for i, n in enumerate(lengths) if n > max_length]
    if over:
        cut = tokenizer([texts[i] for i in over], None if pairs is None else [pairs[i] for i in over],
                        truncation=True, max_length=max_length, verbose=False)
        for key in columns:
            for j, i in enumerate(over):
                columns[key][i] = cut[key][j]
    stats = {"examples": len(texts), "truncated": len(over), "longest": max(lengths, default=0),
             "tokens": sum(len(ids) for ids in columns["input_ids"]), "max_length": max_length}
    return columns, stats


def is_sequence_classifier(model: nn.Module) -> bool:
    """Whether the (unwrapped) model is a transformers ``...ForSequenceClassification`` class."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES as names

    name = type(unwrap_model(model)).__name__
    return name in set(names.values()) or name.endswith("ForSequenceClassification")


class SequenceTask(Task):
    """Classification or regression of whole texts; subclasses give the label handling and metrics."""

    def _label_values(self, data, split) -> list:
        return column_values(split, data.label_column)

    def encode(self, data, tokenizer, *, max_length: int, block_size: int | None = None) -> EncodedData:
        """Tokenised examples with their labels for every split of ``data`` (``block_size`` is ignored)."""
        check_length(max_length, "max_length")
        if data.task != self.name:
            raise ValueError(f"data is for task {data.task!r}, not {self.name!r}; load it with task={self.name!r}")
        special = tokenizer.num_special_tokens_to_add(pair=data.text_pair_column is not None)
        if max_length <= special:
            raise ValueError(f"max_length={max_length} leaves no room for text next to the tokenizer's {special} "
                             f"special tokens; e.g. max_length=128")
        encoded, stats = {}, {}
        for name, split in data.splits().items():
            texts = column_values(split, data.text_column)
            pairs = column_values(split, data.text_pair_column) if data.text_pair_column else None
            columns, stats[name] = encode_texts(tokenizer, texts, pairs, max_length)
            columns["labels"] = self._label_values(data, split)
            encoded[name] = EncodedSplit(columns)
        return EncodedData(self.name, encoded.get("train"), encoded.get("validation"), encoded.get("test"), stats)

    def check_model(self, model: nn.Module, data=None) -> None:
        """A sequence classification model; with ``data``, its ``num_labels`` must be ``data.num_labels``."""
        if not is_sequence_classifier(model):
            raise ModelMismatchError(
                f"task {self.name!r} needs a sequence classification model, got {type(unwrap_model(model)).__name__}; "
                f"load one with transformers.AutoModelForSequenceClassification.from_pretrained(path, "
                f"**task.model_kwargs(data))")
        if data is not None:
            config = unwrap_model(model).config
            if config.num_labels != data.num_labels:
                raise ModelMismatchError(
                    f"the model has num_labels={config.num_labels} but the {self.name} data needs {data.num_labels}; "
                    f"build it with **task.model_kwargs(data), e.g. num_labels={data.num_labels}")
