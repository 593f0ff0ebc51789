"""MPO-LSTM shapes and costs: modes, rate -> bond dimension, execution cost model.

Pure functions (no modules). Conventions: core ``k`` has shape
``(d_{k-1}, i_k, j_k, d_k)``; an LSTM matrix W ``(4H, X)`` or U ``(4H, H)``
has out modes ``gate_modes(hidden_modes)`` (first mode x 4: the gates i, f, g, o)
and in modes factoring X or H.
"""

from __future__ import annotations

import math
from typing import Sequence

from .. import shapes

__all__ = [
    "GATES",
    "lstm_modes",
    "gate_modes",
    "bond_dim_for_rate",
    "uniform_bond_dims",
    "lstm_cost",
    "STEP_OVERHEAD_PER_ELEMENT",
    "CONTRACT_PENALTY_IH",
    "CONTRACT_PENALTY_HH",
    "STEPWISE_MARGIN",
    "U_CACHE_ELEMENTS",
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
    max_rate = dense / smallest  # all bonds 1
    if rate > 1.1 * max_rate:
        raise ValueError(
            f"rate {rate} is unreachable for modes out {out_modes} x in {in_modes}: even bond 1 gives "
            f"{max_rate:.1f}x; use a rate <= {max_rate:.1f} or fewer, larger modes"
        )
    target = math.log(rate)
    best_d, best_gap = 1, math.inf
    for d in range(1, max_d + 1):
        params = shapes.mpo_num_params(out_modes, in_modes, uniform_bond_dims(out_modes, in_modes, d))
        gap = abs(math.log(dense / params) - target)
        if gap <= best_gap + 1e-12:
            best_d, best_gap = d, gap
    return best_d


# Calibration of the stepwise strategy against the fused kernel, from
# timings with forced paths on the 2-core CPU sandbox
# (hidden 256 and 1024, batch 32, 100 steps, forced paths; see BENCHMARKS.md):
#
# * the loop's extra cost per time step and (layer, direction), per element of the
#   (batch, hidden) state: ~10 elementwise ops launched from Python instead of
#   oneDNN's fused cell, forward and backward together (inference pays about the
#   same, as oneDNN's inference kernel is even leaner). In the FLOP-equivalents of
#   :func:`mpokit.contract.plan_apply` (~1e-11 s each on one core).
STEP_OVERHEAD_PER_ELEMENT = 5000.0
# * measured / estimated time of contraction sweeps (small inner dimensions,
#   permutation copies; the backward of a sweep is slower than 2x its forward):
#   for W over all tokens at once, and for U per step (batch rows), training / inference.
CONTRACT_PENALTY_IH = {True: 1.5, False: 1.2}
CONTRACT_PENALTY_HH = {True: 4.0, False: 1.2}
# The stepwise strategy is taken only when the model predicts at least this saving.
STEPWISE_MARGIN = 0.85
# A dense U of at most this many elements stays in cache across time steps, so its
# per-step products cost like one big matmul; a larger U is re-read from memory
# every step (hidden 1024: 4M elements, 16 MB), which is where contraction pays.
U_CACHE_ELEMENTS = 1 << 19


def _rebuild_plan(out_modes, in_modes, dims, tokens: int):
    """:mod:`mpokit.contract`'s plan that merges all cores (rebuilds W) and runs one matmul."""
    from .. import contract

    plans = contract._all_plans(tuple(out_modes), tuple(in_modes), tuple(dims), int(tokens))
    return next(p for p in plans if len(p.groups) == 1)


def _apply_cost(out_modes, in_modes, dims, tokens: int, path: str, cached: bool) -> float:
    """Estimated cost (FLOPs + memory traffic) of ``x W^T`` for ``tokens`` rows via ``path``."""
    from .. import contract

    if path == "rebuild":
        plan = _rebuild_plan(out_modes, in_modes, dims, tokens)
    else:
        # the 1.25 memory bound in training and inference alike: the LSTM plans were validated with it
        plan = contract.plan_apply(out_modes, in_modes, dims, tokens, contract_only=True, merged_cached=cached,
                                   memory_slack=contract.TRAINING_MEMORY_SLACK)
    return float(plan.estimated_cost(merged_cached=cached))


def lstm_cost(lstm, steps: int, batch: int, training: bool = True) -> dict:
    """Estimated cost of one call of an :class:`~mpokit.layers.lstm.MPOLSTM`, per strategy.

    Costs are :func:`mpokit.contract.plan_apply`'s estimates (FLOPs + ``ALPHA`` x
    elements moved); FLOPs alone are reported too. Per (layer, direction), with
    ``N = steps * batch`` tokens:

    * ``dense`` (``nn.LSTM``): ``x W^T`` as one N-token matmul; ``h U^T`` likewise when U
      fits in cache (``U_CACHE_ELEMENTS``), else ``steps`` matmuls of ``batch`` rows each
      re-reading U;
    * ``fused``: ``dense`` plus rebuilding W and U (:func:`mpokit.contract.rebuild`; free when
      not ``training``, as the rebuilt weights are then cached);
    * ``stepwise``: W contracted with all N tokens at once, or rebuilt + one matmul;
      U contracted per step (cores merged once per call, ``batch`` rows per step),
      or rebuilt + matmuls; the cheaper of each, contraction estimates scaled by
      the measured ``CONTRACT_PENALTY_*``, plus the loop's overhead
      (``STEP_OVERHEAD_PER_ELEMENT`` x batch x hidden per step).

    Training multiplies compute by 3 (backward ~ 2x forward). Returns totals
    ``dense``, ``fused``, ``stepwise``; the chosen stepwise paths ``path_ih``,
    ``path_hh``; and FLOP counts ``dense_flops_ih``, ``dense_flops_hh``,
    ``contract_flops_ih`` (N tokens), ``contract_flops_hh`` (``steps`` x ``batch`` tokens),
    ``rebuild_flops``.
    """
    from .. import contract

    tokens = steps * batch
    training = bool(training)
    factor = 3.0 if training else 1.0
    keys = ("dense_ih", "dense_hh", "rebuild", "ih_rebuild", "ih_contract", "hh_rebuild", "hh_contract")
    flop_keys = ("dense_flops_ih", "dense_flops_hh", "contract_flops_ih", "contract_flops_hh", "rebuild_flops")
    acc = {k: 0.0 for k in keys + flop_keys}
    for name, m in lstm.weight_modules():
        out_modes, in_modes, dims = m.out_modes, m.in_modes, m.bond_dims
        rows, cols = m.shape
        # rebuilding (contract.rebuild, cheapest merge tree); free when no gradient is needed,
        # as MPOModule.rebuild_weight then caches the weight
        plan = _rebuild_plan(out_modes, in_modes, dims, tokens)
        rebuild = plan.estimated_cost(merged_cached=False) - plan.estimated_cost(merged_cached=True)
        acc["rebuild"] += rebuild if training else 0.0
        acc["rebuild_flops"] += plan.merge_flops
        if name.startswith("weight_ih"):
            dense = _apply_cost(out_modes, in_modes, dims, tokens, "rebuild", cached=True)
            acc["dense_ih"] += dense
            acc["ih_rebuild"] += dense + rebuild
            acc["ih_contract"] += CONTRACT_PENALTY_IH[training] * _apply_cost(
                out_modes, in_modes, dims, tokens, "contract", cached=False
            )
            acc["dense_flops_ih"] += contract.dense_flops(rows, cols, tokens)
            acc["contract_flops_ih"] += contract.contraction_flops(out_modes, in_modes, dims, tokens)
        else:
            if rows * cols <= U_CACHE_ELEMENTS:
                dense = _apply_cost(out_modes, in_modes, dims, tokens, "rebuild", cached=True)
            else:
                dense = steps * _apply_cost(out_modes, in_modes, dims, batch, "rebuild", cached=True)
            merge = contract.plan_apply(out_modes, in_modes, dims, batch, contract_only=True, merged_cached=True,
                                        memory_slack=contract.TRAINING_MEMORY_SLACK)
            per_step = _apply_cost(out_modes, in_modes, dims, batch, "contract", cached=True)
            acc["dense_hh"] += dense
            acc["hh_rebuild"] += dense + rebuild
            acc["hh_contract"] += CONTRACT_PENALTY_HH[training] * (merge.merge_flops + steps * per_step)
            acc["dense_flops_hh"] += contract.dense_flops(rows, cols, tokens)
            acc["contract_flops_hh"] += steps * contract.contraction_flops(out_modes, in_modes, dims, batch)
    loops = steps * lstm.num_layers * lstm.num_directions
    overhead = loops * STEP_OVERHEAD_PER_ELEMENT * batch * lstm.hidden_size
    out = {k: v * factor for k, v in acc.items() if k in keys}
    out.update({k: acc[k] for k in flop_keys})
    out["dense"] = out["dense_ih"] + out["dense_hh"]
    out["fused"] = out["dense"] + out["rebuild"]
    out["path_ih"] = "contract" if out["ih_contract"] < out["ih_rebuild"] else "rebuild"
    out["path_hh"] = "contract" if out["hh_contract"] < out["hh_rebuild"] else "rebuild"
    out["overhead"] = overhead
    out["stepwise"] = min(out["ih_contract"], out["ih_rebuild"]) + min(out["hh_contract"], out["hh_rebuild"]) + overhead
    return out
