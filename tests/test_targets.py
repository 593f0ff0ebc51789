"""Target resolution (PEFT conventions): the all-linear fallback, regex strings, unmatched entries, reasons,
kinds from names, and the public helpers; compressed models against the dense originals."""

import warnings

import pytest
import torch
from torch import nn

from _extra_models import tiny_mpnet
from _plm_models import ARCHS, logits, tiny_inputs, tiny_model
from mpokit.config import MPOConfig, MPOLayerConfig
from mpokit.io import from_pretrained, save_pretrained
from mpokit.surgery import MPOTiedLinear, compress, merge_and_unload, mpo_modules
from mpokit.targets import Target, guess_kind, head_module_names, linear_target_names, resolve_targets

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

# every Linear / Conv1D outside the head, plus the word embedding (RoBERTa's classifier model has no pooler)
ALL_LINEAR_COUNT = {"bert": 2 * 6 + 1 + 1, "roberta": 2 * 6 + 1, "albert": 6 + 1 + 2, "distilbert": 2 * 6 + 1,
                    "gpt2": 2 * 4 + 1, "llama": 2 * 7 + 1}
HEADS = ("classifier", "lm_head", "score", "pre_classifier")


@pytest.mark.parametrize("arch", ARCHS)
def test_all_linear_gives_original_outputs_and_leaves_the_head_dense(arch):
    model = tiny_model(arch)
    inputs = tiny_inputs()
    ref = logits(model, inputs)
    _, report = compress(model, MPOConfig(target_modules="all-linear"), return_report=True)
    names = [r.name for r in report.modules]
    assert len(names) == ALL_LINEAR_COUNT[arch], names
    assert not [n for n in names if n.split(".")[0] in HEADS], names
    assert model.get_input_embeddings() in [m for _, m in mpo_modules(model)]
    assert {r.reason for r in report.modules} == {"fallback (all-linear)"}
    assert (logits(model, inputs) - ref).abs().max() <= 1e-4
    merge_and_unload(model)
    assert not mpo_modules(model) and (logits(model, inputs) - ref).abs().max() <= 1e-4


def test_registry_reasons_and_kinds_are_reported():
    model = tiny_model("llama")
    _, report = compress(model, MPOConfig(), return_report=True)
    assert {r.reason for r in report.modules} == {"registry (llama)"}
    kinds = {r.name.rsplit(".", 1)[-1]: r.kind for r in report.modules}
    assert kinds == {"embed_tokens": "embedding", "q_proj": "attention", "k_proj": "attention", "v_proj": "attention",
                     "o_proj": "attention", "gate_proj": "ffn", "up_proj": "ffn", "down_proj": "ffn"}
    rows = report.to_dict()["modules"]
    assert rows[0]["reason"] == "registry (llama)" and rows[0]["parametrized"] is False
    assert "registry (llama)" in report.table()


def test_architecture_outside_the_registry_uses_the_fallback(tmp_path):
    model = tiny_mpnet()
    assert model.config.model_type == "mpnet"
    inputs = tiny_inputs()
    ref = logits(model, inputs)
    _, report = compress(model, MPOConfig(ffn=MPOLayerConfig(max_bond=4)), return_report=True)
    kinds = {r.name: r.kind for r in report.modules}
    assert kinds["mpnet.embeddings.word_embeddings"] == "embedding"
    assert kinds["mpnet.encoder.layer.0.attention.attn.q"] == "attention"
    assert kinds["mpnet.encoder.layer.0.intermediate.dense"] == "ffn"
    assert kinds["mpnet.encoder.layer.0.output.dense"] == "ffn"
    assert "mpnet.embeddings.position_embeddings" not in kinds and not any(n.startswith("classifier") for n in kinds)
    assert len(kinds) == 1 + 2 * 6  # word embedding, 6 matrices per layer (no pooler in this head)
    assert {r.reason for r in report.modules} == {"fallback (all-linear)"}
    out = logits(model, inputs)
    assert all(max(r.bond_dims) <= 4 for r in report.modules if r.kind == "ffn")
    save_pretrained(model, tmp_path)
    assert torch.equal(logits(from_pretrained(tmp_path), inputs), out)

    exact = tiny_mpnet()
    compress(exact, MPOConfig())
    assert (logits(exact, inputs) - ref).abs().max() <= 1e-4
    merge_and_unload(exact)
    assert (logits(exact, inputs) - ref).abs().max() <= 1e-4


