"""all-MiniLM-L6-v2 (or any BERT-like folder) prepared for one fine-tuning method: full, MPO + LFA, BitFit, LoRA."""

from __future__ import annotations

import os
import time
from typing import Any, Iterable

import torch
from torch import nn

from ..config import MPOConfig, MPOLayerConfig
from ..surgery import compress, mark_trainable, parameter_roles

__all__ = ["METHODS", "LORA_TARGETS_BERT", "lfa_config", "bitfit_config", "lora_rank_for_budget", "build_model",
           "reinit_head"]


METHODS = ("full", "mpo-lfa", "bitfit", "lora")


def lfa_config(param_ratio: float | None = None, max_bond: int | None = None, n_cores: int = 5,
               compress_embedding: bool = True) -> MPOConfig:
    """MPOP lightweight fine-tuning: word embedding, attention, FFN and pooler as MPOs, central cores frozen.

    ``param_ratio`` / ``max_bond`` truncate the encoder matrices (attention, FFN,
    pooler); the word embedding is always decomposed exactly (full bonds).
    """
    enc = MPOLayerConfig(param_ratio=param_ratio, max_bond=max_bond, n_cores=n_cores)
    return MPOConfig(
        embedding=MPOLayerConfig(n_cores=n_cores) if compress_embedding else None,
        attention=enc, ffn=enc, other=enc, trainable="auxiliary",
    )


def bitfit_config() -> MPOConfig:
    """BitFit: only biases, LayerNorms and the task head train (no MPO layers needed)."""
    return MPOConfig(trainable="none", train_embeddings=False, train_other=False)


def lora_rank_for_budget(model: nn.Module, budget: int, target_suffixes: Iterable[str]) -> int:
    """LoRA rank ``r`` whose trainable count (``r (in + out)`` per target Linear, plus the head) is closest to ``budget``."""
    targets = [m for n, m in model.named_modules()
               if isinstance(m, nn.Linear) and any(n == s or n.endswith("." + s) for s in target_suffixes)]
    if not targets:
        raise ValueError(f"no nn.Linear matches the LoRA targets {list(target_suffixes)}; e.g. ['query', 'value']")
    per_rank = sum(m.in_features + m.out_features for m in targets)
    roles = parameter_roles(model)
    head = sum(p.numel() for n, p in model.named_parameters() if roles[n] == "head")
    return max(1, round((budget - head) / per_rank))


LORA_TARGETS_BERT = ("query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense")


def build_model(method: str, model_path: str | None = None, *, num_labels: int = 2, seed: int = 0,
                param_ratio: float | None = None, max_bond: int | None = None, lora_rank: int = 8,
                lora_alpha: float | None = None, init_from: str | None = None):
    """``(model, tokenizer, info)`` for ``method`` in :data:`METHODS`; ``info`` holds the compression report if any.

    The classification head is initialised after ``torch.manual_seed(seed)``, so
    every method starts from the same head for a given seed.

    ``init_from`` (``method="mpo-lfa"`` only): a folder written by
    :func:`mpokit.save_pretrained` (e.g. by ``mpokit finetune --compress-only``)
    holding an already compressed model. It is loaded instead of compressing
    again, and its head is re-initialised from ``seed`` exactly as a fresh
    model's would be. Compressing once and fine-tuning many times keeps the
    decomposition's LAPACK workspaces out of the fine-tuning process.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}; e.g. method='mpo-lfa'")
    if init_from is not None:
        if method != "mpo-lfa":
            raise ValueError(f"init_from applies to method='mpo-lfa' only, got method={method!r}")
        return _load_compressed(init_from, seed)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from ..pretrained import default_model_path

    path = str(default_model_path() if model_path is None else model_path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(seed)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the new head's "newly initialized" load report is expected
    try:
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels)
    finally:
        hf_logging.set_verbosity(verbosity)
    info: dict[str, Any] = {"model_path": path}
    if method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
    elif method == "mpo-lfa":
        t0 = time.perf_counter()
        model, report = compress(model, lfa_config(param_ratio, max_bond), return_report=True)
        info["compress_seconds"] = time.perf_counter() - t0
        info["report"] = report
    elif method == "bitfit":
        mark_trainable(model, bitfit_config())
    else:  # lora
        from peft import LoraConfig, TaskType, get_peft_model

        cfg = LoraConfig(task_type=TaskType.SEQ_CLS, r=lora_rank, lora_alpha=lora_alpha or 2 * lora_rank,
                         lora_dropout=0.0, target_modules=list(LORA_TARGETS_BERT), bias="none")
        model = get_peft_model(model, cfg)
        info["lora_rank"] = lora_rank
    return model, tokenizer, info


def _load_compressed(directory: str, seed: int):
    """(model, tokenizer, info) from an mpokit checkpoint, with the head re-initialised from ``seed``."""
    from transformers import AutoTokenizer

    from ..io import CheckpointError, from_pretrained

    model = from_pretrained(directory)
    if getattr(model, "mpo_config", None) is None:
        raise CheckpointError(f"{directory} holds no MPO model (no mpo_config); write one with --compress-only")
    reinit_head(model, seed)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(directory))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{directory} has no tokenizer files ({e}); save it with save_pretrained(..., tokenizer=)") from None
    info: dict[str, Any] = {"model_path": str(directory), "init_from": str(directory), "compress_seconds": 0.0}
    return model.train(), tokenizer, info


def reinit_head(model: nn.Module, seed: int) -> list[str]:
    """Re-initialise the task head (the top-level modules outside ``model.base_model``) after ``manual_seed(seed)``.

    Uses the model's own ``_init_weights``, in module order, so the head equals
    the one ``from_pretrained`` draws for a new task after the same seed.
    Modules sharing a parameter with the base model (a head tied to the word
    embeddings) are skipped. Returns the names of the re-initialised modules.
    """
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
