"""The selection pipeline: an objective from the registry, maximised by greedy on the kernels.

This is the one place where the CLI and the app turn user choices into a subset: :func:`select`
maximises the chosen objective and returns a :class:`Selection` that can be re-cut at any budget
(the greedy order is a prefix order), annotated row by row, and exported. Kernels come from
:mod:`delift_core.kernels.builder`; objectives and their parameters from :mod:`delift_core.selection.objectives`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from delift_core.selection import objectives as registry
from delift_core.selection.cover import best_cover
from delift_core.data.dataset import Dataset
from delift_core import settings
from delift_core.errors import SelectionError
from delift_core.selection.greedy import GreedyResult, greedy_maximize, random_order
from delift_core.kernels.files import check_kernels
from delift_core.kernels.builder import Kernels
from delift_core.selection.objectives.facility_location import FacilityLocation
from delift_core.selection.objectives.base import Objective

__all__ = ["OBJECTIVE_NAMES", "needs", "parse_budget", "resolve_budget", "build_objective",
           "Selection", "select"]

logger = logging.getLogger(__name__)

OBJECTIVE_NAMES = registry.names()


def _spec(objective: str) -> registry.ObjectiveSpec:
    """The registry's spec, or a SelectionError naming the choices."""
    try:
        return registry.get(objective)
    except KeyError as e:
        raise SelectionError(str(e.args[0])) from None


def needs(objective: str) -> str | None:
    """Which extra set an objective needs: 'target', 'existing' or None (from the registry)."""
    return _spec(objective).needs


def parse_budget(budget: str | float | int) -> float | int:
    """'0.3', '30%' -> a fraction; '90' -> a count. Fractions are in (0, 1]; counts are >= 1."""
    if isinstance(budget, str):
        text = budget.strip()
        try:
            if text.endswith("%"):
                budget = float(text[:-1]) / 100
            elif any(c in text for c in ".eE"):
                budget = float(text)
            else:
                budget = int(text)
        except ValueError:
            raise SelectionError(f"budget '{budget}' is neither a fraction (0.3, 30%) nor a count "
                                 "(90)") from None
    if isinstance(budget, bool):
        raise SelectionError("budget must be a fraction or a count")
    if isinstance(budget, float):
        if not 0 < budget <= 1:
            raise SelectionError(f"budget fraction {budget} must be in (0, 1]; give a count as a "
                                 "whole number")
        return budget
    if budget < 1:
        raise SelectionError(f"budget {budget} selects nothing; give at least 1 row or a fraction")
    return int(budget)


def resolve_budget(budget: str | float | int, n: int) -> int:
    """The number of rows a budget selects from a pool of n (a fraction rounds, at least 1)."""
    b = parse_budget(budget)
    if isinstance(b, float):
        return max(1, min(n, int(round(b * n))))
    if b > n:
        raise SelectionError(f"budget {b} is larger than the pool ({n} rows)")
    return b


def build_objective(name: str, kernels: Kernels, params: Mapping[str, Any] | None = None,
                    **kwargs: Any) -> Objective:
    """The objective object for a name, from the scaled kernels, with its parameters (defaults
    from the registry, overridden by ``params`` and keywords such as ``eta=0.5``)."""
    spec = _spec(name)
    if spec.build is None:
        raise SelectionError(f"'{name}' is a baseline order, not an objective to maximise")
    try:
        values = spec.resolve({**(params or {}), **kwargs})
    except ValueError as e:
        raise SelectionError(str(e)) from None
    return spec.build(kernels, **values)


