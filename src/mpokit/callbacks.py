"""A ``transformers.Trainer`` callback that writes mpokit checkpoints.

``Trainer`` trains MPO models as they are (the cores are ordinary parameters),
and its own checkpoints (``checkpoint-N/model.safetensors`` + ``config.json``)
hold the cores, but not the MPO structure: neither ``mpokit.from_pretrained``
nor ``AutoModel`` can rebuild the model from them (AutoModel would build dense
layers and initialise them randomly; :func:`mpokit.loading.load_model` refuses
such folders). :class:`MPOCheckpointCallback` adds, at every save event, an
mpokit checkpoint (:func:`mpokit.save_pretrained`) in a subfolder of the
Trainer's checkpoint folder, so ``save_total_limit`` rotates both together.

This module imports transformers at import time; ``import mpokit`` does not
import it.
"""

from __future__ import annotations

from pathlib import Path, PurePath

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .io import save_pretrained

__all__ = ["MPOCheckpointCallback"]


class MPOCheckpointCallback(TrainerCallback):
    """At each ``on_save``, write ``<output_dir>/checkpoint-<step>/<subfolder>`` with :func:`mpokit.save_pretrained`.

    ``tokenizer``: saved with the model; by default the Trainer's
    ``processing_class``, if it has ``save_pretrained``. Only the main process
    writes. ``saved`` lists the folders written, in order. Saving happens only
    when the Trainer saves (``save_strategy`` not ``"no"``).

    >>> trainer = transformers.Trainer(model=mpo_model, args=args, train_dataset=data,
    ...                                callbacks=[MPOCheckpointCallback()])  # doctest: +SKIP
    >>> trainer.train()                                                      # doctest: +SKIP
    >>> mpokit.from_pretrained("out/checkpoint-10/mpokit")                  # doctest: +SKIP
    """

    def __init__(self, subfolder: str = "mpokit", tokenizer=None):
        if not isinstance(subfolder, str) or not subfolder or PurePath(subfolder).is_absolute() \
                or ".." in PurePath(subfolder).parts:
            raise ValueError(f"subfolder must be a non-empty relative folder name without '..', got {subfolder!r}; "
                             "e.g. subfolder='mpokit'")
        self.subfolder = subfolder
        self.tokenizer = tokenizer
        self.saved: list[Path] = []

    def folder_for(self, output_dir: str, step: int) -> Path:
        """The folder this callback writes for the Trainer checkpoint of ``step``."""
        return Path(output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{step}" / self.subfolder

    def on_save(self, args, state, control, model=None, processing_class=None, **kwargs):
        if not state.is_world_process_zero:
            return control
        if model is None:
            raise ValueError("MPOCheckpointCallback.on_save got no model from the Trainer; "
                             "use it as transformers.Trainer(..., callbacks=[MPOCheckpointCallback()])")
        tokenizer = self.tokenizer
        if tokenizer is None and hasattr(processing_class, "save_pretrained"):
            tokenizer = processing_class
        folder = self.folder_for(args.output_dir, state.global_step)
        save_pretrained(model, folder, tokenizer=tokenizer)
        self.saved.append(folder)
        return control
