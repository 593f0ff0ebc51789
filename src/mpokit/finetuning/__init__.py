"""Lightweight fine-tuning (MPOP §4.1, "LFA") and the reusable training loop.

Building blocks (the optimizer, loop, seeding and state come from :mod:`mpokit.training`):

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

Modules: :mod:`.optim` (groups, optimizer, schedule), :mod:`.loop` (train / evaluate passes),
:mod:`.loaders` (data), :mod:`.models` (one model per method), :mod:`.settings` (:class:`FinetuneConfig`),
:mod:`.monitor` (seed, peak memory), :mod:`.state` (checkpoints), :mod:`.report` (JSON + markdown) and
:mod:`.job` (:func:`finetune`).
"""

from .job import finetune
from .loaders import load_rotten_tomatoes_for
from ..training import PeakMemory, build_optimizer, param_groups, set_seed, train_steps
from .loop import evaluate
from .models import LORA_TARGETS_BERT, METHODS, bitfit_config, build_model, lfa_config, lora_rank_for_budget, reinit_head
from .settings import FinetuneConfig, config_from_dict

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
    "LORA_TARGETS_BERT",
    "reinit_head",
    "config_from_dict",
]
