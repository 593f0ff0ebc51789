"""Model surgery against the original transformers models: equal outputs at full bonds, LFA freezing, merge, errors."""

import re

import pytest
import torch
from torch import nn

from _plm_models import ARCHS, logits, tiny_inputs, tiny_model
from mpokit.config import MPOConfig, MPOLayerConfig
from mpokit.training import build_optimizer, param_groups
from mpokit.layers import MPOLinear, MPOModule
from mpokit.surgery import (
    MPOTiedLinear,
    compress,
    count_parameters,
    merge_and_unload,
    mpo_modules,
    print_trainable_parameters,
)

pytestmark = pytest.mark.filterwarnings("ignore")

# dense modules each architecture's defaults must replace (attention + FFN + word embedding [+ pooler/mapping])
EXPECTED_TARGETS = {"bert": 2 * 6 + 1 + 1, "roberta": 2 * 6 + 1, "albert": 6 + 1 + 2, "distilbert": 2 * 6 + 1,
                    "gpt2": 2 * 4 + 1, "llama": 2 * 7 + 1}


@pytest.mark.parametrize("arch", ARCHS)
def test_full_bond_outputs_equal_original(arch):
    model = tiny_model(arch)
    inputs = tiny_inputs()
    ref = logits(model, inputs)
    model, report = compress(model, MPOConfig(), return_report=True)
    out = logits(model, inputs)
    diff = (out - ref).abs().max().item()
    assert diff <= 1e-4, f"{arch}: max abs diff {diff:.3e} > 1e-4"
    assert len(report.modules) == EXPECTED_TARGETS[arch], [r.name for r in report.modules]
    assert all(isinstance(model.get_submodule(r.name), MPOModule) for r in report.modules)
    assert {r.kind for r in report.modules} >= {"embedding", "attention", "ffn"}
    for r in report.modules:
        assert r.rel_error_bound < 1e-5
        assert r.name in report.table()


@pytest.fixture(scope="module")
def minilm():
    from mpokit.loading import load_model
    from mpokit.recipes.models import default_model_path

    loaded = load_model(default_model_path(), task="classify", num_labels=2, seed=0)
    return loaded.model.eval(), loaded.tokenizer


def test_real_minilm_full_bond_outputs_equal_original(minilm):
    import copy

    model, tok = minilm
    model = copy.deepcopy(model)
    inputs = tok(["a gripping, beautifully shot film", "dull and far too long"], padding=True, return_tensors="pt")
    ref = logits(model, inputs)
    hidden_ref = model.bert(**inputs).last_hidden_state.detach()
    compress(model, MPOConfig())
    out = logits(model, inputs)
    hidden = model.bert(**inputs).last_hidden_state.detach()
    diff = max((out - ref).abs().max().item(), (hidden - hidden_ref).abs().max().item())
    assert diff <= 1e-4, f"MiniLM: max abs diff {diff:.3e} > 1e-4"
    assert len(mpo_modules(model)) == 6 * 6 + 2  # Q,K,V,O,FFN in/out per layer + word embedding + pooler


def test_conv1d_weight_is_transposed_into_out_in_layout():
    model = tiny_model("gpt2")
    conv = model.transformer.h[0].attn.c_attn
    weight = conv.weight.detach().clone()  # (in=24, out=72)
    compress(model, MPOConfig(target_modules=["attn.c_attn"]))
    layer = model.transformer.h[0].attn.c_attn
    assert isinstance(layer, MPOLinear) and layer.shape == (72, 24)
    assert torch.allclose(layer.rebuild_weight(), weight.t(), atol=1e-5)


def test_tied_output_embedding_stays_tied_through_training():
    model = tiny_model("gpt2")
    assert model.lm_head.weight is model.transformer.wte.weight
    inputs = tiny_inputs()
    ref = logits(model, inputs)
    _, report = compress(model, MPOConfig(trainable="all"), return_report=True)
    assert isinstance(model.lm_head, MPOTiedLinear) and model.lm_head.embedding is model.transformer.wte
    assert report.tied and "lm_head" in report.tied[0]
    assert (logits(model, inputs) - ref).abs().max() <= 1e-4
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(**inputs, labels=inputs["input_ids"]).loss.backward()
    opt.step()
    assert torch.equal(model.lm_head.weight, model.transformer.wte.rebuild_weight())
    assert count_parameters(model) == sum(p.numel() for p in model.parameters())


