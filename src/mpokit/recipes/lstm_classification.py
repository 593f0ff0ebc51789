"""Sequence classification: Rotten Tomatoes sentences, word-level LSTM classifier.

Model: ``Embedding(V, E)`` -> 1-layer LSTM (hidden 256; dense / MPO / pruning) -> ``Linear(H, 2)``.
The vocabulary is built from the training split only. Metric: test accuracy (%), taken at the
epoch with the best validation accuracy among epochs that end after pruning finished (the same
rule for every method). Python API::

    from mpokit.recipes.lstm_classification import PRESETS, run_classification
    result = run_classification(PRESETS["smoke"], "runs/lstm_classify_smoke")

Presets (1 thread of the 2-core CPU sandbox; wall-clock measured or extrapolated from per-epoch
times in runs.csv):

* ``tiny``: 512 sentences, hidden 64, 1 rate, 1 seed -- the unit test (seconds);
* ``smoke``: 2,000 sentences, hidden 256, 2 epochs, rates 10 and 100, seed 0 (5 runs; 1-4 min
  depending on the sandbox's load);
* ``small``: 4,000 train sentences (full validation / test), 3 epochs, rates 10/50/100, 3 seeds
  (21 runs; about 30 s per epoch on a shared, loaded 2-core sandbox, ~35 min in all);
* ``full``: all sentences, 10 epochs, the paper's eight rates, 5 seeds (85 runs x 10 epochs; an
  epoch over the 10,168 sentences took 67-81 s on one thread of the loaded sandbox, so ~17 h
  there, a few hours on an idle core, minutes on a GPU).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from .lstm_common import (DEFAULT_METHODS, PAPER_RATES, Timer, build_lstm, check_hh_share, check_learning_rates,
                          check_mpo_cores, check_schedule_finished, compression_schedule, dense_parameters, log_epoch,
                          make_optimizers, preset_config, run_record, schedule_step, set_seed)
from .lstm_runner import METRICS, eligible_from_epoch, run_experiment


@dataclass(frozen=True)
class ClassifyConfig:
    """One classification experiment: data, model, training budget, and the grid of runs."""

    preset: str = "custom"
    train_size: int | None = None  # sentences taken from the train split (None: all 10,168)
    eval_size: int | None = None  # sentences of validation / test (None: all)
    split_seed: int = 0  # seed of the by-movie split (the PLM experiments use the same)
    max_len: int = 64  # tokens per sentence (99% are <= 46)
    min_freq: int = 1  # vocabulary: words seen at least this often in train
    embed_dim: int = 256
    hidden_size: int = 256
    dropout: float = 0.3  # on embeddings and on the final hidden state
    epochs: int = 4
    batch_size: int = 64
    lr: float = 1e-3  # Adam
    lr_grid: tuple = ()  # learning rates tried per (method, rate); each picks its best on validation. () = just lr
    clip: float = 5.0  # gradient-norm clip
    mpo_cores: int = 4  # cores per MPO of the MPO-LSTM (modes: mpokit.layers.lstm.lstm_modes); sets the budget of pruning too
    mpo_hh_share: float | None = None  # fraction of the MPO budget given to U (None: W and U at one rate); pruning follows
    prune_begin: float = 0.0  # fraction of all steps where gradual pruning starts
    prune_end: float = 0.5  # ... and reaches the target (then fine-tuning)
    prune_frequency: int = 10  # steps between mask updates
    rates: tuple = PAPER_RATES
    seeds: tuple = (0, 1, 2)
    methods: tuple = DEFAULT_METHODS  # any of lstm_common.METHODS (also "mpo_gradual")

    def __post_init__(self):
        for name in ("epochs", "batch_size", "max_len", "embed_dim", "hidden_size", "prune_frequency", "min_freq"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}; e.g. {name}={getattr(PRESETS_BASE, name)}")
        if not 0.0 <= self.prune_begin <= self.prune_end <= 1.0:
            raise ValueError(f"need 0 <= prune_begin <= prune_end <= 1, got {self.prune_begin}, {self.prune_end}; e.g. 0.0, 0.5")
        if not self.seeds:
            raise ValueError("seeds must not be empty; e.g. seeds=(0, 1, 2)")
        check_learning_rates(self.lr, self.lr_grid)
        check_mpo_cores(self.mpo_cores)
        check_hh_share(self.mpo_hh_share)


PRESETS_BASE = ClassifyConfig()
PRESETS = {
    "tiny": ClassifyConfig("tiny", train_size=512, eval_size=128, max_len=24, embed_dim=64, hidden_size=64, epochs=2,
                           batch_size=32, lr=3e-3, prune_frequency=2, rates=(10,), seeds=(0,)),
    "smoke": ClassifyConfig("smoke", train_size=2000, max_len=48, epochs=2, rates=(10, 100), seeds=(0,)),
    "small": ClassifyConfig("small", train_size=4000, max_len=40, min_freq=2, epochs=3, lr=2e-3, rates=(10, 50, 100),
                            seeds=(0, 1, 2)),
    # all the data, half the epochs of full: about 2 min per run on one CPU core
    "medium": ClassifyConfig("medium", epochs=5, rates=(10, 50, 100), seeds=(0, 1, 2)),
    "full": ClassifyConfig("full", epochs=10, rates=PAPER_RATES, seeds=(0, 1, 2, 3, 4)),
}


class LSTMClassifier(nn.Module):
    """Embedding -> LSTM (any ``nn.LSTM``-compatible module) -> linear head on the last hidden state."""

    def __init__(self, vocab_size: int, embed_dim: int, lstm: nn.Module, num_classes: int = 2, dropout: float = 0.0, padding_idx: int = 0):
        super().__init__()
        # sparse gradients: SparseAdam updates only the rows a batch uses
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=padding_idx, sparse=True)
        self.drop = nn.Dropout(dropout)
        self.lstm = lstm
        self.head = nn.Linear(lstm.hidden_size, num_classes)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        emb = self.drop(self.embedding(ids))  # (B, T, E)
        packed = pack_padded_sequence(emb, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, (h_n, _) = self.lstm(packed)  # h_n: (layers, B, H), state at each sentence's last word
        return self.head(self.drop(h_n[-1]))  # (B, C)


@dataclass
class ClassifyData:
    vocab_size: int
    train: tuple  # (ids (N, T), lengths (N,), labels (N,))
    validation: tuple
    test: tuple
    sizes: dict


def prepare_data(cfg: ClassifyConfig) -> ClassifyData:
    """Load the by-movie split, subsample per the config, build the train vocabulary, encode."""
    from ..data import build_text_vocab, encode_padded
    from .data import load_rotten_tomatoes

    rt = load_rotten_tomatoes(seed=cfg.split_seed)
    splits = {
        "train": rt.train.subsample(cfg.train_size, seed=cfg.split_seed) if cfg.train_size else rt.train,
        "validation": rt.validation.subsample(cfg.eval_size, seed=cfg.split_seed) if cfg.eval_size else rt.validation,
        "test": rt.test.subsample(cfg.eval_size, seed=cfg.split_seed) if cfg.eval_size else rt.test,
    }
    vocab = build_text_vocab(splits["train"].texts, min_freq=cfg.min_freq)
    encoded = {}
    for name, split in splits.items():
        ids, lengths = encode_padded(split.texts, vocab, cfg.max_len)
        encoded[name] = (ids, lengths, torch.tensor(split.labels, dtype=torch.long))
    return ClassifyData(len(vocab), encoded["train"], encoded["validation"], encoded["test"], {k: len(v) for k, v in splits.items()})


@torch.no_grad()
def accuracy(model: nn.Module, split: tuple, batch_size: int = 256) -> float:
    """Accuracy (%) of ``model`` on an encoded split."""
    model.eval()
    ids, lengths, labels = split
    correct = 0
    for start in range(0, len(labels), batch_size):
        sl = slice(start, start + batch_size)
        correct += int((model(ids[sl], lengths[sl]).argmax(-1) == labels[sl]).sum())
    return 100.0 * correct / len(labels)


def train_one(cfg: ClassifyConfig, data: ClassifyData, method: str, rate: float, seed: int, progress: bool = False,
              device: str = "cpu") -> dict:
    """Train one model (method, rate, seed) on ``device`` and return its CSV row. The model is
    initialised on the CPU (same init on every device) and then moved."""
    from tqdm.auto import tqdm

    set_seed(seed)
    build = build_lstm(method, cfg.embed_dim, cfg.hidden_size, 1, rate, batch_first=True, mpo_cores=cfg.mpo_cores,
                       mpo_hh_share=cfg.mpo_hh_share)
    model = LSTMClassifier(data.vocab_size, cfg.embed_dim, build.lstm, 2, cfg.dropout).to(device)
    ids, lengths, labels = (t.to(device) for t in data.train)
    validation, test_split = (tuple(t.to(device) for t in split) for split in (data.validation, data.test))
    steps_per_epoch = -(-len(labels) // cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    schedule = compression_schedule(build, total, cfg.prune_begin, cfg.prune_end, cfg.prune_frequency)  # pruning / mpo_gradual
    opts = make_optimizers(model, cfg.lr)  # Adam (dense) + SparseAdam (embedding)
    order = torch.Generator().manual_seed(seed)
    first_epoch = eligible_from_epoch(cfg.epochs, steps_per_epoch, cfg.prune_end)
    losses, train_s, infer_s = [], [], []
    best = (-1.0, 0.0, 0)  # (valid, test, epoch)
    step = 0
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        epoch_start = len(losses)
        perm = torch.randperm(len(labels), generator=order)
        bar = tqdm(range(steps_per_epoch), desc=f"{method} r{rate} s{seed} ep{epoch}", leave=False, disable=not progress, mininterval=2)
        with Timer() as t:
            for b in bar:
                idx = perm[b * cfg.batch_size : (b + 1) * cfg.batch_size]
                loss = nn.functional.cross_entropy(model(ids[idx], lengths[idx]), labels[idx])
                for opt in opts:
                    opt.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(dense_parameters(model), cfg.clip)
                for opt in opts:
                    opt.step()
                schedule_step(schedule, step, opts[0], model)
                losses.append(float(loss.detach()))
                step += 1
        train_s.append(t.seconds)
        valid = None
        if epoch >= first_epoch:
            with Timer() as t:
                valid = accuracy(model, validation)
            infer_s.append(t.seconds)
            test = accuracy(model, test_split)
            if valid > best[0]:
                best = (valid, test, epoch)
        if not progress:
            log_epoch(f"{method} r{rate} s{seed}", epoch, cfg.epochs, losses[epoch_start:], train_s[-1], "accuracy", valid)
    check_schedule_finished(schedule)
    return run_record("classify", "accuracy", cfg, method, rate, seed, best, losses, model, build, train_s, infer_s)


def run_classification(cfg: ClassifyConfig, out_dir, *, progress: bool = True, resume: bool = False, command: str | None = None,
                       device: str = "cpu"):
    """Run the whole grid of ``cfg`` on ``device`` and write ``runs.csv``, ``results.md`` and the PNG plot to ``out_dir``."""
    return run_experiment("classify", cfg, out_dir, prepare_data, train_one, METRICS["classify"],
                          progress=progress, resume=resume, command=command, device=device)


def config_from_preset(preset: str, **overrides) -> ClassifyConfig:
    """A preset with some fields replaced (``None`` values are ignored)."""
    return preset_config(PRESETS, preset, **overrides)
