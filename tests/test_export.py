"""Export of MPO models (issue 19, part 4): torch.export, ONNX through the dynamo exporter, checked with onnxruntime.

Tiny random models: a BERT classifier (encoder, MPO embedding, MPO Linears) and a Llama causal LM whose head is
tied to its MPO embedding (MPOTiedLinear), compressed with small bonds so that every MPO holds fewer
parameters than its dense matrix. The references are the models themselves in PyTorch.
"""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch

import mpokit
from mpokit import cli
from mpokit.export import (
    ExportDependencyError,
    OnnxMismatchError,
    check_onnx,
    export_onnx,
    export_program,
    graph_modules,
    onnx_sizes,
)
from mpokit.layers import MPOEmbedding, MPOLinear
from mpokit.layers.base import MPOModule
from mpokit.surgery import MPOTiedLinear

from _plm_models import tiny_config, tiny_inputs

RTOL = 1e-4
HAS_ONNX = all(importlib.util.find_spec(p) is not None for p in ("onnx", "onnxscript", "onnxruntime"))
needs_onnx = pytest.mark.skipif(not HAS_ONNX, reason="needs onnx, onnxscript and onnxruntime (the export extra)")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _compressed_bert():
    import transformers as T

    torch.manual_seed(0)
    cfg = tiny_config("bert")
    cfg.num_hidden_layers, cfg.num_labels = 1, 2  # one layer: the export's time grows with the graph
    model = T.BertForSequenceClassification(cfg).eval()
    layer = mpokit.MPOLayerConfig(max_bond=3)
    return mpokit.compress(model, mpokit.MPOConfig(attention=layer, ffn=layer, other=layer, embedding=layer))


def _compressed_tied_llama():
    import transformers as T

    torch.manual_seed(0)
    cfg = tiny_config("llama")
    cfg.tie_word_embeddings, cfg.num_hidden_layers = True, 1
    model = T.LlamaForCausalLM(cfg).eval()
    layer = mpokit.MPOLayerConfig(max_bond=3)
    return mpokit.compress(model, mpokit.MPOConfig(attention=layer, ffn=layer, other=layer, embedding=layer,
                                                   tied_embeddings="tie"))


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    model = _compressed_bert()
    path = export_onnx(model, tmp_path_factory.mktemp("bert") / "bert.onnx", tiny_inputs(batch=2, length=9))
    return model, path


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    model = _compressed_tied_llama()
    path = export_onnx(model, tmp_path_factory.mktemp("llama") / "llama.onnx", tiny_inputs(batch=2, length=9))
    return model, path


def _compressed_shapes(model) -> set[tuple[int, int]]:
    shapes = set()
    for m in model.modules():
        if isinstance(m, MPOModule):
            assert m.num_mpo_params < m.dense_params, (type(m).__name__, m.bond_dims)  # the fixture compresses
            shapes |= {tuple(m.shape), tuple(m.shape)[::-1], tuple(m.padded_shape), tuple(m.padded_shape)[::-1]}
    return shapes


def _initializers(path):
    import onnx
    from onnx import numpy_helper

    return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}


@needs_onnx
@pytest.mark.parametrize("which", ["bert", "llama"])
def test_onnxruntime_gives_the_models_outputs_at_the_example_and_other_shapes(which, bert, llama):
    model, path = {"bert": bert, "llama": llama}[which]
    for batch, length in ((2, 9), (5, 13), (1, 4)):  # the example's shape, then other batch and sequence sizes
        inputs = tiny_inputs(seed=batch, batch=batch, length=length)
        diff = check_onnx(path, model, inputs, rtol=RTOL)
        assert diff <= RTOL, (batch, length, diff)


@needs_onnx
@pytest.mark.parametrize("which", ["bert", "llama"])
def test_the_file_holds_the_cores_and_no_dense_compressed_matrix(which, bert, llama):
    model, path = {"bert": bert, "llama": llama}[which]
    inits = _initializers(path)
    names = {id(p): n for n, p in model.named_parameters()}
    cores = {id(p): p for m in model.modules() if isinstance(m, MPOModule) for p in m.core_list()}
    stored = {}
    for name, value in inits.items():
        stored.setdefault(tuple(value.shape), []).append((name, value))
    for key, core in cores.items():  # every core is an initializer with its values (the tied head's once)
        hits = [n for n, v in stored.get(tuple(core.shape), []) if n.removeprefix("model.") == names[key]
                or torch.equal(torch.from_numpy(v.copy()), core.detach())]
        assert hits, f"core {names[key]} {tuple(core.shape)} is not an initializer"
    compressed = _compressed_shapes(model)
    dense = {n for n, p in model.named_parameters() if id(p) not in cores}
    for name, value in inits.items():
        if value.ndim == 2 and tuple(value.shape) in compressed:
            assert name.removeprefix("model.") in dense, f"{name} {value.shape}: a compressed matrix stored dense"
    core_bytes = sum(p.numel() * p.element_size() for p in cores.values())
    other_bytes = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if id(p) not in cores)
    total = sum(v.nbytes for v in inits.values())
    assert total <= core_bytes + other_bytes + 4096, (total, core_bytes, other_bytes)
    sizes = onnx_sizes(path, model)
    assert sizes["cores"] == core_bytes and sizes["initializers"] == total
    import onnx

    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "Einsum" in ops or "MatMul" in ops  # the core contractions are in the graph


