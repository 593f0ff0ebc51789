"""Calibration statistics: C = X^T X / N of every target's real inputs, against inputs captured by hand.

References: forward pre-hooks of the test's own capture every target's input tensor; C is then formed from
the non-padding rows in float64 and compared to 1e-10 (float64 models). Padding, shared inputs (q/k/v,
gate/up), token counts of embeddings, the early stop after the last target, and the errors (empty data,
all padding, a target that never ran, data of the wrong task) each have a test.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from _plm_models import tiny_inputs, tiny_model
from mpokit.calibration import CalibrationStats, collect_calibration, prepare_calibration
from mpokit.config import MPOConfig
from mpokit.targets import find_targets

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # tiny float64 kernels: one thread avoids oversubscribing a shared machine; restored afterwards
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _targets(model) -> list[str]:
    return [t[0] for t in find_targets(model, MPOConfig())]


def _captured(model, batches, names):
    """``{name: [input tensors]}`` and the masks, from hooks of the test's own."""
    seen = {n: [] for n in names}
    masks = []
    modules = dict(model.named_modules())
    handles = [modules[n].register_forward_pre_hook(lambda m, a, n=n: seen[n].append(a[0].detach().clone()))
               for n in names]
    with torch.no_grad():
        for b in batches:
            masks.append(b["attention_mask"].bool())
            model(**b)
    for h in handles:
        h.remove()
    return seen, masks


