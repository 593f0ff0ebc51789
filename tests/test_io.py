"""save_pretrained / from_pretrained: identical outputs for every architecture, safetensors + JSON only, format 1
still read, clear errors for broken checkpoints (models without a transformers config: test_converters.py)."""

import json
import os

import pytest
import torch

from _extra_models import tiny_mpnet
from _plm_models import ARCHS, logits, tiny_inputs, tiny_model
from mpokit.config import MPOConfig, MPOLayerConfig
from mpokit.io import FORMAT_VERSION, MPO_CONFIG_NAME, WEIGHTS_NAME, CheckpointError, from_pretrained, save_pretrained
from mpokit.surgery import MPOTiedLinear, compress, mpo_modules

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def saved_bert(tmp_path_factory):
    model = tiny_model("bert")
    cfg = MPOConfig(attention=MPOLayerConfig(max_bond=3), ffn=MPOLayerConfig(param_ratio=0.5), train_layernorm=False)
    compress(model, cfg)
    folder = tmp_path_factory.mktemp("bert_ckpt")
    save_pretrained(model, folder)
    return model, folder


def _committed(folder, role=WEIGHTS_NAME):
    """The file a checkpoint's manifest commits for ``role`` (``model.safetensors`` or ``config.json``)."""
    return folder / json.loads((folder / MPO_CONFIG_NAME).read_text())["files"][role]["file"]


def test_save_load_gives_identical_outputs_structure_and_flags(saved_bert):
    model, folder = saved_bert
    names = sorted(os.listdir(folder))  # no pickle, no temp files
    assert names == sorted([_committed(folder).name, _committed(folder, "config.json").name, MPO_CONFIG_NAME,
                            "config.json"]), names
    loaded = from_pretrained(folder)
    inputs = tiny_inputs()
    assert torch.equal(logits(loaded, inputs), logits(model, inputs))
    assert [(n, m.bond_dims, m.out_modes, m.in_modes) for n, m in mpo_modules(loaded)] == [
        (n, m.bond_dims, m.out_modes, m.in_modes) for n, m in mpo_modules(model)]
    assert {n for n, p in loaded.named_parameters() if p.requires_grad} == {
        n for n, p in model.named_parameters() if p.requires_grad}
    assert loaded.mpo_config == model.mpo_config
    assert not loaded.training


def test_tied_gpt2_round_trip_keeps_the_tie(tmp_path):
    model = compress(tiny_model("gpt2"), MPOConfig(ffn=MPOLayerConfig(max_bond=4)))
    save_pretrained(model, tmp_path)
    meta = json.loads((tmp_path / MPO_CONFIG_NAME).read_text())
    assert any(e["class"] == "MPOTiedLinear" for e in meta["modules"])
    loaded = from_pretrained(tmp_path)
    assert isinstance(loaded.lm_head, MPOTiedLinear) and loaded.lm_head.embedding is loaded.transformer.wte
    assert type(loaded.transformer.h[0].mlp.c_fc).__name__ == "MPOLinear"
    assert loaded.transformer.h[0].mlp.c_fc.source_type == "Conv1D"
    inputs = tiny_inputs()
    assert torch.equal(logits(loaded, inputs), logits(model, inputs))


def test_uncompressed_model_round_trip(tmp_path):
    model = tiny_model("distilbert")
    save_pretrained(model, tmp_path)
    inputs = tiny_inputs()
    assert torch.equal(logits(from_pretrained(tmp_path), inputs), logits(model, inputs))


def _copy(folder, tmp_path):
    dst = tmp_path / "ckpt"
    dst.mkdir()
    for name in os.listdir(folder):
        (dst / name).write_bytes((folder / name).read_bytes())
    return dst


def test_truncated_weights_raise_clear_error(saved_bert, tmp_path):
    folder = _copy(saved_bert[1], tmp_path)
    data = _committed(folder).read_bytes()
    _committed(folder).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.[0-9a-f]{12}\.safetensors is truncated"):
        from_pretrained(folder)


def test_corrupted_byte_raises_clear_error(saved_bert, tmp_path):
    folder = _copy(saved_bert[1], tmp_path)
    data = bytearray(_committed(folder).read_bytes())
    data[len(data) - 10] ^= 0x01  # one flipped bit inside a tensor
    _committed(folder).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"\.safetensors is corrupt: SHA-256"):
        from_pretrained(folder)


def test_corrupt_or_missing_description_raises(saved_bert, tmp_path):
    folder = _copy(saved_bert[1], tmp_path)
    (folder / MPO_CONFIG_NAME).write_text('{"format": "mpokit", "format_')
    with pytest.raises(CheckpointError, match="is corrupt \\(not valid JSON"):
        from_pretrained(folder)
    (folder / MPO_CONFIG_NAME).unlink()
    with pytest.raises(CheckpointError, match="is not an mpokit checkpoint"):
        from_pretrained(folder)


def test_the_config_is_covered_by_the_checksum(saved_bert, tmp_path):
    """Editing the committed config (e.g. hidden_act) is refused; the plain config.json copy is never read."""
    model, source = saved_bert
    folder = _copy(source, tmp_path)
    plain = json.loads((folder / "config.json").read_text())
    plain["hidden_act"] = "relu"
    (folder / "config.json").write_text(json.dumps(plain))
    inputs = tiny_inputs()
    assert torch.equal(logits(from_pretrained(folder), inputs), logits(model, inputs))
    committed = _committed(folder, "config.json")
    cfg = json.loads(committed.read_text())
    cfg["hidden_act"] = "relu"
    committed.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="corrupt or was changed"):
        from_pretrained(folder)


