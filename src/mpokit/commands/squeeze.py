"""``mpokit squeeze``: compress a fine-tuned model's block matrices to a parameter budget.

Methods: ``squeeze`` (MPOP Algorithm 2, dimension squeezing), ``direct`` (MPOP_dir: truncate the MPOs at
once), ``prune`` (global magnitude pruning), ``lowrank`` (per-matrix truncated SVD); all but squeezing
fine-tune ``--finetune-steps`` after compressing, squeezing after every cut. Any model (a transformers
folder, an mpokit checkpoint, a .gguf file or a recipe name), any data and task (classify, regress, lm): a
model without a trained head for the task gets a new one and is fine-tuned ``--dense-steps`` first. The
validation split is the held-out set of the squeeze (its task loss is the monitored p of ``--delta``);
the report's before/after metrics are those of the test split (else validation). Writes ``report.json`` (and
for squeezing the step log as CSV/JSON, a PNG and resumable checkpoints) to ``--out``. The logic lives in
:func:`mpokit.squeezing.compress_to_budget`.
"""

from __future__ import annotations

import argparse
import math

from ._options import add_data_options, add_model_option, add_run_options, data_settings

METHOD_CHOICES = ("squeeze", "direct", "prune", "lowrank")  # mpokit.squeezing.COMPRESSION_METHODS
SCORE_CHOICES = ("bound", "relative", "per_param")  # mpokit.squeezing.SCORES
MONITOR_CHOICES = ("loss", "primary")
DEFAULTS = {"dense_steps": 150, "step_size": 0.15, "matrices_per_step": 9, "score": "per_param", "monitor": "loss"}
SQUEEZE_ONLY = ("delta", "step_size", "matrices_per_step", "monitor")  # options of --method squeeze alone
MPO_ONLY = ("score", "mpo_lr")  # options of the MPO methods (squeeze, direct)
FINETUNE_STEPS = {"squeeze": 2, "direct": 48, "prune": 48, "lowrank": 48}  # default --finetune-steps per method


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "squeeze",
        help="compress a fine-tuned model to a parameter budget: squeeze (MPOP Alg. 2), direct, prune, lowrank",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
    )
    add_model_option(p, default=None, help_default="all-MiniLM-L6-v2 with a new head, fine-tuned --dense-steps first")
    add_data_options(p, default_data="rotten_tomatoes", sizes={"train": 2400, "validation": 256})
    p.set_defaults(max_length=40)
    p.add_argument("--method", choices=METHOD_CHOICES, default="squeeze",
                   help="squeeze (MPOP Alg. 2, default), direct (MPOP_dir), prune (magnitude) or lowrank (SVD)")
    p.add_argument("--budget", type=float, required=True,
                   help="parameters kept in the block matrices, as a fraction in (0, 1] of their dense size, e.g. 0.5")
    g = p.add_argument_group("squeezing")
    g.add_argument("--delta", type=float, default=None,
                   help="squeeze: also stop when |p - p~| > delta, p the monitored validation metric (default: no "
                        "delta stop)")
    g.add_argument("--monitor", choices=MONITOR_CHOICES, default=None,
                   help="squeeze: the p of --delta: loss (the task loss, default) or primary (accuracy for classify, "
                        "mse for regress, perplexity for lm)")
    g.add_argument("--step-size", type=float, default=None,
                   help="squeeze: central bonds d -> d - s (an int >= 1) or d - ceil(f d) (a fraction f in (0, 1)); "
                        f"default {DEFAULTS['step_size']}")
    g.add_argument("--matrices-per-step", type=int, default=None,
                   help=f"squeeze: matrices cut before each fine-tuning round (default {DEFAULTS['matrices_per_step']})")
    g.add_argument("--score", choices=SCORE_CHOICES, default=None,
                   help=f"squeeze / direct: how cuts are ranked (default {DEFAULTS['score']})")
    g = p.add_argument_group("training")
    g.add_argument("--finetune-steps", type=int, default=None,
                   help="fine-tuning steps after each cut (squeeze, default 2) or after compressing (others, default 48)")
    g.add_argument("--dense-steps", type=int, default=None,
                   help="full fine-tuning steps of a model without a trained head for the task, before compressing "
                        f"(default {DEFAULTS['dense_steps']}); a model with one is not fine-tuned again")
    g.add_argument("--lr", type=float, default=5e-5, help="learning rate (default 5e-5)")
    g.add_argument("--mpo-lr", type=float, default=None, help="squeeze / direct: learning rate of MPO cores (default: --lr)")
    g.add_argument("--batch-size", type=int, default=16, help="training batch size (default 16)")
    g.add_argument("--eval-batch-size", type=int, default=64, help="evaluation batch size (default 64)")
    g.add_argument("--seed", type=int, default=0, help="seed of a new head, the batch order and the fine-tuning")
    g.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--out", default="runs/squeeze", metavar="DIR",
                   help="output folder (default runs/squeeze); a squeeze checkpoint there is resumed when it was made "
                        "from the same model, data and settings, and refused otherwise")
    add_run_options(p)
    p.set_defaults(func=run)
    return p


