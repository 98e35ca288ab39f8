"""Exact values where a selection stands: verifying a learned kernel's selection.

A facility-location selection's value rests on few of its kernel's pairs: each row's *cover*, the
selected row that helps it most (:func:`~delift_core.selection.cover.best_cover`). On a learned
kernel most covers are predicted. :func:`verify_selection` scores the predicted covers exactly
(one model pass each, plus the row's plain pass when the pair store lacks it; through the pair
store), puts the exact values into the kernel in place of the predictions, selects again, and
repeats for ``rounds`` rounds or until a round has nothing left to score. The pairs it scores
stay in the pair store, so the same verification again, or an exact kernel of the same rows,
reads them back (a learned kernel computed again scores its own anchors' pairs and predicts the
rest: it does not read them).

Covers alone only correct helpers the prediction *over*-rates: a helper it under-rates is never
selected, so never a cover, so never scored. With ``explore`` > 0 each round also scores the pairs
of that share of the pool's unselected columns, those whose predicted gain to the selection is
highest (:func:`_explored`): the candidates most likely to enter the selection once their values
are exact (``benchmarks/dev_verify_explore.py``: an oracle that made the exact selection's
columns exact reached 0.99 of its value at 10 %, covers alone stalled at 0.97 to 0.98).

It changes only which values are exact: the kernel's pairs, its predictor and its held-out
fidelity stay as they were, and the record (``meta[role]["verification"]``) says how many pairs
were verified, what they cost and how the selection moved each round.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from typing import Any, Callable, Mapping

import numpy as np
import scipy.sparse as sp

from delift_core import settings as spec
from delift_core.data.dataset import Dataset
from delift_core.errors import KernelError, SelectionError
from delift_core.kernels.builder import ROLES, Kernels, StageProgress, differing_rows
from delift_core.kernels.diagonal import self_pairs
from delift_core.kernels.learned import stands_on_words
from delift_core.kernels.matrices import is_sparse
from delift_core.kernels.utility import UtilityKernel
from delift_core.kernels.utility_settings import UtilitySettings
from delift_core.selection import objectives
from delift_core.selection.cover import best_cover
from delift_core.selection.objectives.facility_location import FacilityLocation
from delift_core.selection.select import Selection, select

__all__ = ["verify_selection", "verify_from_settings", "first_round", "plan_words", "serves",
           "VERIFIED_ROLES"]

logger = logging.getLogger(__name__)

VERIFIED_ROLES = ("pool", "target", "existing")
"""The learned kernels a verification scores when the objective reads them: the pool's and the
target's (columns are the pool rows: covers, caps, modular terms), and the existing one (columns
are the existing rows, which no selection changes: FLCG's floor, each pool row's best one)."""


def _check_engine(kernels: Kernels, lm: Any, settings: UtilitySettings) -> None:
    """A KernelError when the model, precision or value settings differ from the kernel's: exact
    values of another space must never be mixed into it."""
    recorded = dict(kernels.meta.settings or {})
    mine = {"model": getattr(lm, "name", None),
            "dtype": str(getattr(lm, "dtype", "float32")).replace("torch.", ""),
            **settings.value_key()}
    differ = [k for k, v in mine.items() if k in recorded and recorded[k] != v]
    missing = [k for k in ("model", "dtype") if k not in recorded]
    if missing:
        raise KernelError(f"the learned kernel does not record its {' and '.join(missing)}: "
                          "its selection cannot be verified (recompute the kernel)")
    prints = {m.get("model_fingerprint") for m in kernels.meta.learned.values()} - {None}
    if prints and getattr(lm, "fingerprint", None) not in prints:
        raise KernelError(f"the learned kernel's exact values come from other model weights "
                          f"(fingerprint {', '.join(sorted(prints))}) than the model given to "
                          f"verify it ({getattr(lm, 'fingerprint', None)})")
    if differ:
        raise KernelError("the learned kernel was computed with other settings than the model "
                          "given to verify it: " + ", ".join(
                              f"{k} {recorded[k]!r} (kernel) vs {mine[k]!r}" for k in differ))


def _sets(role: str, sets: Mapping[str, Dataset | None]) -> tuple[Dataset, Dataset]:
    """(rows, columns) of kernel ``role`` (:data:`~delift_core.kernels.builder.ROLES`)."""
    rows, cols = ROLES[role]
    return sets[rows], sets[cols]  # type: ignore[return-value]


def _exact_values(engine: UtilityKernel, rows: Dataset, cols: Dataset, r: np.ndarray,
                  c: np.ndarray, transposed: bool, cancel: threading.Event | None,
                  progress: Callable[[int, int], None] | None) -> tuple[np.ndarray, dict]:
    """UF of the pairs (r[k], c[k]) of a rows x columns kernel, as the kernel values them
    (``transposed``: a reference-direction target kernel, UF(column | row))."""
    if transposed:
        r, c, rows, cols = c, r, cols, rows
    uniq, loc = np.unique(r, return_inverse=True)
    res = engine.compute(rows.subset(uniq.tolist()), cols, pairs=(loc, c), cancel=cancel,
                         progress=progress)
    vals = np.asarray(res.values[loc, c], np.float32).ravel()
    return vals, res.meta


def _covers(kernels: Kernels, role: str, chosen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, columns) of each row's cover among ``chosen`` in kernel ``role``, without self
    pairs (a row and itself or its exact duplicate: the diagonal policy sets their value) and
    without rows a selected self pair covers at least as well (a tie is not a cover to verify)."""
    scaled = kernels.scaled(role)
    cover, value = best_cover(scaled, chosen)
    shape = scaled.shape
    sr, sc = self_pairs(role, kernels.meta, shape)
    own = np.isin(sc, chosen)  # a selected self pair covers its row as well as any tie
    self_best = np.full(shape[0], -np.inf, np.float32)
    if own.any():
        vals = np.asarray(scaled[sr[own], sc[own]], np.float32).ravel()
        np.maximum.at(self_best, sr[own], vals)
    rows = np.flatnonzero((cover >= 0) & (self_best < value)).astype(np.int64)
    cols = cover[rows].astype(np.int64)
    keep = ~np.isin(rows * shape[1] + cols, sr * shape[1] + sc)
    return rows[keep], cols[keep]


