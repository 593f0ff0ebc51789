"""The options of a fine-tuning job, validated when built."""

from __future__ import annotations

from dataclasses import dataclass, fields

from .models import METHODS

__all__ = ["FinetuneConfig", "config_from_dict"]


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


def config_from_dict(data: dict) -> FinetuneConfig:
    known = {f.name for f in fields(FinetuneConfig)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown finetune options {sorted(unknown)}; valid: {sorted(known)}")
    return FinetuneConfig(**data)
