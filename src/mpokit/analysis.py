"""Decompose every weight matrix of a model into an MPO and report what it looks like.

For each ``nn.Linear`` / ``nn.Embedding`` (and transformers' ``Conv1D``, whose
weight is stored transposed) the weight ``W`` of shape ``(out_features,
in_features)`` is decomposed with :meth:`mpokit.MPO.from_matrix`; the report
records its modes, bond dimensions, parameters, the measured relative error
``||W - MPO(W)||_F / ||W||_F`` with its bound, and the singular values and
entanglement entropy of every bond. Nothing here changes the model.

A model that holds MPO layers (an mpokit checkpoint, a compressed model) has
matrices that are no module's ``weight``: each MPO layer's matrices
(``Converter.mpo_matrices``, e.g. the W and U of an ``MPOLSTM``) are rebuilt
from its cores and decomposed like the dense ones. Their reports say so
(``source="mpo"``, the layer's class and its bond dimensions), and so do the
tables (column "from").
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import nn

from .atomic import atomic_write_bytes, atomic_write_text
from .mpo import MPO

__all__ = [
    "MatrixReport",
    "WeightMatrix",
    "weight_matrices",
    "named_weight_matrices",
    "decompose_matrix",
    "decompose_model",
    "summarize",
    "format_table",
    "format_markdown",
    "write_report",
]


@dataclass
class MatrixReport:
    """What one weight matrix looks like as an MPO."""

    name: str
    shape: tuple[int, int]  # (out_features, in_features)
    out_modes: tuple[int, ...]
    in_modes: tuple[int, ...]
    bond_dims: tuple[int, ...]
    num_params: int
    dense_params: int
    rel_error: float  # measured ||W - MPO(W)||_F / ||W||_F
    rel_error_bound: float  # sqrt(sum_k eps_k^2) / ||W||_F
    entropies: list[float]  # per bond
    central_bond: int  # index into bond_dims / entropies
    singular_values: list[list[float]] = field(repr=False)  # per bond, descending
    seconds: float = 0.0
    source: str = "dense"  # "dense": a module's weight; "mpo": rebuilt from the cores of an MPO layer
    mpo_layer: str | None = None  # for source "mpo": the class of the layer holding the cores (e.g. "MPOLinear")
    mpo_bond_dims: tuple[int, ...] | None = None  # for source "mpo": the bond dimensions that layer holds

    @property
    def compression_ratio(self) -> float:
        """MPO parameters / dense parameters."""
        return self.num_params / self.dense_params

    @property
    def central_entropy(self) -> float:
        return self.entropies[self.central_bond] if self.entropies else 0.0

    @property
    def kind(self) -> str:
        """The name with layer indices replaced by ``*`` (``encoder.layer.*.attention.self.query``)."""
        return re.sub(r"\.\d+\.", ".*.", self.name)

    @property
    def layer(self) -> int | None:
        """The first layer index in the name, if any."""
        found = re.search(r"\.(\d+)\.", self.name)
        return int(found.group(1)) if found else None

    def to_dict(self, spectra: bool = True) -> dict:
        out = asdict(self)
        out["compression_ratio"] = self.compression_ratio
        out["central_entropy"] = self.central_entropy
        if not spectra:
            out.pop("singular_values")
        return out


@dataclass(frozen=True)
class WeightMatrix:
    """One weight matrix of a model, as :func:`weight_matrices` lists it.

    ``matrix`` is ``(out_features, in_features)`` (``(num_embeddings, dim)`` for embeddings), detached.
    ``source`` is ``"dense"`` (a module's weight) or ``"mpo"`` (rebuilt from the cores of an MPO layer;
    ``mpo_layer`` is its class name and ``mpo_bond_dims`` its bond dimensions).
    """

    name: str
    matrix: torch.Tensor
    source: str = "dense"
    mpo_layer: str | None = None
    mpo_bond_dims: tuple[int, ...] | None = None


def weight_matrices(model: nn.Module) -> list[WeightMatrix]:
    """Every weight matrix of ``model``, in module order: dense Linear / Embedding / Conv1D weights and the
    matrices of its MPO layers, rebuilt from their cores.

    Embedding tables come as ``(num_embeddings, embedding_dim)``. Conv1D
    (GPT-2) stores ``(in, out)``, so its weight is transposed. Shared
    (tied) weights are listed once, under their first name; a head tied to
    an MPO embedding (``MPOTiedLinear``) holds no matrix of its own. An MPO
    layer's matrices are named ``<module>.<suffix>`` with the suffixes of its
    converter (``Converter.mpo_matrices``: none for a single matrix,
    ``weight_ih_l0``, ... for an ``MPOLSTM``); a module whose weight an
    ``MPOWeight`` parametrizes is listed under its own name.
    """
    from .converters import converted_modules, converter_of_mpo, mpo_weight_of

    converted = {name: (module, conv, parametrized) for name, module, conv, parametrized in converted_modules(model)}
    if mpo_weight_of(model) is not None or converter_of_mpo(model) is not None:  # the model is one MPO layer
        converted[""] = (model, converter_of_mpo(model), mpo_weight_of(model) is not None)
    out: list[WeightMatrix] = []
    seen: set[int] = set()
    inside: str | None = None
    for name, module in model.named_modules():
        if inside is not None and (inside == "" or name.startswith(inside + ".")):
            continue  # the cores and submodules of an MPO layer listed already
        if name in converted:
            inside = name
            module, conv, parametrized = converted[name]
            holders = [("", module.parametrizations["weight"][0])] if parametrized else conv.mpo_matrices(module)
            layer = type(module).__name__ if not parametrized else f"{type(module).__name__} (MPOWeight)"
            for suffix, holder in holders:
                if id(holder) in seen:
                    continue
                seen.add(id(holder))
                with torch.no_grad():
                    matrix = holder.rebuild_weight().detach()
                out.append(WeightMatrix(".".join(part for part in (name, suffix) if part), matrix, "mpo", layer,
                                        tuple(holder.bond_dims)))
            continue
        if isinstance(module, (nn.Linear, nn.Embedding)):
            weight = module.weight
        elif type(module).__name__ == "Conv1D" and getattr(module, "weight", None) is not None:
            weight = module.weight.T
        else:
            continue
        if weight.dim() != 2 or id(module.weight) in seen:
            continue
        seen.add(id(module.weight))
        out.append(WeightMatrix(name, weight.detach()))
    return out


def named_weight_matrices(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, W)`` of every matrix :func:`weight_matrices` lists (dense weights and rebuilt MPO matrices)."""
    for entry in weight_matrices(model):
        yield entry.name, entry.matrix


