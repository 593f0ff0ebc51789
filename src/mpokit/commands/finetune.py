"""``mpokit finetune``: fine-tune a model on your data for your task: full, MPO + LFA (MPOP §4.1), BitFit or LoRA.

Any transformers model folder, mpokit checkpoint or .gguf file; data from a CSV, TSV, JSON, JSON Lines,
Parquet or text file (or a built-in set); task classify, regress or lm (inferred from the labels when not
given). Runs on HF Accelerate: the same command on CPU, one GPU, or several processes with
``accelerate launch -m mpokit.cli finetune ...``. Writes ``report.json``, ``report.md``, the best model
(``best/``) and a resume state (``last/``) to ``--out``. The logic lives in :func:`mpokit.finetune`.
"""

from __future__ import annotations

import argparse

from ._options import add_data_options, add_model_option, add_run_options, data_settings

METHOD_CHOICES = ("full", "mpo-lfa", "bitfit", "lora")  # mpokit.finetuning.METHODS


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "finetune",
        help="fine-tune a model on your data: full, MPO + lightweight fine-tuning (LFA), BitFit or LoRA",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
    )
    p.add_argument("--method", choices=METHOD_CHOICES, default="mpo-lfa",
                   help="full: every parameter; mpo-lfa: MPO, central cores frozen (MPOP §4.1, default); bitfit: "
                        "biases, norms and head; lora: peft LoRA on the same Linear targets")
    add_model_option(p, default="all-MiniLM-L6-v2", help_default="all-MiniLM-L6-v2 (the demo's model)")
    add_data_options(p, default_data="rotten_tomatoes")
    p.add_argument("--out", default="runs/finetune", metavar="DIR", help="output folder (default runs/finetune)")
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=1, help="training epochs (default 1)")
    g.add_argument("--lr", type=float, default=5e-5, help="learning rate of the non-MPO parameters (default 5e-5)")
    g.add_argument("--mpo-lr", type=float, default=None, help="learning rate of the MPO cores (default: --lr)")
    g.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay (none on biases and norms)")
    g.add_argument("--warmup-ratio", type=float, default=0.06, help="fraction of the steps with linear warm-up")
    g.add_argument("--batch-size", type=int, default=32, help="training batch size (default 32)")
    g.add_argument("--eval-batch-size", type=int, default=64,
                   help="batch size of validation and test (default 64)")
    g.add_argument("--max-steps-per-epoch", type=int, default=None, help="cut every epoch after this many steps")
    g.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping (default 1.0)")
    g.add_argument("--seed", type=int, default=0, help="seed of the head init, shuffling and dropout")
    g.add_argument("--eval-before", action="store_true", help="also evaluate validation and test before training")
    g = p.add_argument_group("method")
    budget = g.add_mutually_exclusive_group()
    budget.add_argument("--param-ratio", type=float, default=None,
                        help="mpo-lfa: truncate each non-embedding matrix to this fraction of its dense parameters")
    budget.add_argument("--max-bond", type=int, default=None, help="mpo-lfa: cap the bond dimensions")
    g.add_argument("--lora-rank", type=int, default=8, help="lora: the rank r (default 8)")
    g.add_argument("--compress-only", action="store_true",
                   help="mpo-lfa: compress, save to --out/compressed and stop (fine-tune later with --init-from)")
    g.add_argument("--init-from", default=None, metavar="DIR",
                   help="mpo-lfa: start from a compressed model saved by --compress-only (head re-drawn from --seed)")
    g = p.add_argument_group("checkpoints and devices")
    g.add_argument("--resume", action="store_true",
                   help="continue from --out/last; refuses changed settings (only --epochs may grow)")
    g.add_argument("--no-checkpoints", action="store_true",
                   help="write only the reports (no best/ model, no last/ resume state)")
    g.add_argument("--cpu", action="store_true", help="force CPU even when a GPU is present")
    add_run_options(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ..finetuning import FinetuneConfig, finetune
    from ..recipes.models import resolve_model_source

    model = None if args.init_from else resolve_model_source(args.model)
    config = FinetuneConfig(
        method=args.method, model_path=model, output_dir=args.out, **data_settings(args), epochs=args.epochs,
        lr=args.lr, mpo_lr=args.mpo_lr, weight_decay=args.weight_decay, warmup_ratio=args.warmup_ratio,
        batch_size=args.batch_size, eval_batch_size=args.eval_batch_size, seed=args.seed,
        param_ratio=args.param_ratio, max_bond=args.max_bond, lora_rank=args.lora_rank, init_from=args.init_from,
        compress_only=args.compress_only, max_grad_norm=args.max_grad_norm,
        max_steps_per_epoch=args.max_steps_per_epoch, eval_before=args.eval_before, resume=args.resume,
        cpu=args.cpu, save_best=not args.no_checkpoints, save_last=not args.no_checkpoints, num_threads=args.threads,
        progress=not args.no_progress,
    )
    finetune(config)
    return 0
