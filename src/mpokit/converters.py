"""Converters: how each dense module type becomes an MPO module and back (a registry, not an if-chain).

A :class:`Converter` describes one dense source type: which modules it takes
(``matches``), the MPO module it makes (``to_mpo``) and the dense module it gives
back (``to_dense``), the matrices involved (for the compression report), and the
JSON structure a checkpoint records (``manifest`` / ``rebuild``).
:func:`mpokit.compress`, :func:`mpokit.merge_and_unload` and :mod:`mpokit.io` find
converters only through :data:`CONVERTERS`; :func:`register_converter` adds one.

Built-in entries (the ``name`` is what ``MPOConfig.target_types``,
``ModuleReport.source_type`` and checkpoints use):

=========  ===============================  ===========================================  ==========================
name       dense module                     MPO module                                   matrices ``(rows, cols)``
=========  ===============================  ===========================================  ==========================
Linear     ``nn.Linear``                    :class:`~mpokit.layers.MPOLinear`            weight ``(out, in)``
Conv1D     transformers' ``Conv1D``         ``MPOLinear`` (``source_type = "Conv1D"``)   weight^T ``(out, in)``
Embedding  ``nn.Embedding``                 :class:`~mpokit.layers.MPOEmbedding`         weight ``(num, dim)``
LSTM       ``nn.LSTM``                      :class:`~mpokit.layers.lstm.MPOLSTM`         every W ``(4H, X)``, U ``(4H, H)``
=========  ===============================  ===========================================  ==========================

``Conv1D`` (GPT-2) stores its weight as ``(in, out)``; the MPO always holds
``(out, in)``, so the weight is transposed on the way in and back on the way out.

Custom forward. A module whose class overrides the base type's ``forward``
(``Gemma3TextScaledWordEmbedding`` multiplies the looked-up rows by
``embed_scale``) is not swapped: it stays in place and an
:class:`~mpokit.layers.weight.MPOWeight` supplies its ``weight`` through
``torch.nn.utils.parametrize`` (:func:`attach_weight`), so its own forward runs on
the MPO's matrix. A converter whose module has no single weight matrix
(``weight_transposed=None``, e.g. LSTM) refuses such a module with a
``ValueError`` naming the class.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch
from torch import nn
from torch.nn.utils import parametrize

from .layers.base import MPOModule
from .layers.embedding import MPOEmbedding
from .layers.linear import MPOLinear
from .layers.lstm import LSTMWeightMPO, MPOLSTM
from .layers.weight import MPOWeight
from .mpo import MPO

if TYPE_CHECKING:  # pragma: no cover
    from .config import MPOLayerConfig

__all__ = [
    "Converter",
    "Converted",
    "CONVERTERS",
    "register_converter",
    "converter_names",
    "converter_for",
    "converter_of_mpo",
    "keeps_forward",
    "convert",
    "convert_from_mpo",
    "attach_weight",
    "detach_weight",
    "mpo_weight_of",
    "converted_modules",
    "dense_modules",
]


@dataclass(frozen=True)
class Converter:
    """One dense module type and its MPO counterpart.

    Attributes:
        name: the type's name in ``MPOConfig.target_types``, reports and checkpoints (``"Linear"``).
        matches: ``matches(module) -> bool``, whether a dense module is of this type (subclasses included).
        mpo_class: the class ``to_mpo`` returns (used to recognise converted modules).
        to_mpo: ``to_mpo(module, layer_config) -> MPO module`` (exact at full bonds, same dtype and device).
        to_dense: ``to_dense(mpo_module) -> dense module`` (the matrices rebuilt from the cores).
        dense_matrices: ``dense_matrices(module) -> [(suffix, W (rows, cols))]``, the matrices the MPO replaces.
        mpo_matrices: ``mpo_matrices(mpo_module) -> [(suffix, MPOModule)]``, the same suffixes.
        manifest: ``manifest(mpo_module) -> dict``, the JSON structure :func:`mpokit.io.save_pretrained` records.
        rebuild: ``rebuild(entry, dense_module) -> MPO module`` of the recorded structure (cores not set);
            raises ``ValueError`` when ``dense_module`` does not fit ``entry``.
        base_forward: ``base_forward() -> function``, the forward of the base type (resolved lazily);
            a matching module whose class has another forward keeps it (see the module docstring).
        weight_transposed: layout of ``module.weight`` for that case: ``False`` ``(rows, cols)``,
            ``True`` ``(cols, rows)``, ``None``: the type has no single weight matrix (refused).
        default_kind: the kind a target of this type gets when no name rule gives one (``"embedding"``).
        all_linear: part of the ``"all-linear"`` target fallback (linear-type layers).
        lora: a type peft's LoRA wraps (:func:`mpokit.targets.linear_target_names`).
        ties_to_output: its weight may be shared with the model's output projection (word embeddings).
        check: ``check(module)`` raises ``ValueError`` for settings the MPO cannot reproduce, or ``None``.
        from_mpo: ``from_mpo(module, mpo) -> MPO module`` holding a given :class:`MPO` of the matrix (e.g. a
            data-aware fit, :func:`convert_from_mpo`), bias and settings from ``module``; ``None``: not supported.
    """

    name: str
    matches: Callable[[nn.Module], bool]
    mpo_class: type
    to_mpo: Callable[[nn.Module, "MPOLayerConfig"], nn.Module]
    to_dense: Callable[[nn.Module], nn.Module]
    dense_matrices: Callable[[nn.Module], list[tuple[str, torch.Tensor]]]
    mpo_matrices: Callable[[nn.Module], list[tuple[str, MPOModule]]]
    manifest: Callable[[nn.Module], dict]
    rebuild: Callable[[dict, nn.Module], nn.Module]
    base_forward: Callable[[], Callable | None]
    weight_transposed: bool | None = False
    default_kind: str | None = None
    all_linear: bool = True
    lora: bool = False
    ties_to_output: bool = False
    check: Callable[[nn.Module], None] | None = None
    from_mpo: Callable[[nn.Module, MPO], nn.Module] | None = None


CONVERTERS: dict[str, Converter] = {}


def register_converter(converter: Converter) -> Converter:
    """Add ``converter`` to :data:`CONVERTERS` (replacing one of the same name); returns it.

    When several converters match a module, the one registered last wins, so a
    converter for a subclass of ``nn.Linear`` registered after the built-ins takes it.
    """
    if not isinstance(converter, Converter):
        raise TypeError(f"register_converter needs a Converter, got {type(converter).__name__}; "
                        "e.g. register_converter(Converter(name='Linear', matches=..., ...))")
    if not isinstance(converter.name, str) or not converter.name.isidentifier():
        raise ValueError(f"Converter.name must be an identifier-like string, got {converter.name!r}; e.g. 'Conv2d'")
    if not isinstance(converter.mpo_class, type):
        raise TypeError(f"Converter.mpo_class must be a class, got {converter.mpo_class!r}; e.g. MPOLinear")
    CONVERTERS[converter.name] = converter
    return converter


def converter_names() -> list[str]:
    """Names of the registered converters, in registration order."""
    return list(CONVERTERS)


def converter_for(module: nn.Module) -> Converter | None:
    """The converter of a dense ``module`` (the last registered that matches), or None."""
    if isinstance(module, MPOModule) or mpo_weight_of(module) is not None:
        return None
    for conv in reversed(list(CONVERTERS.values())):
        if not isinstance(module, conv.mpo_class) and conv.matches(module):
            return conv
    return None


def converter_of_mpo(module: nn.Module) -> Converter | None:
    """The converter that made (or would make) the MPO ``module``: by its ``source_type``, else by class."""
    conv = CONVERTERS.get(getattr(module, "source_type", None) or "")
    if conv is not None and isinstance(module, conv.mpo_class):
        return conv
    for conv in CONVERTERS.values():
        if isinstance(module, conv.mpo_class):
            return conv
    return None


def keeps_forward(module: nn.Module, converter: Converter) -> bool:
    """Whether ``module``'s class overrides the base type's ``forward`` (it is then parametrized, not swapped)."""
    base = converter.base_forward()
    return base is not None and type(module).forward is not base


# ---------------------------------------------------------------------------
# parametrized weights (modules that keep their own forward)
# ---------------------------------------------------------------------------


def mpo_weight_of(module: nn.Module) -> MPOWeight | None:
    """The :class:`MPOWeight` parametrizing ``module.weight``, or None."""
    if not parametrize.is_parametrized(module, "weight"):
        return None
    plist = module.parametrizations["weight"]
    return plist[0] if len(plist) == 1 and isinstance(plist[0], MPOWeight) else None


def attach_weight(module: nn.Module, weight: MPOWeight, source_type: str) -> None:
    """Make ``weight`` supply ``module.weight`` (shape ``weight.host_shape``); the dense Parameter is dropped."""
    current = module._parameters.get("weight")
    if current is None or tuple(current.shape) != weight.host_shape:
        got = None if current is None else tuple(current.shape)
        raise ValueError(f"{type(module).__name__}.weight has shape {got}, the MPOWeight supplies {weight.host_shape}")
    weight.source_type = source_type
    weight.train(module.training)
    parametrize.register_parametrization(module, "weight", weight)


@torch.no_grad()
def detach_weight(module: nn.Module) -> nn.Parameter:
    """Undo :func:`attach_weight`: ``module.weight`` becomes a dense Parameter holding the rebuilt matrix."""
    weight = mpo_weight_of(module)
    if weight is None:
        raise ValueError(f"{type(module).__name__}.weight is not parametrized by an MPOWeight")
    dense = weight._rebuild_uncached()
    dense = (dense.t() if weight.transposed else dense).detach().clone().contiguous()
    parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    delattr(module, "weight")  # torch leaves a buffer or a Parameter depending on grad mode; register ours
    module.weight = nn.Parameter(dense)
    return module.weight


# ---------------------------------------------------------------------------
# converting one module
# ---------------------------------------------------------------------------


@dataclass
class Converted:
    """The outcome of :func:`convert`.

    Attributes:
        module: what now belongs at the target's name (the new MPO module, or the module itself when parametrized).
        cores_holder: the module holding the cores (the new MPO module, or the :class:`MPOWeight`).
        matrices: ``[(suffix, MPOModule)]``, one per replaced matrix (suffixes of ``Converter.dense_matrices``).
        parametrized: the module kept its class and forward; its weight is parametrized.
    """

    module: nn.Module
    cores_holder: nn.Module
    matrices: list[tuple[str, MPOModule]]
    parametrized: bool


def convert(module: nn.Module, converter: Converter, layer_config: "MPOLayerConfig") -> Converted:
    """Convert one dense ``module`` with ``converter`` at ``layer_config``'s truncation.

    A module that keeps its own forward (:func:`keeps_forward`) is parametrized
    in place; any other is converted by ``converter.to_mpo`` (the caller puts
    the result where the module was).
    """
    if converter.check is not None:
        converter.check(module)
    if keeps_forward(module, converter):
        if converter.weight_transposed is None:
            raise ValueError(
                f"{type(module).__name__} overrides {converter.name}.forward; mpokit keeps such a forward by "
                f"parametrizing the module's weight, but a {converter.name} has no single weight matrix. Exclude it "
                f"(e.g. MPOConfig(exclude_modules=['<its name>'])) or use a plain {converter.name}"
            )
        weight = module._parameters["weight"]
        matrix = weight.t() if converter.weight_transposed else weight
        holder = MPOWeight.from_matrix(matrix, transposed=converter.weight_transposed,
                                       **layer_config.mpo_options(matrix.numel()))
        attach_weight(module, holder, converter.name)
        return Converted(module, holder, [("", holder)], True)
    new = converter.to_mpo(module, layer_config)
    new.source_type = converter.name
    return Converted(new, new, converter.mpo_matrices(new), False)


def convert_from_mpo(module: nn.Module, converter: Converter, mpo: MPO) -> Converted:
    """As :func:`convert`, but the module holds the given ``mpo`` of its matrix ``(rows, cols)`` instead of a TT-SVD.

    ``mpo`` is moved to the module's dtype and device. A module that keeps its own forward gets an
    :class:`MPOWeight` of ``mpo``; a converter without ``from_mpo`` (LSTM: several matrices) raises ``ValueError``.
    """
    if converter.check is not None:
        converter.check(module)
    ref = next(module.parameters(), None)
    if ref is not None:
        mpo = mpo.to(device=ref.device, dtype=ref.dtype)
    if keeps_forward(module, converter) and converter.weight_transposed is not None:
        holder = MPOWeight(list(mpo.cores), mpo.shape, transposed=converter.weight_transposed, gauge=mpo.gauge)
        holder.error_bound = float(mpo.error_bound)
        attach_weight(module, holder, converter.name)
        return Converted(module, holder, [("", holder)], True)
    if converter.from_mpo is None or keeps_forward(module, converter):
        raise ValueError(f"a {converter.name} ({type(module).__name__}) cannot be built from one given MPO: it holds "
                         "no single weight matrix mpokit can replace; compress it with method='mpo' or exclude it")
    new = converter.from_mpo(module, mpo)
    new.source_type = converter.name
    return Converted(new, new, converter.mpo_matrices(new), False)


# ---------------------------------------------------------------------------
# walking a model
# ---------------------------------------------------------------------------


def converted_modules(model: nn.Module) -> list[tuple[str, nn.Module, Converter, bool]]:
    """``(name, module, converter, parametrized)`` of every converted module of ``model``, outermost only.

    A converted module is an instance of a converter's ``mpo_class`` (an
    ``MPOLinear``, an ``MPOLSTM``, ...) or a module whose weight an
    :class:`MPOWeight` parametrizes. Their submodules are not listed.
    """
    out, inside = [], None
    for name, m in model.named_modules():
        if not name or (inside is not None and name.startswith(inside + ".")):
            continue
        weight = mpo_weight_of(m)
        if weight is not None:
            conv = CONVERTERS.get(weight.source_type or "") or _dense_converter(m)
            if conv is not None:
                out.append((name, m, conv, True))
                inside = name
            continue
        conv = converter_of_mpo(m)
        if conv is not None:
            out.append((name, m, conv, False))
            inside = name
    return out


def dense_modules(model: nn.Module) -> list[tuple[str, nn.Module, Converter]]:
    """``(name, module, converter)`` of every dense module a converter takes, outside converted ones.

    Modules inside MPO modules (or inside another match) are not listed.
    """
    out, inside = [], None
    for name, m in model.named_modules():
        if not name or (inside is not None and name.startswith(inside + ".")):
            continue
        if isinstance(m, MPOModule) or mpo_weight_of(m) is not None or converter_of_mpo(m) is not None:
            inside = name
            continue
        conv = converter_for(m)
        if conv is not None:
            out.append((name, m, conv))
            inside = name
    return out


def _dense_converter(module: nn.Module) -> Converter | None:
    for conv in reversed(list(CONVERTERS.values())):
        if conv.matches(module):
            return conv
    return None


# ---------------------------------------------------------------------------
# shared helpers of the built-in converters
# ---------------------------------------------------------------------------


def _mpo_fields(m: MPOModule) -> dict:
    return {
        "shape": list(m.shape),
        "out_modes": list(m.out_modes),
        "in_modes": list(m.in_modes),
        "bond_dims": list(m.bond_dims),
        "gauge": m.gauge,
        "error_bound": float(getattr(m, "error_bound", 0.0)),
    }


def _factory(module: nn.Module) -> dict:
    ref = next(module.parameters(), None)
    return {"device": None if ref is None else ref.device, "dtype": None if ref is None else ref.dtype}


def _check_shape(entry: dict, module: nn.Module, shape: tuple[int, ...] | None) -> None:
    if shape != tuple(entry["shape"]):
        raise ValueError(
            f"the checkpoint has an MPO of shape {tuple(entry['shape'])}, but the model's {type(module).__name__} "
            f"has shape {shape}; the weights do not match the config"
        )


def _finish(layer: MPOModule, entry: dict) -> MPOModule:
    if tuple(layer.bond_dims) != tuple(entry["bond_dims"]):
        raise ValueError(f"cannot recreate bond dimensions {entry['bond_dims']} (got {layer.bond_dims})")
    layer.error_bound = float(entry.get("error_bound", 0.0))
    return layer


def _single(m: MPOModule) -> list[tuple[str, MPOModule]]:
    return [("", m)]


def _bond_arg(entry: dict) -> list[int] | None:
    return list(entry["bond_dims"]) or None


# ---------------------------------------------------------------------------
# Linear
# ---------------------------------------------------------------------------


def _linear_to_mpo(module: nn.Linear, cfg: "MPOLayerConfig") -> MPOLinear:
    return MPOLinear.from_linear(module, **cfg.mpo_options(module.weight.numel()))


def _linear_from_mpo(module: nn.Module, mpo: MPO) -> MPOLinear:
    """``nn.Linear`` / ``Conv1D``: ``mpo`` holds ``W (out, in)`` (for Conv1D that is ``weight^T``); bias from ``module``."""
    layer = MPOLinear.from_mpo(mpo, module.bias)
    layer.train(module.training)
    return layer


def _linear_manifest(m: MPOLinear) -> dict:
    return {**_mpo_fields(m), "bias": m.bias is not None, "source_type": getattr(m, "source_type", None) or "Linear"}


def _linear_rebuild(entry: dict, old: nn.Module, source_type: str, shape) -> MPOLinear:
    _check_shape(entry, old, shape)
    out_features, in_features = entry["shape"]
    layer = MPOLinear(in_features, out_features, bias=entry["bias"], out_modes=tuple(entry["out_modes"]),
                      in_modes=tuple(entry["in_modes"]), bond_dim=_bond_arg(entry), gauge=entry["gauge"],
                      **_factory(old))
    layer.source_type = source_type
    return _finish(layer, entry)


register_converter(Converter(
    name="Linear",
    matches=lambda m: isinstance(m, nn.Linear),
    mpo_class=MPOLinear,
    to_mpo=_linear_to_mpo,
    to_dense=lambda m: m.to_linear(),
    dense_matrices=lambda m: [("", m.weight)],
    mpo_matrices=_single,
    manifest=_linear_manifest,
    rebuild=lambda entry, old: _linear_rebuild(entry, old, "Linear", tuple(getattr(old, "weight").shape)
                                               if isinstance(old, nn.Linear) else None),
    base_forward=lambda: nn.Linear.forward,
    lora=True,
    from_mpo=_linear_from_mpo,
))


# ---------------------------------------------------------------------------
# Conv1D (transformers, GPT-2): y = x @ weight + bias, weight (in_features, out_features)
# ---------------------------------------------------------------------------


def _conv1d_class() -> type | None:
    """transformers' ``Conv1D`` if transformers is loaded (a model holding one has loaded it), else None."""
    module = sys.modules.get("transformers.pytorch_utils")
    return getattr(module, "Conv1D", None) if module is not None else None


