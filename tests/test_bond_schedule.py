"""Gradual bond truncation: the cubic schedule of MPO parameters, exact final bonds, optimizer sync."""

import pytest
import torch
from torch import nn

from mpokit import shapes
from mpokit.bond_schedule import GradualBondTruncation, hand_on_state, sync_optimizer
from mpokit.layers.linear import MPOLinear
from mpokit.layers.lstm import MPOLSTM


def _count(module) -> int:
    """MPO parameters read off the core tensors (independent of shapes.mpo_num_params)."""
    return sum(core.numel() for core in module.cores)


def _lstm_and_schedule(end_step=50, frequency=5, begin_step=0):
    torch.manual_seed(0)
    lstm = MPOLSTM.from_lstm(nn.LSTM(32, 32))  # exact: full bonds
    final = {name: shapes.consistent_bond_dims(m.out_modes, m.in_modes, [6, 6, 6]) for name, m in lstm.weight_modules()}
    schedule = GradualBondTruncation(dict(lstm.weight_modules()), final, begin_step=begin_step, end_step=end_step,
                                     frequency=frequency)
    return lstm, final, schedule


def test_parameters_follow_the_cubic_schedule_down_to_the_final_bonds():
    lstm, final, schedule = _lstm_and_schedule(begin_step=10, end_step=60, frequency=5)
    modules = dict(lstm.weight_modules())
    start = {name: _count(m) for name, m in modules.items()}
    final_counts = {name: shapes.mpo_num_params(m.out_modes, m.in_modes, final[name]) for name, m in modules.items()}
    previous = dict(start)
    for step in range(0, 80):
        before = {name: tuple(m.bond_dims) for name, m in modules.items()}
        changed = schedule.step(step)
        after = {name: tuple(m.bond_dims) for name, m in modules.items()}
        assert changed == (before != after)
        if step < 10 or (step < 60 and (step - 10) % 5):
            assert not changed, f"step {step} is not a truncation step"
        for name, m in modules.items():
            count = _count(m)
            assert count <= previous[name], "bonds only shrink"
            assert count >= final_counts[name], "never below the final budget"
            if step >= 10 and (step - 10) % 5 == 0 and step < 60:
                remaining = (1 - (step - 10) / 50) ** 3
                target = final_counts[name] + (start[name] - final_counts[name]) * remaining
                assert count <= target + 1e-9, f"{name} at step {step}: {count} above the cubic target {target:.0f}"
            previous[name] = count
    assert schedule.finished()
    assert {name: tuple(m.bond_dims) for name, m in modules.items()} == final
    assert lstm.num_weight_params() == schedule.num_params() == schedule.final_params == sum(final_counts.values())
    assert not schedule.step(100), "nothing left to cut"


def test_each_cut_takes_the_largest_uniform_cap_that_fits():
    lstm, final, schedule = _lstm_and_schedule(end_step=40, frequency=4)
    for step in range(0, 40, 4):
        targets = schedule.params_at(step)
        chosen = schedule.bonds_at(step)
        for name, m in lstm.weight_modules():
            current = tuple(m.bond_dims)

            def bonds(cap):
                return shapes.consistent_bond_dims(m.out_modes, m.in_modes,
                                                   [max(min(c, cap), f) for c, f in zip(current, final[name])])

            fitting = [cap for cap in range(1, max(current) + 1)
                       if shapes.mpo_num_params(m.out_modes, m.in_modes, bonds(cap)) <= targets[name]]
            expected = bonds(max(fitting)) if fitting else tuple(final[name])
            assert chosen[name] == expected, (step, name)
        schedule.step(step)


def test_first_cut_keeps_the_weights_close_and_later_training_uses_the_new_cores():
    lstm, _, schedule = _lstm_and_schedule(end_step=30, frequency=10)
    model = nn.Sequential()
    model.add_module("lstm", lstm)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = torch.randn(7, 3, 32)
    lstm(x)[0].sum().backward()
    opt.step()
    bias_state = opt.state[lstm.bias_ih_l0]["exp_avg"].clone()
    old_cores = {id(p) for m in lstm.mpo_modules() for p in m.cores}
    dense_before = {name: m.rebuild_weight().detach().clone() for name, m in lstm.weight_modules()}
    assert schedule.step(10)
    sync_optimizer(opt, model.parameters())
    live = list(model.parameters())
    assert [id(p) for p in opt.param_groups[0]["params"]] == [id(p) for p in live]
    assert not old_cores & {id(p) for p in live}, "the cut replaced every core"
    assert set(opt.state) <= set(live), "no state is left for replaced cores"
    assert torch.equal(opt.state[lstm.bias_ih_l0]["exp_avg"], bias_state), "state of kept parameters survives"
    for name, m in lstm.weight_modules():
        err = float((m.rebuild_weight().detach() - dense_before[name]).norm())
        assert err <= m.error_bound * (1 + 1e-4) + 1e-6, f"{name}: error {err} above its bound {m.error_bound}"
    cores = [p.detach().clone() for m in lstm.mpo_modules() for p in m.cores]
    opt.zero_grad()
    lstm(x)[0].sum().backward()
    opt.step()
    assert all(not torch.equal(a, b) for a, b in zip(cores, [p for m in lstm.mpo_modules() for p in m.cores]))


