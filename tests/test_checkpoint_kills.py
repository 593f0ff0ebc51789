"""SIGKILL at random moments while a process saves again and again into one folder: afterwards the folder always
loads, and holds one whole save (never the weights of one and the metadata of another). Both checkpoint kinds:
the model checkpoint (mpokit.save_pretrained) and the training state (mpokit.training.save_training_state)."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from torch import nn

import mpokit
from mpokit.training import load_training_state, read_training_state

_NET = """
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(64, 64)
        self.head = nn.Linear(64, 2)

    def forward(self, x):
        return self.head(self.proj(x))
"""
exec(_NET)  # the same Net here and in the saver scripts

_PRELUDE = """
import sys, torch
from torch import nn
import mpokit
from mpokit.training import save_training_state
""" + _NET

_MODEL_SAVER = _PRELUDE + """
model = mpokit.compress(Net(), mpokit.MPOConfig(target_modules=["proj"]))
print("ready", flush=True)
step = 0
while True:
    step += 1
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(step)
    mpokit.save_pretrained(model, sys.argv[1])
"""

_STATE_SAVER = _PRELUDE + """
model = Net()
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
model(torch.ones(2, 64)).sum().backward()
opt.step()
print("ready", flush=True)
step = 0
while True:
    step += 1
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(step)
    save_training_state(sys.argv[1], model, optimizer=opt, state={"step": step})
"""


def _load_model(folder):
    """The step a complete model checkpoint holds (every parameter equals it), or None before the first save."""
    if not (folder / "mpo_config.json").is_file():
        return None
    model = mpokit.from_pretrained(folder, model=Net())
    values = {float(v) for p in model.parameters() for v in p.detach().unique()}
    assert len(values) == 1, f"a mix of saves: parameter values {sorted(values)[:5]}"
    return values.pop()


def _load_state(folder):
    state = read_training_state(folder)  # verifies every file of the committed set
    if state is None:
        return None
    model = Net()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    assert load_training_state(folder, model, optimizer=opt)["step"] == state["step"]
    assert all(torch.all(p == state["step"]) for p in model.parameters()), "weights of another save"
    return state["step"]


def _kill_repeatedly(tmp_path, script: str, load, kills: int) -> None:
    folder = tmp_path / "ckpt"
    path = tmp_path / "saver.py"
    path.write_text(textwrap.dedent(script))
    rng = random.Random(0)
    steps = []
    for _ in range(kills):
        proc = subprocess.Popen([sys.executable, str(path), str(folder)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 0.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        step = load(folder)
        if step is not None:
            steps.append(step)
        leftovers = [p.name for p in folder.iterdir()] if folder.exists() else []
        assert len([n for n in leftovers if n.endswith(".safetensors")]) <= 3, leftovers  # old sets are removed
    assert steps, "no save finished in any run; the saver never got going"


@pytest.mark.parametrize("kind", ["model", "training_state"])
def test_kills_during_saves_leave_a_whole_checkpoint(tmp_path, kind):
    script, load = (_MODEL_SAVER, _load_model) if kind == "model" else (_STATE_SAVER, _load_state)
    _kill_repeatedly(tmp_path, script, load, kills=3)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["model", "training_state"])
def test_kills_during_saves_leave_a_whole_checkpoint_many(tmp_path, kind):
    script, load = (_MODEL_SAVER, _load_model) if kind == "model" else (_STATE_SAVER, _load_state)
    _kill_repeatedly(tmp_path, script, load, kills=12)


_TRAINING = """
import torch
from torch import nn

STEPS = 300


def build():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.Dropout(0.3), nn.ReLU(), nn.Linear(64, 4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(8, 32, generator=g), torch.randint(0, 4, (8,), generator=g)) for _ in range(STEPS)]
    return model, optimizer, batches


def step(model, optimizer, batch):
    x, y = batch
    loss = nn.functional.cross_entropy(model(x), y)  # dropout draws from torch's global RNG
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
"""

_RESUMING_TRAINER = _TRAINING + """
import sys
from mpokit.training import load_training_state, read_training_state, save_training_state

folder = sys.argv[1]
model, optimizer, batches = build()
start = 0
if read_training_state(folder) is not None:
    start = load_training_state(folder, model, optimizer=optimizer)["step"]
print("ready", flush=True)
for i in range(start, STEPS):
    step(model, optimizer, batches[i])
    save_training_state(folder, model, optimizer=optimizer, state={"step": i + 1})
print("done", flush=True)
"""


def test_a_run_killed_again_and_again_resumes_to_the_unbroken_result(tmp_path):
    """SIGKILL during training + saving, restart with resume, until it finishes: the final weights equal an unbroken
    run's bit for bit (model, AdamW state and the dropout RNG all come back from the saved state)."""
    folder, script = tmp_path / "state", tmp_path / "trainer.py"
    script.write_text(textwrap.dedent(_RESUMING_TRAINER))
    rng, kills = random.Random(1), 0
    for _ in range(20):
        proc = subprocess.Popen([sys.executable, str(script), str(folder)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        if kills < 3:
            time.sleep(rng.uniform(0.05, 0.4))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
        out, _ = proc.communicate()
        if "done" in out:
            break
    assert kills >= 1 and "done" in out
    reference: dict = {}
    exec(compile(textwrap.dedent(_TRAINING), "training", "exec"), reference)
    model, optimizer, batches = reference["build"]()
    for batch in batches:
        reference["step"](model, optimizer, batch)
    resumed, _, _ = reference["build"]()
    load_training_state(folder, resumed, optimizer=torch.optim.AdamW(resumed.parameters(), lr=1e-2))
    for (name, a), b in zip(model.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
