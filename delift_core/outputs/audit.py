"""What the kernels say about the data: rows the model already knows, rows that help no one or
hurt others, rows nothing helps, rows that only copy themselves, near-duplicates, and the rows a
selection covers worst.

The findings come from kernels already computed, so an audit costs no model run:

==================  ==========================================================================
finding             needs
==================  ==========================================================================
already_known       the utility kernel's plain distances d(i, plain) (``meta["pool"]["d_plain"]``)
hurts_others        the utility kernel (raw utilities, columns)
helped_by_no_one    the utility kernel (raw utilities, rows)
copies_itself       the utility kernel's diagonal (dense, or sparse with the diagonal stored)
near_duplicates     sentence embeddings (given, or an embedding kernel's stored pairs)
coverage            a selection (and its kernel); clusters group it when embeddings are given
==================  ==========================================================================

A finding whose input is missing is reported as unavailable with the reason, never as empty.
Every threshold is a field of :class:`AuditSettings` and is written into the output.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd

from delift_core.selection.cover import best_cover
from delift_core.data.dataset import Dataset
from delift_core.errors import DeliftError
from delift_core.kernels.builder import Kernels
from delift_core.kernels.matrices import KernelMatrix, is_sparse

if TYPE_CHECKING:  # selection imports the engine; an audit only reads a finished Selection
    from delift_core.selection.select import Selection

__all__ = ["AUDIT_VERSION", "FINDINGS", "AuditError", "AuditSettings", "Finding", "Audit",
           "audit", "audit_json_text", "plain_distances", "write_audit"]

logger = logging.getLogger(__name__)

AUDIT_VERSION = 1


class AuditError(DeliftError):
    """An audit cannot be made from what was given (it says what is missing or wrong)."""


FINDINGS: dict[str, dict[str, str]] = {
    "already_known": {
        "title": "Already known",
        "meaning": "The model already answers these well without any example (low plain "
                   "distance d(i, plain)): little left to teach.",
        "needs": "utility kernel (plain distances)"},
    "hurts_others": {
        "title": "Helps no one / hurts others",
        "meaning": "Shown as an in-context example, this row makes the model's answers to the "
                   "other rows no better or worse on average: a candidate for a wrong or badly "
                   "formatted answer.",
        "needs": "utility kernel"},
    "helped_by_no_one": {
        "title": "Helped by no one",
        "meaning": "No other row, shown as an example, improves the model's answer to this one: "
                   "unusual, inconsistent, or an answer nothing else in the pool supports.",
        "needs": "utility kernel"},
    "copies_itself": {
        "title": "Copies itself",
        "meaning": "Shown its own answer the model improves a lot (it can copy it), but the row "
                   "does little for anyone else: memorisable content such as a garbled or "
                   "arbitrary response.",
        "needs": "utility kernel (diagonal)"},
    "near_duplicates": {
        "title": "Near-duplicates",
        "meaning": "Groups of rows whose sentence embeddings are nearly identical; one of each "
                   "group is usually enough.",
        "needs": "sentence embeddings (or an embedding kernel)"},
    "coverage": {
        "title": "Covered worst",
        "meaning": "The rows the selection represents worst: the lowest best-cover value (the "
                   "largest kernel value to any selected row), grouped by cluster.",
        "needs": "a selection and its kernel"},
}
"""Each finding's title, plain-language meaning and what it needs, in display order."""


@dataclass(frozen=True)
class AuditSettings:
    """Thresholds of the findings (all written into the audit's output).

    Distances d are in [0, 1] (||1 - p||_2 / sqrt(T) over the response tokens); utilities are
    differences of distances, so in [-1, 1].
    """

    known_max_distance: float = 0.25
    """already_known: d(i, plain) <= this (the model gives the true tokens ~75%+ probability)."""
    hurts_max_mean: float = 0.0
    """hurts_others: the column's mean raw utility over the other rows scored <= this."""
    helped_max: float = 0.0
    """helped_by_no_one: the row's largest raw utility from another row <= this."""
    copy_min_self: float = 0.1
    """copies_itself: self-utility U(i, i) >= this ..."""
    copy_max_ratio: float = 0.05
    """... and the column's mean utility to others is within +- this fraction of U(i, i) (a row
    whose mean is below that hurts others, which is its own finding). Self-utility is large for
    every row (the model copies an answer it was just shown): on the first 20 demo rows with
    Gemma 3 270M the median ratio is 0.086, so 0.05 keeps the rows well below the usual."""
    duplicate_min_cosine: float = 0.95
    """near_duplicates: embedding cosine >= this (all-MiniLM-L6-v2 style unit embeddings; 0.95 is
    the usual near-duplicate cut of semantic de-duplication, raise it for stricter groups)."""
    coverage_fraction: float = 0.1
    """coverage: the lowest this fraction of rows by best-cover value (at least one row)."""

    def validate(self) -> None:
        """AuditError naming a threshold outside its range."""
        ranges = {"known_max_distance": (0, 1), "hurts_max_mean": (-1, 1), "helped_max": (-1, 1),
                  "copy_min_self": (-1, 1), "copy_max_ratio": (0, 1),
                  "duplicate_min_cosine": (-1, 1), "coverage_fraction": (0, 1)}
        for name, (lo, hi) in ranges.items():
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not np.isfinite(v) or not lo <= v <= hi:
                raise AuditError(f"audit threshold {name}={v!r} must be a number in [{lo}, {hi}]")


