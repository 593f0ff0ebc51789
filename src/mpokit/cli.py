"""The ``mpokit`` command: one subcommand per module in :mod:`mpokit.commands`.

Adding a subcommand is a one-line change: write ``mpokit/commands/<name>.py``
exposing ``register(subparsers)`` (which adds a parser and sets
``func=run``, where ``run(args) -> int``), then add ``"<name>"`` to
:data:`COMMANDS`. Command modules keep their top-level imports light and
import heavy libraries inside ``run``. A module that fails to import is still
listed, and reports its import error only when it is invoked, so one broken
command never takes the others down. This file holds no logic of its own.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

# Subcommand modules under mpokit.commands, in the order shown by --help.
COMMANDS: list[str] = [
    "compress",
    "finetune",
    "evaluate",
    "squeeze",
    "decompose",
    "lstm",
    "export",
]


def _unavailable(name: str, exc: BaseException):
    def run(args: argparse.Namespace) -> int:
        print(f"mpokit {name}: unavailable, its module failed to import: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1

    return run


def _register(subparsers, name: str) -> None:
    try:
        module = importlib.import_module(f"mpokit.commands.{name}")
        module.register(subparsers)
    except Exception as exc:  # noqa: BLE001 - keep the other commands usable
        parser = subparsers.add_parser(name, help=f"(unavailable: {type(exc).__name__}: {exc})")
        parser.set_defaults(func=_unavailable(name, exc))


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="mpokit",
        description="Compress neural networks with Matrix Product Operators (MPOP, MPO-LSTM).",
    )
    parser.add_argument("--version", action="version", version=f"mpokit {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        _register(subparsers, name)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as exc:  # bad input: say what, not a traceback
        print(f"mpokit {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
