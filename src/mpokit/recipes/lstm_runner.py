"""Run a grid of (seed, method, rate) for one LSTM task and write CSV, tables and plot.

Order: seed-major (every method and rate for seed 0, then seed 1, ...), so an interrupted run still
has complete seeds. With ``resume=True`` runs already in ``runs.csv`` are skipped.

Learning rates: with ``config.lr_grid`` every (method, rate, seed) runs once per learning rate, and the
tables and plot report, per (method, rate), the learning rate whose mean validation metric is best
(:func:`mpokit.recipes.lstm_report.select_learning_rates`); results.md adds the validation table
of every learning rate. Without a grid every run uses ``config.lr``.
"""

from __future__ import annotations

import json
import math
import pathlib
import platform
import sys
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from typing import Callable, Sequence

import torch

from ..atomic import atomic_write_text
from .lstm_common import COMPRESSED_METHODS, check_methods_rates
from .lstm_report import (learning_rate_table, markdown_table, plot_metric, read_runs, run_key, select_learning_rates,
                          timing_table, write_runs)


@dataclass
class ExperimentResult:
    """Every run (rows) and the files written."""

    rows: list[dict]
    out_dir: pathlib.Path
    csv_path: pathlib.Path
    table_path: pathlib.Path
    plot_paths: list[pathlib.Path] = field(default_factory=list)


def grid(methods: Sequence[str], rates: Sequence[float]) -> list[tuple[str, float]]:
    """(method, rate) pairs: dense once at rate 1, then the compressed methods at every rate."""
    methods, rates = check_methods_rates(methods, rates)
    pairs = [("dense", 1)] if "dense" in methods else []
    pairs += [(m, r) for r in rates for m in COMPRESSED_METHODS if m in methods]
    return pairs


# config fields that may change between a run and its resumption (they select runs, not how one trains)
RESUMABLE_CHANGES = ("preset", "rates", "seeds", "methods", "lr", "lr_grid")
# config.json entries that describe the folder, not the training
_FOLDER_FIELDS = ("task", "combined_from")


def _as_json(config) -> dict:
    """A config dataclass as the plain values its config.json holds."""
    return json.loads(json.dumps(asdict(config), default=str))


def training_settings(stored: dict, defaults: dict) -> dict:
    """The fields of a config.json that decide how each run trains; fields missing from an older file
    count as their ``defaults``."""
    skip = (*RESUMABLE_CHANGES, *_FOLDER_FIELDS)
    return {k: stored.get(k, defaults.get(k)) for k in set(stored) | set(defaults) if k not in skip}


def _differences(before: dict, after: dict) -> list[str]:
    return [f"{k}: {before.get(k)!r} -> {after.get(k)!r}" for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)]


def check_resumable(config_path: pathlib.Path, task: str, config) -> None:
    """Refuse to resume into a folder whose runs were trained with other settings (a mixed runs.csv
    would compare unlike runs). Fields missing from an older config.json count as their defaults."""
    if not config_path.exists():
        return
    try:
        stored = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot resume: {config_path} is not readable JSON ({exc}); remove it or use another --out") from None
    if stored.get("task", task) != task:
        raise ValueError(f"cannot resume: {config_path.parent} holds a {stored.get('task')!r} experiment, not {task!r}; "
                         "use another --out")
    defaults = _as_json(type(config)())
    changed = _differences(training_settings(stored, defaults), training_settings(_as_json(config), defaults))
    if changed:
        raise ValueError(f"cannot resume into {config_path.parent}: its runs used other settings ({'; '.join(changed)}). "
                         f"Only {', '.join(RESUMABLE_CHANGES)} may change on --resume; use another --out, e.g. "
                         f"{config_path.parent}_new")


def eligible_from_epoch(epochs: int, steps_per_epoch: int, prune_end: float) -> int:
    """First epoch (1-based) that ends after pruning reached its final sparsity. Model selection
    (best validation) uses only these epochs, for every method alike."""
    end_step = round(prune_end * epochs * steps_per_epoch)
    return max(1, min(epochs, math.ceil(end_step / steps_per_epoch)))


