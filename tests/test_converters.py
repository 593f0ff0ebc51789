"""The converter registry: LSTM inside any model, modules that keep their own forward (parametrized weights),
Gemma3's scaled embedding; each against the dense original (full bonds), through save / load and merge."""

import dataclasses
import re

import pytest
import torch
from torch import nn

from _extra_models import CustomForwardNet, GatedLinear, LSTMLanguageModel, ScaledEmbedding, gemma3_available, tiny_gemma3
from mpokit.config import MPOConfig, MPOLayerConfig
from mpokit.converters import CONVERTERS, Converter, converted_modules, mpo_weight_of, register_converter
from mpokit.io import CheckpointError, from_pretrained, save_pretrained
from mpokit.layers import MPOLinear, MPOModule
from mpokit.layers.lstm import MPOLSTM
from mpokit.layers.weight import MPOWeight
from mpokit.surgery import MPOTiedLinear, compress, merge_and_unload, mpo_modules

TOL = {torch.float32: 1e-5, torch.float64: 1e-10}


def _ids(vocab: int, seed: int = 1, shape=(3, 7)) -> torch.Tensor:
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


def _out(model, ids):
    with torch.no_grad():
        return model(ids)


def _central_and_aux(model):
    """From parameter names only: core k of an n-core MPO is central iff k == (n - 1) // 2."""
    cores: dict[str, list[int]] = {}
    for name, _ in model.named_parameters():
        m = re.fullmatch(r"(.*)\.cores\.(\d+)", name)
        if m:
            cores.setdefault(m.group(1), []).append(int(m.group(2)))
    central, aux = set(), set()
    for prefix, ks in cores.items():
        for k in ks:
            (central if k == (len(ks) - 1) // 2 else aux).add(f"{prefix}.cores.{k}")
    return central, aux


def _one_step_changes(model, loss_fn) -> set[str]:
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loss_fn(model).backward()
    opt.step()
    model.eval()
    return {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}


def test_registry_holds_the_builtin_converters_and_checks_new_ones():
    assert list(CONVERTERS)[:4] == ["Linear", "Conv1D", "Embedding", "LSTM"]
    assert CONVERTERS["LSTM"].mpo_class is MPOLSTM and CONVERTERS["Conv1D"].mpo_class is MPOLinear
    with pytest.raises(TypeError, match="register_converter needs a Converter"):
        register_converter({"name": "Linear"})
    with pytest.raises(ValueError, match="Converter.name must be an identifier-like string, got 'my linear'"):
        register_converter(dataclasses.replace(CONVERTERS["Linear"], name="my linear"))


def test_a_registered_converter_takes_its_modules():
    class TaggedLinear(nn.Linear):  # same forward as nn.Linear: swapped, not parametrized
        pass

    conv = register_converter(dataclasses.replace(CONVERTERS["Linear"], name="TaggedLinear",
                                                  matches=lambda m: isinstance(m, TaggedLinear)))
    try:
        model = nn.Sequential(TaggedLinear(6, 4), nn.Linear(4, 2))
        x = torch.randn(5, 6)
        ref = model(x).detach()
        _, report = compress(model, MPOConfig(), return_report=True)
        assert [(r.name, r.source_type) for r in report.modules] == [("0", "TaggedLinear"), ("1", "Linear")]
        assert isinstance(model[0], MPOLinear) and model[0].source_type == "TaggedLinear"
        assert [c.name for _, _, c, _ in converted_modules(model)] == ["TaggedLinear", "Linear"]
        assert (model(x) - ref).abs().max() <= 1e-5
    finally:
        del CONVERTERS[conv.name]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lstm_inside_a_plain_module_compresses_saves_loads_and_merges(dtype, tmp_path):
    torch.manual_seed(0)
    model = LSTMLanguageModel().to(dtype).eval()
    ids = _ids(50)
    ref = _out(model, ids)
    _, report = compress(model, MPOConfig(), return_report=True)
    assert isinstance(model.lstm, MPOLSTM) and isinstance(model.head, MPOLinear)
    assert isinstance(model.embedding, nn.Embedding)  # a plain nn.Module has no get_input_embeddings
    assert [r.name for r in report.modules] == ["lstm.weight_ih_l0", "lstm.weight_hh_l0", "lstm.weight_ih_l1",
                                                "lstm.weight_hh_l1", "head"]
    assert {r.reason for r in report.modules} == {"fallback (all-linear)"}
    assert all(isinstance(model.get_submodule(r.name), MPOModule) for r in report.modules)
    assert (_out(model, ids) - ref).abs().max() <= TOL[dtype]

    save_pretrained(model, tmp_path)
    assert not (tmp_path / "config.json").exists()
    with pytest.raises(CheckpointError, match=r"saved without a transformers config.json.*model=LSTMLanguageModel"):
        from_pretrained(tmp_path)
    loaded = from_pretrained(tmp_path, model=LSTMLanguageModel().to(dtype))
    assert isinstance(loaded.lstm, MPOLSTM)
    assert [m.bond_dims for m in loaded.lstm.mpo_modules()] == [m.bond_dims for m in model.lstm.mpo_modules()]
    assert torch.equal(_out(loaded, ids), _out(model, ids))

    merge_and_unload(model)
    assert type(model.lstm) is nn.LSTM and type(model.head) is nn.Linear and not mpo_modules(model)
    assert (_out(model, ids) - ref).abs().max() <= TOL[dtype]


def test_lstm_trains_only_auxiliary_cores_under_lfa():
    torch.manual_seed(0)
    model = compress(LSTMLanguageModel(), MPOConfig(trainable="auxiliary", train_other=False, train_biases=False,
                                                    train_embeddings=False))
    central, aux = _central_and_aux(model)
    assert any(n.startswith("lstm.weight_hh_l1.") for n in central)
    ids = _ids(50)
    changed = _one_step_changes(model, lambda m: m(ids).logsumexp(-1).mean())
    assert changed == aux


def test_lstm_conversion_follows_the_layer_config():
    torch.manual_seed(0)
    model = compress(LSTMLanguageModel(), MPOConfig(target_modules=["lstm"], other=MPOLayerConfig(max_bond=2, n_cores=3)))
    assert all(max(m.bond_dims) <= 2 and m.n_cores == 3 for m in model.lstm.mpo_modules())
    with pytest.raises(ValueError, match="an LSTM target takes its modes from its hidden size"):
        compress(LSTMLanguageModel(), MPOConfig(target_modules=["lstm"], other=MPOLayerConfig(out_modes=(4, 16))))
    with pytest.raises(ValueError, match="max_params=100 is a budget per matrix"):
        compress(LSTMLanguageModel(), MPOConfig(target_modules=["lstm"], other=MPOLayerConfig(max_params=100)))


def test_an_lstm_subclass_with_its_own_forward_is_refused():
    class ReversedLSTM(nn.LSTM):
        def forward(self, x, hx=None):
            return super().forward(x.flip(1), hx)

    model = LSTMLanguageModel()
    model.lstm = ReversedLSTM(12, 16, batch_first=True)
    with pytest.raises(ValueError, match="ReversedLSTM overrides LSTM.forward.*no single weight matrix"):
        compress(model, MPOConfig(target_modules=["lstm"]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_modules_with_their_own_forward_keep_it(dtype):
    torch.manual_seed(0)
    model = CustomForwardNet().to(dtype).eval()
    ids = _ids(40)
    ref = _out(model, ids)
    _, report = compress(model, MPOConfig(target_modules=["emb", "proj"]), return_report=True)
    assert isinstance(model.emb, ScaledEmbedding) and isinstance(model.proj, GatedLinear)
    assert [(r.name, r.parametrized) for r in report.modules] == [("emb", True), ("proj", True)]
    for name in ("emb", "proj"):
        module = model.get_submodule(name)
        assert isinstance(mpo_weight_of(module), MPOWeight)
        assert "weight" not in module._parameters  # no dense copy kept
    assert not any(k.endswith("original") or k == "emb.weight" for k in model.state_dict())
    assert {n for n, _ in mpo_modules(model)} == {"emb.parametrizations.weight.0", "proj.parametrizations.weight.0"}
    assert (_out(model, ids) - ref).abs().max() <= TOL[dtype]
    assert "target_modules, parametrized" in report.table()


def test_modules_with_their_own_forward_train_the_intended_parameters():
    torch.manual_seed(0)
    model = compress(CustomForwardNet(), MPOConfig(target_modules=["emb", "proj"], trainable="auxiliary",
                                                   train_other=False))
    central, aux = _central_and_aux(model)
    assert len(central) == 2 and len(aux) == 8
    ids = _ids(40)
    changed = _one_step_changes(model, lambda m: m(ids).pow(2).mean())
    assert changed == aux | {"proj.bias", "out.bias"}  # out.weight is 'other' (train_other=False), cores central frozen


def test_modules_with_their_own_forward_save_load_and_merge(tmp_path):
    torch.manual_seed(0)
    model = CustomForwardNet().to(torch.float64).eval()
    ids = _ids(40)
    _, report = compress(model, MPOConfig(target_modules=["emb", "proj"], other=MPOLayerConfig(max_bond=2)),
                         return_report=True)
    assert max(report.modules[1].bond_dims) == 2  # proj (kind 'other') truncated: the checkpoint holds cut bonds
    out = _out(model, ids)
    save_pretrained(model, tmp_path)
    with pytest.raises(CheckpointError, match="holds a CustomForwardNet, but model= is a LSTMLanguageModel"):
        from_pretrained(tmp_path, model=LSTMLanguageModel())
    with pytest.raises(CheckpointError, match="model= already holds MPO modules"):
        from_pretrained(tmp_path, model=model)
    loaded = from_pretrained(tmp_path, model=CustomForwardNet().to(torch.float64))
    assert isinstance(loaded.emb, ScaledEmbedding) and mpo_weight_of(loaded.emb) is not None
    assert torch.equal(_out(loaded, ids), out)

    merge_and_unload(model)
    assert type(model.emb) is ScaledEmbedding and type(model.proj) is GatedLinear
    assert isinstance(model.emb.weight, nn.Parameter) and isinstance(model.proj.weight, nn.Parameter)
    assert sorted(model.state_dict()) == sorted(CustomForwardNet().state_dict())
    assert (_out(model, ids) - out).abs().max() <= 1e-10


def test_assigning_the_weight_of_a_parametrized_module_sets_its_cores():
    torch.manual_seed(0)
    model = compress(CustomForwardNet().double(), MPOConfig(target_modules=["proj"]))
    new = torch.randn(12, 12, dtype=torch.float64)
    model.proj.weight = new  # MPOWeight.right_inverse: TT-SVD at the current modes and bonds (full: exact)
    assert torch.allclose(model.proj.weight, new, atol=1e-10)
    with pytest.raises(ValueError, match=r"the weight has shape \(12, 12\), got a value of shape \(3, 4\)"):
        model.proj.weight = torch.zeros(3, 4, dtype=torch.float64)


@pytest.mark.skipif(not gemma3_available(), reason="transformers without Gemma3")
def test_gemma3_scaled_embedding_and_all_linear_give_the_original_logits(tmp_path):
    model = tiny_gemma3()
    embedding_class = type(model.model.embed_tokens)
    assert embedding_class.forward is not nn.Embedding.forward
    ids = _ids(97, shape=(2, 9))

    def logits(m):
        with torch.no_grad():
            return m(input_ids=ids).logits

    ref = logits(model)
    _, report = compress(model, MPOConfig(target_modules="all-linear"), return_report=True)
    rows = {r.name: r for r in report.modules}
    assert rows["model.embed_tokens"].parametrized and rows["model.embed_tokens"].kind == "embedding"
    assert "lm_head" not in rows and len(rows) == 1 + 2 * 7
    assert {rows[f"model.layers.0.{n}"].kind for n in ("self_attn.q_proj", "self_attn.o_proj")} == {"attention"}
    assert {rows[f"model.layers.0.mlp.{n}"].kind for n in ("gate_proj", "up_proj", "down_proj")} == {"ffn"}
    assert isinstance(model.lm_head, MPOTiedLinear) and model.lm_head.embedding is mpo_weight_of(model.model.embed_tokens)
    assert (logits(model) - ref).abs().max() <= 1e-5

    save_pretrained(model, tmp_path)
    loaded = from_pretrained(tmp_path)
    assert type(loaded.model.embed_tokens).__mro__[1] is embedding_class  # torch's Parametrized<class> subclass
    assert isinstance(loaded.lm_head, MPOTiedLinear)
    assert torch.equal(logits(loaded), logits(model))

    merge_and_unload(model)
    assert type(model.model.embed_tokens) is embedding_class
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert (logits(model) - ref).abs().max() <= 1e-5
