"""Sparse kernels: which pairs to compute (each target's nearest candidate examples), and checks.

For every target i, the utility UF(i, j) is computed only for its ``k`` nearest examples j by
sentence embedding (cosine), plus a few seeded random ones, and stored as a scipy CSR float32
matrix (rows = targets, columns = examples). Pairs not computed are absent and count as
similarity 0 in the objectives, which run on the sparse kernel directly (never densified).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import scipy.sparse as sp

from delift_core.settings import check, default

__all__ = ["neighbour_pairs", "topk_sparse", "fidelity"]


def neighbour_pairs(t_emb: np.ndarray, e_emb: np.ndarray, k: int, *, n_random: int = default("neighbour_random"),
                    seed: int = 0, chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of each target's ``k`` most similar examples plus ``n_random`` seeded random ones.

    Embeddings are unit-normalised; similarity is the dot product, computed in row chunks of at
    most ``chunk`` rows and :data:`BLOCK_CELLS` similarities (no full matrix: a 100,000-column
    search holds a few MiB at a time, not GiBs). Ties go to the lower example index. Each pair
    appears once.
    """
    t = np.asarray(t_emb, np.float32)
    e = np.asarray(e_emb, np.float32)
    n_t, n_e = t.shape[0], e.shape[0]
    k = check("neighbours", k)
    kk = min(k, n_e)
    step = _block_rows(chunk, n_e)
    rows, cols = [], []
    for s in range(0, n_t, step):
        sim = t[s: s + step] @ e.T
        if kk < n_e:
            # order by (-similarity, index): argpartition then a stable sort of the candidates
            part = np.argpartition(sim, n_e - kk, axis=1)[:, n_e - kk:]
            kth = np.take_along_axis(sim, part, 1).min(axis=1, keepdims=True)
            del part
            top = []
            for b in range(sim.shape[0]):
                cand = np.flatnonzero(sim[b] >= kth[b])
                order = np.lexsort((cand, -sim[b, cand]))[:kk]
                top.append(cand[order])
            top = np.stack(top)
        else:
            top = np.broadcast_to(np.arange(n_e), sim.shape)
        rows.append(np.repeat(np.arange(s, s + sim.shape[0]), top.shape[1]))
        cols.append(top.reshape(-1))
    r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    c = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    n_random = min(n_random, n_e)  # more draws than columns add nothing but memory
    if n_random > 0 and n_e > kk:
        rng = np.random.default_rng(seed)
        r = np.concatenate([r, np.repeat(np.arange(n_t), n_random)])
        c = np.concatenate([c, rng.integers(0, n_e, size=n_t * n_random)])
    pairs = np.unique(np.stack([r.astype(np.int64), c.astype(np.int64)], 1), axis=0)
    return pairs[:, 0], pairs[:, 1]


BLOCK_CELLS = 1 << 22
"""The most similarities (or dense kernel values) held per row chunk: 16 MiB of float32 and
32 MiB of the partition's int64 indices, whatever the number of columns."""


def _block_rows(chunk: int, n_cols: int) -> int:
    """Rows per chunk: at most ``chunk``, and at most :data:`BLOCK_CELLS` cells."""
    return max(1, min(chunk, BLOCK_CELLS // max(1, n_cols)))


def topk_sparse(dense_rows: Callable[[int, int], np.ndarray], n_rows: int, n_cols: int, k: int,
                chunk: int = 2048) -> sp.csr_matrix:
    """A CSR matrix keeping each row's ``k`` largest values from a row-chunk producer."""
    kk = min(k, n_cols)
    data, indices = [], []
    step = _block_rows(chunk, n_cols)
    for s in range(0, n_rows, step):
        block = np.asarray(dense_rows(s, min(n_rows, s + step)), np.float32)
        part = np.argpartition(-block, kk - 1, axis=1)[:, :kk] if kk < n_cols else \
            np.broadcast_to(np.arange(n_cols), block.shape)
        part = np.sort(part, axis=1)
        data.append(np.take_along_axis(block, part, 1).reshape(-1))
        indices.append(part.reshape(-1))
    indptr = np.arange(0, n_rows * kk + 1, kk, dtype=np.int64)
    return sp.csr_matrix((np.concatenate(data) if data else np.zeros(0, np.float32),
                          np.concatenate(indices) if indices else np.zeros(0, np.int64), indptr),
                         shape=(n_rows, n_cols), dtype=np.float32)


def fidelity(dense_objective: Any, sparse_order: Sequence[int], dense_order: Sequence[int],
             budget: int) -> dict:
    """How a sparse-kernel selection compares with the full-kernel one at a budget.

    ``value_ratio`` is f_full(sparse selection) / f_full(full selection), both scored on the full
    kernel; ``overlap`` is the fraction of the full selection also in the sparse selection.
    """
    a = [int(x) for x in sparse_order[:budget]]
    b = [int(x) for x in dense_order[:budget]]
    fa, fb = dense_objective.evaluate(a), dense_objective.evaluate(b)
    return {"budget": budget, "value_sparse_on_full": fa, "value_full": fb,
            "value_ratio": fa / fb if fb else float("nan"),
            "overlap": len(set(a) & set(b)) / max(1, len(b))}

