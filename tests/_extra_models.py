"""Tiny models outside mpokit's architecture registry (MPNet, Gemma3) and plain nn.Modules with an LSTM
or with modules that override forward (shared by test_targets, test_converters, test_io)."""

from __future__ import annotations

import os

import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def tiny_mpnet(seed: int = 0, dtype=torch.float32):
    """MPNetForSequenceClassification (model type 'mpnet', not in mpokit.targets.ARCHITECTURES)."""
    import transformers as T

    torch.manual_seed(seed)
    cfg = T.MPNetConfig(vocab_size=97, hidden_size=24, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=36, max_position_embeddings=40, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0, num_labels=2)
    return T.MPNetForSequenceClassification(cfg).to(dtype).eval()


def gemma3_available() -> bool:
    import transformers as T

    return hasattr(T, "Gemma3TextConfig") and hasattr(T, "Gemma3ForCausalLM")


def tiny_gemma3(seed: int = 0, dtype=torch.float32):
    """Gemma3ForCausalLM: a scaled word embedding (own forward) tied to lm_head."""
    import transformers as T

    torch.manual_seed(seed)
    cfg = T.Gemma3TextConfig(vocab_size=97, hidden_size=24, intermediate_size=36, num_hidden_layers=2,
                             num_attention_heads=2, num_key_value_heads=1, head_dim=12, max_position_embeddings=64,
                             sliding_window=8)
    return T.Gemma3ForCausalLM(cfg).to(dtype).eval()


class LSTMLanguageModel(nn.Module):
    """ids (B, T) -> logits (B, T, vocab): embedding, a 2-layer nn.LSTM, a Linear head; no transformers config."""

    def __init__(self, vocab: int = 50, dim: int = 12, hidden: int = 16) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, dim)
        self.lstm = nn.LSTM(dim, hidden, num_layers=2, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.lstm(self.embedding(ids))[0])


class ScaledEmbedding(nn.Embedding):
    """An nn.Embedding whose forward multiplies the rows by ``scale`` (like Gemma3's scaled word embedding)."""

    def __init__(self, *args, scale: float = 3.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.register_buffer("scale", torch.tensor(scale), persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return super().forward(ids) * self.scale.to(self.weight.dtype)


class GatedLinear(nn.Linear):
    """An nn.Linear with an extra op: ``tanh(x W^T + b) + mean(x)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(super().forward(x)) + x.mean(-1, keepdim=True)


class CustomForwardNet(nn.Module):
    """ids (B, T) -> (B, 3): a ScaledEmbedding, a GatedLinear and a plain Linear, mean over time."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = ScaledEmbedding(40, 12, padding_idx=0)
        self.proj = GatedLinear(12, 12)
        self.out = nn.Linear(12, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.out(self.proj(self.emb(ids))).mean(1)
