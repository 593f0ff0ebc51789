"""Compression methods side by side at equal parameters: mpo, mpo-aware, svd, svd-whitened and pruning.

Every method of :data:`mpokit.aware.METHODS` compresses the same model with the same calibration data
(``mpokit compress --method M --budget B --calibration-data ...``), at each budget (a fraction of the
targeted matrices' dense parameters). Then, each in its own process:

1. the task metric straight after compression (``mpokit evaluate``), deterministic, so one run;
2. the same metric after the same short fine-tuning of every parameter ("healing", ``mpokit finetune
   --method full``; pruned models keep their masks), one run per seed.

The calibration statistics are collected once per target group (the first compression writes
``<out>/<group>/calibration.safetensors``; every other reads it with ``--calibration-stats``), so every method
sees exactly the same ``C``. Per-matrix output and weight errors come from each checkpoint's
``compression_report.json``. Presets:

* ``minilm-rt``: all-MiniLM-L6-v2 fine-tuned on Rotten Tomatoes (the dense source is fine-tuned first,
  ``mpokit finetune --method full``), attention and FFN matrices at 75 / 50 / 35 / 25%, and the word
  embedding alone as its own rows;
* ``smollm2-ptb``: SmolLM2-135M-Instruct on Penn Treebank text, every linear layer at 90 / 80 / 60 / 40%;
  mpo-aware searches the layouts with exact whitening only (``--layout-search exact``).

::

    python -m mpokit.recipes.compression_comparison --preset minilm-rt --out runs/compression_rt --seeds 0 1 2
    python -m mpokit.recipes.compression_comparison --preset minilm-rt --out runs/compression_rt --aggregate-only

Runs are skipped when their output exists, so a stopped comparison resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .method_comparison import _ms

__all__ = ["Preset", "PRESETS", "run_all", "aggregate", "main"]

METHODS = ("mpo", "mpo-aware", "svd", "svd-whitened", "magnitude", "2:4", "wanda")
FIXED_BUDGET = {"2:4": 0.5}  # semi-structured sparsity keeps half of every matrix, whatever the budget
MEASURE_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "MKL_DISABLE_FAST_MM": "1"}


@dataclass(frozen=True)
class Preset:
    """One comparison: the dense source (fine-tuned first when ``source_finetune`` is given), the data and
    task, the budgets, the target groups (name -> ``mpokit compress`` target options), the calibration
    options, the evaluation options, the healing (``mpokit finetune``) options and further ``mpokit
    compress`` options of every method."""

    model: str
    data: str
    task: str
    budgets: tuple[float, ...]
    groups: dict[str, list[str]]
    calibration: list[str]
    evaluate: list[str]
    heal: list[str]
    source_finetune: list[str] = field(default_factory=list)
    heal_groups: tuple[str, ...] = ()
    compress: list[str] = field(default_factory=list)


PRESETS: dict[str, Preset] = {
    "minilm-rt": Preset(
        model="all-MiniLM-L6-v2", data="rotten_tomatoes", task="classify",
        budgets=(0.75, 0.5, 0.35, 0.25),
        groups={"encoder": ["--no-embedding"], "embedding": ["--targets", "embeddings.word_embeddings"]},
        calibration=["--calibration-samples", "256", "--max-length", "64"],
        evaluate=["--max-length", "64", "--validation-size", "64"],
        heal=["--method", "full", "--lr", "5e-5", "--epochs", "1", "--train-size", "1000", "--validation-size", "200",
              "--max-length", "64", "--batch-size", "32"],
        source_finetune=["--method", "full", "--lr", "5e-5", "--epochs", "1", "--train-size", "3000",
                         "--validation-size", "500", "--max-length", "64", "--batch-size", "32", "--seed", "0"],
        heal_groups=("encoder",),
    ),
    "smollm2-ptb": Preset(
        model="SmolLM2-135M-Instruct", data="ptb", task="lm",
        budgets=(0.9, 0.8, 0.6, 0.4),
        groups={"linear": ["--no-embedding"]},
        calibration=["--calibration-samples", "128", "--block-size", "256"],
        evaluate=["--block-size", "128", "--max-length", "128", "--validation-size", "48", "--test-size", "96"],
        heal=["--method", "full", "--lr", "1e-4", "--epochs", "1", "--max-steps-per-epoch", "200",
              "--block-size", "128", "--max-length", "128", "--batch-size", "4", "--eval-batch-size", "8",
              "--validation-size", "48", "--test-size", "96", "--warmup-ratio", "0.1"],
        heal_groups=("linear",),
        compress=["--layout-search", "exact"],  # 210 matrices: every layout's TT-SVD would cost ~20 min per budget
    ),
}


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "mpokit.cli", *args]


def _run(cmd: list[str], env: dict, log: Path) -> bool:
    print(f"{time.strftime('%H:%M:%S')} {' '.join(cmd)}", flush=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        rc = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        print(f"   failed (exit {rc}); see {log}", flush=True)
    return rc == 0


def _tag(budget: float) -> str:
    return f"{round(budget * 100):d}"


def _method_dir(method: str) -> str:
    return method.replace(":", "-")


def _source(preset: Preset, out: Path, env: dict, threads: int) -> str:
    """The dense model every method compresses: the preset's model, fine-tuned first when the preset says so."""
    if not preset.source_finetune:
        return preset.model
    best = out / "dense" / "best"
    if not (best / "config.json").is_file():
        _run(_cli("finetune", "--model", preset.model, "--data", preset.data, "--task", preset.task,
                  *preset.source_finetune, "--threads", str(threads), "--cpu", "--no-progress",
                  "--out", str(out / "dense")), env, out / "dense.log")
    return str(best)


