"""Checkpoints of MPO-compressed transformers models: safetensors + JSON, no pickle.

A checkpoint folder holds

* ``model.safetensors``: every tensor of ``model.state_dict()`` (a tied tensor once);
* ``mpo_config.json``: format version, the model class, the :class:`MPOConfig`, the
  MPO structure (per module: shape, modes, bonds, bias, source type), aliases of
  tied tensors, and the weights file's size and SHA-256;
* ``config.json``: the base model's own transformers config.

Every file is written to a temporary name in the same folder and moved into
place with ``os.replace`` (atomic on POSIX). :func:`from_pretrained` rebuilds
the model from ``config.json``, recreates the MPO layers with the saved bond
dimensions (no decomposition), checks size and checksum, and loads the
tensors strictly: a corrupt, truncated or mismatched checkpoint raises
:class:`CheckpointError` saying which file and why.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from .config import MPOConfig
from .surgery import MPOTiedLinear, _set_submodule, mpo_modules, set_recompute

__all__ = ["save_pretrained", "from_pretrained", "CheckpointError", "atomic_write_bytes", "atomic_write_text",
           "structure_manifest", "apply_structure", "WEIGHTS_NAME", "MPO_CONFIG_NAME"]

WEIGHTS_NAME = "model.safetensors"
MPO_CONFIG_NAME = "mpo_config.json"
CONFIG_NAME = "config.json"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be loaded (missing, corrupt, truncated or mismatched)."""


# ---------------------------------------------------------------------------
# atomic writes
# ---------------------------------------------------------------------------


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


# ---------------------------------------------------------------------------
# MPO structure <-> manifest
# ---------------------------------------------------------------------------


def structure_manifest(model: nn.Module) -> list[dict]:
    """What :func:`apply_structure` needs to recreate the MPO layers of ``model`` (JSON-able)."""
    out = []
    emb_names = {}
    for name, m in mpo_modules(model):
        entry = {
            "name": name,
            "class": type(m).__name__,
            "shape": list(m.shape),
            "out_modes": list(m.out_modes),
            "in_modes": list(m.in_modes),
            "bond_dims": list(m.bond_dims),
            "gauge": m.gauge,
            "error_bound": float(getattr(m, "error_bound", 0.0)),
        }
        if hasattr(m, "to_linear"):
            entry["bias"] = m.bias is not None
            entry["source_type"] = getattr(m, "source_type", "Linear")
        elif hasattr(m, "to_embedding"):
            entry["padding_idx"] = m.padding_idx
            entry["source_padding_idx"] = getattr(m, "source_padding_idx", m.padding_idx)
            entry["source_type"] = "Embedding"
        else:
            raise TypeError(f"cannot save MPO module {name!r} of type {type(m).__name__}: only MPOLinear/MPOEmbedding")
        emb_names[id(m)] = name
        out.append(entry)
    for name, m in model.named_modules():
        if isinstance(m, MPOTiedLinear):
            out.append({"name": name, "class": "MPOTiedLinear", "embedding": emb_names[id(m.embedding)],
                        "bias": m.bias is not None})
    return out


