"""Checkpoints of MPO-compressed models: safetensors + JSON, no pickle.

A checkpoint folder holds

* ``model.<sha12>.safetensors``: every tensor of ``model.state_dict()`` (a tied tensor once);
* ``config.<sha12>.json``: the base model's own transformers config, when it has one (and a
  plain ``config.json`` copy of it for other tools; the loader reads the committed one);
* ``mpo_config.json``, the manifest: format version, the model class, the :class:`MPOConfig`,
  the MPO structure (one entry per converted module, written by its converter:
  :data:`mpokit.converters.CONVERTERS`), aliases of tied tensors, the trainable parameters,
  and the name, size and SHA-256 of every file above.

A save is one commit (:func:`mpokit.atomic.commit_file_set`): the files under their hashed
names first, the manifest last, then the files of the previous save are removed. A kill at
any moment leaves the old or the new checkpoint loadable, never a mix; temporary files of an
interrupted save are removed by the next one. :func:`from_pretrained` checks the size and
checksum of the weights, builds the model from the committed config with its parameters
on the meta device (or takes the freshly built dense ``model=`` for a model without a
transformers config), recreates the MPO modules with the saved bond dimensions (no
decomposition, no values), and assigns the tensors of the weights file strictly: the
dense matrices of the compressed layers are never allocated. A corrupt, truncated or
mismatched checkpoint raises :class:`CheckpointError` saying which file and why.

Saving into a folder that holds another model is refused unless ``overwrite=True``: an mpokit
checkpoint of another class, model type or architecture (other modules, or other tensor shapes
outside the MPO layers), or a folder with a transformers / PEFT model or tokenizer files and no
mpokit checkpoint. Re-saving the same model (same class and architecture; the MPO bonds and
weights may differ) into its own folder is always allowed, as training does with ``best/``.

Format versions: 3 (written now) commits the files as one set and covers the config by the
checksum; 2 adds a ``converter`` name per module entry,
modules that keep their own forward (``"parametrized": true``), ``MPOLSTM``
entries and ``has_config``; version 1 folders (``MPOLinear`` / ``MPOEmbedding`` /
``MPOTiedLinear`` entries, always with ``config.json``) load as before.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .atomic import atomic_write_bytes, atomic_write_text, commit_file_set
from .config import MPOConfig
from .converters import CONVERTERS, attach_weight, converted_modules, converter_for
from .layers.base import MPOModule
from .layers.weight import MPOWeight
from .surgery import MPOTiedLinear, _set_submodule, set_recompute

__all__ = ["save_pretrained", "check_save_target", "from_pretrained", "CheckpointError", "FolderInUseError",
           "atomic_write_bytes", "atomic_write_text", "structure_manifest", "apply_structure", "WEIGHTS_NAME",
           "MPO_CONFIG_NAME", "FORMAT_VERSION", "TOKENIZER_FILES"]

WEIGHTS_NAME = "model.safetensors"
MPO_CONFIG_NAME = "mpo_config.json"
CONFIG_NAME = "config.json"
FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
_PARAMETRIZED = "weight"  # the tensor an MPOWeight supplies
_V1_CONVERTERS = {"MPOLinear": "Linear", "MPOEmbedding": "Embedding"}  # version-1 entries name no converter


# Files of a tokenizer (transformers' tokenizer.save_pretrained); an overwriting save removes the old ones.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "merges.txt",
                   "special_tokens_map.json", "tokenizer.model", "added_tokens.json", "spiece.model",
                   "sentencepiece.bpe.model", "chat_template.jinja")
# Files of a model that is not an mpokit checkpoint (transformers' and PEFT's save_pretrained; shards by pattern).
FOREIGN_MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json",
                       "pytorch_model.bin", "pytorch_model.bin.index.json", "adapter_config.json",
                       "adapter_model.safetensors", "adapter_model.bin")
FOREIGN_SHARDS = ("model-*-of-*.safetensors", "pytorch_model-*-of-*.bin")


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be loaded (missing, corrupt, truncated or mismatched)."""


class FolderInUseError(ValueError):
    """``save_pretrained`` into a folder that holds another model (or foreign model files) without ``overwrite=True``."""


# ---------------------------------------------------------------------------
# MPO structure <-> manifest
# ---------------------------------------------------------------------------


