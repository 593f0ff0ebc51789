"""from_pretrained without the dense model: the skeleton on the meta device, MPO layers at their saved shapes, the
tensors of the checkpoint assigned. References: a recorder of every CPU tensor created (no dense matrix of a
compressed layer), the peak RSS of a fresh process (against the dense model's), and today's loader, which builds the
dense model and copies the tensors into it (``from_pretrained(folder, model=<dense model built from the config>)``):
its state, buffers, ties and logits are matched to the last bit."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

transformers = pytest.importorskip("transformers")

from _extra_models import CustomForwardNet, LSTMLanguageModel, gemma3_available, tiny_gemma3  # noqa: E402
from _plm_models import logits, tiny_config, tiny_inputs, tiny_model  # noqa: E402
from mpokit.config import MPOConfig, MPOLayerConfig  # noqa: E402
from mpokit.io import (MPO_CONFIG_NAME, WEIGHTS_NAME, CheckpointError, from_pretrained,  # noqa: E402
                       read_checkpoint_config, save_pretrained)
from mpokit.layers import MPOEmbedding, MPOLinear  # noqa: E402
from mpokit.layers.lstm import MPOLSTM  # noqa: E402
from mpokit.surgery import MPOTiedLinear, compress, mpo_modules  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
CUT = MPOLayerConfig(max_bond=3)


class CPUTensorShapes(TorchDispatchMode):
    """Records the shape of every CPU tensor an aten op returns (allocations, views, casts)."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: set[tuple[int, ...]] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.shapes.update(tuple(t.shape) for t in tree_leaves(out) if isinstance(t, torch.Tensor) and t.device.type == "cpu")
        return out


def _legacy(folder, **kwargs):
    """Today's loader: the dense model built from the checkpoint's config (real, random weights), then copied into."""
    config = read_checkpoint_config(folder)
    model_class = json.loads((folder / MPO_CONFIG_NAME).read_text())["model_class"]
    return from_pretrained(folder, model=getattr(transformers, model_class)._from_config(config), **kwargs)


def _assert_same_as_legacy(loaded, legacy):
    """Bit-identical state (values and dtypes), buffers (the non-persistent ones included), flags and ties."""
    assert not [n for n, t in [*loaded.named_parameters(), *loaded.named_buffers()] if t.is_meta]
    state, ref = loaded.state_dict(), legacy.state_dict()
    assert state.keys() == ref.keys()
    assert [k for k in state if state[k].dtype != ref[k].dtype or not torch.equal(state[k], ref[k])] == []
    buffers, ref_buffers = dict(loaded.named_buffers()), dict(legacy.named_buffers())
    assert buffers.keys() == ref_buffers.keys()
    assert [k for k in buffers if buffers[k].dtype != ref_buffers[k].dtype or not torch.equal(buffers[k], ref_buffers[k])] == []
    flags = [(n, p.requires_grad) for n, p in loaded.named_parameters()]
    assert flags == [(n, p.requires_grad) for n, p in legacy.named_parameters()]  # one entry per tied Parameter
    all_names = [n for n, _ in loaded.named_parameters(remove_duplicate=False)]
    assert all_names == [n for n, _ in legacy.named_parameters(remove_duplicate=False)]
    assert not loaded.training


# ---------------------------------------------------------------------------
# (a) the dense matrices are never allocated
# ---------------------------------------------------------------------------


def test_loading_creates_no_tensor_of_a_compressed_matrix_s_dense_shape(tmp_path):
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=97, hidden_size=20, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=44, max_position_embeddings=32, type_vocab_size=3, num_labels=2,
                                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = transformers.BertForSequenceClassification(config).eval()
    compress(model, MPOConfig(embedding=CUT, attention=CUT, ffn=CUT, other=CUT))
    save_pretrained(model, tmp_path)
    layers = mpo_modules(model)
    assert {n.rsplit(".", 1)[-1] for n, _ in layers} >= {"word_embeddings", "query", "dense"}
    dense = {s for _, m in layers for s in (m.shape, m.shape[::-1], m.padded_shape, m.padded_shape[::-1])}
    kept = {tuple(t.shape) for k, t in model.state_dict().items() if ".cores." not in k}
    assert not dense & kept  # no tensor of the checkpoint has such a shape, so any one seen was built by the loader

    with CPUTensorShapes() as seen:
        loaded = from_pretrained(tmp_path)
    assert sorted(dense & seen.shapes) == []
    cores = {tuple(c.shape) for _, m in layers for c in m.core_list()}
    assert cores <= seen.shapes  # the recorder sees the tensors read from the file
    with CPUTensorShapes() as dense_build:  # what today's loader starts with: the dense model, built from the config
        transformers.BertForSequenceClassification._from_config(read_checkpoint_config(tmp_path))
    assert dense <= dense_build.shapes | {s for _, m in layers for s in (m.padded_shape, m.padded_shape[::-1])}
    inputs = tiny_inputs(vocab=97)
    assert torch.equal(logits(loaded, inputs), logits(model, inputs))


