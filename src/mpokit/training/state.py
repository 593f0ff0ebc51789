"""The one training-state format: what a run needs to resume, beside the model checkpoint.

A state folder holds ``trainer_state.json`` (the manifest, JSON) and, committed by it as one set
(:func:`mpokit.atomic.commit_file_set`), ``model_state.<sha>.safetensors`` (every tensor of the
model, a shared tensor once) and ``optimizer.<sha>.safetensors`` (the optimizer's tensors; its
scalars and groups live in the JSON). The JSON also holds the scheduler state, the RNG states of
Python, NumPy and torch (CPU and CUDA) as plain integers, the states of named ``torch.Generator``s
(e.g. a DataLoader's shuffler) and the caller's own fields. A kill during a save leaves the
previous state loadable; :func:`load_training_state` verifies every file's size and SHA-256 first.
Nothing is pickled.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from ..atomic import FileSetError, commit_file_set, read_file_set

__all__ = ["STATE_MANIFEST", "STATE_VERSION", "save_training_state", "load_training_state", "rng_state",
           "set_rng_state", "read_training_state", "TrainingStateError"]

STATE_MANIFEST = "trainer_state.json"
STATE_VERSION = 2


class TrainingStateError(FileSetError):
    """A training state that cannot be resumed (missing, corrupt, or for another model or settings)."""


def rng_state() -> dict:
    """The RNG states of Python, NumPy and torch (CPU, every CUDA device) as JSON-able lists."""
    version, internal, gauss = random.getstate()
    state = {"python": [version, list(internal), gauss], "torch": torch.get_rng_state().tolist()}
    try:
        import numpy as np

        kind, keys, pos, has_gauss, cached = np.random.get_state()
        state["numpy"] = [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)]
    except ImportError:  # pragma: no cover
        pass
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: Mapping) -> None:
    """Restore what :func:`rng_state` returned."""
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "numpy" in state:
        import numpy as np

        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def _optimizer_blob(optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"state.{idx}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _load_optimizer(optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for key, t in tensors.items():
        _, idx, k = key.split(".", 2)
        state.setdefault(int(idx), {})[k] = t
    for key, v in meta["scalars"].items():
        idx, k = key.split(".", 1)
        state.setdefault(int(idx), {})[k] = v
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_training_state(directory: str | Path, model: nn.Module, *, optimizer=None, scheduler=None,
                        generators: Mapping[str, torch.Generator] | None = None, state: Mapping | None = None) -> None:
    """Commit the resume state of ``model`` (and ``optimizer``, ``scheduler``, ``generators``) plus the JSON
    fields of ``state`` to ``directory`` as one set (see the module docstring)."""
    from safetensors.torch import save as st_save

    from ..io import state_and_aliases

    tensors, aliases = state_and_aliases(model)
    blobs = {"model_state.safetensors": st_save(tensors)}
    manifest = {"version": STATE_VERSION, "aliases": aliases, "rng": rng_state(), "state": dict(state or {})}
    if optimizer is not None:
        opt_tensors, opt_meta = _optimizer_blob(optimizer)
        blobs["optimizer.safetensors"] = st_save(opt_tensors)
        manifest["optimizer"] = opt_meta
    if scheduler is not None:
        manifest["scheduler"] = scheduler.state_dict()
    if generators:
        manifest["generators"] = {k: g.get_state().tolist() for k, g in generators.items()}
    json.dumps(manifest)  # fail here, before anything is written, on a field that is not JSON
    commit_file_set(directory, STATE_MANIFEST, blobs, manifest)


def _read_set(directory: Path) -> tuple[dict, dict[str, bytes]]:
    """The verified manifest and files of the state in ``directory``, of this mpokit's version."""
    try:
        manifest, blobs = read_file_set(directory, STATE_MANIFEST)
    except FileSetError as e:
        raise TrainingStateError(f"cannot resume from {directory}: {e}") from None
    if manifest.get("version") != STATE_VERSION:
        raise TrainingStateError(f"{directory / STATE_MANIFEST} has version {manifest.get('version')!r}; this mpokit "
                                 f"reads version {STATE_VERSION}. Start a new run in another folder")
    return manifest, blobs


def read_training_state(directory: str | Path) -> dict | None:
    """The caller's ``state`` fields of the training state in ``directory`` (every file verified), without
    loading anything; ``None`` when ``directory`` holds no training state."""
    directory = Path(directory)
    if not (directory / STATE_MANIFEST).is_file():
        return None
    return _read_set(directory)[0]["state"]


def load_training_state(directory: str | Path, model: nn.Module, *, optimizer=None, scheduler=None,
                        generators: Mapping[str, torch.Generator] | None = None, restore_rng: bool = True) -> dict:
    """Load what :func:`save_training_state` wrote into the live objects; returns the caller's ``state`` fields.

    Every file is verified before anything is loaded; a mismatch with ``model`` (missing or unexpected
    tensors) or a missing optimizer / generator state raises :class:`TrainingStateError`.
    """
    from safetensors.torch import load as st_load

    directory = Path(directory)
    manifest, blobs = _read_set(directory)
    tensors = st_load(blobs["model_state.safetensors"])
    for alias, canonical in manifest["aliases"].items():
        tensors[alias] = tensors[canonical]
    device = next(model.parameters()).device
    result = model.load_state_dict({k: v.to(device) for k, v in tensors.items()}, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise TrainingStateError(f"the training state in {directory} does not match this model: missing "
                                 f"{result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]}")
    if optimizer is not None:
        if "optimizer.safetensors" not in blobs:
            raise TrainingStateError(f"the training state in {directory} holds no optimizer state")
        _load_optimizer(optimizer, st_load(blobs["optimizer.safetensors"]), manifest["optimizer"])
    if scheduler is not None and "scheduler" in manifest:
        scheduler.load_state_dict(manifest["scheduler"])
    for name, gen in (generators or {}).items():
        saved = manifest.get("generators", {}).get(name)
        if saved is None:
            raise TrainingStateError(f"the training state in {directory} has no state for the generator {name!r}")
        gen.set_state(torch.tensor(saved, dtype=torch.uint8))
    if restore_rng:
        set_rng_state(manifest["rng"])
    return manifest["state"]
