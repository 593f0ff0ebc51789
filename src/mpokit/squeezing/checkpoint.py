"""Squeeze checkpoints in the training-state format of :mod:`mpokit.training.state`: the model's tensors
(safetensors) and, as JSON, the step, batch position, log rows, error bounds, bond dimensions, RNG state and
settings, committed as one set. Loading never unpickles and refuses a checkpoint written with other settings."""

from __future__ import annotations

import json
from pathlib import Path

from ..training.state import load_training_state, read_training_state, save_training_state

__all__ = ["STATE_VERSION", "save_state", "load_state", "restore_model"]

STATE_VERSION = 2


def save_state(ckpt: Path, model, modules, rows, step, pos, p0, stop_reason, ft_total, settings) -> None:
    state = {
        "squeeze_version": STATE_VERSION, "step": step, "batch_pos": pos, "initial": p0,
        "rows": rows, "stop_reason": stop_reason, "finetune_steps_total": ft_total,
        "error_bounds": {n: m.error_bound for n, m in modules.items()},
        "bond_dims": {n: list(m.bond_dims) for n, m in modules.items()},
        "settings": settings,
    }
    save_training_state(ckpt, model, state=state)


def load_state(ckpt: Path, settings: dict) -> dict | None:
    """The saved squeeze progress (nothing loaded yet), or None when ``ckpt`` holds none."""
    state = read_training_state(ckpt)
    if state is None:
        return None
    if state.get("squeeze_version") != STATE_VERSION:
        raise ValueError(f"squeeze checkpoint {ckpt} has version {state.get('squeeze_version')!r}, expected "
                         f"{STATE_VERSION}; delete {ckpt} to start over")
    saved = state.get("settings", {})
    diff = {k: (saved.get(k), v) for k, v in json.loads(json.dumps(settings)).items() if saved.get(k) != v}
    if diff:
        raise ValueError(
            f"squeeze checkpoint {ckpt} was written with other settings {diff} (saved, given); "
            f"resume with the same settings or use a new checkpoint_dir"
        )
    return state


def restore_model(ckpt: Path, model) -> None:
    """Load the checkpoint's tensors into ``model`` and restore the RNG states."""
    load_training_state(ckpt, model, restore_rng=True)