def _is_conv1d(m: nn.Module) -> bool:
    cls = _conv1d_class()
    return cls is not None and isinstance(m, cls)


def _conv1d_to_mpo(module: nn.Module, cfg: "MPOLayerConfig") -> MPOLinear:
    weight = module.weight.detach().t()  # (out, in)
    mpo = MPO.from_matrix(weight, **cfg.mpo_options(weight.numel())).to(device=weight.device, dtype=weight.dtype)
    layer = MPOLinear.from_mpo(mpo, module.bias)
    layer.train(module.training)
    return layer


@torch.no_grad()
def _conv1d_to_dense(m: MPOLinear) -> nn.Module:
    from transformers.pytorch_utils import Conv1D

    weight = m._rebuild_uncached().detach()  # (out, in)
    conv = Conv1D(m.out_features, m.in_features).to(device=weight.device, dtype=weight.dtype)
    conv.weight.copy_(weight.t())
    if m.bias is not None:
        conv.bias.copy_(m.bias)
    else:
        conv.bias = None
    conv.train(m.training)
    return conv


register_converter(Converter(
    name="Conv1D",
    matches=_is_conv1d,
    mpo_class=MPOLinear,
    to_mpo=_conv1d_to_mpo,
    to_dense=_conv1d_to_dense,
    dense_matrices=lambda m: [("", m.weight.t())],
    mpo_matrices=_single,
    manifest=_linear_manifest,
    rebuild=lambda entry, old: _linear_rebuild(entry, old, "Conv1D", tuple(old.weight.shape[::-1])
                                               if _is_conv1d(old) else None),
    base_forward=lambda: getattr(_conv1d_class(), "forward", None),
    weight_transposed=True,
    lora=True,
    from_mpo=_linear_from_mpo,
))


