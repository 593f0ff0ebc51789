"""Results of the LSTM experiments: CSV of every run, markdown tables (rate x method), PNG plot.

A *row* is one run (one method, rate and seed) as a flat dict; see ``RUN_FIELDS``.
"""

from __future__ import annotations

import csv
import math
import os
import pathlib
import statistics
from typing import Iterable, Sequence

from ..atomic import atomic_write_text, atomic_write_with
from .lstm_common import COMPRESSED_METHODS, METHOD_LABELS

RUN_FIELDS = (
    "task", "preset", "method", "rate", "seed", "lr", "metric_valid", "metric_test", "metric_name",
    "best_epoch", "epochs", "first_loss", "last_loss", "lstm_dense_weights", "lstm_weights",
    "achieved_rate", "model_params", "bond_dims", "sparsity", "train_s_per_epoch", "infer_s_per_epoch",
)


# The columns a runs.csv line must hold for the runner to resume it (``lr`` may be missing: older files).
KEY_FIELDS = ("method", "rate", "seed", "metric_valid", "metric_test")
_INT_FIELDS = ("seed",)
_NUMBER_FIELDS = ("rate", "metric_valid", "metric_test")


class RunsFileError(ValueError):
    """A runs CSV that cannot be read back: empty, without the key columns, or with a cut-short or bad line."""


def _parse_value(v: str):
    try:
        return int(v)
    except ValueError:
        try:
            return float(v)
        except ValueError:
            return v


def read_runs(path: str | os.PathLike) -> list[dict]:
    """Rows of a runs CSV (numbers converted back), or [] if the file does not exist.

    Raises :class:`RunsFileError` (a ValueError) naming the file and the line when the file is empty, lacks
    one of :data:`KEY_FIELDS` in its header, or a line has fewer or more fields than the header (e.g. cut
    short by hand or by a full disk) or a key field that is not a number (``rate``, ``seed``, the metrics).
    """
    path = pathlib.Path(path)
    if not path.is_file():
        return []
    fix = (f"fix or delete that line (its run is trained again on --resume), or delete {path.name} to start over; "
           "a good line has one value per header column, e.g. as mpokit lstm writes it")
    rows = []
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames
            if not header:
                raise RunsFileError(f"{path} is empty (not even the header line); delete it to start over, or "
                                    f"restore it: its first line names the columns, e.g. {','.join(RUN_FIELDS[:5])},...")
            missing = [k for k in KEY_FIELDS if k not in header]
            if missing:
                raise RunsFileError(f"{path}, line 1: the header lacks the column(s) {missing} (it has {header}); "
                                    f"a runs.csv header names {', '.join(KEY_FIELDS)} and the other RUN_FIELDS, "
                                    f"e.g. {','.join(RUN_FIELDS[:5])},...; restore the header or delete the file")
            for row in reader:
                line = reader.line_num
                if None in row:  # more values than columns: csv puts the rest under the key None
                    raise RunsFileError(f"{path}, line {line}: {len(header) + len(row[None])} values for the "
                                        f"{len(header)} columns of the header; {fix}")
                absent = [k for k, v in row.items() if v is None]  # fewer values than columns
                if absent:
                    raise RunsFileError(f"{path}, line {line}: {len(header) - len(absent)} values for the "
                                        f"{len(header)} columns of the header (it ends before {absent[0]!r}); {fix}")
                out = {k: _parse_value(v) for k, v in row.items()}
                bad = [k for k in _INT_FIELDS if not isinstance(out[k], int)]
                bad += [k for k in _NUMBER_FIELDS if isinstance(out[k], str)]
                bad += [k for k in ("lr",) if k in out and isinstance(out[k], str) and out[k] != ""]
                if bad or out["method"] == "":
                    what = ", ".join(f"{k}={row[k]!r}" for k in (bad or ["method"]))
                    raise RunsFileError(f"{path}, line {line}: {what} is not a valid value (method: a name, rate and "
                                        f"the metrics: numbers, seed: an int, lr: a number or empty); {fix}")
                rows.append(out)
    except csv.Error as e:
        raise RunsFileError(f"{path}, line {reader.line_num}: not readable as CSV ({e}); {fix}") from None
    except UnicodeDecodeError as e:
        raise RunsFileError(f"{path} is not UTF-8 text ({e}); it is not a runs.csv written by mpokit lstm: "
                            f"restore it or delete it to start over") from None
    return rows


