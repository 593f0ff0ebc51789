"""Inference memory policies (mpokit.inference): every policy computes what "cache" computes, holds what it says,
and a decode step never rebuilds a matrix. CPU always; the CUDA variants run where a GPU is (see test_devices.py)."""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mpokit
from mpokit import MPOConfig, contract, inference_plan, set_inference_mode
from mpokit.config import MPOLayerConfig
from mpokit.inference import POLICIES, inference_layers, parse_memory
from mpokit.layers import MPOEmbedding, MPOLinear, MPOModule
from mpokit.layers.base import Workspace
from mpokit.surgery import MPOTiedLinear

from _extra_models import CustomForwardNet, LSTMLanguageModel
from _plm_models import tiny_inputs, tiny_model

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
TOL = 1e-5
MODES = ("cache", "stream", "contract")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def _half(**kw) -> MPOConfig:
    lc = MPOLayerConfig(param_ratio=0.5, **kw)
    return MPOConfig(embedding=lc, attention=lc, ffn=lc, other=lc)


def _tiny_llama(seed: int = 3):
    import transformers

    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=98, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.3,
                                      tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return transformers.LlamaForCausalLM(config).eval()


_LLAMA = []


def _compressed_llama():
    """A fresh copy of one compressed tiny Llama (tied embeddings, compressed too; padded vocabulary)."""
    if not _LLAMA:
        model = mpokit.compress(_tiny_llama(), _half())
        assert isinstance(model.lm_head, MPOTiedLinear) and isinstance(model.model.embed_tokens, MPOEmbedding)
        assert model.model.embed_tokens.padded_shape[0] > 98
        _LLAMA.append(model)
    model = copy.deepcopy(_LLAMA[0])
    assert model.lm_head.embedding is model.model.embed_tokens
    return model


def _run(model, inputs):
    with torch.no_grad():
        out = model(**inputs) if isinstance(inputs, dict) else model(inputs)
    return out.logits if hasattr(out, "logits") else out


def _models():
    """(name, compressed model, inputs) covering every MPO module type."""
    bert = mpokit.compress(tiny_model("bert"), _half())
    llama = _compressed_llama()
    lstm = mpokit.compress(LSTMLanguageModel().eval(), MPOConfig(other=MPOLayerConfig(param_ratio=0.5)))
    custom = CustomForwardNet().eval()
    mpokit.compress(custom, MPOConfig(target_modules=["emb", "proj"], embedding=MPOLayerConfig(param_ratio=0.5),
                                      other=MPOLayerConfig(param_ratio=0.5)))
    ids = torch.randint(1, 40, (3, 7), generator=torch.Generator().manual_seed(1))
    return {"bert": (bert, tiny_inputs()), "llama": (llama, tiny_inputs(length=11)),
            "lstm": (lstm, torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(2))),
            "custom_forward": (custom, ids)}


MODELS = None


def _model(name):
    global MODELS
    if MODELS is None:
        MODELS = _models()
    model, inputs = MODELS[name]
    return model, inputs


# ---------------------------------------------------------------------------
# same function under every policy
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["bert", "llama", "lstm", "custom_forward"])
def test_every_policy_gives_the_outputs_of_cache(name):
    model, inputs = _model(name)
    set_inference_mode(model, "cache")
    want = _run(model, inputs)
    for policy in ("stream", "contract", "auto"):
        plan = set_inference_mode(model, policy)
        got = _run(model, inputs)
        assert _rel(got, want) <= TOL, (name, policy, _rel(got, want))
        assert set(plan.modes.values()) <= set(MODES)
    set_inference_mode(model, "cache")


def _linear(out_f, in_f, *, seed=0, **mpo):
    g = torch.Generator().manual_seed(seed)
    dense = nn.Linear(in_f, out_f)
    with torch.no_grad():
        dense.weight.copy_(torch.randn(out_f, in_f, generator=g) / math.sqrt(in_f))
    return MPOLinear.from_linear(dense, **mpo).eval()


