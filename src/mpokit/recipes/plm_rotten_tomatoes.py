"""MiniLM on Rotten Tomatoes: full fine-tuning vs MPO + LFA (full rank, truncated) vs LoRA vs BitFit.

Every (method, seed) runs in its own process (``python -m mpokit.cli finetune``),
so peak memory is per run; the reports are then aggregated into a markdown
table with mean ± std over seeds::

    python -m mpokit.recipes.plm_rotten_tomatoes --out runs/plm_rt --seeds 0 1 2
    python -m mpokit.recipes.plm_rotten_tomatoes --out runs/plm_rt --aggregate-only

LoRA's rank is set so that its trainable-parameter count matches MPO full rank + LFA
(:func:`lfa_trainable_count`).

Each MPO setting is compressed once (``finetune --compress-only``) and every seed
fine-tunes from that checkpoint (``--init-from``; the head is re-drawn from the
seed exactly as for the other methods), so the fine-tuning processes hold no
decomposition workspaces. Every run gets the same allocator settings
(:data:`MEASURE_ENV`): glibc returns freed blocks above 128 KiB to the OS and
MKL keeps no buffer pool, so peak RSS follows the memory training really holds
instead of how much freed memory the allocator happened to keep.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

# name -> (method, extra CLI options); lrs are each method's usual range, fixed before any test result was seen
ROWS = {
    "full": ("full", ["--lr", "5e-5"]),
    "mpo_full_lfa": ("mpo-lfa", ["--lr", "5e-4", "--mpo-lr", "1e-4"]),
    "mpo_trunc_lfa": ("mpo-lfa", ["--lr", "5e-4", "--mpo-lr", "1e-4", "--param-ratio", "0.65"]),
    "lora": ("lora", ["--lr", "5e-4"]),
    "bitfit": ("bitfit", ["--lr", "1e-3"]),
}
MEASURE_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "MKL_DISABLE_FAST_MM": "1"}
LABELS = {
    "full": "full fine-tuning",
    "mpo_full_lfa": "MPO full rank + LFA",
    "mpo_trunc_lfa": "MPO truncated (encoder 0.65x) + LFA",
    "lora": "LoRA (rank matched to LFA #Ft)",
    "bitfit": "BitFit",
}


def _minilm_classifier():
    """all-MiniLM-L6-v2 with a new 2-label head, as ``mpokit finetune`` loads it for Rotten Tomatoes."""
    from ..loading import load_model
    from .models import named_model_path

    return load_model(named_model_path("all-MiniLM-L6-v2"), task="classify", num_labels=2, seed=0,
                      with_tokenizer=False).model


def lfa_trainable_count(param_ratio: float | None = None) -> int:
    """#Ft of MiniLM after ``compress(model, lfa_config(param_ratio))`` (the real compression)."""
    from ..finetuning import lfa_config
    from ..surgery import compress, count_parameters

    return count_parameters(compress(_minilm_classifier(), lfa_config(param_ratio)), trainable_only=True)


def matched_lora_rank() -> tuple[int, int]:
    """The LoRA rank whose #Ft (on the Linear targets LoRA takes, plus the head) is closest to LFA's."""
    from ..finetuning import lora_rank_for_budget

    budget = lfa_trainable_count()
    return lora_rank_for_budget(_minilm_classifier(), budget), budget


