"""The MiniLM frontier experiment of RESULTS.md (issue 5), end to end at a tiny size on the real model."""

import json

import pytest

pytestmark = pytest.mark.filterwarnings("ignore")


def test_frontier_runs_every_method_to_its_budget_and_aggregates(tmp_path):
    from mpokit.recipes.squeeze_frontier import main

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
    from mpokit.recipes.squeeze_frontier import main

    with pytest.raises(ValueError, match="unknown device 'tpu0'"):
        main(["--out", str(tmp_path), "--device", "tpu0"])
    assert not any(tmp_path.iterdir())  # nothing written


def _write_run(folder, seed, points):
    (folder / f"seed{seed}").mkdir(parents=True)
    (folder / f"seed{seed}" / "results.json").write_text(json.dumps(
        {"seed": seed, "dense_matrix_params": 1000, "points": points}))


def _point(method, budget, accuracy, params=500, ft_steps=4):
    return {"method": method, "budget": budget, "params": params, "accuracy": accuracy, "loss": 0.5, "ft_steps": ft_steps}


def test_combine_merges_runs_per_seed_and_refuses_a_point_from_two_runs(tmp_path):
    from mpokit.recipes.squeeze_frontier import main

    full = _point("full_ft", 1.0, 0.8, params=1000, ft_steps=0)
    for seed, (acc_sq, acc_pr) in enumerate([(0.70, 0.76), (0.72, 0.78)]):
        _write_run(tmp_path / "squeeze", seed, [full, _point("squeeze", 0.5, acc_sq, ft_steps=384)])
        _write_run(tmp_path / "prune", seed, [full, _point("prune", 0.5, acc_pr, ft_steps=384)])
    out = tmp_path / "all"
    assert main(["--combine", str(tmp_path / "squeeze"), str(tmp_path / "prune"), "--out", str(out)]) == 0
    merged = json.loads((out / "seed1" / "results.json").read_text())
    assert sorted(p["method"] for p in merged["points"]) == ["full_ft", "prune", "squeeze"]
    rows = {(r["method"], r["budget"]): r for r in json.loads((out / "summary.json").read_text())}
    assert rows[("squeeze", 0.5)]["acc_mean"] == pytest.approx(71.0)
    assert rows[("prune", 0.5)]["acc_mean"] == pytest.approx(77.0)
    assert rows[("prune", 0.5)]["n_seeds"] == 2 and rows[("full_ft", 1.0)]["n_seeds"] == 2
    assert (out / "frontier.png").stat().st_size > 0

    # the same (method, budget) from two runs is ambiguous: refused, nothing written
    _write_run(tmp_path / "prune_again", 0, [_point("prune", 0.5, 0.70)])
    out2 = tmp_path / "all2"
    with pytest.raises(ValueError, match=r"\('prune', 0.5\) in two runs"):
        main(["--combine", str(tmp_path / "prune"), str(tmp_path / "prune_again"), "--out", str(out2)])
    assert not out2.exists()
    with pytest.raises(FileNotFoundError, match="no seed"):
        main(["--combine", str(tmp_path / "missing"), "--out", str(out2)])


def test_frontier_help_runs_as_a_module():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "mpokit.recipes.squeeze_frontier", "--help"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage:") and "--combine" in done.stdout and "--budgets" in done.stdout
