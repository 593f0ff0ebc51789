"""MPOModule: the structure every MPO layer shares.

An MPO layer holds one matrix ``W`` of shape ``(rows, cols)`` in MPO form:
cores of shape ``(d_{k-1}, i_k, j_k, d_k)``, out modes ``i_k`` factoring
``rows`` (zero-padded up to ``prod(i_k)``), in modes ``j_k`` factoring ``cols``.
For a Linear layer ``(rows, cols) = (out_features, in_features)``; for an
Embedding it is ``(num_embeddings, embedding_dim)``.

The base class gives:

* ``cores``: an ``nn.ParameterList``, one ``nn.Parameter`` per core;
* structure: ``central_index``, ``central_parameters()``, ``auxiliary_parameters()``;
* ``mpo()``: the current cores as an :class:`mpokit.MPO` (exact singular values);
* ``truncate_(...)``: in-place truncation that replaces the core Parameters;
* ``rebuild_weight()``: the unpadded matrix, differentiable, with an inference
  cache that is invalidated whenever a core changes (see below);
* counts and shapes: ``num_mpo_params``, ``dense_params``, ``bond_dims``,
  ``out_modes``, ``in_modes``, ``padded_shape``, ``compression_ratio``.

Inference cache. When no autograd graph to the cores is needed (under
``torch.no_grad`` / ``torch.inference_mode``, or when no core requires grad),
the rebuilt matrix is cached, if the layer's :attr:`~MPOModule.inference_mode`
is ``"cache"`` (the default). The cache key is, per core, the Parameter's
identity, its storage pointer, its in-place version counter (``_version``),
dtype and device. An optimizer step or ``load_state_dict`` (in-place
``copy_``) bumps the version; ``truncate_``, ``.to()`` and ``.half()`` replace
the tensor. Any of these invalidates the cache. Under ``torch.compile`` the
cache is bypassed.

Inference modes (:data:`INFERENCE_MODES`; set model-wide by
:func:`mpokit.set_inference_mode`). They decide what a call without a graph
to the cores holds; with a graph (training) every mode behaves the same.

* ``"cache"``: the rebuilt matrix (and merged cores of contraction plans) stay
  in the layer's cache;
* ``"stream"``: nothing is kept between calls; a call that rebuilds ``W``
  writes it into the :class:`Workspace` shared by the model's streaming layers
  (:meth:`MPOModule.stream_weight`), a call that contracts merges afresh;
* ``"contract"``: ``W`` is never formed (layers that support it: see
  ``SUPPORTED_MODES``).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch
from torch import nn

from .. import contract, shapes
from ..mpo import GAUGES, MPO

__all__ = ["MPOModule", "random_cores", "Workspace", "InferenceOption", "INFERENCE_MODES"]

INFERENCE_MODES = ("cache", "stream", "contract")


class Workspace:
    """One flat buffer shared by the streaming MPO layers of a model (``inference_mode == "stream"``).

    A layer that rebuilds ``W`` for one call writes it here (:meth:`get` then
    :func:`mpokit.contract.rebuild_into`), uses it, and the next layer
    overwrites it, so the model holds one matrix instead of one per layer. The
    buffer is allocated on first use with ``elements`` (the planned size, the
    largest need), on the device and in the dtype of the asking layer's cores;
    it is allocated again only when a call asks for another dtype or device or
    for more elements, or after :meth:`release` (every ``.to()`` / ``.half()``
    of a layer using it releases it). ``allocations`` counts the allocations.

    A tensor from :meth:`get` is valid until the next call of any layer sharing
    the workspace: one model with a workspace must not run in two threads at once.
    """

    def __init__(self, elements: int = 0) -> None:
        if isinstance(elements, bool) or not isinstance(elements, int) or elements < 0:
            raise ValueError(f"elements must be an int >= 0, got {elements!r}; e.g. Workspace(1536 * 384)")
        self.elements = elements
        self.buffer: torch.Tensor | None = None
        self.allocations = 0

    def get(self, elements: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """A contiguous 1-D tensor of ``elements`` entries (a view of the buffer), in ``dtype`` on ``device``."""
        buf = self.buffer
        if buf is None or buf.dtype != dtype or buf.device != torch.device(device) or buf.numel() < elements:
            self.buffer = None  # drop the old buffer before allocating the new one
            self.elements = max(self.elements, int(elements))
            self.buffer = buf = torch.empty(self.elements, dtype=dtype, device=device)
            self.allocations += 1
        return buf[:elements]

    def capacity(self, dtype: torch.dtype, device: torch.device) -> int:
        """Elements a :meth:`get` in ``dtype`` on ``device`` can have without a larger allocation."""
        buf = self.buffer
        if buf is not None and buf.dtype == dtype and buf.device == torch.device(device):
            return max(buf.numel(), self.elements)
        return self.elements

    def release(self) -> None:
        """Free the buffer (the next :meth:`get` allocates again)."""
        self.buffer = None

    @property
    def nbytes(self) -> int:
        """Bytes of the buffer now held (0 before the first use or after :meth:`release`)."""
        return 0 if self.buffer is None else self.buffer.numel() * self.buffer.element_size()

    def __getstate__(self) -> dict:  # pickling or deep-copying a model does not copy the buffer
        return {**self.__dict__, "buffer": None}

    def __repr__(self) -> str:
        held = "not allocated" if self.buffer is None else f"{self.buffer.numel()} x {self.buffer.dtype} on {self.buffer.device}"
        return f"Workspace(elements={self.elements}, {held}, allocations={self.allocations})"


def _tensor_bytes(value) -> int:
    """Bytes of the tensors in ``value`` (a tensor, or nested tuples / lists of them; other entries count 0)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(v) for v in value)
    return 0


