"""Kernel matrices: the two types a kernel may have (dense float32 array, scipy CSR float32) and
the few operations every layer needs on both, in one place.

A sparse kernel's missing entries are pairs that were not computed; they count as similarity 0
everywhere (objectives, best cover, heatmaps).
"""

from __future__ import annotations

import logging
from typing import Any, Union

import numpy as np
import scipy.sparse as sp

__all__ = ["KernelMatrix", "is_sparse", "scale_to_unit", "minmax_scale", "block"]

logger = logging.getLogger(__name__)

KernelMatrix = Union[np.ndarray, sp.csr_matrix]
"""A kernel: a dense 2-D float32 array (possibly a memory map) or a scipy CSR float32 matrix."""


def is_sparse(kernel: Any) -> bool:
    """Whether a kernel is a scipy sparse matrix (the one test used everywhere)."""
    return sp.issparse(kernel)


def scale_to_unit(values: KernelMatrix) -> KernelMatrix:
    """The whole matrix scaled to [0, 1] by its own min and max (the reference DELIFT behaviour).

    Not scikit-learn's per-column ``minmax_scale``: one min and one max for the whole kernel.
    A sparse kernel is scaled by the min and max of its stored entries (pairs not computed stay
    absent, i.e. similarity 0, below every computed pair's scaled value or equal to the lowest).
    """
    if is_sparse(values):
        out = values.tocsr().astype(np.float32, copy=True)
        if out.nnz:
            lo, hi = float(out.data.min()), float(out.data.max())
            out.data = (np.zeros_like(out.data) if hi - lo <= 0
                        else ((out.data - lo) / (hi - lo)).astype(np.float32))
        return out
    v = np.asarray(values, dtype=np.float32)
    lo, hi = float(v.min()), float(v.max())
    if hi - lo <= 0:
        return np.zeros_like(v)
    return (v - lo) / (hi - lo)


minmax_scale = scale_to_unit
"""Deprecated alias of :func:`scale_to_unit` (the old name shadowed scikit-learn's)."""


def block(kernel: KernelMatrix, rows: Any, cols: Any) -> np.ndarray:
    """Dense float32 values of ``kernel[rows][:, cols]`` for a dense or sparse kernel (a sparse
    kernel's pairs that were not computed read as 0)."""
    r = np.asarray(rows, dtype=np.int64)
    c = np.asarray(cols, dtype=np.int64)
    if is_sparse(kernel):
        return np.asarray(kernel.tocsr()[r][:, c].toarray(), np.float32)
    return np.asarray(np.asarray(kernel)[np.ix_(r, c)], np.float32)