def decompose_matrix(name: str, matrix: torch.Tensor, *, source: str = "dense", mpo_layer: str | None = None,
                     mpo_bond_dims: Sequence[int] | None = None, **mpo_options) -> tuple[MPO, MatrixReport]:
    """Decompose one matrix ``(out_features, in_features)``; ``mpo_options`` go to :meth:`MPO.from_matrix`.
    ``source``, ``mpo_layer`` and ``mpo_bond_dims`` are recorded in the report (see :class:`WeightMatrix`)."""
    start = time.perf_counter()
    mpo = MPO.from_matrix(matrix, **mpo_options)
    seconds = time.perf_counter() - start
    reference = matrix.detach().double()  # measure in float64, whatever the working precision
    norm = float(torch.linalg.vector_norm(reference))
    diff = float(torch.linalg.vector_norm(reference - mpo.to_matrix().double()))
    report = MatrixReport(
        name=name,
        shape=(int(matrix.shape[0]), int(matrix.shape[1])),
        out_modes=mpo.out_modes,
        in_modes=mpo.in_modes,
        bond_dims=mpo.bond_dims,
        num_params=mpo.num_params,
        dense_params=mpo.dense_params,
        rel_error=diff / norm if norm > 0 else 0.0,
        rel_error_bound=mpo.rel_error_bound,
        entropies=mpo.entropy(),
        central_bond=mpo.central_bond,
        singular_values=[s.double().cpu().tolist() for s in mpo.singular_values],
        seconds=seconds,
        source=source,
        mpo_layer=mpo_layer,
        mpo_bond_dims=None if mpo_bond_dims is None else tuple(int(d) for d in mpo_bond_dims),
    )
    return mpo, report


def decompose_model(
    model: nn.Module,
    *,
    dtype: torch.dtype | None = None,
    progress: bool = True,
    **mpo_options,
) -> list[MatrixReport]:
    """Decompose every weight matrix of ``model`` (see :func:`weight_matrices`): the dense weights and the
    matrices of its MPO layers, rebuilt from their cores (reported with ``source="mpo"``).

    ``mpo_options`` are keyword arguments of :meth:`MPO.from_matrix` (n_cores,
    max_bond, rel_error, max_params, gauge, ...). ``dtype`` casts each matrix
    first (e.g. ``torch.float64`` for exactness checks). Shows a tqdm bar
    when ``progress``.
    """
    matrices = weight_matrices(model)
    if not matrices:
        raise ValueError(
            f"{type(model).__name__} has no Linear, Embedding or Conv1D weight and no MPO layer to decompose; "
            "e.g. pass a transformers BertModel"
        )
    from tqdm.auto import tqdm

    reports = []
    bar = tqdm(matrices, desc="MPO-decomposing", unit="matrix", disable=not progress)
    for entry in bar:
        bar.set_postfix_str(entry.name[-40:], refresh=False)
        matrix = entry.matrix if dtype is None else entry.matrix.to(dtype)
        reports.append(decompose_matrix(entry.name, matrix, source=entry.source, mpo_layer=entry.mpo_layer,
                                        mpo_bond_dims=entry.mpo_bond_dims, **mpo_options)[1])
    return reports