# ---------------------------------------------------------------------------
# Embedding
# ---------------------------------------------------------------------------


def _check_embedding(m: nn.Embedding) -> None:
    for attr, default in (("max_norm", None), ("scale_grad_by_freq", False), ("sparse", False)):
        if getattr(m, attr) != default:
            raise ValueError(
                f"an MPO cannot reproduce {type(m).__name__}({attr}={getattr(m, attr)!r}); convert embeddings with "
                f"{attr}={default!r}, or exclude this one, e.g. MPOConfig(embedding=None)"
            )


def _embedding_to_mpo(module: nn.Embedding, cfg: "MPOLayerConfig") -> MPOEmbedding:
    layer = MPOEmbedding.from_embedding(module, **cfg.mpo_options(module.weight.numel()))
    pad = module.padding_idx
    if pad is not None and bool(module.weight[pad].detach().any()):
        # MPOEmbedding zeroes the output at padding_idx (nn.Embedding's zero-initialised row); a pre-trained
        # table can hold a non-zero padding row (pre-trained BERT checkpoints often do), which nn.Embedding returns as is.
        # Keep that behaviour: no masking, and remember the index for the way back.
        layer.padding_idx = None
    layer.source_padding_idx = pad
    return layer


def _embedding_to_dense(m: MPOEmbedding) -> nn.Embedding:
    dense = m.to_embedding()
    pad = getattr(m, "source_padding_idx", m.padding_idx)
    if pad is not None and m.padding_idx is None:
        dense.padding_idx = pad  # the row keeps its (non-zero) value, as in the original table
    return dense


