"""Data-aware compression of whole models: ``compress(model, config, calibration=...)``, the CLI, the report,
checkpoints with searched layouts and data-aware squeezing.

References: every compressed matrix is compared with what :func:`mpokit.aware.approximate` returns for that
matrix alone (same statistics, same share: 1e-10 in float64); lossless budgets with the dense model's logits;
checkpoints with the logits before saving; the squeeze ranking with output errors computed by hand.
Tiny random float64 models (tests/_plm_models.py) and the CLI's tiny models and files (tests/_tool_fixtures.py).
"""

from __future__ import annotations

import json
import math

import datasets  # noqa: F401 - imported before any capsys capture (its log handler keeps the real stderr)
import pytest
import torch
from torch import nn

import mpokit.loading
from _plm_models import logits, tiny_inputs, tiny_model
from mpokit.aware import METHODS, approximate, relative_output_error
from mpokit.aware.methods import NEEDS
from mpokit.calibration import collect_calibration
from mpokit.config import MPOConfig, MPOLayerConfig
from mpokit.layers.base import MPOModule
from mpokit.surgery import compress, count_parameters
from mpokit.targets import find_targets

pytestmark = pytest.mark.filterwarnings("ignore")

CAL = [tiny_inputs(seed=s, batch=4, length=12) for s in (11, 12)]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # tiny float64 kernels: one thread avoids oversubscribing a shared machine; restored afterwards
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _names(model, config=None) -> list[str]:
    return [t[0] for t in find_targets(model, config or MPOConfig())]


def _matrix(module: nn.Module) -> torch.Tensor:
    """The matrix a module computes with now, ``(rows, cols)`` (an MPO's rebuilt matrix, a pruned weight)."""
    if isinstance(module, MPOModule):
        return module.rebuild_weight().detach()
    return module.weight.detach()


@pytest.fixture(scope="module")
def stats():
    """The calibration statistics of the dense float64 BERT and Llama (collected once)."""
    out = {}
    for arch in ("bert", "llama"):
        model = tiny_model(arch, dtype=torch.float64)
        out[arch] = collect_calibration(model, CAL, _names(model))
    return out


# ---------------------------------------------------------------------------
# every method through compress equals the aware package's approximation of each matrix
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_every_method_installs_the_aware_approximation_of_each_matrix(arch, stats):
    dense = tiny_model(arch, dtype=torch.float64)
    for method in METHODS:
        embedding = None if NEEDS.get(method) == "C" else MPOLayerConfig()  # wanda scores inputs: no embedding
        config = MPOConfig(method=method, budget=0.5, allocation="uniform", embedding=embedding, max_sweeps=2)
        model, report = compress(tiny_model(arch, dtype=torch.float64), config, calibration=stats[arch],
                                 return_report=True)
        assert report.method == method and len(report.modules) == len(_names(dense, config))
        for row in report.modules:
            W = dense.get_submodule(row.name).weight.detach()
            options = {"max_sweeps": 2} if method == "mpo-aware" else {}
            expected = approximate(method, W, max_params=int(0.5 * W.numel()), **stats[arch].objective(row.name),
                                   **options)
            got = _matrix(model.get_submodule(row.name))
            torch.testing.assert_close(got, expected.matrix, rtol=0, atol=1e-10,
                                       msg=lambda m: f"{method} {row.name}: {m}")
            assert row.method == method and row.params_after == expected.params <= 0.5 * W.numel()
            assert row.layout == (expected.layout.name if expected.mpo is not None else "mask")
            assert row.rel_output_error == pytest.approx(expected.rel_output_error, abs=1e-12)
            measured = relative_output_error(W, got, **stats[arch].objective(row.name))
            assert row.rel_output_error == pytest.approx(measured, abs=1e-9)  # the report states the real error
            if method == "mpo-aware":
                assert len(row.trials) >= 3 and {t["layout"]["name"] for t in row.trials} >= {"low-rank"}
                assert row.detail["history"] == sorted(row.detail["history"], reverse=True)
        out = logits(model, tiny_inputs())
        assert torch.isfinite(out).all()
        if expected.mask is not None:  # pruning: nonzeros are the parameters
            zeros = sum(r.params_before - r.params_after for r in report.modules)
            assert report.model_params_after == count_parameters(model) - zeros


