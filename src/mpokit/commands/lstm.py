"""``mpokit lstm classify|lm``: dense LSTM vs MPO-LSTM vs pruning-LSTM under one LSTM-weight budget.

``classify`` trains word-level LSTM classifiers on Rotten Tomatoes sentences (test accuracy);
``lm`` trains 2-layer LSTM language models on Penn Treebank (validation / test perplexity). Each
writes runs.csv (every run), results.md (rate x method tables, time per epoch) and a PNG of the
metric against the rate into --out. The logic lives in :mod:`mpokit.recipes`.
"""

from __future__ import annotations

import argparse
import shlex
import sys

PRESETS = ("tiny", "smoke", "small", "medium", "full")


def _numbers(text: str) -> tuple:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}; e.g. 10,50,100") from None
    return tuple(int(v) if v.is_integer() else v for v in values)


def _ints(text: str) -> tuple:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}; e.g. 0,1,2") from None


def _names(text: str) -> tuple:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "lstm",
        help="MPO-LSTM vs pruning vs dense LSTM: RT sentence classification or PTB language modelling",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
    )
    parser.add_argument("task", choices=("classify", "lm"), help="classify: Rotten Tomatoes accuracy; lm: PTB perplexity")
    parser.add_argument("--preset", choices=PRESETS, default="smoke",
                        help="tiny (unit test), smoke (about a minute on CPU), small (CPU, tens of minutes), medium (all "
                             "evaluation data; CPU, a few minutes per run), full (GPU, or ~4 min per classification run on CPU)")
    parser.add_argument("--out", default=None, metavar="DIR", help="output folder (default: runs/lstm_<task>_<preset>)")
    parser.add_argument("--rates", type=_numbers, default=None, help="compression rates, e.g. 5,10,15,20,25,50,75,100")
    parser.add_argument("--seeds", type=_ints, default=None, help="seeds, e.g. 0,1,2")
    parser.add_argument("--methods", type=_names, default=None, help="subset of dense,mpo,pruning,mpo_gradual (default: dense,mpo,pruning; mpo_gradual: "
                        "MPO-LSTM started dense and truncated on pruning's schedule)")
    parser.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    parser.add_argument("--lr", type=float, default=None, help="Adam learning rate (default: the preset's)")
    parser.add_argument("--lrs", type=_numbers, default=None,
                        help="learning-rate grid, e.g. 3e-4,1e-3,3e-3: every run once per value; each (method, rate) "
                             "is reported at its best mean validation metric")
    parser.add_argument("--mpo-cores", type=int, default=None,
                        help="cores per MPO of the MPO-LSTM (default 4: modes 256 -> 8x2x2x8); also sets pruning's budget")
    parser.add_argument("--mpo-hh-share", type=float, default=None,
                        help="fraction of the MPO budget given to the hidden-to-hidden matrices U, e.g. 0.8 (default: "
                             "W and U at one rate); pruning's budget follows the MPO count")
    parser.add_argument("--train-size", type=int, default=None,
                        help="classify: training sentences; lm: training tokens (default: the preset's)")
    parser.add_argument("--resume", action="store_true", help="skip runs already in OUT/runs.csv")
    parser.add_argument("--combine", nargs="+", default=None, metavar="DIR",
                        help="train nothing: merge the runs of these experiment folders (e.g. seeds run as parallel "
                             "processes) into --out, with one runs.csv, results.md and plot")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu",
                        help="where the runs train: cpu (default) or cuda / cuda:N. On a machine without the data "
                             "packages, point MPOKIT_DATA_DIR at the files of `python -m mpokit.recipes.data.files DIR`")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.set_defaults(func=run)
    return parser


def _command() -> str | None:
    """The command line as typed, when run as ``mpokit ...``."""
    if sys.argv and sys.argv[0].endswith("mpokit"):
        return "mpokit " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    return None


def run(args: argparse.Namespace) -> int:
    import torch

    from ..atomic import check_output_dir

    check_output_dir(args.out or f"runs/lstm_{args.task}_{args.preset}")
    if args.combine:
        if not args.out:
            raise ValueError("--combine needs --out for the merged folder, e.g. --out runs/lstm_classify_full_all")
        from ..recipes.lstm_runner import combine_runs

        if args.task == "classify":
            from ..recipes.lstm_classification import ClassifyConfig as task_config
        else:
            from ..recipes.lstm_lm import LMConfig as task_config
        return _report(combine_runs(args.task, args.combine, args.out, task_config(), command=_command()))

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    overrides = {"rates": args.rates, "seeds": args.seeds, "methods": args.methods, "epochs": args.epochs,
                 "lr": args.lr, "lr_grid": args.lrs, "mpo_cores": args.mpo_cores,
                 "mpo_hh_share": args.mpo_hh_share}
    if args.task == "classify":
        from ..recipes.lstm_classification import config_from_preset, run_classification as run_task

        cfg = config_from_preset(args.preset, train_size=args.train_size, **overrides)
    else:
        from ..recipes.lstm_lm import config_from_preset, run_language_model as run_task

        cfg = config_from_preset(args.preset, train_tokens=args.train_size, **overrides)
    out = args.out or f"runs/lstm_{args.task}_{args.preset}"
    return _report(run_task(cfg, out, progress=not args.no_progress, resume=args.resume, command=_command(), device=args.device))


def _report(result) -> int:
    print(result.table_path.read_text())
    print(f"wrote {result.csv_path}, {result.table_path}, " + ", ".join(str(p) for p in result.plot_paths))
    return 0
