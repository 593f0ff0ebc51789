"""Model surgery: turn the matrices of a model into MPO layers, and back.

* :func:`compress` (in place) converts the targeted modules
  (:func:`mpokit.targets.resolve_targets`: registry defaults, the all-linear
  fallback, ``target_modules`` names or regex, ``target_regex``) with their
  converter (:data:`mpokit.converters.CONVERTERS`: ``nn.Linear`` / GPT-2
  ``Conv1D`` -> :class:`~mpokit.layers.MPOLinear`, ``nn.Embedding`` ->
  :class:`~mpokit.layers.MPOEmbedding`, ``nn.LSTM`` -> :class:`~mpokit.layers.lstm.MPOLSTM`),
  through their parent module, keeping device and dtype; it records a
  :class:`CompressionReport` (per matrix: why it was taken, shapes, bonds,
  parameters, error bound) and applies the config's trainable settings
  (:func:`mark_trainable`).
* A module whose class overrides the base type's ``forward`` keeps its class
  and forward: an :class:`~mpokit.layers.weight.MPOWeight` supplies its weight
  through ``torch.nn.utils.parametrize`` (report rows say ``parametrized``).
* Data-aware compression: ``compress(model, config, calibration=...)`` takes the layers' input statistics
  (:mod:`mpokit.calibration`) and, with ``MPOConfig.method`` / ``budget`` / ``allocation``, approximates
  every matrix through :mod:`mpokit.aware` (one harness for mpo, mpo-aware, svd, svd-whitened, magnitude,
  2:4 and wanda; a global budget split by marginal output error per parameter). MPO results become MPO
  modules (:func:`mpokit.converters.convert_from_mpo`), pruning results a masked dense module. Report rows
  then carry the method, the layout, the output and weight errors and the layouts tried.
* :func:`merge_and_unload` rebuilds dense modules through the same converters
  (``Conv1D`` comes back as ``Conv1D``, ``MPOLSTM`` as ``nn.LSTM``; a parametrized
  module gets a dense ``weight`` Parameter again).
* Parameter roles (MPO central / auxiliary core, head, norm, bias, embedding,
  other) are decided by module structure (:meth:`MPOModule.central_parameters`,
  ``model.base_model``, module types), never by parameter-name strings.

Orientation: an MPO always holds ``W (out_features, in_features)`` (``nn.Linear``
layout). GPT-2's ``Conv1D`` stores ``(in_features, out_features)``, so its
weight is transposed on the way in and back on the way out.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from . import contract
from .calibration import stats_or_collect
from .config import MPOConfig
from .converters import CONVERTERS, convert, converted_modules, detach_weight
from .layers.base import MPOModule
from .mpo import MPO
from .targets import ARCHITECTURES, ArchitectureDefaults, Target, find_targets, register_architecture, resolve_targets
from .targets import _call, _name_of, _resolve, _warn_unmatched

__all__ = [
    "ArchitectureDefaults",
    "ARCHITECTURES",
    "register_architecture",
    "CompressionReport",
    "ModuleReport",
    "MPOTiedLinear",
    "Target",
    "compress",
    "find_targets",
    "resolve_targets",
    "merge_and_unload",
    "mark_trainable",
    "set_recompute",
    "parameter_roles",
    "mpo_modules",
    "count_parameters",
    "print_trainable_parameters",
    "ROLES",
]

# Roles of parameters, in order of precedence for non-MPO parameters.
ROLES = ("mpo_central", "mpo_auxiliary", "head", "layernorm", "bias", "embedding", "other")


def mpo_modules(model: nn.Module) -> list[tuple[str, MPOModule]]:
    """``(name, module)`` for every MPO layer (instances of :class:`MPOModule`) in ``model``."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, MPOModule)]