def _by_hand(inputs, masks, calls_per_batch: int = 1):
    """X^T X / N over the non-padding rows of every captured input (several calls of one module per batch);
    an input not laid out as (B, T, ...) (BERT's pooler gets (B, hidden)) keeps every row."""
    rows = []
    for k, x in enumerate(inputs):
        mask = masks[k // calls_per_batch]
        rows.append((x[mask] if tuple(x.shape[:2]) == tuple(mask.shape) else x).reshape(-1, x.shape[-1]).double())
    X = torch.cat(rows)
    return X.T @ X / X.shape[0], X.shape[0]


def _batches(n: int = 3, seed: int = 1):
    out = []
    for i in range(n):
        b = tiny_inputs(seed=seed + i, batch=2 + i, length=7 + i)
        b["attention_mask"][-1, -2:] = 0  # padding at the end of another row too
        out.append(b)
    return out


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_second_moments_equal_x_t_x_over_n_of_the_captured_inputs(arch):
    model = tiny_model(arch, dtype=torch.float64)
    names = _targets(model)
    batches = _batches()
    stats = collect_calibration(model, batches, names)
    seen, masks = _captured(model, batches, names)
    linear = [n for n in names if not isinstance(model.get_submodule(n), nn.Embedding)]
    assert set(stats.second_moments) == set(linear) and linear
    for name in linear:
        C, N = _by_hand(seen[name], masks)
        expected_rows = sum(len(m) for m in masks) if name.endswith("pooler.dense") else sum(int(m.sum()) for m in masks)
        assert stats.rows[name] == N == expected_rows
        torch.testing.assert_close(stats.second_moments[name], C, rtol=0, atol=1e-10)
        assert stats.second_moments[name].dtype == torch.float64
    assert stats.sequences == sum(b["input_ids"].shape[0] for b in batches)
    assert stats.tokens == sum(int(b["attention_mask"].sum()) for b in batches)


def test_padding_positions_are_left_out():
    model = tiny_model("bert", dtype=torch.float64)
    names = _targets(model)
    batches = _batches()
    stats = collect_calibration(model, batches, names)
    changed = []
    for b in batches:  # other token ids at the padded positions: no input row that counts may change
        c = {k: v.clone() for k, v in b.items()}
        c["input_ids"][c["attention_mask"] == 0] = 5
        changed.append(c)
    again = collect_calibration(model, changed, names)
    emb = "bert.embeddings.word_embeddings"
    for name in stats.second_moments:
        torch.testing.assert_close(again.second_moments[name], stats.second_moments[name], rtol=0, atol=1e-12)
    torch.testing.assert_close(again.row_weights[emb], stats.row_weights[emb], rtol=0, atol=0)
    # and every padded row would have changed C: with the mask ignored, C differs
    full = [{"input_ids": b["input_ids"], "attention_mask": torch.ones_like(b["attention_mask"])} for b in batches]
    unmasked = collect_calibration(model, full, names)
    q = "bert.encoder.layer.0.attention.self.query"
    assert unmasked.rows[q] > stats.rows[q]
    assert float((unmasked.second_moments[q] - stats.second_moments[q]).abs().max()) > 1e-6


def test_shared_inputs_are_counted_once():
    model = tiny_model("llama", dtype=torch.float64)
    names = _targets(model)
    stats = collect_calibration(model, _batches(), names)
    for layer in (0, 1):
        p = f"model.layers.{layer}."
        q, k, v = (p + f"self_attn.{x}_proj" for x in "qkv")
        gate, up, down = (p + f"mlp.{x}_proj" for x in ("gate", "up", "down"))
        assert stats.shared_with[k] == stats.shared_with[v] == q and stats.shared_with[up] == gate
        assert stats.second_moments[k] is stats.second_moments[q] is stats.second_moments[v]
        assert stats.second_moments[up] is stats.second_moments[gate]
        assert stats.shared_with[down] == down and stats.rows[k] == stats.rows[q] == stats.tokens
    assert stats.summary()["input_groups"] == 2 * 4 + 1  # per layer: qkv, o, gate/up, down; plus the embedding


def test_a_module_called_several_times_accumulates_every_call():
    model = tiny_model("albert", dtype=torch.float64)  # one shared layer, run twice per forward
    names = _targets(model)
    batches = _batches(2)
    stats = collect_calibration(model, batches, names)
    seen, masks = _captured(model, batches, names)
    q = "albert.encoder.albert_layer_groups.0.albert_layers.0.attention.query"
    C, N = _by_hand(seen[q], masks, calls_per_batch=2)
    assert stats.rows[q] == N == 2 * stats.tokens
    torch.testing.assert_close(stats.second_moments[q], C, rtol=0, atol=1e-10)


def test_embedding_row_weights_are_token_frequencies():
    model = tiny_model("bert", dtype=torch.float64)
    batches = _batches()
    emb = "bert.embeddings.word_embeddings"
    stats = collect_calibration(model, batches, [emb])
    ids = torch.cat([b["input_ids"][b["attention_mask"].bool()] for b in batches])
    expected = torch.bincount(ids, minlength=97).double() / ids.numel()
    torch.testing.assert_close(stats.row_weights[emb], expected, rtol=0, atol=0)
    assert stats.rows[emb] == ids.numel() and abs(float(stats.row_weights[emb].sum()) - 1) < 1e-12
    assert stats.objective(emb).keys() == {"row_weights"}


def test_max_samples_cuts_the_data_at_that_many_sequences():
    model = tiny_model("bert", dtype=torch.float64)
    batches = _batches()  # 2 + 3 + 4 sequences
    q = "bert.encoder.layer.0.attention.self.query"
    cut = collect_calibration(model, batches, [q], max_samples=4)
    first = collect_calibration(model, [batches[0], {k: v[:2] for k, v in batches[1].items()}], [q])
    assert cut.sequences == 4
    torch.testing.assert_close(cut.second_moments[q], first.second_moments[q], rtol=0, atol=0)


def test_clear_errors_before_any_forward():
    model = tiny_model("bert", dtype=torch.float64)
    q = "bert.encoder.layer.0.attention.self.query"
    calls = []
    handle = model.register_forward_pre_hook(lambda *a: calls.append(1))
    with pytest.raises(ValueError, match="calibration data is empty.*e.g."):
        collect_calibration(model, [], [q])
    with pytest.raises(ValueError, match="calibration data is empty"):
        collect_calibration(model, [{"input_ids": torch.zeros(0, 5, dtype=torch.long)}], [q])
    padded = tiny_inputs()
    padded["attention_mask"].zero_()
    with pytest.raises(ValueError, match="every position of the 3 calibration sequences is padding.*e.g."):
        collect_calibration(model, [padded], [q])
    with pytest.raises(ValueError, match=r"\['bert.nope'\] are not modules of this BertForSequenceClassification"):
        collect_calibration(model, [tiny_inputs()], ["bert.nope"])
    with pytest.raises(ValueError, match="max_samples must be an int >= 1"):
        collect_calibration(model, [tiny_inputs()], [q], max_samples=0)
    assert not calls
    lstm = nn.Sequential(nn.LSTM(4, 4))
    with pytest.raises(ValueError, match="LSTM.*recurrent state"):
        collect_calibration(lstm, [torch.randn(2, 3, 4)], ["0"])


def test_a_target_that_never_runs_is_named():
    model = tiny_model("bert", dtype=torch.float64)
    model.unused = nn.Linear(24, 24).double()  # registered, never called by the forward
    with pytest.raises(ValueError, match=r"\['unused'\] never ran"):
        collect_calibration(model, _batches(2), ["bert.encoder.layer.0.attention.self.query", "unused"])


def test_objective_names_the_missing_target():
    stats = CalibrationStats()
    with pytest.raises(KeyError, match="no calibration statistics for 'x'"):
        stats.objective("x")


# ---------------------------------------------------------------------------
# calibration data from files, through mpokit.inputs and the model's task
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tool(tmp_path_factory):
    from _tool_fixtures import make_data, make_models

    return make_models(tmp_path_factory.mktemp("models")), make_data(tmp_path_factory.mktemp("data"))


def test_text_data_becomes_lm_blocks_and_csv_becomes_texts(tool):
    from mpokit.loading import load_model

    tiny, files = tool
    llama = load_model(tiny.llama, task="lm")
    data = prepare_calibration(files.lm_train, samples=5, block_size=12)
    batches, info = data.batches(llama.model, llama.tokenizer, batch_size=2)
    assert info["task"] == "lm" and info["samples"] == 5 and info["unit"] == "blocks" and info["block_size"] == 12
    assert sum(b["input_ids"].shape[0] for b in batches) == 5 and all(b["input_ids"].shape[1] == 12 for b in batches)
    bert = load_model(tiny.bert, task=None)
    data = prepare_calibration(files.train, samples=7, max_length=10)
    batches, info = data.batches(bert.model, bert.tokenizer, batch_size=4)
    assert info["task"] == "classify" and info["samples"] == 7 and info["unit"] == "rows"
    assert sum(b["input_ids"].shape[0] for b in batches) == 7 and max(b["input_ids"].shape[1] for b in batches) <= 10
    stats = collect_calibration(bert.model, batches, ["encoder.layer.0.attention.self.query"])
    assert stats.tokens == sum(int(b["attention_mask"].sum()) for b in batches) < sum(b["input_ids"].numel() for b in batches)


def test_wrong_task_and_empty_data_are_refused(tool, tmp_path):
    from _tool_fixtures import write_csv
    from mpokit.loading import load_model
    from mpokit.tasks import ModelMismatchError

    tiny, files = tool
    bert = load_model(tiny.bert, task=None)
    data = prepare_calibration(files.lm_train, samples=4)
    with pytest.raises(ModelMismatchError, match="lm data.*needs a causal language model.*BertModel.*text with a label column"):
        data.batches(bert.model, bert.tokenizer)
    empty = write_csv(tmp_path / "empty.csv", [])
    with pytest.raises(ValueError, match="no rows"):
        prepare_calibration(empty)
    with pytest.raises(ValueError, match="calibration samples must be an int >= 1"):
        prepare_calibration(files.train, samples=0)


# ---------------------------------------------------------------------------
# saved statistics: one calibration for many compressions
# ---------------------------------------------------------------------------


def test_saved_statistics_round_trip_exactly_and_keep_shared_inputs_shared(tmp_path):
    model = tiny_model("llama", dtype=torch.float64)
    names = _targets(model)
    stats = collect_calibration(model, _batches(), names)
    path = tmp_path / "sub" / "stats.safetensors"
    stats.save(path, info={"data": "toy", "samples": 9})
    back = CalibrationStats.load(path)
    assert set(back.names) == set(stats.names) and back.info == {"data": "toy", "samples": 9}
    assert (back.rows, back.shared_with, back.sequences, back.tokens) == (stats.rows, stats.shared_with,
                                                                          stats.sequences, stats.tokens)
    for n in stats.second_moments:
        torch.testing.assert_close(back.second_moments[n], stats.second_moments[n], rtol=0, atol=0)
    for n in stats.row_weights:
        torch.testing.assert_close(back.row_weights[n], stats.row_weights[n], rtol=0, atol=0)
    q, k = "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj"
    assert back.second_moments[k] is back.second_moments[q]  # stored once, shared again
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        assert len(list(f.keys())) == len(set(stats.shared_with.values()))  # one tensor per distinct input
    assert [p.name for p in path.parent.iterdir()] == ["stats.safetensors"]  # no temporary file left


def test_bad_statistics_files_get_clear_errors(tmp_path):
    from safetensors.torch import save_file

    from mpokit.calibration import CalibrationFileError, stats_or_collect

    with pytest.raises(CalibrationFileError, match="does not exist.*--save-calibration"):
        CalibrationStats.load(tmp_path / "nope.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CalibrationFileError, match="not a safetensors file"):
        CalibrationStats.load(tmp_path / "junk.safetensors")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "weights.safetensors"))
    with pytest.raises(CalibrationFileError, match="not mpokit calibration statistics"):
        CalibrationStats.load(tmp_path / "weights.safetensors")
    # statistics of another model: the sizes do not match this one's inputs
    model = tiny_model("llama", dtype=torch.float64)
    names = _targets(model)
    stats = collect_calibration(model, _batches(), names)
    q = "model.layers.0.self_attn.q_proj"
    stats.second_moments[q] = torch.eye(5, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"statistics of model.layers.0.self_attn.q_proj have shape \(5, 5\).*another model"):
        stats_or_collect(model, stats, names)


@pytest.mark.parametrize("n", [7, 300, 513, 1030])
def test_blocked_gram_is_x_transpose_x(n):
    from mpokit.calibration import gram

    X = torch.randn(64, n, dtype=torch.float64, generator=torch.Generator().manual_seed(n))
    G = gram(X)
    torch.testing.assert_close(G, X.T @ X, rtol=1e-13, atol=1e-12)
    if n >= 512:  # blocks off the diagonal are mirrored exactly
        assert torch.equal(G[:256, 256:], G[256:, :256].T)
