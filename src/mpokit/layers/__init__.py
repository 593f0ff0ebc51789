"""MPO layers: MPOModule (shared structure), MPOLinear, MPOEmbedding, MPOLSTM."""

from .base import MPOModule, random_cores
from .linear import MPOLinear

__all__ = ["MPOModule", "MPOLinear", "random_cores"]