@dataclass
class Finding:
    """One kind of finding: whether it could be made, which rows it flags, and its threshold."""

    key: str
    title: str
    meaning: str
    needs: str
    available: bool
    ids: list[str] = field(default_factory=list)
    reason: str | None = None
    rule: str = ""
    groups: list[dict] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.ids)

    def to_json(self) -> dict:
        return {"key": self.key, "title": self.title, "meaning": self.meaning,
                "needs": self.needs, "available": self.available, "count": self.count,
                "rule": self.rule, "reason": self.reason, "ids": self.ids,
                **({"groups": self.groups} if self.groups else {})}


@dataclass
class Audit:
    """Per-row values and flags (:attr:`rows`), the findings, and how they were made."""

    rows: pd.DataFrame
    findings: dict[str, Finding]
    settings: AuditSettings
    meta: dict

    def finding_rows(self, key: str) -> pd.DataFrame:
        """The rows a finding flags, in the finding's order (worst first)."""
        f = self.findings[key]
        pos = {rid: k for k, rid in enumerate(f.ids)}
        part = self.rows[self.rows["id"].isin(pos)]
        return part.iloc[np.argsort([pos[i] for i in part["id"]], kind="stable")]

    def summary(self) -> dict:
        """Counts, meanings and rules per finding, the thresholds and what the audit read."""
        return {"version": AUDIT_VERSION, "rows": int(len(self.rows)),
                "settings": asdict(self.settings), **self.meta,
                "findings": {k: {kk: vv for kk, vv in f.to_json().items() if kk != "ids"}
                             | {"first_ids": f.ids[:10]} for k, f in self.findings.items()}}

    def to_json(self) -> dict:
        """What ``audit.json`` holds: the summary plus every flagged id per finding."""
        out = self.summary()
        out["findings"] = {k: f.to_json() for k, f in self.findings.items()}
        return out

    def to_csv(self) -> str:
        """What ``audit.csv`` holds: one line per pool row with its values and flags."""
        table = self.rows.copy()
        table["flags"] = table["flags"].map(lambda fl: ";".join(fl))
        return table.to_csv(index=False)

    def lines(self) -> list[str]:
        """One line per finding for a console: count and rule, or why it is unavailable."""
        out = []
        for f in self.findings.values():
            if f.available:
                out.append(f"{f.title}: {f.count} rows ({f.rule})")
            else:
                out.append(f"{f.title}: not available ({f.reason})")
        return out


def plain_distances(kernels: Kernels) -> np.ndarray | None:
    """d(i, plain) per pool row from the utility kernel's meta (computed here or loaded from a
    ``delift kernel`` folder), or None when the kernels do not record them."""
    m = kernels.meta.roles.get("pool")
    if isinstance(m, dict) and m.get("d_plain") is not None:
        return np.asarray(m["d_plain"], np.float64)
    return None


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


