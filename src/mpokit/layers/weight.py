"""MPOWeight: an MPO that supplies the weight of a module kept in place (a ``torch.nn.utils.parametrize`` parametrization).

Some modules subclass ``nn.Linear`` / ``nn.Embedding`` with a ``forward`` of
their own (transformers' ``Gemma3TextScaledWordEmbedding`` scales its output).
Swapping such a module for a plain MPO layer would lose that behaviour, so
:func:`mpokit.compress` keeps the module and registers an :class:`MPOWeight`
as the parametrization of its ``weight``: ``module.weight`` is then rebuilt from
the cores on every access and the module's own ``forward`` runs unchanged.

Shapes. The MPO holds ``W (rows, cols)`` with cores ``(d_{k-1}, i_k, j_k, d_k)``
(``nn.Linear``: ``(out_features, in_features)``; ``nn.Embedding``:
``(num_embeddings, embedding_dim)``). With ``transposed=True`` the module stores
its weight as ``(cols, rows)`` (GPT-2's ``Conv1D``: ``(in_features, out_features)``)
and :meth:`forward` returns ``W^T``.

No dense copy. :meth:`right_inverse` returns an empty tuple when the
parametrization is registered, so torch keeps no ``original`` tensor: the
cores are the only storage of the weight. Assigning ``module.weight = value``
later decomposes ``value`` into the cores at the current modes and bond
dimensions (exact at full bonds).

Inference modes: ``"cache"`` (default) keeps the rebuilt weight between calls
without a graph; ``"stream"`` rebuilds it on every access and keeps nothing (a
fresh tensor, not the shared workspace: the host may hold the weight it got,
e.g. under ``parametrize.cached()``). ``"contract"`` is not supported: the
host's forward needs the weight itself.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..mpo import MPO
from .base import MPOModule, random_cores

__all__ = ["MPOWeight"]


class MPOWeight(MPOModule):
    """The weight of a host module as MPO cores; ``forward()`` returns it in the host's layout.

    Args:
        cores: cores ``(d_{k-1}, i_k, j_k, d_k)`` of ``W (rows, cols)`` (padded sizes allowed).
        shape: ``(rows, cols)``, the unpadded matrix.
        transposed: the host stores ``W^T (cols, rows)``.
        gauge: gauge of the cores (``"symmetric"``, ``"center"`` or ``"right"``).
    """

    def __init__(self, cores: Sequence[torch.Tensor], shape: tuple[int, int], *, transposed: bool = False,
                 gauge: str = "symmetric") -> None:
        super().__init__()
        self._init_cores(cores, shape, gauge)
        self.transposed = bool(transposed)
        self.source_type: str | None = None  # the converter name of the host (mpokit.converters)
        self._registered = False

    @classmethod
    def from_matrix(cls, matrix: torch.Tensor, *, transposed: bool = False, **mpo_options) -> "MPOWeight":
        """TT-SVD of ``matrix (rows, cols)``; ``mpo_options`` go to :meth:`MPO.from_matrix`. Keeps dtype and device."""
        matrix = matrix.detach()
        mpo = MPO.from_matrix(matrix, **mpo_options).to(device=matrix.device, dtype=matrix.dtype)
        module = cls(list(mpo.cores), mpo.shape, transposed=transposed, gauge=mpo.gauge)
        module.error_bound = float(mpo.error_bound)
        return module

    @classmethod
    def empty(cls, shape: Sequence[int], out_modes: Sequence[int], in_modes: Sequence[int], bond_dims: Sequence[int],
              *, transposed: bool = False, gauge: str = "symmetric", device=None, dtype=None) -> "MPOWeight":
        """Random cores of the given structure (for loading a checkpoint, whose values replace them)."""
        cores = random_cores(out_modes, in_modes, bond_dims, 1.0, device=device, dtype=dtype)
        return cls(cores, (int(shape[0]), int(shape[1])), transposed=transposed, gauge=gauge)

    @property
    def host_shape(self) -> tuple[int, int]:
        """The shape of the host's weight: ``shape``, or ``shape`` reversed when ``transposed``."""
        rows, cols = self.shape
        return (cols, rows) if self.transposed else (rows, cols)

    def forward(self, *originals: torch.Tensor) -> torch.Tensor:
        """The host's weight, shape :attr:`host_shape`; differentiable, cached under no-grad.

        ``originals`` is empty: :meth:`right_inverse` leaves torch no tensor to pass.
        """
        w = self.rebuild_weight()
        return w.t() if self.transposed else w

    @torch.no_grad()
    def right_inverse(self, value: torch.Tensor) -> tuple:
        """Registration: nothing to store (the cores already hold ``value``). Later: set the cores to ``value``'s MPO."""
        if not self._registered:
            self._registered = True
            return ()
        if tuple(value.shape) != self.host_shape:
            raise ValueError(
                f"the weight has shape {self.host_shape}, got a value of shape {tuple(value.shape)}; "
                f"assign e.g. torch.zeros{self.host_shape}"
            )
        matrix = value.t() if self.transposed else value
        mpo = MPO.from_matrix(matrix.to(self.cores[0].dtype), out_modes=self.out_modes, in_modes=self.in_modes,
                              max_bond=list(self.bond_dims), gauge=self.gauge)
        self.load_mpo_(mpo)
        self.error_bound = float(mpo.error_bound)
        return ()

    def extra_repr(self) -> str:
        return f"shape={self.shape}, transposed={self.transposed}, {self.mpo_repr()}"
