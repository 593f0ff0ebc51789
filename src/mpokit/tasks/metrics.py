"""Evaluation metrics in plain torch (float64 on CPU): accuracy, macro-F1, Pearson and Spearman correlation.

* :func:`accuracy(preds, labels)`: fraction of equal entries; ``preds``, ``labels``: (N,) ints.
* :func:`confusion_matrix(preds, labels, num_classes)`: (K, K) counts, row = true class, column = predicted.
* :func:`macro_f1(preds, labels)`: mean over the classes that occur in ``labels`` or ``preds`` of
  ``F1_c = 2 TP_c / (2 TP_c + FP_c + FN_c)`` (the classes scikit-learn's ``average="macro"`` uses).
* :func:`pearson(x, y)`: ``cov(x, y) / (std(x) std(y))``; NaN when N < 2 or either input is constant.
* :func:`average_ranks(x)`: 1-based ranks, tied values get the mean of their ranks (``[10, 20, 20]`` ->
  ``[1, 2.5, 2.5]``).
* :func:`spearman(x, y)`: Pearson correlation of the average ranks.
"""

from __future__ import annotations

import math

import torch

__all__ = ["accuracy", "confusion_matrix", "macro_f1", "pearson", "average_ranks", "spearman"]


def _flat(values) -> torch.Tensor:
    return torch.as_tensor(values).detach().cpu().reshape(-1)


def accuracy(preds, labels) -> float:
    """Fraction of ``preds == labels``; both (N,), N >= 1."""
    preds, labels = _flat(preds), _flat(labels)
    return float((preds == labels).double().mean())


def confusion_matrix(preds, labels, num_classes: int) -> torch.Tensor:
    """(K, K) int64 counts: entry ``[t, p]`` = examples of true class ``t`` predicted as ``p``."""
    preds, labels = _flat(preds).long(), _flat(labels).long()
    flat = labels * num_classes + preds
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def macro_f1(preds, labels) -> float:
    """Unweighted mean of the per-class F1 over the classes present in ``labels`` or ``preds``."""
    preds, labels = _flat(preds).long(), _flat(labels).long()
    present = torch.unique(torch.cat([preds, labels]))
    k = int(present.max()) + 1
    cm = confusion_matrix(preds, labels, k).double()
    tp = cm.diagonal()
    fp = cm.sum(0) - tp  # predicted c, true class another
    fn = cm.sum(1) - tp  # true class c, predicted another
    f1 = 2 * tp[present] / (2 * tp[present] + fp[present] + fn[present])
    return float(f1.mean())


def pearson(x, y) -> float:
    """Pearson correlation of two (N,) series; NaN when N < 2 or a series is constant."""
    x, y = _flat(x).double(), _flat(y).double()
    if x.numel() < 2:
        return math.nan
    dx, dy = x - x.mean(), y - y.mean()
    denom = torch.sqrt((dx * dx).sum() * (dy * dy).sum())
    if float(denom) == 0.0:
        return math.nan
    return float((dx * dy).sum() / denom)


def average_ranks(x) -> torch.Tensor:
    """(N,) float64 ranks 1..N; equal values share the mean of the ranks they span."""
    x = _flat(x).double()
    order = torch.argsort(x, stable=True)
    _, counts = torch.unique_consecutive(x[order], return_counts=True)
    ends = torch.cumsum(counts, 0).double()  # last 1-based rank of each group of equal values
    starts = ends - counts.double() + 1
    ranks = torch.empty_like(x)
    ranks[order] = torch.repeat_interleave((starts + ends) / 2, counts)
    return ranks


def spearman(x, y) -> float:
    """Spearman rank correlation: :func:`pearson` of :func:`average_ranks`."""
    return pearson(average_ranks(x), average_ranks(y))
