"""The audit's findings as a registry: one function per finding, each with its declared spec.

A finding is a function ``(inputs: AuditInputs) -> Outcome`` registered with
``@finding(FindingSpec(...))``. Its :class:`FindingSpec` says its name, label, plain-language
meaning, what it needs (in words, and which :data:`KERNEL_NEEDS` kind), the per-row values it
writes and its thresholds, each a :class:`Threshold` with its label, default, allowed range, the
studio slider's range and step, and help. Everything else derives from :data:`FINDINGS`, in
registration order: :class:`~delift_core.outputs.audit.AuditSettings` (one field per threshold,
checked against its range), the threshold options of ``delift audit`` and their help, the Audit
page's sliders and tables, and the order of the findings and columns in ``audit.json`` and
``audit.csv``.

To add a finding: one function here under ``@finding(FindingSpec(...))``. To add a threshold:
one :class:`Threshold` in its finding's spec, read in the function as
``inputs.settings.<name>``. No other code changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from delift_core.data.dataset import Dataset
from delift_core.kernels.builder import Kernels
from delift_core.kernels.matrices import KernelMatrix, is_sparse
from delift_core.selection.cover import best_cover
from delift_core.selection.objectives.spec import Param

if TYPE_CHECKING:  # selection imports the engine; an audit only reads a finished Selection
    from delift_core.selection.select import Selection

__all__ = ["KERNEL_NEEDS", "FINDINGS", "Threshold", "FindingSpec", "AuditInputs", "Outcome",
           "finding", "thresholds"]

KERNEL_NEEDS: dict[str, str] = {
    "utility": "the DELIFT utility kernel (the model's own utilities)",
    "embedding": "sentence embeddings, or an embedding kernel",
    "selection": "a selection and the kernel it was made on",
}
"""What a finding reads (the key a spec names), in words."""


@dataclass(frozen=True)
class Threshold(Param):
    """One threshold of a finding, declared like an objective's parameter: ``name`` (its
    ``AuditSettings`` field), the slider's ``label``, ``default``, the range ``low``..``high`` a
    value must lie in (checked), the slider's ``step`` and a one-line ``help``; plus its CLI
    option (``--flag``) and the range the studio's slider offers (``shown``; the allowed range
    when None)."""

    flag: str = ""
    shown: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if not self.flag:
            raise ValueError(f"threshold '{self.name}' needs its CLI flag")

    @property
    def slider_range(self) -> tuple[float, float]:
        """(low, high) of the studio's slider: the useful part of the allowed range."""
        return self.shown if self.shown is not None else (self.low, self.high)

    def check(self, value: Any) -> str | None:
        """Why ``value`` is not allowed (naming the threshold and its option), or None."""
        if (not isinstance(value, (int, float)) or not np.isfinite(value)
                or not self.low <= value <= self.high):
            return (f"audit threshold {self.name}={value!r} (--{self.flag}) must be a number in "
                    f"[{self.low:g}, {self.high:g}]")
        return None


@dataclass(frozen=True)
class FindingSpec:
    """One finding: its name (the key in ``audit.json``), label (its title), meaning, what it
    needs in words and as a :data:`KERNEL_NEEDS` kind, the per-row values it writes into
    ``audit.csv`` (``columns``, in order), the values a table of its rows shows (``shows``;
    ``columns`` when empty), its thresholds, and the function that makes it (set by
    :func:`finding`)."""

    name: str
    label: str
    meaning: str
    needs: str
    kernel: str
    columns: tuple[str, ...]
    thresholds: tuple[Threshold, ...] = ()
    shows: tuple[str, ...] = ()
    run: Callable[["AuditInputs"], "Outcome"] | None = None

    def __post_init__(self) -> None:
        if self.kernel not in KERNEL_NEEDS:
            raise ValueError(f"finding '{self.name}': kernel must be one of "
                             f"{', '.join(KERNEL_NEEDS)}, not {self.kernel!r}")

    @property
    def table_columns(self) -> tuple[str, ...]:
        """The per-row values a table of this finding's rows shows."""
        return self.shows or self.columns


