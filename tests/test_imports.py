"""`import mpokit` stays light: optional dependencies are imported lazily, where they are used."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("transformers", "matplotlib", "peft", "accelerate", "pandas", "tensorly", "scattertext")


def _modules_after(statement: str) -> list[str]:
    code = f"import sys, json\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_import_mpokit_is_light():
    loaded = _modules_after("import mpokit")
    heavy = [m for m in loaded if m.split(".")[0] in HEAVY]
    assert not heavy, f"`import mpokit` imported {sorted({m.split('.')[0] for m in heavy})}; import them inside functions"


def test_cli_and_reporting_modules_are_light():
    loaded = _modules_after(
        "import mpokit.cli, mpokit.analysis, mpokit.plots, mpokit.loading, mpokit.commands.decompose"
    )
    heavy = sorted({m.split(".")[0] for m in loaded if m.split(".")[0] in HEAVY})
    assert not heavy, f"importing the CLI modules imported {heavy}"


def test_public_surface():
    import mpokit

    for name in mpokit.__all__:
        assert hasattr(mpokit, name), name
    assert {"MPO", "factorize", "choose_modes", "full_bond_dims", "rebuild_matrix", "decompose_model"} <= set(mpokit.__all__)
