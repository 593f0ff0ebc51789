"""Dimension squeezing (MPOP Algorithm 2) on a tiny MLP with MPO layers and a synthetic task."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from mpokit import shapes
from mpokit.layers import MPOModule
from mpokit.layers.linear import MPOLinear
from mpokit.mpo import interleave
from mpokit.squeezing import (
    MatrixSpectrum,
    central_bonds,
    find_mpo_modules,
    min_squeezable_params,
    propose_cut,
    select_cuts,
    squeeze,
    truncate_directly,
)

torch.set_num_threads(1)


def _task(seed=0, n=256, d=16):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    w = torch.randn(d, generator=g, dtype=torch.float64)
    y = (x @ w + 0.5 * x[:, 0] * x[:, 1] > 0).long()
    return x, y


def _batches(x, y, size=32):
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(x), size)]


def _tiny_model(seed=0, n_cores=3):
    """Dense MLP trained briefly, then its two hidden matrices converted to MPOLinear (exact, full bonds)."""
    torch.manual_seed(seed)
    dense = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2)).double()
    x, y = _task(seed)
    opt = torch.optim.Adam(dense.parameters(), lr=1e-2)
    for _ in range(30):
        opt.zero_grad()
        nn.functional.cross_entropy(dense(x), y).backward()
        opt.step()
    dense[0] = MPOLinear.from_linear(dense[0], n_cores=n_cores)
    dense[3] = MPOLinear.from_linear(dense[3], n_cores=n_cores)
    return dense


def _data():
    xtr, ytr = _task(1)
    xev, yev = _task(2, n=128)
    return _batches(xtr, ytr), _batches(xev, yev, 64)


def _unfolding_svals(weight: torch.Tensor, out_modes, in_modes) -> list[torch.Tensor]:
    """Independent reference: singular values of W's unfolding at every bond, by direct SVD."""
    padded = torch.zeros(math.prod(out_modes), math.prod(in_modes), dtype=torch.float64)
    padded[: weight.shape[0], : weight.shape[1]] = weight.double()
    t = interleave(padded, out_modes, in_modes)
    n, out, rows = len(out_modes), [], 1
    for k in range(n - 1):
        rows *= out_modes[k] * in_modes[k]
        out.append(torch.linalg.svdvals(t.reshape(rows, -1)))
    return out


def _expected_choice(modules: dict[str, MPOModule], step_size) -> tuple[str, float]:
    """The matrix whose next central-bond cut adds the least bound, from direct SVDs of the rebuilt W."""
    best = None
    for name, m in modules.items():
        with torch.no_grad():
            w = m.rebuild_weight()
        svals = _unfolding_svals(w, m.out_modes, m.in_modes)
        dims = m.bond_dims
        caps = list(dims)
        for b in central_bonds(m.n_cores):
            caps[b] = max(1, dims[b] - step_size)
        new = shapes.consistent_bond_dims(m.out_modes, m.in_modes, caps)
        bound = math.sqrt(sum(float((s[d:] ** 2).sum()) for s, d in zip(svals, new)))
        if best is None or bound < best[1]:
            best = (name, bound)
    return best


# ---------------------------------------------------------------------------
# pure selection
# ---------------------------------------------------------------------------


def test_central_bonds():
    assert central_bonds(5) == (1, 2)
    assert central_bonds(3) == (0, 1)
    assert central_bonds(2) == (0,)
    assert central_bonds(1) == ()


def test_propose_cut_bound_and_dims_from_singular_values():
    out_modes, in_modes = (2, 2, 2), (2, 2, 2)  # full bonds (4, 4)
    s0 = torch.tensor([4.0, 3.0, 2.0, 1.0], dtype=torch.float64)
    s1 = torch.tensor([5.0, 0.5, 0.25, 0.125], dtype=torch.float64)
    spec = MatrixSpectrum("m", out_modes, in_modes, (4, 4), (s0, s1), norm=10.0)
    cut = propose_cut(spec, step_size=2)
    assert cut.bonds == (0, 1)
    assert cut.new_dims == (2, 2)
    assert cut.bound == pytest.approx(math.sqrt(2**2 + 1**2 + 0.25**2 + 0.125**2))
    assert cut.params_before == shapes.mpo_num_params(out_modes, in_modes, (4, 4))
    assert cut.params_after == shapes.mpo_num_params(out_modes, in_modes, (2, 2))
    # a fraction of each bond, rounded up
    assert propose_cut(spec, step_size=0.3).new_dims == (2, 2)
    # nothing left to cut
    assert propose_cut(MatrixSpectrum("m", out_modes, in_modes, (1, 1), (s0[:1], s1[:1]), 1.0)) is None


def test_select_cuts_orders_by_score():
    om, im = (2, 2, 2), (2, 2, 2)
    small = MatrixSpectrum("a", om, im, (4, 4), (torch.tensor([1.0, 0.5, 0.2, 0.01]),) * 2, 1.0)
    big = MatrixSpectrum("b", om, im, (4, 4), (torch.tensor([9.0, 5.0, 3.0, 0.1]),) * 2, 100.0)
    assert [c.name for c in select_cuts([big, small], count=2)] == ["a", "b"]  # absolute bound: a first
    assert [c.name for c in select_cuts([big, small], count=1, score="relative")] == ["b"]  # 0.14/100 < 0.014/1


# ---------------------------------------------------------------------------
# the algorithm
# ---------------------------------------------------------------------------


def test_squeeze_monotone_least_bound_choice_and_live_optimizer(tmp_path):
    model = _tiny_model()
    train, held = _data()
    modules = find_mpo_modules(model)
    expected = []
    optimizer_checks = []

    def on_step(m, row, optimizer):
        if optimizer is not None:
            live = {id(p) for p in m.parameters() if p.requires_grad}
            owned = {id(p) for g in optimizer.param_groups for p in g["params"]}
            optimizer_checks.append(live == owned)
            # and the central cores are frozen, auxiliaries train
            for layer in modules.values():
                assert not layer.central_parameters()[0].requires_grad
                assert all(p.requires_grad for p in layer.auxiliary_parameters())
                assert {id(p) for p in layer.cores} <= {id(p) for p in m.parameters()}
        expected.append(_expected_choice(modules, 1))

    result = squeeze(
        model, train_batches=train, eval_batches=held, target_ratio=0.5, step_size=1,
        finetune_steps=2, lr=1e-3, seed=0, on_step=on_step, max_steps=500,
    )
    rows = result.rows
    assert result.stop_reason == "budget"
    params = [r["params"] for r in rows]
    assert all(b < a for a, b in zip(params, params[1:])), params
    assert params[-1] <= result.budget < params[-2]
    assert all(optimizer_checks) and len(optimizer_checks) == len(rows) - 1
    for row, (name, bound) in zip(rows[1:], expected[:-1]):
        assert row["matrix"] == name
        assert row["step_bound"] == pytest.approx(bound, rel=1e-6, abs=1e-9), (row, bound)


def test_squeeze_stops_on_delta_and_rolls_back():
    model = _tiny_model()
    train, held = _data()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    start_params = sum(m.num_mpo_params for m in find_mpo_modules(model).values())
    result = squeeze(model, train_batches=train, eval_batches=held, delta=0.0, step_size=2, finetune_steps=1, lr=1e-3)
    assert result.stop_reason == "delta"
    assert result.steps == 1 and not result.rows[-1]["accepted"]
    assert result.params == start_params  # the violating cut was undone
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)

    # a generous delta lets it run to the step limit
    model = _tiny_model()
    result = squeeze(model, train_batches=train, eval_batches=held, delta=10.0, max_steps=3, finetune_steps=1, lr=1e-3)
    assert result.stop_reason == "max_steps" and result.steps == 3
    assert all(r["accepted"] for r in result.rows)


def test_squeeze_budget_with_chunks_and_logs(tmp_path):
    model = _tiny_model()
    train, held = _data()
    modules = find_mpo_modules(model)
    dense = sum(m.dense_params for m in modules.values())
    log = tmp_path / "log_0.35"  # a dot in the name must not be taken for a suffix
    result = squeeze(
        model, train_batches=train, eval_batches=held, target_ratio=0.35, step_size=0.25, matrices_per_step=2,
        finetune_steps=1, lr=1e-3, log_path=log, plot_path=tmp_path / "plot.png",
    )
    assert result.stop_reason == "budget"
    assert result.params <= int(0.35 * dense)
    rows = json.loads((tmp_path / "log_0.35.json").read_text())
    assert len(rows) == len(result.rows)
    csv_lines = (tmp_path / "log_0.35.csv").read_text().strip().splitlines()
    assert len(csv_lines) == len(rows) + 1 and csv_lines[0].startswith("step,matrix")
    assert (tmp_path / "plot.png").stat().st_size > 1000
    # the model still runs and its MPO matrices are what the bonds say
    for m in modules.values():
        assert m.num_mpo_params == shapes.mpo_num_params(m.out_modes, m.in_modes, m.bond_dims)


