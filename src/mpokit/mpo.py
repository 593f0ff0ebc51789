"""The MPO format: decompose, rebuild, truncate, gauge, spectra.

A matrix ``W`` of shape ``(out_features, in_features)`` (the orientation of
``nn.Linear.weight``) with out modes ``i_k`` and in modes ``j_k`` is written as

    W[i_1..i_n, j_1..j_n] = T1[i_1, j_1] T2[i_2, j_2] ... Tn[i_n, j_n]

where core ``k`` has shape ``(d_{k-1}, i_k, j_k, d_k)`` and ``d_0 = d_n = 1``.

Everything here is a pure function on tensors, plus the small :class:`MPO`
value class that bundles cores, modes and per-bond singular values.

Algorithm (MPOP Algorithm 1, run from the right): the interleaved tensor is
split by sequential SVDs, right to left. Each SVD sees the true unfolding of
``W`` at that cut (the part already split off is row-orthonormal), so the
singular values it returns are the exact Schmidt values of that bond. The
gauge is then set by scaling bond indices with those values.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field, replace
from collections.abc import Sequence

import torch

from . import shapes

__all__ = ["MPO", "GAUGES", "rebuild_matrix", "interleave"]

GAUGES = ("symmetric", "center", "right")


# ---------------------------------------------------------------------------
# reshaping between W and the interleaved tensor (i_1, j_1, i_2, j_2, ...)
# ---------------------------------------------------------------------------


def interleave(matrix: torch.Tensor, out_modes: Sequence[int], in_modes: Sequence[int]) -> torch.Tensor:
    """(I, J) -> (i_1, j_1, ..., i_n, j_n). Requires I = prod(out_modes), J = prod(in_modes)."""
    n = len(out_modes)
    t = matrix.reshape(*out_modes, *in_modes)
    order = [ax for k in range(n) for ax in (k, n + k)]
    return t.permute(order)


def rebuild_matrix(cores: Sequence[torch.Tensor]) -> torch.Tensor:
    """Contract cores ``(d_{k-1}, i_k, j_k, d_k)`` into the padded matrix ``(prod i, prod j)``.

    Contracts left to right, keeping out and in indices grouped, so the result
    needs no permutation: ``acc`` is ``(I_<k, J_<k, d_{k-1})``.
    Differentiable; used by layers too.
    """
    acc = cores[0].reshape(cores[0].shape[1], cores[0].shape[2], cores[0].shape[3])  # (i1, j1, d1)
    for core in cores[1:]:
        rows, cols, _ = acc.shape
        _, i, j, d = core.shape
        # (I, J, a) x (a, i, j, d) -> (I, i, J, j, d)
        acc = torch.einsum("pqa,aijd->piqjd", acc, core).reshape(rows * i, cols * j, d)
    return acc.reshape(acc.shape[0], acc.shape[1])


# ---------------------------------------------------------------------------
# sweeps
# ---------------------------------------------------------------------------


def _svd(m: torch.Tensor):
    """Thin SVD ``m = u_s vh`` with ``u_s = u diag(s)``; returns ``(u_s, s, vh)``, ``s`` descending.

    * float64: LAPACK. A wide ``m`` is decomposed as its transpose, which
      LAPACK runs about 3x faster.
    * float32 (and lower): eigen-decomposition of the Gram matrix, formed in
      float64, about 2.5x faster than LAPACK's SVD. Singular values are then
      accurate to ~1e-8 of the largest, below float32's own precision. The
      left factor is computed as ``m v`` (no division); on the wide side the
      right factor divides by ``s`` only where ``s`` is not numerically zero.
    """
    rows, cols = m.shape
    if m.dtype == torch.float64:
        if rows < cols:
            u_t, s, vh_t = torch.linalg.svd(m.T.contiguous(), full_matrices=False)
            return vh_t.T * s, s, u_t.T
        u, s, vh = torch.linalg.svd(m, full_matrices=False)
        return u * s, s, vh
    m64 = m.double()
    if rows >= cols:
        evals, v = torch.linalg.eigh(m64.T @ m64)  # (cols, cols), ascending
        v = v.flip(1)
        s = evals.flip(0).clamp_min(0).sqrt()
        u_s = m64 @ v  # = u diag(s)
        return u_s.to(m.dtype), s.to(m.dtype), v.T.to(m.dtype)
    evals, u = torch.linalg.eigh(m64 @ m64.T)  # (rows, rows)
    u = u.flip(1)
    s = evals.flip(0).clamp_min(0).sqrt()
    vh = (u.T @ m64) * _safe_pow(s, -1.0).reshape(-1, 1)
    return (u * s).to(m.dtype), s.to(m.dtype), vh.to(m.dtype)


def _right_sweep_from_tensor(
    tensor: torch.Tensor, sizes: Sequence[tuple[int, int]], caps: Sequence[int] | None
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Right-to-left TT-SVD of an interleaved tensor.

    Returns right-orthogonal cores ``B_2..B_n`` (rows in the Schmidt basis of
    their left bond) and a first core ``U_1 S_1`` carrying the norm, plus the
    singular values of each bond. ``caps`` optionally limits each bond.
    """
    n = len(sizes)
    cores: list[torch.Tensor] = [None] * n  # type: ignore[list-item]
    svals: list[torch.Tensor] = [None] * (n - 1)  # type: ignore[list-item]
    remainder = tensor.reshape(-1, 1)  # (left indices, d_n = 1)
    right_dim = 1
    for k in range(n - 1, 0, -1):
        i, j = sizes[k]
        mat = remainder.reshape(-1, i * j * right_dim)  # (I_<k, i_k j_k d_k)
        u_s, s, vh = _svd(mat)
        keep = s.shape[0] if caps is None else min(s.shape[0], caps[k - 1])
        cores[k] = vh[:keep].reshape(keep, i, j, right_dim)
        svals[k - 1] = s[:keep]
        remainder = u_s[:, :keep]  # (I_<k, d_{k-1})
        right_dim = keep
    i, j = sizes[0]
    cores[0] = remainder.reshape(1, i, j, right_dim)
    return cores, svals


