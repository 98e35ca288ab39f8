"""Greedy maximisation of a coverage objective: lazy (exact), naive and stochastic.

Every optimiser returns the whole greedy order with the gain of each pick, so the selection for
any smaller budget is a prefix. Ties go to the lowest candidate index, so runs are deterministic.
Pinned candidates start the order (in the order given); banned ones are never picked.
"""

from __future__ import annotations

import heapq
import logging
import math
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from delift_core import settings
from delift_core.selection import coverage_kernels
from delift_core.selection.objectives.base import Objective

__all__ = ["GreedyResult", "greedy_maximize", "random_order"]

logger = logging.getLogger(__name__)


@dataclass
class GreedyResult:
    """The greedy order, each pick's marginal gain, and the objective value after each pick."""

    order: np.ndarray
    gains: np.ndarray
    values: np.ndarray
    n_pinned: int = 0
    method: str = "lazy"
    evaluations: int = 0
    notes: list[str] = field(default_factory=list)

    def prefix(self, budget: int) -> np.ndarray:
        """The first ``budget`` picks (the selection at that budget)."""
        return self.order[:budget]


def _argmax_lowest(g: np.ndarray) -> int:
    return int(np.flatnonzero(g == g.max())[0])


def _lazy_generic(objective: Objective, state: np.ndarray, cand: np.ndarray, picks: int
                  ) -> tuple[list[int], list[float], int]:
    """Lazy greedy over the gain/update protocol (objectives without a compiled path).

    A heap of upper bounds keyed (-gain, index): the top is re-evaluated and taken when it still
    leads, so the order (ties to the lowest index) equals the naive greedy's for a submodular f.
    """
    g = objective.gains(state, cand)
    heap = [(-float(v), int(j)) for v, j in zip(g, cand)]
    heapq.heapify(heap)
    evaluations = cand.size
    order: list[int] = []
    gains: list[float] = []
    while heap and len(order) < picks:
        _, j = heapq.heappop(heap)
        fresh = float(objective.gains(state, np.array([j], dtype=np.int64))[0])
        evaluations += 1
        if not heap or (-fresh, j) <= heap[0]:
            order.append(j)
            gains.append(fresh)
            state = objective.update(state, j)
        else:
            heapq.heappush(heap, (-fresh, j))
    return order, gains, evaluations


def greedy_maximize(objective: Objective, budget: int | None = None, *,
                    method: str = settings.default("method"), pinned: Iterable[int] = (),
                    banned: Iterable[int] = (),
                    seed: int = settings.default("seed"),
                    epsilon: float = settings.default("epsilon")) -> GreedyResult:
    """Greedily pick up to ``budget`` candidates (all allowed ones when None)."""
    method = settings.check("method", method)
    n = objective.n_candidates
    pinned = list(dict.fromkeys(int(p) for p in pinned))
    banned_set = {int(b) for b in banned}
    clash = banned_set.intersection(pinned)
    if clash:
        raise ValueError(f"candidates both pinned and banned: {sorted(clash)}")
    for k in [*pinned, *banned_set]:
        if not 0 <= k < n:
            raise ValueError(f"candidate index {k} out of range 0..{n - 1}")
    allowed = n - len(banned_set)
    budget = allowed if budget is None else int(budget)
    if budget < 0:
        raise ValueError("budget must be non-negative")
    notes = []
    if len(pinned) > budget:
        notes.append(f"{len(pinned)} pinned samples exceed the budget {budget}; all are kept")
    budget = min(max(budget, len(pinned)), allowed)

    state = objective.initial_state()
    order, gains = [], []
    evaluations = 0
    for p in pinned:
        gains.append(float(objective.gains(state, np.array([p]))[0]))
        evaluations += 1
        order.append(p)
        state = objective.update(state, p)
    available = np.ones(n, dtype=bool)
    available[pinned] = False
    available[list(banned_set)] = False

    if method in ("naive", "stochastic"):
        rng = np.random.default_rng(seed)
        remaining_picks = budget - len(order)
        while len(order) < budget:
            cand = np.flatnonzero(available)
            if method == "stochastic":  # a random sample of the candidates each step
                size = min(cand.size, max(1, math.ceil(cand.size / max(remaining_picks, 1)
                                                       * math.log(1 / epsilon))))
                cand = np.sort(rng.choice(cand, size=size, replace=False))
            g = objective.gains(state, cand)
            evaluations += cand.size
            k = _argmax_lowest(g)
            j = int(cand[k])
            order.append(j)
            gains.append(float(g[k]))
            available[j] = False
            state = objective.update(state, j)
    else:
        cand = np.flatnonzero(available).astype(np.int64)
        compiled = objective.compiled_args()
        if len(order) < budget and cand.size and compiled is None:
            picked_l, gains_l, n_eval = _lazy_generic(objective, state, cand, budget - len(order))
            order.extend(picked_l)
            gains.extend(gains_l)
            evaluations += n_eval
        elif len(order) < budget and cand.size:
            sparse, kt, indptr, rows, vals, cap, has_cap, modular, has_mod = compiled
            state = np.array(state, dtype=np.float32)
            picked, picked_gains, n_eval = coverage_kernels.lazy_greedy(
                sparse, kt, indptr, rows, vals, cand, state, cap, has_cap, modular, has_mod,
                budget - len(order))
            order.extend(picked.tolist())
            gains.extend(picked_gains.tolist())
            evaluations += int(n_eval)
    gains_arr = np.asarray(gains, dtype=np.float64)
    base = objective.evaluate([])
    return GreedyResult(order=np.asarray(order, dtype=np.int64), gains=gains_arr,
                        values=base + np.cumsum(gains_arr), n_pinned=len(pinned), method=method,
                        evaluations=evaluations, notes=notes)


def random_order(n: int, budget: int | None = None, *, seed: int = 0, pinned: Iterable[int] = (),
                 banned: Iterable[int] = ()) -> np.ndarray:
    """A seeded random order (the random baseline), pinned first and banned never."""
    pinned = list(dict.fromkeys(int(p) for p in pinned))
    banned_set = {int(b) for b in banned}
    skip = banned_set | set(pinned)
    rest = [int(j) for j in np.random.default_rng(seed).permutation(n) if j not in skip]
    order = pinned + rest
    budget = len(order) if budget is None else max(int(budget), len(pinned))
    return np.asarray(order[:budget], dtype=np.int64)
