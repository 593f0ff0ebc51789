"""Calibration: what each target matrix sees, ``C = X^T X / N`` over its real inputs, from a model run on data.

Conventions (those of :mod:`mpokit.aware`): a weight ``W (out, in)`` acts as ``y = x W^T``; ``X (N, in)`` holds
the ``N`` input rows a target received, so the output error of an approximation ``W'`` on that data is
``||(W - W') X^T||^2 / N = tr((W - W') C (W - W')^T)``. For an embedding ``W (num_embeddings, dim)`` the
inputs are token ids, ``C`` is diagonal, and only its diagonal is kept: the token frequencies
(``row_weights``, counts / N), so the objective is ``sum_o r_o ||W_o - W'_o||^2``.

* :class:`CalibrationStats`: per target name, ``C`` (float64) or the row weights, and ``N``.
* :func:`collect_calibration`: forward pre-hooks on the targets, streamed over batches (memory: one
  ``in x in`` matrix per distinct input). Targets that receive the same input tensor within a forward
  (q / k / v, gate / up projections) share one accumulation, counted once. Padding positions
  (``attention_mask == 0``) are left out. A module called several times per forward (ALBERT's shared
  layers) accumulates every call.
* :meth:`CalibrationStats.save` / :meth:`CalibrationStats.load`: one ``.safetensors`` file (each shared ``C``
  stored once, the counts in its JSON metadata), written atomically, read without unpickling; so one
  calibration serves many compressions of the same model (``mpokit compress --save-calibration F`` /
  ``--calibration-stats F``).
* :class:`CalibrationData` / :func:`prepare_calibration`: a ``--calibration-data`` file or registered name
  read through :mod:`mpokit.inputs` and turned, with the model's tokenizer, into batches of the data's task
  (lm: blocks of ``block_size`` tokens; classify / regress: texts cut at ``max_length``).

Cost. Each batch's ``X_b^T X_b`` is formed by :func:`gram`, which multiplies only the blocks on and above the
diagonal (the product is symmetric).

Precision. The sums are float64. Each batch's ``X_b^T X_b`` is formed in the dtype of the activations when
that is float64 and in float32 otherwise, then added into the float64 sum: measured on 2 CPU cores, a
float64 product of a (2048, 1536) block takes 1.5x the float32 one (41 vs 61 GFLOP/s), and the float32
product of one batch of a few thousand rows carries a relative error of ~1e-7, far below what the
fitting resolves. A float64 model therefore gets exact float64 statistics.
"""

from __future__ import annotations

import inspect
import json
import os
import weakref
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import nn

__all__ = ["CalibrationStats", "collect_calibration", "CalibrationData", "prepare_calibration", "CalibrationFileError"]

STATS_FORMAT = "mpokit-calibration"
STATS_VERSION = 1


class CalibrationFileError(ValueError):
    """A ``--calibration-stats`` file that is missing, not a safetensors file, or not one mpokit wrote."""