def _left_orthogonalize(cores: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """QR sweep left to right: cores 1..n-1 become left-orthogonal, the norm moves to core n."""
    out = [c for c in cores]
    for k in range(len(out) - 1):
        a, i, j, d = out[k].shape
        q, r = torch.linalg.qr(out[k].reshape(a * i * j, d))
        out[k] = q.reshape(a, i, j, q.shape[1])
        out[k + 1] = torch.einsum("ab,bijd->aijd", r, out[k + 1])
    return out


def _right_sweep_from_cores(
    cores: Sequence[torch.Tensor], caps: Sequence[int] | None
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Right-to-left SVD sweep over left-orthogonal cores (TT-rounding).

    Input: cores 1..n-1 left-orthogonal. Output as :func:`_right_sweep_from_tensor`.
    Without caps the singular values are the exact Schmidt values.
    """
    n = len(cores)
    out = list(cores)
    svals: list[torch.Tensor] = [None] * (n - 1)  # type: ignore[list-item]
    for k in range(n - 1, 0, -1):
        a, i, j, d = out[k].shape
        u_s, s, vh = _svd(out[k].reshape(a, i * j * d))
        keep = s.shape[0] if caps is None else min(s.shape[0], caps[k - 1])
        out[k] = vh[:keep].reshape(keep, i, j, d)
        svals[k - 1] = s[:keep]
        out[k - 1] = torch.einsum("aijd,de->aije", out[k - 1], u_s[:, :keep])
    return out, svals


def _safe_pow(s: torch.Tensor, power: float) -> torch.Tensor:
    """``s ** power`` with zero for (numerically) zero singular values when power < 0."""
    if power >= 0:
        return s.clamp_min(0) ** power
    tol = (s.max() if s.numel() else s.new_tensor(0.0)) * torch.finfo(s.dtype).eps * max(s.numel(), 1)
    safe = torch.where(s > tol, s, torch.ones_like(s))
    return torch.where(s > tol, safe**power, torch.zeros_like(s))


def _apply_gauge(right_cores: list[torch.Tensor], svals: list[torch.Tensor], gauge: str) -> list[torch.Tensor]:
    """Turn right-canonical cores (Schmidt basis, norm in core 1) into ``gauge``.

    * ``"right"``: unchanged.
    * ``"symmetric"`` (MPOP): core_k <- S_{k-1}^{1/2} B_k S_k^{-1/2}, so the left
      block of every bond satisfies L^T L = diag(S) and the right block
      R R^T = diag(S). Zero singular values map to zero, never to inf/NaN.
    * ``"center"``: mixed-canonical: left-orthogonal cores left of the central
      core, right-orthogonal cores right of it, the norm in the central core.
    """
    n = len(right_cores)
    if gauge == "right" or n == 1:
        return right_cores
    if gauge == "symmetric":
        out = []
        for k, core in enumerate(right_cores):
            c = core
            if k > 0:
                c = c * _safe_pow(svals[k - 1], 0.5).reshape(-1, 1, 1, 1)
            if k < n - 1:
                c = c * _safe_pow(svals[k], -0.5).reshape(1, 1, 1, -1)
            out.append(c)
        return out
    if gauge == "center":
        center = shapes.central_index(n)
        out = list(right_cores)
        for k in range(center):  # QR sweep up to the centre, no division needed
            a, i, j, d = out[k].shape
            q, r = torch.linalg.qr(out[k].reshape(a * i * j, d))
            out[k] = q.reshape(a, i, j, q.shape[1])
            out[k + 1] = torch.einsum("ab,bijd->aijd", r, out[k + 1])
        return out
    raise ValueError(f"gauge must be one of {GAUGES}, got {gauge!r}; e.g. gauge='symmetric'")


# ---------------------------------------------------------------------------
# choosing bond dimensions for a truncation criterion
# ---------------------------------------------------------------------------


def _tail_energy(s: torch.Tensor, keep: int) -> float:
    return float((s[keep:].double() ** 2).sum())


def _dims_for_rel_error(svals: Sequence[torch.Tensor], budget_sq: float) -> list[int]:
    """Drop the smallest tail singular values across all bonds while sum eps_k^2 <= budget^2."""
    dims = [int(s.shape[0]) for s in svals]
    sq = [s.double().pow(2).cpu() for s in svals]
    spent = 0.0
    while True:
        best, best_val = None, None
        for k, d in enumerate(dims):
            if d > 1:
                v = float(sq[k][d - 1])
                if best_val is None or v < best_val:
                    best, best_val = k, v
        if best is None or spent + best_val > budget_sq:
            return dims
        spent += best_val
        dims[best] -= 1


def _dims_for_max_params(
    svals: Sequence[torch.Tensor], out_modes, in_modes, max_params: int
) -> list[int]:
    """Greedy: cut the bond that adds the least squared error per parameter saved, until the budget holds."""
    dims = [int(s.shape[0]) for s in svals]
    sq = [s.double().pow(2).cpu() for s in svals]
    sizes = [i * j for i, j in zip(out_modes, in_modes)]
    while shapes.mpo_num_params(out_modes, in_modes, dims) > max_params:
        full = (1, *dims, 1)
        best, best_score = None, None
        for k, d in enumerate(dims):
            if d <= 1:
                continue
            saved = full[k] * sizes[k] + sizes[k + 1] * full[k + 2]
            score = float(sq[k][d - 1]) / saved
            if best_score is None or score < best_score:
                best, best_score = k, score
        if best is None:
            break
        dims[best] -= 1
    return dims


# ---------------------------------------------------------------------------
# the MPO value class
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MPO:
    """A matrix in MPO form.

    Attributes:
        cores: tensors of shape ``(d_{k-1}, i_k, j_k, d_k)``.
        shape: ``(out_features, in_features)`` of the unpadded matrix.
        singular_values: per bond, descending: those of the matrix unfolding at
            that cut (exact for the tensor the cores represent).
        gauge: ``"symmetric"``, ``"center"`` or ``"right"``.
        error_bound: bound on ``||W - self||_F`` for the matrix ``W`` this MPO
            was decomposed from (0 when exact; truncations add up by the
            triangle inequality).
        reference_norm: ``||W||_F`` of that matrix.
    """

    cores: tuple[torch.Tensor, ...]
    shape: tuple[int, int]
    singular_values: tuple[torch.Tensor, ...]
    gauge: str = "symmetric"
    error_bound: float = 0.0
    reference_norm: float = field(default=0.0)

    # -- construction -------------------------------------------------------

    @classmethod
    def from_matrix(
        cls,
        matrix: torch.Tensor,
        out_modes: Sequence[int] | None = None,
        in_modes: Sequence[int] | None = None,
        n_cores: int = 5,
        max_bond: int | Sequence[int] | None = None,
        rel_error: float | None = None,
        max_params: int | None = None,
        gauge: str = "symmetric",
        pad: bool | None = None,
    ) -> "MPO":
        """TT-SVD of ``matrix`` (shape ``(out_features, in_features)``).

        Exact when no truncation criterion is given. At most one of
        ``max_bond`` (an int, or one cap per bond), ``rel_error`` (relative
        Frobenius budget in [0, 1)) and ``max_params`` may be given.

        Modes are chosen by :func:`mpokit.shapes.choose_modes` when not given;
        sizes that do not factor well are zero-padded (recorded in
        ``padded_shape`` and sliced off by :meth:`to_matrix`). Given modes must
        multiply to the size exactly, unless ``pad=True`` allows a larger product.
        """
        _check_matrix(matrix)
        out_features, in_features = matrix.shape
        if (out_modes is None) != (in_modes is None):
            auto_out, auto_in = shapes.choose_modes(out_features, in_features, len(out_modes or in_modes))
            out_modes = out_modes if out_modes is not None else auto_out
            in_modes = in_modes if in_modes is not None else auto_in
        if out_modes is None:
            if not isinstance(n_cores, int) or n_cores < 1:
                raise ValueError(f"n_cores must be a positive int, got {n_cores!r}; e.g. n_cores=5")
            out_modes, in_modes = shapes.choose_modes(out_features, in_features, n_cores)
            pad = True if pad is None else pad
        out_modes, in_modes = shapes.validate_modes(out_modes, in_modes)
        for name, modes, size in (("out_modes", out_modes, out_features), ("in_modes", in_modes, in_features)):
            prod = math.prod(modes)
            if prod < size or (prod > size and not pad):
                raise ValueError(
                    f"{name} {modes} multiply to {prod}, but the matrix has {size} "
                    f"{'rows' if name == 'out_modes' else 'columns'}; modes must multiply to the size, "
                    f"e.g. {name}={shapes.factorize(size, len(modes))}"
                    + (" (pass pad=True to zero-pad to a larger product)" if prod > size else "")
                )
        criterion = _check_criteria(max_bond, rel_error, max_params, out_modes, in_modes)
        if gauge not in GAUGES:
            raise ValueError(f"gauge must be one of {GAUGES}, got {gauge!r}; e.g. gauge='symmetric'")

        work = matrix.detach()
        if work.dtype not in (torch.float32, torch.float64):
            work = work.float()
        padded = (math.prod(out_modes), math.prod(in_modes))
        if padded != (out_features, in_features):
            work = torch.nn.functional.pad(work, (0, padded[1] - in_features, 0, padded[0] - out_features))
        sizes = list(zip(out_modes, in_modes))
        cores, svals = _right_sweep_from_tensor(interleave(work, out_modes, in_modes), sizes, None)
        norm = float(torch.linalg.vector_norm(work.double() if work.device.type == "cpu" else work))
        exact = cls(
            cores=tuple(_apply_gauge(cores, svals, gauge)),
            shape=(out_features, in_features),
            singular_values=tuple(svals),
            gauge=gauge,
            error_bound=0.0,
            reference_norm=norm,
        )
        result = exact if criterion is None else exact.truncate(**criterion)
        if matrix.dtype != result.cores[0].dtype:
            result = result.to(dtype=matrix.dtype)
        return result

    @classmethod
    def from_cores(
        cls, cores: Sequence[torch.Tensor], shape: tuple[int, int] | None = None, gauge: str = "symmetric"
    ) -> "MPO":
        """Wrap arbitrary cores (e.g. after training): re-canonicalise and recompute exact singular values."""
        cores = list(cores)
        _check_cores(cores)
        cores = [c.detach() for c in cores]
        for k, c in enumerate(cores):  # an SVD / eigh of non-finite values fails deep inside torch
            if not bool(torch.isfinite(c).all()):
                bad = int((~torch.isfinite(c)).sum())
                raise ValueError(
                    f"core {k} (shape {tuple(c.shape)}) has {bad} NaN or inf entries; an MPO needs finite cores, "
                    f"e.g. check the training run that produced them or use torch.nan_to_num(core)"
                )
        out_modes = tuple(c.shape[1] for c in cores)
        in_modes = tuple(c.shape[2] for c in cores)
        if shape is None:
            shape = (math.prod(out_modes), math.prod(in_modes))
        right, svals = _right_sweep_from_cores(_left_orthogonalize(cores), None)
        norm = float(torch.linalg.vector_norm(right[0]))
        return cls(tuple(_apply_gauge(right, svals, gauge)), tuple(shape), tuple(svals), gauge, 0.0, norm)

    # -- properties -----------------------------------------------------------

    @property
    def n_cores(self) -> int:
        return len(self.cores)

    @property
    def out_modes(self) -> tuple[int, ...]:
        return tuple(int(c.shape[1]) for c in self.cores)

    @property
    def in_modes(self) -> tuple[int, ...]:
        return tuple(int(c.shape[2]) for c in self.cores)

    @property
    def bond_dims(self) -> tuple[int, ...]:
        return tuple(int(c.shape[3]) for c in self.cores[:-1])

    @property
    def padded_shape(self) -> tuple[int, int]:
        return (math.prod(self.out_modes), math.prod(self.in_modes))

    @property
    def num_params(self) -> int:
        return sum(c.numel() for c in self.cores)

    @property
    def dense_params(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def compression_ratio(self) -> float:
        """MPO parameters / dense parameters (MPOP's rho; below 1 means smaller)."""
        return self.num_params / self.dense_params

    @property
    def central_index(self) -> int:
        return shapes.central_index(self.n_cores)

    @property
    def central_bond(self) -> int:
        return shapes.central_bond(self.n_cores)

    @property
    def rel_error_bound(self) -> float:
        return self.error_bound / self.reference_norm if self.reference_norm > 0 else 0.0

    @property
    def dtype(self) -> torch.dtype:
        return self.cores[0].dtype

    @property
    def device(self) -> torch.device:
        return self.cores[0].device

    # -- operations -----------------------------------------------------------

    def to_matrix(self) -> torch.Tensor:
        """Rebuild ``W`` with shape ``(out_features, in_features)`` (padding sliced off)."""
        full = rebuild_matrix(self.cores)
        return full[: self.shape[0], : self.shape[1]]

    def to(self, device=None, dtype=None) -> "MPO":
        move = lambda t: t.to(device=device, dtype=dtype)  # noqa: E731
        return replace(self, cores=tuple(map(move, self.cores)), singular_values=tuple(map(move, self.singular_values)))

    def entropy(self) -> list[float]:
        """Entanglement entropy per bond: ``-sum v ln v`` with ``v = s^2 / sum s^2``."""
        out = []
        for s in self.singular_values:
            p = s.double() ** 2
            total = p.sum()
            if total <= 0:
                out.append(0.0)
                continue
            v = p / total
            v = v[v > 0]
            out.append(max(0.0, float(-(v * v.log()).sum())))
        return out

    def _dims_for_max_params(self, max_params: int) -> list[int]:
        """The better (smaller bound) of a greedy per-bond allocation and the largest uniform cap."""
        greedy = shapes.consistent_bond_dims(
            self.out_modes, self.in_modes,
            _dims_for_max_params(self.singular_values, self.out_modes, self.in_modes, max_params),
        )
        lo, hi = 1, max(self.bond_dims, default=1)
        while lo < hi:  # largest uniform cap within the budget
            mid = (lo + hi + 1) // 2
            dims = shapes.consistent_bond_dims(self.out_modes, self.in_modes, [min(mid, d) for d in self.bond_dims])
            if shapes.mpo_num_params(self.out_modes, self.in_modes, dims) <= max_params:
                lo = mid
            else:
                hi = mid - 1
        uniform = shapes.consistent_bond_dims(self.out_modes, self.in_modes, [min(lo, d) for d in self.bond_dims])
        if shapes.mpo_num_params(self.out_modes, self.in_modes, uniform) > max_params:
            return list(greedy)
        return list(min((greedy, uniform), key=self.truncation_bound))

    def truncation_bound(self, bond_dims: Sequence[int]) -> float:
        """``sqrt(sum_k eps_k^2)`` for keeping ``bond_dims``, from this MPO's singular values."""
        return math.sqrt(sum(_tail_energy(s, d) for s, d in zip(self.singular_values, bond_dims)))

    def truncate(
        self,
        max_bond: int | Sequence[int] | None = None,
        rel_error: float | None = None,
        max_params: int | None = None,
    ) -> "MPO":
        """A new MPO keeping the largest Schmidt values of every bond.

        Exactly one criterion: ``max_bond`` (an int cap for every bond, or one
        cap per bond), ``rel_error`` (``||W - W'||_F <= rel_error * ||W||_F``,
        relative to this MPO's norm), or ``max_params``.

        The returned MPO's ``error_bound`` adds this step's bound
        ``sqrt(sum_k eps_k^2)``, ``eps_k^2`` = sum of the discarded squared
        singular values of bond k, to this MPO's own bound.
        """
        criterion = _check_criteria(max_bond, rel_error, max_params, self.out_modes, self.in_modes)
        if criterion is None:
            raise ValueError("truncate needs one criterion, e.g. mpo.truncate(max_bond=32)")
        current = self.bond_dims
        max_bond, rel_error, max_params = (criterion.get(k) for k in ("max_bond", "rel_error", "max_params"))
        if max_bond is not None:
            caps = [max_bond] * len(current) if isinstance(max_bond, int) else list(max_bond)
        elif rel_error is not None:
            norm = math.sqrt(sum(_tail_energy(s, 0) for s in self.singular_values[:1])) if self.singular_values else 0.0
            caps = _dims_for_rel_error(self.singular_values, (rel_error * norm) ** 2)
        else:
            caps = self._dims_for_max_params(max_params)
        caps = [min(c, d) for c, d in zip(caps, current)]
        dims = shapes.consistent_bond_dims(self.out_modes, self.in_modes, caps)
        bound = self.truncation_bound(dims)
        if tuple(dims) == tuple(current):
            return replace(self, cores=tuple(self.cores))
        work = [c.float() if c.dtype not in (torch.float32, torch.float64) else c for c in self.cores]
        right, _ = _right_sweep_from_cores(_left_orthogonalize(work), dims)
        # The sweep's singular values are those of a partly truncated tensor; recompute the exact ones.
        right, svals = _right_sweep_from_cores(_left_orthogonalize(right), None)
        cores = [c.to(self.dtype) for c in _apply_gauge(right, svals, self.gauge)]
        return replace(
            self,
            cores=tuple(cores),
            singular_values=tuple(svals),
            error_bound=self.error_bound + bound,
        )

    def with_gauge(self, gauge: str) -> "MPO":
        """The same tensor in another gauge (``"symmetric"``, ``"center"`` or ``"right"``)."""
        if gauge not in GAUGES:
            raise ValueError(f"gauge must be one of {GAUGES}, got {gauge!r}; e.g. gauge='symmetric'")
        right, svals = _right_sweep_from_cores(_left_orthogonalize(list(self.cores)), None)
        return replace(self, cores=tuple(_apply_gauge(right, svals, gauge)), singular_values=tuple(svals), gauge=gauge)

    def __repr__(self) -> str:
        return (
            f"MPO(shape={self.shape}, out_modes={self.out_modes}, in_modes={self.in_modes}, "
            f"bond_dims={self.bond_dims}, params={self.num_params}, ratio={self.compression_ratio:.4f}, "
            f"gauge={self.gauge!r})"
        )


# ---------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------


def _check_matrix(matrix) -> None:
    if not isinstance(matrix, torch.Tensor):
        raise TypeError(f"matrix must be a torch.Tensor, got {type(matrix).__name__}; e.g. torch.randn(768, 3072)")
    if matrix.dim() != 2:
        raise ValueError(
            f"matrix must be 2-D (out_features, in_features), got shape {tuple(matrix.shape)}; "
            f"e.g. a Linear weight of shape (768, 3072); reshape first"
        )
    if not matrix.is_floating_point():
        raise TypeError(f"matrix must be floating point, got {matrix.dtype}; e.g. matrix.float()")
    if matrix.numel() == 0:
        raise ValueError(f"matrix is empty, shape {tuple(matrix.shape)}; both sizes must be >= 1")
    if not bool(torch.isfinite(matrix).all()):
        bad = int((~torch.isfinite(matrix)).sum())
        raise ValueError(
            f"matrix has {bad} NaN or inf entries (shape {tuple(matrix.shape)}); an MPO needs finite weights, "
            f"e.g. check the checkpoint or use torch.nan_to_num(matrix)"
        )


def _check_cores(cores: Sequence[torch.Tensor]) -> None:
    if len(cores) == 0:
        raise ValueError(
            "an MPO needs at least one core of shape (d_{k-1}, i_k, j_k, d_k), got none; "
            "e.g. MPO.from_matrix(torch.randn(768, 768)).cores"
        )
    for k, c in enumerate(cores):
        if not isinstance(c, torch.Tensor):
            raise TypeError(f"core {k} must be a torch.Tensor, got {type(c).__name__}; e.g. torch.randn(1, 4, 4, 8)")
        if not c.is_floating_point():
            raise TypeError(f"core {k} must be floating point, got {c.dtype}; e.g. core.float()")
        if c.dim() != 4:
            raise ValueError(
                f"core {k} has shape {tuple(c.shape)}; cores must be 4-D (d_{{k-1}}, i_k, j_k, d_k), "
                f"e.g. (12, 4, 4, 192)"
            )
    kinds = {(c.dtype, c.device) for c in cores}
    if len(kinds) > 1:
        found = ", ".join(f"core {k}: {c.dtype} on {c.device}" for k, c in enumerate(cores))
        raise ValueError(
            f"all cores must share one dtype and device, got {found}; move them together first, "
            f"e.g. [c.to(device='cpu', dtype=torch.float32) for c in cores]"
        )
    if cores[0].shape[0] != 1 or cores[-1].shape[3] != 1:
        raise ValueError(
            f"the outer bonds must be 1, got d_0={cores[0].shape[0]} and d_n={cores[-1].shape[3]}; "
            "e.g. first core (1, 3, 4, 12)"
        )
    for k in range(len(cores) - 1):
        if cores[k].shape[3] != cores[k + 1].shape[0]:
            raise ValueError(
                f"bond {k} does not match: core {k} ends with {cores[k].shape[3]} but core {k + 1} starts with "
                f"{cores[k + 1].shape[0]}; neighbouring cores must share their bond dimension, "
                f"e.g. core {k} (.., .., .., 12) followed by core {k + 1} (12, .., .., ..)"
            )


def _as_int(name: str, value, example: str) -> int:
    """``value`` as an int (Python or NumPy integers; not bools, floats or strings), else a TypeError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__}); e.g. {example}")
    return int(value)


def _check_criteria(max_bond, rel_error, max_params, out_modes, in_modes) -> dict | None:
    """The truncation criterion given (at most one), its value normalised (ints, a list of ints, a float), or None.

    Wrong types raise ``TypeError`` ("must be an int" / "must be a number"), values out of range ``ValueError``.
    """
    given = {k: v for k, v in (("max_bond", max_bond), ("rel_error", rel_error), ("max_params", max_params)) if v is not None}
    if len(given) > 1:
        raise ValueError(
            f"give at most one truncation criterion, got {sorted(given)} = {given}; "
            "e.g. max_bond=32, or rel_error=0.05, or max_params=20000"
        )
    n_bonds = len(out_modes) - 1
    if max_bond is not None:
        if isinstance(max_bond, (str, bytes)) or not isinstance(max_bond, (numbers.Integral, Sequence)):
            raise TypeError(
                f"max_bond must be an int (one cap for every bond) or a sequence of {n_bonds} ints, got "
                f"{max_bond!r} ({type(max_bond).__name__}); e.g. max_bond=32 or max_bond={[32] * n_bonds}"
            )
        single = isinstance(max_bond, numbers.Integral)
        bonds = [_as_int("max_bond", b, "max_bond=32") for b in ([max_bond] if single else max_bond)]
        if not single and len(bonds) != n_bonds:
            raise ValueError(
                f"max_bond as a sequence needs one cap per bond ({n_bonds}), got {tuple(bonds)}; "
                f"e.g. max_bond=32 or max_bond={(32,) * n_bonds}"
            )
        if any(b < 1 for b in bonds):
            raise ValueError(f"max_bond must be >= 1, got {max_bond!r}; e.g. max_bond=32")
        given["max_bond"] = bonds[0] if single else bonds
    if rel_error is not None:
        if isinstance(rel_error, bool) or not isinstance(rel_error, numbers.Real):
            raise TypeError(
                f"rel_error must be a number in [0, 1), got {rel_error!r} ({type(rel_error).__name__}); "
                "e.g. rel_error=0.05"
            )
        if not (0.0 <= rel_error < 1.0):  # NaN fails this too
            raise ValueError(
                f"rel_error must be in [0, 1) (a relative Frobenius error budget), got {rel_error!r}; e.g. rel_error=0.05"
            )
        given["rel_error"] = float(rel_error)
    if max_params is not None:
        smallest = shapes.min_num_params(out_modes, in_modes)
        max_params = _as_int("max_params", max_params, f"max_params={max(smallest * 4, 1)}")
        if max_params < smallest:
            raise ValueError(
                f"max_params={max_params!r} is below the smallest possible MPO for modes out {tuple(out_modes)} x "
                f"in {tuple(in_modes)} (all bonds 1: {smallest} parameters); e.g. max_params={max(smallest * 4, 1)}"
            )
        given["max_params"] = max_params
    return given or None
