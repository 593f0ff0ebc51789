"""Dimension squeezing (MPOP §4.2, Algorithm 2) and direct truncation (MPOP_dir).

Squeezing compresses a model that holds MPO layers (any :class:`mpokit.layers.MPOModule`)
gradually:

1. evaluate ``p`` on held-out batches (the task loss by default, see ``monitor``);
2. re-gauge every candidate matrix (``layer.mpo()`` = :meth:`MPO.from_cores`), so its
   singular values are those of its *current* (trained) cores;
3. propose, for every matrix, its next cut: the bonds of the central core
   ``(d_{c-1}, i_c, j_c, d_c)`` go from ``d`` to ``d - step`` (the other bonds are
   lowered only where :func:`mpokit.shapes.consistent_bond_dims` requires it);
4. cut the matrix whose cut raises its error bound least (see :func:`cut_score`);
5. rebuild the optimizer (the cut replaced the core Parameters), fine-tune the
   auxiliary cores (central cores frozen) plus the model's other trainables;
6. re-evaluate ``p~``; stop when ``|p - p~| > delta``, when the parameter budget is
   met, when ``max_steps`` cuts were made, or when no cut is left.

Modules, from the bottom up:

* :mod:`.selection`: which cut, from singular values alone (pure; the error bounds live here);
* :mod:`.modules`: MPO layers of a model, their spectra, budgets, LFA trainability, the optimizer;
* :mod:`.training`: fine-tuning and evaluation between cuts (the metrics of :mod:`mpokit.tasks`:
  classify, regress, lm; ``(x, y)`` tuple batches as classification);
* :mod:`.checkpoint` and :mod:`.log`: safetensors + JSON checkpoints (written atomically, RNG
  state as plain integers) and the step log / plot;
* :mod:`.algorithm` (:func:`squeeze`) and :mod:`.direct` (:func:`truncate_directly`);
* :mod:`.budget`: :func:`compress_to_budget`, every method (squeezing and its baselines) to one budget;
* :mod:`.source`: the source model's identity (path, SHA-256 of its weights) and whether it already has
  the task's head, from its files alone (used by ``mpokit squeeze``).
"""

from .algorithm import SqueezeResult, squeeze
from .budget import COMPRESSION_METHODS, compress_to_budget, encoder_mpo_config
from .direct import DirectResult, truncate_directly
from .log import plot_squeeze_log
from .modules import find_mpo_modules, min_squeezable_params, resolve_budget, spectra_of
from .selection import SCORES, Cut, MatrixSpectrum, allocate_direct, central_bonds, propose_cut, select_cuts
from .source import source_identity, task_head
from .training import evaluate, finetune, resolve_task

__all__ = [
    "SCORES",
    "MatrixSpectrum",
    "Cut",
    "SqueezeResult",
    "DirectResult",
    "central_bonds",
    "propose_cut",
    "select_cuts",
    "allocate_direct",
    "find_mpo_modules",
    "spectra_of",
    "resolve_budget",
    "min_squeezable_params",
    "squeeze",
    "truncate_directly",
    "finetune",
    "evaluate",
    "resolve_task",
    "source_identity",
    "task_head",
    "plot_squeeze_log",
    "COMPRESSION_METHODS",
    "compress_to_budget",
    "encoder_mpo_config",
]