@dataclass
class CalibrationStats:
    """Input statistics per target module name (the module whose weight is approximated).

    Attributes:
        second_moments: ``name -> C (in, in)`` float64, ``C = X^T X / N``; targets that share an input hold
            the same tensor object.
        row_weights: ``name -> r (num_embeddings,)`` float64 for embeddings: token counts / N (sum 1).
        rows: ``name -> N``, the input rows (tokens) that went into the statistics of that target.
        shared_with: ``name -> the first target that received the same input tensor`` (itself when alone).
        sequences: sequences (batch rows) run; tokens: positions that were not padding.
        info: where they came from (the data, the model), as saved by :meth:`save`.
    """

    second_moments: dict[str, torch.Tensor] = field(default_factory=dict)
    row_weights: dict[str, torch.Tensor] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    shared_with: dict[str, str] = field(default_factory=dict)
    sequences: int = 0
    tokens: int = 0
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [*self.second_moments, *self.row_weights]

    def __contains__(self, name: str) -> bool:
        return name in self.second_moments or name in self.row_weights

    def objective(self, name: str) -> dict[str, torch.Tensor]:
        """``{"C": C}`` or ``{"row_weights": r}`` for ``name``: the keyword arguments of :mod:`mpokit.aware`."""
        if name in self.second_moments:
            return {"C": self.second_moments[name]}
        if name in self.row_weights:
            return {"row_weights": self.row_weights[name]}
        raise KeyError(f"no calibration statistics for {name!r}; collected for {self.names[:5]}"
                       f"{'...' if len(self.names) > 5 else ''} (collect_calibration(model, batches, targets=[...]))")

    def save(self, path: str | os.PathLike, info: Mapping[str, Any] | None = None) -> None:
        """Write every statistic to ``path`` (``.safetensors``, atomically); ``info`` (JSON-ready: the data used, the
        model) is kept in the metadata and comes back as :attr:`info` after :meth:`load`."""
        from safetensors.torch import save_file

        from .atomic import atomic_write_with

        tensors, groups = {}, {}
        for name, C in self.second_moments.items():
            owner = self.shared_with.get(name, name)
            groups[name] = owner
            if f"C:{owner}" not in tensors:
                tensors[f"C:{owner}"] = C.detach().to("cpu", torch.float64).contiguous()
        for name, r in self.row_weights.items():
            tensors[f"r:{name}"] = r.detach().to("cpu", torch.float64).contiguous()
        meta = {"format": STATS_FORMAT, "version": STATS_VERSION, "groups": groups, "rows": self.rows,
                "shared_with": self.shared_with, "sequences": self.sequences, "tokens": self.tokens,
                "info": dict(info or self.info or {})}
        metadata = {"mpokit": json.dumps(meta, default=str)}
        atomic_write_with(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CalibrationStats":
        """The statistics :meth:`save` wrote; :class:`CalibrationFileError` for any other file."""
        from safetensors import SafetensorError, safe_open

        example = "e.g. mpokit compress ... --calibration-data train.csv --save-calibration stats.safetensors"
        if not os.path.isfile(path):
            raise CalibrationFileError(f"calibration statistics file {str(path)!r} does not exist; write one with "
                                       f"--save-calibration F ({example})")
        try:
            with safe_open(str(path), "pt") as f:
                raw = (f.metadata() or {}).get("mpokit")
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError, ValueError) as e:
            raise CalibrationFileError(f"{str(path)!r} is not a safetensors file ({e}); give a file written by "
                                       f"--save-calibration ({example})") from None
        try:
            meta = json.loads(raw) if raw else {}
        except ValueError:
            meta = {}
        if meta.get("format") != STATS_FORMAT:
            raise CalibrationFileError(f"{str(path)!r} is a safetensors file but not mpokit calibration statistics (no "
                                       f"{STATS_FORMAT!r} metadata); give a file written by --save-calibration ({example})")
        if int(meta.get("version", 0)) > STATS_VERSION:
            raise CalibrationFileError(f"{str(path)!r} has calibration format version {meta.get('version')}, newer than "
                                       f"this mpokit reads ({STATS_VERSION}); upgrade mpokit or collect them again")
        stats = cls(sequences=int(meta.get("sequences", 0)), tokens=int(meta.get("tokens", 0)),
                    rows={k: int(v) for k, v in meta.get("rows", {}).items()},
                    shared_with=dict(meta.get("shared_with", {})), info=dict(meta.get("info", {})))
        for name, owner in meta.get("groups", {}).items():
            key = f"C:{owner}"
            if key not in tensors:
                raise CalibrationFileError(f"{str(path)!r} lists {name} with the statistics of {owner}, which the file "
                                           "does not hold: it is damaged; collect the statistics again")
            stats.second_moments[name] = tensors[key]  # targets sharing an input share the tensor, as collected
        for key, value in tensors.items():
            if key.startswith("r:"):
                stats.row_weights[key[2:]] = value
        return stats

    def check_shapes(self, model: nn.Module, targets: Sequence[str]) -> None:
        """Each target's statistics match its module's input size (``C (in, in)``, row weights ``(num_embeddings,)``);
        ``ValueError`` naming the first that does not (statistics of another model)."""
        modules = dict(model.named_modules())
        for name in targets:
            module = modules.get(name)
            if module is None or name not in self:
                continue
            if name in self.row_weights:
                want, got = getattr(module, "num_embeddings", None), tuple(self.row_weights[name].shape)
                ok = want is None or got == (want,)
            else:
                want, got = _in_features(module), tuple(self.second_moments[name].shape)
                ok = want is None or got == (want, want)
            if not ok:
                raise ValueError(f"the calibration statistics of {name} have shape {got}, but its module takes {want} "
                                 "inputs: they were collected on another model; collect them for this one "
                                 "(--calibration-data F)")

    def summary(self) -> dict[str, Any]:
        """JSON-ready counts for reports: sequences, tokens, targets, distinct inputs."""
        return {"sequences": self.sequences, "tokens": self.tokens, "targets": len(self.names),
                "input_groups": len(set(self.shared_with.values())),
                "shared": {k: v for k, v in self.shared_with.items() if k != v}}


