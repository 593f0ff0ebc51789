"""The compression-comparison recipe end to end on a tiny Llama: one calibration file shared by every method.

Reference: the statistics file the first compression writes is what the second reads (its report names it),
and both checkpoints' output errors are measured under the same C, so svd-whitened's is at most svd's on
every matrix (uniform allocation: the same rank; the whitened SVD minimises the output error at it).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

pytestmark = pytest.mark.filterwarnings("ignore")


def test_one_calibration_serves_every_method_and_the_summary_compares_them(tmp_path_factory):
    from _tool_fixtures import make_data, make_models
    from mpokit.recipes import compression_comparison as cc

    tiny = make_models(tmp_path_factory.mktemp("models"))
    files = make_data(tmp_path_factory.mktemp("data"))
    preset = cc.Preset(model=tiny.llama, data=files.lm_train, task="lm", budgets=(0.5,), groups={"linear": ["--no-embedding"]},
                       calibration=["--calibration-samples", "6", "--block-size", "16"],
                       evaluate=["--block-size", "16", "--validation-size", "2", "--test-size", "2"], heal=[],
                       compress=["--layout-search", "exact"])
    out = tmp_path_factory.mktemp("runs")
    args = SimpleNamespace(out=str(out), threads=1, groups=["linear"], budgets=[0.5], methods=["svd-whitened", "svd"],
                           seeds=[], allocation="uniform")
    cc.run_all(preset, args)
    stats = out / "linear" / "calibration.safetensors"
    assert stats.is_file()
    first, second = (json.loads((out / "linear" / f"{m}_50" / "compressed" / "compression_report.json").read_text())
                     for m in ("svd-whitened", "svd"))
    assert "stats_file" not in first["calibration_data"] and second["calibration_data"]["stats_file"] == str(stats)
    assert first["allocation"] == second["allocation"] == "uniform" and first["config"]["layout_search"] == "exact"
    svd = {r["name"]: r["rel_output_error"] for r in second["modules"]}
    for r in first["modules"]:
        assert r["rel_output_error"] <= svd[r["name"]] * (1 + 1e-6) + 1e-9, r["name"]
    text = cc.aggregate(Path(out), preset)
    assert "| 50% | svd-whitened |" in text and "| 50% | svd |" in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["runs"]["linear/svd/0.5"]["no_healing"] is not None
