"""Inference memory policies: what the MPO layers of a model hold and do when they run without gradients.

:func:`set_inference_mode` sets one policy of :data:`POLICIES` per MPO module
(:class:`~mpokit.layers.MPOLinear`, :class:`~mpokit.layers.MPOEmbedding`, the
tied head :class:`~mpokit.surgery.MPOTiedLinear`, and the :class:`~mpokit.layers.MPOModule`
that supply a weight to someone else: :class:`~mpokit.layers.weight.MPOWeight`
and the matrices of :class:`~mpokit.MPOLSTM`):

* ``"cache"``: each layer keeps its rebuilt dense matrix after the first call
  (the default of a fresh layer; fastest, the most memory: cores plus every matrix);
* ``"stream"``: no layer keeps anything; a call that needs ``W`` rebuilds it into
  one :class:`~mpokit.layers.base.Workspace` shared by the model (sized for the
  largest matrix rebuilt there), and a call for which the contraction is cheaper
  (few tokens, e.g. a decode step) contracts instead. Embeddings gather rows,
  the tied head rebuilds the vocabulary matrix a block at a time;
* ``"contract"``: the cores are applied to the activations and ``W`` is never formed
  (embeddings: row gathers; linear layers and the tied head: core sweeps);
* ``"auto"``: per layer, one of the three from the cost model of
  :mod:`mpokit.contract` and a memory budget ``max_memory``, losing as little
  estimated time as the budget allows (below).

A module that hands its weight to a host's own forward (``MPOWeight``, the LSTM's
matrices) cannot contract: under ``"contract"`` it streams (rebuilds a fresh
matrix per call and keeps none; not into the shared workspace, which the host
could hold across calls). Policies only change calls without an autograd graph
to the cores (``torch.no_grad``, ``torch.inference_mode``, frozen cores):
training runs as before under every policy, and every policy computes the same
function.

Memory. ``max_memory`` (bytes, or a string such as ``"300MB"`` or ``"1.5GiB"``)
budgets what the model holds: its parameters and buffers (cores included), the
dense matrices of its caching layers and the workspace. Activations are not
counted. The minimum is the parameters and buffers alone (every layer
contracting, no workspace); a smaller budget raises ``ValueError`` naming it.

``"auto"``. Each layer prices each mode at ``tokens`` rows per call
(:meth:`~mpokit.layers.MPOModule.inference_options`: estimated time, dense
elements held, workspace elements). For every workspace size the streaming
layers could need, every layer takes its fastest mode that holds nothing
(``"stream"`` if it fits that workspace, else ``"contract"``); then layers
switch to ``"cache"`` in order of time saved per byte while the budget allows.
The cheapest of these assignments wins. Without ``max_memory`` the budget is
what ``"stream"`` would hold, so ``"auto"`` is never larger than ``"stream"``.

``print(plan)`` and ``print(inference_plan(model))`` show a per-layer table;
``print(model)`` shows each layer's mode (``inference=...``).
"""

from __future__ import annotations

import fnmatch
import math
import re
from dataclasses import dataclass, field
from typing import Mapping

from torch import nn

from .layers.base import INFERENCE_MODES, InferenceOption, MPOModule, Workspace

__all__ = ["POLICIES", "set_inference_mode", "inference_plan", "InferencePlan", "LayerPlan", "Workspace",
           "parse_memory", "inference_layers", "AUTO_TOKENS"]

POLICIES = ("cache", "stream", "contract", "auto")

AUTO_TOKENS = 1024
"""Rows per call the ``"auto"`` policy prices the layers at (a batch, e.g. 16 x 64 tokens)."""

