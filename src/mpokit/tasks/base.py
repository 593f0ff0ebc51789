"""What every task shares: tokenised splits, batch padding, the evaluation loop and model checks.

* :class:`EncodedSplit`: a ``torch.utils.data.Dataset`` of examples ``{"input_ids": list[int],
  "labels": int | float | list[int]}`` (plus ``"token_type_ids"`` when the tokenizer gives them).
* :class:`EncodedData`: ``train`` / ``validation`` / ``test`` (:class:`EncodedSplit` or None) and
  ``stats[split]`` (examples, tokens, truncation or blocks).
* :class:`Collator`: pads a list of examples to the longest one: ``input_ids`` (B, T) with the pad id,
  ``attention_mask`` (B, T) 1 on tokens, ``token_type_ids`` (B, T) 0-padded when present, and
  ``labels``: (B,) int64 class ids, (B,) float32 values, or (B, T) int64 token ids with -100 on padding.
  Padding is on the right.
* :class:`Task`: the interface (``name``, ``primary_metric``, ``model_kwargs``, ``encode``, ``collate``,
  ``evaluate``, ``check_model``, ``is_better``); :meth:`Task.evaluate` runs the loop (no_grad, eval mode
  restored afterwards, ``accelerator.gather_for_metrics`` when an Accelerate ``Accelerator`` is given)
  and the subclasses say what to keep per batch and how to turn it into metrics.
* :class:`ModelMismatchError` (a ``ValueError``): a model that does not fit the task.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
from torch import nn

__all__ = ["EncodedSplit", "EncodedData", "Collator", "Task", "ModelMismatchError", "pad_token_id", "check_length",
           "unwrap_model"]


class ModelMismatchError(ValueError):
    """The model's class or head does not fit the task (e.g. a classifier for ``lm``)."""


class EncodedSplit(torch.utils.data.Dataset):
    """Tokenised examples of one split; ``columns`` maps a key to one value per example."""

    def __init__(self, columns: dict[str, list]):
        lengths = {len(values) for values in columns.values()}
        if len(lengths) != 1:
            raise ValueError(f"every column needs one value per example, got lengths {sorted(lengths)}")
        self.columns = columns

    def __len__(self) -> int:
        return len(self.columns["input_ids"])

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {key: values[i] for key, values in self.columns.items()}


@dataclass
class EncodedData:
    """Tokenised splits of one task (None where :class:`~mpokit.data.TaskData` has none) and their stats."""

    task: str
    train: EncodedSplit | None
    validation: EncodedSplit | None = None
    test: EncodedSplit | None = None
    stats: dict[str, dict] = field(default_factory=dict)

    def splits(self) -> dict[str, EncodedSplit]:
        return {name: getattr(self, name) for name in ("train", "validation", "test") if getattr(self, name) is not None}


def pad_token_id(tokenizer) -> int:
    """The tokenizer's pad id, else its eos id, else 0 (padded positions are masked either way)."""
    for value in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if value is not None:
            return int(value)
    return 0