class _Interrupt(Exception):
    pass


def test_resume_from_checkpoint_equals_uninterrupted(tmp_path):
    train, held = _data()
    kw = dict(train_batches=train, eval_batches=held, target_ratio=0.5, step_size=1, finetune_steps=3, lr=1e-3, seed=7)

    model_a = _tiny_model()
    full = squeeze(model_a, checkpoint_dir=tmp_path / "a", **kw)

    model_b = _tiny_model()
    calls = {"n": 0}

    def flaky_loss(m, batch):
        calls["n"] += 1
        if calls["n"] == 3 * 4 + 2:  # in the middle of the 5th step's fine-tuning
            raise _Interrupt()
        x, y = batch
        return nn.functional.cross_entropy(m(x), y)

    with pytest.raises(_Interrupt):
        squeeze(model_b, checkpoint_dir=tmp_path / "b", loss_fn=flaky_loss, **kw)
    from mpokit.training import read_training_state

    state = read_training_state(tmp_path / "b")
    assert state["step"] == 4
    model_c = _tiny_model(seed=123)  # different weights: everything must come from the checkpoint
    resumed = squeeze(model_c, checkpoint_dir=tmp_path / "b", **kw)
    assert resumed.resumed_from_step == 4
    assert resumed.steps == full.steps and resumed.stop_reason == full.stop_reason
    sa, sc = model_a.state_dict(), model_c.state_dict()
    assert sa.keys() == sc.keys()
    for k in sa:
        assert torch.equal(sa[k], sc[k]), k
    assert [r["matrix"] for r in resumed.rows] == [r["matrix"] for r in full.rows]
    assert [r["loss"] for r in resumed.rows] == [r["loss"] for r in full.rows]

    # a finished run resumes as finished; other settings are refused
    again = squeeze(_tiny_model(), checkpoint_dir=tmp_path / "a", **kw)
    assert again.steps == full.steps
    with pytest.raises(ValueError, match="other settings"):
        squeeze(_tiny_model(), checkpoint_dir=tmp_path / "a", **{**kw, "seed": 8})


def test_truncate_directly_meets_budget_in_one_call():
    model = _tiny_model()
    modules = find_mpo_modules(model)
    dense = sum(m.dense_params for m in modules.values())
    weights = {n: m.rebuild_weight().detach().clone() for n, m in modules.items()}
    result = truncate_directly(model, target_ratio=0.4)
    assert result.params <= int(0.4 * dense) == result.budget
    for name, m in modules.items():
        err = float(torch.linalg.norm(m.rebuild_weight().detach() - weights[name]))
        assert err <= result.bounds[name] * (1 + 1e-6) + 1e-9, (name, err, result.bounds[name])


def test_bad_input_errors():
    model = _tiny_model()
    train, held = _data()
    modules = find_mpo_modules(model)
    current = sum(m.num_mpo_params for m in modules.values())
    kw = dict(train_batches=train, eval_batches=held)
    with pytest.raises(ValueError, match="above the current size"):
        squeeze(model, target_params=current + 1, **kw)
    with pytest.raises(ValueError, match="below the minimum"):
        squeeze(model, target_params=min_squeezable_params(modules) - 1, **kw)
    with pytest.raises(ValueError, match="delta must be"):
        squeeze(model, delta=-0.1, **kw)
    with pytest.raises(ValueError, match="unknown target"):
        squeeze(model, targets=["no.such.layer"], target_ratio=0.5, **kw)
    with pytest.raises(ValueError, match="one budget"):
        squeeze(model, target_params=10, target_ratio=0.5, **kw)
    with pytest.raises(ValueError, match="step_size"):
        squeeze(model, step_size=0, target_ratio=0.5, **kw)
    with pytest.raises(ValueError, match="score"):
        squeeze(model, score="entropy", target_ratio=0.5, **kw)
    with pytest.raises(ValueError, match="target_ratio"):
        truncate_directly(model, target_ratio=-1.0)
    with pytest.raises(ValueError, match="no MPO layers"):
        squeeze(nn.Linear(3, 2), target_ratio=0.5, **kw)