def test_budget_one_is_lossless(stats):
    dense = tiny_model("llama", dtype=torch.float64)
    reference = logits(dense, tiny_inputs())
    for method in ("mpo", "mpo-aware", "svd", "svd-whitened", "magnitude", "wanda"):
        config = MPOConfig(method=method, budget=1.0, embedding=None if method == "wanda" else MPOLayerConfig())
        model, report = compress(tiny_model("llama", dtype=torch.float64), config, calibration=stats["llama"],
                                 return_report=True)
        torch.testing.assert_close(logits(model, tiny_inputs()), reference, rtol=0, atol=1e-8,
                                   msg=lambda m: f"{method}: {m}")
        assert max(r.rel_output_error for r in report.modules) < 1e-7


def test_global_allocation_meets_the_budget_and_differs_from_uniform(stats):
    rows = {}
    for allocation in ("global", "uniform"):
        config = MPOConfig(method="svd-whitened", budget=0.4, allocation=allocation)
        _, report = compress(tiny_model("llama", dtype=torch.float64), config, calibration=stats["llama"],
                             return_report=True)
        assert report.matrix_params_after <= 0.4 * report.matrix_params_before
        assert report.allocation == allocation and report.budget == 0.4
        rows[allocation] = {r.name: r for r in report.modules}
    share = {n: r.params_after / r.params_before for n, r in rows["global"].items()}
    assert max(share.values()) - min(share.values()) > 0.2  # matrices get different fractions
    assert any(rows["global"][n].params_after != rows["uniform"][n].params_after for n in share)
    total = {a: sum(r.rel_output_error ** 2 for r in rs.values()) for a, rs in rows.items()}
    assert total["global"] < total["uniform"], total  # the exact svd-whitened curves: global spends better


def test_absolute_allocation_minimises_the_summed_absolute_output_error(stats):
    """``allocation="absolute"`` weighs each matrix's relative error squared by its output energy tr(W C W^T): its
    summed absolute error is below the relative allocation's, and it moves parameters toward large outputs."""
    rows = {}
    for allocation in ("global", "absolute"):
        config = MPOConfig(method="svd-whitened", budget=0.4, allocation=allocation)
        _, report = compress(tiny_model("llama", dtype=torch.float64), config, calibration=stats["llama"],
                             return_report=True)
        assert report.matrix_params_after <= 0.4 * report.matrix_params_before and report.allocation == allocation
        rows[allocation] = {r.name: r for r in report.modules}
    dense = dict(tiny_model("llama", dtype=torch.float64).named_modules())
    energy = {}
    for name in rows["global"]:
        W = dense[name].weight.detach().double()
        if name in stats["llama"].second_moments:
            energy[name] = float(((W @ stats["llama"].second_moments[name]) * W).sum())
        else:  # the embedding: token frequencies over its rows
            energy[name] = float((stats["llama"].row_weights[name] * (W * W).sum(1)).sum())
    absolute = {a: sum(energy[n] * r.rel_output_error ** 2 for n, r in rs.items()) for a, rs in rows.items()}
    assert absolute["absolute"] < absolute["global"], absolute
    big = max(energy, key=energy.get)
    assert rows["absolute"][big].params_after >= rows["global"][big].params_after


def test_tt_svd_with_calibration_is_todays_compression_measured():
    plain = compress(tiny_model("bert", dtype=torch.float64), MPOConfig(attention=MPOLayerConfig(max_bond=3)))
    model, report = compress(tiny_model("bert", dtype=torch.float64),
                             MPOConfig(method="mpo", attention=MPOLayerConfig(max_bond=3)), calibration=CAL,
                             return_report=True)
    assert plain.state_dict().keys() == model.state_dict().keys()
    for k, v in plain.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k
    dense = tiny_model("bert", dtype=torch.float64)
    stats = collect_calibration(dense, CAL, _names(dense))
    for row in report.modules:
        W = dense.get_submodule(row.name).weight.detach()
        expected = relative_output_error(W, _matrix(model.get_submodule(row.name)), **stats.objective(row.name))
        assert row.rel_output_error == pytest.approx(expected, abs=1e-10) and row.layout == "interleaved-5"
    assert not plain.mpo_report.data_aware and "out.err" not in plain.mpo_report.table()
    assert report.data_aware and "out.err" in report.table() and "calibration: 8 sequences" in report.table()