def apply_structure(model: nn.Module, manifest: list[dict]) -> None:
    """Replace the dense modules named in ``manifest`` by MPO layers of the saved shapes (values not set)."""
    from .surgery import _layers

    MPOLinear, MPOEmbedding = _layers()

    for entry in manifest:
        name = entry["name"]
        try:
            old = model.get_submodule(name)
        except AttributeError:
            raise CheckpointError(
                f"the checkpoint has an MPO layer {name!r} but the model built from config.json has no such module; "
                "config.json and mpo_config.json do not belong together"
            ) from None
        if entry["class"] != "MPOTiedLinear":
            w = getattr(old, "weight", None)
            dense_shape = None if w is None else tuple(w.shape[::-1] if type(old).__name__ == "Conv1D" else w.shape)
            if dense_shape != tuple(entry["shape"]):
                raise CheckpointError(
                    f"the checkpoint's MPO layer {name!r} has shape {tuple(entry['shape'])}, but config.json builds "
                    f"{type(old).__name__} with shape {dense_shape}; the weights do not match the config"
                )
        ref = next(old.parameters(), None)
        device = ref.device if ref is not None else None
        dtype = ref.dtype if ref is not None else None
        if entry["class"] == "MPOLinear":
            out_features, in_features = entry["shape"]
            new = MPOLinear(in_features, out_features, bias=entry["bias"], out_modes=tuple(entry["out_modes"]),
                            in_modes=tuple(entry["in_modes"]), bond_dim=list(entry["bond_dims"]) or None,
                            device=device, dtype=dtype, gauge=entry["gauge"])
            if entry.get("source_type") == "Conv1D":
                new.source_type = "Conv1D"
        elif entry["class"] == "MPOEmbedding":
            num, dim = entry["shape"]
            new = MPOEmbedding(num, dim, padding_idx=entry.get("padding_idx"), out_modes=tuple(entry["out_modes"]),
                               in_modes=tuple(entry["in_modes"]), bond_dim=list(entry["bond_dims"]) or None,
                               device=device, dtype=dtype, gauge=entry["gauge"])
            new.source_padding_idx = entry.get("source_padding_idx", entry.get("padding_idx"))
        elif entry["class"] == "MPOTiedLinear":
            emb = model.get_submodule(entry["embedding"])
            bias = getattr(old, "bias", None) if entry["bias"] else None
            new = MPOTiedLinear(emb, bias if bias is not None else None)
        else:
            raise CheckpointError(f"unknown MPO module class {entry['class']!r} for {name!r} in {MPO_CONFIG_NAME}")
        if tuple(getattr(new, "bond_dims", ())) != tuple(entry.get("bond_dims", ())):
            raise CheckpointError(f"{name}: cannot recreate bond dimensions {entry['bond_dims']} (got {new.bond_dims})")
        if hasattr(new, "error_bound"):
            new.error_bound = float(entry.get("error_bound", 0.0))
        _set_submodule(model, name, new)


# ---------------------------------------------------------------------------
# save / load
# ---------------------------------------------------------------------------