@dataclass
class Outcome:
    """What a finding function returns: whether it could be made (else ``reason``), the ids it
    flags (worst first), its rule with the thresholds used, groups, its per-row ``columns``
    (every name its spec declares, also when unavailable) and what it adds to the audit's meta."""

    available: bool
    columns: dict[str, Any]
    ids: list[str] = field(default_factory=list)
    rule: str = ""
    reason: str | None = None
    groups: list[dict] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class AuditInputs:
    """What every finding reads: the pool, its kernels, a selection, sentence embeddings, cluster
    labels, the thresholds (an ``AuditSettings``) and the plain distances (checked by
    :func:`~delift_core.outputs.audit.audit`); shared values are computed once."""

    pool: Dataset
    kernels: Kernels | None
    selection: "Selection | None"
    embeddings: np.ndarray | None
    clusters: np.ndarray | None
    settings: Any
    d_plain: np.ndarray | None = None

    @property
    def n(self) -> int:
        return len(self.pool)

    @property
    def has_kernel(self) -> bool:
        return self.kernels is not None and self.kernels.pool is not None

    @property
    def utility(self) -> bool:
        """Whether the kernel is a utility kernel (raw utilities)."""
        return self.has_kernel and self.kernels.kind != "embedding"

    @property
    def sparse(self) -> bool:
        return bool(self.has_kernel and is_sparse(self.kernels.pool))

    def blank(self) -> np.ndarray:
        """NaN per row (the value of a column a finding could not fill)."""
        return np.full(self.n, np.nan)

    def missing(self, kernel: str) -> str | None:
        """Why a finding of this :data:`KERNEL_NEEDS` kind cannot be made here, or None."""
        if kernel == "utility" and not self.utility:
            return ("no kernel was given" if not self.has_kernel else
                    "the kernel is an embedding kernel; these findings need the DELIFT utility "
                    "kernel (the model's own utilities)")
        if kernel == "embedding" and self.embeddings is None and not (
                self.has_kernel and self.kernels.kind == "embedding"):
            return "no sentence embeddings and no embedding kernel were given"
        if kernel == "selection":
            if self.selection is None:
                return "no selection was given"
            if self.selection.kernels is None or self.selection.kernels.pool is None:
                return "the selection has no pool kernel (a random baseline without a kernel)"
        return None

    @cached_property
    def utility_stats(self) -> dict[str, np.ndarray]:
        """Column mean and count off the diagonal, row max off the diagonal, and the diagonal."""
        return _off_diagonal_stats(self.kernels.pool)

    @cached_property
    def selected(self) -> set[int]:
        """Positions of the selected rows (empty without a selection)."""
        if self.selection is None:
            return set()
        return set(int(k) for k in self.selection.selected_indices)

    def sparse_note(self) -> str:
        return " (sparse kernel: over its stored pairs)" if self.sparse else ""


FINDINGS: dict[str, FindingSpec] = {}
"""Every finding's spec, in registration (and display) order."""


def finding(spec: FindingSpec) -> Callable[[Callable[[AuditInputs], Outcome]],
                                           Callable[[AuditInputs], Outcome]]:
    """Register the decorated function as the finding ``spec`` describes."""
    def register(fn: Callable[[AuditInputs], Outcome]) -> Callable[[AuditInputs], Outcome]:
        if spec.name in FINDINGS:
            raise ValueError(f"finding '{spec.name}' is registered twice")
        taken = {t.name for s in FINDINGS.values() for t in s.thresholds}
        for t in spec.thresholds:
            if t.name in taken:
                raise ValueError(f"threshold '{t.name}' is declared twice")
        FINDINGS[spec.name] = replace(spec, run=fn)
        return fn
    return register


def thresholds() -> tuple[Threshold, ...]:
    """Every threshold of every finding, in registry order (``AuditSettings``' fields)."""
    return tuple(t for spec in FINDINGS.values() for t in spec.thresholds)