LAYOUTS = {
    "five_cores": dict(out_f=64, in_f=48, n_cores=5, max_bond=6),
    "low_rank_2core": dict(out_f=40, in_f=56, out_modes=(40, 1), in_modes=(1, 56), max_bond=5),
    "padded": dict(out_f=37, in_f=29, out_modes=(2, 4, 5), in_modes=(2, 3, 5), max_bond=4, pad=True),
    "one_core": dict(out_f=12, in_f=10, n_cores=1),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("tokens", [1, 3, 700])
def test_linear_layouts_match_cache_under_every_mode(layout, tokens, device):
    spec = dict(LAYOUTS[layout])
    layer = _linear(spec.pop("out_f"), spec.pop("in_f"), **spec).to(device)
    x = torch.randn(tokens, layer.in_features, generator=torch.Generator().manual_seed(4)).to(device)
    with torch.no_grad():
        want = F.linear(x, layer._rebuild_uncached(), layer.bias)
        for mode in MODES:
            set_inference_mode(layer, mode)
            assert _rel(layer(x), want) <= TOL, (layout, mode, tokens)
            assert layer.held_bytes() == 0 or mode == "cache"


def test_stream_contracts_a_decode_step_and_rebuilds_a_large_batch():
    layer = _linear(64, 48, n_cores=5, max_bond=6)
    set_inference_mode(layer, "stream")
    assert layer.plan(1, False).path == "contract"
    assert layer.plan(8192, False).path == "rebuild"
    assert layer.plan(8192, False, "contract").path == "contract"
    low_rank = _linear(40, 56, out_modes=(40, 1), in_modes=(1, 56), max_bond=5)
    plan = low_rank.plan(4096, False, "contract")
    assert plan.groups == ((0, 1), (1, 2))  # x V^T, then U: the low-rank product, never W
    assert plan.flops < contract.dense_flops(40, 56, 4096)


@pytest.mark.parametrize("device", DEVICES)
def test_embedding_gathers_rows_under_stream_and_contract(device):
    torch.manual_seed(0)
    dense = nn.Embedding(98, 24, padding_idx=0)
    emb = MPOEmbedding.from_embedding(dense, n_cores=3, max_bond=5).eval().to(device)
    assert emb.padded_shape[0] > 98  # padded vocabulary
    ids = torch.randint(0, 98, (4, 13), generator=torch.Generator().manual_seed(5)).to(device)
    ids[0, :2] = 0
    with torch.no_grad():
        want = F.embedding(ids, emb._rebuild_uncached())
        want[ids == 0] = 0.0
        for mode in MODES:
            set_inference_mode(emb, mode)
            got = emb(ids)
            assert _rel(got, want) <= TOL and torch.all(got[ids == 0] == 0)
            assert (emb.held_bytes() == 0) == (mode != "cache")


@pytest.mark.parametrize("chunk", [1, 300, 1 << 20])
def test_blocked_row_lookup_is_exact_in_float64(chunk, monkeypatch):
    import mpokit.layers.embedding as E

    monkeypatch.setattr(E, "INFERENCE_GATHER_CHUNK_ELEMENTS", chunk)
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6 * 5 * 4 * 3, 2 * 3 * 2 * 2, generator=g, dtype=torch.float64)
    cores = list(mpokit.MPO.from_matrix(w, out_modes=(6, 5, 4, 3), in_modes=(2, 3, 2, 2)).cores)
    rows = torch.tensor([359, 0, 17, 17, 200, 3, 120])  # unsorted, repeated
    with torch.no_grad():
        for split in (1, 2, 3):
            torch.testing.assert_close(E.lookup_rows(cores, rows, split), w[rows], rtol=0, atol=1e-12)


