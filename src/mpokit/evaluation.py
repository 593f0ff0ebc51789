"""Evaluate a saved model (dense, MPO or LoRA) on data, with the task's metrics.

* :func:`load_for_evaluation`: an mpokit checkpoint or transformers folder or ``.gguf`` file through
  :func:`mpokit.loading.load_model`; a PEFT adapter folder written by ``mpokit finetune --method lora``
  (``adapter_config.json`` + ``mpokit_base.json``) as its base model with the adapter on top.
* :func:`align_labels`: classification labels of the data mapped to the model's own ``label2id``, so a
  file with fewer classes than the training data, or in another order, is scored correctly.
* :func:`evaluate_model`: the metrics of every held-out split the data has (validation, test), or of the
  data file itself when it has none.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

__all__ = ["load_for_evaluation", "align_labels", "evaluate_model", "model_task"]


def load_for_evaluation(source: str, task: str):
    """``(model, tokenizer, kind)`` for ``task``; ``kind`` is ``"peft"`` for an adapter folder, else the source kind."""
    from .finetuning.state import BASE_SOURCE_NAME
    from .loading import load_model

    folder = Path(source)
    if folder.is_dir() and (folder / "adapter_config.json").is_file():
        base_file = folder / BASE_SOURCE_NAME
        if not base_file.is_file():
            raise ValueError(f"{folder} is a PEFT adapter folder without {BASE_SOURCE_NAME} (where its base model "
                             "lives); evaluate adapters written by `mpokit finetune --method lora`")
        try:
            base = json.loads(base_file.read_text())
            base_path = Path(base["path"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{base_file} is not a valid {BASE_SOURCE_NAME} ({type(exc).__name__}: {exc}); it "
                             "should hold the base model's path, as `mpokit finetune --method lora` writes it") from None
        if not base_path.is_absolute() and not base_path.exists() and (folder / base_path).exists():
            base_path = folder / base_path  # a relative path written elsewhere: try it beside the adapter
        if not base_path.exists():
            raise FileNotFoundError(f"the base model of the adapter {str(folder)!r} does not exist: {BASE_SOURCE_NAME} "
                                    f"names {str(base_path)!r}; put the base model back there, or edit the \"path\" "
                                    f"in {base_file}")
        if base.get("gguf_file") and base_path.is_dir():
            base_path = base_path / base["gguf_file"]
        loaded = load_model(base_path, task=task, with_tokenizer=False, **_adapter_labels(folder, base, task))
        from peft import PeftModel

        model = PeftModel.from_pretrained(loaded.model, str(folder)).eval()
        return model, _adapter_tokenizer(folder), "peft"
    loaded = load_model(source, task=task)
    return loaded.model, loaded.tokenizer, loaded.kind


def _adapter_tokenizer(folder: Path):
    """The tokenizer saved beside an adapter (an adapter folder is no model source for load_tokenizer)."""
    from .loading import ModelSource, _check_tokenizer_files, _read_tokenizer

    src = ModelSource("transformers", folder, folder)
    _check_tokenizer_files(src)
    return _read_tokenizer(src)


def _adapter_labels(folder: Path, base: dict, task: str) -> dict:
    """Head size and class names of an adapter's classifier: the saved head decides the size, ``id2label``
    in ``mpokit_base.json`` (written since it records them) the names, so labels are aligned as for other models."""
    if task != "classify":
        return {}
    head = _head_of(folder)
    names = base.get("id2label")
    if isinstance(names, dict) and (not head or head["num_labels"] == len(names)):
        return {"id2label": names}
    return head


def _head_of(adapter_folder: Path) -> dict:
    """The classification head size recorded beside an adapter (the saved head weights decide it)."""
    from safetensors import safe_open

    with safe_open(str(adapter_folder / "adapter_model.safetensors"), "pt") as f:
        for key in f.keys():
            if key.endswith(("classifier.weight", "score.weight", "classifier.out_proj.weight")):
                return {"num_labels": int(f.get_slice(key).get_shape()[0])}
    return {}


def align_labels(model, data) -> None:
    """Re-map the class ids of ``data`` (a classify :class:`~mpokit.data.TaskData`) to the model's ``label2id``.

    A model with generic names (``LABEL_0``...) keeps the data's ids, which must then fit its head. A
    class the model does not know raises a ValueError naming it and the model's classes.
    """
    import datasets

    from .tasks.base import unwrap_model

    config = unwrap_model(model).config
    names = [config.id2label[i] for i in range(config.num_labels)]
    generic = all(str(n) == f"LABEL_{i}" for i, n in enumerate(names))
    if generic:
        if len(data.label_names) > config.num_labels:
            raise ValueError(f"the data has {len(data.label_names)} classes {data.label_names}, the model's head "
                             f"{config.num_labels}")
        return
    index = {str(n): i for i, n in enumerate(names)}
    unknown = [n for n in data.label_names if str(n) not in index]
    if unknown:
        raise ValueError(f"the data has classes {unknown} that the model does not know; its classes are {names}")
    mapping = [index[str(n)] for n in data.label_names]
    column = data.label_column
    from .data.sources import _quiet_progress

    with _quiet_progress():
        for split, ds in data.splits().items():
            features = ds.features.copy()  # the model's classes: ids may exceed the data's own class count
            features[column] = datasets.ClassLabel(names=[str(n) for n in names])
            setattr(data, split, ds.map(lambda row: {column: mapping[row[column]]}, features=features))
    data.label_names = [str(n) for n in names]


_HEADS = {"classify": "ForSequenceClassification", "regress": "ForSequenceClassification", "lm": ("ForCausalLM", "LMHeadModel")}


def model_task(source: str) -> tuple[str | None, str | None]:
    """``(task, class name)`` that the saved model in ``source`` was trained for, from its files alone (no
    weights read): a PEFT adapter's recorded task; a causal LM -> ``"lm"``; a sequence classifier -> ``"regress"``
    (``problem_type="regression"`` or one output) or ``"classify"``; a ``.gguf`` file -> ``"lm"``. ``task`` is None
    when the model has no task head (a base model such as ``BertModel``) or its class is unknown."""
    from .finetuning.state import BASE_SOURCE_NAME
    from .loading import identify_source

    folder = Path(source)
    if folder.is_dir() and (folder / "adapter_config.json").is_file():
        try:  # a missing or broken mpokit_base.json is reported by load_for_evaluation
            return json.loads((folder / BASE_SOURCE_NAME).read_text()).get("task"), "PeftModel"
        except (OSError, ValueError, AttributeError):
            return None, None
    src = identify_source(source)
    if src.kind == "gguf":
        return "lm", None
    try:
        config = json.loads((src.folder / "config.json").read_text())
        if src.kind == "mpokit":
            from .io import _read_meta

            classes = [_read_meta(src.folder)["model_class"]]
        else:
            classes = list(config.get("architectures") or [])
    except (OSError, ValueError, KeyError, TypeError):
        return None, None  # loading reports unreadable files
    name = classes[0] if classes else None
    if any(str(c).endswith(_HEADS["lm"]) for c in classes):
        return "lm", name
    if any(str(c).endswith(_HEADS["classify"]) for c in classes):
        one_output = len(config.get("id2label") or {}) == 1 or config.get("num_labels") == 1
        return ("regress" if config.get("problem_type") == "regression" or one_output else "classify"), name
    return None, name


def _check_trained_head(source: str, task: str, saved_task: str | None, model_class: str | None) -> None:
    """Refuse to score a head that loading would draw at random: a base model, or a model trained for another
    task (a causal LM scored as a classifier), evaluated for ``task``."""
    if saved_task == task or (saved_task is None and model_class is None):
        return  # the right head, or nothing known about the model (loading checks what it can)
    what = (f"a base model without a trained {task} head" if saved_task is None
            else f"a model trained for {saved_task!r}, without a trained {task} head")
    raise ValueError(f"{source!r} holds {model_class or 'a model'}, {what}, so its {task} metrics would be those of a "
                     f"random head; fine-tune it for {task} first (mpokit finetune --model {source} --task {task} "
                     "--data ...) and evaluate the result" + (f", or evaluate it with --task {saved_task}" if saved_task else ""))


def evaluate_model(source: str, spec, *, batch_size: int = 64, progress: bool = True) -> dict[str, Any]:
    """Metrics of the model in ``source`` on the data of ``spec`` (a :class:`mpokit.inputs.DataSpec`).

    Held-out splits (validation, test) are evaluated when the data has any; otherwise the ``data``
    file itself is. Without ``spec.task`` the task is the one the model was trained for (:func:`model_task`;
    a regression model on whole-number scores is still scored as regression), else inferred from the labels.
    A base model without a trained head for the task is refused. Returns ``{"model", "task", "kind",
    "splits": {split: metrics}, "sizes", "encoding", "seconds"}``.
    """
    import dataclasses

    from .inputs import build_loaders, read_data

    t0 = time.perf_counter()
    saved_task, model_class = model_task(source)
    if spec.task is None and saved_task is not None:
        spec = dataclasses.replace(spec, task=saved_task)
    data, task = read_data(spec)
    _check_trained_head(str(source), task.name, saved_task, model_class)
    model, tokenizer, kind = load_for_evaluation(source, task.name)
    if task.name == "classify":
        align_labels(model, data)
    task.check_model(model, data if task.name != "classify" else None)
    loaders = build_loaders(task, data, tokenizer, spec, batch_size=batch_size, eval_batch_size=batch_size)
    chosen = {s: dl for s, dl in loaders.splits().items() if s != "train"} or {"data": loaders.train}
    if "data" in chosen:  # the file itself: no shuffling
        from torch.utils.data import DataLoader

        chosen["data"] = DataLoader(loaders.train.dataset, batch_size=batch_size, shuffle=False,
                                    collate_fn=loaders.train.collate_fn)
    results = {s: task.evaluate(model, dl, progress=s if progress else False) for s, dl in chosen.items()}

    def evaluated(per_split: dict) -> dict:  # the splits evaluated, the training file named "data"
        return {("data" if s == "train" else s): v for s, v in per_split.items()
                if s in chosen or (s == "train" and "data" in chosen)}

    return {"model": str(source), "task": task.name, "kind": kind, "splits": results,
            "sizes": evaluated(loaders.sizes), "encoding": evaluated(loaders.stats), "data": spec.to_dict(),
            "seconds": time.perf_counter() - t0}
