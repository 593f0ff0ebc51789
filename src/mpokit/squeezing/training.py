"""Fine-tuning and evaluation between cuts (default batches: HF-style dicts with ``labels``, or ``(x, y)`` tuples)."""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from ..training import build_optimizer, check_rates, default_loss, to_device, train_steps

__all__ = ["evaluate", "finetune", "run_steps", "check_training_settings"]

def _forward(model: nn.Module, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, logits, labels)`` for a dict batch with ``labels`` (HF) or an ``(x, y)`` tuple."""
    if isinstance(batch, Mapping):
        out = model(**batch)
        logits = out.logits if hasattr(out, "logits") else (out["logits"] if isinstance(out, Mapping) else out)
        labels = batch["labels"]
        loss = getattr(out, "loss", None)
        if loss is None:
            loss = nn.functional.cross_entropy(logits, labels)
        return loss, logits, labels
    x, y = batch
    logits = model(x)
    return nn.functional.cross_entropy(logits, y), logits, y


@torch.no_grad()
def evaluate(model: nn.Module, batches: Sequence) -> dict[str, float]:
    """Mean loss (per example) and accuracy over ``batches``, in eval mode."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, loss_sum, correct = 0, 0.0, 0
    for batch in batches:
        batch = to_device(batch, device)
        loss, logits, labels = _forward(model, batch)
        n = int(labels.shape[0])
        total += n
        loss_sum += float(loss) * n
        correct += int((logits.argmax(-1) == labels).sum())
    model.train(was_training)
    if total == 0:
        raise ValueError("eval_batches is empty; give at least one held-out batch")
    return {"loss": loss_sum / total, "accuracy": correct / total}


def run_steps(model, optimizer, train_batches, start: int, steps: int, loss_fn, max_grad_norm) -> tuple[int, float]:
    """``steps`` optimizer steps of :func:`mpokit.training.train_steps` on batches ``start, start+1, ...``
    (cyclic). Returns (next position, mean loss); the model is left in eval mode."""
    if steps == 0:
        return start, float("nan")
    cyclic = (train_batches[i % len(train_batches)] for i in range(start, start + steps))
    result = train_steps(model, cyclic, optimizer, max_grad_norm=max_grad_norm, loss_fn=loss_fn)
    model.eval()
    return start + steps, result["loss"]


def finetune(
    model: nn.Module,
    train_batches: Sequence,
    steps: int,
    *,
    lr: float = 2e-5,
    mpo_lr: float | None = None,
    weight_decay: float = 0.0,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor] | None = None,
    start: int = 0,
    max_grad_norm: float | None = 1.0,
) -> tuple[int, float]:
    """The fine-tuning used after every cut, on its own (baselines get exactly the same).

    AdamW (:func:`build_optimizer`) over the live trainable parameters, ``steps`` steps on
    ``train_batches[start], train_batches[start + 1], ...`` (cyclic). Returns
    ``(next batch position, mean training loss)``.
    """
    check_training_settings(None, 0, steps, lr, mpo_lr, "loss")
    optimizer = build_optimizer(model, lr, mpo_lr, weight_decay)
    return run_steps(model, optimizer, train_batches, start, steps, loss_fn or default_loss, max_grad_norm)


def check_training_settings(delta, max_steps, finetune_steps, lr, mpo_lr, monitor) -> None:
    """Checks the settings shared by :func:`finetune` and :func:`~mpokit.squeeze`; a ValueError names the bad one."""
    if delta is not None and (isinstance(delta, bool) or not isinstance(delta, (int, float)) or delta < 0 or math.isnan(delta)):
        raise ValueError(f"delta must be a number >= 0 (allowed |p - p~| change of the monitored metric), got {delta!r}; e.g. delta=0.05")
    for name, v in (("max_steps", max_steps), ("finetune_steps", finetune_steps)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{name} must be an int >= 0, got {v!r}; e.g. {name}=10")
    check_rates(lr, mpo_lr)
    if monitor not in ("loss", "accuracy"):
        raise ValueError(f"monitor must be 'loss' or 'accuracy', got {monitor!r}; e.g. monitor='loss'")
