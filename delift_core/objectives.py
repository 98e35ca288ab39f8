"""Submodular objectives of DELIFT, one class per function, over kernels in [0, 1].

All four are facility-location "coverage" functions of one form, which lets one greedy optimiser
serve them all without building combined kernels:

    f(A) = sum_r [ min(max(b_r, max_{j in A} K[r, j]), c_r) - min(b_r, c_r) ] + sum_{j in A} w_j

with rows r (the items to cover), candidate columns j, a floor b_r >= 0, a cap c_r and modular
weights w_j. Similarities are clamped at 0 (the floor is never below 0), so a negative value in a
kernel never lowers a score. Kernels are expected in [0, 1] (the pipeline min-max scales them).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np


def _as_kernel(kernel: np.ndarray, name: str) -> np.ndarray:
    k = np.asarray(kernel)
    if k.ndim != 2:
        raise ValueError(f"{name} must be a 2-D matrix, got shape {k.shape}")
    if k.dtype != np.float32:
        k = k.astype(np.float32)
    if not np.isfinite(k).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return k


class CoverageObjective:
    """The shared form above; subclasses set the kernel, floors, caps and modular weights."""

    name = "coverage"

    def __init__(self, kernel: np.ndarray, floor: np.ndarray | None = None,
                 cap: np.ndarray | None = None, modular: np.ndarray | None = None) -> None:
        self.kernel = kernel
        n_rows, n_cols = kernel.shape
        self.floor = (np.zeros(n_rows, np.float32) if floor is None
                      else np.maximum(np.asarray(floor, np.float32), 0))
        self.cap = None if cap is None else np.maximum(np.asarray(cap, np.float32), 0)
        self.modular = None if modular is None else np.asarray(modular, np.float64)
        base = self.floor if self.cap is None else np.minimum(self.floor, self.cap)
        self._base = base.astype(np.float32)

    @property
    def n_candidates(self) -> int:
        return self.kernel.shape[1]

    def initial_state(self) -> np.ndarray:
        """Per-row coverage of the empty set: the floors (capped)."""
        return self._base.copy()

    def _capped(self, cols: np.ndarray) -> np.ndarray:
        return cols if self.cap is None else np.minimum(cols, self.cap[:, None])

    def gains(self, state: np.ndarray, candidates: np.ndarray | None = None) -> np.ndarray:
        """Marginal gains of adding each candidate to the set whose coverage is ``state``."""
        cols = self.kernel if candidates is None else self.kernel[:, candidates]
        g = np.maximum(self._capped(cols) - state[:, None], 0).sum(axis=0, dtype=np.float64)
        if self.modular is not None:
            g = g + (self.modular if candidates is None else self.modular[candidates])
        return g

    def update(self, state: np.ndarray, j: int) -> np.ndarray:
        """Coverage after adding candidate j."""
        col = self.kernel[:, j]
        if self.cap is not None:
            col = np.minimum(col, self.cap)
        return np.maximum(state, col)

    def evaluate(self, selected: Iterable[int]) -> float:
        """f(A) for a set of candidate indices."""
        sel = np.fromiter(selected, dtype=np.int64)
        state = self.initial_state()
        if sel.size:
            state = np.maximum(state, self._capped(self.kernel[:, sel]).max(axis=1))
        value = float((state.astype(np.float64) - self._base).sum())
        if self.modular is not None and sel.size:
            value += float(self.modular[np.unique(sel)].sum())
        return value

    def best_cover(self, selected: Iterable[int]) -> tuple[np.ndarray, np.ndarray]:
        """For each row, the selected candidate with the largest kernel value, and that value."""
        sel = np.fromiter(selected, dtype=np.int64)
        if sel.size == 0:
            n = self.kernel.shape[0]
            return np.full(n, -1), np.full(n, np.nan)
        sub = self.kernel[:, sel]
        arg = sub.argmax(axis=1)
        return sel[arg], sub[np.arange(sub.shape[0]), arg]


class FacilityLocation(CoverageObjective):
    """Instruction tuning: f(A) = sum_i max_{j in A} s_ij over the pool kernel (rows covered)."""

    name = "fl"

    def __init__(self, pool_kernel: np.ndarray) -> None:
        super().__init__(_as_kernel(pool_kernel, "pool kernel"))


class FacilityLocationMutualInformation(CoverageObjective):
    """Task-specific (reference form): f(A) = sum_i min(max_{j in A} s_ij, eta * max_q s_iq).

    ``target_kernel`` has a row per target q and a column per pool item j (utility of j as an
    example for q); s_iq is read from it transposed, so no combined kernel is built.
    """

    name = "flmi"

    def __init__(self, pool_kernel: np.ndarray, target_kernel: np.ndarray, eta: float = 1.0) -> None:
        pool = _as_kernel(pool_kernel, "pool kernel")
        target = _as_kernel(target_kernel, "target kernel")
        if target.shape[1] != pool.shape[0]:
            raise ValueError(f"target kernel has {target.shape[1]} columns, the pool has "
                             f"{pool.shape[0]} rows")
        self.eta = float(eta)
        super().__init__(pool, cap=self.eta * target.max(axis=0))


class FacilityLocationQueryMutualInformation(CoverageObjective):
    """Task-specific (paper's query form): f(A) = sum_q max_{j in A} s_qj + eta sum_{j in A} max_q s_qj."""

    name = "flqmi"

    def __init__(self, target_kernel: np.ndarray, eta: float = 1.0) -> None:
        target = _as_kernel(target_kernel, "target kernel")
        self.eta = float(eta)
        super().__init__(target, modular=self.eta * np.maximum(target.max(axis=0), 0))


class FacilityLocationConditionalGain(CoverageObjective):
    """Continual: f(A | P) = sum_i max(max_{j in A} s_ij - nu * max_{p in P} s_ip, 0).

    ``existing_kernel`` has a row per pool item i and a column per existing item p.
    """

    name = "flcg"

    def __init__(self, pool_kernel: np.ndarray, existing_kernel: np.ndarray, nu: float = 1.0) -> None:
        pool = _as_kernel(pool_kernel, "pool kernel")
        existing = _as_kernel(existing_kernel, "existing kernel")
        if existing.shape[0] != pool.shape[0]:
            raise ValueError(f"existing kernel has {existing.shape[0]} rows, the pool has "
                             f"{pool.shape[0]}")
        self.nu = float(nu)
        super().__init__(pool, floor=self.nu * existing.max(axis=1))


OBJECTIVES = {
    "fl": FacilityLocation,
    "flmi": FacilityLocationMutualInformation,
    "flqmi": FacilityLocationQueryMutualInformation,
    "flcg": FacilityLocationConditionalGain,
}