_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_memory(value: int | str, name: str = "max_memory") -> int:
    """Bytes from an int or a string with a unit (``"300MB"`` = 300 * 10^6, ``"1.5GiB"`` = 1.5 * 2^30)."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f"{name} must be an int (bytes) or a string such as '300MB', got {value!r}; "
                        f"e.g. {name}='1.5GiB'")
    if isinstance(value, int):
        number = value
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", value)
        unit = match.group(2).lower() if match else None
        if match is None or (unit and unit not in _UNITS):
            raise ValueError(f"{name} {value!r} is not a size; write a number with a unit from "
                             f"B, KB, MB, GB, TB, KiB, MiB, GiB, TiB, e.g. {name}='300MB' or '1.5GiB'")
        number = int(float(match.group(1)) * _UNITS[unit or "b"])
    if number < 0:
        raise ValueError(f"{name} must be >= 0 bytes, got {value!r}; e.g. {name}='300MB'")
    return number


def _human(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def inference_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every module :func:`set_inference_mode` sets: MPO layers and tied MPO heads."""
    from .surgery import MPOTiedLinear

    return [(n, m) for n, m in model.named_modules() if isinstance(m, (MPOModule, MPOTiedLinear))]


def _owner(module: nn.Module) -> nn.Module:
    """The module whose cache holds ``module``'s dense matrix (a tied head's is its embedding's)."""
    return getattr(module, "embedding", None) if not isinstance(module, MPOModule) else module


def _itemsize(module: nn.Module) -> int:
    return _owner(module).core_list()[0].element_size()


def _effective(module: nn.Module, mode: str) -> str:
    """``mode``, or ``"stream"`` for a module that cannot contract (it hands its weight to a host)."""
    return mode if mode in module.SUPPORTED_MODES else "stream"


# ---------------------------------------------------------------------------
# the plan
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerPlan:
    """One module's row: ``mode`` is what it runs; bytes are of its cores, of the dense matrix it keeps
    under that mode (``cache_bytes``; a tied head's lives in its embedding's cache), of the shared
    workspace it needs, and of its cache right now (``cached_now_bytes``)."""

    name: str
    kind: str
    shape: tuple[int, int]
    mode: str
    core_bytes: int
    cache_bytes: int
    workspace_bytes: int
    cached_now_bytes: int
    owner: str = ""
    cost: float = 0.0


@dataclass
class InferencePlan:
    """The inference modes of a model's MPO modules and the memory they hold. ``str(plan)`` is a table.

    ``model_bytes``: parameters and buffers (cores included); ``workspace_bytes``: the shared workspace
    (planned size); ``total_bytes``: model + dense caches (each matrix once) + workspace;
    ``max_memory``: the budget ``"auto"`` planned for (None when no budget applied).
    """

    policy: str | dict
    layers: list[LayerPlan]
    model_bytes: int
    workspace_bytes: int
    max_memory: int | None = None
    tokens: int = AUTO_TOKENS
    workspace: Workspace | None = field(default=None, repr=False, compare=False)

    @property
    def modes(self) -> dict[str, str]:
        return {r.name: r.mode for r in self.layers}

    @property
    def estimated_cost(self) -> float:
        """The modules' estimated time for one call each at ``tokens`` rows (cost-model units)."""
        return sum(r.cost for r in self.layers)

    @property
    def cache_bytes(self) -> int:
        """Dense matrices the caching modules keep, each counted once (a tied head shares its embedding's)."""
        held: dict[str, int] = {}
        for r in self.layers:
            if r.cache_bytes:
                held[r.owner or r.name] = r.cache_bytes
        return sum(held.values())

    @property
    def total_bytes(self) -> int:
        return self.model_bytes + self.cache_bytes + self.workspace_bytes

    def table(self) -> str:
        w = max([len("module")] + [len(r.name) for r in self.layers])
        k = max([len("kind")] + [len(r.kind) for r in self.layers])
        head = (f"{'module':<{w}} {'kind':<{k}} {'shape':>12} {'mode':<8} {'cores':>12} {'cache':>12} "
                f"{'workspace':>12} {'cached now':>12}")
        lines = [head, "-" * len(head)]
        for r in self.layers:
            cache = f"{r.cache_bytes:,}" if not (r.owner and r.cache_bytes) else f"({r.cache_bytes:,})"
            lines.append(f"{r.name:<{w}} {r.kind:<{k}} {'x'.join(map(str, r.shape)):>12} {r.mode:<8} "
                         f"{r.core_bytes:>12,} {cache:>12} {r.workspace_bytes:>12,} {r.cached_now_bytes:>12,}")
        lines.append("-" * len(head))
        counts = {m: sum(r.mode == m for r in self.layers) for m in INFERENCE_MODES}
        lines.append(f"policy {self.policy!r}: " + ", ".join(f"{n} {m}" for m, n in counts.items() if n)
                     + f" (of {len(self.layers)} modules)")
        lines.append(f"parameters and buffers: {self.model_bytes:,} bytes ({_human(self.model_bytes)})")
        lines.append(f"dense caches: {self.cache_bytes:,} bytes ({_human(self.cache_bytes)}); "
                     f"shared workspace: {self.workspace_bytes:,} bytes ({_human(self.workspace_bytes)})")
        budget = "" if self.max_memory is None else f" of max_memory {self.max_memory:,} ({_human(self.max_memory)})"
        lines.append(f"total held: {self.total_bytes:,} bytes ({_human(self.total_bytes)}){budget}; activations not counted")
        if any(r.owner and r.cache_bytes for r in self.layers):
            lines.append("cache in parentheses: a tied head's matrix, kept in its embedding's cache and counted once")
        return "\n".join(lines)

    __str__ = table


