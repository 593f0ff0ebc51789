"""What is being squeezed, told from the files alone (nothing loaded): the source model's identity and
whether it already holds a trained head for the task.

* :func:`source_identity`: the path, kind and SHA-256 of the weights of a model source
  (:func:`mpokit.loading.identify_source`: a transformers folder, an mpokit checkpoint or a ``.gguf``
  file). Reports record it, and a squeeze checkpoint of another source is refused with it.
* :func:`task_head`: whether the source already holds the task's head (a model fine-tuned for the task,
  which ``mpokit squeeze`` does not fine-tune again) and the checks that need only its config.
* :func:`holds_mpo_layers`: whether the source is an mpokit checkpoint with MPO layers (every model
  :func:`mpokit.save_pretrained` writes is an mpokit checkpoint, dense ones too).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

__all__ = ["weight_files", "source_identity", "task_head", "holds_mpo_layers", "HEAD_SUFFIXES"]

HEAD_SUFFIXES = {
    "classify": ("ForSequenceClassification",),
    "regress": ("ForSequenceClassification",),
    "lm": ("ForCausalLM", "LMHeadModel"),
}
"""Architecture class-name endings (``config.json``'s ``architectures``) that hold each task's head."""

_CHUNK = 1 << 22


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def weight_files(src) -> list[Path]:
    """The files that hold the weights of ``src`` (a :class:`mpokit.loading.ModelSource`): the ``.gguf`` file;
    the weights file an mpokit checkpoint's ``mpo_config.json`` names; a transformers folder's ``model.safetensors`` or
    ``pytorch_model.bin``, or a sharded index with every shard it names."""
    from ..loading import WEIGHT_FILES

    if src.kind == "gguf":
        return [src.path]
    if src.kind == "mpokit":  # the weights file its mpo_config.json names (format 3: a name with its hash)
        from ..io import WEIGHTS_NAME, _read_meta

        name = str((_read_meta(src.folder).get("weights") or {}).get("file") or WEIGHTS_NAME)
        path = src.folder / name
        if path.parent != src.folder or not path.is_file():
            raise FileNotFoundError(f"the mpokit checkpoint {str(src.folder)!r} names the weights file {name!r}, "
                                    f"which is not in the folder; save the model again with mpokit.save_pretrained")
        return [path]
    for name in WEIGHT_FILES:
        path = src.folder / name
        if not path.is_file():
            continue
        if not name.endswith(".index.json"):
            return [path]
        try:
            shards = sorted(set(json.loads(path.read_text(encoding="utf-8"))["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ValueError(f"{str(path)!r} is not a weight index (JSON with a 'weight_map'); save the model again "
                             f"with model.save_pretrained(folder)") from None
        missing = [s for s in shards if not (src.folder / s).is_file()]
        if missing:
            raise FileNotFoundError(f"{str(path)!r} names shards that are missing: {missing[:3]}")
        return [path] + [src.folder / s for s in shards]
    raise FileNotFoundError(f"no weights in {str(src.folder)!r}: none of {', '.join(WEIGHT_FILES)}")


def source_identity(source: str | os.PathLike) -> dict:
    """``{"path", "kind", "sha256", "files"}`` of a model source; ``files`` maps each weight file's name to its
    SHA-256. ``sha256`` is that file's hash for a single file (what ``sha256sum`` prints), else the SHA-256
    of the lines ``"<sha256>  <name>\\n"`` of all of them in name order (``sha256sum``'s own listing)."""
    from ..loading import identify_source

    src = identify_source(source)
    files = {str(p.relative_to(src.folder)): _sha256_file(p) for p in weight_files(src)}
    if len(files) == 1:
        combined = next(iter(files.values()))
    else:
        listing = "".join(f"{sha}  {name}\n" for name, sha in sorted(files.items()))
        combined = hashlib.sha256(listing.encode("utf-8")).hexdigest()
    return {"path": str(src.path.resolve()), "kind": src.kind, "sha256": combined, "files": files}


def holds_mpo_layers(source: str | os.PathLike) -> bool:
    """Whether ``source`` is an mpokit checkpoint whose structure manifest lists MPO modules (read from
    ``mpo_config.json`` only)."""
    from ..io import _read_meta
    from ..loading import identify_source

    src = identify_source(source)
    return src.kind == "mpokit" and bool(_read_meta(src.folder).get("modules"))


def _config(src):
    from transformers import AutoConfig

    kwargs = {"gguf_file": src.gguf_file} if src.gguf_file else {}
    try:
        return AutoConfig.from_pretrained(str(src.folder), **kwargs)
    except Exception as e:  # noqa: BLE001 - unknown model types, corrupt JSON or GGUF metadata
        raise ValueError(f"the config of {str(src.path)!r} cannot be read: {type(e).__name__}: {e}") from None


def task_head(source: str | os.PathLike, task: str, data=None) -> tuple[bool, str]:
    """``(has_head, why)``: whether ``source`` already holds a head for ``task`` (``classify``, ``regress``,
    ``lm``), from its files and config only.

    * an mpokit checkpoint is one saved model: it has its head (:func:`mpokit.loading.load_model` refuses
      a task it was not saved for);
    * a transformers folder has one when ``config.json``'s ``architectures`` name a class of the task
      (:data:`HEAD_SUFFIXES`);
    * a ``.gguf`` file holds a causal LM: a head for ``lm`` only.

    With a head and ``data`` (a :class:`~mpokit.data.TaskData`): regress needs one output, and classify
    data is mapped to the head's own classes (:func:`mpokit.evaluation.align_labels`; a class the head
    does not know raises a ValueError). A ValueError also names a classify / regress mix-up.
    """
    from types import SimpleNamespace

    from ..loading import identify_source

    if task not in HEAD_SUFFIXES:
        raise ValueError(f"task must be one of {sorted(HEAD_SUFFIXES)}, got {task!r}; e.g. task='classify'")
    src = identify_source(source)
    if src.kind == "gguf":
        return task == "lm", ("a GGUF causal LM" if task == "lm" else "a GGUF causal LM: a new head is drawn")
    config = _config(src)
    if src.kind == "mpokit":
        has, why = True, "an mpokit checkpoint (saved with its head)"
    else:
        archs = [str(a) for a in (getattr(config, "architectures", None) or [])]
        heads = [a for a in archs if a.endswith(HEAD_SUFFIXES[task])]
        if not heads:
            return False, f"architectures {archs or 'not recorded'}: a new {task} head is drawn"
        has, why = True, f"architectures {heads}"
    if task in ("classify", "regress"):
        regression = getattr(config, "problem_type", None) == "regression"
        if task == "regress" and (config.num_labels != 1 or getattr(config, "problem_type", None) not in (None, "regression")):
            raise ValueError(f"{str(src.path)!r} holds a classification head with {config.num_labels} classes, not a "
                             f"regression head (one output); use --task classify, or a model without a task head")
        if task == "classify" and regression:
            raise ValueError(f"{str(src.path)!r} holds a regression head; use --task regress for it")
        if task == "classify" and data is not None:
            from ..evaluation import align_labels

            align_labels(SimpleNamespace(config=config), data)
        why += f", {config.num_labels} output(s)"
    return has, why