class MPOTiedLinear(nn.Module):
    """An output projection tied to an MPO embedding: ``y = x E^T + b``, ``E (num_embeddings, dim)``.

    ``embedding`` is the module holding the cores of ``E``: an :class:`MPOEmbedding`,
    or the :class:`~mpokit.layers.weight.MPOWeight` of an embedding that kept its
    own forward. It owns no cores: the embedding's cores are the only copy, so the
    tie survives training and truncation. The embedding is referenced, not
    registered as a submodule (it is registered where it lives in the model).

    ``E`` is a matrix like an ``MPOLinear``'s ``W`` (out modes factor the
    vocabulary, in modes ``dim``), so calls without a graph to the cores follow
    the same inference modes (``inference_mode``, set by :func:`mpokit.set_inference_mode`):

    * ``"cache"`` (default): ``E`` is rebuilt once and kept in the embedding's
      cache (the embedding then indexes that same table), one matmul per call;
    * ``"contract"``: ``x`` is contracted with the cores (:func:`mpokit.contract.plan_apply`,
      contraction plans only), ``E`` is never formed;
    * ``"stream"``: per call the cheaper of that contraction and a *blocked*
      rebuild: ``E`` is rebuilt a block of vocabulary rows at a time into the
      model's shared :class:`~mpokit.layers.base.Workspace` (as many rows as it
      holds; a vocabulary matrix is usually the largest of a model, so the
      workspace is not grown for it), each block followed by its matmul.

    A table the embedding already keeps (its own ``"cache"`` mode) is used in any mode.
    """

    SUPPORTED_MODES = ("cache", "stream", "contract")

    def __init__(self, embedding: nn.Module, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        object.__setattr__(self, "embedding", embedding)
        self.in_features = embedding.shape[1]
        self.out_features = embedding.shape[0]
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=bias.requires_grad)
        self._inference_mode = "cache"
        self.workspace = None
        self._plans: dict[tuple, tuple] = {}

    @property
    def weight(self) -> torch.Tensor:
        return self.embedding.rebuild_weight()

    # -- inference modes ------------------------------------------------------------

    @property
    def inference_mode(self) -> str:
        return self._inference_mode

    @inference_mode.setter
    def inference_mode(self, mode: str) -> None:
        if mode not in self.SUPPORTED_MODES:
            raise ValueError(f"inference_mode of MPOTiedLinear must be one of {self.SUPPORTED_MODES}, got {mode!r}; "
                             "e.g. head.inference_mode = 'contract'")
        if mode != "cache" and self.embedding.inference_mode != "cache":
            self.embedding.clear_cache()  # the table this head kept
        self._inference_mode = mode
        self._plans = {}

    def _split_cost(self, split: int) -> float:
        """Estimated cost of rebuilding ``E`` from its halves at bond ``split`` (merges, then the join)."""
        emb = self.embedding
        om, im, dims = emb.out_modes, emb.in_modes, contract._dims(emb.bond_dims)
        n = len(om)
        (lf, le), (rf, re_) = contract._merge_cost(om, im, dims, 0, split), contract._merge_cost(om, im, dims, split, n)
        I, J = emb.padded_shape
        return lf + rf + 2 * I * J * dims[split] + contract.ALPHA * (2 * (le + re_) + 3 * I * J)

    def _block_rows(self, split: int) -> int:
        """Elements of one prefix's rows of ``E`` at bond ``split``: ``i_{split+1}..i_n`` rows of padded width."""
        emb = self.embedding
        return math.prod(emb.out_modes[split:]) * emb.padded_shape[1]

    def _choose_split(self, capacity: int) -> int:
        """The cheapest bond whose one-prefix block fits ``capacity`` elements (else the smallest block)."""
        n = self.embedding.n_cores
        splits = list(range(1, n))
        fitting = [m for m in splits if self._block_rows(m) <= capacity]
        if not fitting:
            return min(splits, key=lambda m: (self._block_rows(m), m))
        return min(fitting, key=lambda m: (self._split_cost(m), m))

    def _plan(self, tokens: int, mode: str) -> tuple[str, contract.ApplyPlan]:
        """``("contract", plan)`` or ``("blocks", rebuild plan)`` for a call of ``tokens`` rows under ``mode``."""
        emb = self.embedding
        key = (tokens, emb.bond_dims, mode)
        hit = self._plans.get(key)
        if hit is not None:
            return hit
        args = (emb.out_modes, emb.in_modes, emb.bond_dims, tokens)
        rebuild = next(p for p in contract._all_plans(*args) if len(p.groups) == 1)
        if emb.n_cores == 1:
            hit = ("blocks", rebuild)
        else:
            sweep = contract.plan_apply(*args, merged_cached=False, contract_only=True)
            if mode == "stream" and rebuild.estimated_cost() < sweep.estimated_cost():
                hit = ("blocks", rebuild)
            else:
                hit = ("contract", sweep)
        self._plans[key] = hit
        return hit

    def inference_options(self, tokens: int) -> dict:
        """Per inference mode, the estimated cost of a call of ``tokens`` rows and the memory it holds:
        ``"cache"`` holds ``E`` (in the embedding's cache); ``"stream"`` needs one block of workspace."""
        from .layers.base import InferenceOption

        emb = self.embedding
        args = (emb.out_modes, emb.in_modes, emb.bond_dims, int(tokens))
        rebuild = next(p for p in contract._all_plans(*args) if len(p.groups) == 1)
        out = {"cache": InferenceOption(rebuild.estimated_cost(merged_cached=True), emb.shape[0] * emb.shape[1], 0)}
        for mode in ("stream", "contract"):
            how, plan = self._plan(int(tokens), mode)
            need = min(self._block_rows(m) for m in range(1, emb.n_cores)) if mode == "stream" and emb.n_cores > 1 else 0
            out[mode] = InferenceOption(plan.estimated_cost(merged_cached=False), 0, need)
        return out

    # -- execution --------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., dim) -> (..., num_embeddings)
        emb = self.embedding
        if self._inference_mode == "cache" or emb.grad_needed() or torch.compiler.is_compiling():
            return F.linear(x, emb.rebuild_weight(hold=self._inference_mode == "cache"), self.bias)
        table = emb.held("weight")
        if table is not None:  # the embedding keeps the table: the plain matmul is the cheapest
            return F.linear(x, table, self.bias)
        lead = x.shape[:-1]
        tokens = math.prod(lead)
        I, J = emb.padded_shape
        x2 = x.reshape(tokens, self.in_features)
        if J != self.in_features:
            x2 = F.pad(x2, (0, J - self.in_features))
        how, plan = self._plan(tokens, self._inference_mode)
        if how == "contract":
            merged = contract.merge_groups(emb.core_list(), plan.groups)
            y = contract.sweep(x2, merged, plan.order)[:, : self.out_features]  # (T, I_padded) -> (T, vocab)
        else:
            y = self._blocks(x2)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*lead, self.out_features)

    def _blocks(self, x2: torch.Tensor) -> torch.Tensor:
        """``x2 (T, J_padded) @ E^T`` with ``E`` rebuilt a block of rows at a time into the workspace: (T, vocab)."""
        emb = self.embedding
        cores = emb.core_list()
        ref = cores[0]
        vocab = self.out_features
        if emb.n_cores == 1:
            return F.linear(x2, ref[0, :vocab, :, 0])
        ws = self.workspace
        capacity = ws.capacity(ref.dtype, ref.device) if ws is not None else contract.JOIN_CHUNK_ELEMENTS
        split = self._choose_split(capacity)
        left, right = contract.merge_halves(cores, split)  # (P, Q, b), (b, I_R, J_R)
        P, I_R = left.shape[0], right.shape[1]
        row_block = self._block_rows(split)
        per = max(1, capacity // row_block)
        direct = not torch.is_autocast_enabled(x2.device.type) and x2.dtype == ref.dtype
        out = x2.new_empty(x2.shape[0], vocab) if direct else None
        for p0 in range(0, P, per):
            r0 = p0 * I_R
            if r0 >= vocab:
                break
            p1 = min(P, p0 + per)
            r1 = min(p1 * I_R, vocab)
            n = (p1 - p0) * row_block
            buf = ws.get(n, ref.dtype, ref.device) if ws is not None else torch.empty(n, dtype=ref.dtype, device=ref.device)
            block = contract.join_halves_into(left, right, buf, p0, p1)[: r1 - r0]  # rows [r0, r1) of E, (r, J_padded)
            if direct:
                torch.mm(x2, block.T, out=out[:, r0:r1])  # (T, J) @ (J, r)
            else:  # autocast or another dtype: F.linear casts
                part = F.linear(x2, block)
                if out is None:
                    out = part.new_empty(x2.shape[0], vocab)
                out[:, r0:r1] = part
        return out

    def _apply(self, fn, *args, **kwargs):  # .to(), .half(): the workspace buffer is reallocated on the next call
        if self.workspace is not None:
            self.workspace.release()
        return super()._apply(fn, *args, **kwargs)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, tied to an MPOEmbedding, "
                f"inference={self._inference_mode!r}")


