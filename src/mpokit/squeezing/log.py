"""The squeeze log (one row per step, as JSON and CSV) and its plot of loss and accuracy against parameters."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Mapping, Sequence

from ..io import atomic_write_text

__all__ = ["LOG_FIELDS", "write_log", "plot_squeeze_log"]

LOG_FIELDS = (
    "step", "matrix", "bonds", "old_dims", "new_dims", "params", "params_ratio", "step_bound",
    "total_bound", "train_loss", "loss", "accuracy", "accepted",
)


def write_log(rows: list[dict], log_path: Path) -> None:
    """``<log_path>.json`` (all rows) and ``<log_path>.csv`` (one line per step); a .json/.csv suffix is dropped first."""
    base = log_path.with_suffix("") if log_path.suffix in (".json", ".csv") else log_path
    json_path, csv_path = base.with_name(base.name + ".json"), base.with_name(base.name + ".csv")
    atomic_write_text(json_path, json.dumps(rows, indent=1))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=LOG_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (json.dumps(v) if isinstance(v, (list, tuple)) else v) for k, v in r.items()})
    atomic_write_text(csv_path, buf.getvalue())


def plot_squeeze_log(rows: Sequence[Mapping], path: str | os.PathLike, title: str = "dimension squeezing") -> Path:
    """PNG of loss and accuracy against the parameters of the MPO matrices."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    params = [r["params"] for r in rows]
    fig, ax1 = plt.subplots(figsize=(6, 4))
    ax1.plot(params, [r["loss"] for r in rows], "o-", color="tab:red", label="loss")
    ax1.set_xlabel("parameters in MPO matrices")
    ax1.set_ylabel("held-out loss", color="tab:red")
    ax1.invert_xaxis()
    if all(r.get("accuracy") is not None for r in rows):
        ax2 = ax1.twinx()
        ax2.plot(params, [r["accuracy"] for r in rows], "s-", color="tab:blue", label="accuracy")
        ax2.set_ylabel("held-out accuracy", color="tab:blue")
    ax1.set_title(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
