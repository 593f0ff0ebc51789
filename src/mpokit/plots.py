"""Plots of MPO spectra and entropies (matplotlib, imported lazily; no pyplot global state)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from .analysis import MatrixReport
from .atomic import atomic_write_with

__all__ = ["plot_spectra"]


def _short_kind(report: MatrixReport) -> str:
    """``encoder.layer.*.attention.self.query`` -> ``attention.self.query``."""
    kind = report.kind
    return kind.split("*.", 1)[1] if "*." in kind else kind


def _representative(reports: Sequence[MatrixReport]) -> MatrixReport:
    """The largest matrix inside a layer (e.g. an FFN), else the largest one."""
    layered = [r for r in reports if r.layer is not None] or list(reports)
    return max(layered, key=lambda r: (r.dense_params, -reports.index(r)))


def plot_spectra(reports: Sequence[MatrixReport], path: str | os.PathLike, title: str | None = None) -> Path:
    """Save a 2x2 PNG: central-bond spectra, entropy per bond, all bonds of one matrix, entropy per layer.

    Singular values are normalised by the largest one of their bond; entropies
    are in nats. Matrices of the same kind (same name up to the layer index)
    share a colour.
    """
    if not reports:
        raise ValueError("plot_spectra needs at least one MatrixReport; e.g. plot_spectra(decompose_model(model), 'x.png')")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    kinds = list(dict.fromkeys(_short_kind(r) for r in reports))
    palette = [f"C{i}" for i in range(10)] + ["black", "olive", "navy", "teal", "maroon"]
    colour = {k: palette[i % len(palette)] for i, k in enumerate(kinds)}

    fig = Figure(figsize=(14, 10), dpi=110)
    FigureCanvasAgg(fig)
    (ax_spec, ax_ent), (ax_rep, ax_layer) = fig.subplots(2, 2)

    labelled: set[str] = set()
    for r in reports:
        kind = _short_kind(r)
        label = None if kind in labelled else kind
        labelled.add(kind)
        s = r.singular_values[r.central_bond] if r.singular_values else []
        if s and s[0] > 0:
            ax_spec.semilogy(range(1, len(s) + 1), [max(v / s[0], 1e-12) for v in s], color=colour[kind], lw=0.8, alpha=0.7, label=label)
        ax_ent.plot(range(1, len(r.entropies) + 1), r.entropies, "o-", color=colour[kind], lw=0.8, ms=3, alpha=0.7, label=label)
    ax_spec.set(title="Singular values at the central bond", xlabel="index", ylabel="s / s_max")
    ax_ent.set(title="Entanglement entropy per bond", xlabel="bond k", ylabel="S_k (nats)")
    ax_ent.xaxis.get_major_locator().set_params(integer=True)

    rep = _representative(reports)
    for k, s in enumerate(rep.singular_values):
        if s and s[0] > 0:
            ax_rep.semilogy(range(1, len(s) + 1), [max(v / s[0], 1e-12) for v in s], lw=1.2,
                            label=f"bond {k + 1} (d={len(s)}, S={rep.entropies[k]:.2f})")
    ax_rep.set(title=f"Spectra of every bond: {rep.name} {rep.shape[0]}x{rep.shape[1]}", xlabel="index",
               ylabel="s / s_max")
    ax_rep.legend(fontsize=8)

    layered = [r for r in reports if r.layer is not None]
    if layered:
        for kind in kinds:
            points = sorted((r.layer, r.central_entropy) for r in layered if _short_kind(r) == kind)
            if points:
                ax_layer.plot(*zip(*points), "o-", color=colour[kind], label=kind)
        ax_layer.set(title="Central-bond entropy per layer", xlabel="layer", ylabel="S_center (nats)")
        ax_layer.xaxis.get_major_locator().set_params(integer=True)
    else:
        names = [r.name for r in reports]
        ax_layer.barh(range(len(names)), [r.central_entropy for r in reports], color=[colour[_short_kind(r)] for r in reports])
        ax_layer.set_yticks(range(len(names)), names, fontsize=7)
        ax_layer.set(title="Central-bond entropy per matrix", xlabel="S_center (nats)")

    for ax in (ax_spec, ax_ent, ax_rep, ax_layer):
        ax.grid(alpha=0.3)
    for ax in (ax_spec, ax_rep):  # zero singular values (padding) would stretch the log axis: floor at 1e-8
        low, high = ax.get_ylim()
        ax.set_ylim(max(low, 1e-8), min(high, 2.0))
    handles, labels = ax_ent.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), fontsize=9, frameon=False)
    fig.suptitle(title or f"MPO spectra of {len(reports)} weight matrices")
    fig.tight_layout(rect=(0, 0.06, 1, 0.97))

    return atomic_write_with(Path(path), lambda tmp: fig.savefig(tmp, format="png"))
