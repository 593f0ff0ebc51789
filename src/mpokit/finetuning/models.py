"""A model prepared for one fine-tuning method: full, MPO + LFA, BitFit, LoRA; for any task and architecture.

* ``full``: every parameter trains.
* ``mpo-lfa``: MPOP's lightweight fine-tuning. The targeted matrices (the architecture's defaults, or
  the all-linear fallback of :mod:`mpokit.surgery` for other architectures) become MPOs, central cores
  frozen; a model that already holds MPO layers (an mpokit checkpoint) is not compressed again.
* ``bitfit``: only biases, norms and the task head train.
* ``lora``: peft's LoRA on the Linear targets that the same target resolution picks.
"""

from __future__ import annotations

import time
from typing import Any

from torch import nn

from ..config import MPOConfig, MPOLayerConfig
from ..surgery import compress, mark_trainable, mpo_modules, parameter_roles

__all__ = ["METHODS", "lfa_config", "bitfit_config", "lora_rank_for_budget", "lora_targets", "prepare_model",
           "reinit_head"]


METHODS = ("full", "mpo-lfa", "bitfit", "lora")
PEFT_TASK_TYPES = {"classify": "SEQ_CLS", "regress": "SEQ_CLS", "lm": "CAUSAL_LM"}


def lfa_config(param_ratio: float | None = None, max_bond: int | None = None, n_cores: int = 5,
               compress_embedding: bool = True) -> MPOConfig:
    """MPOP lightweight fine-tuning: word embedding, attention, FFN and other matrices as MPOs, central cores frozen.

    ``param_ratio`` / ``max_bond`` truncate the attention, FFN and other matrices; the word embedding is
    always decomposed exactly (full bonds).
    """
    enc = MPOLayerConfig(param_ratio=param_ratio, max_bond=max_bond, n_cores=n_cores)
    return MPOConfig(
        embedding=MPOLayerConfig(n_cores=n_cores) if compress_embedding else None,
        attention=enc, ffn=enc, other=enc, trainable="auxiliary",
    )


def bitfit_config() -> MPOConfig:
    """BitFit: only biases, LayerNorms and the task head train (no MPO layers needed)."""
    return MPOConfig(trainable="none", train_embeddings=False, train_other=False)


def lora_targets(model: nn.Module) -> list[str]:
    """The Linear / Conv1D modules LoRA adapts: the ones :func:`mpokit.compress` would take by default
    (registry or all-linear fallback), without embeddings and heads."""
    from ..targets import linear_target_names

    names = linear_target_names(model)
    if not names:
        raise ValueError(f"{type(model).__name__} has no Linear / Conv1D module to adapt with LoRA")
    return names


def lora_rank_for_budget(model: nn.Module, budget: int, targets: list[str] | None = None) -> int:
    """LoRA rank ``r`` whose trainable count (``r (in + out)`` per target, plus the head) is closest to ``budget``."""
    targets = lora_targets(model) if targets is None else list(targets)
    per_rank = 0
    for name in targets:
        module = model.get_submodule(name)
        weight = module.weight
        per_rank += int(weight.shape[0] + weight.shape[1])
    roles = parameter_roles(model)
    head = sum(p.numel() for n, p in model.named_parameters() if roles[n] == "head")
    return max(1, round((budget - head) / per_rank))


def prepare_model(model: nn.Module, method: str, *, task: str, param_ratio: float | None = None,
                  max_bond: int | None = None, lora_rank: int = 8, lora_alpha: float | None = None,
                  mpo_config: MPOConfig | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """``(model, info)`` with ``model`` set up for ``method`` in :data:`METHODS`; ``info`` holds the compression
    report (``report``, ``compress_seconds``) or the LoRA rank and targets."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}; e.g. method='mpo-lfa'")
    info: dict[str, Any] = {}
    has_mpo = bool(mpo_modules(model))
    if method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
    elif method == "mpo-lfa":
        if has_mpo:
            if param_ratio is not None or max_bond is not None:
                raise ValueError("the model is already MPO-compressed (an mpokit checkpoint): drop --param-ratio / "
                                 f"--max-bond (got param_ratio={param_ratio!r}, max_bond={max_bond!r})")
            mark_trainable(model, getattr(model, "mpo_config", None) or lfa_config())
            info["compress_seconds"] = 0.0
        else:
            t0 = time.perf_counter()
            model, report = compress(model, mpo_config or lfa_config(param_ratio, max_bond), return_report=True)
            info["compress_seconds"] = time.perf_counter() - t0
            info["report"] = report
    elif method == "bitfit":
        mark_trainable(model, bitfit_config())
    else:  # lora
        from peft import LoraConfig, get_peft_model

        if has_mpo:
            raise ValueError("LoRA adapts dense Linear layers; this model holds MPO layers. Use --method mpo-lfa, or "
                             "merge it first (mpokit.merge_and_unload)")
        targets = lora_targets(model)
        cfg = LoraConfig(task_type=PEFT_TASK_TYPES[task], r=lora_rank, lora_alpha=lora_alpha or 2 * lora_rank,
                         lora_dropout=0.0, target_modules=targets, bias="none")
        model = get_peft_model(model, cfg)
        info.update(lora_rank=lora_rank, lora_targets=len(targets))
    return model, info


def reinit_head(model: nn.Module, seed: int) -> list[str]:
    """Re-initialise the task head (the top-level modules outside ``model.base_model``) after ``manual_seed(seed)``.

    Uses the model's own ``_init_weights``, in module order, so the head equals
    the one ``from_pretrained`` draws for a new task after the same seed.
    Modules sharing a parameter with the base model (a head tied to the word
    embeddings) are skipped. Returns the names of the re-initialised modules.
    """
    import torch

    base = getattr(model, "base_model", None)
    init = getattr(model, "_init_weights", None)
    if base is None or base is model or init is None:
        raise ValueError(f"{type(model).__name__} has no separate base_model / _init_weights: no task head to re-initialise")
    torch.manual_seed(seed)
    shared = {id(p) for p in base.parameters()}  # a head tied to the embeddings (LM heads) is left alone
    names = []
    for name, child in model.named_children():
        params = list(child.parameters())
        if child is base or not params or any(id(p) in shared for p in params):
            continue
        with torch.no_grad():
            for sub in child.modules():
                init(sub)
        names.append(name)
    return names