def _model_bytes(model: nn.Module) -> int:
    tensors = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def _core_bytes(module: nn.Module) -> int:
    if not isinstance(module, MPOModule):
        return 0  # a tied head owns no cores
    return sum(c.numel() * c.element_size() for c in module.core_list())


def _build_plan(model, layers, modes: list[str], policy, max_memory, tokens, workspace, options) -> InferencePlan:
    names = {id(m): n for n, m in model.named_modules()}
    rows, need = [], 0
    for (name, m), mode, opts in zip(layers, modes, options):
        size = _itemsize(m)
        ws = opts[mode].workspace_elements * size if mode == "stream" else 0
        need = max(need, ws)
        owner = _owner(m)
        rows.append(LayerPlan(
            name=name, kind=type(m).__name__, shape=tuple(owner.shape), mode=mode, core_bytes=_core_bytes(m),
            cache_bytes=opts[mode].cache_elements * size if mode == "cache" else 0, workspace_bytes=ws,
            cached_now_bytes=m.held_bytes() if isinstance(m, MPOModule) else 0,
            owner=names.get(id(owner), "") if owner is not m else "", cost=float(opts[mode].cost),
        ))
    if workspace is not None:
        need = max(need, workspace.elements * max((_itemsize(m) for (_, m), mo in zip(layers, modes) if mo == "stream"),
                                                  default=0))
    return InferencePlan(policy=policy, layers=rows, model_bytes=_model_bytes(model), workspace_bytes=need,
                         max_memory=max_memory, tokens=tokens, workspace=workspace)


# ---------------------------------------------------------------------------
# choosing the modes
# ---------------------------------------------------------------------------


def _held_bytes(layers, modes, options) -> tuple[int, int]:
    """(dense cache bytes, each owner once; workspace bytes) of an assignment."""
    cache: dict[int, int] = {}
    ws = 0
    for (_, m), mode, opts in zip(layers, modes, options):
        size = _itemsize(m)
        if mode == "cache":
            cache[id(_owner(m))] = opts["cache"].cache_elements * size
        elif mode == "stream":
            ws = max(ws, opts["stream"].workspace_elements * size)
    return sum(cache.values()), ws


