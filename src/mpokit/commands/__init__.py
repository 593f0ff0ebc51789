"""Subcommands of the ``mpokit`` command, one module each (see :mod:`mpokit.cli`)."""