def test_a_regex_string_is_full_matched_never_split():
    model = tiny_model("bert")
    _, report = compress(model, MPOConfig(target_modules=r".*attention\.self\.(query|value)"), return_report=True)
    assert [r.name for r in report.modules] == [f"bert.encoder.layer.{i}.attention.self.{n}"
                                                for i in (0, 1) for n in ("query", "value")]
    assert {r.reason for r in report.modules} == {"target_modules (regex)"} and {r.kind for r in report.modules} == {"attention"}
    # a plain string is a regex over the whole name: "query" names no module (a list entry would be a suffix)
    with pytest.raises(ValueError, match=r"no module matched target_modules='query'"):
        compress(tiny_model("bert"), MPOConfig(target_modules="query"))
    _, report = compress(tiny_model("bert"), MPOConfig(target_regex=r".*\.pooler\.dense"), return_report=True)
    assert [(r.name, r.reason) for r in report.modules] == [("bert.pooler.dense", "target_regex")]


def test_unmatched_list_entries_are_warned_and_reported():
    model = tiny_model("bert")
    with pytest.warns(UserWarning, match=r"target_modules entry 'nonexistent' matches no module"):
        _, report = compress(model, MPOConfig(target_modules=["query", "nonexistent"]), return_report=True)
    assert report.unmatched == ["nonexistent"] and report.to_dict()["unmatched"] == ["nonexistent"]
    assert "unmatched target_modules entry: 'nonexistent'" in report.table()
    assert len(report.modules) == 2 and {r.reason for r in report.modules} == {"target_modules"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compress(tiny_model("bert"), MPOConfig(target_modules=["query"]))  # every entry matched: no warning


def test_resolve_targets_and_linear_target_names():
    model = tiny_model("gpt2")
    targets = resolve_targets(model)
    assert all(isinstance(t, Target) for t in targets)
    assert targets[0] == Target("transformer.wte", model.transformer.wte, "embedding", "registry (gpt2)", "Embedding")
    assert {t.converter for t in targets[1:]} == {"Conv1D"}
    names = linear_target_names(model)
    assert names == [t.name for t in targets[1:]]
    assert linear_target_names(tiny_model("bert"), MPOConfig(target_modules="all-linear"))[-1] == "bert.pooler.dense"
    assert not mpo_modules(model)  # resolution changes nothing


def test_linear_target_names_feed_peft_lora():
    peft = pytest.importorskip("peft")
    model = tiny_mpnet()
    names = linear_target_names(model)
    lora = peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=names))
    wrapped = {n.removeprefix("base_model.model.") for n, m in lora.named_modules() if hasattr(m, "lora_A")}
    assert wrapped == set(names) and len(names) == 2 * 6


def test_head_module_names_and_guess_kind():
    assert {"classifier"} <= head_module_names(tiny_model("bert"))
    assert "lm_head" in head_module_names(tiny_model("llama"))
    assert head_module_names(nn.Sequential(nn.Linear(2, 2))) == set()
    for name, kind in (("model.layers.0.self_attn.q_proj", "attention"), ("h.0.attn.c_proj", "attention"),
                       ("encoder.block.0.layer.0.SelfAttention.o", "attention"), ("model.layers.1.mlp.up_proj", "ffn"),
                       ("transformer.h.0.mlp.c_fc", "ffn"), ("layer.3.output.dense", "ffn"), ("blocks.0.fc1", "ffn"),
                       ("encoder.layer.0.attention.output.dense", "attention"), ("blocks.0.mlp.out_proj", "ffn"),
                       ("pooler.dense", "other"), ("lstm", "other")):
        assert guess_kind(name) == kind, name


def test_tied_gpt2_head_is_excluded_and_shares_the_embedding_cores():
    model = tiny_model("gpt2")
    inputs = tiny_inputs()
    ref = logits(model, inputs)
    _, report = compress(model, MPOConfig(target_modules="all-linear"), return_report=True)
    assert isinstance(model.lm_head, MPOTiedLinear) and report.tied
    assert (logits(model, inputs) - ref).abs().max() <= 1e-4
