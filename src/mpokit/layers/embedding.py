"""MPOEmbedding: a drop-in ``nn.Embedding`` whose table is an MPO.

The MPO is of the table ``weight (num_embeddings, embedding_dim)``: out modes
``i_k`` factor ``num_embeddings`` (zero-padded, e.g. 30522 -> 30720 =
6*8*10*8*8), in modes ``j_k`` factor ``embedding_dim``. Core ``k`` has shape
``(d_{k-1}, i_k, j_k, d_k)``.

Row lookup without the table. Row ``r`` has mixed-radix digits
``(i_1, .., i_n)`` over the out modes, and

    W[r, :] = G_1[:, i_1, :, :] G_2[:, i_2, :, :] ... G_n[:, i_n, :, :]

a product of per-core slices of shape ``(d_{k-1}, j_k, d_k)``. The ``"rows"``
path contracts these slices for the distinct ids of a batch only; the
``"rebuild"`` path rebuilds the table and indexes it. ``"auto"`` picks the
cheaper by FLOPs; under no-grad the rebuilt table is cached (see
:class:`MPOModule`) and indexing it is always used.

Inference modes (``emb.inference_mode``, see :class:`MPOModule`; for calls
without a graph to the cores): ``"cache"`` (default) as above; ``"stream"`` and
``"contract"`` gather the rows of the batch's distinct ids (``"rows"``) on every
call and keep nothing, so the table is never formed (a table that a tied
output head keeps in this module's cache is indexed instead). Without a graph
the left halves are made a block of prefixes at a time, so the gather holds
no more than a few MiB besides its output. Only a call with most of the
vocabulary would be cheaper as a rebuild of the table; the embedding never
does that outside ``"cache"``, and so needs no stream workspace.

``padding_idx``: the output at ``padding_idx`` positions is exactly zero and
sends no gradient to the cores, which is what ``nn.Embedding`` does with its
(zero-initialised, never-updated) padding row. The MPO cannot pin one row of
the table to zero, so this is done by masking the output; ``to_embedding()``
writes a zero padding row. ``max_norm``, ``scale_grad_by_freq`` and
``sparse`` are not supported.
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
from .linear import _resolve_modes

__all__ = ["MPOEmbedding", "EMBEDDING_PATHS", "lookup_rows", "best_split", "rows_cost", "rebuild_cost"]

EMBEDDING_PATHS = ("auto", "rebuild", "rows")


def rows_cost(out_modes: Sequence[int], in_modes: Sequence[int], bond_dims: Sequence[int], n_rows: int, split: int) -> tuple[int, float]:
    """(FLOPs, estimated cost) of :func:`lookup_rows` for ``n_rows`` rows meeting at bond ``split`` (1..n-1).

    Merging cores ``< split`` gives every left half ``(I_L, J_L, d)``, merging the rest every
    right half ``(d, I_R, J_R)``; each row is then one ``(J_L, d) @ (d, J_R)`` product of the halves
    its digits select. The estimate adds ``ALPHA`` per element gathered or written.
    """
    dims = contract._dims(bond_dims)
    n = len(out_modes)
    lf, le = contract._merge_cost(out_modes, in_modes, dims, 0, split)
    rf, re = contract._merge_cost(out_modes, in_modes, dims, split, n)
    J_L, J_R, d = math.prod(in_modes[:split]), math.prod(in_modes[split:]), dims[split]
    per_row = 2 * J_L * d * J_R
    flops = lf + rf + n_rows * per_row
    moved = 2 * (le + re) + n_rows * (J_L * d + d * J_R + J_L * J_R)
    return flops, flops + contract.ALPHA * moved


def rebuild_cost(out_modes: Sequence[int], in_modes: Sequence[int], bond_dims: Sequence[int], n_rows: int) -> tuple[int, float]:
    """(FLOPs, estimated cost) of rebuilding the table and gathering ``n_rows`` rows."""
    flops, elements = contract._merge_cost(out_modes, in_modes, contract._dims(bond_dims), 0, len(out_modes))
    return flops, flops + contract.ALPHA * (2 * elements + n_rows * math.prod(in_modes))


def best_split(out_modes: Sequence[int], in_modes: Sequence[int], bond_dims: Sequence[int], n_rows: int) -> int:
    """The bond (1..n-1) where :func:`lookup_rows` joins the halves most cheaply for ``n_rows`` rows."""
    n = len(out_modes)
    if n == 1:
        return 1
    return min(range(1, n), key=lambda m: (rows_cost(out_modes, in_modes, bond_dims, n_rows, m)[1], m))


def lookup_rows(cores: Sequence[torch.Tensor], rows: torch.Tensor, split: int | None = None) -> torch.Tensor:
    """Rows ``W[rows, :]`` (padded width ``J``) of the MPO, without rebuilding ``W``: (N,) -> (N, J).

    Cores ``< split`` are merged into all left halves ``(I_L, J_L, d)`` and the others into all
    right halves ``(I_R, d, J_R)`` (token-independent, small when bonds are small); row ``r`` is
    ``left[r // I_R] @ right[r % I_R]``. ``rows`` is a 1-D integer tensor of valid (padded) row indices.
    """
    n = len(cores)
    out_modes = [int(c.shape[1]) for c in cores]
    in_modes = [int(c.shape[2]) for c in cores]
    N = rows.shape[0]
    if n == 1:
        return cores[0][0, :, :, 0].index_select(0, rows)
    if split is None:
        split = best_split(out_modes, in_modes, [int(c.shape[3]) for c in cores[:-1]], N)
    grad = torch.is_grad_enabled() and any(c.requires_grad for c in cores)
    if not grad and not torch.compiler.is_compiling():
        return _lookup_rows_blocked(cores, rows, split, INFERENCE_GATHER_CHUNK_ELEMENTS).reshape(N, -1)
    left = contract.merge_cores(cores[:split])  # (1, I_L, J_L, d)
    right = contract.merge_cores(cores[split:])  # (d, I_R, J_R, 1)
    _, I_L, J_L, d = left.shape
    _, I_R, J_R, _ = right.shape
    left = left.reshape(I_L, J_L, d)
    right = right.reshape(d, I_R, J_R).permute(1, 0, 2)  # (I_R, d, J_R)
    prefix = torch.div(rows, I_R, rounding_mode="floor")  # (N,)
    suffix = rows - prefix * I_R  # (N,)
    # (N, J_L, d) @ (N, d, J_R) -> (N, J_L, J_R) = (N, J)
    return _RowProducts.apply(left, right, prefix, suffix).reshape(N, J_L * J_R)


def _lookup_rows_blocked(cores: Sequence[torch.Tensor], rows: torch.Tensor, split: int, chunk: int) -> torch.Tensor:
    """:func:`lookup_rows` without a graph and without holding the left halves: (N,) -> (N, J_L, J_R).

    The left halves ``(J_L, d)`` of all ``I_L`` prefixes can be as large as half the table at large
    bonds. Here they are made a block of prefixes at a time, each block at most ``chunk`` elements
    (or one sub-row's ``i_split`` prefixes): cores ``< split - 1`` are merged into ``sub (P', Q', b)``,
    and a block is ``sub[r0:r1]`` joined with core ``split - 1`` (:func:`mpokit.contract._join_into`).
    Only blocks holding a prefix of ``rows`` are made; the rows are gathered in sorted order.
    """
    right = contract.merge_cores(cores[split:])  # (d, I_R, J_R, 1)
    d, I_R, J_R, _ = right.shape
    right = right.reshape(d, I_R, J_R).permute(1, 0, 2)  # (I_R, d, J_R)
    ordered, order = torch.sort(rows)
    prefix = torch.div(ordered, I_R, rounding_mode="floor")  # (N,), ascending
    suffix = ordered - prefix * I_R
    if split == 1:
        left = cores[0].reshape(cores[0].shape[1:])  # (1, i_1, j_1, d) -> (i_1, j_1, d)
        out = _row_products(left, right, prefix, suffix, chunk)
    else:
        sub = contract.merge_cores(cores[: split - 1])  # (1, P', Q', b)
        last = cores[split - 1]  # (b, i, j, d)
        _, P, Q, b = sub.shape
        _, i, j, _ = last.shape
        sub, last = sub.reshape(P, Q, b), last.reshape(b, i, j * d)
        per_sub = i * Q * j * d  # elements of the left halves of one row of sub
        step = max(1, chunk // per_sub)
        starts = list(range(0, P, step))
        edges = torch.tensor([r * i for r in starts] + [P * i], device=prefix.device, dtype=prefix.dtype)
        bounds = torch.searchsorted(prefix, edges).tolist()  # rows of each block of prefixes
        out = None
        for r0, a, z in zip(starts, bounds[:-1], bounds[1:]):
            if a == z:
                continue
            r1 = min(P, r0 + step)
            buf = torch.empty((r1 - r0) * per_sub, dtype=torch.promote_types(sub.dtype, last.dtype), device=sub.device)
            contract._join_into(sub, last, buf, r0, r1)  # (r, i, Q, j d): prefixes [r0 i, r1 i) as (Q j, d)
            left = buf.view((r1 - r0) * i, Q * j, d)  # (prefixes, J_L, d)
            part = _row_products(left, right, prefix[a:z] - r0 * i, suffix[a:z], chunk)
            if out is None:
                out = part.new_empty(rows.shape[0], *part.shape[1:])
            out[a:z] = part
        if out is None:  # no rows
            return right.new_zeros(0, math.prod(c.shape[2] for c in cores[:split]), J_R)
    if bool((ordered == rows).all()):  # sorted already (e.g. torch.unique's ids)
        return out
    return out.new_empty(out.shape).index_copy_(0, order, out)  # back to the order of rows


GATHER_CHUNK_ELEMENTS = 1 << 22  # gathered halves per chunk (16 MiB in float32)
INFERENCE_GATHER_CHUNK_ELEMENTS = 1 << 20  # without a graph: nothing is kept, so smaller chunks (4 MiB) cost no speed


def _chunks(n_rows: int, left: torch.Tensor, right: torch.Tensor, chunk: int | None = None):
    per_row = left.shape[1] * left.shape[2] + right.shape[1] * right.shape[2]
    step = max(1, (GATHER_CHUNK_ELEMENTS if chunk is None else chunk) // max(per_row, 1))
    return ((s, min(s + step, n_rows)) for s in range(0, n_rows, step))


def _row_products(left, right, prefix, suffix, chunk: int | None = None) -> torch.Tensor:
    """``out[r] = left[prefix[r]] @ right[suffix[r]]``, a chunk of rows at a time: (N, J_L, J_R)."""
    N = prefix.shape[0]
    if N == 0:
        return left.new_zeros(0, left.shape[1], right.shape[2])
    out = None
    for s, e in _chunks(N, left, right, chunk):
        part = torch.bmm(left.index_select(0, prefix[s:e]), right.index_select(0, suffix[s:e]))
        if out is None:
            if e == N:
                return part
            out = part.new_empty(N, *part.shape[1:])
        out[s:e] = part
    return out


class _RowProducts(torch.autograd.Function):
    """``out[r] = left[prefix[r]] @ right[suffix[r]]``: (I_L, J_L, d), (I_R, d, J_R) -> (N, J_L, J_R).

    Gathers the halves a chunk of rows at a time and saves only the two half
    tables and the indices for backward, so memory stays ``O(chunk)`` instead of
    the ``N (J_L d + d J_R)`` elements a plain ``index_select`` + ``bmm`` keeps
    alive until backward. Gradients are scattered back with ``index_add_``.
    """

    @staticmethod
    def forward(ctx, left, right, prefix, suffix):
        ctx.save_for_backward(left, right, prefix, suffix)
        return _row_products(left, right, prefix, suffix)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # grad (N, J_L, J_R)
        left, right, prefix, suffix = ctx.saved_tensors
        want_left, want_right = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_left = torch.zeros_like(left) if want_left else None
        grad_right = torch.zeros_like(right) if want_right else None
        dtype = torch.promote_types(left.dtype, right.dtype)  # the halves differ under autocast (a lone core stays fp32)
        grad = grad.to(dtype)
        for s, e in _chunks(prefix.shape[0], left, right):
            g = grad[s:e]
            if want_left:  # (c, J_L, J_R) @ (c, J_R, d)
                r = right.index_select(0, suffix[s:e]).to(dtype)
                grad_left.index_add_(0, prefix[s:e], torch.bmm(g, r.transpose(1, 2)).to(left.dtype))
            if want_right:  # (c, d, J_L) @ (c, J_L, J_R)
                l = left.index_select(0, prefix[s:e]).to(dtype)
                grad_right.index_add_(0, suffix[s:e], torch.bmm(l.transpose(1, 2), g).to(right.dtype))
        return grad_left, grad_right, None, None


class MPOEmbedding(MPOModule):
    """``nn.Embedding`` with the table ``(num_embeddings, embedding_dim)`` as MPO cores ``(d_{k-1}, i_k, j_k, d_k)``.

    Random initialisation matches ``nn.Embedding`` (entries of variance 1; padding row zero in the output).

    Args:
        num_embeddings, embedding_dim, padding_idx: as ``nn.Embedding``.
        out_modes, in_modes: factorisations of ``num_embeddings`` (may pad) / ``embedding_dim``.
        n_cores: number of cores when modes are not given.
        bond_dim: an int cap for every bond, one cap per bond, or None for full bonds.
        path: ``"auto"``, ``"rebuild"`` or ``"rows"``.
    """

    SUPPORTED_MODES = ("cache", "stream", "contract")

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx: int | None = None,
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
        for name, value in (("num_embeddings", num_embeddings), ("embedding_dim", embedding_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}; e.g. MPOEmbedding(30522, 768)")
        if padding_idx is not None:
            if not isinstance(padding_idx, int) or not -num_embeddings <= padding_idx < num_embeddings:
                raise ValueError(
                    f"padding_idx must be an int in [-{num_embeddings}, {num_embeddings}), got {padding_idx!r}; "
                    f"e.g. padding_idx=0"
                )
            padding_idx = padding_idx % num_embeddings
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx
        dtype = dtype if dtype is not None else torch.get_default_dtype()
        if _cores is None:
            out_modes, in_modes = _resolve_modes(num_embeddings, embedding_dim, out_modes, in_modes, n_cores)
            full = shapes.full_bond_dims(out_modes, in_modes)
            caps = full if bond_dim is None else ([bond_dim] * len(full) if isinstance(bond_dim, int) else list(bond_dim))
            if len(caps) != len(full) or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in caps):
                raise ValueError(
                    f"bond_dim must be a positive int or {len(full)} positive ints (one per bond), got {bond_dim!r}; "
                    f"e.g. bond_dim=16"
                )
            dims = shapes.consistent_bond_dims(out_modes, in_modes, caps)
            _cores = random_cores(out_modes, in_modes, dims, 1.0, device=device, dtype=dtype)
        self._init_cores(_cores, (num_embeddings, embedding_dim), gauge)
        self.path = path

    # -- conversion ---------------------------------------------------------------

    @classmethod
    def from_mpo(cls, mpo: MPO, padding_idx: int | None = None, *, path: str = "auto") -> "MPOEmbedding":
        num_embeddings, embedding_dim = mpo.shape
        layer = cls(num_embeddings, embedding_dim, padding_idx, device=mpo.device, dtype=mpo.dtype,
                    gauge=mpo.gauge, path=path, _cores=list(mpo.cores))
        layer.error_bound = float(mpo.error_bound)
        return layer

    @classmethod
    def from_embedding(cls, embedding: nn.Embedding, *, path: str = "auto", **mpo_options) -> "MPOEmbedding":
        """TT-SVD of ``embedding.weight``; sizes, ``padding_idx``, dtype and device come from ``embedding``.

        ``mpo_options`` go to :meth:`MPO.from_matrix`; the default modes pad
        sizes that do not factor (30522 -> 30720).
        """
        if not isinstance(embedding, nn.Embedding):
            raise TypeError(f"from_embedding needs an nn.Embedding, got {type(embedding).__name__}; e.g. nn.Embedding(30522, 768)")
        for attr, default in (("max_norm", None), ("scale_grad_by_freq", False), ("sparse", False)):
            if getattr(embedding, attr) != default:
                raise ValueError(
                    f"MPOEmbedding does not support {attr}={getattr(embedding, attr)!r}; convert an embedding with "
                    f"{attr}={default!r}"
                )
        weight = embedding.weight.detach()
        mpo = MPO.from_matrix(weight, **mpo_options).to(device=weight.device, dtype=weight.dtype)
        layer = cls.from_mpo(mpo, embedding.padding_idx, path=path)
        layer.train(embedding.training)
        return layer

    @torch.no_grad()
    def to_embedding(self) -> nn.Embedding:
        """A dense ``nn.Embedding`` with the rebuilt table (zero padding row), same dtype and device."""
        table = self._rebuild_uncached().detach()
        emb = nn.Embedding(self.num_embeddings, self.embedding_dim, padding_idx=self.padding_idx,
                           device=table.device, dtype=table.dtype)
        emb.weight.copy_(table)
        if self.padding_idx is not None:
            emb.weight[self.padding_idx].zero_()
        emb.train(self.training)
        return emb

    @property
    def weight(self) -> torch.Tensor:
        """The rebuilt table ``(num_embeddings, embedding_dim)`` (as stored: the padding row is not zeroed)."""
        return self.rebuild_weight()

    # -- execution ----------------------------------------------------------------

    @property
    def path(self) -> str:
        return self._path

    @path.setter
    def path(self, value: str) -> None:
        if value not in EMBEDDING_PATHS:
            raise ValueError(f"path must be one of {EMBEDDING_PATHS}, got {value!r}; e.g. emb.path = 'auto'")
        self._path = value

    def resolved_path(self, distinct_ids: int, grad_needed: bool | None = None) -> str:
        """``"rebuild"`` or ``"rows"`` for a batch with ``distinct_ids`` different ids."""
        if self._path != "auto":
            return self._path
        grad_needed = self.grad_needed() if grad_needed is None else grad_needed
        if not grad_needed:
            return "rebuild" if self._inference_mode == "cache" else "rows"  # "cache": the table is cached
        args = (self.out_modes, self.in_modes, self.bond_dims)
        if self.n_cores == 1:
            return "rebuild"
        rows = rows_cost(*args, distinct_ids, best_split(*args, distinct_ids))[1]
        return "rows" if rows < rebuild_cost(*args, distinct_ids)[1] else "rebuild"

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not isinstance(input, torch.Tensor) or input.dtype not in (torch.long, torch.int, torch.int16, torch.int8, torch.uint8):
            got = input.dtype if isinstance(input, torch.Tensor) else type(input).__name__
            raise TypeError(f"MPOEmbedding expects an integer tensor of ids, got {got}; e.g. torch.tensor([[101, 2023, 102]])")
        if input.numel():
            low, high = (int(v) for v in torch.aminmax(input))  # one pass over the ids
            if low < 0 or high >= self.num_embeddings:
                raise ValueError(
                    f"ids must be in [0, {self.num_embeddings}), got min {low} and max {high}; "
                    f"e.g. torch.tensor([0, 5, {self.num_embeddings - 1}])"
                )
        ids = input.reshape(-1).long()
        grad_needed = self.grad_needed()
        table = None if grad_needed or self._inference_mode == "cache" else self.held("weight")
        if table is not None:  # a table kept by a tied head
            out = F.embedding(ids, table)
        elif not grad_needed and self._inference_mode != "cache":
            out = self._gather(ids)
        elif self._path == "rebuild" or (self._path == "auto" and not grad_needed):
            out = F.embedding(ids, self.rebuild_weight())  # (N, D), table cached under no-grad
        else:
            unique, inverse = torch.unique(ids, return_inverse=True)  # (U,), (N,)
            if self.resolved_path(unique.numel(), grad_needed) == "rebuild":
                out = F.embedding(ids, self.rebuild_weight())
            else:
                out = self._gather(ids, unique, inverse)
        if self.padding_idx is not None:
            out = out.masked_fill((ids == self.padding_idx).unsqueeze(-1), 0.0)
        return out.reshape(*input.shape, self.embedding_dim)

    def _gather(self, ids: torch.Tensor, unique: torch.Tensor | None = None, inverse: torch.Tensor | None = None):
        """Rows of ``ids (N,)`` from the cores (``"rows"`` path): (N,) -> (N, D)."""
        if unique is None:
            unique, inverse = torch.unique(ids, return_inverse=True)  # (U,), (N,)
        rows = self.run_recomputed(lambda u: lookup_rows(self.core_list(), u), unique)[:, : self.embedding_dim]  # (U, D)
        return rows.index_select(0, inverse)  # (N, D)

    def inference_options(self, tokens: int) -> dict[str, InferenceOption]:
        """Per inference mode, the estimated cost of looking up ``tokens`` ids (all distinct, at most the
        vocabulary) and the memory held: ``"cache"`` holds the table; ``"stream"`` / ``"contract"`` nothing."""
        args = (self.out_modes, self.in_modes, self.bond_dims)
        distinct = min(int(tokens), self.num_embeddings)
        index = contract.ALPHA * 2 * int(tokens) * self.embedding_dim  # index_select / F.embedding
        rows = index if self.n_cores == 1 else rows_cost(*args, distinct, best_split(*args, distinct))[1] + index
        return {"cache": InferenceOption(float(index), self.num_embeddings * self.embedding_dim, 0),
                "stream": InferenceOption(float(rows)), "contract": InferenceOption(float(rows))}

    def extra_repr(self) -> str:
        pad = f", padding_idx={self.padding_idx}" if self.padding_idx is not None else ""
        return f"{self.num_embeddings}, {self.embedding_dim}{pad}, {self.mpo_repr()}, path={self._path!r}"