def _column_best(kernels: Kernels, role: str, columns: np.ndarray | None, *,
                 by_row: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(rows, columns) of each column's best row in kernel ``role`` (every column, or those in
    ``columns``): the pair a cap or modular term max_q s_qj reads; with ``by_row`` each row's
    best column instead (a floor max_p s_ip). The best is taken among the pairs that are not
    self pairs (the diagonal policy sets their value); where a self pair is at least as high,
    the max stands on it and nothing is to verify, except that under rowmax a row's self pair
    is a copy of its best other pair, so a floor stands on that pair."""
    scaled = kernels.scaled(role)
    sr, sc = self_pairs(role, kernels.meta, scaled.shape)
    if by_row:  # the same search on the transposed kernel, its pairs swapped back
        cols, rows = _best_per_column(scaled.T, sc, sr,
                                      self_counts=kernels.diagonal != "rowmax")
        return rows, cols
    rows, cols = _best_per_column(scaled, sr, sc)
    if columns is not None:
        keep = np.isin(cols, np.asarray(columns, np.int64))
        rows, cols = rows[keep], cols[keep]
    return rows, cols


def _selected_columns(kernels: Kernels, role: str, chosen: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(rows, columns) of every pair kernel ``role`` holds in the ``chosen`` columns (a dense
    kernel: every row), column by column: what a sum over the selected columns (GC's
    representation and redundancy terms) reads; self pairs left out."""
    scaled = kernels.scaled(role)
    n_r, n_c = scaled.shape
    chosen = np.asarray(chosen, np.int64)
    if is_sparse(scaled):
        csc = scaled.tocsc()
        rows = np.concatenate([csc.indices[csc.indptr[j]:csc.indptr[j + 1]] for j in chosen]
                              or [np.zeros(0, np.int64)]).astype(np.int64)
        cols = np.repeat(chosen, np.diff(csc.indptr)[chosen]) if len(chosen) else rows
    else:
        rows, cols = np.tile(np.arange(n_r, dtype=np.int64), len(chosen)), np.repeat(chosen, n_r)
    sr, sc = self_pairs(role, kernels.meta, scaled.shape)
    keep = ~np.isin(rows * n_c + cols, sr.astype(np.int64) * n_c + sc)
    return rows[keep], cols[keep]


