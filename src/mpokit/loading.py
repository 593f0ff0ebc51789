"""Load any model the user points at: a transformers folder, an mpokit checkpoint or a ``.gguf`` file.

The library names no model; it takes paths. :func:`load_model` and
:func:`load_tokenizer` accept

* a **transformers model folder** (``config.json`` plus ``model.safetensors`` or
  ``pytorch_model.bin``, as written by ``model.save_pretrained``), loaded with the
  ``transformers.AutoModel*`` class of the task;
* an **mpokit checkpoint folder** (it holds ``mpo_config.json``, written by
  :func:`mpokit.save_pretrained`), loaded with :func:`mpokit.from_pretrained`, so
  it comes back as the saved MPO model, built on the meta device: the dense
  matrices of its compressed layers are never allocated. ``AutoModel`` would
  rebuild dense layers and leave them randomly initialised, so it is never used
  for these folders;
* a **GGUF file** (``*.gguf``), read by transformers through the ``gguf``
  package (``from_pretrained(folder, gguf_file=name)``); quantised weights are
  de-quantised to ``dtype`` (float32 by default).

Everything that can be checked cheaply (the arguments, the path, which files the
folder holds, the config and whether it fits the task) is checked before the
weights are read; each problem raises a :class:`ModelSourceError` subclass that
names the path and says what a valid source looks like.

Padding: a tokenizer without a pad token (most decoder LMs) gets
``pad_token = eos_token``, and a model whose config (or generation config) has
no ``pad_token_id`` gets the tokenizer's, so batched classification and
generation work.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = ["TASKS", "SOURCE_KINDS", "LoadedModel", "ModelSource", "ModelSourceError", "ModelNotFoundError",
           "TokenizerNotFoundError", "TaskMismatchError", "identify_source", "load_model", "load_tokenizer"]

TASKS = (None, "classify", "regress", "lm")
SOURCE_KINDS = ("transformers", "mpokit", "gguf")
MPO_CONFIG_NAME = "mpo_config.json"  # mpokit.io.MPO_CONFIG_NAME; repeated to keep this import light
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
# Files that hold a vocabulary; tokenizer_config.json / special_tokens_map.json alone do not.
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model",
                   "sentencepiece.bpe.model")
PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")
DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}
GGUF_MAGIC = b"GGUF"
_MPO_CORE = re.compile(r"\.cores\.\d+$")  # the parameter names of MPO layers' cores (layers/base.py)

_VALID_SOURCE = ("a transformers model folder (config.json + model.safetensors or pytorch_model.bin, written by "
                 "model.save_pretrained), an mpokit checkpoint folder (mpo_config.json, written by "
                 "mpokit.save_pretrained) or a .gguf file")
_ADD_TOKENIZER = ("add one with tokenizer.save_pretrained(folder), or save the model with "
                  "mpokit.save_pretrained(model, folder, tokenizer=tok)")


class ModelSourceError(ValueError):
    """A model source (path) that cannot be loaded, or that does not fit the requested task."""


class ModelNotFoundError(ModelSourceError, FileNotFoundError):
    """The path does not exist."""


class TokenizerNotFoundError(ModelSourceError, FileNotFoundError):
    """The source holds no tokenizer (no vocabulary file)."""


class TaskMismatchError(ModelSourceError):
    """The model cannot be loaded for the requested task (e.g. ``task="lm"`` on an encoder-only model)."""


@dataclass(frozen=True)
class ModelSource:
    """What a path holds: ``kind`` in :data:`SOURCE_KINDS`, the ``folder`` and, for GGUF, the ``gguf_file`` name."""

    kind: str
    path: Path
    folder: Path
    gguf_file: str | None = None


@dataclass
class LoadedModel:
    """The result of :func:`load_model`.

    ``model`` is in eval mode; ``tokenizer`` is ``None`` only when
    ``with_tokenizer=False``; ``kind`` is the source kind (:data:`SOURCE_KINDS`);
    ``info`` holds ``model_class``, ``model_type``, ``task``, ``dtype``,
    ``num_parameters``, ``mpo`` (whether the model has MPO layers) and, for
    classification, ``num_labels``.
    """

    model: Any
    tokenizer: Any
    kind: str
    path: Path
    info: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------
# the source
# ---------------------------------------------------------------------------


def identify_source(source: str | os.PathLike) -> ModelSource:
    """The kind of model ``source`` holds, from its file names and (for GGUF) its first bytes; reads no weights."""
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"source must be a path (str or os.PathLike), got {type(source).__name__} {source!r}; "
                        "e.g. load_model('runs/my_model')")
    path = Path(source).expanduser()
    if not path.exists():
        what = "model file" if path.suffix.lower() == ".gguf" else "model folder"
        raise ModelNotFoundError(
            f"{what} {str(path)!r} does not exist. Pass {_VALID_SOURCE}. Model hub names are not "
            "downloaded: save the model to a folder first.")
    if path.is_file():
        return _identify_file(path)
    if (path / MPO_CONFIG_NAME).is_file():
        return ModelSource("mpokit", path, path)
    if (path / "config.json").is_file():
        if not any((path / name).is_file() for name in WEIGHT_FILES):
            raise ModelSourceError(
                f"{str(path)!r} has config.json but no weights (none of {', '.join(WEIGHT_FILES)}); "
                "save the model with model.save_pretrained(folder) or mpokit.save_pretrained(model, folder)")
        _refuse_bare_mpo_weights(path)
        return ModelSource("transformers", path, path)
    ggufs = sorted(p.name for p in path.glob("*.gguf"))
    if ggufs:
        raise ModelSourceError(f"{str(path)!r} is not a model folder but holds GGUF files {ggufs}; "
                               f"pass the file itself, e.g. {str(path / ggufs[0])!r}")
    found = sorted(p.name for p in path.iterdir())
    listing = ", ".join(found[:8]) + (", ..." if len(found) > 8 else "") if found else "nothing"
    raise ModelSourceError(f"no model found in {str(path)!r} (it holds {listing}). Pass {_VALID_SOURCE}.")


def _refuse_bare_mpo_weights(folder: Path) -> None:
    """Refuse MPO cores saved without ``mpo_config.json`` (e.g. a Trainer checkpoint of an MPO model).

    ``AutoModel`` would build dense layers, drop the cores as unexpected and
    leave the layers randomly initialised. Only the safetensors header is read.
    """
    names: list[str] = []
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = list(json.loads(index.read_text(encoding="utf-8")).get("weight_map", {}))
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            return  # transformers reports the broken index itself
    elif (folder / "model.safetensors").is_file():
        from safetensors import safe_open

        try:
            with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
                names = list(f.keys())
        except Exception:  # noqa: BLE001 - an unreadable file is reported when the weights are loaded
            return
    cores = [n for n in names if _MPO_CORE.search(n)]
    if cores:
        raise ModelSourceError(
            f"{str(folder)!r} holds MPO cores ({cores[0]}, ...) but no {MPO_CONFIG_NAME}, so the MPO structure is "
            "unknown and a dense load would leave the layers randomly initialised. This is what Trainer's own "
            "checkpoints of an MPO model look like; save with mpokit.save_pretrained(model, folder), or train with "
            "mpokit.callbacks.MPOCheckpointCallback, which writes an mpokit checkpoint into each "
            "checkpoint-N/mpokit folder.")


def _identify_file(path: Path) -> ModelSource:
    if path.suffix.lower() != ".gguf":
        hint = f"; pass its folder {str(path.parent)!r}" if path.name in ("config.json", *WEIGHT_FILES) else ""
        raise ModelSourceError(f"{str(path)!r} is a file but not a .gguf model; pass {_VALID_SOURCE}{hint}")
    try:
        with open(path, "rb") as f:
            head = f.read(len(GGUF_MAGIC))
    except OSError as e:
        raise ModelSourceError(f"{str(path)!r} cannot be read: {e}") from None
    if head != GGUF_MAGIC:
        raise ModelSourceError(f"{str(path)!r} is not a GGUF model: a GGUF file starts with the bytes {GGUF_MAGIC!r}, "
                               f"this one with {head!r}; pass a .gguf file written by llama.cpp's converters")
    return ModelSource("gguf", path, path.parent, path.name)


# ---------------------------------------------------------------------------
# tokenizer
# ---------------------------------------------------------------------------


def _check_tokenizer_files(src: ModelSource) -> None:
    if src.kind == "gguf":
        return  # the vocabulary is in the GGUF metadata
    if not any((src.folder / name).is_file() for name in TOKENIZER_FILES):
        raise TokenizerNotFoundError(
            f"no tokenizer in {str(src.folder)!r}: none of {', '.join(TOKENIZER_FILES)} is there "
            f"(tokenizer_config.json alone holds no vocabulary); {_ADD_TOKENIZER}")


def _read_tokenizer(src: ModelSource):
    from transformers import AutoTokenizer

    kwargs = {"gguf_file": src.gguf_file} if src.gguf_file else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(src.folder), **kwargs)
    except Exception as e:  # noqa: BLE001 - transformers raises OSError/ValueError/KeyError/... here
        raise TokenizerNotFoundError(f"the tokenizer of {str(src.path)!r} cannot be loaded: {type(e).__name__}: {e}; "
                                     f"{_ADD_TOKENIZER}") from None
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_tokenizer(source: str | os.PathLike):
    """The tokenizer of ``source`` (same source kinds as :func:`load_model`).

    A folder must hold a vocabulary file (one of :data:`TOKENIZER_FILES`);
    otherwise :class:`TokenizerNotFoundError` says which files are missing and
    how to add them. A tokenizer without a pad token gets ``pad_token = eos_token``.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    src = identify_source(source)
    _check_tokenizer_files(src)
    return _read_tokenizer(src)


