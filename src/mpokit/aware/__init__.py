"""Data-aware compression of one matrix: fit what a weight does on its inputs, not the weight.

Pure maths on tensors (no modules, no data): the output-aware objective and its whitening (:mod:`.objective`),
the ALS fit of an MPO to it (:mod:`.als`), layouts and the per-matrix layout search (:mod:`.layouts`), every
compression method of the harness behind one interface (:mod:`.methods`) and the split of a global budget across
matrices (:mod:`.allocation`).

Conventions: ``W (out, in)`` (``y = x W^T``), ``C = X^T X / N (in, in)`` float64, MPO cores
``(d_{k-1}, i_k, j_k, d_k)``; the output error is ``tr((W - W') C (W - W')^T)``.
"""

from .objective import damped_cholesky, output_error, relative_output_error
from .als import FitResult, fit_mpo, truncate_fit
from .layouts import Layout, LayoutSearch, LayoutTrial, candidate_layouts, search_layout
from .methods import METHODS, Approximation, approximate
from .allocation import ErrorCurve, allocate_budget, error_curve

__all__ = [
    "damped_cholesky", "output_error", "relative_output_error",
    "FitResult", "fit_mpo", "truncate_fit",
    "Layout", "LayoutSearch", "LayoutTrial", "candidate_layouts", "search_layout",
    "METHODS", "Approximation", "approximate",
    "ErrorCurve", "allocate_budget", "error_curve",
]
