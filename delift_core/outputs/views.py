"""Views of a selection that are not tied to any UI: gain curve, heatmap ordering and
down-sampling, selection comparison and per-sample explanations (work estimates and measured
speeds are in :mod:`delift_core.kernels.estimates`).

The studio draws these; the CLI or a notebook can use them as they are.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd

from delift_core.selection.cover import best_cover
from delift_core.data.dataset import Dataset
from delift_core.kernels.matrices import block, is_sparse

if TYPE_CHECKING:  # selection imports views' neighbours; the type is only for annotations
    from delift_core.selection.select import Selection

# ----------------------------------------------------------------------------------------------
# Text for hover labels


def hover_safe(text: str, max_chars: int = 160) -> str:
    """Dataset text made safe for Plotly hover labels: shortened, HTML-escaped, one line per 80."""
    t = " ".join(str(text).split())
    if len(t) > max_chars:
        t = t[: max_chars - 1] + "…"
    t = html.escape(t, quote=True)
    return "<br>".join(t[k: k + 80] for k in range(0, len(t), 80)) or "(empty)"


# ----------------------------------------------------------------------------------------------
# Gain curve


def gain_curve(selection: "Selection") -> pd.DataFrame:
    """Objective value and marginal gain after each greedy pick (budget 1..len(order))."""
    n = len(selection.order)
    return pd.DataFrame({"budget": np.arange(1, n + 1), "value": np.asarray(selection.values, float),
                         "gain": np.asarray(selection.gains, float),
                         "id": [selection.pool.ids[k] for k in selection.order]})


# ----------------------------------------------------------------------------------------------
# Heatmap ordering and down-sampling


def rank_order(selection: "Selection") -> np.ndarray:
    """Pool indices: selected rows by greedy rank, then rejected rows grouped by their cover.

    Rejected rows follow the rank of the selected row that covers them best, then decreasing
    coverage, so the block structure of the kernel shows.
    """
    table = selection.annotate()
    n = len(table)
    sel = [int(k) for k in selection.selected_indices]
    chosen = set(sel)
    rank_of = {selection.pool.ids[k]: r for r, k in enumerate(sel)}
    rest = [k for k in range(n) if k not in chosen]
    cov = table["coverage"].to_numpy(float)
    rest.sort(key=lambda k: (rank_of.get(table["covered_by"].iat[k], n),
                             -(cov[k] if np.isfinite(cov[k]) else -1), k))
    return np.asarray(sel + rest, int)


def cluster_order(labels: Sequence[int], within: Sequence[int] | None = None) -> np.ndarray:
    """Indices sorted by cluster label, keeping the order of ``within`` inside each cluster."""
    labels = np.asarray(labels)
    base = np.arange(len(labels)) if within is None else np.asarray(within, int)
    return np.asarray(sorted(base, key=lambda k: labels[k]), int)  # sorted() is stable


kernel_block = block  # dense values of kernel[rows][:, cols], sparse-aware (delift_core.kernels.matrices)


def _block_means(kernel: Any, groups: list[list[int]]) -> np.ndarray:
    """Mean kernel value over each (row group, column group): A^T K A with A[i, g] = 1/|g|."""
    import scipy.sparse as sp

    n = kernel.shape[0]
    rows = [i for g in groups for i in g]
    cols = [c for c, g in enumerate(groups) for _ in g]
    weights = [1.0 / len(g) for g in groups for _ in g]
    a = sp.csr_matrix((weights, (rows, cols)), shape=(n, len(groups)), dtype=np.float32)
    if is_sparse(kernel):
        return np.asarray((a.T @ kernel.astype(np.float32) @ a).toarray(), np.float32)
    out = np.zeros((len(groups), len(groups)), np.float64)
    step = max(1, (1 << 24) // max(1, n))  # row blocks: no copy of the whole kernel
    for s in range(0, n, step):
        block = np.asarray(kernel[s: s + step], np.float32)
        out += (a[s: s + step].T @ (a.T @ block.T).T).astype(np.float64)
    return out.astype(np.float32)


@dataclass
class HeatmapView:
    """A matrix ready to draw: cell (a, b) covers pool rows ``rows[a]`` and columns ``cols[b]``."""

    values: np.ndarray
    rows: list[list[int]]
    cols: list[list[int]]
    mode: str
    notice: str | None = None


def heatmap_view(kernel: np.ndarray, order: Sequence[int], *, max_size: int = 160,
                 mode: str = "sample") -> HeatmapView:
    """Reorder a square kernel by ``order``; above ``max_size`` rows, sample or aggregate.

    ``sample`` keeps ``max_size`` rows spread evenly along the order (the first, selected, rows
    included); ``aggregate`` averages contiguous blocks of the order. The notice says which.
    """
    order = np.asarray(order, int)
    n = len(order)
    if n <= max_size:
        return HeatmapView(kernel_block(kernel, order, order), [[int(i)] for i in order],
                           [[int(i)] for i in order], "full")
    if mode == "aggregate":
        groups = [list(map(int, g)) for g in np.array_split(order, max_size)]
        vals = _block_means(kernel, groups)
        sizes = sorted({len(g) for g in groups})
        notice = (f"{n} rows are too many to draw one by one: each cell is the mean over a block "
                  f"of {'–'.join(map(str, sizes))} consecutive rows of the order "
                  f"({max_size} × {max_size} blocks).")
        return HeatmapView(vals, groups, groups, "aggregate", notice)
    if mode != "sample":
        raise ValueError(f"unknown heatmap mode '{mode}'; use 'sample' or 'aggregate'")
    pos = np.unique(np.linspace(0, n - 1, max_size).round().astype(int))
    kept = order[pos]
    notice = (f"Showing {len(kept)} of {n} rows, sampled evenly along the order; raise the "
              "limit or switch to block averages to see every row.")
    return HeatmapView(kernel_block(kernel, kept, kept), [[int(i)] for i in kept],
                       [[int(i)] for i in kept], "sample", notice)


# ----------------------------------------------------------------------------------------------
# Comparing two selections


@dataclass
class Comparison:
    """How two selections of the same pool agree, row by row."""

    names: tuple[str, str]
    ids: list[str]
    status: list[str]
    counts: dict[str, int]
    jaccard: float
    notes: list[str] = field(default_factory=list)

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame({"id": self.ids, "status": self.status})


def compare_selections(a_ids: Sequence[str], b_ids: Sequence[str], pool_ids: Sequence[str],
                       names: tuple[str, str] = ("A", "B")) -> Comparison:
    """Per pool row: in both, only in A, only in B, or in neither; counts and Jaccard overlap.

    Selected ids that are not in ``pool_ids`` (a selection over another cut of the pool) are left
    out and reported in ``notes``.
    """
    pool = list(pool_ids)
    known = set(pool)
    a, b = set(a_ids), set(b_ids)
    notes = []
    for name, s in zip(names, (a, b)):
        extra = s - known
        if extra:
            notes.append(f"{len(extra)} rows selected by {name} are not in this pool and are "
                         "left out of the comparison")
    a &= known
    b &= known
    labels = {(True, True): "both", (True, False): f"only {names[0]}",
              (False, True): f"only {names[1]}", (False, False): "neither"}
    status = [labels[(i in a, i in b)] for i in pool]
    counts = {v: status.count(v) for v in labels.values()}
    union = len(a | b)
    return Comparison(names, pool, status, counts, len(a & b) / union if union else 1.0, notes)


# ----------------------------------------------------------------------------------------------
# Each row's decision (map points, tables)

DECISION_STATUSES = ("pinned", "selected", "banned", "rejected")
"""A pool row's decision: selected because pinned, selected, rejected because banned, rejected."""


