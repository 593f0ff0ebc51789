"""Named data sets: a registry of loaders that :func:`mpokit.data.load_data` uses when ``train`` is a name.

The library itself registers no data set. *Provider modules* register theirs when imported; the
registry imports the providers in :data:`PROVIDERS` (by default the recipes' module, which registers
the paper reproductions' data sets) the first time a name is looked up that is not registered yet, so
``load_data(name)`` works without importing the recipes first. A package of
one's own adds its module with :func:`add_provider`, or calls :func:`register_dataset` directly.

* :class:`NamedDataset`: what a loader returns: ``train`` (required), ``validation`` and ``test``
  (``datasets.Dataset`` or None), the ``task`` it is meant for (or None) and an ``info`` dict for
  reports (source, how the splits were made, sizes).
* :func:`register_dataset(name, loader, *, description="", replace=False)`: ``loader()`` ->
  :class:`NamedDataset`; names are lower-case letters, digits, ``_`` and ``-``.
* :func:`get_dataset(name)` -> :class:`NamedDataset` (calls the loader; unknown names raise
  :class:`~mpokit.data.sources.DataError` listing the registered ones).
* :func:`dataset_names()` -> sorted names, providers imported; :func:`describe_dataset(name)`.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from .sources import DataError

__all__ = ["NamedDataset", "PROVIDERS", "register_dataset", "get_dataset", "dataset_names", "describe_dataset",
           "add_provider"]

PROVIDERS: list[str] = ["mpokit.recipes.datasets"]
_NAME = re.compile(r"^[a-z0-9][a-z0-9_\-]*$")
_LOADERS: dict[str, tuple[Callable[[], "NamedDataset"], str]] = {}
_IMPORTED: set[str] = set()


@dataclass(frozen=True)
class NamedDataset:
    """The splits of a named data set (``datasets.Dataset`` each; ``train`` required) and its metadata."""

    train: Any
    validation: Any = None
    test: Any = None
    task: str | None = None
    info: dict = field(default_factory=dict)


def register_dataset(name: str, loader: Callable[[], NamedDataset], *, description: str = "",
                     replace: bool = False) -> None:
    """Register ``loader`` (no arguments, returns a :class:`NamedDataset`) under ``name``.

    Registering the same loader again is a no-op; another loader for a taken name needs ``replace=True``.
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"data set names are lower-case letters, digits, '_' and '-', got {name!r}; e.g. 'my_reviews'")
    if not callable(loader):
        raise TypeError(f"loader must be callable (no arguments, returns a NamedDataset), got {loader!r}")
    old = _LOADERS.get(name)
    if old is not None and not replace and not _same_loader(old[0], loader):
        raise ValueError(f"data set {name!r} is already registered by {old[0]!r}; pass replace=True to replace it")
    _LOADERS[name] = (loader, description)


def _same_loader(a: Callable, b: Callable) -> bool:
    """True for the same function, also when its module was imported again."""
    key = lambda f: (getattr(f, "__module__", None), getattr(f, "__qualname__", None))  # noqa: E731
    return a is b or (key(a) == key(b) and key(a) != (None, None))


def add_provider(module: str) -> None:
    """Add ``module`` (import path) to the providers imported when a name is not registered yet."""
    if module not in PROVIDERS:
        PROVIDERS.append(module)


def _import_providers() -> None:
    for module in list(PROVIDERS):
        if module not in _IMPORTED:
            importlib.import_module(module)
            _IMPORTED.add(module)


def dataset_names() -> list[str]:
    """Sorted names of the registered data sets (after importing the providers)."""
    _import_providers()
    return sorted(_LOADERS)


def _entry(name: str):
    if name not in _LOADERS:
        _import_providers()
    if name not in _LOADERS:
        raise DataError(
            f"unknown data set {name!r}; registered: {sorted(_LOADERS)}; or pass a file path, e.g. train='data/train.csv'")
    return _LOADERS[name]


def describe_dataset(name: str) -> str:
    """The description given at registration."""
    return _entry(name)[1]


def get_dataset(name: str) -> NamedDataset:
    """Load the data set registered as ``name``."""
    loader = _entry(name)[0]
    result = loader()
    if not isinstance(result, NamedDataset) or result.train is None:
        raise TypeError(f"the loader of data set {name!r} returned {type(result).__name__}, not a NamedDataset with a train split")
    return result
