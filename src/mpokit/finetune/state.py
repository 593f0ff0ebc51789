"""Fine-tuning checkpoints: the resume state (model, optimizer and scheduler, RNG) and the best model.

Tensors go to safetensors, everything else to JSON, written atomically; nothing is pickled.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

__all__ = ["save_training_state", "load_training_state", "save_model", "load_best"]


def _optimizer_state_tensors(optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Flatten an optimizer state_dict into safetensors tensors + JSON (no pickle)."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"state.{idx}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{k}"] = v
    groups = [{k: v for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def _load_optimizer_state(optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for key, t in tensors.items():
        _, idx, k = key.split(".", 2)
        state.setdefault(int(idx), {})[k] = t
    for key, v in meta["scalars"].items():
        idx, k = key.split(".", 1)
        state.setdefault(int(idx), {})[k] = v
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_training_state(directory: Path, model, optimizer, scheduler, trainer_state: dict) -> None:
    """Resume checkpoint: model tensors, optimizer tensors (safetensors) and trainer_state.json; atomic files."""
    from safetensors.torch import save as st_save

    from ..io import _state_and_aliases, atomic_write_bytes, atomic_write_text

    directory.mkdir(parents=True, exist_ok=True)
    tensors, aliases = _state_and_aliases(model)
    atomic_write_bytes(directory / "model_state.safetensors", st_save(tensors))
    opt_tensors, opt_meta = _optimizer_state_tensors(optimizer)
    atomic_write_bytes(directory / "optimizer.safetensors", st_save(opt_tensors) if opt_tensors else st_save({"_empty": torch.zeros(1)}))
    payload = dict(trainer_state, aliases=aliases, optimizer=opt_meta,
                   scheduler=scheduler.state_dict(),  # LambdaLR: lr_lambdas is [None] for plain functions
                   rng={"torch": torch.get_rng_state().tolist(), "python": list(random.getstate()[1])})
    atomic_write_text(directory / "trainer_state.json", json.dumps(payload))


def load_training_state(directory: Path, model, optimizer, scheduler) -> dict:
    from safetensors.torch import load_file

    from ..io import CheckpointError

    try:
        state = json.loads((directory / "trainer_state.json").read_text())
        tensors = load_file(str(directory / "model_state.safetensors"))
        opt_tensors = load_file(str(directory / "optimizer.safetensors"))
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"cannot resume from {directory}: {e}; delete it or run without --resume") from None
    for alias, canonical in state["aliases"].items():
        tensors[alias] = tensors[canonical]
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"resume checkpoint {directory} does not match this model/method: missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}")
    opt_tensors.pop("_empty", None)
    _load_optimizer_state(optimizer, opt_tensors, state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(torch.tensor(state["rng"]["torch"], dtype=torch.uint8))
    return state


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
