"""MPOLSTM: a drop-in ``nn.LSTM`` whose weight matrices are MPOs (MPO-LSTM paper, §3.2).

Per layer ``l`` and direction, the LSTM has two matrices (``nn.LSTM`` layout):

* ``W`` = ``weight_ih_l{l}``: shape ``(4H, X)``, input to hidden;
* ``U`` = ``weight_hh_l{l}``: shape ``(4H, H)``, hidden to hidden.

The rows are the four gates stacked ``[i; f; g; o]``, each ``H`` rows. Each
matrix is ONE MPO (an :class:`LSTMWeightMPO`, an :class:`MPOModule`), with the
gates stacked into the first out mode: out modes ``(4 h_1, h_2, ..., h_n)``
where ``(h_1, ..., h_n)`` factor ``H``. As row index ``r = g H + h`` has the gate
``g`` as its slowest digit, the first out mode ``4 h_1`` carries the gate.
Cores have shape ``(d_{k-1}, i_k, j_k, d_k)``.

Two execution strategies, chosen per call by a FLOP cost model (or forced
with ``execution=``):

* ``"fused"``: rebuild ``W`` and ``U`` from the cores (differentiable) and call
  PyTorch's fused LSTM kernel (``torch._VF.lstm``, what ``nn.LSTM`` runs);
  autograd flows through the rebuilt matrices into the cores.
* ``"stepwise"``: the input-to-hidden product of all time steps in one batched
  call outside the recurrence (contracting the input with the cores, or one
  matmul with the rebuilt ``W``), then a loop over time steps applying ``U`` to
  the hidden state on its cheapest path (contraction when bonds are small, else
  the rebuilt matrix), as one autograd Function with a hand-written backward
  (:class:`mpokit.layers.lstm_recurrence.LSTMRecurrence`).

The cost model is :func:`mpokit.layers.lstm_plan.lstm_cost` (FLOPs plus memory
traffic, calibrated on CPU); ``plan(tokens, batch, steps)`` shows its choice.
With the paper's modes, contraction only pays at high compression and large
hidden sizes (U re-read from memory every step), so "fused" is the usual choice.

Packed sequences: ``forward`` accepts a ``PackedSequence`` exactly as
``nn.LSTM`` does, and additionally a padded tensor with ``lengths=`` (which is
packed internally; the padded output is zero beyond each length, ``h_n`` and
``c_n`` are taken at each sequence's last valid step).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from .. import shapes
from ..mpo import MPO
from .base import MPOModule, random_cores
from .lstm_plan import (
    GATES,
    STEP_OVERHEAD_PER_ELEMENT,
    STEPWISE_MARGIN,
    bond_dim_for_rate,
    gate_modes,
    lstm_cost,
    lstm_modes,
    uniform_bond_dims,
)
from .lstm_recurrence import lengths_from_batch_sizes, lstm_direction, packed_to_padded, padded_to_packed

__all__ = [
    "MPOLSTM",
    "LSTMWeightMPO",
    "EmptySequenceError",
    "lstm_modes",
    "gate_modes",
    "bond_dim_for_rate",
    "lstm_cost",
    "EXECUTIONS",
    "STEP_OVERHEAD_PER_ELEMENT",
]

EXECUTIONS = ("auto", "fused", "stepwise")


class EmptySequenceError(ValueError, RuntimeError):
    """An input with sequence length 0. A ValueError, and a RuntimeError as ``nn.LSTM``'s error for it is."""


# ---------------------------------------------------------------------------
# one MPO matrix of the LSTM (W or U of one layer and direction)
# ---------------------------------------------------------------------------


