"""MPOLSTM against nn.LSTM: equivalence, gradients, truncation bounds, packing, state_dict, errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from mpokit.layers.lstm import MPOLSTM, bond_dim_for_rate, gate_modes, lstm_cost, lstm_modes
from mpokit.shapes import mpo_num_params

# (execution, ih_path, hh_path): the fused kernel and the stepwise loop with each path
PATHS = [("fused", None, None), ("stepwise", "rebuild", "rebuild"), ("stepwise", "contract", "contract")]
PATH_IDS = ["fused", "stepwise-rebuild", "stepwise-contract"]

INPUT, HIDDEN = 12, 16  # modes: input (3, 2, 1, 2), hidden (2, 2, 2, 2)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm())


def _pair(dtype, num_layers=2, bidirectional=True, batch_first=False, bias=True, seed=0):
    torch.manual_seed(seed)
    ref = nn.LSTM(INPUT, HIDDEN, num_layers, bias=bias, batch_first=batch_first, bidirectional=bidirectional)
    ref = ref.to(dtype)
    return ref, MPOLSTM.from_lstm(ref)


# ---------------------------------------------------------------------------
# modes and the rate -> bond table (MPO-LSTM paper, method.md §6)
# ---------------------------------------------------------------------------

PAPER_RATES = (5, 10, 15, 20, 25, 50, 75, 100)
PAPER_D_W = (64, 41, 32, 26, 22, 13, 9, 7)
PAPER_D_U = (64, 40, 29, 24, 20, 13, 9, 7)


def test_default_modes_are_the_papers():
    assert lstm_modes(256) == (8, 2, 2, 8)
    assert gate_modes((8, 2, 2, 8)) == (32, 2, 2, 8)
    for size in (256, 1024, 300, 257, 12, 7):
        assert math.prod(lstm_modes(size)) == size


def test_bond_dim_for_rate_reproduces_paper_table():
    """Hidden 256: W and U are both (1024 x 256), out (32,2,2,8) x in (8,2,2,8).

    Our rule (uniform bond whose rate is nearest the target, log scale) matches the
    paper's d_W within 1 everywhere, and d_U within 1 except at rate 15: there the
    paper gives d_W = 32 but d_U = 29 for two matrices of the SAME shape, so no
    single rule can match both; d = 29 actually gives rate 16.4 and d = 32 gives 14.2.
    """
    out_modes, in_modes = gate_modes((8, 2, 2, 8)), (8, 2, 2, 8)
    dense = 1024 * 256
    for rate, d_w, d_u in zip(PAPER_RATES, PAPER_D_W, PAPER_D_U):
        d = bond_dim_for_rate(out_modes, in_modes, rate)
        assert abs(d - d_w) <= 1, (rate, d, d_w)
        if rate != 15:
            assert abs(d - d_u) <= 1, (rate, d, d_u)
        params = mpo_num_params(out_modes, in_modes, (d, d, d))
        assert abs(math.log(dense / params / rate)) < 0.06, (rate, d, dense / params)
    rate_of = lambda d: dense / mpo_num_params(out_modes, in_modes, (d, d, d))  # noqa: E731
    assert rate_of(29) > 16.3 and rate_of(32) < 14.3  # the paper's rate-15 pair brackets 15 unevenly


def test_rate_and_bond_dim_constructor():
    m = MPOLSTM(256, 256, rate=10)
    assert {mod.bond_dims for mod in m.mpo_modules()} == {(41, 41, 41)}
    assert m.num_weight_params() == sum(c.numel() for mod in m.mpo_modules() for c in mod.cores)
    assert m.dense_weight_params() == 2 * 1024 * 256
    assert abs(m.compression_rate - 10) < 0.2
    m2 = MPOLSTM(256, 256, bond_dim_ih=41, bond_dim_hh=40)
    assert m2.weight_ih_l0.bond_dims == (41, 41, 41) and m2.weight_hh_l0.bond_dims == (40, 40, 40)
    assert len(m2.central_parameters()) == 2 and len(m2.auxiliary_parameters()) == 6


def test_random_init_variance_matches_nn_lstm():
    torch.manual_seed(0)
    m = MPOLSTM(256, 256, rate=10)
    target = 1.0 / (3 * 256)  # variance of U(-1/sqrt(H), 1/sqrt(H))
    for mod in m.mpo_modules():
        var = float(mod.rebuild_weight().detach().var())
        assert 0.6 * target < var < 1.6 * target, (var, target)


# ---------------------------------------------------------------------------
# equivalence with nn.LSTM at full bonds
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS, ids=PATH_IDS)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)], ids=["f32", "f64"])
@pytest.mark.parametrize(
    "num_layers,bidirectional,batch_first,with_state",
    [(2, True, False, True), (2, True, True, False), (1, False, True, True), (3, False, False, False)],
)
def test_matches_nn_lstm_at_full_bonds(path, dtype, tol, num_layers, bidirectional, batch_first, with_state):
    ref, mpo = _pair(dtype, num_layers, bidirectional, batch_first)
    mpo.set_execution(*path)
    steps, batch, dirs = 7, 3, 2 if bidirectional else 1
    x = torch.randn((batch, steps, INPUT) if batch_first else (steps, batch, INPUT), dtype=dtype)
    hx = None
    if with_state:
        hx = tuple(torch.randn(num_layers * dirs, batch, HIDDEN, dtype=dtype) for _ in range(2))
    plan = mpo.plan(steps * batch, batch, steps)
    assert plan["execution"] == path[0] and (path[1] is None or (plan["ih"], plan["hh"]) == path[1:])
    y_ref, (h_ref, c_ref) = ref(x, hx)
    y, (h, c) = mpo(x, hx)
    assert y.shape == y_ref.shape and h.shape == h_ref.shape and c.shape == c_ref.shape
    errors = (_rel(y, y_ref), _rel(h, h_ref), _rel(c, c_ref))
    assert max(errors) <= tol, errors


@pytest.mark.parametrize("path", PATHS, ids=PATH_IDS)
def test_gradients_match_nn_lstm(path):
    ref, mpo = _pair(torch.float64, 2, True)
    mpo.set_execution(*path)
    x = torch.randn(5, 3, INPUT, dtype=torch.float64, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    ref(x)[0].square().sum().backward()
    mpo(x2)[0].square().sum().backward()
    assert _rel(x2.grad, x.grad) < 1e-10
    # gradient w.r.t. each bias equals nn.LSTM's
    for name, p in ref.named_parameters():
        if name.startswith("bias_"):
            assert _rel(getattr(mpo, name).grad, p.grad) < 1e-10, name


def test_unbatched_input_and_no_bias():
    ref, mpo = _pair(torch.float64, 1, True, bias=False)
    x = torch.randn(6, INPUT, dtype=torch.float64)
    hx = tuple(torch.randn(2, HIDDEN, dtype=torch.float64) for _ in range(2))
    y_ref, (h_ref, _) = ref(x, hx)
    y, (h, _) = mpo(x, hx)
    assert y.shape == (6, 2 * HIDDEN) and _rel(y, y_ref) < 1e-10 and _rel(h, h_ref) < 1e-10
    assert not any(n.startswith("bias") for n, _ in mpo.named_parameters())


def test_dropout_between_layers_eval_matches():
    torch.manual_seed(1)
    ref = nn.LSTM(INPUT, HIDDEN, 2, dropout=0.5).double()
    mpo = MPOLSTM.from_lstm(ref)
    x = torch.randn(4, 2, INPUT, dtype=torch.float64)
    ref.eval(), mpo.eval()
    assert _rel(mpo(x)[0], ref(x)[0]) < 1e-10
    mpo.train()
    for path in PATHS:  # training mode runs (random masks differ, so only shapes are compared)
        assert mpo.set_execution(*path)(x)[0].shape == (4, 2, HIDDEN)


# ---------------------------------------------------------------------------
# gradcheck in float64 on both execution strategies
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS, ids=PATH_IDS)
def test_gradcheck(path):
    torch.manual_seed(0)
    mpo = MPOLSTM(6, 4, 1, bidirectional=True, modes=(2, 1, 2), input_modes=(3, 1, 2), bond_dim=2, dtype=torch.float64)
    mpo.set_execution(*path)
    names = [n for n, _ in mpo.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for p in mpo.parameters()]
    x = torch.randn(3, 2, 6, dtype=torch.float64, requires_grad=True)

    def fn(x, *ps):
        out, (h, c) = torch.func.functional_call(mpo, dict(zip(names, ps)), (x,))
        return out, h, c

    assert torch.autograd.gradcheck(fn, (x, *params), eps=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------
# truncation
# ---------------------------------------------------------------------------


def test_truncated_from_lstm_within_error_bound():
    torch.manual_seed(0)
    ref = nn.LSTM(64, 64, 2, bidirectional=True).double()
    mpo = MPOLSTM.from_lstm(ref, rate=10)
    for name, module in mpo.weight_modules():
        dense = getattr(ref, name)
        err = float((module.rebuild_weight() - dense).detach().norm())
        assert 0 < module.error_bound and err <= module.error_bound * (1 + 1e-9), (name, err, module.error_bound)
    assert 8 < mpo.compression_rate < 12
    approx = MPOLSTM.from_lstm(ref, rel_error=0.3)
    for name, module in approx.weight_modules():
        dense = getattr(ref, name)
        assert float((module.rebuild_weight() - dense).detach().norm()) <= 0.3 * float(dense.detach().norm()) * (1 + 1e-9)


def test_truncate_in_place_within_bound():
    torch.manual_seed(0)
    mpo = MPOLSTM(32, 32, 1, bond_dim=16, dtype=torch.float64)
    before = {name: m.rebuild_weight().detach().clone() for name, m in mpo.weight_modules()}
    bounds = mpo.truncate_(max_bond=6)
    for name, m in mpo.weight_modules():
        assert max(m.bond_dims) <= 6
        err = float((m.rebuild_weight().detach() - before[name]).norm())
        assert 0 < bounds[name] and err <= bounds[name] * (1 + 1e-9), (name, err, bounds[name])
    x = torch.randn(5, 2, 32, dtype=torch.float64)
    assert _rel(mpo(x)[0], mpo.to_lstm()(x)[0]) < 1e-10  # still consistent after the cores were replaced


# ---------------------------------------------------------------------------
# conversions and state_dict
# ---------------------------------------------------------------------------


def test_to_lstm_round_trip():
    torch.manual_seed(0)
    mpo = MPOLSTM(INPUT, HIDDEN, 2, bidirectional=True, rate=2, dtype=torch.float64)
    dense = mpo.to_lstm()
    assert isinstance(dense, nn.LSTM) and dense.weight_ih_l0.dtype == torch.float64
    x = torch.randn(5, 3, INPUT, dtype=torch.float64)
    assert _rel(mpo(x)[0], dense(x)[0]) < 1e-10
    again = MPOLSTM.from_lstm(dense)
    assert _rel(again(x)[0], dense(x)[0]) < 1e-10


def test_nn_lstm_compatibility_surface():
    import mpokit
    from mpokit.layers import MPOLSTM as from_layers

    assert mpokit.MPOLSTM is MPOLSTM and from_layers is MPOLSTM
    ref, mpo = _pair(torch.float64, 2, True)
    mpo.flatten_parameters()
    assert mpo.proj_size == 0
    for got, want in zip(mpo.all_weights, ref.all_weights):
        assert len(got) == len(want) == 4
        for g, w in zip(got, want):
            assert g.shape == w.shape and _rel(g, w) < 1e-12


def test_state_dict_round_trip():
    torch.manual_seed(0)
    a = MPOLSTM(INPUT, HIDDEN, 2, bidirectional=True, bond_dim=3)
    torch.manual_seed(1)
    b = MPOLSTM(INPUT, HIDDEN, 2, bidirectional=True, bond_dim=3)
    x = torch.randn(5, 2, INPUT)
    assert _rel(b(x)[0], a(x)[0]) > 1e-3
    b.load_state_dict(a.state_dict())
    assert torch.equal(b(x)[0], a(x)[0])
    # a truncated checkpoint loads into a full-bond module (cores are resized)
    full = MPOLSTM(INPUT, HIDDEN, 2, bidirectional=True)
    full.load_state_dict(a.state_dict())
    assert torch.equal(full(x)[0], a(x)[0])
    assert all(k.startswith(("weight_", "bias_")) for k in a.state_dict())


# ---------------------------------------------------------------------------
# packed sequences and lengths
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS, ids=PATH_IDS)
@pytest.mark.parametrize("batch_first", [False, True])
def test_packed_sequence_matches_nn_lstm(path, batch_first):
    ref, mpo = _pair(torch.float64, 2, True, batch_first=batch_first)
    mpo.set_execution(*path)
    lengths = torch.tensor([4, 7, 2, 7, 5])
    x = torch.randn((5, 7, INPUT) if batch_first else (7, 5, INPUT), dtype=torch.float64)
    hx = tuple(torch.randn(4, 5, HIDDEN, dtype=torch.float64) for _ in range(2))
    packed = pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=False)
    out_ref, (h_ref, c_ref) = ref(packed, hx)
    out, (h, c) = mpo(packed, hx)
    assert torch.equal(out.batch_sizes, out_ref.batch_sizes)
    assert torch.equal(out.sorted_indices, out_ref.sorted_indices)
    assert _rel(out.data, out_ref.data) < 1e-10 and _rel(h, h_ref) < 1e-10 and _rel(c, c_ref) < 1e-10
    # the lengths= convenience returns nn.LSTM's padded output on the packed input
    padded_ref, _ = pad_packed_sequence(out_ref, batch_first=batch_first, total_length=7)
    padded, (h2, _) = mpo(x, hx, lengths=lengths)
    assert _rel(padded, padded_ref) < 1e-10 and _rel(h2, h_ref) < 1e-10


@pytest.mark.parametrize("path", PATHS, ids=PATH_IDS)
def test_packed_gradients_match_nn_lstm(path):
    """Backward through the masked recurrence (variable lengths, both directions) equals nn.LSTM's."""
    ref, mpo = _pair(torch.float64, 2, True)
    mpo.set_execution(*path)
    lengths = torch.tensor([3, 6, 1, 6])
    x = torch.randn(6, 4, INPUT, dtype=torch.float64)
    grads = []
    for module in (ref, mpo):
        xi = x.clone().requires_grad_(True)
        h0 = torch.randn(4, 4, HIDDEN, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
        h0.requires_grad_(True)
        packed = pack_padded_sequence(xi, lengths, enforce_sorted=False)
        out, (h_n, c_n) = module(packed, (h0, torch.zeros_like(h0)))
        (out.data.square().sum() + h_n.sum() + 0.5 * c_n.square().sum()).backward()
        grads.append((xi.grad, h0.grad, module.bias_hh_l0_reverse.grad))
    for got, want in zip(grads[1], grads[0]):
        assert _rel(got, want) < 1e-10


@pytest.mark.parametrize("path", PATHS[1:], ids=PATH_IDS[1:])
def test_gradcheck_with_lengths(path):
    torch.manual_seed(0)
    mpo = MPOLSTM(6, 4, 1, bidirectional=True, modes=(2, 1, 2), input_modes=(3, 1, 2), bond_dim=2, dtype=torch.float64)
    mpo.set_execution(*path)
    names = [n for n, _ in mpo.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for p in mpo.parameters()]
    x = torch.randn(3, 3, 6, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([3, 1, 2])

    def fn(x, *ps):
        out, (h, c) = torch.func.functional_call(mpo, dict(zip(names, ps)), (x,), {"lengths": lengths})
        return out, h, c

    assert torch.autograd.gradcheck(fn, (x, *params), eps=1e-6, atol=1e-7, fast_mode=True)


def test_packed_sorted_input():
    ref, mpo = _pair(torch.float64, 1, True)
    x = torch.randn(6, 3, INPUT, dtype=torch.float64)
    packed = pack_padded_sequence(x, torch.tensor([6, 4, 1]))
    for path in PATHS:
        out, (h, _) = mpo.set_execution(*path)(packed)
        out_ref, (h_ref, _) = ref(packed)
        assert _rel(out.data, out_ref.data) < 1e-10 and _rel(h, h_ref) < 1e-10


# ---------------------------------------------------------------------------
# the cost model
# ---------------------------------------------------------------------------


def test_cost_model_prefers_fused_at_low_rates_and_contraction_when_small():
    low = MPOLSTM(256, 256, rate=10)
    assert low.plan(100 * 32, 32, 100)["execution"] == "fused"
    cost = lstm_cost(low, steps=100, batch=32)
    assert cost["ih_contract"] > cost["dense_ih"]  # bond 41: contraction costs more than the dense matmul
    assert cost["contract_flops_ih"] > cost["dense_flops_ih"]
    tiny = MPOLSTM(1024, 1024, bond_dim=2)
    cost = lstm_cost(tiny, steps=100, batch=32)
    assert cost["ih_contract"] < 0.5 * cost["dense_ih"] and cost["contract_flops_ih"] < 0.1 * cost["dense_flops_ih"]
    plan = tiny.plan(100 * 32, 32, 100)
    assert plan["execution"] == "stepwise" and plan["ih"] == "contract"


# ---------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------


def test_bad_input_errors():
    mpo = MPOLSTM(INPUT, HIDDEN, 2)
    with pytest.raises(ValueError, match="input_size=12"):
        mpo(torch.randn(5, 3, INPUT + 1))
    with pytest.raises(ValueError, match=r"h_0 has shape \(2, 4, 16\).*\(2, 3, 16\)"):
        mpo(torch.randn(5, 3, INPUT), (torch.zeros(2, 4, HIDDEN), torch.zeros(2, 3, HIDDEN)))
    with pytest.raises(ValueError, match="c_0"):
        mpo(torch.randn(5, 3, INPUT), (torch.zeros(2, 3, HIDDEN), torch.zeros(1, 3, HIDDEN)))
    with pytest.raises(ValueError, match="3-D"):
        mpo(torch.randn(5, 3, 2, INPUT))
    with pytest.raises(TypeError, match="dtype"):
        mpo(torch.randn(5, 3, INPUT, dtype=torch.float64))
    with pytest.raises(ValueError, match="not both"):
        MPOLSTM(INPUT, HIDDEN, rate=10, bond_dim=4)
    with pytest.raises(ValueError, match="multiply to"):
        MPOLSTM(INPUT, HIDDEN, modes=(2, 2, 2))
    with pytest.raises(ValueError, match="unreachable"):
        MPOLSTM(INPUT, HIDDEN, rate=1000)
    with pytest.raises(ValueError, match="execution"):
        MPOLSTM(INPUT, HIDDEN, execution="fast")
    with pytest.raises(TypeError, match="nn.LSTM"):
        MPOLSTM.from_lstm(nn.GRU(4, 4))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("path", PATHS, ids=PATH_IDS)
def test_half_precision_autocast_runs(path, dtype):
    torch.manual_seed(0)
    mpo = MPOLSTM(INPUT, HIDDEN, rate=2).set_execution(*path)
    x = torch.randn(5, 3, INPUT)
    want = mpo(x)[0].detach()
    with torch.autocast("cpu", dtype=dtype):
        got, (h, _) = mpo(x)
    got.float().sum().backward()
    got = got.detach().float()
    assert torch.isfinite(got).all() and float((got - want).abs().max()) < 0.05


@pytest.mark.parametrize("path", PATHS, ids=PATH_IDS)
def test_torch_compile_gives_the_same_output_and_gradients(path):
    torch.manual_seed(0)
    mpo = MPOLSTM(INPUT, HIDDEN, num_layers=2, rate=2).set_execution(*path)
    x = torch.randn(5, 3, INPUT)
    want, (h_want, c_want) = mpo(x)
    want.square().sum().backward()
    want_grads = [p.grad.clone() for p in mpo.parameters()]
    mpo.zero_grad()
    compiled = torch.compile(mpo, backend="inductor", fullgraph=False)
    got, (h, c) = compiled(x)
    got.square().sum().backward()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close((h, c), (h_want, c_want), rtol=1e-5, atol=1e-6)
    for g, w in zip([p.grad for p in mpo.parameters()], want_grads):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)
