"""A learned utility kernel: exact utilities for a sample of pairs, a predictor for the rest.

The exact kernel costs one model pass per pair. Here the model scores only the pairs of a few
*anchor* rows (spread over k-means clusters of the sentence embeddings, in a seeded order whose
every prefix is spread too), each with a few of its neighbours and random columns; a regression
learns UF(i, j) from the pair's sentence embeddings (after NN-CIFT, Agarwal & Hakkani-Tür 2025;
here a ridge regression, see :class:`Predictor`)
and predicts every other pair the kernel needs: each row's ``neighbours`` nearest columns plus
``neighbour_random`` random ones (every pair for a small dense kernel).

- Exact values stay exact: they overwrite predictions, and ``exact`` (a 0/1 CSR matrix of the
  same shape) marks them; everything else is predicted.
- Every fifth anchor row is held out: its exact pairs are never trained on and measure the
  predictor every time (pair Spearman and R², median per-row Spearman, top-k recovery, and the
  same row Spearman for plain cosine similarity as the baseline to beat). Below the fidelity floor
  the kernel says so loudly; too few exact pairs to fit is a :class:`LearnedKernelError`.
- Budgets: ``exact_passes`` (exact passes in all, those the pair store holds cost no time) or
  ``exact_minutes``. Exact pairs go through the pair store, so the same command again computes
  nothing, a larger budget computes only the difference, and an interrupted run keeps its pairs
  (the anchors come in a seeded order, so the next run scores the same ones first). A cancel during the exact phase fits from the rows
  finished so far when they are enough.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, Callable

import numpy as np
import scipy.sparse as sp

from delift_core import settings as spec
from delift_core.errors import KernelError
from delift_core.kernels.sparse import neighbour_pairs
from delift_core.kernels.utility_settings import KernelCancelled
from delift_core.stores.pairstore import row_key

__all__ = ["LearnedSpec", "LearnedKernelError", "budget_shares", "check_rows", "FIDELITY_FLOOR",
           "DENSE_MAX_ROWS", "LEARNED_NEIGHBOURS",
           "anchor_order", "fidelity", "build_learned", "fidelity_line", "interval_text",
           "stands_on_words", "record_words", "verification_line"]

logger = logging.getLogger(__name__)

FIDELITY_FLOOR = {"row_spearman_median": 0.3}
"""Below this held-out median per-row Spearman a learned kernel is reported as unreliable."""
DENSE_MAX_ROWS = 1000
"""A learned kernel of at most this many rows and columns predicts every pair (no neighbours)."""
LEARNED_NEIGHBOURS = 32
"""Without ``neighbours``, a larger learned kernel predicts each row's 32 nearest columns (plus
the random ones): twice the exact sparse kernel's usual K, since predictions cost no passes."""
MIN_TRAIN_ROWS, MIN_HELDOUT_ROWS = 8, 2
_FIT_ROWS = (MIN_TRAIN_ROWS + MIN_HELDOUT_ROWS) * 5 // 4  # anchors that hold out enough rows
_CHUNK_ROWS = 32  # anchor rows per engine call: the granularity of the time budget and cancel


class LearnedKernelError(KernelError):
    """A learned kernel cannot be fitted as asked (too few exact pairs); the message says how
    many it had and what to raise."""


@dataclass(frozen=True)
class LearnedSpec:
    """How a learned kernel is made: its exact budget (``exact_passes`` model passes computed, or
    ``exact_minutes`` of them), exact examples per anchor row, and the seed of its choices."""

    exact_passes: int | None = None
    exact_minutes: float | None = None
    exact_per_row: int = spec.default("exact_per_row")
    seed: int = spec.default("neighbour_seed")

    def __post_init__(self) -> None:
        if self.exact_passes is None and self.exact_minutes is None:
            object.__setattr__(self, "exact_passes", spec.get("exact_passes").suggested)
        spec.check("exact_passes", self.exact_passes)
        spec.check("exact_minutes", self.exact_minutes)
        spec.check("exact_per_row", self.exact_per_row)

    def split(self, rows: dict[str, int]) -> dict[str, LearnedSpec]:
        """This run's budget shared among its kernels (``rows``: kernel role -> its row count) in
        proportion to their rows, as the work estimate shares it: ``exact_passes`` and
        ``exact_minutes`` are the whole run's, not each kernel's."""
        if len(rows) <= 1:
            return {role: self for role in rows}
        weight = sum(rows.values()) or 1
        passes = (budget_shares(self.exact_passes, rows, self.exact_per_row)
                  if self.exact_passes is not None else None)
        return {role: replace(
            self, exact_passes=None if passes is None else max(1, passes[role]),
            exact_minutes=None if self.exact_minutes is None
            else max(0.01, self.exact_minutes * n / weight)) for role, n in rows.items()}


