"""Cost model and contraction paths of mpokit.contract, against dense maths and torch's own FLOP counter."""

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from mpokit import MPO, rebuild_matrix
from mpokit import contract


def _mpo(out_modes=(2, 3, 4), in_modes=(3, 5, 2), max_bond=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(math.prod(out_modes), math.prod(in_modes), generator=g, dtype=torch.float64)
    return w, MPO.from_matrix(w, out_modes=out_modes, in_modes=in_modes, max_bond=max_bond)


def _counted_flops(fn):
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize("modes", [((2, 3, 4), (3, 5, 2)), ((2, 2, 3, 2), (3, 2, 2, 2))])
def test_every_plan_is_exact_and_its_flops_match_torch_flop_counter(modes):
    w, mpo = _mpo(*modes)
    x = torch.randn(7, w.shape[1], dtype=torch.float64)
    cores = list(mpo.cores)
    plans = contract._all_plans(mpo.out_modes, mpo.in_modes, mpo.bond_dims, 7)
    assert len(plans) == 2 ** len(cores) - 1  # per grouping: left-to-right and right-to-left (one if a single group)
    for plan in plans:
        y = contract.mpo_apply(x, cores, plan.order, plan.groups)
        torch.testing.assert_close(y, x @ w.T, rtol=1e-12, atol=1e-12)
        counted = _counted_flops(lambda: contract.mpo_apply(x, cores, plan.order, plan.groups))
        assert counted == plan.flops, (plan.groups, plan.order, counted, plan.flops)


def test_mixed_orders_are_exact_too():
    w, mpo = _mpo((2, 2, 3, 2), (3, 2, 2, 2))
    x = torch.randn(5, w.shape[1], dtype=torch.float64)
    for order in ("LRLL", "RLRL", "RRLL", "LLLL", "RRRL"):
        torch.testing.assert_close(contract.sweep(x, list(mpo.cores), order), x @ w.T, rtol=1e-12, atol=1e-12)
        counted = _counted_flops(lambda: contract.sweep(x, list(mpo.cores), order))
        assert counted == contract.order_cost(mpo.out_modes, mpo.in_modes, mpo.bond_dims, 5, order).flops


def test_sweep_order_cost_matches_a_hand_count():
    # out (2,3), in (3,5), bond 4, 7 tokens, left to right:
    # step 1: (7, [1], 1, 3 | 5) x (1,2,3,4) -> (7, 2, 4, 5): 7*2*4*5 outputs, each sums 1*3 -> 2*840*3 = 1680
    # step 2: (7, 2, 4, 5) x (4,3,5,1) -> (7, 2, 3): 42 outputs, each sums 4*5 -> 2*42*20 = 1680
    cost = contract.order_cost((2, 3), (3, 5), (4,), 7, "LL")
    assert cost.flops == 1680 + 1680
    assert cost.peak_elements == 7 * 15 + 7 * 2 * 4 * 5


def test_rebuild_flops_match_flop_counter_and_rebuild_matrix():
    w, mpo = _mpo((3, 4, 2, 2), (2, 2, 3, 4), max_bond=5)
    cores = list(mpo.cores)
    torch.testing.assert_close(contract.rebuild(cores), rebuild_matrix(cores), rtol=1e-13, atol=1e-13)
    assert _counted_flops(lambda: contract.rebuild(cores)) == contract.rebuild_flops(mpo.out_modes, mpo.in_modes, mpo.bond_dims)


def test_dense_flops_match_flop_counter():
    lin = torch.nn.Linear(24, 10, bias=False)
    x = torch.randn(9, 24)
    assert _counted_flops(lambda: lin(x)) == contract.dense_flops(10, 24, 9)


def test_default_mpo_apply_never_rebuilds_and_matches_contraction_flops():
    w, mpo = _mpo((2, 3, 4), (3, 5, 2))
    x = torch.randn(5, 30, dtype=torch.float64)
    plan = contract.plan_apply(mpo.out_modes, mpo.in_modes, mpo.bond_dims, 5, contract_only=True)
    assert len(plan.groups) > 1
    assert _counted_flops(lambda: contract.mpo_apply(x, list(mpo.cores))) == contract.contraction_flops(
        mpo.out_modes, mpo.in_modes, mpo.bond_dims, 5
    )


def test_choose_path_follows_the_bonds_and_token_count():
    out_modes, in_modes = (3, 4, 4, 4, 4), (4, 4, 4, 4, 3)
    # full bonds: contraction is 100x dense, rebuilding wins
    assert contract.choose_path(out_modes, in_modes, (12, 192, 192, 12), 512) == "rebuild"
    # bond 2, many tokens, weight not cached: contraction needs a fraction of dense's FLOPs
    assert contract.choose_path(out_modes, in_modes, (2, 2, 2, 2), 512) == "contract"
    # cached weight at full bonds: nothing beats one matmul with W
    assert contract.choose_path(out_modes, in_modes, (12, 192, 192, 12), 8192, weight_cached=True) == "rebuild"
    # training memory: contraction intermediates may not exceed 1.25x what the rebuild path saves
    plan = contract.plan_apply(out_modes, in_modes, (2, 2, 2, 2), 8192, training=True)
    rebuild = contract.plan_apply(out_modes, in_modes, (2, 2, 2, 2), 8192, training=True, memory_slack=0.0)
    assert rebuild.path == "rebuild"
    if plan.path == "contract":
        assert plan.merge_elements + plan.sweep.saved_elements <= 1.25 * (rebuild.merge_elements + rebuild.sweep.saved_elements)


def test_mpo_apply_keeps_leading_dims_and_checks_input():
    w, mpo = _mpo()
    x = torch.randn(2, 3, 30, dtype=torch.float64)
    assert contract.mpo_apply(x, list(mpo.cores)).shape == (2, 3, 24)
    with pytest.raises(ValueError, match="multiply to 30"):
        contract.mpo_apply(torch.randn(4, 29, dtype=torch.float64), list(mpo.cores))
    with pytest.raises(ValueError, match="order must be 3 letters"):
        contract.mpo_apply(x, list(mpo.cores), order="LX")


def test_inference_plans_may_peak_at_twice_the_rebuild_plan_and_no_more():
    # 768 -> 3072 at bond 4 and 8192 tokens: the best contraction's intermediate is as large as the output
    out_modes, in_modes, bonds, tokens = (4, 4, 8, 6, 4), (4, 4, 3, 4, 4), (4, 4, 4, 4), 8192
    plan = contract.plan_apply(out_modes, in_modes, bonds, tokens, merged_cached=True)
    rebuild = contract.plan_apply(out_modes, in_modes, bonds, tokens, merged_cached=True, memory_slack=0.0)
    assert rebuild.path == "rebuild" and plan.path == "contract"
    peak = plan.merge_elements + plan.sweep.peak_elements
    assert rebuild.merge_elements + rebuild.sweep.peak_elements < peak
    assert peak <= contract.INFERENCE_MEMORY_SLACK * (rebuild.merge_elements + rebuild.sweep.peak_elements)
    # the training bound is tighter: the same plan would not fit it
    assert contract.plan_apply(out_modes, in_modes, bonds, tokens, merged_cached=True, memory_slack=1.25).path == "rebuild"


@pytest.mark.parametrize("order", ["LLLL", "RRRL"])
@pytest.mark.parametrize("kind", ["matmul", "bmm", "transposed"])
def test_sweep_step_implementations_agree_and_gradcheck(monkeypatch, order, kind):
    """Every implementation of a batched sweep step (torch.matmul's fold, bmm over the broadcast core,
    the transposed product) gives the dense product in float64 and passes gradcheck."""
    gen = torch.Generator().manual_seed(3)
    out_modes, in_modes, bonds = (2, 3, 2, 2), (4, 2, 3, 2), (2, 3, 2)
    dims = (1, *bonds, 1)
    cores = [torch.randn(dims[k], out_modes[k], in_modes[k], dims[k + 1], generator=gen, dtype=torch.float64, requires_grad=True)
             for k in range(4)]
    x = torch.randn(5, math.prod(in_modes), generator=gen, dtype=torch.float64, requires_grad=True)
    expected = x @ rebuild_matrix(cores).T
    chosen = []
    monkeypatch.setattr(contract, "_step_kind", lambda state, a, rest: chosen.append(kind) or kind)
    torch.testing.assert_close(contract.sweep(x, cores, order), expected, rtol=1e-12, atol=1e-12)
    assert chosen  # the batched steps ran through the patched choice
    assert torch.autograd.gradcheck(lambda x, *c: contract.sweep(x, c, order), (x, *cores))


def test_sweep_step_rule():
    """The rule behind the choice (measured in benchmarks/bench_steps.py): the transposed product for
    rows shorter than 16, bmm for longer ones; in training bmm only while the core's rows m <= rest
    (its per-entry gradient transient); non-CPU devices keep torch.matmul."""
    core = torch.nn.Parameter(torch.randn(8, 12))
    state = torch.randn(10, 12, 6)
    with torch.no_grad():
        assert contract._step_kind(state, core, 2) == "transposed"
        assert contract._step_kind(state, core, 15) == "transposed"
        assert contract._step_kind(state, core, 16) == "bmm"
        assert contract._step_kind(state, torch.randn(2304, 144), 16) == "bmm"
    assert contract._step_kind(state, core, 6) == "transposed"
    assert contract._step_kind(state, core, 16) == "bmm"
    assert contract._step_kind(state, torch.nn.Parameter(torch.randn(64, 384)), 32) == "matmul"  # grad transient > state
    assert contract._step_kind(state.to("meta"), core, 32) == "matmul"
    assert contract._step_kind(state.to("meta"), core, 4) == "matmul"


def test_cached_plans_contract_only_when_that_also_saves_flops():
    """With merged cores cached (inference under "cache"), a one-token call of a high-bond MPO keeps the
    GEMV over W (the sweep would need more FLOPs than the dense product); a low-rank 2-core layout, whose
    sweep needs r (I + J) < I J multiply-adds, contracts; pinned contraction (contract_only) is kept."""
    out_modes, in_modes, bonds = (3, 4, 4, 4, 3), (4, 3, 4, 3, 4), (12, 59, 144, 12)  # 576 x 576 at ~50%
    plan = contract.plan_apply(out_modes, in_modes, bonds, 1, merged_cached=True)
    assert plan.path == "rebuild"
    assert contract.plan_apply(out_modes, in_modes, bonds, 1, merged_cached=True, contract_only=True).path == "contract"
    low_rank = contract.plan_apply((576, 1), (1, 576), (144,), 1, merged_cached=True)
    assert low_rank.path == "contract" and low_rank.sweep_flops < contract.dense_flops(576, 576, 1)