def _embedding_from_mpo(module: nn.Embedding, mpo: MPO) -> MPOEmbedding:
    """``mpo`` holds the table ``(num_embeddings, dim)``; ``padding_idx`` handled as :func:`_embedding_to_mpo` does."""
    layer = MPOEmbedding.from_mpo(mpo, module.padding_idx)
    pad = module.padding_idx
    if pad is not None and bool(module.weight[pad].detach().any()):
        layer.padding_idx = None  # a non-zero pre-trained padding row is returned as is, as nn.Embedding does
    layer.source_padding_idx = pad
    layer.train(module.training)
    return layer


def _embedding_manifest(m: MPOEmbedding) -> dict:
    return {**_mpo_fields(m), "padding_idx": m.padding_idx,
            "source_padding_idx": getattr(m, "source_padding_idx", m.padding_idx), "source_type": "Embedding"}


def _embedding_rebuild(entry: dict, old: nn.Module) -> MPOEmbedding:
    _check_shape(entry, old, tuple(old.weight.shape) if isinstance(old, nn.Embedding) else None)
    num, dim = entry["shape"]
    layer = MPOEmbedding(num, dim, padding_idx=entry.get("padding_idx"), out_modes=tuple(entry["out_modes"]),
                         in_modes=tuple(entry["in_modes"]), bond_dim=_bond_arg(entry), gauge=entry["gauge"],
                         **_factory(old))
    layer.source_padding_idx = entry.get("source_padding_idx", entry.get("padding_idx"))
    return _finish(layer, entry)


