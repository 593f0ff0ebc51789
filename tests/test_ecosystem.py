"""MPO models inside the transformers ecosystem: Trainer, pipeline, generate.

Tiny random models; each compressed model is checked against its dense
original (full bonds: same outputs) or against itself after a save/load.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch

transformers = pytest.importorskip("transformers")

import mpokit  # noqa: E402
from mpokit import MPOConfig  # noqa: E402
from mpokit.layers import MPOModule  # noqa: E402
from mpokit.loading import ModelSourceError, load_model  # noqa: E402
from mpokit.recipes.models import minilm_path  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tokenizer():
    """The real all-MiniLM-L6-v2 tokenizer (30,522 word pieces) from its installed package."""
    return transformers.AutoTokenizer.from_pretrained(minilm_path())


def _bert_classifier(num_labels=2, seed=0, **labels):
    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=64, num_labels=num_labels, **labels)
    return transformers.BertForSequenceClassification(config).eval()


def _dataset(tokenizer):
    """Eight labelled sentences, tokenised to one length: a list of dicts is a Trainer dataset."""
    texts = ["a quiet, lovely film", "dull and far too long", "the cast is wonderful", "a mess from start to end",
             "warm and funny", "i wanted to leave", "sharp writing, great pace", "flat and lifeless"]
    enc = tokenizer(texts, padding="max_length", max_length=12, truncation=True, return_tensors="pt")
    return [{"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i],
             "labels": torch.tensor(i % 2)} for i in range(len(texts))]


def _training_args(folder, **kw):
    base = dict(output_dir=str(folder), max_steps=3, per_device_train_batch_size=4, learning_rate=1e-2,
                save_strategy="no", report_to=[], logging_strategy="no", use_cpu=True, disable_tqdm=True,
                dataloader_num_workers=0, seed=0)
    base.update(kw)
    return transformers.TrainingArguments(**base)


def _snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_trainer_trains_exactly_the_trainable_parameters_and_saves_with_mpokit(tmp_path, tokenizer):
    model = mpokit.compress(_bert_classifier(), MPOConfig(trainable="auxiliary"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert trainable and frozen and any(".cores." in n for n in frozen)  # LFA: central cores frozen
    before = _snapshot(model)
    trainer = transformers.Trainer(model=model, args=_training_args(tmp_path / "run"), train_dataset=_dataset(tokenizer))
    result = trainer.train()
    assert result.global_step == 3
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed == trainable
    assert not os.path.exists(tmp_path / "run" / "checkpoint-3")  # save_strategy="no"
    model.eval()
    batch = tokenizer(["warm and funny", "flat"], padding=True, return_tensors="pt")
    mpokit.save_pretrained(model, tmp_path / "saved", tokenizer=tokenizer)
    loaded = mpokit.from_pretrained(tmp_path / "saved")
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, model(**batch).logits)


def test_checkpoint_callback_writes_loadable_mpokit_checkpoints(tmp_path, tokenizer):
    from mpokit.callbacks import MPOCheckpointCallback

    model = mpokit.compress(_bert_classifier(seed=1), MPOConfig(trainable="auxiliary"))
    callback = MPOCheckpointCallback()
    out = tmp_path / "run"
    args = _training_args(out, max_steps=4, save_strategy="steps", save_steps=2)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=_dataset(tokenizer),
                                   processing_class=tokenizer, callbacks=[callback])
    trainer.train()
    assert callback.saved == [out / "checkpoint-2" / "mpokit", out / "checkpoint-4" / "mpokit"]
    model.eval()
    batch = tokenizer(["warm and funny", "flat"], padding=True, return_tensors="pt")
    loaded = load_model(out / "checkpoint-4" / "mpokit", task="classify")  # the tokenizer came from processing_class
    assert loaded.kind == "mpokit" and loaded.info["mpo"]
    with torch.no_grad():
        assert torch.equal(loaded.model(**loaded.tokenizer(["warm and funny", "flat"], padding=True,
                                                            return_tensors="pt")).logits, model(**batch).logits)
    with pytest.raises(ModelSourceError, match="MPOCheckpointCallback"):  # Trainer's own folder: cores, no structure
        load_model(out / "checkpoint-4")
    with pytest.raises(ValueError, match="subfolder"):
        MPOCheckpointCallback(subfolder="../elsewhere")


def test_compressed_classifier_in_a_text_classification_pipeline(tmp_path, tokenizer):
    labels = {0: "rotten", 1: "mixed", 2: "fresh"}
    dense = _bert_classifier(num_labels=3, seed=2, id2label=labels, label2id={v: k for k, v in labels.items()})
    compressed = mpokit.compress(copy.deepcopy(dense), MPOConfig())  # full bonds: the same function
    assert isinstance(compressed.bert.embeddings.word_embeddings, MPOModule)
    mpokit.save_pretrained(compressed, tmp_path / "mpo", tokenizer=tokenizer)
    loaded = load_model(tmp_path / "mpo", task="classify")
    texts = ["a quiet, lovely film", "dull and far too long", "the cast is wonderful"]
    want = transformers.pipeline("text-classification", model=dense, tokenizer=tokenizer, device="cpu", top_k=None)(texts)
    for model in (compressed, loaded.model):
        got = transformers.pipeline("text-classification", model=model, tokenizer=loaded.tokenizer, device="cpu",
                                    top_k=None)(texts)
        for g, w in zip(got, want):
            assert [d["label"] for d in g] == [d["label"] for d in w]
            assert [d["score"] for d in g] == pytest.approx([d["score"] for d in w], abs=1e-5)
    assert {d["label"] for d in want[0]} == set(labels.values())


@pytest.mark.parametrize("tied", [False, True])
def test_compressed_llama_generates_the_same_tokens(tied):
    torch.manual_seed(3)
    config = transformers.LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                      tie_word_embeddings=tied, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    dense = transformers.LlamaForCausalLM(config).eval()
    compressed = mpokit.compress(copy.deepcopy(dense), MPOConfig())
    assert isinstance(compressed.model.layers[0].mlp.down_proj, MPOModule)
    assert isinstance(compressed.model.embed_tokens, MPOModule)
    prompt = torch.tensor([[1, 17, 45, 8, 60], [1, 33, 5, 71, 12]])
    settings = dict(max_new_tokens=12, do_sample=False, min_new_tokens=12)
    with torch.no_grad():
        want = dense.generate(prompt, attention_mask=torch.ones_like(prompt), **settings)
        got = compressed.generate(prompt, attention_mask=torch.ones_like(prompt), **settings)
    assert want.shape == (2, 17)
    assert torch.equal(got, want)
