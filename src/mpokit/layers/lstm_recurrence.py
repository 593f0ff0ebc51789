"""The stepwise LSTM recurrence (one layer, one direction) and packed <-> padded helpers.

Used by :class:`mpokit.layers.lstm.MPOLSTM`'s "stepwise" strategy: the input
projection ``x W^T`` of all steps in one call, then a loop over time steps
applying ``U`` to the hidden state. Gate order i, f, g, o (``nn.LSTM``).
Shapes: x ``(T, B, X)``, states ``(B, H)``, gates ``(B, 4H)``.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from ..contract import TRAINING_MEMORY_SLACK, merge_groups, mpo_apply, plan_apply, prepare_sweep, run_sweep

__all__ = ["lstm_direction", "LSTMRecurrence", "lengths_from_batch_sizes", "packed_to_padded", "padded_to_packed"]


def lengths_from_batch_sizes(batch_sizes: torch.Tensor) -> torch.Tensor:
    """batch_sizes (T,) of a packed batch (sorted by length) -> lengths (B,) in that sorted order."""
    bs = batch_sizes.to("cpu", torch.int64)
    batch = int(bs[0])
    steps = torch.arange(batch).unsqueeze(0) < bs.unsqueeze(1)  # (T, B): step t exists for sequence b
    return steps.sum(0)


def packed_to_padded(data: torch.Tensor, batch_sizes: torch.Tensor) -> torch.Tensor:
    """packed data (N, X) -> padded (T, B, X), zeros past each length (sorted order)."""
    bs = batch_sizes.to("cpu", torch.int64)
    steps, batch = bs.shape[0], int(bs[0])
    mask = torch.arange(batch).unsqueeze(0) < bs.unsqueeze(1)  # (T, B)
    rows, cols = mask.nonzero(as_tuple=True)  # time-major, the order of the packed data
    padded = data.new_zeros(steps, batch, data.shape[-1])
    return padded.index_put((rows.to(data.device), cols.to(data.device)), data)


def padded_to_packed(padded: torch.Tensor, batch_sizes: torch.Tensor) -> torch.Tensor:
    """padded (T, B, H) (sorted order) -> packed data (N, H)."""
    bs = batch_sizes.to("cpu", torch.int64)
    mask = torch.arange(int(bs[0])).unsqueeze(0) < bs.unsqueeze(1)  # (T, B)
    rows, cols = mask.nonzero(as_tuple=True)
    return padded[rows.to(padded.device), cols.to(padded.device)]


def _reverse_index(steps: int, lengths: torch.Tensor | None, batch: int, device) -> torch.Tensor | None:
    """(T, B) time index reversing each sequence within its length (an involution), or None for a plain flip."""
    if lengths is None:
        return None
    t = torch.arange(steps).unsqueeze(1)  # (T, 1)
    lens = lengths.unsqueeze(0)  # (1, B)
    return torch.where(t < lens, lens - 1 - t, t).to(device)


def lstm_direction(x, state, w_ih, w_hh, biases, *, reverse, lengths, ih_path, hh_path):
    """One layer, one direction. x (T, B, X) -> out (T, B, H), h_n (B, H), c_n (B, H).

    ``w_ih`` / ``w_hh``: :class:`~mpokit.layers.lstm.LSTMWeightMPO` (``matmul``, ``rebuild_weight``, ``cores``);
    ``ih_path`` / ``hh_path``: "rebuild" or "contract". ``biases``: ``(b_ih, b_hh)`` or None.
    The input projection of all steps is one call (autograd as usual); the recurrence is
    :class:`LSTMRecurrence` (hand-written backward through time).
    With ``lengths``, sequence b only runs its first ``lengths[b]`` steps (state frozen after).
    """
    steps, batch, _ = x.shape
    rev = _reverse_index(steps, lengths, batch, x.device) if reverse else None
    if reverse:
        x = x.flip(0) if rev is None else x.gather(0, rev.unsqueeze(-1).expand_as(x))
    gates_x = w_ih.matmul(x.reshape(steps * batch, -1), ih_path).reshape(steps, batch, -1)  # (T, B, 4H)
    if biases is not None:
        gates_x = gates_x + (biases[0] + biases[1])
    mask = None
    if lengths is not None:
        mask = (torch.arange(steps).unsqueeze(1) < lengths.unsqueeze(0)).to(x.device).unsqueeze(-1)  # (T, B, 1)
    u_tensors = (w_hh.rebuild_weight(),) if hh_path == "rebuild" else tuple(w_hh.cores)
    # the recurrence runs in the state's dtype (under autocast, gates_x / U may come in lower precision)
    dtype = state[0].dtype
    gates_x = gates_x.to(dtype)
    u_tensors = tuple(u.to(dtype) for u in u_tensors)
    out, h_n, c_n = LSTMRecurrence.apply(hh_path, mask, gates_x, state[0], state[1], *u_tensors)
    if reverse:
        out = out.flip(0) if rev is None else out.gather(0, rev.unsqueeze(-1).expand_as(out))
    return out, h_n, c_n


@contextmanager
def _flush_denormals(device: torch.device):
    """Flush denormal floats to zero on CPU for the duration (restoring the previous mode).

    Gradients through time decay geometrically and reach the denormal range on long
    sequences, where CPU arithmetic is ~10x slower (oneDNN's fused LSTM flushes them too).
    """
    if device.type != "cpu":
        yield
        return
    already = float(torch.tensor([1e-39]) * 1.0) == 0.0  # denormal input reads as zero: flushing is on
    if not already:
        torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if not already:
            torch.set_flush_denormal(False)


class _StepOperator:
    """``h -> h U^T`` and ``g -> g U`` for one batch size, prepared once per call (no autograd).

    "rebuild": U ``(4H, H)`` dense. "contract": U's cores, with runs of adjacent cores
    merged once (the plan :func:`mpokit.contract.plan_apply` picks for ``batch`` rows,
    merging cached) and prepared as step matrices once, then swept per step; ``U^T``'s cores are the same with (i, j) swapped.
    """

    def __init__(self, path: str, u_tensors, batch: int):
        self.path = path
        if path == "rebuild":
            self.u = u_tensors[0]  # (4H, H)
            self.u_t = self.u.t()
            return
        out_modes = [int(c.shape[1]) for c in u_tensors]
        in_modes = [int(c.shape[2]) for c in u_tensors]
        bonds = [int(c.shape[3]) for c in u_tensors[:-1]]
        fwd = plan_apply(out_modes, in_modes, bonds, batch, contract_only=True, merged_cached=True,
                         memory_slack=TRAINING_MEMORY_SLACK)
        merged = merge_groups(list(u_tensors), fwd.groups)
        self.prepared = prepare_sweep(merged, fwd.order)
        merged_t = [m.transpose(1, 2) for m in merged]
        bwd = plan_apply(
            [int(m.shape[1]) for m in merged_t], [int(m.shape[2]) for m in merged_t],
            [int(m.shape[3]) for m in merged_t[:-1]], batch, contract_only=True, merged_cached=True,
        )
        self.prepared_t = prepare_sweep(merge_groups(merged_t, bwd.groups), bwd.order)

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # (B, H) -> (B, 4H)
        if self.path == "rebuild":
            return h @ self.u_t
        return run_sweep(h, self.prepared)

    def transposed(self, g: torch.Tensor) -> torch.Tensor:  # (B, 4H) -> (B, H)
        if self.path == "rebuild":
            return g @ self.u
        return run_sweep(g, self.prepared_t)


class LSTMRecurrence(torch.autograd.Function):
    """The LSTM recurrence over precomputed input gates, U applied per step, with BPTT written by hand.

    ``apply(hh_path, mask, gates_x, h0, c0, *u_tensors) -> (out, h_n, c_n)``:

    * gates_x ``(T, B, 4H)``: ``x W^T + b_ih + b_hh`` for every step (gate order i, f, g, o);
    * h0, c0 ``(B, H)``; mask ``(T, B, 1)`` bool (step t runs for sequence b) or None;
    * ``u_tensors``: ``(U,)`` with U ``(4H, H)`` for ``hh_path="rebuild"``, or U's cores
      ``(d_{k-1}, i_k, j_k, d_k)`` for ``"contract"`` (``mpo_apply`` per step).

    Forward runs without building an autograd graph per step; backward runs the
    recurrence backwards (one ``g U`` per step) and then forms U's gradient in ONE
    batched call over all steps: ``dU = dG^T H_prev`` (rebuild) or the vector-Jacobian
    product of ``mpo_apply(H_prev, cores)`` (contract).
    """

    @staticmethod
    def forward(ctx, hh_path, mask, gates_x, h0, c0, *u_tensors):
        steps, batch, four_h = gates_x.shape
        hidden = four_h // 4
        acts = gates_x.new_empty(steps, batch, four_h)  # post-activation gates
        cs = gates_x.new_empty(steps + 1, batch, hidden)  # c_{t} carried (cs[0] = c0)
        hs = gates_x.new_empty(steps + 1, batch, hidden)  # h_{t} carried (hs[0] = h0)
        tanh_cs = gates_x.new_empty(steps, batch, hidden)  # tanh(c_new)
        cs[0], hs[0] = c0, h0
        out = gates_x.new_empty(steps, batch, hidden) if mask is not None else None
        with _flush_denormals(gates_x.device), torch.autocast(gates_x.device.type, enabled=False):
            op = _StepOperator(hh_path, [u.detach() for u in u_tensors], batch)
            LSTMRecurrence._forward_loop(op, mask, gates_x, acts, cs, hs, tanh_cs, out)
        ctx.hh_path = hh_path
        ctx.save_for_backward(acts, cs, hs, tanh_cs, mask, *u_tensors)
        if out is None:
            out = hs[1:].clone()
        return out, hs[steps].clone(), cs[steps].clone()

    @staticmethod
    def _forward_loop(op, mask, gates_x, acts, cs, hs, tanh_cs, out):
        steps, hidden = gates_x.shape[0], gates_x.shape[2] // 4
        g_slice = slice(2 * hidden, 3 * hidden)
        for t in range(steps):
            a = acts[t]
            pre = op.forward(hs[t]).add_(gates_x[t])  # (B, 4H)
            torch.sigmoid(pre, out=a)
            torch.tanh(pre[:, g_slice], out=a[:, g_slice])
            i, f, g, o = a.chunk(4, 1)
            if mask is None:
                torch.addcmul(f * cs[t], i, g, out=cs[t + 1])
                torch.tanh(cs[t + 1], out=tanh_cs[t])
                torch.mul(o, tanh_cs[t], out=hs[t + 1])
            else:
                m = mask[t]
                c_new = torch.addcmul(f * cs[t], i, g)
                torch.tanh(c_new, out=tanh_cs[t])
                h_new = o * tanh_cs[t]
                torch.where(m, c_new, cs[t], out=cs[t + 1])
                torch.where(m, h_new, hs[t], out=hs[t + 1])
                torch.mul(h_new, m, out=out[t])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_out, d_hn, d_cn):
        device = ctx.saved_tensors[0].device
        with _flush_denormals(device), torch.autocast(device.type, enabled=False):
            return LSTMRecurrence._backward(ctx, d_out, d_hn, d_cn)

    @staticmethod
    def _backward(ctx, d_out, d_hn, d_cn):
        acts, cs, hs, tanh_cs, mask, *u_tensors = ctx.saved_tensors
        path = ctx.hh_path
        steps, batch, four_h = acts.shape
        hidden = four_h // 4
        i_all, f_all, g_all, o_all = acts.chunk(4, 2)  # (T, B, H) views
        deriv = acts * (1 - acts)  # d sigmoid, then d tanh for the g block
        deriv[..., 2 * hidden : 3 * hidden] = 1 - g_all * g_all
        k_all = o_all * (1 - tanh_cs * tanh_cs)  # d c / d h through h = o tanh(c)
        z_all = torch.stack((g_all, cs[:-1], i_all), dim=2)  # (T, B, 3, H): factors of di, df, dg
        d_gates = acts.new_empty(steps, batch, four_h)  # becomes dL/d(pre-activation gates)
        dh_carry = d_hn if d_hn is not None else acts.new_zeros(batch, hidden)
        dc_carry = d_cn if d_cn is not None else acts.new_zeros(batch, hidden)
        mask_f = mask.to(acts.dtype) if mask is not None else None
        op = _StepOperator(path, u_tensors, batch)
        for t in range(steps - 1, -1, -1):
            da = d_gates[t]
            dh = dh_carry if d_out is None else dh_carry + d_out[t]
            if mask_f is not None:
                m = mask_f[t]
                dh = dh * m
                dc = torch.addcmul(dc_carry * m, dh, k_all[t])
                keep_h, keep_c = dh_carry * (1 - m), dc_carry * (1 - m)
            else:
                dc = torch.addcmul(dc_carry, dh, k_all[t])
            torch.mul(dh, tanh_cs[t], out=da[:, 3 * hidden :])  # d o
            torch.mul(dc.unsqueeze(1), z_all[t], out=da[:, : 3 * hidden].view(batch, 3, hidden))  # d i, d f, d g
            da.mul_(deriv[t])
            dc_carry = dc * f_all[t]
            dh_carry = op.transposed(da)
            if mask_f is not None:
                dh_carry = dh_carry + keep_h
                dc_carry = dc_carry + keep_c
        grads_u = [None] * len(u_tensors)
        if any(ctx.needs_input_grad[5:]):
            flat_g = d_gates.reshape(steps * batch, four_h)
            flat_h = hs[:-1].reshape(steps * batch, hidden)
            if path == "rebuild":
                grads_u = [flat_g.t() @ flat_h]  # (4H, H)
            else:
                with torch.enable_grad():
                    cores = [c.detach().requires_grad_(True) for c in u_tensors]
                    y = mpo_apply(flat_h, cores)
                    grads_u = list(torch.autograd.grad(y, cores, flat_g))
        d_gates_x = d_gates if ctx.needs_input_grad[2] else None
        return None, None, d_gates_x, dh_carry, dc_carry, *grads_u
