"""``mpokit finetune``: fine-tune all-MiniLM-L6-v2 on Rotten Tomatoes (full, MPO + LFA, BitFit or LoRA).

Runs on HF Accelerate: the same command on CPU, one GPU, or several processes
with ``accelerate launch -m mpokit.cli finetune ...``. Writes ``report.json``,
``report.md``, the best model (``best/``) and a resume checkpoint (``last/``)
to ``--out``. The logic lives in :func:`mpokit.finetune`.
"""

from __future__ import annotations

import argparse

METHOD_CHOICES = ("full", "mpo-lfa", "bitfit", "lora")  # mpokit.finetuning.METHODS


def _size(text: str) -> int | None:
    return None if text in ("all", "0", "none") else int(text)


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "finetune",
        help="fine-tune MiniLM on Rotten Tomatoes: full, MPO + lightweight fine-tuning (LFA), BitFit or LoRA",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
    )
    p.add_argument("--method", choices=METHOD_CHOICES, default="mpo-lfa", help="default: mpo-lfa (MPOP §4.1)")
    p.add_argument("--model", default=None, metavar="DIR", help="transformers model folder; default all-MiniLM-L6-v2")
    p.add_argument("--out", default="runs/finetune", metavar="DIR", help="output folder (default runs/finetune)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=5e-5, help="learning rate of the non-MPO parameters")
    p.add_argument("--mpo-lr", type=float, default=None, help="learning rate of MPO cores (default: --lr)")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=64, help="truncate sentences to this many tokens")
    p.add_argument("--train-size", type=_size, default=2000, help="train subset size, or 'all' (default 2000)")
    p.add_argument("--validation-size", type=_size, default=None, help="validation subset size (default all)")
    p.add_argument("--test-size", type=_size, default=None, help="test subset size (default all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the head init, shuffling and dropout")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the by-movie split and subsets")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--param-ratio", type=float, default=None,
                        help="mpo-lfa: truncate each encoder matrix to this fraction of its dense parameters")
    budget.add_argument("--max-bond", type=int, default=None, help="mpo-lfa: cap encoder bond dimensions")
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--compress-only", action="store_true",
                   help="mpo-lfa: compress, save to --out/compressed and stop (fine-tune later with --init-from)")
    p.add_argument("--init-from", default=None, metavar="DIR",
                   help="mpo-lfa: start from a compressed model saved by --compress-only (head re-drawn from --seed)")
    p.add_argument("--max-steps-per-epoch", type=int, default=None)
    p.add_argument("--resume", action="store_true", help="continue from --out/last if it exists")
    p.add_argument("--no-checkpoints", action="store_true",
                   help="write only the reports (no best/ model, no last/ resume state)")
    p.add_argument("--cpu", action="store_true", help="force CPU even when a GPU is present")
    p.add_argument("--threads", type=int, default=None, help="torch threads per process")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ..finetuning import FinetuneConfig, finetune

    config = FinetuneConfig(
        method=args.method, model_path=args.model, output_dir=args.out, epochs=args.epochs, lr=args.lr,
        mpo_lr=args.mpo_lr, weight_decay=args.weight_decay, batch_size=args.batch_size, max_length=args.max_length,
        train_size=args.train_size, validation_size=args.validation_size, test_size=args.test_size, seed=args.seed,
        split_seed=args.split_seed, param_ratio=args.param_ratio, max_bond=args.max_bond, lora_rank=args.lora_rank,
        init_from=args.init_from, compress_only=args.compress_only,
        max_steps_per_epoch=args.max_steps_per_epoch, resume=args.resume, cpu=args.cpu,
        save_best=not args.no_checkpoints, save_last=not args.no_checkpoints, num_threads=args.threads,
        progress=not args.no_progress,
    )
    finetune(config)
    return 0
