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
  All ``2^(n-1)`` distinct orders are enumerated and the cheapest is used.

FLOPs are counted as ``2 * multiply-adds`` (the convention of
``torch.utils.flop_counter``). Memory is counted in tensor elements.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import torch

from .mpo import rebuild_matrix

__all__ = [
    "ContractionPlan",
    "plan_contraction",
    "contraction_flops",
    "rebuild_flops",
    "dense_flops",
    "order_cost",
    "choose_path",
    "mpo_apply",
    "PATHS",
    "apply_rebuild",
    "rebuild_elements",
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
    """

    order: str
    flops: int
    peak_elements: int
    saved_elements: int


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
    flops = peak = saved = 0
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
        peak = max(peak, size + out_size)
        if step > 0:
            saved += size
        size = out_size
        if side == "L":
            a += 1
        else:
            b += 1
    return ContractionPlan(order, flops, peak, saved)


def _orders(n: int) -> list[str]:
    # The last letter never matters (one core left); fix it to "L".
    return ["".join(p) + "L" for p in itertools.product("LR", repeat=n - 1)] if n > 1 else ["L"]


@lru_cache(maxsize=4096)
def _plan_cached(out_modes: tuple, in_modes: tuple, bond_dims: tuple, tokens: int, objective: str) -> ContractionPlan:
    plans = [order_cost(out_modes, in_modes, bond_dims, tokens, o) for o in _orders(len(out_modes))]
    if objective == "memory":
        return min(plans, key=lambda p: (p.saved_elements, p.flops))
    return min(plans, key=lambda p: (p.flops, p.peak_elements, p.order))


def plan_contraction(
    out_modes: Sequence[int], in_modes: Sequence[int], bond_dims: Sequence[int], tokens: int, objective: str = "flops"
) -> ContractionPlan:
    """The cheapest order (by FLOPs, ties by peak memory; or by saved memory with ``objective="memory"``)."""
    return _plan_cached(tuple(out_modes), tuple(in_modes), tuple(bond_dims), int(tokens), objective)


def contraction_flops(out_modes: Sequence[int], in_modes: Sequence[int], bond_dims: Sequence[int], tokens: int) -> int:
    """FLOPs of the cheapest contraction of ``x (tokens, J)`` with the cores."""
    return plan_contraction(out_modes, in_modes, bond_dims, tokens).flops


def rebuild_flops(out_modes: Sequence[int], in_modes: Sequence[int], bond_dims: Sequence[int]) -> int:
    """FLOPs of :func:`mpokit.rebuild_matrix` (left to right: step k makes ``(I_<=k, J_<=k, d_k)`` summing ``d_{k-1}``)."""
    dims = _dims(bond_dims)
    flops, rows, cols = 0, out_modes[0], in_modes[0]
    for k in range(1, len(out_modes)):
        rows, cols = rows * out_modes[k], cols * in_modes[k]
        flops += 2 * rows * cols * dims[k + 1] * dims[k]
    return flops


def rebuild_elements(out_modes: Sequence[int], in_modes: Sequence[int], bond_dims: Sequence[int]) -> int:
    """Elements of all intermediates of :func:`mpokit.rebuild_matrix`, including ``W``."""
    dims = _dims(bond_dims)
    total, rows, cols = 0, out_modes[0], in_modes[0]
    for k in range(1, len(out_modes)):
        rows, cols = rows * out_modes[k], cols * in_modes[k]
        total += rows * cols * dims[k + 1]
    return total


def dense_flops(out_features: int, in_features: int, tokens: int) -> int:
    """FLOPs of ``x W^T`` for ``x (tokens, in_features)``: ``2 * tokens * out_features * in_features``."""
    return 2 * int(tokens) * int(out_features) * int(in_features)


def choose_path(
    out_modes: Sequence[int],
    in_modes: Sequence[int],
    bond_dims: Sequence[int],
    tokens: int,
    *,
    out_features: int | None = None,
    in_features: int | None = None,
    weight_cached: bool = False,
    training: bool = False,
    memory_slack: float = 1.25,
) -> str:
    """``"rebuild"`` or ``"contract"``, whichever the cost model says is cheaper.

    * rebuild costs ``rebuild_flops`` (zero when the weight is cached) plus the dense matmul;
    * contract costs the cheapest order's FLOPs, and is only taken when it also
      keeps memory within ``memory_slack`` times the rebuild path's: the
      elements autograd saves when ``training`` (intermediates vs ``W`` and
      the rebuild intermediates), the step peak otherwise.
    """
    out_f = out_features if out_features is not None else math.prod(out_modes)
    in_f = in_features if in_features is not None else math.prod(in_modes)
    plan = plan_contraction(out_modes, in_modes, bond_dims, tokens)
    rebuild = dense_flops(out_f, in_f, tokens) + (0 if weight_cached else rebuild_flops(out_modes, in_modes, bond_dims))
    if plan.flops >= rebuild:
        return "rebuild"
    x_elems, y_elems = tokens * in_f, tokens * out_f
    if training:
        rebuild_mem = rebuild_elements(out_modes, in_modes, bond_dims) + y_elems
        contract_mem = plan.saved_elements + y_elems
    else:
        rebuild_mem = out_f * in_f + x_elems + y_elems
        contract_mem = plan.peak_elements
    return "contract" if contract_mem <= memory_slack * rebuild_mem else "rebuild"


# ---------------------------------------------------------------------------
# execution
# ---------------------------------------------------------------------------


def mpo_apply(x: torch.Tensor, cores: Sequence[torch.Tensor], order: str | None = None) -> torch.Tensor:
    """``y = x W^T`` without forming ``W``: x ``(..., J_padded)`` -> y ``(..., I_padded)``.

    ``order`` defaults to the cheapest (:func:`plan_contraction`) for this
    token count. Differentiable with respect to ``x`` and the cores.
    """
    out_modes = [int(c.shape[1]) for c in cores]
    in_modes = [int(c.shape[2]) for c in cores]
    J, I = math.prod(in_modes), math.prod(out_modes)
    if x.shape[-1] != J:
        raise ValueError(
            f"the input's last dimension is {x.shape[-1]}, but the cores' in modes {tuple(in_modes)} multiply to {J}; "
            f"pass x of shape (..., {J})"
        )
    lead = x.shape[:-1]
    tokens = math.prod(lead)
    n = len(cores)
    if order is None:
        order = plan_contraction(out_modes, in_modes, [int(c.shape[3]) for c in cores[:-1]], tokens).order
    if len(order) != n or set(order) - {"L", "R"}:
        raise ValueError(f"order must be {n} letters from 'L'/'R', got {order!r}; e.g. {'L' * n!r}")
    order = order[:-1] + "L"  # one core left: taking it from either end is the same contraction
    # state: (B, P, L, Jmid, R, S) with P = prod of done left out modes, S = done right out modes
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
            k = n - 1 - b
            core = cores[k]  # (d_k, i_k, j_k, d_{k+1} = R)
            j, i, q = mid[-1], core.shape[1], core.shape[0]
            s = state.reshape(B, P, L, M // j, j, R, S)
            # (B,P,L,M',j,R,S) x (q,i,j,R) -> (B,P,L,M',q,i,S)
            y = torch.einsum("bplmxrs,qyxr->bplmqys", s, core)
            state = y.reshape(B, P, L, M // j, q, i * S)
            mid.pop()
            b += 1
    return state.reshape(*lead, I)


def apply_rebuild(x: torch.Tensor, cores: Sequence[torch.Tensor]) -> torch.Tensor:
    """``x W^T`` by rebuilding ``W (I_padded, J_padded)`` first; x ``(..., J_padded)`` -> ``(..., I_padded)``."""
    return torch.nn.functional.linear(x, rebuild_matrix(cores))
