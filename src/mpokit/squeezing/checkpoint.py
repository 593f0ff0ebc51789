"""Squeeze checkpoints in the training-state format of :mod:`mpokit.training.state`: the model's tensors
(safetensors) and, as JSON, the step, batch position, log rows, error bounds, bond dimensions, RNG state and
settings (with the caller's ``identity``: e.g. the source model's path and SHA-256 and the data), committed as
one set. Loading never unpickles and refuses a checkpoint written with other settings or another identity."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

from ..training.state import load_training_state, read_training_state, save_training_state

__all__ = ["STATE_VERSION", "save_state", "load_state", "restore_model", "check_identity", "settings_diff"]

STATE_VERSION = 3  # 3: rows hold every held-out metric ("metrics", "monitored"); settings hold "task", "identity"


def save_state(ckpt: Path, model, modules, rows, step, pos, p0, stop_reason, ft_total, settings) -> None:
    state = {
        "squeeze_version": STATE_VERSION, "step": step, "batch_pos": pos, "initial": p0,
        "rows": rows, "stop_reason": stop_reason, "finetune_steps_total": ft_total,
        "error_bounds": {n: m.error_bound for n, m in modules.items()},
        "bond_dims": {n: list(m.bond_dims) for n, m in modules.items()},
        "settings": settings,
    }
    save_training_state(ckpt, model, state=state)


def _flatten(value, prefix: str = "") -> dict:
    """Nested dicts as ``{"a.b": leaf}`` (lists and other values are leaves)."""
    if isinstance(value, Mapping) and value:
        out = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def settings_diff(saved: Mapping, given: Mapping) -> list[str]:
    """``"key: saved -> given"`` for every (dotted, nested) field that differs; keys missing on a side show as None."""
    a, b = _flatten(json.loads(json.dumps(saved))), _flatten(json.loads(json.dumps(given)))
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def _read(ckpt: Path) -> dict | None:
    state = read_training_state(ckpt)
    if state is None:
        return None
    if state.get("squeeze_version") != STATE_VERSION:
        raise ValueError(f"squeeze checkpoint {ckpt} has version {state.get('squeeze_version')!r}, expected "
                         f"{STATE_VERSION}; delete {ckpt} to start over, or use another output folder")
    return state


def load_state(ckpt: Path, settings: dict) -> dict | None:
    """The saved squeeze progress (nothing loaded yet), or None when ``ckpt`` holds none."""
    state = _read(ckpt)
    if state is None:
        return None
    diff = settings_diff(state.get("settings", {}), settings)
    if diff:
        raise ValueError(
            f"squeeze checkpoint {ckpt} was written with other settings ({'; '.join(diff)}; saved -> given); "
            f"resume with the same settings or use a new checkpoint_dir"
        )
    return state


def check_identity(ckpt: Path, identity: Mapping) -> bool:
    """Whether ``ckpt`` holds a squeeze checkpoint to resume (False: none); a ValueError, before anything is
    loaded, when it was written under another ``identity`` (the message names both sides of every field, and
    first both source models when ``identity["source"]`` differs: its ``path`` and ``sha256``, as
    :func:`mpokit.squeezing.source.source_identity` gives them)."""
    state = _read(Path(ckpt))
    if state is None:
        return False
    saved = state.get("settings", {}).get("identity") or {}
    diff = settings_diff(saved, identity)
    if not diff:
        return True
    what = "of another run"
    old, new = saved.get("source"), identity.get("source")
    if isinstance(old, Mapping) and isinstance(new, Mapping) and any(d.startswith("source.") for d in diff):
        what = (f"made from another source model ({old.get('path')}, SHA-256 {old.get('sha256')}) than the one given "
                f"({new.get('path')}, SHA-256 {new.get('sha256')})")
    raise ValueError(
        f"{ckpt} holds a squeeze checkpoint {what}, so it cannot be resumed: {'; '.join(diff)} (saved -> given). "
        f"Use another output folder, or delete {ckpt} to start over")


def restore_model(ckpt: Path, model) -> None:
    """Load the checkpoint's tensors into ``model`` and restore the RNG states."""
    load_training_state(ckpt, model, restore_rng=True)
