"""MPOLinear against nn.Linear: equivalence, gradients, truncation bounds, caching, state, autocast, compile."""

import copy
import time

import pytest
import torch
from torch import nn
from torch.func import functional_call

from mpokit import MPOLinear
from mpokit.layers import MPOModule

PATHS = ("rebuild", "contract")


def _rel(a, b):
    return float(torch.linalg.vector_norm((a - b).detach()) / torch.linalg.vector_norm(b.detach()))


def _linear(in_f, out_f, dtype, bias=True, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(in_f, out_f, bias=bias, dtype=dtype)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("in_f, out_f", [(48, 40), (37, 50)])  # 37 and 50 need zero padding with 3 cores
def test_full_bond_layer_equals_linear(dtype, tol, path, in_f, out_f):
    lin = _linear(in_f, out_f, dtype)
    layer = MPOLinear.from_linear(lin, n_cores=3)
    layer.path = path
    x = torch.randn(4, 6, in_f, dtype=dtype)
    err = _rel(layer(x), lin(x))
    assert err <= tol, f"relative error {err:.3e} > {tol:.0e} on the {path} path"
    with torch.no_grad():  # the cached path too
        err = _rel(layer(x), lin(x))
    assert err <= tol, f"relative error {err:.3e} > {tol:.0e} on the cached {path} path"


def test_from_linear_takes_shape_bias_dtype_from_the_source_and_to_linear_round_trips():
    lin = _linear(24, 20, torch.float64, bias=False)
    layer = MPOLinear.from_linear(lin, n_cores=3)
    assert layer.bias is None and layer.cores[0].dtype == torch.float64
    assert (layer.in_features, layer.out_features) == (24, 20)
    back = layer.to_linear()
    assert back.bias is None and back.weight.dtype == torch.float64
    torch.testing.assert_close(back.weight, lin.weight, rtol=1e-10, atol=1e-12)
    with_bias = MPOLinear.from_linear(_linear(24, 20, torch.float32), n_cores=3).to_linear()
    assert with_bias.bias is not None and with_bias.weight.dtype == torch.float32


@pytest.mark.parametrize("path", PATHS)
def test_gradcheck_float64_input_and_cores(path):
    layer = MPOLinear.from_linear(_linear(12, 10, torch.float64), out_modes=(1, 2, 5), in_modes=(3, 2, 2))
    layer.path = path
    names = [f"cores.{k}" for k in range(layer.n_cores)] + ["bias"]
    params = [layer.get_parameter(n).detach().clone().requires_grad_(True) for n in names]
    x = torch.randn(3, 12, dtype=torch.float64, requires_grad=True)

    def fn(x, *ps):
        return functional_call(layer, dict(zip(names, ps)), (x,))

    assert torch.autograd.gradcheck(fn, (x, *params))


def test_truncated_layer_stays_within_its_error_bound():
    lin = _linear(64, 48, torch.float64)
    for kwargs in ({"max_bond": 4}, {"rel_error": 0.3}, {"max_params": 1500}):
        layer = MPOLinear.from_linear(lin, **kwargs)
        err = float(torch.linalg.matrix_norm(layer.to_linear().weight - lin.weight))
        assert layer.error_bound > 0
        assert err <= layer.error_bound * (1 + 1e-9), f"{kwargs}: ||W - W'|| = {err:.4e} > bound {layer.error_bound:.4e}"
    layer = MPOLinear.from_linear(lin)
    before = layer.to_linear().weight
    bound = layer.truncate_(max_bond=3)
    err = float(torch.linalg.matrix_norm(layer.to_linear().weight - before))
    assert max(layer.bond_dims) <= 3 and err <= bound * (1 + 1e-9), (err, bound)


def test_structure_central_and_auxiliary_cores():
    layer = MPOLinear(48, 40, n_cores=5, bond_dim=4)
    assert isinstance(layer, MPOModule) and len(layer.cores) == 5 and layer.central_index == 2
    assert layer.central_parameters()[0] is layer.cores[2]
    aux = layer.auxiliary_parameters()
    assert len(aux) == 4 and all(p is not layer.cores[2] for p in aux)
    assert layer.num_mpo_params == sum(p.numel() for p in layer.cores)
    assert layer.dense_params == 48 * 40
    text = repr(layer)
    assert "out_modes=" in text and "bond_dims=" in text and "compression=" in text


def test_truncate_replaces_parameters_and_keeps_frozen_centre():
    layer = MPOLinear.from_linear(_linear(48, 40, torch.float32))
    layer.central_parameters()[0].requires_grad_(False)
    old = [id(p) for p in layer.cores]
    layer.truncate_(max_bond=3)
    assert all(id(p) not in old for p in layer.cores)
    assert not layer.central_parameters()[0].requires_grad
    assert all(p.requires_grad for p in layer.auxiliary_parameters())


def _step(layer, x):
    layer.train()
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    layer(x).pow(2).sum().backward()
    opt.step()
    layer.eval()


@pytest.mark.parametrize("path", ["rebuild", "contract"])
def test_eval_cache_is_used_and_invalidated_by_optimizer_step(path):
    layer = MPOLinear.from_linear(_linear(48, 40, torch.float32), max_bond=4)
    layer.path = path
    layer.eval()
    x = torch.randn(5, 48)
    with torch.no_grad():
        y0 = layer(x)
        if path == "rebuild":
            assert layer.rebuild_weight() is layer.rebuild_weight()  # cached
    _step(layer, x)
    with torch.no_grad():
        y1 = layer(x)
    fresh = torch.nn.functional.linear(x, layer._rebuild_uncached(), layer.bias)
    assert _rel(y1, y0) > 1e-3, "the optimizer step should change the output"
    torch.testing.assert_close(y1, fresh, rtol=1e-5, atol=1e-6)


def test_eval_cache_invalidated_by_load_state_dict_and_truncate():
    a = MPOLinear.from_linear(_linear(48, 40, torch.float32, seed=0), max_bond=4).eval()
    b = MPOLinear.from_linear(_linear(48, 40, torch.float32, seed=1), max_bond=4).eval()
    x = torch.randn(5, 48)
    with torch.no_grad():
        ya, yb = a(x), b(x)
        a.load_state_dict(b.state_dict())  # same shapes: in-place copy_ into the same Parameters
        torch.testing.assert_close(a(x), yb)
        a.truncate_(max_bond=2)
        torch.testing.assert_close(a(x), torch.nn.functional.linear(x, a._rebuild_uncached(), a.bias))
    assert _rel(ya, yb) > 1e-2


def test_state_dict_round_trip_including_truncated_bonds():
    src = MPOLinear.from_linear(_linear(48, 40, torch.float32))
    src.truncate_(max_bond=5)
    dst = MPOLinear(48, 40)  # random init, full bonds
    dst.load_state_dict(src.state_dict())
    assert dst.bond_dims == src.bond_dims
    x = torch.randn(3, 48)
    torch.testing.assert_close(dst(x), src(x))
    clone = copy.deepcopy(src)
    torch.testing.assert_close(clone(x), src(x))
    for layer in (src, dst, clone):  # the fast core list follows every replacement of the Parameters, in order
        assert all(a is b for a, b in zip(layer.core_list(), layer.cores, strict=True))


@pytest.mark.parametrize("dtype, tol", [(torch.bfloat16, 3e-2), (torch.float16, 5e-3)])
@pytest.mark.parametrize("path", PATHS)
def test_half_precision_autocast_runs_and_is_close(path, dtype, tol):
    lin = _linear(48, 40, torch.float32)
    layer = MPOLinear.from_linear(lin, max_bond=64)
    layer.path = path
    x = torch.randn(6, 48)
    with torch.autocast("cpu", dtype=dtype):
        y = layer(x)
        y.float().sum().backward()
    assert y.dtype == dtype
    assert _rel(y.float(), lin(x)) < tol
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.cores)