def structure_manifest(model: nn.Module) -> list[dict]:
    """What :func:`apply_structure` needs to recreate the MPO modules of ``model`` (JSON-able), in model order.

    One entry per converted module (``name``, ``class``, ``converter`` and the
    converter's fields), then one per head tied to an MPO embedding. Raises
    ``TypeError`` for an MPO layer no converter owns.
    """
    out, holders, covered = [], {}, []
    for name, m, conv, parametrized in converted_modules(model):
        if parametrized:
            holder = m.parametrizations[_PARAMETRIZED][0]
            entry = {"name": name, "class": "MPOWeight", "converter": conv.name, "parametrized": True,
                     "tensor": _PARAMETRIZED, "transposed": holder.transposed, **_weight_fields(holder)}
            holders[id(holder)] = f"{name}.parametrizations.{_PARAMETRIZED}.0"
        else:
            entry = {"name": name, "class": type(m).__name__, "converter": conv.name, **conv.manifest(m)}
            holders[id(m)] = name
        covered.append(name)
        out.append(entry)
    for name, m in model.named_modules():
        if isinstance(m, MPOModule) and not any(name == c or name.startswith(c + ".") for c in covered):
            raise TypeError(f"cannot save MPO module {name!r} of type {type(m).__name__}: no converter owns it "
                            f"(registered: {sorted(CONVERTERS)}; mpokit.converters.register_converter adds one)")
        if isinstance(m, MPOTiedLinear):
            if id(m.embedding) not in holders:
                raise TypeError(f"cannot save {name!r}: it is tied to an MPO embedding that is not part of the model")
            out.append({"name": name, "class": "MPOTiedLinear", "embedding": holders[id(m.embedding)],
                        "bias": m.bias is not None})
    return out


def _weight_fields(m: MPOWeight) -> dict:
    return {"shape": list(m.shape), "out_modes": list(m.out_modes), "in_modes": list(m.in_modes),
            "bond_dims": list(m.bond_dims), "gauge": m.gauge, "error_bound": float(m.error_bound)}


def _converter_of(entry: dict):
    name = entry.get("converter") or entry.get("source_type") or _V1_CONVERTERS.get(entry.get("class"))
    conv = CONVERTERS.get(name or "")
    if conv is None:
        raise CheckpointError(
            f"{entry.get('name')!r} in {MPO_CONFIG_NAME} was converted by {name or entry.get('class')!r}, which is not a "
            f"registered converter ({sorted(CONVERTERS)}); register it with mpokit.converters.register_converter"
        )
    return conv


def _attach_saved_weight(old: nn.Module, entry: dict, conv) -> None:
    """Parametrize ``old.weight`` with an MPOWeight of the saved structure (cores set by load_state_dict)."""
    if converter_for(old) is not conv:
        raise CheckpointError(f"the checkpoint parametrizes {entry['name']!r} as a {conv.name}, but the model has a "
                              f"{type(old).__name__} there; the weights do not match the model")
    ref = old._parameters.get(_PARAMETRIZED)
    holder = MPOWeight.empty(entry["shape"], entry["out_modes"], entry["in_modes"], entry["bond_dims"],
                             transposed=entry["transposed"], gauge=entry["gauge"],
                             device=None if ref is None else ref.device, dtype=None if ref is None else ref.dtype)
    holder.error_bound = float(entry.get("error_bound", 0.0))
    if tuple(holder.bond_dims) != tuple(entry["bond_dims"]):
        raise CheckpointError(f"{entry['name']}: cannot recreate bond dimensions {entry['bond_dims']} "
                              f"(got {holder.bond_dims})")
    try:
        attach_weight(old, holder, conv.name)
    except ValueError as e:
        raise CheckpointError(f"the checkpoint's MPO weight of {entry['name']!r} does not match the model: {e}") from None


def pruned_modules(model: nn.Module) -> list[str]:
    """Names of the modules whose ``weight`` carries a ``torch.nn.utils.prune`` mask (``weight_orig * weight_mask``)."""
    from torch.nn.utils import prune

    return [n for n, m in model.named_modules() if prune.is_pruned(m) and hasattr(m, "weight_mask")]


def apply_pruning(model: nn.Module, names: list[str]) -> None:
    """Give the modules ``names`` a pruning mask slot (``weight_orig`` / ``weight_mask``, values not set), so a
    pruned checkpoint loads with its masks and its zeros stay zero through later fine-tuning."""
    from torch.nn.utils import prune

    for name in names:
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise CheckpointError(f"the checkpoint has a pruned module {name!r} but the model has no such module; "
                                  "the model (config.json or model=) and mpo_config.json do not belong together") from None
        if not isinstance(getattr(module, "weight", None), torch.Tensor):
            raise CheckpointError(f"the checkpoint's pruned module {name!r} has no weight in the model it is loaded into")
        if not prune.is_pruned(module):
            prune.identity(module, "weight")


