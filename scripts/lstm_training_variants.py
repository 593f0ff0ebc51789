"""Training-dynamics probe for MPO-LSTM on Rotten Tomatoes: one run, one variant, per call.

Trains the classifier of :mod:`mpokit.recipes.lstm_classification` (the ``medium`` preset: all
sentences, batch 64, dropout 0.3, clip 5; ``--epochs`` of them) and prints, per epoch: the mean training
loss of each quarter of the epoch, the median and maximum gradient norm (before clipping), the spectral
norm of the hidden-to-hidden matrix U, and validation / test accuracy. The last line is
``RESULT {json}`` with the best validation accuracy among epochs >= 3 and its test accuracy.

Variants (all off by default, i.e. the experiment's own training):

* ``--warmup F``: linear learning-rate warm-up over the first fraction F of the steps;
* ``--decay linear|cosine``: learning-rate decay to 0 over training;
* ``--core-wd W``: decoupled weight decay (AdamW) on the MPO cores only;
* ``--core-mult M``: the cores' learning rate is M x ``--lr``;
* ``--n-cores N``: MPO cores per matrix (budget then follows the N-core MPO);
* ``--modes 4,4,4,4``: other hidden / input modes (the embedding size equals the hidden size here);
* ``--rate-ih A --rate-hh B``: W and U at their own rates (a split of the budget between them);
* ``--init spectral|spectral_rescaled``: the cores are the TT-SVD of a dense ``nn.LSTM`` init truncated
  to the rate (rescaled: to the dense matrix's Frobenius norm);
* ``--init gradual``: start from the exact (full-bond) MPO of a dense init and truncate the bonds every
  ``--cut-every`` steps (default 10, as pruning's masks) on Zhu & Gupta's cubic schedule over the first
  half of training, down to the rate's uniform bond (:class:`mpokit.bond_schedule.GradualBondTruncation`,
  the experiments' ``mpo_gradual`` method; the cores' Adam state restarts at each cut).

This is an exploration tool, not an experiment: one seed per call, no CSV. The runs quoted in
RESULTS.md (issue 6, "Why MPO-LSTM loses here") are, for seed S::

    python scripts/lstm_training_variants.py --lr 2e-3 --seed S                      # MPO-LSTM as in the experiment
    python scripts/lstm_training_variants.py --lr 3e-3 --method dense                # and --method pruning --lr 2e-3
    python scripts/lstm_training_variants.py --lr 3e-3 --decay linear --warmup 0.05
    python scripts/lstm_training_variants.py --lr 3e-3 --core-wd 0.1
    python scripts/lstm_training_variants.py --lr 2e-3 --core-mult 2
    python scripts/lstm_training_variants.py --lr 3e-3 --n-cores 3                   # and --n-cores 2 --lr 2e-3
    python scripts/lstm_training_variants.py --lr 2e-3 --init spectral_rescaled
    python scripts/lstm_training_variants.py --lr 2e-3 --init gradual
    python scripts/lstm_training_variants.py --lr 2e-3 --init gradual --epochs 10 --carry-state   # and --lr 1e-3
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
from torch import nn

from mpokit.recipes import lstm_classification as C
from mpokit.bond_schedule import GradualBondTruncation, hand_on_state
from mpokit.recipes.lstm_common import build_lstm, dense_parameters, set_seed
from mpokit.layers.lstm import MPOLSTM


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", default="mpo", choices=("dense", "mpo", "pruning"))
    p.add_argument("--rate", type=float, default=10)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--warmup", type=float, default=0.0, help="fraction of steps with a linear warm-up")
    p.add_argument("--decay", default="none", choices=("none", "linear", "cosine"))
    p.add_argument("--core-wd", type=float, default=0.0, help="AdamW weight decay of the MPO cores")
    p.add_argument("--core-mult", type=float, default=1.0, help="cores' learning rate / --lr")
    p.add_argument("--n-cores", type=int, default=4)
    p.add_argument("--rate-ih", type=float, default=None, help="W's own rate (with --rate-hh; random init): a W/U split")
    p.add_argument("--rate-hh", type=float, default=None, help="U's own rate (with --rate-ih)")
    p.add_argument("--modes", type=lambda v: tuple(int(x) for x in v.split(",")), default=None,
                   help="hidden and input modes of every MPO, e.g. 4,4,4,4 (default: lstm_modes, 8,2,2,8)")
    p.add_argument("--init", default="random", choices=("random", "spectral", "spectral_rescaled", "gradual"))
    p.add_argument("--clip", type=float, default=5.0)
    p.add_argument("--cut-every", type=int, default=10, help="--init gradual: steps between bond cuts")
    p.add_argument("--carry-state", action="store_true",
                   help="--init gradual: hand the cut cores' Adam state on (mpokit.bond_schedule.hand_on_state) "
                        "instead of restarting it")
    return p.parse_args(argv)


def build(a, cfg) -> tuple[nn.Module, object, dict | None]:
    """The LSTM of the variant, the experiment's build record, and the final bonds (``gradual`` only)."""
    record = build_lstm(a.method, cfg.embed_dim, cfg.hidden_size, 1, a.rate, batch_first=True)
    lstm = record.lstm
    if a.method != "mpo":
        return lstm, record, None
    if a.n_cores != 4 or a.modes or a.rate_ih:
        rates = dict(rate_ih=a.rate_ih, rate_hh=a.rate_hh) if a.rate_ih else dict(rate=a.rate)
        lstm = MPOLSTM(cfg.embed_dim, cfg.hidden_size, n_cores=a.n_cores, modes=a.modes, input_modes=a.modes,
                       batch_first=True, **rates)
    if a.init == "gradual":
        final_bonds = {n: m.bond_dims for n, m in lstm.weight_modules()}
        return MPOLSTM.from_lstm(nn.LSTM(cfg.embed_dim, cfg.hidden_size, batch_first=True), n_cores=a.n_cores), record, final_bonds
    if a.init.startswith("spectral"):
        dense = nn.LSTM(cfg.embed_dim, cfg.hidden_size, batch_first=True)
        lstm = MPOLSTM.from_lstm(dense, rate=a.rate, n_cores=a.n_cores)
        with torch.no_grad():
            for name, module in lstm.weight_modules():
                if a.init == "spectral_rescaled":
                    factor = float(getattr(dense, name).norm() / module.rebuild_weight().norm())
                    for core in module.cores:
                        core.mul_(factor ** (1 / len(module.cores)))
                print(name, "norm / dense norm", float(module.rebuild_weight().norm() / getattr(dense, name).norm()))
    return lstm, record, None


