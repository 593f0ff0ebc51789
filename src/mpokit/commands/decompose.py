"""``mpokit decompose``: MPO-decompose every weight matrix of a model and report it.

Prints a per-matrix table (shape, modes, bond dimensions, parameters, relative
error, central-bond entropy), writes ``report.json`` / ``report.md`` and a PNG
of the singular-value spectra and entropies into ``--out``. The logic lives in
:mod:`mpokit.analysis` and :mod:`mpokit.plots`.

An mpokit checkpoint loads as its MPO model; the matrices of its MPO layers are
rebuilt from their cores and decomposed with the dense ones, and the table's
"from" column (``source`` in report.json) says which came from MPO layers.
"""

from __future__ import annotations

import argparse
import time

GAUGE_CHOICES = ("symmetric", "center", "right")  # mpokit.mpo.GAUGES; checked again by MPO.from_matrix


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "decompose",
        help="MPO-decompose every weight matrix of a model; print a table, save a report and a plot",
        description=(
            "MPO-decompose every Linear/Embedding weight matrix of a transformers model. Prints a per-matrix "
            "table (shape, modes, bond dimensions, parameters, relative error, central-bond entropy) and writes "
            "report.json, report.md and spectra.png (singular-value spectra and entropies per bond) into --out. "
            "For an mpokit checkpoint the matrices of its MPO layers are rebuilt from their cores and decomposed "
            "too; the 'from' column marks them."
        ),
    )
    parser.add_argument("--model", default=None, metavar="DIR",
                        help="a transformers model folder (save_pretrained) or an mpokit checkpoint (mpokit.save_pretrained); "
                             "default: the installed all-MiniLM-L6-v2")
    parser.add_argument("--n-cores", type=int, default=5, help="number of cores per MPO (default: 5, as in MPOP)")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--max-bond", type=int, default=None, help="cap every bond dimension (default: exact, no cap)")
    budget.add_argument("--rel-error", type=float, default=None,
                        help="relative Frobenius error budget per matrix, in [0, 1) (default: exact)")
    parser.add_argument("--gauge", choices=GAUGE_CHOICES, default="symmetric", help="canonical form (default: symmetric)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="precision of the decomposition")
    parser.add_argument("--out", default="runs/decompose", metavar="DIR",
                        help="folder for report.json, report.md and spectra.png (default: runs/decompose)")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    import torch

    from ..analysis import decompose_model, format_table, summarize, write_report
    from ..atomic import check_output_dir
    from ..loading import load_model
    from ..recipes.models import resolve_model_source

    check_output_dir(args.out)
    model_path = resolve_model_source(args.model)
    start = time.perf_counter()
    model = load_model(model_path, with_tokenizer=False).model.eval()
    load_seconds = time.perf_counter() - start
    reports = decompose_model(
        model,
        dtype=getattr(torch, args.dtype),
        progress=not args.no_progress,
        n_cores=args.n_cores,
        max_bond=args.max_bond,
        rel_error=args.rel_error,
        gauge=args.gauge,
    )
    settings = {
        "model": model_path,
        "n_cores": args.n_cores,
        "max_bond": args.max_bond,
        "rel_error": args.rel_error,
        "gauge": args.gauge,
        "dtype": args.dtype,
        "mpo_layer_matrices": sum(r.source == "mpo" for r in reports),
    }
    print(format_table(reports))
    summary = summarize(reports)
    print(
        f"\n{summary['matrices']} matrices: {summary['mpo_params']:,} MPO parameters for {summary['dense_params']:,} dense "
        f"(ratio {summary['compression_ratio']:.3f}); decomposed in {summary['seconds']:.1f} s "
        f"(model loaded in {load_seconds:.1f} s)"
    )
    if summary["mpo_matrices"]:
        print(f"{summary['mpo_matrices']} of these matrices were rebuilt from the cores of the model's MPO layers "
              "(column 'from'); their spectra are those of the compressed model, bounded by its bond dimensions")
    paths = write_report(reports, args.out, settings)
    print(f"report: {paths['json']}  {paths['markdown']}")
    if not args.no_plot:
        from ..plots import plot_spectra

        name = "all-MiniLM-L6-v2" if args.model is None else model_path
        png = plot_spectra(reports, f"{args.out}/spectra.png", title=f"MPO spectra of {name} ({args.n_cores} cores)")
        print(f"plot: {png}")
    return 0
