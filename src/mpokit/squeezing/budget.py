"""One entry point for every compression method to a budget (used by ``mpokit squeeze``): squeezing,
MPOP_dir, magnitude pruning and low-rank SVD, each followed by the same fine-tuning, for any task
(classify, regress, lm: the held-out metrics are the task's, :func:`~mpokit.squeezing.evaluate`)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..layers.base import MPOModule
from .algorithm import squeeze
from .direct import truncate_directly
from .modules import find_mpo_modules, set_lfa_trainable
from .training import evaluate, finetune, resolve_task

__all__ = ["COMPRESSION_METHODS", "compress_to_budget", "encoder_mpo_config"]


COMPRESSION_METHODS = ("squeeze", "direct", "prune", "lowrank")


def encoder_mpo_config():
    """MPOConfig for the attention and FFN matrices of the transformer blocks only (n = 5, exact), LFA,
    embeddings frozen (encoders and decoders alike: BERT's query ... output.dense, GPT-2's c_attn ... c_proj,
    Llama's q_proj ... down_proj)."""
    from ..config import MPOConfig, MPOLayerConfig

    return MPOConfig(embedding=None, other=None, attention=MPOLayerConfig(n_cores=5), ffn=MPOLayerConfig(n_cores=5),
                     trainable="auxiliary", train_embeddings=False)


def _ensure_mpo(model: nn.Module) -> None:
    """Compresses the block matrices exactly (n = 5) unless the model already holds MPO layers (an mpokit
    checkpoint: squeezed as saved, every MPO layer). Either way the trainable set is that of
    :func:`encoder_mpo_config` (auxiliary cores, biases, norms, head; embeddings frozen)."""
    from ..surgery import compress, mark_trainable

    if any(isinstance(m, MPOModule) for m in model.modules()):
        mark_trainable(model, encoder_mpo_config())
    else:
        compress(model, encoder_mpo_config())


def _lfa_(model: nn.Module) -> None:
    for layer in find_mpo_modules(model).values():
        set_lfa_trainable({"": layer})


def _method_squeeze(model, *, target_ratio, train_batches, eval_batches, finetune_steps, lr, mpo_lr, seed, task, **kw):
    _ensure_mpo(model)
    res = squeeze(model, train_batches=train_batches, eval_batches=eval_batches, target_ratio=target_ratio,
                  finetune_steps=finetune_steps, lr=lr, mpo_lr=mpo_lr, seed=seed, max_steps=100_000, task=task, **kw)
    return {"params": res.params, "steps": res.steps, "finetune_steps": res.finetune_steps_total,
            "stop_reason": res.stop_reason, "resumed_from_step": res.resumed_from_step,
            "bond_dims": {k: list(v) for k, v in res.bond_dims.items()}}


def _method_direct(model, *, target_ratio, train_batches, finetune_steps, lr, mpo_lr, score="per_param", **_):
    _ensure_mpo(model)
    res = truncate_directly(model, target_ratio=target_ratio, score=score)
    _lfa_(model)
    finetune(model, train_batches, finetune_steps, lr=lr, mpo_lr=mpo_lr)
    return {"params": res.params, "finetune_steps": finetune_steps, "bond_dims": {k: list(v) for k, v in res.bond_dims.items()}}


def _dense_targets(model, targets):
    if any(isinstance(m, MPOModule) for m in model.modules()):
        raise ValueError("pruning and low-rank baselines start from the dense model; this one already holds MPO layers "
                         "(use mpokit.merge_and_unload(model) first, or pass the dense fine-tuned model)")
    if targets is None:
        from ..surgery import find_targets

        targets = [name for name, _, _ in find_targets(model, encoder_mpo_config())]
    return targets


def _method_prune(model, *, target_ratio, train_batches, finetune_steps, lr, targets=None, **_):
    from ..baselines.pruning import kept_params, magnitude_prune_
    from ..surgery import mark_trainable

    targets = _dense_targets(model, targets)
    mark_trainable(model, encoder_mpo_config())
    magnitude_prune_(model, targets, target_ratio=target_ratio)
    finetune(model, train_batches, finetune_steps, lr=lr)
    return {"params": kept_params(model, targets), "finetune_steps": finetune_steps, "targets": targets}


def _method_lowrank(model, *, target_ratio, train_batches, finetune_steps, lr, targets=None, **_):
    from ..baselines.lowrank import lowrank_
    from ..surgery import mark_trainable

    targets = _dense_targets(model, targets)
    res = lowrank_(model, targets, target_ratio=target_ratio)
    mark_trainable(model, encoder_mpo_config())
    finetune(model, train_batches, finetune_steps, lr=lr)
    return {"params": res.params, "finetune_steps": finetune_steps, "ranks": res.ranks, "targets": targets}


_METHOD_HANDLERS = {"squeeze": _method_squeeze, "direct": _method_direct, "prune": _method_prune, "lowrank": _method_lowrank}


def compress_to_budget(
    model: nn.Module,
    method: str,
    *,
    target_ratio: float,
    train_batches: Sequence,
    eval_batches: Sequence,
    finetune_steps: int = 48,
    lr: float = 5e-5,
    mpo_lr: float | None = None,
    seed: int = 0,
    task=None,
    **options,
) -> dict:
    """Compress the block matrices (:func:`encoder_mpo_config`) of a (fine-tuned) transformers model to
    ``target_ratio`` with ``method``.

    * ``"squeeze"``: MPO (exact) then :func:`squeeze` (``finetune_steps`` after every cut);
    * ``"direct"``: MPO then :func:`truncate_directly` (MPOP_dir), then ``finetune_steps``;
    * ``"prune"``: global magnitude pruning, then ``finetune_steps``;
    * ``"lowrank"``: per-matrix truncated SVD, then ``finetune_steps``.

    ``task`` (``"classify"`` by default, ``"regress"``, ``"lm"`` or a :class:`mpokit.tasks.Task`) gives
    the held-out metrics (squeezing monitors its loss unless ``monitor=`` says otherwise). Extra
    ``options`` go to the handler (e.g. ``step_size``, ``matrices_per_step``, ``score``, ``delta``,
    ``monitor``, ``checkpoint_dir``, ``log_path``, ``plot_path``, ``identity`` for squeezing). Returns
    a report dict with ``params``, ``dense_params``, ``ratio`` and the held-out metrics after compression
    as ``eval_<metric>`` (e.g. ``eval_loss``, ``eval_accuracy``).
    """
    if method not in _METHOD_HANDLERS:
        raise ValueError(f"method must be one of {COMPRESSION_METHODS}, got {method!r}; e.g. method='squeeze'")
    task = resolve_task(task)
    torch.manual_seed(seed)
    info = _METHOD_HANDLERS[method](model, target_ratio=target_ratio, train_batches=train_batches, eval_batches=eval_batches,
                                    finetune_steps=finetune_steps, lr=lr, mpo_lr=mpo_lr, seed=seed, task=task, **options)
    if method in ("squeeze", "direct"):
        info["dense_params"] = sum(m.dense_params for m in find_mpo_modules(model).values())
    else:
        info["dense_params"] = sum(model.get_submodule(t).weight.numel() for t in info["targets"])
    info.update(method=method, target_ratio=target_ratio, ratio=info["params"] / info["dense_params"])
    info.update({f"eval_{k}": v for k, v in evaluate(model, eval_batches, task).items()})
    return info
