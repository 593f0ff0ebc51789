"""The best-model checkpoint of a fine-tuning job: an mpokit checkpoint (dense or MPO) or a PEFT adapter folder.

The resume state lives in the training-state format of :mod:`mpokit.training.state`.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["save_model", "load_best"]


def save_model(model, directory: Path, tokenizer) -> None:
    if hasattr(model, "peft_config"):  # peft: adapter weights as safetensors + adapter_config.json
        model.save_pretrained(str(directory), safe_serialization=True)
        tokenizer.save_pretrained(str(directory))
        return
    from ..io import save_pretrained

    save_pretrained(model, directory, tokenizer=tokenizer)


def load_best(model, directory: Path) -> None:
    """Load the best weights back into the live ``model`` (same structure)."""
    if hasattr(model, "peft_config"):
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(model, load_file(str(directory / "adapter_model.safetensors")))
        return
    from ..io import load_checked_weights, _read_meta

    meta = _read_meta(directory)
    state = load_checked_weights(directory, meta)
    for alias, canonical in meta["aliases"].items():
        state[alias] = state[canonical]
    model.load_state_dict(state, strict=True)
