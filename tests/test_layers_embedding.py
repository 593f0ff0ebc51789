"""MPOEmbedding against nn.Embedding: equivalence, padding, row lookup, gradients, caching, state."""

import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode

from mpokit import MPOEmbedding
from mpokit.layers.embedding import best_split, lookup_rows, rows_cost

PATHS = ("rebuild", "rows")


def _rel(a, b):
    return float(torch.linalg.vector_norm((a - b).detach()) / torch.linalg.vector_norm(b.detach()))


def _embedding(num, dim, dtype=torch.float32, padding_idx=None, seed=0):
    torch.manual_seed(seed)
    return nn.Embedding(num, dim, padding_idx=padding_idx, dtype=dtype)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
@pytest.mark.parametrize("path", PATHS)
def test_full_bond_embedding_equals_nn_embedding(dtype, tol, path):
    emb = _embedding(1009, 24, dtype)  # 1009 is prime: the vocabulary is zero-padded
    layer = MPOEmbedding.from_embedding(emb, n_cores=3)
    assert layer.padded_shape[0] > 1009
    layer.path = path
    ids = torch.randint(0, 1009, (4, 9))
    ids[0, 0] = 1008
    err = _rel(layer(ids), emb(ids))
    assert err <= tol, f"relative error {err:.3e} > {tol:.0e} on the {path} path"


def test_bert_vocabulary_30522_is_padded_and_rows_match():
    emb = _embedding(30522, 8)
    layer = MPOEmbedding.from_embedding(emb)
    assert layer.padded_shape[0] >= 30522 and layer.num_embeddings == 30522
    ids = torch.tensor([[0, 101, 30521, 2023, 30521]])
    for path in PATHS:
        layer.path = path
        assert _rel(layer(ids), emb(ids)) < 1e-5
    back = layer.to_embedding()
    assert back.weight.shape == (30522, 8)


def test_rows_lookup_matches_table_for_every_split_and_counts_flops():
    emb = _embedding(240, 12, torch.float64)
    layer = MPOEmbedding.from_embedding(emb, out_modes=(4, 5, 3, 4), in_modes=(2, 2, 3, 1), max_bond=5)
    table = layer.to_embedding().weight
    rows = torch.tensor([0, 7, 239, 100, 7])
    cores = list(layer.cores)
    for split in range(1, 4):
        torch.testing.assert_close(lookup_rows(cores, rows, split), table[rows], rtol=1e-12, atol=1e-12)
        counter = FlopCounterMode(display=False)
        with counter:
            lookup_rows(cores, rows, split)
        assert counter.get_total_flops() == rows_cost(layer.out_modes, layer.in_modes, layer.bond_dims, 5, split)[0]


def test_padding_idx_rows_are_zero_and_send_no_gradient():
    emb = _embedding(100, 16, padding_idx=1)
    layer = MPOEmbedding.from_embedding(emb, n_cores=3)
    assert layer.padding_idx == 1
    ids = torch.tensor([[1, 5, 1, 7]])
    for path in PATHS:
        layer.path = path
        out = layer(ids)
        assert torch.equal(out[0, 0], torch.zeros(16)) and torch.equal(out[0, 2], torch.zeros(16))
        torch.testing.assert_close(out, emb(ids), rtol=1e-5, atol=1e-6)
        layer.zero_grad()
        layer(torch.tensor([1, 1])).sum().backward()
        assert all(p.grad is None or torch.count_nonzero(p.grad) == 0 for p in layer.cores)
    back = layer.to_embedding()
    assert back.padding_idx == 1 and torch.count_nonzero(back.weight[1]) == 0


@pytest.mark.parametrize("path", PATHS)
def test_gradcheck_float64(path):
    layer = MPOEmbedding.from_embedding(_embedding(30, 6, torch.float64), out_modes=(2, 3, 5), in_modes=(1, 2, 3))
    layer.path = path
    names = [f"cores.{k}" for k in range(layer.n_cores)]
    params = [layer.get_parameter(n).detach().clone().requires_grad_(True) for n in names]
    ids = torch.tensor([[0, 4, 29], [4, 11, 17]])

    def fn(*ps):
        return functional_call(layer, dict(zip(names, ps)), (ids,))

    assert torch.autograd.gradcheck(fn, tuple(params))


def test_truncated_embedding_stays_within_its_error_bound():
    emb = _embedding(500, 32, torch.float64)
    layer = MPOEmbedding.from_embedding(emb, max_bond=6)
    err = float(torch.linalg.matrix_norm(layer.to_embedding().weight - emb.weight))
    assert 0 < err <= layer.error_bound * (1 + 1e-9), (err, layer.error_bound)


def test_eval_cache_invalidated_by_optimizer_step_and_load_state_dict():
    layer = MPOEmbedding.from_embedding(_embedding(200, 16), max_bond=4).eval()
    other = MPOEmbedding.from_embedding(_embedding(200, 16, seed=1), max_bond=4).eval()
    ids = torch.tensor([3, 17, 150])
    with torch.no_grad():
        y0 = layer(ids)
        assert layer.rebuild_weight() is layer.rebuild_weight()  # the table is cached
    layer.train()
    opt = torch.optim.SGD(layer.parameters(), lr=0.5)
    layer(ids).pow(2).sum().backward()
    opt.step()
    layer.eval()
    with torch.no_grad():
        y1 = layer(ids)
        assert _rel(y1, y0) > 1e-3
        torch.testing.assert_close(y1, layer._rebuild_uncached()[ids])
        layer.load_state_dict(other.state_dict())
        torch.testing.assert_close(layer(ids), other(ids))