def write_runs(rows: Sequence[dict], path: str | os.PathLike) -> pathlib.Path:
    """Write every run (one line each, columns ``RUN_FIELDS``) atomically."""
    import io

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=RUN_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
    atomic_write_text(path, buf.getvalue())
    return path


def run_key(row: dict) -> tuple:
    """(method, rate, seed, learning rate): what identifies a run in ``runs.csv``."""
    return (str(row["method"]), float(row["rate"]), int(row["seed"]), float(row["lr"]))


def _validation_by_lr(rows: Sequence[dict]) -> dict[tuple[str, float], dict[float, list[float]]]:
    """(method, rate) -> learning rate -> validation metrics over seeds."""
    groups: dict[tuple[str, float], dict[float, list[float]]] = {}
    for r in rows:
        groups.setdefault((r["method"], float(r["rate"])), {}).setdefault(float(r["lr"]), []).append(float(r["metric_valid"]))
    return groups


def _chosen_lrs(groups: dict, higher_is_better: bool) -> dict[tuple[str, float], float]:
    sign = -1.0 if higher_is_better else 1.0
    return {key: min(by_lr, key=lambda lr: (sign * statistics.fmean(by_lr[lr]), lr)) for key, by_lr in groups.items()}


def select_learning_rates(rows: Sequence[dict], higher_is_better: bool) -> tuple[list[dict], dict[tuple[str, float], float]]:
    """Per (method, rate), keep the runs of the learning rate with the best mean validation metric over
    seeds (ties: the smaller rate). Returns (kept rows, {(method, rate): chosen lr}). Test metrics play
    no part in the choice."""
    chosen = _chosen_lrs(_validation_by_lr(rows), higher_is_better)
    kept = [r for r in rows if float(r["lr"]) == chosen[(r["method"], float(r["rate"]))]]
    return kept, chosen


