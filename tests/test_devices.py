"""The MPO layers on every available device: the CPU always, a CUDA device when there is one.

Each test compares against the dense PyTorch layer on the same device at full bonds (float32), so the
same file checks the GPU code paths (cuBLAS, cuDNN's fused LSTM, CUDA autocast) when CI-less GPU runs
execute it: ``pytest tests/test_devices.py`` (see ``benchmarks/gpu_checks.sh``).
"""

import math

import pytest
import torch
from torch import nn

from mpokit.layers import MPOEmbedding, MPOLinear
from mpokit.layers.lstm import MPOLSTM

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
F32_TOL = 1e-5


def _close(actual: torch.Tensor, expected: torch.Tensor, tol: float = F32_TOL) -> bool:
    return float((actual - expected).detach().norm() / expected.detach().norm()) <= tol


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("path", ["rebuild", "contract", "auto"])
def test_linear_matches_dense_with_gradients(device, path):
    torch.manual_seed(0)
    dense = nn.Linear(48, 40, device=device)
    layer = MPOLinear.from_linear(dense, n_cores=3, path=path)
    assert layer.cores[0].device.type == device
    x = torch.randn(4, 33, 48, device=device, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    y, y_ref = layer(x), dense(x_ref)
    assert _close(y, y_ref)
    y.square().sum().backward()
    y_ref.square().sum().backward()
    assert _close(x.grad, x_ref.grad)
    assert all(c.grad is not None and torch.isfinite(c.grad).all() for c in layer.cores)


@pytest.mark.parametrize("device", DEVICES)
def test_eval_cache_is_invalidated_by_an_optimizer_step(device):
    torch.manual_seed(0)
    layer = MPOLinear.from_linear(nn.Linear(32, 24, device=device), n_cores=2).eval()
    x = torch.randn(5, 32, device=device)
    with torch.no_grad():
        before = layer(x)
    layer.train()
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    layer(x).sum().backward()
    opt.step()
    layer.eval()
    with torch.no_grad():
        after = layer(x)
        expected = nn.functional.linear(x, layer.weight, layer.bias)
    assert not torch.allclose(before, after) and _close(after, expected)


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_autocast_runs_and_is_close(device):
    torch.manual_seed(0)
    dense = nn.Linear(64, 64, device=device)
    layer = MPOLinear.from_linear(dense, n_cores=2)
    x = torch.randn(16, 64, device=device)
    with torch.autocast(device_type=device, dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16 and _close(y.float(), dense(x), tol=3e-2)


@pytest.mark.parametrize("device", DEVICES)
def test_embedding_matches_dense_with_padding(device):
    torch.manual_seed(0)
    dense = nn.Embedding(50, 24, padding_idx=0, device=device)
    layer = MPOEmbedding.from_embedding(dense, n_cores=2)
    ids = torch.randint(0, 50, (7, 9), device=device)
    ids[0, :3] = 0
    assert _close(layer(ids), dense(ids))
    layer(ids).sum().backward()
    assert all(c.grad is not None for c in layer.cores)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("execution", ["fused", "stepwise"])
def test_lstm_matches_dense_with_gradients(device, execution):
    torch.manual_seed(0)
    dense = nn.LSTM(16, 16, num_layers=2, batch_first=True, bidirectional=True, device=device)
    mpo = MPOLSTM.from_lstm(dense).set_execution(execution)
    x = torch.randn(3, 7, 16, device=device)
    h0 = torch.randn(4, 3, 16, device=device), torch.randn(4, 3, 16, device=device)
    (y, (h, c)), (y_ref, (h_ref, c_ref)) = mpo(x, h0), dense(x, h0)
    assert _close(y, y_ref) and _close(h, h_ref) and _close(c, c_ref)
    y.square().mean().backward()
    grads = [core.grad for _, module in mpo.weight_modules() for core in module.cores]
    assert all(g is not None and g.device.type == device and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("task", ["classify", "lm"])
def test_lstm_experiment_trains_every_method_on_the_device(device, task, tmp_path):
    """The tiny preset of both LSTM experiments, all four methods, on ``device``: every run ends at
    its budget (masks / bonds on the device) and the report names the device."""
    from mpokit.recipes import lstm_classification, lstm_lm
    from mpokit.recipes.lstm_report import read_runs

    module = lstm_classification if task == "classify" else lstm_lm
    cfg = module.config_from_preset("tiny", methods=("dense", "mpo", "pruning", "mpo_gradual"))
    run = module.run_classification if task == "classify" else module.run_language_model
    run(cfg, tmp_path, progress=False, device=device)
    rows = {r["method"]: r for r in read_runs(tmp_path / "runs.csv")}
    assert rows["mpo"]["lstm_weights"] == rows["pruning"]["lstm_weights"] == rows["mpo_gradual"]["lstm_weights"]
    assert all(math.isfinite(r["metric_test"]) for r in rows.values())
    assert f"device {device}" in (tmp_path / "results.md").read_text()


def test_lstm_experiment_rejects_unknown_devices(tmp_path):
    from mpokit.recipes.lstm_classification import PRESETS, run_classification

    bad = ["tpu", "meta"] + ([] if torch.cuda.is_available() else ["cuda"])
    for device in bad:
        with pytest.raises(ValueError, match="device"):
            run_classification(PRESETS["tiny"], tmp_path / device, progress=False, device=device)
        assert not (tmp_path / device).exists(), "nothing is written for a bad device"
