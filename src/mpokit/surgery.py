"""Model surgery: turn the matrices of a transformers model into MPO layers, and back.

* :func:`compress` (in place) replaces targeted ``nn.Linear`` / GPT-2 ``Conv1D`` /
  ``nn.Embedding`` modules with :class:`~mpokit.layers.MPOLinear` /
  :class:`~mpokit.layers.MPOEmbedding`, through their parent module, keeping
  device and dtype; it records a :class:`CompressionReport` and applies the
  config's trainable settings (:func:`mark_trainable`).
* Targets come from :class:`~mpokit.config.MPOConfig` (names, suffixes, regex,
  types) or from the per-architecture registry (:data:`ARCHITECTURES`: BERT,
  incl. all-MiniLM-L6-v2, ALBERT, DistilBERT, RoBERTa, GPT-2, Llama).
* :func:`merge_and_unload` rebuilds dense layers (``Conv1D`` comes back as ``Conv1D``).
* Parameter roles (MPO central / auxiliary core, head, norm, bias, embedding,
  other) are decided by module structure (:meth:`MPOModule.central_parameters`,
  ``model.base_model``, module types), never by parameter-name strings.

Orientation: an MPO always holds ``W (out_features, in_features)`` (``nn.Linear``
layout). GPT-2's ``Conv1D`` stores ``(in_features, out_features)``, so its
weight is transposed on the way in and back on the way out.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .config import KINDS, MPOConfig
from .layers.base import MPOModule

__all__ = [
    "ArchitectureDefaults",
    "ARCHITECTURES",
    "register_architecture",
    "CompressionReport",
    "ModuleReport",
    "MPOTiedLinear",
    "compress",
    "find_targets",
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


# ---------------------------------------------------------------------------
# per-architecture defaults (a registry, not an if/elif chain)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ArchitectureDefaults:
    """Which modules of one architecture are MPO targets, per kind.

    ``patterns`` maps a kind (``embedding``, ``attention``, ``ffn``, ``other``)
    to a regular expression searched in the full module name.
    """

    model_type: str
    patterns: dict[str, str]

    def kind_of(self, name: str) -> str | None:
        for kind in KINDS:
            pat = self.patterns.get(kind)
            if pat is not None and re.search(pat, name):
                return kind
        return None


ARCHITECTURES: dict[str, ArchitectureDefaults] = {}


def register_architecture(defaults: ArchitectureDefaults) -> None:
    """Add or replace the default targets of ``defaults.model_type`` (``model.config.model_type``)."""
    bad = set(defaults.patterns) - set(KINDS)
    if bad:
        raise ValueError(f"unknown kinds {sorted(bad)} in patterns; valid kinds are {KINDS}")
    ARCHITECTURES[defaults.model_type] = defaults


_BERT = {
    "embedding": r"(^|\.)embeddings\.word_embeddings$",
    "attention": r"(^|\.)layer\.\d+\.attention\.(self\.(query|key|value)|output\.dense)$",
    "ffn": r"(^|\.)layer\.\d+\.(intermediate|output)\.dense$",
    "other": r"(^|\.)pooler\.dense$",
}
for _t in ("bert", "roberta"):
    register_architecture(ArchitectureDefaults(_t, dict(_BERT)))
register_architecture(ArchitectureDefaults("albert", {
    "embedding": r"(^|\.)embeddings\.word_embeddings$",
    "attention": r"(^|\.)albert_layers\.\d+\.attention\.(query|key|value|dense)$",
    "ffn": r"(^|\.)albert_layers\.\d+\.(ffn|ffn_output)$",
    "other": r"(^|\.)(pooler|encoder\.embedding_hidden_mapping_in)$",
}))
register_architecture(ArchitectureDefaults("distilbert", {
    "embedding": r"(^|\.)embeddings\.word_embeddings$",
    "attention": r"(^|\.)layer\.\d+\.attention\.(q_lin|k_lin|v_lin|out_lin)$",
    "ffn": r"(^|\.)layer\.\d+\.ffn\.(lin1|lin2)$",
}))
register_architecture(ArchitectureDefaults("gpt2", {
    "embedding": r"(^|\.)wte$",
    "attention": r"(^|\.)h\.\d+\.attn\.(c_attn|c_proj)$",
    "ffn": r"(^|\.)h\.\d+\.mlp\.(c_fc|c_proj)$",
}))
register_architecture(ArchitectureDefaults("llama", {
    "embedding": r"(^|\.)embed_tokens$",
    "attention": r"(^|\.)layers\.\d+\.self_attn\.(q_proj|k_proj|v_proj|o_proj)$",
    "ffn": r"(^|\.)layers\.\d+\.mlp\.(gate_proj|up_proj|down_proj)$",
}))


# ---------------------------------------------------------------------------
# module types
# ---------------------------------------------------------------------------


def _is_conv1d(module: nn.Module) -> bool:
    """transformers' GPT-2 ``Conv1D``: ``y = x @ weight + bias``, weight ``(in_features, out_features)``."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and getattr(module, "weight", None) is not None


