"""Graph cut (instruction tuning): representation minus a redundancy penalty, as submodlib's
``GraphCutFunction`` defines it (ground set = represented set, no separate representatives).

    f(A) = sum_{i in V} sum_{j in A} s_ij  -  lam * sum_{i in A} sum_{j in A} s_ij

over the pool kernel s (rows i = items represented, columns j = candidates; the double sum over
A counts ordered pairs, the diagonal once). Adding j gains

    sum_{i in V} s_ij  -  lam * ( sum_{i in A} (s_ij + s_ji) + s_jj ),

so the state of a set is, per candidate j, c_j = sum_{i in A} (s_ij + s_ji). For a symmetric
kernel this is submodlib's gain (total similarity - 2 lam subset similarity - lam s_jj). f is
submodular for s >= 0 and monotone when lam <= 0.5 (symmetric kernels); larger lam favours
diversity and makes late gains negative. It has no compiled coverage form, so the greedy
optimisers run it through the generic gain/update protocol.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from delift_core.kernels.matrices import is_sparse
from delift_core.selection.objectives.base import Objective, as_kernel
from delift_core.selection.objectives.spec import ObjectiveSpec, Param

__all__ = ["GraphCut", "SPEC"]


class GraphCut(Objective):
    """Graph cut f(A) = sum_{i in V, j in A} s_ij - lam sum_{i, j in A} s_ij (module docstring)."""

    name = "gc"

    def __init__(self, pool_kernel: Any, lam: float = 0.4) -> None:
        k = as_kernel(pool_kernel, "pool kernel")
        if k.shape[0] != k.shape[1]:
            raise ValueError(f"graph cut needs a square pool kernel, got shape {k.shape}")
        self.lam = float(lam)
        self.sparse = is_sparse(k)
        self.kernel = k.tocsr() if self.sparse else np.asarray(k, np.float64)
        self._kt = self.kernel.T.tocsr() if self.sparse else None
        self._colsum = np.asarray(self.kernel.sum(axis=0), np.float64).ravel()
        self._diag = np.asarray(self.kernel.diagonal(), np.float64).ravel()

    @property
    def n_candidates(self) -> int:
        return self.kernel.shape[1]

    def initial_state(self) -> np.ndarray:
        """c_j = 0 for every candidate (the empty set)."""
        return np.zeros(self.n_candidates, np.float64)

    def gains(self, state: np.ndarray, candidates: np.ndarray | None = None) -> np.ndarray:
        """sum_i s_ij - lam (c_j + s_jj) for each candidate j."""
        g = self._colsum - self.lam * (np.asarray(state, np.float64) + self._diag)
        return g if candidates is None else g[np.asarray(candidates, np.int64)]

    def _row_plus_col(self, j: int) -> np.ndarray:
        if self.sparse:
            return (self.kernel.getrow(j).toarray().ravel()
                    + self._kt.getrow(j).toarray().ravel()).astype(np.float64)
        return self.kernel[j, :] + self.kernel[:, j]

    def update(self, state: np.ndarray, j: int) -> np.ndarray:
        """c += s_j. + s_.j: every candidate's similarity to the set grows by its pairs with j."""
        return np.asarray(state, np.float64) + self._row_plus_col(int(j))

    def evaluate(self, selected: Iterable[int]) -> float:
        """f(A) by its definition (a set: repeated indices count once)."""
        sel = np.unique(np.fromiter((int(j) for j in selected), dtype=np.int64))
        if sel.size == 0:
            return 0.0
        inner = self.kernel[sel][:, sel]
        inner_sum = float(inner.sum())
        return float(self._colsum[sel].sum()) - self.lam * inner_sum


SPEC = ObjectiveSpec(
    name="gc", label="GC (graph cut)", stage="instruction",
    params=(Param("lam", "λ (lambda): redundancy penalty", 0.4, 0.0, 1.0, step=0.05,
                  help="weight of the similarity within the subset (diversity); <= 0.5 keeps f "
                       "monotone"),),
    help="Represents the pool while penalising similar picks (submodlib's graph cut).",
    stands_on={"pool": ("selected_columns",)},  # both terms sum the selected columns' pairs
    build=lambda kernels, lam: GraphCut(kernels.scaled("pool"), lam=lam))
