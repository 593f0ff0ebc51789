"""Fine-tuning any model on any data for any task: full, MPOP's lightweight fine-tuning (LFA), BitFit, LoRA.

* :func:`finetune` (:mod:`.job`): the whole job on HF Accelerate (CPU, one GPU or many via ``accelerate
  launch``): data read and checked (:mod:`mpokit.inputs`), model loaded for the task (:mod:`mpokit.loading`)
  and prepared for the method (:mod:`.models`), progress bars, evaluation each epoch with the task's
  metrics (:mod:`mpokit.tasks`), best checkpoint, resume, fixed seed, JSON + markdown report.
* :class:`FinetuneConfig` (:mod:`.settings`): the options, validated.
* :func:`prepare_model`, :func:`lfa_config`, :func:`bitfit_config`, :func:`lora_rank_for_budget`,
  :func:`lora_targets`, :func:`reinit_head` (:mod:`.models`).

The optimizer, the loop, seeding and the resume state come from :mod:`mpokit.training`.
"""

from .job import finetune, load_for_task
from .models import METHODS, bitfit_config, lfa_config, lora_rank_for_budget, lora_targets, prepare_model, reinit_head
from .settings import FinetuneConfig, config_from_dict

__all__ = ["METHODS", "FinetuneConfig", "config_from_dict", "finetune", "load_for_task", "prepare_model",
           "lfa_config", "bitfit_config", "lora_rank_for_budget", "lora_targets", "reinit_head"]
