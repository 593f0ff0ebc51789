"""mpokit: compress neural networks with Matrix Product Operators."""

from .analysis import MatrixReport, decompose_model
from .mpo import GAUGES, MPO, rebuild_matrix
from .shapes import choose_modes, factorize, full_bond_dims
from .layers.lstm import MPOLSTM
from .layers import MPOEmbedding, MPOLinear, MPOModule
from .config import MPOConfig, MPOLayerConfig
from .surgery import compress, mark_trainable, merge_and_unload, print_trainable_parameters
from .io import from_pretrained, save_pretrained
from .loading import load_model, load_tokenizer
from .data import load_data
from .tasks import get_task
from .training import build_optimizer, set_seed
from .finetuning import FinetuneConfig, finetune
from .squeezing import squeeze, truncate_directly
from .bond_schedule import GradualBondTruncation, sync_optimizer
from .inference import inference_plan, set_inference_mode

__version__ = "0.1.0"

__all__ = ["MPO", "GAUGES", "rebuild_matrix", "decompose_model", "MatrixReport", "factorize", "choose_modes", "full_bond_dims", "MPOLSTM", "MPOLinear", "MPOEmbedding", "MPOModule", "__version__",
           "MPOConfig", "MPOLayerConfig", "compress", "mark_trainable", "merge_and_unload", "print_trainable_parameters",
           "save_pretrained", "from_pretrained", "load_model", "load_tokenizer", "load_data", "get_task", "build_optimizer", "set_seed", "finetune", "FinetuneConfig",
           "squeeze", "truncate_directly", "GradualBondTruncation", "sync_optimizer",
           "set_inference_mode", "inference_plan"]
