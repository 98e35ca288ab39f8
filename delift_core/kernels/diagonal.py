"""The diagonal policy of utility kernels: what a row's value for *itself* is in selection.

A utility kernel's self pair UF(i, i) (an item shown as its own in-context example) measures how
well the model copies an answer it has just seen, not how much the item helps others; in the
earlier study it averaged 0.31 against 0.05 off the diagonal, so after min-max scaling it
dominated facility location. Three policies, applied by :meth:`delift_core.kernels.builder.Kernels.scaled`
(the one place a selection kernel is made):

- ``reference``: keep UF(i, i) and min-max the whole matrix (the official DELIFT code).
- ``max``: min-max over the *non-self* entries, then s_ii = 1.0, the scaled kernel's maximum:
  every row covers itself fully (the usual facility-location convention).
- ``rowmax``: min-max over the non-self entries, then s_ii = the row's largest non-self scaled
  value (0 when the row has none): an item covers itself as well as its best helper does.

Self pairs are the pool kernel's diagonal and, in target and existing kernels, every (row, column)
whose two samples have the same content hash (``<role>_hashes`` in the kernel meta; rows shared
between sets); in the pool kernel exact duplicate rows count as self pairs too. Sparse kernels get
the self entries set, or inserted where they were not stored. Embedding kernels are not touched:
their s_ii is already (cos + 1) / 2 = 1.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import scipy.sparse as sp

from delift_core import settings as spec
from delift_core.kernels.matrices import KernelMatrix, is_sparse, scale_to_unit

__all__ = ["self_pairs", "scale_with_diagonal", "diagonal_record"]

logger = logging.getLogger(__name__)

_ROWS_COLS = {"pool": ("pool", "pool"), "target": ("target", "pool"),
              "existing": ("pool", "existing")}


def _hashes(meta: Any, role: str) -> list[str] | None:
    """A set's row content hashes from a kernel's :class:`~delift_core.kernels.meta.KernelMeta`."""
    from delift_core.kernels.meta import KernelMeta

    got = KernelMeta.from_json(meta).hashes.get(role)
    return list(got) if got is not None else None


def self_pairs(which: str, meta: dict, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of the self pairs of kernel ``which`` (pool, target or existing).

    By content hash where the meta records both sets' hashes (rows shared between sets, and exact
    duplicates); the pool kernel without hashes falls back to its diagonal, a target or existing
    kernel without them has none that can be known.
    """
    row_role, col_role = _ROWS_COLS[which]
    rh, ch = _hashes(meta, row_role), _hashes(meta, col_role)
    if rh is not None and ch is not None and len(rh) == shape[0] and len(ch) == shape[1]:
        cols_of: dict[str, list[int]] = {}
        for j, h in enumerate(ch):
            cols_of.setdefault(h, []).append(j)
        r = [i for i, h in enumerate(rh) for _ in cols_of.get(h, ())]
        c = [j for h in rh for j in cols_of.get(h, ())]
        if which == "pool":  # the diagonal always, even if two hashes were to differ
            pairs = set(zip(r, c)) | {(i, i) for i in range(min(shape))}
            r, c = (list(x) for x in zip(*sorted(pairs))) if pairs else ([], [])
        return np.asarray(r, np.int64), np.asarray(c, np.int64)
    if which == "pool":
        d = np.arange(min(shape), dtype=np.int64)
        return d, d
    return np.zeros(0, np.int64), np.zeros(0, np.int64)


def _unit(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if hi - lo <= 0:
        return np.zeros_like(values, dtype=np.float32)
    return ((values - lo) / (hi - lo)).astype(np.float32)


def scale_with_diagonal(raw: KernelMatrix, policy: str,
                        pairs: tuple[np.ndarray, np.ndarray]) -> KernelMatrix:
    """The raw utility kernel in [0, 1] with its self pairs (``pairs``) set by ``policy``."""
    r, c = pairs
    if policy == "reference" or len(r) == 0:
        return scale_to_unit(raw)
    n_rows, n_cols = raw.shape
    if is_sparse(raw):
        coo = raw.tocoo()
        keys = coo.row.astype(np.int64) * n_cols + coo.col
        self_keys = np.unique(r * n_cols + c)
        other = ~np.isin(keys, self_keys)
        vr, vc = coo.row[other].astype(np.int64), coo.col[other].astype(np.int64)
        vals = coo.data[other].astype(np.float32)
        vals = _unit(vals, float(vals.min()), float(vals.max())) if vals.size else vals
        sr, sc = self_keys // n_cols, self_keys % n_cols
        if policy == "max":
            sv = np.ones(len(sr), np.float32)
        else:
            best = np.zeros(n_rows, np.float32)
            if vals.size:
                np.maximum.at(best, vr, vals)
            sv = best[sr]
        out = sp.csr_matrix((np.concatenate([vals, sv]),
                             (np.concatenate([vr, sr]), np.concatenate([vc, sc]))),
                            shape=raw.shape, dtype=np.float32)
        out.sum_duplicates()
        return out
    v = np.asarray(raw, dtype=np.float32)
    mask = np.zeros(v.shape, bool)
    mask[r, c] = True
    off = v[~mask]
    out = _unit(v, float(off.min()), float(off.max())) if off.size else np.zeros_like(v)
    out = np.clip(out, 0.0, 1.0) if off.size else out
    if policy == "max":
        out[mask] = 1.0
    else:
        masked = np.where(mask, -np.inf, out)
        best = masked.max(axis=1) if n_cols else np.zeros(n_rows, np.float32)
        best = np.where(np.isfinite(best), best, 0.0).astype(np.float32)
        out[r, c] = best[r]
    return out


def diagonal_record(kind: str, policy: str, meta: dict, shapes: dict[str, Any]) -> dict:
    """What the manifest and kernel meta say about the policy: its name, whether it applied and
    how many self pairs each kernel has."""
    if kind == "embedding":
        return {"policy": policy, "applied": False,
                "note": "embedding kernels: s_ii = (cos + 1) / 2 = 1 already; policy not applied"}
    counts = {w: int(len(self_pairs(w, meta, s)[0])) for w, s in shapes.items() if s is not None}
    return {"policy": policy, "applied": policy != "reference", "self_pairs": counts,
            "rule": spec.get("diagonal").choices[policy]}