def _assign_auto(layers, modes, auto: list[int], options, budget: int, base_bytes: int) -> list[str]:
    """Modes for the ``auto`` indices: the least estimated time whose memory fits ``budget`` (see the module docstring)."""
    fixed_cache, fixed_ws = _held_bytes(layers, modes, options)
    fixed_owners = {id(_owner(m)) for (_, m), mode in zip(layers, modes) if mode == "cache"}
    sizes = {fixed_ws}
    for i in auto:
        if "stream" in options[i]:
            sizes.add(max(fixed_ws, options[i]["stream"].workspace_elements * _itemsize(layers[i][1])))
    best = None
    for ws in sorted(sizes):
        room = budget - base_bytes - fixed_cache - ws
        if room < 0:
            continue
        choice, time = {}, 0.0
        for i in auto:
            opts, size = options[i], _itemsize(layers[i][1])
            free = [(o.cost, mode) for mode, o in opts.items()
                    if mode == "contract" or (mode == "stream" and o.workspace_elements * size <= ws)]
            cost, mode = min(free, key=lambda t: (t[0], t[1] != "contract"))  # ties: contract holds nothing
            choice[i] = mode
            time += cost
        held = set(fixed_owners)
        pending = [i for i in auto if "cache" in options[i]]
        while pending:  # greedy: the largest time saved per byte that still fits
            def gain(i):
                o = options[i]
                saved = o[choice[i]].cost - o["cache"].cost
                size = 0 if id(_owner(layers[i][1])) in held else o["cache"].cache_elements * _itemsize(layers[i][1])
                return saved, size
            ranked = []
            for i in pending:
                saved, size = gain(i)
                if saved > 0 and size <= room:
                    ranked.append((saved / size if size else math.inf, saved, -i, size))
            if not ranked:
                break
            _, saved, neg_i, size = max(ranked)
            i = -neg_i
            choice[i] = "cache"
            time -= saved
            room -= size
            held.add(id(_owner(layers[i][1])))
            pending.remove(i)
        memory = budget - room
        if best is None or (time, memory) < (best[0], best[1]):
            best = (time, memory, choice)
    assert best is not None, "the minimum budget always fits the all-contract assignment"
    out = list(modes)
    for i, mode in best[2].items():
        out[i] = mode
    return out


def _requested(layers, policy) -> list[str]:
    """The policy asked for each layer (``"auto"`` included), from a string or a ``{pattern: policy}`` mapping."""
    if isinstance(policy, str):
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}; e.g. set_inference_mode(model, 'auto')")
        return [policy] * len(layers)
    if not isinstance(policy, Mapping) or not policy:
        raise TypeError(f"policy must be one of {POLICIES} or a non-empty mapping from module names (fnmatch patterns) "
                        f"to policies, got {policy!r}; e.g. {{'lm_head': 'contract', '*': 'stream'}}")
    for pattern, value in policy.items():
        if not isinstance(pattern, str) or value not in POLICIES:
            raise ValueError(f"policy entry {pattern!r}: {value!r} must map a module-name pattern to one of {POLICIES}; "
                             f"e.g. {{'lm_head': 'contract', '*': 'stream'}}")
    used, out = set(), []
    for name, _ in layers:
        hit = next((p for p in policy if fnmatch.fnmatchcase(name, p)), None)
        used.add(hit)
        out.append("cache" if hit is None else policy[hit])
    unused = [p for p in policy if p not in used]
    if unused:
        raise ValueError(f"policy patterns {unused} match no MPO module; the modules are "
                         f"{[n for n, _ in layers][:8]}{' ...' if len(layers) > 8 else ''}")
    return out