# ---------------------------------------------------------------------------
# arguments
# ---------------------------------------------------------------------------


def _check_dtype(dtype) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise ValueError(f"dtype must be one of {list(DTYPES)} (a name or a torch.dtype), got {dtype!r}; e.g. dtype='float32'")


def _label_kwargs(task, num_labels, id2label, label2id, problem_type) -> dict:
    """The config overrides for ``task``, checked; ``{}`` for the tasks without labels."""
    given = {k: v for k, v in (("num_labels", num_labels), ("id2label", id2label), ("label2id", label2id),
                               ("problem_type", problem_type)) if v is not None}
    if task not in ("classify", "regress"):
        if given:
            raise ValueError(f"{', '.join(given)} apply to task='classify' or 'regress' only, got task={task!r}; "
                             "e.g. load_model(folder, task='classify', num_labels=3)")
        return {}
    if num_labels is not None and (isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 1):
        raise ValueError(f"num_labels must be a positive int, got {num_labels!r}; e.g. num_labels=2")
    if problem_type is not None and problem_type not in PROBLEM_TYPES:
        raise ValueError(f"problem_type must be one of {PROBLEM_TYPES}, got {problem_type!r}")
    if id2label is not None:
        if not isinstance(id2label, dict):
            raise ValueError(f"id2label must be a dict {{id: label}}, got {type(id2label).__name__}; "
                             "e.g. id2label={0: 'negative', 1: 'positive'}")
        try:
            id2label = {int(k): str(v) for k, v in id2label.items()}
        except (TypeError, ValueError):
            raise ValueError(f"id2label keys must be label ids 0..n-1, got {list(id2label)}; "
                             "e.g. id2label={0: 'negative', 1: 'positive'}") from None
        if sorted(id2label) != list(range(len(id2label))):
            raise ValueError(f"id2label keys must be 0..{len(id2label) - 1}, got {sorted(id2label)}")
        if num_labels is not None and num_labels != len(id2label):
            raise ValueError(f"num_labels={num_labels} but id2label has {len(id2label)} labels; give one or make them agree")
        num_labels = len(id2label)
        label2id = {v: k for k, v in id2label.items()} if label2id is None else label2id
    if label2id is not None:
        if not isinstance(label2id, dict):
            raise ValueError(f"label2id must be a dict {{label: id}}, got {type(label2id).__name__}")
        try:
            label2id = {str(k): int(v) for k, v in label2id.items()}
        except (TypeError, ValueError):
            raise ValueError(f"label2id values must be label ids 0..n-1, got {list(label2id.values())}; "
                             "e.g. label2id={'negative': 0, 'positive': 1}") from None
        if id2label is None:
            id2label = {v: k for k, v in label2id.items()}
            if sorted(id2label) != list(range(len(id2label))):
                raise ValueError(f"label2id values must be 0..{len(id2label) - 1}, got {sorted(id2label)}")
            num_labels = len(id2label) if num_labels is None else num_labels
    if task == "regress":
        if num_labels not in (None, 1) or problem_type not in (None, "regression"):
            raise ValueError(f"task='regress' predicts one number (num_labels=1, problem_type='regression'), got "
                             f"num_labels={num_labels!r}, problem_type={problem_type!r}; for classes use task='classify'")
        return {"num_labels": 1, "problem_type": "regression"}
    if problem_type == "regression":
        raise ValueError("problem_type='regression' with task='classify'; use task='regress' for a regression head")
    out = {"num_labels": num_labels, "id2label": id2label, "label2id": label2id, "problem_type": problem_type}
    return {k: v for k, v in out.items() if v is not None}


