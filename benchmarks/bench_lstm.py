"""MPOLSTM vs nn.LSTM: training-step (forward + backward) and forward time, in one run.

Settings: hidden 256 and 1024 (input size = hidden), sequence length 100,
batch 32, compression rates 1, 10 and 50 (dense / MPO parameters of W and U,
uniform bond per matrix chosen by ``bond_dim_for_rate``), float32.

Timing: the reference and the MPO layer are run alternately, ``reps`` times
each after a warm-up, and the median is reported (the machine is shared and
noisy). The training step is ``zero_grad; y = m(x); y.square().mean().backward()``;
the forward runs under ``torch.no_grad`` (MPO layers then reuse their cached
rebuilt weights). Next to the measured ratios, the cost model's prediction:
the predicted time ratio of MPOLSTM's chosen plan (:func:`mpokit.layers.lstm.lstm_cost`),
and the FLOPs of contracting W (all tokens) and U (per step) / dense. Two extra rows
(not in the issue) use fewer cores at rate 100, where contraction is cheap.

Usage: ``python benchmarks/bench_lstm.py [--quick] [--execution auto|fused|stepwise] [--threads N] [--device cpu|cuda]``.
On CUDA every timer synchronises the device (the cost model's plan is the CPU one; ``--execution
fused`` pins MPOLSTM to the fused kernel, cuDNN's there).
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


def _sync(x: torch.Tensor) -> None:
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)


def _train_step(module: nn.Module, x: torch.Tensor) -> float:
    module.zero_grad(set_to_none=True)
    _sync(x)
    start = time.perf_counter()
    y, _ = module(x)
    y.square().mean().backward()
    _sync(x)
    return time.perf_counter() - start


def _forward(module: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        _sync(x)
        start = time.perf_counter()
        module(x)
        _sync(x)
        return time.perf_counter() - start


def _alternate(fn, a: nn.Module, b: nn.Module, x: torch.Tensor, reps: int) -> tuple[float, float]:
    fn(a, x), fn(b, x)  # warm-up (allocator, caches, oneDNN primitives)
    ta, tb = [], []
    for _ in range(reps):
        ta.append(fn(a, x))
        tb.append(fn(b, x))
    return statistics.median(ta), statistics.median(tb)


def _plan_name(plan: dict) -> str:
    if plan["execution"] == "fused":
        return "fused"
    return f"step W:{plan['ih'][0]} U:{plan['hh'][0]}"  # r = rebuild, c = contract


def bench_setting(
    hidden: int, rate: float, reps: int = 3, execution: str = "auto", n_cores: int = 4, seed: int = 0, device: str = "cpu"
) -> dict:
    """Time one setting; returns a row with seconds, ratios and the cost model's numbers."""
    torch.manual_seed(seed)
    ref = nn.LSTM(hidden, hidden, device=device)
    mpo = MPOLSTM(hidden, hidden, rate=rate, n_cores=n_cores, execution=execution, device=device)
    x = torch.randn(SEQ_LEN, BATCH, hidden, device=device)
    ref_train, mpo_train = _alternate(_train_step, ref, mpo, x, reps)
    ref_fwd, mpo_fwd = _alternate(_forward, ref, mpo, x, reps)
    tokens = SEQ_LEN * BATCH
    plan_train = mpo.plan(tokens, BATCH, SEQ_LEN)
    with torch.no_grad():
        plan_fwd = mpo.plan(tokens, BATCH, SEQ_LEN)
    cost_train = lstm_cost(mpo, steps=SEQ_LEN, batch=BATCH, training=True)
    cost_fwd = lstm_cost(mpo, steps=SEQ_LEN, batch=BATCH, training=False)
    return {
        "hidden": hidden,
        "rate": rate,
        "n_cores": n_cores,
        "measured_rate": mpo.compression_rate,
        "bonds": sorted({m.bond_dims for m in mpo.mpo_modules()}),
        "plan_train": plan_train,
        "plan_fwd": plan_fwd,
        "ref_train_s": ref_train,
        "mpo_train_s": mpo_train,
        "train_ratio": mpo_train / ref_train,
        "ref_fwd_s": ref_fwd,
        "mpo_fwd_s": mpo_fwd,
        "fwd_ratio": mpo_fwd / ref_fwd,
        "model_train_ratio": cost_train[plan_train["execution"]] / cost_train["dense"],
        "model_fwd_ratio": cost_fwd[plan_fwd["execution"]] / cost_fwd["dense"],
        "flops_contract_ih_vs_dense": cost_train["contract_flops_ih"] / cost_train["dense_flops_ih"],
        "flops_contract_hh_vs_dense": cost_train["contract_flops_hh"] / cost_train["dense_flops_hh"],
    }


