"""``regress``: one real number per text (or text pair), a sequence classification model with one output.

* ``model_kwargs(data)``: ``num_labels=1``, ``problem_type="regression"`` (transformers then trains with
  the mean squared error).
* ``evaluate``: ``loss`` and ``mse`` (both the mean squared error over examples), ``pearson``, ``spearman``
  (:mod:`mpokit.tasks.metrics`; NaN when predictions or labels are constant) and ``n``; primary metric
  ``mse`` (min).
"""

from __future__ import annotations

import torch
from torch import nn

from .base import ModelMismatchError, model_inputs, unwrap_model
from .metrics import pearson, spearman
from .sequence import SequenceTask

__all__ = ["RegressTask"]


class RegressTask(SequenceTask):
    """Regression of a float label with a one-output ``...ForSequenceClassification`` model."""

    name = "regress"
    primary_metric = ("mse", "min")
    labels = "value"

    def model_kwargs(self, data) -> dict:
        return {"num_labels": 1, "problem_type": "regression"}

    def check_model(self, model: nn.Module, data=None) -> None:
        """A sequence classification model with one output and (if set) ``problem_type="regression"``."""
        super().check_model(model, data)
        config = unwrap_model(model).config
        if config.num_labels != 1 or getattr(config, "problem_type", None) not in (None, "regression"):
            raise ModelMismatchError(
                f"task 'regress' needs num_labels=1 and problem_type='regression', got num_labels="
                f"{config.num_labels}, problem_type={getattr(config, 'problem_type', None)!r}; build the model with "
                f"num_labels=1, problem_type='regression'")

    def _batch_outputs(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, ...]:
        logits = model(**model_inputs(batch)).logits.float()  # (B, 1)
        if logits.dim() != 2 or logits.shape[-1] != 1:
            raise ModelMismatchError(f"a regression model gives one value per example, (B, 1) logits; got shape "
                                     f"{tuple(logits.shape)}; build it with num_labels=1")
        return logits[:, 0], batch["labels"].float()

    def _metrics(self, columns: list[torch.Tensor]) -> dict:
        preds, labels = (c.double() for c in columns)  # (N,), (N,)
        mse = float(((preds - labels) ** 2).mean())
        return {"loss": mse, "mse": mse, "pearson": pearson(preds, labels), "spearman": spearman(preds, labels),
                "n": int(labels.numel())}
