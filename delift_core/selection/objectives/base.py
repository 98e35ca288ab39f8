"""The objective protocol every submodular function of DELIFT follows, and the coverage form
that four of them share.

Protocol (apricot's two-method gain/update, over an opaque per-set ``state``): ``initial_state()``,
``gains(state, candidates)``, ``update(state, j)``, ``evaluate(selected)``, ``n_candidates``. Any
objective with these works with every greedy optimiser. An objective may also offer
``compiled_args()``: the arrays of the compiled coverage kernels (:mod:`delift_core.selection.coverage_kernels`),
which the lazy greedy then runs without any Python work per evaluation; ``None`` (the default)
takes the generic path.

The coverage form (FL, FLMI, FLQMI, FLCG):

    f(A) = sum_r [ min(max(b_r, max_{j in A} K[r, j]), c_r) - min(b_r, c_r) ] + sum_{j in A} w_j

with rows r (the items to cover), candidate columns j, a floor b_r >= 0, a cap c_r and modular
weights w_j. Similarities are clamped at 0 (the floor is never below 0), so a negative value in a
kernel never lowers a score. Kernels are expected in [0, 1] (the pipeline min-max scales them).

Each objective module also defines ``SPEC`` (an :class:`~delift_core.selection.objectives.spec.ObjectiveSpec`):
its name, label, stage, the extra set it needs and its parameters; the registry reads those.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable

import numpy as np

from delift_core.selection import coverage_kernels
from delift_core.kernels.matrices import KernelMatrix, is_sparse

__all__ = ["Objective", "CoverageObjective", "as_kernel", "axis_max", "paired_kernels"]

logger = logging.getLogger(__name__)


class Objective:
    """Base of every objective: the gain/update protocol (see the module docstring).

    Subclasses set ``n_candidates`` and implement the four methods; ``compiled_args`` returning
    ``None`` means "no compiled fast path".
    """

    name = "objective"

    @property
    def n_candidates(self) -> int:  # pragma: no cover - every subclass overrides
        raise NotImplementedError

    def initial_state(self) -> np.ndarray:
        """The state of the empty set."""
        raise NotImplementedError

    def gains(self, state: np.ndarray, candidates: np.ndarray | None = None) -> np.ndarray:
        """Marginal gains of adding each candidate (all when None) to the set whose state is given."""
        raise NotImplementedError

    def update(self, state: np.ndarray, j: int) -> np.ndarray:
        """The state after adding candidate j (a new array; ``state`` is not changed)."""
        raise NotImplementedError

    def evaluate(self, selected: Iterable[int]) -> float:
        """f(A) for a set of candidate indices."""
        raise NotImplementedError

    def compiled_args(self) -> tuple | None:
        """Arrays for the compiled coverage kernels, or None (generic greedy path)."""
        return None


def as_kernel(kernel: Any, name: str) -> KernelMatrix:
    """A float32 kernel: dense 2-D arrays as given (no copy when already float32, memory maps kept),
    scipy sparse matrices as float32 CSR. Missing sparse entries count as similarity 0."""
    if is_sparse(kernel):
        k = kernel.tocsr()
        if k.dtype != np.float32:
            k = k.astype(np.float32)
        if k.ndim != 2:
            raise ValueError(f"{name} must be a 2-D matrix, got shape {k.shape}")
        if not np.isfinite(k.data).all():
            raise ValueError(f"{name} holds NaN or infinite values")
        return k
    k = kernel if isinstance(kernel, np.ndarray) else np.asarray(kernel)
    if k.ndim != 2:
        raise ValueError(f"{name} must be a 2-D matrix, got shape {k.shape}")
    if k.dtype != np.float32:
        k = k.astype(np.float32)
    step = max(1, (1 << 22) // max(1, k.shape[1]))
    for r in range(0, k.shape[0], step):  # in row blocks: no n x n temporary
        if not np.isfinite(k[r: r + step]).all():
            raise ValueError(f"{name} holds NaN or infinite values")
    return k


def paired_kernels(pool_kernel: Any, other_kernel: Any, other_name: str, axis: int
                   ) -> tuple[KernelMatrix, KernelMatrix]:
    """The pool kernel and a target/existing kernel as float32, checked to share the pool rows:
    ``other_kernel``'s dimension ``axis`` must equal the pool's row count."""
    pool = as_kernel(pool_kernel, "pool kernel")
    other = as_kernel(other_kernel, f"{other_name} kernel")
    if other.shape[axis] != pool.shape[0]:
        raise ValueError(f"{other_name} kernel has {other.shape[axis]} "
                         f"{'columns' if axis == 1 else 'rows'}, the pool has {pool.shape[0]} rows")
    return pool, other


def _column_major(k: np.ndarray) -> np.ndarray:
    """The kernel with contiguous columns, so a candidate's column is one contiguous read.

    Memory-mapped and already column-major kernels are used as they are (no copy).
    """
    if k.flags.f_contiguous or isinstance(k, np.memmap):
        return k
    out = np.empty(k.shape, dtype=np.float32, order="F")
    out_t = out.T
    for s in range(0, k.shape[1], 64):  # blocked transpose: several times faster than one copy
        out_t[s: s + 64] = k[:, s: s + 64].T
    return out


def axis_max(k: Any, axis: int) -> np.ndarray:
    """Max along an axis of a dense or sparse kernel (a sparse row's missing entries count as 0)."""
    if is_sparse(k):
        m = k.max(axis=axis)
        m = m.toarray() if hasattr(m, "toarray") else m
        return np.asarray(m).ravel().astype(np.float32)
    return np.asarray(k).max(axis=axis)


class CoverageObjective(Objective):
    """The coverage form (module docstring); subclasses set the kernel, floors, caps and modular weights.

    A dense kernel is held column-major (each candidate's column contiguous); a scipy sparse kernel
    is held as CSR plus its column view (CSC) and never densified.
    """

    name = "coverage"

    def __init__(self, kernel: Any, floor: np.ndarray | None = None,
                 cap: np.ndarray | None = None, modular: np.ndarray | None = None) -> None:
        self.sparse = is_sparse(kernel)
        self._args: tuple | None = None
        if self.sparse:
            self.kernel = kernel
            csc = kernel.tocsc()
            csc.sort_indices()
            self._indptr = csc.indptr.astype(np.int64)
            self._rows = csc.indices.astype(np.int64)
            self._raw = csc.data.astype(np.float32)
            self._vals = self._raw
        else:
            self.kernel = _column_major(kernel)
        n_rows, n_cols = kernel.shape
        self.floor = (np.zeros(n_rows, np.float32) if floor is None
                      else np.maximum(np.asarray(floor, np.float32), 0))
        self.cap = None if cap is None else np.maximum(np.asarray(cap, np.float32), 0)
        self.modular = None if modular is None else np.asarray(modular, np.float64)
        base = self.floor if self.cap is None else np.minimum(self.floor, self.cap)
        self._base = base.astype(np.float32)
        if self.sparse and self.cap is not None:
            self._vals = np.minimum(self._vals, self.cap[self._rows])

    @property
    def n_candidates(self) -> int:
        return self.kernel.shape[1]

    def initial_state(self) -> np.ndarray:
        """Per-row coverage of the empty set: the floors (capped)."""
        return self._base.copy()

    def _capped(self, cols: np.ndarray) -> np.ndarray:
        return cols if self.cap is None else np.minimum(cols, self.cap[:, None])

    def _entries(self, candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sparse: (owner position, row, capped value) of every stored entry of the candidates."""
        starts = self._indptr[candidates]
        lengths = self._indptr[candidates + 1] - starts
        total = int(lengths.sum())
        owner = np.repeat(np.arange(candidates.size), lengths)
        offsets = np.cumsum(lengths) - lengths
        idx = np.arange(total, dtype=np.int64) - np.repeat(offsets - starts, lengths)
        return owner, self._rows[idx], self._vals[idx]

    def compiled_args(self) -> tuple:
        """The arrays the compiled kernels read: (sparse, kernel with candidates as rows, CSC
        indptr, rows, values, cap, has cap, modular weights, has modular)."""
        if self._args is None:
            f32 = np.zeros(0, np.float32)
            if self.sparse:
                kt, indptr, rows, vals = np.zeros((0, 0), np.float32), self._indptr, self._rows, self._vals
            else:  # rows are candidates: C-contiguous for the column-major copy (a row-major
                kt = np.asarray(self.kernel).T  # memory map is read in place, strided and slower)
                indptr, rows, vals = np.zeros(1, np.int64), np.zeros(0, np.int64), f32
            cap = f32 if self.cap is None else np.ascontiguousarray(self.cap, np.float32)
            modular = np.zeros(0) if self.modular is None else self.modular
            self._args = (self.sparse, kt, indptr, rows, vals, cap, self.cap is not None,
                          modular, self.modular is not None)
        return self._args

    def gains(self, state: np.ndarray, candidates: np.ndarray | None = None) -> np.ndarray:
        """Marginal gains of adding each candidate to the set whose coverage is ``state``."""
        cand = (np.arange(self.n_candidates, dtype=np.int64) if candidates is None
                else np.ascontiguousarray(candidates, dtype=np.int64).reshape(-1))
        sparse, kt, indptr, rows, vals, cap, has_cap, modular, has_mod = self.compiled_args()
        return coverage_kernels.gains(sparse, kt, indptr, rows, vals, cand,
                                      np.ascontiguousarray(state, np.float32), cap, has_cap,
                                      modular, has_mod)

    def column(self, j: int) -> np.ndarray:
        """Candidate j's column (capped), dense, one value per row."""
        if self.sparse:
            col = np.zeros(self.kernel.shape[0], np.float32)
            a, b = self._indptr[j], self._indptr[j + 1]
            col[self._rows[a:b]] = self._vals[a:b]
            return col
        col = np.asarray(self.kernel[:, j])
        return col if self.cap is None else np.minimum(col, self.cap)

    def update(self, state: np.ndarray, j: int) -> np.ndarray:
        """Coverage after adding candidate j."""
        if self.sparse:
            out = state.copy()
            a, b = self._indptr[j], self._indptr[j + 1]
            rows = self._rows[a:b]
            out[rows] = np.maximum(out[rows], self._vals[a:b])
            return out
        return np.maximum(state, self.column(j))

    def cover_state(self, selected: Iterable[int]) -> np.ndarray:
        """The per-row coverage (``state``) of a set of candidate indices, for :meth:`gains`."""
        return self._cover_state(np.fromiter(selected, dtype=np.int64))

    def _cover_state(self, sel: np.ndarray) -> np.ndarray:
        state = self.initial_state()
        if sel.size == 0:
            return state
        if self.sparse:
            _, rows, vals = self._entries(sel)
            np.maximum.at(state, rows, vals)
            return state
        for s in range(0, sel.size, 256):
            state = np.maximum(state, self._capped(self.kernel[:, sel[s: s + 256]]).max(axis=1))
        return state

    def evaluate(self, selected: Iterable[int]) -> float:
        """f(A) for a set of candidate indices."""
        sel = np.fromiter(selected, dtype=np.int64)
        state = self._cover_state(sel)
        value = float((state.astype(np.float64) - self._base).sum())
        if self.modular is not None and sel.size:
            value += float(self.modular[np.unique(sel)].sum())
        return value