# ---------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------


@dataclass
class ModuleReport:
    """What happened to one matrix (an LSTM gives one row per W / U, named ``<lstm>.weight_ih_l0`` ...).

    ``shape`` is the matrix's ``(rows, cols)``; ``params_before`` the dense matrix's entries,
    ``params_after`` what is stored now (MPO core entries, or the nonzeros a pruning mask keeps);
    ``rel_error_bound`` bounds ``||W - W'||_F / ||W||_F`` (for the data-aware path it is the measured
    ``rel_weight_error``). ``reason`` says why the module was taken (:class:`mpokit.targets.Target`);
    ``parametrized`` that the module kept its class and forward and an MPO supplies its weight.

    ``method`` (a key of :data:`mpokit.aware.METHODS`), ``layout`` (``"interleaved-5"``, ``"low-rank"``,
    a hybrid, ``"mask"`` for pruning; None when not recorded), ``rel_output_error``
    (``sqrt(tr((W - W') C (W - W')^T) / tr(W C W^T))`` under the calibration data, None without it),
    ``rel_weight_error`` (measured; None when not computed), ``trials`` (one dict per layout tried by
    ``mpo-aware``: layout, params, bonds, both errors) and ``detail`` (sweep history, initialisation...).
    """

    name: str
    kind: str
    source_type: str
    shape: tuple[int, int]
    out_modes: tuple[int, ...]
    in_modes: tuple[int, ...]
    bond_dims: tuple[int, ...]
    params_before: int
    params_after: int
    rel_error_bound: float
    reason: str = ""
    parametrized: bool = False
    method: str = "mpo"
    layout: str | None = None
    rel_output_error: float | None = None
    rel_weight_error: float | None = None
    trials: list[dict] = field(default_factory=list)
    detail: dict = field(default_factory=dict)