def _best_per_column(scaled: Any, sr: np.ndarray, sc: np.ndarray, *, self_counts: bool = True
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(rows, columns): each column's row of highest value among its pairs that are not self
    pairs (``sr``, ``sc``; a sparse kernel's among the pairs it holds; ties to the first row),
    for the columns whose self pairs, if any, are lower than that (``self_counts`` False:
    whatever they are)."""
    n_r, n_c = scaled.shape
    self_key = np.asarray(sr, np.int64) * n_c + np.asarray(sc, np.int64)
    self_best = np.full(n_c, -np.inf)
    if is_sparse(scaled):
        coo = scaled.tocoo()
        r, c, v = coo.row.astype(np.int64), coo.col.astype(np.int64), coo.data
        own = np.isin(r * n_c + c, self_key)
        np.maximum.at(self_best, c[own], v[own])
        r, c, v = r[~own], c[~own], v[~own]
        order = np.lexsort((-v, c))  # by column, the highest value first
        col = c[order]
        first = np.r_[True, col[1:] != col[:-1]] if len(col) else np.zeros(0, bool)
        rows, cols, best = r[order][first], col[first], v[order][first]
    else:
        dense = np.array(scaled, np.float64)
        if len(self_key):
            np.maximum.at(self_best, sc, dense[sr, sc])
            dense[sr, sc] = -np.inf
        rows = dense.argmax(axis=0).astype(np.int64) if n_r else np.zeros(0, np.int64)
        cols = np.arange(n_c, dtype=np.int64)[: len(rows)]
        best = dense[rows, cols]
    keep = np.isfinite(best) & ((self_best[cols] < best) if self_counts else True)
    return rows[keep].astype(np.int64), cols[keep].astype(np.int64)


def _stands_on(kernels: Kernels, role: str, chosen: np.ndarray, rules: tuple[str, ...]
               ) -> tuple[np.ndarray, np.ndarray]:
    """(rows, columns) of the pairs of kernel ``role`` that a selection ``chosen`` stands on
    under the objective's ``rules`` (:meth:`ObjectiveSpec.pair_rules`), each pair once: its
    covers, and for a cap or modular term the best row of every or of each selected column."""
    parts = []
    for rule in rules:
        if rule == "covers":
            parts.append(_covers(kernels, role, chosen))
        elif rule == "column_best":
            parts.append(_column_best(kernels, role, None))
        elif rule == "selected_column_best":
            parts.append(_column_best(kernels, role, chosen))
        elif rule == "row_best":
            parts.append(_column_best(kernels, role, None, by_row=True))
        elif rule == "selected_columns":
            parts.append(_selected_columns(kernels, role, chosen))
        else:
            raise ValueError(f"unknown pair rule {rule!r}")
    if len(parts) == 1:
        return parts[0]
    width = kernels.scaled(role).shape[1]
    rows = np.concatenate([r for r, _ in parts]).astype(np.int64)
    cols = np.concatenate([c for _, c in parts]).astype(np.int64)
    _, first = np.unique(rows * width + cols, return_index=True)
    first.sort()  # the first rule's pairs first, as they came
    return rows[first], cols[first]


EXPLORE_DENSE_ROWS = 32
"""A dense learned kernel holds every row of a column: an explored column's pairs are then its
rows with the highest predicted value over their current cover, this many (a sparse kernel's
default candidate count, ``learned.LEARNED_NEIGHBOURS``); a sparse kernel's are all its rows."""


def _explored(kernels: Kernels, role: str, chosen: np.ndarray, share: float,
              banned: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """(rows, columns, number of columns) of the pairs to explore in kernel ``role``: the
    ``share`` of its columns, unselected and not ``banned`` (columns the method cannot take:
    banned or left out by a score filter, ``Selection.excluded``),
    with the highest predicted facility-location gain to ``chosen`` (each row's improvement over
    its current cover, summed), every pair the kernel holds in them (at most
    :data:`EXPLORE_DENSE_ROWS` per column when dense), self pairs left out."""
    scaled = kernels.scaled(role)
    n_r, n_c = scaled.shape
    off = np.union1d(np.asarray(chosen, np.int64),
                     np.asarray(banned if banned is not None else [], np.int64))
    n_explore = min(int(round(share * n_c)), n_c - len(off))
    if n_explore <= 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), 0
    fl = FacilityLocation(scaled)  # the selection's own gain, on the kernel the selection used
    state = fl.cover_state(np.asarray(chosen, np.int64))
    gains = np.asarray(fl.gains(state), np.float64)
    gains[off] = -np.inf
    pick = np.argsort(-gains, kind="stable")[:n_explore]
    if is_sparse(scaled):
        csc = scaled.tocsc()
        rows = [csc.indices[csc.indptr[j]:csc.indptr[j + 1]] for j in pick]
    else:
        top = min(EXPLORE_DENSE_ROWS, n_r)
        rows = [np.argsort(-(fl.column(int(j)) - state), kind="stable")[:top] for j in pick]
    r = np.concatenate(rows).astype(np.int64) if rows else np.zeros(0, np.int64)
    c = np.repeat(pick.astype(np.int64), [len(x) for x in rows])
    sr, sc = self_pairs(role, kernels.meta, (n_r, n_c))
    keep = ~np.isin(r * n_c + c, sr.astype(np.int64) * n_c + sc)
    return r[keep], c[keep], int(len(pick))


def _is_exact(mask: sp.csr_matrix, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Whether each pair (rows[k], cols[k]) is marked exact (no pairs: an empty array)."""
    if not len(rows):
        return np.zeros(0, bool)
    return np.asarray(mask[rows, cols]).ravel() > 0


def _set_exact(values: Any, mask: sp.csr_matrix, r: np.ndarray, c: np.ndarray,
               v: np.ndarray) -> tuple[Any, sp.csr_matrix]:
    """``values`` with (r, c) set to ``v`` and ``mask`` with them marked exact (new objects)."""
    if is_sparse(values):
        coo = values.tocoo()
        keep = ~np.isin(coo.row.astype(np.int64) * values.shape[1] + coo.col,
                        r * values.shape[1] + c)
        values = sp.csr_matrix((np.concatenate([coo.data[keep], v]),
                                (np.concatenate([coo.row[keep], r]),
                                 np.concatenate([coo.col[keep], c]))),
                               shape=values.shape, dtype=np.float32)
        values.sort_indices()
    else:
        values = np.array(values, np.float32, copy=True)
        values[r, c] = v
    add = sp.csr_matrix((np.ones(len(r), np.float32), (r, c)), shape=mask.shape)
    mask = (mask + add).tocsr()
    mask.data[:] = 1.0
    mask.sort_indices()
    return values, mask


def _round_pairs(kernels: Kernels, roles: list[str], chosen: np.ndarray, explore: float,
                 banned: np.ndarray | None = None, objective: str = "fl"
                 ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, int],
                            dict[str, int]]:
    """A round's pairs to score per role, the pairs the selection stands on ("covers") first,
    then explored pairs (neither exact yet, none twice), with the number of covers and of
    explored columns per role. Only a kernel read by covers is explored."""
    todo: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    n_covers: dict[str, int] = {}
    n_columns: dict[str, int] = {}
    ospec = _objective(objective)
    for role in roles:
        rules = ospec.pair_rules(role)
        rows, cols = _stands_on(kernels, role, chosen, rules)
        pending = ~_is_exact(kernels.exact[role], rows, cols)
        rows, cols = rows[pending].astype(np.int64), cols[pending].astype(np.int64)
        n_covers[role], n_columns[role] = int(len(rows)), 0
        if explore and "covers" in rules:
            er, ec, n_columns[role] = _explored(kernels, role, chosen, explore, banned)
            new = ~_is_exact(kernels.exact[role], er, ec)
            width = kernels.exact[role].shape[1]
            new &= ~np.isin(er * width + ec, rows * width + cols)
            rows, cols = np.concatenate([rows, er[new]]), np.concatenate([cols, ec[new]])
        todo[role] = (rows, cols)
    return todo, n_covers, n_columns


def _objective(name: str) -> Any:
    """The objective's spec; an unknown name is a SelectionError that names the choices."""
    try:
        return objectives.get(name)
    except KeyError as e:
        raise SelectionError(str(e.args[0])) from None


def _verified_roles(kernels: Kernels, objective: str) -> list[str]:
    """The learned kernels a selection with ``objective`` stands on: those its objective is
    built from (an FLQMI selection reads only the target kernel, an FL one only the pool's)."""
    reads = _objective(objective).reads
    learned = kernels.meta.learned
    return [r for r in VERIFIED_ROLES
            if r in reads and r in learned and getattr(kernels, r) is not None]


def plan_words(kernels: Kernels | None, objective: str) -> str:
    """What a verification of an ``objective`` selection on ``kernels`` scores, in words
    (:func:`~delift_core.kernels.learned.stands_on_words`): "covers", or "pairs the selection
    stands on" where a kernel it verifies is read otherwise (caps, floors, GC's columns)."""
    if kernels is None:
        return stands_on_words(["covers"])
    ospec = _objective(objective)
    rules = {rule for r in _verified_roles(kernels, objective) for rule in ospec.pair_rules(r)}
    return stands_on_words(sorted(rules) or ["covers"])


def first_round(kernels: Kernels, selection: Selection, explore: float = 0.0) -> dict[str, int]:
    """What verifying ``selection`` would score in its first round, before any model loads:
    ``covers``, ``explored_columns`` and ``explored_pairs`` summed over the learned kernels its
    objective reads (one model pass per pair, plus each row's plain pass the pair store lacks);
    later rounds score what the first one changes. The covers are taken under the selection's
    own diagonal policy. Zeros for a selection that cannot be verified."""
    explore = spec.check("verify_explore", explore)
    if kernels is None or _objective(selection.objective).build is None:
        return {"covers": 0, "explored_columns": 0, "explored_pairs": 0}
    diagonal = selection.params.get("diagonal")
    if diagonal is not None:
        kernels = kernels.with_diagonal(diagonal)
    roles = [r for r in _verified_roles(kernels, selection.objective) if r in kernels.exact]
    todo, n_covers, n_columns = _round_pairs(
        kernels, roles, selection.selected_indices, explore,
        selection.excluded, selection.objective) if roles else ({}, {}, {})
    covers = sum(n_covers.values())
    return {"covers": covers, "explored_columns": sum(n_columns.values()),
            "explored_pairs": sum(len(r) for r, _ in todo.values()) - covers}


_NOT_SCOPE = {"budget_requested", "kernel", "verify_rounds", "verify_explore", "kept_by_score",
              "scores_model", "gains_measured_with"}  # params that do not decide the rows taken


def _scope(selection: Selection) -> dict[str, Any]:
    """What a verification serves: everything that decides which rows ``selection`` takes
    (objective, budget, diagonal policy, method, seed, the objective's parameters, the pinned and
    banned rows), readable, with the pins and bans as a digest."""
    p = selection.params
    marks = hashlib.sha256(json.dumps([sorted(map(str, selection.pinned)),
                                       sorted(map(str, selection.banned))]).encode()).hexdigest()
    return {"objective": selection.objective, "budget": int(selection.budget),
            "diagonal": p.get("diagonal"), "method": p.get("method"),
            "params": {k: v for k, v in sorted(p.items())
                       if k not in _NOT_SCOPE and k not in ("diagonal", "method")},
            "pinned": len(selection.pinned), "banned": len(selection.banned),
            "pins_and_bans": marks[:16]}


_SELECTION_FREE = {"column_best", "row_best"}
"""Pair rules that do not depend on the selection (FLMI's caps, FLCG's floors)."""


def serves(record: Mapping[str, Any], selection: Selection, role: str | None = None) -> bool:
    """Whether a verification ``record`` (``meta[role]["verification"]``) was made for
    ``selection``: the same objective, budget, diagonal policy, method, seed, parameters, pins
    and bans. A verified kernel serves one selection; any other one on it may stand on predicted
    covers. Given its ``role``, a record of pairs that no selection changes (FLMI's caps,
    FLCG's floors) serves every selection that reads that kernel by the same pairs under the
    same diagonal policy."""
    scope = record.get("selection") or {}
    rules = record.get("stands_on") or ["covers"]
    if role is not None and set(rules) <= _SELECTION_FREE:
        return (list(_objective(selection.objective).pair_rules(role)) == list(rules)
                and scope.get("diagonal") == selection.params.get("diagonal"))
    return scope == _scope(selection)


_TOTALS = ("rounds_run", "pairs_verified", "covers_verified", "explored_pairs_verified",
           "passes_computed", "passes_reused", "seconds")


def _start_record(earlier: dict | None, rounds: int, explore: float) -> dict:
    """A role's verification record at the start of a run: zeros, or on a kernel verified
    before, the earlier runs' totals and rounds (its exact values include theirs, so its record
    and cost must too), with ``runs`` counting them."""
    record: dict[str, Any] = {"rounds": rounds, "explore": explore, "runs": 1, "by_round": [],
                              **{k: 0 for k in _TOTALS}}
    record["seconds"] = 0.0
    if earlier:
        record.update({k: earlier.get(k, 0) for k in _TOTALS})
        record["by_round"] = list(earlier.get("by_round", []))
        record["runs"] = int(earlier.get("runs", 1)) + 1
    return record


def verify_selection(pool: Dataset, objective: str, kernels: Kernels, budget: Any, *,
                     rounds: int = 2, explore: float = 0.0, lm: Any = None,
                     settings: UtilitySettings | None = None,
                     target: Dataset | None = None, existing: Dataset | None = None,
                     use_cache: bool = True, progress: StageProgress | None = None,
                     cancel: threading.Event | None = None,
                     on_round: Callable[[int, Selection], None] | None = None,
                     engine_options: Mapping[str, Any] | None = None,
                     **select_options: Any) -> Selection:
    """Select on a learned kernel, score the selection's predicted covers exactly, and select
    again, ``rounds`` times at most (fewer when a round has nothing to score: every cover exact
    and no explored pair left); only the learned kernels ``objective`` reads, under the
    selection's diagonal policy (``select_options["diagonal"]``); with ``explore`` > 0,
    each round also scores the pairs of that share of the unselected columns, those of highest
    predicted gain (see the module's docstring). Returns the last
    selection, made on the kernel with the verified values (``selection.kernels``; the given
    ``kernels`` are not changed). ``lm`` and ``settings`` must be the kernel's own (a
    KernelError otherwise); ``engine_options`` go to the :class:`UtilityKernel` that scores the
    pairs (``backend="ray"``: on Ray workers, :func:`ray_backend.engine_options`);
    ``select_options`` go to :func:`select` each round; ``on_round(k,
    selection)`` sees each round's selection before its covers are scored (k = 0, 1, ...).

    A cancel keeps the pairs already scored (in the pair store) and raises
    :class:`~delift_core.kernels.utility_settings.KernelCancelled`.
    """
    rounds = spec.check("verify_rounds", rounds)
    explore = spec.check("verify_explore", explore)
    if kernels is None:
        raise SelectionError("only a learned kernel's selection can be verified (this selection "
                             "has no kernel)")
    ospec = _objective(objective)
    if ospec.build is None:
        raise SelectionError(f"{objective} does not select with a kernel ({ospec.label}): "
                             "there is nothing to verify")
    diagonal = select_options.get("diagonal")
    if diagonal is not None:  # covers and explored columns under the selection's own policy
        kernels = kernels.with_diagonal(diagonal)
    learned = kernels.meta.learned
    roles = _verified_roles(kernels, objective)
    if not roles:
        if any(r in learned for r in VERIFIED_ROLES):
            raise SelectionError(
                f"{objective} selects on the {' and '.join(ospec.reads)} kernel, which is exact: "
                "only a learned kernel's values can be verified")
        raise SelectionError("only a learned kernel's selection can be verified (an exact "
                             "kernel's values are all exact already)")
    if explore and not ospec.explores(roles):
        raise SelectionError(f"{objective}'s verification scores every pair its value stands "
                             "on, none of them covers: there is nothing to explore (explore 0)")
    unmarked = [r for r in roles if r not in kernels.exact]
    if unmarked:
        raise SelectionError(f"the learned {' and '.join(unmarked)} kernel has no record of which "
                             f"values are exact (kernel_{unmarked[0]}_exact.npz missing from its "
                             "folder?): its selection cannot be verified")
    sets = {"pool": pool, "target": target, "existing": existing}
    for role in roles:
        if sets[role] is None:
            raise SelectionError(f"verifying a learned {role} kernel needs the {role} set")
    for role, ds in sets.items():
        if role != "pool" and role not in roles:
            continue
        ids, hashes = kernels.meta.ids.get(role), kernels.meta.hashes.get(role)
        if ds is not None and (ids is None or hashes is None or len(ids) != len(ds)):
            raise KernelError(f"the learned kernel does not record the {role} rows it was "
                              f"computed for as {len(ds)} rows: its selection cannot be "
                              "verified on these rows")
        if ds is not None:
            differ = differing_rows(list(ids), list(hashes), ds, "learned kernel")
            if differ:  # exact values of other rows must never go into this kernel
                raise KernelError(differ)
    if lm is None:  # the default model in the kernel's precision (checked below)
        from delift_core.lm.models import load_causal_lm

        lm = load_causal_lm(None, dtype=kernels.meta.settings.get("dtype") or
                            spec.default("dtype"))
    settings = settings or UtilitySettings()
    _check_engine(kernels, lm, settings)
    engine = UtilityKernel(lm, settings, use_cache=use_cache, **(engine_options or {}))
    current = kernels
    record = {r: _start_record(learned[r].get("verification"), rounds, explore) for r in roles}
    sel = select(pool, objective, current, budget, **select_options)
    scope = _scope(sel)
    for r in roles:
        record[r]["selection"] = scope  # the selection it served (each run serves one)
        record[r]["stands_on"] = list(ospec.pair_rules(r))  # which pairs its "covers" are
    done_before = {r: record[r]["rounds_run"] for r in roles}
    for k in range(rounds):
        if on_round:
            on_round(k, sel)
        chosen = sel.selected_indices
        todo, n_covers, n_columns = _round_pairs(current, roles, chosen, explore, sel.excluded,
                                                 objective)
        if not any(len(r) for r, _ in todo.values()):
            break
        new_values = {r: getattr(current, r) for r in ("pool", "target", "existing")}
        new_exact = dict(current.exact)
        roles_meta = {r: dict(m) if isinstance(m, dict) else m
                      for r, m in current.meta.roles.items()}
        for role, (r, c) in todo.items():
            if not len(r):
                continue
            t0 = time.time()
            rows_ds, cols_ds = _sets(role, sets)
            transposed = "computed_as" in (learned.get(role) or {})
            what = (f"covers{' and explored columns' if explore else ''}"
                    if "covers" in ospec.pair_rules(role) else "pairs")
            stage = (lambda d, t, role=role, k=k, what=what: progress(
                f"verifying {role} {what} (round {k + 1})", d, t)) if progress else None
            vals, meta = _exact_values(engine, rows_ds, cols_ds, r, c, transposed, cancel, stage)
            ok = np.isfinite(vals)
            new_values[role], new_exact[role] = _set_exact(new_values[role], new_exact[role],
                                                           r[ok], c[ok], vals[ok])
            rec = record[role]
            rec["pairs_verified"] += int(ok.sum())
            rec["covers_verified"] += int(ok[:n_covers[role]].sum())
            rec["explored_pairs_verified"] += int(ok[n_covers[role]:].sum())
            rec["passes_computed"] += int(meta.get("pairs_computed", 0))
            rec["passes_reused"] += int(meta.get("pairs_reused", 0))
            rec["backend"] = meta.get("backend", "local")
            rec["seconds"] = round(rec["seconds"] + time.time() - t0, 3)
        for role in roles:
            r, c = todo[role]
            record[role]["rounds_run"] = done_before[role] + k + 1
            record[role]["by_round"].append({"covers_scored": n_covers[role],
                                             "explored_columns": n_columns[role],
                                             "explored_pairs_scored": int(len(r))
                                             - n_covers[role],
                                             "passes_computed": record[role]["passes_computed"]
                                             - sum(b["passes_computed"]
                                                   for b in record[role]["by_round"]),
                                             "passes_reused": record[role]["passes_reused"]
                                             - sum(b["passes_reused"]
                                                   for b in record[role]["by_round"]),
                                             "value_before": round(sel.objective_value, 6),
                                             "stands_on": list(ospec.pair_rules(role))})
        for role in roles:
            roles_meta[role] = {**roles_meta[role], "verification": dict(record[role])}
        current = Kernels(current.kind, pool=new_values["pool"], target=new_values["target"],
                          existing=new_values["existing"], exact=new_exact,
                          meta=current.meta.with_(roles=roles_meta), diagonal=current.diagonal)
        previous = set(chosen.tolist())
        sel = select(pool, objective, current, budget, **select_options)
        for role in roles:
            last = record[role]["by_round"][-1]
            last["value_after"] = round(sel.objective_value, 6)
            last["rows_changed"] = int(len(set(sel.selected_indices.tolist()) - previous))
    covers_exact = {}
    for role in roles:
        rows, cols = _stands_on(current, role, sel.selected_indices,
                                ospec.pair_rules(role))
        exact = _is_exact(current.exact[role], rows, cols)
        covers_exact[role] = {"covers": int(len(rows)), "exact": int(exact.sum())}
    roles_meta = {r: dict(m) if isinstance(m, dict) else m for r, m in current.meta.roles.items()}
    for role in roles:
        roles_meta[role] = {**roles_meta[role], "verification": {
            **record[role], "final_covers": covers_exact[role]["covers"],
            "final_covers_exact": covers_exact[role]["exact"]}}
    current = Kernels(current.kind, pool=current.pool, target=current.target,
                      existing=current.existing, exact=current.exact,
                      meta=current.meta.with_(roles=roles_meta), diagonal=current.diagonal)
    for role in roles:
        v = roles_meta[role]["verification"]
        logger.info("verified %s: %d covers and %d explored pairs scored exactly in %d "
                    "round(s) (%d passes computed, %d reused); %d of the final selection's %d "
                    "covers are exact", role, v["covers_verified"],
                    v["explored_pairs_verified"], v["rounds_run"], v["passes_computed"],
                    v["passes_reused"], v["final_covers_exact"], v["final_covers"])
    final = select(pool, objective, current, budget, **select_options)
    final.params["verify_rounds"] = rounds
    final.params["verify_explore"] = explore
    return final


def verify_from_settings(pool: Dataset, objective: str, kernels: Kernels, budget: Any,
                         values: Mapping[str, Any], *, rounds: int, explore: float = 0.0,
                         target: Dataset | None = None, existing: Dataset | None = None,
                         progress: StageProgress | None = None,
                         cancel: threading.Event | None = None,
                         model_progress: Callable[[str], None] | None = None,
                         **select_options: Any) -> Selection:
    """:func:`verify_selection` with the causal LM, precision, utility settings and cache use that
    the setting ``values`` name (the CLI's options, the Kernel page's configuration), loaded as
    :func:`~delift_core.kernels.request.kernels_from_settings` loads them."""
    from delift_core.kernels.request import engine_values, load_models

    v = engine_values({**values, "kernel": "utility"})
    options = None
    if v["backend"] == "ray":  # the passes go where the kernel's went
        from delift_core.kernels.ray_backend import engine_options

        options = engine_options(v["ray_address"], v["workers"])
    models = load_models(v, "utility", progress=model_progress)
    return verify_selection(pool, objective, kernels, budget, rounds=rounds, explore=explore,
                            lm=models["lm"], settings=models["settings"], target=target,
                            existing=existing, use_cache=v["use_cache"], progress=progress,
                            cancel=cancel,
                            engine_options=options, **select_options)
