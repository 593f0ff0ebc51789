"""The MiniLM frontier experiment of RESULTS.md (issue 5), end to end at a tiny size on the real model."""

import json

import pytest

pytestmark = pytest.mark.filterwarnings("ignore")


def test_frontier_runs_every_method_to_its_budget_and_aggregates(tmp_path):
    from mpokit.experiments.squeeze_frontier import main

    out = tmp_path / "frontier"
    args = ["--out", str(out), "--seeds", "0", "--budgets", "0.5", "--train-size", "16", "--val-size", "8",
            "--test-size", "16", "--batch-size", "8", "--max-length", "16", "--dense-steps", "1", "--ft-steps", "1",
            "--squeeze-ft-steps", "1", "--step-size", "0.5", "--matrices-per-step", "36", "--device", "cpu"]
    assert main(args) == 0
    result = json.loads((out / "seed0" / "results.json").read_text())
    points = {p["method"]: p for p in result["points"]}
    assert set(points) == {"full_ft", "squeeze", "direct", "prune", "lowrank"}
    dense = result["dense_matrix_params"]
    assert dense == 6 * (4 * 384 * 384 + 2 * 384 * 1536)  # Q, K, V, O and FFN in/out, 6 layers
    for method in ("squeeze", "direct", "prune", "lowrank"):
        assert points[method]["params"] <= 0.5 * dense, (method, points[method]["params"])
        assert points[method]["params"] >= 0.45 * dense, (method, points[method]["params"])  # and not far below
        assert 0.0 <= points[method]["accuracy"] <= 1.0
    assert (out / "summary.md").is_file() and (out / "frontier.png").stat().st_size > 0
    # a rerun skips every finished point (nothing retrained, results unchanged)
    assert main(args) == 0
    assert json.loads((out / "seed0" / "results.json").read_text())["points"] == result["points"]


def test_frontier_refuses_an_unknown_device(tmp_path):
    from mpokit.experiments.squeeze_frontier import main

    with pytest.raises(ValueError, match="unknown device 'tpu0'"):
        main(["--out", str(tmp_path), "--device", "tpu0"])
    assert not any(tmp_path.iterdir())  # nothing written
