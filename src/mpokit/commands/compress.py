"""``mpokit compress``: turn a model's matrices into MPOs and save a loadable mpokit checkpoint.

Targets: the architecture's defaults (BERT, RoBERTa, DistilBERT, ALBERT, GPT-2, Llama), else every Linear
/ Conv1D except the output head plus the input word embedding (PEFT's "all-linear"); or ``--targets``.
Budget: ``--budget F`` keeps F of each targeted matrix's dense parameters, ``--max-bond D`` caps the bonds,
``--rel-error E`` bounds each matrix's relative error; none of them is exact (full bonds, same outputs).
With ``--data`` (or ``--task``) the checkpoint holds that task's head (classes from the labels), ready for
``mpokit finetune --model OUT --data ...``. Writes the checkpoint (safetensors + JSON, with the tokenizer)
and ``compression_report.json`` / ``.md`` (per matrix: shape, modes, bonds, parameters, error bound, and why
it was taken) into ``--out``. The logic lives in :func:`mpokit.compress`.

Data-aware: ``--calibration-data F`` (any format ``--data`` takes; ``--calibration-samples N`` sequences: lm
blocks of ``--block-size`` tokens, or texts cut at ``--max-length``) measures every target's inputs; each
matrix is then approximated by ``--method`` (default ``mpo-aware``; also ``mpo``, ``svd``, ``svd-whitened``,
``magnitude``, ``2:4``, ``wanda``) and ``--budget F`` is one global budget over the targeted matrices, split
by ``--allocation`` (default ``global``: where the output error falls most per parameter). The report adds,
per matrix, the method, the layout, the relative output error under the calibration data and the weight
error, and the timings of loading, calibration and fitting. Pruning methods save each pruned weight with its
mask (``weight_orig`` and ``weight_mask``, restored by :func:`mpokit.from_pretrained`), so fine-tuning the
checkpoint keeps the zeros. ``--save-calibration F`` writes the collected statistics; ``--calibration-stats F``
uses them instead of ``--calibration-data`` (one calibration, many methods and budgets). ``--layout-search
exact`` restricts mpo-aware to the layouts whose whitening is exact (low-rank and hybrid), several times faster.
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
                        help="keep this fraction of the dense parameters, in (0, 1], e.g. 0.5: of each targeted matrix "
                             "(TT-SVD without calibration data), or of all of them together, split by --allocation "
                             "(with --calibration-data or another --method)")
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
    g = p.add_argument_group("data-aware compression")
    g.add_argument("--calibration-data", default=None, metavar="F",
                   help="data whose layer inputs the approximations are fitted to (any format --data takes: CSV, TSV, "
                        "JSON Lines, Parquet, text, a built-in name); lm data needs a causal LM; uses --max-length, "
                        "--block-size, --text-column, --label-column and --split-seed")
    g.add_argument("--calibration-samples", type=_positive, default=128, metavar="N",
                   help="calibration sequences drawn from --calibration-data: lm blocks of --block-size tokens, or texts "
                        "(default 128)")
    g.add_argument("--method", choices=_methods(), default=None,
                   help="how each matrix is approximated: mpo (TT-SVD), mpo-aware (fitted to the output error, layout "
                        "searched), svd, svd-whitened (SVD-LLM), magnitude, 2:4, wanda (pruning); default: mpo-aware "
                        "with --calibration-data, else mpo")
    g.add_argument("--allocation", choices=("global", "absolute", "uniform"), default=None,
                   help="how --budget is split over the matrices: global (by relative output error per parameter; the "
                        "default with --calibration-data), absolute (by absolute output error: matrices with large "
                        "outputs keep more) or uniform (the same fraction of each)")
    g.add_argument("--max-sweeps", type=_positive, default=8, metavar="N",
                   help="ALS sweeps of mpo-aware per layout (default 8)")
    g.add_argument("--layout-search", choices=("all", "exact", "none"), default=None,
                   help="mpo-aware: which layouts it tries: all (every candidate; the default), exact (low-rank and "
                        "hybrid, whose whitening is exact: several times faster) or none (the --n-cores interleaved one)")
    g.add_argument("--no-layout-search", action="store_true", help="the same as --layout-search none")
    g.add_argument("--fit-top", type=_positive, default=2, metavar="N",
                   help="mpo-aware: refine only the N layouts with the best starts by sweeps (default 2; 1 is fastest)")
    g.add_argument("--calibration-stats", default=None, metavar="F",
                   help="input statistics saved by --save-calibration (a .safetensors file), used instead of "
                        "--calibration-data: one calibration for many compressions of the same model")
    g.add_argument("--save-calibration", default=None, metavar="F",
                   help="also write the collected input statistics to F (.safetensors), for --calibration-stats")
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
    from ..inputs import DataSpec, read_data
    from ..loading import identify_source, load_model
    from ..recipes.models import resolve_model_source
    from ..surgery import compress

    if args.model is None:
        raise ValueError("--model is required: a transformers folder, an mpokit checkpoint's dense source, a .gguf "
                         "file or a recipe name; e.g. --model SmolLM2-135M-Instruct")
    out = check_output_dir(args.out)
    config = _config(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    source = resolve_model_source(args.model, default=None)
    if identify_source(source).kind == "mpokit" and _holds_mpo_modules(source):  # before reading data or weights
        raise ValueError(f"--model {args.model} is already an mpokit (MPO) checkpoint; compress its dense source model "
                         f"instead, or fine-tune this one: mpokit finetune --model {args.model} --data ...")
    task, kwargs = args.task, {}
    if args.data is not None:
        data, task_obj = read_data(DataSpec(**data_settings(args)))
        task, kwargs = task_obj.name, task_obj.model_kwargs(data)
    calibration = None
    if args.calibration_data is not None:  # read and checked before the model is loaded
        from ..calibration import prepare_calibration

        calibration = prepare_calibration(
            args.calibration_data, samples=args.calibration_samples, max_length=args.max_length,
            block_size=args.block_size, text_column=args.text_column, text_pair_column=args.text_pair_column,
            label_column=args.label_column, seed=args.split_seed)
    saved_stats = None
    if args.calibration_stats is not None:  # read and checked before the model is loaded, too
        from ..calibration import CalibrationStats

        saved_stats = CalibrationStats.load(args.calibration_stats)
    if args.save_calibration is not None:
        _check_stats_path(args.save_calibration, out)
    t0, c0 = time.perf_counter(), time.process_time()
    loaded = load_model(source, task=task or _natural_task(source), seed=args.seed, **kwargs)
    seconds, cpu = {"load": time.perf_counter() - t0}, {"load": time.process_time() - c0}
    if loaded.info.get("mpo"):
        raise ValueError(f"{args.model} already holds MPO layers; compress its dense source model instead")
    from ..io import check_save_target, pruned_modules, save_pretrained

    stats, calibration_info = None, None
    if saved_stats is not None or calibration is not None:
        from ..surgery import resolve_targets

        names = [t.name for t in resolve_targets(loaded.model, config)]
    if saved_stats is not None:
        missing = [n for n in names if n not in saved_stats]
        if missing:
            raise ValueError(f"--calibration-stats {args.calibration_stats} has no statistics for the targets "
                             f"{missing[:3]}{'...' if len(missing) > 3 else ''}: it was collected for other targets or "
                             "another model; collect them with --calibration-data F --save-calibration F")
        saved_stats.check_shapes(loaded.model, names)
        stats = saved_stats
        calibration_info = {"stats_file": str(args.calibration_stats), **saved_stats.info}
    if calibration is not None:
        from ..calibration import collect_calibration

        t0, c0 = time.perf_counter(), time.process_time()
        batches, calibration_info = calibration.batches(loaded.model, loaded.tokenizer)
        seconds["calibration_data"], cpu["calibration_data"] = time.perf_counter() - t0, time.process_time() - c0
        t0, c0 = time.perf_counter(), time.process_time()
        stats = collect_calibration(loaded.model, batches, names, progress=not args.no_progress)
        seconds["calibration"], cpu["calibration"] = time.perf_counter() - t0, time.process_time() - c0
        if args.save_calibration is not None:
            stats.save(args.save_calibration, info={"model": str(source), **(calibration_info or {})})
    check_save_target(loaded.model, out, overwrite=args.overwrite)  # before the decomposition, not after
    t0, c0 = time.perf_counter(), time.process_time()
    model, report = compress(loaded.model, config, calibration=stats, return_report=True, progress=not args.no_progress)
    seconds["compress"], cpu["compress"] = time.perf_counter() - t0, time.process_time() - c0
    seconds.update({f"compress_{k}": v for k, v in report.seconds.items() if k != "calibration"})
    pruned = pruned_modules(model)  # saved with their masks: fine-tuning the checkpoint keeps the zeros
    save_pretrained(model, out, tokenizer=loaded.tokenizer, overwrite=args.overwrite)
    summary = {"model": str(source), "task": loaded.info.get("task"), "compress_seconds": seconds["compress"],
               "calibration_data": calibration_info, "pruned_modules": pruned, "config": config.to_dict(),
               **report.to_dict(), "seconds": seconds,  # the command's phases (the report's are inside compress_*)
               "cpu_seconds": cpu, "threads": torch.get_num_threads()}  # CPU time of this process per phase
    atomic_write_text(out / "compression_report.json", json.dumps(summary, indent=2, default=str))
    atomic_write_text(out / "compression_report.md", f"# mpokit compress: `{source}`\n\n```\n{report.table()}\n```\n")
    if not args.no_progress:
        print(report.table())
    timing = ", ".join(f"{k} {v:.1f}s" for k, v in seconds.items())
    print(f"compressed {len(report.modules)} matrices in {seconds['compress']:.1f}s ({timing}): model "
          f"{report.model_params_before:,} -> {report.model_params_after:,} parameters; checkpoint: {out} "
          f"(mpokit finetune --model {out} ...)")
    if pruned:
        print(f"{len(pruned)} pruned matrices are saved with their masks (weight_orig * weight_mask), so fine-tuning "
              "the checkpoint keeps their zeros")
    return 0


def _check_stats_path(path: str, out) -> None:
    """``--save-calibration F``: a file (its folder is created when missing), outside the checkpoint folder."""
    from pathlib import Path

    target = Path(path)
    if target.is_dir():
        raise ValueError(f"--save-calibration {path} is a folder; give a file name, e.g. --save-calibration "
                         f"{target / 'calibration.safetensors'}")
    from ..atomic import check_output_dir

    check_output_dir(target.parent, "--save-calibration's folder")
    if Path(out).resolve() in target.resolve().parents:
        raise ValueError(f"--save-calibration {path} lies inside --out {out}, which holds only the checkpoint; "
                         f"write it beside it, e.g. --save-calibration {Path(out).parent / 'calibration.safetensors'}")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {text!r}; e.g. 128") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {value}; e.g. 128")
    return value


def _methods() -> list[str]:
    from ..config import method_names

    return method_names()


def _config(args):
    """The :class:`MPOConfig` of the options, every combination checked before any data or model is read."""
    from ..config import MPOConfig, MPOLayerConfig

    if args.calibration_stats is not None and args.calibration_data is not None:
        raise ValueError("give --calibration-data F (collect the statistics) or --calibration-stats F (saved ones), "
                         f"not both; e.g. --calibration-stats {args.calibration_stats}")
    if args.save_calibration is not None and args.calibration_data is None:
        raise ValueError("--save-calibration F writes the statistics collected from --calibration-data; give "
                         f"--calibration-data too, e.g. --calibration-data train.csv --save-calibration {args.save_calibration}")
    if args.no_layout_search and args.layout_search not in (None, "none"):
        raise ValueError(f"--no-layout-search contradicts --layout-search {args.layout_search}; give one of them")
    layout_search = "none" if args.no_layout_search else (args.layout_search or "all")
    calibrated = args.calibration_data is not None or args.calibration_stats is not None
    method = args.method or ("mpo-aware" if calibrated else "mpo")
    global_budget = args.budget is not None and (calibrated or method != "mpo")
    if method in ("mpo-aware", "svd-whitened", "wanda") and not calibrated:
        raise ValueError(f"--method {method} fits the layers' inputs: give --calibration-data F (e.g. the training "
                         "data), or choose a method without data: --method mpo, svd, magnitude or 2:4")
    if method != "mpo" and (args.max_bond is not None or args.rel_error is not None):
        flag = "--max-bond" if args.max_bond is not None else "--rel-error"
        raise ValueError(f"{flag} truncates TT-SVD bonds, but --method {method} takes a parameter budget: use --budget F "
                         "(e.g. --budget 0.5), or --method mpo")
    if args.allocation == "absolute" and not calibrated:
        raise ValueError("--allocation absolute weighs each matrix by its output energy on the calibration data; give "
                         "--calibration-data F, or --allocation global / uniform")
    if args.allocation is not None and not global_budget:
        raise ValueError(f"--allocation {args.allocation} splits a global --budget, which needs --budget F with "
                         "--calibration-data or a --method other than mpo; e.g. --calibration-data train.csv --budget 0.5")
    if method != "mpo" or global_budget:
        layer = MPOLayerConfig(n_cores=args.n_cores)
        embedding = None if args.no_embedding else MPOLayerConfig(n_cores=args.n_cores)
        extra = dict(method=method, budget=args.budget, allocation=args.allocation or ("global" if calibrated else "uniform"),
                     max_sweeps=args.max_sweeps, layout_search=layout_search,
                     fit_top=args.fit_top)
    else:  # TT-SVD with a truncation per matrix (measured under the calibration data when there is some)
        layer = MPOLayerConfig(param_ratio=args.budget, max_bond=args.max_bond, rel_error=args.rel_error,
                               n_cores=args.n_cores)
        embedding = None if args.no_embedding else MPOLayerConfig(n_cores=args.n_cores, **_embedding_budget(args))
        extra = {"method": "mpo"} if calibrated else {}
    targets = args.targets[0] if args.targets == ["all-linear"] else args.targets
    return MPOConfig(target_modules=targets, target_regex=args.target_regex, exclude_modules=args.exclude,
                     embedding=embedding, attention=layer, ffn=layer, other=layer, trainable=args.trainable, **extra)


def _holds_mpo_modules(folder) -> bool:
    """Whether an mpokit checkpoint holds MPO (or pruned) modules; a dense model saved by mpokit (e.g. the
    ``best/`` folder of ``mpokit finetune --method full``) compresses like any transformers folder."""
    from pathlib import Path

    from ..io import _read_meta

    return bool(_read_meta(Path(folder)).get("modules"))


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