def test_bad_calibration_and_settings_are_refused_before_any_change():
    model = tiny_model("bert", dtype=torch.float64)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    padded = tiny_inputs()
    padded["attention_mask"].zero_()
    cases = [
        (dict(calibration=[]), MPOConfig(budget=0.5), "calibration data is empty"),
        (dict(calibration=[padded]), MPOConfig(budget=0.5), "is padding"),
        (dict(), MPOConfig(method="mpo-aware", budget=0.5), "needs calibration data"),
        (dict(), MPOConfig(method="svd-whitened", budget=0.5), "--calibration-data"),
        (dict(calibration=CAL), MPOConfig(method="wanda", budget=0.5), "leave it dense"),
        (dict(calibration=CAL), MPOConfig(method="2:4", budget=0.3), "keeps 2 of every 4"),
        (dict(calibration=CAL), MPOConfig(method="svd", attention=MPOLayerConfig(max_bond=4)), "not max_bond"),
    ]
    for kwargs, config, message in cases:
        with pytest.raises(ValueError, match=message):
            compress(model, config, **kwargs)
        assert not any(isinstance(m, MPOModule) for m in model.modules())
        assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    for bad, message in (({"method": "pca"}, "method must be one of"), ({"budget": 1.5}, r"budget must be a fraction in \(0, 1\]"),
                         ({"allocation": "greedy"}, "allocation must be one of"), ({"max_sweeps": -1}, "max_sweeps"),
                         ({"fit_top": 0}, "fit_top must be an int >= 1"),
                         ({"budget": 0.5, "ffn": MPOLayerConfig(param_ratio=0.5)}, "also set a truncation per kind")):
        with pytest.raises(ValueError, match=message):
            MPOConfig(**bad)
    config = MPOConfig(method="mpo-aware", budget=0.25, allocation="uniform", max_sweeps=3, layout_search="exact",
                       fit_top=1)
    assert MPOConfig.from_json(config.to_json()) == config and json.loads(config.to_json())["version"] == 3
    v2 = {**config.to_dict(), "version": 2, "layout_search": False}
    del v2["fit_top"]
    assert MPOConfig.from_dict(v2).layout_search == "none" and MPOConfig.from_dict(v2).fit_top == 2  # version 2 loads
    assert MPOConfig(layout_search=False).layout_search == "none" and MPOConfig(layout_search=True).layout_search == "all"
    with pytest.raises(ValueError, match="layout_search must be one of .*got 'fast'"):
        MPOConfig(layout_search="fast")
    old = MPOConfig().to_dict()
    for key in ("method", "budget", "allocation", "max_sweeps", "layout_search", "fit_top"):
        del old[key]
    old["version"] = 1
    assert MPOConfig.from_dict(old) == MPOConfig(version=1)  # a version-1 config still loads, with the defaults


def test_pruned_weights_stay_zero_through_training_and_a_tied_head_shares_the_mask():
    model, report = compress(tiny_model("gpt2", dtype=torch.float64), MPOConfig(method="magnitude", budget=0.5),
                             return_report=True)
    emb = model.transformer.wte
    assert torch.equal(model.lm_head.weight, emb.weight) and any("same mask" in t for t in report.tied)
    zeros = {n: _matrix(model.get_submodule(n)) == 0 for n in (r.name for r in report.modules)}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    for _ in range(2):
        ids = tiny_inputs()["input_ids"]
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    for row in report.modules:
        module = model.get_submodule(row.name)
        now = module.weight_orig * module.weight_mask  # what the next forward computes with
        assert torch.equal(now[zeros[row.name]], torch.zeros_like(now[zeros[row.name]])), row.name
        assert int((now != 0).sum()) == row.params_after
        assert not torch.equal(module.weight_orig, zeros[row.name].logical_not() * module.weight_orig)  # it trained
    assert torch.equal(model.lm_head.weight, emb.weight)