def test_a_weights_file_outside_the_folder_is_refused(saved_bert, tmp_path):
    folder = _copy(saved_bert[1], tmp_path)
    meta = json.loads((folder / MPO_CONFIG_NAME).read_text())
    meta["files"][WEIGHTS_NAME]["file"] = "../base/model.safetensors"
    (folder / MPO_CONFIG_NAME).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="lies outside"):
        from_pretrained(folder)


def test_mismatched_config_raises(saved_bert, tmp_path):
    folder = _copy(saved_bert[1], tmp_path)
    meta = json.loads((folder / MPO_CONFIG_NAME).read_text())
    committed = _committed(folder, "config.json")
    for change in ({"num_hidden_layers": 1}, {"num_hidden_layers": 2, "intermediate_size": 40}):
        cfg = json.loads(committed.read_text())
        cfg.update(change)  # weights of layer 1 have nowhere to go / FFN shapes differ from the saved cores
        data = json.dumps(cfg).encode()
        committed.write_bytes(data)
        meta["files"]["config.json"].update(bytes=len(data), sha256=__import__("hashlib").sha256(data).hexdigest())
        (folder / MPO_CONFIG_NAME).write_text(json.dumps(meta))
        with pytest.raises(CheckpointError, match="does not match|no such module|do not match the config"):
            from_pretrained(folder)


def test_save_is_atomic_overwrite(saved_bert, tmp_path):
    model, _ = saved_bert
    save_pretrained(model, tmp_path)
    from safetensors.torch import load_file

    first = load_file(str(_committed(tmp_path)))
    (tmp_path / ".model.123.safetensors.tmp").write_bytes(b"left by a killed save")
    with torch.no_grad():
        changed = compress(tiny_model("bert", seed=4), MPOConfig(attention=MPOLayerConfig(max_bond=3),
                                                                ffn=MPOLayerConfig(param_ratio=0.5)))
    save_pretrained(changed, tmp_path)  # a new commit replaces the old set
    second = load_file(str(_committed(tmp_path)))
    assert first.keys() == second.keys() and not all(torch.equal(first[k], second[k]) for k in first)
    inputs = tiny_inputs()
    assert torch.equal(logits(from_pretrained(tmp_path), inputs), logits(changed, inputs))
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    assert len([n for n in os.listdir(tmp_path) if n.endswith(".safetensors")]) == 1  # the old weights are gone
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        save_pretrained({"weight": torch.zeros(2)}, tmp_path)


@pytest.mark.parametrize("arch", ARCHS + ("mpnet",))
def test_every_architecture_round_trips(arch, tmp_path):
    model = tiny_mpnet() if arch == "mpnet" else tiny_model(arch)
    compress(model, MPOConfig(ffn=MPOLayerConfig(max_bond=3)))
    save_pretrained(model, tmp_path)
    meta = json.loads((tmp_path / MPO_CONFIG_NAME).read_text())
    assert meta["format_version"] == FORMAT_VERSION == 3 and meta["has_config"] is True
    assert all("converter" in e for e in meta["modules"] if e["class"] != "MPOTiedLinear")
    loaded = from_pretrained(tmp_path)
    inputs = tiny_inputs()
    assert torch.equal(logits(loaded, inputs), logits(model, inputs))
    assert [(n, m.bond_dims) for n, m in mpo_modules(loaded)] == [(n, m.bond_dims) for n, m in mpo_modules(model)]


def test_a_version_1_checkpoint_still_loads(tmp_path):
    model = compress(tiny_model("gpt2"), MPOConfig(ffn=MPOLayerConfig(max_bond=4)))
    save_pretrained(model, tmp_path)
    meta = json.loads((tmp_path / MPO_CONFIG_NAME).read_text())
    # what mpokit wrote before format 2: fixed file names, no converter names, no has_config / model_module
    _committed(tmp_path).rename(tmp_path / WEIGHTS_NAME)
    _committed(tmp_path, "config.json").unlink()
    meta["weights"] = dict(meta.pop("files")[WEIGHTS_NAME], file=WEIGHTS_NAME)
    meta["format_version"] = 1
    for key in ("has_config", "model_module"):
        del meta[key]
    for entry in meta["modules"]:
        entry.pop("converter", None)
    (tmp_path / MPO_CONFIG_NAME).write_text(json.dumps(meta))
    loaded = from_pretrained(tmp_path)
    assert loaded.transformer.h[0].mlp.c_fc.source_type == "Conv1D" and isinstance(loaded.lm_head, MPOTiedLinear)
    inputs = tiny_inputs()
    assert torch.equal(logits(loaded, inputs), logits(model, inputs))
    meta["format_version"] = 99
    (tmp_path / MPO_CONFIG_NAME).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"format_version 99; this mpokit reads versions \(1, 2, 3\)"):
        from_pretrained(tmp_path)


def test_an_unknown_converter_in_a_checkpoint_is_named(saved_bert, tmp_path):
    folder = _copy(saved_bert[1], tmp_path)
    meta = json.loads((folder / MPO_CONFIG_NAME).read_text())
    meta["modules"][0]["converter"] = "Conv3d"
    (folder / MPO_CONFIG_NAME).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"was converted by 'Conv3d', which is not a registered converter"):
        from_pretrained(folder)