def apply_structure(model: nn.Module, manifest: list[dict]) -> None:
    """Convert the dense modules named in ``manifest`` to MPO modules of the saved structure (values not set)."""
    for entry in manifest:
        name = entry["name"]
        try:
            old = model.get_submodule(name)
        except AttributeError:
            raise CheckpointError(
                f"the checkpoint has an MPO layer {name!r} but the model has no such module; "
                "the model (config.json or model=) and mpo_config.json do not belong together"
            ) from None
        if entry["class"] == "MPOTiedLinear":
            emb = model.get_submodule(entry["embedding"])
            bias = getattr(old, "bias", None) if entry["bias"] else None
            _set_submodule(model, name, MPOTiedLinear(emb, bias))
            continue
        conv = _converter_of(entry)
        if entry.get("parametrized"):
            _attach_saved_weight(old, entry, conv)
            continue
        try:
            new = conv.rebuild(entry, old)
        except ValueError as e:
            raise CheckpointError(f"the checkpoint's MPO layer {name!r} does not match the model: {e}") from None
        _set_submodule(model, name, new)


# ---------------------------------------------------------------------------
# save / load
# ---------------------------------------------------------------------------


def state_and_aliases(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``(tensors, aliases)``: the state dict on the CPU with each shared tensor stored once; ``aliases`` maps a
    dropped name to the kept one. Used by the checkpoints and the training state."""
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


def _hf_config(model: nn.Module):
    """``model.config`` when it is a transformers config (it can write itself as JSON), else None."""
    cfg = getattr(model, "config", None)
    return cfg if cfg is not None and hasattr(cfg, "to_json_string") else None


# ---------------------------------------------------------------------------
# what a folder already holds (the overwrite check)
# ---------------------------------------------------------------------------


def _foreign_files(directory: Path) -> list[str]:
    """Names of model and tokenizer files in ``directory`` that another tool wrote (no mpokit manifest there)."""
    names = [n for n in (*FOREIGN_MODEL_FILES, *TOKENIZER_FILES) if (directory / n).is_file()]
    names += sorted(p.name for pattern in FOREIGN_SHARDS for p in directory.glob(pattern) if p.is_file())
    return names


def _safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]] | None:
    """``{name: shape}`` from the header of a safetensors file (the weights are not read), or None if unreadable."""
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            if not 0 < size <= 100_000_000:
                return None
            header = json.loads(f.read(size))
        return {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _module_paths(names, mpo_names: list[str]) -> set[str]:
    """The modules owning the state-dict ``names``: an MPO layer's name for its tensors, else the name's parent.

    The same architecture gives the same set whichever of its modules are MPO layers and at which bonds.
    """
    prefixes = tuple(m + "." for m in mpo_names)
    out = set(mpo_names)
    for name in names:
        owner = next((m for m, p in zip(mpo_names, prefixes) if name.startswith(p)), None)
        out.add(owner if owner is not None else name.rpartition(".")[0])
    return out


def _saved_model_type(directory: Path, meta: dict) -> str | None:
    """``model_type`` of the config a checkpoint holds (the committed copy of format 3), or None."""
    try:
        if meta.get("format_version", 0) >= 3:
            entry = (meta.get("files") or {}).get(CONFIG_NAME)
            path = None if entry is None else _inside(directory, entry.get("file"))
        else:
            path = directory / CONFIG_NAME
        return json.loads(path.read_text(encoding="utf-8")).get("model_type") if path is not None else None
    except (OSError, ValueError, AttributeError):  # CheckpointError (a file outside the folder) is a ValueError
        return None


def _differences_from_saved(directory: Path, meta: dict, model: nn.Module, hf_config, manifest: list[dict]) -> list[str]:
    """How ``model`` differs from the model of the checkpoint ``meta`` describes (empty: the same architecture)."""
    saved_class, new_class = meta.get("model_class"), type(model).__name__
    if saved_class != new_class:
        return [f"it holds a {saved_class}, this is a {new_class}"]
    has_config = meta.get("has_config", True)
    if has_config != (hf_config is not None):
        return [f"its {saved_class} was saved {'with' if has_config else 'without'} a transformers config, this one "
                f"{'has' if hf_config is not None else 'has none'}"]
    if hf_config is not None:
        saved_type = _saved_model_type(directory, meta)
        if saved_type is not None and saved_type != getattr(hf_config, "model_type", None):
            return [f"its config has model_type {saved_type!r}, this model's {hf_config.model_type!r}"]
    try:
        wpath = _inside(directory, (meta.get("weights") or {}).get("file", WEIGHTS_NAME))
    except CheckpointError:
        return []  # a broken manifest of the same class: replacing it repairs the folder
    saved = _safetensors_shapes(wpath)
    if saved is None:
        return []  # unreadable weights of the same class: the same (replacing them repairs the folder)
    saved_aliases = meta.get("aliases") or {}
    saved.update({a: saved[c] for a, c in saved_aliases.items() if c in saved})
    new = {k: tuple(t.shape) for k, t in model.state_dict().items()}  # every name, tied ones too (no copy)
    saved_mpo = [e["name"] for e in meta.get("modules") or [] if isinstance(e, dict) and "name" in e]
    new_mpo = [e["name"] for e in manifest]
    saved_paths, new_paths = _module_paths(saved, saved_mpo), _module_paths(new, new_mpo)
    if saved_paths != new_paths:
        only_saved, only_new = sorted(saved_paths - new_paths), sorted(new_paths - saved_paths)
        parts = []
        if only_saved:
            parts.append(f"it has modules this model lacks ({', '.join(only_saved[:3])}{', ...' if len(only_saved) > 3 else ''})")
        if only_new:
            parts.append(f"this model has modules it lacks ({', '.join(only_new[:3])}{', ...' if len(only_new) > 3 else ''})")
        return parts
    inside_mpo = tuple(m + "." for m in (*saved_mpo, *new_mpo))
    return [f"{k} has shape {saved[k]} there, {new[k]} here" for k in sorted(saved.keys() & new.keys())
            if not k.startswith(inside_mpo) and saved[k] != new[k]][:3]


def check_save_target(model: nn.Module, directory: str | os.PathLike, *, overwrite: bool = False) -> None:
    """Raise :class:`FolderInUseError` when :func:`save_pretrained` would refuse to save ``model`` into
    ``directory`` (it holds another model; see there); nothing when ``overwrite`` or the folder is free or holds
    this model. Reads only file names, the manifest, the config and the weights file's header, so a job can call
    it before any work, e.g. ``check_save_target(model, out / "best")`` before training."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}; e.g. check_save_target(model, 'ckpt')")
    if not isinstance(overwrite, bool):
        raise TypeError(f"overwrite must be True or False, got {overwrite!r}; e.g. save_pretrained(model, 'ckpt', "
                        "overwrite=True)")
    directory = Path(directory)
    if overwrite or not directory.is_dir():
        return
    hf_config = _hf_config(model)
    how = (f"pass overwrite=True to replace it (its tokenizer files go too, unless tokenizer= gives new ones), or "
           f"save into another folder, e.g. {str(directory) + '_new'!r}")
    if (directory / MPO_CONFIG_NAME).is_file():
        try:
            meta = _read_meta(directory)
        except CheckpointError as e:
            raise FolderInUseError(f"{str(directory)!r} holds an mpokit checkpoint that cannot be read ({e}), so it "
                                   f"is unknown whether it is this model; {how}") from None
        differences = _differences_from_saved(directory, meta, model, hf_config, structure_manifest(model))
        if differences:
            raise FolderInUseError(f"{str(directory)!r} holds a checkpoint of another model: {'; '.join(differences)}. "
                                   f"Saving would replace it; {how}")
        return
    foreign = _foreign_files(directory)
    if foreign:
        raise FolderInUseError(
            f"{str(directory)!r} holds another model's files ({', '.join(foreign[:6])}{', ...' if len(foreign) > 6 else ''}) "
            f"and no mpokit checkpoint; saving there would mix this model with them; {how}")


