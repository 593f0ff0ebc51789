"""One training pass and one evaluation pass of a sequence classifier (with HF Accelerate when given)."""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

__all__ = ["train_steps", "evaluate"]


def _forward_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    out = model(**batch)
    return out.loss


def train_steps(
    model: nn.Module,
    batches: Iterable[dict],
    optimizer: torch.optim.Optimizer,
    *,
    accelerator=None,
    scheduler=None,
    max_grad_norm: float | None = 1.0,
    max_steps: int | None = None,
    progress: bool | str = False,
) -> dict[str, float]:
    """Train on ``batches`` (dicts with ``input_ids``, ``attention_mask``, ``labels``); returns mean loss and steps.

    With an ``accelerator`` the backward pass goes through ``accelerator.backward``
    (gradient all-reduce under data parallelism) and the loss is averaged
    across processes.
    """
    from tqdm.auto import tqdm

    model.train()
    total, steps = 0.0, 0
    disable = not progress or (accelerator is not None and not accelerator.is_local_main_process)
    bar = tqdm(batches, desc=progress if isinstance(progress, str) else "train", disable=disable, leave=False)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for batch in bar:
        if max_steps is not None and steps >= max_steps:
            break
        loss = _forward_loss(model, batch)
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
    return {"loss": total / max(steps, 1), "steps": steps}


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable[dict], accelerator=None, progress: bool | str = False) -> dict[str, float]:
    """Mean cross-entropy and accuracy of a sequence classifier over ``loader`` (``n`` = examples seen)."""
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    loss_sum, correct, n = 0.0, 0, 0
    disable = not progress or (accelerator is not None and not accelerator.is_local_main_process)
    for batch in tqdm(loader, desc=progress if isinstance(progress, str) else "eval", disable=disable, leave=False):
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits  # (B, num_labels)
        labels = batch["labels"]
        if accelerator is not None:
            logits, labels = accelerator.gather_for_metrics((logits, labels))
        loss_sum += float(nn.functional.cross_entropy(logits.float(), labels, reduction="sum"))
        correct += int((logits.argmax(-1) == labels).sum())
        n += int(labels.numel())
    model.train(was_training)
    return {"loss": loss_sum / max(n, 1), "accuracy": correct / max(n, 1), "n": n}