_PROBE = textwrap.dedent("""
    import json, sys
    import torch, transformers, mpokit
    import transformers.models.bert.modeling_bert  # the model code, outside the measurement
    def status(key):
        return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key)) * 1024
    mpokit.from_pretrained(sys.argv[2])  # a tiny checkpoint first: the lazy imports of loading, outside too
    base = status("VmRSS:")
    model = mpokit.from_pretrained(sys.argv[1])
    touched = sum(float(t.sum()) for t in [*model.parameters(), *model.buffers()])  # every page resident
    print(json.dumps({"peak": status("VmHWM:") - base, "touched": touched}))
""")


def _peak_rss(folder, warmup) -> int:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", _PROBE, str(folder), str(warmup)], capture_output=True, text=True,
                          timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])["peak"]


def test_peak_memory_of_loading_follows_the_compressed_size(tmp_path):
    """A fresh process loads a ~36 MB BERT, its matrices as MPOs of ~6% of their parameters, or dense: the MPO load
    (weights touched, so all resident) peaks far below the dense one. Today's loader built the dense model
    first, so its MPO load peaked above the dense load."""
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=16384, hidden_size=256, num_hidden_layers=6, num_attention_heads=4,
                                     intermediate_size=1024, max_position_embeddings=128)
    model = transformers.BertModel(config).eval()
    save_pretrained(model, tmp_path / "dense")
    dense_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    for name, m in list(model.named_modules()):  # random cores of bond 16 (a decomposition would take seconds)
        if isinstance(m, torch.nn.Linear):
            model.set_submodule(name, MPOLinear(m.in_features, m.out_features, bond_dim=16))
    model.embeddings.word_embeddings = MPOEmbedding(config.vocab_size, config.hidden_size, config.pad_token_id,
                                                    bond_dim=16)
    save_pretrained(model, tmp_path / "mpo")
    mpo_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    assert mpo_bytes < 0.1 * dense_bytes
    save_pretrained(tiny_model("bert"), tmp_path / "tiny")
    peak_dense = _peak_rss(tmp_path / "dense", tmp_path / "tiny")
    peak_mpo = _peak_rss(tmp_path / "mpo", tmp_path / "tiny")
    print(f"peak RSS of loading: dense {peak_dense / 2**20:.1f} MiB ({dense_bytes / 2**20:.1f} MiB of weights), "
          f"MPO {peak_mpo / 2**20:.1f} MiB ({mpo_bytes / 2**20:.1f} MiB)")
    assert peak_dense > 0.8 * dense_bytes  # the probe sees the weights
    assert peak_mpo < 0.4 * peak_dense, (peak_mpo, peak_dense)


# ---------------------------------------------------------------------------
# (b) the same model as compressed in memory, and as today's loader gives
# ---------------------------------------------------------------------------


def _tied_llama():
    torch.manual_seed(0)
    config = tiny_config("llama")
    config.tie_word_embeddings = True
    return transformers.AutoModelForCausalLM.from_config(config).eval()


CASES = {
    "bert": (lambda: tiny_model("bert"), MPOConfig(attention=CUT, ffn=MPOLayerConfig(param_ratio=0.5))),
    "llama-tied-mpo-embedding": (_tied_llama, MPOConfig(embedding=CUT, ffn=CUT)),
    "llama-tied-dense-embedding": (_tied_llama, MPOConfig(embedding=None, ffn=CUT)),
    "gpt2-conv1d": (lambda: tiny_model("gpt2"), MPOConfig(embedding=CUT, attention=CUT, ffn=CUT)),
    "gemma3-parametrized": (lambda: tiny_gemma3(), MPOConfig(target_modules="all-linear")),
}


