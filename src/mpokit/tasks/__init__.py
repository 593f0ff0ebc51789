"""Tasks: what to train a model for, from a :class:`~mpokit.data.TaskData` to metrics.

``TASKS = {"classify": ClassifyTask(), "regress": RegressTask(), "lm": LMTask()}``; :func:`get_task(name)`.
Each task object has:

* ``name`` and ``primary_metric`` (metric name, ``"max"`` or ``"min"``): classify ``("accuracy", "max")``,
  regress ``("mse", "min")``, lm ``("perplexity", "min")``; ``is_better(value, best)``;
* ``model_kwargs(data) -> dict``: arguments for building the model (classify: ``num_labels``,
  ``id2label``, ``label2id``, ``problem_type``; regress: ``num_labels=1``, ``problem_type="regression"``;
  lm: ``{}``);
* ``encode(data, tokenizer, *, max_length, block_size=None) -> EncodedData``: tokenised splits and their
  stats (:mod:`.sequence` for classify/regress: truncation at ``max_length`` counted; :mod:`.lm`: blocks);
* ``collate(tokenizer) -> Collator``: pads each batch to its longest example (:mod:`.base`);
* ``evaluate(model, loader, accelerator=None, progress=False) -> dict``: no_grad, eval mode restored,
  ``accelerator.gather_for_metrics`` with Accelerate; classify ``loss, accuracy, macro_f1, n``; regress
  ``loss, mse, pearson, spearman, n``; lm ``loss, perplexity, tokens, n``;
* ``check_model(model, data=None)``: raises :class:`ModelMismatchError` unless the model fits (lm: a causal
  LM; classify/regress: a sequence classification model with ``data.num_labels`` outputs).

Example::

    from mpokit.data import load_data
    from mpokit.tasks import get_task

    data = load_data("reviews.csv", validation_split=0.1)            # task inferred from the labels
    task = get_task(data.task)
    model = AutoModelForSequenceClassification.from_pretrained(path, **task.model_kwargs(data))
    task.check_model(model, data)
    encoded = task.encode(data, tokenizer, max_length=128)
    loader = DataLoader(encoded.validation, batch_size=32, collate_fn=task.collate(tokenizer))
    print(task.evaluate(model, loader))

Metrics (plain torch): :mod:`.metrics`.
"""

from .base import Collator, EncodedData, EncodedSplit, ModelMismatchError, Task
from .classify import ClassifyTask
from .lm import LMTask
from .regress import RegressTask

__all__ = ["TASKS", "get_task", "Task", "ClassifyTask", "RegressTask", "LMTask", "EncodedData", "EncodedSplit",
           "Collator", "ModelMismatchError"]

TASKS: dict[str, Task] = {"classify": ClassifyTask(), "regress": RegressTask(), "lm": LMTask()}


def get_task(name: str) -> Task:
    """The task object registered as ``name`` (one of :data:`TASKS`)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {sorted(TASKS)}, e.g. 'classify'")
    return TASKS[name]
