"""Baselines of squeezing: global magnitude pruning (persistent masks) and per-matrix low-rank SVD."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mpokit.baselines.lowrank import LowRankLinear, allocate_ranks, lowrank_
from mpokit.baselines.pruning import global_magnitude_masks, kept_params, magnitude_prune_, make_pruning_permanent_
from mpokit.squeezing import finetune

torch.set_num_threads(1)


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 24), nn.ReLU(), nn.Linear(24, 20), nn.ReLU(), nn.Linear(20, 2)).double()


def _batches(seed=1, n=128):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 12, generator=g, dtype=torch.float64)
    y = (x[:, 0] + x[:, 1] * x[:, 2] > 0).long()
    return [(x[i : i + 32], y[i : i + 32]) for i in range(0, n, 32)]


TARGETS = ["0", "2"]


def test_global_magnitude_masks_keep_the_largest_entries():
    a = torch.tensor([[0.1, -5.0], [3.0, 0.2]])
    b = torch.tensor([-0.3, 4.0, 0.05])
    masks, thr = global_magnitude_masks([a, b], keep=3)
    assert masks[0].tolist() == [[False, True], [True, False]]
    assert masks[1].tolist() == [False, True, False]
    assert thr == 3.0


def test_pruning_is_global_and_masks_stay_after_training():
    model = _mlp()
    dense = sum(model[int(t)].weight.numel() for t in TARGETS)
    all_abs = torch.cat([model[int(t)].weight.detach().abs().reshape(-1) for t in TARGETS])
    result = magnitude_prune_(model, TARGETS, target_ratio=0.3)
    keep = int(0.3 * dense)
    assert result.kept == keep == kept_params(model, TARGETS)
    # global: the smallest kept magnitude is the keep-th largest over both matrices together
    assert result.threshold == pytest.approx(float(torch.sort(all_abs, descending=True).values[keep - 1]))
    zeros = {t: (model[int(t)].weight == 0).clone() for t in TARGETS}
    kept_before = {t: model[int(t)].weight[~zeros[t]].detach().clone() for t in TARGETS}
    head_before = model[4].weight.detach().clone()
    finetune(model, _batches(), 20, lr=1e-2, weight_decay=0.01)
    for t in TARGETS:
        w = model[int(t)].weight
        assert bool((w[zeros[t]] == 0).all())  # pruned entries are still exactly zero
        assert not torch.equal(w[~zeros[t]].detach(), kept_before[t])  # kept entries trained
    assert not torch.equal(model[4].weight, head_before)
    assert kept_params(model, TARGETS) == keep
    make_pruning_permanent_(model)
    assert isinstance(model[0].weight, nn.Parameter) and kept_params(model, TARGETS) == keep


def test_pruning_bad_input():
    model = _mlp()
    with pytest.raises(ValueError, match="unknown target"):
        magnitude_prune_(model, ["9"], target_ratio=0.5)
    with pytest.raises(ValueError, match="target_ratio"):
        magnitude_prune_(model, TARGETS, target_ratio=1.5)
    with pytest.raises(ValueError, match="target_params"):
        magnitude_prune_(model, TARGETS, target_params=10**9)


def test_lowrank_full_rank_equals_dense():
    torch.manual_seed(0)
    linear = nn.Linear(24, 20).double()
    low = LowRankLinear.from_linear(linear, rank=20)
    x = torch.randn(5, 24, dtype=torch.float64)
    torch.testing.assert_close(low(x), linear(x), rtol=0, atol=1e-12)
    torch.testing.assert_close(low.to_linear().weight, linear.weight, rtol=0, atol=1e-12)


def test_lowrank_is_the_truncated_svd_and_trains():
    model = _mlp()
    weights = {t: model[int(t)].weight.detach().clone() for t in TARGETS}
    result = lowrank_(model, TARGETS, target_ratio=0.5)
    assert result.params <= result.budget == int(0.5 * result.dense)
    for t in TARGETS:
        layer = model[int(t)]
        assert isinstance(layer, LowRankLinear) and layer.rank == result.ranks[t]
        s = torch.linalg.svdvals(weights[t])
        err = torch.linalg.norm(layer.weight.detach() - weights[t])
        # Eckart-Young: the error is exactly the discarded singular values' norm
        assert float(err) == pytest.approx(float(s[layer.rank :].norm()), rel=1e-9, abs=1e-12)
    before = model[0].left.detach().clone()
    finetune(model, _batches(), 3, lr=1e-2)
    assert not torch.equal(before, model[0].left)


def test_allocate_ranks_global_prefers_energy_per_parameter():
    spectra = {
        "a": (torch.tensor([10.0, 9.0, 8.0, 0.1]), 4, 4),  # cost 8 per rank
        "b": (torch.tensor([1.0, 0.5, 0.2, 0.1]), 4, 4),
    }
    ranks = allocate_ranks(spectra, 8 * 5)  # 5 rank-1 components in total
    assert ranks == {"a": 3, "b": 2}  # a gets 3 (big values), then b's 0.5 beats a's 0.1
    assert sum(r * 8 for r in allocate_ranks(spectra, 8 * 5, "uniform").values()) <= 40
    with pytest.raises(ValueError, match="below the smallest"):
        allocate_ranks(spectra, 8)
    with pytest.raises(ValueError, match="allocation"):
        allocate_ranks(spectra, 40, "random")


def test_lowrank_of_a_conv1d_is_the_truncated_svd_of_its_linear_map():
    """transformers' Conv1D (GPT-2) computes x W_c + b with W_c (in, out): its linear map is W = W_c^T."""
    pytest.importorskip("transformers")
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    conv = Conv1D(20, 12).double()  # nf = 20 outputs, nx = 12 inputs: weight (12, 20)
    with torch.no_grad():
        conv.bias.normal_()
    x = torch.randn(5, 12, dtype=torch.float64)
    full = LowRankLinear.from_linear(conv, rank=12)
    assert (full.in_features, full.out_features) == (12, 20)
    torch.testing.assert_close(full(x), conv(x), rtol=0, atol=1e-12)
    low = LowRankLinear.from_linear(conv, rank=3)
    w = conv.weight.detach().t()  # (out, in)
    s = torch.linalg.svdvals(w)
    assert float(torch.linalg.norm(low.weight.detach() - w)) == pytest.approx(float(s[3:].norm()), rel=1e-9)
    model = nn.Sequential(conv, nn.ReLU(), nn.Linear(20, 2)).double()
    result = lowrank_(model, ["0", "2"], target_ratio=0.6)
    assert isinstance(model[0], LowRankLinear) and result.dense == 12 * 20 + 20 * 2
    assert result.params <= result.budget
    with pytest.raises(TypeError, match="nn.Linear or a transformers Conv1D"):
        LowRankLinear.from_linear(nn.Conv2d(1, 1, 1), rank=1)
