"""MPO layers: MPOModule (shared structure), MPOLinear, MPOEmbedding, MPOLSTM."""

from .base import MPOModule, random_cores

__all__ = ["MPOModule", "random_cores"]