@pytest.mark.parametrize("case", list(CASES))
def test_outputs_state_and_ties_match_the_in_memory_model_and_today_s_loader(case, tmp_path):
    if case.startswith("gemma3") and not gemma3_available():
        pytest.skip("transformers without Gemma3")
    build, cfg = CASES[case]
    model = compress(build(), cfg)
    save_pretrained(model, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the dense fallback warns
        loaded = from_pretrained(tmp_path)
    legacy = _legacy(tmp_path)
    _assert_same_as_legacy(loaded, legacy)
    inputs = tiny_inputs()
    if case.startswith(("llama", "gemma3")):
        inputs = {"input_ids": inputs["input_ids"]}
    assert torch.equal(logits(loaded, inputs), logits(model, inputs))
    assert torch.equal(logits(loaded, inputs), logits(legacy, inputs))
    head = loaded.get_output_embeddings()
    if case in ("llama-tied-mpo-embedding", "gpt2-conv1d", "gemma3-parametrized"):
        assert isinstance(head, MPOTiedLinear)
        holder = dict(loaded.named_modules())[next(n for n, m in mpo_modules(loaded) if "emb" in n or ".wte" in n)]
        assert head.embedding is holder
    if case == "llama-tied-dense-embedding":
        assert head.weight is loaded.model.embed_tokens.weight  # tied again after the assignment


def test_a_tied_dense_head_stays_tied_through_a_training_step(tmp_path):
    model = compress(_tied_llama(), MPOConfig(embedding=None, ffn=CUT, train_embeddings=True))
    save_pretrained(model, tmp_path)
    loaded = from_pretrained(tmp_path)
    emb = loaded.model.embed_tokens.weight
    assert emb.requires_grad and loaded.lm_head.weight is emb
    loaded.train()
    ids = tiny_inputs()["input_ids"]
    loaded(input_ids=ids, labels=ids).loss.backward()
    with torch.no_grad():
        emb -= 0.1 * emb.grad
    assert torch.equal(loaded.lm_head.weight, emb) and loaded.lm_head.weight is emb


def test_an_lstm_model_loads_into_model_given_dense_or_on_the_meta_device(tmp_path):
    torch.manual_seed(0)
    model = compress(LSTMLanguageModel().eval(), MPOConfig())
    save_pretrained(model, tmp_path)
    ids = torch.randint(0, 50, (3, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(ids)
    dense = LSTMLanguageModel()
    loaded = from_pretrained(tmp_path, model=dense)
    assert loaded is dense and isinstance(loaded.lstm, MPOLSTM)
    with torch.device("meta"):
        skeleton = LSTMLanguageModel()  # a skeleton built by the user without values: assigned, not copied
    from_pretrained(tmp_path, model=skeleton)
    for m in (loaded, skeleton):
        assert not [n for n, p in m.named_parameters() if p.is_meta]
        with torch.no_grad():
            assert torch.equal(m(ids), ref)


def test_a_meta_skeleton_without_its_non_persistent_buffers_is_refused(tmp_path):
    model = compress(CustomForwardNet(), MPOConfig(target_modules=["emb", "proj"]))
    save_pretrained(model, tmp_path)
    with torch.device("meta"):
        skeleton = CustomForwardNet()
    with pytest.raises(CheckpointError, match=r"\['emb.scale'\] of the CustomForwardNet are on the meta device"):
        from_pretrained(tmp_path, model=skeleton)


def test_dtype_and_device_as_today(tmp_path):
    model = compress(tiny_model("llama"), MPOConfig(ffn=CUT))
    save_pretrained(model, tmp_path)
    loaded = from_pretrained(tmp_path, dtype=torch.float64, device="cpu")
    legacy = _legacy(tmp_path, dtype=torch.float64, device="cpu")
    _assert_same_as_legacy(loaded, legacy)
    assert {p.dtype for p in loaded.parameters()} == {torch.float64}
    assert loaded.model.rotary_emb.inv_freq.dtype == legacy.model.rotary_emb.inv_freq.dtype
    inputs = {"input_ids": tiny_inputs()["input_ids"]}
    assert torch.equal(logits(loaded, inputs), logits(legacy, inputs))


def test_a_constructor_that_fills_a_buffer_from_an_uninitialised_tensor_gets_the_dense_build(tmp_path, monkeypatch):
    class BertForSequenceClassification(transformers.BertForSequenceClassification):
        def __init__(self, config):
            super().__init__(config)
            self.register_buffer("offset", torch.empty(3).fill_(2.5), persistent=False)  # meta in the skeleton

    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_config("bert")).eval()
    compress(model, MPOConfig(ffn=CUT))
    save_pretrained(model, tmp_path)
    # the module transformers now registers (its lazy module replaces itself on first use), as the loader imports it
    monkeypatch.setattr(importlib.import_module("transformers"), "BertForSequenceClassification",
                        BertForSequenceClassification)
    with pytest.warns(UserWarning, match=r"built with real .* buffers \['offset'\] are computed from uninitialised"):
        loaded = from_pretrained(tmp_path)
    assert torch.equal(loaded.offset, torch.full((3,), 2.5))
    inputs = tiny_inputs()
    assert torch.equal(logits(loaded, inputs), logits(model, inputs))


# ---------------------------------------------------------------------------
# (c) every format that loads today, (d) the errors
# ---------------------------------------------------------------------------


def _committed(folder, role):
    return folder / json.loads((folder / MPO_CONFIG_NAME).read_text())["files"][role]["file"]


def _as_version(folder, version: int) -> None:
    """Rewrite a format-3 folder as mpokit wrote formats 1 and 2: fixed file names, no committed file set."""
    meta = json.loads((folder / MPO_CONFIG_NAME).read_text())
    _committed(folder, WEIGHTS_NAME).rename(folder / WEIGHTS_NAME)
    _committed(folder, "config.json").unlink()
    meta["weights"] = dict(meta.pop("files")[WEIGHTS_NAME], file=WEIGHTS_NAME)
    meta["format_version"] = version
    if version == 1:
        for key in ("has_config", "model_module"):
            del meta[key]
        for entry in meta["modules"]:
            entry.pop("converter", None)
    (folder / MPO_CONFIG_NAME).write_text(json.dumps(meta))


@pytest.mark.parametrize("version", [1, 2, 3])
def test_every_format_loads_on_the_meta_path(version, tmp_path):
    model = compress(tiny_model("gpt2"), MPOConfig(ffn=CUT))
    save_pretrained(model, tmp_path)
    if version < 3:
        _as_version(tmp_path, version)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        loaded = from_pretrained(tmp_path)
    assert isinstance(loaded.lm_head, MPOTiedLinear) and loaded.transformer.h[0].mlp.c_fc.source_type == "Conv1D"
    _assert_same_as_legacy(loaded, _legacy(tmp_path))
    inputs = tiny_inputs()
    assert torch.equal(logits(loaded, inputs), logits(model, inputs))


def test_bad_arguments_are_refused_before_any_work(tmp_path):
    missing = tmp_path / "nothing_here"
    with pytest.raises(ValueError, match=r"max_memory='300MB' is the budget of an inference policy.*inference='auto'"):
        from_pretrained(missing, max_memory="300MB")
    with pytest.raises(TypeError, match=r"dtype must be a floating torch.dtype or None, got torch.int64"):
        from_pretrained(missing, dtype=torch.int64)
    with pytest.raises(TypeError, match=r"got 'float32'; e.g. dtype=torch.bfloat16"):
        from_pretrained(missing, dtype="float32")
    with pytest.raises(ValueError, match=r"device must be a torch.device or a device string, got 'gpu7'"):
        from_pretrained(missing, device="gpu7")
    with pytest.raises(CheckpointError, match="is not a folder"):
        from_pretrained(missing)


def test_a_weights_file_that_is_well_hashed_but_not_safetensors_is_named(tmp_path):
    model = compress(tiny_model("bert"), MPOConfig(ffn=CUT))
    save_pretrained(model, tmp_path)
    meta = json.loads((tmp_path / MPO_CONFIG_NAME).read_text())
    bad = b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}"
    _committed(tmp_path, WEIGHTS_NAME).write_bytes(bad)
    meta["files"][WEIGHTS_NAME].update(bytes=len(bad), sha256=__import__("hashlib").sha256(bad).hexdigest())
    (tmp_path / MPO_CONFIG_NAME).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"\.safetensors is not a readable safetensors file"):
        from_pretrained(tmp_path)


# ---------------------------------------------------------------------------
# inference= (mpokit.inference, written alongside)
# ---------------------------------------------------------------------------


def test_inference_policy_is_set_after_loading(tmp_path):
    inference = pytest.importorskip("mpokit.inference", reason="mpokit.inference (the inference policies) is not there yet")
    with pytest.raises(ValueError, match=r"inference must be one of .* got 'fastest'"):
        from_pretrained(tmp_path / "nothing_here", inference="fastest")
    model = compress(tiny_model("bert"), MPOConfig(attention=CUT, ffn=CUT))
    save_pretrained(model, tmp_path)
    loaded = from_pretrained(tmp_path, inference="stream")
    reference = _legacy(tmp_path)
    inference.set_inference_mode(reference, "stream")
    plan = str(inference.inference_plan(loaded))
    assert plan == str(inference.inference_plan(reference))
    assert {m.inference_mode for _, m in mpo_modules(loaded)} == {"stream"}
    inputs = tiny_inputs()
    torch.testing.assert_close(logits(loaded, inputs), logits(model, inputs), rtol=1e-5, atol=1e-6)