def test_tied_embedding_conflict_policies():
    with pytest.raises(ValueError, match=r"tied to the output projection 'lm_head'.*tied_embeddings='tie'"):
        compress(tiny_model("gpt2"), MPOConfig(tied_embeddings="error"))
    model = tiny_model("gpt2")
    inputs = tiny_inputs()
    ref = logits(model, inputs)
    compress(model, MPOConfig(tied_embeddings="untie"))
    assert isinstance(model.lm_head, nn.Linear) and model.config.tie_word_embeddings is False
    assert (logits(model, inputs) - ref).abs().max() <= 1e-4


def _aux_and_central_names(model):
    """Independent of mpokit's structure helpers: core k of an n-core MPO is central iff k == (n - 1) // 2."""
    cores: dict[str, list[int]] = {}
    for name, _ in model.named_parameters():
        m = re.fullmatch(r"(.*)\.cores\.(\d+)", name)
        if m:
            cores.setdefault(m.group(1), []).append(int(m.group(2)))
    central, aux = set(), set()
    for prefix, ks in cores.items():
        c = (len(ks) - 1) // 2
        for k in ks:
            (central if k == c else aux).add(f"{prefix}.cores.{k}")
    return central, aux


@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama"])
def test_one_lfa_step_freezes_central_cores_and_exactly_the_intended_dense_params(arch):
    model = tiny_model(arch)
    cfg = MPOConfig(trainable="auxiliary", train_biases=True, train_layernorm=False, train_embeddings=False,
                    train_head=True, train_other=False)
    compress(model, cfg)
    central, aux = _aux_and_central_names(model)
    assert central and aux
    # intended non-MPO trainables, from names: biases outside norms, and the task head (not in the base model)
    head_prefixes = ("classifier.", "lm_head.")
    dense_names = [n for n, _ in model.named_parameters() if ".cores." not in n]
    intended = {n for n in dense_names if n.startswith(head_prefixes)
                or (n.endswith(".bias") and not re.search(r"(LayerNorm|layernorm|ln_\d|ln_f|norm)\.bias$", n))}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.train()
    opt = build_optimizer(model, lr=1e-2, mpo_lr=1e-3, weight_decay=0.0)
    inputs = tiny_inputs()
    labels = inputs["input_ids"] if arch in ("gpt2", "llama") else torch.tensor([0, 1, 1])
    model(**inputs, labels=labels).loss.backward()
    zero_grad = {n for n, p in model.named_parameters() if p.grad is not None and not p.grad.any()}
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    for n in central:
        assert n not in changed, f"central core {n} changed"
    for n in aux:
        assert n in changed, f"auxiliary core {n} did not change"
    assert changed - aux == intended - zero_grad, (sorted(changed - aux ^ intended))
    # exactly-zero gradients only where the maths says so (attention key biases cancel in softmax)
    assert all("key" in n or "k_lin" in n or "k_proj" in n for n in zero_grad & intended), zero_grad
    # optimizer state exists only for trainable tensors
    assert len(opt.state) == sum(1 for p in model.parameters() if p.requires_grad)


def test_trainable_count_matches_an_independent_count():
    model = tiny_model("bert")
    compress(model, MPOConfig())  # MPOP LFA: aux cores + every non-decomposed parameter
    central, aux = _aux_and_central_names(model)
    params = dict(model.named_parameters())
    expected = sum(params[n].numel() for n in aux) + sum(p.numel() for n, p in params.items() if ".cores." not in n)
    trainable, total = print_trainable_parameters(model)
    assert trainable == expected == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert total == sum(p.numel() for p in params.values())
    assert total - trainable == sum(params[n].numel() for n in central)


def test_trainable_modes_all_central_none():
    for mode, want_central, want_aux in (("all", True, True), ("central", True, False), ("none", False, False)):
        model = compress(tiny_model("distilbert"), MPOConfig(trainable=mode))
        for _, m in mpo_modules(model):
            assert all(p.requires_grad == want_central for p in m.central_parameters())
            assert all(p.requires_grad == want_aux for p in m.auxiliary_parameters())


