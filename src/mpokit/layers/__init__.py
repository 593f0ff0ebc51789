"""MPO layers: MPOModule (shared structure), MPOLinear, MPOEmbedding, MPOLSTM."""

from .base import MPOModule, random_cores
from .embedding import MPOEmbedding
from .linear import MPOLinear
from .lstm import MPOLSTM  # noqa: F401  (lstm-layer engineer)

__all__ = ["MPOModule", "MPOLinear", "MPOEmbedding", "MPOLSTM", "random_cores"]
