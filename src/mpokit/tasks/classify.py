"""``classify``: one class per text (or text pair), any number of classes.

* ``model_kwargs(data)``: ``num_labels``, ``id2label``, ``label2id`` (from ``data.label_names``) and
  ``problem_type="single_label_classification"``.
* ``evaluate``: ``loss`` (mean cross-entropy over examples), ``accuracy``, ``macro_f1``
  (:func:`mpokit.tasks.metrics.macro_f1`) and ``n`` (examples); primary metric ``accuracy`` (max).
"""

from __future__ import annotations

import torch
from torch import nn

from .base import model_inputs
from .metrics import accuracy, macro_f1
from .sequence import SequenceTask

__all__ = ["ClassifyTask"]


class ClassifyTask(SequenceTask):
    """Single-label classification with a ``...ForSequenceClassification`` model."""

    name = "classify"
    primary_metric = ("accuracy", "max")
    labels = "class"

    def model_kwargs(self, data) -> dict:
        names = list(data.label_names)
        return {"num_labels": len(names), "id2label": dict(enumerate(names)),
                "label2id": {name: i for i, name in enumerate(names)},
                "problem_type": "single_label_classification"}

    def _batch_outputs(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, ...]:
        logits = model(**model_inputs(batch)).logits.float()  # (B, K)
        return logits, batch["labels"]

    def _metrics(self, columns: list[torch.Tensor]) -> dict:
        logits, labels = columns  # (N, K), (N,)
        preds = logits.argmax(-1)
        loss = float(nn.functional.cross_entropy(logits.double(), labels.long()))
        return {"loss": loss, "accuracy": accuracy(preds, labels), "macro_f1": macro_f1(preds, labels),
                "n": int(labels.numel())}