class LSTMWeightMPO(MPOModule):
    """One LSTM weight matrix ``(4H, cols)`` in MPO form (W: cols = X, U: cols = H).

    A thin :class:`MPOModule`: cores ``(d_{k-1}, i_k, j_k, d_k)``, ``central_parameters()``,
    ``auxiliary_parameters()``, ``mpo()``, ``truncate_()``, ``rebuild_weight()``.
    :meth:`matmul` applies it to activations: ``x (..., cols) -> (..., 4H)``.
    """

    def __init__(self, cores: Sequence[torch.Tensor], shape: tuple[int, int], gauge: str = "symmetric"):
        super().__init__()
        self._init_cores(cores, shape, gauge)

    @classmethod
    def random(
        cls,
        out_modes: Sequence[int],
        in_modes: Sequence[int],
        bond_dims: Sequence[int],
        entry_variance: float,
        *,
        device=None,
        dtype=None,
    ) -> "LSTMWeightMPO":
        cores = random_cores(out_modes, in_modes, bond_dims, entry_variance, device=device, dtype=dtype)
        return cls(cores, (math.prod(out_modes), math.prod(in_modes)))

    @classmethod
    def from_mpo(cls, mpo: MPO) -> "LSTMWeightMPO":
        module = cls(list(mpo.cores), mpo.shape, mpo.gauge)
        module.error_bound = float(mpo.error_bound)
        return module

    def matmul(self, x: torch.Tensor, path: str = "rebuild") -> torch.Tensor:
        """``x @ W^T``: x ``(..., cols)`` -> ``(..., rows)``; ``path`` is "rebuild" or "contract"."""
        if path == "contract":
            from ..contract import mpo_apply

            return mpo_apply(x, self.core_list())
        return torch.nn.functional.linear(x, self.rebuild_weight())

    def extra_repr(self) -> str:
        return self.mpo_repr()


# ---------------------------------------------------------------------------
# the layer
# ---------------------------------------------------------------------------


def _check_positive_int(name: str, value, example: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}; e.g. {example}")
    return value


def _check_modes(name: str, modes, size: int, n_cores: int) -> tuple[int, ...]:
    if modes is None:
        return lstm_modes(size, n_cores)
    if not isinstance(modes, (tuple, list)) or not modes or any(
        isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in modes
    ):
        raise ValueError(f"{name} must be a tuple of positive ints, got {modes!r}; e.g. {name}={lstm_modes(size, n_cores)}")
    if math.prod(modes) != size:
        raise ValueError(
            f"{name} {tuple(modes)} multiply to {math.prod(modes)}, but the size is {size}; "
            f"they must multiply to it exactly, e.g. {name}={lstm_modes(size, len(modes))}"
        )
    return tuple(modes)