register_converter(Converter(
    name="Embedding",
    matches=lambda m: isinstance(m, nn.Embedding),
    mpo_class=MPOEmbedding,
    to_mpo=_embedding_to_mpo,
    to_dense=_embedding_to_dense,
    dense_matrices=lambda m: [("", m.weight)],
    mpo_matrices=_single,
    manifest=_embedding_manifest,
    rebuild=_embedding_rebuild,
    base_forward=lambda: nn.Embedding.forward,
    default_kind="embedding",
    all_linear=False,
    ties_to_output=True,
    check=_check_embedding,
    from_mpo=_embedding_from_mpo,
))


# ---------------------------------------------------------------------------
# LSTM
# ---------------------------------------------------------------------------

_LSTM_SIZES = ("input_size", "hidden_size", "num_layers", "bias", "bidirectional")


def _lstm_options(cfg: "MPOLayerConfig") -> dict:
    """``MPOLSTM.from_lstm`` keywords for ``cfg``: max_bond -> bond_dim, param_ratio -> rate = 1 / ratio."""
    if cfg.out_modes is not None or cfg.in_modes is not None:
        raise ValueError(
            f"an LSTM target takes its modes from its hidden size (mpokit.layers.lstm.lstm_modes), got "
            f"out_modes={cfg.out_modes}, in_modes={cfg.in_modes}; set n_cores instead, e.g. MPOLayerConfig(n_cores=4)"
        )
    if cfg.max_params is not None:
        raise ValueError(
            f"max_params={cfg.max_params} is a budget per matrix, and an LSTM holds several of different sizes; "
            "give param_ratio (the same fraction of every W and U) or max_bond, e.g. MPOLayerConfig(param_ratio=0.1)"
        )
    opts = {"n_cores": cfg.n_cores, "gauge": cfg.gauge}
    if cfg.max_bond is not None:
        opts["bond_dim"] = cfg.max_bond
    elif cfg.rel_error is not None:
        opts["rel_error"] = float(cfg.rel_error)
    elif cfg.param_ratio is not None:
        opts["rate"] = 1.0 / float(cfg.param_ratio)
    return opts


