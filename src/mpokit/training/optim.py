"""The one optimizer builder: AdamW over the trainable parameters only, in groups decided by parameter roles.

Groups (from :func:`mpokit.surgery.parameter_roles`, i.e. module structure, never name strings):
``mpo`` (MPO cores, learning rate ``mpo_lr``, MPOP's separate rate for the auxiliary tensors), ``decay``
(other weights) and ``no_decay`` (biases and norms: no weight decay). Used by fine-tuning, squeezing and
every recipe. Also the warm-up / linear-decay schedule.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..surgery import parameter_roles

__all__ = ["NO_DECAY_ROLES", "check_rates", "param_groups", "build_optimizer", "linear_warmup_decay"]


NO_DECAY_ROLES = ("bias", "layernorm")


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_rates(lr, mpo_lr=None, weight_decay=0.0) -> None:
    """Raise a ValueError naming the bad value unless ``lr`` (and ``mpo_lr``) > 0 and ``weight_decay`` >= 0, all finite."""
    if not (_is_number(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}; e.g. lr=5e-5")
    if mpo_lr is not None and not (_is_number(mpo_lr) and mpo_lr > 0):
        raise ValueError(f"mpo_lr must be a finite number > 0 or None (same as lr), got {mpo_lr!r}; e.g. mpo_lr=1e-4")
    if not (_is_number(weight_decay) and weight_decay >= 0):
        raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}; e.g. weight_decay=0.01")


def param_groups(model: nn.Module, lr: float, mpo_lr: float | None = None, weight_decay: float = 0.01) -> list[dict]:
    """AdamW groups over trainable parameters: ``mpo`` (cores, ``mpo_lr``), ``decay`` and ``no_decay`` (``lr``).

    Empty groups are dropped. Each group has a ``"name"`` key.
    """
    check_rates(lr, mpo_lr, weight_decay)
    roles = parameter_roles(model)
    groups = {"mpo": [], "decay": [], "no_decay": []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        role = roles[name]
        key = "mpo" if role.startswith("mpo_") else "no_decay" if role in NO_DECAY_ROLES else "decay"
        groups[key].append(p)
    settings = {
        "mpo": {"lr": mpo_lr if mpo_lr is not None else lr, "weight_decay": weight_decay},
        "decay": {"lr": lr, "weight_decay": weight_decay},
        "no_decay": {"lr": lr, "weight_decay": 0.0},
    }
    out = [{"name": k, "params": v, **settings[k]} for k, v in groups.items() if v]
    if not out:
        raise ValueError("the model has no trainable parameters; call mpokit.mark_trainable(model, MPOConfig(...)) first")
    return out


def build_optimizer(
    model: nn.Module, lr: float, mpo_lr: float | None = None, weight_decay: float = 0.01, **adamw_kwargs
) -> torch.optim.Optimizer:
    """AdamW over :func:`param_groups` (trainable parameters only). Rebuild it after any truncation."""
    return torch.optim.AdamW(param_groups(model, lr, mpo_lr, weight_decay), **adamw_kwargs)


def linear_warmup_decay(optimizer, total_steps: int, warmup_steps: int):
    """LambdaLR: linear warm-up over ``warmup_steps``, then linear decay to 0 at ``total_steps``."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
