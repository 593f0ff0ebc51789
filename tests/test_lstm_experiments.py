"""LSTM experiments: budgets per rate, pruning masks, MPO-LSTM equivalence, tiny presets end to end."""

import json
import math

import pytest
import torch
from torch import nn

from mpokit.baselines.lstm_pruning import LSTMPruner, cubic_sparsity, effective_weight, load_pruned, pruned_tensors, save_pruned
from mpokit.recipes.lstm_common import (
    PAPER_RATES,
    build_lstm,
    dense_lstm_weight_count,
    lstm_weight_count,
    make_optimizers,
    model_param_count,
    mpo_lstm_weight_counts,
)
from mpokit.layers.lstm import MPOLSTM


def _independent_mpo_count(lstm: MPOLSTM) -> int:
    """Sum of d_{k-1} * i_k * j_k * d_k over every core of every W and U, read off the tensors."""
    total = 0
    for _, module in lstm.weight_modules():
        for core in module.cores:
            d0, i, j, d1 = core.shape
            total += d0 * i * j * d1
    return total


@pytest.mark.parametrize("rate", PAPER_RATES)
@pytest.mark.parametrize("num_layers", [1, 2])
def test_budget_within_5_percent_of_target(rate, num_layers):
    torch.manual_seed(0)
    dense = sum(p.numel() for n, p in nn.LSTM(256, 256, num_layers).named_parameters() if n.startswith("weight_"))
    assert dense == dense_lstm_weight_count(256, 256, num_layers) == 524_288 * num_layers
    target = dense / rate
    mpo = build_lstm("mpo", 256, 256, num_layers, rate)
    mpo_count = _independent_mpo_count(mpo.lstm)
    assert mpo_count == mpo.budget == sum(mpo_lstm_weight_counts(256, 256, num_layers, rate).values())
    assert abs(mpo_count - target) / target <= 0.05, f"MPO rate {rate}: {mpo_count} vs target {target:.0f}"
    pruned = build_lstm("pruning", 256, 256, num_layers, rate)
    pruner = LSTMPruner(pruned.lstm, final_nonzeros=pruned.pruner_nonzeros, begin_step=0, end_step=1)
    pruner.finalize()
    pruned.lstm(torch.randn(3, 2, 256))  # the forward hook recomputes orig * mask
    nonzeros = sum(int(torch.count_nonzero(getattr(pruned.lstm, n))) for n in ("weight_ih_l0", "weight_hh_l0")
                   + (("weight_ih_l1", "weight_hh_l1") if num_layers == 2 else ()))
    assert nonzeros == mpo_count == lstm_weight_count(pruned.lstm)
    assert abs(nonzeros - target) / target <= 0.05
    assert abs(pruner.sparsity() - (1 - 1 / rate)) <= 0.05 / rate


@pytest.mark.parametrize("n_cores", [2, 3, 5])
def test_budget_with_other_core_counts_matches_mpo_and_pruning(n_cores):
    torch.manual_seed(0)
    target = dense_lstm_weight_count(256, 256, 1) / 10
    mpo = build_lstm("mpo", 256, 256, 1, 10, mpo_cores=n_cores)
    assert all(len(m.cores) == n_cores for _, m in mpo.lstm.weight_modules())
    count = _independent_mpo_count(mpo.lstm)
    assert count == mpo.budget == sum(mpo_lstm_weight_counts(256, 256, 1, 10, n_cores).values())
    assert abs(count - target) / target <= 0.05, f"{n_cores} cores: {count} vs target {target:.0f}"
    assert build_lstm("pruning", 256, 256, 1, 10, mpo_cores=n_cores).pruner_nonzeros == count


def test_cli_core_count_reaches_the_mpo_lstm(tmp_path, capsys):
    from mpokit import cli
    from mpokit.recipes.lstm_report import read_runs

    args = ["lstm", "lm", "--preset", "tiny", "--methods", "mpo", "--mpo-cores", "3", "--out", str(tmp_path), "--no-progress"]
    assert cli.main(args) == 0
    # without bars, the log still says how each epoch and each run went
    out = capsys.readouterr().out
    assert "mpo r10 s0 epoch 1/2: train loss" in out and "mpo r10 s0 epoch 2/2: train loss" in out and ", valid perplexity" in out
    assert "[lm] mpo      rate   10 seed 0" in out
    (row,) = read_runs(tmp_path / "runs.csv")
    assert all(len(spec.split(":")[1].split("x")) == 2 for spec in row["bond_dims"].split(";")), row["bond_dims"]
    assert json.loads((tmp_path / "config.json").read_text())["mpo_cores"] == 3


