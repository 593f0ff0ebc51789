"""``mpokit evaluate``: the task metrics of a saved model (dense, MPO or LoRA) on your data.

Classify: accuracy and macro-F1; regress: MSE, Pearson and Spearman; lm: perplexity (token-weighted).
Prints the metrics and writes them as JSON (``--out``). Held-out splits of the data are evaluated when it
has any (``--validation-data``, ``--test-data``, the splits of a built-in set), else the ``--data`` file
itself. The logic lives in :func:`mpokit.evaluation.evaluate_model`.
"""

from __future__ import annotations

import argparse

from ._options import add_data_options, add_model_option, add_run_options, data_settings


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("evaluate", help="metrics of a saved model (dense, MPO or LoRA) on your data",
                              description=__doc__.split("\n\n")[1].replace("\n", " "))
    add_model_option(p, default=None, help_default="required")
    add_data_options(p, default_data=None)
    p.add_argument("--batch-size", type=int, default=64, help="evaluation batch size (default 64)")
    p.add_argument("--out", default=None, metavar="FILE", help="write the metrics as JSON here (default: print only)")
    add_run_options(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    import json

    import torch

    from ..atomic import atomic_write_text
    from ..evaluation import evaluate_model
    from ..inputs import DataSpec
    from ..recipes.models import resolve_model_source

    if args.model is None:
        raise ValueError("--model is required: a model folder, an mpokit checkpoint, a LoRA folder written by "
                         "`mpokit finetune --method lora`, or a .gguf file; e.g. --model runs/finetune/best")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be an int >= 1, got {args.batch_size}; e.g. --batch-size 64")
    if args.out is not None:
        _check_metrics_file(args.out)
    spec = DataSpec(**data_settings(args))
    if args.threads:
        torch.set_num_threads(args.threads)
    result = evaluate_model(resolve_model_source(args.model, default=None), spec, batch_size=args.batch_size,
                            progress=not args.no_progress)
    for split, metrics in result["splits"].items():
        shown = "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())
        print(f"{split}: {shown}")
    if args.out is not None:
        atomic_write_text(args.out, json.dumps(result, indent=2, default=str))
        print(f"metrics: {args.out}")
    return 0


def _check_metrics_file(path: str) -> None:
    """``--out`` names a file that can be written: not a folder, and no file in the way of its folder."""
    from pathlib import Path

    from ..atomic import check_output_dir

    out = Path(path)
    if out.is_dir():
        raise ValueError(f"--out {path!r} is a folder; --out names the JSON file of the metrics, e.g. "
                         f"--out {str(out / 'metrics.json')!r}")
    try:
        check_output_dir(out.parent, "--out")
    except ValueError:
        raise ValueError(f"--out {path!r} cannot be written: a file is in the way of its folder {str(out.parent)!r}; "
                         "e.g. --out metrics.json") from None
