"""mpokit: compress neural networks with Matrix Product Operators."""

from .mpo import MPO, rebuild_matrix
from .shapes import choose_modes, factorize, full_bond_dims
from .layers.lstm import MPOLSTM

__version__ = "0.1.0"

__all__ = ["MPO", "rebuild_matrix", "factorize", "choose_modes", "full_bond_dims", "MPOLSTM", "__version__"]