def test_random_init_matches_linear_variance():
    in_f, out_f = 256, 192
    ratios = []
    for seed in range(8):
        torch.manual_seed(seed)
        w = MPOLinear(in_f, out_f, bond_dim=8).to_linear().weight
        ratios.append(float(w.pow(2).mean()) * 3 * in_f)  # nn.Linear: Var W = 1 / (3 in_features)
    mean_ratio = sum(ratios) / len(ratios)
    assert 0.6 < mean_ratio < 1.4, f"Var(W) / Var(nn.Linear W) = {mean_ratio:.3f}"
    layer = MPOLinear(in_f, out_f, bias=False)
    assert layer.bias is None


def test_auto_path_picks_contraction_at_small_bonds_and_rebuild_at_full_bonds():
    small = MPOLinear(768, 768, bond_dim=2)
    full = MPOLinear(768, 768)  # full bonds (12, 192, 192, 12): contraction would be ~100x dense
    with torch.no_grad():
        assert small.resolved_path((512, 768)) == "contract"
        assert full.resolved_path((512, 768)) == "rebuild"
    assert small.resolved_path((512, 768)) == "contract"
    assert full.resolved_path((512, 768)) == "rebuild"
    x = torch.randn(512, 768)
    small.path = "auto"
    y_auto = small(x)
    small.path = "rebuild"
    torch.testing.assert_close(y_auto, small(x), rtol=1e-4, atol=1e-5)


