"""MPOConfig: validation with teaching errors, JSON round trip, versioning, MPO options per kind."""

import json

import pytest

from mpokit.config import CONFIG_VERSION, MPOConfig, MPOLayerConfig


def test_json_round_trip_default_and_custom():
    for cfg in (
        MPOConfig(),
        MPOConfig(
            target_modules=["query", "value"], target_regex=r".*layer\.\d+\..*", target_types=["Linear"],
            exclude_modules=["classifier"], model_type="bert",
            embedding=None, attention=MPOLayerConfig(max_bond=16, out_modes=(3, 4, 4, 4, 4), in_modes=(4, 4, 4, 4, 3)),
            ffn=MPOLayerConfig(param_ratio=0.5, gauge="center"), other=MPOLayerConfig(rel_error=0.1, n_cores=3),
            tied_embeddings="untie", trainable="central", train_biases=False, train_head=False,
        ),
    ):
        text = cfg.to_json()
        back = MPOConfig.from_json(text)
        assert back == cfg
        assert json.loads(text)["version"] == CONFIG_VERSION
        assert back.to_json() == text


def test_dict_kind_settings_become_layer_configs():
    cfg = MPOConfig(attention={"max_bond": 8, "out_modes": [2, 2]}, ffn=None)
    assert cfg.attention == MPOLayerConfig(max_bond=8, out_modes=(2, 2))
    assert cfg.ffn is None


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"trainable": "aux"}, "trainable must be one of"),
        ({"target_types": ["Conv2d"]}, "not supported"),
        ({"target_types": []}, "at least one"),
        ({"target_regex": "("}, "not a valid regular expression"),
        ({"tied_embeddings": "share"}, "tied_embeddings"),
        ({"attention": {"max_bond": 0}}, "max_bond must be"),
        ({"attention": {"max_bond": 4, "rel_error": 0.1}}, "at most one truncation criterion"),
        ({"ffn": {"param_ratio": 1.5}}, "param_ratio must be in (0, 1]"),
        ({"ffn": {"rel_error": 1.0}}, "rel_error must be"),
        ({"ffn": {"gauge": "left"}}, "gauge must be one of"),
        ({"ffn": {"out_modes": (2, 2), "in_modes": (2, 2, 2)}}, "same length"),
        ({"ffn": {"bond": 3}}, "unknown MPOLayerConfig fields"),
        ({"train_head": "yes"}, "train_head must be True or False"),
        ({"target_modules": [""]}, "non-empty strings"),
        ({"version": 99}, "version 99 is not supported"),
    ],
)
def test_bad_values_raise_teaching_errors(kwargs, fragment):
    with pytest.raises((ValueError, TypeError)) as info:
        MPOConfig(**kwargs)
    assert fragment in str(info.value)


def test_from_json_rejects_unknown_fields_missing_version_and_garbage():
    data = MPOConfig().to_dict()
    with pytest.raises(ValueError, match="unknown MPOConfig fields"):
        MPOConfig.from_dict({**data, "rank": 3})
    del data["version"]
    with pytest.raises(ValueError, match="no 'version'"):
        MPOConfig.from_dict(data)
    with pytest.raises(ValueError, match="not valid JSON"):
        MPOConfig.from_json("{not json")


def test_mpo_options_per_criterion():
    assert MPOLayerConfig().mpo_options(100) == {"gauge": "symmetric", "n_cores": 5}
    assert MPOLayerConfig(max_bond=7).mpo_options(100)["max_bond"] == 7
    assert MPOLayerConfig(param_ratio=0.25).mpo_options(1000)["max_params"] == 250
    opts = MPOLayerConfig(out_modes=(2, 3), in_modes=(4, 5), rel_error=0.1).mpo_options(1)
    assert opts["out_modes"] == (2, 3) and opts["in_modes"] == (4, 5) and opts["rel_error"] == 0.1
    assert "n_cores" not in opts
    assert MPOLayerConfig().is_exact and not MPOLayerConfig(max_bond=2).is_exact


def test_uses_defaults_only_without_explicit_targets():
    assert MPOConfig().uses_defaults
    assert not MPOConfig(target_modules="query").uses_defaults
    assert not MPOConfig(target_regex=".*").uses_defaults
    assert not MPOConfig(target_modules="all-linear").uses_defaults


def test_a_target_modules_string_stays_one_regex_and_round_trips():
    for value in (r".*\.(q|v)_proj", "query", "all-linear"):
        cfg = MPOConfig(target_modules=value)
        assert cfg.target_modules == value  # never split into characters or wrapped into a list
        back = MPOConfig.from_json(cfg.to_json())
        assert back == cfg and back.target_modules == value
    assert MPOConfig(target_modules=("query", "value")).target_modules == ["query", "value"]
    with pytest.raises(ValueError, match=r"target_modules '\(' is not a valid regular expression"):
        MPOConfig(target_modules="(")
    with pytest.raises(ValueError, match="must not be an empty string"):
        MPOConfig(target_modules="")


def test_target_types_default_to_the_registered_converters():
    from mpokit.converters import converter_names

    assert MPOConfig().target_types == converter_names()
    assert {"Linear", "Conv1D", "Embedding", "LSTM"} <= set(converter_names())
    with pytest.raises(ValueError, match=r"target_types \['Conv2d'\] are not supported; choose from \['Linear'"):
        MPOConfig(target_types=["Conv2d"])


@pytest.mark.parametrize(
    "field, value, fragment",
    [
        ("trainable", "foo", "trainable must be one of"),
        ("target_modules", [3], "target_modules must be a list of non-empty strings"),
        ("target_regex", "(", "not a valid regular expression"),
        ("target_types", ["Conv2d"], "not supported"),
        ("attention", {"max_bond": 2}, "attention must be an MPOLayerConfig or None, got dict"),
        ("train_head", 1, "train_head must be True or False"),
    ],
)
def test_validate_catches_fields_changed_after_construction(field, value, fragment):
    cfg = MPOConfig()
    setattr(cfg, field, value)
    with pytest.raises((ValueError, TypeError)) as info:
        cfg.validate()
    assert fragment in str(info.value)


def test_layer_config_validate_catches_changes_after_construction():
    layer = MPOLayerConfig(max_bond=4)
    layer.rel_error = 0.1
    with pytest.raises(ValueError, match="at most one truncation criterion"):
        layer.validate()
    cfg = MPOConfig(ffn=MPOLayerConfig())
    cfg.ffn.param_ratio = 2.0
    with pytest.raises(ValueError, match=r"param_ratio must be in \(0, 1\]"):
        cfg.validate()
