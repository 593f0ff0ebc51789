"""mpokit.tasks: metrics against hand computations, encoding (truncation, pairs, LM blocks), collation, model
checks, and evaluate() of tiny random models against direct computations with the models' own outputs."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

datasets = pytest.importorskip("datasets")
transformers = pytest.importorskip("transformers")

from mpokit.data import DataError, load_data  # noqa: E402
from mpokit.data.labels import TASK_NAMES  # noqa: E402
from mpokit.recipes.models import default_model_path  # noqa: E402
from mpokit.tasks import TASKS, ModelMismatchError, get_task  # noqa: E402
from mpokit.tasks.metrics import accuracy, average_ranks, confusion_matrix, macro_f1, pearson, spearman  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
WORDS = "the a film fine dull long great fun rain dog man eats car".split()


@pytest.fixture(scope="module")
def minilm_tokenizer():
    return transformers.AutoTokenizer.from_pretrained(str(default_model_path()))


@pytest.fixture(scope="module")
def word_tokenizer():
    """A whitespace word-level tokenizer with pad 0, unk 1, eos 2 and the words of WORDS."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<pad>": 0, "<unk>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    inner = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    inner.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=inner, pad_token="<pad>", unk_token="<unk>",
                                                eos_token="</s>")


def tiny_bert(num_labels, vocab=30522, **kwargs):
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=vocab, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=24, max_position_embeddings=64, hidden_dropout_prob=0.0,
                                     attention_probs_dropout_prob=0.0, num_labels=num_labels, **kwargs)
    return transformers.BertForSequenceClassification(config).eval()


def tiny_llama(vocab):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=vocab, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                      num_key_value_heads=1, intermediate_size=24, max_position_embeddings=64)
    return transformers.LlamaForCausalLM(config).eval()


def loader(split, task, tokenizer, batch_size=3):
    return torch.utils.data.DataLoader(split, batch_size=batch_size, collate_fn=task.collate(tokenizer))


def hand_ranks(x):
    """rank_i = #(x_j < x_i) + (#(x_j == x_i) + 1) / 2, the average rank by its definition."""
    x = list(x)
    return [sum(v < a for v in x) + (sum(v == a for v in x) + 1) / 2 for a in x]


# ---------------------------------------------------------------- metrics

def test_accuracy_confusion_and_macro_f1_by_hand():
    labels = [0, 0, 0, 1, 1, 2, 2, 2, 2]
    preds = [0, 1, 0, 1, 2, 2, 2, 0, 2]
    cm = confusion_matrix(preds, labels, 3)
    assert cm.tolist() == [[2, 1, 0], [0, 1, 1], [1, 0, 3]]
    assert accuracy(preds, labels) == pytest.approx(6 / 9)
    # class 0: tp 2, fp 1, fn 1 -> 4/6; class 1: tp 1, fp 1, fn 1 -> 2/4; class 2: tp 3, fp 1, fn 1 -> 6/8
    assert macro_f1(preds, labels) == pytest.approx((4 / 6 + 2 / 4 + 6 / 8) / 3)
    # a class only predicted (3) counts with F1 0; a class in neither (2) does not count
    assert macro_f1([0, 3, 1], [0, 1, 1]) == pytest.approx((1 + 2 / 3 + 0) / 3)


def test_pearson_and_spearman_against_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=50)
    y = 0.5 * x + rng.normal(size=50)
    assert pearson(torch.tensor(x), torch.tensor(y)) == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-12)
    xt = np.round(x, 0)  # many ties
    assert average_ranks(torch.tensor(xt)).tolist() == pytest.approx(hand_ranks(xt))
    assert average_ranks([10, 20, 20, 5]).tolist() == [2, 3.5, 3.5, 1]
    expected = np.corrcoef(hand_ranks(xt), hand_ranks(y))[0, 1]
    assert spearman(torch.tensor(xt), torch.tensor(y)) == pytest.approx(expected, abs=1e-12)
    assert math.isnan(pearson([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])) and math.isnan(pearson([1.0], [2.0]))