# ---------------------------------------------------------------------------
# task <-> model
# ---------------------------------------------------------------------------


def _mapping_classes(mapping) -> set[str]:
    out = set()
    for value in mapping.values():
        out.update(value if isinstance(value, (tuple, list)) else (value,))
    return out


def _causal_lm_types() -> list[str]:
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                        MODEL_FOR_MASKED_LM_MAPPING_NAMES)

    return sorted(set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES) - set(MODEL_FOR_MASKED_LM_MAPPING_NAMES))


def _lm_problem(config) -> str | None:
    """Why ``config`` is not a decoder-only causal LM, or ``None`` if it is one.

    A type without a causal-LM class (DistilBERT, ALBERT) is not one; a type that
    also has a masked-LM class (BERT, RoBERTa) is one only when its config says
    ``is_decoder=True``.
    """
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                        MODEL_FOR_MASKED_LM_MAPPING_NAMES)

    model_type = getattr(config, "model_type", None)
    examples = ", ".join(t for t in ("llama", "gpt2", "mistral", "qwen2", "gemma", "phi3") if t in _causal_lm_types())
    hint = f"task='lm' needs a decoder-only causal LM (model types such as {examples})"
    if getattr(config, "is_encoder_decoder", False):
        return f"model type {model_type!r} is an encoder-decoder model; {hint}"
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return f"model type {model_type!r} is encoder-only (transformers has no causal-LM class for it); {hint}"
    if model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(config, "is_decoder", False):
        return (f"model type {model_type!r} is an encoder-only model here (its config has is_decoder=False); "
                f"{hint}, or a {model_type} config saved with is_decoder=True")
    return None