def summarize(reports: Sequence[MatrixReport]) -> dict:
    """Totals over all matrices: parameters, ratio, worst error, time."""
    dense = sum(r.dense_params for r in reports)
    mpo = sum(r.num_params for r in reports)
    return {
        "matrices": len(reports),
        "mpo_matrices": sum(r.source == "mpo" for r in reports),  # rebuilt from the cores of MPO layers
        "dense_params": dense,
        "mpo_params": mpo,
        "compression_ratio": mpo / dense if dense else 0.0,
        "max_rel_error": max((r.rel_error for r in reports), default=0.0),
        "max_rel_error_bound": max((r.rel_error_bound for r in reports), default=0.0),
        "seconds": sum(r.seconds for r in reports),
    }


_COLUMNS = ("matrix", "from", "shape", "out modes x in modes", "bond dims", "params (MPO/dense)", "ratio", "rel err",
            "bound", "S_center")


def _source(r: MatrixReport) -> str:
    """The "from" column: ``dense``, or ``MPO <layer> d=<bonds>`` for a matrix rebuilt from an MPO layer."""
    if r.source != "mpo":
        return "dense"
    bonds = "" if r.mpo_bond_dims is None else f" d={','.join(map(str, r.mpo_bond_dims))}"
    return f"MPO {r.mpo_layer or 'layer'}{bonds}"


def _row(r: MatrixReport) -> tuple[str, ...]:
    modes = f"{'x'.join(map(str, r.out_modes))} x {'x'.join(map(str, r.in_modes))}"
    return (
        r.name,
        _source(r),
        f"{r.shape[0]}x{r.shape[1]}",
        modes,
        ",".join(map(str, r.bond_dims)),
        f"{r.num_params:,}/{r.dense_params:,}",
        f"{r.compression_ratio:.3f}",
        f"{r.rel_error:.1e}",
        f"{r.rel_error_bound:.1e}",
        f"{r.central_entropy:.3f}",
    )


def _total_row(summary: dict) -> tuple[str, ...]:
    return (
        f"TOTAL ({summary['matrices']} matrices)", f"{summary['mpo_matrices']} from MPO layers", "", "", "",
        f"{summary['mpo_params']:,}/{summary['dense_params']:,}",
        f"{summary['compression_ratio']:.3f}",
        f"{summary['max_rel_error']:.1e}", f"{summary['max_rel_error_bound']:.1e}", "",
    )


def format_table(reports: Sequence[MatrixReport]) -> str:
    """A plain-text table, one row per matrix, and a total row (errors: the worst one)."""
    rows = [_COLUMNS, *(_row(r) for r in reports), _total_row(summarize(reports))]
    widths = [max(len(row[c]) for row in rows) for c in range(len(_COLUMNS))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    rule = "-" * len(lines[0])
    return "\n".join([lines[0], rule, *lines[1:-1], rule, lines[-1]])


def format_markdown(reports: Sequence[MatrixReport], settings: dict | None = None) -> str:
    """The same table in Markdown, preceded by the settings used."""
    out = ["# MPO decomposition report", ""]
    for key, value in (settings or {}).items():
        out.append(f"- {key}: `{value}`")
    out += ["", "| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
    out += ["| " + " | ".join(row) + " |" for row in (*(_row(r) for r in reports), _total_row(summarize(reports)))]
    out += ["", "rel err: measured ||W - MPO(W)||_F / ||W||_F; bound: sqrt(sum_k eps_k^2) / ||W||_F; "
            "S_center: entanglement entropy at the central bond (nats); from: `dense` for a module's weight, "
            "`MPO <layer> d=<bonds>` for a matrix rebuilt from the cores of the model's MPO layer (its rank is "
            "bounded by those bonds, not by the original dense weight's)."]
    return "\n".join(out) + "\n"


def write_report(reports: Sequence[MatrixReport], out_dir: str | os.PathLike, settings: dict | None = None) -> dict[str, Path]:
    """Write ``report.json`` (with all spectra) and ``report.md`` into ``out_dir``, atomically."""
    out = Path(out_dir)
    payload = {
        "format": "mpokit.decompose-report",
        "version": 1,
        "settings": settings or {},
        "summary": summarize(reports),
        "matrices": [r.to_dict() for r in reports],
    }
    paths = {"json": out / "report.json", "markdown": out / "report.md"}
    atomic_write_text(paths["json"], json.dumps(payload, indent=1, allow_nan=False) + "\n")
    atomic_write_text(paths["markdown"], format_markdown(reports, settings))
    return paths

