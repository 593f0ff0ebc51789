"""``mpokit export``: write a model (MPO-compressed or dense) as an ONNX file and check it with onnxruntime.

The model is a classifier, an encoder or a causal language model: an mpokit checkpoint (exported with its
MPO cores as the file's weights, so the file is about as small as the checkpoint), a transformers folder,
a .gguf file or a recipe name. Inputs are input_ids and attention_mask, with dynamic batch and sequence
dims; the output is the logits (classifier, causal LM) or the last hidden state (encoder). ``--merged``
exports the dense model (the MPO layers merged back) instead. Unless ``--no-check``, onnxruntime runs the
file on the example shape and on a second shape, and its output must match PyTorch's to ``--rtol``. The
logic lives in :mod:`mpokit.export`.
"""

from __future__ import annotations

import argparse

from ._options import add_model_option, threads

MIN_SIZE = 2  # torch.export specialises dims of size 0 and 1, so dynamic dims need example sizes >= 2


def _size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int >= {MIN_SIZE}, got {text!r}; e.g. 16") from None
    if value < MIN_SIZE:
        raise argparse.ArgumentTypeError(f"expected an int >= {MIN_SIZE} (a dynamic dim needs an example size of at "
                                         f"least {MIN_SIZE}), got {value}; e.g. 16")
    return value


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("export", help="write a model (MPO or dense) as ONNX and check it with onnxruntime",
                              description=__doc__.split("\n\n")[1].replace("\n", " "))
    add_model_option(p, default=None, help_default="required")
    p.add_argument("--out", required=True, metavar="FILE.onnx", help="the ONNX file to write (its folder is created)")
    p.add_argument("--merged", action="store_true",
                   help="export the dense model: the MPO layers merged back (mpokit.merge_and_unload on a copy)")
    p.add_argument("--batch-size", type=_size, default=2, metavar="B",
                   help=f"batch size of the example input the export traces (>= {MIN_SIZE}; the exported batch dim "
                        "is dynamic); default 2")
    p.add_argument("--seq-len", type=_size, default=16, metavar="T",
                   help=f"tokens per sequence of the example input (>= {MIN_SIZE}, at most the model's maximum "
                        "positions; the exported sequence dim is dynamic); default 16")
    p.add_argument("--no-check", action="store_true",
                   help="skip the onnxruntime check (then onnxruntime need not be installed)")
    p.add_argument("--rtol", type=float, default=1e-4,
                   help="largest allowed max|onnx - torch| / max|torch| of the check; default 1e-4")
    p.add_argument("--threads", type=threads, default=None, help="torch CPU threads (default: torch's choice)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ..export import ExportDependencyError, require_export_dependencies
    from ..loading import identify_source
    from ..recipes.models import resolve_model_source

    if args.model is None:
        raise ValueError("--model is required: an mpokit checkpoint folder, a transformers model folder, a .gguf "
                         "file or a recipe name; e.g. --model runs/compressed")
    if not args.rtol > 0:
        raise ValueError(f"--rtol must be a number > 0, got {args.rtol}; e.g. --rtol 1e-4")
    out = _check_out(args.out)
    try:
        require_export_dependencies(runtime=not args.no_check)
    except ExportDependencyError as e:
        raise ValueError(str(e)) from None
    source = resolve_model_source(args.model, default=None)
    src = identify_source(source)  # not a model -> ModelSourceError, before reading any weights
    task, config = _task_and_config(src)
    if config:
        _check_lengths(args, config)

    import torch

    from ..export import check_onnx, export_onnx, onnx_sizes
    from ..loading import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model(source, task=task, with_tokenizer=False)
    model = loaded.model
    if not config:
        _check_lengths(args, model.config.to_dict() if hasattr(model, "config") else {})
    vocab = int(getattr(getattr(model, "config", None), "vocab_size", 0) or 0)
    if vocab < 1:
        raise ValueError(f"{args.model} has no vocab_size in its config; mpokit export makes input_ids for models "
                         "with a token vocabulary (classifiers, encoders, causal LMs)")
    example = _inputs(args.batch_size, args.seq_len, vocab, seed=0)
    export_onnx(model, out, example, merged=args.merged)
    sizes = onnx_sizes(out, None if args.merged else model)
    what = "dense (merged)" if args.merged else ("MPO" if loaded.info.get("mpo") else "dense")
    print(f"wrote {out}: {what} model, {sizes['file'] / 2**20:.2f} MiB ({sizes['initializers'] / 2**20:.2f} MiB of "
          f"initializers" + (f"; the MPO cores are {sizes['cores'] / 2**20:.2f} MiB" if sizes.get("cores") else "")
          + ")")
    if not args.no_check:
        limit = _max_positions(model.config.to_dict()) or args.seq_len + 3
        other = _inputs(args.batch_size + 1, min(args.seq_len + 3, limit), vocab, seed=1)
        for shape, inputs in (("example", example), ("second", other)):
            diff = check_onnx(out, model, inputs, rtol=args.rtol)
            b, t = inputs["input_ids"].shape
            print(f"onnxruntime check ({shape} shape {b} x {t}): max relative difference {diff:.2e} <= {args.rtol:g}")
    return 0


def _check_out(path: str):
    """``--out`` names a writable ``.onnx`` file: not a folder, no file in the way of its folder."""
    import os
    from pathlib import Path

    from ..atomic import check_output_dir

    out = Path(path)
    if out.suffix.lower() != ".onnx":
        raise ValueError(f"--out {path!r} must name an .onnx file, e.g. --out {str(out.with_suffix('.onnx'))!r}")
    if out.is_dir():
        raise ValueError(f"--out {path!r} is a folder; --out names the ONNX file, e.g. --out {str(out / 'model.onnx')!r}")
    try:
        check_output_dir(out.parent, "--out")
    except ValueError as e:
        raise ValueError(f"--out {path!r} cannot be written: {e}; e.g. --out model.onnx") from None
    if out.exists() and not os.access(out, os.W_OK):
        raise ValueError(f"--out {path!r} exists and cannot be overwritten (permission denied)")
    return out


def _task_and_config(src) -> tuple[str | None, dict]:
    """The task to load the model for (``None``: as saved / the base model) and its config.json as a dict
    (empty for a .gguf file, whose config is read with the weights)."""
    import json

    if src.kind == "gguf":
        return "lm", {}
    try:
        config = json.loads((src.folder / "config.json").read_text())
    except (OSError, ValueError):
        config = {}
    if src.kind == "mpokit":
        return None, config
    archs = [str(a) for a in config.get("architectures") or []]
    if any(a.endswith("ForCausalLM") for a in archs):
        return "lm", config
    if any(a.endswith("ForSequenceClassification") for a in archs):
        return "classify", config
    return None, config


def _max_positions(config: dict) -> int | None:
    for key in ("max_position_embeddings", "n_positions", "max_seq_len"):
        if isinstance(config.get(key), int):
            return config[key]
    return None


def _check_lengths(args, config: dict) -> None:
    limit = _max_positions(config)
    if limit is not None and args.seq_len > limit:
        raise ValueError(f"--seq-len {args.seq_len} is more than the model's {limit} positions; e.g. --seq-len "
                         f"{min(16, limit)}")


def _inputs(batch: int, length: int, vocab: int, seed: int) -> dict:
    """Random ``input_ids (batch, length)`` in ``[0, vocab)`` and an all-ones ``attention_mask``."""
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, length), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