def test_resume_refuses_a_folder_trained_with_other_settings(tmp_path, capsys):
    from mpokit import cli
    from mpokit.recipes.lstm_report import read_runs

    base = ["lstm", "lm", "--preset", "tiny", "--methods", "mpo", "--out", str(tmp_path), "--no-progress"]
    assert cli.main(base) == 0
    csv_before = (tmp_path / "runs.csv").read_bytes()
    assert cli.main(base + ["--resume", "--mpo-cores", "3"]) != 0
    assert "mpo_cores: 4 -> 3" in capsys.readouterr().err
    assert cli.main(base + ["--resume", "--epochs", "3"]) != 0
    assert "epochs: 2 -> 3" in capsys.readouterr().err
    assert (tmp_path / "runs.csv").read_bytes() == csv_before  # nothing lost or overwritten
    assert json.loads((tmp_path / "config.json").read_text())["mpo_cores"] == 4
    assert cli.main(base + ["--resume", "--seeds", "0,1"]) == 0  # more seeds: allowed
    assert len(read_runs(tmp_path / "runs.csv")) == 2


def test_combine_merges_folders_and_refuses_mismatches(tmp_path, capsys):
    from mpokit import cli
    from mpokit.recipes.lstm_report import aggregate, read_runs

    def train(name, *extra):
        args = ["lstm", "lm", "--preset", "tiny", "--methods", "mpo", "--out", str(tmp_path / name), "--no-progress"]
        assert cli.main(args + list(extra)) == 0

    train("s0", "--seeds", "0")
    train("s1", "--seeds", "1")
    parts = read_runs(tmp_path / "s0" / "runs.csv") + read_runs(tmp_path / "s1" / "runs.csv")
    assert cli.main(["lstm", "lm", "--combine", str(tmp_path / "s0"), str(tmp_path / "s1"), "--out", str(tmp_path / "all")]) == 0
    merged = read_runs(tmp_path / "all" / "runs.csv")
    assert sorted(map(str, merged)) == sorted(map(str, parts)) and len(merged) == 2
    assert aggregate(merged, "metric_test") == aggregate(parts, "metric_test")  # mean ± std over both seeds
    mean, _, n = aggregate(merged, "metric_test")[("mpo", 10.0)]
    assert n == 2 and mean == pytest.approx(sum(r["metric_test"] for r in parts if r["method"] == "mpo") / 2)
    report = (tmp_path / "all" / "results.md").read_text()
    assert "combined" in report and "| 10 |" in report and list((tmp_path / "all").glob("*.png"))
    capsys.readouterr()

    config = json.loads((tmp_path / "s1" / "config.json").read_text())
    del config["mpo_cores"]  # as written before that field existed: counts as its default, 4
    (tmp_path / "s1" / "config.json").write_text(json.dumps(config))
    assert cli.main(["lstm", "lm", "--combine", str(tmp_path / "s0"), str(tmp_path / "s1"), "--out", str(tmp_path / "all")]) == 0
    capsys.readouterr()

    before = (tmp_path / "all" / "runs.csv").read_bytes()
    assert cli.main(["lstm", "lm", "--combine", str(tmp_path / "s0"), str(tmp_path / "s0"), "--out", str(tmp_path / "all")]) != 0
    assert "in both" in capsys.readouterr().err
    train("s2_other", "--seeds", "2", "--epochs", "1")
    assert cli.main(["lstm", "lm", "--combine", str(tmp_path / "s0"), str(tmp_path / "s2_other"), "--out", str(tmp_path / "all")]) != 0
    assert "epochs" in capsys.readouterr().err
    assert cli.main(["lstm", "classify", "--combine", str(tmp_path / "s0"), "--out", str(tmp_path / "all")]) != 0
    assert "not 'classify'" in capsys.readouterr().err
    assert cli.main(["lstm", "lm", "--combine", str(tmp_path / "s0")]) != 0  # no --out
    assert (tmp_path / "all" / "runs.csv").read_bytes() == before  # refused combinations change nothing


