"""scripts/lstm_training_variants.py: each variant builds the LSTM it documents."""

import importlib.util
import pathlib

import pytest
import torch

from mpokit.recipes.lstm_classification import config_from_preset

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "scripts" / "lstm_training_variants.py"


@pytest.fixture(scope="module")
def variants():
    spec = importlib.util.spec_from_file_location("lstm_training_variants", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_each_init_builds_the_documented_mpo(variants):
    cfg = config_from_preset("tiny")  # embed / hidden 64
    torch.manual_seed(0)
    lstm, record, final = variants.build(variants.parse_args(["--rate", "10"]), cfg)
    assert final is None and lstm.num_weight_params() == record.budget

    lstm, _, final = variants.build(variants.parse_args(["--rate", "10", "--n-cores", "3"]), cfg)
    assert all(len(m.cores) == 3 for m in lstm.mpo_modules()) and abs(lstm.compression_rate - 10) / 10 < 0.1

    lstm, _, final = variants.build(variants.parse_args(["--rate", "10", "--modes", "4,4,4"]), cfg)
    assert lstm.hidden_modes == (4, 4, 4) and all(m.in_modes == (4, 4, 4) for m in lstm.mpo_modules())
    assert abs(lstm.compression_rate - 10) / 10 < 0.1

    lstm, _, _ = variants.build(variants.parse_args(["--rate-ih", "12", "--rate-hh", "4"]), cfg)
    w, u = (m.dense_params / m.num_mpo_params for _, m in lstm.weight_modules())
    assert abs(w - 12) / 12 < 0.2 and abs(u - 4) / 4 < 0.2, (w, u)

    lstm, _, final = variants.build(variants.parse_args(["--rate", "10", "--init", "gradual"]), cfg)
    assert lstm.compression_rate < 1  # starts from the exact, full-bond MPO ...
    assert set(final) == {"weight_ih_l0", "weight_hh_l0"} and all(len(b) == 3 for b in final.values())  # ... cut to these

    torch.manual_seed(1)
    lstm, _, _ = variants.build(variants.parse_args(["--rate", "10", "--init", "spectral_rescaled"]), cfg)
    torch.manual_seed(1)
    variants.build_lstm("mpo", 64, 64, 1, 10, batch_first=True)  # the same RNG draws as inside build()
    dense = torch.nn.LSTM(64, 64, batch_first=True)
    for name, module in lstm.weight_modules():
        assert torch.allclose(module.rebuild_weight().norm(), getattr(dense, name).norm(), rtol=1e-4)


def test_learning_rate_schedules(variants):
    warm = variants.parse_args(["--warmup", "0.1"])
    assert variants.lr_factor(warm, 0, 100) == pytest.approx(0.1) and variants.lr_factor(warm, 50, 100) == 1.0
    linear = variants.parse_args(["--decay", "linear"])
    assert variants.lr_factor(linear, 0, 100) == 1.0 and variants.lr_factor(linear, 75, 100) == pytest.approx(0.25)
    cosine = variants.parse_args(["--decay", "cosine"])
    assert variants.lr_factor(cosine, 50, 100) == pytest.approx(0.5)