def _remove_stale(directory: Path, hf_config) -> None:
    """After an overwriting save: remove the old model's foreign model files (``config.json`` only when the new
    model has no transformers config; otherwise it is rewritten) and every tokenizer file."""
    stale = [n for n in FOREIGN_MODEL_FILES if n != CONFIG_NAME or hf_config is None] + list(TOKENIZER_FILES)
    for name in stale:
        (directory / name).unlink(missing_ok=True)
    for pattern in FOREIGN_SHARDS:
        for p in directory.glob(pattern):
            if p.is_file():
                p.unlink()


def save_pretrained(model: nn.Module, directory: str | os.PathLike, *, tokenizer=None, overwrite: bool = False) -> Path:
    """Save any ``model`` (compressed or not) to ``directory``; returns the folder. See the module docstring.

    ``config.json`` is written when the model has a transformers config; a model
    without one is loaded back with ``from_pretrained(directory, model=<fresh dense model>)``.

    A folder that holds another model (an mpokit checkpoint of another class,
    model type or architecture, or a transformers / PEFT model or tokenizer files
    without an mpokit checkpoint) is refused with :class:`FolderInUseError`
    before anything is written (:func:`check_save_target`), unless ``overwrite=True``. Then the old model's files and its tokenizer
    files (:data:`TOKENIZER_FILES`) are removed after the new checkpoint is
    committed, and ``tokenizer`` (if given) is saved in their place. The same
    model (same class and architecture) may always be saved into its own folder.
    """
    from safetensors.torch import save as st_save

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}; e.g. save_pretrained(model, 'ckpt')")
    check_save_target(model, directory, overwrite=overwrite)
    hf_config = _hf_config(model)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    manifest = structure_manifest(model)
    tensors, aliases = state_and_aliases(model)
    payload = st_save(tensors, metadata={"format": "pt", "producer": "mpokit"})
    mpo_config = getattr(model, "mpo_config", None)
    blobs = {WEIGHTS_NAME: payload}
    if hf_config is not None:
        blobs[CONFIG_NAME] = hf_config.to_json_string().encode("utf-8")
    meta = {
        "format": "mpokit",
        "format_version": FORMAT_VERSION,
        "model_class": type(model).__name__,
        "model_module": type(model).__module__,
        "has_config": hf_config is not None,
        "mpo_config": mpo_config.to_dict() if isinstance(mpo_config, MPOConfig) else None,
        "modules": manifest,
        "aliases": aliases,
        "trainable": sorted(n for n, p in model.named_parameters() if p.requires_grad),
    }
    pruned = pruned_modules(model)
    if pruned:
        meta["pruned"] = pruned
    json.dumps(meta)  # a field that is not JSON fails here, before anything is written
    commit_file_set(directory, MPO_CONFIG_NAME, blobs, meta, stale_roles=(WEIGHTS_NAME, CONFIG_NAME))
    (directory / WEIGHTS_NAME).unlink(missing_ok=True)  # the fixed-name weights of a format-1/2 save
    if overwrite:
        _remove_stale(directory, hf_config)
    if hf_config is not None:  # a plain copy for other tools; the loader reads the committed one
        atomic_write_text(directory / CONFIG_NAME, hf_config.to_json_string())
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
    if meta.get("format_version") not in READABLE_VERSIONS:
        raise CheckpointError(
            f"{path} has format_version {meta.get('format_version')!r}; this mpokit reads versions {READABLE_VERSIONS}"
        )
    if meta["format_version"] >= 3:
        files = meta.get("files")
        if not isinstance(files, dict) or WEIGHTS_NAME not in files:
            raise CheckpointError(f"{path} lists no weights file; the checkpoint is incomplete or corrupt")
        meta["weights"] = files[WEIGHTS_NAME]
    for key in ("model_class", "modules", "aliases", "weights"):
        if key not in meta:
            raise CheckpointError(f"{path} is missing the field {key!r}; the checkpoint is incomplete or corrupt")
    return meta


