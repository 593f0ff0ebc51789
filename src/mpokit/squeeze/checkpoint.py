"""Squeeze checkpoints: the model as safetensors, everything else (steps, log rows, RNG state as plain
integers, settings) as JSON; both written atomically. Loading never unpickles."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from ..io import atomic_write_bytes, atomic_write_text

__all__ = ["STATE_FILE", "STATE_VERSION", "save_state", "load_state", "load_model", "set_rng_state"]

STATE_VERSION = 1
STATE_FILE = "squeeze_state.json"


def save_model(model: nn.Module, path: Path) -> None:
    from safetensors.torch import save as st_save

    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    atomic_write_bytes(path, st_save(tensors))


def load_model(model: nn.Module, path: Path) -> None:
    from safetensors.torch import load_file

    if not path.is_file():
        raise ValueError(f"checkpoint model file {path} is missing; the squeeze checkpoint is incomplete")
    try:
        state = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types
        raise ValueError(f"checkpoint model file {path} is corrupt or truncated ({exc}); delete the checkpoint dir") from exc
    device = next(model.parameters()).device
    model.load_state_dict({k: v.to(device) for k, v in state.items()}, strict=True)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state().tolist()}
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: Mapping) -> None:
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def save_state(ckpt: Path, model, modules, rows, step, pos, p0, stop_reason, ft_total, settings) -> None:
    model_file = f"squeeze_model_step{step:05d}.safetensors"
    save_model(model, ckpt / model_file)
    old = None
    if (ckpt / STATE_FILE).is_file():
        try:
            old = json.loads((ckpt / STATE_FILE).read_text())["model_file"]
        except (ValueError, KeyError):
            old = None
    state = {
        "version": STATE_VERSION, "step": step, "batch_pos": pos, "rng": rng_state(), "initial": p0,
        "rows": rows, "stop_reason": stop_reason, "finetune_steps_total": ft_total,
        "error_bounds": {n: m.error_bound for n, m in modules.items()},
        "bond_dims": {n: list(m.bond_dims) for n, m in modules.items()},
        "settings": settings, "model_file": model_file,
    }
    atomic_write_text(ckpt / STATE_FILE, json.dumps(state))
    if old and old != model_file and (ckpt / old).is_file():
        (ckpt / old).unlink()


def load_state(ckpt: Path, settings: dict) -> dict | None:
    path = ckpt / STATE_FILE
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text())
    except ValueError as exc:
        raise ValueError(f"squeeze checkpoint {path} is not valid JSON ({exc}); delete {ckpt} to start over") from exc
    if state.get("version") != STATE_VERSION:
        raise ValueError(f"squeeze checkpoint {path} has version {state.get('version')!r}, expected {STATE_VERSION}")
    saved = state.get("settings", {})
    diff = {k: (saved.get(k), v) for k, v in json.loads(json.dumps(settings)).items() if saved.get(k) != v}
    if diff:
        raise ValueError(
            f"squeeze checkpoint {ckpt} was written with other settings {diff} (saved, given); "
            f"resume with the same settings or use a new checkpoint_dir"
        )
    return state
