"""Reference computations for the MPO tests, written independently of mpokit.mpo.

Conventions: ``W`` is ``(out_features, in_features)``; out modes ``i_k`` factor
the rows, in modes ``j_k`` the columns; cores are ``(d_{k-1}, i_k, j_k, d_k)``.
"""

from __future__ import annotations

import math

import torch


def pad_to(matrix: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Zero-pad ``matrix`` at the bottom and right to ``(rows, cols)``."""
    out = matrix.new_zeros(rows, cols)
    out[: matrix.shape[0], : matrix.shape[1]] = matrix
    return out


def unfolding(matrix: torch.Tensor, out_modes, in_modes, cut: int) -> torch.Tensor:
    """``W[(i_1 j_1 ... i_k j_k), (i_{k+1} j_{k+1} ... i_n j_n)]`` with ``k = cut + 1`` cores on the left.

    ``matrix`` must already have shape ``(prod out_modes, prod in_modes)``.
    """
    n = len(out_modes)
    t = matrix.reshape(*out_modes, *in_modes)  # (i_1..i_n, j_1..j_n)
    t = t.permute([axis for k in range(n) for axis in (k, n + k)])  # (i_1, j_1, ..., i_n, j_n)
    left = math.prod(out_modes[k] * in_modes[k] for k in range(cut + 1))
    return t.reshape(left, -1)


def left_block(cores, bond: int) -> torch.Tensor:
    """Cores ``0..bond`` contracted: ``((i_1 j_1 ... i_k j_k), d_k)``."""
    acc = cores[0].reshape(-1, cores[0].shape[3])  # (i_1 j_1, d_1)
    for core in cores[1 : bond + 1]:
        a, i, j, d = core.shape
        acc = torch.einsum("pa,aijd->pijd", acc, core).reshape(-1, d)  # (P i j, d)
    return acc


def right_block(cores, bond: int) -> torch.Tensor:
    """Cores ``bond+1..n-1`` contracted: ``(d_k, (i_{k+1} j_{k+1} ... i_n j_n))``."""
    acc = cores[-1].reshape(cores[-1].shape[0], -1)  # (d_{n-1}, i_n j_n)
    for core in reversed(cores[bond + 1 : -1]):
        a, i, j, d = core.shape
        acc = torch.einsum("aijd,dq->aijq", core, acc).reshape(a, -1)  # (a, i j Q)
    return acc


def rank_r_svd(matrix: torch.Tensor, rank: int) -> torch.Tensor:
    """Best rank-``rank`` approximation (Eckart-Young), straight from torch's SVD."""
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    return (u[:, :rank] * s[:rank]) @ vh[:rank]


def random_matrix(rows: int, cols: int, dtype=torch.float64, seed: int = 0, decay: float | None = None) -> torch.Tensor:
    """A Gaussian matrix; with ``decay``, its singular values fall off as ``decay ** index`` (so truncation matters)."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=gen, dtype=torch.float64)
    if decay is not None:
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        s = decay ** torch.arange(s.shape[0], dtype=torch.float64)
        w = (u * s) @ vh
    return w.to(dtype)
