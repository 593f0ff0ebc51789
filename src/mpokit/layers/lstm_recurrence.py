"""The stepwise LSTM recurrence (one layer, one direction) and packed <-> padded helpers.

Used by :class:`mpokit.layers.lstm.MPOLSTM`'s "stepwise" strategy: the input
projection ``x W^T`` of all steps in one call, then a loop over time steps
applying ``U`` to the hidden state. Gate order i, f, g, o (``nn.LSTM``).
Shapes: x ``(T, B, X)``, states ``(B, H)``, gates ``(B, 4H)``.
"""

from __future__ import annotations

import torch

from .lstm_plan import GATES

__all__ = ["lstm_direction", "lengths_from_batch_sizes", "packed_to_padded", "padded_to_packed"]


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

    ``w_ih`` / ``w_hh``: :class:`~mpokit.layers.lstm.LSTMWeightMPO` (``matmul``, ``rebuild_weight``);
    ``ih_path`` / ``hh_path``: "rebuild" or "contract". ``biases``: ``(b_ih, b_hh)`` or None.
    The input projection of all steps is one call; the recurrence applies U per step.
    With ``lengths``, sequence b only runs its first ``lengths[b]`` steps (state frozen after).
    """
    steps, batch, _ = x.shape
    rev = _reverse_index(steps, lengths, batch, x.device) if reverse else None
    if reverse:
        x = x.flip(0) if rev is None else x.gather(0, rev.unsqueeze(-1).expand_as(x))
    gates_x = w_ih.matmul(x.reshape(steps * batch, -1), ih_path).reshape(steps, batch, -1)  # (T, B, 4H)
    if biases is not None:
        gates_x = gates_x + (biases[0] + biases[1])
    u_t = w_hh.rebuild_weight().t() if hh_path == "rebuild" else None  # (H, 4H)
    mask = None
    if lengths is not None:
        mask = (torch.arange(steps).unsqueeze(1) < lengths.unsqueeze(0)).to(x.device).unsqueeze(-1)  # (T, B, 1)
    h, c = state
    outs = []
    per_step = gates_x.unbind(0)  # one backward node for all steps (indexing would add T full-size zeros)
    for t in range(steps):
        if u_t is not None:
            gates = torch.addmm(per_step[t], h, u_t)  # (B, 4H)
        else:
            gates = per_step[t] + w_hh.matmul(h, "contract")
        i, f, g, o = gates.chunk(GATES, 1)
        c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h_new = torch.sigmoid(o) * torch.tanh(c_new)
        if mask is not None:
            m = mask[t]
            h = torch.where(m, h_new, h)
            c = torch.where(m, c_new, c)
            outs.append(h_new * m)
        else:
            h, c = h_new, c_new
            outs.append(h)
    out = torch.stack(outs)  # (T, B, H)
    if reverse:
        out = out.flip(0) if rev is None else out.gather(0, rev.unsqueeze(-1).expand_as(out))
    return out, h, c