class MPOLSTM(nn.Module):
    """``nn.LSTM`` with every ``W`` (4H x X) and ``U`` (4H x H) stored as one MPO each.

    Args (as ``nn.LSTM``): input_size, hidden_size, num_layers, bias,
    batch_first, dropout, bidirectional. Keyword-only:

    * ``rate`` / ``bond_dim``: compression of every W and U, either as a target
      rate (dense / MPO parameters, uniform bond chosen by
      :func:`bond_dim_for_rate` per matrix) or as a uniform bond dimension.
      ``rate_ih``/``rate_hh`` and ``bond_dim_ih``/``bond_dim_hh`` set W and U
      separately. Neither given: full (exact) bonds.
    * ``modes``: factorisation of ``hidden_size`` (default :func:`lstm_modes`,
      256 -> (8, 2, 2, 8)); ``input_modes``: of ``input_size`` for layer 0.
      The out modes of W and U are :func:`gate_modes` (first mode x 4).
    * ``n_cores``: number of cores when modes are not given (default 4).
    * ``execution``: "auto" (cost model, per call), "fused" or "stepwise"; change it later
      with :meth:`set_execution` (which can also pin the stepwise W / U paths); :meth:`plan`
      shows the choice for a shape.
    * ``device``, ``dtype``: as ``nn.LSTM``. (``_weights`` is internal, used by :meth:`from_lstm`.)

    Counts: :meth:`num_weight_params` (MPO parameters of all W and U),
    :meth:`dense_weight_params`, :attr:`compression_rate`. Structure:
    :meth:`mpo_modules`, :meth:`central_parameters`, :meth:`auxiliary_parameters`,
    :meth:`truncate_`.

    Random init: every entry of W and U has the variance of ``nn.LSTM``'s
    ``U(-1/sqrt(H), 1/sqrt(H))``, i.e. ``1 / (3H)``; biases as ``nn.LSTM``.

    Submodules / parameters follow ``nn.LSTM``'s names: ``weight_ih_l{k}[_reverse]``
    and ``weight_hh_l{k}[_reverse]`` are :class:`LSTMWeightMPO` modules,
    ``bias_ih_l{k}[_reverse]``, ``bias_hh_l{k}[_reverse]`` are Parameters.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        *,
        rate: float | None = None,
        bond_dim: int | None = None,
        rate_ih: float | None = None,
        rate_hh: float | None = None,
        bond_dim_ih: int | None = None,
        bond_dim_hh: int | None = None,
        modes: Sequence[int] | None = None,
        input_modes: Sequence[int] | None = None,
        n_cores: int = 4,
        execution: str = "auto",
        device=None,
        dtype=None,
        _weights: dict | None = None,
    ):
        super().__init__()
        _check_positive_int("input_size", input_size, "input_size=256")
        _check_positive_int("hidden_size", hidden_size, "hidden_size=256")
        _check_positive_int("num_layers", num_layers, "num_layers=2")
        _check_positive_int("n_cores", n_cores, "n_cores=4")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout <= 1:
            raise ValueError(f"dropout must be a probability in [0, 1], got {dropout!r}; e.g. dropout=0.2")
        if execution not in EXECUTIONS:
            raise ValueError(f"execution must be one of {EXECUTIONS}, got {execution!r}; e.g. execution='auto'")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.dropout = float(dropout)
        self.bidirectional = bool(bidirectional)
        self.execution = execution
        self.proj_size = 0  # nn.LSTM attribute; projections are not supported
        self.ih_path: str | None = None  # stepwise path overrides ("rebuild" / "contract"); None: cost model
        self.hh_path: str | None = None
        self.hidden_modes = _check_modes("modes", modes, hidden_size, n_cores)
        n = len(self.hidden_modes)
        self.input_modes = _check_modes("input_modes", input_modes, input_size, n)
        if len(self.input_modes) != n:
            raise ValueError(
                f"input_modes {self.input_modes} and modes {self.hidden_modes} need the same number of cores; "
                f"e.g. input_modes={lstm_modes(input_size, n)}"
            )
        self.inner_modes = lstm_modes(hidden_size * self.num_directions, n)  # inputs of layers >= 1
        spec_ih = _bond_spec("ih", rate, bond_dim, rate_ih, bond_dim_ih)
        spec_hh = _bond_spec("hh", rate, bond_dim, rate_hh, bond_dim_hh)
        self._path_cache: dict = {}

        factory = {"device": device, "dtype": dtype}
        variance = 1.0 / (3.0 * hidden_size)  # nn.LSTM: U(-1/sqrt(H), 1/sqrt(H))
        bound = 1.0 / math.sqrt(hidden_size)
        out_modes = gate_modes(self.hidden_modes)
        for layer in range(num_layers):
            for suffix in self._suffixes():
                in_modes = self.input_modes if layer == 0 else self.inner_modes
                for kind, cols_modes, spec in (("ih", in_modes, spec_ih), ("hh", self.hidden_modes, spec_hh)):
                    name = f"weight_{kind}_l{layer}{suffix}"
                    if _weights is not None:
                        module = _weights[name]
                    else:
                        dims = _resolve_bonds(out_modes, cols_modes, spec)
                        module = LSTMWeightMPO.random(out_modes, cols_modes, dims, variance, **factory)
                    self.add_module(name, module)
                if self.bias:
                    for kind in ("ih", "hh"):
                        b = torch.empty(GATES * hidden_size, **factory).uniform_(-bound, bound)
                        self.register_parameter(f"bias_{kind}_l{layer}{suffix}", nn.Parameter(b))

    # -- structure ---------------------------------------------------------------

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def _suffixes(self) -> tuple[str, ...]:
        return ("", "_reverse") if self.bidirectional else ("",)

    def weight_modules(self) -> list[tuple[str, LSTMWeightMPO]]:
        """``[(name, module)]`` of every W and U, in ``nn.LSTM``'s flat-weight order."""
        out = []
        for layer in range(self.num_layers):
            for suffix in self._suffixes():
                for kind in ("ih", "hh"):
                    name = f"weight_{kind}_l{layer}{suffix}"
                    out.append((name, getattr(self, name)))
        return out

    def mpo_modules(self) -> list[LSTMWeightMPO]:
        return [m for _, m in self.weight_modules()]

    def central_parameters(self) -> list[nn.Parameter]:
        return [p for m in self.mpo_modules() for p in m.central_parameters()]

    def auxiliary_parameters(self) -> list[nn.Parameter]:
        return [p for m in self.mpo_modules() for p in m.auxiliary_parameters()]

    def num_weight_params(self) -> int:
        """MPO parameters of all W and U (biases excluded)."""
        return sum(m.num_mpo_params for m in self.mpo_modules())

    def dense_weight_params(self) -> int:
        """Parameters of the dense W and U these MPOs stand for (``nn.LSTM`` without biases)."""
        return sum(m.dense_params for m in self.mpo_modules())

    @property
    def compression_rate(self) -> float:
        """Dense / MPO parameters of all W and U (the MPO-LSTM paper's rate)."""
        return self.dense_weight_params() / self.num_weight_params()

    def truncate_(self, max_bond=None, rel_error=None, max_params=None) -> dict[str, float]:
        """Truncate every W and U in place (new Parameters); returns each matrix's bound on ``||dW||_F``."""
        return {
            name: m.truncate_(max_bond=max_bond, rel_error=rel_error, max_params=max_params)
            for name, m in self.weight_modules()
        }

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}"
        if not self.bias:
            s += ", bias=False"
        if self.batch_first:
            s += ", batch_first=True"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if self.bidirectional:
            s += ", bidirectional=True"
        return (
            s + f", modes={self.hidden_modes}, weight_params={self.num_weight_params()}/"
            f"{self.dense_weight_params()} (rate {self.compression_rate:.2f}), execution={self.execution!r}"
        )

    # -- conversion ------------------------------------------------------------------

    @classmethod
    def from_lstm(
        cls,
        lstm: nn.LSTM,
        *,
        rate: float | None = None,
        bond_dim: int | None = None,
        rate_ih: float | None = None,
        rate_hh: float | None = None,
        bond_dim_ih: int | None = None,
        bond_dim_hh: int | None = None,
        rel_error: float | None = None,
        modes: Sequence[int] | None = None,
        input_modes: Sequence[int] | None = None,
        n_cores: int = 4,
        gauge: str = "symmetric",
        execution: str = "auto",
    ) -> "MPOLSTM":
        """TT-SVD of a trained ``nn.LSTM``'s W and U; biases copied; dtype and device from ``lstm``.

        Truncation per matrix: a uniform bond (``bond_dim*``, or chosen from
        ``rate*`` by :func:`bond_dim_for_rate`), or ``rel_error`` (relative
        Frobenius budget per matrix); none: exact. Each W/U module records its
        ``error_bound`` on ``||W_lstm - W_mpo||_F``.
        """
        if not isinstance(lstm, nn.LSTM):
            raise TypeError(f"from_lstm needs an nn.LSTM, got {type(lstm).__name__}; e.g. nn.LSTM(256, 256)")
        if getattr(lstm, "proj_size", 0):
            raise ValueError(f"nn.LSTM with proj_size={lstm.proj_size} is not supported; use proj_size=0")
        spec_ih = _bond_spec("ih", rate, bond_dim, rate_ih, bond_dim_ih)
        spec_hh = _bond_spec("hh", rate, bond_dim, rate_hh, bond_dim_hh)
        if rel_error is not None and (spec_ih is not None or spec_hh is not None):
            raise ValueError("give either rel_error or rate/bond_dim, not both; e.g. rel_error=0.05 or rate=10")
        h = lstm.hidden_size
        hidden_modes = _check_modes("modes", modes, h, n_cores)
        n = len(hidden_modes)
        first_in = _check_modes("input_modes", input_modes, lstm.input_size, n)
        inner = lstm_modes(h * (2 if lstm.bidirectional else 1), n)
        out_modes = gate_modes(hidden_modes)
        weights = {}
        for name, param in lstm.named_parameters():
            if not name.startswith("weight_"):
                continue
            kind = name.split("_")[1]  # "ih" or "hh"
            layer = int(name.split("_l")[1].split("_")[0])
            cols_modes = hidden_modes if kind == "hh" else (first_in if layer == 0 else inner)
            spec = spec_hh if kind == "hh" else spec_ih
            criterion = {}
            if rel_error is not None:
                criterion = {"rel_error": rel_error}
            elif spec is not None:
                criterion = {"max_bond": _resolve_bonds(out_modes, cols_modes, spec)}
            mpo = MPO.from_matrix(param.detach(), out_modes, cols_modes, gauge=gauge, **criterion)
            weights[name] = LSTMWeightMPO.from_mpo(mpo.to(device=param.device, dtype=param.dtype))
        ref = lstm.weight_ih_l0
        module = cls(
            lstm.input_size, h, lstm.num_layers, lstm.bias, lstm.batch_first, lstm.dropout, lstm.bidirectional,
            modes=hidden_modes, input_modes=first_in, execution=execution,
            device=ref.device, dtype=ref.dtype, _weights=weights,
        )
        if lstm.bias:
            with torch.no_grad():
                for name, param in lstm.named_parameters():
                    if name.startswith("bias_"):
                        getattr(module, name).copy_(param)
        return module

    @torch.no_grad()
    def to_lstm(self) -> nn.LSTM:
        """A dense ``nn.LSTM`` with the rebuilt W and U and the same biases, dtype and device."""
        ref = self.mpo_modules()[0].cores[0]
        lstm = nn.LSTM(
            self.input_size, self.hidden_size, self.num_layers, self.bias, self.batch_first,
            self.dropout, self.bidirectional, device=ref.device, dtype=ref.dtype,
        )
        for name, module in self.weight_modules():
            getattr(lstm, name).copy_(module.rebuild_weight())
        if self.bias:
            for name, param in self.named_parameters():
                if name.startswith("bias_"):
                    getattr(lstm, name).copy_(param)
        return lstm

    # -- forward -------------------------------------------------------------------------

    def flatten_parameters(self) -> None:
        """No-op, for code written against ``nn.LSTM`` (the weights are rebuilt per call)."""

    @property
    def all_weights(self) -> list[list[torch.Tensor]]:
        """As ``nn.LSTM.all_weights``: per layer and direction ``[W, U(, b_ih, b_hh)]``, W and U rebuilt."""
        out = []
        for layer in range(self.num_layers):
            for suffix in self._suffixes():
                group = [
                    getattr(self, f"weight_ih_l{layer}{suffix}").rebuild_weight(),
                    getattr(self, f"weight_hh_l{layer}{suffix}").rebuild_weight(),
                ]
                if self.bias:
                    group.extend(self._biases(layer, suffix))
                out.append(group)
        return out

    def _biases(self, layer: int, suffix: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        if not self.bias:
            return None
        return getattr(self, f"bias_ih_l{layer}{suffix}"), getattr(self, f"bias_hh_l{layer}{suffix}")

    def forward(self, input, hx: tuple[torch.Tensor, torch.Tensor] | None = None, *, lengths=None):
        """As ``nn.LSTM.forward``: returns ``output, (h_n, c_n)``.

        ``input``: ``(T, B, X)`` (``(B, T, X)`` if batch_first), unbatched
        ``(T, X)``, or a ``PackedSequence``. ``hx``: ``(h_0, c_0)``, each
        ``(num_layers * num_directions, B, H)`` (2-D for unbatched input).
        ``lengths``: optional per-sequence lengths for a padded batched tensor,
        one int per sequence, each in ``[1, T]`` (anything else raises);
        output is then zero beyond each length and ``h_n``/``c_n`` are the
        states at each sequence's last valid step (as with packing).

        As with ``nn.LSTM``, a batch of 0 sequences gives empty outputs of the
        right shape, and a sequence length of 0 raises (:class:`EmptySequenceError`,
        a ``ValueError`` and ``RuntimeError``).
        """
        if lengths is not None:
            if isinstance(input, PackedSequence):
                raise ValueError("pass either a PackedSequence or a padded tensor with lengths=, not both")
            if not isinstance(input, torch.Tensor) or input.dim() != 3:
                raise ValueError(
                    f"lengths= needs a batched 3-D padded input, got "
                    f"{tuple(input.shape) if isinstance(input, torch.Tensor) else type(input).__name__}; "
                    f"e.g. input of shape (T, B, {self.input_size}) with lengths of shape (B,)"
                )
            total = input.shape[1 if self.batch_first else 0]
            batch = input.shape[0 if self.batch_first else 1]
            lengths_cpu = self._check_lengths(lengths, batch, total)
            if batch == 0:  # nothing to pack: the empty batch runs as nn.LSTM runs it
                return self.forward(input, hx)
            packed = pack_padded_sequence(input, lengths_cpu, batch_first=self.batch_first, enforce_sorted=False)
            out, state = self.forward(packed, hx)
            padded, _ = pad_packed_sequence(out, batch_first=self.batch_first, total_length=total)
            return padded, state

        if isinstance(input, PackedSequence):
            data, batch_sizes, sorted_indices, unsorted_indices = input
            self._check_input(data)
            batch = int(batch_sizes[0])
            hx = self._prepare_hx(hx, batch, data, batched=True)
            if sorted_indices is not None:
                hx = (hx[0].index_select(1, sorted_indices), hx[1].index_select(1, sorted_indices))
            output, h_n, c_n = self._run(data, batch_sizes, hx)
            if unsorted_indices is not None:
                h_n, c_n = h_n.index_select(1, unsorted_indices), c_n.index_select(1, unsorted_indices)
            return PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices), (h_n, c_n)

        if not isinstance(input, torch.Tensor):
            raise TypeError(
                f"input must be a Tensor or PackedSequence, got {type(input).__name__}; "
                f"e.g. torch.randn(T, B, {self.input_size})"
            )
        if input.dim() not in (2, 3):
            raise ValueError(
                f"input must be 3-D {'(B, T, X)' if self.batch_first else '(T, B, X)'} or unbatched 2-D (T, X), "
                f"got shape {tuple(input.shape)}; e.g. torch.randn(35, 20, {self.input_size})"
            )
        self._check_input(input)
        batched = input.dim() == 3
        steps = input.shape[1 if batched and self.batch_first else 0]
        if steps == 0:
            raise EmptySequenceError(
                f"input of shape {tuple(input.shape)} has sequence length 0; an LSTM needs at least one time step "
                f"(nn.LSTM raises 'Expected sequence length to be larger than 0' here too), "
                f"e.g. an input of shape {'(B, 1, ' if batched and self.batch_first else '(1, B, '}{self.input_size})"
            )
        if not batched:
            input = input.unsqueeze(1)  # (T, 1, X)
        elif self.batch_first:
            input = input.transpose(0, 1)  # (T, B, X)
        hx = self._prepare_hx(hx, input.shape[1], input, batched=batched)
        output, h_n, c_n = self._run(input, None, hx)
        if not batched:
            return output.squeeze(1), (h_n.squeeze(1), c_n.squeeze(1))
        if self.batch_first:
            output = output.transpose(0, 1)
        return output, (h_n, c_n)

    def _check_lengths(self, lengths, batch: int, total: int) -> torch.Tensor:
        """``lengths`` as a CPU int64 tensor of shape ``(batch,)`` with every entry in ``[1, total]``, else an error."""
        layout = "(B, T, X)" if self.batch_first else "(T, B, X)"
        example = f"e.g. lengths=[{total}] * {batch}" if batch else "e.g. lengths=[] for an empty batch"
        try:
            values = torch.as_tensor(lengths, device="cpu") if not isinstance(lengths, torch.Tensor) else lengths.cpu()
        except (TypeError, ValueError, RuntimeError) as e:
            raise TypeError(f"lengths must be a sequence of ints (one per sequence of the batch), got {lengths!r} "
                            f"({e}); {example}") from None
        if values.dtype == torch.bool or values.is_complex() or (
                values.is_floating_point() and not bool((values == values.round()).all())):
            raise TypeError(f"lengths must hold whole numbers (ints), got {values.tolist()!r} ({values.dtype}); {example}")
        if values.dim() != 1 or values.shape[0] != batch:
            raise ValueError(
                f"lengths must have one entry per sequence: the input {layout} has batch size B={batch}, but lengths "
                f"has shape {tuple(values.shape)} ({values.tolist()!r}); {example}"
            )
        values = values.to(torch.int64)
        bad = [(b, int(v)) for b, v in enumerate(values.tolist()) if not 1 <= v <= total]
        if bad:
            shown = ", ".join(f"lengths[{b}]={v}" for b, v in bad[:4]) + (", ..." if len(bad) > 4 else "")
            raise ValueError(
                f"every length must be in [1, T] with T={total}, the padded length of the input {layout}; got {shown}; "
                f"{example}"
            )
        return values

    def _check_input(self, x: torch.Tensor) -> None:
        if x.shape[-1] != self.input_size:
            raise ValueError(
                f"input has {x.shape[-1]} features in its last dimension (shape {tuple(x.shape)}), but this "
                f"MPOLSTM has input_size={self.input_size}; e.g. an input of shape "
                f"{'(B, T, ' if self.batch_first else '(T, B, '}{self.input_size})"
            )
        ref = self.mpo_modules()[0].cores[0]
        if x.dtype != ref.dtype:
            raise TypeError(
                f"input dtype {x.dtype} does not match the MPOLSTM's {ref.dtype}; "
                f"convert the input (x.to({ref.dtype})) or the model (model.to({x.dtype}))"
            )

    def _prepare_hx(self, hx, batch: int, ref: torch.Tensor, batched: bool):
        layers = self.num_layers * self.num_directions
        expected = (layers, batch, self.hidden_size)
        if hx is None:
            zeros = torch.zeros(expected, dtype=ref.dtype, device=ref.device)
            return zeros, zeros
        if not isinstance(hx, (tuple, list)) or len(hx) != 2 or not all(isinstance(t, torch.Tensor) for t in hx):
            raise TypeError(f"hx must be a tuple (h_0, c_0) of tensors of shape {expected}, got {type(hx).__name__}")
        h0, c0 = hx
        if not batched:
            want = (layers, self.hidden_size)
            for name, t in (("h_0", h0), ("c_0", c0)):
                if tuple(t.shape) != want:
                    raise ValueError(
                        f"{name} has shape {tuple(t.shape)}, but unbatched input needs "
                        f"(num_layers * num_directions, hidden_size) = {want}"
                    )
            return h0.unsqueeze(1), c0.unsqueeze(1)
        for name, t in (("h_0", h0), ("c_0", c0)):
            if tuple(t.shape) != expected:
                raise ValueError(
                    f"{name} has shape {tuple(t.shape)}, but it must be "
                    f"(num_layers * num_directions, batch, hidden_size) = {expected}"
                )
        return h0, c0

    # -- execution ---------------------------------------------------------------------

    def _run(self, x: torch.Tensor, batch_sizes, hx):
        """x: (T, B, X) time-major, or packed data (N, X) with batch_sizes. Returns output, h_n, c_n."""
        if batch_sizes is not None:
            tokens, batch, steps = x.shape[0], int(batch_sizes[0]), int(batch_sizes.shape[0])
        else:
            steps, batch = x.shape[0], x.shape[1]
            tokens = steps * batch
        if batch == 0:  # an empty batch: the fused kernel returns empty outputs of the right shape, as nn.LSTM
            return self._run_fused(x, batch_sizes, hx)
        plan = self.plan(tokens, batch, steps)
        if plan["execution"] == "fused":
            return self._run_fused(x, batch_sizes, hx)
        return self._run_stepwise(x, batch_sizes, hx, plan)

    def plan(self, tokens: int, batch: int, steps: int | None = None) -> dict:
        """Execution plan for ``tokens`` input rows, ``batch`` sequences, ``steps`` time steps.

        Returns ``{"execution": "fused" | "stepwise", "ih": path, "hh": path}``;
        the paths ("rebuild" / "contract") are those of the stepwise strategy.
        Chosen by :func:`lstm_cost` unless ``execution`` forces a strategy; cached per shape.
        """
        steps = steps if steps is not None else max(1, tokens // max(batch, 1))
        key = (tokens, batch, steps, self.execution, self.ih_path, self.hh_path, self.training, torch.is_grad_enabled())
        cached = self._path_cache.get(key)
        if cached is None:
            training = self.training and torch.is_grad_enabled()
            cost = lstm_cost(self, steps=steps, batch=batch, training=training)
            if self.execution == "auto":
                execution = "stepwise" if cost["stepwise"] < STEPWISE_MARGIN * cost["fused"] else "fused"
            else:
                execution = self.execution
            cached = {
                "execution": execution,
                "ih": self.ih_path or cost["path_ih"],
                "hh": self.hh_path or cost["path_hh"],
            }
            self._path_cache[key] = cached
        return cached

    def set_execution(self, execution: str = "auto", ih_path: str | None = None, hh_path: str | None = None) -> "MPOLSTM":
        """Force a strategy ("auto", "fused", "stepwise") and, for stepwise, the W / U paths.

        ``ih_path`` / ``hh_path``: "rebuild", "contract" or None (cost model). Returns self.
        """
        if execution not in EXECUTIONS:
            raise ValueError(f"execution must be one of {EXECUTIONS}, got {execution!r}; e.g. execution='auto'")
        for name, path in (("ih_path", ih_path), ("hh_path", hh_path)):
            if path not in (None, "rebuild", "contract"):
                raise ValueError(f"{name} must be 'rebuild', 'contract' or None, got {path!r}; e.g. {name}='contract'")
        self.execution, self.ih_path, self.hh_path = execution, ih_path, hh_path
        self._path_cache.clear()
        return self

    def _flat_weights(self) -> list[torch.Tensor]:
        flat = []
        for layer in range(self.num_layers):
            for suffix in self._suffixes():
                flat.append(getattr(self, f"weight_ih_l{layer}{suffix}").rebuild_weight())
                flat.append(getattr(self, f"weight_hh_l{layer}{suffix}").rebuild_weight())
                if self.bias:
                    flat.extend(self._biases(layer, suffix))
        return flat

    def _run_fused(self, x, batch_sizes, hx):
        weights = self._flat_weights()
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.float16:
            # oneDNN has no float16 LSTM on CPU (nn.LSTM fails there): run the kernel in float32
            with torch.autocast("cpu", enabled=False):
                f32 = lambda t: t.float()  # noqa: E731
                return self._fused_kernel(f32(x), batch_sizes, tuple(map(f32, hx)), [f32(w) for w in weights])
        return self._fused_kernel(x, batch_sizes, hx, weights)

    @torch.compiler.disable  # as for nn.LSTM, torch.compile runs the fused RNN kernel eagerly (a graph break)
    def _fused_kernel(self, x, batch_sizes, hx, weights):
        if batch_sizes is None:
            return torch._VF.lstm(
                x, hx, weights, self.bias, self.num_layers, self.dropout, self.training, self.bidirectional, False
            )
        return torch._VF.lstm(
            x, batch_sizes, hx, weights, self.bias, self.num_layers, self.dropout, self.training, self.bidirectional,
        )

    def _run_stepwise(self, x, batch_sizes, hx, plan):
        lengths = None
        if batch_sizes is not None:
            # packed (sorted by length, decreasing) -> padded (T, B, X) in the same sorted order
            lengths = lengths_from_batch_sizes(batch_sizes)
            x = packed_to_padded(x, batch_sizes)
        h0, c0 = hx
        h_out, c_out = [], []
        layer_input = x
        for layer in range(self.num_layers):
            outputs = []
            for d, suffix in enumerate(self._suffixes()):
                idx = layer * self.num_directions + d
                out, h_n, c_n = lstm_direction(
                    layer_input,
                    (h0[idx], c0[idx]),
                    getattr(self, f"weight_ih_l{layer}{suffix}"),
                    getattr(self, f"weight_hh_l{layer}{suffix}"),
                    self._biases(layer, suffix),
                    reverse=d == 1,
                    lengths=lengths,
                    ih_path=plan["ih"],
                    hh_path=plan["hh"],
                )
                outputs.append(out)
                h_out.append(h_n)
                c_out.append(c_n)
            layer_input = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)
            if self.dropout and self.training and layer < self.num_layers - 1:
                layer_input = torch.nn.functional.dropout(layer_input, self.dropout, training=True)
        output = layer_input
        if batch_sizes is not None:
            output = padded_to_packed(output, batch_sizes)
        return output, torch.stack(h_out), torch.stack(c_out)