@pytest.mark.parametrize("num_layers", [1, 2])
def test_hh_share_gives_u_its_fraction_of_the_same_budget(num_layers):
    torch.manual_seed(0)
    target = dense_lstm_weight_count(256, 256, num_layers) / 10
    for method in ("mpo", "mpo_gradual"):
        build = build_lstm(method, 256, 256, num_layers, 10, mpo_hh_share=0.8)
        assert abs(build.budget - target) / target <= 0.05, (method, build.budget, target)
    mpo = build_lstm("mpo", 256, 256, num_layers, 10, mpo_hh_share=0.8)
    count = _independent_mpo_count(mpo.lstm)
    u = sum(sum(c.numel() for c in m.cores) for name, m in mpo.lstm.weight_modules() if "_hh_" in name)
    assert count == mpo.budget and abs(u / count - 0.8) <= 0.05, u / count
    assert build_lstm("pruning", 256, 256, num_layers, 10, mpo_hh_share=0.8).pruner_nonzeros == count
    gradual = build_lstm("mpo_gradual", 256, 256, num_layers, 10, mpo_hh_share=0.8)
    assert gradual.final_bonds == {name: tuple(m.bond_dims) for name, m in mpo.lstm.weight_modules()}


def test_cli_hh_share_reaches_the_config_and_bad_shares_are_rejected(tmp_path):
    from mpokit import cli
    from mpokit.recipes.lstm_classification import config_from_preset
    from mpokit.recipes.lstm_report import read_runs

    args = ["lstm", "classify", "--preset", "tiny", "--methods", "mpo", "--mpo-hh-share", "0.7", "--out", str(tmp_path), "--no-progress"]
    assert cli.main(args) == 0
    assert json.loads((tmp_path / "config.json").read_text())["mpo_hh_share"] == 0.7
    row = read_runs(tmp_path / "runs.csv")[0]
    w, u = (int(d.split(":")[1].split("x")[0]) for d in row["bond_dims"].split(";"))
    assert u > w, "U gets the larger bond"
    for share in (0, 1, -0.1, 1.5, float("nan"), True):
        with pytest.raises(ValueError, match="mpo_hh_share must be a number strictly between 0 and 1"):
            config_from_preset("tiny", mpo_hh_share=share)
    with pytest.raises(ValueError, match="input_size == hidden_size"):
        build_lstm("mpo", 128, 256, 2, 10, mpo_hh_share=0.8)


@pytest.mark.parametrize("n_cores", [1, 0, 2.5, True])
def test_bad_core_count_is_rejected(n_cores):
    from mpokit.recipes.lstm_classification import config_from_preset
    from mpokit.recipes.lstm_lm import config_from_preset as lm_config

    for make in (config_from_preset, lm_config):
        with pytest.raises(ValueError, match="mpo_cores"):
            make("tiny", mpo_cores=n_cores)


def test_cubic_schedule_zhu_gupta():
    f = lambda t: cubic_sparsity(t, 0.9, 10, 110)
    assert f(0) == 0.0 and f(10) == 0.0 and f(110) == 0.9 and f(500) == 0.9
    assert math.isclose(f(60), 0.9 * (1 - 0.5**3))
    values = [f(t) for t in range(0, 120)]
    assert all(a <= b for a, b in zip(values, values[1:]))
    with pytest.raises(ValueError, match="final_sparsity"):
        cubic_sparsity(0, 1.0, 0, 10)


def _tiny_model():
    from mpokit.recipes.lstm_classification import LSTMClassifier

    return LSTMClassifier(50, 16, nn.LSTM(16, 16, batch_first=True), 2, dropout=0.0)


def _train_step(model, opts, ids, lengths, labels):
    for opt in opts:
        opt.zero_grad()
    nn.functional.cross_entropy(model(ids, lengths), labels).backward()
    for opt in opts:
        opt.step()