def check_options(args: argparse.Namespace) -> dict:
    """Every option checked (a ValueError naming the option, its value, the rule and a valid example), before
    anything is read or loaded. Returns the resolved settings (defaults filled in per method)."""
    from ..training import check_rates

    method = args.method
    if not (math.isfinite(args.budget) and 0 < args.budget <= 1):
        raise ValueError(f"--budget must be a fraction of the dense parameters in (0, 1], got {args.budget}; "
                         f"e.g. --budget 0.5")
    given = {name: getattr(args, name) for name in (*SQUEEZE_ONLY, *MPO_ONLY) if getattr(args, name) is not None}
    for name in SQUEEZE_ONLY:
        if name in given and method != "squeeze":
            raise ValueError(f"--{name.replace('_', '-')} applies to --method squeeze only, got --method {method}; "
                             f"drop it, or use --method squeeze")
    for name in MPO_ONLY:
        if name in given and method not in ("squeeze", "direct"):
            raise ValueError(f"--{name.replace('_', '-')} applies to the MPO methods (--method squeeze or direct) "
                             f"only, got --method {method}; drop it")
    s = {k: given.get(k, v) for k, v in DEFAULTS.items()}
    s["dense_steps"] = DEFAULTS["dense_steps"] if args.dense_steps is None else args.dense_steps
    s["finetune_steps"] = FINETUNE_STEPS[method] if args.finetune_steps is None else args.finetune_steps
    if args.finetune_steps is not None and args.finetune_steps < 0:
        raise ValueError(f"--finetune-steps must be an int >= 0, got {args.finetune_steps}; e.g. --finetune-steps 2")
    if s["dense_steps"] < 0:
        raise ValueError(f"--dense-steps must be an int >= 0, got {s['dense_steps']}; e.g. --dense-steps 150")
    step = s["step_size"]
    if not math.isfinite(step) or step <= 0 or (step >= 1 and step != int(step)):
        raise ValueError(f"--step-size must be > 0: a whole number of bonds >= 1 or a fraction in (0, 1), got {step}; "
                         f"e.g. --step-size 1 or --step-size 0.15")
    s["step_size"] = int(step) if step >= 1 else float(step)
    if s["matrices_per_step"] < 1:
        raise ValueError(f"--matrices-per-step must be an int >= 1, got {s['matrices_per_step']}; "
                         f"e.g. --matrices-per-step 9")
    if args.delta is not None and not (math.isfinite(args.delta) and args.delta >= 0):
        raise ValueError(f"--delta must be a finite number >= 0 (the allowed |p - p~|), got {args.delta}; e.g. "
                         f"--delta 0.05, or leave it out for no delta stop")
    for option, value in (("--lr", args.lr), ("--mpo-lr", args.mpo_lr)):
        if value is None:  # --mpo-lr not given: the cores train at --lr
            continue
        try:
            check_rates(value)
        except ValueError:
            raise ValueError(f"{option} must be a finite number > 0, got {value}; e.g. {option} 5e-5") from None
    for name, minimum in (("batch_size", 1), ("eval_batch_size", 1), ("seed", 0)):
        value = getattr(args, name)
        if value < minimum:
            raise ValueError(f"--{name.replace('_', '-')} must be an int >= {minimum}, got {value}; "
                             f"e.g. --{name.replace('_', '-')} {max(minimum, 16 if minimum else 0)}")
    from ..recipes.lstm_runner import check_device

    check_device(args.device)
    s.update(method=method, budget=args.budget, delta=args.delta, lr=args.lr, mpo_lr=args.mpo_lr,
             batch_size=args.batch_size, eval_batch_size=args.eval_batch_size, seed=args.seed)
    return s