# ----------------------------------------------------------------------------------------------
# Shared computations


def _off_diagonal_stats(k: KernelMatrix) -> dict[str, np.ndarray]:
    """Column mean and count over i != j, row max over j != i, and the diagonal (NaN where a
    sparse kernel stores no such pair)."""
    n = k.shape[0]
    if is_sparse(k):
        coo = k.tocoo()
        off = coo.row != coo.col
        r, c, v = coo.row[off], coo.col[off], coo.data[off].astype(np.float64)
        col_sum = np.bincount(c, weights=v, minlength=n)
        col_n = np.bincount(c, minlength=n)
        row_max = np.full(n, -np.inf)
        np.maximum.at(row_max, r, v)
        row_n = np.bincount(r, minlength=n)
        diag = np.full(n, np.nan)
        on = coo.row == coo.col
        diag[coo.row[on]] = coo.data[on]
    else:
        a = np.asarray(k, np.float64)
        diag = np.diag(a).copy()
        col_sum = a.sum(axis=0) - diag
        col_n = np.full(n, n - 1)
        masked = a.copy()
        np.fill_diagonal(masked, -np.inf)
        row_max = masked.max(axis=1) if n > 1 else np.full(n, -np.inf)
        row_n = np.full(n, n - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        col_mean = np.where(col_n > 0, col_sum / np.maximum(col_n, 1), np.nan)
    row_max = np.where(row_n > 0, row_max, np.nan)
    return {"col_mean": col_mean, "col_n": col_n, "row_max": row_max, "row_n": row_n,
            "diag": diag}


def _duplicate_pairs(embeddings: np.ndarray | None, kernels: Kernels | None,
                     threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, str] | None:
    """(i, j, cosine) with i < j and cosine >= threshold, and where the cosines came from."""
    if embeddings is not None:
        e = np.asarray(embeddings, np.float32)
        norms = np.linalg.norm(e, axis=1, keepdims=True)
        e = e / np.where(norms > 0, norms, 1)
        n = e.shape[0]
        out_i, out_j, out_c = [], [], []
        step = max(1, (1 << 22) // max(1, n))
        for s in range(0, n, step):
            sim = e[s: s + step] @ e.T
            ii, jj = np.nonzero(sim >= threshold)
            ii = ii + s
            keep = ii < jj
            out_i.append(ii[keep])
            out_j.append(jj[keep])
            out_c.append(sim[ii[keep] - s, jj[keep]])
        cat = (lambda xs, t: np.concatenate(xs).astype(t) if xs else np.zeros(0, t))
        return (cat(out_i, np.int64), cat(out_j, np.int64), cat(out_c, np.float64),
                "cosine of the sentence embeddings")
    if kernels is not None and kernels.kind == "embedding" and kernels.pool is not None:
        k = kernels.pool
        coo = (k.tocoo() if is_sparse(k) else None)
        if coo is None:
            a = np.asarray(k, np.float64)
            ii, jj = np.nonzero(np.triu(2 * a - 1 >= threshold, 1))
            return ii, jj, 2 * a[ii, jj] - 1, "the embedding kernel, cosine = 2 value - 1"
        cos = 2 * coo.data.astype(np.float64) - 1
        keep = (cos >= threshold) & (coo.row != coo.col)
        ii, jj = np.minimum(coo.row, coo.col)[keep], np.maximum(coo.row, coo.col)[keep]
        pairs = {}
        for a, b, c in zip(ii, jj, cos[keep]):
            pairs[(int(a), int(b))] = max(c, pairs.get((int(a), int(b)), -1.0))
        arr = np.array(list(pairs), np.int64).reshape(-1, 2)
        return (arr[:, 0], arr[:, 1], np.array(list(pairs.values()), np.float64),
                "the sparse embedding kernel's stored pairs (each row's nearest neighbours), "
                "cosine = 2 value - 1")
    return None


def _groups(n: int, i: np.ndarray, j: np.ndarray) -> list[list[int]]:
    """Connected components (size >= 2) of the pairs, each sorted, ordered by first member."""
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in zip(i.tolist(), j.tolist()):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    comps: dict[int, list[int]] = {}
    for x in range(n):
        comps.setdefault(find(x), []).append(x)
    return sorted((sorted(g) for g in comps.values() if len(g) > 1), key=lambda g: g[0])


def _without_utility(inputs: AuditInputs, *columns: str) -> Outcome | None:
    """Without a utility kernel: the finding unavailable, with the reason and NaN columns."""
    reason = inputs.missing("utility")
    return Outcome(False, {c: inputs.blank() for c in columns}, reason=reason) if reason else None


def _flag_lowest(inputs: AuditInputs, values: np.ndarray, limit: float, what: str,
                 **columns: np.ndarray) -> Outcome:
    """Flag the rows whose finite value is <= limit, lowest first (NaN rows never), with the rule
    '<what> <= <limit>' (noting a sparse kernel)."""
    order = np.argsort(np.where(np.isnan(values), np.inf, values), kind="stable")
    ids = [inputs.pool.ids[k] for k in order if np.isfinite(values[k]) and values[k] <= limit]
    return Outcome(True, columns, ids, rule=f"{what} <= {limit:g}{inputs.sparse_note()}")


# ----------------------------------------------------------------------------------------------
# The findings, in display order


@finding(FindingSpec(
    name="already_known", label="Already known",
    meaning="The model already answers these well without any example (low plain distance "
            "d(i, plain)): little left to teach.",
    needs="utility kernel (plain distances)", kernel="utility", columns=("d_plain",),
    thresholds=(Threshold(
        "known_max_distance", "Already known: plain distance at most", flag="known-distance",
        default=0.25, low=0.0, high=1.0, step=0.01,
        help="flag rows whose plain distance d(i, plain) is at most this (0.25: the model gives "
             "the true tokens ~75%+ probability)"),)))
def already_known(inputs: AuditInputs) -> Outcome:
    """Rows with a low plain distance d(i, plain), lowest first."""
    S, d = inputs.settings, inputs.d_plain
    if d is None:
        learned = inputs.kernels is not None and "pool" in inputs.kernels.meta.learned
        reason = inputs.missing("utility") or (
            "a learned kernel has plain distances of its anchor rows only" if learned else
            "the kernel records no plain distances (a bare kernel file); give the `delift "
            "kernel` folder")
        return Outcome(False, {"d_plain": inputs.blank()}, reason=reason)
    order = np.argsort(d, kind="stable")
    ids = [inputs.pool.ids[k] for k in order if d[k] <= S.known_max_distance]
    return Outcome(True, {"d_plain": d}, ids, rule=f"d(i, plain) <= {S.known_max_distance:g}")


@finding(FindingSpec(
    name="hurts_others", label="Helps no one / hurts others",
    meaning="Shown as an in-context example, this row makes the model's answers to the other "
            "rows no better or worse on average: a candidate for a wrong or badly formatted "
            "answer.",
    needs="utility kernel", kernel="utility",
    columns=("mean_utility_to_others", "scored_against"),
    thresholds=(Threshold(
        "hurts_max_mean", "Hurts others: mean utility to others at most", flag="hurts-mean",
        default=0.0, low=-1.0, high=1.0, step=0.005, shown=(-0.2, 0.2),
        help="flag rows whose mean raw utility to the other rows, as an example, is at most "
             "this"),)))
def hurts_others(inputs: AuditInputs) -> Outcome:
    """Columns of the utility kernel whose mean over the other rows is low, lowest first."""
    if out := _without_utility(inputs, "mean_utility_to_others", "scored_against"):
        return out
    st = inputs.utility_stats
    return _flag_lowest(inputs, st["col_mean"], inputs.settings.hurts_max_mean,
                        "mean raw utility to the other rows",
                        mean_utility_to_others=st["col_mean"], scored_against=st["col_n"])


@finding(FindingSpec(
    name="helped_by_no_one", label="Helped by no one",
    meaning="No other row, shown as an example, improves the model's answer to this one: "
            "unusual, inconsistent, or an answer nothing else in the pool supports.",
    needs="utility kernel", kernel="utility", columns=("max_utility_received",),
    thresholds=(Threshold(
        "helped_max", "Helped by no one: best utility received at most", flag="helped-max",
        default=0.0, low=-1.0, high=1.0, step=0.005, shown=(-0.2, 0.2),
        help="flag rows whose largest raw utility from another row is at most this"),)))
def helped_by_no_one(inputs: AuditInputs) -> Outcome:
    """Rows of the utility kernel whose largest value off the diagonal is low, lowest first."""
    if out := _without_utility(inputs, "max_utility_received"):
        return out
    row_max = inputs.utility_stats["row_max"]
    return _flag_lowest(inputs, row_max, inputs.settings.helped_max,
                        "largest raw utility from another row", max_utility_received=row_max)


@finding(FindingSpec(
    name="copies_itself", label="Copies itself",
    meaning="Shown its own answer the model improves a lot (it can copy it), but the row does "
            "little for anyone else: memorisable content such as a garbled or arbitrary "
            "response.",
    needs="utility kernel (diagonal)", kernel="utility", columns=("self_utility",),
    shows=("self_utility", "mean_utility_to_others"),
    thresholds=(
        Threshold("copy_min_self", "Copies itself: self-utility at least", flag="copy-self",
                  default=0.1, low=-1.0, high=1.0, step=0.01, shown=(0.0, 1.0),
                  help="flag rows whose self-utility U(i, i) is at least this (and whose mean "
                       "utility to the others is small)"),
        # Self-utility is large for every row (the model copies an answer it was just shown): on
        # the first 20 demo rows with Gemma 3 270M the median ratio is 0.086, so 0.05 keeps the
        # rows well below the usual. A row whose mean is below -ratio x U(i, i) hurts others,
        # which is its own finding.
        Threshold("copy_max_ratio", "Copies itself: |mean to others| at most this × self",
                  flag="copy-ratio", default=0.05, low=0.0, high=1.0, step=0.01,
                  help="flag rows whose |mean utility to the others| is at most this fraction of "
                       "U(i, i) (and U(i, i) is large)"),
    )))
def copies_itself(inputs: AuditInputs) -> Outcome:
    """Rows with a large diagonal and a mean utility to others near zero, largest gap first."""
    if out := _without_utility(inputs, "self_utility"):
        return out
    S, st = inputs.settings, inputs.utility_stats
    dg, cm = st["diag"], st["col_mean"]
    if not np.isfinite(dg).any():
        return Outcome(False, {"self_utility": dg}, reason="the sparse kernel stores no diagonal")
    ok = (np.isfinite(dg) & np.isfinite(cm) & (dg >= S.copy_min_self)
          & (np.abs(cm) <= S.copy_max_ratio * dg))
    gap = np.where(ok, dg - np.nan_to_num(cm), -np.inf)
    order = np.argsort(-gap, kind="stable")
    return Outcome(True, {"self_utility": dg}, [inputs.pool.ids[k] for k in order if ok[k]],
                   rule=f"U(i, i) >= {S.copy_min_self:g} and |mean utility to others| <= "
                        f"{S.copy_max_ratio:g} x U(i, i)")


@finding(FindingSpec(
    name="near_duplicates", label="Near-duplicates",
    meaning="Groups of rows whose sentence embeddings are nearly identical; one of each group is "
            "usually enough.",
    needs="sentence embeddings (or an embedding kernel)", kernel="embedding",
    columns=("duplicate_group",),
    thresholds=(Threshold(
        "duplicate_min_cosine", "Near-duplicates: cosine at least", flag="dup-cosine",
        default=0.95, low=-1.0, high=1.0, step=0.005, shown=(0.8, 1.0),
        help="group rows whose sentence-embedding cosine is at least this (0.95: the usual "
             "near-duplicate cut; raise it for stricter groups)"),)))
def near_duplicates(inputs: AuditInputs) -> Outcome:
    """Connected groups of rows at cosine >= the threshold, with the rows the selection kept."""
    S, n, ids = inputs.settings, inputs.n, inputs.pool.ids
    dup_group = np.full(n, -1)
    pairs = _duplicate_pairs(inputs.embeddings, inputs.kernels, S.duplicate_min_cosine)
    if pairs is None:
        return Outcome(False, {"duplicate_group": dup_group}, reason=inputs.missing("embedding"),
                       meta={"duplicates_from": None})
    ii, jj, cos, source = pairs
    best: dict[int, float] = {}
    for a, b, c in zip(ii.tolist(), jj.tolist(), cos.tolist()):
        best[a] = max(best.get(a, -1.0), c)
        best[b] = max(best.get(b, -1.0), c)
    groups, flagged = [], []
    for g_no, g in enumerate(_groups(n, ii, jj)):
        dup_group[g] = g_no
        kept = [ids[k] for k in g if k in inputs.selected]
        groups.append({"group": g_no, "ids": [ids[k] for k in g],
                       "kept": kept if inputs.selection is not None else None,
                       "max_cosine": round(max(best[k] for k in g), 4)})
        flagged += [ids[k] for k in g]
    return Outcome(True, {"duplicate_group": dup_group}, flagged, groups=groups,
                   rule=f"cosine >= {S.duplicate_min_cosine:g} ({source}); {len(groups)} groups",
                   meta={"duplicates_from": source})


@finding(FindingSpec(
    name="coverage", label="Covered worst",
    meaning="The rows the selection represents worst: the lowest best-cover value (the largest "
            "kernel value to any selected row), grouped by cluster.",
    needs="a selection and its kernel", kernel="selection",
    columns=("cluster", "cover_value", "covered_by"),
    shows=("cover_value", "covered_by", "cluster"),
    thresholds=(Threshold(
        "coverage_fraction", "Covered worst: lowest fraction of rows", flag="coverage-fraction",
        default=0.1, low=0.0, high=1.0, step=0.01, shown=(0.01, 0.5),
        help="flag this fraction of rows (at least one) with the lowest best-cover value"),)))
def coverage(inputs: AuditInputs) -> Outcome:
    """The rows with the lowest best-cover value under the selection, by cluster when given."""
    S, n, ids, cl = inputs.settings, inputs.n, inputs.pool.ids, inputs.clusters
    columns: dict[str, Any] = {"cluster": cl if cl is not None else np.full(n, -1)}
    reason = inputs.missing("selection")
    if reason:
        return Outcome(False, {**columns, "cover_value": inputs.blank(), "covered_by": ""},
                       reason=reason)
    sel = inputs.selection
    cover, value = best_cover(sel.kernels.scaled("pool"), sel.selected_indices)
    columns["cover_value"] = value.astype(np.float64)
    columns["covered_by"] = [ids[c] if c >= 0 else "" for c in cover]
    m = max(1, int(round(S.coverage_fraction * n)))
    order = np.argsort(value, kind="stable")[:m]
    groups = []
    if cl is not None:
        worst_set = set(order.tolist())
        for c in sorted(set(cl.tolist())):
            members = np.flatnonzero(cl == c)
            groups.append({"cluster": int(c), "rows": int(len(members)),
                           "selected": int(sum(int(k) in inputs.selected for k in members)),
                           "worst_covered": int(sum(int(k) in worst_set for k in members)),
                           "mean_cover": round(float(value[members].mean()), 4)})
        groups.sort(key=lambda g: (-g["worst_covered"], g["mean_cover"]))
    return Outcome(True, columns, [ids[k] for k in order], groups=groups,
                   rule=f"the lowest {S.coverage_fraction:.0%} of rows by best-cover value "
                        f"(selection kernel in [0, 1], {sel.objective}, budget {sel.budget})")