def check_rows(label: str, n_rows: int) -> None:
    """Refuse, before any pass, a learned kernel over too few rows to hold any out: no budget
    can fit it, so the message says to use the exact kernel."""
    least = MIN_TRAIN_ROWS + MIN_HELDOUT_ROWS
    if n_rows < least:
        raise LearnedKernelError(
            f"{label}: {n_rows} row{'s' if n_rows != 1 else ''}; a learned kernel needs at least "
            f"{least} ({MIN_TRAIN_ROWS} to train on, {MIN_HELDOUT_ROWS} held out to measure it), "
            "whatever its budget: use the exact utility kernel for a set this small")


def budget_shares(total: int, rows: dict[str, int],
                  per_row: int = spec.default("exact_per_row")) -> dict[str, int]:
    """``total`` passes shared among kernels of ``rows`` rows each: first what the smallest
    learned kernel needs (the exact pairs of ``_FIT_ROWS`` rows, or of all its rows) where the
    total allows it, the rest in proportion to the rows (largest remainders first, so the shares
    add up to ``total``). The one rule for the learned kernels and their work estimate."""
    first = {role: min(n, _FIT_ROWS) * (per_row + 1) for role, n in rows.items()}
    if sum(first.values()) > total:
        first = dict.fromkeys(rows, 0)
    rest, weight = total - sum(first.values()), sum(rows.values()) or 1
    raw = {role: first[role] + rest * n / weight for role, n in rows.items()}
    out = {role: int(v) for role, v in raw.items()}
    for role in sorted(raw, key=lambda r: out[r] - raw[r])[: total - sum(out.values())]:
        out[role] += 1
    return out


# ------------------------------------------------------------------------------------------------
# Which pairs to score exactly


