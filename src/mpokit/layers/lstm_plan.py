"""MPO-LSTM shapes and costs: modes, rate -> bond dimension, rebuild order, execution cost model.

Pure functions (no modules). Conventions: core ``k`` has shape
``(d_{k-1}, i_k, j_k, d_k)``; an LSTM matrix W ``(4H, X)`` or U ``(4H, H)``
has out modes ``gate_modes(hidden_modes)`` (first mode x 4: the gates i, f, g, o)
and in modes factoring X or H.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Sequence

import torch

from .. import shapes

__all__ = [
    "GATES",
    "lstm_modes",
    "gate_modes",
    "bond_dim_for_rate",
    "uniform_bond_dims",
    "rebuild_by_chain",
    "rebuild_by_chain_flops",
    "lstm_cost",
    "STEP_OVERHEAD_FLOPS",
    "CONTRACT_STEP_OVERHEAD_FLOPS",
]

GATES = 4  # i, f, g, o (nn.LSTM order)


def _exact_factors(size: int, n: int) -> tuple[int, ...]:
    """``n`` ascending factors whose product is exactly ``size`` (balanced when possible)."""
    f = shapes.factorize(size, n, max_padding=0.0)
    if math.prod(f) == size:
        return f
    return (1,) * (n - 1) + (size,)


def lstm_modes(size: int, n_cores: int = 4) -> tuple[int, ...]:
    """Default modes factoring ``size`` exactly, in the MPO-LSTM paper's "valley" order.

    With one uniform bond ``d``, an end core costs ``d * i j`` parameters but a
    middle core ``d^2 * i j``; so the middle modes are kept small (2 each when
    ``size`` allows) and the large modes go to the ends: 256 -> (8, 2, 2, 8)
    (the paper's factorisation), 1024 -> (16, 2, 2, 16), 300 -> (15, 2, 2, 5).
    """
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}; e.g. lstm_modes(256, 4) -> (8, 2, 2, 8)")
    if not isinstance(n_cores, int) or isinstance(n_cores, bool) or n_cores < 1:
        raise ValueError(f"n_cores must be a positive int, got {n_cores!r}; e.g. n_cores=4")
    if n_cores == 1:
        return (size,)
    middle = 2 ** (n_cores - 2)
    if n_cores >= 3 and size % middle == 0 and size // middle >= 4:
        small, large = _exact_factors(size // middle, 2)
        return (large, *([2] * (n_cores - 2)), small)
    desc = sorted(_exact_factors(size, n_cores), reverse=True)
    left, right = desc[0::2], desc[1::2]  # largest to the ends, smallest to the middle
    return tuple(left + right[::-1])


def gate_modes(hidden_modes: Sequence[int]) -> tuple[int, ...]:
    """Out modes of ``W`` and ``U``: the hidden modes with the first one multiplied by 4 (the gates)."""
    return (GATES * int(hidden_modes[0]), *(int(m) for m in hidden_modes[1:]))


def uniform_bond_dims(out_modes: Sequence[int], in_modes: Sequence[int], d: int) -> tuple[int, ...]:
    """Every bond ``min(d, its reachable maximum)`` (:func:`mpokit.shapes.consistent_bond_dims`)."""
    return shapes.consistent_bond_dims(out_modes, in_modes, [d] * (len(out_modes) - 1))


def bond_dim_for_rate(out_modes: Sequence[int], in_modes: Sequence[int], rate: float) -> int:
    """The uniform bond dimension ``d`` whose MPO has compression rate nearest ``rate``.

    Rate is the MPO-LSTM paper's: dense parameters / MPO parameters. Every bond
    is ``min(d, its reachable maximum)`` (:func:`mpokit.shapes.consistent_bond_dims`).
    "Nearest" is measured on a log scale; ties go to the larger ``d``. A rate
    below what full bonds give returns the full (exact) bond. Example: hidden
    256, out (32, 2, 2, 8) x in (8, 2, 2, 8), rate 10 -> 41.
    """
    out_modes, in_modes = shapes.validate_modes(out_modes, in_modes)
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not rate > 0 or not math.isfinite(rate):
        raise ValueError(f"rate must be a positive number (dense / compressed parameters), got {rate!r}; e.g. rate=10")
    dense = math.prod(out_modes) * math.prod(in_modes)
    max_d = max(shapes.full_bond_dims(out_modes, in_modes), default=1)
    smallest = shapes.mpo_num_params(out_modes, in_modes, uniform_bond_dims(out_modes, in_modes, 1))
    if dense / smallest < rate * (1 - 1e-9) and not math.isclose(dense / smallest, rate):
        # Accept the nearest only when within the log-distance of one step; otherwise it is unreachable.
        if math.log(rate / (dense / smallest)) > 0.1:
            raise ValueError(
                f"rate {rate} is unreachable for modes out {out_modes} x in {in_modes}: even bond 1 gives "
                f"{dense / smallest:.1f}x; use a rate <= {dense / smallest:.1f} or fewer, larger modes"
            )
    target = math.log(rate)
    best_d, best_gap = 1, math.inf
    for d in range(1, max_d + 1):
        params = shapes.mpo_num_params(out_modes, in_modes, uniform_bond_dims(out_modes, in_modes, d))
        gap = abs(math.log(dense / params) - target)
        if gap <= best_gap + 1e-12:
            best_d, best_gap = d, gap
    return best_d


@lru_cache(maxsize=256)
def _chain_splits(sizes: tuple[int, ...], dims: tuple[int, ...]) -> tuple[tuple, int]:
    """Matrix-chain dynamic programme over the cores; ``dims = (1, d_1, ..., d_{n-1}, 1)``, ``sizes[k] = i_k j_k``.

    Merging segments [a..m] and [m+1..b] is one matmul ``(d_a P_am, d_{m+1}) @ (d_{m+1}, P_mb d_{b+1})``
    costing ``2 d_a P_am d_{m+1} P_mb d_{b+1}`` FLOPs. Returns the split table and the total FLOPs.
    """
    n = len(sizes)
    prod = [[math.prod(sizes[a : b + 1]) for b in range(n)] for a in range(n)]
    cost = [[0] * n for _ in range(n)]
    split = [[0] * n for _ in range(n)]
    for length in range(2, n + 1):
        for a in range(n - length + 1):
            b = a + length - 1
            cost[a][b], split[a][b] = min(
                (cost[a][m] + cost[m + 1][b] + 2 * dims[a] * prod[a][m] * dims[m + 1] * prod[m + 1][b] * dims[b + 1], m)
                for m in range(a, b)
            )
    return tuple(tuple(row) for row in split), cost[0][n - 1]


def rebuild_by_chain_flops(out_modes: Sequence[int], in_modes: Sequence[int], bond_dims: Sequence[int]) -> int:
    """FLOPs of :func:`rebuild_by_chain` (the cheapest merge order)."""
    sizes = tuple(int(i) * int(j) for i, j in zip(out_modes, in_modes))
    return _chain_splits(sizes, (1, *(int(d) for d in bond_dims), 1))[1]


def rebuild_by_chain(cores: Sequence[torch.Tensor]) -> torch.Tensor:
    """Cores ``(d_{k-1}, i_k, j_k, d_k)`` -> ``W (prod i, prod j)``, same result as :func:`mpokit.rebuild_matrix`.

    Segments stay in interleaved order ``(d_a, i_a j_a ... i_b j_b, d_{b+1})``, so every merge is a plain
    matmul (no permutation) and the merge order is the cheapest (:func:`_chain_splits`); one permutation
    to ``(i_1..i_n, j_1..j_n)`` at the end. 20-70% faster than the left-to-right sweep, forward + backward.
    """
    n = len(cores)
    out_modes = [int(c.shape[1]) for c in cores]
    in_modes = [int(c.shape[2]) for c in cores]
    dims = (1, *(int(c.shape[3]) for c in cores))
    sizes = tuple(i * j for i, j in zip(out_modes, in_modes))
    split, _ = _chain_splits(sizes, dims)

    def segment(a: int, b: int) -> torch.Tensor:  # (d_a, prod_{a..b} i_k j_k, d_{b+1})
        if a == b:
            return cores[a].reshape(dims[a], sizes[a], dims[a + 1])
        m = split[a][b]
        left, right = segment(a, m), segment(m + 1, b)
        merged = left.reshape(-1, left.shape[2]) @ right.reshape(right.shape[0], -1)
        return merged.reshape(dims[a], left.shape[1] * right.shape[1], dims[b + 1])

    interleaved = segment(0, n - 1).reshape([m for pair in zip(out_modes, in_modes) for m in pair])
    order = [2 * k for k in range(n)] + [2 * k + 1 for k in range(n)]
    return interleaved.permute(order).reshape(math.prod(out_modes), math.prod(in_modes))


# Per time step and per (layer, direction), the stepwise loop issues ~10 small
# tensor ops from Python (plus their backward); in FLOP-equivalents on a CPU
# core (~120 GFLOP/s measured for the dense matmuls, ~140 us per step forward). Calibrated with
# benchmarks/bench_lstm.py (stepwise with both paths "rebuild" vs fused).
STEP_OVERHEAD_FLOPS = 1.5e7
CONTRACT_STEP_OVERHEAD_FLOPS = 8e6  # extra per step when U is contracted (4 einsums + reshapes)


def lstm_cost(lstm: "MPOLSTM", steps: int, batch: int, training: bool = True) -> dict:
    """FLOP cost model of one call (2 * multiply-adds; see :mod:`mpokit.contract`).

    Per (layer, direction), with ``N = steps * batch`` tokens:

    * dense LSTM: ``x W^T`` over N tokens + ``h U^T`` over N tokens;
    * ``fused``: the same plus rebuilding W and U (:func:`rebuild_by_chain`'s FLOPs);
    * ``stepwise``: W either contracted with all N tokens at once or rebuilt + one
      matmul; U either contracted per step (``steps`` x ``batch`` tokens) or
      rebuilt + matmul; the cheaper of each, plus a per-step overhead for the
      Python loop.

    Training multiplies matmul and contraction FLOPs alike (backward ~ 2x forward), so
    it does not change the comparison; it is accepted for the overhead terms.
    Returns totals ``dense``, ``fused``, ``stepwise``, per-kind ``dense_ih``,
    ``dense_hh``, ``contract_ih``, ``contract_hh``, ``rebuild_ih``, ``rebuild_hh``
    and the chosen stepwise paths ``path_ih``, ``path_hh``.
    """
    from .. import contract

    tokens = steps * batch
    factor = 3 if training else 1
    acc = {k: 0.0 for k in ("dense_ih", "dense_hh", "contract_ih", "contract_hh", "rebuild_ih", "rebuild_hh")}
    for name, m in lstm.weight_modules():
        kind = "ih" if name.startswith("weight_ih") else "hh"
        out_modes, in_modes, dims = m.out_modes, m.in_modes, m.bond_dims
        rows, cols = m.shape
        acc[f"dense_{kind}"] += contract.dense_flops(rows, cols, tokens)
        acc[f"rebuild_{kind}"] += rebuild_by_chain_flops(out_modes, in_modes, dims)
        if kind == "ih":
            acc["contract_ih"] += contract.contraction_flops(out_modes, in_modes, dims, tokens)
        else:
            acc["contract_hh"] += steps * contract.contraction_flops(out_modes, in_modes, dims, batch)
    loops = steps * lstm.num_layers * lstm.num_directions
    out = {k: v * factor for k, v in acc.items()}
    out["dense"] = out["dense_ih"] + out["dense_hh"]
    out["fused"] = out["dense"] + out["rebuild_ih"] + out["rebuild_hh"]
    ih_rebuild = out["dense_ih"] + out["rebuild_ih"]
    hh_rebuild = out["dense_hh"] + out["rebuild_hh"]
    hh_contract = out["contract_hh"] + loops * CONTRACT_STEP_OVERHEAD_FLOPS * factor
    out["path_ih"] = "contract" if out["contract_ih"] < ih_rebuild else "rebuild"
    out["path_hh"] = "contract" if hh_contract < hh_rebuild else "rebuild"
    out["stepwise"] = (
        min(out["contract_ih"], ih_rebuild) + min(hh_contract, hh_rebuild) + loops * STEP_OVERHEAD_FLOPS * factor
    )
    return out