def test_torch_compile_gives_the_same_output():
    layer = MPOLinear.from_linear(_linear(24, 20, torch.float32), n_cores=3, max_bond=4)
    x = torch.randn(5, 24)
    start = time.time()
    for path in PATHS:
        layer.path = path
        compiled = torch.compile(layer, backend="inductor", fullgraph=False)
        torch.testing.assert_close(compiled(x), layer(x), rtol=1e-5, atol=1e-6)
    assert time.time() - start < 120


def test_bad_inputs_get_clear_errors():
    layer = MPOLinear(48, 40, bond_dim=4)
    with pytest.raises(ValueError, match=r"in_features=48.*\(5, 47\)"):
        layer(torch.randn(5, 47))
    with pytest.raises(ValueError, match="path must be one of"):
        layer.path = "fast"
    with pytest.raises(TypeError, match="nn.Linear"):
        MPOLinear.from_linear(nn.Conv1d(3, 3, 1))
    with pytest.raises(ValueError, match="in_modes"):
        MPOLinear(48, 40, out_modes=(5, 8), in_modes=(4, 4))
    with pytest.raises(ValueError, match="bond_dim"):
        MPOLinear(48, 40, bond_dim=0)


def test_recompute_rebuild_gives_the_same_gradients_and_keeps_only_w():
    """With ``recompute`` the rebuild's intermediates are recomputed in backward: same grads, only W is kept."""
    from mpokit import MPOLinear

    torch.manual_seed(0)
    dense = nn.Linear(96, 128)
    x = torch.randn(16, 96, requires_grad=True)  # as inside a network: dx needs W, so W itself is kept
    grads, saved = {}, {}
    for recompute in (False, True):
        layer = MPOLinear.from_linear(dense, n_cores=4)
        layer.path, layer.recompute = "rebuild", recompute
        kept = {}

        def pack(t):
            if not isinstance(t, nn.Parameter) and t.untyped_storage().data_ptr() != x.untyped_storage().data_ptr():
                kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            y = layer(x)
        y.square().sum().backward()
        grads[recompute], saved[recompute] = [p.grad for p in layer.cores] + [layer.bias.grad], sum(kept.values())
    for a, b in zip(grads[False], grads[True]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    assert saved[True] == 128 * 96 * 4, saved  # exactly W (float32), which the matmul's backward needs
    assert saved[False] > saved[True]


def test_training_forward_drops_the_stale_inference_cache():
    """Evaluation caches W; the next forward that needs a graph must not keep that (soon stale) copy alive."""
    layer = MPOLinear.from_linear(_linear(48, 40, torch.float32), max_bond=8)
    layer.path = "rebuild"
    x = torch.randn(4, 48)
    with torch.no_grad():
        layer(x)
    assert "weight" in layer._cache
    layer(x).sum().backward()
    assert layer._cache == {}
    with torch.no_grad():
        torch.testing.assert_close(layer(x), _dense_reference(layer, x))


def _dense_reference(layer, x):
    return torch.nn.functional.linear(x, layer._rebuild_uncached().detach(), layer.bias)
