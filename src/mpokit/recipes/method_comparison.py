"""Fine-tuning methods side by side on one model, data set and task: full, MPO + LFA, LoRA, BitFit.

Every (method, seed) runs in its own process (``python -m mpokit.cli finetune``), so peak memory is per
run; the reports are aggregated into a markdown table with mean ± std over seeds. Presets:

* ``minilm-rt``: all-MiniLM-L6-v2 on Rotten Tomatoes sentences (classify; MPOP Table 2's setting at CPU
  scale): full, MPO full rank + LFA, MPO truncated (0.65x) + LFA, LoRA, BitFit;
* ``smollm2-ptb``: SmolLM2-135M-Instruct (GGUF) on Penn Treebank text (causal LM, perplexity before and
  after): full, MPO full rank + LFA, LoRA, BitFit.

::

    python -m mpokit.recipes.method_comparison --preset smollm2-ptb --out runs/smollm2_ptb --seeds 0 1 2
    python -m mpokit.recipes.method_comparison --preset smollm2-ptb --out runs/smollm2_ptb --aggregate-only

LoRA's rank is set so that its trainable-parameter count matches MPO full rank + LFA
(:func:`matched_lora_rank`). Each MPO row is compressed once (``finetune --compress-only``) and every
seed fine-tunes from that checkpoint (``--init-from``; a classification head is re-drawn from the seed
exactly as for the other methods), so the fine-tuning processes hold no decomposition workspaces.
Every run gets the same allocator settings (:data:`MEASURE_ENV`): glibc returns freed blocks above
128 KiB to the OS and MKL keeps no buffer pool, so peak RSS follows the memory training really holds.
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

__all__ = ["Preset", "PRESETS", "matched_lora_rank", "run_all", "aggregate", "main"]

MEASURE_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "MKL_DISABLE_FAST_MM": "1"}


@dataclass(frozen=True)
class Preset:
    """One comparison: the model and data, the rows (name -> (method, extra finetune options)), their
    labels, and the finetune options every row shares (overridable on the command line)."""

    model: str
    data: str
    task: str
    rows: dict[str, tuple[str, list[str]]]
    labels: dict[str, str]
    options: dict[str, str] = field(default_factory=dict)
    flags: tuple[str, ...] = ()


# learning rates are each method's usual range, fixed before any test result was seen
PRESETS: dict[str, Preset] = {
    "minilm-rt": Preset(
        model="all-MiniLM-L6-v2", data="rotten_tomatoes", task="classify",
        rows={
            "full": ("full", ["--lr", "5e-5"]),
            "mpo_full_lfa": ("mpo-lfa", ["--lr", "5e-4", "--mpo-lr", "1e-4"]),
            "mpo_trunc_lfa": ("mpo-lfa", ["--lr", "5e-4", "--mpo-lr", "1e-4", "--param-ratio", "0.65"]),
            "lora": ("lora", ["--lr", "5e-4"]),
            "bitfit": ("bitfit", ["--lr", "1e-3"]),
        },
        labels={"full": "full fine-tuning", "mpo_full_lfa": "MPO full rank + LFA",
                "mpo_trunc_lfa": "MPO truncated (encoder 0.65x) + LFA", "lora": "LoRA (rank matched to LFA #Ft)",
                "bitfit": "BitFit"},
        options={"--epochs": "1", "--train-size": "2000", "--validation-size": "500", "--max-length": "64",
                 "--batch-size": "32"},
    ),
    "smollm2-ptb": Preset(
        model="SmolLM2-135M-Instruct", data="ptb", task="lm",
        rows={
            "full": ("full", ["--lr", "2e-5"]),
            "full_lr1e4": ("full", ["--lr", "1e-4"]),
            "mpo_full_lfa": ("mpo-lfa", ["--lr", "1e-4", "--mpo-lr", "1e-4"]),
            "lora": ("lora", ["--lr", "3e-4"]),
            "bitfit": ("bitfit", ["--lr", "1e-3"]),
        },
        labels={"full": "full fine-tuning (lr 2e-5)", "full_lr1e4": "full fine-tuning (lr 1e-4)",
                "mpo_full_lfa": "MPO full rank + LFA", "lora": "LoRA (rank matched to LFA #Ft)",
                "bitfit": "BitFit (norms; Llama has no biases)"},
        options={"--epochs": "1", "--max-length": "128", "--block-size": "128", "--batch-size": "4",
                 "--eval-batch-size": "8", "--max-steps-per-epoch": "60", "--validation-size": "64",
                 "--test-size": "128", "--warmup-ratio": "0.1"},
        flags=("--eval-before",),
    ),
}


def _finetune_cmd(preset: Preset, out: Path, options: dict, extra: list[str]) -> list[str]:
    opts = [x for k, v in options.items() for x in (k, v)]
    return [sys.executable, "-m", "mpokit.cli", "finetune", "--model", preset.model, "--data", preset.data,
            "--task", preset.task, "--out", str(out), *opts, *preset.flags, "--cpu", "--no-progress", *extra]


def _compressed(preset: Preset, directory: Path, extra: list[str], options: dict, env: dict) -> Path:
    """Compress the model once for this row (``finetune --compress-only``); returns the checkpoint folder."""
    target = directory / "compressed"
    if not (target / "mpo_config.json").is_file():
        cmd = _finetune_cmd(preset, directory, options, ["--method", "mpo-lfa", "--compress-only", *extra])
        print(f"{time.strftime('%H:%M:%S')} compress: {' '.join(cmd)}", flush=True)
        subprocess.run(cmd, check=True, env=env)
    return target


def _without_compression_options(extra: list[str]) -> list[str]:
    """``extra`` without ``--param-ratio X`` (the checkpoint given by --init-from is already compressed)."""
    if "--param-ratio" not in extra:
        return list(extra)
    i = extra.index("--param-ratio")
    return extra[:i] + extra[i + 2:]


def matched_lora_rank(preset: Preset, compressed: Path) -> tuple[int, int]:
    """``(rank, LFA #Ft)``: the LoRA rank whose #Ft on the dense model (Linear targets plus the head) is closest
    to the trainable count of the compressed MPO + LFA checkpoint."""
    from ..finetuning import lora_rank_for_budget
    from ..loading import load_model
    from ..surgery import count_parameters
    from .models import resolve_model_source

    kwargs = {"num_labels": 2} if preset.task == "classify" else {}
    budget = count_parameters(load_model(compressed, task=preset.task, with_tokenizer=False, **kwargs).model,
                              trainable_only=True)
    dense = load_model(resolve_model_source(preset.model), task=preset.task, seed=0, with_tokenizer=False, **kwargs)
    return lora_rank_for_budget(dense.model, budget), budget


def run_all(preset: Preset, args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    options = {**preset.options, **{k: v for k, v in args.overrides.items() if v is not None},
               "--threads": str(args.threads)}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(args.threads), **MEASURE_ENV}
    mpo_rows = [r for r in args.rows if preset.rows[r][0] == "mpo-lfa"]
    compressed = {r: _compressed(preset, out / f"{r}_compressed", preset.rows[r][1], options, env) for r in mpo_rows}
    rank = args.lora_rank
    if "lora" in args.rows and rank is None:
        rank_file = out / "lora_rank.json"
        if rank_file.is_file():
            rank = json.loads(rank_file.read_text())["rank"]
        else:
            full = compressed.get("mpo_full_lfa") or _compressed(
                preset, out / "mpo_full_lfa_compressed", preset.rows["mpo_full_lfa"][1], options, env)
            rank, budget = matched_lora_rank(preset, full)
            rank_file.write_text(json.dumps({"rank": rank, "lfa_trainable": budget}))
    for seed in args.seeds:
        for row in args.rows:
            run_dir = out / f"{row}_seed{seed}"
            if (run_dir / "report.json").is_file():
                print(f"skip {run_dir} (done)", flush=True)
                continue
            method, extra = preset.rows[row]
            extra = ["--method", method, "--seed", str(seed), "--no-checkpoints", *extra]
            if method == "mpo-lfa":
                extra = [*_without_compression_options(extra), "--init-from", str(compressed[row])]
            if method == "lora":
                extra += ["--lora-rank", str(rank)]
            cmd = _finetune_cmd(preset, run_dir, options, extra)
            print(f"{time.strftime('%H:%M:%S')} run: {' '.join(cmd)}", flush=True)
            subprocess.run(cmd, check=False, env=env)


def _ms(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    vals = [v * scale for v in values if v is not None]
    if not vals:
        return "-"
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f}"
    return f"{statistics.mean(vals):.{digits}f} ± {statistics.stdev(vals):.{digits}f}"


def aggregate(out: Path, preset: Preset) -> str:
    """The markdown table of every finished run under ``out`` (also ``summary.md`` / ``summary.json``)."""
    reports: dict[str, list[dict]] = {}
    for path in sorted(Path(out).glob("*_seed*/report.json")):
        row = path.parent.name.rsplit("_seed", 1)[0]
        reports.setdefault(row, []).append(json.loads(path.read_text()))
    if not reports:
        raise SystemExit(f"no finished runs (*_seed*/report.json) under {str(out)!r}; run without --aggregate-only first")
    any_rep = next(iter(reports.values()))[0]
    metric = any_rep["primary_metric"]["name"]
    scale, digits = (100.0, 2) if metric == "accuracy" else (1.0, 2)
    unit = " (%)" if metric == "accuracy" else ""
    before = any(r.get("before") for reps in reports.values() for r in reps)
    head = ["method", "seeds"]
    if before:
        head += [f"validation {metric} before", f"test {metric} before"]
    head += [f"validation {metric} after", f"test {metric}{unit}", "median", "#To", "#Ft", "#Ft vs full", "s/step",
             "peak train RSS (MiB)", "RSS before training (MiB)"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    full_ft = reports.get("full", [{}])[0].get("trainable_params")
    for row in preset.rows:
        reps = reports.get(row)
        if not reps:
            continue
        to, ft = reps[0]["total_params"], reps[0]["trainable_params"]
        rel = f"{100.0 * (1 - ft / full_ft):.1f}% fewer" if full_ft else "n/a"
        label = preset.labels[row] + (f" (r={reps[0]['lora_rank']})" if row == "lora" else "")
        cells = [label, str(len(reps))]
        if before:
            cells += [_ms([r["before"].get(s, {}).get(metric) for r in reps if r.get("before")], scale, digits)
                      for s in ("validation", "test")]
        tests = [r["test"][metric] for r in reps]
        cells += [_ms([r["best_validation_" + metric] for r in reps], scale, digits), _ms(tests, scale, digits),
                  f"{scale * statistics.median(tests):.{digits}f}", f"{to / 1e6:.2f}M", f"{ft / 1e6:.3f}M", rel,
                  _ms([r["seconds_per_step"] for r in reps], 1, 2), _ms([r["peak_train_rss_mib"] for r in reps], 1, 0),
                  _ms([r["history"][0]["rss_before_mib"] for r in reps], 1, 0)]
        lines.append("| " + " | ".join(cells) + " |")
    data = any_rep["data"]
    lines += ["", f"Data: `{any_rep['config']['data']}`; {data['note']}; validation {data['sizes'].get('validation')}, "
                  f"test {data['sizes'].get('test')} {data['details'].get('size_unit', 'rows')}; batch "
                  f"{any_rep['config']['batch_size']}, {any_rep['threads']} thread(s) per run."]
    table = "\n".join(lines) + "\n"
    (Path(out) / "summary.md").write_text(table)
    per_seed = {row: {r["config"]["seed"]: r["test"][metric] for r in reps} for row, reps in reports.items()}
    (Path(out) / "summary.json").write_text(json.dumps({f"per_seed_test_{metric}": per_seed}, indent=2))
    return table


def main(argv=None, default_preset: str = "minilm-rt") -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default=default_preset)
    p.add_argument("--out", default=None, help="default: runs/<preset>")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--rows", nargs="+", default=None, help="a subset of the preset's rows")
    for name in ("epochs", "train-size", "validation-size", "test-size", "max-length", "block-size", "batch-size",
                 "max-steps-per-epoch"):
        p.add_argument(f"--{name}", default=None, help="override the preset's value")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--lora-rank", type=int, default=None, help="default: matched to MPO full rank + LFA")
    p.add_argument("--aggregate-only", action="store_true")
    args = p.parse_args(argv)
    preset = PRESETS[args.preset]
    args.out = args.out or f"runs/{args.preset}"
    args.rows = args.rows or list(preset.rows)
    unknown = [r for r in args.rows if r not in preset.rows]
    if unknown:
        p.error(f"unknown rows {unknown} for preset {args.preset}; its rows are {list(preset.rows)}")
    args.overrides = {f"--{n}": getattr(args, n.replace("-", "_")) for n in
                      ("epochs", "train-size", "validation-size", "test-size", "max-length", "block-size",
                       "batch-size", "max-steps-per-epoch")}
    if not args.aggregate_only:
        run_all(preset, args)
    print(aggregate(Path(args.out), preset))
    return 0


if __name__ == "__main__":
    sys.exit(main())
