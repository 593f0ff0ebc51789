"""`mpokit squeeze` end to end on tiny random models and data files written into tmp_path: every method for
classify, a regress CSV and an lm text file (GPT-2 with a word-level tokenizer), the report (task metrics,
source hash), models that are not fine-tuned again, mpokit checkpoints, resume / refusal, and the option
checks that come before anything is loaded."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import random

import pytest
import torch

pytestmark = pytest.mark.filterwarnings("ignore")
torch.set_num_threads(1)

WORDS = "good bad fine dull great awful fun boring film plot".split()
LM_WORDS = "the a film fine dull long great fun rain dog man eats car".split()


def _write_csv(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return str(path)


def _review(rng):
    text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 7)))
    return text, "pos" if sum(text.count(w) for w in ("good", "great", "fun")) >= 2 else "neg"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Tiny models (a BERT base model, a BERT classifier with a head, its exact MPO as an mpokit checkpoint, a
    second BERT base, a GPT-2 LM with a word-level tokenizer) and data files (classify, regress, lm)."""
    import transformers as T
    from tokenizers import Tokenizer, models, pre_tokenizers

    import mpokit
    from mpokit.recipes.models import default_model_path
    from mpokit.squeezing import encoder_mpo_config

    root = tmp_path_factory.mktemp("squeeze_cli")
    minilm_tok = T.AutoTokenizer.from_pretrained(str(default_model_path()))
    cfg = dict(vocab_size=30522, hidden_size=24, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48,
               max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    out = {}
    for name, seed in (("bert", 0), ("bert_other", 1)):
        torch.manual_seed(seed)
        T.BertModel(T.BertConfig(**cfg)).save_pretrained(str(root / name))
        minilm_tok.save_pretrained(str(root / name))
        out[name] = str(root / name)
    torch.manual_seed(2)
    classifier = T.BertForSequenceClassification(T.BertConfig(**cfg, num_labels=2, id2label={0: "neg", 1: "pos"},
                                                              label2id={"neg": 0, "pos": 1}))
    classifier.save_pretrained(str(root / "classifier"))
    minilm_tok.save_pretrained(str(root / "classifier"))
    out["classifier"] = str(root / "classifier")
    mpokit.save_pretrained(classifier, root / "classifier_dense_mpokit", tokenizer=minilm_tok)  # no MPO layers
    out["classifier_dense_mpokit"] = str(root / "classifier_dense_mpokit")
    mpokit.compress(classifier, encoder_mpo_config())  # exact (full bonds): the same function as the folder above
    mpokit.save_pretrained(classifier, root / "classifier_mpo", tokenizer=minilm_tok)
    out["classifier_mpo"] = str(root / "classifier_mpo")

    vocab = {"<pad>": 0, "<unk>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate(LM_WORDS)}}
    inner = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    inner.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    word_tok = T.PreTrainedTokenizerFast(tokenizer_object=inner, pad_token="<pad>", unk_token="<unk>", eos_token="</s>")
    torch.manual_seed(3)
    T.GPT2LMHeadModel(T.GPT2Config(vocab_size=len(vocab), n_embd=16, n_layer=2, n_head=2, n_positions=32,
                                   bos_token_id=2, eos_token_id=2, pad_token_id=0)).save_pretrained(str(root / "gpt2"))
    word_tok.save_pretrained(str(root / "gpt2"))
    out["gpt2"] = str(root / "gpt2")

    rng = random.Random(0)
    for split, n in (("train", 48), ("validation", 16), ("test", 20)):
        out[f"cls_{split}"] = _write_csv(root / f"cls_{split}.csv", [_review(rng) for _ in range(n)])
        rows = []
        for _ in range(n):
            text = " ".join(rng.choice(WORDS) for _ in range(4))
            rows.append((text, 0.5 + text.count("good") - 0.25 * text.count("bad")))
        out[f"reg_{split}"] = _write_csv(root / f"reg_{split}.csv", rows)
        lines = [" ".join(rng.choice(LM_WORDS) for _ in range(rng.randint(4, 9))) for _ in range(n)]
        (root / f"lm_{split}.txt").write_text("\n".join(lines) + "\n")
        out[f"lm_{split}"] = str(root / f"lm_{split}.txt")
    return out


SMALL = ["--batch-size", "16", "--eval-batch-size", "16", "--max-length", "12", "--finetune-steps", "1",
         "--lr", "1e-3", "--threads", "1", "--no-progress"]
SQUEEZE_FAST = ["--step-size", "0.5", "--matrices-per-step", "6"]


def _classify_data(files, test=True):
    extra = ["--test-data", files["cls_test"]] if test else []
    return ["--data", files["cls_train"], "--validation-data", files["cls_validation"], *extra]


def _squeeze(capsys, *argv):
    from mpokit.cli import main

    code = main(["squeeze", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _report(out):
    return json.loads((out / "report.json").read_text())


def _sha256(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _reference_pipeline(files, model_key, method, budget, *, dense_steps, finetune_steps=1, options=None):
    """What the command should compute, from the library's public pieces: (before, after, info) on the test split."""
    from mpokit.inputs import DataSpec, build_loaders, read_data
    from mpokit.loading import load_model
    from mpokit.squeezing import compress_to_budget, finetune
    from mpokit.training import set_seed

    spec = DataSpec(data=files["cls_train"], validation_data=files["cls_validation"], test_data=files["cls_test"],
                    max_length=12, train_size=2400, validation_size=256)
    data, task = read_data(spec)
    loaded = load_model(files[model_key], task="classify", seed=0, **task.model_kwargs(data))
    loaders = build_loaders(task, data, loaded.tokenizer, spec, batch_size=16, eval_batch_size=16, shuffle_seed=0)
    train, val, test = list(loaders.train), list(loaders.validation), list(loaders.test)
    model = loaded.model
    set_seed(0)
    for p in model.parameters():
        p.requires_grad_(True)
    finetune(model, train, dense_steps, lr=1e-3)
    before = task.evaluate(model, test)
    info = compress_to_budget(model, method, target_ratio=budget, train_batches=train, eval_batches=val,
                              finetune_steps=finetune_steps, lr=1e-3, seed=0, task=task, **(options or {}))
    return before, task.evaluate(model, test), info


# ---------------------------------------------------------------------------
# classify: every method, the report, and the library's pipeline as reference
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["squeeze", "direct", "prune", "lowrank"])
def test_classify_every_method_reaches_the_budget_and_reports(method, files, tmp_path, capsys):
    out = tmp_path / method
    extra = SQUEEZE_FAST if method == "squeeze" else []
    code, printed, err = _squeeze(capsys, "--model", files["bert"], "--method", method, "--budget", "0.6",
                                  "--dense-steps", "2", "--out", str(out), *_classify_data(files), *SMALL, *extra)
    assert code == 0, err
    report = _report(out)
    assert report["method"] == method and report["ratio"] <= 0.6
    assert report["dense_params"] == 2 * (4 * 24 * 24 + 2 * 24 * 48)  # Q, K, V, O, FFN in/out of 2 layers
    assert report["task"] == "classify" and report["primary_metric"] == ["accuracy", "max"]
    assert report["report_split"] == "test" and report["sizes"] == {"train": 48, "validation": 16, "test": 20}
    for when in ("before", "after"):
        assert set(report[when]) == {"loss", "accuracy", "macro_f1", "n"} and report[when]["n"] == 20
    assert {"eval_loss", "eval_accuracy", "eval_macro_f1"} <= set(report)  # validation metrics after compressing
    assert report["source"]["kind"] == "transformers" and report["loaded"]["mpo"] is False
    assert report["source"]["sha256"] == _sha256(f"{files['bert']}/model.safetensors")
    assert report["dense_finetune"]["steps"] == 2 and "a new classify head" in report["head"]
    assert f"test accuracy {report['before']['accuracy']:.4f} -> {report['after']['accuracy']:.4f}" in printed
    if method == "squeeze":  # the step log (CSV + JSON, one column per metric), its plot and the checkpoint
        assert report["monitor"] == "loss"
        rows = json.loads((out / "squeeze_log.json").read_text())
        params = [r["params"] for r in rows]
        assert params == sorted(params, reverse=True) and params[-1] == report["params"]
        assert all(r["monitored"] == r["loss"] == r["metrics"]["loss"] for r in rows)
        from mpokit.squeezing.log import LOG_FIELDS

        header = (out / "squeeze_log.csv").read_text().splitlines()[0].split(",")
        assert header == [*LOG_FIELDS, "accuracy", "macro_f1", "n"]
        assert (out / "squeeze_log.png").stat().st_size > 0 and (out / "checkpoint").is_dir()
    else:
        assert report["monitor"] is None


@pytest.mark.parametrize("method", ["squeeze", "prune"])
def test_classify_report_equals_the_library_pipeline(method, files, tmp_path, capsys):
    out = tmp_path / "o"
    extra = SQUEEZE_FAST if method == "squeeze" else []
    code, _, err = _squeeze(capsys, "--model", files["bert"], "--method", method, "--budget", "0.5",
                            "--dense-steps", "3", "--out", str(out), *_classify_data(files), *SMALL, *extra)
    assert code == 0, err
    options = dict(step_size=0.5, matrices_per_step=6, score="per_param") if method == "squeeze" else {}
    before, after, info = _reference_pipeline(files, "bert", method, 0.5, dense_steps=3, options=options)
    report = _report(out)
    assert report["before"] == before and report["after"] == after
    assert report["params"] == info["params"] and report["eval_loss"] == info["eval_loss"]


# ---------------------------------------------------------------------------
# models with a head, mpokit checkpoints
# ---------------------------------------------------------------------------


def test_a_model_with_its_head_is_not_finetuned_again(files, tmp_path, capsys, monkeypatch):
    import mpokit.squeezing.training as training

    calls = []  # the steps of every squeezing.finetune call (dense fine-tuning, fine-tuning after pruning)
    real = training.run_steps
    monkeypatch.setattr(training, "run_steps", lambda *a: calls.append(a[4]) or real(*a))
    out = tmp_path / "o"
    code, _, err = _squeeze(capsys, "--model", files["classifier"], "--method", "prune", "--budget", "0.5",
                            "--out", str(out), *_classify_data(files), *SMALL)
    assert code == 0, err
    report = _report(out)
    assert report["dense_finetune"] is None and "BertForSequenceClassification" in report["head"]
    assert calls == [1]  # only the --finetune-steps after pruning

    # reference: "before" is the saved classifier itself on the test file
    from mpokit.inputs import DataSpec, build_loaders, read_data
    from mpokit.loading import load_model

    spec = DataSpec(data=files["cls_train"], validation_data=files["cls_validation"], test_data=files["cls_test"],
                    max_length=12)
    data, task = read_data(spec)
    loaded = load_model(files["classifier"], task="classify")
    loaders = build_loaders(task, data, loaded.tokenizer, spec, batch_size=16, eval_batch_size=16)
    assert report["before"] == task.evaluate(loaded.model, loaders.test)

    code, _, err = _squeeze(capsys, "--model", files["classifier"], "--budget", "0.5", "--dense-steps", "5",
                            "--out", str(tmp_path / "x"), *_classify_data(files), *SMALL)
    assert code == 2 and "is not fine-tuned again; drop --dense-steps" in err


def test_an_mpokit_checkpoint_loads_as_its_mpo_model(files, tmp_path, capsys, monkeypatch):
    """Squeezing the exact MPO checkpoint of a classifier gives what squeezing the classifier itself gives."""
    runs = {}
    for key in ("classifier", "classifier_mpo"):
        out = tmp_path / key
        code, _, err = _squeeze(capsys, "--model", files[key], "--budget", "0.5", "--out", str(out),
                                *_classify_data(files), *SMALL, *SQUEEZE_FAST)
        assert code == 0, err
        runs[key] = _report(out)
    dense, mpo = runs["classifier"], runs["classifier_mpo"]
    assert mpo["source"]["kind"] == "mpokit" and mpo["loaded"]["mpo"] is True and mpo["dense_finetune"] is None
    (weights,) = mpo["source"]["files"]  # the one weights file the checkpoint's mpo_config.json names
    assert weights.endswith(".safetensors") and mpo["source"]["sha256"] == _sha256(f"{files['classifier_mpo']}/{weights}")
    assert mpo["bond_dims"] == dense["bond_dims"] and mpo["params"] == dense["params"]
    for when in ("before", "after"):
        assert mpo[when]["loss"] == pytest.approx(dense[when]["loss"], abs=1e-5)
        assert mpo[when]["accuracy"] == dense[when]["accuracy"]

    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("an mpokit checkpoint must not be loaded through transformers' AutoModel classes")

    for auto in (transformers.AutoModel, transformers.AutoModelForSequenceClassification):
        monkeypatch.setattr(auto, "from_pretrained", refuse)
    code, _, err = _squeeze(capsys, "--model", files["classifier_mpo"], "--method", "direct", "--budget", "0.5",
                            "--out", str(tmp_path / "direct"), *_classify_data(files), *SMALL)
    assert code == 0, err
    code, _, err = _squeeze(capsys, "--model", files["classifier_mpo"], "--method", "prune", "--budget", "0.5",
                            "--out", str(tmp_path / "prune"), *_classify_data(files), *SMALL)
    assert code == 2 and "starts from a dense model" in err and "mpokit checkpoint with MPO layers" in err


def test_a_dense_mpokit_checkpoint_is_pruned_like_its_transformers_folder(files, tmp_path, capsys):
    """mpokit.save_pretrained writes dense models too (e.g. the best/ of `mpokit finetune --method full`)."""
    runs = {}
    for key in ("classifier", "classifier_dense_mpokit"):
        code, _, err = _squeeze(capsys, "--model", files[key], "--method", "prune", "--budget", "0.5",
                                "--out", str(tmp_path / key), *_classify_data(files), *SMALL)
        assert code == 0, err
        runs[key] = _report(tmp_path / key)
    dense, saved = runs["classifier"], runs["classifier_dense_mpokit"]
    assert saved["source"]["kind"] == "mpokit" and saved["loaded"]["mpo"] is False and saved["dense_finetune"] is None
    assert saved["before"] == dense["before"] and saved["after"] == dense["after"]
    assert saved["params"] == dense["params"]


# ---------------------------------------------------------------------------
# regress and lm
# ---------------------------------------------------------------------------


def test_regress_csv(files, tmp_path, capsys):
    out = tmp_path / "o"
    code, printed, err = _squeeze(capsys, "--model", files["bert"], "--data", files["reg_train"], "--validation-data",
                                  files["reg_validation"], "--budget", "0.6", "--dense-steps", "2", "--monitor",
                                  "primary", "--delta", "1000", "--out", str(out), *SMALL, *SQUEEZE_FAST)
    assert code == 0, err
    report = _report(out)
    assert report["task"] == "regress" and report["primary_metric"] == ["mse", "min"] and report["monitor"] == "mse"
    assert report["report_split"] == "validation" and "no test split" in printed  # no test file: validation
    for when in ("before", "after"):
        assert set(report[when]) == {"loss", "mse", "pearson", "spearman", "n"}
        assert report[when]["loss"] == report[when]["mse"] and report[when]["n"] == 16
    rows = json.loads((out / "squeeze_log.json").read_text())
    assert all(r["monitored"] == r["metrics"]["mse"] for r in rows) and report["stop_reason"] == "budget"
    assert report["ratio"] <= 0.6 and "a new regress head" in report["head"]


@pytest.mark.parametrize("method", ["squeeze", "direct", "prune", "lowrank"])
def test_lm_text_file_on_gpt2(method, files, tmp_path, capsys):
    """GPT-2's Conv1D matrices, every method; perplexity before and after, on blocks of tokens."""
    out = tmp_path / method
    extra = ["--step-size", "0.5", "--matrices-per-step", "4"] if method == "squeeze" else []
    code, printed, err = _squeeze(capsys, "--model", files["gpt2"], "--data", files["lm_train"], "--validation-data",
                                  files["lm_validation"], "--test-data", files["lm_test"], "--method", method,
                                  "--budget", "0.6", "--out", str(out), *SMALL, "--max-length", "8", *extra)
    assert code == 0, err
    report = _report(out)
    assert report["task"] == "lm" and report["primary_metric"] == ["perplexity", "min"]
    assert report["size_unit"] == "blocks" and report["dense_finetune"] is None  # a causal LM has its head
    assert report["dense_params"] == 2 * (16 * 48 + 16 * 16 + 16 * 64 + 64 * 16)  # c_attn, c_proj, c_fc, mlp.c_proj
    assert report["ratio"] <= 0.6
    for when in ("before", "after"):
        assert set(report[when]) == {"loss", "perplexity", "tokens", "n"}
        assert report[when]["perplexity"] == pytest.approx(math.exp(report[when]["loss"]))
    assert report["source"]["sha256"] == _sha256(f"{files['gpt2']}/model.safetensors")
    assert "test perplexity" in printed


# ---------------------------------------------------------------------------
# resume and its refusals
# ---------------------------------------------------------------------------


def test_resume_and_the_refusal_of_another_model_or_settings(files, tmp_path, capsys, monkeypatch):
    out = tmp_path / "o"
    args = ["--budget", "0.5", "--dense-steps", "2", "--out", str(out), *_classify_data(files), *SMALL, *SQUEEZE_FAST]
    code, _, err = _squeeze(capsys, "--model", files["bert"], *args)
    assert code == 0, err
    first = _report(out)

    # the same run again resumes the finished checkpoint: no dense fine-tuning, the same result
    import mpokit.squeezing.training as training

    real = training.run_steps  # squeezing.finetune's steps; 2 would be the dense fine-tuning
    monkeypatch.setattr(training, "run_steps", lambda *a: pytest.fail("fine-tuned the dense model") if a[4] == 2 else real(*a))
    code, printed, err = _squeeze(capsys, "--model", files["bert"], *args)
    assert code == 0, err
    assert "resuming the squeeze" in printed
    again = _report(out)
    assert again["resumed_from_step"] == first["steps"] and again["after"] == first["after"]
    assert again["before"] == first["before"] and again["dense_finetune"] == first["dense_finetune"]

    # another source model, or other settings: refused before anything is loaded
    import mpokit.loading

    monkeypatch.setattr(mpokit.loading, "load_model", lambda *a, **k: pytest.fail("loaded a model"))
    code, _, err = _squeeze(capsys, "--model", files["bert_other"], *args)
    assert code == 2 and "made from another source model" in err
    for key in ("bert", "bert_other"):  # both named: path and SHA-256
        assert files[key] in err and _sha256(f"{files[key]}/model.safetensors") in err
    code, _, err = _squeeze(capsys, "--model", files["bert"], *args, "--lr", "2e-3")
    assert code == 2 and "settings.lr: 0.001 -> 0.002" in err and "cannot be resumed" in err
    assert _report(out) == again  # nothing was overwritten


# ---------------------------------------------------------------------------
# option checks: each one before any data or model is read
# ---------------------------------------------------------------------------


BAD_OPTIONS = [
    (["--budget", "1.5"], "--budget must be a fraction of the dense parameters in (0, 1], got 1.5; e.g. --budget 0.5"),
    (["--budget", "0"], "--budget must be a fraction"),
    (["--budget", "nan"], "--budget must be a fraction"),
    (["--finetune-steps", "-1"], "--finetune-steps must be an int >= 0, got -1"),
    (["--dense-steps", "-2"], "--dense-steps must be an int >= 0, got -2"),
    (["--step-size", "0"], "--step-size must be > 0"),
    (["--step-size", "-0.5"], "--step-size must be > 0"),
    (["--step-size", "1.5"], "a whole number of bonds >= 1 or a fraction in (0, 1), got 1.5"),
    (["--delta", "-0.1"], "--delta must be a finite number >= 0 (the allowed |p - p~|), got -0.1"),
    (["--lr", "0"], "--lr must be a finite number > 0, got 0.0; e.g. --lr 5e-5"),
    (["--lr", "inf"], "--lr must be a finite number > 0, got inf"),
    (["--lr=-1e-3"], "--lr must be a finite number > 0"),
    (["--mpo-lr", "nan"], "--mpo-lr must be a finite number > 0, got nan"),
    (["--matrices-per-step", "0"], "--matrices-per-step must be an int >= 1, got 0"),
    (["--batch-size", "0"], "--batch-size must be an int >= 1, got 0"),
    (["--method", "prune", "--delta", "0.1"], "--delta applies to --method squeeze only"),
    (["--method", "lowrank", "--step-size", "2"], "--step-size applies to --method squeeze only"),
    (["--method", "prune", "--mpo-lr", "1e-4"], "--mpo-lr applies to the MPO methods"),
    (["--device", "tpu0"], "unknown device 'tpu0'"),
]


@pytest.fixture
def nothing_loaded(monkeypatch):
    """Reading data or loading a model fails the test: the checks must come first."""
    import mpokit.inputs
    import mpokit.loading

    monkeypatch.setattr(mpokit.loading, "load_model", lambda *a, **k: pytest.fail("loaded a model"))
    monkeypatch.setattr(mpokit.inputs, "read_data", lambda *a, **k: pytest.fail("read the data"))


@pytest.mark.parametrize("bad, message", BAD_OPTIONS, ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_bad_options_are_refused_before_loading(bad, message, tmp_path, capsys, nothing_loaded):
    argv = ["--budget", "0.5", "--out", str(tmp_path / "o"), *bad]
    code, _, err = _squeeze(capsys, *argv)
    assert code == 2 and message in err, err
    assert not (tmp_path / "o").exists()


def test_out_that_is_a_file_is_refused_before_loading(tmp_path, capsys, nothing_loaded):
    (tmp_path / "taken").write_text("a file")
    code, _, err = _squeeze(capsys, "--budget", "0.5", "--out", str(tmp_path / "taken"))
    assert code == 2 and "--out" in err and "is a file, not a folder" in err
    code, _, err = _squeeze(capsys, "--budget", "0.5", "--out", str(tmp_path / "taken" / "below"))
    assert code == 2 and "lies under the file" in err


def test_data_and_source_errors_come_before_loading(files, tmp_path, capsys, monkeypatch):
    import mpokit.loading

    monkeypatch.setattr(mpokit.loading, "load_model", lambda *a, **k: pytest.fail("loaded a model"))
    code, _, err = _squeeze(capsys, "--model", files["bert"], "--data", files["cls_train"], "--budget", "0.5",
                            "--out", str(tmp_path / "o"))
    assert code == 2 and "needs a validation split" in err
    code, _, err = _squeeze(capsys, "--model", str(tmp_path / "missing"), "--budget", "0.5", "--out", str(tmp_path / "o"),
                            *_classify_data(files))
    assert code == 2 and "does not exist" in err and str(tmp_path / "missing") in err
    code, _, err = _squeeze(capsys, "--model", files["classifier"], "--data", files["reg_train"], "--validation-data",
                            files["reg_validation"], "--budget", "0.5", "--out", str(tmp_path / "o"))
    assert code == 2 and "not a regression head" in err
