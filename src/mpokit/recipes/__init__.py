"""Recipes: ready-made jobs that know model names; the library below them takes paths.

:mod:`mpokit.recipes.models` maps the registered model names to installed files
(:func:`resolve_model_source`).
"""

from .models import (DEFAULT_MODEL, NAMED_MODELS, NamedModelNotInstalledError, named_model_path,
                     resolve_model_source)

__all__ = ["DEFAULT_MODEL", "NAMED_MODELS", "NamedModelNotInstalledError", "named_model_path", "resolve_model_source"]
