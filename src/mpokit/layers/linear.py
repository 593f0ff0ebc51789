"""MPOLinear: a drop-in ``nn.Linear`` whose weight is an MPO.

``W`` has shape ``(out_features, in_features)``; out modes ``i_k`` factor
``out_features`` and in modes ``j_k`` factor ``in_features`` (both zero-padded
to the product of their modes when they do not factor). Core ``k`` has shape
``(d_{k-1}, i_k, j_k, d_k)``.

Execution (``layer.path``):

* ``"auto"`` (default): per call, the cheaper of the two paths by the cost model
  of :mod:`mpokit.contract` for this token count; the decision is cached per
  (input shape, grad mode, cache state);
* ``"rebuild"``: rebuild ``W`` (cached under no-grad, see :class:`MPOModule`), one matmul;
* ``"contract"``: contract the input with the cores, never forming ``W``.

Inference modes (``layer.inference_mode``, see :class:`MPOModule`; they apply to
calls without a graph to the cores):

* ``"cache"`` (default): as above, the rebuilt ``W`` / merged cores are cached;
* ``"stream"``: nothing is cached; the cost model prices merging too
  (``merged_cached=False``), so a call of few tokens (a decode step) contracts
  and a large one rebuilds ``W`` into the shared workspace (``path`` pins either);
* ``"contract"``: contraction plans only, merging afresh: ``W`` is never formed.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .. import contract, shapes
from ..mpo import MPO
from .base import InferenceOption, MPOModule, random_cores

__all__ = ["MPOLinear", "LINEAR_PATHS"]

LINEAR_PATHS = ("auto", "rebuild", "contract")


class MPOLinear(MPOModule):
    """``y = x W^T + b`` with ``W (out_features, in_features)`` stored as MPO cores ``(d_{k-1}, i_k, j_k, d_k)``.

    Random initialisation (training from scratch): Gaussian cores scaled so
    that the entries of ``W`` have the variance of ``nn.Linear``'s default
    init, ``1 / (3 in_features)``, which preserves the output variance; the
    bias is drawn like ``nn.Linear``'s, ``U(-1/sqrt(in), 1/sqrt(in))``.

    Args:
        in_features, out_features, bias: as ``nn.Linear``.
        out_modes, in_modes: factorisations of ``out_features`` / ``in_features``
            (default :func:`mpokit.shapes.choose_modes` with ``n_cores``).
        n_cores: number of cores when modes are not given.
        bond_dim: an int cap for every bond, one cap per bond, or None for the
            full (exact-capacity) bond dimensions.
        path: ``"auto"``, ``"rebuild"`` or ``"contract"``.
    """

    SUPPORTED_MODES = ("cache", "stream", "contract")

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        out_modes: Sequence[int] | None = None,
        in_modes: Sequence[int] | None = None,
        n_cores: int = 5,
        bond_dim: int | Sequence[int] | None = None,
        device=None,
        dtype=None,
        gauge: str = "symmetric",
        path: str = "auto",
        _cores: Sequence[torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}; e.g. MPOLinear(768, 3072)")
        self.in_features, self.out_features = in_features, out_features
        dtype = dtype if dtype is not None else torch.get_default_dtype()
        if _cores is None:
            out_modes, in_modes = _resolve_modes(out_features, in_features, out_modes, in_modes, n_cores)
            full = shapes.full_bond_dims(out_modes, in_modes)
            caps = full if bond_dim is None else ([bond_dim] * len(full) if isinstance(bond_dim, int) else list(bond_dim))
            if len(caps) != len(full) or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in caps):
                raise ValueError(
                    f"bond_dim must be a positive int or {len(full)} positive ints (one per bond), got {bond_dim!r}; "
                    f"e.g. bond_dim=16"
                )
            dims = shapes.consistent_bond_dims(out_modes, in_modes, caps)
            _cores = random_cores(out_modes, in_modes, dims, 1.0 / (3.0 * in_features), device=device, dtype=dtype)
        self._init_cores(_cores, (out_features, in_features), gauge)
        if bias:
            bound = 1.0 / math.sqrt(in_features)
            self.bias = nn.Parameter(torch.empty(out_features, device=device, dtype=dtype).uniform_(-bound, bound))
        else:
            self.register_parameter("bias", None)
        self.path = path
        self._path_cache: dict[tuple, contract.ApplyPlan] = {}

    # -- conversion ---------------------------------------------------------------

    @classmethod
    def from_mpo(cls, mpo: MPO, bias: torch.Tensor | None = None, *, path: str = "auto") -> "MPOLinear":
        """Wrap an :class:`MPO` of ``W (out_features, in_features)``; ``bias`` is copied when given."""
        out_features, in_features = mpo.shape
        cores = list(mpo.cores)
        layer = cls(in_features, out_features, bias=bias is not None, device=mpo.device, dtype=mpo.dtype,
                    gauge=mpo.gauge, path=path, _cores=cores)
        if bias is not None:
            with torch.no_grad():
                layer.bias.copy_(bias.detach())
        layer.error_bound = float(mpo.error_bound)
        return layer

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, path: str = "auto", **mpo_options) -> "MPOLinear":
        """TT-SVD of ``linear.weight``; shape, bias (or none), dtype and device come from ``linear``.

        ``mpo_options`` go to :meth:`MPO.from_matrix` (``out_modes``, ``in_modes``,
        ``n_cores``, ``max_bond``, ``rel_error``, ``max_params``, ``gauge``).
        """
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"from_linear needs an nn.Linear, got {type(linear).__name__}; e.g. nn.Linear(768, 768)")
        mpo = MPO.from_matrix(linear.weight.detach(), **mpo_options)
        mpo = mpo.to(device=linear.weight.device, dtype=linear.weight.dtype)
        layer = cls.from_mpo(mpo, linear.bias, path=path)
        layer.train(linear.training)
        return layer

    @torch.no_grad()
    def to_linear(self) -> nn.Linear:
        """A dense ``nn.Linear`` with the rebuilt weight (same bias presence, dtype, device)."""
        weight = self._rebuild_uncached().detach()
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device=weight.device, dtype=weight.dtype)
        linear.weight.copy_(weight)
        if self.bias is not None:
            linear.bias.copy_(self.bias)
        linear.train(self.training)
        return linear

    @property
    def weight(self) -> torch.Tensor:
        """The rebuilt ``W (out_features, in_features)`` (differentiable; cached under no-grad)."""
        return self.rebuild_weight()

    # -- execution ----------------------------------------------------------------

    @property
    def path(self) -> str:
        return self._path

    @path.setter
    def path(self, value: str) -> None:
        if value not in LINEAR_PATHS:
            raise ValueError(f"path must be one of {LINEAR_PATHS}, got {value!r}; e.g. layer.path = 'auto'")
        self._path = value

    def plan(self, tokens: int, grad_needed: bool | None = None, mode: str | None = None) -> contract.ApplyPlan:
        """The :class:`~mpokit.contract.ApplyPlan` a call with ``tokens`` rows runs (cached per setting).

        With grad, memory is what autograd saves. Without grad, under the
        inference ``mode`` (default: the layer's): ``"cache"`` takes merging as
        free (its results are cached); ``"stream"`` and ``"contract"`` pay it on
        every call, and ``"contract"`` excludes the rebuild plan.
        """
        grad_needed = self.grad_needed() if grad_needed is None else grad_needed
        mode = self._inference_mode if mode is None else mode
        key = (tokens, grad_needed, self._path, tuple(c.shape[3] for c in self.core_list()), mode)
        hit = self._path_cache.get(key)
        if hit is not None:  # the eager per-call path: a dict lookup
            return hit
        if torch.compiler.is_compiling():
            return self._plan_eagerly(key)
        return self._new_plan(key)

    @torch.compiler.disable  # plain Python on ints: run the plan search eagerly instead of tracing it
    def _plan_eagerly(self, key: tuple) -> contract.ApplyPlan:
        return self._new_plan(key)

    def _new_plan(self, key: tuple) -> contract.ApplyPlan:
        tokens, grad_needed, _, _, mode = key
        pinned = self._path if (grad_needed or mode != "contract") else "contract"
        if pinned == "rebuild":
            plan = self._rebuild_plan(tokens)
        else:
            plan = contract.plan_apply(
                self.out_modes, self.in_modes, self.bond_dims, tokens,
                merged_cached=not grad_needed and mode == "cache", training=grad_needed,
                contract_only=pinned == "contract",
            )
        self._path_cache[key] = plan
        return plan

    def inference_options(self, tokens: int) -> dict[str, InferenceOption]:
        """Per inference mode, the estimated cost of a call of ``tokens`` rows and the memory it holds:
        ``"cache"`` holds ``W``; ``"stream"`` needs the padded ``W`` of workspace; ``"contract"`` nothing."""
        out = {}
        rows, cols = self.shape
        I, J = self.padded_shape
        for mode, cache, workspace in (("cache", rows * cols, 0), ("stream", 0, I * J), ("contract", 0, 0)):
            plan = self.plan(tokens, grad_needed=False, mode=mode)
            out[mode] = InferenceOption(plan.estimated_cost(merged_cached=mode == "cache"), cache, workspace)
        return out

    def resolved_path(self, x_shape: Sequence[int]) -> str:
        """The path a call with an input of ``x_shape`` takes now (``"rebuild"`` or ``"contract"``)."""
        return self.plan(math.prod(x_shape[:-1])).path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"MPOLinear expects input of shape (..., in_features={self.in_features}), got {tuple(x.shape)}; "
                f"e.g. torch.randn(8, {self.in_features})"
            )
        lead = x.shape[:-1]
        grad_needed = self.grad_needed()
        plan = self.plan(math.prod(lead), grad_needed)
        if plan.path == "rebuild":
            streamed = not grad_needed and self._inference_mode == "stream"
            return F.linear(x, self.stream_weight() if streamed else self.rebuild_weight(), self.bias)
        # contract: x (..., in) -> (T, J_padded) -> merged-core sweep -> (T, I_padded) -> (..., out)
        J, I = self.padded_shape[1], self.padded_shape[0]
        x2 = x.reshape(-1, self.in_features)
        if J != self.in_features:
            x2 = F.pad(x2, (0, J - self.in_features))
        # merged cores as step matrices: kept in the cache under "cache", prepared afresh otherwise
        prepared = self.cached(f"sweep{plan.groups}{plan.order}", lambda: contract.prepare_sweep(
            contract.merge_groups(self.core_list(), plan.groups), plan.order))
        y = contract.run_sweep(x2, prepared)  # (T, I_padded)
        if I != self.out_features:
            y = y[:, : self.out_features]
        if self.bias is not None:
            y = y.add_(self.bias.to(y.dtype))  # in place: y is (a view of) the sweep's fresh output, which backward does not keep
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"{self.mpo_repr()}, path={self._path!r}"
        )


def _resolve_modes(out_features, in_features, out_modes, in_modes, n_cores):
    """Default or validate (out_modes, in_modes); products may exceed the sizes (zero padding)."""
    if out_modes is None or in_modes is None:
        if not isinstance(n_cores, int) or isinstance(n_cores, bool) or n_cores < 1:
            raise ValueError(f"n_cores must be a positive int, got {n_cores!r}; e.g. n_cores=5")
        n = len(out_modes) if out_modes is not None else len(in_modes) if in_modes is not None else n_cores
        auto_out, auto_in = shapes.choose_modes(out_features, in_features, n)
        out_modes = auto_out if out_modes is None else out_modes
        in_modes = auto_in if in_modes is None else in_modes
    out_modes, in_modes = shapes.validate_modes(out_modes, in_modes)
    for name, modes, size in (("out_modes", out_modes, out_features), ("in_modes", in_modes, in_features)):
        if math.prod(modes) < size:
            raise ValueError(
                f"{name} {modes} multiply to {math.prod(modes)}, below {size}; modes must multiply to at least "
                f"the size, e.g. {name}={shapes.factorize(size, len(modes))}"
            )
    return out_modes, in_modes