def run_experiment(
    task: str,
    config,
    out_dir: str | pathlib.Path,
    prepare: Callable,
    train_one: Callable,
    metric: tuple[str, str, bool, int],
    *,
    progress: bool = True,
    resume: bool = False,
    command: str | None = None,
    device: str = "cpu",
) -> ExperimentResult:
    """``prepare(config) -> data``; ``train_one(config, data, method, rate, seed, progress, device) -> row``.
    ``metric = (name, y-axis label, higher_is_better, digits)``. ``device``: where every run trains
    (e.g. ``"cuda"``); it is not a training setting, so a folder may be resumed on another device."""
    from tqdm.auto import tqdm

    device_name = check_device(device)
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / "runs.csv"
    if resume:
        check_resumable(out_dir / "config.json", task, config)
    rows = read_runs(csv_path) if resume else []  # a corrupt runs.csv is refused before anything is written
    atomic_write_text(out_dir / "config.json", json.dumps({"task": task, **asdict(config)}, indent=2, default=str))
    for r in rows:  # runs.csv files written before the lr column: their runs used the config's lr
        if r.get("lr") in (None, ""):
            r["lr"] = config.lr
    done = {run_key(r) for r in rows}
    pairs = grid(config.methods, config.rates)
    lrs = tuple(config.lr_grid) or (config.lr,)
    todo = [(s, lr, m, r) for s in config.seeds for lr in lrs for m, r in pairs if (m, float(r), int(s), float(lr)) not in done]
    data = prepare(config)
    for seed, lr, method, rate in tqdm(todo, desc=f"lstm {task} runs", disable=not progress, mininterval=5):
        row = train_one(replace(config, lr=lr, lr_grid=()), data, method, rate, seed, progress, device)
        rows.append(row)
        write_runs(rows, csv_path)
        tqdm.write(  # with or without bars: one line per finished run
            f"[{task}] {method:8s} rate {rate:>4} seed {seed} lr {lr:g}: {metric[0]} valid {row['metric_valid']:.3f} "
            f"test {row['metric_test']:.3f} | {row['lstm_weights']:,} LSTM weights | "
            f"{row['train_s_per_epoch']:.1f} s/epoch train"
        )
    write_runs(rows, csv_path)
    header = [
        f"- preset `{config.preset}`; written {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}; "
        f"torch {torch.__version__}, {platform.machine()}, {torch.get_num_threads()} thread(s), device {device_name}",
        f"- command: `{command or ' '.join(sys.argv)}`",
        f"- config: `{json.dumps(asdict(config), default=str)}`",
    ]
    table_path, plots = write_report(task, rows, out_dir, metric, header)
    return ExperimentResult(rows, out_dir, csv_path, table_path, plots)