# ---------------------------------------------------------------------------
# construction helpers
# ---------------------------------------------------------------------------


def _bond_spec(kind: str, rate, bond_dim, rate_kind, bond_dim_kind):
    """Resolve the truncation of W ("ih") or U ("hh"): ("rate", r) | ("bond", d) | None (full bonds)."""
    specific = {k: v for k, v in ((f"rate_{kind}", rate_kind), (f"bond_dim_{kind}", bond_dim_kind)) if v is not None}
    generic = {k: v for k, v in (("rate", rate), ("bond_dim", bond_dim)) if v is not None}
    if len(specific) > 1 or len(generic) > 1:
        raise ValueError(
            f"give a rate or a bond dimension, not both; got {sorted({**specific, **generic})}; e.g. rate=10 or bond_dim=32"
        )
    chosen = specific or generic
    if not chosen:
        return None
    name, value = next(iter(chosen.items()))
    if name.startswith("rate"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"{name} must be a positive number (dense / compressed), got {value!r}; e.g. {name}=10")
        return ("rate", float(value))
    _check_positive_int(name, value, f"{name}=32")
    return ("bond", int(value))


def _resolve_bonds(out_modes, in_modes, spec) -> tuple[int, ...]:
    if spec is None:
        return shapes.full_bond_dims(out_modes, in_modes)
    d = bond_dim_for_rate(out_modes, in_modes, spec[1]) if spec[0] == "rate" else spec[1]
    return uniform_bond_dims(out_modes, in_modes, d)
