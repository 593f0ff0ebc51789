"""Target resolution: which modules of a model become MPOs, of which kind, and why (PEFT's conventions).

Candidates are the dense modules a registered converter takes
(:func:`mpokit.converters.dense_modules`: ``nn.Linear``, ``Conv1D``, ``nn.Embedding``,
``nn.LSTM``, ...). :class:`~mpokit.config.MPOConfig` selects among them:

* ``target_modules`` a list: names matched exactly or as a dotted suffix
  (``"query"`` matches ``"bert.encoder.layer.0.attention.self.query"``); reason
  ``"target_modules"``. An entry that matches no candidate is reported
  (a warning, and ``CompressionReport.unmatched``).
* ``target_modules`` a string: a regular expression full-matched against each
  name (``r".*\\.(q|v)_proj"``); reason ``"target_modules (regex)"``. The string
  ``"all-linear"`` selects the fallback below instead.
* ``target_regex``: a regular expression full-matched against each name; reason ``"target_regex"``.
* neither, for a model type in :data:`ARCHITECTURES` (``model.config.model_type``
  or ``MPOConfig.model_type``): the registered defaults; reason ``"registry (<type>)"``.
* neither, for any other model (or ``target_modules="all-linear"``): every
  linear-type module (``nn.Linear``, ``Conv1D``, ``nn.LSTM``) except the output
  head (``model.get_output_embeddings()`` and everything outside
  ``model.base_model``, e.g. ``classifier``, ``score``, ``lm_head``), plus the input
  word embedding (``model.get_input_embeddings()``); reason ``"fallback (all-linear)"``.

``target_types`` (converter names) and ``exclude_modules`` (names / suffixes)
filter every selection; a kind whose layer config is ``None`` stays dense.

Kinds. A registered architecture's patterns decide the kind (``embedding``,
``attention``, ``ffn``, ``other``); otherwise the converter's default kind
(``embedding`` for embeddings), else :func:`guess_kind` from the name.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from typing import Iterable

from torch import nn

from .config import ALL_LINEAR, KINDS, MPOConfig
from .converters import CONVERTERS, dense_modules

__all__ = [
    "ArchitectureDefaults",
    "ARCHITECTURES",
    "register_architecture",
    "Target",
    "resolve_targets",
    "find_targets",
    "linear_target_names",
    "guess_kind",
    "head_module_names",
    "input_embedding_name",
]


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
# kinds from names
# ---------------------------------------------------------------------------

# A dotted component of the name that marks the kind (matched case-insensitively against each component).
_ATTENTION = re.compile(
    r".*(attn|attention).*|[qkvo]|[qkvo]_?proj|out_proj|qkv(_proj)?|query|key|value|[qkv]_lin|out_lin|wq|wk|wv"
)
_FFN = re.compile(
    r".*(mlp|ffn|feed_?forward|intermediate).*|c?fc\d*|fc_(in|out)|(gate|up|down)(_proj)?|w[123]|wi(_[01])?|wo"
    r"|lin[12]|dense_h_to_4h|dense_4h_to_h|experts?|output"
)


def guess_kind(name: str) -> str:
    """``"attention"``, ``"ffn"`` or ``"other"`` from a module name (PEFT-style name heuristics).

    The outermost dotted component that names a block decides: one naming
    attention (``attn``, ``attention``, ``q_proj`` ... ``o_proj``,
    ``query``/``key``/``value``, ``q``/``k``/``v``/``o``) makes it attention, one
    naming the feed-forward block (``mlp``, ``ffn``, ``intermediate``, ``fc1``,
    ``gate_proj``/``up_proj``/``down_proj``, ``lin1``, and ``output``, BERT-style
    models' FFN output ``layer.0.output.dense``) ffn; so ``attention.output.dense``
    is attention and ``mlp.out_proj`` ffn.
    Example: ``"model.layers.0.self_attn.q_proj"`` -> ``"attention"``,
    ``"model.layers.0.mlp.up_proj"`` -> ``"ffn"``.
    """
    for part in name.lower().split("."):  # the outermost marking component decides: attention.output.dense
        if _ATTENTION.fullmatch(part):
            return "attention"
        if _FFN.fullmatch(part):
            return "ffn"
    return "other"


# ---------------------------------------------------------------------------
# heads and input embeddings
# ---------------------------------------------------------------------------


def _call(model: nn.Module, method: str):
    """``model.<method>()`` (e.g. ``get_output_embeddings``), or None when the model has no such method or it is not implemented."""
    fn = getattr(model, method, None)
    if not callable(fn):
        return None
    try:
        return fn()
    except (NotImplementedError, AttributeError):
        return None


def _name_of(model: nn.Module, target: nn.Module | None) -> str | None:
    """The qualified name of ``target`` in ``model`` (shared modules included), or None."""
    if target is None:
        return None
    for name, m in model.named_modules(remove_duplicate=False):
        if m is target:
            return name
    return None


def head_module_names(model: nn.Module) -> set[str]:
    """Names of the output head: ``model.get_output_embeddings()`` and every module outside ``model.base_model``.

    Empty for a model that has neither (a plain ``nn.Module``).
    """
    heads = set()
    out = _name_of(model, _call(model, "get_output_embeddings"))
    if out:
        heads.add(out)
    base = getattr(model, "base_model", None)
    if isinstance(base, nn.Module) and base is not model:
        prefix = _name_of(model, base)
        if prefix:
            for name, _ in model.named_modules():
                if name and name != prefix and not name.startswith(prefix + ".") and not prefix.startswith(name + "."):
                    heads.add(name)
    return heads


def input_embedding_name(model: nn.Module) -> str | None:
    """The name of ``model.get_input_embeddings()``, or None when the model has none."""
    return _name_of(model, _call(model, "get_input_embeddings")) or None


# ---------------------------------------------------------------------------
# resolution
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One module :func:`mpokit.compress` converts.

    Attributes:
        name: the module's qualified name in the model.
        module: the dense module.
        kind: ``embedding``, ``attention``, ``ffn`` or ``other`` (selects the per-kind layer config).
        reason: why it was taken: ``"registry (<model type>)"``, ``"fallback (all-linear)"``,
            ``"target_modules"``, ``"target_modules (regex)"`` or ``"target_regex"``.
        converter: the name of its converter in :data:`mpokit.converters.CONVERTERS`.
    """

    name: str
    module: nn.Module
    kind: str
    reason: str
    converter: str


def _name_matches(name: str, entries: Iterable[str]) -> bool:
    return any(name == e or name.endswith("." + e) for e in entries)


def _model_type(model: nn.Module, config: MPOConfig) -> str | None:
    if config.model_type is not None:
        return config.model_type
    return getattr(getattr(model, "config", None), "model_type", None)


def _resolve(model: nn.Module, config: MPOConfig) -> tuple[list[Target], list[str]]:
    """(targets, target_modules entries that matched no candidate); raises ValueError when nothing matched."""
    if not isinstance(config, MPOConfig):
        raise TypeError(f"config must be an MPOConfig, got {type(config).__name__}; e.g. MPOConfig(trainable='auxiliary')")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch nn.Module, got {type(model).__name__}")
    config.validate()
    model_type = _model_type(model, config)
    arch = ARCHITECTURES.get(model_type) if model_type else None
    entries = config.target_modules if isinstance(config.target_modules, list) else None
    module_regex = (re.compile(config.target_modules)
                    if isinstance(config.target_modules, str) and config.target_modules != ALL_LINEAR else None)
    field_regex = re.compile(config.target_regex) if config.target_regex else None
    use_registry = config.uses_defaults and arch is not None
    use_fallback = config.target_modules == ALL_LINEAR or (config.uses_defaults and arch is None)
    heads = head_module_names(model) if use_fallback else set()
    word_embedding = input_embedding_name(model) if use_fallback else None

    candidates = dense_modules(model)
    targets = []
    for name, module, conv in candidates:
        if conv.name not in config.target_types or _name_matches(name, config.exclude_modules):
            continue
        arch_kind = arch.kind_of(name) if arch is not None else None
        if entries is not None and _name_matches(name, entries):
            reason = "target_modules"
        elif module_regex is not None and module_regex.fullmatch(name):
            reason = "target_modules (regex)"
        elif field_regex is not None and field_regex.fullmatch(name):
            reason = "target_regex"
        elif use_fallback and name not in heads and (conv.all_linear or name == word_embedding):
            reason = f"fallback ({ALL_LINEAR})"
        elif use_registry and arch_kind is not None:
            reason = f"registry ({model_type})"
        else:
            continue
        kind = arch_kind or conv.default_kind or guess_kind(name)
        if config.layer_config(kind) is None:
            continue
        targets.append(Target(name, module, kind, reason, conv.name))
    unmatched = [e for e in (entries or []) if not any(_name_matches(n, [e]) for n, _, _ in candidates)]
    if not targets:
        names = [n for n, _, _ in candidates]
        if use_registry:
            wanted = f"the {model_type} defaults for kinds {[k for k in KINDS if config.layer_config(k) is not None]}"
        elif use_fallback and config.uses_defaults:
            wanted = (f"the {ALL_LINEAR!r} fallback (no registered defaults for model type {model_type!r}; "
                      f"registered: {sorted(ARCHITECTURES)})")
        else:
            wanted = f"target_modules={config.target_modules!r}, target_regex={config.target_regex!r}"
        example = names[0].rsplit(".", 1)[-1] if names else "query"
        raise ValueError(
            f"no module matched {wanted} with target_types={config.target_types}, "
            f"exclude_modules={config.exclude_modules}. Candidate modules include {names[:8]}"
            f"{' ...' if len(names) > 8 else ''}; e.g. MPOConfig(target_modules=['{example}'])"
        )
    return targets, unmatched


def _warn_unmatched(unmatched: list[str]) -> None:
    for entry in unmatched:
        warnings.warn(f"target_modules entry {entry!r} matches no module that mpokit can convert "
                      f"(names are matched exactly or as a dotted suffix, e.g. 'query')", stacklevel=3)


def resolve_targets(model: nn.Module, config: MPOConfig | None = None) -> list[Target]:
    """Every module :func:`mpokit.compress` would convert with ``config`` (default ``MPOConfig()``), in model order.

    Warns for each ``target_modules`` entry that matches no module; raises
    ``ValueError`` naming the targets and candidate modules when nothing matched.
    """
    targets, unmatched = _resolve(model, MPOConfig() if config is None else config)
    _warn_unmatched(unmatched)
    return targets


def find_targets(model: nn.Module, config: MPOConfig) -> list[tuple[str, nn.Module, str]]:
    """``(name, module, kind)`` of every target (:func:`resolve_targets` without reasons)."""
    return [(t.name, t.module, t.kind) for t in resolve_targets(model, config)]


def linear_target_names(model: nn.Module, config: MPOConfig | None = None) -> list[str]:
    """Full names of the linear-type targets (``nn.Linear``, ``Conv1D``), e.g. for ``peft.LoraConfig(target_modules=...)``.

    The same selection as :func:`resolve_targets` (registry defaults or the
    all-linear fallback), restricted to the types peft's LoRA wraps.
    """
    return [t.name for t in resolve_targets(model, config) if CONVERTERS[t.converter].lora]