def _check_task(src: ModelSource, config, task: str | None, labels: dict, model_class: str | None) -> None:
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
                                                        MODEL_MAPPING_NAMES)

    where = str(src.path)
    model_type = getattr(config, "model_type", None)
    if task == "lm":
        problem = _lm_problem(config)
        if problem:
            raise TaskMismatchError(f"{where!r}: {problem}")
    elif task in ("classify", "regress") and model_type not in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES:
        raise TaskMismatchError(f"{where!r}: model type {model_type!r} has no sequence-classification class in "
                                f"transformers, so task={task!r} cannot load it; e.g. a bert or llama model can")
    elif task is None and src.kind != "mpokit" and model_type not in MODEL_MAPPING_NAMES:
        raise TaskMismatchError(f"{where!r}: model type {model_type!r} has no base model class in transformers")
    if src.kind == "mpokit":
        _check_checkpoint_task(where, config, task, labels, model_class,
                               _mapping_classes(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES),
                               _mapping_classes(MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES))


def _check_checkpoint_task(where, config, task, labels, model_class, causal, seqcls) -> None:
    """An mpokit checkpoint is one saved object: its class and head must already fit ``task``."""
    recompress = ("A checkpoint compressed from a base model can be fine-tuned for the task by compressing again: "
                  "load the dense model with load_model(dense_folder, task=..., num_labels=...) and run mpokit.compress.")
    if task == "lm" and model_class not in causal:
        raise TaskMismatchError(f"the mpokit checkpoint {where!r} holds a {model_class}, not a causal LM, so task='lm' "
                                f"does not fit it. {recompress}")
    if task not in ("classify", "regress"):
        return
    if model_class not in seqcls:
        raise TaskMismatchError(f"the mpokit checkpoint {where!r} holds a {model_class}, which has no "
                                f"sequence-classification head, so task={task!r} does not fit it. {recompress}")
    saved_labels = config.num_labels
    saved_regression = getattr(config, "problem_type", None) == "regression"
    wanted = labels.get("num_labels")
    if wanted is not None and wanted != saved_labels:
        raise TaskMismatchError(f"the mpokit checkpoint {where!r} has a head with num_labels={saved_labels}, but "
                                f"num_labels={wanted} was asked for: the saved head does not fit. {recompress}")
    if task == "classify" and saved_regression:
        raise TaskMismatchError(f"the mpokit checkpoint {where!r} holds a regression head; load it with task='regress'")


# ---------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------


def _read_config(src: ModelSource):
    from transformers import AutoConfig

    if src.kind == "mpokit":  # the committed, checksummed config of the checkpoint
        from .io import CheckpointError, read_checkpoint_config

        try:
            config = read_checkpoint_config(src.folder)
        except CheckpointError as e:
            raise ModelSourceError(str(e)) from None
        if config is None:
            raise ModelSourceError(f"{str(src.path)!r} holds a model saved without a transformers config; load it "
                                   "with mpokit.from_pretrained(folder, model=<a freshly built dense model>)")
        return config
    kwargs = {"gguf_file": src.gguf_file} if src.gguf_file else {}
    try:
        return AutoConfig.from_pretrained(str(src.folder), **kwargs)
    except Exception as e:  # noqa: BLE001 - unknown model types, corrupt JSON or GGUF metadata
        what = "GGUF file" if src.gguf_file else "config.json"
        raise ModelSourceError(f"the {what} of {str(src.path)!r} cannot be read as a transformers model config: "
                               f"{type(e).__name__}: {e}") from None


