"""Fine-tuning and evaluation between cuts.

Batches are HF-style dicts (``input_ids``, ``attention_mask``, ``labels``, as
:func:`mpokit.inputs.build_loaders` collates them) or ``(x, y)`` tuples (the plain PyTorch models of the
unit tests and the LSTM recipes).

Evaluation is the task's own (:mod:`mpokit.tasks`: classify, regress, lm, each with its loss and
metrics). The tasks read dict batches only, so ``(x, y)`` tuples are scored by :func:`_evaluate_pairs`,
a classification evaluation (cross-entropy and accuracy, the same definitions as the classify task)
kept here for those models; tuples with another task are refused.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from ..training import build_optimizer, check_rates, default_loss, to_device, train_steps

__all__ = ["evaluate", "resolve_task", "finetune", "run_steps", "check_training_settings"]


def resolve_task(task):
    """The :class:`mpokit.tasks.Task` of ``task`` (a task object, a task name, or None for ``classify``)."""
    from ..tasks import Task, get_task

    if task is None:
        return get_task("classify")
    if isinstance(task, Task):
        return task
    if isinstance(task, str):
        return get_task(task)
    raise TypeError(f"task must be a task name ('classify', 'regress', 'lm'), a mpokit.tasks.Task or None, "
                    f"got {type(task).__name__} {task!r}; e.g. task='classify'")


@torch.no_grad()
def _evaluate_pairs(model: nn.Module, batches: Sequence) -> dict[str, float]:
    """Mean cross-entropy per example and accuracy of ``model(x)`` against ``y`` over ``(x, y)`` batches."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, loss_sum, correct = 0, 0.0, 0
    try:
        for batch in batches:
            x, y = to_device(batch, device)
            logits = model(x)  # (B, K)
            loss_sum += float(nn.functional.cross_entropy(logits.double(), y, reduction="sum"))
            correct += int((logits.argmax(-1) == y).sum())
            total += int(y.shape[0])
    finally:
        model.train(was_training)
    if total == 0:
        raise ValueError("eval_batches is empty; give at least one held-out batch")
    return {"loss": loss_sum / total, "accuracy": correct / total, "n": total}


def evaluate(model: nn.Module, batches: Sequence, task=None) -> dict[str, float]:
    """The held-out metrics of ``model`` over ``batches``, in eval mode (the mode is restored).

    ``task`` (a name or a :class:`mpokit.tasks.Task`; None = ``classify``) decides the metrics:
    classify ``loss, accuracy, macro_f1, n``; regress ``loss, mse, pearson, spearman, n``; lm
    ``loss, perplexity, tokens, n``. ``loss`` is always the task loss per example (per token for lm).
    ``(x, y)`` tuple batches are classification batches (``loss, accuracy, n``).
    """
    task = resolve_task(task)
    batches = list(batches)
    if not batches:
        raise ValueError("eval_batches is empty; give at least one held-out batch")
    if not isinstance(batches[0], Mapping):
        if task.name != "classify":
            raise ValueError(f"(x, y) tuple batches are classification batches; task {task.name!r} needs dict "
                             f"batches with input_ids and labels (e.g. from mpokit.inputs.build_loaders)")
        return _evaluate_pairs(model, batches)
    return task.evaluate(model, batches)


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
    ``train_batches[start], train_batches[start + 1], ...`` (cyclic). The loss is
    :func:`mpokit.training.default_loss` unless ``loss_fn`` is given: the model's own loss for
    transformers models (cross-entropy, MSE for a regression head, next-token cross-entropy for a causal
    LM), cross-entropy for ``(x, y)`` tuples. Returns ``(next batch position, mean training loss)``.
    """
    check_training_settings(None, 0, steps, lr, mpo_lr, "loss")
    optimizer = build_optimizer(model, lr, mpo_lr, weight_decay)
    return run_steps(model, optimizer, train_batches, start, steps, loss_fn or default_loss, max_grad_norm)


def check_training_settings(delta, max_steps, finetune_steps, lr, mpo_lr, monitor) -> None:
    """Checks the settings shared by :func:`finetune` and :func:`~mpokit.squeeze`; a ValueError names the bad one.

    ``monitor`` is the name of a held-out metric (e.g. ``"loss"``); whether the evaluation gives it is
    checked on the first evaluation.
    """
    if delta is not None and (isinstance(delta, bool) or not isinstance(delta, (int, float)) or not math.isfinite(delta)
                              or delta < 0):
        raise ValueError(f"delta must be a finite number >= 0 (allowed |p - p~| change of the monitored metric), "
                         f"got {delta!r}; e.g. delta=0.05")
    for name, v in (("max_steps", max_steps), ("finetune_steps", finetune_steps)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{name} must be an int >= 0, got {v!r}; e.g. {name}=10")
    check_rates(lr, mpo_lr)
    if not isinstance(monitor, str) or not monitor:
        raise ValueError(f"monitor must be the name of a held-out metric, got {monitor!r}; e.g. monitor='loss'")
