"""``mpokit compress``: turn a model's matrices into MPOs and save a loadable mpokit checkpoint.

Targets: the architecture's defaults (BERT, RoBERTa, DistilBERT, ALBERT, GPT-2, Llama), else every Linear
/ Conv1D except the output head plus the input word embedding (PEFT's "all-linear"); or ``--targets``.
Budget: ``--budget F`` keeps F of each targeted matrix's dense parameters, ``--max-bond D`` caps the bonds,
``--rel-error E`` bounds each matrix's relative error; none of them is exact (full bonds, same outputs).
With ``--data`` (or ``--task``) the checkpoint holds that task's head (classes from the labels), ready for
``mpokit finetune --model OUT --data ...``. Writes the checkpoint (safetensors + JSON, with the tokenizer)
and ``compression_report.json`` / ``.md`` (per matrix: shape, modes, bonds, parameters, error bound, and why
it was taken) into ``--out``. The logic lives in :func:`mpokit.compress`.
"""

from __future__ import annotations

import argparse

from ._options import add_data_options, add_model_option, add_run_options, data_settings


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("compress", help="MPO-compress a model and save a loadable checkpoint with a report",
                              description=__doc__.split("\n\n")[1].replace("\n", " "))
    add_model_option(p, default=None, help_default="required")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the checkpoint and the report")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--budget", type=float, default=None, metavar="F",
                        help="keep this fraction of each targeted matrix's dense parameters, in (0, 1], e.g. 0.5")
    budget.add_argument("--max-bond", type=int, default=None, metavar="D", help="cap every bond dimension")
    budget.add_argument("--rel-error", type=float, default=None, metavar="E",
                        help="relative Frobenius error bound per matrix, in [0, 1)")
    p.add_argument("--targets", nargs="+", default=None, metavar="NAME",
                   help="module names or dotted suffixes (e.g. q_proj v_proj), or 'all-linear'; default: the "
                        "architecture's defaults, else all-linear")
    p.add_argument("--target-regex", default=None, metavar="RE", help="a regular expression full-matched against names")
    p.add_argument("--exclude", nargs="+", default=[], metavar="NAME", help="names or suffixes never compressed")
    p.add_argument("--no-embedding", action="store_true", help="keep the word embedding dense")
    p.add_argument("--n-cores", type=int, default=5, help="cores per MPO (default 5, as in MPOP)")
    p.add_argument("--trainable", choices=("auxiliary", "all", "central", "none"), default="auxiliary",
                   help="which cores train afterwards (default auxiliary: MPOP's lightweight fine-tuning)")
    p.add_argument("--seed", type=int, default=0, help="seed of a new task head")
    add_data_options(p, default_data=None)
    p.add_argument("--overwrite", action="store_true",
                   help="replace a checkpoint of another model in --out (its model and tokenizer files are removed)")
    add_run_options(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    import json
    import time

    import torch

    from ..atomic import atomic_write_text, check_output_dir
    from ..config import MPOConfig, MPOLayerConfig
    from ..inputs import DataSpec, read_data
    from ..loading import identify_source, load_model
    from ..recipes.models import resolve_model_source
    from ..surgery import compress

    if args.model is None:
        raise ValueError("--model is required: a transformers folder, an mpokit checkpoint's dense source, a .gguf "
                         "file or a recipe name; e.g. --model SmolLM2-135M-Instruct")
    out = check_output_dir(args.out)
    layer = MPOLayerConfig(param_ratio=args.budget, max_bond=args.max_bond, rel_error=args.rel_error,
                           n_cores=args.n_cores)
    targets = args.targets[0] if args.targets == ["all-linear"] else args.targets
    config = MPOConfig(target_modules=targets, target_regex=args.target_regex, exclude_modules=args.exclude,
                       embedding=None if args.no_embedding else MPOLayerConfig(n_cores=args.n_cores, **_embedding_budget(args)),
                       attention=layer, ffn=layer, other=layer, trainable=args.trainable)
    if args.threads:
        torch.set_num_threads(args.threads)
    source = resolve_model_source(args.model, default=None)
    if identify_source(source).kind == "mpokit":  # before reading the data or any weights
        raise ValueError(f"--model {args.model} is already an mpokit (MPO) checkpoint; compress its dense source model "
                         f"instead, or fine-tune this one: mpokit finetune --model {args.model} --data ...")
    task, kwargs = args.task, {}
    if args.data is not None:
        data, task_obj = read_data(DataSpec(**data_settings(args)))
        task, kwargs = task_obj.name, task_obj.model_kwargs(data)
    loaded = load_model(source, task=task or _natural_task(source), seed=args.seed, **kwargs)
    if loaded.info.get("mpo"):
        raise ValueError(f"{args.model} already holds MPO layers; compress its dense source model instead")
    from ..io import check_save_target, save_pretrained

    check_save_target(loaded.model, out, overwrite=args.overwrite)  # before the decomposition, not after
    t0 = time.perf_counter()
    model, report = compress(loaded.model, config, return_report=True)
    seconds = time.perf_counter() - t0
    save_pretrained(model, out, tokenizer=loaded.tokenizer, overwrite=args.overwrite)
    summary = {"model": str(source), "task": loaded.info.get("task"), "compress_seconds": seconds,
               "config": config.to_dict(), **report.to_dict()}
    atomic_write_text(out / "compression_report.json", json.dumps(summary, indent=2, default=str))
    atomic_write_text(out / "compression_report.md", f"# mpokit compress: `{source}`\n\n```\n{report.table()}\n```\n")
    if not args.no_progress:
        print(report.table())
    print(f"compressed {len(report.modules)} matrices in {seconds:.1f}s: model {report.model_params_before:,} -> "
          f"{report.model_params_after:,} parameters; checkpoint: {out} (mpokit finetune --model {out} ...)")
    return 0


def _embedding_budget(args) -> dict:
    """The word embedding follows --max-bond / --rel-error; --budget applies to it as well."""
    if args.budget is not None:
        return {"param_ratio": args.budget}
    if args.max_bond is not None:
        return {"max_bond": args.max_bond}
    if args.rel_error is not None:
        return {"rel_error": args.rel_error}
    return {}


def _natural_task(source: str) -> str | None:
    """``lm`` for a causal language model (its config lists a ``*ForCausalLM`` architecture), else the base model."""
    from ..loading import identify_source

    src = identify_source(source)
    if src.kind == "gguf":
        return "lm"
    import json

    try:
        archs = json.loads((src.folder / "config.json").read_text()).get("architectures") or []
    except (OSError, ValueError):
        return None
    return "lm" if any(str(a).endswith("ForCausalLM") for a in archs) else None