# ---------------------------------------------------------------------------
# collecting
# ---------------------------------------------------------------------------


def gram(X: torch.Tensor, block: int = 256) -> torch.Tensor:
    """``X^T X`` for ``X (N, n)``, computed block row by block row on and above the diagonal and mirrored below:
    about half the multiply-adds of ``X.T @ X`` for large ``n`` (measured 1.5x faster at n = 576 and 1536 on
    one CPU thread), and the same dot products, so the same values."""
    n = X.shape[1]
    if n < 2 * block:
        return X.T @ X
    out = X.new_empty(n, n)
    for lo in range(0, n, block):
        hi = min(lo + block, n)
        strip = X[:, lo:hi].T @ X[:, lo:]  # (hi - lo, n - lo): this block row from the diagonal on
        out[lo:hi, lo:] = strip
        out[hi:, lo:hi] = strip[:, hi - lo:].T
    return out


class _Stop(Exception):
    """Raised by the last hook of a forward once every target has been seen (the rest of the model is skipped)."""


def _is_embedding(module: nn.Module) -> bool:
    from .layers.embedding import MPOEmbedding

    return isinstance(module, (nn.Embedding, MPOEmbedding))


def _in_features(module: nn.Module) -> int | None:
    for attr in ("in_features", "nx"):  # nn.Linear / MPOLinear, transformers' Conv1D
        value = getattr(module, attr, None)
        if isinstance(value, int):
            return value
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.dim() == 2:  # Conv1D stores (in, out)
        return int(weight.shape[0] if type(module).__name__ == "Conv1D" else weight.shape[1])
    return None


def _resolve_targets(model: nn.Module, targets) -> dict[str, nn.Module]:
    if targets is None:
        raise ValueError("targets is required: the module names whose inputs are collected, "
                         "e.g. targets=['bert.encoder.layer.0.attention.self.query']")
    if isinstance(targets, str):
        targets = [targets]
    if isinstance(targets, Mapping):
        targets = list(targets)
    names = [t if isinstance(t, str) else getattr(t, "name", None) for t in targets]
    if not names or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"targets must be a non-empty list of module names (or mpokit Target objects), got "
                         f"{targets!r}; e.g. targets=['encoder.layer.0.attention.self.query']")
    modules = dict(model.named_modules())
    unknown = [n for n in names if n not in modules]
    if unknown:
        sample = [n for n, m in modules.items() if isinstance(m, (nn.Linear, nn.Embedding))][:3]
        raise ValueError(f"calibration targets {unknown[:5]} are not modules of this {type(model).__name__}; "
                         f"give module names as model.named_modules() lists them, e.g. {sample}")
    out = {}
    for n in dict.fromkeys(names):
        m = modules[n]
        if isinstance(m, nn.RNNBase):
            raise ValueError(f"{n} is an {type(m).__name__}: its hidden-to-hidden matrices see the recurrent state, "
                             "which input hooks cannot capture, so it has no calibration statistics; exclude it "
                             "(MPOConfig(exclude_modules=[...])) or compress it with method='mpo'")
        if not _is_embedding(m) and _in_features(m) is None:
            raise ValueError(f"{n} ({type(m).__name__}) has no single weight matrix with known in_features to collect "
                             "inputs for; target Linear, Conv1D or Embedding modules, e.g. a q_proj")
        out[n] = m
    return out


def _batch_list(batches, max_samples: int | None) -> list:
    """The batches, materialised (token ids are small), cut at ``max_samples`` sequences; checked."""
    if max_samples is not None and (isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 1):
        raise ValueError(f"max_samples must be an int >= 1 or None (every batch), got {max_samples!r}; e.g. max_samples=128")
    if isinstance(batches, (torch.Tensor, Mapping)):
        batches = [batches]
    try:
        iterator = iter(batches)
    except TypeError:
        raise TypeError(f"calibration batches must be an iterable of batches (dicts of tensors, e.g. a DataLoader), "
                        f"got {type(batches).__name__}; e.g. [{{'input_ids': ids, 'attention_mask': mask}}]") from None
    out, seen = [], 0
    for batch in iterator:
        ids = _ids_of(batch)
        if ids.dim() == 0 or ids.shape[0] == 0:
            continue
        if max_samples is not None and seen + ids.shape[0] > max_samples:
            batch = _head(batch, max_samples - seen)
            ids = _ids_of(batch)
        out.append(batch)
        seen += ids.shape[0]
        if max_samples is not None and seen >= max_samples:
            break
    if not out:
        raise ValueError("the calibration data is empty: it gave no batch with a sequence in it; give at least one "
                         "batch, e.g. [{'input_ids': torch.tensor([[5, 6, 7]]), 'attention_mask': torch.ones(1, 3)}]")
    tokens = sum(int(_mask_of(b, _ids_of(b)).sum()) for b in out)
    if tokens == 0:
        raise ValueError(f"every position of the {seen} calibration sequences is padding (attention_mask == 0), so no "
                         "input reaches the model; give batches with attention_mask 1 on real tokens, e.g. "
                         "{'input_ids': ids, 'attention_mask': torch.ones_like(ids)}")
    return out


def _ids_of(batch) -> torch.Tensor:
    if isinstance(batch, Mapping):
        ids = batch.get("input_ids")
        if ids is None:
            ids = next((v for v in batch.values() if isinstance(v, torch.Tensor)), None)
    elif isinstance(batch, (tuple, list)):
        ids = batch[0] if batch else None
    else:
        ids = batch
    if not isinstance(ids, torch.Tensor):
        raise TypeError(f"a calibration batch must be a dict with 'input_ids' (or a tensor / tuple of model inputs), "
                        f"got {type(batch).__name__}; e.g. {{'input_ids': ids, 'attention_mask': mask}}")
    return ids


def _mask_of(batch, ids: torch.Tensor) -> torch.Tensor:
    mask = batch.get("attention_mask") if isinstance(batch, Mapping) else None
    if mask is None:
        return torch.ones(ids.shape[:2] if ids.dim() >= 2 else ids.shape, dtype=torch.bool, device=ids.device)
    return mask.bool()


def _head(batch, n: int):
    if isinstance(batch, Mapping):
        return {k: v[:n] if isinstance(v, torch.Tensor) and v.dim() > 0 else v for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(v[:n] if isinstance(v, torch.Tensor) and v.dim() > 0 else v for v in batch)
    return batch[:n]


def _model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _call_model(model: nn.Module, batch, device, use_cache: bool) -> None:
    from .tasks.base import model_inputs

    if isinstance(batch, Mapping):
        inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in model_inputs(batch).items()}
        if use_cache:
            inputs.setdefault("use_cache", False)  # no key/value cache: nothing is generated
        model(**inputs)
    elif isinstance(batch, (tuple, list)):
        model(*[v.to(device) if isinstance(v, torch.Tensor) else v for v in batch])
    else:
        model(batch.to(device))


class _Collector:
    """The hooks' state: accumulators by group, the current batch's mask, the tensors seen in this forward."""

    def __init__(self, targets: dict[str, nn.Module], device: torch.device) -> None:
        self.targets, self.device = targets, device
        self.group: dict[str, str] = {}  # target -> the target that owns its accumulation
        self.sums: dict[str, torch.Tensor] = {}  # group owner -> sum x x^T (float64)
        self.counts: dict[str, torch.Tensor] = {}  # embedding -> token counts (float64)
        self.rows: dict[str, int] = {}  # group owner / embedding -> rows accumulated
        self.mask: torch.Tensor | None = None
        self.seen: dict[int, tuple[weakref.ref, str]] = {}
        self.calls = 0
        self.stop_after: int | None = None
        self.ran: set[str] = set()

    def start_batch(self, mask: torch.Tensor) -> None:
        self.mask, self.seen, self.calls = mask.to(self.device), {}, 0

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        """The non-padding rows of ``x (..., in)`` as ``(N, in)``; inputs not laid out as (B, T, ...) keep every row."""
        mask = self.mask
        if mask is not None and mask.dim() == 2:
            if x.dim() >= 3 and tuple(x.shape[:2]) == tuple(mask.shape):
                return x[mask].reshape(-1, x.shape[-1])
            if x.dim() == 2 and x.shape[0] == mask.numel():
                return x[mask.reshape(-1)]
        return x.reshape(-1, x.shape[-1])

    def hook(self, name: str):
        def pre_hook(module, args, kwargs=None):
            x = args[0] if args else next(iter((kwargs or {}).values()), None)
            if not isinstance(x, torch.Tensor):
                raise TypeError(f"{name} was called without a tensor input; cannot collect its calibration inputs")
            self.ran.add(name)
            if _is_embedding(module):
                self._count_tokens(name, module, x)
            else:
                self._accumulate(name, x)
            self.calls += 1
            if self.stop_after is not None and self.calls >= self.stop_after:
                raise _Stop
        return pre_hook

    def _count_tokens(self, name: str, module: nn.Module, ids: torch.Tensor) -> None:
        mask = self.mask
        valid = ids[mask] if mask is not None and tuple(ids.shape) == tuple(mask.shape) else ids.reshape(-1)
        counts = torch.bincount(valid.reshape(-1).long(), minlength=module.num_embeddings)
        if name not in self.counts:
            self.counts[name] = torch.zeros(module.num_embeddings, dtype=torch.float64, device=self.device)
            self.rows[name] = 0
            self.group[name] = name
        self.counts[name] += counts[: module.num_embeddings].to(self.device, torch.float64)
        self.rows[name] += int(valid.numel())

    def _accumulate(self, name: str, x: torch.Tensor) -> None:
        hit = self.seen.get(id(x))
        owner = hit[1] if hit is not None and hit[0]() is x else None
        if owner is not None:  # the same tensor already went into a group during this forward
            if self.group.setdefault(name, owner) != owner:
                raise RuntimeError(f"{name} shared its input with {self.group[name]} in an earlier batch but with "
                                   f"{owner} now; the model routes its inputs differently per batch")
            return
        group = self.group.setdefault(name, name)
        if group != name:
            raise RuntimeError(f"{name} shared its input with {group} in an earlier batch but got an input of its own "
                               "now; the model routes its inputs differently per batch")
        self.seen[id(x)] = (weakref.ref(x), name)
        rows = self._rows(x.detach())
        rows = rows if rows.dtype == torch.float64 else rows.float()
        product = gram(rows).to(self.device, torch.float64)  # (in, in)
        if name in self.sums:
            self.sums[name] += product
        else:
            self.sums[name] = product
            self.rows[name] = 0
        self.rows[name] += int(rows.shape[0])


@torch.no_grad()
def collect_calibration(model: nn.Module, batches: Iterable, targets, *, max_samples: int | None = None,
                        device=None, progress: bool = False) -> CalibrationStats:
    """Run ``model`` on ``batches`` and return the input statistics of every module in ``targets``.

    Args:
        model: any ``nn.Module``; it is run in eval mode (restored afterwards) without gradients.
        batches: an iterable of batches (a DataLoader of :mod:`mpokit.tasks` batches: dicts with
            ``input_ids (B, T)`` and ``attention_mask (B, T)``; ``labels`` are ignored), or of tensors /
            tuples passed positionally to the model.
        targets: module names (``model.named_modules()``) or :class:`mpokit.targets.Target` objects.
        max_samples: use at most this many sequences (batch rows); None: every batch.
        device: where the model runs and the sums live (default: the model's device).
        progress: a tqdm bar over the batches.

    Raises ``ValueError`` before any forward for empty data, all-padding data and unknown targets, and
    after the first batch when a target never ran.
    """
    modules = _resolve_targets(model, targets)
    batch_list = _batch_list(batches, max_samples)
    device = torch.device(device) if device is not None else _model_device(model)
    use_cache = "use_cache" in inspect.signature(model.forward).parameters
    collector = _Collector(modules, device)
    handles = [m.register_forward_pre_hook(collector.hook(n), with_kwargs=True) for n, m in modules.items()]
    was_training = model.training
    model.eval()
    sequences = tokens = 0
    try:
        from tqdm.auto import tqdm

        for b, batch in enumerate(tqdm(batch_list, desc="calibration", disable=not progress, leave=False)):
            ids = _ids_of(batch)
            mask = _mask_of(batch, ids)
            collector.start_batch(mask)
            try:
                _call_model(model, batch, device, use_cache)
            except _Stop:
                pass
            if b == 0:
                missing = [n for n in modules if n not in collector.ran]
                if missing:
                    raise ValueError(f"calibration targets {missing[:5]}{'...' if len(missing) > 5 else ''} never ran "
                                     f"in a forward of {type(model).__name__} on these batches, so they have no inputs; "
                                     "target modules the forward uses (e.g. the attention projections), or exclude "
                                     "them (MPOConfig(exclude_modules=[...]))")
                collector.stop_after = collector.calls  # later batches stop after the last target's hook
            sequences += int(ids.shape[0])
            tokens += int(mask.sum())
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    stats = CalibrationStats(sequences=sequences, tokens=tokens)
    for name in modules:
        group = collector.group[name]
        stats.shared_with[name] = group
        stats.rows[name] = collector.rows[group]
        if name in collector.counts:
            stats.row_weights[name] = collector.counts[name] / max(collector.rows[name], 1)
        else:
            if collector.rows[group] == 0:
                raise ValueError(f"{name} received only padding positions in the calibration data; give batches whose "
                                 "attention_mask marks real tokens")
            if group == name:
                collector.sums[group] /= collector.rows[group]  # in place: the shared tensor object
            stats.second_moments[name] = collector.sums[group]
    return stats


# ---------------------------------------------------------------------------
# calibration data from a file or a registered name
# ---------------------------------------------------------------------------


@dataclass
class CalibrationData:
    """Calibration data read and checked (no model needed yet); :meth:`batches` tokenises it for a model.

    ``spec`` is the :class:`mpokit.inputs.DataSpec` used (``train_size`` = the samples: blocks for lm, texts for
    classify / regress), ``data`` the :class:`mpokit.data.TaskData` (its train split only) and ``task`` its task.
    """

    spec: Any
    data: Any
    task: Any

    def check_model(self, model: nn.Module) -> None:
        """lm data needs a causal LM (:meth:`mpokit.tasks.LMTask.check_model`); text data fits any model taking ids."""
        if self.task.name == "lm":
            from .tasks import ModelMismatchError

            try:
                self.task.check_model(model)
            except ModelMismatchError as e:
                raise ModelMismatchError(
                    f"the calibration data {self.spec.data!r} is lm data (text without labels, cut into token blocks), "
                    f"but {e}; for this model give text with a label column (e.g. a CSV with text,label), "
                    "whose texts are tokenised one by one") from None

    def batches(self, model: nn.Module, tokenizer, *, batch_size: int = 8) -> tuple[list[dict], dict]:
        """``(batches, info)``: tokenised batches of at most ``spec.train_size`` samples, and what was used."""
        from .inputs import build_loaders

        self.check_model(model)
        loaders = build_loaders(self.task, self.data, tokenizer, self.spec, batch_size=batch_size)
        batches = list(loaders.train)
        info = {"data": self.spec.data, "task": self.task.name, "samples": loaders.sizes.get("train", 0),
                "available": loaders.full_sizes.get("train"), "unit": loaders.info.get("size_unit"),
                "max_length": self.spec.max_length, "block_size": self.spec.block_size,
                "encoding": loaders.stats.get("train"), "seed": self.spec.split_seed}
        return batches, info


def prepare_calibration(data: str, *, samples: int | None = 128, max_length: int = 64, block_size: int | None = None,
                        text_column: str = "text", text_pair_column: str | None = None,
                        label_column: str | None = "label", task: str | None = None, seed: int = 0) -> CalibrationData:
    """Read calibration data (any format ``--data`` takes: CSV, TSV, JSON Lines, Parquet, text, a registered name).

    Only its train split is used; ``samples`` random examples of it (lm: blocks of ``block_size`` tokens,
    default ``max_length``; classify / regress: texts), drawn with ``seed``. Every data error is raised here,
    before a model is loaded.
    """
    from .inputs import DataSpec, read_data

    if samples is not None and (isinstance(samples, bool) or not isinstance(samples, int) or samples < 1):
        raise ValueError(f"calibration samples must be an int >= 1 (or None for all), got {samples!r}; "
                         "e.g. --calibration-samples 128")
    spec = DataSpec(data=data, text_column=text_column, text_pair_column=text_pair_column, label_column=label_column,
                    task=task, max_length=max_length, block_size=block_size, train_size=samples, split_seed=seed)
    task_data, task_obj = read_data(spec)
    task_data.validation = task_data.test = None  # calibration reads the train split only
    return CalibrationData(spec=spec, data=task_data, task=task_obj)


def stats_or_collect(model: nn.Module, calibration, targets: Sequence[str], *, progress: bool = False) -> CalibrationStats:
    """``calibration`` when it is a :class:`CalibrationStats` (checked to cover ``targets``), else collected from it."""
    if isinstance(calibration, CalibrationStats):
        calibration.check_shapes(model, targets)
        missing = [t for t in targets if t not in calibration]
        if missing:
            raise ValueError(f"the calibration statistics have nothing for the targets {missing[:5]}"
                             f"{'...' if len(missing) > 5 else ''}; collect them for these modules: "
                             "collect_calibration(model, batches, targets=[...]) before compressing")
        return calibration
    return collect_calibration(model, calibration, targets, progress=progress)