class InferenceOption(NamedTuple):
    """What one inference mode costs a layer (see :meth:`MPOModule.inference_options`).

    ``cost``: estimated time of one call (FLOPs + ``ALPHA`` x elements moved, :mod:`mpokit.contract`);
    ``cache_elements``: entries the layer holds between calls; ``workspace_elements``: entries it needs
    of the shared :class:`Workspace`.
    """

    cost: float
    cache_elements: int = 0
    workspace_elements: int = 0


def random_cores(
    out_modes: Sequence[int],
    in_modes: Sequence[int],
    bond_dims: Sequence[int],
    entry_variance: float,
    *,
    device=None,
    dtype=None,
    generator: torch.Generator | None = None,
) -> list[torch.Tensor]:
    """Gaussian cores whose product has i.i.d.-like entries of variance ``entry_variance``.

    An entry of ``W`` is a sum over ``prod(bond_dims)`` products of ``n``
    independent zero-mean core entries, so with per-core variance ``s_k^2``:
    ``Var W = prod(d_k) * prod(s_k^2)``. All cores get the same ``s^2``.
    """
    n = len(out_modes)
    dims = (1, *bond_dims, 1)
    per_core_var = (entry_variance / math.prod(bond_dims)) ** (1.0 / n)
    std = math.sqrt(per_core_var)
    cores = []
    for k, (i, j) in enumerate(zip(out_modes, in_modes)):
        c = torch.empty(dims[k], i, j, dims[k + 1], device=device, dtype=dtype)
        c.normal_(0.0, std, generator=generator)
        cores.append(c)
    return cores