@pytest.mark.parametrize("amsgrad", [False, True])
def test_carried_adam_state_keeps_the_step_count_and_the_mean_second_moment(amsgrad):
    lstm, _, schedule = _lstm_and_schedule(end_step=30, frequency=10)
    opt = torch.optim.Adam(lstm.parameters(), lr=1e-2, amsgrad=amsgrad)
    x = torch.randn(7, 3, 32)
    for _ in range(3):
        opt.zero_grad()
        lstm(x)[0].sum().backward()
        opt.step()
    old_state = {id(p): (float(opt.state[p]["step"]), float(opt.state[p]["exp_avg_sq"].mean()))
                 for m in lstm.mpo_modules() for p in m.cores}
    assert schedule.step(10)
    assert len(schedule.replaced) == sum(len(m.cores) for m in lstm.mpo_modules())
    sync_optimizer(opt, lstm.parameters(), carry=schedule.replaced)
    assert set(opt.state) == set(lstm.parameters())
    for old, new in schedule.replaced:
        state = opt.state[new]
        step, mean_sq = old_state[id(old)]
        assert float(state["step"]) == step == 3
        assert not state["exp_avg"].any() and state["exp_avg"].shape == new.shape
        assert torch.allclose(state["exp_avg_sq"], torch.full_like(new, mean_sq))
        assert ("max_exp_avg_sq" in state) == amsgrad
    before = [p.detach().clone() for m in lstm.mpo_modules() for p in m.cores]
    opt.zero_grad()
    lstm(x)[0].sum().backward()
    opt.step()
    after = [p.detach() for m in lstm.mpo_modules() for p in m.cores]
    restarted_step = 1e-2  # a restarted Adam moves every element by lr (bias correction at step 1)
    moved = float(torch.cat([(a - b).abs().flatten() for a, b in zip(after, before)]).mean())
    assert 0 < moved < 0.5 * restarted_step, f"carried state still moved the cores by {moved} per element on average"


def test_hand_on_state_without_adam_state_starts_fresh():
    old, new = nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([old], lr=0.1, momentum=0.9)
    old.grad = torch.ones(3)
    opt.step()
    hand_on_state(opt, [(old, new)])
    assert old not in opt.state and new not in opt.state


def test_works_on_mpo_linear_layers():
    torch.manual_seed(0)
    layer = MPOLinear.from_linear(nn.Linear(64, 48), n_cores=3)
    final = shapes.consistent_bond_dims(layer.out_modes, layer.in_modes, [4, 4])
    schedule = GradualBondTruncation({"fc": layer}, {"fc": final}, begin_step=0, end_step=3, frequency=1)
    counts = []
    for step in range(4):
        schedule.step(step)
        counts.append(_count(layer))
    assert counts == sorted(counts, reverse=True) and tuple(layer.bond_dims) == final and schedule.finished()


@pytest.mark.parametrize("bad, match", [
    (dict(final={"weight_ih_l0": (6, 6, 6)}), "must name exactly the modules"),
    (dict(final_bonds=(500, 6, 6)), "no larger than its current bonds"),
    (dict(final_bonds=(6, 6, 0)), "consistent with its modes"),
    (dict(frequency=0), "frequency must be an int >= 1"),
    (dict(begin_step=20, end_step=10), "begin_step <= end_step"),
])
def test_bad_schedules_are_rejected(bad, match):
    torch.manual_seed(0)
    lstm = MPOLSTM.from_lstm(nn.LSTM(32, 32))
    modules = dict(lstm.weight_modules())
    bonds = bad.get("final_bonds", (6, 6, 6))
    final = bad.get("final", {name: bonds for name in modules})
    before = {name: tuple(m.bond_dims) for name, m in modules.items()}
    with pytest.raises(ValueError, match=match):
        GradualBondTruncation(modules, final, begin_step=bad.get("begin_step", 0), end_step=bad.get("end_step", 10),
                              frequency=bad.get("frequency", 1))
    assert {name: tuple(m.bond_dims) for name, m in modules.items()} == before


def test_sync_optimizer_needs_one_group():
    a, b = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2))
    opt = torch.optim.Adam([{"params": [a]}, {"params": [b]}])
    with pytest.raises(ValueError, match="one parameter group"):
        sync_optimizer(opt, [a, b])