# ---------------------------------------------------------------- registry

def test_task_registry():
    assert set(TASKS) == set(TASK_NAMES)
    assert [get_task(n).primary_metric for n in ("classify", "regress", "lm")] == [
        ("accuracy", "max"), ("mse", "min"), ("perplexity", "min")]
    assert get_task("classify").is_better(0.8, 0.7) and get_task("lm").is_better(10.0, 12.0)
    assert get_task("lm").is_better(50.0, None) and not get_task("regress").is_better(0.3, 0.2)
    with pytest.raises(ValueError, match="unknown task 'clasify'.*'classify'"):
        get_task("clasify")


# ---------------------------------------------------------------- encoding

def test_classify_encode_counts_truncation(minilm_tokenizer):
    texts = ["fine", "a fine film", "a " * 10 + "film", "the " * 30]
    data = load_data(datasets.Dataset.from_dict({"text": texts, "label": ["b", "a", "b", "a"]}))
    task = get_task("classify")
    encoded = task.encode(data, minilm_tokenizer, max_length=8)
    full = [minilm_tokenizer(t)["input_ids"] for t in texts]
    assert [len(ids) for ids in full] == [3, 5, 13, 32]
    stats = encoded.stats["train"]
    assert stats == {"examples": 4, "truncated": 2, "longest": 32, "tokens": 3 + 5 + 8 + 8, "max_length": 8}
    rows = [encoded.train[i] for i in range(4)]
    assert [r["input_ids"] for r in rows[:2]] == full[:2]
    assert rows[2]["input_ids"] == full[2][:7] + [minilm_tokenizer.sep_token_id]  # cut, [SEP] kept
    assert [r["labels"] for r in rows] == [1, 0, 1, 0] and encoded.validation is None
    assert task.model_kwargs(data) == {"num_labels": 2, "id2label": {0: "a", 1: "b"}, "label2id": {"a": 0, "b": 1},
                                       "problem_type": "single_label_classification"}
    with pytest.raises(ValueError, match="max_length must be an int >= 2, got 1"):
        task.encode(data, minilm_tokenizer, max_length=1)
    with pytest.raises(ValueError, match="no room for text"):
        task.encode(data, minilm_tokenizer, max_length=2)
    with pytest.raises(ValueError, match="data is for task 'classify', not 'lm'"):
        get_task("lm").encode(data, minilm_tokenizer, max_length=8)


def test_sentence_pairs_encode_as_pairs(minilm_tokenizer):
    train = datasets.Dataset.from_dict({"a": ["a man eats", "a dog " * 20], "b": ["someone eats", "a car"],
                                        "score": [0.9, 0.1]})
    data = load_data(train, text_column="a", text_pair_column="b", label_column="score")
    encoded = get_task("regress").encode(data, minilm_tokenizer, max_length=12)
    first = minilm_tokenizer("a man eats", "someone eats")
    assert encoded.train[0]["input_ids"] == first["input_ids"]
    assert encoded.train[0]["token_type_ids"] == first["token_type_ids"] and 1 in first["token_type_ids"]
    assert encoded.stats["train"]["truncated"] == 1 and len(encoded.train[1]["input_ids"]) == 12
    sep = minilm_tokenizer.sep_token_id  # longest_first cuts the long first text and keeps "a car"
    assert encoded.train[1]["input_ids"][-3:] == minilm_tokenizer("a car", add_special_tokens=False)["input_ids"] + [sep]
    assert encoded.train[1]["labels"] == pytest.approx(0.1)
    assert get_task("regress").model_kwargs(data) == {"num_labels": 1, "problem_type": "regression"}