def audit(pool: Dataset, kernels: Kernels | None, *, selection: "Selection | None" = None,
          embeddings: np.ndarray | None = None, clusters: Sequence[int] | None = None,
          settings: AuditSettings | None = None) -> Audit:
    """Audit ``pool`` from its kernels (raw utilities when ``kernels`` is a utility kernel),
    optional sentence ``embeddings`` (near-duplicates), a ``selection`` (coverage; its kernels
    are used when ``kernels`` is None) and cluster labels (coverage by cluster)."""
    settings = settings or AuditSettings()
    settings.validate()
    n = len(pool)
    if kernels is None and selection is not None:
        kernels = selection.kernels
    if selection is not None and list(selection.pool.ids) != list(pool.ids):
        raise AuditError("the selection was made on other pool rows than the pool audited")
    if kernels is not None and kernels.pool is not None and kernels.pool.shape != (n, n):
        raise AuditError(f"the pool kernel has shape {tuple(kernels.pool.shape)}, expected "
                         f"({n}, {n}) for the {n} pool rows audited")
    if embeddings is not None and len(embeddings) != n:
        raise AuditError(f"{len(embeddings)} embeddings given for {n} pool rows")
    if clusters is not None and len(clusters) != n:
        raise AuditError(f"{len(clusters)} cluster labels given for {n} pool rows")
    nan = np.full(n, np.nan)
    rows = pd.DataFrame({"id": list(pool.ids), "prompt": list(pool.prompts),
                         "response": list(pool.responses)})
    flags: list[list[str]] = [[] for _ in range(n)]
    found: dict[str, Finding] = {}
    S = settings

    def finding(key: str, available: bool, ids: Sequence[str] = (), reason: str | None = None,
                rule: str = "", groups: list[dict] | None = None) -> None:
        spec = FINDINGS[key]
        found[key] = Finding(key, spec["title"], spec["meaning"], spec["needs"], available,
                             list(ids), reason, rule, groups or [])
        for rid in ids:
            flags[pool.index_of(rid)].append(key)

    has_kernel = kernels is not None and kernels.pool is not None
    utility = has_kernel and kernels.kind != "embedding"
    why_not = ("no kernel was given" if not has_kernel else
               "the kernel is an embedding kernel; these findings need the DELIFT utility "
               "kernel (the model's own utilities)")
    kernel_meta = {"kernel": (kernels.kind if has_kernel else None),
                   "sparse": bool(has_kernel and is_sparse(kernels.pool))}

    # -- already known: the plain distance
    d_plain = plain_distances(kernels) if utility else None
    if d_plain is not None and len(d_plain) != n:
        raise AuditError(f"the kernel records {len(d_plain)} plain distances for {n} pool rows")
    rows["d_plain"] = d_plain if d_plain is not None else nan
    if d_plain is not None:
        order = np.argsort(d_plain, kind="stable")
        ids = [pool.ids[k] for k in order if d_plain[k] <= S.known_max_distance]
        finding("already_known", True, ids, rule=f"d(i, plain) <= {S.known_max_distance:g}")
    else:
        finding("already_known", False, reason=(why_not if not utility else
                                                "the kernel records no plain distances "
                                                "(a bare kernel file); give the `delift kernel` "
                                                "folder"))

    # -- utilities: columns, rows, diagonal
    if utility:
        st = _off_diagonal_stats(kernels.pool)
        rows["mean_utility_to_others"] = st["col_mean"]
        rows["scored_against"] = st["col_n"]
        rows["max_utility_received"] = st["row_max"]
        rows["self_utility"] = st["diag"]
        sparse_note = " (sparse kernel: over its stored pairs)" if kernel_meta["sparse"] else ""
        cm = st["col_mean"]
        order = np.argsort(np.where(np.isnan(cm), np.inf, cm), kind="stable")
        finding("hurts_others", True, [pool.ids[k] for k in order
                                       if np.isfinite(cm[k]) and cm[k] <= S.hurts_max_mean],
                rule=f"mean raw utility to the other rows <= {S.hurts_max_mean:g}{sparse_note}")
        rm = st["row_max"]
        order = np.argsort(np.where(np.isnan(rm), np.inf, rm), kind="stable")
        finding("helped_by_no_one", True, [pool.ids[k] for k in order
                                           if np.isfinite(rm[k]) and rm[k] <= S.helped_max],
                rule=f"largest raw utility from another row <= {S.helped_max:g}{sparse_note}")
        dg = st["diag"]
        if np.isfinite(dg).any():
            ok = (np.isfinite(dg) & np.isfinite(cm) & (dg >= S.copy_min_self)
                  & (np.abs(cm) <= S.copy_max_ratio * dg))
            gap = np.where(ok, dg - np.nan_to_num(cm), -np.inf)
            order = np.argsort(-gap, kind="stable")
            finding("copies_itself", True, [pool.ids[k] for k in order if ok[k]],
                    rule=f"U(i, i) >= {S.copy_min_self:g} and |mean utility to others| <= "
                         f"{S.copy_max_ratio:g} x U(i, i)")
        else:
            finding("copies_itself", False, reason="the sparse kernel stores no diagonal")
    else:
        for c in ("mean_utility_to_others", "scored_against", "max_utility_received",
                  "self_utility"):
            rows[c] = nan
        for key in ("hurts_others", "helped_by_no_one", "copies_itself"):
            finding(key, False, reason=why_not)

    # -- near-duplicates
    selected = set(int(k) for k in selection.selected_indices) if selection is not None else set()
    dup_group = np.full(n, -1)
    pairs = _duplicate_pairs(embeddings, kernels, S.duplicate_min_cosine)
    if pairs is None:
        finding("near_duplicates", False, reason="no sentence embeddings and no embedding kernel "
                                                 "were given")
        dup_source = None
    else:
        ii, jj, cos, dup_source = pairs
        groups, ids = [], []
        best = {}
        for a, b, c in zip(ii.tolist(), jj.tolist(), cos.tolist()):
            best[a] = max(best.get(a, -1.0), c)
            best[b] = max(best.get(b, -1.0), c)
        for g_no, g in enumerate(_groups(n, ii, jj)):
            dup_group[g] = g_no
            kept = [pool.ids[k] for k in g if k in selected]
            groups.append({"group": g_no, "ids": [pool.ids[k] for k in g],
                           "kept": kept if selection is not None else None,
                           "max_cosine": round(max(best[k] for k in g), 4)})
            ids += [pool.ids[k] for k in g]
        finding("near_duplicates", True, ids, groups=groups,
                rule=f"cosine >= {S.duplicate_min_cosine:g} ({dup_source}); {len(groups)} groups")
    rows["duplicate_group"] = dup_group

    # -- coverage
    cl = np.asarray(clusters, int) if clusters is not None else None
    rows["cluster"] = cl if cl is not None else np.full(n, -1)
    if selection is None:
        rows["cover_value"] = nan
        rows["covered_by"] = ""
        finding("coverage", False, reason="no selection was given")
    elif selection.kernels is None or selection.kernels.pool is None:
        rows["cover_value"] = nan
        rows["covered_by"] = ""
        finding("coverage", False, reason="the selection has no pool kernel (a random baseline "
                                          "without a kernel)")
    else:
        cover, value = best_cover(selection.kernels.scaled("pool"), selection.selected_indices)
        rows["cover_value"] = value.astype(np.float64)
        rows["covered_by"] = [pool.ids[c] if c >= 0 else "" for c in cover]
        m = max(1, int(round(S.coverage_fraction * n)))
        order = np.argsort(value, kind="stable")[:m]
        worst = [pool.ids[k] for k in order]
        groups = []
        if cl is not None:
            worst_set = set(order.tolist())
            for c in sorted(set(cl.tolist())):
                members = np.flatnonzero(cl == c)
                groups.append({"cluster": int(c), "rows": int(len(members)),
                               "selected": int(sum(int(k) in selected for k in members)),
                               "worst_covered": int(sum(int(k) in worst_set for k in members)),
                               "mean_cover": round(float(value[members].mean()), 4)})
            groups.sort(key=lambda g: (-g["worst_covered"], g["mean_cover"]))
        finding("coverage", True, worst, groups=groups,
                rule=f"the lowest {S.coverage_fraction:.0%} of rows by best-cover value "
                     f"(selection kernel in [0, 1], {selection.objective}, budget "
                     f"{selection.budget})")
    rows["selected"] = [k in selected for k in range(n)] if selection is not None else False
    rows["flags"] = flags
    meta = {**kernel_meta, "duplicates_from": dup_source,
            "selection": ({"objective": selection.objective, "budget": int(selection.budget)}
                          if selection is not None else None),
            "clusters": int(len(set(cl.tolist()))) if cl is not None else None}
    logger.info("audit of %d rows: %s", n, ", ".join(
        f"{k} {f.count}" if f.available else f"{k} n/a" for k, f in found.items()))
    return Audit(rows, {k: found[k] for k in FINDINGS}, settings, meta)


def audit_json_text(a: Audit) -> str:
    """``audit.json``'s text."""
    return json.dumps(a.to_json(), indent=1, default=str, ensure_ascii=False)


def write_audit(a: Audit, folder: str | Path) -> dict[str, Path]:
    """Write ``audit.json`` (summary, rules, thresholds, flagged ids) and ``audit.csv`` (one line
    per row with its values and flags) into ``folder``."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "audit.json", "csv": out / "audit.csv"}
    paths["json"].write_text(audit_json_text(a), encoding="utf-8")
    paths["csv"].write_text(a.to_csv(), encoding="utf-8")
    return paths