@dataclass
class CompressionReport:
    """Per-matrix rows plus model totals. ``str(report)`` is a table.

    ``unmatched`` lists the ``target_modules`` entries that matched no module
    (each also raised a warning); ``tied`` the heads that share or copy an embedding.
    ``method``, ``budget``, ``allocation`` and ``calibration`` (the statistics' summary, None without
    calibration) say how the data-aware path ran; ``seconds`` times its phases (calibration, allocation, fitting).
    """

    modules: list[ModuleReport] = field(default_factory=list)
    model_params_before: int = 0
    model_params_after: int = 0
    tied: list[str] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)
    method: str = "mpo"
    budget: float | None = None
    allocation: str | None = None
    calibration: dict | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def matrix_params_before(self) -> int:
        return sum(r.params_before for r in self.modules)

    @property
    def matrix_params_after(self) -> int:
        return sum(r.params_after for r in self.modules)

    @property
    def data_aware(self) -> bool:
        """Whether the rows carry method / error columns (calibration given, or a method other than TT-SVD)."""
        return any(r.rel_output_error is not None or r.rel_weight_error is not None for r in self.modules)

    def to_dict(self) -> dict:
        return {
            "modules": [asdict(r) for r in self.modules],
            "model_params_before": self.model_params_before,
            "model_params_after": self.model_params_after,
            "tied": list(self.tied),
            "unmatched": list(self.unmatched),
            "method": self.method,
            "budget": self.budget,
            "allocation": self.allocation,
            "calibration": self.calibration,
            "seconds": dict(self.seconds),
        }

    def table(self) -> str:
        aware = self.data_aware
        w = max([len("module")] + [len(r.name) for r in self.modules])
        rw = max([len("reason")] + [len(r.reason) + (len(", parametrized") if r.parametrized else 0) for r in self.modules])
        lw = max([len("layout")] + [len(r.layout or "-") for r in self.modules])
        extra = f" {'method':<12} {'layout':<{lw}}" if aware else ""
        errs = f" {'out.err':>8} {'w.err':>8}" if aware else ""
        head = (f"{'module':<{w}} {'kind':<9}{extra} {'shape':>12} {'out modes':>16} {'in modes':>16} {'bonds':>20} "
                f"{'before':>10} {'after':>10} {'rel.err<=':>9}{errs}  {'reason':<{rw}}")
        lines = [head, "-" * len(head)]
        for r in self.modules:
            why = r.reason + (", parametrized" if r.parametrized else "")
            cols = f" {r.method:<12} {r.layout or '-':<{lw}}" if aware else ""
            err = f" {_fmt(r.rel_output_error):>8} {_fmt(r.rel_weight_error):>8}" if aware else ""
            lines.append(
                f"{r.name:<{w}} {r.kind:<9}{cols} {'x'.join(map(str, r.shape)):>12} {str(r.out_modes):>16} "
                f"{str(r.in_modes):>16} {str(r.bond_dims):>20} {r.params_before:>10,} {r.params_after:>10,} "
                f"{r.rel_error_bound:>9.2e}{err}  {why}"
            )
        lines.append("-" * len(head))
        mb, ma = self.matrix_params_before, self.matrix_params_after
        lines.append(f"{len(self.modules)} matrices: {mb:,} -> {ma:,} parameters ({ma / max(mb, 1):.3f}x)")
        lines.append(
            f"model: {self.model_params_before:,} -> {self.model_params_after:,} parameters "
            f"({self.model_params_after / max(self.model_params_before, 1):.3f}x)"
        )
        if aware:
            how = f"method {self.method}" + (f", budget {self.budget} ({self.allocation})" if self.budget is not None else "")
            if self.calibration:
                how += f"; calibration: {self.calibration['sequences']:,} sequences, {self.calibration['tokens']:,} tokens"
            lines.append(how)
        for t in self.tied:
            lines.append(f"tied: {t}")
        for u in self.unmatched:
            lines.append(f"unmatched target_modules entry: {u!r}")
        return "\n".join(lines)

    __str__ = table


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


# ---------------------------------------------------------------------------
# compress
# ---------------------------------------------------------------------------


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of distinct parameters (shared ones counted once)."""
    seen, total = set(), 0
    for p in model.parameters():  # nn.Module.parameters() already skips duplicates
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def compress(model: nn.Module, config: MPOConfig | None = None, *, calibration=None, return_report: bool = False,
             progress: bool = False):
    """Convert the targeted modules of ``model`` to MPO modules (or prune them), in place.

    Targets come from :func:`mpokit.targets.resolve_targets`; each goes through
    its converter (:data:`mpokit.converters.CONVERTERS`) with the layer config of
    its kind. ``config`` is validated here too (:meth:`MPOConfig.validate`), so
    a field changed after construction is checked. Returns ``model`` (or
    ``(model, report)`` with ``return_report=True``); the
    :class:`CompressionReport` is also kept as ``model.mpo_report`` and the
    config as ``model.mpo_config``. A ``target_modules`` entry that matches no
    module raises a warning and is listed in ``report.unmatched``; ``ValueError``
    names the targets and candidates when nothing matched.

    ``calibration``: a :class:`mpokit.calibration.CalibrationStats`, or an iterable of batches from which
    they are collected on the dense model first (:func:`mpokit.calibration.collect_calibration`). With
    calibration the method defaults to ``"mpo-aware"`` and every row reports its output error under it.
    Method ``"mpo"`` without ``budget`` is today's TT-SVD (identical modules, with or without calibration);
    any other method, or a ``budget``, runs the data-aware path (:func:`_compress_aware`): each matrix is
    approximated by :func:`mpokit.aware.approximate` at its share of the budget; MPO results (mpo, mpo-aware,
    svd, svd-whitened) become MPO modules, pruning results keep the dense module with a
    ``torch.nn.utils.prune`` mask (zeros stay zero through fine-tuning, and :func:`mpokit.save_pretrained` keeps
    the masks; nonzeros are counted as its parameters). ``progress`` shows bars for calibration and fitting.
    """
    import time

    config = MPOConfig() if config is None else config
    targets, unmatched = _resolve(model, config)
    method = config.resolved_method(calibrated=calibration is not None)
    aware = method != "mpo" or config.budget is not None
    if aware:
        _check_aware_inputs(model, targets, config, method, calibration)
    _warn_unmatched(unmatched)
    report = CompressionReport(model_params_before=count_parameters(model), unmatched=list(unmatched), method=method,
                               budget=config.budget, allocation=config.allocation if config.budget is not None else None)
    stats = None
    if calibration is not None:
        t0 = time.perf_counter()
        measurable = [t.name for t in targets if CONVERTERS[t.converter].from_mpo is not None]  # not LSTMs
        stats = stats_or_collect(model, calibration, measurable, progress=progress)
        report.seconds["calibration"] = time.perf_counter() - t0
        report.calibration = stats.summary()
    out_emb = _call(model, "get_output_embeddings")
    t0 = time.perf_counter()
    if aware:
        _compress_aware(model, targets, config, method, stats, out_emb, report, progress)
    else:
        for target in targets:
            _compress_one(model, target, config, out_emb, report, stats)
    report.seconds["fitting"] = time.perf_counter() - t0 - report.seconds.get("allocation", 0.0)
    report.model_params_after = count_parameters(model) - _pruned_zeros(report)
    model.mpo_config = config
    model.mpo_report = report
    mark_trainable(model, config)
    set_recompute(model, config.recompute)
    return (model, report) if return_report else model


def _tied_head(target: Target, out_emb: nn.Module | None) -> nn.Module | None:
    """The output projection sharing ``target``'s weight Parameter, if its converter allows ties."""
    if out_emb is None or not CONVERTERS[target.converter].ties_to_output:
        return None
    weight = target.module._parameters.get("weight")
    return out_emb if weight is not None and out_emb._parameters.get("weight") is weight else None