# ---------------------------------------------------------------------------
# every method to one budget on a tiny random BERT (what `mpokit squeeze` runs)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["squeeze", "direct", "prune", "lowrank"])
def test_compress_to_budget_on_tiny_bert(method):
    transformers = pytest.importorskip("transformers")
    from mpokit.squeezing import compress_to_budget

    cfg = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=16, num_labels=2)
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(cfg).eval()
    g = torch.Generator().manual_seed(0)
    batches = [{"input_ids": torch.randint(0, 50, (4, 8), generator=g), "attention_mask": torch.ones(4, 8, dtype=torch.long),
                "labels": torch.randint(0, 2, (4,), generator=g)} for _ in range(3)]
    info = compress_to_budget(model, method, target_ratio=0.5, train_batches=batches, eval_batches=batches[:1],
                              finetune_steps=1, lr=1e-3,
                              **({"step_size": 0.5, "matrices_per_step": 6} if method == "squeeze" else {}))
    assert info["dense_params"] == 2 * (4 * 32 * 32 + 2 * 32 * 64)  # Q, K, V, O, FFN in/out of 2 layers
    assert info["params"] <= 0.5 * info["dense_params"] and info["ratio"] <= 0.5
    assert 0.0 <= info["eval_accuracy"] <= 1.0 and math.isfinite(info["eval_loss"])
    if method in ("squeeze", "direct"):
        layers = find_mpo_modules(model)
        assert len(layers) == 12
        assert all(not l.central_parameters()[0].requires_grad for l in layers.values())
    assert not model.bert.embeddings.word_embeddings.weight.requires_grad


# ---------------------------------------------------------------------------
# evaluation per task, the monitored metric, identity, the log's metric columns
# ---------------------------------------------------------------------------


def test_evaluate_tuple_batches_against_hand_computation():
    from mpokit.squeezing import evaluate

    model = _tiny_model()
    _, held = _data()
    got = evaluate(model, held)
    x = torch.cat([b[0] for b in held])
    y = torch.cat([b[1] for b in held])
    model.eval()
    with torch.no_grad():
        logits = model(x)
    assert got["n"] == len(y)
    assert got["loss"] == pytest.approx(float(nn.functional.cross_entropy(logits, y)), rel=1e-12)
    assert got["accuracy"] == float((logits.argmax(-1) == y).double().mean())
    with pytest.raises(ValueError, match=r"\(x, y\) tuple batches are classification batches; task 'regress'"):
        evaluate(model, held, "regress")
    with pytest.raises(ValueError, match="eval_batches is empty"):
        evaluate(model, [])


@pytest.mark.parametrize("task", ["classify", "regress", "lm"])
def test_evaluate_dict_batches_is_the_tasks_evaluate(task):
    transformers = pytest.importorskip("transformers")
    from _plm_models import tiny_model

    from mpokit.squeezing import evaluate
    from mpokit.tasks import get_task

    g = torch.Generator().manual_seed(0)
    if task == "lm":
        model = tiny_model("llama")
        batches = [{"input_ids": (ids := torch.randint(1, 97, (3, 7), generator=g)),
                    "attention_mask": torch.ones(3, 7, dtype=torch.long), "labels": ids.clone()} for _ in range(2)]
    else:
        cfg = _plm_models_config(num_labels=1 if task == "regress" else 3)
        torch.manual_seed(0)
        model = transformers.BertForSequenceClassification(cfg).eval()
        labels = (lambda: torch.randn(4, generator=g)) if task == "regress" else (lambda: torch.randint(0, 3, (4,), generator=g))
        batches = [{"input_ids": torch.randint(1, 97, (4, 6), generator=g), "attention_mask": torch.ones(4, 6, dtype=torch.long),
                    "labels": labels()} for _ in range(2)]
    got = evaluate(model, batches, task)
    assert got == get_task(task).evaluate(model, batches)
    # the task loss is the model's own loss, averaged per example (per token for lm)
    with torch.no_grad():
        outs = [model(**b) for b in batches]
    if task == "lm":
        counts = [int((b["labels"][:, 1:] != -100).sum()) for b in batches]
        expected = sum(float(o.loss) * c for o, c in zip(outs, counts)) / sum(counts)
    else:
        expected = sum(float(o.loss) * 4 for o in outs) / 8
    assert got["loss"] == pytest.approx(expected, rel=1e-5)