def lr_factor(a, step: int, total: int) -> float:
    f = 1.0
    warm = a.warmup * total
    if warm > 0 and step < warm:
        f = (step + 1) / warm
    if a.decay == "linear":
        f *= max(0.0, 1 - step / total)
    elif a.decay == "cosine":
        f *= 0.5 * (1 + math.cos(math.pi * step / total))
    return f


def main(argv=None) -> None:
    a = parse_args(argv)
    torch.set_num_threads(1)
    cfg = C.config_from_preset("medium", epochs=a.epochs)
    data = C.prepare_data(cfg)
    set_seed(a.seed)
    lstm, record, final_bonds = build(a, cfg)
    print("lstm weights", sum(q.numel() for q in lstm.parameters() if q.dim() >= 2), lstm, flush=True)
    model = C.LSTMClassifier(data.vocab_size, cfg.embed_dim, lstm, 2, cfg.dropout)
    ids, lengths, labels = data.train
    steps_per_epoch = -(-len(labels) // cfg.batch_size)
    total = a.epochs * steps_per_epoch
    pruner = None
    if a.method == "pruning":
        from mpokit.baselines.lstm_pruning import LSTMPruner

        pruner = LSTMPruner(model.lstm, final_nonzeros=record.pruner_nonzeros, begin_step=0, end_step=round(0.5 * total),
                            frequency=10)

    def cores() -> list[nn.Parameter]:
        return [q for q in model.lstm.parameters() if q.dim() == 4] if a.method == "mpo" else []

    core_ids = {id(q) for q in cores()}
    rest = [q for q in model.parameters() if id(q) not in core_ids and q is not model.embedding.weight]
    groups = [{"params": rest, "lr": a.lr, "weight_decay": 0.0}]
    if core_ids:
        groups.append({"params": cores(), "lr": a.lr * a.core_mult, "weight_decay": a.core_wd})
    opts = [torch.optim.AdamW(groups), torch.optim.SparseAdam([model.embedding.weight], lr=a.lr)]
    base_lrs = [[g["lr"] for g in o.param_groups] for o in opts]

    truncation = None
    if final_bonds:
        truncation = GradualBondTruncation(dict(model.lstm.weight_modules()), final_bonds, begin_step=0,
                                           end_step=round(0.5 * total), frequency=a.cut_every)

    def gradual_cut(step: int) -> None:
        """Cut on the cubic schedule; the new cores get fresh Adam state."""
        if truncation.step(step):
            group = opts[0].param_groups[1]
            if a.carry_state:
                hand_on_state(opts[0], truncation.replaced)
            for q in group["params"]:
                opts[0].state.pop(q, None)
            group["params"] = cores()

    order = torch.Generator().manual_seed(a.seed)
    step, best, t0 = 0, (-1.0, 0.0, 0), time.time()
    for epoch in range(1, a.epochs + 1):
        model.train()
        perm = torch.randperm(len(labels), generator=order)
        losses, norms = [], []
        for b in range(steps_per_epoch):
            idx = perm[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            for o, lrs in zip(opts, base_lrs):
                for g, lr in zip(o.param_groups, lrs):
                    g["lr"] = lr * lr_factor(a, step, total)
            loss = nn.functional.cross_entropy(model(ids[idx], lengths[idx]), labels[idx])
            for o in opts:
                o.zero_grad(set_to_none=True)
            loss.backward()
            norms.append(float(nn.utils.clip_grad_norm_(dense_parameters(model), a.clip)))
            for o in opts:
                o.step()
            if pruner:
                pruner.step(step)
            if final_bonds:
                gradual_cut(step + 1)
            losses.append(float(loss.detach()))
            step += 1
        with torch.no_grad():
            u = model.lstm.mpo_modules()[1].rebuild_weight() if a.method == "mpo" else model.lstm.weight_hh_l0
            u_norm = float(torch.linalg.matrix_norm(u, 2))
        valid, test = C.accuracy(model, data.validation), C.accuracy(model, data.test)
        if epoch >= 3 and valid > best[0]:
            best = (valid, test, epoch)
        q = len(losses) // 4
        quarters = [round(sum(losses[i * q : (i + 1) * q]) / q, 3) for i in range(4)]
        if final_bonds:
            print("bonds", [m.bond_dims for _, m in model.lstm.weight_modules()], model.lstm.num_weight_params())
        print(f"ep{epoch} loss quarters {quarters} gn med {sorted(norms)[len(norms) // 2]:.2f} max {max(norms):.1f} "
              f"|U|2 {u_norm:.2f} valid {valid:.2f} test {test:.2f} ({time.time() - t0:.0f}s)", flush=True)
    print("RESULT", json.dumps(dict(vars(a), valid=best[0], test=best[1], epoch=best[2])), flush=True)


if __name__ == "__main__":
    main()
