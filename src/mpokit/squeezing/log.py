"""The squeeze log (one row per step, as JSON and CSV) and its plot of the held-out loss (and a second metric)
against parameters."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Mapping, Sequence

from ..atomic import atomic_write_text, atomic_write_with

__all__ = ["LOG_FIELDS", "write_log", "plot_squeeze_log"]

LOG_FIELDS = (
    "step", "matrix", "bonds", "old_dims", "new_dims", "params", "params_ratio", "step_bound",
    "total_bound", "train_loss", "loss", "monitored", "accepted",
)


def _metric_columns(rows: Sequence[Mapping]) -> list[str]:
    """The held-out metric names of ``rows`` (first appearance order), without those already in :data:`LOG_FIELDS`."""
    names: list[str] = []
    for r in rows:
        for name in r.get("metrics") or {}:
            if name not in LOG_FIELDS and name not in names:
                names.append(name)
    return names


def write_log(rows: list[dict], log_path: Path) -> None:
    """``<log_path>.json`` (all rows) and ``<log_path>.csv`` (one line per step: :data:`LOG_FIELDS`, then one
    column per held-out metric); a .json/.csv suffix is dropped first."""
    base = log_path.with_suffix("") if log_path.suffix in (".json", ".csv") else log_path
    json_path, csv_path = base.with_name(base.name + ".json"), base.with_name(base.name + ".csv")
    atomic_write_text(json_path, json.dumps(rows, indent=1))
    metric_names = _metric_columns(rows)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[*LOG_FIELDS, *metric_names], extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        line = {k: (json.dumps(v) if isinstance(v, (list, tuple)) else v) for k, v in r.items() if k in LOG_FIELDS}
        line.update({name: (r.get("metrics") or {}).get(name) for name in metric_names})
        writer.writerow(line)
    atomic_write_text(csv_path, buf.getvalue())


def plot_squeeze_log(rows: Sequence[Mapping], path: str | os.PathLike, title: str = "dimension squeezing",
                     metric: str | None = "accuracy") -> Path:
    """PNG of the held-out loss against the parameters of the MPO matrices, and of ``metric`` (e.g. the task's
    primary metric) on a second axis when every row has it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    params = [r["params"] for r in rows]
    fig, ax1 = plt.subplots(figsize=(6, 4))
    ax1.plot(params, [r["loss"] for r in rows], "o-", color="tab:red", label="loss")
    ax1.set_xlabel("parameters in MPO matrices")
    ax1.set_ylabel("held-out loss", color="tab:red")
    ax1.invert_xaxis()
    values = [(r.get("metrics") or {}).get(metric) for r in rows] if metric not in (None, "loss") else []
    if values and all(isinstance(v, (int, float)) for v in values):
        ax2 = ax1.twinx()
        ax2.plot(params, values, "s-", color="tab:blue", label=metric)
        ax2.set_ylabel(f"held-out {metric}", color="tab:blue")
    ax1.set_title(title)
    fig.tight_layout()
    try:
        return atomic_write_with(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    finally:
        plt.close(fig)