def decision_status(selection: "Selection") -> list[str]:
    """Each pool row's decision, in pool order: 'pinned' (selected and pinned), 'selected',
    'banned' (rejected and banned) or 'rejected'. A pin or ban that the selection did not honour
    (e.g. a pin beyond a re-cut budget) does not change the decision shown."""
    pool = selection.pool
    chosen = set(int(k) for k in selection.selected_indices)
    pinned, banned = set(selection.pinned), set(selection.banned)
    return [("pinned" if rid in pinned else "selected") if k in chosen else
            ("banned" if rid in banned else "rejected") for k, rid in enumerate(pool.ids)]


# ----------------------------------------------------------------------------------------------
# Explaining one sample


@dataclass
class Explanation:
    """Why a sample is in or out of the selection."""

    id: str
    selected: bool
    rank: int | None = None
    gain: float | None = None
    covered_by: str | None = None
    coverage: float | None = None
    covers: list[tuple[str, float]] = field(default_factory=list)
    best_cover_for: int = 0
    alternatives: list[tuple[str, float]] = field(default_factory=list)
    pinned: bool = False
    banned: bool = False


def explain(selection: "Selection", row_id: str, top: int = 5) -> Explanation:
    """Selected: rank, marginal gain, and the rejected rows it is the best cover of (largest
    kernel value first). Rejected: the selected row that covers it best and by how much, and the
    next-best covers.

    Kernel values are the scaled pool kernel (rows = item helped, columns = example).
    """
    pool = selection.pool
    k = pool.index_of(row_id)
    sel = [int(j) for j in selection.selected_indices]
    out = Explanation(id=row_id, selected=k in sel, pinned=row_id in set(selection.pinned),
                      banned=row_id in set(selection.banned))
    kernel = (selection.kernels.scaled("pool") if selection.kernels is not None
              and selection.kernels.pool is not None else None)
    if out.selected:
        r = sel.index(k)
        out.rank, out.gain = r + 1, float(selection.gains[r])
        if kernel is not None:
            cover, value = best_cover(kernel, sel)
            rejected = np.ones(len(pool), bool)
            rejected[sel] = False
            mine = np.flatnonzero((cover == k) & rejected)  # rejected rows it covers best
            out.best_cover_for = int(mine.size)
            mine = mine[np.argsort(-value[mine], kind="stable")][:top]
            out.covers = [(pool.ids[i], float(value[i])) for i in mine]
    elif kernel is not None and sel:
        row = kernel_block(kernel, [k], sel)[0].astype(float)
        ranked = np.argsort(-row, kind="stable")
        out.covered_by, out.coverage = pool.ids[sel[ranked[0]]], float(row[ranked[0]])
        out.alternatives = [(pool.ids[sel[j]], float(row[j])) for j in ranked[1:top]]
    return out