def _untie_or_refuse(model: nn.Module, target: Target, config: MPOConfig, head, report: CompressionReport) -> None:
    """The ``tied_embeddings`` policy for a target whose weight the output projection ``head`` shares."""
    name, head_name = target.name, _name_of(model, head)
    if config.tied_embeddings == "error":
        raise ValueError(
            f"{name} is tied to the output projection {head_name!r} (same Parameter); "
            "choose MPOConfig(tied_embeddings='tie') to share the MPO cores with the head, "
            "'untie' to keep a dense copy in the head, or exclude the embedding with "
            f"MPOConfig(embedding=None)"
        )
    if config.tied_embeddings == "untie":  # copy first: converting may drop the shared Parameter
        head.weight = nn.Parameter(head.weight.detach().clone())
        if getattr(model, "config", None) is not None and hasattr(model.config, "tie_word_embeddings"):
            model.config.tie_word_embeddings = False
        report.tied.append(f"{head_name} untied from {name} (dense copy kept)")


def _compress_one(model: nn.Module, target: Target, config: MPOConfig, out_emb, report: CompressionReport,
                  stats=None) -> None:
    conv = CONVERTERS[target.converter]
    name = target.name
    head = _tied_head(target, out_emb)
    head_name = _name_of(model, head)
    if head is not None:
        _untie_or_refuse(model, target, config, head, report)
    dense = {suffix: (w.numel(), float(torch.linalg.vector_norm(w.detach().double())))
             for suffix, w in conv.dense_matrices(target.module)}
    originals = {suffix: w.detach() for suffix, w in conv.dense_matrices(target.module)} if stats is not None else {}
    done = convert(target.module, conv, config.layer_config(target.kind))
    if not done.parametrized:
        _set_submodule(model, name, done.module)
    for suffix, m in done.matrices:
        numel, norm = dense[suffix]
        row = ModuleReport(
            name=f"{name}.{suffix}" if suffix else name, kind=target.kind, source_type=conv.name,
            shape=tuple(m.shape), out_modes=m.out_modes, in_modes=m.in_modes, bond_dims=m.bond_dims,
            params_before=numel, params_after=m.num_mpo_params,
            rel_error_bound=float(m.error_bound) / norm if norm > 0 else 0.0,
            reason=target.reason, parametrized=done.parametrized,
        )
        if stats is not None and not suffix and name in stats:  # TT-SVD measured under the calibration data
            _measure(row, originals[suffix], m, stats.objective(name))
        report.modules.append(row)
    if head is not None and config.tied_embeddings == "tie":
        _set_submodule(model, head_name, MPOTiedLinear(done.cores_holder, getattr(head, "bias", None)))
        report.tied.append(f"{head_name} shares the MPO cores of {name}")


@torch.no_grad()
def _measure(row: ModuleReport, original: torch.Tensor, m: MPOModule, objective: dict) -> None:
    from .aware.objective import relative_output_error

    approx = m._rebuild_uncached().detach().to(original.dtype)
    row.rel_output_error = float(relative_output_error(original, approx, **objective))
    norm = float(torch.linalg.vector_norm(original.double()))
    row.rel_weight_error = float(torch.linalg.vector_norm((original - approx).double())) / norm if norm > 0 else 0.0
    row.layout = _layout_name(m.out_modes, m.in_modes, original.shape)


def _layout_name(out_modes, in_modes, shape) -> str:
    from .shapes import choose_modes

    n = len(out_modes)
    if n == 2 and tuple(out_modes) == (shape[0], 1) and tuple(in_modes) == (1, shape[1]):
        return "low-rank"
    return f"interleaved-{n}" if (tuple(out_modes), tuple(in_modes)) == choose_modes(shape[0], shape[1], n) else "given"


def _pruned_zeros(report: CompressionReport) -> int:
    """Entries a pruning mask zeroes (the dense Parameter still holds them)."""
    return sum(r.params_before - r.params_after for r in report.modules if r.layout == "mask")


# ---------------------------------------------------------------------------
# the data-aware path: one method, one budget, every matrix through mpokit.aware
# ---------------------------------------------------------------------------

_FIXED_PATTERN = ("2:4",)  # a sparsity pattern, not a budget: half of every group of 4 is kept


