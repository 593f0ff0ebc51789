"""``mpokit squeeze``: compress a fine-tuned model's encoder matrices to a parameter budget.

Methods: ``squeeze`` (MPOP Algorithm 2, dimension squeezing), ``direct`` (MPOP_dir: truncate the
MPOs at once), ``prune`` (global magnitude pruning), ``lowrank`` (per-matrix truncated SVD); all
but squeezing fine-tune ``--finetune-steps`` after compressing, squeezing after every cut. Data:
Rotten Tomatoes (split by movie). Writes ``report.json`` (and for squeezing the step log as CSV/JSON,
a PNG and resumable checkpoints) to ``--out``. The logic lives in :func:`mpokit.squeezing.compress_to_budget`.
"""

from __future__ import annotations

import argparse

METHOD_CHOICES = ("squeeze", "direct", "prune", "lowrank")  # mpokit.squeezing.COMPRESSION_METHODS
SCORE_CHOICES = ("bound", "relative", "per_param")  # mpokit.squeezing.SCORES


def _step(text: str) -> int | float:
    value = float(text)
    return int(value) if value >= 1 else value


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "squeeze",
        help="compress a fine-tuned model to a parameter budget: squeeze (MPOP Alg. 2), direct, prune, lowrank",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
    )
    p.add_argument("--model", default=None, metavar="DIR",
                   help="fine-tuned model folder (mpokit/transformers save_pretrained, e.g. runs/finetune/best); "
                        "default: all-MiniLM-L6-v2 with a new head, fine-tuned --dense-steps first")
    p.add_argument("--method", choices=METHOD_CHOICES, default="squeeze")
    p.add_argument("--budget", type=float, required=True,
                   help="parameters kept in the encoder matrices, as a fraction of their dense size, e.g. 0.5")
    p.add_argument("--delta", type=float, default=None, help="squeeze: also stop when |p - p~| > delta (validation loss)")
    p.add_argument("--finetune-steps", type=int, default=None,
                   help="fine-tuning steps after each cut (squeeze, default 2) or after compressing (others, default 48)")
    p.add_argument("--step-size", type=_step, default=0.15,
                   help="squeeze: central bonds d -> d - s (int) or d - ceil(f d) (fraction < 1); default 0.15")
    p.add_argument("--matrices-per-step", type=int, default=9, help="squeeze: matrices cut before each fine-tuning round")
    p.add_argument("--score", choices=SCORE_CHOICES, default="per_param", help="how cuts are ranked (default per_param)")
    p.add_argument("--dense-steps", type=int, default=150, help="full fine-tuning steps when --model is not given")
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--mpo-lr", type=float, default=None, help="learning rate of MPO cores (default: --lr)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=40)
    p.add_argument("--train-size", type=int, default=2400)
    p.add_argument("--validation-size", type=int, default=256)
    p.add_argument("--test-size", type=int, default=None, help="test subset (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default="runs/squeeze", metavar="DIR")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    import json
    import os
    import time
    from pathlib import Path

    import torch

    from ..io import atomic_write_text
    from ..squeezing import compress_to_budget, evaluate, finetune

    if args.threads:
        torch.set_num_threads(args.threads)
    if not 0 < args.budget <= 1.5:
        raise ValueError(f"--budget must be a fraction of the dense parameters in (0, 1.5], got {args.budget}; e.g. --budget 0.5")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, tokenizer, fine_tuned = _load(args)
    from ..finetuning import load_rotten_tomatoes_for

    data = load_rotten_tomatoes_for(tokenizer, max_length=args.max_length, batch_size=args.batch_size, eval_batch_size=64,
                                    train_size=args.train_size, validation_size=args.validation_size,
                                    test_size=args.test_size, shuffle_seed=args.seed)
    train, val, test = list(data["train"]), list(data["validation"]), list(data["test"])
    t0 = time.time()
    if not fine_tuned:
        torch.manual_seed(args.seed)
        for p in model.parameters():
            p.requires_grad_(True)
        print(f"fine-tuning the dense model first: {args.dense_steps} steps")
        finetune(model, train, args.dense_steps, lr=args.lr)
    before = evaluate(model, test)
    steps = args.finetune_steps if args.finetune_steps is not None else (2 if args.method == "squeeze" else 48)
    options = {}
    if args.method == "squeeze":
        options = dict(step_size=args.step_size, matrices_per_step=args.matrices_per_step, score=args.score,
                       delta=args.delta, checkpoint_dir=out / "checkpoint", log_path=out / "squeeze_log",
                       plot_path=out / "squeeze_log.png", progress=True)
    elif args.method == "direct":
        options = dict(score=args.score)
    info = compress_to_budget(model, args.method, target_ratio=args.budget, train_batches=train, eval_batches=val,
                              finetune_steps=steps, lr=args.lr, mpo_lr=args.mpo_lr, seed=args.seed, **options)
    after = evaluate(model, test)
    report = {"settings": {k: v for k, v in vars(args).items() if k != "func"}, "sizes": data["sizes"],
              "test_before": before, "test_after": after, "seconds": time.time() - t0, **info}
    atomic_write_text(out / "report.json", json.dumps(report, indent=1, default=str))
    print(f"{args.method}: encoder matrices {info['params']:,} / {info['dense_params']:,} parameters "
          f"({info['ratio']:.1%}); test accuracy {before['accuracy']:.4f} -> {after['accuracy']:.4f}; "
          f"report in {out / 'report.json'}")
    return 0


def _load(args):
    """``(model, tokenizer, fine_tuned)``."""
    from pathlib import Path

    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from ..pretrained import default_model_path

    hf_logging.set_verbosity_error()
    if args.model is None:
        import torch

        path = str(default_model_path())
        torch.manual_seed(args.seed)
        return AutoModelForSequenceClassification.from_pretrained(path, num_labels=2), AutoTokenizer.from_pretrained(path), False
    folder = Path(args.model)
    if (folder / "mpo_config.json").is_file():
        from ..io import from_pretrained

        model = from_pretrained(folder)
    elif (folder / "config.json").is_file():
        model = AutoModelForSequenceClassification.from_pretrained(str(folder))
    else:
        raise FileNotFoundError(f"no model in {str(folder)!r} (config.json missing); e.g. --model runs/finetune/best")
    tok_dir = folder if (folder / "tokenizer_config.json").is_file() else default_model_path()
    return model, AutoTokenizer.from_pretrained(str(tok_dir)), True