class MPOModule(nn.Module):
    """Base class of MPO layers (an ``nn.Module``). Subclasses call :meth:`_init_cores`.

    Core shape convention: ``(d_{k-1}, i_k, j_k, d_k)``, ``d_0 = d_n = 1``.
    """

    cores: nn.ParameterList
    SUPPORTED_MODES: tuple[str, ...] = ("cache", "stream")
    """Inference modes this layer type runs (``"contract"`` needs a forward that can skip ``W``)."""
    _inference_mode = "cache"
    workspace: Workspace | None = None

    def _init_cores(self, cores: Sequence[torch.Tensor], shape: tuple[int, int], gauge: str = "symmetric") -> None:
        """Register ``cores`` as Parameters for the (unpadded) matrix ``shape = (rows, cols)``."""
        if gauge not in GAUGES:
            raise ValueError(f"gauge must be one of {GAUGES}, got {gauge!r}; e.g. gauge='symmetric'")
        cores = [c.detach() for c in cores]
        from ..mpo import _check_cores  # internal validation shared with MPO

        _check_cores(cores)
        rows, cols = int(shape[0]), int(shape[1])
        padded = (math.prod(c.shape[1] for c in cores), math.prod(c.shape[2] for c in cores))
        if padded[0] < rows or padded[1] < cols:
            raise ValueError(
                f"the cores describe a {padded[0]}x{padded[1]} matrix, smaller than shape {(rows, cols)}; "
                f"out modes must multiply to >= rows and in modes to >= cols"
            )
        self.shape = (rows, cols)
        self.gauge = gauge
        self.error_bound = 0.0  # accumulated bound on ||W_original - W||_F from decomposition and truncations
        self.cores = nn.ParameterList([nn.Parameter(c.clone().contiguous()) for c in cores])
        self._cache: dict[str, tuple[tuple, object]] = {}
        self.recompute = False  # see run_recomputed; mpokit.compress turns it on (MPOConfig.recompute)

    # -- structure -------------------------------------------------------------

    def core_list(self) -> list[nn.Parameter]:
        """The cores as a plain list, in order (iterating the ``nn.ParameterList`` costs ~2 us per core,
        which adds up on the per-call path of small inputs)."""
        return list(self.cores._parameters.values())

    def grad_needed(self) -> bool:
        """Whether a call now builds an autograd graph to the cores."""
        return torch.is_grad_enabled() and any(p.requires_grad for p in self.core_list())

    @property
    def n_cores(self) -> int:
        return len(self.cores)

    @property
    def central_index(self) -> int:
        return shapes.central_index(len(self.cores))

    def central_parameters(self) -> list[nn.Parameter]:
        """The central core (index ``(n-1)//2``), as a one-element list."""
        return [self.cores[self.central_index]]

    def auxiliary_parameters(self) -> list[nn.Parameter]:
        """All cores except the central one, in order."""
        c = self.central_index
        return [p for k, p in enumerate(self.core_list()) if k != c]

    @property
    def out_modes(self) -> tuple[int, ...]:
        return tuple(int(c.shape[1]) for c in self.core_list())

    @property
    def in_modes(self) -> tuple[int, ...]:
        return tuple(int(c.shape[2]) for c in self.core_list())

    @property
    def bond_dims(self) -> tuple[int, ...]:
        return tuple(int(c.shape[3]) for c in self.core_list()[:-1])

    @property
    def padded_shape(self) -> tuple[int, int]:
        return (math.prod(self.out_modes), math.prod(self.in_modes))

    @property
    def num_mpo_params(self) -> int:
        return sum(c.numel() for c in self.core_list())

    @property
    def dense_params(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def compression_ratio(self) -> float:
        """MPO parameters / dense parameters (below 1 means smaller)."""
        return self.num_mpo_params / self.dense_params

    # -- MPO views and truncation ------------------------------------------------

    def mpo(self) -> MPO:
        """The current cores as an :class:`MPO` (re-canonicalised, exact singular values, no grad)."""
        return MPO.from_cores(list(self.cores), shape=self.shape, gauge=self.gauge)

    @torch.no_grad()
    def truncate_(
        self,
        max_bond: int | Sequence[int] | None = None,
        rel_error: float | None = None,
        max_params: int | None = None,
    ) -> float:
        """Truncate in place; returns this step's bound on ``||W_before - W_after||_F`` (absolute).

        Exactly one criterion (as :meth:`MPO.truncate`). When a bond changes,
        every core is replaced by a NEW ``nn.Parameter`` (rebuild optimizers
        afterwards); ``requires_grad`` of the central and auxiliary cores is
        kept. When no bond would change, nothing is replaced and 0.0 is returned.
        """
        current = self.mpo()
        truncated = current.truncate(max_bond=max_bond, rel_error=rel_error, max_params=max_params)
        if truncated.bond_dims == self.bond_dims:
            return 0.0
        bound = float(truncated.error_bound - current.error_bound)
        self.load_mpo_(truncated)
        self.error_bound += bound
        return bound

    @torch.no_grad()
    def load_mpo_(self, mpo: MPO) -> None:
        """Replace the cores by ``mpo``'s (new Parameters; modes must match, bonds may differ)."""
        if mpo.out_modes != self.out_modes or mpo.in_modes != self.in_modes:
            raise ValueError(
                f"MPO modes out {mpo.out_modes} x in {mpo.in_modes} do not match the layer's "
                f"out {self.out_modes} x in {self.in_modes}"
            )
        old = list(self.cores)
        c = self.central_index
        central_grad = old[c].requires_grad
        aux = [o for j, o in enumerate(old) if j != c]
        aux_grad = any(o.requires_grad for o in aux) if aux else central_grad
        new = []
        for k, (core, ref) in enumerate(zip(mpo.cores, old)):
            p = nn.Parameter(core.to(device=ref.device, dtype=ref.dtype).contiguous())
            p.requires_grad_(central_grad if k == c else aux_grad)
            new.append(p)
        self.cores = nn.ParameterList(new)
        self._cache = {}

    # -- the matrix ----------------------------------------------------------------

    def _cache_key(self) -> tuple:
        return tuple((id(p), p.data_ptr(), p._version, p.dtype, p.device) for p in self.core_list())

    def _cache_allowed(self) -> bool:
        if torch.compiler.is_compiling():
            return False
        return not self.grad_needed()

    def cached(self, name: str, compute, hold: bool | None = None):
        """``compute()`` (a function of the cores), cached under ``name`` while no graph to the cores is needed.

        The value is computed under no-grad with autocast off (so it has the
        cores' dtype) and recomputed whenever any core changes. It is kept only
        when ``hold`` (default: the layer's inference mode is ``"cache"``); a
        value already kept is returned in any mode while it is valid.
        """
        if not self._cache_allowed():
            if self._cache and not torch.compiler.is_compiling():
                self._cache = {}  # a training step makes it stale: do not hold it (a whole W) through training
            return compute()
        key = self._cache_key()
        hit = self._cache.get(name)
        if hit is not None and hit[0] == key:
            return hit[1]
        with torch.no_grad(), torch.autocast(device_type=self.cores[0].device.type, enabled=False):
            value = compute()
        keep = self._inference_mode == "cache" if hold is None else hold
        if keep:
            self._cache[name] = (key, value)
        return value

    def held(self, name: str) -> torch.Tensor | None:
        """The value cached under ``name`` if it is still valid and a call may use it now, else None."""
        if not self._cache or not self._cache_allowed():
            return None
        hit = self._cache.get(name)
        return hit[1] if hit is not None and hit[0] == self._cache_key() else None

    def held_bytes(self) -> int:
        """Bytes of the tensors in the cache now (rebuilt matrices, merged cores)."""
        return sum(_tensor_bytes(value) for _, value in self._cache.values())

    # -- inference modes -----------------------------------------------------------

    @property
    def inference_mode(self) -> str:
        """``"cache"``, ``"stream"`` or ``"contract"`` (see the module docstring); setting it empties the cache."""
        return self._inference_mode

    @inference_mode.setter
    def inference_mode(self, mode: str) -> None:
        if mode not in self.SUPPORTED_MODES:
            raise ValueError(f"inference_mode of {type(self).__name__} must be one of {self.SUPPORTED_MODES}, "
                             f"got {mode!r}; e.g. layer.inference_mode = 'stream'")
        self._inference_mode = mode
        self.clear_cache()

    def stream_weight(self) -> torch.Tensor:
        """``W (rows, cols)`` for one call without a graph: rebuilt into :attr:`workspace`, held by nobody.

        The result is a view of the shared buffer, valid until the next layer
        using the workspace runs (so it is for the caller's own matmul, not to
        keep). Without a workspace, or under ``torch.compile``, a fresh tensor.
        """
        cores = self.core_list()
        ref = cores[0]
        I, J = self.padded_shape
        if self.workspace is None or torch.compiler.is_compiling():
            full = contract.rebuild(cores)
        else:
            full = contract.rebuild_into(cores, self.workspace.get(I * J, ref.dtype, ref.device))  # (I, J)
        rows, cols = self.shape
        return full if (rows, cols) == (I, J) else full[:rows, :cols]

    def inference_options(self, tokens: int) -> dict[str, InferenceOption]:
        """Per supported mode, the :class:`InferenceOption` of a call with ``tokens`` rows (used by the planner).

        Base version (a module whose ``W`` is used by someone else, e.g. a host's
        forward): ``"cache"`` holds ``W`` and costs the matmul; ``"stream"``
        rebuilds ``W`` (a fresh tensor) on every call.
        """
        plan = self._rebuild_plan(tokens)
        rows, cols = self.shape
        return {"cache": InferenceOption(plan.estimated_cost(merged_cached=True), rows * cols, 0),
                "stream": InferenceOption(plan.estimated_cost(merged_cached=False), 0, 0)}

    def _rebuild_plan(self, tokens: int) -> contract.ApplyPlan:
        groups = ((0, self.n_cores),)
        return next(p for p in contract._all_plans(self.out_modes, self.in_modes, self.bond_dims, int(tokens))
                    if p.groups == groups)

    def run_recomputed(self, fn, *args):
        """``fn(*args)``; with ``self.recompute`` and a graph to the cores, its intermediates are not kept.

        Autograd then saves only ``fn``'s inputs and recomputes the rest in
        backward (``torch.utils.checkpoint``, non-reentrant): rebuilding ``W``
        saves merge intermediates as large as ``W`` itself, which dominate
        fine-tuning memory at small batches, while recomputing costs one more
        rebuild. Same values and gradients either way.
        """
        if self.recompute and not torch.compiler.is_compiling() and self.grad_needed():
            from torch.utils.checkpoint import checkpoint

            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def rebuild_weight(self, hold: bool | None = None) -> torch.Tensor:
        """``W`` of shape ``shape`` (padding sliced off), differentiable; cached when no graph is needed
        (``hold``: as :meth:`cached`, default: when the inference mode is ``"cache"``)."""
        return self.cached("weight", lambda: self.run_recomputed(lambda: self._rebuild_uncached().contiguous()), hold)

    def _rebuild_uncached(self) -> torch.Tensor:
        full = contract.rebuild(self.core_list())  # (I_padded, J_padded)
        rows, cols = self.shape
        if full.shape[0] != rows or full.shape[1] != cols:
            full = full[:rows, :cols]
        return full

    def clear_cache(self) -> None:
        self._cache = {}

    def _apply(self, fn, *args, **kwargs):  # .to(), .half(), .cuda(): drop the cache and the workspace buffer
        self._cache = {}
        if self.workspace is not None:
            self.workspace.release()
        return super()._apply(fn, *args, **kwargs)

    # -- state_dict with changed bonds --------------------------------------------

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        """Accept cores of other bond dimensions (e.g. a truncated checkpoint): resize the Parameters first."""
        for k, p in enumerate(self.cores):
            key = f"{prefix}cores.{k}"
            if key in state_dict and tuple(state_dict[key].shape) != tuple(p.shape):
                src = state_dict[key]
                if src.dim() != 4 or src.shape[1:3] != p.shape[1:3]:
                    continue  # let the default loader report the mismatch
                self.cores[k] = nn.Parameter(
                    torch.zeros(src.shape, dtype=p.dtype, device=p.device), requires_grad=p.requires_grad
                )
        self._cache = {}
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    # -- repr helpers ----------------------------------------------------------------

    def mpo_repr(self) -> str:
        """``out_modes=(...), in_modes=(...), bond_dims=(...), params=N/M (x fewer), inference=mode``."""
        return (
            f"out_modes={self.out_modes}, in_modes={self.in_modes}, bond_dims={self.bond_dims}, "
            f"mpo_params={self.num_mpo_params}, dense_params={self.dense_params}, "
            f"compression={self.dense_params / max(self.num_mpo_params, 1):.2f}x, "
            f"inference={self._inference_mode!r}"
        )
