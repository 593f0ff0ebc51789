"""One sweep step of the contraction path: three implementations of ``out[b] = a @ state[b]``, timed.

A contraction step computes ``out[b] = a @ state[b]`` for ``state (batch, k, rest)`` and a core matrix
``a (m, k)``. Three ways to run it (``mpokit.contract._step``):

* ``matmul``: ``torch.matmul(a, state)``, which may fold the batch into one big matmul (copies of the
  state transposed and of the result back);
* ``bmm``: ``torch.bmm(a.expand(batch, m, k), state)``, a batch of small matmuls over a stride-0 view of
  the core, no copies;
* ``transposed``: ``state^T`` copied contiguous ``(batch, rest, k)``, times ``a^T`` (a view), and the
  ``(batch, rest, m)`` result returned as a transposed view: BLAS then runs a GEMM whose short side is
  ``rest`` on the left, which CPU kernels handle far better than a short right-hand side.

``mpokit.contract._step_kind`` picks one by a rule; this script times all three, for inference
(``no_grad``, core a parameter) and for a training step (forward + backward), and prints each time
over the fastest and which one the rule picked.

Two regimes: ``small`` core matrices (merged cores of a few modes, ``m, k <= 32``) at about 2M state
elements (``batch = 2**21 // (k * rest)``, like a 768-wide layer at 2-3k tokens), and ``large`` core
matrices (merged groups of SmolLM2-135M's 576/1536-wide layers, ``m * k`` of 28k-330k) at the batches
of a decode step (1) and of short prompts. Times are the minimum of ``--reps`` calls.

Usage: ``python benchmarks/bench_steps.py [--threads 1] [--reps 5] [--regimes small large]``
"""

from __future__ import annotations

import argparse
import time

import torch

from mpokit import contract

IMPLEMENTATIONS = ("matmul", "bmm", "transposed")
SMALL = {"rests": (2, 3, 4, 6, 8, 12, 16, 32), "cores": ((4, 8), (8, 12), (16, 32), (32, 16))}
LARGE = {"rests": (2, 3, 4, 8, 16), "cores": ((2304, 144), (192, 1728), (48, 2832), (576, 48)), "batches": (1, 16, 256)}
STATE_ELEMENTS = 2**21


def _min_time(fn, reps: int) -> float:
    fn()
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _run(kind: str, a: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
    batch, k, rest = state.shape
    return contract._step_as(kind, state, batch, k, rest, a)


def time_setting(m: int, k: int, rest: int, batch: int, reps: int) -> dict:
    a = torch.nn.Parameter(torch.randn(m, k))
    state = torch.randn(batch, k, rest)
    grad_out = torch.randn(batch, m, rest)
    row = {"m": m, "k": k, "rest": rest, "batch": batch}
    with torch.no_grad():
        for kind in IMPLEMENTATIONS:
            row[f"fwd_{kind}"] = _min_time(lambda: _run(kind, a, state), reps)
        row["fwd_rule"] = contract._step_kind(state, a, rest)
    state_g = state.clone().requires_grad_(True)
    for kind in IMPLEMENTATIONS:
        row[f"train_{kind}"] = _min_time(lambda: _run(kind, a, state_g).backward(grad_out), reps)
    row["train_rule"] = contract._step_kind(state_g, a, rest)
    return row


def settings(regimes) -> list[tuple[int, int, int, int]]:
    out = []
    if "small" in regimes:
        out += [(m, k, rest, max(1, STATE_ELEMENTS // (k * rest))) for rest in SMALL["rests"] for m, k in SMALL["cores"]]
    if "large" in regimes:
        out += [(m, k, rest, batch) for batch in LARGE["batches"] for rest in LARGE["rests"] for m, k in LARGE["cores"]]
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--regimes", nargs="+", choices=("small", "large"), default=["small", "large"])
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); per implementation: time / fastest "
          f"of the three (1.00 = fastest); rule: the one contract._step_kind picks ('!' when it is over 1.2)")
    head = " ".join(f"{k[:6]:>6}" for k in IMPLEMENTATIONS)
    print(f"{'m':>4} {'k':>4} {'rest':>4} {'batch':>7} | {'fwd ms':>8} {head} {'rule':>11} | {'train ms':>8} {head} {'rule':>11}")
    regret = {"fwd": [], "train": []}
    for m, k, rest, batch in settings(args.regimes):
        r = time_setting(m, k, rest, batch, args.reps)
        cells = []
        for phase in ("fwd", "train"):
            times = {kind: r[f"{phase}_{kind}"] for kind in IMPLEMENTATIONS}
            best = min(times.values())
            rule = r[f"{phase}_rule"]
            over = times[rule] / best
            regret[phase].append(over)
            ratios = " ".join(f"{times[kind] / best:>6.2f}" for kind in IMPLEMENTATIONS)
            cells.append(f"{1e3 * best:>8.3f} {ratios} {rule + ('!' if over > 1.2 else ''):>11}")
        print(f"{m:>4} {k:>4} {rest:>4} {batch:>7} | {cells[0]} | {cells[1]}")
    for phase, values in regret.items():
        print(f"{phase}: the rule's pick over the fastest: worst {max(values):.2f}, mean {sum(values) / len(values):.2f}, "
              f"within 1.2x in {sum(v <= 1.2 for v in values)}/{len(values)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