def test_export_program_has_dynamic_batch_and_sequence_and_restores_the_model():
    model = _compressed_bert()
    before = [(n, type(m)) for n, m in model.named_modules()]
    program = export_program(model, tiny_inputs(batch=2, length=9))
    assert [(n, type(m)) for n, m in model.named_modules()] == before  # the MPO layers are back
    assert isinstance(model.bert.encoder.layer[0].attention.self.query, MPOLinear)
    assert isinstance(model.bert.pooler.dense, MPOLinear)
    assert isinstance(model.bert.embeddings.word_embeddings, MPOEmbedding)
    inputs = tiny_inputs(seed=4, batch=4, length=11)
    with torch.no_grad():
        want = model(**inputs).logits
    got = program.module()(inputs["input_ids"], inputs["attention_mask"])
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6), (got - want).abs().max()
    # the program's parameters are the model's Parameters themselves, the cores among them
    ids = {id(p) for p in model.parameters()}
    assert all(id(t) in ids for t in program.state_dict.values())


class _PaddedStack(torch.nn.Module):
    """ids (B, T) -> (B, T, 7): an MPOEmbedding with padded rows and a padding_idx, then MPOLinears with padded
    modes, one pinned to contraction and one to the rebuild."""

    def __init__(self) -> None:
        super().__init__()
        kw = dict(bond_dim=3, dtype=torch.float64)
        self.emb = MPOEmbedding(50, 23, padding_idx=0, out_modes=(7, 8), in_modes=(4, 6), **kw)  # 56 x 24 padded
        self.a = MPOLinear(23, 29, out_modes=(5, 6), in_modes=(4, 6), path="contract", **kw)  # 30 x 24 padded
        self.b = MPOLinear(29, 7, out_modes=(2, 2, 2), in_modes=(2, 3, 5), path="rebuild", **kw)  # 8 x 30 padded

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(self.emb(ids))))


def test_graph_modules_compute_the_layers_functions_with_padding_and_contraction():
    torch.manual_seed(0)
    model = _PaddedStack().eval()
    program = export_program(model, torch.randint(0, 50, (3, 5)))
    for shape in ((3, 5), (6, 2), (1, 9)):
        ids = torch.randint(0, 50, shape)
        ids[0, 0] = 0  # the padding id: a zero row
        with torch.no_grad():
            want = model(ids)
        got = program.module()(ids)
        assert torch.allclose(got, want, rtol=1e-12, atol=1e-12), (shape, (got - want).abs().max())
    with graph_modules(model, {id(model.a): 15}):
        assert model.a.plan.path == "contract" and model.b.plan.path == "rebuild"  # as pinned
        assert type(model.emb).__name__ == "EmbeddingGraph"


def test_graph_modules_restore_the_model_when_the_block_fails():
    model = _compressed_tied_llama()
    before = [(n, type(m)) for n, m in model.named_modules()]
    with pytest.raises(RuntimeError, match="inside"):
        with graph_modules(model):
            assert not any(isinstance(m, (MPOLinear, MPOEmbedding, MPOTiedLinear)) for m in model.modules())
            raise RuntimeError("inside the block")
    assert [(n, type(m)) for n, m in model.named_modules()] == before
    assert isinstance(model.lm_head, MPOTiedLinear) and model.lm_head.embedding is model.model.embed_tokens


@needs_onnx
def test_a_changed_model_fails_the_check(bert):
    model, path = bert
    core = model.bert.encoder.layer[0].output.dense.cores[0]
    with torch.no_grad():
        core.mul_(1.5)
    try:
        with pytest.raises(OnnxMismatchError, match="relative"):
            check_onnx(path, model, tiny_inputs(), rtol=RTOL)
    finally:
        with torch.no_grad():
            core.div_(1.5)
    assert check_onnx(path, model, tiny_inputs(), rtol=RTOL) <= RTOL


@needs_onnx
def test_merged_export_is_dense_and_gives_the_same_outputs(tmp_path):
    model = _compressed_bert()
    path = export_onnx(model, tmp_path / "dense.onnx", tiny_inputs(batch=2, length=9), merged=True)
    assert isinstance(model.bert.encoder.layer[0].output.dense, MPOLinear)  # the model itself stays MPO
    inits = _initializers(path)
    assert not any(".cores." in n for n in inits)
    shapes = {tuple(v.shape) for v in inits.values()}
    assert (97, 24) in shapes and ((36, 24) in shapes or (24, 36) in shapes)  # dense embedding and FFN matrices
    assert check_onnx(path, model, tiny_inputs(seed=7, batch=3, length=12), rtol=RTOL) <= RTOL


