"""Per-matrix truncated SVD (low-rank factorisation) to a parameter budget, fine-tunable.

``W (out_features, in_features) ~= U V`` with ``U (out, r) = U_r sqrt(S_r)`` and
``V (r, in) = sqrt(S_r) Vh_r``; :class:`LowRankLinear` applies ``x V^T U^T + b`` and trains
both factors. transformers' ``Conv1D`` (GPT-2; ``y = x W_c + b`` with ``W_c (in, out)``) is the
linear map of ``W = W_c^T`` and is factorised the same way. :func:`allocate_ranks` (pure) splits a budget across matrices: ``"global"``
keeps the rank-1 components with the largest ``sigma^2 / (out + in)`` (least squared
Frobenius error per parameter), ``"uniform"`` gives every matrix the same fraction.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from torch import nn

__all__ = ["LowRankLinear", "LowRankResult", "allocate_ranks", "lowrank_", "ALLOCATIONS"]

ALLOCATIONS = ("global", "uniform")


def _is_conv1d(module: nn.Module) -> bool:
    """Whether ``module`` is transformers' ``Conv1D`` (looked up only if transformers is loaded)."""
    utils = sys.modules.get("transformers.pytorch_utils")
    cls = getattr(utils, "Conv1D", None) if utils is not None else None
    return cls is not None and isinstance(module, cls)


def _is_linear_map(module) -> bool:
    return isinstance(module, nn.Linear) or (isinstance(module, nn.Module) and _is_conv1d(module))


def _dense_weight(module: nn.Module) -> torch.Tensor:
    """The ``(out_features, in_features)`` weight of an nn.Linear or a ``Conv1D`` (whose weight is stored transposed)."""
    w = module.weight.detach()
    return w.t() if _is_conv1d(module) else w