def test_checkpoint_with_searched_layouts_round_trips(stats, tmp_path):
    from mpokit.aware import candidate_layouts, fit_mpo
    from mpokit.converters import CONVERTERS, convert_from_mpo
    from mpokit.io import from_pretrained, save_pretrained

    model, report = compress(tiny_model("llama", dtype=torch.float64), MPOConfig(method="svd-whitened", budget=0.5),
                             calibration=stats["llama"], return_report=True)
    assert {r.layout for r in report.modules} == {"low-rank"}
    # one matrix in a hybrid layout, fitted by the aware package and installed through the converter
    dense = tiny_model("llama", dtype=torch.float64)
    name = "model.layers.1.mlp.down_proj"
    W = dense.get_submodule(name).weight.detach()
    hybrid = next(lay for lay in candidate_layouts(*W.shape) if lay.name.startswith("hybrid"))
    fit = fit_mpo(W, stats["llama"].objective(name)["C"], out_modes=hybrid.out_modes, in_modes=hybrid.in_modes,
                  max_params=W.numel() // 2, max_sweeps=2)
    layer = dense.get_submodule(name)
    done = convert_from_mpo(layer, CONVERTERS["Linear"], fit.mpo)
    model.model.layers[1].mlp.down_proj = done.module
    low = model.get_submodule("model.layers.0.self_attn.q_proj")
    assert low.out_modes == (24, 1) and low.in_modes == (1, 24)
    assert done.module.out_modes == hybrid.out_modes and done.module.in_modes == hybrid.in_modes
    before = logits(model, tiny_inputs())
    save_pretrained(model, tmp_path / "ckpt")
    loaded = from_pretrained(tmp_path / "ckpt", dtype=torch.float64)
    assert loaded.get_submodule(name).out_modes == hybrid.out_modes
    assert loaded.get_submodule("model.layers.0.self_attn.q_proj").in_modes == (1, 24)
    torch.testing.assert_close(logits(loaded, tiny_inputs()), before, rtol=0, atol=1e-12)


def test_conv1d_tied_heads_and_parametrized_modules_take_the_aware_mpo(tmp_path):
    from _extra_models import CustomForwardNet
    from mpokit.io import from_pretrained, save_pretrained

    dense = tiny_model("gpt2", dtype=torch.float64)  # Conv1D stores weight^T; a head tied to wte
    stats = collect_calibration(dense, CAL, _names(dense))
    model, report = compress(tiny_model("gpt2", dtype=torch.float64),
                             MPOConfig(method="svd-whitened", budget=0.5, allocation="uniform"), calibration=stats,
                             return_report=True)
    assert {r.source_type for r in report.modules} == {"Conv1D", "Embedding"}
    assert any("lm_head shares the MPO cores of transformer.wte" in t for t in report.tied)
    for row in report.modules:
        module = dense.get_submodule(row.name)
        W = module.weight.detach().t() if row.source_type == "Conv1D" else module.weight.detach()
        expected = approximate("svd-whitened", W, max_params=int(0.5 * W.numel()), **stats.objective(row.name))
        torch.testing.assert_close(_matrix(model.get_submodule(row.name)), expected.matrix, rtol=0, atol=1e-10)
    torch.testing.assert_close(model.lm_head.weight, _matrix(model.transformer.wte), rtol=0, atol=0)
    before = logits(model, tiny_inputs())
    save_pretrained(model, tmp_path / "gpt2")
    torch.testing.assert_close(logits(from_pretrained(tmp_path / "gpt2", dtype=torch.float64), tiny_inputs()), before,
                               rtol=0, atol=1e-12)

    torch.manual_seed(0)  # modules with their own forward keep it: an MPOWeight parametrizes their weight
    net = CustomForwardNet().double().eval()
    reference = CustomForwardNet().double().eval()
    reference.load_state_dict(net.state_dict())
    ids = [torch.randint(0, 40, (3, 6), generator=torch.Generator().manual_seed(s)) for s in (1, 2)]
    config = MPOConfig(target_modules=["emb", "proj", "out"], method="svd-whitened", budget=0.5, allocation="uniform")
    stats = collect_calibration(net, ids, ["emb", "proj", "out"])
    net, report = compress(net, config, calibration=stats, return_report=True)
    assert [r.parametrized for r in report.modules] == [True, True, False]
    with torch.no_grad():
        for row in report.modules:
            module = reference.get_submodule(row.name)
            expected = approximate("svd-whitened", module.weight.detach(), max_params=int(0.5 * module.weight.numel()),
                                   **stats.objective(row.name))
            module.weight.copy_(expected.matrix)
        torch.testing.assert_close(net(ids[0]), reference(ids[0]), rtol=0, atol=1e-10)


# ---------------------------------------------------------------------------
# squeezing ranks its cuts by the output error when given calibration statistics
# ---------------------------------------------------------------------------


class _TwoLayers(nn.Module):
    def __init__(self, a: nn.Module, b: nn.Module) -> None:
        super().__init__()
        self.a, self.b = a, b

    def forward(self, x):
        return self.a(x) + self.b(x)


def test_squeeze_ranks_cuts_by_output_error_with_calibration():
    from mpokit.calibration import CalibrationStats
    from mpokit.layers.linear import MPOLinear
    from mpokit.squeezing import squeeze
    from mpokit.squeezing.modules import spectra_of
    from mpokit.squeezing.selection import OutputMetric, select_cuts

    torch.manual_seed(0)
    W = torch.randn(16, 16, dtype=torch.float64)
    # a: half of b's weights (cheaper under Frobenius), but its inputs are 10x larger (dearer in output error)
    a = MPOLinear.from_linear(nn.Linear(16, 16, bias=False).double().requires_grad_(False), n_cores=3)
    b = MPOLinear.from_linear(nn.Linear(16, 16, bias=False).double().requires_grad_(False), n_cores=3)
    from mpokit.mpo import MPO

    a.load_mpo_(MPO.from_matrix(0.5 * W, a.out_modes, a.in_modes))
    b.load_mpo_(MPO.from_matrix(W, b.out_modes, b.in_modes))
    model = _TwoLayers(a, b)
    C_a, C_b = 100.0 * torch.eye(16, dtype=torch.float64), torch.eye(16, dtype=torch.float64)
    stats = CalibrationStats(second_moments={"a": C_a, "b": C_b}, rows={"a": 1, "b": 1})
    regauged = {}
    spectra = spectra_of({"a": a, "b": b}, regauged)
    assert select_cuts(spectra, score="bound")[0].name == "a"  # Frobenius: a's cut is half as large
    from mpokit.squeezing.algorithm import _output_metric

    metrics = {n: _output_metric(regauged[n], stats.objective(n)) for n in ("a", "b")}
    cuts = {c.name: c for c in select_cuts(spectra, score="bound", count=2, metrics=metrics)}
    assert list(cuts)[0] == "b"  # output error: a's cut costs 0.5 * 10 = 5x b's
    for n, C in (("a", C_a), ("b", C_b)):  # the bound is the output error of that truncation, by hand
        m = regauged[n]
        D = m.to_matrix() - m.truncate(max_bond=list(cuts[n].new_dims)).to_matrix()
        assert cuts[n].bound == pytest.approx(math.sqrt(float(torch.trace(D @ C @ D.T))), rel=1e-10)
    assert isinstance(metrics["a"], OutputMetric) and metrics["a"].norm == pytest.approx(10 * 0.5 * float(W.norm()))
    x = torch.randn(8, 16, dtype=torch.float64)
    batches = [(x, torch.zeros(8, dtype=torch.long))]
    kwargs = dict(train_batches=batches, eval_fn=lambda m: {"loss": 0.0}, max_steps=1, finetune_steps=0)
    plain = squeeze(_TwoLayers(*[MPOLinear.from_mpo(l.mpo()) for l in (a, b)]), **kwargs)
    aware = squeeze(_TwoLayers(*[MPOLinear.from_mpo(l.mpo()) for l in (a, b)]), calibration=stats, **kwargs)
    assert plain.rows[1]["matrix"] == "a" and aware.rows[1]["matrix"] == "b"
    with pytest.raises(ValueError, match="nothing for the MPO matrices"):
        squeeze(_TwoLayers(*[MPOLinear.from_mpo(l.mpo()) for l in (a, b)]),
                calibration=CalibrationStats(second_moments={"a": C_a}), **kwargs)


# ---------------------------------------------------------------------------
# the command line
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tool(tmp_path_factory):
    from _tool_fixtures import make_data, make_models

    return make_models(tmp_path_factory.mktemp("models")), make_data(tmp_path_factory.mktemp("data"))


def _cli(capsys, *args):
    from mpokit.cli import main

    capsys.readouterr()
    try:
        rc = main([str(a) for a in args])
    except SystemExit as exc:
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


RUN = ["--threads", "1", "--no-progress"]


def test_cli_compresses_with_calibration_data(tool, tmp_path, capsys):
    from mpokit.io import from_pretrained

    tiny, files = tool
    C = tmp_path / "C"
    rc, out, err = _cli(capsys, "compress", "--model", tiny.llama, "--calibration-data", files.lm_train,
                        "--calibration-samples", "6", "--block-size", "16", "--budget", "0.5", "--out", C, *RUN)
    assert rc == 0, err[-3000:]
    report = json.loads((C / "compression_report.json").read_text())
    assert report["method"] == "mpo-aware" and report["allocation"] == "global" and report["budget"] == 0.5
    assert report["calibration_data"]["samples"] == 6 and report["calibration_data"]["block_size"] == 16
    assert report["calibration"]["sequences"] == 6 and report["calibration"]["tokens"] == 96
    assert {"load", "calibration", "compress"} <= set(report["seconds"]) and "calibration" in out
    rows = report["modules"]
    assert all(r["method"] == "mpo-aware" and r["rel_output_error"] is not None and r["trials"] for r in rows)
    assert sum(r["params_after"] for r in rows) <= 0.5 * sum(r["params_before"] for r in rows)
    md = (C / "compression_report.md").read_text()
    assert "out.err" in md and "method mpo-aware, budget 0.5 (global)" in md
    loaded = from_pretrained(C)
    for r in rows:
        m = loaded.get_submodule(r["name"])
        assert list(m.out_modes) == r["out_modes"] and list(m.bond_dims) == r["bond_dims"]
    ids = tiny.tokenizer(["a fine film"], return_tensors="pt")["input_ids"]
    assert torch.isfinite(loaded(input_ids=ids).logits).all()

    P = tmp_path / "P"  # pruning on an encoder with classify data: a dense checkpoint holding the zeros
    rc, out, err = _cli(capsys, "compress", "--model", tiny.bert, "--calibration-data", files.train, "--method", "wanda",
                        "--no-embedding", "--budget", "0.5", "--allocation", "uniform", "--max-length", "12", "--out", P,
                        *RUN)
    assert rc == 0, err[-3000:]
    report = json.loads((P / "compression_report.json").read_text())
    assert report["method"] == "wanda" and report["pruned_modules"] and report["calibration_data"]["task"] == "classify"
    loaded = from_pretrained(P)
    for r in report["modules"]:
        m = loaded.get_submodule(r["name"])
        weight = m.weight_orig * m.weight_mask if hasattr(m, "weight_mask") else m.weight  # masks kept or folded
        assert int((weight != 0).sum()) == r["params_after"]


def test_cli_saved_calibration_statistics_give_the_same_checkpoint(tool, tmp_path, capsys):
    """--save-calibration, then --calibration-stats: the same statistics, so the same cores, without a forward."""
    from mpokit.io import from_pretrained

    tiny, files = tool
    stats = tmp_path / "stats" / "calibration.safetensors"
    common = ["compress", "--model", tiny.llama, "--budget", "0.5", "--layout-search", "exact", *RUN]
    rc, _, err = _cli(capsys, *common, "--calibration-data", files.lm_train, "--calibration-samples", "6",
                      "--block-size", "16", "--save-calibration", stats, "--out", tmp_path / "A")
    assert rc == 0, err[-3000:] and stats.is_file()
    rc, _, err = _cli(capsys, *common, "--calibration-stats", stats, "--out", tmp_path / "B")
    assert rc == 0, err[-3000:]
    rc, _, err = _cli(capsys, *common, "--calibration-stats", stats, "--fit-top", "1", "--out", tmp_path / "F")
    assert rc == 0, err[-3000:]
    one = json.loads((tmp_path / "F" / "compression_report.json").read_text())
    assert one["config"]["fit_top"] == 1
    assert all(sum(1 for t in r["trials"] if t["sweeps"] > 0) <= 1 for r in one["modules"])  # one layout refined
    a, b = (json.loads((tmp_path / d / "compression_report.json").read_text()) for d in "AB")
    assert b["calibration_data"]["stats_file"] == str(stats) and b["calibration_data"]["samples"] == 6
    assert "calibration" not in b["seconds"] and a["config"]["layout_search"] == "exact"
    assert {r["layout"] for r in a["modules"]} <= {"low-rank", "hybrid-out", "hybrid-in"}
    assert [(r["name"], r["params_after"], r["rel_output_error"]) for r in a["modules"]] == \
        [(r["name"], r["params_after"], r["rel_output_error"]) for r in b["modules"]]
    wa, wb = (from_pretrained(tmp_path / d).state_dict() for d in "AB")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    # statistics of another model, or of other targets, are refused before anything is written
    for args, message in ((["--model", tiny.bert, "--no-embedding"], "has no statistics for the targets"),
                          (["--model", tiny.llama, "--calibration-data", files.lm_train], "not both")):
        out_dir = tmp_path / "bad"
        rc, _, err = _cli(capsys, "compress", *args, "--budget", "0.5", "--calibration-stats", stats, "--out", out_dir,
                          *RUN)
        assert rc == 2 and message in err and "Traceback" not in err and not out_dir.exists(), err[-2000:]
    rc, _, err = _cli(capsys, *common, "--calibration-stats", tmp_path / "none.safetensors", "--out", tmp_path / "C")
    assert rc == 2 and "does not exist" in err and not (tmp_path / "C").exists()
    rc, _, err = _cli(capsys, *common, "--save-calibration", stats, "--out", tmp_path / "D")
    assert rc == 2 and "--save-calibration F writes the statistics collected from --calibration-data" in err


def test_cli_refuses_bad_calibration_data_and_options_writing_nothing(tool, tmp_path, capsys, monkeypatch):
    from _tool_fixtures import write_csv

    tiny, files = tool
    empty = write_csv(tmp_path / "empty.csv", [])

    def refused(*args, expect, before_loading=False):
        out_dir = tmp_path / "out"
        if before_loading:
            monkeypatch.setattr(mpokit.loading, "load_model", lambda *a, **k: pytest.fail("loaded a model"))
        rc, _, err = _cli(capsys, "compress", *args, "--out", out_dir, *RUN)
        monkeypatch.undo()
        assert rc == 2, err[-3000:]
        for fragment in expect:
            assert fragment in err, err
        assert "Traceback" not in err and not out_dir.exists()

    refused("--model", tiny.bert, "--calibration-data", empty, expect=["no rows"], before_loading=True)
    refused("--model", tiny.bert, "--calibration-data", files.lm_train, "--budget", "0.5",
            expect=["lm data", "needs a causal language model", "text with a label column"])
    refused("--model", tiny.bert, "--method", "wanda", "--budget", "0.5", expect=["--calibration-data"],
            before_loading=True)
    refused("--model", tiny.bert, "--budget", "0.5", "--allocation", "global", expect=["--allocation global splits"],
            before_loading=True)
    refused("--model", tiny.bert, "--method", "svd", "--max-bond", "4", expect=["--max-bond", "--budget F"],
            before_loading=True)
    rc, _, err = _cli(capsys, "compress", "--model", tiny.bert, "--calibration-samples", "0", "--out", tmp_path / "x")
    assert rc == 2 and "--calibration-samples" in err and "e.g. 128" in err
    rc, _, err = _cli(capsys, "compress", "--model", tiny.bert, "--method", "pca", "--out", tmp_path / "x")
    assert rc == 2 and "invalid choice: 'pca'" in err
    rc, out, _ = _cli(capsys, "compress", "--help")
    for flag in ("--calibration-data", "--calibration-samples", "--method", "--allocation", "--max-sweeps",
                 "--no-layout-search", "--layout-search", "--calibration-stats", "--save-calibration", "--block-size",
                 "--max-length"):
        assert flag in out
