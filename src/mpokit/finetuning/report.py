"""The report of a fine-tuning job: a JSON-ready dict and its markdown."""

from __future__ import annotations

import platform
import time
from typing import Any

import torch

__all__ = ["build_report", "markdown"]


def build_report(config, task, loaders, info: dict, history: list[dict], best: dict, test: dict | None,
                 before: dict, accelerator, *, total_params: int, trainable_params: int, wall_seconds: float,
                 note: str) -> dict[str, Any]:
    """Everything a run reports: settings, data (sources, sizes, splits, truncation), parameter counts,
    per-epoch history, metrics before and after, time per step, memory, machine; plus the compression
    summary when the model was compressed."""
    metric, direction = task.primary_metric
    steps = sum(h["steps"] for h in history)
    seconds = sum(h["train_seconds"] for h in history)
    report = {
        "config": config.to_dict(),
        "method": config.method,
        "task": task.name,
        "primary_metric": {"name": metric, "better": direction},
        "model": info.get("model_path"),
        "data": {"sizes": loaders.sizes, "full_sizes": loaders.full_sizes, "encoding": loaders.stats,
                 "details": loaders.info, "note": note},
        "total_params": total_params,
        "trainable_params": trainable_params,
        "history": history,
        "best_epoch": best["epoch"],
        f"best_validation_{metric}": best[metric],
        "before": before,
        "validation": history[-1]["validation"] if history else None,
        "test": test,
        "seconds_per_step": seconds / steps if steps else None,
        "mean_epoch_seconds": seconds / max(len(history), 1),
        "peak_train_rss_mib": max((h["peak_rss_mib"] for h in history), default=None),
        "wall_seconds": wall_seconds,
        "num_processes": accelerator.num_processes,
        "device": str(accelerator.device),
        "threads": torch.get_num_threads(),
        "machine": platform.platform(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "compress_seconds": info.get("compress_seconds"),
        "lora_rank": info.get("lora_rank"),
    }
    if test is not None:
        report[f"test_{metric}"] = test[metric]
        report["test_loss"] = test["loss"]
    if "report" in info:
        rep = info["report"]
        report["compression"] = {"matrices": len(rep.modules), "matrix_params_before": rep.matrix_params_before,
                                 "matrix_params_after": rep.matrix_params_after,
                                 "model_params_before": rep.model_params_before,
                                 "model_params_after": rep.model_params_after,
                                 "max_rel_error_bound": max((r.rel_error_bound for r in rep.modules), default=0.0)}
    return report


def _fmt(value, spec: str = ".4f") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:{spec}}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def markdown(report: dict) -> str:
    cfg = report["config"]
    metric = report["primary_metric"]["name"]
    test = report.get("test") or {}
    keys = [k for k in test if k not in ("n", "tokens")] or [metric]
    data = report["data"]
    lines = [
        f"# mpokit finetune: {report['method']} ({report['task']})",
        "",
        f"- model: `{report['model']}`",
        f"- data: `{cfg['data']}`; sizes used {data['sizes']} (full {data['full_sizes']}); {data['note']}",
        f"- seed {cfg['seed']}, lr {cfg['lr']}, mpo_lr {cfg['mpo_lr']}, batch {cfg['batch_size']}, "
        f"{report['num_processes']} process(es) on {report['device']}, {report['threads']} thread(s); {report['date']}",
        "",
        "| #To | #Ft | " + " | ".join(f"test {k}" for k in keys) + f" | best validation {metric} (epoch) | s/step | "
        "peak train RSS (MiB) |",
        "|---:|---:|" + "---:|" * len(keys) + "---:|---:|---:|",
        f"| {report['total_params']:,} | {report['trainable_params']:,} | "
        + " | ".join(_fmt(test.get(k)) for k in keys)
        + f" | {_fmt(report[f'best_validation_{metric}'])} ({report['best_epoch']}) | "
        f"{_fmt(report['seconds_per_step'], '.2f')} | {_fmt(report['peak_train_rss_mib'], '.0f')} |",
        "",
        f"| epoch | train loss | validation loss | validation {metric} | seconds |",
        "|---:|---:|---:|---:|---:|",
    ]
    for h in report["history"]:
        v = h["validation"]
        lines.append(f"| {h['epoch']} | {h['train_loss']:.4f} | {v['loss']:.4f} | {v[metric]:.4f} | {h['train_seconds']:.1f} |")
    if report.get("before"):
        parts = [f"{split} {metric} {m[metric]:.4f}" for split, m in report["before"].items()]
        lines += ["", "Before training: " + ", ".join(parts)]
    truncated = {s: st.get("truncated") for s, st in data["encoding"].items() if st.get("truncated")}
    if truncated:
        lines += ["", f"Texts truncated at max_length {cfg['max_length']}: {truncated}"]
    if "compression" in report:
        c = report["compression"]
        lines += ["", f"MPO: {c['matrices']} matrices, {c['matrix_params_before']:,} -> {c['matrix_params_after']:,} "
                      f"parameters; model {c['model_params_before']:,} -> {c['model_params_after']:,}; "
                      f"max relative error bound {c['max_rel_error_bound']:.3e}"]
    return "\n".join(lines) + "\n"