def learning_rate_table(rows: Sequence[dict], title: str, higher_is_better: bool, digits: int = 2) -> str:
    """Validation metric (mean ± std over seeds) per (method, rate) and learning rate; the chosen one in bold."""
    groups = _validation_by_lr(rows)
    chosen = _chosen_lrs(groups, higher_is_better)
    lrs = sorted({float(r["lr"]) for r in rows})
    lines = [
        f"**{title}** per learning rate (mean ± std over seeds; bold: chosen, by validation alone)",
        "",
        "| method | rate | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " |",
        "|---|---|" + "---|" * len(lrs),
    ]
    for method, rate in sorted(groups, key=lambda k: (k[1], k[0])):
        cells = []
        for lr in lrs:
            stat = _stats(groups[(method, rate)].get(lr, []))
            text = _fmt(stat, digits)
            cells.append(f"**{text}**" if lr == chosen[(method, rate)] else text)
        lines.append(f"| {METHOD_LABELS[method]} | {_rate_label(rate)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _stats(values: Iterable[float]) -> tuple[float, float, int]:
    v = [float(x) for x in values]
    if not v:
        return math.nan, math.nan, 0
    return statistics.fmean(v), (statistics.stdev(v) if len(v) > 1 else 0.0), len(v)


def aggregate(rows: Sequence[dict], key: str) -> dict[tuple[str, float], tuple[float, float, int]]:
    """(method, rate) -> (mean, std, n) of column ``key`` over seeds."""
    groups: dict[tuple[str, float], list[float]] = {}
    for r in rows:
        groups.setdefault((r["method"], float(r["rate"])), []).append(float(r[key]))
    return {k: _stats(v) for k, v in groups.items()}


def _fmt(stat, digits: int) -> str:
    mean, std, n = stat
    if n == 0:
        return "–"
    if n == 1:  # no spread to show from one seed
        return f"{mean:.{digits}f} (1 seed)"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _rate_label(rate: float) -> str:
    return str(int(rate)) if float(rate).is_integer() else f"{rate:g}"


def markdown_table(rows: Sequence[dict], key: str, title: str, higher_is_better: bool, digits: int = 2) -> str:
    """Paper-format table: one line per rate, columns dense / pruning-LSTM / MPO-LSTM (and MPO-LSTM with
    gradual truncation when it ran; mean ± std over seeds), the best compressed method in bold, plus
    LSTM weights and whole-model parameters."""
    stats = aggregate(rows, key)
    weights = aggregate(rows, "lstm_weights")
    params = aggregate(rows, "model_params")
    seeds = sorted({int(r["seed"]) for r in rows})
    ran = {r["method"] for r in rows}
    methods = [m for m in COMPRESSED_METHODS if m in ran or m in ("pruning", "mpo")]
    short = " / ".join({"pruning": "pruning", "mpo": "MPO", "mpo_gradual": "MPO gradual"}[m] for m in methods)
    lines = [
        f"**{title}** (mean ± std over seeds {seeds}; {'higher' if higher_is_better else 'lower'} is better). "
        "Rate = dense LSTM W+U weights / kept W+U weights (MPO parameters, or pruning non-zeros). "
        "Embedding and output layers stay dense in every method and are not part of the rate; "
        "`model params` counts the whole model (pruned zeros excluded).",
        "",
        "| rate | dense LSTM | " + " | ".join(METHOD_LABELS[m] for m in methods)
        + f" | LSTM weights ({short}) | model params ({short}) |",
        "|---|---|" + "---|" * len(methods) + "---|---|",
    ]
    if ("dense", 1.0) in stats:
        w, p = weights[("dense", 1.0)][0], params[("dense", 1.0)][0]
        lines.append(f"| 1 (dense) | {_fmt(stats[('dense', 1.0)], digits)} | " + "– | " * len(methods) + f"{w:,.0f} | {p:,.0f} |")
    for rate in sorted({float(r["rate"]) for r in rows if r["method"] != "dense"}):
        cells = {m: stats.get((m, rate), (math.nan, math.nan, 0)) for m in methods}
        text = {m: _fmt(cells[m], digits) for m in cells}
        present = [m for m in methods if cells[m][2]]
        if len(present) > 1 and len({cells[m][0] for m in present}) > 1:
            better = max if higher_is_better else min
            best = better(present, key=lambda m: cells[m][0])
            text[best] = f"**{text[best]}**"
        w = " / ".join(f"{weights[(m, rate)][0]:,.0f}" if (m, rate) in weights else "–" for m in methods)
        p = " / ".join(f"{params[(m, rate)][0]:,.0f}" if (m, rate) in params else "–" for m in methods)
        lines.append(f"| {_rate_label(rate)} | | " + " | ".join(text[m] for m in methods) + f" | {w} | {p} |")
    return "\n".join(lines) + "\n"


def timing_table(rows: Sequence[dict]) -> str:
    """Training and inference (validation pass) seconds per epoch, mean ± std over seeds."""
    train = aggregate(rows, "train_s_per_epoch")
    infer = aggregate(rows, "infer_s_per_epoch")
    lines = [
        "| method | rate | train s / epoch | inference s / epoch (validation pass) |",
        "|---|---|---|---|",
    ]
    for method, rate in sorted(train, key=lambda k: (k[1], k[0])):
        lines.append(
            f"| {METHOD_LABELS[method]} | {_rate_label(rate)} | {_fmt(train[(method, rate)], 2)} | {_fmt(infer[(method, rate)], 2)} |"
        )
    return "\n".join(lines) + "\n"


def plot_metric(rows: Sequence[dict], key: str, ylabel: str, path: str | os.PathLike, title: str) -> pathlib.Path:
    """PNG of ``key`` against rate (log x) for each compressed method (mean ± std error bars), with
    the dense LSTM as a horizontal line and band."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stats = aggregate(rows, key)
    fig = Figure(figsize=(6, 4), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    rates = sorted({float(r["rate"]) for r in rows if r["method"] != "dense"})
    for method, style in zip(COMPRESSED_METHODS, ("s--", "o-", "^-.")):
        pts = [(r, stats[(method, r)]) for r in rates if (method, r) in stats]
        if pts:
            ax.errorbar([p[0] for p in pts], [p[1][0] for p in pts], yerr=[p[1][1] for p in pts], fmt=style, capsize=3, label=METHOD_LABELS[method])
    if ("dense", 1.0) in stats:
        mean, std, _ = stats[("dense", 1.0)]
        ax.axhline(mean, color="black", lw=1, label=METHOD_LABELS["dense"])
        ax.axhspan(mean - std, mean + std, color="black", alpha=0.1)
    if rates:
        ax.set_xscale("log")
        ax.set_xticks(rates)
        ax.set_xticklabels([_rate_label(r) for r in rates])
    ax.set_xlabel("compression rate of LSTM W and U (dense / compressed)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png"))
    return path
