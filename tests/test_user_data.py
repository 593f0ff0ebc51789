"""User data through mpokit.data.load_data: every file format, task inference, labels, splits, named sets, errors."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest

datasets = pytest.importorskip("datasets")

from mpokit.data import DataError, NamedDataset, dataset_names, get_dataset, load_data, register_dataset  # noqa: E402
from mpokit.data.splits import split_indices  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROWS = [("a fine film", "pos"), ("dull, long", "neg"), ("NA", "pos"), ("so-so", "neutral"), ("great fun", "pos"),
        ("null", "neg")]


def write_csv(path, rows, header=("text", "label"), delimiter=","):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def records(rows):
    return [{"text": t, "label": y} for t, y in rows]


def write_format(tmp_path, fmt, rows):
    if fmt == "csv":
        return write_csv(tmp_path / "d.csv", rows)
    if fmt == "tsv":
        return write_csv(tmp_path / "d.tsv", rows, delimiter="\t")
    if fmt == "json":
        path = tmp_path / "d.json"
        path.write_text(json.dumps(records(rows)), encoding="utf-8")
        return path
    if fmt == "jsonl":
        return write_jsonl(tmp_path / "d.jsonl", records(rows))
    dataset = datasets.Dataset.from_list(records(rows))
    if fmt == "parquet":
        dataset.to_parquet(str(tmp_path / "d.parquet"))
        return tmp_path / "d.parquet"
    if fmt == "disk":
        dataset.save_to_disk(str(tmp_path / "disk"))
        return tmp_path / "disk"
    if fmt == "dict":
        datasets.DatasetDict({"train": dataset}).save_to_disk(str(tmp_path / "dict"))
        return tmp_path / "dict"
    raise ValueError(fmt)


@pytest.mark.parametrize("fmt", ["csv", "tsv", "json", "jsonl", "parquet", "disk", "dict"])
def test_each_format_loads_the_same_rows(tmp_path, fmt):
    data = load_data(write_format(tmp_path, fmt, ROWS))
    assert data.task == "classify" and data.info["task_choice"] == "inferred from the labels"
    assert data.train["text"] == [t for t, _ in ROWS]  # "NA" and "null" stay text
    assert data.label_names == ["neg", "neutral", "pos"]  # sorted strings -> ids 0..2
    assert data.train["label"] == [data.label_names.index(y) for _, y in ROWS]
    assert data.train.features["label"].names == data.label_names
    assert data.num_labels == 3 and data.validation is None and data.test is None
    assert data.info["sizes"] == {"train": 6}
    assert data.info["labels"]["class_counts"]["train"] == {"neg": 2, "neutral": 1, "pos": 3}


def test_text_file_is_lm_with_one_document_per_line(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("the first line\n\nthe third line\n", encoding="utf-8")
    data = load_data(path)
    assert data.task == "lm" and data.info["task_choice"] == "inferred: no label column"
    assert data.train["text"] == ["the first line", "", "the third line"]
    assert data.label_column is None and data.label_names is None and data.num_labels is None
    assert data.train.column_names == ["text"]


def test_dataset_dict_folder_brings_its_splits_and_files_replace_them(tmp_path):
    part = lambda rows: datasets.Dataset.from_list(records(rows))  # noqa: E731
    datasets.DatasetDict({"train": part(ROWS), "valid": part(ROWS[:2]), "test": part(ROWS[2:5])}).save_to_disk(
        str(tmp_path / "dd"))
    data = load_data(tmp_path / "dd")
    assert data.sizes() == {"train": 6, "validation": 2, "test": 3}
    other = write_csv(tmp_path / "val.csv", ROWS[:4])
    data = load_data(tmp_path / "dd", validation=other)
    assert data.sizes()["validation"] == 4 and data.info["sources"]["validation"] == str(other)


def test_sentence_pairs_and_other_columns(tmp_path):
    path = write_csv(tmp_path / "pairs.csv", [("a man eats", "someone eats", "0.9", "x"), ("a dog", "a car", "0.1", "y"),
                                              ("rain", "it rains", "0.7", "z")],
                     header=("premise", "hypothesis", "score", "id"))
    data = load_data(path, text_column="premise", text_pair_column="hypothesis", label_column="score")
    assert data.task == "regress" and data.num_labels == 1
    assert data.train.column_names == ["premise", "hypothesis", "score"]
    assert data.train["score"] == pytest.approx([0.9, 0.1, 0.7])


def test_task_inference(tmp_path):
    ints = load_data(write_jsonl(tmp_path / "i.jsonl", [{"text": "a", "label": 0}, {"text": "b", "label": 1}]))
    assert ints.task == "classify" and ints.label_names == ["0", "1"]
    floats = load_data(write_jsonl(tmp_path / "f.jsonl", [{"text": "a", "label": 0.5}, {"text": "b", "label": 2.0}]))
    assert floats.task == "regress" and floats.train["label"] == [0.5, 2.0]
    whole = write_jsonl(tmp_path / "w.jsonl", [{"text": "a", "label": 1.0}, {"text": "b", "label": 2.0},
                                              {"text": "c", "label": 1.0}])
    assert load_data(whole).task == "regress"  # floats are always regression targets
    forced = load_data(whole, task="classify")  # ... unless classify is asked for
    assert forced.task == "classify" and forced.label_names == ["1", "2"] and forced.train["label"] == [0, 1, 0]
    bools = load_data(write_jsonl(tmp_path / "b.jsonl", [{"text": "a", "label": True}, {"text": "b", "label": False}]))
    assert bools.label_names == ["False", "True"] and bools.train["label"] == [1, 0]
    texts = load_data(write_jsonl(tmp_path / "t.jsonl", [{"text": "a"}, {"text": "b"}]))
    assert texts.task == "lm"
    ints_as_regress = load_data(ints.train.cast_column("label", datasets.Value("int64")), task="regress")
    assert ints_as_regress.train["label"] == [0.0, 1.0]


def test_integer_labels_kept_or_mapped(tmp_path):
    kept = load_data(write_csv(tmp_path / "k.csv", [("a", 2), ("b", 0), ("c", 1)]))
    assert kept.train["label"] == [2, 0, 1] and kept.label_names == ["0", "1", "2"]
    assert kept.info["labels"]["encoding"] == "integer labels kept (0..K-1)"
    mapped = load_data(write_csv(tmp_path / "m.csv", [("a", 1), ("b", -1), ("c", 1), ("d", 5)]),
                       validation=write_csv(tmp_path / "mv.csv", [("e", 5), ("f", -1)]))
    assert mapped.label_names == ["-1", "1", "5"]
    assert mapped.train["label"] == [1, 0, 1, 2] and mapped.validation["label"] == [2, 0]


def test_class_label_column_keeps_ids_and_names():
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["b", "a", "c"])})
    train = datasets.Dataset.from_dict({"text": ["x", "y", "z"], "label": [2, 0, 1]}, features=features)
    data = load_data(train)
    assert data.label_names == ["b", "a", "c"] and data.train["label"] == [2, 0, 1]


def test_stratified_split_keeps_class_proportions_and_is_seeded(tmp_path):
    rows = [(f"text {i}", "a" if i % 10 < 6 else ("b" if i % 10 < 9 else "c")) for i in range(100)]  # 60 / 30 / 10
    path = write_csv(tmp_path / "s.csv", rows)
    data = load_data(path, validation_split=0.2, test_split=0.1, seed=3)
    counts = data.info["labels"]["class_counts"]
    assert counts["validation"] == {"a": 12, "b": 6, "c": 2}
    assert counts["test"] == {"a": 6, "b": 3, "c": 1}
    assert counts["train"] == {"a": 42, "b": 21, "c": 7}
    texts = [set(getattr(data, s)["text"]) for s in ("train", "validation", "test")]
    assert set().union(*texts) == {t for t, _ in rows} and sum(len(t) for t in texts) == 100
    assert data.info["splits"]["validation"] == {"from": "train", "fraction": 0.2, "seed": 3, "stratified": True}
    assert data.info["sources"]["test"] == "0.1 of train"
    assert json.loads(json.dumps(data.info)) == data.info  # ready for a JSON report
    again = load_data(path, validation_split=0.2, test_split=0.1, seed=3)
    assert again.validation["text"] == data.validation["text"] and again.test["text"] == data.test["text"]
    other = load_data(path, validation_split=0.2, test_split=0.1, seed=4)
    assert other.validation["text"] != data.validation["text"]
    order = [t for t, _ in rows]
    assert data.train["text"] == sorted(data.train["text"], key=order.index)  # file order kept


def test_stratified_split_keeps_every_class_in_training():
    labels = [0] * 18 + [1] * 1 + [2] * 1  # classes 1 and 2 have a single row each
    parts = split_indices(20, {"validation": 0.25}, seed=0, labels=labels)
    assert len(parts["validation"]) == 5 and {18, 19} <= set(parts["train"])
    assert sorted(parts["train"] + parts["validation"]) == list(range(20))


def test_unstratified_split_for_regression(tmp_path):
    rows = [(f"t{i}", i / 10) for i in range(30)]
    data = load_data(write_csv(tmp_path / "r.csv", rows), validation_split=0.2, seed=1)
    assert data.sizes() == {"train": 24, "validation": 6}
    assert data.info["splits"]["validation"]["stratified"] is False
    assert sorted(list(data.train["label"]) + list(data.validation["label"])) == pytest.approx([i / 10 for i in range(30)])


def test_file_errors(tmp_path):
    with pytest.raises(DataError, match="no file or folder .*missing.csv"):
        load_data(tmp_path / "missing.csv")
    (tmp_path / "d.xlsx").write_text("x")
    with pytest.raises(DataError, match=r"unsupported file extension '.xlsx'.*\.csv, \.tsv, \.json, \.jsonl, \.parquet, \.txt"):
        load_data(tmp_path / "d.xlsx")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="empty"):
        load_data(tmp_path / "empty.csv")
    (tmp_path / "header.csv").write_text("text,label\n")
    with pytest.raises(DataError, match="no rows"):
        load_data(tmp_path / "header.csv")
    (tmp_path / "folder").mkdir()
    with pytest.raises(DataError, match="save_to_disk"):
        load_data(tmp_path / "folder")
    with pytest.raises(DataError, match="unknown data set 'no_such_set'.*rotten_tomatoes"):
        load_data("no_such_set")


def test_column_errors(tmp_path):
    path = write_csv(tmp_path / "c.csv", [("a", "x", "pos"), ("b", "y", "neg")], header=("sentence", "other", "label"))
    with pytest.raises(DataError, match=r"no column 'text' \(text_column\); its columns: \['sentence', 'other', 'label'\]"):
        load_data(path)
    with pytest.raises(DataError, match=r"task='classify' needs labels.*no column 'stars'; its columns"):
        load_data(path, text_column="sentence", label_column="stars", task="classify")
    other = write_csv(tmp_path / "v.csv", [("c", "pos")], header=("sentence", "stars"))
    with pytest.raises(DataError, match=r"validation .* has no column 'label' \(label_column\)"):
        load_data(path, text_column="sentence", validation=other)
    with pytest.raises(DataError, match="no label column 'stars' but other columns"):
        load_data(path, text_column="sentence", label_column="stars")  # a misnamed label is not silently lm
    assert load_data(path, text_column="sentence", label_column="stars", task="lm").task == "lm"
    assert load_data(path, text_column="sentence", label_column=None).task == "lm"  # no labels, explicitly
    texts = write_jsonl(tmp_path / "t.jsonl", [{"text": "a"}, {"text": "b"}])
    for task in ("classify", "regress"):
        with pytest.raises(DataError, match=f"task='{task}' needs labels.*no column 'label'"):
            load_data(texts, task=task)
    numbers = write_jsonl(tmp_path / "n.jsonl", [{"text": 1, "label": "a"}, {"text": 2, "label": "b"}])
    with pytest.raises(DataError, match="not text"):
        load_data(numbers)
    with pytest.raises(DataError, match="has no text"):
        load_data(write_csv(tmp_path / "e.csv", [("a", "pos"), ("", "neg")]))


def test_label_errors(tmp_path):
    with pytest.raises(DataError, match="single class 'pos'"):
        load_data(write_csv(tmp_path / "one.csv", [("a", "pos"), ("b", "pos")]))
    with pytest.raises(DataError, match=r"train row 1 .* is 'abc', not a number"):
        load_data(write_csv(tmp_path / "r.csv", [("a", "0.5"), ("b", "abc")]), task="regress")
    with pytest.raises(DataError, match="train row 1 has an empty label"):
        load_data(write_csv(tmp_path / "nan.csv", [("a", "pos"), ("b", ""), ("c", "neg")]))
    with pytest.raises(DataError, match="train row 0 has an empty label"):
        load_data(write_jsonl(tmp_path / "null.jsonl", [{"text": "a", "label": None}, {"text": "b", "label": 1.5}]))
    with pytest.raises(DataError, match="not a whole number"):
        load_data(write_jsonl(tmp_path / "h.jsonl", [{"text": "a", "label": 0.5}, {"text": "b", "label": 1.0}]),
                  task="classify")
    train = write_csv(tmp_path / "t.csv", [("a", "pos"), ("b", "neg")])
    with pytest.raises(DataError, match=r"validation label 'neutral' \(row 1\) never occurs in the training labels"):
        load_data(train, validation=write_csv(tmp_path / "v.csv", [("c", "pos"), ("d", "neutral")]))
    with pytest.raises(DataError, match="test label 'maybe'"):
        load_data(train, test=write_csv(tmp_path / "te.csv", [("c", "maybe")]))


def test_argument_errors(tmp_path):
    path = write_csv(tmp_path / "a.csv", ROWS * 5)
    for bad in (0, 1, 1.5, -0.1, "0.1"):
        with pytest.raises(DataError, match=r"validation_split must be a fraction in \(0, 1\)"):
            load_data(path, validation_split=bad)
    with pytest.raises(DataError, match="must be < 1"):
        load_data(path, validation_split=0.5, test_split=0.5)
    with pytest.raises(DataError, match="unknown task 'classification'"):
        load_data(path, task="classification")
    with pytest.raises(DataError, match="must differ"):
        load_data(path, label_column="text")
    with pytest.raises(DataError, match="already has one"):
        load_data(path, validation=path, validation_split=0.1)
    with pytest.raises(DataError, match="leaves no rows for training"):
        load_data(write_csv(tmp_path / "two.csv", [("a", "x"), ("b", "y")]), validation_split=0.3, test_split=0.3)


def test_rotten_tomatoes_by_name():
    data = load_data("rotten_tomatoes")
    assert data.task == "classify" and data.label_names == ["rotten", "fresh"]
    assert data.sizes() == {"train": 10168, "validation": 1291, "test": 1293}
    fresh = [data.info["labels"]["class_counts"][s]["fresh"] for s in ("train", "validation", "test")]
    assert fresh == [5776, 818, 774]  # as tests/test_data.py
    assert data.info["dataset"]["sizes"] == data.sizes() and data.info["sources"]["train"] == "data set 'rotten_tomatoes'"
    with pytest.raises(DataError, match="already has one"):
        load_data("rotten_tomatoes", validation_split=0.1)


def test_ptb_by_name():
    data = load_data("ptb")
    assert data.task == "lm" and data.info["task_choice"] == "the data set's task"
    assert data.sizes() == {"train": 42068, "validation": 3370, "test": 3761}
    assert data.train[0]["text"].startswith("aer banknote berlitz")
    assert sum(len(t.split()) + 1 for t in data.validation["text"]) == 73760  # words + <eos>, as in PTB_SIZES


def test_registry_register_and_errors(monkeypatch):
    from mpokit.data import registry

    dataset_names()  # the providers' sets first, so that the copy below holds them
    monkeypatch.setattr(registry, "_LOADERS", dict(registry._LOADERS))  # registrations here are undone

    def tiny():
        return NamedDataset(train=datasets.Dataset.from_dict({"text": ["a", "b"], "label": ["x", "y"]}),
                            info={"name": "tiny"})

    register_dataset("tiny-test-set", tiny, description="two rows")
    assert "tiny-test-set" in dataset_names() and {"rotten_tomatoes", "ptb"} <= set(dataset_names())
    register_dataset("tiny-test-set", tiny)  # the same loader again is fine
    assert load_data("tiny-test-set").label_names == ["x", "y"]
    with pytest.raises(ValueError, match="already registered"):
        register_dataset("tiny-test-set", lambda: tiny())
    with pytest.raises(ValueError, match="lower-case letters"):
        register_dataset("Bad Name", tiny)
    register_dataset("tiny-test-set", lambda: "not a data set", replace=True)
    with pytest.raises(TypeError, match="not a NamedDataset"):
        get_dataset("tiny-test-set")


def test_named_sets_are_registered_lazily():
    code = ("import sys\nfrom mpokit.data import load_data\nassert 'mpokit.recipes.datasets' not in sys.modules\n"
            "d = load_data('ptb')\nassert 'mpokit.recipes.datasets' in sys.modules\nprint(d.sizes()['test'])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "3761"
