"""The evaluation pass of a sequence classifier (with HF Accelerate when given)."""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

__all__ = ["evaluate"]


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