def _check_aware_inputs(model, targets, config: MPOConfig, method: str, calibration) -> None:
    """Every reason the data-aware path would fail, before any work."""
    from .aware.methods import NEEDS

    if method in NEEDS and calibration is None:
        raise ValueError(f"method {method!r} needs calibration data (the layers' input statistics); pass "
                         f"compress(model, config, calibration=batches) or, on the command line, --calibration-data F; "
                         f"or choose a method without data, e.g. method='mpo', 'svd' or 'magnitude'")
    if method in _FIXED_PATTERN and config.budget is not None and config.budget < 0.5:
        raise ValueError(f"method '2:4' keeps 2 of every 4 weights (half the parameters), so budget={config.budget} "
                         "cannot be met; use budget=None or >= 0.5, or another method, e.g. method='wanda'")
    for t in targets:
        conv = CONVERTERS[t.converter]
        if conv.from_mpo is None or len(conv.dense_matrices(t.module)) != 1:
            raise ValueError(f"{t.name} is a {conv.name}, which method {method!r} and budgets do not handle (it holds "
                             "several matrices, or no single weight); exclude it (MPOConfig(exclude_modules=[...])) "
                             "or compress with method='mpo' and a per-kind truncation")
        layer = config.layer_config(t.kind)
        if config.budget is None and (layer.max_bond is not None or layer.rel_error is not None):
            given = "max_bond" if layer.max_bond is not None else "rel_error"
            raise ValueError(f"method {method!r} takes a parameter budget, not {given} ({t.kind}: {layer}); give "
                             "MPOConfig(budget=0.5), or per kind MPOLayerConfig(param_ratio=0.5) / max_params; or use "
                             "method='mpo'")
        if layer.out_modes is not None or layer.in_modes is not None:
            raise ValueError(f"method {method!r} with a budget chooses its own layouts; explicit out_modes / in_modes "
                             f"({t.kind}) work with method='mpo' and a per-kind truncation only; drop them, e.g. "
                             "MPOLayerConfig(n_cores=5)")
        if NEEDS.get(method) == "C" and conv.default_kind == "embedding":
            raise ValueError(f"method {method!r} scores weights by their input activations, which an embedding "
                             f"({t.name}: token ids) does not have; leave it dense (MPOConfig(embedding=None), "
                             "--no-embedding) or choose another method, e.g. method='magnitude'")
        head = _tied_head(t, _call(model, "get_output_embeddings"))
        if head is not None and config.tied_embeddings == "error":
            raise ValueError(f"{t.name} is tied to the output projection {_name_of(model, head)!r}; choose "
                             "MPOConfig(tied_embeddings='tie') or 'untie', or exclude the embedding (embedding=None)")


def _shares(items: list[dict], config: MPOConfig, method: str, report: CompressionReport) -> dict[str, int | None]:
    """Parameters per matrix, from ``budget`` / ``allocation`` or the kinds' criteria.

    None means lossless: ``budget=1``, or a kind without a truncation criterion (exact, as TT-SVD's default).
    Any other share is a cap the method meets, so the shares sum to at most ``budget`` times the dense total.
    """
    import time

    dense = {it["name"]: it["W"].numel() for it in items}
    if config.budget is None:
        out = {}
        for it in items:
            layer = it["layer"]
            if layer.param_ratio is not None:
                out[it["name"]] = max(1, int(layer.param_ratio * dense[it["name"]]))
            else:
                out[it["name"]] = layer.max_params  # None: exact
        return out
    if config.budget >= 1:
        return {k: None for k in dense}
    if config.allocation == "uniform" or method in _FIXED_PATTERN:
        return {k: int(config.budget * n) for k, n in dense.items()}
    from .aware.allocation import allocate_budget, error_curve

    t0 = time.perf_counter()
    curves = {it["name"]: error_curve(method, it["W"], n_cores=it["layer"].n_cores, layouts=it["layouts"],
                                      **it["objective"]) for it in items}
    weights = None
    if config.allocation == "absolute":  # each matrix's output energy tr(W C W^T): relative errors become absolute
        from .aware.objective import output_error

        weights = {it["name"]: output_error(it["W"], torch.zeros_like(it["W"]), **it["objective"]) for it in items}
    shares = allocate_budget(curves, int(config.budget * sum(dense.values())), weights)
    report.seconds["allocation"] = time.perf_counter() - t0
    return {k: int(shares[k]) for k in dense}


def _lossless_params(method: str, shape: tuple[int, int], n_cores: int) -> int:
    """A parameter count at which ``method`` is exact for a full-rank ``(out, in)`` matrix."""
    from .shapes import choose_modes, full_bond_dims, mpo_num_params

    out, inn = shape
    if method in ("svd", "svd-whitened"):
        return min(out, inn) * (out + inn)
    if method in ("mpo", "mpo-aware"):
        om, im = choose_modes(out, inn, n_cores)
        return max(out * inn, mpo_num_params(om, im, full_bond_dims(om, im)))
    return out * inn


def _approximate(method: str, item: dict, share: int | None, config: MPOConfig):
    """:func:`mpokit.aware.approximate` of one matrix at ``share`` parameters (None: lossless)."""
    from .aware import approximate

    W, layer = item["W"], item["layer"]
    options = {}
    if method == "mpo-aware":
        options.update(max_sweeps=config.max_sweeps, fit_top=config.fit_top, layouts=item["layouts"])
    if share is None:
        if method in ("mpo", "mpo-aware"):  # exact TT-SVD: every layout is exact, the default one is kept
            approx = approximate("mpo", W, max_params=_lossless_params("mpo", tuple(W.shape), layer.n_cores),
                                 n_cores=layer.n_cores, **item["objective"])
            approx.detail = {**approx.detail, "lossless": True}
            return approx
        share = _lossless_params(method, tuple(W.shape), layer.n_cores)
    return approximate(method, W, max_params=share, n_cores=layer.n_cores, **item["objective"], **options)


