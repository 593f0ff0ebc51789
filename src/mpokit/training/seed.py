"""The one seeding function: Python's ``random``, NumPy and torch (CPU and every CUDA device)."""

from __future__ import annotations

import random

import torch

__all__ = ["set_seed"]


def set_seed(seed: int) -> None:
    """Seed ``random``, ``numpy.random`` (when installed) and torch; ``seed`` must be an int >= 0."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}; e.g. seed=0")
    random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a dependency
        return
    np.random.seed(seed)
