"""Tiny random transformers models of every architecture mpokit.surgery supports (shared by the PLM tests)."""

from __future__ import annotations

import os

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ARCHS = ("bert", "albert", "distilbert", "roberta", "gpt2", "llama")


def tiny_config(arch: str, vocab: int = 97):
    import transformers as T

    no_drop = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    if arch == "bert":
        return T.BertConfig(vocab_size=vocab, hidden_size=24, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=36, max_position_embeddings=32, **no_drop)
    if arch == "roberta":
        return T.RobertaConfig(vocab_size=vocab, hidden_size=24, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=36, max_position_embeddings=40, **no_drop)
    if arch == "albert":
        return T.AlbertConfig(vocab_size=vocab, embedding_size=12, hidden_size=24, num_hidden_layers=2,
                              num_attention_heads=2, intermediate_size=36, max_position_embeddings=32,
                              hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout_prob=0.0)
    if arch == "distilbert":
        return T.DistilBertConfig(vocab_size=vocab, dim=24, n_layers=2, n_heads=2, hidden_dim=36,
                                  max_position_embeddings=32, dropout=0.0, attention_dropout=0.0, seq_classif_dropout=0.0)
    if arch == "gpt2":
        return T.GPT2Config(vocab_size=vocab, n_embd=24, n_layer=2, n_head=2, n_positions=32, resid_pdrop=0.0,
                            embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    if arch == "llama":
        return T.LlamaConfig(vocab_size=vocab, hidden_size=24, num_hidden_layers=2, num_attention_heads=2,
                             num_key_value_heads=1, intermediate_size=36, max_position_embeddings=32)
    raise ValueError(arch)


def tiny_model(arch: str, seed: int = 0, dtype=torch.float32):
    """Sequence classifier for encoders; causal LM (with its tied or untied head) for GPT-2 and Llama."""
    import transformers as T

    torch.manual_seed(seed)
    cfg = tiny_config(arch)
    if arch in ("gpt2", "llama"):
        model = T.AutoModelForCausalLM.from_config(cfg)
    else:
        cfg.num_labels = 2
        model = T.AutoModelForSequenceClassification.from_config(cfg)
    return model.to(dtype).eval()


def tiny_inputs(seed: int = 1, batch: int = 3, length: int = 9, vocab: int = 97):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    mask[0, -3:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits
