"""Regression tests of issue 17's remaining defects: D7 (decompose of an MPO checkpoint), D15/D16 (MPOLSTM
lengths and empty inputs), MPO argument types, the one atomic writer, save_pretrained into a folder of another
model, and a corrupt runs.csv on --resume."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch
from torch import nn

from mpokit import MPO
from mpokit.layers.lstm import EmptySequenceError, MPOLSTM

# ---------------------------------------------------------------------------
# MPO.from_matrix / MPO.from_cores: types are named, checked before any SVD
# ---------------------------------------------------------------------------

W64 = torch.randn(64, 64, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    "options, fragments",
    [
        (dict(max_bond=2.5), ["max_bond must be an int", "2.5", "float"]),
        (dict(max_bond="4"), ["max_bond must be an int", "'4'", "str"]),
        (dict(max_bond=[2.0, 2, 2, 2]), ["max_bond must be an int", "2.0"]),
        (dict(rel_error="0.1"), ["rel_error must be a number", "'0.1'", "str"]),
        (dict(rel_error=True), ["rel_error must be a number", "True"]),
        (dict(max_params=float("nan")), ["max_params must be an int", "nan"]),
        (dict(max_params="500"), ["max_params must be an int", "'500'"]),
        (dict(max_params=500.0), ["max_params must be an int", "500.0"]),
    ],
)
def test_from_matrix_names_the_wrong_type(options, fragments):
    with pytest.raises(TypeError) as info:
        MPO.from_matrix(W64, **options)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    assert "e.g." in message and "smallest possible" not in message and "not iterable" not in message


def test_from_matrix_nan_rel_error_is_a_range_error():
    with pytest.raises(ValueError, match=r"rel_error must be in \[0, 1\).*got nan"):
        MPO.from_matrix(W64, rel_error=float("nan"))


def test_from_matrix_takes_numpy_numbers_like_python_ones():
    w = W64[:24, :24]
    exact = MPO.from_matrix(w, n_cores=3)
    assert MPO.from_matrix(w, n_cores=3, max_bond=np.int64(3)).bond_dims == exact.truncate(max_bond=3).bond_dims
    assert MPO.from_matrix(w, n_cores=3, max_params=np.int64(300)).num_params <= 300
    assert MPO.from_matrix(w, n_cores=3, rel_error=np.float32(0.3)).rel_error_bound <= 0.3 + 1e-6
    assert exact.truncate(max_bond=np.int64(2)).bond_dims == (2, 2)


def _never(*args, **kwargs):
    raise AssertionError("the cores reached the decomposition before they were checked")


def _exact_cores() -> list[torch.Tensor]:
    return [c.clone() for c in MPO.from_matrix(W64).cores]


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_from_cores_refuses_non_finite_cores_before_any_decomposition(monkeypatch, value):
    import mpokit.mpo as mpo_module

    cores = _exact_cores()
    cores[2][0, 0, 0, 0] = value
    monkeypatch.setattr(mpo_module, "_left_orthogonalize", _never)
    with pytest.raises(ValueError, match=r"core 2 .* 1 NaN or inf entries.*e\.g\."):
        MPO.from_cores(cores)


def test_from_cores_refuses_mixed_dtypes_and_integer_cores(monkeypatch):
    import mpokit.mpo as mpo_module

    monkeypatch.setattr(mpo_module, "_left_orthogonalize", _never)
    cores = _exact_cores()
    cores[0] = cores[0].double()
    with pytest.raises(ValueError, match=r"one dtype and device.*core 0: torch.float64.*core 1: torch.float32.*e\.g\."):
        MPO.from_cores(cores)
    cores = _exact_cores()
    cores[1] = cores[1].round().long()
    with pytest.raises(TypeError, match=r"core 1 must be floating point, got torch.int64"):
        MPO.from_cores(cores)


def test_from_cores_refuses_mixed_devices(monkeypatch):
    import mpokit.mpo as mpo_module

    monkeypatch.setattr(mpo_module, "_left_orthogonalize", _never)
    cores = _exact_cores()
    cores[1] = cores[1].to("meta")  # a second device without a GPU
    with pytest.raises(ValueError, match=r"one dtype and device.*core 1: torch.float32 on meta"):
        MPO.from_cores(cores)


def test_from_cores_still_takes_good_cores():
    cores = _exact_cores()
    rebuilt = MPO.from_cores(cores).to_matrix()
    assert float((rebuilt - W64).norm() / W64.norm()) < 1e-5


# ---------------------------------------------------------------------------
# D15 / D16: MPOLSTM lengths, batch 0, length 0
# ---------------------------------------------------------------------------


def _lstm_pair(batch_first=False, bidirectional=False, num_layers=2):
    torch.manual_seed(0)
    ref = nn.LSTM(4, 6, num_layers=num_layers, batch_first=batch_first, bidirectional=bidirectional)
    return ref, MPOLSTM.from_lstm(ref)


@pytest.mark.parametrize("lengths", [[5, 3], [5, 3, 2, 1], torch.tensor([[5, 3, 2]]), []])
def test_lstm_lengths_of_another_count_than_the_batch_raise(lengths):
    _, lstm = _lstm_pair()
    with pytest.raises(ValueError, match=r"one entry per sequence.*batch size B=3.*e\.g\. lengths="):
        lstm(torch.randn(5, 3, 4), lengths=lengths)


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("lengths, shown", [([6, 1, 1], "lengths[0]=6"), ([2, 0, 1], "lengths[1]=0"),
                                            ([2, 2, -1], "lengths[2]=-1")])
def test_lstm_lengths_out_of_range_raise(batch_first, lengths, shown):
    _, lstm = _lstm_pair(batch_first=batch_first)
    x = torch.randn(3, 5, 4) if batch_first else torch.randn(5, 3, 4)
    with pytest.raises(ValueError, match=r"in \[1, T\] with T=5") as info:
        lstm(x, lengths=lengths)
    assert shown in str(info.value)


@pytest.mark.parametrize("lengths", [[5.5, 2, 2], torch.tensor([True, True, False]), "532"])
def test_lstm_lengths_that_are_not_ints_raise(lengths):
    _, lstm = _lstm_pair()
    with pytest.raises(TypeError, match="lengths must"):
        lstm(torch.randn(5, 3, 4), lengths=lengths)


def test_lstm_good_lengths_still_match_packing_with_nn_lstm():
    ref, lstm = _lstm_pair()
    x = torch.randn(5, 3, 4)
    lengths = [5, 2, 4]
    out, (h, c) = lstm(x, lengths=torch.tensor(lengths, dtype=torch.float64))  # whole floats are fine
    packed = nn.utils.rnn.pack_padded_sequence(x, torch.tensor(lengths), enforce_sorted=False)
    ref_out, (ref_h, ref_c) = ref(packed)
    ref_out, _ = nn.utils.rnn.pad_packed_sequence(ref_out, total_length=5)
    assert torch.allclose(out, ref_out, atol=1e-5) and torch.allclose(h, ref_h, atol=1e-5)
    assert torch.allclose(c, ref_c, atol=1e-5)


@pytest.mark.parametrize("execution", ["auto", "fused", "stepwise"])
@pytest.mark.parametrize("batch_first, bidirectional", [(False, False), (True, True)])
def test_lstm_batch_zero_gives_empty_outputs_like_nn_lstm(execution, batch_first, bidirectional):
    ref, lstm = _lstm_pair(batch_first=batch_first, bidirectional=bidirectional)
    lstm.set_execution(execution, "contract", "contract").train()
    x = torch.randn(0, 5, 4) if batch_first else torch.randn(5, 0, 4)
    x.requires_grad_(True)
    ref_out, (ref_h, ref_c) = ref(x)
    out, (h, c) = lstm(x)
    assert out.shape == ref_out.shape and h.shape == ref_h.shape and c.shape == ref_c.shape
    (out.sum() + h.sum() + c.sum()).backward()  # the graph exists, as with nn.LSTM
    assert x.grad.shape == x.shape
    directions = 2 if bidirectional else 1
    h0 = torch.zeros(2 * directions, 0, 6)
    assert lstm(x, (h0, h0))[0].shape == ref_out.shape
    assert lstm(x, lengths=[])[0].shape == ref_out.shape  # lengths of an empty batch: an empty list


@pytest.mark.parametrize("shape, batch_first", [((0, 3, 4), False), ((3, 0, 4), True), ((0, 4), False),
                                                ((0, 0, 4), False)])
def test_lstm_length_zero_raises_like_nn_lstm(shape, batch_first):
    ref, lstm = _lstm_pair(batch_first=batch_first)
    x = torch.randn(*shape)
    with pytest.raises(RuntimeError, match="sequence length"):
        ref(x)
    with pytest.raises(EmptySequenceError, match=r"sequence length 0.*e\.g\. an input of shape") as info:
        lstm(x)
    assert isinstance(info.value, ValueError) and isinstance(info.value, RuntimeError)
    assert "reshape" not in str(info.value)


# ---------------------------------------------------------------------------
# D7: decompose an mpokit checkpoint = decompose the matrices its MPO layers hold
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compressed_bert_dir(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    import mpokit
    from mpokit.config import MPOConfig, MPOLayerConfig

    config = transformers.BertConfig(vocab_size=101, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=40)
    torch.manual_seed(0)
    model = mpokit.compress(transformers.BertModel(config).eval(),
                            MPOConfig(attention=MPOLayerConfig(max_bond=3), ffn=MPOLayerConfig(max_bond=2)))
    folder = tmp_path_factory.mktemp("compressed_bert")
    mpokit.save_pretrained(model, folder)
    return folder, model


def test_decompose_command_on_an_mpokit_checkpoint_decomposes_its_mpo_matrices(compressed_bert_dir, tmp_path, capsys):
    from mpokit import cli
    from mpokit.layers.base import MPOModule

    folder, model = compressed_bert_dir
    out = tmp_path / "out"
    assert cli.main(["decompose", "--model", str(folder), "--out", str(out), "--dtype", "float64", "--no-progress",
                     "--no-plot"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    layers = {name: m for name, m in model.named_modules() if isinstance(m, MPOModule)}
    dense = ["embeddings.position_embeddings", "embeddings.token_type_embeddings"]  # compress leaves these
    assert len(layers) == 1 + 2 * 6 + 1  # word embeddings, 2 x (Q, K, V, O, FFN in, FFN out), pooler
    entries = {m["name"]: m for m in report["matrices"]}
    assert set(entries) == set(layers) | set(dense)  # before: only the two dense tables
    assert report["summary"]["mpo_matrices"] == len(layers) and report["settings"]["mpo_layer_matrices"] == len(layers)
    for name in dense:
        assert entries[name]["source"] == "dense" and entries[name]["mpo_layer"] is None
    for name, layer in layers.items():
        entry = entries[name]
        assert entry["source"] == "mpo" and entry["mpo_layer"] == type(layer).__name__, entry["name"]
        assert tuple(entry["mpo_bond_dims"]) == layer.bond_dims
        assert tuple(entry["shape"]) == layer.shape and entry["rel_error"] < 1e-10
        with torch.no_grad():
            matrix = layer.rebuild_weight().double()
        for spectrum, kept in zip(entry["singular_values"], layer.bond_dims):  # the layer's matrix, not a random one
            assert math.isclose(math.sqrt(sum(s * s for s in spectrum)), float(matrix.norm()), rel_tol=1e-9)
            assert all(s <= 1e-5 * spectrum[0] for s in spectrum[kept:]), (name, kept, spectrum)  # float32 rounding
        if entry["out_modes"] == list(layer.out_modes) and entry["in_modes"] == list(layer.in_modes):
            for spectrum, exact in zip(entry["singular_values"], layer.mpo().singular_values):
                assert torch.allclose(torch.tensor(spectrum[: len(exact)], dtype=torch.float64), exact.double(),
                                      rtol=1e-4, atol=1e-6)
    assert "rebuilt from the cores of the model's MPO layers" in printed
    assert "MPO MPOLinear d=3,3,3,3" in printed and "14 from MPO layers" in printed
    assert "MPO MPOEmbedding d=" in (out / "report.md").read_text()


def test_decompose_model_lists_the_matrices_of_an_mpo_lstm_once():
    from mpokit.analysis import decompose_model, weight_matrices

    class Tagger(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = MPOLSTM.from_lstm(nn.LSTM(8, 4, num_layers=2), n_cores=2, bond_dim=2)
            self.head = nn.Linear(4, 3)

    model = Tagger()
    listed = weight_matrices(model)
    assert [(m.name, m.source) for m in listed] == [
        ("lstm.weight_ih_l0", "mpo"), ("lstm.weight_hh_l0", "mpo"), ("lstm.weight_ih_l1", "mpo"),
        ("lstm.weight_hh_l1", "mpo"), ("head", "dense")]
    assert torch.equal(listed[1].matrix, model.lstm.weight_hh_l0.rebuild_weight().detach())
    reports = decompose_model(model, progress=False, n_cores=2)
    assert [r.source for r in reports] == ["mpo"] * 4 + ["dense"]
    alone = weight_matrices(model.lstm)  # the model is the MPO layer itself
    assert [(m.name, m.source) for m in alone] == [(m.name.removeprefix("lstm."), "mpo") for m in listed[:4]]
    assert all(r.mpo_layer == "MPOLSTM" and max(r.mpo_bond_dims) <= 2 for r in reports[:4])


# ---------------------------------------------------------------------------
# one atomic writer: every file with the umask's mode
# ---------------------------------------------------------------------------


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield 0o640
    os.umask(old)


def _mode(path) -> int:
    return path.stat().st_mode & 0o777


def test_pruning_checkpoints_and_lstm_reports_follow_the_umask(tmp_path, umask_027):
    from mpokit.baselines.lstm_pruning import CHECKPOINT_META, CHECKPOINT_WEIGHTS, load_pruned, save_pruned
    from mpokit.recipes.lstm_report import RUN_FIELDS, plot_metric, read_runs, write_runs

    model = nn.Linear(3, 2)
    save_pruned(model, tmp_path / "pruned", extra={"rate": 10})
    for name in (CHECKPOINT_WEIGHTS, CHECKPOINT_META):  # mkstemp's 0600 before
        assert _mode(tmp_path / "pruned" / name) == umask_027, name
    assert load_pruned(nn.Linear(3, 2), tmp_path / "pruned")["extra"] == {"rate": 10}
    rows = [dict(dict.fromkeys(RUN_FIELDS, ""), task="lm", method=m, rate=r, seed=0, lr=1e-3, metric_valid=v,
                 metric_test=v, train_s_per_epoch=1.0, infer_s_per_epoch=0.1) for m, r, v in
            (("dense", 1, 90.0), ("mpo", 10, 80.0), ("pruning", 10, 70.0))]
    csv_path = write_runs(rows, tmp_path / "runs.csv")
    png = plot_metric(read_runs(csv_path), "metric_test", "accuracy", tmp_path / "plot.png", "title")
    assert _mode(csv_path) == umask_027 and _mode(png) == umask_027
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p.name for p in tmp_path.rglob("*.tmp")] and not [p.name for p in tmp_path.rglob(".*")]


def test_decompose_report_goes_through_the_atomic_writer(tmp_path, umask_027, monkeypatch):
    import mpokit.atomic
    from mpokit.analysis import decompose_model, write_report

    written = []
    real = mpokit.atomic.atomic_write_bytes
    monkeypatch.setattr(mpokit.atomic, "atomic_write_bytes", lambda path, data: written.append(path) or real(path, data))
    reports = decompose_model(nn.Sequential(nn.Linear(4, 4)), progress=False, n_cores=2)
    paths = write_report(reports, tmp_path)
    assert sorted(p.name for p in written) == ["report.json", "report.md"]
    assert all(_mode(p) == umask_027 for p in paths.values())


def test_no_file_writer_of_its_own_outside_mpokit_atomic():
    """Every os.replace / tempfile.mkstemp in src lives in mpokit/atomic.py."""
    import re
    from pathlib import Path

    import mpokit

    root = Path(mpokit.__file__).parent
    offenders = {str(p.relative_to(root)) for p in root.rglob("*.py")
                 if re.search(r"os\.replace\(|mkstemp\(|NamedTemporaryFile\(", p.read_text(encoding="utf-8"))}
    assert offenders <= {"atomic.py"}, sorted(offenders)


# ---------------------------------------------------------------------------
# save_pretrained into a folder of another model
# ---------------------------------------------------------------------------


def _tiny_bert(seed=0, **changes):
    import transformers

    torch.manual_seed(seed)
    config = transformers.BertConfig(**{**dict(vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                               intermediate_size=24, max_position_embeddings=16), **changes})
    return transformers.BertModel(config).eval()


def _tiny_gpt2():
    import transformers

    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=60, n_embd=16, n_layer=1, n_head=2,
                                                                n_positions=16)).eval()


def _bert_tokenizer(folder):
    import transformers

    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab_src.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "film"]) + "\n")
    return transformers.BertTokenizer(str(vocab))


def _word_tokenizer():
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"<unk>": 0, "a": 1, "b": 2}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")


def _listing(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_save_refuses_an_mpokit_checkpoint_of_another_model(tmp_path):
    import mpokit
    from mpokit.config import MPOConfig, MPOLayerConfig
    from mpokit.io import FolderInUseError

    bert = mpokit.compress(_tiny_bert(), MPOConfig(ffn=MPOLayerConfig(max_bond=2)))
    folder = tmp_path / "ckpt"
    mpokit.save_pretrained(bert, folder, tokenizer=_bert_tokenizer(tmp_path / "tok"))
    before = _listing(folder)
    cases = [
        (_tiny_gpt2(), ["holds a BertModel, this is a GPT2LMHeadModel"]),
        (_tiny_bert(hidden_size=24), ["has shape (16,) there, (24,) here"]),
        (_tiny_bert(num_hidden_layers=1), ["modules this model lacks", "encoder.layer.1"]),
    ]
    for other, fragments in cases:
        with pytest.raises(FolderInUseError) as info:
            mpokit.save_pretrained(other, folder)
        message = str(info.value)
        for fragment in fragments + [str(folder), "overwrite=True", "e.g."]:
            assert fragment in message, message
        assert _listing(folder) == before  # nothing written, nothing removed
    # the same model may always be saved into its own folder: other weights, other bonds, dense or not
    mpokit.save_pretrained(mpokit.compress(_tiny_bert(seed=3), MPOConfig(attention=MPOLayerConfig(max_bond=3))), folder)
    mpokit.save_pretrained(_tiny_bert(seed=4), folder)
    assert (folder / "tokenizer.json").is_file()  # its own tokenizer stays
    with pytest.raises(TypeError, match="overwrite must be True or False"):
        mpokit.save_pretrained(bert, folder, overwrite="yes")
    # the same check, for a job to run before any work
    from mpokit.io import check_save_target

    with pytest.raises(FolderInUseError, match="holds a BertModel, this is a GPT2LMHeadModel"):
        check_save_target(_tiny_gpt2(), folder)
    check_save_target(_tiny_gpt2(), folder, overwrite=True)
    check_save_target(bert, folder)
    check_save_target(_tiny_gpt2(), tmp_path / "not_there_yet")


def test_overwrite_replaces_another_checkpoint_and_drops_its_tokenizer(tmp_path):
    import mpokit

    folder = tmp_path / "ckpt"
    mpokit.save_pretrained(_tiny_bert(), folder, tokenizer=_bert_tokenizer(tmp_path / "tok"))
    assert (folder / "tokenizer.json").is_file() and (folder / "tokenizer_config.json").is_file()
    (folder / "vocab.txt").write_text("[PAD]\n[UNK]\n")  # as older transformers versions wrote a BERT tokenizer
    gpt2 = _tiny_gpt2()
    mpokit.save_pretrained(gpt2, folder, overwrite=True)
    from mpokit.io import TOKENIZER_FILES

    assert not [n for n in TOKENIZER_FILES if (folder / n).exists()]  # the BERT tokenizer would not fit GPT-2
    loaded = mpokit.from_pretrained(folder)
    assert type(loaded).__name__ == "GPT2LMHeadModel"
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, gpt2(ids).logits)
    # with a tokenizer: the new one's files, none of the old one's
    mpokit.save_pretrained(_tiny_bert(), folder, tokenizer=_bert_tokenizer(tmp_path / "tok"), overwrite=True)
    (folder / "vocab.txt").write_text("[PAD]\n[UNK]\n")
    mpokit.save_pretrained(gpt2, folder, tokenizer=_word_tokenizer(), overwrite=True)
    assert not (folder / "vocab.txt").exists()
    vocab = json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"]
    assert set(vocab) == {"<unk>", "a", "b"}  # the new tokenizer, not the BERT one


def test_save_refuses_a_transformers_folder_and_foreign_tokenizer_files(tmp_path):
    import mpokit
    from mpokit.io import FolderInUseError
    from mpokit.loading import identify_source

    hf = tmp_path / "hf"
    _tiny_gpt2().save_pretrained(str(hf))
    _word_tokenizer().save_pretrained(str(hf))
    before = _listing(hf)
    bert = _tiny_bert()
    with pytest.raises(FolderInUseError, match=r"holds another model's files \(config.json.*model.safetensors.*"
                                               r"no mpokit checkpoint.*overwrite=True"):
        mpokit.save_pretrained(bert, hf)
    assert _listing(hf) == before  # the transformers model is intact (its model.safetensors used to be deleted)
    tok_only = tmp_path / "tok_only"
    _bert_tokenizer(tmp_path / "tok").save_pretrained(str(tok_only))
    with pytest.raises(FolderInUseError, match=r"tokenizer.json, tokenizer_config.json"):
        mpokit.save_pretrained(bert, tok_only)
    mpokit.save_pretrained(bert, hf, overwrite=True)
    left = sorted(p.name for p in hf.iterdir())
    assert "generation_config.json" not in left and "tokenizer.json" not in left and "model.safetensors" not in left
    assert identify_source(hf).kind == "mpokit" and type(mpokit.from_pretrained(hf)).__name__ == "BertModel"
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "README.md").write_text("not a model")
    mpokit.save_pretrained(bert, tmp_path / "notes")  # files that belong to no model are no reason to refuse
    assert (tmp_path / "notes" / "README.md").is_file()


# ---------------------------------------------------------------------------
# lstm --resume with a cut-short or corrupt runs.csv
# ---------------------------------------------------------------------------


def _runs_csv(tmp_path):
    from mpokit.recipes.lstm_report import RUN_FIELDS, write_runs

    rows = [dict(dict.fromkeys(RUN_FIELDS, ""), task="lm", preset="tiny", method="dense", rate=1, seed=s, lr=3e-3,
                 metric_valid=1697.25, metric_test=1587.43, metric_name="perplexity", epochs=2, lstm_weights=65536,
                 train_s_per_epoch=8.9, infer_s_per_epoch=0.7) for s in (0, 1)]
    return write_runs(rows, tmp_path / "runs.csv")


@pytest.mark.parametrize("corrupt, fragments", [
    (lambda lines: lines[:2] + [lines[2][:40]], ["line 3", "values for the 21 columns", "ends before"]),
    (lambda lines: lines[:2] + [lines[2].rstrip("\r\n") + ",x,y\r\n"], ["line 3", "23 values for the 21 columns"]),
    (lambda lines: [lines[0], lines[1].replace(",0,0.003,", ",zero,0.003,"), lines[2]], ["line 2", "seed='zero'"]),
    (lambda lines: [lines[0], lines[1].replace("1697.25", ""), lines[2]], ["line 2", "metric_valid=''"]),
    (lambda lines: lines[1:], ["line 1", "the header lacks"]),
    (lambda lines: [], ["is empty"]),
    (lambda lines: [lines[0][:30]], ["line 1", "the header lacks"]),
])
def test_read_runs_names_the_file_and_the_bad_line(tmp_path, corrupt, fragments):
    from mpokit.recipes.lstm_report import RunsFileError, read_runs

    path = _runs_csv(tmp_path)
    assert [r["seed"] for r in read_runs(path)] == [0, 1]
    path.write_text("".join(corrupt(path.read_text().splitlines(keepends=True))), newline="")
    with pytest.raises(RunsFileError) as info:
        read_runs(path)
    message = str(info.value)
    assert str(path) in message and isinstance(info.value, ValueError)
    for fragment in fragments:
        assert fragment in message, message


def test_lstm_resume_with_a_truncated_runs_csv_says_which_line_before_any_work(tmp_path, capsys):
    from mpokit import cli

    out = tmp_path / "exp"
    out.mkdir()
    path = _runs_csv(out)
    text = path.read_text()
    path.write_text(text[: len(text) - 50], newline="")  # cut inside the last line, as an editor or a full disk does
    cut = path.read_bytes()
    rc = cli.main(["lstm", "lm", "--preset", "tiny", "--methods", "dense", "--out", str(out), "--resume", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and f"{path}, line 3:" in err and "values for the 21 columns" in err, err
    assert "Traceback" not in err and "TypeError" not in err
    assert path.read_bytes() == cut and not (out / "config.json").exists()  # refused before anything was written
