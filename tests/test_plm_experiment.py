"""The method-comparison recipe's aggregation (mpokit.recipes.method_comparison): table columns from per-run reports."""

import json

import pytest

from mpokit.recipes.method_comparison import PRESETS, _without_compression_options, aggregate


def _report(metric: str, value: float, seed: int, seconds: float, peak: float, before=None) -> dict:
    return {"test": {metric: value, "loss": 0.5}, "primary_metric": {"name": metric}, f"best_validation_{metric}": value,
            "total_params": 100, "trainable_params": 10, "seconds_per_step": seconds, "peak_train_rss_mib": peak,
            "history": [{"rss_before_mib": 50.0}], "lora_rank": None, "before": before or {},
            "config": {"seed": seed, "batch_size": 32, "data": "rotten_tomatoes"}, "threads": 1,
            "data": {"note": "subset", "sizes": {"validation": 5, "test": 7}, "details": {"size_unit": "rows"}}}


def test_aggregate_reports_mean_std_median_and_memory(tmp_path):
    for seed, acc in enumerate([0.8, 0.6, 0.7]):
        (tmp_path / f"mpo_full_lfa_seed{seed}").mkdir()
        (tmp_path / f"mpo_full_lfa_seed{seed}" / "report.json").write_text(
            json.dumps(_report("accuracy", acc, seed, 10.0 + seed, 900)))
    table = aggregate(tmp_path, PRESETS["minilm-rt"])
    row = next(line for line in table.splitlines() if line.startswith("| MPO full rank + LFA"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "3" and cells[3] == "70.00 ± 10.00" and cells[4] == "70.00"
    assert cells[8] == "11.00 ± 1.00" and cells[9] == "900 ± 0" and cells[10] == "50 ± 0"
    assert json.loads((tmp_path / "summary.json").read_text())["per_seed_test_accuracy"]["mpo_full_lfa"]["1"] == 0.6


def test_aggregate_shows_perplexity_before_and_after(tmp_path):
    before = {"validation": {"perplexity": 40.0}, "test": {"perplexity": 42.0}}
    for seed, ppl in enumerate([30.0, 32.0]):
        (tmp_path / f"lora_seed{seed}").mkdir()
        (tmp_path / f"lora_seed{seed}" / "report.json").write_text(
            json.dumps(_report("perplexity", ppl, seed, 2.0, 800, before)))
    table = aggregate(tmp_path, PRESETS["smollm2-ptb"])
    assert "test perplexity before" in table.splitlines()[0]
    row = next(line for line in table.splitlines() if line.startswith("| LoRA"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "40.00 ± 0.00" and cells[3] == "42.00 ± 0.00" and cells[5] == "31.00 ± 1.41"


def test_aggregate_without_runs_says_so(tmp_path):
    with pytest.raises(SystemExit, match="no finished runs"):
        aggregate(tmp_path, PRESETS["minilm-rt"])


def test_init_from_drops_only_the_compression_options():
    assert _without_compression_options(["--lr", "0.65", "--param-ratio", "0.65", "--x"]) == ["--lr", "0.65", "--x"]
    assert _without_compression_options(["--lr", "5e-4"]) == ["--lr", "5e-4"]