def run_all(preset: Preset, args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(args.threads), **MEASURE_ENV}
    threads = ["--threads", str(args.threads)]
    source = _source(preset, out, env, args.threads)
    dense_metrics = out / "dense_metrics.json"
    if not dense_metrics.is_file():
        _run(_cli("evaluate", "--model", source, "--data", preset.data, "--task", preset.task, *preset.evaluate,
                  *threads, "--no-progress", "--out", str(dense_metrics)), env, out / "evaluate.log")
    for group in args.groups:
        for budget in args.budgets:
            for method in args.methods:
                if method in FIXED_BUDGET and FIXED_BUDGET[method] != budget:
                    continue
                run = out / group / f"{_method_dir(method)}_{_tag(budget)}"
                ckpt = run / "compressed"
                if not (ckpt / "compression_report.json").is_file():
                    stats = out / group / "calibration.safetensors"  # collected by the first run, read by the others
                    calibration = (["--calibration-stats", str(stats)] if stats.is_file() else
                                   ["--calibration-data", preset.data, *preset.calibration, "--save-calibration", str(stats)])
                    ok = _run(_cli("compress", "--model", source, "--task", preset.task, "--method", method,
                                   "--budget", str(budget), *calibration, *preset.groups[group], *preset.compress,
                                   *(["--allocation", args.allocation] if getattr(args, "allocation", None) else []),
                                   *threads, "--no-progress", "--overwrite", "--out", str(ckpt)), env, run / "compress.log")
                    if not ok:
                        continue
                metrics = run / "metrics.json"
                if not metrics.is_file():
                    _run(_cli("evaluate", "--model", str(ckpt), "--data", preset.data, "--task", preset.task,
                              *preset.evaluate, *threads, "--no-progress", "--out", str(metrics)), env, run / "evaluate.log")
                if group not in preset.heal_groups or not args.seeds:
                    continue
                for seed in args.seeds:
                    healed = run / f"healed_seed{seed}"
                    if (healed / "report.json").is_file():
                        continue
                    _run(_cli("finetune", "--model", str(ckpt), "--data", preset.data, "--task", preset.task,
                              *preset.heal, "--seed", str(seed), *threads, "--cpu", "--no-progress",
                              "--no-checkpoints", "--out", str(healed)), env, run / f"heal_seed{seed}.log")


# ---------------------------------------------------------------------------------------------------------
# aggregation
# ---------------------------------------------------------------------------------------------------------


def _test_metric(metrics: dict, name: str) -> float | None:
    splits = metrics.get("splits", {})
    split = splits.get("test") or next(iter(splits.values()), {})
    return split.get(name)


def _rows(report: dict) -> list[dict]:
    return [m for m in report.get("modules", []) if m.get("params_before")]


def _matrix_kind(name: str) -> str:
    for key, kind in (("query", "query"), ("q_proj", "query"), ("key", "key"), ("k_proj", "key"),
                      ("value", "value"), ("v_proj", "value"), ("attention.output", "attn out"), ("o_proj", "attn out"),
                      ("intermediate", "ffn in"), ("gate_proj", "ffn gate"), ("up_proj", "ffn in"),
                      ("output.dense", "ffn out"), ("down_proj", "ffn out"), ("embed", "embedding")):
        if key in name:
            return kind
    return "other"