@dataclass
class Selection:
    """A greedy order over a pool, cut at a budget; re-cut with :meth:`at_budget`."""

    pool: Dataset
    objective: str
    budget: int
    order: np.ndarray
    gains: np.ndarray
    values: np.ndarray
    kernels: Kernels | None
    params: dict
    pinned: list[str] = field(default_factory=list)
    banned: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    scores: Any = None
    """The per-row scores a score-based method ranked by (``RowScores``), else None."""
    excluded: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    """Pool positions the method could not take: the banned rows, and those a score filter
    (IFD-FL's ``keep``) left out. A verification never explores them."""

    def cost(self) -> dict[str, Any]:
        """What this selection cost on this machine (:func:`delift_core.selection.cost.selection_cost`)."""
        from delift_core.selection.cost import selection_cost

        return selection_cost(self)

    @property
    def selected_indices(self) -> np.ndarray:
        return self.order[: self.budget]

    @property
    def selected_ids(self) -> list[str]:
        return [self.pool.ids[k] for k in self.selected_indices]

    @property
    def objective_value(self) -> float:
        return float(self.values[self.budget - 1]) if self.budget and len(self.values) else 0.0

    @property
    def max_budget(self) -> int:
        return len(self.order)

    def at_budget(self, budget: str | float | int) -> "Selection":
        """The same selection at another budget (a prefix of the greedy order, no recompute)."""
        b = resolve_budget(budget, len(self.pool))
        if b > len(self.order):
            raise SelectionError(f"the greedy order was computed up to {len(self.order)} rows; "
                                 f"select again for a budget of {b}")
        return replace(self, budget=max(b, len(self.pinned)),
                       params={**self.params, "budget_requested": budget})

    def subset(self, name: str | None = None) -> Any:
        """The selected rows as an evaluation ``Subset`` (kind 'subset', this run's seed, the
        objective and what the selection cost in its info), named ``name`` or
        'selection (<objective>)'."""
        from delift_core.evaluation.subsets import Subset

        return Subset(name or f"selection ({self.objective})",
                      self.pool.subset(self.selected_indices), "subset",
                      self.params.get("seed"), {"objective": self.objective,
                                                "cost": self.cost()})

    def annotate(self) -> pd.DataFrame:
        """One row per pool row: decision, greedy rank and gain, and best cover for rejected rows."""
        n = len(self.pool)
        sel = self.selected_indices
        rank = np.full(n, -1)
        rank[sel] = np.arange(1, len(sel) + 1)
        gain = np.full(n, np.nan)
        gain[sel] = self.gains[: len(sel)]
        covered_by = [""] * n
        coverage = np.full(n, np.nan)
        if self.kernels is not None and self.kernels.pool is not None and len(sel):
            cover, best = best_cover(self.kernels.scaled("pool"), sel)
            for i in range(n):
                if rank[i] < 0:
                    covered_by[i] = self.pool.ids[int(cover[i])] if cover[i] >= 0 else ""
                    coverage[i] = float(best[i])
        pinned, banned = set(self.pinned), set(self.banned)
        return pd.DataFrame({
            "id": self.pool.ids,
            "position": self.pool.positions or list(range(n)),
            "selected": rank > 0,
            "rank": pd.array([int(r) if r > 0 else None for r in rank], dtype="Int64"),
            "gain": gain,
            "covered_by": covered_by,
            "coverage": coverage,
            "pinned": [i in pinned for i in self.pool.ids],
            "banned": [i in banned for i in self.pool.ids],
            "prompt": self.pool.prompts,
            "response": self.pool.responses,
        })

    def to_json(self) -> dict:
        """What ``selection.json`` holds: ordered ids, gains, value and parameters."""
        sel = self.selected_indices
        return {"objective": self.objective, "budget": int(self.budget), "pool_size": len(self.pool),
                "selected_ids": [self.pool.ids[k] for k in sel],
                "gains": [float(g) for g in self.gains[: len(sel)]],
                "objective_value": self.objective_value,
                "greedy_order_ids": [self.pool.ids[k] for k in self.order],
                "greedy_gains": [float(g) for g in self.gains],
                "pinned": self.pinned, "banned": self.banned, "params": self.params,
                "notes": self.notes}