def test_lm_blocks(word_tokenizer):
    docs = ["the film", "", "a fine dull long film", "   ", "rain dog"]  # 2 + 5 + 2 words, each + </s>
    train = datasets.Dataset.from_dict({"text": docs})
    data = load_data(train, validation=datasets.Dataset.from_dict({"text": ["the dog eats the car"]}), task="lm")
    encoded = get_task("lm").encode(data, word_tokenizer, max_length=4)
    words = [w for d in docs if d.strip() for w in d.split() + ["</s>"]]
    stream = word_tokenizer.convert_tokens_to_ids(words)
    assert len(stream) == 12
    assert encoded.stats["train"] == {"documents": 3, "empty_documents": 2, "tokens": 12, "blocks": 3, "block_size": 4,
                                      "dropped_tokens": 0, "eos": True}
    assert [encoded.train[i]["input_ids"] for i in range(3)] == [stream[0:4], stream[4:8], stream[8:12]]
    assert all(encoded.train[i]["labels"] == encoded.train[i]["input_ids"] for i in range(3))
    assert encoded.stats["validation"]["blocks"] == 1 and encoded.stats["validation"]["dropped_tokens"] == 2
    five = get_task("lm").encode(data, word_tokenizer, max_length=64, block_size=5)
    assert five.stats["train"]["blocks"] == 2 and five.stats["train"]["dropped_tokens"] == 2
    with pytest.raises(DataError, match="validation split has 6 tokens, fewer than block_size=8"):
        get_task("lm").encode(data, word_tokenizer, max_length=8)
    with pytest.raises(ValueError, match="block_size must be an int >= 2, got 1"):
        get_task("lm").encode(data, word_tokenizer, max_length=8, block_size=1)
    assert get_task("lm").model_kwargs(data) == {}


def test_lm_without_eos_concatenates(minilm_tokenizer):
    data = load_data(datasets.Dataset.from_dict({"text": ["a fine film", "the dog"]}))
    encoded = get_task("lm").encode(data, minilm_tokenizer, max_length=2)
    stream = minilm_tokenizer("a fine film", add_special_tokens=False)["input_ids"] + minilm_tokenizer(
        "the dog", add_special_tokens=False)["input_ids"]
    assert encoded.stats["train"]["eos"] is False and encoded.stats["train"]["tokens"] == len(stream) == 5
    assert [encoded.train[i]["input_ids"] for i in range(2)] == [stream[0:2], stream[2:4]]


def test_collate_pads_to_the_longest(minilm_tokenizer):
    examples = [{"input_ids": [5, 6, 7], "token_type_ids": [0, 0, 1], "labels": 1},
                {"input_ids": [8], "token_type_ids": [0], "labels": 0}]
    batch = get_task("classify").collate(minilm_tokenizer)(examples)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]  # MiniLM pad id 0
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["token_type_ids"].tolist() == [[0, 0, 1], [0, 0, 0]]
    assert batch["labels"].dtype == torch.long and batch["labels"].tolist() == [1, 0]
    values = get_task("regress").collate(minilm_tokenizer)([{"input_ids": [1], "labels": 0.5}])
    assert values["labels"].dtype == torch.float32 and "token_type_ids" not in values
    lm = get_task("lm").collate(minilm_tokenizer)([{"input_ids": [3, 4], "labels": [3, 4]}, {"input_ids": [9], "labels": [9]}])
    assert lm["labels"].tolist() == [[3, 4], [9, -100]]


# ---------------------------------------------------------------- models

