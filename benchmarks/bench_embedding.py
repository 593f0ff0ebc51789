"""MPOEmbedding against nn.Embedding: lookup time, training-step time and memory, side by side.

For BERT-sized vocabularies (30522 rows, zero-padded to the MPO's mode product) and widths 384
(all-MiniLM-L6-v2) and 768 (BERT-base), at bond caps giving about 1x, 4x and 16x fewer parameters,
with batches of 512 and 8192 token ids drawn from a Zipf(1.1) law over the vocabulary (text reuses
frequent ids, so a batch has far fewer distinct ids than tokens).

Columns (ratios are MPOEmbedding / nn.Embedding, measured alternately in one process; < 1 is faster
or smaller):
- ``uniq``: distinct ids in the batch; ``path``: what the automatic path does in training
  (``rows``: only the distinct rows are built from the two merged MPO halves; ``rebuild``: the table);
- ``fwd``: inference (eval, no grad: MPOEmbedding reads its cached table, so this is the lookup itself);
- ``f+b``: a training step ``emb(ids).square().mean().backward()``; nn.Embedding with a dense gradient
  (its default), so its step writes a full table-sized gradient;
- ``rows``/``rebuild``: the same training step with the path forced;
- ``mem``: peak memory of the training step incl. parameters and gradients, measured after the
  timings in a child process with glibc's mmap threshold pinned (as in bench_layers.py).

    python benchmarks/bench_embedding.py --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
from torch import nn
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_layers import alternate, fmt, memory_in_subprocess, peak_step_bytes, print_header  # noqa: E402  (shared measurement helpers)

from mpokit.layers import MPOEmbedding  # noqa: E402
from mpokit.shapes import choose_modes, consistent_bond_dims, full_bond_dims, mpo_num_params  # noqa: E402

VOCAB = 30522


def zipf_ids(n: int, vocab: int, generator: torch.Generator, exponent: float = 1.1) -> torch.Tensor:
    """``n`` ids with P(rank r) ~ r^-exponent, ranks shuffled over the vocabulary (fixed by ``generator``)."""
    weights = torch.arange(1, vocab + 1, dtype=torch.float64).pow(-exponent)
    ranks = torch.multinomial(weights, n, replacement=True, generator=generator)
    return torch.randperm(vocab, generator=generator)[ranks]


def cap_for_reduction(num: int, dim: int, reduction: float) -> int:
    """The uniform bond cap whose MPO (default modes, 5 cores) has about ``num * dim / reduction`` parameters."""
    out_modes, in_modes = choose_modes(num, dim, 5)
    full = full_bond_dims(out_modes, in_modes)

    def fewer(cap: int) -> float:
        dims = consistent_bond_dims(out_modes, in_modes, [cap] * len(full))
        return num * dim / mpo_num_params(out_modes, in_modes, dims)

    return min(range(1, max(full) + 1), key=lambda cap: abs(fewer(cap) - reduction))


def _fwd(module, ids, device):
    start = time.perf_counter()
    with torch.no_grad():
        module(ids)
    return time.perf_counter() - start


def _train(module, ids, device):
    module.zero_grad(set_to_none=True)
    start = time.perf_counter()
    module(ids).square().mean().backward()
    return time.perf_counter() - start


def _train_mem(module, ids) -> int:
    return peak_step_bytes(module, lambda: module(ids).square().mean().backward(), torch.device("cpu"))


def _setting(dim: int, tokens: int, reduction: float):
    gen = torch.Generator().manual_seed(0)
    ids = zipf_ids(tokens, VOCAB, gen)
    cap = cap_for_reduction(VOCAB, dim, reduction)
    return ids, cap, MPOEmbedding(VOCAB, dim, bond_dim=cap, n_cores=5), nn.Embedding(VOCAB, dim)


def bench(dim: int, tokens: int, reduction: float, reps: int) -> dict:
    """Time ratios of one setting (memory: :func:`memory`, run after all timings)."""
    ids, cap, mpo, dense = _setting(dim, tokens, reduction)
    unique = int(torch.unique(ids).numel())
    row = {"dim": dim, "tokens": tokens, "uniq": unique, "cap": cap, "fewer": VOCAB * dim / mpo.num_mpo_params,
           "path": mpo.resolved_path(unique, grad_needed=True)}
    mpo.eval(), dense.eval()
    (t_d, _), (t_m, _) = alternate(_fwd, [dense, mpo], ids, None, reps)
    row["fwd"] = t_m / t_d
    (t_d, _), (t_m, _) = alternate(_train, [dense, mpo], ids, None, reps)
    row["f+b"], row["dense_train_ms"] = t_m / t_d, 1e3 * t_d
    for path in ("rows", "rebuild"):
        mpo.path = path
        (t_d, _), (t_m, _) = alternate(_train, [dense, mpo], ids, None, reps)
        row[path] = t_m / t_d
    return row


def memory(dim: int, tokens: int, reduction: float) -> float:
    """Peak training-step memory of MPOEmbedding over nn.Embedding's (fresh modules, after a warm-up step)."""
    ids, _, mpo, dense = _setting(dim, tokens, reduction)
    for module in (dense, mpo):
        _train(module, ids, None)
    return _train_mem(mpo, ids) / _train_mem(dense, ids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="width 384, 512 tokens only")
    parser.add_argument("--memory-of", default=None, help=argparse.SUPPRESS)  # internal: the memory phase (JSON settings)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_of is not None:
        print(json.dumps([memory(*setting) for setting in tqdm(json.loads(args.memory_of), desc="memory", file=sys.stderr)]))
        return
    print_header()
    dims, token_counts = ((384,), (512,)) if args.quick else ((384, 768), (512, 8192))
    settings = [(dim, tokens, reduction) for dim in dims for tokens in token_counts for reduction in (1, 4, 16)]
    rows = [bench(*setting, args.reps) for setting in tqdm(settings, desc="timing", unit="setting", file=sys.stderr)]
    mems = memory_in_subprocess(os.path.abspath(__file__), settings)  # fresh process, glibc mmap threshold pinned
    for r, m in zip(rows, mems):
        r["mem"] = m
    print(f"{'vocab x dim':>12} {'tok':>5} {'uniq':>5} {'cap':>4} {'fewer':>6} {'path':>8} | "
          f"{'fwd':>6} {'f+b':>6} {'rows':>6} {'rebld':>6} {'mem':>6} | dense f+b ms")
    for r in rows:
        print(f"{VOCAB:>6} x {r['dim']:<3} {r['tokens']:>5} {r['uniq']:>5} {r['cap']:>4} {r['fewer']:>6.1f} {r['path']:>8} | "
              f"{fmt(r['fwd'])} {fmt(r['f+b'])} {fmt(r['rows'])} {fmt(r['rebuild'])} {fmt(r['mem'])} | "
              f"{r['dense_train_ms']:.1f}", flush=True)


if __name__ == "__main__":
    main()