def test_pruned_weights_stay_zero_and_mask_survives_save_load(tmp_path):
    torch.manual_seed(0)
    model = _tiny_model()
    pruner = LSTMPruner(model.lstm, rate=10, begin_step=0, end_step=6, frequency=2)
    opts = make_optimizers(model, lr=1e-2)
    ids, lengths, labels = torch.randint(1, 50, (8, 7)), torch.randint(1, 8, (8,)), torch.randint(0, 2, (8,))
    masks_at_end = None
    for step in range(20):
        _train_step(model, opts, ids, lengths, labels)
        pruner.step(step)
        if step == 6:
            masks_at_end = {n: getattr(model.lstm, n + "_mask").clone() for n in ("weight_ih_l0", "weight_hh_l0")}
        for name in ("weight_ih_l0", "weight_hh_l0"):
            w = effective_weight(model.lstm, name)
            assert torch.all(w[getattr(model.lstm, name + "_mask") == 0] == 0)
    assert pruner.kept() == pruner.final_nonzeros == round(2 * 64 * 16 / 10)
    for name, mask in masks_at_end.items():  # no mask change after the schedule ended, weights still trained
        assert torch.equal(getattr(model.lstm, name + "_mask"), mask)
        assert torch.all(effective_weight(model.lstm, name)[mask == 0] == 0)
    model.eval()
    expected = model(ids, lengths)
    save_pruned(model, tmp_path / "ckpt", extra={"rate": 10})
    assert not list((tmp_path / "ckpt").glob("*.tmp"))
    fresh = _tiny_model()
    meta = load_pruned(fresh, tmp_path / "ckpt")
    fresh.eval()
    assert meta["extra"] == {"rate": 10} and pruned_tensors(fresh) == [("lstm", "weight_hh_l0"), ("lstm", "weight_ih_l0")]
    assert torch.equal(fresh(ids, lengths), expected)
    for name, mask in masks_at_end.items():
        assert torch.equal(getattr(fresh.lstm, name + "_mask"), mask)
    fresh.train()  # the reloaded mask still holds through training
    _train_step(fresh, make_optimizers(fresh, lr=1e-2), ids, lengths, labels)
    assert lstm_weight_count(fresh.lstm) == pruner.final_nonzeros
    assert model_param_count(fresh) == model_param_count(model) < sum(p.numel() for p in fresh.parameters())


def test_load_pruned_rejects_corrupt_checkpoint(tmp_path):
    model = _tiny_model()
    LSTMPruner(model.lstm, rate=4).finalize()
    save_pruned(model, tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="corrupt"):
        load_pruned(_tiny_model(), tmp_path)


def test_mpo_lstm_from_dense_at_full_bonds_gives_dense_outputs():
    torch.manual_seed(0)
    dense = nn.LSTM(16, 16, num_layers=2).double()
    mpo = MPOLSTM.from_lstm(dense)
    x = torch.randn(5, 3, 16, dtype=torch.float64)
    (y, (h, c)), (y_ref, (h_ref, c_ref)) = mpo(x), dense(x)
    assert torch.allclose(y, y_ref, atol=1e-10) and torch.allclose(h, h_ref, atol=1e-10) and torch.allclose(c, c_ref, atol=1e-10)


def test_gradual_method_starts_at_the_dense_init_and_has_the_mpo_budget():
    from mpokit.recipes.lstm_common import set_seed

    set_seed(0)
    gradual = build_lstm("mpo_gradual", 32, 32, 2, 10, dropout=0.0)
    set_seed(0)
    dense = build_lstm("dense", 32, 32, 2, 1, dropout=0.0)
    x = torch.randn(6, 3, 32)
    assert torch.allclose(gradual.lstm(x)[0], dense.lstm(x)[0], atol=1e-5), "starts as the exact MPO of the dense init"
    mpo = build_lstm("mpo", 32, 32, 2, 10)
    assert gradual.budget == mpo.budget and gradual.bond_dims() == mpo.bond_dims()
    assert gradual.final_bonds == {name: tuple(m.bond_dims) for name, m in mpo.lstm.weight_modules()}