def _plm_models_config(num_labels):
    import transformers

    return transformers.BertConfig(vocab_size=97, hidden_size=24, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=36, max_position_embeddings=16, num_labels=num_labels,
                                   hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                                   problem_type="regression" if num_labels == 1 else None)


def test_squeeze_monitors_the_metric_it_is_told_and_logs_every_metric(tmp_path):
    train, held = _data()
    result = squeeze(_tiny_model(), train_batches=train, eval_batches=held, monitor="accuracy", delta=1.0,
                     max_steps=2, finetune_steps=1, lr=1e-3, log_path=tmp_path / "log")
    assert all(r["monitored"] == r["metrics"]["accuracy"] for r in result.rows)
    assert set(result.final) == {"loss", "accuracy", "n"} and result.final == result.rows[-1]["metrics"]
    header = (tmp_path / "log.csv").read_text().splitlines()[0].split(",")
    from mpokit.squeezing.log import LOG_FIELDS

    assert header == [*LOG_FIELDS, "accuracy", "n"]
    with pytest.raises(ValueError, match=r"monitor='f1' is not a metric of the evaluation \(it gives \['accuracy', 'loss', 'n'\]\)"):
        squeeze(_tiny_model(), train_batches=train, eval_batches=held, monitor="f1", max_steps=1)
    with pytest.raises(ValueError, match="monitored metric 'loss' is nan"):
        squeeze(_tiny_model(), train_batches=train, eval_fn=lambda m: {"loss": float("nan")}, max_steps=1)


def test_a_checkpoint_of_another_identity_is_refused(tmp_path):
    from mpokit.squeezing.checkpoint import check_identity

    train, held = _data()
    source = {"source": {"path": "/models/a", "sha256": "aa" * 32}, "data": "train.csv"}
    kw = dict(train_batches=train, eval_batches=held, max_steps=1, finetune_steps=1, lr=1e-3, checkpoint_dir=tmp_path)
    squeeze(_tiny_model(), identity=source, **kw)
    assert check_identity(tmp_path, source) is True and check_identity(tmp_path / "none", source) is False
    other = {"source": {"path": "/models/b", "sha256": "bb" * 32}, "data": "train.csv"}
    message = (r"made from another source model \(/models/a, SHA-256 a{64}\) than the one given \(/models/b, "
               r"SHA-256 b{64}\)")
    with pytest.raises(ValueError, match=message):
        check_identity(tmp_path, other)
    with pytest.raises(ValueError, match="source.path: '/models/a' -> '/models/b'"):
        squeeze(_tiny_model(), identity=other, **kw)
    with pytest.raises(ValueError, match=r"of another run.*data: 'train.csv' -> 'other.csv'"):
        check_identity(tmp_path, {**source, "data": "other.csv"})


def test_source_identity_hashes_the_weight_files(tmp_path):
    import hashlib

    transformers = pytest.importorskip("transformers")
    from mpokit.squeezing import source_identity

    torch.manual_seed(0)
    model = transformers.BertModel(_plm_models_config(2))
    model.save_pretrained(str(tmp_path / "one"))
    digest = hashlib.sha256((tmp_path / "one" / "model.safetensors").read_bytes()).hexdigest()
    one = source_identity(tmp_path / "one")
    assert one == {"path": str((tmp_path / "one").resolve()), "kind": "transformers", "sha256": digest,
                   "files": {"model.safetensors": digest}}
    model.save_pretrained(str(tmp_path / "shards"), max_shard_size="20KB")
    names = sorted(p.name for p in (tmp_path / "shards").glob("model*.safetensors*"))
    assert len(names) > 2 and "model.safetensors.index.json" in names
    files = {n: hashlib.sha256((tmp_path / "shards" / n).read_bytes()).hexdigest() for n in names}
    listing = "".join(f"{files[n]}  {n}\n" for n in sorted(files))  # what `sha256sum` lists for these files
    sharded = source_identity(tmp_path / "shards")
    assert sharded["files"] == files and sharded["sha256"] == hashlib.sha256(listing.encode()).hexdigest()
