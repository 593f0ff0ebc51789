"""The one training core, used by fine-tuning, squeezing and every recipe.

* :mod:`.optim`: :func:`build_optimizer` / :func:`param_groups` (AdamW groups from parameter roles,
  MPO cores at ``mpo_lr``, no decay for biases and norms), :func:`linear_warmup_decay`, :func:`check_rates`;
* :mod:`.loop`: :func:`train_steps` (optimizer steps on HF Accelerate when given), :func:`default_loss`;
* :mod:`.seed`: :func:`set_seed` (random, NumPy, torch);
* :mod:`.state`: :func:`save_training_state` / :func:`load_training_state` (safetensors + JSON, committed
  as one set, verified on load);
* :mod:`.memory`: :class:`PeakMemory`.

Evaluation is per task: :mod:`mpokit.tasks`.
"""

from .loop import default_loss, to_device, train_steps
from .memory import PeakMemory
from .optim import NO_DECAY_ROLES, build_optimizer, check_rates, linear_warmup_decay, param_groups
from .seed import set_seed
from .state import (TrainingStateError, load_training_state, read_training_state, rng_state, save_training_state,
                    set_rng_state)

__all__ = ["train_steps", "default_loss", "to_device", "PeakMemory", "NO_DECAY_ROLES", "build_optimizer",
           "check_rates", "linear_warmup_decay", "param_groups", "set_seed", "save_training_state",
           "load_training_state", "read_training_state", "rng_state", "set_rng_state", "TrainingStateError"]