def test_state_dict_round_trip():
    src = MPOEmbedding.from_embedding(_embedding(200, 16, padding_idx=0), max_bond=4)
    dst = MPOEmbedding(200, 16, padding_idx=0)  # random init, full bonds
    dst.load_state_dict(src.state_dict())
    ids = torch.tensor([[0, 3, 199]])
    torch.testing.assert_close(dst(ids), src(ids))


def test_random_init_has_unit_variance_like_nn_embedding():
    values = [float(MPOEmbedding(300, 32, bond_dim=8).to_embedding().weight.pow(2).mean()) for _ in range(8)]
    assert 0.6 < sum(values) / len(values) < 1.4


def test_auto_uses_rows_for_few_ids_and_the_cached_table_without_grad():
    layer = MPOEmbedding(30522, 64, bond_dim=8)
    assert layer.resolved_path(512, grad_needed=True) == "rows"
    assert layer.resolved_path(512, grad_needed=False) == "rebuild"


def test_bad_inputs_get_clear_errors():
    layer = MPOEmbedding(100, 8, bond_dim=2)
    with pytest.raises(TypeError, match="integer tensor"):
        layer(torch.randn(3))
    with pytest.raises(ValueError, match=r"\[0, 100\)"):
        layer(torch.tensor([5, 100]))
    with pytest.raises(ValueError, match="padding_idx"):
        MPOEmbedding(100, 8, padding_idx=100)
    with pytest.raises(ValueError, match="max_norm"):
        MPOEmbedding.from_embedding(nn.Embedding(10, 4, max_norm=1.0))
    with pytest.raises(ValueError, match="path must be one of"):
        layer.path = "table"


def _saved_bytes(fn):
    """Bytes autograd saves for backward while running ``fn()`` (parameters excluded); returns (output, bytes)."""
    seen = {}

    def pack(t):
        if not isinstance(t, nn.Parameter):
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(seen.values())


@pytest.mark.parametrize("chunk", [1, 7, 1 << 22])
def test_row_products_gradcheck_for_any_chunk_size(chunk, monkeypatch):
    """The chunked gather-product (forward and its hand-written backward) is exact for every chunking."""
    import mpokit.layers.embedding as E

    monkeypatch.setattr(E, "GATHER_CHUNK_ELEMENTS", chunk)
    torch.manual_seed(0)
    left = torch.randn(4, 3, 5, dtype=torch.float64, requires_grad=True)
    right = torch.randn(6, 5, 2, dtype=torch.float64, requires_grad=True)
    prefix, suffix = torch.tensor([0, 3, 3, 1, 0]), torch.tensor([5, 0, 2, 2, 5])  # repeats: index_add accumulates
    out = E._RowProducts.apply(left, right, prefix, suffix)
    torch.testing.assert_close(out, torch.bmm(left[prefix], right[suffix]), rtol=0, atol=1e-12)
    assert torch.autograd.gradcheck(lambda a, b: E._RowProducts.apply(a, b, prefix, suffix), (left, right))


def test_rows_path_saves_no_per_row_copies_of_the_halves():
    """Training memory of the row lookup: autograd keeps the two half tables (fixed size) and index vectors,
    not a gathered copy of the halves per row (which would add N (J_L d + d J_R) elements)."""
    layer = MPOEmbedding.from_embedding(_embedding(30618, 48), n_cores=5)
    layer.path = "rows"
    gen = torch.Generator().manual_seed(0)
    perm = torch.randperm(30618, generator=gen)
    sizes = (1000, 3000)  # both join the halves at the same bond, so the half tables are the same
    assert len({best_split(layer.out_modes, layer.in_modes, layer.bond_dims, n) for n in sizes}) == 1
    saved = {n: _saved_bytes(lambda: layer(perm[:n]))[1] for n in sizes}
    growth = saved[3000] - saved[1000]
    assert growth <= 2000 * 8 * 4, saved  # at most a few int64 index vectors per extra row


@pytest.mark.parametrize("path", PATHS)
def test_recompute_gives_the_same_gradients_and_saves_less(path):
    """MPOModule.recompute: identical output and core gradients, fewer bytes kept for backward."""
    grads, saved = {}, {}
    for recompute in (False, True):
        layer = MPOEmbedding.from_embedding(_embedding(5000, 64), n_cores=5)
        layer.path, layer.recompute = path, recompute
        ids = torch.randint(0, 5000, (3000,), generator=torch.Generator().manual_seed(1))
        out, saved[recompute] = _saved_bytes(lambda: layer(ids))
        out.square().sum().backward()
        grads[recompute] = [p.grad for p in layer.cores]
    for a, b in zip(grads[False], grads[True]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    assert saved[True] < 0.5 * saved[False], saved


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("path", PATHS)
def test_half_precision_autocast_runs(path, dtype):
    emb = _embedding(300, 24)
    layer = MPOEmbedding.from_embedding(emb, n_cores=3)
    layer.path = path
    ids = torch.tensor([[0, 7, 299], [7, 8, 9]])
    with torch.autocast("cpu", dtype=dtype):
        out = layer(ids)
    out.float().sum().backward()
    assert torch.isfinite(out.float()).all() and _rel(out.float(), emb(ids)) < 2e-2
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.cores)


@pytest.mark.parametrize("path", PATHS)
def test_torch_compile_gives_the_same_output(path):
    layer = MPOEmbedding.from_embedding(_embedding(300, 24), n_cores=3, max_bond=6)
    layer.path = path
    ids = torch.tensor([[0, 7, 299], [7, 8, 9]])
    compiled = torch.compile(layer, backend="inductor", fullgraph=False)
    torch.testing.assert_close(compiled(ids), layer(ids), rtol=1e-5, atol=1e-6)
