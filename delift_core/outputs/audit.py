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

Each finding is one function with its spec (meaning, needs, thresholds) in the registry of
:mod:`delift_core.outputs.audit_findings`; :class:`AuditSettings` has one field per threshold
declared there, and the CLI's threshold options and the studio's sliders are built from it. To
add a finding or a threshold: one function and its spec entry in that module.

:func:`audit` makes the findings from what it is given; :func:`audit_pool` is the whole pipeline
``delift audit`` and the studio's Audit page run (facility location at a budget when no selection
is given, sentence embeddings of the pool, k-means clusters, then :func:`audit`).

A finding whose input is missing is reported as unavailable with the reason, never as empty.
Every threshold is a field of :class:`AuditSettings` and is written into the output.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, make_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import pandas as pd

from delift_core.data.dataset import Dataset
from delift_core.errors import DeliftError, MissingDependencyError
from delift_core.kernels.builder import Kernels
from delift_core.outputs.audit_findings import FINDINGS, AuditInputs, thresholds

if TYPE_CHECKING:  # selection imports the engine; an audit only reads a finished Selection
    from delift_core.selection.select import Selection

__all__ = ["AUDIT_VERSION", "DEFAULT_CLUSTERS", "AuditError", "AuditSettings", "Finding", "Audit",
           "audit", "audit_pool", "audit_settings", "audit_json_text", "plain_distances",
           "write_audit"]

logger = logging.getLogger(__name__)

AUDIT_VERSION = 1

DEFAULT_CLUSTERS = 8
"""k-means clusters the coverage finding is grouped by in :func:`audit_pool` (CLI and studio)."""


class AuditError(DeliftError):
    """An audit cannot be made from what was given (it says what is missing or wrong)."""


def _validate(self: Any) -> None:
    """AuditError naming a threshold outside its range (and its CLI option)."""
    for t in thresholds():
        problem = t.check(getattr(self, t.name))
        if problem:
            raise AuditError(problem)


AuditSettings = make_dataclass(
    "AuditSettings", [(t.name, float, field(default=t.default)) for t in thresholds()],
    frozen=True, namespace={
        "__module__": __name__, "__qualname__": "AuditSettings", "validate": _validate,
        "__doc__": "Thresholds of the findings (all written into the audit's output): one field "
                   "per threshold of :data:`~delift_core.outputs.audit_findings.FINDINGS`, in "
                   "registry order, with its default.\n\nDistances d are in [0, 1] (||1 - p||_2 "
                   "/ sqrt(T) over the response tokens); utilities are differences of distances, "
                   "so in [-1, 1]."})


def audit_settings(values: Mapping[str, Any] | None = None) -> "AuditSettings":
    """The thresholds at their defaults, overridden by ``values`` (None values ignored),
    checked; AuditError names an unknown threshold or a value outside its range."""
    names = {t.name for t in thresholds()}
    given = {k: v for k, v in (values or {}).items() if v is not None}
    unknown = sorted(set(given) - names)
    if unknown:
        raise AuditError(f"unknown audit threshold {', '.join(unknown)}; use one of "
                         f"{', '.join(t.name for t in thresholds())}")
    settings = AuditSettings(**given)
    settings.validate()
    return settings


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
    notes: list[str] = field(default_factory=list)
    """What :func:`audit_pool` left out and why (e.g. no clusters without scikit-learn); shown,
    not written into ``audit.json``."""

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


def _learned_note(kernels: Kernels | None) -> str | None:
    """For a learned kernel, what share of its pool values are predicted and how faithful they
    are: every utility finding then says it stands on predicted values."""
    m = (kernels.meta.learned.get("pool") if kernels is not None else None) or None
    if not m:
        return None
    exact, predicted = int(m.get("exact_pairs", 0)), int(m.get("predicted_pairs", 0))
    v = m.get("verification") or {}
    verified = int(v.get("pairs_verified", 0))  # now exact
    explored = int(v.get("explored_pairs_verified", 0))
    from delift_core.kernels.learned import interval_text, record_words

    f = m.get("fidelity") or {}
    return (f"{(predicted - verified) / max(1, exact + predicted):.0%} of the values are "
            f"predicted (held-out median row Spearman {f.get('row_spearman_median')}"
            f"{interval_text(f, 'row_spearman_interval')}"
            + (", below the fidelity floor" if f.get("below_floor") else "")
            + (f"; {verified - explored:,} "
               + ("of a selection's covers" if record_words(v) == "covers"
                  else "pairs a selection stands on")
               + (f" and {explored:,} pairs of explored columns" if explored else "")
               + " verified exactly" if verified else "")
            + ")")


def plain_distances(kernels: Kernels) -> np.ndarray | None:
    """d(i, plain) per pool row from the utility kernel's meta (computed here or loaded from a
    ``delift kernel`` folder), or None when the kernels do not record them."""
    m = kernels.meta.roles.get("pool")
    if isinstance(m, dict) and m.get("d_plain") is not None:
        return np.asarray(m["d_plain"], np.float64)
    return None