def check_device(device: str) -> str:
    """Validate ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...) and return a readable name for reports."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"unknown device {device!r}; use 'cpu' or 'cuda' (e.g. 'cuda:0')") from e
    if dev.type == "cpu":
        return "cpu"
    if dev.type != "cuda":
        raise ValueError(f"device {device!r} is not supported by the experiments; use 'cpu' or 'cuda'")
    if not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but torch {torch.__version__} sees no CUDA device; use --device cpu")
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s); e.g. 'cuda:0'")
    return f"{dev.type}:{index} ({torch.cuda.get_device_name(index)})"


def write_report(task: str, rows: Sequence[dict], out_dir: pathlib.Path, metric: tuple[str, str, bool, int],
                 header: Sequence[str]) -> tuple[pathlib.Path, list[pathlib.Path]]:
    """``results.md`` (test and validation tables at each (method, rate)'s chosen learning rate, the
    per-lr validation table when several were tried, time per epoch) and the PNG of the test metric."""
    name, ylabel, higher, digits = metric
    shown, _ = select_learning_rates(rows, higher)
    body = [
        markdown_table(shown, "metric_test", f"test {name}", higher, digits),
        markdown_table(shown, "metric_valid", f"validation {name}", higher, digits),
        "Time per epoch (same machine, same data):\n",
        timing_table(shown),
    ]
    if len({float(r["lr"]) for r in rows}) > 1:
        body.insert(2, learning_rate_table(rows, f"validation {name}", higher, digits))
    table_path = out_dir / "results.md"
    title = [f"# LSTM {task}: dense vs MPO-LSTM vs pruning-LSTM", "", *header, ""]
    atomic_write_text(table_path, "\n".join(title) + "\n" + "\n".join(body))
    plots = [plot_metric(shown, "metric_test", f"test {ylabel}", out_dir / f"{task}_test_{name}.png", f"LSTM {task}: test {name} vs rate")]
    return table_path, plots


METRICS = {"classify": ("accuracy", "accuracy (%)", True, 2), "lm": ("perplexity", "perplexity", False, 1)}


def combine_runs(task: str, sources: Sequence[str | pathlib.Path], out_dir: str | pathlib.Path, default_config,
                 *, command: str | None = None) -> ExperimentResult:
    """Merge the runs of several experiment folders (e.g. seeds or rates run as parallel processes) into
    one ``out_dir`` with runs.csv, results.md and the PNG, as if one command had run them all.
    ``default_config`` is the task's config with its defaults (e.g. ``ClassifyConfig()``): fields that
    older config.json files lack count as these.

    Every source needs a runs.csv; their config.json files must agree on everything but the rates, seeds,
    methods and learning rates (as for ``--resume``), and no run (method, rate, seed, lr) may appear twice.
    Rows without an ``lr`` (older files) take their folder's configured ``lr``."""
    if task not in METRICS:
        raise ValueError(f"unknown task {task!r}; choose from {tuple(METRICS)}, e.g. 'classify'")
    out_dir = pathlib.Path(out_dir)
    dirs = [pathlib.Path(s) for s in sources]
    if len(dirs) < 1:
        raise ValueError("combine needs at least one source folder, e.g. runs/a runs/b")
    rows, origin, reference = [], {}, None
    defaults = _as_json(default_config)  # fields missing from older config.json files count as their defaults
    for d in dirs:
        if d.resolve() == out_dir.resolve():
            raise ValueError(f"the output folder {out_dir} is also a source; write the combination elsewhere, e.g. {out_dir}_all")
        runs = read_runs(d / "runs.csv")
        if not runs:
            raise ValueError(f"{d / 'runs.csv'} is missing or has no runs; every source folder needs one, e.g. runs/lstm_classify_smoke")
        config = json.loads((d / "config.json").read_text()) if (d / "config.json").exists() else {}
        if config.get("task", task) != task or any(r.get("task", task) != task for r in runs):
            raise ValueError(f"{d} holds {config.get('task') or runs[0].get('task')!r} runs, not {task!r}")
        settings = training_settings(config, defaults)
        if reference is None:
            reference = (d, settings)
        elif settings != reference[1]:
            raise ValueError(f"{d} was trained with other settings than {reference[0]} "
                             f"({'; '.join(_differences(reference[1], settings))}); "
                             "only rates, seeds, methods and learning rates may differ between combined folders")
        for r in runs:
            if r.get("lr") in (None, ""):
                r["lr"] = config.get("lr", "")
            key = run_key(r)
            if key in origin:
                raise ValueError(f"run {key} (method, rate, seed, lr) is in both {origin[key]} and {d}; drop one of them")
            origin[key] = d
            rows.append(r)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = write_runs(rows, out_dir / "runs.csv")
    atomic_write_text(out_dir / "config.json", json.dumps({"task": task, **reference[1],
                                                          "combined_from": [str(d) for d in dirs]}, indent=2, default=str))
    header = [
        f"- combined {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC} from {', '.join(f'`{d}`' for d in dirs)}",
        f"- command: `{command or ' '.join(sys.argv)}`",
    ]
    table_path, plots = write_report(task, rows, out_dir, METRICS[task], header)
    return ExperimentResult(rows, out_dir, csv_path, table_path, plots)
