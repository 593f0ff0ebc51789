"""The one training loop: optimizer steps over batches, with HF Accelerate when given.

Used by :func:`mpokit.finetune` (epochs over a prepared DataLoader), by squeezing (a fixed number of
steps between cuts, cycling over a list of batches) and by the recipes. Evaluation lives with each
task (:mod:`mpokit.tasks`).
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

__all__ = ["train_steps", "default_loss", "to_device"]


def to_device(batch, device):
    """``batch`` (a tensor, or a dict / tuple / list of them) moved to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def default_loss(model: nn.Module, batch) -> torch.Tensor:
    """The loss of one batch: ``model(**batch).loss`` for a dict with ``labels`` (transformers models), or
    cross-entropy of ``model(x)`` against ``y`` for an ``(x, y)`` pair."""
    if isinstance(batch, Mapping):
        out = model(**batch)
        loss = getattr(out, "loss", None)
        if loss is None and isinstance(out, Mapping):
            loss = out.get("loss")
        if loss is None:
            logits = out.logits if hasattr(out, "logits") else out
            loss = nn.functional.cross_entropy(logits, batch["labels"])
        return loss
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)


def _model_device(model: nn.Module) -> torch.device | None:
    ref = next(model.parameters(), None)
    return None if ref is None else ref.device


def train_steps(
    model: nn.Module,
    batches: Iterable[Any],
    optimizer: torch.optim.Optimizer,
    *,
    accelerator=None,
    scheduler=None,
    max_grad_norm: float | None = 1.0,
    max_steps: int | None = None,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor] | None = None,
    progress: bool | str = False,
) -> dict[str, float]:
    """One pass of optimizer steps over ``batches``; returns ``{"loss": mean loss, "steps": n}``.

    Each step: forward (``loss_fn(model, batch)``, default :func:`default_loss`), backward (through
    ``accelerator.backward`` when an Accelerator is given: gradient all-reduce under data
    parallelism), gradient clipping at ``max_grad_norm`` over the optimizer's parameters, optimizer
    and scheduler step. At most ``max_steps`` batches are drawn from ``batches`` (none beyond them,
    so a shuffling loader's state stays where the last step left it). Batches are moved to the
    model's device. The loss of each step is averaged across processes.
    """
    from tqdm.auto import tqdm

    if max_steps is not None and (isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 0):
        raise ValueError(f"max_steps must be an int >= 0 or None (all batches), got {max_steps!r}; e.g. max_steps=100")
    loss_fn = loss_fn or default_loss
    model.train()
    device = _model_device(model)
    total, steps = 0.0, 0
    disable = not progress or (accelerator is not None and not accelerator.is_local_main_process)
    stream = batches if max_steps is None else itertools.islice(batches, max_steps)
    try:
        length = len(batches) if max_steps is None else min(len(batches), max_steps)
    except TypeError:
        length = max_steps
    bar = tqdm(stream, total=length, desc=progress if isinstance(progress, str) else "train", disable=disable,
               leave=False)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    optimizer.zero_grad(set_to_none=True)
    for batch in bar:
        if device is not None:
            batch = to_device(batch, device)
        loss = loss_fn(model, batch)
        if accelerator is not None:
            accelerator.backward(loss)
            if max_grad_norm:
                accelerator.clip_grad_norm_(params, max_grad_norm)
        else:
            loss.backward()
            if max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        value = loss.detach()
        if accelerator is not None:
            value = accelerator.reduce(value, reduction="mean")
        total += float(value)
        steps += 1
        bar.set_postfix(loss=f"{total / steps:.4f}")
    return {"loss": total / steps if steps else float("nan"), "steps": steps}
