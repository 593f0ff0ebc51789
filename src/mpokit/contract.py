"""Cost model and execution paths for applying an MPO to activations.

Conventions: core ``k`` has shape ``(d_{k-1}, i_k, j_k, d_k)``, ``d_0 = d_n = 1``;
``W`` is ``(I, J) = (prod i_k, prod j_k)`` (padded sizes); ``y = x W^T``, so
``x`` is ``(tokens, J)`` and ``y`` is ``(tokens, I)``.

Two ways to compute ``y``:

* ``"rebuild"``: contract the cores into ``W`` (:func:`mpokit.rebuild_matrix`,
  independent of the token count), then one dense matmul.
* ``"contract"``: contract ``x`` with the cores one at a time, never forming
  ``W``. An *order* is a string over ``{"L", "R"}`` of length ``n``: ``"L"``
  takes the next core from the left end, ``"R"`` the next from the right end.
  ``"LLLLL"`` is the left-to-right sweep, ``"RRRRR"`` right-to-left, and mixed
  orders meet somewhere in between (the state then carries two open bonds).
  :func:`order_cost` prices any order; plans use the two pure sweeps (below).

Grouping. Sweeping over many small cores runs tiny, memory-bound matmuls.
A *plan* therefore first merges runs of adjacent cores into bigger cores
(token-independent cost, like a partial rebuild), then sweeps over the merged
cores. Merging everything into one core *is* the rebuild path; no merging is
the plain core-by-core sweep. All ``2^(n-1)`` groupings times all orders over
the groups are enumerated (left-to-right and right-to-left sweeps, which run without
copying the state: 31 plans for n = 5), and plans are ranked by an
estimated time ``flops + ALPHA * elements_moved`` (CPU matmuls with small
inner dimensions are limited by memory traffic, not FLOPs).

FLOPs are counted as ``2 * multiply-adds`` (the convention of
``torch.utils.flop_counter``). Memory is counted in tensor elements.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple, Sequence

import torch

__all__ = [
    "ContractionPlan",
    "ApplyPlan",
    "plan_apply",
    "merge_cores",
    "rebuild",
    "rebuild_into",
    "merge_halves",
    "join_halves_into",
    "merge_groups",
    "sweep",
    "prepare_sweep",
    "run_sweep",
    "PreparedSweep",
    "contraction_flops",
    "rebuild_flops",
    "dense_flops",
    "order_cost",
    "choose_path",
    "mpo_apply",
    "PATHS",
]

PATHS = ("rebuild", "contract")


@dataclass(frozen=True)
class ContractionPlan:
    """The cost of one contraction order.

    Attributes:
        order: ``"L"``/``"R"`` string, one letter per core.
        flops: ``2 * multiply-adds`` of all steps.
        peak_elements: largest ``input + output`` of a single step (inference peak, excluding ``x``'s owner).
        saved_elements: sum of the step inputs after the first, i.e. the intermediates autograd keeps for backward.
        moved_elements: elements of the state read and written by the steps (pure orders run copy-free).
        core_elements: elements of the cores the steps read (every call reads every core once).
        prepare_elements: elements of the cores :func:`prepare_sweep` copies into step matrices (the cores of
            left-to-right steps; right-to-left steps use views). Free when the prepared sweep is cached.
    """

    order: str
    flops: int
    peak_elements: int
    saved_elements: int
    moved_elements: int = 0
    core_elements: int = 0
    prepare_elements: int = 0


def _dims(bond_dims: Sequence[int]) -> tuple[int, ...]:
    return (1, *bond_dims, 1)  # dims[k] is the bond on the left of core k


def order_cost(
    out_modes: Sequence[int], in_modes: Sequence[int], bond_dims: Sequence[int], tokens: int, order: str
) -> ContractionPlan:
    """Cost of contracting ``x (tokens, J)`` with the cores in ``order`` (see module docstring).

    State after ``a`` cores from the left and ``b`` from the right:
    ``(tokens, i_1..i_a, d_a, j_{a+1}..j_{n-b}, d_{n-b}, i_{n-b+1}..i_n)``.
    """
    n = len(out_modes)
    if len(order) != n or set(order) - {"L", "R"}:
        raise ValueError(f"order must be {n} letters from 'L'/'R', got {order!r}; e.g. {'L' * n!r}")
    dims = _dims(bond_dims)
    a = b = 0
    size = tokens * math.prod(in_modes)  # x
    flops = peak = saved = moved = core_reads = prepared = 0
    pure_left = n > 1 and set(order[:-1]) <= {"L"}
    for step, side in enumerate(order):
        k = a if side == "L" else n - 1 - b
        last = step == n - 1
        left, right = dims[a], dims[n - b]  # open bonds of the state (1 when none)
        i, j = out_modes[k], in_modes[k]
        if side == "L":
            # (.., d_a, j_k, ..) x (d_a, i_k, j_k, d_{k+1}) -> (.., i_k, d_{k+1}, ..); contracts d_a, j_k (and the right bond if last)
            contracted = left * j * (right if last else 1)
            out_size = size // contracted * i * (1 if last else dims[k + 1])
        else:
            # (.., j_k, d_{k+1}) x (d_k, i_k, j_k, d_{k+1}) -> (.., d_k, i_k, ..)
            contracted = right * j * (left if last else 1)
            out_size = size // contracted * i * (1 if last else dims[k])
        flops += 2 * out_size * contracted
        core = dims[k] * i * j * dims[k + 1]
        core_reads += core
        if pure_left:
            prepared += core  # core (d, i, j, e) -> (i e, d j): a permuted copy
        peak = max(peak, size + out_size)
        moved += size + out_size
        if step > 0:
            saved += size
        size = out_size
        if side == "L":
            a += 1
        else:
            b += 1
    return ContractionPlan(order, flops, peak, saved, moved, core_reads, prepared)


def _pure_orders(n: int) -> list[str]:
    """Left-to-right and right-to-left: the orders :func:`sweep` runs without copying the state."""
    return ["L" * n] if n == 1 else ["L" * n, "R" * (n - 1) + "L"]


def _groupings(n: int) -> list[tuple[tuple[int, int], ...]]:
    """All splits of cores ``0..n-1`` into runs ``[start, stop)``: ``2^(n-1)`` of them."""
    out = []
    for cuts in itertools.product((False, True), repeat=n - 1):
        groups, start = [], 0
        for k, cut in enumerate(cuts):
            if cut:
                groups.append((start, k + 1))
                start = k + 1
        groups.append((start, n))
        out.append(tuple(groups))
    return out


ALPHA = 64
"""FLOP-equivalents charged per tensor element read or written (CPU: a dense matmul
runs at ~100 GFLOP/s per core while memory moves ~2 G elements/s)."""

STEP_COST = 500_000
"""FLOP-equivalents charged per kernel a plan runs (a sweep step, a merge join): the fixed
dispatch cost of one small matmul from Python, ~5 us on one CPU core, which decides
one-token calls (a decode step) where every kernel is tiny."""


@dataclass(frozen=True)
class ApplyPlan:
    """How to compute ``x W^T``: merge each group of adjacent cores, then sweep ``order`` over the merged cores.

    One group means rebuilding ``W`` and one matmul (``path == "rebuild"``).

    Attributes:
        groups: runs of core indices ``[start, stop)``.
        order: ``"L"``/``"R"`` string over the groups.
        merge_flops: FLOPs of merging the groups (token-independent; zero when cached).
        sweep_flops: FLOPs of applying the merged cores to ``x``.
        merge_elements: elements of all merge intermediates (kept for backward when training).
        sweep: the sweep's :class:`ContractionPlan` (peak, saved and moved elements).
    """

    groups: tuple[tuple[int, int], ...]
    order: str
    merge_flops: int
    sweep_flops: int
    merge_elements: int
    sweep: ContractionPlan

    @property
    def path(self) -> str:
        return "rebuild" if len(self.groups) == 1 else "contract"

    @property
    def flops(self) -> int:
        return self.merge_flops + self.sweep_flops

    def estimated_cost(self, merged_cached: bool = False) -> float:
        """``flops + ALPHA * elements moved + STEP_COST * kernels``; merging (and preparing the
        sweep's step matrices) is free when ``merged_cached``."""
        joins = sum(b - a - 1 for a, b in self.groups)
        merge = 0 if merged_cached else (self.merge_flops + ALPHA * (2 * self.merge_elements + 2 * self.sweep.prepare_elements)
                                         + STEP_COST * joins)
        if self.path == "rebuild":  # F.linear: reads x and W, writes y; no permutation copies
            return merge + self.sweep_flops + ALPHA * (self.sweep.peak_elements + self.merge_elements) + STEP_COST
        moved = self.sweep.moved_elements + self.sweep.core_elements
        return merge + self.sweep_flops + ALPHA * moved + STEP_COST * len(self.groups)


@lru_cache(maxsize=8192)
def _merge_tree(out_modes: tuple, in_modes: tuple, dims: tuple, start: int, stop: int) -> tuple[float, int, int, object]:
    """Cheapest way to merge cores ``start..stop-1``: ``(estimated cost, FLOPs, intermediate elements, tree)``.

    A tree is a core index or ``(left_tree, right_tree, split)``. Joining the merged left part
    ``(d_s, P, Q, d_m)`` with the right part ``(d_m, I, J, d_e)`` is one matmul summing ``d_m`` and one
    permutation copy of the ``(d_s, P I, Q J, d_e)`` result; interval DP over the split points.
    """
    if stop - start == 1:
        return 0.0, 0, 0, start
    best = None
    rows = math.prod(out_modes[start:stop])
    cols = math.prod(in_modes[start:stop])
    out = dims[start] * rows * cols * dims[stop]
    for m in range(start + 1, stop):
        lc, lf, le, lt = _merge_tree(out_modes, in_modes, dims, start, m)
        rc, rf, re_, rt = _merge_tree(out_modes, in_modes, dims, m, stop)
        flops = lf + rf + 2 * out * dims[m]
        elements = le + re_ + out
        cost = lc + rc + 2 * out * dims[m] + ALPHA * 2 * out
        if best is None or cost < best[0]:
            best = (cost, flops, elements, (lt, rt, m))
    return best


def _merge_cost(out_modes, in_modes, dims, start: int, stop: int) -> tuple[int, int]:
    """(FLOPs, intermediate elements) of :func:`merge_cores` on cores ``start..stop-1``."""
    _, flops, elements, _ = _merge_tree(tuple(out_modes), tuple(in_modes), tuple(dims), start, stop)
    return flops, elements


@lru_cache(maxsize=4096)
def _all_plans(out_modes: tuple, in_modes: tuple, bond_dims: tuple, tokens: int) -> tuple[ApplyPlan, ...]:
    n = len(out_modes)
    dims = _dims(bond_dims)
    plans = []
    for groups in _groupings(n):
        merge_flops = merge_elements = 0
        for start, stop in groups:
            f, e = _merge_cost(out_modes, in_modes, dims, start, stop)
            merge_flops, merge_elements = merge_flops + f, merge_elements + e
        g_out = tuple(math.prod(out_modes[a:b]) for a, b in groups)
        g_in = tuple(math.prod(in_modes[a:b]) for a, b in groups)
        g_bonds = tuple(dims[b] for _, b in groups[:-1])
        for order in _pure_orders(len(groups)):
            sweep = order_cost(g_out, g_in, g_bonds, tokens, order)
            plans.append(ApplyPlan(groups, order, merge_flops, sweep.flops, merge_elements, sweep))
    return tuple(plans)


TRAINING_MEMORY_SLACK = 1.25
"""Training: what autograd keeps stays alive until backward, for every layer of the model at once, so a
contraction plan may keep at most 1.25x what the rebuild plan keeps."""

INFERENCE_MEMORY_SLACK = 2.0
"""Inference: a plan's intermediates are freed as soon as the layer returns, so they raise the model's
peak by at most one layer's transient. A contraction plan may peak at 2x the rebuild plan (x + W + y):
at 8192 tokens and bond 4 its intermediate is as large as the output, and the contraction runs in
0.47-0.61x of dense's time (BENCHMARKS.md), where the 1.25 bound kept the dense matmul (1.00x)."""


def _fits_memory(plan: ApplyPlan, rebuild: ApplyPlan, training: bool, slack: float) -> bool:
    if plan.path == "rebuild":
        return True
    if training:  # what autograd keeps: merge intermediates + sweep intermediates
        return plan.merge_elements + plan.sweep.saved_elements <= slack * (rebuild.merge_elements + rebuild.sweep.saved_elements)
    return plan.merge_elements + plan.sweep.peak_elements <= slack * (rebuild.merge_elements + rebuild.sweep.peak_elements)


def plan_apply(
    out_modes: Sequence[int],
    in_modes: Sequence[int],
    bond_dims: Sequence[int],
    tokens: int,
    *,
    merged_cached: bool = False,
    training: bool = False,
    contract_only: bool = False,
    memory_slack: float | None = None,
) -> ApplyPlan:
    """The plan with the lowest estimated cost.

    Args:
        merged_cached: merged cores / the rebuilt weight are cached (inference), so merging is free.
        training: memory is what autograd saves; otherwise the peak of one step.
        contract_only: exclude the single-group (rebuild) plan.
        memory_slack: contraction plans may use at most this times the rebuild plan's memory.
            Default: :data:`TRAINING_MEMORY_SLACK` when training, else :data:`INFERENCE_MEMORY_SLACK`.
    """
    if memory_slack is None:
        memory_slack = TRAINING_MEMORY_SLACK if training else INFERENCE_MEMORY_SLACK
    plans = _all_plans(tuple(out_modes), tuple(in_modes), tuple(bond_dims), int(tokens))
    rebuild = next(p for p in plans if len(p.groups) == 1)
    candidates = [p for p in plans if not (contract_only and p.path == "rebuild" and len(out_modes) > 1)]
    fitting = [p for p in candidates if _fits_memory(p, rebuild, training, memory_slack)] or candidates
    best = min(fitting, key=lambda p: (p.estimated_cost(merged_cached), p.flops, p.groups, p.order))
    if merged_cached and not contract_only and best.path == "contract" and best.sweep_flops >= rebuild.sweep_flops:
        # With everything cached the choice is between two memory-bound sweeps at few tokens, where the
        # estimate's memory term decides and is least reliable: one GEMV over W streams it at full speed,
        # a sweep over merged cores runs several smaller kernels. Contract only when it also needs fewer FLOPs.
        return rebuild
    return best


def contraction_flops(out_modes: Sequence[int], in_modes: Sequence[int], bond_dims: Sequence[int], tokens: int) -> int:
    """FLOPs (merging included) of the contraction :func:`mpo_apply` runs by default for ``tokens`` rows."""
    return plan_apply(out_modes, in_modes, bond_dims, tokens, contract_only=True, memory_slack=TRAINING_MEMORY_SLACK).flops


def rebuild_flops(out_modes: Sequence[int], in_modes: Sequence[int], bond_dims: Sequence[int]) -> int:
    """FLOPs of :func:`mpokit.rebuild_matrix` (left to right: step k makes ``(I_<=k, J_<=k, d_k)`` summing ``d_{k-1}``)."""
    return _merge_cost(out_modes, in_modes, _dims(bond_dims), 0, len(out_modes))[0]


def dense_flops(out_features: int, in_features: int, tokens: int) -> int:
    """FLOPs of ``x W^T`` for ``x (tokens, in_features)``: ``2 * tokens * out_features * in_features``."""
    return 2 * int(tokens) * int(out_features) * int(in_features)


def choose_path(
    out_modes: Sequence[int],
    in_modes: Sequence[int],
    bond_dims: Sequence[int],
    tokens: int,
    *,
    weight_cached: bool = False,
    training: bool = False,
    memory_slack: float | None = None,
) -> str:
    """``"rebuild"`` or ``"contract"``: the path of :func:`plan_apply`'s best plan."""
    return plan_apply(
        out_modes, in_modes, bond_dims, tokens, merged_cached=weight_cached, training=training, memory_slack=memory_slack
    ).path


# ---------------------------------------------------------------------------
# execution
# ---------------------------------------------------------------------------


def merge_cores(cores: Sequence[torch.Tensor]) -> torch.Tensor:
    """Contract adjacent cores into one: ``(d_s, i, j, d) ... -> (d_s, prod i, prod j, d_e)``.

    Follows the cheapest binary tree of :func:`_merge_tree`: each join is one matmul plus one
    permutation copy whose innermost contiguous run is the right part's ``J d_e`` (a flat
    10-index permutation of the interleaved tensor is several times slower on CPU). Without a
    graph to the cores the joins run a chunk at a time (:func:`_join_into`), so no temporary is
    as large as their result.
    """
    if len(cores) == 1:
        return cores[0]
    out_modes = tuple(int(c.shape[1]) for c in cores)
    in_modes = tuple(int(c.shape[2]) for c in cores)
    dims = tuple([int(cores[0].shape[0])] + [int(c.shape[3]) for c in cores])
    tree = _merge_tree(out_modes, in_modes, dims, 0, len(cores))[3]
    return _merge_by_tree(cores, tree)


def _merge_by_tree(cores, tree) -> torch.Tensor:
    if isinstance(tree, int):
        return cores[tree]
    left, right = _merge_by_tree(cores, tree[0]), _merge_by_tree(cores, tree[1])
    a, P, Q, b = left.shape
    _, I, J, c = right.shape
    if (torch.is_grad_enabled() and (left.requires_grad or right.requires_grad)) or torch.compiler.is_compiling():
        # (a, P, Q, b) x (b, I, J, c) -> (a, P, I, Q, J, c), summing the bond b
        return torch.einsum("apqb,bijc->apiqjc", left, right).reshape(a, P * I, Q * J, c)
    out = torch.empty(a * P * I * Q * J * c, dtype=torch.promote_types(left.dtype, right.dtype), device=left.device)
    _join_into(left.reshape(a * P, Q, b), right.reshape(b, I, J * c), out, 0, a * P)
    return out.view(a, P * I, Q * J, c)


JOIN_CHUNK_ELEMENTS = 1 << 18
"""Largest temporary of a chunked join (1 MiB in float32; :func:`_join_into`)."""


def _join_into(left: torch.Tensor, right: torch.Tensor, out: torch.Tensor, start: int, stop: int) -> None:
    """Rows ``[start, stop)`` of ``left (R, Q, b)`` joined with ``right (b, I, K)`` into ``out`` ((stop - start), I, Q, K).

    ``out[r - start, i, q, k] = sum_b left[r, q, b] right[b, i, k]``. Each chunk of rows is one matmul
    ``(r Q, b) @ (b, I K)`` giving ``(r, Q, I, K)``, copied into ``out`` as ``(r, I, Q, K)``; a chunk has
    at most :data:`JOIN_CHUNK_ELEMENTS` elements (or one row's).
    """
    _, Q, b = left.shape
    _, I, K = right.shape
    out4 = out.view(stop - start, I, Q, K)
    r2 = right.reshape(b, I * K)
    step = max(1, JOIN_CHUNK_ELEMENTS // max(Q * I * K, 1))
    for r0 in range(start, stop, step):
        r1 = min(stop, r0 + step)
        block = (left[r0:r1].reshape(-1, b) @ r2).view(r1 - r0, Q, I, K)  # (r Q, b) @ (b, I K)
        out4[r0 - start:r1 - start].copy_(block.transpose(1, 2))


def rebuild(cores: Sequence[torch.Tensor]) -> torch.Tensor:
    """The padded matrix ``W (I, J)`` from cores ``(d_{k-1}, i_k, j_k, d_k)``: :func:`merge_cores` of all of them.

    Same values as :func:`mpokit.rebuild_matrix`; the merge order is the cheapest binary tree.
    """
    full = merge_cores(cores)  # (1, I, J, 1)
    return full.reshape(full.shape[1], full.shape[2])


def merge_halves(cores: Sequence[torch.Tensor], split: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The two halves of a matrix's cores meeting at bond ``split`` (1..n-1).

    Returns ``left (P, Q, b)`` (cores ``< split`` merged: ``P = i_1..i_split``, ``Q = j_1..j_split``,
    ``b = d_split``) and ``right (b, I, J)`` (the others). Row ``p I + i``, column ``q J + j`` of ``W``
    is ``left[p, q] @ right[:, i, j]``.
    """
    left = merge_cores(cores[:split])  # (1, P, Q, b)
    right = merge_cores(cores[split:])  # (b, I, J, 1)
    return left.reshape(left.shape[1:]), right.reshape(right.shape[:3])


def join_halves_into(left: torch.Tensor, right: torch.Tensor, out: torch.Tensor, start: int = 0,
                     stop: int | None = None) -> torch.Tensor:
    """Rows ``[start I, stop I)`` of ``W`` from its halves (:func:`merge_halves`), written into ``out``.

    ``left (P, Q, b)``, ``right (b, I, J)``; ``out`` is a contiguous tensor of ``(stop - start) I Q J``
    elements, returned viewed as ``((stop - start) I, Q J)``. No temporary is larger than
    :data:`JOIN_CHUNK_ELEMENTS` (or one prefix's rows). Without a graph (it writes in place).
    """
    P, Q, b = left.shape
    _, I, J = right.shape
    stop = P if stop is None else stop
    if out.numel() != (stop - start) * I * Q * J or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous tensor of {(stop - start) * I * Q * J} elements, got "
                         f"{tuple(out.shape)}; e.g. torch.empty({(stop - start) * I}, {Q * J})")
    _join_into(left, right, out, start, stop)
    return out.view((stop - start) * I, Q * J)


def rebuild_into(cores: Sequence[torch.Tensor], out: torch.Tensor) -> torch.Tensor:
    """The padded matrix ``W (I, J)`` written into ``out`` (contiguous, ``I J`` elements); returns it as ``(I, J)``.

    Same values as :func:`rebuild`, without a graph: the two subtrees of the cheapest merge tree's root
    are merged as :func:`rebuild` merges them and their join goes straight into ``out``, so apart from
    ``out`` no temporary is as large as ``W``.
    """
    out_modes = tuple(int(c.shape[1]) for c in cores)
    in_modes = tuple(int(c.shape[2]) for c in cores)
    I, J = math.prod(out_modes), math.prod(in_modes)
    if out.numel() != I * J or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous tensor of {I * J} elements, got {tuple(out.shape)}; "
                         f"e.g. torch.empty({I}, {J})")
    if len(cores) == 1:
        return out.view(I, J).copy_(cores[0][0, :, :, 0])  # (1, I, J, 1)
    dims = tuple([int(cores[0].shape[0])] + [int(c.shape[3]) for c in cores])
    left_tree, right_tree, _ = _merge_tree(out_modes, in_modes, dims, 0, len(cores))[3]
    with torch.no_grad():
        left = _merge_by_tree(cores, left_tree)  # (1, P, Q, b)
        right = _merge_by_tree(cores, right_tree)  # (b, I_R, J_R, 1)
        return join_halves_into(left.reshape(left.shape[1:]), right.reshape(right.shape[:3]), out).view(I, J)


def merge_groups(cores: Sequence[torch.Tensor], groups: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
    """One merged core per group ``[start, stop)``."""
    return [merge_cores(cores[a:b]) if b - a > 1 else cores[a] for a, b in groups]


class PreparedSweep(NamedTuple):
    """A sweep ready to run on any input (:func:`prepare_sweep`); a layer may cache it under no-grad.

    ``direction``: ``"L"`` (left to right), ``"R"`` (right to left) or the mixed order (einsum).
    ``operands``: per step in step order, the ``(m, k)`` matrix of :func:`_step` (pure orders) or the core (mixed).
    ``modes``: per step, the core's ``(i, j)``.
    """

    direction: str
    operands: tuple
    modes: tuple


def prepare_sweep(cores: Sequence[torch.Tensor], order: str) -> PreparedSweep:
    """The step matrices of :func:`sweep` over ``cores`` in ``order`` (differentiable in the cores).

    Left to right, core ``(d, i, j, e)`` becomes ``(i e, d j)``, a permuted copy; right to left it becomes
    ``(d i, j e)``, a view. Mixed orders keep the cores.
    """
    n = len(cores)
    if len(order) != n or set(order) - {"L", "R"}:
        raise ValueError(f"order must be {n} letters from 'L'/'R', got {order!r}; e.g. {'L' * n!r}")
    order = order[:-1] + "L"  # one core left: taking it from either end is the same contraction
    modes = tuple((int(c.shape[1]), int(c.shape[2])) for c in cores)
    if set(order[:-1]) <= {"L"}:
        mats = tuple(c.permute(1, 3, 0, 2).reshape(c.shape[1] * c.shape[3], c.shape[0] * c.shape[2]) for c in cores)
        return PreparedSweep("L", mats, modes)
    if set(order[:-1]) == {"R"}:
        mats = tuple(c.reshape(c.shape[0] * c.shape[1], c.shape[2] * c.shape[3]) for c in reversed(cores))
        return PreparedSweep("R", mats, modes[::-1])
    return PreparedSweep(order, tuple(cores), modes)


def sweep(x: torch.Tensor, cores: Sequence[torch.Tensor], order: str) -> torch.Tensor:
    """Contract ``x (tokens, J)`` with ``cores`` one at a time in ``order``; returns ``(tokens, I)``.

    Pure orders (all ``"L"``, or ``"R"`` then a final letter) need no permutation of the state: every
    step is one matmul of a small core matrix with a view of the state, whose layout keeps the summed
    indices adjacent (a plain matmul, or a bmm over the broadcast core; see :func:`_step` for when
    ``torch.matmul``'s fold, which copies, is used instead). Mixed orders run through einsum (correct,
    but each step copies the state). Same as ``run_sweep(x, prepare_sweep(cores, order))``.
    """
    return run_sweep(x, prepare_sweep(cores, order))


def run_sweep(x: torch.Tensor, prepared: PreparedSweep) -> torch.Tensor:
    """:func:`sweep` with its step matrices prepared (:func:`prepare_sweep`): ``x (tokens, J)`` -> ``(tokens, I)``."""
    if prepared.direction == "L":
        return _sweep_left(x, prepared)
    if prepared.direction == "R":
        return _sweep_right(x, prepared)
    return _sweep_einsum(x, prepared.operands, prepared.direction)


def _step(state: torch.Tensor, batch: int, k: int, rest: int, a: torch.Tensor) -> torch.Tensor:
    """``out[b] = a @ state[b]`` for ``state`` viewed as ``(batch, k, rest)``, ``a (m, k)`` -> ``(batch, m, rest)``."""
    if rest == 1:
        # (batch, k) @ (k, m) -> (batch, m): one plain matmul
        return state.reshape(batch, k) @ a.T
    return _step_as(_step_kind(state, a, rest), state, batch, k, rest, a)  # _step_as views it as (batch, k, rest)


def _step_as(kind: str, state: torch.Tensor, batch: int, k: int, rest: int, a: torch.Tensor) -> torch.Tensor:
    """:func:`_step` by one implementation (``"matmul"``, ``"bmm"`` or ``"transposed"``, see :func:`_step_kind`)."""
    state = state.reshape(batch, k, rest)
    if kind == "bmm":
        # (batch, m, k) @ (batch, k, rest) -> (batch, m, rest): one bmm over a stride-0 view of the core, no copies
        return torch.bmm(a.expand(batch, *a.shape), state)
    if kind == "transposed":
        # (batch, rest, k) contiguous @ (k, m) view -> (batch, rest, m), returned as its (batch, m, rest) view
        return torch.matmul(state.transpose(1, 2).contiguous(), a.T).transpose(1, 2)
    # torch.matmul folds the batch into one big matmul when it likes: copies of the state in and out
    return torch.matmul(a, state)


def _step_kind(state: torch.Tensor, a: torch.Tensor, rest: int) -> str:
    """Which implementation of a sweep step runs: ``"transposed"``, ``"bmm"`` or ``"matmul"``.

    CPU, measured on one core by ``benchmarks/bench_steps.py`` (BENCHMARKS.md, "One sweep step"):

    * rows shorter than 16 (``rest < 16``): ``"transposed"`` (the state transposed into a contiguous
      copy, times the core's transposed view). CPU GEMM kernels run a short right-hand side
      ``(k, rest)`` several times slower than the same product with the short side on the left; the
      copy costs one pass over the state.
    * longer rows: a batch of small matmuls (bmm) against ``torch.matmul``'s folding of
      ``(batch, k, rest)`` into one ``(batch * rest, k)`` matmul, which copies the state transposed and
      the result back. ``torch.matmul`` folds whenever ``a`` requires grad, even under ``no_grad``. In
      inference bmm wins once ``rest >= 16``; in training it also needs ``m <= rest``: bmm's backward
      forms the core's gradient per batch entry, ``(batch, m, k)`` elements, before summing; with
      ``m <= rest`` that transient is no larger than the state ``(batch, k, rest)`` that backward keeps
      anyway (measured: without this bound one 3072 -> 768 training step at 512 tokens peaked at 2.3x
      nn.Linear's memory).

    Other devices keep ``torch.matmul`` (not measured)."""
    if state.device.type != "cpu":
        return "matmul"
    if rest < 16:
        return "transposed"
    m, _ = a.shape
    if torch.is_grad_enabled() and (a.requires_grad or state.requires_grad):
        return "bmm" if m <= rest else "matmul"
    return "bmm"


def _sweep_left(x: torch.Tensor, prepared: PreparedSweep) -> torch.Tensor:
    """Left to right. State ``(T, I_<k, d_k, J_>=k)``, contiguous; sums ``(d_k, j_k)``, adjacent in it."""
    tokens = x.shape[0]
    state, rows, rest = x, 1, x.shape[1]
    for a, (i, j) in zip(prepared.operands, prepared.modes):
        rest //= j
        # a (i e, d j); state (T I_<k, d j, J_>k) -> (T I_<k, i e, J_>k) = (T, I_<=k, e, J_>k)
        state = _step(state, tokens * rows, a.shape[1], rest, a)
        rows *= i
    return state.reshape(tokens, rows)


def _sweep_right(x: torch.Tensor, prepared: PreparedSweep) -> torch.Tensor:
    """Right to left. State ``(T, J_<k, d_k, I_>=k)``, contiguous; sums ``(j_k, d_{k+1})``, adjacent in it."""
    tokens = x.shape[0]
    state, cols, done = x, x.shape[1], 1
    for a, (i, j) in zip(prepared.operands, prepared.modes):
        cols //= j
        # a (d i, j e); state (T J_<k, j e, I_>k) -> (T J_<k, d i, I_>k) = (T, J_<k, d, I_>=k)
        state = _step(state, tokens * cols, a.shape[1], done, a)
        done *= i
    return state.reshape(tokens, done)


def _sweep_einsum(x: torch.Tensor, cores: Sequence[torch.Tensor], order: str) -> torch.Tensor:
    """Any order (both ends may be open), one einsum per step."""
    n = len(cores)
    in_modes = [int(c.shape[2]) for c in cores]
    tokens, J = x.shape
    # state: (B, P, L, Jmid, R, S) with P = done left out modes, S = done right out modes, L/R open bonds
    state = x.reshape(tokens, 1, 1, J, 1, 1)
    a = b = 0
    mid = list(in_modes)
    for side in order:
        B, P, L, M, R, S = state.shape
        if side == "L":
            core = cores[a]  # (d_a, i_a, j_a, d_{a+1})
            j, i, q = mid[0], core.shape[1], core.shape[3]
            s = state.reshape(B, P, L, j, M // j, R, S)
            if len(mid) == 1:  # last core: d_{a+1} is the right bond R
                # (B,P,L,j,1,R,S) x (L,i,j,R) -> (B,P,i,S)
                y = torch.einsum("bplxmrs,lyxr->bpys", s, core)
                state = y.reshape(B, P * i, 1, 1, 1, S)
            else:
                # (B,P,L,j,M',R,S) x (L,i,j,q) -> (B,P,i,q,M',R,S)
                y = torch.einsum("bplxmrs,lyxq->bpyqmrs", s, core)
                state = y.reshape(B, P * i, q, M // j, R, S)
            mid.pop(0)
            a += 1
        else:
            core = cores[n - 1 - b]  # (d_k, i_k, j_k, d_{k+1} = R)
            j, i, q = mid[-1], core.shape[1], core.shape[0]
            s = state.reshape(B, P, L, M // j, j, R, S)
            # (B,P,L,M',j,R,S) x (q,i,j,R) -> (B,P,L,M',q,i,S)
            y = torch.einsum("bplmxrs,qyxr->bplmqys", s, core)
            state = y.reshape(B, P, L, M // j, q, i * S)
            mid.pop()
            b += 1
    return state.reshape(tokens, -1)


def mpo_apply(
    x: torch.Tensor,
    cores: Sequence[torch.Tensor],
    order: str | None = None,
    groups: Sequence[tuple[int, int]] | None = None,
) -> torch.Tensor:
    """``y = x W^T`` without forming ``W``: x ``(..., J_padded)`` -> y ``(..., I_padded)``.

    By default the cheapest contraction plan (:func:`plan_apply` with
    ``contract_only=True``) for this token count: adjacent cores may be merged
    first, ``W`` itself is never formed (for n > 1). ``groups`` and ``order``
    pin a plan (``order`` alone means no merging). Differentiable in ``x`` and the cores.
    """
    out_modes = [int(c.shape[1]) for c in cores]
    in_modes = [int(c.shape[2]) for c in cores]
    J = math.prod(in_modes)
    if x.shape[-1] != J:
        raise ValueError(
            f"the input's last dimension is {x.shape[-1]}, but the cores' in modes {tuple(in_modes)} multiply to {J}; "
            f"pass x of shape (..., {J})"
        )
    lead = x.shape[:-1]
    tokens = math.prod(lead)
    n = len(cores)
    if groups is None:
        if order is None:
            plan = plan_apply(out_modes, in_modes, [int(c.shape[3]) for c in cores[:-1]], tokens, contract_only=True,
                              memory_slack=TRAINING_MEMORY_SLACK)
            groups, order = plan.groups, plan.order
        else:
            groups = tuple((k, k + 1) for k in range(n))
    elif order is None:
        order = "L" * len(groups)
    merged = merge_groups(cores, groups)
    return sweep(x.reshape(tokens, J), merged, order).reshape(*lead, -1)

