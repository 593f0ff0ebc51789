"""Options shared by ``compress``, ``finetune``, ``evaluate`` and ``squeeze``: the same ``--model``, ``--data``
and ``--task`` everywhere. Parsing only; the library checks the values again where it uses them."""

from __future__ import annotations

import argparse

TASK_CHOICES = ("classify", "regress", "lm")  # mpokit.tasks.TASKS


def size(text: str) -> int | None:
    """``all`` -> None (every example); otherwise an int >= 1. ``0`` is an error, not "all"."""
    if text.strip().lower() == "all":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int >= 1 or 'all', got {text!r}; e.g. 2000 or all") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1 or 'all' (every example), got {value}; e.g. 2000 or all")
    return value


def threads(text: str) -> int:
    """An int >= 1 (torch refuses 0 and negative thread counts later, with a RuntimeError)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {text!r}; e.g. 4") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {value}; e.g. 4")
    return value


def fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1), got {text!r}; e.g. 0.1") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1), got {value}; e.g. 0.1")
    return value


def add_model_option(parser: argparse.ArgumentParser, *, default: str | None, help_default: str) -> None:
    parser.add_argument(
        "--model", default=default, metavar="M",
        help="a transformers model folder, an mpokit checkpoint folder, a .gguf file, or a recipe model name "
             f"(all-MiniLM-L6-v2, SmolLM2-135M-Instruct); default: {help_default}")


def add_data_options(parser: argparse.ArgumentParser, *, default_data: str | None, sizes: dict | None = None) -> None:
    """``--data`` and friends, ``--task``, ``--max-length``, ``--block-size`` and the subset sizes."""
    g = parser.add_argument_group("data and task")
    g.add_argument("--data", default=default_data, metavar="F",
                   help="training data: a CSV, TSV, JSON, JSON Lines, Parquet or text file (one document per line), a "
                        "folder written by datasets' save_to_disk, or a built-in name (rotten_tomatoes, ptb)"
                        + (f"; default: {default_data}" if default_data else ""))
    g.add_argument("--validation-data", default=None, metavar="F", help="validation file (same formats)")
    g.add_argument("--test-data", default=None, metavar="F", help="test file (same formats)")
    g.add_argument("--validation-split", type=fraction, default=None, metavar="FRAC",
                   help="carve this fraction of --data out as validation (seeded by --split-seed; stratified for classify)")
    g.add_argument("--test-split", type=fraction, default=None, metavar="FRAC",
                   help="carve this fraction of --data out as test (seeded; stratified for classify)")
    g.add_argument("--text-column", default="text", help="column holding the text (default: text)")
    g.add_argument("--text-pair-column", default=None, help="second text column, for sentence pairs")
    g.add_argument("--label-column", default="label", help="column holding the label (default: label)")
    g.add_argument("--task", choices=TASK_CHOICES, default=None,
                   help="classify (any number of classes), regress (one float) or lm (causal language modelling); "
                        "default: inferred from the labels (strings/ints: classify, floats: regress, none: lm)")
    g.add_argument("--max-length", type=int, default=64,
                   help="truncate texts to this many tokens (the report counts how many were); default 64")
    g.add_argument("--block-size", type=int, default=None,
                   help="lm: tokens per training block (texts are concatenated and cut); default: --max-length")
    sizes = sizes or {}
    g.add_argument("--train-size", type=size, default=sizes.get("train"),
                   help=f"random training subset, or 'all' (default: {sizes.get('train') or 'all'})")
    g.add_argument("--validation-size", type=size, default=sizes.get("validation"),
                   help=f"random validation subset, or 'all' (default: {sizes.get('validation') or 'all'})")
    g.add_argument("--test-size", type=size, default=sizes.get("test"),
                   help=f"random test subset, or 'all' (default: {sizes.get('test') or 'all'})")
    g.add_argument("--split-seed", type=int, default=0, help="seed of the splits and subsets (default 0)")


def data_settings(args: argparse.Namespace) -> dict:
    """The data options of ``args`` as keyword arguments of :class:`mpokit.inputs.DataSpec`."""
    return dict(data=args.data, validation_data=args.validation_data, test_data=args.test_data,
                validation_split=args.validation_split, test_split=args.test_split, text_column=args.text_column,
                text_pair_column=args.text_pair_column, label_column=args.label_column, task=args.task,
                max_length=args.max_length, block_size=args.block_size, train_size=args.train_size,
                validation_size=args.validation_size, test_size=args.test_size, split_seed=args.split_seed)


def add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=threads, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars: one log line per epoch / phase")
