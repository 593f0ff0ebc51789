"""The command-line tool on a user's own files: `mpokit compress` -> `mpokit finetune` -> `mpokit evaluate`.

Everything goes through ``mpokit.cli.main([...])`` and is judged by what a user sees: the return code,
the message on stderr, and the files in ``--out``. Tiny random models (BERT / Llama, hidden 24) with the
real MiniLM tokenizer; tiny runs (16 examples, 2 steps, max_length 16, one thread).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import datasets  # noqa: F401 - imported here, not inside a capsys capture: its log handler keeps the real stderr
import pytest
import torch

import mpokit.loading
from _tool_fixtures import (CLASSES, labelled_rows, make_data, make_models, sentence, write_csv, write_jsonl,
                            write_lines)
from mpokit.cli import COMMANDS, build_parser, main

pytestmark = pytest.mark.filterwarnings("ignore")

RUN = ["--threads", "1", "--no-progress"]
SMALL = ["--train-size", "16", "--batch-size", "8", "--max-length", "16", "--max-steps-per-epoch", "2", *RUN]
EVAL = ["--max-length", "16", "--batch-size", "8", *RUN]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("data"))


def cli(capsys, *args) -> tuple[int, str, str]:
    """``(return code, stdout, stderr)`` of ``mpokit ARGS``; argparse errors come back as their exit code."""
    capsys.readouterr()
    try:
        rc = main([str(a) for a in args])
    except SystemExit as exc:
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


def ok(capsys, *args) -> str:
    rc, out, err = cli(capsys, *args)
    assert rc == 0, f"mpokit {' '.join(map(str, args))} failed ({rc}):\n{err[-3000:]}"
    return out


def read_json(path) -> dict:
    return json.loads(Path(path).read_text())


def logits(model, tokenizer, texts):
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**batch).logits


TEXTS = ["a fine film with a dull plot", "awful", "great music and a good cast, but the ending"]


# ---------------------------------------------------------------------------
# 1. the three-command flow
# ---------------------------------------------------------------------------


def test_classify_flow_compress_finetune_evaluate(tiny, files, tmp_path, capsys):
    from mpokit.io import from_pretrained
    from mpokit.loading import load_model
    from mpokit.surgery import count_parameters, mpo_modules

    C, F = tmp_path / "C", tmp_path / "F"
    out = ok(capsys, "compress", "--model", tiny.bert, "--data", files.train, "--out", C, *RUN)
    assert "compressed" in out and (C / "compression_report.json").is_file() and (C / "compression_report.md").is_file()
    assert read_json(C / "compression_report.json")["task"] == "classify"
    names = sorted(CLASSES)  # string labels: sorted distinct strings -> ids
    config = read_json(C / "config.json")
    assert config["id2label"] == {str(i): n for i, n in enumerate(names)}
    assert config["label2id"] == {n: i for i, n in enumerate(names)}

    # full bonds: the checkpoint computes what the dense model with the same seeded head computes
    compressed = from_pretrained(C).eval()
    assert mpo_modules(compressed)
    dense = load_model(tiny.bert, task="classify", seed=0, id2label=dict(enumerate(names))).model
    torch.testing.assert_close(logits(compressed, tiny.tokenizer, TEXTS), logits(dense, tiny.tokenizer, TEXTS),
                               rtol=1e-4, atol=1e-5)
    loaded = load_model(C, task="classify")  # loading.load_model sees the same MPO model
    assert loaded.kind == "mpokit" and loaded.info["mpo"] and loaded.model.config.id2label == dict(enumerate(names))

    ok(capsys, "finetune", "--model", C, "--data", files.train, "--validation-split", "0.25", "--out", F, *SMALL)
    report = read_json(F / "report.json")
    assert report["task"] == "classify" and report["method"] == "mpo-lfa"
    assert report["compress_seconds"] == 0.0 and "compression" not in report  # not compressed again
    assert report["total_params"] == count_parameters(compressed)
    assert {"accuracy", "macro_f1", "loss"} <= set(report["validation"]) and report["test"] is None
    assert report["data"]["details"]["splits"]["validation"] == {"from": "train", "fraction": 0.25, "seed": 0,
                                                                  "stratified": True}
    assert report["data"]["sizes"] == {"train": 16, "validation": 8}  # 30 rows: 8 validation, 16 of 22 train
    best = read_json(F / "best" / "config.json")
    assert best["id2label"] == config["id2label"] and best["label2id"] == config["label2id"]
    assert (F / "last").is_dir() and (F / "report.md").is_file()

    metrics_file = tmp_path / "metrics" / "m.json"
    out = ok(capsys, "evaluate", "--model", F / "best", "--data", files.test, "--out", metrics_file, *EVAL)
    result = read_json(metrics_file)
    assert result["task"] == "classify" and result["kind"] == "mpokit" and list(result["splits"]) == ["data"]
    assert {"accuracy", "macro_f1"} <= set(result["splits"]["data"]) and result["splits"]["data"]["n"] == 9
    assert set(result["encoding"]) == {"data"} and result["sizes"] == {"data": 9}
    assert "data: " in out and "accuracy" in out


def test_regression_flow(tiny, files, tmp_path, capsys):
    from mpokit.io import from_pretrained
    from mpokit.loading import load_model

    C, F, m = tmp_path / "C", tmp_path / "F", tmp_path / "m.json"
    ok(capsys, "compress", "--model", tiny.bert, "--data", files.reg_train, "--out", C, *RUN)
    config = read_json(C / "config.json")
    assert len(config["id2label"]) == 1
    assert config["problem_type"] == "regression"
    dense = load_model(tiny.bert, task="regress", seed=0).model
    torch.testing.assert_close(logits(from_pretrained(C), tiny.tokenizer, TEXTS), logits(dense, tiny.tokenizer, TEXTS),
                               rtol=1e-4, atol=1e-5)

    ok(capsys, "finetune", "--model", C, "--data", files.reg_train, "--validation-split", "0.25", "--out", F, *SMALL)
    report = read_json(F / "report.json")
    assert report["task"] == "regress" and report["compress_seconds"] == 0.0 and "compression" not in report
    assert {"mse", "pearson", "spearman"} <= set(report["validation"])
    assert report["data"]["details"]["splits"]["validation"]["stratified"] is False

    ok(capsys, "evaluate", "--model", F / "best", "--data", files.reg_test, "--out", m, *EVAL)
    metrics = read_json(m)["splits"]["data"]
    assert read_json(m)["task"] == "regress" and metrics["n"] == 8
    assert math.isfinite(metrics["mse"]) and metrics["mse"] >= 0 and {"pearson", "spearman"} <= set(metrics)
    # whole-number scores (1..5) would be classes by their labels; the regression model decides the task
    scores = write_csv(tmp_path / "scores.csv", [(f"review {i}", i % 5 + 1) for i in range(10)])
    ok(capsys, "evaluate", "--model", F / "best", "--data", scores, "--out", m, *EVAL)
    assert read_json(m)["task"] == "regress" and "mse" in read_json(m)["splits"]["data"]


def test_lm_flow_on_a_text_file(tiny, files, tmp_path, capsys):
    from mpokit.io import from_pretrained
    from mpokit.loading import load_model, load_tokenizer

    C, F, m = tmp_path / "C", tmp_path / "F", tmp_path / "m.json"
    ok(capsys, "compress", "--model", tiny.llama, "--data", files.lm_train, "--out", C, *RUN)
    assert read_json(C / "compression_report.json")["task"] == "lm"
    tokenizer = load_tokenizer(C)
    assert tokenizer.eos_token == "[SEP]" and tokenizer.pad_token == "[PAD]"
    dense = load_model(tiny.llama, task="lm").model
    torch.testing.assert_close(logits(from_pretrained(C), tokenizer, TEXTS), logits(dense, tokenizer, TEXTS),
                               rtol=1e-4, atol=1e-4)

    ok(capsys, "finetune", "--model", C, "--data", files.lm_train, "--validation-split", "0.25", "--out", F, *SMALL)
    report = read_json(F / "report.json")
    assert report["task"] == "lm" and report["compress_seconds"] == 0.0 and "compression" not in report
    assert "perplexity" in report["validation"] and report["validation"]["perplexity"] > 1
    encoding = report["data"]["encoding"]["train"]
    assert encoding["eos"] is True and encoding["block_size"] == 16 and encoding["documents"] == 30
    assert report["data"]["full_sizes"]["train"] == encoding["blocks"] > 16  # --train-size 16 counts blocks
    assert report["data"]["sizes"]["train"] == 16 and report["data"]["details"]["size_unit"] == "blocks"

    ok(capsys, "evaluate", "--model", F / "best", "--data", files.lm_test, "--out", m, *EVAL)
    metrics = read_json(m)["splits"]["data"]
    assert read_json(m)["task"] == "lm" and 1 < metrics["perplexity"] < math.inf and metrics["tokens"] > 0


def test_lm_on_gpt2_with_a_tokenizer_without_eos_compress_and_lora(tiny, files, tmp_path, capsys):
    from mpokit.io import from_pretrained
    from mpokit.loading import load_model

    C, L, m = tmp_path / "C", tmp_path / "L", tmp_path / "m.json"
    ok(capsys, "compress", "--model", tiny.gpt2, "--data", files.lm_train, "--out", C, *RUN)
    assert any(r["name"].endswith("c_attn") for r in read_json(C / "compression_report.json")["modules"])  # Conv1D
    dense = load_model(tiny.gpt2, task="lm")
    assert dense.tokenizer.eos_token is None and dense.tokenizer.pad_token == "[PAD]"
    torch.testing.assert_close(logits(from_pretrained(C), dense.tokenizer, TEXTS),
                               logits(dense.model, dense.tokenizer, TEXTS), rtol=1e-4, atol=1e-4)
    ok(capsys, "finetune", "--method", "lora", "--model", tiny.gpt2, "--data", files.lm_train, "--validation-split",
       "0.25", "--out", L, *SMALL)
    report = read_json(L / "report.json")
    assert report["task"] == "lm" and report["data"]["encoding"]["train"]["eos"] is False
    ok(capsys, "evaluate", "--model", L / "best", "--data", files.lm_test, "--out", m, *EVAL)
    result = read_json(m)
    assert result["kind"] == "peft" and result["task"] == "lm" and 1 < result["splits"]["data"]["perplexity"] < math.inf


def test_lora_finetune_then_evaluate_the_adapter_folder(tiny, files, tmp_path, capsys):
    from mpokit.evaluation import load_for_evaluation

    F, m = tmp_path / "F", tmp_path / "m.json"
    ok(capsys, "finetune", "--method", "lora", "--model", tiny.bert, "--data", files.train, "--validation-split",
       "0.25", "--lora-rank", "2", "--out", F, *SMALL)
    report = read_json(F / "report.json")
    assert report["method"] == "lora" and report["lora_rank"] == 2 and report["task"] == "classify"
    assert (F / "best" / "adapter_config.json").is_file() and (F / "best" / "adapter_model.safetensors").is_file()
    base = read_json(F / "best" / "mpokit_base.json")
    assert Path(base["path"]).is_absolute() and Path(base["path"]) == Path(tiny.bert).resolve()
    assert base["id2label"] == {str(i): n for i, n in enumerate(sorted(CLASSES))}

    # a test file with two of the three classes, in another order: scored against the model's own classes
    rows = [r for r in labelled_rows(12, seed=5) if r[1] != "neutral"][::-1]
    subset = write_csv(tmp_path / "two_classes.csv", rows)
    ok(capsys, "evaluate", "--model", F / "best", "--data", subset, "--out", m, *EVAL)
    result = read_json(m)
    assert result["kind"] == "peft" and result["splits"]["data"]["n"] == len(rows)
    model, tokenizer, kind = load_for_evaluation(str(F / "best"), "classify")
    config = model.get_base_model().config
    predicted = [config.id2label[int(i)] for i in logits(model, tokenizer, [t for t, _ in rows]).argmax(-1)]
    expected = sum(p == label for p, (_, label) in zip(predicted, rows)) / len(rows)
    assert result["splits"]["data"]["accuracy"] == pytest.approx(expected)

    # an adapter whose base model is gone: said so, with the path it looked for
    import shutil

    moved = tmp_path / "moved_adapter"
    shutil.copytree(F / "best", moved)
    (moved / "mpokit_base.json").write_text(json.dumps({**base, "path": str(tmp_path / "gone")}))
    code, _, err = cli(capsys, "evaluate", "--model", moved, "--data", subset, *RUN)
    assert code == 2 and "base model of the adapter" in err and "does not exist" in err and "gone" in err
    (moved / "mpokit_base.json").unlink()
    code, _, err = cli(capsys, "evaluate", "--model", moved, "--data", subset, *RUN)
    assert code == 2 and "PEFT adapter folder without mpokit_base.json" in err


# ---------------------------------------------------------------------------
# 2. data formats
# ---------------------------------------------------------------------------


def _write_format(fmt: str, folder: Path, rows) -> str:
    import datasets

    records = [{"text": t, "label": label} for t, label in rows]
    if fmt == "csv":
        return write_csv(folder / "d.csv", rows)
    if fmt == "tsv":
        return write_csv(folder / "d.tsv", rows, delimiter="\t")
    if fmt == "jsonl":
        return write_jsonl(folder / "d.jsonl", records)
    if fmt == "parquet":
        datasets.Dataset.from_list(records).to_parquet(str(folder / "d.parquet"))
        return str(folder / "d.parquet")
    datasets.Dataset.from_list(records).save_to_disk(str(folder / "saved"))
    return str(folder / "saved")


def test_every_format_gives_the_same_run(tiny, files, tmp_path, capsys):
    rows = files.rows[:24]
    reports = {}
    for fmt in ("csv", "tsv", "jsonl", "parquet", "save_to_disk"):
        folder = tmp_path / fmt
        folder.mkdir()
        data = _write_format(fmt, folder, rows)
        ok(capsys, "finetune", "--method", "full", "--model", tiny.bert, "--data", data, "--validation-split", "0.25",
           "--out", folder / "out", "--no-checkpoints", *SMALL)
        reports[fmt] = read_json(folder / "out" / "report.json")
        assert reports[fmt]["data"]["details"]["sources"]["train"] == data
        assert not (folder / "out" / "best").exists()  # --no-checkpoints
    first = reports["csv"]
    for fmt, report in reports.items():
        assert report["data"]["full_sizes"] == first["data"]["full_sizes"] == {"train": 18, "validation": 6}, fmt
        assert report["data"]["details"]["labels"]["names"] == sorted(CLASSES), fmt
        assert report["validation"] == first["validation"], fmt  # same rows, same seed: the same run


def test_dataset_dict_folder_brings_its_splits(tiny, files, tmp_path, capsys):
    import datasets

    parts = {"train": files.rows, "validation": labelled_rows(6, seed=7), "test": labelled_rows(6, seed=8)}
    datasets.DatasetDict({k: datasets.Dataset.from_dict({"text": [t for t, _ in v], "label": [lab for _, lab in v]})
                          for k, v in parts.items()}).save_to_disk(str(tmp_path / "dd"))
    ok(capsys, "finetune", "--method", "full", "--model", tiny.bert, "--data", tmp_path / "dd", "--out", tmp_path / "o",
       "--train-size", "all", "--no-checkpoints", *SMALL[2:])
    report = read_json(tmp_path / "o" / "report.json")
    assert report["data"]["sizes"] == {"train": 30, "validation": 6, "test": 6}
    assert report["test"]["n"] == 6 and "test_accuracy" in report


def test_text_pair_column(tiny, tmp_path, capsys):
    import random

    rng = random.Random(4)
    rows = [(sentence(rng), sentence(rng), CLASSES[i % 2]) for i in range(20)]
    data = write_csv(tmp_path / "pairs.csv", rows, header=("premise", "hypothesis", "label"))
    ok(capsys, "finetune", "--method", "full", "--model", tiny.bert, "--data", data, "--text-column", "premise",
       "--text-pair-column", "hypothesis", "--validation-split", "0.2", "--train-size", "all", "--out", tmp_path / "o",
       "--no-checkpoints", *SMALL[2:])
    report = read_json(tmp_path / "o" / "report.json")
    assert report["data"]["details"]["columns"] == {"text": "premise", "text_pair": "hypothesis", "label": "label"}
    assert report["config"]["text_pair_column"] == "hypothesis"
    # the examples are the (premise, hypothesis) pairs: the token count of the 16 training rows says so
    train_rows = [r for i, r in enumerate(rows) if i not in _validation_rows(report, rows)]
    pair_tokens = sum(min(16, len(ids)) for ids in tiny.tokenizer([p for p, _, _ in train_rows],
                                                                  [h for _, h, _ in train_rows])["input_ids"])
    assert report["data"]["encoding"]["train"]["tokens"] == pair_tokens


def _validation_rows(report, rows) -> set[int]:
    """Row indices of the carved validation split (the same seeded stratified split the run made)."""
    from mpokit.data.splits import split_indices

    labels = [sorted(set(r[-1] for r in rows)).index(r[-1]) for r in rows]
    split = report["data"]["details"]["splits"]["validation"]
    return set(split_indices(len(rows), {"validation": split["fraction"]}, split["seed"], labels)["validation"])


def test_validation_and_test_files_and_their_evaluation(tiny, files, tmp_path, capsys):
    val = write_csv(tmp_path / "val.csv", labelled_rows(6, seed=11))
    F, m = tmp_path / "F", tmp_path / "m.json"
    ok(capsys, "finetune", "--method", "full", "--model", tiny.bert, "--data", files.train, "--validation-data", val,
       "--test-data", files.test, "--out", F, *SMALL)
    report = read_json(F / "report.json")
    assert report["data"]["details"]["sources"] == {"train": files.train, "validation": val, "test": files.test}
    assert report["data"]["sizes"] == {"train": 16, "validation": 6, "test": 9}
    assert {"accuracy", "macro_f1"} <= set(report["test"]) and report["test"]["n"] == 9
    ok(capsys, "evaluate", "--model", F / "best", "--data", files.train, "--validation-data", val, "--test-data",
       files.test, "--out", m, *EVAL)
    result = read_json(m)  # the held-out splits are evaluated, not the training file
    assert set(result["splits"]) == {"validation", "test"} and result["sizes"] == {"validation": 6, "test": 9}
    assert result["splits"]["test"]["n"] == 9 and result["splits"]["test"]["accuracy"] == pytest.approx(
        report["test"]["accuracy"])


def test_validation_and_test_split_fractions_and_seed_in_the_report(tiny, files, tmp_path, capsys):
    ok(capsys, "finetune", "--method", "full", "--model", tiny.bert, "--data", files.train, "--validation-split", "0.2",
       "--test-split", "0.2", "--split-seed", "3", "--train-size", "all", "--out", tmp_path / "o", "--no-checkpoints",
       *SMALL[2:])
    report = read_json(tmp_path / "o" / "report.json")
    splits = report["data"]["details"]["splits"]
    assert splits == {"validation": {"from": "train", "fraction": 0.2, "seed": 3, "stratified": True},
                      "test": {"from": "train", "fraction": 0.2, "seed": 3, "stratified": True}}
    assert report["data"]["sizes"] == {"train": 18, "validation": 6, "test": 6}
    assert report["config"]["split_seed"] == 3 and report["test"]["n"] == 6
    counts = report["data"]["details"]["labels"]["class_counts"]
    assert counts["validation"] == counts["test"] == {c: 2 for c in sorted(CLASSES)}  # stratified


# ---------------------------------------------------------------------------
# 3. bad input: a clear error before any training or writing, nothing in --out
# ---------------------------------------------------------------------------


@pytest.fixture
def no_model_load(monkeypatch):
    """Make any model load fail loudly: what is refused with this in place was refused before loading."""

    def refuse(*args, **kwargs):
        raise AssertionError("mpokit.loading.load_model was called; the input should have been refused before")

    monkeypatch.setattr(mpokit.loading, "load_model", refuse)


def refused(capsys, tmp_path, command, *args, expect=(), rc=2):
    """Run a command that must fail: return code, message fragments, no traceback, nothing in --out."""
    out_dir = tmp_path / "out"
    code, out, err = cli(capsys, command, *args, "--out", out_dir, *RUN)
    assert code == rc, f"expected exit {rc}, got {code}; stderr:\n{err[-3000:]}"
    if rc == 2 and code == 2 and not err.startswith("usage:"):
        assert err.startswith(f"mpokit {command}: error: "), err
    for fragment in expect:
        assert fragment in err, f"{fragment!r} not in:\n{err}"
    assert "Traceback" not in err and "AssertionError" not in err
    assert not out_dir.exists() or not any(out_dir.iterdir()), f"--out holds {list(out_dir.iterdir())}"
    return err


def _data_errors(tmp: Path, files) -> dict[str, tuple[list, list]]:
    """name -> (arguments after --model, fragments the message must hold)."""
    (tmp / "empty.csv").write_text("")
    write_csv(tmp / "header_only.csv", [])
    (tmp / "table.xlsx").write_text("not read")
    single = write_csv(tmp / "single.csv", [(f"text {i}", "pos") for i in range(6)])
    strings = write_csv(tmp / "strings.csv", labelled_rows(8, seed=0))
    nan_csv = write_csv(tmp / "nan.csv", [("a", "0.5"), ("b", "nan"), ("c", "1.5"), ("d", "2.0")])
    nan_jsonl = write_jsonl(tmp / "nan.jsonl", [{"text": "a", "label": 0.5}, {"text": "b", "label": float("nan")},
                                                {"text": "c", "label": 1.5}])
    unseen = write_csv(tmp / "unseen.csv", [("a", "pos"), ("b", "sarcastic")])
    (tmp / "quote.csv").write_text('text,label\n"an unterminated quote,pos\nb,neg\n')
    (tmp / "latin1.csv").write_bytes("text,label\nun film très réussi,pos\nb,neg\n".encode("latin-1"))
    split = ["--validation-split", "0.25"]
    return {
        "missing file": (["--data", tmp / "nope.csv", *split], ["no file or folder", "nope.csv", "e.g."]),
        "unknown extension": (["--data", tmp / "table.xlsx", *split], ["unsupported file extension '.xlsx'", ".csv"]),
        "missing column": (["--data", files.train, "--text-column", "review", *split],
                           ["no column 'review'", "['text', 'label']", "e.g. text_column='text'"]),
        "missing label column": (["--data", files.train, "--label-column", "stars", *split],
                                 ["no label column 'stars'", "other columns ['label']", "label_column='label'"]),
        "empty file": (["--data", tmp / "empty.csv", *split], ["is empty", "e.g."]),
        "broken csv": (["--data", tmp / "quote.csv", *split], ["could not read", "ParserError", "EOF inside string"]),
        "not utf-8": (["--data", tmp / "latin1.csv", *split], ["UnicodeDecodeError", "save it as UTF-8"]),
        "header only": (["--data", tmp / "header_only.csv", *split], ["no rows"]),
        "single class": (["--data", single, *split], ["single class 'pos'", "at least two classes"]),
        "regress on strings": (["--data", strings, "--task", "regress", *split],
                               ["task='regress' needs numeric labels", "'pos'", "0.75"]),
        "nan label csv": (["--data", nan_csv, *split], ["row 1", "'nan'", "label"]),
        "nan label jsonl": (["--data", nan_jsonl, *split], ["row 1", "empty label", "nan"]),
        "unseen validation label": (["--data", files.train, "--validation-data", unseen],
                                    ["validation label 'sarcastic'", "never occurs in the training labels"]),
        "unseen test label": (["--data", files.train, "--test-data", unseen, *split],
                              ["test label 'sarcastic'", "never occurs in the training labels"]),
        "classify without labels": (["--data", files.lm_train, "--task", "classify", *split],
                                    ["task='classify' needs labels", "['text']"]),
        "no validation": (["--data", files.train], ["no validation split", "--validation-split 0.1"]),
        "lr -1": (["--data", files.train, "--lr", "-1", *split], ["lr must be a finite number > 0", "-1.0", "e.g."]),
        "lr nan": (["--data", files.train, "--lr", "nan", *split], ["lr must be a finite number > 0", "nan"]),
        "weight decay -1": (["--data", files.train, "--weight-decay", "-1", *split], ["weight_decay", ">= 0", "-1.0"]),
        "max length 1": (["--data", files.train, "--max-length", "1", *split], ["max_length must be an int >= 2", "got 1"]),
        "mpo lr -1": (["--data", files.train, "--mpo-lr", "-1", *split], ["mpo_lr must be a finite number > 0", "e.g."]),
        "epochs 0": (["--data", files.train, "--epochs", "0", *split], ["epochs must be an int >= 1, got 0", "e.g."]),
        "batch size 0": (["--data", files.train, "--batch-size", "0", *split], ["batch_size must be an int >= 1", "e.g."]),
        "lora rank 0": (["--data", files.train, "--method", "lora", "--lora-rank", "0", *split],
                        ["lora_rank must be an int >= 1, got 0", "e.g."]),
        "warmup 1": (["--data", files.train, "--warmup-ratio", "1", *split], ["warmup_ratio must be in [0, 1)", "e.g."]),
        "block size 1": (["--data", files.lm_train, "--block-size", "1", *split], ["block_size must be an int >= 2"]),
    }


def test_data_and_option_errors_are_refused_before_loading_the_model(tiny, files, tmp_path, capsys, no_model_load):
    for name, (args, expect) in _data_errors(tmp_path, files).items():
        case = tmp_path / name.replace(" ", "_")
        case.mkdir()
        refused(capsys, case, "finetune", "--model", tiny.bert, *args, expect=expect)
    # the same checks guard compress and evaluate
    refused(capsys, tmp_path, "compress", "--model", tiny.bert, "--data", files.train, "--text-column", "review",
            expect=["no column 'review'", "['text', 'label']"])
    code, _, err = cli(capsys, "evaluate", "--model", tiny.bert, "--data", tmp_path / "nope.csv", *RUN)
    assert code == 2 and "no file or folder" in err


def test_argparse_rejects_bad_sizes(tiny, files, tmp_path, capsys, no_model_load):
    for flag, value in (("--train-size", "0"), ("--train-size", "ten"), ("--validation-split", "1.5"),
                        ("--threads", "0")):
        err = refused(capsys, tmp_path, "finetune", "--model", tiny.bert, "--data", files.train, flag, value)
        assert err.startswith("usage: mpokit finetune") and f"argument {flag}" in err and "e.g." in err


def test_model_errors(tiny, files, tmp_path, capsys):
    (tmp_path / "fake.gguf").write_text("this is not a model")
    (tmp_path / "not_a_model").mkdir()
    (tmp_path / "not_a_model" / "notes.txt").write_text("hello")
    no_tok = tmp_path / "no_tokenizer"
    no_tok.mkdir()
    for name in ("config.json", "model.safetensors"):
        (no_tok / name).write_bytes((Path(tiny.bert) / name).read_bytes())
    data = ["--data", files.train, "--validation-split", "0.25"]
    cases = {
        "lm on an encoder": ([tiny.bert, "--data", files.lm_train, "--task", "lm", "--validation-split", "0.25"],
                             ["task='lm' needs a decoder-only causal LM", "encoder-only", "bert"]),
        "fake gguf": ([tmp_path / "fake.gguf", *data], ["is not a GGUF model", "b'GGUF'"]),
        "folder without a model": ([tmp_path / "not_a_model", *data], ["no model found", "notes.txt", "config.json"]),
        "nonexistent": ([tmp_path / "no" / "such_model", *data], ["does not exist", "such_model"]),
        "hub name": (["someone/some-model", *data], ["does not exist", "Hub names are not downloaded"]),
        "no tokenizer": ([no_tok, *data], ["no tokenizer in", "tokenizer.json", "tokenizer.save_pretrained"]),
    }
    for name, (args, expect) in cases.items():
        case = tmp_path / "cases" / name.replace(" ", "_")
        case.mkdir(parents=True)
        refused(capsys, case, "finetune", "--model", *args, *SMALL, expect=expect)
    refused(capsys, tmp_path, "compress", "--model", tmp_path / "no" / "such_model", "--data", files.train,
            expect=["does not exist"])
    code, _, err = cli(capsys, "evaluate", "--model", tmp_path / "fake.gguf", "--data", files.test, *RUN)
    assert code == 2 and "is not a GGUF model" in err


def test_out_that_is_a_file(tiny, files, tmp_path, capsys, no_model_load):
    blocker = tmp_path / "taken"
    blocker.write_text("a file")
    for command in ("finetune", "compress"):
        code, _, err = cli(capsys, command, "--model", tiny.bert, "--data", files.train, "--validation-split", "0.25",
                           "--out", blocker, *RUN)
        assert code == 2 and "is a file, not a folder" in err and "e.g. --out" in err, err
        assert blocker.read_text() == "a file"
    code, _, err = cli(capsys, "finetune", "--model", tiny.bert, "--data", files.train, "--validation-split", "0.25",
                       "--out", blocker / "run", *RUN)
    assert code == 2 and "lies under the file" in err
    # evaluate's --out is the metrics file: a folder or a file in the way of its folder is refused before loading
    code, _, err = cli(capsys, "evaluate", "--model", tiny.bert, "--data", files.test, "--out", tmp_path, *RUN)
    assert code == 2 and "is a folder" in err and "metrics.json" in err
    code, _, err = cli(capsys, "evaluate", "--model", tiny.bert, "--data", files.test, "--out", blocker / "m.json", *RUN)
    assert code == 2 and "a file is in the way" in err


def test_evaluate_refuses_a_head_that_was_never_trained(tiny, files, tmp_path, capsys, no_model_load):
    code, _, err = cli(capsys, "evaluate", "--model", tiny.bert, "--data", files.test, *RUN)
    assert code == 2 and "holds BertModel, a base model without a trained classify head" in err
    assert "random head" in err and "mpokit finetune --model" in err
    code, _, err = cli(capsys, "evaluate", "--model", tiny.llama, "--data", files.test, "--task", "classify", *RUN)
    assert code == 2 and "a model trained for 'lm'" in err and "--task lm" in err


def test_evaluate_errors_of_a_trained_classifier(tiny, files, tmp_path, capsys):
    C = tmp_path / "C"
    ok(capsys, "compress", "--model", tiny.bert, "--data", files.train, "--out", C, *RUN)
    code, _, err = cli(capsys, "evaluate", "--model", C, "--data", files.lm_train, *RUN)  # the model says: classify
    assert code == 2 and "task='classify' needs labels" in err and "['text']" in err
    unknown = write_csv(tmp_path / "unknown.csv", [("a", "pos"), ("b", "sarcastic")])
    code, _, err = cli(capsys, "evaluate", "--model", C, "--data", unknown, "--out", tmp_path / "m.json", *RUN)
    assert code == 2 and "['sarcastic'] that the model does not know" in err and "['neg', 'neutral', 'pos']" in err
    assert not (tmp_path / "m.json").exists()


def test_compress_budget_errors(tiny, files, tmp_path, capsys, no_model_load):
    refused(capsys, tmp_path / "a", "compress", "--model", tiny.bert, "--budget", "2",
            expect=["param_ratio must be in (0, 1]", "got 2.0"])
    refused(capsys, tmp_path / "b", "compress", "--model", tiny.bert, "--max-bond", "0",
            expect=["max_bond must be an int >= 1", "got 0"])
    err = refused(capsys, tmp_path / "c", "compress", "--model", tiny.bert, "--budget", "0.5", "--max-bond", "4")
    assert "not allowed with argument" in err


def test_compress_refuses_a_compressed_checkpoint_before_loading(tiny, files, tmp_path, capsys, monkeypatch):
    C = tmp_path / "C"
    ok(capsys, "compress", "--model", tiny.bert, "--data", files.train, "--out", C, "--max-bond", "4", *RUN)
    assert read_json(C / "compression_report.json")["modules"]
    monkeypatch.setattr(mpokit.loading, "load_model", lambda *a, **k: pytest.fail("loaded a model"))
    refused(capsys, tmp_path / "again", "compress", "--model", C, "--data", files.train,
            expect=["already an mpokit (MPO) checkpoint", "mpokit finetune --model"])


def test_resume_with_changed_settings_is_refused(tiny, files, tmp_path, capsys, monkeypatch):
    F = tmp_path / "F"
    args = ["finetune", "--method", "full", "--model", tiny.bert, "--data", files.train, "--validation-split", "0.25",
            "--out", F, *SMALL]
    ok(capsys, *args)
    before = {p.relative_to(F): p.read_bytes() for p in F.rglob("*") if p.is_file()}
    monkeypatch.setattr(mpokit.loading, "load_model", lambda *a, **k: pytest.fail("loaded a model"))
    code, _, err = cli(capsys, *args, "--resume", "--lr", "1e-3")
    assert code == 2 and "--resume" in err and "lr: 5e-05 -> 0.001" in err and "another --out" in err, err
    after = {p.relative_to(F): p.read_bytes() for p in F.rglob("*") if p.is_file()}
    assert after == before  # nothing rewritten


# ---------------------------------------------------------------------------
# 4. truncation is counted
# ---------------------------------------------------------------------------


def test_long_texts_are_truncated_and_counted(tiny, tmp_path, capsys):
    import random

    rng = random.Random(9)
    long_rows = [(sentence(rng, 30, 40), CLASSES[i % 2]) for i in range(5)]
    short_rows = [(sentence(rng, 2, 5), CLASSES[i % 2]) for i in range(11)]
    rows = long_rows + short_rows
    rng.shuffle(rows)
    train = write_csv(tmp_path / "train.csv", rows)
    val = write_csv(tmp_path / "val.csv", [(sentence(rng, 2, 5), CLASSES[i % 2]) for i in range(4)])
    ok(capsys, "finetune", "--method", "full", "--model", tiny.bert, "--data", train, "--validation-data", val,
       "--train-size", "all", "--out", tmp_path / "o", "--no-checkpoints", *SMALL[2:])
    report = read_json(tmp_path / "o" / "report.json")
    encoding = report["data"]["encoding"]
    assert encoding["train"]["truncated"] == 5 and encoding["train"]["examples"] == 16
    assert encoding["train"]["longest"] > 16 and encoding["train"]["max_length"] == 16
    assert encoding["train"]["tokens"] == 5 * 16 + sum(len(tiny.tokenizer(t)["input_ids"]) for t, _ in short_rows)
    assert encoding["validation"]["truncated"] == 0
    assert "truncated at max_length 16: {'train': 5}" in (tmp_path / "o" / "report.md").read_text()


# ---------------------------------------------------------------------------
# 5. --help
# ---------------------------------------------------------------------------


def _parsers(parser: argparse.ArgumentParser, name: str):
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _parsers(sub, f"{name} {sub_name}")


@pytest.mark.parametrize("command", ["compress", "finetune", "evaluate", "squeeze", "decompose", "lstm"])
def test_help_documents_every_option(command, capsys):
    assert command in COMMANDS
    code, out, _ = cli(capsys, command, "--help")
    assert code == 0 and out.startswith(f"usage: mpokit {command}") and "unavailable" not in out
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    for name, parser in _parsers(sub, command):
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            label = "/".join(action.option_strings) or action.dest
            assert action.help and action.help.strip(), f"mpokit {name}: {label} has no help text"
            if name == command and action.option_strings:
                assert action.option_strings[0] in out
