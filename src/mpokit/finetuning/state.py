"""The best-model checkpoint of a fine-tuning job: an mpokit checkpoint (dense or MPO) or a PEFT adapter folder.

A PEFT folder also gets ``mpokit_base.json``: where its base model came from (path, kind, task, GGUF file),
so that ``mpokit evaluate`` can rebuild it. The resume state lives in the training-state format of
:mod:`mpokit.training.state`.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["BASE_SOURCE_NAME", "save_model", "load_best"]

BASE_SOURCE_NAME = "mpokit_base.json"


def save_model(model, directory: Path, tokenizer, *, source: dict | None = None) -> None:
    """Save the live ``model`` (with its tokenizer) to ``directory``."""
    if hasattr(model, "peft_config"):  # peft: adapter weights as safetensors + adapter_config.json
        from ..atomic import atomic_write_text

        model.save_pretrained(str(directory), safe_serialization=True)
        tokenizer.save_pretrained(str(directory))
        if source is not None:
            atomic_write_text(Path(directory) / BASE_SOURCE_NAME, json.dumps(source, indent=1))
        return
    from ..io import save_pretrained

    save_pretrained(model, directory, tokenizer=tokenizer)


def load_best(model, directory: Path) -> None:
    """Load the best weights back into the live ``model`` (same structure)."""
    if hasattr(model, "peft_config"):
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(model, load_file(str(Path(directory) / "adapter_model.safetensors")))
        return
    from ..io import _read_meta, load_checked_weights

    meta = _read_meta(Path(directory))
    state = load_checked_weights(directory, meta)
    for alias, canonical in meta["aliases"].items():
        state[alias] = state[canonical]
    model.load_state_dict(state, strict=True)
