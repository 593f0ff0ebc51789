"""Decompose every weight matrix of a BERT-base-sized model: mpokit vs tensorly, same process.

Matrices (random float32 weights, std 0.02): 12 layers x (Q, K, V, O 768x768; FFN in 3072x768;
FFN out 768x3072) plus the 30522x768 word embedding (zero-padded to the product of its modes).
Both libraries get the same tensorised matrices and modes (mpokit.choose_modes, n=5) at full
rank: mpokit.MPO.from_matrix and tensorly.decomposition.tensor_train_matrix (pytorch backend).
Timed: the decomposition only. Error: ||W - rebuild||_F / ||W||_F per matrix, the worst one.

Targets on 2 CPU cores: whole model <= 10 s; not slower than tensorly; error <= tensorly's.

    python benchmarks/bench_decompose.py [--threads 1] [--layers 12] [--repeats 1]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time
from collections import defaultdict

import torch

from mpokit import MPO, choose_modes, full_bond_dims


def bert_base_matrices(layers: int, seed: int = 0) -> list[tuple[str, torch.Tensor]]:
    """(kind, W) with W (out_features, in_features), float32."""
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=gen) * 0.02  # noqa: E731
    mats = [("embedding 30522x768", rand(30522, 768))]
    for _ in range(layers):
        mats += [(f"attention {q} 768x768", rand(768, 768)) for q in "QKVO"]
        mats += [("ffn in 3072x768", rand(3072, 768)), ("ffn out 768x3072", rand(768, 3072))]
    return mats


def padded(w: torch.Tensor, out_modes, in_modes) -> torch.Tensor:
    rows, cols = math.prod(out_modes), math.prod(in_modes)
    return torch.nn.functional.pad(w, (0, cols - w.shape[1], 0, rows - w.shape[0]))


class Clock:
    """Wall-clock and CPU seconds of a block. On a shared, loaded machine the CPU time of a
    1-thread run is the better estimate of the time on an idle core."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def run_mpokit(w: torch.Tensor, out_modes, in_modes):
    with Clock() as seconds:
        mpo = MPO.from_matrix(w, out_modes=out_modes, in_modes=in_modes, pad=True)
    err = float((mpo.to_matrix().double() - w.double()).norm() / w.double().norm())
    return seconds, err, mpo.bond_dims


def run_tensorly(w: torch.Tensor, out_modes, in_modes):
    import tensorly as tl
    from tensorly.decomposition import tensor_train_matrix

    n = len(out_modes)
    ranks = [1, *full_bond_dims(out_modes, in_modes), 1]
    tensor = padded(w, out_modes, in_modes).reshape(*out_modes, *in_modes)  # (i_1..i_n, j_1..j_n)
    with Clock() as seconds:
        ttm = tensor_train_matrix(tensor, ranks)
    full = tl.tt_matrix.tt_matrix_to_tensor(ttm).reshape(math.prod(out_modes), math.prod(in_modes))
    rebuilt = full[: w.shape[0], : w.shape[1]]
    err = float((rebuilt.double() - w.double()).norm() / w.double().norm())
    bonds = tuple(int(f.shape[3]) for f in ttm.factors[: n - 1])
    return seconds, err, bonds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a shared, oversubscribed 2-core box 2 threads thrash)")
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=1, help="take the best of this many runs per library")
    args = parser.parse_args()

    import tensorly as tl

    tl.set_backend("pytorch")
    torch.set_num_threads(args.threads)
    mats = bert_base_matrices(args.layers)
    print(f"decomposing {len(mats)} matrices with mpokit, then with tensorly ...", flush=True)
    modes = {kind: choose_modes(w.shape[0], w.shape[1], 5) for kind, w in mats}
    # warm-up (LAPACK/threads initialisation) on a small matrix, both libraries
    small = torch.randn(64, 64)
    run_mpokit(small, (2, 2, 4, 2, 2), (2, 2, 4, 2, 2))
    run_tensorly(small, (2, 2, 4, 2, 2), (2, 2, 4, 2, 2))

    # best total over the repeats, per library and clock; per-kind rows from the best wall-clock run
    totals = {(lib, clock): math.inf for lib in ("mpokit", "tensorly") for clock in ("wall", "cpu")}
    per_kind: dict[str, dict[str, list[float]]] = {}
    worst = {"mpokit": 0.0, "tensorly": 0.0}
    for _ in range(args.repeats):
        for lib, fn in (("mpokit", run_mpokit), ("tensorly", run_tensorly)):
            kinds: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
            wall = cpu = 0.0
            for kind, w in mats:
                seconds, err, bonds = fn(w, *modes[kind])
                assert bonds == full_bond_dims(*modes[kind]), (lib, kind, bonds)
                row = kinds[kind.split(" ")[0] + " " + kind.split(" ")[-1]]
                row[0] += seconds.wall
                row[1] += seconds.cpu
                wall, cpu = wall + seconds.wall, cpu + seconds.cpu
                worst[lib] = max(worst[lib], err)
            if wall < totals[(lib, "wall")]:
                per_kind[lib] = kinds
            totals[(lib, "wall")] = min(totals[(lib, "wall")], wall)
            totals[(lib, "cpu")] = min(totals[(lib, "cpu")], cpu)

    n_params = sum(w.numel() for _, w in mats)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"machine: {platform.machine()} {os.cpu_count()} CPUs, load average {load:.1f}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; {len(mats)} matrices, {n_params / 1e6:.1f}M parameters, float32")
    print("modes (n=5):", "; ".join(f"{k}: {o}x{i}" for k, (o, i) in list(modes.items())[:1] + list(modes.items())[1:7:4]))
    print(f"{'matrices':<22}{'mpokit wall/cpu s':>20}{'tensorly wall/cpu s':>22}{'tensorly/mpokit':>17}")
    for kind in per_kind["mpokit"]:
        (a, a_cpu), (b, b_cpu) = per_kind["mpokit"][kind], per_kind["tensorly"][kind]
        print(f"{kind:<22}{a:>12.2f}/{a_cpu:<7.2f}{b:>14.2f}/{b_cpu:<7.2f}{b / a:>10.2f}")
    ratio = totals[("tensorly", "wall")] / totals[("mpokit", "wall")]
    ratio_cpu = totals[("tensorly", "cpu")] / totals[("mpokit", "cpu")]
    mp_wall, mp_cpu = totals[("mpokit", "wall")], totals[("mpokit", "cpu")]
    print(f"{'TOTAL':<22}{mp_wall:>12.2f}/{mp_cpu:<7.2f}{totals[('tensorly', 'wall')]:>14.2f}/"
          f"{totals[('tensorly', 'cpu')]:<7.2f}{ratio:>10.2f} (cpu {ratio_cpu:.2f})")
    print(f"max relative reconstruction error: mpokit {worst['mpokit']:.2e}, tensorly {worst['tensorly']:.2e}")
    best = min(mp_wall, mp_cpu) if torch.get_num_threads() == 1 else mp_wall
    print(f"targets: whole model <= 10 s: {'met' if best <= 10 else 'NOT met'} (wall {mp_wall:.2f} s, cpu {mp_cpu:.2f} s); "
          f"not slower than tensorly: {'met' if min(ratio, ratio_cpu) >= 1 else 'NOT met'} (x{ratio:.2f} wall, x{ratio_cpu:.2f} cpu); "
          f"error <= tensorly's: {'met' if worst['mpokit'] <= worst['tensorly'] else 'NOT met'}")

if __name__ == "__main__":
    main()
