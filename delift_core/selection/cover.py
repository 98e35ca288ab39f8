"""Best cover: for each row, the selected column with the largest kernel value (sparse-aware).

The one place that answers "which selected row covers this row best": the selection's annotations,
the per-sample explanations and the studio all call :func:`best_cover`.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from delift_core.kernels.matrices import KernelMatrix, is_sparse

__all__ = ["best_cover"]


def best_cover(kernel: KernelMatrix, selected: Iterable[int]) -> tuple[np.ndarray, np.ndarray]:
    """(cover, value) per kernel row: the selected column with the largest value and that value.

    Ties go to the column met first in ``selected``. A row no selected column covers with a
    positive value (all values <= 0, or, in a sparse kernel, no stored pair) gets cover -1 and
    value 0. Dense kernels are read in row blocks and sparse ones column by column, so no
    n x |selected| matrix is ever made.
    """
    sel = np.fromiter((int(j) for j in selected), dtype=np.int64)
    n = kernel.shape[0]
    cover = np.full(n, -1, dtype=np.int64)
    value = np.zeros(n, dtype=np.float32)
    if sel.size == 0:
        return cover, value
    if is_sparse(kernel):
        csc = kernel.tocsc()
        for j in sel:
            a, b = csc.indptr[j], csc.indptr[j + 1]
            rows, vals = csc.indices[a:b], csc.data[a:b]
            better = vals > value[rows]
            value[rows[better]] = vals[better]
            cover[rows[better]] = j
        return cover, value
    block_rows = max(1, (1 << 22) // sel.size)  # ~16 MB of values per block
    for s in range(0, n, block_rows):
        sub = np.asarray(kernel[s: s + block_rows][:, sel], np.float32)
        arg = sub.argmax(axis=1)
        best = sub[np.arange(sub.shape[0]), arg]
        positive = best > 0
        cover[s: s + sub.shape[0]] = np.where(positive, sel[arg], -1)
        value[s: s + sub.shape[0]] = np.where(positive, best, 0)
    return cover, value
