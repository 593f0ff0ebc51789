"""``lm``: causal language modelling on the documents of a text column.

Encoding of a split: every non-empty document (whitespace-only ones are skipped and counted) is
tokenised without special tokens and followed by the tokenizer's eos token when it has one; the token
streams are concatenated in order and cut into blocks of ``block_size`` tokens (default
``max_length``); the last partial block is dropped. Each example is one block with ``labels`` =
``input_ids`` (the model shifts them). A split too short for one block is an error. Stats per split:
``documents``, ``empty_documents``, ``tokens``, ``blocks``, ``block_size``, ``dropped_tokens``, ``eos``.

* ``model_kwargs(data)``: ``{}``.
* ``evaluate``: ``loss`` = summed next-token negative log-likelihood over all predicted tokens (labels
  not -100, positions 1..T-1 of each sequence) divided by their number, ``perplexity`` = exp(loss),
  ``tokens`` (predicted tokens) and ``n`` (sequences); primary metric ``perplexity`` (min).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..data.sources import DataError, column_values
from .base import EncodedData, EncodedSplit, ModelMismatchError, Task, check_length, model_inputs, unwrap_model

__all__ = ["LMTask", "is_causal_lm", "token_blocks"]


def is_causal_lm(model: nn.Module) -> bool:
    """Whether the (unwrapped) model is a transformers causal LM class with ``generate``."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES as names

    inner = unwrap_model(model)
    name = type(inner).__name__
    causal = name in set(names.values()) or name.endswith(("ForCausalLM", "LMHeadModel"))
    return causal and callable(getattr(inner, "generate", None))


def token_blocks(tokenizer, texts: list[str], block_size: int) -> tuple[list[list[int]], dict]:
    """(blocks of ``block_size`` token ids, stats) of the documents ``texts`` (see the module docstring)."""
    documents = [t for t in texts if t.strip()]
    eos = getattr(tokenizer, "eos_token_id", None)
    stream: list[int] = []
    if documents:
        for ids in tokenizer(documents, add_special_tokens=False, verbose=False)["input_ids"]:
            stream.extend(ids)
            if eos is not None:
                stream.append(eos)
    n_blocks = len(stream) // block_size
    blocks = [stream[i * block_size : (i + 1) * block_size] for i in range(n_blocks)]
    stats = {"documents": len(documents), "empty_documents": len(texts) - len(documents), "tokens": len(stream),
             "blocks": n_blocks, "block_size": block_size, "dropped_tokens": len(stream) - n_blocks * block_size,
             "eos": eos is not None}
    return blocks, stats


class LMTask(Task):
    """Next-token prediction with a causal LM (``AutoModelForCausalLM``)."""

    name = "lm"
    primary_metric = ("perplexity", "min")
    labels = "tokens"

    def model_kwargs(self, data) -> dict:
        return {}

    def encode(self, data, tokenizer, *, max_length: int, block_size: int | None = None) -> EncodedData:
        """Blocks of ``block_size`` (default ``max_length``) tokens per split, labels = input_ids."""
        check_length(max_length, "max_length")
        size = check_length(max_length if block_size is None else block_size, "block_size")
        if data.task != self.name:
            raise ValueError(f"data is for task {data.task!r}, not 'lm'; load it with task='lm'")
        encoded, stats = {}, {}
        for name, split in data.splits().items():
            blocks, stats[name] = token_blocks(tokenizer, column_values(split, data.text_column), size)
            if not blocks:
                raise DataError(
                    f"the {name} split has {stats[name]['tokens']} tokens, fewer than block_size={size}, so it gives no "
                    f"block; use a smaller block size (e.g. block_size={max(2, stats[name]['tokens'] // 2)}) or more text")
            encoded[name] = EncodedSplit({"input_ids": blocks, "labels": [list(b) for b in blocks]})
        return EncodedData(self.name, encoded.get("train"), encoded.get("validation"), encoded.get("test"), stats)

    def check_model(self, model: nn.Module, data=None) -> None:
        """A causal language model (``...ForCausalLM`` / ``...LMHeadModel`` with ``generate``)."""
        if not is_causal_lm(model):
            raise ModelMismatchError(
                f"task 'lm' needs a causal language model, got {type(unwrap_model(model)).__name__}; load one with "
                f"transformers.AutoModelForCausalLM.from_pretrained(path)")

    def _batch_outputs(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, ...]:
        logits = model(**model_inputs(batch)).logits  # (B, T, V)
        targets = batch["labels"][:, 1:]  # (B, T-1): token t+1 is predicted at position t
        nll = nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(),
                                          ignore_index=-100, reduction="none").view(targets.shape)
        return nll.double().sum(-1), (targets != -100).sum(-1)  # (B,), (B,)

    def _metrics(self, columns: list[torch.Tensor]) -> dict:
        nll, counts = columns
        tokens = int(counts.sum())
        if tokens == 0:
            raise ValueError("evaluate saw no predicted tokens (every label is -100); evaluate sequences of >= 2 tokens")
        loss = float(nll.sum()) / tokens
        return {"loss": loss, "perplexity": math.exp(loss) if loss < 700 else math.inf, "tokens": tokens, "n": int(counts.numel())}