def _compress_aware(model: nn.Module, targets: list[Target], config: MPOConfig, method: str, stats, out_emb,
                    report: CompressionReport, progress: bool) -> None:
    """Approximate every target's matrix with ``method`` at its share of the budget, and install the result."""
    from tqdm.auto import tqdm

    from .aware.layouts import layouts_for

    items = []
    for t in targets:
        conv = CONVERTERS[t.converter]
        ((_, W),) = conv.dense_matrices(t.module)
        objective = stats.objective(t.name) if stats is not None else {}
        layer = config.layer_config(t.kind)
        layouts = layouts_for(*W.shape, config.layout_search, n_cores=layer.n_cores,
                              row_weighted="row_weights" in objective)  # those mpo-aware tries, and its error curve's
        items.append({"name": t.name, "target": t, "conv": conv, "W": W.detach(), "layer": layer,
                      "objective": objective, "layouts": layouts})
    shares = _shares(items, config, method, report)
    for it in tqdm(items, desc=f"compress ({method})", disable=not progress, leave=False):
        approx = _approximate(method, it, shares[it["name"]], config)
        _install(model, it, approx, config, out_emb, report)


@torch.no_grad()
def _install(model: nn.Module, item: dict, approx, config: MPOConfig, out_emb, report: CompressionReport) -> None:
    """Put ``approx`` (an :class:`mpokit.aware.methods.Approximation`) in place of the target and add its row."""
    from .converters import convert_from_mpo

    target, conv, W = item["target"], item["conv"], item["W"]
    name = target.name
    head = _tied_head(target, out_emb)
    head_name = _name_of(model, head)
    if head is not None:
        _untie_or_refuse(model, target, config, head, report)
    norm = float(torch.linalg.vector_norm(W.double()))
    row = ModuleReport(
        name=name, kind=target.kind, source_type=conv.name, shape=tuple(W.shape), out_modes=(), in_modes=(),
        bond_dims=(), params_before=W.numel(), params_after=int(approx.params),
        rel_error_bound=float(approx.rel_weight_error), reason=target.reason, method=approx.method,
        rel_output_error=float(approx.rel_output_error) if item["objective"] else None,
        rel_weight_error=float(approx.rel_weight_error),
        detail=_jsonable({k: v for k, v in approx.detail.items() if k not in ("fit", "trials")}),
    )
    row.method = report.method  # a lossless share is an exact TT-SVD whatever the method
    row.trials = [_jsonable(t) for t in approx.detail.get("trials", [])]
    if approx.mpo is not None:
        done = convert_from_mpo(target.module, conv, approx.mpo)
        if not done.parametrized:
            _set_submodule(model, name, done.module)
        ((_, m),) = done.matrices
        row.out_modes, row.in_modes, row.bond_dims = m.out_modes, m.in_modes, m.bond_dims
        row.params_after, row.parametrized = m.num_mpo_params, done.parametrized
        row.layout = approx.layout.name if approx.layout is not None else _layout_name(m.out_modes, m.in_modes, W.shape)
        if head is not None and config.tied_embeddings == "tie":
            _set_submodule(model, head_name, MPOTiedLinear(done.cores_holder, getattr(head, "bias", None)))
            report.tied.append(f"{head_name} shares the MPO cores of {name}")
    else:
        _apply_mask(target.module, approx.mask, conv)
        row.layout = "mask"
        if head is not None and config.tied_embeddings == "tie":
            _apply_mask(head, approx.mask, conv)  # the head's weight is the same Parameter: one mask for both
            report.tied.append(f"{head_name} shares the pruned weight of {name} (same mask)")
    report.modules.append(row)


def _apply_mask(module: nn.Module, mask: torch.Tensor, conv) -> None:
    """``torch.nn.utils.prune``: ``weight = weight_orig * weight_mask`` before every forward (see
    :mod:`mpokit.baselines.pruning`); ``mask (rows, cols)`` is laid out as the module stores its weight."""
    from torch.nn.utils import prune

    weight = module.weight
    mask = mask.t() if conv.weight_transposed and tuple(mask.shape) != tuple(weight.shape) else mask
    if prune.is_pruned(module) and hasattr(module, "weight_mask"):
        mask = mask.to(module.weight_mask.device).bool() & module.weight_mask.bool()
        prune.remove(module, "weight")
    prune.custom_from_mask(module, "weight", mask.to(device=weight.device, dtype=weight.dtype))


def _jsonable(value):
    """``value`` as JSON data: dataclasses as dicts, tensors as lists, tuples as lists; other objects as strings."""
    import dataclasses

    if isinstance(value, MPO):
        return {"out_modes": list(value.out_modes), "in_modes": list(value.in_modes), "bond_dims": list(value.bond_dims)}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist() if value.numel() <= 64 else f"tensor{tuple(value.shape)}"
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, numbers.Number):
        return float(value)
    return str(value)


# ---------------------------------------------------------------------------
# parameter roles, freezing, counting
# ---------------------------------------------------------------------------


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, (nn.LayerNorm, nn.RMSNorm, nn.GroupNorm)) or type(module).__name__.endswith(
        ("LayerNorm", "RMSNorm")
    )


