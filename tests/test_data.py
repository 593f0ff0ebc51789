"""Offline data loaders: documented split sizes, movie-disjoint splits, vocabularies, determinism."""

import pytest
import torch

from mpokit.data import Vocabulary, build_text_vocab, encode_padded, tokenize_words
from mpokit.recipes.data import batchify, bptt_windows, load_ptb, load_rotten_tomatoes
from mpokit.recipes.data.rotten_tomatoes import read_sentences


@pytest.fixture(scope="module")
def rt():
    return load_rotten_tomatoes(seed=0)


@pytest.fixture(scope="module")
def ptb():
    return load_ptb()


def test_rt_sizes_match_docstring(rt):
    assert rt.sizes() == {"train": 10168, "validation": 1291, "test": 1293}
    assert [sum(s.labels) for s in (rt.train, rt.validation, rt.test)] == [5776, 818, 774]
    assert [len(set(s.movies)) for s in (rt.train, rt.validation, rt.test)] == [406, 51, 50]


def test_rt_source_counts_and_dedup():
    rows = read_sentences()
    assert len(rows) == 7403 + 5405 - 56
    texts = [t for t, _, _ in rows]
    assert len(set(texts)) == len(texts)
    assert set(label for _, label, _ in rows) == {0, 1}


def test_rt_no_movie_overlap_no_duplicate_texts(rt):
    movies = [set(s.movies) for s in (rt.train, rt.validation, rt.test)]
    assert not (movies[0] & movies[1]) and not (movies[0] & movies[2]) and not (movies[1] & movies[2])
    all_texts = rt.train.texts + rt.validation.texts + rt.test.texts
    assert len(set(all_texts)) == len(all_texts)


def test_rt_split_is_deterministic_and_seeded(rt):
    again = load_rotten_tomatoes(seed=0)
    assert again.test.texts == rt.test.texts and again.train.labels == rt.train.labels
    other = load_rotten_tomatoes(seed=1)
    assert set(other.test.movies) != set(rt.test.movies)
    assert sum(other.sizes().values()) == sum(rt.sizes().values())


def test_rt_subsample_and_bad_input(rt):
    sub = rt.train.subsample(100, seed=3)
    assert len(sub) == 100 and sub == rt.train.subsample(100, seed=3)
    assert set(sub.texts) <= set(rt.train.texts)
    with pytest.raises(ValueError, match="fractions"):
        load_rotten_tomatoes(fractions=(0.5, 0.5))
    with pytest.raises(ValueError, match="unknown split"):
        rt.split("dev")


def test_rt_vocab_from_train(rt):
    vocab = build_text_vocab(rt.train.texts)
    assert len(vocab) == 19641
    assert len(build_text_vocab(rt.train.texts, min_freq=2)) == 9773
    assert vocab.itos[:2] == ["<pad>", "<unk>"] and vocab.pad_id == 0 and vocab.unk_id == 1
    assert len(build_text_vocab(rt.train.texts, max_size=5000)) == 5000
    assert Vocabulary.from_json(vocab.to_json()).itos == vocab.itos


def test_tokenizer_and_padding():
    assert tokenize_words("It's a GREAT film!") == ["it", "'s", "a", "great", "film", "!"]
    assert tokenize_words("Don't go") == ["do", "n't", "go"]
    vocab = build_text_vocab(["a great film", "a bad film"])
    ids, lengths = encode_padded(["a great film", "zzz", ""], vocab, max_len=2)
    assert ids.tolist() == [[vocab.stoi["a"], vocab.stoi["great"]], [1, 0], [1, 0]]
    assert lengths.tolist() == [2, 1, 1]


def test_ptb_sizes_and_vocab(ptb):
    assert ptb.sizes() == {"train": 929_589, "valid": 73_760, "test": 82_430}
    assert len(ptb.vocab) == 10_000
    eos = ptb.vocab.stoi["<eos>"]
    assert int((ptb.train == eos).sum()) == 42_068  # one <eos> per sentence line
    assert int(ptb.train.max()) < 10_000 and int(ptb.valid.max()) < 10_000
    assert ptb.vocab.decode(ptb.train[-3:]) == ["mr.", "<unk>", "<eos>"]


def test_ptb_batchify_and_bptt():
    stream = torch.arange(23)
    cols = batchify(stream, 4)  # (5, 4)
    assert cols.shape == (5, 4) and cols[:, 1].tolist() == [5, 6, 7, 8, 9]
    windows = list(bptt_windows(cols, 3))
    assert [w[0].shape[0] for w in windows] == [3, 1]
    for x, y in windows:
        assert torch.equal(x + 1, y)


def test_exported_files_give_the_same_data(tmp_path, monkeypatch, rt, ptb):
    from mpokit.recipes.data.files import ENV, export_data, main

    monkeypatch.delenv(ENV, raising=False)
    written = export_data(tmp_path / "files")
    assert sorted(p.name for p in written) == ["ptb.test.txt", "ptb.train.txt", "ptb.valid.txt",
                                               "rotten_tomatoes_corpus_full.csv.bz2"]
    assert sum(p.stat().st_size for p in written) < 16 * 2**20, "small enough to carry to another machine"
    assert not list((tmp_path / "files").glob(".*")), "no temporary files left behind"
    monkeypatch.setenv(ENV, str(tmp_path / "files"))
    from_files_rt, from_files_ptb = load_rotten_tomatoes(seed=0), load_ptb()
    for name in ("train", "validation", "test"):
        assert from_files_rt.split(name) == rt.split(name)
    for name in ("train", "valid", "test"):
        assert torch.equal(getattr(from_files_ptb, name), getattr(ptb, name))
    assert from_files_ptb.vocab.itos == ptb.vocab.itos
    (tmp_path / "files" / "ptb.valid.txt").unlink()
    with pytest.raises(FileNotFoundError, match="ptb.valid.txt is missing; write the files with `python -m mpokit.recipes.data.files"):
        load_ptb()
    monkeypatch.delenv(ENV)
    assert main([str(tmp_path / "again")]) == 0 and (tmp_path / "again" / "ptb.valid.txt").is_file()