def _inside(directory: Path, name) -> Path:
    """``directory / name``, refused when ``name`` leads outside ``directory``."""
    path = (directory / str(name)).resolve()
    if path.parent != directory.resolve():
        raise CheckpointError(f"{directory / MPO_CONFIG_NAME} names the file {name!r}, which lies outside {directory}; "
                              "refusing to read it")
    return path


def read_checkpoint_config(directory: str | os.PathLike, meta: dict | None = None):
    """The transformers config of the checkpoint in ``directory``: the committed, checksummed copy (format 3),
    or ``config.json`` of older formats. ``None`` for a model saved without one."""
    import transformers

    directory = Path(directory)
    meta = _read_meta(directory) if meta is None else meta
    if not meta.get("has_config", True):
        return None
    if meta["format_version"] < 3:
        if not (directory / CONFIG_NAME).is_file():
            return None
        try:
            return transformers.AutoConfig.from_pretrained(str(directory))
        except Exception as e:  # noqa: BLE001 - report as a checkpoint problem
            raise CheckpointError(f"{directory / CONFIG_NAME} cannot be read as a transformers config: {e}") from None
    entry = meta["files"].get(CONFIG_NAME)
    if entry is None:
        return None
    path = _inside(directory, entry["file"])
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; the checkpoint folder is incomplete")
    data = path.read_bytes()
    if len(data) != entry["bytes"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise CheckpointError(f"{path} is corrupt or was changed: its size or SHA-256 does not match {MPO_CONFIG_NAME}")
    try:
        values = json.loads(data)
        return transformers.CONFIG_MAPPING[values["model_type"]].from_dict(values)
    except Exception as e:  # noqa: BLE001 - report as a checkpoint problem
        raise CheckpointError(f"{path} cannot be read as a transformers config: {e}") from None


# ---------------------------------------------------------------------------
# reading the weights: checked, then memory-mapped
# ---------------------------------------------------------------------------

_CHUNK_BYTES = 1 << 20


def _identity(st: os.stat_result) -> tuple:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _read_verified(path: Path, expected: dict) -> dict[str, torch.Tensor]:
    """The tensors of the safetensors file ``path``, after checking its size and SHA-256 against ``expected``
    (``{"bytes", "sha256"}``, from the manifest).

    The file is hashed by streaming reads, then opened with ``safetensors.safe_open``: the tensors are views of a
    private memory map of the file (pages are read when first touched, as transformers loads weights), so no copy
    of the file is made. The file must not change in between (same inode, size and modification time), else
    :class:`CheckpointError`. mpokit never rewrites a weights file in place (a save writes a new file and
    removes the old one, which stays readable while mapped).
    """
    from safetensors import safe_open

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        checked = _identity(os.fstat(f.fileno()))
        if checked[2] != expected["bytes"]:
            raise CheckpointError(f"{path} is truncated or was replaced: {checked[2]:,} bytes, but {MPO_CONFIG_NAME} "
                                  f"records {expected['bytes']:,}")
        while chunk := f.read(_CHUNK_BYTES):
            digest.update(chunk)
    if digest.hexdigest() != expected["sha256"]:
        raise CheckpointError(f"{path} is corrupt: SHA-256 {digest.hexdigest()[:16]}... does not match "
                              f"{expected['sha256'][:16]}... recorded in {MPO_CONFIG_NAME}")
    try:
        with safe_open(str(path), framework="pt") as st:
            opened = _identity(os.stat(path))
            tensors = {name: st.get_tensor(name) for name in st.keys()}
    except Exception as e:  # noqa: BLE001 - a well-hashed but unreadable file (SafetensorError, OSError, ...)
        raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from None
    if opened != checked:
        raise CheckpointError(f"{path} changed while it was being loaded (another process wrote it); load it again")
    return tensors


def load_checked_weights(directory: str | os.PathLike, meta: dict | None = None) -> dict[str, torch.Tensor]:
    """The tensors of ``directory/model.safetensors`` after checking its size and SHA-256 against ``mpo_config.json``."""
    directory = Path(directory)
    meta = _read_meta(directory) if meta is None else meta
    wpath = _inside(directory, meta["weights"]["file"])
    if not wpath.is_file():
        raise CheckpointError(f"{wpath} is missing; the checkpoint folder is incomplete")
    return _read_verified(wpath, meta["weights"])


# ---------------------------------------------------------------------------
# the skeleton: the model with its parameters on the meta device
# ---------------------------------------------------------------------------


class _EmptyOnMeta(TorchFunctionMode):
    """While active, ``torch.empty`` / ``torch.empty_strided`` calls that name no device allocate on the meta device.

    Modules create their parameters uninitialised and fill them in place (``nn.Parameter(torch.empty(out, in))``,
    then an init), which on the meta device allocates and computes nothing. Tensors computed from values
    (``torch.arange``, ``torch.zeros``, ``torch.tensor``: rotary frequencies, position ids, scales) stay real, so
    the non-persistent buffers, which no checkpoint holds, keep the values their constructor gives them.
    """

    _UNINITIALISED = (torch.empty, torch.empty_strided)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self._UNINITIALISED and kwargs.get("device") is None:
            kwargs = {**kwargs, "device": "meta"}
        return func(*args, **kwargs)


def _non_persistent_buffers(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [(f"{prefix}.{name}" if prefix else name, m._buffers[name])
            for prefix, m in model.named_modules() for name in m._non_persistent_buffers_set
            if m._buffers.get(name) is not None]


def _build_from_config(directory: Path, meta: dict) -> nn.Module:
    """The transformers model of the checkpoint's config, parameters on the meta device (see :class:`_EmptyOnMeta`).

    A constructor that cannot run so (it reads its parameters' values, or computes a non-persistent buffer from an
    uninitialised tensor) is run again with real tensors, with a warning: loading then holds the dense model.
    """
    cls_name = meta["model_class"]
    hf_config = read_checkpoint_config(directory, meta)
    if hf_config is None:
        raise CheckpointError(
            f"{directory} holds a {cls_name} saved without a transformers {CONFIG_NAME}, so it cannot be built "
            f"from the folder; pass a freshly built dense model: from_pretrained({str(directory)!r}, model={cls_name}(...))"
        )
    import transformers

    cls = getattr(transformers, cls_name, None)
    if cls is None:
        raise CheckpointError(
            f"model class {cls_name!r} is not in this transformers version; pass a freshly built dense model "
            f"with from_pretrained({str(directory)!r}, model=...)"
        )

    def build() -> nn.Module:
        return cls._from_config(hf_config) if hasattr(cls, "_from_config") else cls(hf_config)

    try:
        with _EmptyOnMeta():
            model = build()
        empty = [name for name, b in _non_persistent_buffers(model) if b.is_meta]
        reason = f"its non-persistent buffers {empty[:3]} are computed from uninitialised tensors" if empty else None
    except Exception as e:  # noqa: BLE001 - a constructor that needs the values of its parameters
        reason = f"its constructor fails on the meta device ({type(e).__name__}: {e})"
    if reason is None:
        return model
    model = build()
    warnings.warn(f"{cls_name} is built with real (randomly initialised) weights before loading {directory}: {reason}; "
                  "loading needs the memory of the dense model", stacklevel=3)
    return model


def _check_skeleton(model, meta: dict, directory: Path) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a freshly built dense nn.Module, got {type(model).__name__}; "
                        f"e.g. from_pretrained({str(directory)!r}, model=MyModel())")
    if type(model).__name__ != meta["model_class"]:
        raise CheckpointError(f"{directory} holds a {meta['model_class']}, but model= is a {type(model).__name__}; "
                              f"pass a freshly built {meta['model_class']}")
    converted = [name for name, *_ in converted_modules(model)]
    converted += [name for name, m in model.named_modules() if isinstance(m, MPOTiedLinear)]
    if converted:
        raise CheckpointError(f"model= already holds MPO modules ({converted[:3]}); pass a freshly built dense "
                              f"{meta['model_class']}: from_pretrained recreates the MPO modules")
    return model


def _tied_groups(model: nn.Module) -> list[list[tuple[nn.Module, str, str]]]:
    """``[(module, attribute, state name), ...]`` per Parameter that several modules hold (tied weights), in the
    order ``load_state_dict`` visits them."""
    slots: dict[int, dict[tuple[int, str], tuple[nn.Module, str, str]]] = {}
    for prefix, m in model.named_modules(remove_duplicate=False):
        for name, p in m._parameters.items():
            if p is not None:
                key = f"{prefix}.{name}" if prefix else name
                slots.setdefault(id(p), {}).setdefault((id(m), name), (m, name, key))
    return [list(group.values()) for group in slots.values() if len(group) > 1]


def _retie(groups: list[list[tuple[nn.Module, str, str]]]) -> None:
    """After ``load_state_dict(assign=True)`` gave each slot of a tied group its own Parameter: one for all, the
    one the last slot got (a copying load leaves that value in the shared Parameter)."""
    for group in groups:
        last_module, last_name, _ = group[-1]
        shared = last_module._parameters[last_name]
        for m, name, _ in group[:-1]:
            setattr(m, name, shared)


def _to_skeleton(state: dict[str, torch.Tensor], model: nn.Module, device) -> None:
    """Convert, one tensor at a time, each tensor of ``state`` to the dtype of the model's tensor of that name (as a
    copying ``load_state_dict`` casts it) and to ``device``."""
    targets = model.state_dict(keep_vars=True)
    for name in list(state):
        ref = targets.get(name)
        state[name] = state[name].to(device=device, dtype=None if ref is None else ref.dtype)


def _inference_setter(inference, max_memory):
    """``mpokit.inference.set_inference_mode`` when ``inference`` names a policy (checked here), else None."""
    if inference is None:
        if max_memory is not None:
            raise ValueError(f"max_memory={max_memory!r} is the budget of an inference policy, so it needs inference= "
                             "too; e.g. from_pretrained(folder, inference='auto', max_memory='300MB')")
        return None
    from . import inference as policies  # lazy: only loads that set a policy need it

    if not isinstance(inference, str) or inference not in policies.POLICIES:
        raise ValueError(f"inference must be one of {policies.POLICIES} or None, got {inference!r}; "
                         "e.g. from_pretrained(folder, inference='auto')")
    return policies.set_inference_mode


def _check_device_dtype(device, dtype):
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating torch.dtype or None, got {dtype!r}; e.g. dtype=torch.bfloat16")
    if device is None:
        return None
    try:
        return torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be a torch.device or a device string, got {device!r}; e.g. device='cpu'") from None


def from_pretrained(directory: str | os.PathLike, model: nn.Module | None = None, *, device=None, dtype=None,
                    inference: str | None = None, max_memory: int | str | None = None) -> nn.Module:
    """Load a model saved by :func:`save_pretrained` (in eval mode, trainable flags as saved).

    Without ``model`` the model is built from the checkpoint's transformers config with its parameters on the meta
    device (no values), the MPO modules are created at their saved structure (on the meta device too), and every
    tensor read from the weights file is assigned in place (``load_state_dict(assign=True)``), cast to the dtype the
    model gives it and moved to ``device``: the dense weights of the compressed matrices are never allocated, and
    the loaded tensors are the only copy of the weights. Weights tied in the model (a dense head tied to the word
    embedding) are tied again afterwards; a head tied to an MPO embedding (``MPOTiedLinear``) shares its cores.

    With ``model`` (a freshly built dense model of the saved class, for models without a transformers config, like
    PEFT's ``from_pretrained(model, ...)``) that model is converted and loaded in place (copying the tensors into
    its parameters) and returned. A ``model`` built on the meta device (``with torch.device("meta"): Net()``) is
    loaded by assignment instead; its non-persistent buffers must be real (the checkpoint does not hold them).

    ``dtype``: the parameters' dtype (default: as the model is built). ``device``: where the model ends up.
    ``inference`` (one of :data:`mpokit.inference.POLICIES`) and ``max_memory`` (bytes, or ``"300MB"``) then set
    the inference policy with :func:`mpokit.inference.set_inference_mode`.
    """
    set_inference_mode = _inference_setter(inference, max_memory)
    device = _check_device_dtype(device, dtype)
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{str(directory)!r} is not a folder; pass the folder given to save_pretrained")
    meta = _read_meta(directory)
    state = load_checked_weights(directory, meta)
    model = _build_from_config(directory, meta) if model is None else _check_skeleton(model, meta, directory)
    if dtype is not None:
        model = model.to(dtype=dtype)
    apply_structure(model, meta["modules"])
    apply_pruning(model, meta.get("pruned", []))
    assign = any(t.is_meta for t in itertools.chain(model.parameters(), model.buffers()))
    tied = _tied_groups(model) if assign else []
    if assign:
        _to_skeleton(state, model, device)
    tied_name = {key: k for k, group in enumerate(tied) for _, _, key in group}
    for alias, canonical in meta["aliases"].items():
        if canonical not in state:
            raise CheckpointError(f"alias {alias!r} -> {canonical!r}: {canonical!r} is not in {WEIGHTS_NAME}")
        shared = not assign or tied_name.get(alias, -1) == tied_name.get(canonical, -2)
        state[alias] = state[canonical] if shared else state[canonical].clone()  # assigned: one storage per Parameter
    try:
        result = model.load_state_dict(state, strict=False, assign=assign)
    except RuntimeError as e:
        raise CheckpointError(f"{directory} does not match the model built from its config: {e}") from None
    missing = [k for k in result.missing_keys]
    if missing or result.unexpected_keys:
        raise CheckpointError(
            f"{directory} does not match the {meta['model_class']} it was loaded into: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected {result.unexpected_keys[:5]}"
        )
    if assign:
        _retie(tied)
        empty = [n for n, t in itertools.chain(model.named_parameters(), model.named_buffers()) if t.is_meta]
        if empty:
            raise CheckpointError(f"{empty[:5]} of the {meta['model_class']} are on the meta device and {directory} "
                                  "holds no value for them (non-persistent buffers); build model= with real buffers")
    if meta.get("mpo_config") is not None:
        model.mpo_config = MPOConfig.from_dict(meta["mpo_config"])
        set_recompute(model, model.mpo_config.recompute)
    trainable = set(meta.get("trainable", []))
    for name, p in model.named_parameters():
        p.requires_grad_(name in trainable)
    if device is not None:
        model = model.to(device)
    model.eval()
    if set_inference_mode is not None:
        set_inference_mode(model, inference, max_memory=max_memory)
    return model
