"""Sequence prediction: word-level language modelling on Penn Treebank (Mikolov's split).

Model: ``Embedding(10k, E)`` -> dropout -> 2-layer LSTM (hidden 256; dense / MPO / pruning;
dropout between layers) -> dropout -> ``Linear(H, 10k)``; embedding and decoder untied and dense.
Training: Adam, truncated BPTT (hidden state carried across windows, detached), gradient-norm clip.
Metric: perplexity ``exp(mean token cross-entropy)`` on the full validation and test streams, at
the epoch with the best validation perplexity among epochs that end after pruning finished (same
rule for every method). Python API::

    from mpokit.recipes.lstm_lm import PRESETS, run_language_model
    result = run_language_model(PRESETS["smoke"], "runs/lstm_lm_smoke")

Presets (1 thread of the 2-core CPU sandbox: ~4,000 training tokens/s for the dense model when the
machine is idle, ~1,100 when it is shared):

* ``tiny``: 4k training tokens, hidden 64, eval on 2k tokens -- the unit test (seconds);
* ``smoke``: 20k training tokens, 1 epoch, 10k eval tokens, rate 10, seed 0 (3 runs; 39 s measured);
* ``small``: the first 40k training tokens, 2 epochs, the first 20k tokens of valid / test, rates
  10/50/100, 3 seeds (21 runs, ~85 s each on a shared, loaded 2-core sandbox: ~30 min). Far too
  little training for literature perplexities (~100): it compares methods at one tiny budget;
* ``full``: all 929k training tokens, 15 epochs, full valid/test, the paper's eight rates, 3 seeds
  (51 runs x 15 epochs; an epoch is ~4 min on one idle CPU thread and ~14 min on the loaded
  sandbox, so 2-7 days of CPU: run it on a GPU).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .lstm_common import (DEFAULT_METHODS, PAPER_RATES, Timer, build_lstm, check_hh_share, check_learning_rates,
                          check_mpo_cores, check_schedule_finished, compression_schedule, dense_parameters, log_epoch,
                          make_optimizers, preset_config, run_record, schedule_step, set_seed)
from .lstm_runner import METRICS, eligible_from_epoch, run_experiment


@dataclass(frozen=True)
class LMConfig:
    """One language-modelling experiment: data, model, training budget, and the grid of runs."""

    preset: str = "custom"
    train_tokens: int | None = None  # first tokens of PTB train used (None: all 929,589)
    eval_tokens: int | None = None  # first tokens of valid / test used (None: all, the standard numbers)
    embed_dim: int = 256
    hidden_size: int = 256
    num_layers: int = 2
    dropout: float = 0.2
    epochs: int = 2
    batch_size: int = 20
    bptt: int = 35
    eval_batch_size: int = 10
    lr: float = 2e-3  # Adam
    lr_grid: tuple = ()  # learning rates tried per (method, rate); each picks its best on validation. () = just lr
    clip: float = 0.5
    mpo_cores: int = 4  # cores per MPO of the MPO-LSTM (modes: mpokit.layers.lstm.lstm_modes); sets the budget of pruning too
    mpo_hh_share: float | None = None  # fraction of the MPO budget given to U (None: W and U at one rate); pruning follows
    prune_begin: float = 0.0
    prune_end: float = 0.5
    prune_frequency: int = 10
    rates: tuple = PAPER_RATES
    seeds: tuple = (0, 1, 2)
    methods: tuple = DEFAULT_METHODS  # any of lstm_common.METHODS (also "mpo_gradual")

    def __post_init__(self):
        for name in ("epochs", "batch_size", "bptt", "eval_batch_size", "embed_dim", "hidden_size", "num_layers", "prune_frequency"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}; e.g. {name}={getattr(LMConfig(), name)}")
        if not 0.0 <= self.prune_begin <= self.prune_end <= 1.0:
            raise ValueError(f"need 0 <= prune_begin <= prune_end <= 1, got {self.prune_begin}, {self.prune_end}; e.g. 0.0, 0.5")
        if not self.seeds:
            raise ValueError("seeds must not be empty; e.g. seeds=(0, 1, 2)")
        check_learning_rates(self.lr, self.lr_grid)
        check_mpo_cores(self.mpo_cores)
        check_hh_share(self.mpo_hh_share)


PRESETS = {
    "tiny": LMConfig("tiny", train_tokens=4000, eval_tokens=2000, embed_dim=64, hidden_size=64, epochs=2, batch_size=8,
                     bptt=20, lr=3e-3, prune_frequency=2, rates=(10,), seeds=(0,)),
    "smoke": LMConfig("smoke", train_tokens=20_000, eval_tokens=10_000, epochs=1, rates=(10,), seeds=(0,)),
    "small": LMConfig("small", train_tokens=40_000, eval_tokens=20_000, epochs=2, prune_frequency=5, rates=(10, 50, 100),
                      seeds=(0, 1, 2)),
    # all of valid / test (the standard perplexities), a fifth of train: about 5 min per run on one CPU core
    "medium": LMConfig("medium", train_tokens=200_000, epochs=3, rates=(10, 50, 100), seeds=(0, 1, 2)),
    "full": LMConfig("full", epochs=15, dropout=0.3, lr=1e-3, prune_frequency=100, rates=PAPER_RATES, seeds=(0, 1, 2)),
}


class LSTMLanguageModel(nn.Module):
    """Embedding -> LSTM (any ``nn.LSTM``-compatible module, sequence-first) -> linear decoder."""

    def __init__(self, vocab_size: int, embed_dim: int, lstm: nn.Module, dropout: float = 0.0):
        super().__init__()
        # sparse gradients: SparseAdam updates only the rows a batch uses
        self.embedding = nn.Embedding(vocab_size, embed_dim, sparse=True)
        self.drop = nn.Dropout(dropout)
        self.lstm = lstm
        self.decoder = nn.Linear(lstm.hidden_size, vocab_size)
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)

    def forward(self, ids: torch.Tensor, state=None):
        emb = self.drop(self.embedding(ids))  # (T, B, E)
        out, state = self.lstm(emb, state)  # out (T, B, H); state: 2 x (layers, B, H)
        return self.decoder(self.drop(out)), state  # (T, B, V)


@dataclass
class LMData:
    vocab_size: int
    train: torch.Tensor  # (T, B) columns for training
    valid: torch.Tensor  # (T, B_eval)
    test: torch.Tensor
    sizes: dict


def prepare_data(cfg: LMConfig) -> LMData:
    from .data import batchify, load_ptb

    ptb = load_ptb()
    train = ptb.train[: cfg.train_tokens] if cfg.train_tokens else ptb.train
    valid = ptb.valid[: cfg.eval_tokens] if cfg.eval_tokens else ptb.valid
    test = ptb.test[: cfg.eval_tokens] if cfg.eval_tokens else ptb.test
    return LMData(
        len(ptb.vocab), batchify(train, cfg.batch_size), batchify(valid, cfg.eval_batch_size),
        batchify(test, cfg.eval_batch_size), {"train": train.numel(), "valid": valid.numel(), "test": test.numel()},
    )


def _detach(state):
    return None if state is None else tuple(s.detach() for s in state)


@torch.no_grad()
def perplexity(model: nn.Module, columns: torch.Tensor, bptt: int) -> float:
    """exp(mean cross-entropy) over every predicted token of ``columns`` (T, B)."""
    from .data import bptt_windows

    model.eval()
    total, count, state = 0.0, 0, None
    for x, y in bptt_windows(columns, bptt):
        logits, state = model(x, state)
        total += float(nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum"))
        count += y.numel()
    return math.exp(total / count)


def train_one(cfg: LMConfig, data: LMData, method: str, rate: float, seed: int, progress: bool = False,
              device: str = "cpu") -> dict:
    """Train one language model (method, rate, seed) on ``device`` and return its CSV row. The model
    is initialised on the CPU (same init on every device) and then moved."""
    from tqdm.auto import tqdm

    from .data import bptt_windows

    set_seed(seed)
    build = build_lstm(method, cfg.embed_dim, cfg.hidden_size, cfg.num_layers, rate, dropout=cfg.dropout, mpo_cores=cfg.mpo_cores,
                       mpo_hh_share=cfg.mpo_hh_share)
    model = LSTMLanguageModel(data.vocab_size, cfg.embed_dim, build.lstm, cfg.dropout).to(device)
    train, valid_columns, test_columns = (t.to(device) for t in (data.train, data.valid, data.test))
    steps_per_epoch = len(range(0, train.size(0) - 1, cfg.bptt))
    total = cfg.epochs * steps_per_epoch
    schedule = compression_schedule(build, total, cfg.prune_begin, cfg.prune_end, cfg.prune_frequency)  # pruning / mpo_gradual
    opts = make_optimizers(model, cfg.lr)  # Adam (dense) + SparseAdam (embedding)
    first_epoch = eligible_from_epoch(cfg.epochs, steps_per_epoch, cfg.prune_end)
    losses, train_s, infer_s = [], [], []
    best = (math.inf, math.inf, 0)  # (valid ppl, test ppl, epoch)
    step = 0
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        epoch_start = len(losses)
        state = None
        windows = bptt_windows(train, cfg.bptt)
        bar = tqdm(windows, total=steps_per_epoch, desc=f"{method} r{rate} s{seed} ep{epoch}", leave=False, disable=not progress, mininterval=2)
        with Timer() as t:
            for x, y in bar:
                logits, state = model(x, _detach(state))
                loss = nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())
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
                valid = perplexity(model, valid_columns, cfg.bptt)
            infer_s.append(t.seconds)
            test = perplexity(model, test_columns, cfg.bptt)
            if valid < best[0]:
                best = (valid, test, epoch)
        if not progress:
            log_epoch(f"{method} r{rate} s{seed}", epoch, cfg.epochs, losses[epoch_start:], train_s[-1], "perplexity", valid)
    check_schedule_finished(schedule)
    return run_record("lm", "perplexity", cfg, method, rate, seed, best, losses, model, build, train_s, infer_s)


def run_language_model(cfg: LMConfig, out_dir, *, progress: bool = True, resume: bool = False, command: str | None = None,
                       device: str = "cpu"):
    """Run the whole grid of ``cfg`` on ``device`` and write ``runs.csv``, ``results.md`` and the PNG plot to ``out_dir``."""
    return run_experiment("lm", cfg, out_dir, prepare_data, train_one, METRICS["lm"],
                          progress=progress, resume=resume, command=command, device=device)


def config_from_preset(preset: str, **overrides) -> LMConfig:
    """A preset with some fields replaced (``None`` values are ignored)."""
    return preset_config(PRESETS, preset, **overrides)
