"""The training core: the one atomic writer and file-set commits, the training state (round trip, resume equals
an unbroken run, verified loading), seeding and the optimizer's checks. Kills during saves: test_checkpoint_kills.py."""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest
import torch
from torch import nn

from mpokit.atomic import FileSetError, atomic_write_text, check_output_dir, commit_file_set, read_file_set
from mpokit.training import (TrainingStateError, build_optimizer, check_rates, linear_warmup_decay,
                             load_training_state, read_training_state, save_training_state, set_seed, train_steps)


def test_file_set_round_trip_replaces_old_blobs_and_cleans_temporaries(tmp_path):
    commit_file_set(tmp_path, "m.json", {"a.bin": b"one", "b.bin": b"two"}, {"step": 1})
    (tmp_path / ".a.bin.xyz.tmp").write_bytes(b"left by a kill")
    commit_file_set(tmp_path, "m.json", {"a.bin": b"three", "b.bin": b"two"}, {"step": 2})
    manifest, blobs = read_file_set(tmp_path, "m.json")
    assert manifest["step"] == 2 and blobs == {"a.bin": b"three", "b.bin": b"two"}
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(["m.json", manifest["files"]["a.bin"]["file"], manifest["files"]["b.bin"]["file"]]), names


def test_file_set_refuses_corrupt_missing_and_outside_blobs(tmp_path):
    manifest = commit_file_set(tmp_path, "m.json", {"a.bin": b"payload"}, {})
    blob = tmp_path / manifest["files"]["a.bin"]["file"]
    blob.write_bytes(b"paylaod")
    with pytest.raises(FileSetError, match="corrupt or was replaced"):
        read_file_set(tmp_path, "m.json")
    blob.unlink()
    with pytest.raises(FileSetError, match="is missing"):
        read_file_set(tmp_path, "m.json")
    manifest["files"]["a.bin"]["file"] = "../elsewhere.bin"
    (tmp_path / "m.json").write_text(json.dumps(manifest))
    with pytest.raises(FileSetError, match="outside"):
        read_file_set(tmp_path, "m.json")
    with pytest.raises(FileSetError, match="not found"):
        read_file_set(tmp_path / "none", "m.json")


def test_atomic_writes_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "r.json", "{}")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_check_output_dir_refuses_a_file_in_the_way(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        check_output_dir(tmp_path / "f")
    with pytest.raises(ValueError, match="lies under the file"):
        check_output_dir(tmp_path / "f" / "run")
    assert check_output_dir(tmp_path / "new" / "run") == tmp_path / "new" / "run"
    assert not (tmp_path / "new").exists()


def _model_and_batches(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 8), nn.Dropout(0.2), nn.ReLU(), nn.Linear(8, 3))
    data = torch.utils.data.TensorDataset(torch.randn(40, 6), torch.randint(0, 3, (40,)))
    return model, data


def _run(model, data, epochs, *, gen, optimizer, scheduler, start=0):
    losses = []
    loader = torch.utils.data.DataLoader(data, batch_size=8, shuffle=True, generator=gen)
    for _ in range(start, epochs):
        losses.append(train_steps(model, loader, optimizer, scheduler=scheduler, max_steps=3)["loss"])
    return losses


def test_resumed_training_equals_the_unbroken_run_bit_for_bit(tmp_path):
    model, data = _model_and_batches()
    gen = torch.Generator().manual_seed(1)
    opt = build_optimizer(model, lr=1e-2)
    sched = linear_warmup_decay(opt, 12, 2)
    straight = _run(model, data, 4, gen=gen, optimizer=opt, scheduler=sched)
    final = {k: v.clone() for k, v in model.state_dict().items()}

    model, data = _model_and_batches()
    gen = torch.Generator().manual_seed(1)
    opt = build_optimizer(model, lr=1e-2)
    sched = linear_warmup_decay(opt, 12, 2)
    first = _run(model, data, 2, gen=gen, optimizer=opt, scheduler=sched)
    save_training_state(tmp_path, model, optimizer=opt, scheduler=sched, generators={"shuffle": gen},
                        state={"epoch": 1})
    torch.manual_seed(123)  # the process goes on drawing numbers: the state must bring them back
    random.seed(5)
    np.random.seed(5)

    model2, _ = _model_and_batches(seed=99)  # other weights: everything comes from the state
    gen2 = torch.Generator().manual_seed(77)
    opt2 = build_optimizer(model2, lr=1e-2)
    sched2 = linear_warmup_decay(opt2, 12, 2)
    assert load_training_state(tmp_path, model2, optimizer=opt2, scheduler=sched2, generators={"shuffle": gen2}) == {"epoch": 1}
    rest = _run(model2, data, 4, gen=gen2, optimizer=opt2, scheduler=sched2, start=2)
    assert first + rest == straight
    for k, v in model2.state_dict().items():
        assert torch.equal(v, final[k]), k


def test_training_state_refuses_a_mismatched_model_and_missing_parts(tmp_path):
    model, _ = _model_and_batches()
    save_training_state(tmp_path, model, state={"epoch": 0})
    with pytest.raises(TrainingStateError, match="no optimizer state"):
        load_training_state(tmp_path, model, optimizer=build_optimizer(model, lr=1e-3))
    with pytest.raises(TrainingStateError, match="generator 'shuffle'"):
        load_training_state(tmp_path, model, generators={"shuffle": torch.Generator()})
    with pytest.raises(TrainingStateError, match="does not match this model"):
        load_training_state(tmp_path, nn.Sequential(nn.Linear(6, 8)))
    assert read_training_state(tmp_path / "none") is None


def test_set_seed_seeds_random_numpy_and_torch():
    set_seed(3)
    a = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    set_seed(3)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == a
    with pytest.raises(ValueError, match="seed must be an int >= 0"):
        set_seed(-1)


@pytest.mark.parametrize("lr, mpo_lr, wd, match", [
    (-1.0, None, 0.0, "lr must be a finite number > 0"), (float("nan"), None, 0.0, "lr must be"),
    (1e-3, 0.0, 0.0, "mpo_lr must be"), (1e-3, None, -1.0, "weight_decay must be a finite number >= 0"),
    (1e-3, None, float("inf"), "weight_decay must be"),
])
def test_optimizer_rates_are_checked(lr, mpo_lr, wd, match):
    with pytest.raises(ValueError, match=match):
        check_rates(lr, mpo_lr, wd)
    with pytest.raises(ValueError, match=match):
        build_optimizer(nn.Linear(2, 2), lr, mpo_lr, wd)