class LowRankLinear(nn.Module):
    """``y = (x V^T) U^T + b``; ``U (out_features, rank)``, ``V (rank, in_features)``."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True, *, device=None, dtype=None):
        super().__init__()
        if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank:
            raise ValueError(f"rank must be an int >= 1, got {rank!r}; e.g. rank=min(out, in) // 4")
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.left = nn.Parameter(torch.empty(out_features, rank, device=device, dtype=dtype))  # U (out, r)
        self.right = nn.Parameter(torch.empty(rank, in_features, device=device, dtype=dtype))  # V (r, in)
        nn.init.normal_(self.left, std=(1.0 / (3 * in_features * rank)) ** 0.25)
        nn.init.normal_(self.right, std=(1.0 / (3 * in_features * rank)) ** 0.25)
        self.bias = nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype)) if bias else None

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Module, rank: int) -> "LowRankLinear":
        """Truncated SVD of the linear map of ``linear`` (an nn.Linear, or transformers' ``Conv1D``) at ``rank``
        (Eckart-Young optimal); bias, dtype, device kept."""
        if not _is_linear_map(linear):
            raise TypeError(f"from_linear needs an nn.Linear or a transformers Conv1D, got {type(linear).__name__}; "
                            f"e.g. nn.Linear(384, 1536)")
        w = _dense_weight(linear)  # (out, in)
        full = min(w.shape)
        if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= full:
            raise ValueError(f"rank must be an int in [1, {full}] for a {tuple(w.shape)} weight, got {rank!r}; e.g. rank={max(1, full // 4)}")
        u, s, vh = torch.linalg.svd(w.double(), full_matrices=False)
        root = s[:rank].sqrt()
        out_features, in_features = w.shape
        layer = cls(in_features, out_features, rank, bias=linear.bias is not None, device=w.device, dtype=w.dtype)
        layer.left.copy_((u[:, :rank] * root).to(w.dtype))
        layer.right.copy_((root[:, None] * vh[:rank]).to(w.dtype))
        if linear.bias is not None:
            layer.bias.copy_(linear.bias.detach())
        layer.train(linear.training)
        return layer

    @property
    def weight(self) -> torch.Tensor:
        """The rebuilt ``(out_features, in_features)`` matrix ``U V``."""
        return self.left @ self.right

    @torch.no_grad()
    def to_linear(self) -> nn.Linear:
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device=self.left.device, dtype=self.left.dtype)
        linear.weight.copy_(self.weight)
        if self.bias is not None:
            linear.bias.copy_(self.bias)
        return linear

    @property
    def num_factor_params(self) -> int:
        return self.rank * (self.in_features + self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x (..., in) -> (..., r) -> (..., out)
        return nn.functional.linear(nn.functional.linear(x, self.right), self.left, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, bias={self.bias is not None}"


def allocate_ranks(
    spectra: Mapping[str, tuple[torch.Tensor, int, int]], target_params: int, allocation: str = "global"
) -> dict[str, int]:
    """Pure: ranks per matrix with ``sum r (out + in) <= target_params``, every rank >= 1.

    ``spectra[name] = (singular values descending, out_features, in_features)``.
    """
    if allocation not in ALLOCATIONS:
        raise ValueError(f"allocation must be one of {ALLOCATIONS}, got {allocation!r}; e.g. allocation='global'")
    cost = {n: o + i for n, (_, o, i) in spectra.items()}
    floor = sum(cost.values())
    if target_params < floor:
        raise ValueError(f"budget {target_params} is below the smallest low-rank model (rank 1 everywhere: {floor} parameters); e.g. target_params={floor * 4}")
    ranks = {n: 1 for n in spectra}
    spent = floor
    if allocation == "uniform":
        dense = sum(o * i for _, o, i in spectra.values())
        ratio = target_params / dense
        for n, (s, o, i) in spectra.items():
            ranks[n] = max(1, min(len(s), int(ratio * o * i // (o + i))))
        return ranks
    items = []
    for n, (s, o, i) in spectra.items():
        sq = s.double() ** 2
        items.extend((float(sq[k]) / cost[n], n, k) for k in range(1, len(s)))
    items.sort(key=lambda t: (-t[0], t[1], t[2]))
    for _, n, k in items:
        if k == ranks[n] and spent + cost[n] <= target_params:  # components of one matrix are taken in order
            ranks[n] += 1
            spent += cost[n]
    return ranks


@dataclass
class LowRankResult:
    ranks: dict[str, int]
    dense: int
    params: int
    budget: int


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


@torch.no_grad()
def lowrank_(
    model: nn.Module,
    targets: Sequence[str],
    *,
    target_params: int | None = None,
    target_ratio: float | None = None,
    allocation: str = "global",
) -> LowRankResult:
    """Replace each target nn.Linear (or ``Conv1D``) by a :class:`LowRankLinear` so the factors fit the budget.

    ``target_ratio`` is relative to the dense entries of the targets. Returns the ranks.
    """
    modules = dict(model.named_modules())
    if isinstance(targets, str):
        targets = [targets]
    bad = [t for t in targets if not _is_linear_map(modules.get(t))]
    if bad:
        sample = [n for n, m in modules.items() if _is_linear_map(m)][:3]
        raise ValueError(f"unknown target(s) {bad}: not nn.Linear / Conv1D modules of this model; valid names e.g. "
                         f"{sample}")
    dense = sum(modules[t].weight.numel() for t in targets)
    if target_params is not None and target_ratio is not None:
        raise ValueError(f"give one budget, got target_params={target_params!r} and target_ratio={target_ratio!r}; e.g. target_ratio=0.5")
    if target_ratio is not None:
        if isinstance(target_ratio, bool) or not isinstance(target_ratio, (int, float)) or not target_ratio > 0:
            raise ValueError(f"target_ratio must be a number > 0 (fraction of the dense entries), got {target_ratio!r}; e.g. target_ratio=0.5")
        target_params = int(math.floor(target_ratio * dense))
    if isinstance(target_params, bool) or not isinstance(target_params, int):
        raise ValueError(f"lowrank_ needs a budget: target_params (int) or target_ratio, got {target_params!r}; e.g. target_ratio=0.5")
    weights = {t: _dense_weight(modules[t]) for t in targets}  # (out, in) each
    spectra = {t: (torch.linalg.svdvals(w.double()), w.shape[0], w.shape[1]) for t, w in weights.items()}
    ranks = allocate_ranks(spectra, target_params, allocation)
    for t in targets:
        _set_submodule(model, t, LowRankLinear.from_linear(modules[t], ranks[t]))
    params = sum(r * (spectra[t][1] + spectra[t][2]) for t, r in ranks.items())
    return LowRankResult(ranks, dense, params, target_params)