def check_length(value, name: str, minimum: int = 2) -> int:
    """``value`` when it is an int >= ``minimum``, else a ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}; e.g. {name}=128")
    return value


class Collator:
    """Pads examples per batch (see the module docstring); ``labels`` is ``"class"``, ``"value"`` or ``"tokens"``."""

    def __init__(self, pad_id: int, labels: str):
        if labels not in ("class", "value", "tokens"):
            raise ValueError(f"labels must be 'class', 'value' or 'tokens', got {labels!r}")
        self.pad_id, self.labels = pad_id, labels

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        batch, longest = len(examples), max(len(e["input_ids"]) for e in examples)
        input_ids = torch.full((batch, longest), self.pad_id, dtype=torch.long)  # (B, T)
        mask = torch.zeros((batch, longest), dtype=torch.long)  # (B, T)
        types = torch.zeros((batch, longest), dtype=torch.long) if "token_type_ids" in examples[0] else None
        tokens = torch.full((batch, longest), -100, dtype=torch.long) if self.labels == "tokens" else None
        for row, example in enumerate(examples):
            n = len(example["input_ids"])
            input_ids[row, :n] = torch.tensor(example["input_ids"], dtype=torch.long)
            mask[row, :n] = 1
            if types is not None:
                types[row, :n] = torch.tensor(example["token_type_ids"], dtype=torch.long)
            if tokens is not None:
                tokens[row, :n] = torch.tensor(example["labels"], dtype=torch.long)
        out = {"input_ids": input_ids, "attention_mask": mask}
        if types is not None:
            out["token_type_ids"] = types
        if tokens is not None:
            out["labels"] = tokens
        else:
            dtype = torch.long if self.labels == "class" else torch.float32
            out["labels"] = torch.tensor([e["labels"] for e in examples], dtype=dtype)  # (B,)
        return out


def unwrap_model(model: nn.Module) -> nn.Module:
    """The transformers model inside peft, DistributedDataParallel / DataParallel and torch.compile wrappers."""
    for _ in range(8):
        if hasattr(model, "get_base_model") and callable(model.get_base_model):
            model = model.get_base_model()
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            break
    return model


@contextlib.contextmanager
def _eval_mode(model: nn.Module):
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _device_of(model: nn.Module) -> torch.device | None:
    for p in model.parameters():
        return p.device
    return None


class Task:
    """One training objective. Subclasses set ``name``, ``primary_metric`` and ``labels`` (collation kind)
    and implement ``model_kwargs``, ``encode``, ``check_model``, ``_batch_outputs`` and ``_metrics``."""

    name: str = ""
    primary_metric: tuple[str, str] = ("loss", "min")
    labels: str = "class"

    def __repr__(self) -> str:
        return f"<task {self.name!r}: primary metric {self.primary_metric[0]} ({self.primary_metric[1]})>"

    def model_kwargs(self, data) -> dict:
        """Keyword arguments for building the model (``from_pretrained`` / the config) for ``data``."""
        raise NotImplementedError

    def encode(self, data, tokenizer, *, max_length: int, block_size: int | None = None) -> EncodedData:
        """Tokenised splits of ``data`` (a :class:`~mpokit.data.TaskData`)."""
        raise NotImplementedError

    def check_model(self, model: nn.Module, data=None) -> None:
        """Raise :class:`ModelMismatchError` when ``model`` (or its head, given ``data``) does not fit the task."""
        raise NotImplementedError

    def collate(self, tokenizer) -> Collator:
        """Batch padding for this task's examples, with the tokenizer's pad id (:func:`pad_token_id`)."""
        return Collator(pad_token_id(tokenizer), self.labels)

    def is_better(self, value: float, best: float | None) -> bool:
        """Whether ``value`` of the primary metric beats ``best`` (None: nothing yet)."""
        if best is None:
            return True
        return value > best if self.primary_metric[1] == "max" else value < best

    def _batch_outputs(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, ...]:
        """Per-example tensors (first dimension B) to gather across processes."""
        raise NotImplementedError

    def _metrics(self, columns: list[torch.Tensor]) -> dict:
        """Metrics from the concatenated per-example tensors of all batches."""
        raise NotImplementedError

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: Iterable[dict], accelerator=None, progress: bool | str = False) -> dict:
        """The task's metrics over ``loader`` (batches from :meth:`collate`); the model's mode is restored."""
        from tqdm.auto import tqdm

        disable = not progress or (accelerator is not None and not accelerator.is_local_main_process)
        device = _device_of(model)
        parts: list[tuple[torch.Tensor, ...]] = []
        with _eval_mode(model):
            for batch in tqdm(loader, desc=progress if isinstance(progress, str) else "eval", disable=disable, leave=False):
                if device is not None:
                    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
                outputs = self._batch_outputs(model, batch)
                if accelerator is not None:
                    outputs = accelerator.gather_for_metrics(outputs)
                parts.append(tuple(t.detach().cpu() for t in outputs))
        if not parts:
            raise ValueError("evaluate got no batches from the loader; pass a DataLoader over a non-empty split")
        return self._metrics([torch.cat(column) for column in zip(*parts)])


def model_inputs(batch: dict) -> dict:
    """The batch without ``labels`` (the tasks compute their losses themselves)."""
    return {k: v for k, v in batch.items() if k != "labels"}