def _state_and_aliases(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """State dict with each shared tensor stored once; ``aliases`` maps a dropped name to the kept one."""
    tensors, aliases, seen = {}, {}, {}
    for name, t in model.state_dict().items():
        key = (t.data_ptr(), t.dtype, tuple(t.shape), t.stride(), t.device) if t.numel() else None
        if key is not None and key in seen:
            aliases[name] = seen[key]
            continue
        if key is not None:
            seen[key] = name
        tensors[name] = t.detach().to("cpu").contiguous()
    return tensors, aliases


def save_pretrained(model: nn.Module, directory: str | os.PathLike, *, tokenizer=None) -> Path:
    """Save ``model`` (compressed or not) to ``directory``; returns the folder. See the module docstring."""
    from safetensors.torch import save as st_save

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    hf_config = getattr(model, "config", None)
    if hf_config is None or not hasattr(hf_config, "to_json_string"):
        raise TypeError(
            f"save_pretrained needs a transformers model (with .config), got {type(model).__name__}; "
            "for a plain module save its state_dict with safetensors.torch.save_file"
        )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors, aliases = _state_and_aliases(model)
    payload = st_save(tensors, metadata={"format": "pt", "producer": "mpokit"})
    mpo_config = getattr(model, "mpo_config", None)
    meta = {
        "format": "mpokit",
        "format_version": FORMAT_VERSION,
        "model_class": type(model).__name__,
        "mpo_config": mpo_config.to_dict() if isinstance(mpo_config, MPOConfig) else None,
        "modules": structure_manifest(model),
        "aliases": aliases,
        "trainable": sorted(n for n, p in model.named_parameters() if p.requires_grad),
        "weights": {"file": WEIGHTS_NAME, "bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest()},
    }
    atomic_write_bytes(directory / WEIGHTS_NAME, payload)
    atomic_write_text(directory / CONFIG_NAME, hf_config.to_json_string())
    atomic_write_text(directory / MPO_CONFIG_NAME, json.dumps(meta, indent=2, sort_keys=True))  # last: marks a complete save
    if tokenizer is not None:
        tokenizer.save_pretrained(str(directory))
    return directory


def _read_meta(directory: Path) -> dict:
    path = directory / MPO_CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(
            f"{path} not found: {str(directory)!r} is not an mpokit checkpoint (expected {MPO_CONFIG_NAME}, "
            f"{WEIGHTS_NAME}, {CONFIG_NAME}, written by mpokit.save_pretrained)"
        )
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is corrupt (not valid JSON: {e}); re-save the model with mpokit.save_pretrained") from None
    if not isinstance(meta, dict) or meta.get("format") != "mpokit":
        raise CheckpointError(f"{path} is not an mpokit checkpoint description (no 'format': 'mpokit')")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format_version {meta.get('format_version')!r}; this mpokit reads version {FORMAT_VERSION}"
        )
    for key in ("model_class", "modules", "aliases", "weights"):
        if key not in meta:
            raise CheckpointError(f"{path} is missing the field {key!r}; the checkpoint is incomplete or corrupt")
    return meta


def load_checked_weights(directory: str | os.PathLike, meta: dict | None = None) -> dict[str, torch.Tensor]:
    """The tensors of ``directory/model.safetensors`` after checking its size and SHA-256 against ``mpo_config.json``."""
    from safetensors import SafetensorError
    from safetensors.torch import load as st_load

    directory = Path(directory)
    meta = _read_meta(directory) if meta is None else meta
    wpath = directory / meta["weights"]["file"]
    if not wpath.is_file():
        raise CheckpointError(f"{wpath} is missing; the checkpoint folder is incomplete")
    data = wpath.read_bytes()
    expected = meta["weights"]["bytes"]
    if len(data) != expected:
        raise CheckpointError(
            f"{wpath} is truncated or was replaced: {len(data):,} bytes, but {MPO_CONFIG_NAME} records {expected:,}"
        )
    digest = hashlib.sha256(data).hexdigest()
    if digest != meta["weights"]["sha256"]:
        raise CheckpointError(
            f"{wpath} is corrupt: SHA-256 {digest[:16]}... does not match {meta['weights']['sha256'][:16]}... "
            f"recorded in {MPO_CONFIG_NAME}"
        )
    try:
        return st_load(data)
    except (SafetensorError, Exception) as e:  # a well-hashed but unreadable file
        raise CheckpointError(f"{wpath} is not a readable safetensors file: {e}") from None


def from_pretrained(directory: str | os.PathLike, *, device=None, dtype=None) -> nn.Module:
    """Load a model saved by :func:`save_pretrained` (in eval mode, trainable flags as saved)."""
    import transformers

    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{str(directory)!r} is not a folder; pass the folder given to save_pretrained")
    meta = _read_meta(directory)
    state = load_checked_weights(directory, meta)
    cls = getattr(transformers, meta["model_class"], None)
    if cls is None:
        raise CheckpointError(f"model class {meta['model_class']!r} is not in this transformers version")
    try:
        hf_config = transformers.AutoConfig.from_pretrained(str(directory))
    except Exception as e:  # noqa: BLE001 - report as a checkpoint problem
        raise CheckpointError(f"{directory / CONFIG_NAME} cannot be read as a transformers config: {e}") from None
    model = cls._from_config(hf_config) if hasattr(cls, "_from_config") else cls(hf_config)
    if dtype is not None:
        model = model.to(dtype=dtype)
    apply_structure(model, meta["modules"])
    for alias, canonical in meta["aliases"].items():
        if canonical not in state:
            raise CheckpointError(f"alias {alias!r} -> {canonical!r}: {canonical!r} is not in {WEIGHTS_NAME}")
        state[alias] = state[canonical]
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise CheckpointError(f"{directory} does not match the model built from its config: {e}") from None
    missing = [k for k in result.missing_keys]
    if missing or result.unexpected_keys:
        raise CheckpointError(
            f"{directory} does not match {meta['model_class']} built from its config.json: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected {result.unexpected_keys[:5]}"
        )
    if meta.get("mpo_config") is not None:
        model.mpo_config = MPOConfig.from_dict(meta["mpo_config"])
        set_recompute(model, model.mpo_config.recompute)
    trainable = set(meta.get("trainable", []))
    for name, p in model.named_parameters():
        p.requires_grad_(name in trainable)
    if device is not None:
        model = model.to(device)
    return model.eval()