def test_param_groups_use_mpo_lr_for_trainable_cores_only():
    model = compress(tiny_model("bert"), MPOConfig())
    groups = {g["name"]: g for g in param_groups(model, lr=1e-3, mpo_lr=1e-5, weight_decay=0.1)}
    aux = {id(p) for _, m in mpo_modules(model) for p in m.auxiliary_parameters()}
    assert {id(p) for p in groups["mpo"]["params"]} == aux and groups["mpo"]["lr"] == 1e-5
    assert groups["no_decay"]["weight_decay"] == 0.0 and groups["decay"]["lr"] == 1e-3
    with pytest.raises(ValueError, match="mpo_lr must be"):
        param_groups(model, lr=1e-3, mpo_lr=-1.0)


def test_truncation_report_and_bound():
    model = tiny_model("bert")
    dense = {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    _, report = compress(model, MPOConfig(embedding=None, attention=MPOLayerConfig(param_ratio=0.5), ffn=None,
                                          other=None), return_report=True)
    assert {r.kind for r in report.modules} == {"attention"} and len(report.modules) == 8
    for r in report.modules:
        assert r.params_after <= 0.5 * r.params_before
        w = dense[r.name]
        err = (model.get_submodule(r.name).rebuild_weight() - w).norm() / w.norm()
        assert err <= r.rel_error_bound * (1 + 1e-4) + 1e-6, f"{r.name}: error {err:.3e} > bound {r.rel_error_bound:.3e}"
    assert report.model_params_after < report.model_params_before
    assert "8 matrices" in str(report)


def test_explicit_targets_suffix_regex_types_and_exclude():
    model = compress(tiny_model("bert"), MPOConfig(target_modules=["query", "value"], exclude_modules=["layer.1.attention.self.value"]))
    names = {n for n, _ in mpo_modules(model)}
    assert names == {"bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.0.attention.self.value",
                     "bert.encoder.layer.1.attention.self.query"}
    model = compress(tiny_model("bert"), MPOConfig(target_regex=r".*embeddings\..*", target_types=["Embedding"]))
    assert len(mpo_modules(model)) == 3  # word, position, token type


def test_nothing_matched_errors():
    with pytest.raises(ValueError, match=r"no module matched target_modules=\['nonexistent'\].*Candidate modules"):
        compress(tiny_model("bert"), MPOConfig(target_modules=["nonexistent"]))
    with pytest.raises(ValueError, match="no module matched the bert defaults"):
        compress(tiny_model("bert"), MPOConfig(embedding=None, attention=None, ffn=None, other=None))
    with pytest.raises(ValueError, match=r"no module matched the 'all-linear' fallback .*registered: \["):
        compress(nn.Sequential(nn.Linear(4, 4)), MPOConfig(other=None))
    plain = nn.Sequential(nn.Linear(4, 4))
    compress(plain, MPOConfig(target_modules=["0"]))
    assert isinstance(plain[0], MPOLinear)
    with pytest.raises(TypeError, match="config must be an MPOConfig"):
        compress(tiny_model("bert"), {"trainable": "auxiliary"})


@pytest.mark.parametrize("arch", ARCHS)
def test_merge_and_unload_gives_plain_dense_model_with_equal_outputs(arch):
    model = tiny_model(arch)
    inputs = tiny_inputs()
    compress(model, MPOConfig(attention=MPOLayerConfig(max_bond=3)))
    mpo_out = logits(model, inputs)
    merged = merge_and_unload(model)
    assert not mpo_modules(merged) and not any(isinstance(m, MPOTiedLinear) for m in merged.modules())
    assert (logits(merged, inputs) - mpo_out).abs().max() <= 1e-5
    if arch == "gpt2":
        assert type(merged.transformer.h[0].attn.c_attn).__name__ == "Conv1D"
        assert merged.lm_head.weight is merged.transformer.wte.weight
    assert all(p.requires_grad for p in merged.parameters())


def test_dtype_and_device_are_kept():
    model = tiny_model("bert", dtype=torch.float64)
    inputs = tiny_inputs()
    ref = logits(model, inputs)
    compress(model)
    for _, m in mpo_modules(model):
        assert all(c.dtype == torch.float64 and c.device.type == "cpu" for c in m.cores)
    assert (logits(model, inputs) - ref).abs().max() <= 1e-10


def test_compress_validates_a_config_changed_after_construction():
    cfg = MPOConfig()
    cfg.trainable = "foo"
    with pytest.raises(ValueError, match="trainable must be one of"):
        compress(tiny_model("bert"), cfg)
    cfg = MPOConfig()
    cfg.attention.max_bond = 0
    with pytest.raises(ValueError, match="max_bond must be an int >= 1, got 0"):
        compress(tiny_model("bert"), cfg)