def run(args: argparse.Namespace) -> int:
    import json
    import os
    import time

    import torch

    from ..atomic import atomic_write_text, check_output_dir
    from ..inputs import DataSpec, build_loaders, read_data
    from ..loading import load_model
    from ..recipes.models import resolve_model_source
    from ..squeezing import compress_to_budget, evaluate, finetune
    from ..squeezing.checkpoint import check_identity, settings_diff
    from ..squeezing.source import holds_mpo_layers, source_identity, task_head
    from ..training import set_seed

    # 1. options, output folder, data and model source: all checked before any model is loaded
    settings = check_options(args)
    out = check_output_dir(args.out)
    spec = DataSpec(**data_settings(args))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    source = resolve_model_source(args.model)
    if args.method in ("prune", "lowrank") and holds_mpo_layers(source):
        raise ValueError(f"--method {args.method} starts from a dense model, but {source!r} is an mpokit checkpoint "
                         f"with MPO layers; pass its dense source model, or use --method squeeze / direct")
    data, task = read_data(spec)
    if data.validation is None:
        raise ValueError("squeezing needs a validation split (the held-out set it monitors); give "
                         "--validation-data FILE or --validation-split 0.1")
    has_head, head_note = task_head(source, task.name, data)
    if has_head and args.dense_steps is not None:
        raise ValueError(f"--dense-steps fine-tunes a model without a trained {task.name} head, but {source!r} has "
                         f"one ({head_note}) and is not fine-tuned again; drop --dense-steps")
    settings["dense_steps"] = 0 if has_head else settings["dense_steps"]
    if args.method == "squeeze" and settings["monitor"] == "primary":
        settings["monitor"] = task.primary_metric[0]
    identity = {"source": source_identity(source), "task": task.name, "data": spec.to_dict(), "settings": settings}
    run_file = out / "run.json"
    resuming = args.method == "squeeze" and check_identity(out / "checkpoint", identity)
    saved_run = json.loads(run_file.read_text()) if resuming and run_file.is_file() else None
    if saved_run is not None and settings_diff(saved_run.get("identity", {}), identity):
        saved_run = None  # another run's note: the squeeze checkpoint alone says what is resumed
    out.mkdir(parents=True, exist_ok=True)

    # 2. model and batches
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.time()
    if has_head:
        loaded = load_model(source, task=task.name)
    else:
        loaded = load_model(source, task=task.name, seed=args.seed, **task.model_kwargs(data))
    model, tokenizer = loaded.model.to(args.device), loaded.tokenizer
    task.check_model(model, data if task.name != "classify" or not has_head else None)
    loaders = build_loaders(task, data, tokenizer, spec, batch_size=args.batch_size,
                            eval_batch_size=args.eval_batch_size, shuffle_seed=args.seed)
    train, val = list(loaders.train), list(loaders.validation)
    report_split = "test" if loaders.test is not None else "validation"
    held_out = list(loaders.test) if loaders.test is not None else val
    metric = task.primary_metric[0]
    shown = f"test {loaders.sizes['test']}" if report_split == "test" else "no test split: before/after on validation"
    print(f"{args.method}: {task.name} on {loaded.info['model_class']} from {source} ({head_note}); "
          f"train {loaders.sizes['train']} {loaders.info['size_unit']}, validation {loaders.sizes['validation']}, "
          f"{shown}")

    # 3. dense fine-tuning of a new head (skipped when a squeeze checkpoint of this run holds everything)
    dense = None
    if saved_run is not None:
        before = saved_run["before"]
        print(f"resuming the squeeze in {out / 'checkpoint'} (before: {report_split} {metric} {before[metric]:.4f})")
    else:
        if not has_head and settings["dense_steps"] > 0:
            set_seed(args.seed)
            for p in model.parameters():
                p.requires_grad_(True)
            print(f"fine-tuning the dense model first: {settings['dense_steps']} steps")
            t_dense = time.time()
            _, dense_loss = finetune(model, train, settings["dense_steps"], lr=args.lr)
            dense = {"steps": settings["dense_steps"], "train_loss": dense_loss, "seconds": time.time() - t_dense}
        before = evaluate(model, held_out, task)
        if args.method == "squeeze":
            atomic_write_text(run_file, json.dumps({"identity": identity, "report_split": report_split,
                                                    "before": before, "dense_finetune": dense}, indent=1))
    if saved_run is not None:
        dense = saved_run.get("dense_finetune")

    # 4. compression to the budget, then the same metrics again
    options = {}
    if args.method == "squeeze":
        options = dict(step_size=settings["step_size"], matrices_per_step=settings["matrices_per_step"],
                       score=settings["score"], delta=args.delta, monitor=settings["monitor"],
                       checkpoint_dir=out / "checkpoint", log_path=out / "squeeze_log",
                       plot_path=out / "squeeze_log.png", progress=not args.no_progress, identity=identity)
    elif args.method == "direct":
        options = dict(score=settings["score"])
    mpo_lr = {"mpo_lr": args.mpo_lr} if args.method in ("squeeze", "direct") else {}
    info = compress_to_budget(model, args.method, target_ratio=args.budget, train_batches=train, eval_batches=val,
                              finetune_steps=settings["finetune_steps"], lr=args.lr, seed=args.seed, task=task,
                              **mpo_lr, **options)
    after = evaluate(model, held_out, task)
    report = {
        "source": identity["source"], "loaded": {"kind": loaded.kind, **loaded.info}, "head": head_note,
        "task": task.name, "primary_metric": list(task.primary_metric),
        "monitor": settings["monitor"] if args.method == "squeeze" else None,
        "settings": {k: v for k, v in vars(args).items() if k != "func"}, "resolved": settings,
        "data": spec.to_dict(), "sizes": loaders.sizes, "full_sizes": loaders.full_sizes, "encoding": loaders.stats,
        "size_unit": loaders.info["size_unit"], "dense_finetune": dense, "report_split": report_split,
        "before": before, "after": after, "seconds": time.time() - t0, **info,
    }
    atomic_write_text(out / "report.json", json.dumps(report, indent=1, default=str))
    print(f"{args.method}: block matrices {info['params']:,} / {info['dense_params']:,} parameters "
          f"({info['ratio']:.1%}); {report_split} {metric} {before[metric]:.4f} -> {after[metric]:.4f}; "
          f"report in {out / 'report.json'}")
    return 0