def audit(pool: Dataset, kernels: Kernels | None, *, selection: "Selection | None" = None,
          embeddings: np.ndarray | None = None, clusters: Sequence[int] | None = None,
          settings: "AuditSettings | None" = None) -> Audit:
    """Audit ``pool`` from its kernels (raw utilities when ``kernels`` is a utility kernel),
    optional sentence ``embeddings`` (near-duplicates), a ``selection`` (coverage; its kernels
    are used when ``kernels`` is None) and cluster labels (coverage by cluster): every finding
    of the registry, in its order."""
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
    inputs = AuditInputs(pool, kernels, selection, embeddings,
                         np.asarray(clusters, int) if clusters is not None else None, settings)
    if inputs.utility:
        inputs.d_plain = plain_distances(kernels)
        if inputs.d_plain is not None and len(inputs.d_plain) != n:
            raise AuditError(f"the kernel records {len(inputs.d_plain)} plain distances for {n} "
                             "pool rows")

    rows = pd.DataFrame({"id": list(pool.ids), "prompt": list(pool.prompts),
                         "response": list(pool.responses)})
    flags: list[list[str]] = [[] for _ in range(n)]
    found: dict[str, Finding] = {}
    meta: dict[str, Any] = {"kernel": kernels.kind if inputs.has_kernel else None,
                            "sparse": inputs.sparse}
    learned = _learned_note(kernels)
    if learned:
        meta["learned_kernel"] = learned
    for key, spec in FINDINGS.items():
        out = spec.run(inputs)
        if set(out.columns) != set(spec.columns):
            raise ValueError(f"finding '{key}' wrote columns {sorted(out.columns)}, its spec "
                             f"declares {list(spec.columns)}")
        for column in spec.columns:
            rows[column] = out.columns[column]
        rule = out.rule
        if learned and spec.kernel == "utility" and out.available:  # never shown as exact
            rule = f"{rule}; ON A LEARNED KERNEL: {learned}"
        found[key] = Finding(key, spec.label, spec.meaning, spec.needs, out.available,
                             list(out.ids), out.reason, rule, out.groups or [])
        meta.update(out.meta)
        for rid in out.ids:
            flags[pool.index_of(rid)].append(key)
    rows["selected"] = ([k in inputs.selected for k in range(n)] if selection is not None
                        else False)
    rows["flags"] = flags
    meta["selection"] = ({"objective": selection.objective, "budget": int(selection.budget)}
                         if selection is not None else None)
    meta["clusters"] = (int(len(set(inputs.clusters.tolist())))
                        if inputs.clusters is not None else None)
    logger.info("audit of %d rows: %s", n, ", ".join(
        f"{k} {f.count}" if f.available else f"{k} n/a" for k, f in found.items()))
    return Audit(rows, found, settings, meta)


def audit_pool(pool: Dataset, kernels: Kernels | None, *, selection: "Selection | None" = None,
               budget: str | float | int | None = "0.3", embedder: Any = None,
               embeddings: np.ndarray | None = None, clusters: int | None = DEFAULT_CLUSTERS,
               use_cache: bool = True, settings: "AuditSettings | None" = None) -> Audit:
    """The whole audit of a pool, as ``delift audit`` and the studio run it.

    Without a ``selection``, facility location at ``budget`` on ``kernels`` makes one (None:
    none, so no coverage). ``embeddings`` (or, without them, the ``embedder``'s embeddings of the
    pool's rows, from the cache when ``use_cache``) give the near-duplicates and ``clusters``
    k-means groups for the coverage (None: no clusters). Then :func:`audit`. A step that cannot
    run for a missing optional package is left out with a note in :attr:`Audit.notes`.
    """
    settings = settings or AuditSettings()
    settings.validate()  # before the selection and the embeddings cost anything
    if selection is None and budget is not None and kernels is not None \
            and kernels.pool is not None:
        from delift_core.selection.select import select

        selection = select(pool, "fl", kernels, budget)
        logger.info("audit: facility location selected %d of %d rows", selection.budget,
                    len(pool))
    if embeddings is None and embedder is not None:
        from delift_core.kernels.embedding import embed_rows

        embeddings = embed_rows(embedder, pool, use_cache=use_cache)
    labels, notes = None, []
    if embeddings is not None and clusters is not None:
        from delift_core.outputs.maps import cluster_labels

        try:
            labels = cluster_labels(embeddings, clusters)
        except MissingDependencyError as e:
            notes.append(f"coverage is not grouped by cluster: {e}")
            logger.warning("%s", notes[-1])
    result = audit(pool, kernels, selection=selection, embeddings=embeddings, clusters=labels,
                   settings=settings)
    result.notes.extend(notes)
    return result


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