def select(pool: Dataset, objective: str, kernels: Kernels | None, budget: str | float | int, *,
           params: Mapping[str, Any] | None = None, seed: int = settings.default("seed"),
           method: str = settings.default("method"),
           epsilon: float = settings.default("epsilon"), pinned: Sequence[str] = (), banned: Sequence[str] = (),
           full_order: bool | None = None, diagonal: str | None = None,
           scores: Any = None, **objective_params: Any) -> Selection:
    """Select a subset of ``pool`` by maximising ``objective`` on ``kernels`` under ``budget``.

    The objective's parameters (``eta``, ``nu``, ``lam``, ... as its registry spec lists them)
    come from ``params`` or keywords; the rest take their defaults. With ``full_order`` (default
    for pools up to 3,000 rows) the greedy order covers every allowed row, so
    :meth:`Selection.at_budget` can re-cut any budget instantly. ``diagonal`` (``reference``,
    ``max``, ``rowmax``; :mod:`delift_core.kernels.diagonal`) selects on ``kernels.with_diagonal(...)``;
    without it the kernels' own :attr:`~delift_core.kernels.builder.Kernels.diagonal` applies.

    A method that ranks by per-row scores (``ifd``, ``longest``; ``ifd-fl`` filters by them) takes
    them in ``scores`` (:class:`~delift_core.kernels.scores.RowScores` of this pool, checked).
    """
    start = time.time()
    seed, method = settings.check("seed", seed), settings.check("method", method)
    epsilon = settings.check("epsilon", epsilon)
    spec = _spec(objective)
    if budget is None or isinstance(budget, bool):
        raise SelectionError("budget must be a fraction (0.3, '30%') or a row count (90)")
    n = len(pool)
    b = resolve_budget(budget, n)
    if spec.needs and (kernels is None or getattr(kernels, spec.needs) is None):
        raise SelectionError(f"objective '{objective}' needs "
                             f"{'a target' if spec.needs == 'target' else 'an existing'}"
                             f" set (--{spec.needs} FILE) and its kernel")
    if not spec.baseline and spec.needs_kernel and kernels is None:
        raise SelectionError(f"objective '{objective}' needs a kernel")
    if spec.scores is not None:
        if scores is None or scores.kind != spec.scores:
            raise SelectionError(f"objective '{objective}' ranks by per-row '{spec.scores}' "
                                 "scores; compute them first (compute_row_scores)")
        scores.check_rows(pool, f"the {scores.kind} scores")
    if kernels is not None:
        check_kernels(kernels, n)
        if diagonal is not None:
            kernels = kernels.with_diagonal(diagonal)
    try:
        values = spec.resolve({**(params or {}), **objective_params})
    except ValueError as e:
        raise SelectionError(str(e)) from None
    unknown = [x for x in [*pinned, *banned] if x not in set(pool.ids)]
    if unknown:
        raise SelectionError(f"pinned or banned ids not in the pool: {unknown[:10]}")
    pin_idx = [pool.index_of(x) for x in pinned]
    ban_idx = [pool.index_of(x) for x in banned]
    if full_order is None:
        full_order = n <= 3000
    order_budget = None if full_order else b
    run_params = {**values, "seed": seed, "method": method, "epsilon": epsilon,
                  "budget_requested": budget, "kernel": kernels.kind if kernels else None,
                  "diagonal": kernels.diagonal if kernels else None}
    if spec.scores is not None:
        run_params.update(scores=spec.scores, scores_model=scores.meta.get("model"))
    if spec.baseline:
        result = _random_result(n, order_budget, seed, pin_idx, ban_idx, kernels, run_params)
    elif spec.build is None:  # a ranking by per-row scores
        result = _ranked_result(scores.values, order_budget, pin_idx, ban_idx, spec.scores)
    else:
        if spec.scores is not None:  # filter by score, then maximise among what is kept
            kept = _ranking(scores.values, spec.scores, set(ban_idx))
            if spec.scores == "ifd":  # Superfiltering keeps only rows the instruction helps
                kept = kept[scores.values[kept] < 1.0]
            kept = kept[: max(1, int(round(values["keep"] * n)))]
            ban_idx = sorted(set(range(n)) - set(kept.tolist()) - set(pin_idx))
            run_params["kept_by_score"] = len(kept)
        obj = spec.build(kernels, **values)
        try:
            result = greedy_maximize(obj, order_budget, method=method, pinned=pin_idx,
                                     banned=ban_idx, seed=seed, epsilon=epsilon)
        except ValueError as e:
            raise SelectionError(str(e)) from None
    b = min(max(b, len(pin_idx)), len(result.order))
    logger.info("%s: %d of %d rows selected in %.2f s", objective, b, n, time.time() - start)
    return Selection(pool=pool, objective=objective, budget=b, order=result.order,
                     gains=result.gains, values=result.values, kernels=kernels, params=run_params,
                     pinned=list(pinned), banned=list(banned), notes=result.notes,
                     seconds=round(time.time() - start, 3),
                     scores=scores if spec.scores is not None else None,
                     excluded=np.asarray(sorted(ban_idx), np.int64))


def _ranking(values: np.ndarray, kind: str, banned: set[int]) -> np.ndarray:
    """Row indices by descending score (ties: the lower index first), banned rows left out; for
    IFD the rows at or above 1 (or not finite) come after all others, in their own order."""
    idx = np.array([k for k in range(len(values)) if k not in banned], dtype=np.int64)
    v = values[idx]
    late = ~np.isfinite(v) | (v >= 1.0) if kind == "ifd" else ~np.isfinite(v)
    key = np.where(np.isfinite(v), -v, np.inf)
    order = np.lexsort((idx, key, late))
    return idx[order]


def _ranked_result(values: np.ndarray, order_budget: int | None, pin_idx: list[int],
                   ban_idx: list[int], kind: str) -> GreedyResult:
    """Pinned rows first, then every allowed row by descending score; the "gain" of each pick is
    its score."""
    ranked = [k for k in _ranking(values, kind, set(ban_idx) | set(pin_idx)).tolist()]
    order = np.array(list(pin_idx) + ranked, dtype=np.int64)
    if order_budget is not None:
        order = order[: max(order_budget, len(pin_idx))]
    gains = np.nan_to_num(values[order], nan=0.0, posinf=0.0, neginf=0.0)
    return GreedyResult(order=order, gains=gains, values=np.cumsum(gains),
                        n_pinned=len(pin_idx), method="ranked")


def _random_result(n: int, order_budget: int | None, seed: int, pin_idx: list[int],
                   ban_idx: list[int], kernels: Kernels | None, params: dict) -> GreedyResult:
    """The random baseline's order; with a pool kernel, each pick's gain measured with FL."""
    order = random_order(n, order_budget, seed=seed, pinned=pin_idx, banned=ban_idx)
    if kernels is not None and kernels.pool is not None:
        obj = FacilityLocation(kernels.scaled("pool"))
        state, gains = obj.initial_state(), []
        for j in order:
            gains.append(float(obj.gains(state, np.array([j]))[0]))
            state = obj.update(state, int(j))
        gains_arr = np.asarray(gains)
        params["gains_measured_with"] = "fl"
    else:
        gains_arr = np.full(len(order), np.nan)
    return GreedyResult(order=order, gains=gains_arr, values=np.cumsum(gains_arr),
                        n_pinned=len(pin_idx), method="random")
