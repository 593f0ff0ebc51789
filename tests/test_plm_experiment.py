"""The PLM experiment's aggregation (mpokit.recipes.plm_rotten_tomatoes): table columns from per-run reports."""

import json

import pytest

from mpokit.recipes.plm_rotten_tomatoes import _without_compression_options, aggregate


def _report(acc: float, seed: int, seconds: float, peak: float) -> dict:
    return {"test_accuracy": acc, "total_params": 100, "trainable_params": 10, "mean_epoch_seconds": seconds,
            "peak_train_rss_mib": peak, "history": [{"rss_before_mib": 50.0}], "lora_rank": None,
            "config": {"seed": seed, "batch_size": 32}, "threads": 1,
            "data": {"note": "subset", "sizes": {"validation": 5, "test": 7}, "split": "by movie"}}


def test_aggregate_reports_mean_std_median_and_memory(tmp_path):
    for seed, acc in enumerate([0.8, 0.6, 0.7]):
        (tmp_path / f"mpo_full_lfa_seed{seed}").mkdir()
        (tmp_path / f"mpo_full_lfa_seed{seed}" / "report.json").write_text(json.dumps(_report(acc, seed, 10.0 + seed, 900)))
    table = aggregate(tmp_path)
    row = next(line for line in table.splitlines() if line.startswith("| MPO full rank + LFA"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "3" and cells[2] == "70.00 ± 10.00" and cells[3] == "70.00"
    assert cells[7] == "11.0 ± 1.0" and cells[8] == "900 ± 0" and cells[9] == "50 ± 0"
    assert json.loads((tmp_path / "summary.json").read_text())["per_seed_test_accuracy"]["mpo_full_lfa"]["1"] == 0.6


def test_aggregate_without_runs_says_so(tmp_path):
    with pytest.raises(SystemExit, match="no finished runs"):
        aggregate(tmp_path)


def test_init_from_drops_only_the_compression_options():
    assert _without_compression_options(["--lr", "0.65", "--param-ratio", "0.65", "--x"]) == ["--lr", "0.65", "--x"]
    assert _without_compression_options(["--lr", "5e-4"]) == ["--lr", "5e-4"]
