"""MPOConfig: which modules of a model become MPOs, how, and what trains afterwards.

A validated, versioned dataclass that round-trips through JSON
(``MPOConfig.from_json(cfg.to_json()) == cfg``). :meth:`MPOConfig.validate` runs
in ``__post_init__`` and again in :func:`mpokit.compress`, so a field changed
after construction is checked where it is used.

Targets (resolved by :mod:`mpokit.targets`, PEFT's conventions)
    * ``target_modules``: a list of module names, matched exactly or as a dotted
      suffix (``["query"]`` matches ``"bert.encoder.layer.0.attention.self.query"``);
      or one string: a regular expression full-matched against module names
      (``r".*\\.(q|v)_proj"``), or ``"all-linear"`` (every linear-type module but the
      output head, plus the input word embedding);
    * ``target_regex``: a regular expression that must match the full name;
    * ``target_types``: converter names a target must have (``Linear``, ``Conv1D``,
      ``Embedding``, ``LSTM``; :data:`mpokit.converters.CONVERTERS`);
    * ``exclude_modules``: names/suffixes never touched (e.g. ``"classifier"``).

  With neither ``target_modules`` nor ``target_regex``, the per-architecture
  defaults of :data:`mpokit.targets.ARCHITECTURES` are used (BERT, ALBERT,
  DistilBERT, RoBERTa, GPT-2, Llama), and the ``"all-linear"`` fallback for
  any other model.

Per-kind settings (MPOP decomposes these separately)
    ``embedding``, ``attention``, ``ffn``, ``other``: a :class:`MPOLayerConfig`
    (truncation criterion, ``n_cores``, modes, gauge) or ``None`` to leave that
    kind dense.

Training
    ``trainable``: which MPO cores train: ``"auxiliary"`` (MPOP's lightweight
    fine-tuning, LFA: central cores frozen), ``"all"``, ``"central"`` or ``"none"``.
    Non-MPO parameters fall in exactly one category, first match wins:
    head (outside ``model.base_model``) > LayerNorm/RMSNorm > bias > embedding
    (dense ``nn.Embedding``, e.g. position/type) > other dense weights; each
    category has a ``train_*`` flag.

Memory
    ``recompute`` (default True): MPO layers do not keep the intermediates of
    rebuilding their matrix for backward, they recompute them (one extra
    rebuild per step; see :meth:`mpokit.layers.MPOModule.run_recomputed`).
    Fine-tuning memory then stays below dense fine-tuning's.

Method and budget (data-aware compression, :func:`mpokit.compress` with ``calibration=``)
    * ``method``: how each matrix is approximated, a key of :data:`mpokit.aware.METHODS`:
      ``"mpo"`` (TT-SVD, MPOP), ``"mpo-aware"`` (cores fitted to the output error on the
      calibration data, layout searched), ``"svd"``, ``"svd-whitened"`` (2-core low-rank MPOs),
      ``"magnitude"``, ``"2:4"``, ``"wanda"`` (pruning: the dense module keeps a mask).
      ``None`` (default): ``"mpo-aware"`` when calibration is given, else ``"mpo"``.
    * ``budget``: a global fraction in (0, 1] of the targeted matrices' dense parameters
      (then no per-kind truncation criterion may be set). A matrix whose share is its whole
      dense size is kept lossless (an exact decomposition, or nothing pruned).
    * ``allocation``: how ``budget`` is split: ``"global"`` (by the marginal decrease of
      relative output error squared per parameter, every matrix weighted alike,
      :func:`mpokit.aware.allocation.allocate_budget`), ``"absolute"`` (the same, each matrix
      weighted by its output energy ``tr(W C W^T)``: the absolute output error, so matrices with
      large outputs keep more) or
      ``"uniform"`` (the same fraction of every matrix).
    * ``max_sweeps``: ALS sweeps of ``"mpo-aware"``; ``layout_search``: which candidate layouts it
      tries (:func:`mpokit.aware.layouts.layouts_for`): ``"all"`` (every candidate), ``"exact"``
      (those whose whitening is exact: low-rank and hybrid; several times faster) or ``"none"``
      (the ``n_cores`` interleaved layout). ``True`` / ``False`` (version-2 JSON) mean "all" / "none".
      ``fit_top``: how many of the best-started layouts get the sweeps (the others keep their start).

    With neither calibration nor these fields, compression is TT-SVD exactly as in version 1.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .mpo import GAUGES

__all__ = ["MPOConfig", "MPOLayerConfig", "CONFIG_VERSION", "TRAINABLE_CHOICES", "KINDS", "ALL_LINEAR",
           "ALLOCATIONS", "method_names"]

CONFIG_VERSION = 3  # 2: method, budget, allocation, max_sweeps, layout_search; 3: layout_search a string, fit_top (1 and 2 still load)
TRAINABLE_CHOICES = ("auxiliary", "all", "central", "none")
KINDS = ("embedding", "attention", "ffn", "other")
TIE_POLICIES = ("tie", "untie", "error")
ALL_LINEAR = "all-linear"  # target_modules value selecting the all-linear fallback
ALLOCATIONS = ("global", "absolute", "uniform")


def method_names() -> list[str]:
    """The compression methods of :data:`mpokit.aware.METHODS` (imported when asked)."""
    from .aware import METHODS

    return list(METHODS)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass
class MPOLayerConfig:
    """How one kind of matrix is decomposed. At most one truncation criterion; none means exact (full bonds).

    Attributes:
        max_bond: cap on every bond dimension (int >= 1).
        rel_error: relative Frobenius error budget in [0, 1).
        max_params: MPO parameter budget per matrix (int).
        param_ratio: MPO parameter budget as a fraction of the dense matrix's parameters, in (0, 1].
        n_cores: number of cores when modes are not given (MPOP uses 5).
        out_modes / in_modes: explicit modes; out modes factor the rows (out_features or
            num_embeddings), in modes the columns. ``None`` chooses them automatically.
        gauge: ``"symmetric"`` (MPOP), ``"center"`` or ``"right"``.
    """

    max_bond: int | None = None
    rel_error: float | None = None
    max_params: int | None = None
    param_ratio: float | None = None
    n_cores: int = 5
    out_modes: tuple[int, ...] | None = None
    in_modes: tuple[int, ...] | None = None
    gauge: str = "symmetric"

    def __post_init__(self) -> None:
        for name in ("out_modes", "in_modes"):
            modes = getattr(self, name)
            if isinstance(modes, list):
                setattr(self, name, tuple(modes))
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first field whose current value is invalid (nothing is changed)."""
        given = [k for k in ("max_bond", "rel_error", "max_params", "param_ratio") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(
                f"give at most one truncation criterion, got {given}; e.g. MPOLayerConfig(max_bond=64) "
                "or MPOLayerConfig(param_ratio=0.6)"
            )
        if self.max_bond is not None and (not _is_int(self.max_bond) or self.max_bond < 1):
            raise ValueError(f"max_bond must be an int >= 1, got {self.max_bond!r}; e.g. max_bond=64")
        if self.rel_error is not None and (
            isinstance(self.rel_error, bool) or not isinstance(self.rel_error, (int, float)) or not 0 <= self.rel_error < 1
        ):
            raise ValueError(f"rel_error must be a number in [0, 1), got {self.rel_error!r}; e.g. rel_error=0.05")
        if self.max_params is not None and (not _is_int(self.max_params) or self.max_params < 1):
            raise ValueError(f"max_params must be an int >= 1, got {self.max_params!r}; e.g. max_params=20000")
        if self.param_ratio is not None and (
            isinstance(self.param_ratio, bool)
            or not isinstance(self.param_ratio, (int, float))
            or not 0 < self.param_ratio <= 1
        ):
            raise ValueError(f"param_ratio must be in (0, 1], got {self.param_ratio!r}; e.g. param_ratio=0.6")
        if not _is_int(self.n_cores) or self.n_cores < 1:
            raise ValueError(f"n_cores must be an int >= 1, got {self.n_cores!r}; e.g. n_cores=5")
        for name in ("out_modes", "in_modes"):
            modes = getattr(self, name)
            if modes is None:
                continue
            if not isinstance(modes, (list, tuple)) or not modes or not all(_is_int(m) and m >= 1 for m in modes):
                raise ValueError(f"{name} must be a non-empty tuple of positive ints, got {modes!r}; e.g. (3, 4, 4, 4, 4)")
        if self.out_modes is not None and self.in_modes is not None and len(self.out_modes) != len(self.in_modes):
            raise ValueError(
                f"out_modes {tuple(self.out_modes)} and in_modes {tuple(self.in_modes)} must have the same length; "
                "e.g. out_modes=(3,4,4,4,4), in_modes=(4,4,4,4,3)"
            )
        if self.gauge not in GAUGES:
            raise ValueError(f"gauge must be one of {GAUGES}, got {self.gauge!r}; e.g. gauge='symmetric'")

    def mpo_options(self, dense_params: int) -> dict[str, Any]:
        """Keyword arguments for ``MPO.from_matrix`` / ``MPOLinear.from_linear`` for a matrix of ``dense_params`` entries."""
        opts: dict[str, Any] = {"gauge": self.gauge}
        if self.out_modes is not None or self.in_modes is not None:
            opts["out_modes"], opts["in_modes"] = self.out_modes, self.in_modes
        else:
            opts["n_cores"] = self.n_cores
        if self.max_bond is not None:
            opts["max_bond"] = self.max_bond
        elif self.rel_error is not None:
            opts["rel_error"] = float(self.rel_error)
        elif self.max_params is not None:
            opts["max_params"] = self.max_params
        elif self.param_ratio is not None:
            opts["max_params"] = max(1, int(self.param_ratio * dense_params))
        return opts

    @property
    def is_exact(self) -> bool:
        return all(getattr(self, k) is None for k in ("max_bond", "rel_error", "max_params", "param_ratio"))


def _layer_from(value, kind: str) -> MPOLayerConfig | None:
    if value is None or isinstance(value, MPOLayerConfig):
        return value
    if isinstance(value, dict):
        unknown = set(value) - {f.name for f in fields(MPOLayerConfig)}
        if unknown:
            raise ValueError(
                f"{kind}: unknown MPOLayerConfig fields {sorted(unknown)}; valid fields are "
                f"{[f.name for f in fields(MPOLayerConfig)]}, e.g. {{'max_bond': 64}}"
            )
        return MPOLayerConfig(**value)
    raise TypeError(f"{kind} must be an MPOLayerConfig, a dict or None, got {type(value).__name__}; e.g. MPOLayerConfig(max_bond=64)")


def _str_list(value, name: str) -> list[str] | None:
    """A tuple becomes a list and one string a one-element list; anything else is left for :meth:`MPOConfig.validate`."""
    if isinstance(value, str):
        return [value]
    return list(value) if isinstance(value, tuple) else value


def _check_str_list(value, name: str, example: str) -> None:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise TypeError(f"{name} must be a list of non-empty strings, got {value!r}; e.g. {example}")


def _check_regex(value: str, name: str, example: str) -> None:
    try:
        re.compile(value)
    except re.error as e:
        raise ValueError(f"{name} {value!r} is not a valid regular expression ({e}); e.g. {example}") from None


def _converter_names() -> list[str]:
    from .converters import converter_names  # the converter registry (imports the layers)

    return converter_names()


@dataclass
class MPOConfig:
    """What :func:`mpokit.compress` replaces and what trains afterwards (see the module docstring).

    ``target_modules``: ``None``, a list of names/suffixes, or one string (a
    regular expression full-matched against module names, or ``"all-linear"``).
    ``target_types`` defaults to every registered converter.
    """

    target_modules: list[str] | str | None = None
    target_regex: str | None = None
    target_types: list[str] = field(default_factory=_converter_names)
    exclude_modules: list[str] = field(default_factory=list)
    model_type: str | None = None
    embedding: MPOLayerConfig | None = field(default_factory=MPOLayerConfig)
    attention: MPOLayerConfig | None = field(default_factory=MPOLayerConfig)
    ffn: MPOLayerConfig | None = field(default_factory=MPOLayerConfig)
    other: MPOLayerConfig | None = field(default_factory=MPOLayerConfig)
    tied_embeddings: str = "tie"
    trainable: str = "auxiliary"
    train_biases: bool = True
    train_layernorm: bool = True
    train_embeddings: bool = True
    train_head: bool = True
    train_other: bool = True
    recompute: bool = True
    method: str | None = None
    budget: float | None = None
    allocation: str = "global"
    max_sweeps: int = 8
    layout_search: str = "all"
    fit_top: int = 2
    version: int = CONFIG_VERSION

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, tuple):
            self.target_modules = list(self.target_modules)
        self.target_types = _str_list(self.target_types, "target_types")
        self.exclude_modules = [] if self.exclude_modules is None else _str_list(self.exclude_modules, "exclude_modules")
        for kind in KINDS:
            setattr(self, kind, _layer_from(getattr(self, kind), kind))
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` / ``TypeError`` naming the first invalid field (its current value; nothing is changed).

        Called by ``__post_init__`` and by :func:`mpokit.compress`, so a field set
        after construction (``cfg.trainable = "foo"``) is caught where it is used.
        """
        tm = self.target_modules
        if isinstance(tm, str):
            if not tm:
                raise ValueError("target_modules must not be an empty string; e.g. 'all-linear' or r'.*\\.(q|v)_proj'")
            if tm != ALL_LINEAR:
                _check_regex(tm, "target_modules", r"r'.*\.(q_proj|v_proj)' (one string is a regex, a list holds names)")
        elif tm is not None:
            _check_str_list(tm, "target_modules", "['query', 'value'], r'.*\\.(q|v)_proj' or 'all-linear'")
        _check_str_list(self.target_types, "target_types", "['Linear']")
        _check_str_list(self.exclude_modules, "exclude_modules", "['classifier']")
        known = _converter_names()
        if not self.target_types:
            raise ValueError(f"target_types must name at least one module type; e.g. {known}")
        bad = [t for t in self.target_types if t not in known]
        if bad:
            raise ValueError(f"target_types {bad} are not supported; choose from {known} "
                             "(mpokit.converters.register_converter adds more), e.g. ['Linear']")
        if self.target_regex is not None:
            if not isinstance(self.target_regex, str):
                raise TypeError(f"target_regex must be a string, got {self.target_regex!r}; e.g. r'.*\\.attention\\..*'")
            _check_regex(self.target_regex, "target_regex", r"r'.*layer\.\d+\.attention\.self\.(query|value)'")
        if self.model_type is not None and not isinstance(self.model_type, str):
            raise TypeError(f"model_type must be a string or None, got {self.model_type!r}; e.g. 'bert'")
        for kind in KINDS:
            value = getattr(self, kind)
            if value is not None and not isinstance(value, MPOLayerConfig):
                raise TypeError(f"{kind} must be an MPOLayerConfig or None, got {type(value).__name__} {value!r}; "
                                "e.g. MPOLayerConfig(max_bond=64) (the constructor also converts a dict)")
            if value is not None:
                value.validate()
        if self.tied_embeddings not in TIE_POLICIES:
            raise ValueError(f"tied_embeddings must be one of {TIE_POLICIES}, got {self.tied_embeddings!r}; e.g. 'tie'")
        if self.trainable not in TRAINABLE_CHOICES:
            raise ValueError(
                f"trainable must be one of {TRAINABLE_CHOICES}, got {self.trainable!r}; "
                "e.g. trainable='auxiliary' (MPOP lightweight fine-tuning)"
            )
        for name in ("train_biases", "train_layernorm", "train_embeddings", "train_head", "train_other", "recompute"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")
        self._validate_method()
        if not _is_int(self.version) or self.version > CONFIG_VERSION or self.version < 1:
            raise ValueError(
                f"MPOConfig version {self.version!r} is not supported by this mpokit (understands 1..{CONFIG_VERSION}); "
                "upgrade mpokit or re-save the config"
            )

    def _validate_method(self) -> None:
        if self.method is not None:
            names = method_names()
            if self.method not in names:
                raise ValueError(f"method must be one of {names} or None (mpo-aware with calibration data, else mpo), "
                                 f"got {self.method!r}; e.g. method='mpo-aware'")
        if self.budget is not None:
            if isinstance(self.budget, bool) or not isinstance(self.budget, (int, float)) or not 0 < self.budget <= 1:
                raise ValueError(f"budget must be a fraction in (0, 1] of the targeted matrices' dense parameters, "
                                 f"got {self.budget!r}; e.g. budget=0.5")
            given = [f"{kind}.{k}" for kind in KINDS if getattr(self, kind) is not None
                     for k in ("max_bond", "rel_error", "max_params", "param_ratio") if getattr(getattr(self, kind), k) is not None]
            if given:
                raise ValueError(f"budget={self.budget} splits one parameter budget over every matrix, but {given} also set "
                                 "a truncation per kind; give one of them, e.g. MPOConfig(budget=0.5) with "
                                 "MPOLayerConfig(n_cores=5) per kind")
        if self.allocation not in ALLOCATIONS:
            raise ValueError(f"allocation must be one of {ALLOCATIONS}, got {self.allocation!r}; e.g. allocation='global'")
        if not _is_int(self.max_sweeps) or self.max_sweeps < 0:
            raise ValueError(f"max_sweeps must be an int >= 0 (ALS sweeps of mpo-aware), got {self.max_sweeps!r}; "
                             "e.g. max_sweeps=8")
        if not _is_int(self.fit_top) or self.fit_top < 1:
            raise ValueError(f"fit_top must be an int >= 1 (layouts refined by sweeps), got {self.fit_top!r}; e.g. fit_top=2")
        if isinstance(self.layout_search, bool):  # version-2 spelling
            self.layout_search = "all" if self.layout_search else "none"
        from .aware.layouts import LAYOUT_SEARCHES

        if self.layout_search not in LAYOUT_SEARCHES:
            raise ValueError(f"layout_search must be one of {LAYOUT_SEARCHES}, got {self.layout_search!r}; "
                             "e.g. layout_search='exact'")

    # -- helpers ------------------------------------------------------------------

    def resolved_method(self, calibrated: bool) -> str:
        """``method``, or its default: ``"mpo-aware"`` with calibration data, ``"mpo"`` without."""
        if self.method is not None:
            return self.method
        return "mpo-aware" if calibrated else "mpo"

    def layer_config(self, kind: str) -> MPOLayerConfig | None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        return getattr(self, kind)

    @property
    def uses_defaults(self) -> bool:
        """True when no targets are named: the per-architecture registry decides, or the all-linear fallback."""
        return self.target_modules is None and self.target_regex is None

    # -- JSON ----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for kind in KINDS:
            if d[kind] is not None:
                for m in ("out_modes", "in_modes"):
                    if d[kind][m] is not None:
                        d[kind][m] = list(d[kind][m])
        return d

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MPOConfig":
        if not isinstance(data, dict):
            raise TypeError(f"MPOConfig.from_dict needs a dict, got {type(data).__name__}")
        if "version" not in data:
            raise ValueError("MPOConfig JSON has no 'version' field; it was not written by mpokit (expected e.g. {'version': 1, ...})")
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown MPOConfig fields {sorted(unknown)}; valid fields: {[f.name for f in fields(cls)]}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> "MPOConfig":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"MPOConfig JSON is not valid JSON: {e}") from None
        return cls.from_dict(data)