def test_experiment_cut_hands_adam_state_to_the_new_cores():
    from mpokit.recipes.lstm_common import compression_schedule, dense_parameters, schedule_step, set_seed

    set_seed(0)
    build = build_lstm("mpo_gradual", 16, 16, 1, 10)
    model = nn.Sequential()
    model.add_module("lstm", build.lstm)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    schedule = compression_schedule(build, 20, 0.0, 0.5, 5)
    x = torch.randn(4, 2, 16)
    for step in range(2):
        opt.zero_grad()
        build.lstm(x)[0].sum().backward()
        opt.step()
        schedule_step(schedule, step, opt, model)  # step 0 cuts
    cores = [p for m in build.lstm.mpo_modules() for p in m.cores]
    assert schedule.replaced and opt.param_groups[0]["params"] == dense_parameters(model)
    assert all(float(opt.state[p]["step"]) == 2 for p in cores), "cut cores continue the Adam step count"


def test_tiny_gradual_truncation_run_ends_at_the_budget(tmp_path):
    from mpokit import cli
    from mpokit.recipes.lstm_report import read_runs

    args = ["lstm", "classify", "--preset", "tiny", "--methods", "mpo,mpo_gradual", "--out", str(tmp_path), "--no-progress"]
    assert cli.main(args) == 0
    rows = {r["method"]: r for r in read_runs(tmp_path / "runs.csv")}
    assert rows["mpo_gradual"]["lstm_weights"] == rows["mpo"]["lstm_weights"]
    assert rows["mpo_gradual"]["bond_dims"] == rows["mpo"]["bond_dims"]
    assert rows["mpo_gradual"]["last_loss"] < rows["mpo_gradual"]["first_loss"]
    header = next(line for line in (tmp_path / "results.md").read_text().splitlines() if line.startswith("| rate |"))
    assert "| MPO-LSTM | MPO-LSTM (gradual truncation) |" in header