# Beyond the settings: fewer cores at rate 100, where contraction needs far fewer
# FLOPs than dense and hidden 1024's U (16 MB) no longer stays in cache between steps.
CONTRACTION_SETTINGS = ((1024, 100, 3), (1024, 100, 2))


def run(quick: bool = False, execution: str = "auto", reps: int | None = None, device: str = "cpu") -> list[dict]:
    """Run all settings (``quick``: hidden 256 only, 2 repetitions) and print one table; returns the rows."""
    settings = [(h, r, 4) for h in (HIDDEN_SIZES[:1] if quick else HIDDEN_SIZES) for r in RATES]
    if not quick:
        settings += list(CONTRACTION_SETTINGS)
    reps = reps if reps is not None else (2 if quick else 3)
    print(
        f"MPOLSTM vs nn.LSTM, seq {SEQ_LEN}, batch {BATCH}, float32, device {device}, {torch.get_num_threads()} thread(s), "
        f"execution={execution!r}, median of {reps}"
    )
    print(
        f"{'hidden':>6} {'rate':>4} {'n':>2} {'real':>6} | {'plan train':>12} {'ref s':>7} {'mpo s':>7} {'ratio':>5} "
        f"{'model':>5} | {'plan fwd':>12} {'ref s':>7} {'mpo s':>7} {'ratio':>5} {'model':>5} | {'W ctr':>5} {'U ctr':>5}"
    )
    rows = []
    for hidden, rate, n_cores in settings:
        r = bench_setting(hidden, rate, reps=reps, execution=execution, n_cores=n_cores, device=device)
        rows.append(r)
        print(
            f"{hidden:>6} {rate:>4} {n_cores:>2} {r['measured_rate']:>6.2f} | {_plan_name(r['plan_train']):>12} "
            f"{r['ref_train_s']:>7.3f} {r['mpo_train_s']:>7.3f} {r['train_ratio']:>5.2f} {r['model_train_ratio']:>5.2f} | "
            f"{_plan_name(r['plan_fwd']):>12} {r['ref_fwd_s']:>7.3f} {r['mpo_fwd_s']:>7.3f} {r['fwd_ratio']:>5.2f} "
            f"{r['model_fwd_ratio']:>5.2f} | {r['flops_contract_ih_vs_dense']:>5.2f} {r['flops_contract_hh_vs_dense']:>5.2f}",
            flush=True,
        )
    print(
        "ratio = MPOLSTM / nn.LSTM time (below 1: faster); model = the cost model's prediction of that ratio for the\n"
        "chosen plan (lstm_cost: FLOPs + memory traffic); W ctr / U ctr = FLOPs of contracting W (all tokens at once)\n"
        "and U (per step) / dense FLOPs. n = cores per MPO (4: the paper's (8,2,2,8)-style modes)."
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="hidden 256 only, 2 repetitions")
    parser.add_argument("--execution", default="auto", choices=("auto", "fused", "stepwise"))
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions per setting (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: unchanged)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    run(quick=args.quick, execution=args.execution, reps=args.reps, device=args.device)


if __name__ == "__main__":
    main()
