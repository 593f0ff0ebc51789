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

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .config import MPOConfig
from .converters import CONVERTERS, convert, converted_modules, detach_weight
from .layers.base import MPOModule
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
    """

    def __init__(self, embedding: nn.Module, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        object.__setattr__(self, "embedding", embedding)
        self.in_features = embedding.shape[1]
        self.out_features = embedding.shape[0]
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=bias.requires_grad)

    @property
    def weight(self) -> torch.Tensor:
        return self.embedding.rebuild_weight()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., dim) -> (..., num_embeddings)
        return F.linear(x, self.embedding.rebuild_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, tied to an MPOEmbedding"


# ---------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------


@dataclass
class ModuleReport:
    """What happened to one matrix (an LSTM gives one row per W / U, named ``<lstm>.weight_ih_l0`` ...).

    ``shape`` is the MPO's ``(rows, cols)``; ``params_before`` the dense matrix's
    entries, ``params_after`` its MPO's; ``rel_error_bound`` bounds
    ``||W - W_mpo||_F / ||W||_F``. ``reason`` says why the module was taken
    (:class:`mpokit.targets.Target`); ``parametrized`` that the module kept its
    class and forward and an MPO supplies its weight.
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


@dataclass
class CompressionReport:
    """Per-matrix rows plus model totals. ``str(report)`` is a table.

    ``unmatched`` lists the ``target_modules`` entries that matched no module
    (each also raised a warning); ``tied`` the heads that share or copy an embedding.
    """

    modules: list[ModuleReport] = field(default_factory=list)
    model_params_before: int = 0
    model_params_after: int = 0
    tied: list[str] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)

    @property
    def matrix_params_before(self) -> int:
        return sum(r.params_before for r in self.modules)

    @property
    def matrix_params_after(self) -> int:
        return sum(r.params_after for r in self.modules)

    def to_dict(self) -> dict:
        return {
            "modules": [asdict(r) for r in self.modules],
            "model_params_before": self.model_params_before,
            "model_params_after": self.model_params_after,
            "tied": list(self.tied),
            "unmatched": list(self.unmatched),
        }

    def table(self) -> str:
        w = max([len("module")] + [len(r.name) for r in self.modules])
        rw = max([len("reason")] + [len(r.reason) + (len(", parametrized") if r.parametrized else 0) for r in self.modules])
        head = (f"{'module':<{w}} {'kind':<9} {'shape':>12} {'out modes':>16} {'in modes':>16} {'bonds':>20} "
                f"{'before':>10} {'after':>10} {'rel.err<=':>9}  {'reason':<{rw}}")
        lines = [head, "-" * len(head)]
        for r in self.modules:
            why = r.reason + (", parametrized" if r.parametrized else "")
            lines.append(
                f"{r.name:<{w}} {r.kind:<9} {'x'.join(map(str, r.shape)):>12} {str(r.out_modes):>16} "
                f"{str(r.in_modes):>16} {str(r.bond_dims):>20} {r.params_before:>10,} {r.params_after:>10,} "
                f"{r.rel_error_bound:>9.2e}  {why}"
            )
        lines.append("-" * len(head))
        mb, ma = self.matrix_params_before, self.matrix_params_after
        lines.append(f"{len(self.modules)} matrices: {mb:,} -> {ma:,} parameters ({ma / max(mb, 1):.3f}x)")
        lines.append(
            f"model: {self.model_params_before:,} -> {self.model_params_after:,} parameters "
            f"({self.model_params_after / max(self.model_params_before, 1):.3f}x)"
        )
        for t in self.tied:
            lines.append(f"tied: {t}")
        for u in self.unmatched:
            lines.append(f"unmatched target_modules entry: {u!r}")
        return "\n".join(lines)

    __str__ = table


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


def compress(model: nn.Module, config: MPOConfig | None = None, *, return_report: bool = False):
    """Convert the targeted modules of ``model`` to MPO modules, in place.

    Targets come from :func:`mpokit.targets.resolve_targets`; each goes through
    its converter (:data:`mpokit.converters.CONVERTERS`) with the layer config of
    its kind. ``config`` is validated here too (:meth:`MPOConfig.validate`), so
    a field changed after construction is checked. Returns ``model`` (or
    ``(model, report)`` with ``return_report=True``); the
    :class:`CompressionReport` is also kept as ``model.mpo_report`` and the
    config as ``model.mpo_config``. A ``target_modules`` entry that matches no
    module raises a warning and is listed in ``report.unmatched``; ``ValueError``
    names the targets and candidates when nothing matched.
    """
    config = MPOConfig() if config is None else config
    targets, unmatched = _resolve(model, config)
    _warn_unmatched(unmatched)
    report = CompressionReport(model_params_before=count_parameters(model), unmatched=list(unmatched))
    out_emb = _call(model, "get_output_embeddings")
    for target in targets:
        _compress_one(model, target, config, out_emb, report)
    report.model_params_after = count_parameters(model)
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


def _compress_one(model: nn.Module, target: Target, config: MPOConfig, out_emb, report: CompressionReport) -> None:
    conv = CONVERTERS[target.converter]
    name = target.name
    head = _tied_head(target, out_emb)
    head_name = _name_of(model, head)
    if head is not None:
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
    dense = {suffix: (w.numel(), float(torch.linalg.vector_norm(w.detach().double())))
             for suffix, w in conv.dense_matrices(target.module)}
    done = convert(target.module, conv, config.layer_config(target.kind))
    if not done.parametrized:
        _set_submodule(model, name, done.module)
    for suffix, m in done.matrices:
        numel, norm = dense[suffix]
        report.modules.append(ModuleReport(
            name=f"{name}.{suffix}" if suffix else name, kind=target.kind, source_type=conv.name,
            shape=tuple(m.shape), out_modes=m.out_modes, in_modes=m.in_modes, bond_dims=m.bond_dims,
            params_before=numel, params_after=m.num_mpo_params,
            rel_error_bound=float(m.error_bound) / norm if norm > 0 else 0.0,
            reason=target.reason, parametrized=done.parametrized,
        ))
    if head is not None and config.tied_embeddings == "tie":
        _set_submodule(model, head_name, MPOTiedLinear(done.cores_holder, getattr(head, "bias", None)))
        report.tied.append(f"{head_name} shares the MPO cores of {name}")


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