def test_a_dynamic_export_needs_example_sizes_of_two():
    model = _compressed_bert()
    with pytest.raises(ValueError, match="sizes >= 2"):
        export_program(model, tiny_inputs(batch=1, length=9))
    with pytest.raises(TypeError, match="example_inputs"):
        export_program(model, [1, 2, 3])


# ---------------------------------------------------------------------------
# the command
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt") / "tiny-bert-mpo"
    model = _compressed_bert()
    mpokit.save_pretrained(model, folder)
    return folder, model


@needs_onnx
def test_cli_exports_a_checkpoint_end_to_end(checkpoint, tmp_path, capsys):
    folder, model = checkpoint
    out = tmp_path / "sub" / "model.onnx"
    rc = cli.main(["export", "--model", str(folder), "--out", str(out), "--batch-size", "3", "--seq-len", "7"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert out.is_file() and "MPO model" in printed and "onnxruntime check (second shape 4 x 10)" in printed
    loaded = mpokit.from_pretrained(folder)
    assert check_onnx(out, loaded, tiny_inputs(seed=9, batch=6, length=5), rtol=RTOL) <= RTOL
    sizes = onnx_sizes(out, loaded)
    checkpoint_bytes = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    assert sizes["initializers"] <= checkpoint_bytes  # the file is about as small as the checkpoint


def test_cli_help_lists_every_option(capsys):
    with pytest.raises(SystemExit):
        cli.main(["export", "--help"])
    text = capsys.readouterr().out
    for option in ("--model", "--out", "--merged", "--batch-size", "--seq-len", "--no-check", "--rtol", "--threads"):
        assert option in text, option


@needs_onnx
@pytest.mark.parametrize("argv, message", [
    (["--model", "{empty}", "--out", "{tmp}/m.onnx"], "no model found"),
    (["--model", "{tmp}/nowhere", "--out", "{tmp}/m.onnx"], "does not exist"),
    (["--model", "{ckpt}", "--out", "{tmp}/m.txt"], "must name an .onnx file"),
    (["--model", "{ckpt}", "--out", "{tmp}"], "must name an .onnx file"),
    (["--model", "{ckpt}", "--out", "{tmp}/d.onnx"], "is a folder"),
    (["--model", "{ckpt}", "--out", "{tmp}/afile/m.onnx"], "cannot be written"),
    (["--model", "{ckpt}", "--out", "{tmp}/m.onnx", "--seq-len", "99"], "more than the model's 32 positions"),
    (["--model", "{ckpt}", "--out", "{tmp}/m.onnx", "--rtol", "0"], "--rtol must be"),
])
def test_cli_bad_input_fails_before_any_work(argv, message, checkpoint, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "d.onnx").mkdir()
    (tmp_path / "afile").write_text("x")
    fill = {"empty": str(tmp_path / "empty"), "tmp": str(tmp_path), "ckpt": str(checkpoint[0])}
    rc = cli.main(["export"] + [a.format(**fill) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2 and message in err, err
    assert not (tmp_path / "m.onnx").exists()


def test_cli_batch_size_one_is_refused_by_the_parser(checkpoint, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["export", "--model", str(checkpoint[0]), "--out", str(tmp_path / "m.onnx"), "--batch-size", "1"])
    assert info.value.code == 2 and "expected an int >= 2" in capsys.readouterr().err


@pytest.mark.parametrize("package", ["onnx", "onnxruntime"])
def test_a_missing_export_package_is_named_with_the_pip_command(package, checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, package, None)  # `import package` now raises ImportError
    with pytest.raises(ExportDependencyError, match=package):
        mpokit.export.require_export_dependencies()
    rc = cli.main(["export", "--model", str(checkpoint[0]), "--out", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err
    assert rc == 2 and package in err and "pip install" in err, err
    assert not (tmp_path / "m.onnx").exists()


@needs_cuda
def test_export_on_cuda_gives_the_models_outputs(tmp_path):
    model = _compressed_bert().cuda()
    example = {k: v.cuda() for k, v in tiny_inputs(batch=2, length=9).items()}
    program = export_program(model, example)
    other = {k: v.cuda() for k, v in tiny_inputs(seed=4, batch=4, length=11).items()}
    with torch.no_grad():
        want = model(**other).logits
    got = program.module()(other["input_ids"], other["attention_mask"])
    assert got.device.type == "cuda"
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-5), (got - want).abs().max()
    if HAS_ONNX:  # the file written from a CUDA model runs in onnxruntime on the CPU
        path = export_onnx(model, tmp_path / "cuda.onnx", example)
        assert check_onnx(path, model, other, rtol=RTOL) <= RTOL