def test_rebuild_into_and_blocked_joins_are_exact_in_float64():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(4 * 3 * 5, 2 * 3 * 2, generator=g, dtype=torch.float64)
    cores = list(mpokit.MPO.from_matrix(w, out_modes=(4, 3, 5), in_modes=(2, 3, 2)).cores)
    out = torch.empty(w.numel(), dtype=torch.float64)
    torch.testing.assert_close(contract.rebuild_into(cores, out), w, rtol=0, atol=1e-12)
    left, right = contract.merge_halves(cores, 1)  # (4, 2, b), (b, 15, 6)
    block = contract.join_halves_into(left, right, torch.empty(2 * 15 * 12, dtype=torch.float64), 1, 3)
    torch.testing.assert_close(block, w[15:45], rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="contiguous tensor of 720 elements"):
        contract.rebuild_into(cores, torch.empty(10, dtype=torch.float64))


@pytest.mark.parametrize("capacity", [0, 1, 200, 10**6])
def test_tied_head_blocks_match_the_dense_head(capacity):
    model = _compressed_llama()
    head = model.lm_head
    set_inference_mode(model, "stream")
    if capacity:
        head.workspace = Workspace(capacity)
    else:
        head.workspace = None  # a fresh buffer per block
    x = torch.randn(5, head.in_features, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        E = head.embedding._rebuild_uncached()
        got = head._blocks(F.pad(x, (0, head.embedding.padded_shape[1] - head.in_features)))
    assert _rel(got, x @ E.T) <= TOL


# ---------------------------------------------------------------------------
# generation
# ---------------------------------------------------------------------------


def _count_rebuilds(monkeypatch) -> dict:
    """Count every formation of a whole matrix: full rebuilds, rebuilds into the workspace, head blocks."""
    counts = {"n": 0}
    for name in ("rebuild", "rebuild_into", "join_halves_into"):
        original = getattr(contract, name)

        def counted(*args, _original=original, **kwargs):
            counts["n"] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(contract, name, counted)
    merge = contract.merge_cores

    def counted_merge(cores, _merge=merge):
        out = _merge(cores)
        if len(cores) > 1 and out.shape[0] == 1 and out.shape[3] == 1:  # every core of a matrix merged: W itself
            counts["n"] += 1
        return out

    monkeypatch.setattr(contract, "merge_cores", counted_merge)
    return counts


def test_greedy_generation_is_the_same_under_every_policy_and_decode_steps_never_rebuild(monkeypatch):
    model = _compressed_llama()
    prompt = torch.tensor([[1, 17, 45, 8, 60], [1, 33, 5, 71, 12]])
    settings = dict(max_new_tokens=10, min_new_tokens=10, do_sample=False, attention_mask=torch.ones_like(prompt))
    counts = _count_rebuilds(monkeypatch)
    steps = {"decode": 0, "decode_rebuilds": 0}

    def before(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        module._decoding = ids is not None and ids.shape[1] == 1
        module._count = counts["n"]

    def after(module, args, kwargs, output):
        if module._decoding:
            steps["decode"] += 1
            steps["decode_rebuilds"] += counts["n"] - module._count

    model.register_forward_pre_hook(before, with_kwargs=True)
    model.register_forward_hook(after, with_kwargs=True)
    set_inference_mode(model, "cache")
    with torch.no_grad():
        want = model.generate(prompt, **settings)
    assert want.shape == (2, 15) and len(set(want[0, 5:].tolist())) > 1
    assert counts["n"] > 0  # the counter sees the cache's rebuilds
    for policy in ("stream", "contract", "auto"):
        set_inference_mode(model, policy)
        steps.update(decode=0, decode_rebuilds=0)
        with torch.no_grad():
            got = model.generate(prompt, **settings)
        assert torch.equal(got, want), policy
        assert steps["decode"] == 9 and steps["decode_rebuilds"] == 0, (policy, steps)
    set_inference_mode(model, "auto", max_memory=10**9)  # room to cache: caches are made once, at prefill
    with torch.no_grad():
        assert torch.equal(model.generate(prompt, **settings), want)


def test_a_low_rank_checkpoint_generates_without_ever_forming_a_matrix(monkeypatch):
    """Low-rank layout (method "svd": 2 cores per matrix): under "contract", prefill and decode run two thin
    products per projection; no whole matrix is formed and no layer holds anything, with the tokens of
    "cache". "auto" contracts the FFN matrices (fewer FLOPs than dense at any token count) and gives the same tokens."""
    half = MPOLayerConfig(param_ratio=0.5)
    model = mpokit.compress(_tiny_llama(), MPOConfig(embedding=half, attention=half, ffn=half, method="svd"))
    linears = [m for m in model.modules() if isinstance(m, MPOLinear)]
    assert linears and all(m.n_cores == 2 for m in linears)
    prompt = torch.tensor([[1, 17, 45, 8, 60]])
    settings = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False)
    set_inference_mode(model, "cache")
    with torch.no_grad():
        want = model.generate(prompt, **settings)
    set_inference_mode(model, "contract")
    counts = _count_rebuilds(monkeypatch)
    with torch.no_grad():
        got = model.generate(prompt, **settings)
    assert torch.equal(got, want)
    assert counts["n"] == 0
    assert sum(m.held_bytes() for m in model.modules() if isinstance(m, MPOModule)) == 0
    plan = set_inference_mode(model, "auto")
    assert all(row.mode == "contract" for row in plan.layers if ".mlp." in row.name), print(plan)
    with torch.no_grad():
        assert torch.equal(model.generate(prompt, **settings), want)


# ---------------------------------------------------------------------------
# what is held
# ---------------------------------------------------------------------------


def test_stream_workspace_is_one_buffer_reused_across_layers_and_calls_and_reallocated_on_dtype_change():
    model = mpokit.compress(tiny_model("bert"), _half())
    plan = set_inference_mode(model, "stream")
    layers = [m for _, m in inference_layers(model) if isinstance(m, MPOLinear)]
    workspace = layers[0].workspace
    assert isinstance(workspace, Workspace) and all(m.workspace is workspace for m in layers)
    biggest = max(math.prod(m.padded_shape) for m in layers)
    assert workspace.elements == biggest and workspace.buffer is None  # allocated on first use
    for m in layers:  # large enough calls rebuild
        m.path = "rebuild"
    inputs = tiny_inputs()
    first = _run(model, inputs)
    pointer = workspace.buffer.data_ptr()
    second = _run(model, inputs)
    assert workspace.allocations == 1 and workspace.buffer.data_ptr() == pointer
    assert workspace.buffer.numel() == biggest and plan.workspace_bytes == biggest * 4
    assert torch.equal(first, second)
    model.double()
    third = _run(model, {k: v for k, v in inputs.items()})
    assert workspace.allocations == 2 and workspace.buffer.dtype == torch.float64
    assert _rel(third, first) <= TOL


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_stream_workspace_moves_to_the_device_with_the_model():
    model = _compressed_llama()
    set_inference_mode(model, "cache")
    inputs = tiny_inputs(length=11)
    want = _run(model, inputs)
    plan = set_inference_mode(model, "stream")
    for _, m in inference_layers(model):
        if isinstance(m, MPOLinear):
            m.path = "rebuild"
    _run(model, inputs)
    assert plan.workspace.buffer.device.type == "cpu" and plan.workspace.allocations == 1
    model.cuda()
    assert plan.workspace.buffer is None  # released by .cuda()
    got = _run(model, {k: v.cuda() for k, v in inputs.items()})
    assert plan.workspace.buffer.device.type == "cuda" and plan.workspace.allocations == 2
    assert _rel(got.cpu(), want) <= TOL
    for policy in ("contract", "auto"):
        set_inference_mode(model, policy)
        assert _rel(_run(model, {k: v.cuda() for k, v in inputs.items()}).cpu(), want) <= TOL


@pytest.mark.parametrize("policy", ["stream", "contract"])
def test_no_dense_cache_is_held_under_stream_or_contract(policy):
    model = _compressed_llama()
    inputs = tiny_inputs(length=11)
    set_inference_mode(model, "cache")
    _run(model, inputs)
    cached = inference_plan(model)
    assert sum(r.cached_now_bytes for r in cached.layers) > 0
    set_inference_mode(model, policy)
    _run(model, inputs)
    with torch.no_grad():
        model.generate(inputs["input_ids"][:1, :4], max_new_tokens=3, do_sample=False)
    assert all(m._cache == {} for _, m in inference_layers(model) if isinstance(m, MPOModule))
    now = inference_plan(model)
    assert all(r.cached_now_bytes == 0 and r.cache_bytes == 0 for r in now.layers)
    assert now.total_bytes < cached.total_bytes


PROBE = textwrap.dedent("""
    import json, torch, mpokit
    from mpokit.layers import MPOLinear
    torch.manual_seed(0)
    torch.set_num_threads(1)
    def rss(key):
        return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key))
    # 8 layers of 1024 x 1024 (4 MiB each when dense) with bond 8: the cores are ~100 KiB in all
    model = torch.nn.Sequential(*[MPOLinear(1024, 1024, bias=False, bond_dim=8) for _ in range(9)]).eval()
    for m in model:
        m.path = "rebuild"  # forming W on every call: the case a policy must not keep
    x = torch.randn(16, 1024)
    warm = model[8]  # first calls allocate the BLAS's own buffers
    mpokit.set_inference_mode(warm, "stream")
    with torch.no_grad():
        warm(x)
    model = model[:8]
    del warm
    out = {}
    for policy in ("stream", "cache"):
        mpokit.set_inference_mode(model, policy)
        before = rss("VmRSS")
        open("/proc/self/clear_refs", "w").write("5")  # reset the peak to the current RSS
        with torch.no_grad():
            for _ in range(3):
                y = model(x)
        out[policy] = {"peak": rss("VmHWM") - before, "after": rss("VmRSS") - before}
    print(json.dumps(out))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_memory_probe_stream_holds_one_matrix_where_cache_holds_every_one():
    # a fixed mmap threshold: glibc then returns every freed block above 64 KiB, so RSS is the live memory
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    matrix = 1024 * 1024 * 4
    assert out["stream"]["after"] <= 2 * matrix and out["stream"]["peak"] <= 3 * matrix, out  # one W, transients
    assert out["cache"]["after"] >= 6 * matrix, out  # eight matrices kept, less the workspace stream let go (generous)


# ---------------------------------------------------------------------------
# auto and the budget
# ---------------------------------------------------------------------------


def test_auto_fits_the_budget_and_gets_faster_as_it_grows():
    model = _compressed_llama()
    stream = set_inference_mode(model, "stream")
    cache = set_inference_mode(model, "cache")
    default = set_inference_mode(model, "auto")
    assert default.total_bytes <= stream.total_bytes and default.max_memory == stream.total_bytes
    minimum = default.model_bytes
    costs, previous = [], None
    for budget in (minimum, (minimum + cache.total_bytes) // 2, cache.total_bytes, 10 * cache.total_bytes):
        plan = set_inference_mode(model, "auto", max_memory=budget)
        assert plan.total_bytes <= budget and plan.max_memory == budget
        costs.append(plan.estimated_cost)
        previous = plan
    assert costs == sorted(costs, reverse=True) and costs[0] > costs[-1]
    at_minimum = set_inference_mode(model, "auto", max_memory=minimum)
    assert at_minimum.cache_bytes == 0 and at_minimum.workspace_bytes == 0
    assert "cache" in previous.modes.values()  # unlimited: caching where it is fastest
    assert previous.estimated_cost <= cache.estimated_cost


def test_auto_budget_strings_and_a_mapping_of_patterns():
    model = _compressed_llama()
    plan = set_inference_mode(model, {"lm_head": "contract", "model.embed_tokens": "stream", "*": "cache"})
    assert plan.modes["lm_head"] == "contract" and plan.modes["model.embed_tokens"] == "stream"
    assert plan.modes["model.layers.0.mlp.down_proj"] == "cache"
    assert model.lm_head.inference_mode == "contract"
    plan = set_inference_mode(model, {"*mlp*": "stream"})  # unmatched: cache
    assert plan.modes["model.layers.1.mlp.up_proj"] == "stream" and plan.modes["lm_head"] == "cache"
    assert parse_memory("300MB") == 300 * 10**6 and parse_memory("1.5GiB") == int(1.5 * 2**30)
    assert parse_memory(" 12 kib ") == 12 * 1024 and parse_memory(4096) == 4096
    assert set_inference_mode(model, "auto", max_memory="1GB").max_memory == 10**9


def test_bad_input_gets_clear_errors():
    model = _compressed_llama()
    with pytest.raises(ValueError, match=r"policy must be one of \('cache', 'stream', 'contract', 'auto'\), got 'fast'"):
        set_inference_mode(model, "fast")
    minimum = set_inference_mode(model, "contract").model_bytes
    with pytest.raises(ValueError, match=rf"below the minimum of {minimum:,} bytes.*cores included.*e\.g\. max_memory="):
        set_inference_mode(model, "auto", max_memory=minimum - 1)
    with pytest.raises(ValueError, match=r"holds .* bytes .*above max_memory.*policy='auto'"):
        set_inference_mode(model, "cache", max_memory=minimum)
    with pytest.raises(ValueError, match=r"'12XB' is not a size.*'1.5GiB'"):
        set_inference_mode(model, "auto", max_memory="12XB")
    with pytest.raises(TypeError, match="max_memory must be an int"):
        set_inference_mode(model, "auto", max_memory=1.5)
    with pytest.raises(ValueError, match=r"patterns \['nothing\*'\] match no MPO module"):
        set_inference_mode(model, {"nothing*": "stream"})
    with pytest.raises(ValueError, match="has no MPO module.*compress it first"):
        set_inference_mode(nn.Linear(3, 3), "stream")
    with pytest.raises(ValueError, match="inference_mode of MPOWeight must be one of"):
        custom, _ = _model("custom_forward")
        next(m for _, m in inference_layers(custom) if type(m).__name__ == "MPOWeight").inference_mode = "contract"
    assert model.lm_head.inference_mode == "contract"  # the failed calls changed nothing


def test_training_is_unchanged_under_every_policy():
    model = _compressed_llama()
    inputs = tiny_inputs(length=11)
    grads = {}
    for policy in ("cache", "contract"):  # with grad every mode runs the same code: the two ends suffice
        set_inference_mode(model, policy)
        model.zero_grad()
        model(**inputs).logits.square().mean().backward()
        grads[policy] = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    assert len(grads["contract"]) == len(grads["cache"]) > 0
    assert all(_rel(g, w) <= TOL for g, w in zip(grads["contract"], grads["cache"]))
    assert all(m._cache == {} for _, m in inference_layers(model) if isinstance(m, MPOModule))  # nothing kept


# ---------------------------------------------------------------------------
# reporting
# ---------------------------------------------------------------------------


def test_the_plan_table_and_print_model_show_each_module_mode():
    model = _compressed_llama()
    plan = set_inference_mode(model, {"lm_head": "contract", "*": "stream"})
    text = str(plan)
    for name, mode in plan.modes.items():
        line = next(l for l in text.splitlines() if l.startswith(name + " "))
        assert f" {mode} " in line
    assert "shared workspace" in text and "total held" in text and "policy" in text
    assert "inference='contract'" in repr(model.lm_head) and "inference='stream'" in repr(model.model.layers[0].mlp)
    current = inference_plan(model)
    assert current.modes == plan.modes and current.workspace_bytes == plan.workspace_bytes
    assert plan.total_bytes == plan.model_bytes + plan.cache_bytes + plan.workspace_bytes
    cached = set_inference_mode(model, "cache")
    dense = sum(m.shape[0] * m.shape[1] * 4 for _, m in inference_layers(model) if isinstance(m, MPOModule))
    assert cached.cache_bytes == dense  # the tied head's matrix is the embedding's, counted once
    assert "(" + f"{model.model.embed_tokens.dense_params * 4:,}" + ")" in str(cached)
    assert set(POLICIES) == {"cache", "stream", "contract", "auto"}
