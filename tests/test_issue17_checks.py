"""Regression tests of issue 17's remaining defects: D7 (decompose of an MPO checkpoint), D15/D16 (MPOLSTM
lengths and empty inputs), MPO argument types, the one atomic writer, save_pretrained into a folder of another
model, and a corrupt runs.csv on --resume."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from mpokit import MPO
from mpokit.layers.lstm import EmptySequenceError, MPOLSTM

# ---------------------------------------------------------------------------
# MPO.from_matrix / MPO.from_cores: types are named, checked before any SVD
# ---------------------------------------------------------------------------

W64 = torch.randn(64, 64, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    "options, fragments",
    [
        (dict(max_bond=2.5), ["max_bond must be an int", "2.5", "float"]),
        (dict(max_bond="4"), ["max_bond must be an int", "'4'", "str"]),
        (dict(max_bond=[2.0, 2, 2, 2]), ["max_bond must be an int", "2.0"]),
        (dict(rel_error="0.1"), ["rel_error must be a number", "'0.1'", "str"]),
        (dict(rel_error=True), ["rel_error must be a number", "True"]),
        (dict(max_params=float("nan")), ["max_params must be an int", "nan"]),
        (dict(max_params="500"), ["max_params must be an int", "'500'"]),
        (dict(max_params=500.0), ["max_params must be an int", "500.0"]),
    ],
)
def test_from_matrix_names_the_wrong_type(options, fragments):
    with pytest.raises(TypeError) as info:
        MPO.from_matrix(W64, **options)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    assert "e.g." in message and "smallest possible" not in message and "not iterable" not in message


def test_from_matrix_nan_rel_error_is_a_range_error():
    with pytest.raises(ValueError, match=r"rel_error must be in \[0, 1\).*got nan"):
        MPO.from_matrix(W64, rel_error=float("nan"))


def test_from_matrix_takes_numpy_numbers_like_python_ones():
    w = W64[:24, :24]
    exact = MPO.from_matrix(w, n_cores=3)
    assert MPO.from_matrix(w, n_cores=3, max_bond=np.int64(3)).bond_dims == exact.truncate(max_bond=3).bond_dims
    assert MPO.from_matrix(w, n_cores=3, max_params=np.int64(300)).num_params <= 300
    assert MPO.from_matrix(w, n_cores=3, rel_error=np.float32(0.3)).rel_error_bound <= 0.3 + 1e-6
    assert exact.truncate(max_bond=np.int64(2)).bond_dims == (2, 2)


def _never(*args, **kwargs):
    raise AssertionError("the cores reached the decomposition before they were checked")


def _exact_cores() -> list[torch.Tensor]:
    return [c.clone() for c in MPO.from_matrix(W64).cores]


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_from_cores_refuses_non_finite_cores_before_any_decomposition(monkeypatch, value):
    import mpokit.mpo as mpo_module

    cores = _exact_cores()
    cores[2][0, 0, 0, 0] = value
    monkeypatch.setattr(mpo_module, "_left_orthogonalize", _never)
    with pytest.raises(ValueError, match=r"core 2 .* 1 NaN or inf entries.*e\.g\."):
        MPO.from_cores(cores)


def test_from_cores_refuses_mixed_dtypes_and_integer_cores(monkeypatch):
    import mpokit.mpo as mpo_module

    monkeypatch.setattr(mpo_module, "_left_orthogonalize", _never)
    cores = _exact_cores()
    cores[0] = cores[0].double()
    with pytest.raises(ValueError, match=r"one dtype and device.*core 0: torch.float64.*core 1: torch.float32.*e\.g\."):
        MPO.from_cores(cores)
    cores = _exact_cores()
    cores[1] = cores[1].round().long()
    with pytest.raises(TypeError, match=r"core 1 must be floating point, got torch.int64"):
        MPO.from_cores(cores)


def test_from_cores_refuses_mixed_devices(monkeypatch):
    import mpokit.mpo as mpo_module

    monkeypatch.setattr(mpo_module, "_left_orthogonalize", _never)
    cores = _exact_cores()
    cores[1] = cores[1].to("meta")  # a second device without a GPU
    with pytest.raises(ValueError, match=r"one dtype and device.*core 1: torch.float32 on meta"):
        MPO.from_cores(cores)


def test_from_cores_still_takes_good_cores():
    cores = _exact_cores()
    rebuilt = MPO.from_cores(cores).to_matrix()
    assert float((rebuilt - W64).norm() / W64.norm()) < 1e-5


# ---------------------------------------------------------------------------
# D15 / D16: MPOLSTM lengths, batch 0, length 0
# ---------------------------------------------------------------------------


def _lstm_pair(batch_first=False, bidirectional=False, num_layers=2):
    torch.manual_seed(0)
    ref = nn.LSTM(4, 6, num_layers=num_layers, batch_first=batch_first, bidirectional=bidirectional)
    return ref, MPOLSTM.from_lstm(ref)


@pytest.mark.parametrize("lengths", [[5, 3], [5, 3, 2, 1], torch.tensor([[5, 3, 2]]), []])
def test_lstm_lengths_of_another_count_than_the_batch_raise(lengths):
    _, lstm = _lstm_pair()
    with pytest.raises(ValueError, match=r"one entry per sequence.*batch size B=3.*e\.g\. lengths="):
        lstm(torch.randn(5, 3, 4), lengths=lengths)


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("lengths, shown", [([6, 1, 1], "lengths[0]=6"), ([2, 0, 1], "lengths[1]=0"),
                                            ([2, 2, -1], "lengths[2]=-1")])
def test_lstm_lengths_out_of_range_raise(batch_first, lengths, shown):
    _, lstm = _lstm_pair(batch_first=batch_first)
    x = torch.randn(3, 5, 4) if batch_first else torch.randn(5, 3, 4)
    with pytest.raises(ValueError, match=r"in \[1, T\] with T=5") as info:
        lstm(x, lengths=lengths)
    assert shown in str(info.value)


@pytest.mark.parametrize("lengths", [[5.5, 2, 2], torch.tensor([True, True, False]), "532"])
def test_lstm_lengths_that_are_not_ints_raise(lengths):
    _, lstm = _lstm_pair()
    with pytest.raises(TypeError, match="lengths must"):
        lstm(torch.randn(5, 3, 4), lengths=lengths)


def test_lstm_good_lengths_still_match_packing_with_nn_lstm():
    ref, lstm = _lstm_pair()
    x = torch.randn(5, 3, 4)
    lengths = [5, 2, 4]
    out, (h, c) = lstm(x, lengths=torch.tensor(lengths, dtype=torch.float64))  # whole floats are fine
    packed = nn.utils.rnn.pack_padded_sequence(x, torch.tensor(lengths), enforce_sorted=False)
    ref_out, (ref_h, ref_c) = ref(packed)
    ref_out, _ = nn.utils.rnn.pad_packed_sequence(ref_out, total_length=5)
    assert torch.allclose(out, ref_out, atol=1e-5) and torch.allclose(h, ref_h, atol=1e-5)
    assert torch.allclose(c, ref_c, atol=1e-5)


@pytest.mark.parametrize("execution", ["auto", "fused", "stepwise"])
@pytest.mark.parametrize("batch_first, bidirectional", [(False, False), (True, True)])
def test_lstm_batch_zero_gives_empty_outputs_like_nn_lstm(execution, batch_first, bidirectional):
    ref, lstm = _lstm_pair(batch_first=batch_first, bidirectional=bidirectional)
    lstm.set_execution(execution, "contract", "contract").train()
    x = torch.randn(0, 5, 4) if batch_first else torch.randn(5, 0, 4)
    x.requires_grad_(True)
    ref_out, (ref_h, ref_c) = ref(x)
    out, (h, c) = lstm(x)
    assert out.shape == ref_out.shape and h.shape == ref_h.shape and c.shape == ref_c.shape
    (out.sum() + h.sum() + c.sum()).backward()  # the graph exists, as with nn.LSTM
    assert x.grad.shape == x.shape
    directions = 2 if bidirectional else 1
    h0 = torch.zeros(2 * directions, 0, 6)
    assert lstm(x, (h0, h0))[0].shape == ref_out.shape
    assert lstm(x, lengths=[])[0].shape == ref_out.shape  # lengths of an empty batch: an empty list


@pytest.mark.parametrize("shape, batch_first", [((0, 3, 4), False), ((3, 0, 4), True), ((0, 4), False),
                                                ((0, 0, 4), False)])
def test_lstm_length_zero_raises_like_nn_lstm(shape, batch_first):
    ref, lstm = _lstm_pair(batch_first=batch_first)
    x = torch.randn(*shape)
    with pytest.raises(RuntimeError, match="sequence length"):
        ref(x)
    with pytest.raises(EmptySequenceError, match=r"sequence length 0.*e\.g\. an input of shape") as info:
        lstm(x)
    assert isinstance(info.value, ValueError) and isinstance(info.value, RuntimeError)
    assert "reshape" not in str(info.value)