def _type_name(module: nn.Module) -> str | None:
    if isinstance(module, MPOModule) or isinstance(module, MPOTiedLinear):
        return None
    if isinstance(module, nn.Linear):
        return "Linear"
    if isinstance(module, nn.Embedding):
        return "Embedding"
    if _is_conv1d(module):
        return "Conv1D"
    return None


def _layers():
    from .layers import MPOLinear

    try:
        from .layers import MPOEmbedding
    except ImportError:  # pragma: no cover - layers package without embeddings
        MPOEmbedding = None
    return MPOLinear, MPOEmbedding


def mpo_modules(model: nn.Module) -> list[tuple[str, MPOModule]]:
    """``(name, module)`` for every MPO layer (instances of :class:`MPOModule`) in ``model``."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, MPOModule)]


class MPOTiedLinear(nn.Module):
    """An output projection tied to an :class:`MPOEmbedding`: ``y = x E^T + b``, ``E (num_embeddings, dim)``.

    It owns no cores: the embedding's cores are the only copy, so the tie
    survives training and truncation. The embedding is referenced, not
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
    """What happened to one module."""

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


@dataclass
class CompressionReport:
    """Per-module rows plus model totals. ``str(report)`` is a table."""

    modules: list[ModuleReport] = field(default_factory=list)
    model_params_before: int = 0
    model_params_after: int = 0
    tied: list[str] = field(default_factory=list)

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
        }

    def table(self) -> str:
        w = max([len("module")] + [len(r.name) for r in self.modules])
        head = f"{'module':<{w}} {'kind':<9} {'shape':>12} {'out modes':>16} {'in modes':>16} {'bonds':>20} {'before':>10} {'after':>10} {'rel.err<=':>9}"
        lines = [head, "-" * len(head)]
        for r in self.modules:
            lines.append(
                f"{r.name:<{w}} {r.kind:<9} {'x'.join(map(str, r.shape)):>12} {str(r.out_modes):>16} "
                f"{str(r.in_modes):>16} {str(r.bond_dims):>20} {r.params_before:>10,} {r.params_after:>10,} "
                f"{r.rel_error_bound:>9.2e}"
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
        return "\n".join(lines)

    __str__ = table


# ---------------------------------------------------------------------------
# targets
# ---------------------------------------------------------------------------


def _name_matches(name: str, entries: Iterable[str]) -> bool:
    return any(name == e or name.endswith("." + e) for e in entries)


def _model_type(model: nn.Module, config: MPOConfig) -> str | None:
    if config.model_type is not None:
        return config.model_type
    hf_config = getattr(model, "config", None)
    return getattr(hf_config, "model_type", None)


def find_targets(model: nn.Module, config: MPOConfig) -> list[tuple[str, nn.Module, str]]:
    """``(name, module, kind)`` of every module :func:`compress` would replace. Raises if none match."""
    if not isinstance(config, MPOConfig):
        raise TypeError(f"config must be an MPOConfig, got {type(config).__name__}; e.g. MPOConfig(trainable='auxiliary')")
    model_type = _model_type(model, config)
    arch = ARCHITECTURES.get(model_type) if model_type else None
    if config.uses_defaults and arch is None:
        raise ValueError(
            f"no default MPO targets for model type {model_type!r}; supported: {sorted(ARCHITECTURES)}. "
            "Name the targets yourself, e.g. MPOConfig(target_modules=['q_proj', 'v_proj']) or "
            "MPOConfig(target_regex=r'.*\\.mlp\\..*'), or register_architecture(...)"
        )
    regex = re.compile(config.target_regex) if config.target_regex else None
    targets, candidates = [], []
    for name, module in model.named_modules():
        tname = _type_name(module)
        if tname is None or not name:
            continue
        candidates.append(name)
        if tname not in config.target_types or _name_matches(name, config.exclude_modules):
            continue
        kind = arch.kind_of(name) if arch is not None else None
        if config.uses_defaults:
            if kind is None:
                continue
        else:
            hit = (config.target_modules is not None and _name_matches(name, config.target_modules)) or (
                regex is not None and regex.fullmatch(name) is not None
            )
            if not hit:
                continue
            kind = kind or ("embedding" if tname == "Embedding" else "other")
        if config.layer_config(kind) is None:
            continue
        targets.append((name, module, kind))
    if not targets:
        wanted = (
            f"the {model_type} defaults for kinds {[k for k in KINDS if config.layer_config(k) is not None]}"
            if config.uses_defaults
            else f"target_modules={config.target_modules}, target_regex={config.target_regex!r}"
        )
        raise ValueError(
            f"no module matched {wanted} with target_types={config.target_types}, "
            f"exclude_modules={config.exclude_modules}. Candidate modules include {candidates[:8]}"
            f"{' ...' if len(candidates) > 8 else ''}; e.g. MPOConfig(target_modules=['{candidates[0].rsplit('.', 1)[-1] if candidates else 'query'}'])"
        )
    return targets


# ---------------------------------------------------------------------------
# compress
# ---------------------------------------------------------------------------


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _module_name(model: nn.Module, target: nn.Module) -> str | None:
    for name, m in model.named_modules(remove_duplicate=False):
        if m is target:
            return name
    return None


def _to_mpo(module: nn.Module, tname: str, options: dict) -> tuple[nn.Module, torch.Tensor]:
    """The MPO layer for ``module`` and the dense matrix it approximates ``(rows, cols)``."""
    MPOLinear, MPOEmbedding = _layers()
    if tname == "Linear":
        return MPOLinear.from_linear(module, **options), module.weight.detach()
    if tname == "Conv1D":
        weight = module.weight.detach().t()  # Conv1D stores (in, out); the MPO holds (out, in)
        linear = nn.Linear(weight.shape[1], weight.shape[0], bias=module.bias is not None,
                           device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(weight)
            if module.bias is not None:
                linear.bias.copy_(module.bias)
        linear.train(module.training)
        layer = MPOLinear.from_linear(linear, **options)
        layer.source_type = "Conv1D"
        return layer, weight
    if MPOEmbedding is None:
        raise RuntimeError("MPOEmbedding is not available in mpokit.layers; cannot compress embeddings yet")
    layer = MPOEmbedding.from_embedding(module, **options)
    pad = module.padding_idx
    if pad is not None and bool(module.weight[pad].detach().any()):
        # MPOEmbedding zeroes the output at padding_idx (nn.Embedding's zero-initialised row); a pre-trained
        # table can hold a non-zero padding row (all-MiniLM-L6-v2 does), which nn.Embedding returns as is.
        # Keep that behaviour: no masking, and remember the index for merge_and_unload.
        layer.padding_idx = None
    layer.source_padding_idx = pad
    return layer, module.weight.detach()


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
    """Replace the targeted matrices of ``model`` by MPO layers, in place.

    Returns ``model`` (or ``(model, report)`` with ``return_report=True``); the
    :class:`CompressionReport` is also kept as ``model.mpo_report`` and the
    config as ``model.mpo_config``. Raises ``ValueError`` naming the targets
    when nothing matched, or for an unknown model type without explicit targets.
    """
    config = MPOConfig() if config is None else config
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch nn.Module, got {type(model).__name__}")
    targets = find_targets(model, config)
    report = CompressionReport(model_params_before=count_parameters(model))
    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    tied_to_replace: list[tuple[nn.Module, nn.Module]] = []
    for name, module, kind in targets:
        tname = _type_name(module)
        if tname == "Embedding" and out_emb is not None and getattr(out_emb, "weight", None) is module.weight:
            if config.tied_embeddings == "error":
                raise ValueError(
                    f"{name} is tied to the output projection {_module_name(model, out_emb)!r} (same Parameter); "
                    "choose MPOConfig(tied_embeddings='tie') to share the MPO cores with the head, "
                    "'untie' to keep a dense copy in the head, or exclude the embedding with "
                    f"MPOConfig(embedding=None)"
                )
            tied_to_replace.append((module, out_emb))
        layer_cfg = config.layer_config(kind)
        dense = module.weight.numel()
        new, matrix = _to_mpo(module, tname, layer_cfg.mpo_options(dense))
        norm = float(torch.linalg.vector_norm(matrix.double()))
        _set_submodule(model, name, new)
        report.modules.append(ModuleReport(
            name=name, kind=kind, source_type=tname, shape=tuple(new.shape), out_modes=new.out_modes,
            in_modes=new.in_modes, bond_dims=new.bond_dims, params_before=dense, params_after=new.num_mpo_params,
            rel_error_bound=float(new.error_bound) / norm if norm > 0 else 0.0,
        ))
        for old_emb, head in tied_to_replace:
            if old_emb is module:
                head_name = _module_name(model, head)
                if config.tied_embeddings == "tie":
                    _set_submodule(model, head_name, MPOTiedLinear(new, getattr(head, "bias", None)))
                    report.tied.append(f"{head_name} shares the MPO cores of {name}")
                else:  # untie: the head keeps its own dense copy
                    head.weight = nn.Parameter(head.weight.detach().clone())
                    if getattr(model, "config", None) is not None and hasattr(model.config, "tie_word_embeddings"):
                        model.config.tie_word_embeddings = False
                    report.tied.append(f"{head_name} untied from {name} (dense copy kept)")
    report.model_params_after = count_parameters(model)
    model.mpo_config = config
    model.mpo_report = report
    mark_trainable(model, config)
    set_recompute(model, config.recompute)
    return (model, report) if return_report else model


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
        if isinstance(m, nn.Embedding):
            role.setdefault(id(m.weight), "embedding")
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
    """Replace every MPO layer by its dense equivalent, in place; returns ``model``.

    MPOLinear -> ``nn.Linear`` (or ``Conv1D`` when it came from one), MPOEmbedding
    -> ``nn.Embedding``, a head tied to an MPO embedding -> ``nn.Linear`` sharing
    the dense embedding's weight. All parameters are left trainable, as in a
    freshly loaded model.
    """
    dense_of: dict[int, nn.Module] = {}
    for name, m in mpo_modules(model):
        if hasattr(m, "to_linear"):
            dense = m.to_linear()
            if getattr(m, "source_type", None) == "Conv1D":
                from transformers.pytorch_utils import Conv1D

                conv = Conv1D(dense.out_features, dense.in_features).to(device=dense.weight.device, dtype=dense.weight.dtype)
                conv.weight.copy_(dense.weight.t())
                if dense.bias is not None:
                    conv.bias.copy_(dense.bias)
                else:
                    conv.bias = None
                dense = conv
        elif hasattr(m, "to_embedding"):
            dense = m.to_embedding()
            pad = getattr(m, "source_padding_idx", m.padding_idx)
            if pad is not None and m.padding_idx is None:
                dense.padding_idx = pad  # the row keeps its (non-zero) value, as in the original table
        else:
            continue
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