def _lstm_to_mpo(module: nn.LSTM, cfg: "MPOLayerConfig") -> MPOLSTM:
    layer = MPOLSTM.from_lstm(module, **_lstm_options(cfg))
    layer.train(module.training)
    return layer


def _lstm_to_dense(m: MPOLSTM) -> nn.LSTM:
    dense = m.to_lstm()
    dense.train(m.training)
    return dense


def _lstm_manifest(m: MPOLSTM) -> dict:
    return {
        **{k: getattr(m, k) for k in _LSTM_SIZES},
        "batch_first": m.batch_first,
        "dropout": m.dropout,
        "modes": list(m.hidden_modes),
        "input_modes": list(m.input_modes),
        "execution": m.execution,
        "weights": {name: _mpo_fields(w) for name, w in m.weight_modules()},
    }


def _lstm_rebuild(entry: dict, old: nn.Module) -> MPOLSTM:
    if not isinstance(old, nn.LSTM):
        raise ValueError(f"the checkpoint has an MPOLSTM here, but the model has a {type(old).__name__}")
    differ = {k: (entry[k], getattr(old, k)) for k in _LSTM_SIZES if entry[k] != getattr(old, k)}
    if differ:
        raise ValueError(f"the checkpoint's LSTM and the model's differ in {differ} (saved, model); "
                         "the weights do not match the config")
    factory = _factory(old)
    weights = {}
    for name, fields in entry["weights"].items():
        w = LSTMWeightMPO.random(fields["out_modes"], fields["in_modes"], fields["bond_dims"], 1.0, **factory)
        w.gauge = fields["gauge"]
        weights[name] = _finish(w, fields)
    return MPOLSTM(entry["input_size"], entry["hidden_size"], entry["num_layers"], entry["bias"], entry["batch_first"],
                   entry["dropout"], entry["bidirectional"], modes=tuple(entry["modes"]),
                   input_modes=tuple(entry["input_modes"]), execution=entry["execution"], _weights=weights, **factory)


register_converter(Converter(
    name="LSTM",
    matches=lambda m: isinstance(m, nn.LSTM),
    mpo_class=MPOLSTM,
    to_mpo=_lstm_to_mpo,
    to_dense=_lstm_to_dense,
    dense_matrices=lambda m: [(n, p) for n, p in m.named_parameters() if n.startswith("weight_")],
    mpo_matrices=lambda m: m.weight_modules(),
    manifest=_lstm_manifest,
    rebuild=_lstm_rebuild,
    base_forward=lambda: nn.LSTM.forward,
    weight_transposed=None,
))