def _auto_class(task: str | None):
    import transformers

    return {None: transformers.AutoModel, "classify": transformers.AutoModelForSequenceClassification,
            "regress": transformers.AutoModelForSequenceClassification, "lm": transformers.AutoModelForCausalLM}[task]


def _dtype_kwarg(dtype: torch.dtype) -> dict:
    """``dtype=`` for transformers >= 4.56, ``torch_dtype=`` before."""
    import transformers
    from packaging.version import Version

    return {"dtype": dtype} if Version(transformers.__version__) >= Version("4.56") else {"torch_dtype": dtype}


def _read_model(src: ModelSource, task, labels: dict, dtype: torch.dtype):
    from transformers.utils import logging as hf_logging

    if src.kind == "mpokit":
        from .io import from_pretrained

        model = from_pretrained(src.folder, dtype=dtype)
        for key, value in labels.items():  # label names / problem type; the head's size was checked
            setattr(model.config, key, value)
        return model
    kwargs = dict(labels, **_dtype_kwarg(dtype))
    if src.gguf_file:
        kwargs["gguf_file"] = src.gguf_file
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # a new task head's "newly initialized" load report is expected
    try:
        return _auto_class(task).from_pretrained(str(src.folder), **kwargs)
    except Exception as e:  # noqa: BLE001 - corrupt or mismatched weights
        raise ModelSourceError(f"the weights in {str(src.path)!r} cannot be loaded: {type(e).__name__}: {e}") from None
    finally:
        hf_logging.set_verbosity(verbosity)


def load_model(source: str | os.PathLike, *, task: str | None = None, num_labels: int | None = None,
               id2label: dict | None = None, label2id: dict | None = None, problem_type: str | None = None,
               dtype: torch.dtype | str | None = None, seed: int | None = None,
               with_tokenizer: bool = True) -> LoadedModel:
    """Load the model (and tokenizer) in ``source`` for ``task``; see the module docstring for the source kinds.

    ``task``: ``None`` (the base model, ``AutoModel``), ``"classify"``
    (``AutoModelForSequenceClassification``, with ``num_labels`` / ``id2label`` /
    ``label2id`` / ``problem_type``), ``"regress"`` (the same class with
    ``num_labels=1``, ``problem_type="regression"``) or ``"lm"``
    (``AutoModelForCausalLM``; decoder-only models only).

    An mpokit checkpoint loads as the saved MPO model: ``task=None`` returns it
    as saved (head included); a task it was not saved for, or a ``num_labels``
    other than its head's, raises :class:`TaskMismatchError` (compress the dense
    model again instead). ``dtype`` (default float32) is the parameter dtype;
    ``seed`` seeds ``torch`` before a new task head is drawn. With
    ``with_tokenizer=False`` no tokenizer is loaded (``tokenizer`` is ``None``).
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}; e.g. task='classify'")
    labels = _label_kwargs(task, num_labels, id2label, label2id, problem_type)
    dtype = _check_dtype(dtype)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ValueError(f"seed must be an int or None, got {seed!r}; e.g. seed=0")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    src = identify_source(source)
    if with_tokenizer:
        _check_tokenizer_files(src)
    model_class = None
    if src.kind == "mpokit":
        from .io import _read_meta

        model_class = _read_meta(src.folder)["model_class"]
    config = _read_config(src)
    _check_task(src, config, task, labels, model_class)
    tokenizer = _read_tokenizer(src) if with_tokenizer else None
    if seed is not None:
        torch.manual_seed(seed)
    model = _read_model(src, task, labels, dtype).eval()
    if tokenizer is not None and getattr(model.config, "pad_token_id", None) is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    generation = getattr(model, "generation_config", None)
    if tokenizer is not None and generation is not None and generation.pad_token_id is None:
        generation.pad_token_id = tokenizer.pad_token_id  # generate() would warn and fall back to eos
    from .surgery import mpo_modules

    info = {"model_class": type(model).__name__, "model_type": getattr(model.config, "model_type", None),
            "task": task, "dtype": str(dtype).replace("torch.", ""),
            "num_parameters": sum(p.numel() for p in model.parameters()),
            "mpo": any(True for _ in mpo_modules(model))}
    if task in ("classify", "regress"):
        info["num_labels"] = model.config.num_labels
    if src.gguf_file:
        info["gguf_file"] = src.gguf_file
    return LoadedModel(model=model, tokenizer=tokenizer, kind=src.kind, path=src.path, info=info)