def set_inference_mode(model: nn.Module, policy: str | Mapping[str, str] = "auto", *,
                       max_memory: int | str | None = None, tokens: int = AUTO_TOKENS) -> InferencePlan:
    """Set what every MPO module of ``model`` holds and does in calls without gradients; returns the plan.

    Args:
        model: any module containing MPO layers (a model from :func:`mpokit.compress`, or one layer).
        policy: one of :data:`POLICIES` for every module, or a mapping from module names (``fnmatch``
            patterns, first match wins) to policies; modules no pattern matches keep ``"cache"``.
        max_memory: budget in bytes (int) or a string (``"300MB"``, ``"1.5GiB"``) for the parameters,
            buffers, dense caches and workspace. ``"auto"`` plans within it (default: what ``"stream"``
            holds); another policy that would hold more raises ``ValueError``.
        tokens: rows per call ``"auto"`` prices the layers at.

    Raises ``ValueError`` for an unknown policy, or a ``max_memory`` below the minimum (the parameters
    and buffers, the cores included: every module contracting, no workspace), naming the minimum.
    Caches are emptied; one :class:`Workspace` is shared by the streaming modules.
    """
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
        raise ValueError(f"tokens must be a positive int, got {tokens!r}; e.g. tokens=1024")
    if isinstance(policy, str) and policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}; e.g. set_inference_mode(model, 'auto')")
    budget = None if max_memory is None else parse_memory(max_memory)
    layers = inference_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no MPO module to set an inference mode on; "
                         "compress it first, e.g. mpokit.compress(model, MPOConfig(...))")
    requested = _requested(layers, policy)
    options = [m.inference_options(tokens) for _, m in layers]
    auto = [i for i, p in enumerate(requested) if p == "auto"]
    # auto modules at their smallest (contract, or a fresh rebuild per call), the others as asked
    modes = [_effective(m, "contract" if p == "auto" else p) for (_, m), p in zip(layers, requested)]
    base_bytes = _model_bytes(model)
    fixed = [None if i in auto else mode for i, mode in enumerate(modes)]
    cache, ws = _held_bytes(layers, modes if isinstance(policy, Mapping) else [None] * len(modes), options)
    minimum = base_bytes + cache + ws
    if budget is not None and budget < minimum:
        what = ("the model's parameters and buffers (the MPO cores included), with every MPO module contracting "
                "and no workspace") if not isinstance(policy, Mapping) else \
            "the parameters and buffers, the fixed modules' caches and workspace, and the 'auto' modules contracting"
        suggestion = math.ceil(minimum / 10**6) + 1
        raise ValueError(f"max_memory={max_memory!r} ({budget:,} bytes) is below the minimum of {minimum:,} bytes "
                         f"({_human(minimum)}): {what}; e.g. max_memory='{suggestion}MB'")
    planned_budget = budget
    if auto:
        if budget is None:  # what "stream" would hold
            streamed = [_effective(m, "stream") if i in auto else modes[i] for i, (_, m) in enumerate(layers)]
            cache, ws = _held_bytes(layers, streamed, options)
            planned_budget = base_bytes + cache + ws
        modes = _assign_auto(layers, fixed, auto, options, planned_budget, base_bytes)
    elif budget is not None:
        cache, ws = _held_bytes(layers, modes, options)
        if base_bytes + cache + ws > budget:
            raise ValueError(f"policy {policy!r} holds {base_bytes + cache + ws:,} bytes "
                             f"({_human(base_bytes + cache + ws)}), above max_memory={max_memory!r} ({budget:,} bytes); "
                             f"use policy='auto' to plan within the budget, e.g. "
                             f"set_inference_mode(model, 'auto', max_memory={max_memory!r})")
    need = max((options[i]["stream"].workspace_elements for i, mode in enumerate(modes) if mode == "stream"), default=0)
    workspace = Workspace(need) if need else None
    for (_, m), mode in zip(layers, modes):
        m.inference_mode = mode
        m.workspace = workspace if mode == "stream" else None
    return _build_plan(model, layers, modes, policy, planned_budget, tokens, workspace, options)


def inference_plan(model: nn.Module, *, tokens: int = AUTO_TOKENS) -> InferencePlan:
    """The current modes of ``model``'s MPO modules and their memory (the table of :func:`set_inference_mode`)."""
    layers = inference_layers(model)
    options = [m.inference_options(tokens) for _, m in layers]
    modes = [m.inference_mode for _, m in layers]
    workspaces = {id(m.workspace): m.workspace for _, m in layers if m.workspace is not None}
    workspace = next(iter(workspaces.values())) if len(workspaces) == 1 else None
    return _build_plan(model, layers, modes, "current", None, tokens, workspace, options)
