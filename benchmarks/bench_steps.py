"""One sweep step of the contraction path: ``bmm`` over a broadcast core against ``torch.matmul``.

A contraction step computes ``out[b] = a @ state[b]`` for ``state (batch, k, rest)`` and a small core
matrix ``a (m, k)``. ``torch.matmul(a, state)`` may fold the batch into one big matmul, which copies
the state transposed and the result back; ``torch.bmm(a.expand(batch, m, k), state)`` runs a batch of
small matmuls without copies. ``mpokit.contract._step`` picks one by a rule
(``contract._batched_beats_folded``); this script times both, for inference (``no_grad``, core a
parameter) and for a training step (forward + backward), and prints the time ratio bmm / matmul and
whether the rule picked the faster one.

Every setting moves about 2M state elements (``batch = 2**21 // (k * rest)``), like a 768-wide layer at
2-3k tokens. Times are the minimum of ``--reps`` calls.

Usage: ``python benchmarks/bench_steps.py [--threads 1] [--reps 5]``
"""

from __future__ import annotations

import argparse
import time

import torch

from mpokit import contract

RESTS = (2, 3, 4, 6, 8, 12, 16, 32)
CORES = ((4, 8), (8, 12), (16, 32), (32, 16))  # (m, k) of the core matrix
STATE_ELEMENTS = 2**21


def _min_time(fn, reps: int) -> float:
    fn()
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def time_setting(m: int, k: int, rest: int, reps: int) -> dict:
    batch = max(1, STATE_ELEMENTS // (k * rest))
    a = torch.nn.Parameter(torch.randn(m, k))
    state = torch.randn(batch, k, rest)
    grad_out = torch.randn(batch, m, rest)
    row = {"m": m, "k": k, "rest": rest, "batch": batch}
    with torch.no_grad():
        row["fwd_matmul"] = _min_time(lambda: torch.matmul(a, state), reps)
        row["fwd_bmm"] = _min_time(lambda: torch.bmm(a.expand(batch, m, k), state), reps)
        row["fwd_rule_bmm"] = contract._batched_beats_folded(state, a, rest)
    state_g = state.clone().requires_grad_(True)
    row["train_matmul"] = _min_time(lambda: torch.matmul(a, state_g).backward(grad_out), reps)
    row["train_bmm"] = _min_time(lambda: torch.bmm(a.expand(batch, m, k), state_g).backward(grad_out), reps)
    row["train_rule_bmm"] = contract._batched_beats_folded(state_g, a, rest)
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); ratio = bmm time / matmul time (< 1: bmm faster)")
    print(f"{'m':>3} {'k':>3} {'rest':>4} {'batch':>7} | {'fwd ms':>7} {'ratio':>6} {'rule':>6} | {'train ms':>8} {'ratio':>6} {'rule':>6}")
    right = total = 0
    regret = []
    for rest in RESTS:
        for m, k in CORES:
            r = time_setting(m, k, rest, args.reps)
            cells = []
            for phase in ("fwd", "train"):
                ratio = r[f"{phase}_bmm"] / r[f"{phase}_matmul"]
                pick_bmm = r[f"{phase}_rule_bmm"]
                # training with m > rest: bmm's (batch, m, k) gradient transient exceeds the saved state,
                # so the rule keeps matmul for memory even where bmm is faster ('m' below, not counted)
                memory_bound = phase == "train" and m > rest and not pick_bmm
                ok = memory_bound or (ratio <= 1.0) == pick_bmm
                right, total = right + (ok and not memory_bound), total + (not memory_bound)
                chosen = r[f"{phase}_bmm"] if pick_bmm else r[f"{phase}_matmul"]
                if not memory_bound:
                    regret.append(chosen / min(r[f"{phase}_bmm"], r[f"{phase}_matmul"]))
                cells.append(f"{1e3 * r[f'{phase}_matmul']:>7.1f} {ratio:>6.2f} {('bmm' if pick_bmm else 'matmul') + ('m' if memory_bound else '' if ok else '!'):>6}")
            print(f"{m:>3} {k:>3} {rest:>4} {r['batch']:>7} | {cells[0]} | {cells[1]}")
    print(f"rule picked the faster implementation in {right}/{total} cases ('!': the slower; 'm': matmul kept for "
          f"memory, m > rest in training, not counted); "
          f"counted cases: worst chosen / best time {max(regret):.2f}, mean {sum(regret) / len(regret):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