def parameter_roles(model: nn.Module) -> dict[str, str]:
    """``{parameter name: role}`` for every distinct parameter, roles in :data:`ROLES`.

    Decided by structure: MPO cores by :meth:`MPOModule.central_parameters` /
    ``auxiliary_parameters``; ``head`` = parameters outside ``model.base_model``;
    ``layernorm`` = parameters of norm modules; ``bias`` = a module's ``bias``
    attribute; ``embedding`` = dense ``nn.Embedding`` weights; else ``other``.
    """
    role: dict[int, str] = {}
    for _, m in mpo_modules(model):
        for p in m.central_parameters():
            role[id(p)] = "mpo_central"
        for p in m.auxiliary_parameters():
            role[id(p)] = "mpo_auxiliary"
    base = getattr(model, "base_model", model)
    base_ids = {id(p) for p in base.parameters()} if isinstance(base, nn.Module) else set()
    for p in model.parameters():
        if id(p) not in role and base is not model and id(p) not in base_ids:
            role[id(p)] = "head"
    for m in model.modules():
        if _is_norm(m):
            for p in m.parameters(recurse=False):
                role.setdefault(id(p), "layernorm")
    for m in model.modules():
        b = m._parameters.get("bias") if hasattr(m, "_parameters") else None
        if b is not None:
            role.setdefault(id(b), "bias")
        w = m._parameters.get("weight") if isinstance(m, nn.Embedding) else None
        if w is not None:  # a parametrized embedding has no weight Parameter (its MPO cores are already assigned)
            role.setdefault(id(w), "embedding")
    return {name: role.get(id(p), "other") for name, p in model.named_parameters()}


def _trainable_by_role(config: MPOConfig) -> dict[str, bool]:
    return {
        "mpo_central": config.trainable in ("all", "central"),
        "mpo_auxiliary": config.trainable in ("all", "auxiliary"),
        "head": config.train_head,
        "layernorm": config.train_layernorm,
        "bias": config.train_biases,
        "embedding": config.train_embeddings,
        "other": config.train_other,
    }


def set_recompute(model: nn.Module, recompute: bool) -> int:
    """Set ``recompute`` on every MPO layer of ``model`` (see :class:`MPOConfig`); returns how many."""
    layers = [m for m in model.modules() if isinstance(m, MPOModule)]
    for m in layers:
        m.recompute = bool(recompute)
    return len(layers)


def mark_trainable(model: nn.Module, config: MPOConfig | str | None = None) -> dict[str, int]:
    """Set ``requires_grad`` of every parameter from ``config`` (or a ``trainable`` string); returns counts per role.

    Works on any model: without MPO layers only the non-MPO flags matter
    (BitFit = ``MPOConfig(train_head=True, train_other=False, train_embeddings=False)``).
    """
    if config is None:
        config = getattr(model, "mpo_config", None) or MPOConfig()
    elif isinstance(config, str):
        config = MPOConfig(trainable=config)
    if not isinstance(config, MPOConfig):
        raise TypeError(f"config must be an MPOConfig or a trainable string, got {config!r}; e.g. 'auxiliary'")
    allowed = _trainable_by_role(config)
    roles = parameter_roles(model)
    counts = {r: 0 for r in ROLES}
    for name, p in model.named_parameters():
        on = allowed[roles[name]]
        p.requires_grad_(on)
        if on:
            counts[roles[name]] += p.numel()
    return counts


def print_trainable_parameters(model: nn.Module, *, file=None) -> tuple[int, int]:
    """Print ``trainable params: X || all params: Y || trainable%: Z`` plus a per-role breakdown; returns (X, Y)."""
    trainable = count_parameters(model, trainable_only=True)
    total = count_parameters(model)
    roles = parameter_roles(model)
    per_role: dict[str, list[int]] = {r: [0, 0] for r in ROLES}
    for name, p in model.named_parameters():
        per_role[roles[name]][1] += p.numel()
        if p.requires_grad:
            per_role[roles[name]][0] += p.numel()
    parts = ", ".join(f"{r} {t:,}/{a:,}" for r, (t, a) in per_role.items() if a)
    print(
        f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100.0 * trainable / max(total, 1):.4f}\n"
        f"  by role (trainable/all): {parts}",
        file=file,
    )
    return trainable, total


# ---------------------------------------------------------------------------
# merge back to dense
# ---------------------------------------------------------------------------


@torch.no_grad()
def merge_and_unload(model: nn.Module) -> nn.Module:
    """Replace every converted module by its dense equivalent, in place; returns ``model``.

    Each goes back through its converter: MPOLinear -> ``nn.Linear`` (or ``Conv1D``
    when it came from one), MPOEmbedding -> ``nn.Embedding``, MPOLSTM -> ``nn.LSTM``;
    a module that kept its own forward gets a dense ``weight`` Parameter again;
    a head tied to an MPO embedding -> ``nn.Linear`` sharing the dense embedding's
    weight. All parameters are left trainable, as in a freshly loaded model.
    """
    dense_of: dict[int, nn.Module] = {}
    for name, m, conv, parametrized in converted_modules(model):
        if parametrized:
            holder = m.parametrizations["weight"][0]
            detach_weight(m)
            dense_of[id(holder)] = m
        else:
            dense = conv.to_dense(m)
            dense_of[id(m)] = dense
            _set_submodule(model, name, dense)
    for name, m in list(model.named_modules()):
        if isinstance(m, MPOTiedLinear):
            emb = dense_of.get(id(m.embedding))
            if emb is None:
                raise RuntimeError(f"{name} is tied to an MPO embedding that is no longer in the model")
            head = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None,
                             device=emb.weight.device, dtype=emb.weight.dtype)
            head.weight = emb.weight  # tied again, as in the original model
            if m.bias is not None:
                head.bias.copy_(m.bias)
            _set_submodule(model, name, head)
    for p in model.parameters():
        p.requires_grad_(True)
    for attr in ("mpo_config", "mpo_report"):
        if attr in model.__dict__:
            del model.__dict__[attr]
    return model
