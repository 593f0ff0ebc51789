"""The options of a fine-tuning job, validated when built and again when the job starts."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from ..inputs import DataSpec
from ..training import check_rates
from .models import METHODS

__all__ = ["FinetuneConfig", "config_from_dict", "RESUME_MAY_CHANGE"]

# Options a resumed run may change: where it stops and how it shows progress. Everything else must match
# the interrupted run (the optimizer state, the data order and the schedule were made with it).
RESUME_MAY_CHANGE = ("epochs", "resume", "stop_after_epochs", "progress", "num_threads", "save_best", "save_last")
_DATA_FIELDS = tuple(f.name for f in fields(DataSpec))
_EXAMPLES = {"epochs": 3, "batch_size": 32, "eval_batch_size": 64, "lora_rank": 8, "max_steps_per_epoch": 100,
             "num_threads": 4, "stop_after_epochs": 1}


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass
class FinetuneConfig(DataSpec):
    """Options of :func:`mpokit.finetune` (and of ``mpokit finetune``).

    The data options (``data``, ``validation_data``, ..., ``split_seed``) are those of
    :class:`mpokit.inputs.DataSpec`, which this class extends; ``task`` is inferred from the labels
    when None. ``model_path``: a transformers folder, an mpokit checkpoint folder or a ``.gguf`` file.
    """

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
    seed: int = 0
    param_ratio: float | None = None
    max_bond: int | None = None
    lora_rank: int = 8
    init_from: str | None = None  # mpo-lfa: start from this compressed checkpoint, head re-drawn from seed
    compress_only: bool = False  # mpo-lfa: compress, save to output_dir/compressed, and stop
    max_grad_norm: float | None = 1.0
    max_steps_per_epoch: int | None = None
    eval_before: bool = False  # evaluate validation and test before training too
    resume: bool = False
    stop_after_epochs: int | None = None  # train at most this many epochs in this call (continue with resume=True)
    save_best: bool = True
    save_last: bool = True
    cpu: bool = False
    num_threads: int | None = None
    progress: bool = True

    def validate(self) -> None:
        """Raise a ValueError naming the first bad option; called on construction and when the job starts."""
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}; e.g. method='mpo-lfa'")
        if self.model_path is None and self.init_from is None:
            raise ValueError("give model_path: a transformers model folder, an mpokit checkpoint folder or a .gguf "
                             "file, e.g. model_path='runs/my_model'")
        for name in ("epochs", "batch_size", "eval_batch_size", "lora_rank"):
            v = getattr(self, name)
            if not _is_int(v) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}; e.g. {name}={_EXAMPLES[name]}")
        for name in ("max_steps_per_epoch", "num_threads", "stop_after_epochs"):
            v = getattr(self, name)
            if v is not None and (not _is_int(v) or v < 1):
                raise ValueError(f"{name} must be an int >= 1 or None, got {v!r}; e.g. {name}={_EXAMPLES[name]}")
        if not _is_int(self.seed) or self.seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {self.seed!r}; e.g. seed=0")
        check_rates(self.lr, self.mpo_lr, self.weight_decay)
        if self.max_grad_norm is not None and not (isinstance(self.max_grad_norm, (int, float))
                                                   and math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0):
            raise ValueError(f"max_grad_norm must be a finite number > 0 or None (no clipping), got "
                             f"{self.max_grad_norm!r}; e.g. max_grad_norm=1.0")
        if not (isinstance(self.warmup_ratio, (int, float)) and 0 <= self.warmup_ratio < 1):
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}; e.g. 0.06")
        if self.param_ratio is not None and not (isinstance(self.param_ratio, (int, float)) and 0 < self.param_ratio <= 1):
            raise ValueError(f"param_ratio must be in (0, 1], got {self.param_ratio!r}; e.g. param_ratio=0.5")
        if self.max_bond is not None and (not _is_int(self.max_bond) or self.max_bond < 1):
            raise ValueError(f"max_bond must be an int >= 1, got {self.max_bond!r}; e.g. max_bond=64")
        for name in ("param_ratio", "max_bond", "init_from", "compress_only"):
            if getattr(self, name) and self.method != "mpo-lfa":
                raise ValueError(f"{name} applies to method='mpo-lfa' only, got method={self.method!r}")
        if self.init_from is not None and (self.param_ratio is not None or self.max_bond is not None):
            raise ValueError("init_from loads an already compressed model: drop param_ratio / max_bond "
                             f"(got param_ratio={self.param_ratio!r}, max_bond={self.max_bond!r})")
        super().validate()  # the data options

    def data_spec(self) -> DataSpec:
        return DataSpec(**{k: getattr(self, k) for k in _DATA_FIELDS})

    def to_dict(self) -> dict:
        return asdict(self)


def config_from_dict(data: dict) -> FinetuneConfig:
    known = {f.name for f in fields(FinetuneConfig)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown finetune options {sorted(unknown)}; valid: {sorted(known)}")
    return FinetuneConfig(**data)