def test_check_model():
    data = load_data(datasets.Dataset.from_dict({"text": ["a", "b", "c"], "label": ["x", "y", "z"]}))
    classifier = transformers.BertForSequenceClassification(
        transformers.BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=8, **get_task("classify").model_kwargs(data)))
    get_task("classify").check_model(classifier, data)
    assert classifier.config.id2label == {0: "x", 1: "y", 2: "z"}
    with pytest.raises(ModelMismatchError, match="task 'lm' needs a causal language model, got BertForSequenceClassification"):
        get_task("lm").check_model(classifier)
    with pytest.raises(ModelMismatchError, match="needs num_labels=1"):
        get_task("regress").check_model(classifier)
    two = load_data(datasets.Dataset.from_dict({"text": ["a", "b"], "label": ["x", "y"]}))
    with pytest.raises(ModelMismatchError, match="num_labels=3 but the classify data needs 2"):
        get_task("classify").check_model(classifier, two)
    llama = tiny_llama(50)
    get_task("lm").check_model(llama)
    with pytest.raises(ModelMismatchError, match="needs a sequence classification model, got LlamaForCausalLM"):
        get_task("classify").check_model(llama)
    get_task("regress").check_model(tiny_bert(**get_task("regress").model_kwargs(None), vocab=50))


# ---------------------------------------------------------------- evaluate

REVIEWS = ["a fine film", "dull and long", "great fun", "the dog eats the car", "rain", "so so", "a man",
           "not good at all", "best of the year"]


def one_by_one(model, tokenizer, texts):
    """Logits of each text alone (no padding), (N, K)."""
    with torch.no_grad():
        return torch.cat([model(**tokenizer(t, return_tensors="pt")).logits for t in texts])


def test_classify_evaluate_matches_direct_computation(minilm_tokenizer):
    labels = ["pos", "neg", "pos", "mid", "neg", "mid", "pos", "neg", "pos"]
    data = load_data(datasets.Dataset.from_dict({"text": REVIEWS, "label": labels}))
    task = get_task("classify")
    model = tiny_bert(**task.model_kwargs(data)).train()  # evaluate switches to eval mode and back
    encoded = task.encode(data, minilm_tokenizer, max_length=16)
    metrics = task.evaluate(model, loader(encoded.train, task, minilm_tokenizer, batch_size=4))
    assert model.training
    logits = one_by_one(model.eval(), minilm_tokenizer, REVIEWS)
    ids = torch.tensor(data.train["label"])
    preds = logits.argmax(-1)
    assert metrics["n"] == 9
    assert metrics["loss"] == pytest.approx(float(torch.nn.functional.cross_entropy(logits, ids)), abs=1e-5)
    assert metrics["accuracy"] == pytest.approx(float((preds == ids).float().mean()))
    k = 3
    cm = np.zeros((k, k))
    for t, p in zip(ids.tolist(), preds.tolist()):
        cm[t, p] += 1
    present = sorted(set(ids.tolist()) | set(preds.tolist()))
    f1 = [2 * cm[c, c] / (2 * cm[c, c] + cm[:, c].sum() - cm[c, c] + cm[c, :].sum() - cm[c, c]) for c in present]
    assert metrics["macro_f1"] == pytest.approx(float(np.mean(f1)))


def test_regress_evaluate_matches_direct_computation(minilm_tokenizer):
    scores = [0.9, 0.1, 0.8, 0.5, 0.2, 0.5, 0.6, 0.0, 1.0]
    data = load_data(datasets.Dataset.from_dict({"text": REVIEWS, "label": scores}))
    task = get_task("regress")
    model = tiny_bert(**task.model_kwargs(data))
    task.check_model(model, data)
    encoded = task.encode(data, minilm_tokenizer, max_length=16)
    metrics = task.evaluate(model, loader(encoded.train, task, minilm_tokenizer, batch_size=4))
    preds = one_by_one(model, minilm_tokenizer, REVIEWS)[:, 0].double().numpy()
    y = np.array(scores)
    assert metrics["n"] == 9
    assert metrics["mse"] == pytest.approx(float(np.mean((preds - y) ** 2)), rel=1e-5)
    assert metrics["loss"] == metrics["mse"]
    assert metrics["pearson"] == pytest.approx(np.corrcoef(preds, y)[0, 1], abs=1e-4)
    assert metrics["spearman"] == pytest.approx(np.corrcoef(hand_ranks(preds), hand_ranks(y))[0, 1], abs=1e-4)