def aggregate(out: Path, preset: Preset, metric: str | None = None) -> str:
    """Markdown tables of every finished run under ``out`` (also written to ``summary.md`` / ``summary.json``)."""
    out = Path(out)
    metric = metric or ("accuracy" if preset.task == "classify" else "perplexity" if preset.task == "lm" else "mse")
    scale, digits = (100.0, 2) if metric == "accuracy" else (1.0, 2)
    dense = json.loads((out / "dense_metrics.json").read_text()) if (out / "dense_metrics.json").is_file() else {}
    lines = [f"Dense source: test {metric} {_ms([_test_metric(dense, metric)], scale, digits)}.", ""]
    summary: dict = {"dense": _test_metric(dense, metric), "runs": {}}
    for group in preset.groups:
        head = ["budget", "method", "params kept", f"test {metric}, no healing", f"test {metric}, healed",
                "seeds", "mean rel. output error", "max rel. output error", "mean rel. weight error", "layouts"]
        body = []
        for budget in preset.budgets:
            for method in METHODS:
                run = out / group / f"{_method_dir(method)}_{_tag(budget)}"
                report_path = run / "compressed" / "compression_report.json"
                if not report_path.is_file():
                    continue
                report = json.loads(report_path.read_text())
                rows = _rows(report)
                before = sum(m["params_before"] for m in rows)
                after = sum(m["params_after"] for m in rows)
                out_err = [m.get("rel_output_error") for m in rows if m.get("rel_output_error") is not None]
                w_err = [m.get("rel_weight_error") for m in rows if m.get("rel_weight_error") is not None]
                layouts: dict[str, int] = {}
                for m in rows:
                    layouts[m.get("layout") or "-"] = layouts.get(m.get("layout") or "-", 0) + 1
                no_heal = (_test_metric(json.loads((run / "metrics.json").read_text()), metric)
                           if (run / "metrics.json").is_file() else None)
                healed = [json.loads(p.read_text())["test"][metric] for p in sorted(run.glob("healed_seed*/report.json"))]
                body.append([f"{_tag(budget)}%", method, f"{after / max(before, 1):.3f}",
                             _ms([no_heal], scale, digits), _ms(healed, scale, digits), str(len(healed)),
                             f"{statistics.mean(out_err):.3f}" if out_err else "-",
                             f"{max(out_err):.3f}" if out_err else "-",
                             f"{statistics.mean(w_err):.3f}" if w_err else "-",
                             ", ".join(f"{k} x{v}" for k, v in sorted(layouts.items()))])
                summary["runs"][f"{group}/{method}/{budget}"] = {
                    "params_kept": after / max(before, 1), "no_healing": no_heal, "healed": healed,
                    "per_matrix": {m["name"]: {k: m.get(k) for k in ("params_before", "params_after", "rel_output_error",
                                                                       "rel_weight_error", "layout")} for m in rows}}
        if body:
            lines += [f"**{group}**", "", "| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 3) + "---|"]
            lines += ["| " + " | ".join(r) + " |" for r in body] + [""]
    lines += _ratio_lines(summary)
    text = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(text)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return text


def _ratio_lines(summary: dict) -> list[str]:
    """Per matrix kind and budget: mpo-aware's output error over mpo's, and over svd-whitened's (max over matrices)."""
    lines = ["| group | budget | matrix kind | mpo-aware / mpo (max) | mpo-aware / svd-whitened (max) |",
             "|---|---:|---|---:|---:|"]
    found = False
    for key, run in summary["runs"].items():
        group, method, budget = key.split("/")
        if method != "mpo-aware":
            continue
        ref = {m: summary["runs"].get(f"{group}/{m}/{budget}") for m in ("mpo", "svd-whitened")}
        by_kind: dict[str, list[tuple[float | None, float | None]]] = {}
        for name, row in run["per_matrix"].items():
            mine = row["rel_output_error"]
            ratios = []
            for m in ("mpo", "svd-whitened"):
                other = (ref[m] or {}).get("per_matrix", {}).get(name, {}).get("rel_output_error")
                ratios.append(mine / other if mine is not None and other else None)
            by_kind.setdefault(_matrix_kind(name), []).append(tuple(ratios))
        for kind, ratios in sorted(by_kind.items()):
            cells = []
            for i in range(2):
                vals = [r[i] for r in ratios if r[i] is not None]
                cells.append(f"{max(vals):.3f}" if vals else "-")
            lines.append(f"| {group} | {float(budget) * 100:.0f}% | {kind} | {cells[0]} | {cells[1]} |")
            found = True
    return lines + [""] if found else []


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="minilm-rt")
    p.add_argument("--out", default=None, help="default: runs/compression_<preset>")
    p.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2], help="healing seeds (none: no healing)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--budgets", type=float, nargs="+", default=None, help="default: the preset's")
    p.add_argument("--groups", nargs="+", default=None, help="a subset of the preset's target groups")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--allocation", choices=("global", "absolute", "uniform"), default=None,
                   help="how each budget is split over the matrices (default: compress's, global); uniform gives every "
                        "method the same share of each matrix, so per-matrix errors compare at equal parameters; absolute "
                        "weighs each matrix by its output energy")
    p.add_argument("--aggregate-only", action="store_true")
    args = p.parse_args(argv)
    preset = PRESETS[args.preset]
    args.out = args.out or f"runs/compression_{args.preset}"
    args.budgets = args.budgets or list(preset.budgets)
    args.groups = args.groups or list(preset.groups)
    unknown = [g for g in args.groups if g not in preset.groups]
    if unknown:
        p.error(f"unknown groups {unknown} for preset {args.preset}; its groups are {list(preset.groups)}")
    if not args.aggregate_only:
        run_all(preset, args)
    print(aggregate(Path(args.out), preset))
    return 0


if __name__ == "__main__":
    sys.exit(main())