def _check_outputs(out, n_runs):
    from mpokit.recipes.lstm_report import read_runs

    rows = read_runs(out / "runs.csv")
    assert len(rows) == n_runs
    for row in rows:
        assert row["last_loss"] < row["first_loss"], row
    table = (out / "results.md").read_text()
    assert "| 1 (dense) |" in table and "| 10 |" in table and "Embedding and output layers stay dense" in table
    pngs = list(out.glob("*.png"))
    assert pngs and pngs[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return rows


def test_tiny_classification_via_cli(tmp_path):
    from mpokit import cli

    if "lstm" not in cli.COMMANDS:
        pytest.skip("the lstm subcommand is not registered in mpokit.cli yet")
    assert cli.main(["lstm", "classify", "--preset", "tiny", "--out", str(tmp_path), "--no-progress"]) == 0
    rows = _check_outputs(tmp_path, 3)
    by_method = {r["method"]: r for r in rows}
    assert by_method["mpo"]["lstm_weights"] == by_method["pruning"]["lstm_weights"] < by_method["dense"]["lstm_weights"]


def test_tiny_classification_api(tmp_path):
    from mpokit.recipes.lstm_classification import PRESETS, prepare_data, run_classification

    data = prepare_data(PRESETS["tiny"])
    assert data.sizes == {"train": 512, "validation": 128, "test": 128}
    result = run_classification(PRESETS["tiny"], tmp_path, progress=False)
    rows = _check_outputs(tmp_path, 3)
    assert {r["method"] for r in rows} == {"dense", "mpo", "pruning"} and result.rows[0]["metric_test"] >= 0


def test_tiny_language_model(tmp_path):
    from mpokit.recipes.lstm_lm import PRESETS, run_language_model

    run_language_model(PRESETS["tiny"], tmp_path, progress=False)
    rows = _check_outputs(tmp_path, 3)
    for row in rows:
        assert 1 < row["metric_test"] < 10_000 and row["lstm_dense_weights"] == 2 * 4 * 64 * 128


@pytest.mark.slow
@pytest.mark.parametrize("task", ["classify", "lm"])
def test_smoke_presets(tmp_path, task):
    if task == "classify":
        from mpokit.recipes.lstm_classification import PRESETS, run_classification as run
    else:
        from mpokit.recipes.lstm_lm import PRESETS, run_language_model as run
    cfg = PRESETS["smoke"]
    run(cfg, tmp_path, progress=False)
    n = len(cfg.seeds) * (1 + 2 * len(cfg.rates))
    _check_outputs(tmp_path, n)


def _row(method, rate, seed, lr, valid, test):
    return {"method": method, "rate": rate, "seed": seed, "lr": lr, "metric_valid": valid, "metric_test": test}


def test_learning_rate_selection_uses_validation_only():
    from mpokit.recipes.lstm_report import learning_rate_table, select_learning_rates

    rows = [
        # mpo rate 10: lr 3e-3 has the better mean validation (71 vs 70) but the worse test: it is still chosen
        _row("mpo", 10, 0, 1e-3, 70.0, 80.0), _row("mpo", 10, 1, 1e-3, 70.0, 80.0),
        _row("mpo", 10, 0, 3e-3, 72.0, 60.0), _row("mpo", 10, 1, 3e-3, 70.0, 60.0),
        # pruning rate 10: a tie on validation goes to the smaller learning rate
        _row("pruning", 10, 0, 1e-3, 65.0, 1.0), _row("pruning", 10, 0, 3e-3, 65.0, 2.0),
    ]
    kept, chosen = select_learning_rates(rows, higher_is_better=True)
    assert chosen == {("mpo", 10.0): 3e-3, ("pruning", 10.0): 1e-3}
    assert sorted((r["method"], r["seed"], r["lr"]) for r in kept) == [("mpo", 0, 3e-3), ("mpo", 1, 3e-3), ("pruning", 0, 1e-3)]
    _, chosen_low = select_learning_rates(rows, higher_is_better=False)  # perplexity: lower is better
    assert chosen_low[("mpo", 10.0)] == 1e-3
    table = learning_rate_table(rows, "validation accuracy", True)
    assert "| MPO-LSTM | 10 | 70.00 ± 0.00 | **71.00 ± 1.41** |" in table
    assert "| pruning-LSTM | 10 | **65.00 (1 seed)** | 65.00 (1 seed) |" in table  # one seed: no std shown


def test_learning_rate_grid_runs_each_rate_and_resumes(tmp_path):
    from mpokit import cli
    from mpokit.recipes.lstm_report import read_runs, write_runs

    args = ["lstm", "classify", "--preset", "tiny", "--methods", "dense,mpo", "--lrs", "1e-3,3e-3",
            "--out", str(tmp_path), "--no-progress"]
    assert cli.main(args) == 0
    rows = read_runs(tmp_path / "runs.csv")
    assert sorted((r["method"], r["lr"]) for r in rows) == [("dense", 1e-3), ("dense", 3e-3), ("mpo", 1e-3), ("mpo", 3e-3)]
    text = (tmp_path / "results.md").read_text()
    assert "per learning rate" in text and "lr 0.001 | lr 0.003" in text
    # a runs.csv from before the lr column: its runs count as the config's lr (tiny: 3e-3) on resume
    write_runs([{k: v for k, v in r.items() if k != "lr"} for r in rows if r["lr"] == 3e-3], tmp_path / "runs.csv")
    assert {r["lr"] for r in read_runs(tmp_path / "runs.csv")} == {""}
    assert cli.main(args + ["--resume"]) == 0
    again = read_runs(tmp_path / "runs.csv")
    assert sorted((r["method"], r["lr"]) for r in again) == sorted((r["method"], r["lr"]) for r in rows)


@pytest.mark.parametrize("grid", [(0.0,), (1e-3, -1e-3), (float("nan"),), (1e-3, 1e-3)])
def test_bad_learning_rate_grid_is_rejected(grid):
    from mpokit.recipes.lstm_classification import config_from_preset
    from mpokit.recipes.lstm_lm import config_from_preset as lm_config

    for make in (config_from_preset, lm_config):
        with pytest.raises(ValueError, match="lr_grid"):
            make("tiny", lr_grid=grid)


def test_cli_presets_exist_for_both_tasks():
    from mpokit.commands import lstm as command
    from mpokit.recipes import lstm_classification, lstm_lm

    assert set(command.PRESETS) == set(lstm_classification.PRESETS) == set(lstm_lm.PRESETS)
    assert lstm_lm.PRESETS["medium"].eval_tokens is None  # the standard valid / test perplexities
    assert lstm_classification.PRESETS["medium"].train_size is None  # all the training sentences