def test_lm_perplexity_matches_the_models_own_loss(word_tokenizer):
    docs = ["the film was fine", "a dull long film", "great fun", "the dog eats the car", "rain", "a man eats"]
    data = load_data(datasets.Dataset.from_dict({"text": docs}))
    task = get_task("lm")
    model = tiny_llama(len(word_tokenizer))
    task.check_model(model)
    encoded = task.encode(data, word_tokenizer, max_length=5)
    metrics = task.evaluate(model, loader(encoded.train, task, word_tokenizer, batch_size=2))
    blocks = [encoded.train[i]["input_ids"] for i in range(len(encoded.train))]
    with torch.no_grad():
        losses = [float(model(input_ids=torch.tensor([b]), labels=torch.tensor([b])).loss) for b in blocks]
    assert metrics["tokens"] == 4 * len(blocks) and metrics["n"] == len(blocks)
    assert metrics["loss"] == pytest.approx(float(np.mean(losses)), abs=1e-5)  # equal blocks: plain mean
    assert metrics["perplexity"] == pytest.approx(math.exp(float(np.mean(losses))), rel=1e-5)


def test_lm_loss_is_token_weighted_over_padded_batches(word_tokenizer):
    task = get_task("lm")
    model = tiny_llama(len(word_tokenizer))
    seqs = [[3, 4, 5, 6, 7, 8, 9, 10, 11], [5, 6, 7, 2, 8], [9, 10]]  # 8, 4 and 1 predicted tokens
    split = [{"input_ids": s, "labels": list(s)} for s in seqs]
    metrics = task.evaluate(model, loader(split, task, word_tokenizer, batch_size=3))
    with torch.no_grad():
        losses = [float(model(input_ids=torch.tensor([s]), labels=torch.tensor([s])).loss) for s in seqs]
    counts = [len(s) - 1 for s in seqs]
    expected = sum(l * c for l, c in zip(losses, counts)) / sum(counts)
    assert metrics["tokens"] == 13 and metrics["loss"] == pytest.approx(expected, abs=1e-5)
    assert metrics["loss"] != pytest.approx(float(np.mean(losses)), abs=1e-3)  # not the mean of sequence means


def test_evaluate_with_an_accelerator_matches(minilm_tokenizer):
    from accelerate import Accelerator

    data = load_data(datasets.Dataset.from_dict({"text": REVIEWS, "label": [0, 1, 0, 1, 0, 1, 1, 0, 1]}))
    task = get_task("classify")
    model = tiny_bert(**task.model_kwargs(data))
    encoded = task.encode(data, minilm_tokenizer, max_length=16)
    plain = task.evaluate(model, loader(encoded.train, task, minilm_tokenizer, batch_size=4))
    accelerator = Accelerator(cpu=True)
    prepared_model, prepared_loader = accelerator.prepare(model, loader(encoded.train, task, minilm_tokenizer, 4))
    gathered = task.evaluate(prepared_model, prepared_loader, accelerator=accelerator)
    assert gathered["n"] == 9 and gathered["accuracy"] == plain["accuracy"]
    assert gathered["loss"] == pytest.approx(plain["loss"], abs=1e-6)


def test_rotten_tomatoes_encodes_for_classification(minilm_tokenizer):
    data = load_data("rotten_tomatoes")
    encoded = get_task("classify").encode(data, minilm_tokenizer, max_length=64)
    lengths = [len(ids) for ids in minilm_tokenizer(list(data.test["text"]))["input_ids"]]
    assert encoded.stats["test"]["examples"] == 1293
    assert encoded.stats["test"]["truncated"] == sum(n > 64 for n in lengths)
    assert encoded.stats["test"]["longest"] == max(lengths)
    assert get_task("classify").model_kwargs(data)["id2label"] == {0: "rotten", 1: "fresh"}
