"""MPOLSTM vs nn.LSTM: training-step (forward + backward) and forward time, in one run.

Settings: hidden 256 and 1024 (input size = hidden), sequence length 100,
batch 32, compression rates 1, 10 and 50 (dense / MPO parameters of W and U,
uniform bond per matrix chosen by ``bond_dim_for_rate``), float32.

Timing: the reference and the MPO layer are run alternately, ``reps`` times
each after a warm-up, and the median is reported (the machine is shared and
noisy). The training step is ``zero_grad; y = m(x); y.square().mean().backward()``;
the forward runs under ``torch.no_grad`` (MPO layers then reuse their cached
rebuilt weights). Next to the measured ratios, the cost model's prediction:
FLOPs of MPOLSTM's chosen plan / FLOPs of the dense LSTM's matmuls, and the
best contraction order's FLOPs for W (all tokens) and U (per step) / dense.

Usage: ``python benchmarks/bench_lstm.py [--quick] [--execution auto|fused|stepwise] [--threads N]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from mpokit.layers.lstm import MPOLSTM, lstm_cost

SEQ_LEN, BATCH = 100, 32
HIDDEN_SIZES = (256, 1024)
RATES = (1, 10, 50)


def _train_step(module: nn.Module, x: torch.Tensor) -> float:
    module.zero_grad(set_to_none=True)
    start = time.perf_counter()
    y, _ = module(x)
    y.square().mean().backward()
    return time.perf_counter() - start


def _forward(module: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        start = time.perf_counter()
        module(x)
        return time.perf_counter() - start


def _alternate(fn, a: nn.Module, b: nn.Module, x: torch.Tensor, reps: int) -> tuple[float, float]:
    fn(a, x), fn(b, x)  # warm-up (allocator, caches, oneDNN primitives)
    ta, tb = [], []
    for _ in range(reps):
        ta.append(fn(a, x))
        tb.append(fn(b, x))
    return statistics.median(ta), statistics.median(tb)


def bench_setting(hidden: int, rate: float, reps: int = 3, execution: str = "auto", seed: int = 0) -> dict:
    """Time one setting; returns a row with seconds, ratios and the cost model's numbers."""
    torch.manual_seed(seed)
    ref = nn.LSTM(hidden, hidden)
    mpo = MPOLSTM(hidden, hidden, rate=rate, execution=execution)
    x = torch.randn(SEQ_LEN, BATCH, hidden)
    ref_train, mpo_train = _alternate(_train_step, ref, mpo, x, reps)
    ref_fwd, mpo_fwd = _alternate(_forward, ref, mpo, x, reps)
    cost = lstm_cost(mpo, steps=SEQ_LEN, batch=BATCH, training=True)
    plan = mpo.plan(SEQ_LEN * BATCH, BATCH, SEQ_LEN)
    return {
        "hidden": hidden,
        "rate": rate,
        "measured_rate": mpo.compression_rate,
        "bonds": sorted({m.bond_dims for m in mpo.mpo_modules()}),
        "plan": plan,
        "ref_train_s": ref_train,
        "mpo_train_s": mpo_train,
        "train_ratio": mpo_train / ref_train,
        "ref_fwd_s": ref_fwd,
        "mpo_fwd_s": mpo_fwd,
        "fwd_ratio": mpo_fwd / ref_fwd,
        "model_chosen_vs_dense": cost[plan["execution"]] / cost["dense"],
        "model_fused_vs_dense": cost["fused"] / cost["dense"],
        "model_contract_ih_vs_dense": cost["ih_contract"] / cost["dense_ih"],
        "model_contract_hh_vs_dense": cost["hh_contract"] / cost["dense_hh"],
        "flops_contract_ih_vs_dense": cost["contract_flops_ih"] / cost["dense_flops_ih"],
        "flops_contract_hh_vs_dense": cost["contract_flops_hh"] / cost["dense_flops_hh"],
    }


def run(quick: bool = False, execution: str = "auto", reps: int | None = None) -> list[dict]:
    """Run all settings (``quick``: hidden 256 only, 2 repetitions) and print one table; returns the rows."""
    hidden_sizes = HIDDEN_SIZES[:1] if quick else HIDDEN_SIZES
    reps = reps if reps is not None else (2 if quick else 3)
    print(
        f"MPOLSTM vs nn.LSTM, seq {SEQ_LEN}, batch {BATCH}, float32, {torch.get_num_threads()} thread(s), "
        f"execution={execution!r}, median of {reps}"
    )
    header = (
        f"{'hidden':>6} {'rate':>4} {'real':>6} {'plan':>26} | {'train ref':>9} {'train mpo':>9} {'ratio':>6} | "
        f"{'fwd ref':>8} {'fwd mpo':>8} {'ratio':>6} | {'model':>6} {'W ctr':>6} {'U ctr':>6}"
    )
    print(header)
    rows = []
    for hidden in hidden_sizes:
        for rate in RATES:
            r = bench_setting(hidden, rate, reps=reps, execution=execution)
            rows.append(r)
            p = r["plan"]
            plan = p["execution"] if p["execution"] == "fused" else f"stepwise W:{p['ih']} U:{p['hh']}"
            print(
                f"{hidden:>6} {rate:>4} {r['measured_rate']:>6.2f} {plan:>26} | {r['ref_train_s']:>9.4f} "
                f"{r['mpo_train_s']:>9.4f} {r['train_ratio']:>6.2f} | {r['ref_fwd_s']:>8.4f} {r['mpo_fwd_s']:>8.4f} "
                f"{r['fwd_ratio']:>6.2f} | {r['model_chosen_vs_dense']:>6.2f} {r['model_contract_ih_vs_dense']:>6.2f} "
                f"{r['model_contract_hh_vs_dense']:>6.2f}",
                flush=True,
            )
    print(
        "ratio = MPOLSTM / nn.LSTM time (below 1: faster). model = cost model FLOPs of the chosen plan / dense "
        "LSTM matmul FLOPs; W ctr / U ctr = best contraction order's FLOPs / dense for W (all tokens) and U (per step)."
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="hidden 256 only, 2 repetitions")
    parser.add_argument("--execution", default="auto", choices=("auto", "fused", "stepwise"))
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions per setting (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: unchanged)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    run(quick=args.quick, execution=args.execution, reps=args.reps)


if __name__ == "__main__":
    main()