def run_all(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rank_file = out / "lora_rank.json"
    if "lora" in args.rows and args.lora_rank is None:
        if rank_file.is_file():
            rank = json.loads(rank_file.read_text())["rank"]
        else:
            rank, budget = matched_lora_rank()
            rank_file.write_text(json.dumps({"rank": rank, "lfa_trainable": budget}))
    else:
        rank = args.lora_rank
    common = ["--epochs", str(args.epochs), "--train-size", str(args.train_size), "--max-length", str(args.max_length),
              "--validation-size", str(args.validation_size), "--batch-size", str(args.batch_size),
              "--threads", str(args.threads), "--cpu", "--no-progress", "--no-checkpoints"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(args.threads), **MEASURE_ENV}
    for seed in args.seeds:
        for row in args.rows:
            run_dir = out / f"{row}_seed{seed}"
            if (run_dir / "report.json").is_file():
                print(f"skip {run_dir} (done)", flush=True)
                continue
            method, extra = ROWS[row]
            cmd = [sys.executable, "-m", "mpokit.cli", "finetune", "--method", method, "--seed", str(seed),
                   "--out", str(run_dir), *common]
            if method == "mpo-lfa":
                cmd += ["--init-from", str(_compressed(out / f"{row}_compressed", extra, common, env))]
                extra = _without_compression_options(extra)
            cmd += extra
            if method == "lora":
                cmd += ["--lora-rank", str(rank)]
            print(f"{time.strftime('%H:%M:%S')} run: {' '.join(cmd)}", flush=True)
            subprocess.run(cmd, check=False, env=env)


def _without_compression_options(extra: list[str]) -> list[str]:
    """``extra`` without ``--param-ratio X`` (the checkpoint given by --init-from is already compressed)."""
    if "--param-ratio" not in extra:
        return list(extra)
    i = extra.index("--param-ratio")
    return extra[:i] + extra[i + 2:]


def _compressed(directory: Path, extra: list[str], common: list[str], env: dict) -> Path:
    """Compress MiniLM once for this row (``finetune --compress-only``); returns the checkpoint folder."""
    target = directory / "compressed"
    if not (target / "mpo_config.json").is_file():
        cmd = [sys.executable, "-m", "mpokit.cli", "finetune", "--method", "mpo-lfa", "--compress-only",
               "--out", str(directory), *common, *extra]
        print(f"{time.strftime('%H:%M:%S')} compress: {' '.join(cmd)}", flush=True)
        subprocess.run(cmd, check=True, env=env)
    return target


def _ms(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    vals = [v * scale for v in values]
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f}"
    return f"{statistics.mean(vals):.{digits}f} ± {statistics.stdev(vals):.{digits}f}"


def aggregate(out: Path) -> str:
    reports: dict[str, list[dict]] = {}
    for path in sorted(out.glob("*_seed*/report.json")):
        row = path.parent.name.rsplit("_seed", 1)[0]
        reports.setdefault(row, []).append(json.loads(path.read_text()))
    if not reports:
        raise SystemExit(f"no finished runs (*_seed*/report.json) under {str(out)!r}; run without --aggregate-only first")
    lines = ["| method | seeds | test accuracy (%) | median | #To | #Ft | #Ft vs full | time/epoch (s) "
             "| peak train RSS (MiB) | RSS before training (MiB) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    full_ft = reports.get("full", [{}])[0].get("trainable_params")
    for row in ROWS:
        reps = reports.get(row)
        if not reps:
            continue
        to, ft = reps[0]["total_params"], reps[0]["trainable_params"]
        rel = f"{100.0 * (1 - ft / full_ft):.1f}% fewer" if full_ft else "n/a"
        label = LABELS[row] + (f" (r={reps[0]['lora_rank']})" if row == "lora" else "")
        lines.append(
            f"| {label} | {len(reps)} | {_ms([r['test_accuracy'] for r in reps], 100, 2)} | "
            f"{100 * statistics.median(r['test_accuracy'] for r in reps):.2f} | {to / 1e6:.2f}M | "
            f"{ft / 1e6:.3f}M | {rel} | {_ms([r['mean_epoch_seconds'] for r in reps])} | "
            f"{_ms([r['peak_train_rss_mib'] for r in reps], 1, 0)} | "
            f"{_ms([r['history'][0]['rss_before_mib'] for r in reps], 1, 0)} |"
        )
    any_rep = next(iter(reports.values()))[0]
    data = any_rep["data"]
    lines += ["", f"Data: {data['note']}; validation {data['sizes']['validation']}, test {data['sizes']['test']} "
                  f"sentences (split {data['split']}); batch {any_rep['config']['batch_size']}, "
                  f"{any_rep['threads']} thread(s) per run."]
    table = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(table)
    per_seed = {row: {r["config"]["seed"]: r["test_accuracy"] for r in reps} for row, reps in reports.items()}
    (out / "summary.json").write_text(json.dumps({"per_seed_test_accuracy": per_seed}, indent=2))
    return table


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/plm_rt")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--train-size", type=int, default=2000)
    p.add_argument("--validation-size", type=int, default=500)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--lora-rank", type=int, default=None, help="default: matched to MPO full rank + LFA")
    p.add_argument("--aggregate-only", action="store_true")
    args = p.parse_args(argv)
    if not args.aggregate_only:
        run_all(args)
    print(aggregate(Path(args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