def anchor_order(emb: np.ndarray, seed: int) -> np.ndarray:
    """Every row index, ordered so that each prefix is spread over k-means clusters of the
    embeddings: round-robin over clusters, a seeded random order within each."""
    from scipy.cluster.vq import kmeans2

    n = len(emb)
    rng = np.random.default_rng(seed)
    k = int(min(64, max(1, n // 20)))
    if k > 1:
        sample = emb if n <= 20000 else emb[rng.choice(n, 20000, replace=False)]
        centroids, _ = kmeans2(sample.astype(np.float64), k, seed=seed, minit="++")
        labels = np.argmax(emb @ centroids.T.astype(np.float32), axis=1)
    else:
        labels = np.zeros(n, dtype=np.int64)
    queues = [list(rng.permutation(np.flatnonzero(labels == c))) for c in range(k)]
    queues = [q for q in queues if q]
    order: list[int] = []
    while queues:
        for q in queues:
            order.append(int(q.pop()))
        queues = [q for q in queues if q]
    return np.asarray(order, dtype=np.int64)


def _anchor_examples(candidates: np.ndarray, shared: np.ndarray, m: int, itself: np.ndarray,
                     rng: np.random.Generator) -> np.ndarray:
    """The exact examples of one anchor row: half of ``m`` drawn from its predicted columns (its
    neighbours and random ones), the rest the chunk's ``shared`` random columns (one example
    prefix serves every anchor of the chunk, so these passes are cheap); never a column in
    ``itself`` (the row, or any column of the same content: a self pair, whose value the
    diagonal policy sets)."""
    cand = candidates[~np.isin(candidates, itself)]
    near = rng.permutation(cand)[: max(1, m // 2)]
    off = set(near.tolist()) | set(itself.tolist())
    rest = [j for j in shared.tolist() if j not in off][: m - len(near)]
    return np.unique(np.concatenate([near, np.asarray(rest, np.int64)]).astype(np.int64))


# ------------------------------------------------------------------------------------------------
# The predictor


PCA_DIMS = 32
RIDGE_LAMBDAS = (1.0, 10.0, 100.0, 1e3, 1e4, 1e5)


@dataclass
class Predictor:
    """Ridge regression of UF(i, j) on a pair's features: both rows' sentence embeddings reduced
    to :data:`PCA_DIMS` principal components (fitted on every row, no labels), their product,
    cosine and its square, and both texts' log lengths. The penalty is chosen among
    :data:`RIDGE_LAMBDAS` by 5-fold cross-validation grouped by row (a large penalty falls back
    towards the mean when the pairs are too few to say more), then refitted on all of them.

    Why not an MLP (NN-CIFT's choice): with the few thousand exact pairs a CPU affords, an MLP on
    the raw embeddings or on 32 components gave no better held-out fidelity than this, and its
    R² was lower and seed-dependent (docs/learned_kernel.md); ridge is exact, deterministic and
    takes milliseconds."""

    mean: np.ndarray
    components: np.ndarray
    weights: np.ndarray | None = None
    info: dict | None = None

    @classmethod
    def for_rows(cls, *embeddings: np.ndarray) -> "Predictor":
        e = np.concatenate(embeddings).astype(np.float64)
        mean = e.mean(0)
        _, _, vt = np.linalg.svd(e - mean, full_matrices=False)
        return cls(mean, vt[:PCA_DIMS])

    def features(self, e_rows: np.ndarray, e_cols: np.ndarray, r: np.ndarray, c: np.ndarray,
                 len_rows: np.ndarray, len_cols: np.ndarray) -> np.ndarray:
        a, b = e_rows[r].astype(np.float64), e_cols[c].astype(np.float64)
        pa, pb = (a - self.mean) @ self.components.T, (b - self.mean) @ self.components.T
        cos = np.einsum("ij,ij->i", a, b)[:, None]
        return np.hstack([pa, pb, pa * pb, cos, cos ** 2, len_rows[r, None], len_cols[c, None],
                          np.ones((len(r), 1))])

    @staticmethod
    def _solve(x: np.ndarray, y: np.ndarray, lam: float) -> np.ndarray:
        reg = lam * np.eye(x.shape[1])
        reg[-1, -1] = 0.0  # the intercept is not penalised
        return np.linalg.solve(x.T @ x + reg, x.T @ y)

    def fit(self, x: np.ndarray, y: np.ndarray, groups: np.ndarray, seed: int) -> "Predictor":
        """Choose the penalty by 5-fold cross-validation over the training rows (a row's pairs
        stay in one fold, as unseen rows are what it predicts), then refit on all of them."""
        rng = np.random.default_rng(seed)
        rows = np.unique(groups)
        fold_of = dict(zip(rng.permutation(rows).tolist(), np.arange(len(rows)) % 5))
        fold = np.array([fold_of[g] for g in groups.tolist()])
        errors = {}
        for lam in RIDGE_LAMBDAS:
            se = [float(np.sum((x[fold == f] @ self._solve(x[fold != f], y[fold != f], lam)
                                - y[fold == f]) ** 2)) for f in range(min(5, len(rows)))]
            errors[lam] = sum(se) / len(y)
        lam = min(errors, key=errors.get)
        self.weights = self._solve(x, y, lam)
        self.info = {"model": f"ridge regression on [PCA-{PCA_DIMS} of e_i, e_j, their product, "
                              "cos, cos^2, log lengths]",
                     "parameters": int(len(self.weights)), "penalty": lam,
                     "penalty_validation_mse": {str(k): round(v, 6) for k, v in errors.items()},
                     "train_pairs": int(len(y)), "train_rows": int(len(rows))}
        return self

    def predict(self, e_rows: np.ndarray, e_cols: np.ndarray, r: np.ndarray, c: np.ndarray,
                len_rows: np.ndarray, len_cols: np.ndarray,
                progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        out = np.empty(len(r), np.float32)
        step = 1 << 16
        for s in range(0, len(r), step):
            out[s: s + step] = self.features(e_rows, e_cols, r[s: s + step], c[s: s + step],
                                             len_rows, len_cols) @ self.weights
            if progress:
                progress(min(len(r), s + step), len(r))
        return out

# ------------------------------------------------------------------------------------------------
# Fidelity


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 3 or np.all(a == a[0]) or np.all(b == b[0]):
        return float("nan")
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


INTERVAL_LEVEL = 0.95


def _row_intervals(per_row: np.ndarray, base_row: np.ndarray | None) -> dict[str, Any]:
    """95 % bootstrap intervals (held-out rows resampled) of the median row Spearman, of
    cosine's, and of their paired difference: a median over a few dozen rows is itself
    uncertain, and a user deciding whether to trust the kernel should see by how much."""
    from delift_core.evaluation.stats import median_intervals

    ok = np.isfinite(per_row) & (np.isfinite(base_row) if base_row is not None else True)
    if ok.sum() < 2:
        return {}
    iv = median_intervals(per_row[ok], None if base_row is None else base_row[ok],
                          level=INTERVAL_LEVEL)
    names = {"a": "row_spearman_interval", "b": "cosine_row_spearman_interval",
             "diff": "row_spearman_minus_cosine_interval"}
    return {"interval_level": INTERVAL_LEVEL,
            **{names[k]: [round(lo, 4), round(hi, 4)] for k, (lo, hi) in iv.items()}}


def fidelity(exact: np.ndarray, predicted: np.ndarray, rows: np.ndarray,
             baseline: np.ndarray | None = None, top_k: int = 3) -> dict[str, Any]:
    """How well ``predicted`` matches ``exact`` on held-out pairs (``rows``: each pair's row):
    pair Spearman and R², per-row Spearman (median), how many of each row's top-``top_k``
    examples by exact value the prediction also ranks top-``top_k``, and the median per-row
    Spearman of ``baseline`` (cosine similarity), the figure the predictor has to beat, each
    median with its 95 % bootstrap interval over the held-out rows (and the paired interval of
    the difference to cosine's)."""
    exact, predicted = np.asarray(exact, np.float64), np.asarray(predicted, np.float64)
    ss = float(((exact - exact.mean()) ** 2).sum())
    r2 = 1.0 - float(((exact - predicted) ** 2).sum()) / ss if ss > 0 else float("nan")
    per_row, base_row, recovered, ks = [], [], [], []
    for row in np.unique(rows):
        m = rows == row
        if m.sum() < 3:
            continue
        per_row.append(_spearman(exact[m], predicted[m]))
        if baseline is not None:
            base_row.append(_spearman(exact[m], np.asarray(baseline, np.float64)[m]))
        k = min(top_k, int(m.sum()) - 1)
        top_e = set(np.argsort(-exact[m], kind="stable")[:k].tolist())
        top_p = set(np.argsort(-predicted[m], kind="stable")[:k].tolist())
        recovered.append(len(top_e & top_p))
        ks.append(k)
    out = {"heldout_pairs": int(len(exact)), "heldout_rows": int(len(per_row)),
           "pair_spearman": round(_spearman(exact, predicted), 4), "pair_r2": round(r2, 4),
           "row_spearman_median": round(float(np.nanmedian(per_row)), 4) if per_row else None,
           "top_k": top_k,
           "top_k_recovered": round(float(np.sum(recovered) / max(1, np.sum(ks))), 4)
           if ks else None}
    if baseline is not None:
        out["cosine_row_spearman_median"] = (round(float(np.nanmedian(base_row)), 4)
                                             if base_row else None)
    out.update(_row_intervals(np.array(per_row), np.array(base_row) if baseline is not None
                              else None))
    floor = FIDELITY_FLOOR["row_spearman_median"]
    med = out["row_spearman_median"]
    out["floor"] = FIDELITY_FLOOR
    out["below_floor"] = bool(med is None or not np.isfinite(med) or med < floor)
    return out


def interval_text(f: dict, key: str, signed: bool = False) -> str:
    """' [lo, hi]' of a fidelity interval, or '' for a kernel computed before intervals."""
    iv = f.get(key)
    if not iv:
        return ""
    fmt = "{:+.3f}" if signed else "{:.3f}"
    return f" [{fmt.format(iv[0])}, {fmt.format(iv[1])}]"


def fidelity_line(role: str, meta: dict) -> str:
    """One line saying what a learned kernel is made of and how faithful it is (CLI, studio)."""
    f = meta.get("fidelity") or {}
    diff = interval_text(f, "row_spearman_minus_cosine_interval", signed=True)
    diff = f"; learned minus cosine{diff}" if diff else ""
    line = (f"utility {role}: LEARNED kernel, {meta.get('exact_pairs', 0):,} exact pairs of "
            f"{meta.get('exact_rows', 0):,} rows ({meta.get('passes_computed', 0):,} passes "
            f"computed, {meta.get('passes_reused', 0):,} reused), {meta.get('predicted_pairs', 0):,}"
            f" pairs predicted; held-out fidelity on {f.get('heldout_rows', 0)} rows"
            f"{' (95 % intervals in brackets)' if f.get('row_spearman_interval') else ''}: pair "
            f"Spearman {f.get('pair_spearman')}, R² {f.get('pair_r2')}, median row Spearman "
            f"{f.get('row_spearman_median')}{interval_text(f, 'row_spearman_interval')} (cosine "
            f"alone {f.get('cosine_row_spearman_median')}"
            f"{interval_text(f, 'cosine_row_spearman_interval')}{diff}),"
            f" top-{f.get('top_k')} recovered {f.get('top_k_recovered')}")
    if meta.get("stopped") == "cancelled":
        budget = (meta.get("budget") or {}).get("exact_passes")
        line += (". STOPPED EARLY (cancelled): fitted from the "
                 f"{meta.get('passes_computed', 0) + meta.get('passes_reused', 0):,} passes "
                 f"finished{f' of its {budget:,}' if budget else ''}; run it again to finish "
                 "(the pair store keeps them)")
    if meta.get("verification"):
        line += "; selection verified: " + verification_line(meta["verification"])
    if f.get("below_floor"):
        line += (f". BELOW THE FIDELITY FLOOR (median row Spearman < "
                 f"{FIDELITY_FLOOR['row_spearman_median']}")
        iv = f.get("row_spearman_interval")
        if iv:
            line += (", its whole interval below it" if iv[1] < FIDELITY_FLOOR[
                "row_spearman_median"] else f", its interval reaching {iv[1]:.3f}")
        line += ("): treat selections from it with care; more exact passes (the pair store "
                 "keeps these) or verifying the selection puts more of it on exact values")
    return line


def stands_on_words(rules: Any) -> str:
    """What the pairs a verification scores are called: "covers" (each row's best selected
    column), otherwise "pairs the selection stands on" (FLMI's caps, FLCG's floors, GC's
    columns: :attr:`ObjectiveSpec.stands_on`)."""
    return "covers" if list(rules) == ["covers"] else "pairs the selection stands on"


def record_words(v: dict) -> str:
    """:func:`stands_on_words` of a verification record: the pairs of every run and round it
    counts (an FL run's covers and a GC run's columns together are "pairs the selection stands
    on"); a record without ``stands_on`` (before it was kept) scored covers."""
    rules = set(v.get("stands_on", ["covers"])) | {
        r for b in v.get("by_round", []) for r in b.get("stands_on", [])}
    return stands_on_words(sorted(rules))


def verification_line(v: dict) -> str:
    """What verifying a selection did (``meta[role]["verification"]``, :mod:`delift_core.selection.
    verify`), in words: for the CLI report, the Select page and the HTML report alike."""
    explored = v.get("explored_pairs_verified", 0)
    covers = record_words(v)
    scored = (f"{v.get('covers_verified', 0):,} {covers} and {explored:,} pairs of explored "
              f"columns" if explored else f"{v.get('pairs_verified', 0):,} {covers}")
    scope = v.get("selection") or {}
    of = (f"; it verified {str(scope['objective']).upper()} at {scope['budget']:,} rows"
          if "objective" in scope and "budget" in scope else "")
    runs = int(v.get("runs", 1))
    return (f"{scored} scored exactly in {v.get('rounds_run', 0)} "
            f"round(s){f' over {runs} verifications' if runs > 1 else ''} "
            f"({v.get('passes_computed', 0):,} passes computed, "
            f"{v.get('passes_reused', 0):,} read from the pair store); "
            f"{v.get('final_covers_exact', 0):,} of the verified selection's "
            f"{v.get('final_covers', 0):,} {covers} are exact{of}")


# ------------------------------------------------------------------------------------------------
# The builder


def build_learned(engine: Any, rows: Any, cols: Any, e_rows: np.ndarray, e_cols: np.ndarray, *,
                  learned: LearnedSpec, neighbours: int | None, neighbour_random: int,
                  same_set: bool, label: str, pairs_by_column: bool = False,
                  progress: Callable[[str, int, int], None] | None = None,
                  cancel: threading.Event | None = None) -> tuple[sp.csr_matrix, sp.csr_matrix,
                                                                   dict]:
    """The learned kernel of ``rows`` helped by ``cols`` (CSR float32), its exact-pair mask (CSR,
    1 where exact) and its record. ``engine`` is the :class:`UtilityKernel` that scores the exact
    pairs (local or Ray, through the pair store). ``pairs_by_column``: a sparse kernel's pairs are
    each column's nearest rows (a reference-direction target kernel, valued transposed: the same
    (q, i) pairs as the exact sparse kernel)."""
    times: dict[str, float] = {}
    n_r, n_c = len(e_rows), len(e_cols)
    check_rows(label, n_r)
    stage = (lambda name: (lambda d, t: progress(f"{label}: {name}", d, t))) if progress else \
        (lambda name: None)
    t0 = time.time()
    dense = neighbours is None and n_r <= DENSE_MAX_ROWS and n_c <= DENSE_MAX_ROWS
    if dense:
        pr, pc = np.repeat(np.arange(n_r), n_c), np.tile(np.arange(n_c), n_r)
    else:
        k = neighbours or LEARNED_NEIGHBOURS
        if pairs_by_column:
            pc, pr = neighbour_pairs(e_cols, e_rows, k, n_random=neighbour_random,
                                     seed=learned.seed)
            by_row = np.lexsort((pc, pr))
            pr, pc = pr[by_row], pc[by_row]
        else:
            pr, pc = neighbour_pairs(e_rows, e_cols, k, n_random=neighbour_random,
                                     seed=learned.seed)
    starts = np.searchsorted(pr, np.arange(n_r + 1))  # pairs are grouped by row, rows ascending
    key_r = [row_key(p, q) for p, q in zip(rows.prompts, rows.responses)]
    by_key: dict[bytes, list[int]] = {}
    for j, (p, q) in enumerate(zip(cols.prompts, cols.responses)):
        by_key.setdefault(row_key(p, q), []).append(j)
    order, seen = [], set()
    for a in anchor_order(e_rows, learned.seed).tolist():  # one anchor per content: a copy of a
        if key_r[a] not in seen:  # training row must never be held out (nor trained on twice)
            seen.add(key_r[a])
            order.append(int(a))
    per_row = learned.exact_per_row
    anchors = order[: _max_anchors(learned, per_row, n_r)]

    def chunk_examples_of(index: int, chunk: list[int]) -> list[np.ndarray]:
        """Each anchor's exact examples; the shared columns depend on the chunk's index only,
        so a later run (a larger budget) scores the same pairs and finds them stored."""
        shared = np.random.default_rng([learned.seed, 1, index]).choice(
            n_c, size=min(n_c, per_row), replace=False)
        return [_anchor_examples(pc[starts[a]: starts[a + 1]], shared, per_row, np.asarray(
            by_key.get(key_r[a], []) + ([a] if same_set else []), np.int64),
            np.random.default_rng([learned.seed, a])) for a in chunk]
    times["plan"] = time.time() - t0

    # exact pairs, anchor chunk by anchor chunk, until the budget is spent
    t1 = time.time()
    done_rows: list[int] = []
    ex_r, ex_c, ex_v = [], [], []
    computed = reused = 0
    budget_s = learned.exact_minutes * 60 if learned.exact_minutes is not None else None
    budget_p = learned.exact_passes
    exact_stage = stage("exact pairs")
    cancelled = False
    for s in range(0, len(anchors), _CHUNK_ROWS):
        if budget_p is not None and computed + reused >= budget_p:
            break
        if budget_s is not None and time.time() - t1 >= budget_s:
            break
        chunk = anchors[s: s + _CHUNK_ROWS]
        if budget_p is not None:  # never past the pass budget (a row costs per_row + 1 passes)
            chunk = chunk[: (budget_p - computed - reused) // (per_row + 1)]
            if not chunk:
                break
        chunk_examples = chunk_examples_of(s // _CHUNK_ROWS, chunk)
        loc_r = np.concatenate([np.full(len(e), i) for i, e in enumerate(chunk_examples)])
        loc_c = np.concatenate(chunk_examples)
        try:
            before = computed + reused
            res = engine.compute(rows.subset(chunk), cols, pairs=(loc_r, loc_c), cancel=cancel,
                                 progress=(lambda d, t, b=before: exact_stage(
                                     b + d, budget_p or b + t)) if exact_stage and budget_p
                                 else None)
        except KernelCancelled:
            cancelled = True
            break
        vals = np.asarray(res.values[loc_r, loc_c], np.float32).ravel()
        ok = np.isfinite(vals)
        ex_r.append(np.asarray(chunk)[loc_r][ok])
        ex_c.append(loc_c[ok])
        ex_v.append(vals[ok])
        done_rows.extend(chunk)
        computed += int(res.meta.get("pairs_computed", 0))
        reused += int(res.meta.get("pairs_reused", 0))
        if exact_stage:
            exact_stage(computed + reused if budget_p is not None else int(time.time() - t1),
                        budget_p if budget_p is not None else int(budget_s or 1))
    times["exact"] = time.time() - t1
    r_ex = np.concatenate(ex_r) if ex_r else np.empty(0, np.int64)
    c_ex = np.concatenate(ex_c) if ex_c else np.empty(0, np.int64)
    v_ex = np.concatenate(ex_v) if ex_v else np.empty(0, np.float32)
    if cancelled:
        logger.warning("%s: cancelled after %d exact rows; fitting from what is there", label,
                       len(done_rows))

    # held-out rows: every fifth anchor in the anchor order
    rank = {a: i for i, a in enumerate(anchors)}
    held = np.array([rank[int(a)] % 5 == 4 for a in r_ex], dtype=bool)
    n_train_rows = len({int(a) for a in r_ex[~held]})
    n_held_rows = len({int(a) for a in r_ex[held]})
    need = _FIT_ROWS
    if n_train_rows < MIN_TRAIN_ROWS or n_held_rows < MIN_HELDOUT_ROWS:
        if cancelled:
            raise KernelCancelled("cancelled before enough exact pairs for a learned kernel; "
                                  "the exact pairs finished are in the pair store")
        share = "" if budget_p is None else f" of its {budget_p:,}-pass budget"
        raise LearnedKernelError(
            f"{label}: a learned kernel needs exact pairs of at least {MIN_TRAIN_ROWS} training "
            f"and {MIN_HELDOUT_ROWS} held-out rows (about {need * (per_row + 1):,} passes); this "
            f"run scored {len(done_rows)} rows ({computed + reused:,} passes{share}): raise "
            "--exact-passes or --exact-minutes")

    # fit on the training rows only, measure on the held-out rows
    t2 = time.time()
    len_r = np.log1p([len(p) + len(q) for p, q in zip(rows.prompts, rows.responses)])
    len_c = np.log1p([len(p) + len(q) for p, q in zip(cols.prompts, cols.responses)])
    len_r, len_c = np.asarray(len_r, np.float32), np.asarray(len_c, np.float32)
    model = Predictor.for_rows(e_rows) if same_set else Predictor.for_rows(e_rows, e_cols)
    x_train = model.features(e_rows, e_cols, r_ex[~held], c_ex[~held], len_r, len_c)
    model.fit(x_train, v_ex[~held], r_ex[~held], learned.seed)
    info = dict(model.info or {})
    info["trained_on_rows"] = sorted(int(a) for a in set(r_ex[~held].tolist()))
    times["training"] = time.time() - t2
    pred_held = model.predict(e_rows, e_cols, r_ex[held], c_ex[held], len_r, len_c)
    cos_held = np.einsum("ij,ij->i", e_rows[r_ex[held]], e_cols[c_ex[held]])
    fid = fidelity(v_ex[held], pred_held, r_ex[held], baseline=cos_held)

    # predict every pair of the kernel, then put the exact values back
    t3 = time.time()
    pred = model.predict(e_rows, e_cols, pr, pc, len_r, len_c, stage("predicting"))
    times["prediction"] = time.time() - t3
    # exact values in place of predictions, built in one piece: sparse arithmetic would drop an
    # exact value of exactly 0 (the mask would still call that absent pair exact)
    keep = ~np.isin(pr.astype(np.int64) * n_c + pc, r_ex.astype(np.int64) * n_c + c_ex)
    values = sp.csr_matrix((np.concatenate([pred[keep], v_ex]),
                            (np.concatenate([pr[keep], r_ex]), np.concatenate([pc[keep], c_ex]))),
                           shape=(n_r, n_c), dtype=np.float32)
    mask = sp.csr_matrix((np.ones(len(r_ex), np.float32), (r_ex, c_ex)), shape=(n_r, n_c),
                         dtype=np.float32)
    values.sort_indices()
    if dense:
        values = values.toarray()
    mask.sort_indices()
    meta = {"learned": True, "shape": [n_r, n_c], "form": "dense" if dense else "sparse",
            "exact_pairs": int(len(r_ex)), "exact_rows": int(len(done_rows)),
            "exact_per_row": per_row, "heldout_rows_list": sorted({int(a) for a in r_ex[held]}),
            "predicted_pairs": int(len(pr) - mask.multiply(
                sp.csr_matrix((np.ones(len(pr), np.float32), (pr, pc)), shape=(n_r, n_c))).nnz),
            "pairs_computed": computed, "pairs_reused": reused,
            "passes_computed": computed, "passes_reused": reused,
            "budget": {"exact_passes": budget_p, "exact_minutes": learned.exact_minutes},
            "stopped": "cancelled" if cancelled else "budget", "fidelity": fid,
            "predictor": {k: v for k, v in info.items() if k != "trained_on_rows"},
            "seconds_by_phase": {k: round(v, 3) for k, v in times.items()},
            "neighbours": None if dense else int(k), "neighbour_random": neighbour_random,
            "anchor_rule": "k-means clusters of the sentence embeddings, round-robin, seeded; "
                           "every fifth anchor held out",
            **engine.model_record()}  # the model, precision and templates of its exact values
    if fid["below_floor"]:
        logger.warning(fidelity_line(label.split()[-1], meta))
    meta["train_rows_list"] = info["trained_on_rows"]
    return values, mask, meta


def _max_anchors(learned: LearnedSpec, per_row: int, n_rows: int) -> int:
    """How many anchor rows to plan for: the pass budget's worth, or every row under a time
    budget."""
    if learned.exact_passes is not None:
        return min(n_rows, learned.exact_passes // (per_row + 1) + _CHUNK_ROWS)
    return n_rows
