"""One self-contained HTML report of a selection, for a stakeholder who opens it from an e-mail.

What was selected from what (method, settings), the gain curve with the budget, the composition of
selected vs rejected rows by cluster (and by a label column), the embedding map, the heatmap
(block averages when large), the evaluation when there is one, the audit summary, a sample of
selected and rejected rows with the why of each, and the manifest. plotly.js is inlined once, so
the file opens with no network. Every text from the data is HTML-escaped (in tables and inside
the figures' JSON), so a row holding ``<script>`` shows as text.

:func:`build_report` makes the HTML from a :class:`~delift_core.selection.select.Selection` (the studio);
:func:`report_from_folder` rebuilds the selection from a ``delift select`` folder (the CLI).
"""

from __future__ import annotations

import html
import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd

from delift_core.data.dataset import Dataset, load_dataset
from delift_core.errors import DeliftError, MissingDependencyError, optional_import
from delift_core.kernels.builder import Kernels
from delift_core.outputs.figures import (STATUS_COLOURS, composition_figure, gain_curve_figure,
                                         heatmap_figure, map_figure, row_label)
from delift_core.outputs.views import explain, gain_curve, heatmap_view, rank_order

if TYPE_CHECKING:
    from delift_core.outputs.audit import Audit
    from delift_core.selection.select import Selection

__all__ = ["ReportError", "build_report", "read_select_folder", "report_from_folder"]

logger = logging.getLogger(__name__)


class ReportError(DeliftError):
    """A report cannot be made from the folder given (it names the folder and what is wrong)."""


# ----------------------------------------------------------------------------------------------
# Reading a `delift select` folder


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReportError(f"{path}: missing; give a `delift select` output folder") from None
    except (OSError, ValueError) as e:
        raise ReportError(f"{path}: not readable JSON ({e})") from None


def read_select_folder(folder: str | Path, pool: Dataset, kernels: Kernels | None) -> "Selection":
    """The :class:`Selection` a ``delift select`` folder records (its greedy order, gains, budget,
    pins and bans), on ``pool`` and ``kernels``; ReportError when the folder is of other rows."""
    from delift_core.selection.select import Selection

    folder = Path(folder)
    sj = _read_json(folder / "selection.json")
    ids = set(pool.ids)
    order_ids = sj.get("greedy_order_ids") or sj.get("selected_ids") or []
    unknown = [i for i in order_ids if i not in ids]
    if sj.get("pool_size") != len(pool) or unknown:
        raise ReportError(f"{folder}: the selection was made on {sj.get('pool_size')} pool rows "
                          f"and the pool given has {len(pool)}"
                          + (f"; ids not in the pool: {unknown[:5]}" if unknown else ""))
    order = np.array([pool.index_of(i) for i in order_ids], np.int64)
    gains = np.asarray(sj.get("greedy_gains") or sj.get("gains") or [np.nan] * len(order), float)
    return Selection(pool=pool, objective=sj.get("objective", "?"), budget=int(sj["budget"]),
                     order=order, gains=gains, values=np.cumsum(gains), kernels=kernels,
                     params=dict(sj.get("params") or {}), pinned=list(sj.get("pinned") or []),
                     banned=list(sj.get("banned") or []), notes=list(sj.get("notes") or []))


def _pool_of(manifest: dict, folder: Path, pool: str | None) -> Dataset:
    """The pool a select folder was made on (the manifest's source, or ``pool``), checked
    against the manifest's text hash (a ``--limit`` run's first rows)."""
    rec = (manifest.get("inputs") or {}).get("pool") or {}
    source = pool or rec.get("source")
    if not source:
        raise ReportError(f"{folder}/manifest.json names no pool source; pass --pool")
    try:
        ds = load_dataset(source)
    except DeliftError as e:
        raise ReportError(f"{folder}: the pool {source} cannot be read again ({e}); pass --pool "
                          "with the file the selection was made on") from None
    rows = rec.get("rows")
    if isinstance(rows, int) and rows < len(ds):
        ds = ds.subset(range(rows))  # the selection ran with --limit
    if rec.get("text_sha256") and rec["text_sha256"] != ds.text_sha256:
        raise ReportError(f"{folder}: the pool {source} is not the data the selection was made on "
                          "(its text hash differs from the manifest's); pass --pool with that file")
    return ds


# ----------------------------------------------------------------------------------------------
# HTML pieces


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _cut(text: str, n: int = 300) -> str:
    t = " ".join(str(text).split())
    return t if len(t) <= n else t[: n - 1] + "…"


def _table(frame: pd.DataFrame, cls: str = "") -> str:
    """An HTML table with every cell escaped."""
    head = "".join(f"<th>{_e(c)}</th>" for c in frame.columns)
    body = "".join("<tr>" + "".join(f"<td>{_e(_fmt(v))}</td>" for v in row) + "</tr>"
                   for row in frame.itertuples(index=False))
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "–"
    if isinstance(v, (float, np.floating)):
        return f"{v:.4g}"
    return str(v)


class _Figures:
    """Plotly figures (from :mod:`delift_core.outputs.figures`) as divs; plotly.js goes into the
    page once (no network needed)."""

    def __init__(self) -> None:
        self.pio = optional_import("plotly.io", "studio", "the HTML report", package="plotly")
        self.count = 0

    def script(self) -> str:
        from plotly.offline import get_plotlyjs

        return f"<script>{get_plotlyjs()}</script>"

    def div(self, fig: Any, height: int | None = None) -> str:
        """The figure in a div ``height`` px high (else as high as its layout says, else 380)."""
        self.count += 1
        fid = f"fig{self.count}"
        height = height or fig.layout.height or 380
        # '<' and '>' as JSON escapes: no text in a figure can close the script element
        spec = self.pio.to_json(fig, validate=False).replace("<", "\\u003c").replace(">",
                                                                                      "\\u003e")
        return (f'<div id="{fid}" class="fig" style="height:{height}px"></div><script>'
                f'(function(){{var f={spec};Plotly.newPlot("{fid}",f.data,f.layout,'
                '{responsive:true,displaylogo:false});})();</script>')


def _composition(groups: Sequence[Any], chosen: np.ndarray, what: str, height: int
                 ) -> tuple[Any, pd.DataFrame]:
    """Selected and rejected counts per group: a stacked bar chart and its table."""
    frame = pd.DataFrame({"group": [str(g) for g in groups], "selected": chosen})
    table = (frame.groupby("group", sort=True)["selected"].agg(["sum", "count"])
             .rename(columns={"sum": "selected", "count": "rows"}).reset_index())
    table["rejected"] = table["rows"] - table["selected"]
    table["selected %"] = (100 * table["selected"] / table["rows"]).round(1)
    table = table.sort_values("rows", ascending=False, kind="stable")
    return composition_figure(table, what, height), table.rename(columns={"group": what})


def _map_figure(xy: np.ndarray, pool: Dataset, chosen: np.ndarray) -> Any:
    """The embedding map: rejected rows, then selected rows drawn over them."""
    idx = np.concatenate([np.flatnonzero(~chosen), np.flatnonzero(chosen)])
    frame = pd.DataFrame({"x": xy[idx, 0], "y": xy[idx, 1],
                          "id": [pool.ids[k] for k in idx],
                          "hover": [row_label(pool, [k]) for k in idx],
                          "status": np.where(chosen[idx], "selected", "rejected")})
    return map_figure(frame, "status", colours=STATUS_COLOURS, height=520, dragmode="zoom")


def _heatmap_figure(selection: "Selection") -> tuple[Any, str]:
    """The pool kernel in greedy rank order (block averages above 120 rows) and its note."""
    kernel = selection.kernels.scaled("pool")
    view = heatmap_view(kernel, rank_order(selection), max_size=120, mode="aggregate")
    n_selected = len(selection.selected_indices) if view.mode == "full" else None
    fig = heatmap_figure(view, selection.pool, n_selected, height=620)
    note = view.notice or f"All {len(view.rows)} rows, in greedy rank order (selected first)."
    return fig, note


def _why(selection: "Selection", row_id: str, annotated: pd.DataFrame | None) -> str:
    """One line: why this row is in or out."""
    ex = explain(selection, row_id, top=3)
    pin = " (pinned)" if ex.pinned else " (banned)" if ex.banned else ""
    if ex.selected:
        line = f"picked {ex.rank}. with marginal gain {ex.gain:.4g}{pin}"
        if ex.covers:
            line += "; covers best: " + ", ".join(f"{i} ({v:.3f})" for i, v in ex.covers)
        return line
    if ex.covered_by is not None:
        line = f"not picked{pin}: best covered by {ex.covered_by} ({ex.coverage:.3f})"
        if ex.alternatives:
            line += "; next: " + ", ".join(f"{i} ({v:.3f})" for i, v in ex.alternatives)
        return line
    if annotated is not None and row_id in set(annotated["id"]):
        r = annotated[annotated["id"] == row_id].iloc[0]
        if str(r.get("covered_by") or "") not in ("", "nan"):
            return (f"not picked{pin}: best covered by {r['covered_by']} "
                    f"({float(r['coverage']):.3f}, from annotated.csv)")
    return f"not picked{pin}" + ("" if ex.banned else ": no kernel to say which row covers it")


def _samples(selection: "Selection", n: int, annotated: pd.DataFrame | None) -> str:
    pool = selection.pool
    sel = [int(k) for k in selection.selected_indices]
    chosen = set(sel)
    rest = [k for k in range(len(pool)) if k not in chosen]
    rng = np.random.default_rng(0)
    rej = sorted(rng.choice(rest, size=min(n, len(rest)), replace=False).tolist()) if rest else []
    out = []
    for title, idx in ((f"Selected: the first {min(n, len(sel))} by greedy rank", sel[:n]),
                       (f"Rejected: {len(rej)} at random (seed 0)", rej)):
        frame = pd.DataFrame({"id": [pool.ids[k] for k in idx],
                              "prompt": [_cut(pool.prompts[k]) for k in idx],
                              "response": [_cut(pool.responses[k]) for k in idx],
                              "why": [_why(selection, pool.ids[k], annotated) for k in idx]})
        out.append(f"<h3>{_e(title)}</h3>" + _table(frame, "rows"))
    return "".join(out)


def _evaluation(F: _Figures, evaluation: dict) -> str:
    from delift_core.evaluation.report import EvalReport

    rep = EvalReport(rows=evaluation.get("rows") or [], items=evaluation.get("items") or [],
                     settings=evaluation.get("settings") or {}, meta=evaluation.get("meta") or {})
    summ = pd.DataFrame(rep.summary())
    keep = [c for c in ("mode", "subset", "kind", "size", "seed", "nll", "nll_sd", "distance",
                        "distance_sd", "rouge_l", "rouge_l_sd", "cosine", "cosine_sd",
                        "exact_match", "exact_match_sd", "n_test") if c in summ.columns]
    text = ("<p>Random subsets show the mean and, in the _sd columns, the standard deviation over "
            "their seeds: a subset is only better than random where the gap is larger than "
            "that spread. Lower NLL and distance are better.</p>")
    out = text + _table(summ[keep]) + F.div(rep.figure(), 440)
    comps = rep.comparisons()
    if comps:  # each subset's gain over random beside what its selection cost
        from delift_core.selection.cost import cost_cell

        costs = {r["subset"]: (r.get("subset_info") or {}).get("cost") for r in rep.rows}
        frame = pd.DataFrame([{"mode": c["mode"], "subset": c["subset"], "metric": c["metric"],
                               "difference vs random": round(c["mean_diff"], 4),
                               "95 % interval": f"[{c['low']:+.4f}, {c['high']:+.4f}]",
                               "verdict": c["verdict"],
                               "what the selection cost": cost_cell(costs.get(c["subset"]))}
                              for c in comps])
        out += ("<p>Each subset against random, paired per test item (negative = the subset "
                "is better), beside what its selection cost (model passes, texts embedded, "
                "seconds on the machine that made it).</p>") + _table(frame)
    return out


def _audit_html(a: "Audit") -> str:
    frame = pd.DataFrame([{"finding": f.title, "rows": f.count if f.available else None,
                           "rule": f.rule if f.available else f"not available: {f.reason}",
                           "meaning": f.meaning, "first rows": ", ".join(f.ids[:6])}
                          for f in a.findings.values()])
    return _table(frame, "audit")


def _check_label(pool: Dataset, label_col: str) -> None:
    """ReportError unless some pool row has the column ``label_col``."""
    if not any(label_col in r for r in pool.rows):
        raise ReportError(f"--label-col {label_col}: no pool row has that column; columns: "
                          f"{', '.join(pool.columns[:20])}")


CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;
max-width:1180px;color:#222;padding:0 16px}h1{margin-bottom:4px}h2{margin-top:36px;
border-bottom:1px solid #ddd;padding-bottom:4px}table{border-collapse:collapse;width:100%;
font-size:13px;margin:8px 0}th,td{border:1px solid #e2e2e2;padding:4px 6px;text-align:left;
vertical-align:top}th{background:#f6f6f6}td{max-width:420px;overflow-wrap:anywhere}
.lead{font-size:17px}.note{color:#666;font-size:13px}.warn{color:#a33;font-weight:600}pre{background:#f6f6f6;padding:10px;
overflow:auto;max-height:480px;font-size:12px}.fig{width:100%}"""


def build_report(selection: "Selection", *, manifest: dict | None = None,
                 embeddings: np.ndarray | None = None, clusters: Sequence[int] | None = None,
                 label_col: str | None = None, audit: "Audit | None" = None,
                 evaluation: dict | None = None, sample: int = 10, title: str | None = None,
                 annotated: pd.DataFrame | None = None, map_method: str = "umap") -> str:
    """The report's HTML text. ``embeddings`` give the map (and, with ``clusters``, the
    composition by cluster); ``label_col`` a composition by that pool column; ``evaluation`` is
    a ``delift evaluate`` results.json; ``annotated`` (annotated.csv) says the best cover of
    rejected rows when the selection has no kernel."""
    F = _Figures()
    pool = selection.pool
    n, b = len(pool), len(selection.selected_indices)
    chosen = np.zeros(n, bool)
    chosen[np.asarray(selection.selected_indices, int)] = True
    manifest = manifest or {}
    src = ((manifest.get("inputs") or {}).get("pool") or {}).get("source") or pool.source
    kind = (selection.params or {}).get("kernel") or manifest.get("kernel") or "no"
    params = {k: v for k, v in (selection.params or {}).items() if v is not None}
    parts = [f"<h1>{_e(title or 'DELIFT selection report')}</h1>",
             f'<p class="lead"><b>{b:,}</b> of <b>{n:,}</b> rows selected from '
             f"<code>{_e(src)}</code> by <b>{_e(selection.objective.upper())}</b> on the "
             f"<b>{_e(kind)}</b> kernel (objective value {selection.objective_value:.4g}).</p>",
             f'<p class="note">Settings: {_e(", ".join(f"{k}={v}" for k, v in params.items()))}'
             + (f"; {len(selection.pinned)} pinned, {len(selection.banned)} banned by hand"
                if selection.pinned or selection.banned else "")
             + f". Made {_e(time.strftime('%Y-%m-%d %H:%M'))}.</p>"]
    cost = manifest.get("cost") or selection.cost()
    from delift_core.selection.cost import cost_line

    parts.append(f'<p class="note"><b>Cost.</b> {_e(cost_line(cost).removeprefix("cost: "))}'
                 ".</p>")
    learned = (selection.kernels.meta.learned if selection.kernels is not None else {}) or \
        (manifest.get("learned_kernel") or {})
    for role, m in learned.items():  # a learned kernel is never presented as an exact one
        from delift_core.kernels.learned import fidelity_line

        cls = "warn" if (m.get("fidelity") or {}).get("below_floor") else "note"
        parts.append(f'<p class="{cls}"><b>Learned kernel.</b> {_e(fidelity_line(role, m))}.</p>')
    contents = []

    def section(anchor: str, name: str, body: str) -> None:
        contents.append(f'<a href="#{anchor}">{_e(name)}</a>')
        parts.append(f'<h2 id="{anchor}">{_e(name)}</h2>{body}')

    section("gain", "Gain curve", "<p>The objective value as rows are added in greedy order; "
            "the dashed line is the budget. A flat curve past the budget means more rows add "
            "little.</p>" + F.div(gain_curve_figure(gain_curve(selection), selection.budget)))

    comp = []
    if clusters is not None:
        fig, table = _composition(np.asarray(clusters), chosen, "cluster", 320)
        comp.append("<h3>By cluster (k-means of the sentence embeddings)</h3>" + F.div(fig)
                    + _table(table))
    if label_col:
        _check_label(pool, label_col)
        labels = [r.get(label_col, "(none)") for r in pool.rows]
        fig, table = _composition(labels, chosen, label_col, 340)
        comp.append(f"<h3>By {_e(label_col)}</h3>" + F.div(fig) + _table(table))
    section("composition", "Composition: selected vs rejected",
            "".join(comp) or '<p class="note">No embeddings or label column were given.</p>')

    if embeddings is not None:
        from delift_core.outputs.maps import project_2d

        try:
            xy = project_2d(embeddings, method=map_method, seed=0)
            how = map_method.upper()
        except MissingDependencyError:
            xy, how = project_2d(embeddings, method="pca"), "PCA (umap-learn is not installed)"
        section("map", "Embedding map", f'<p class="note">{_e(how)} of the sentence embeddings; '
                "red: selected, blue: rejected. Hover a point for its prompt.</p>"
                + F.div(_map_figure(np.asarray(xy), pool, chosen)))

    if selection.kernels is not None and selection.kernels.pool is not None:
        fig, note = _heatmap_figure(selection)
        section("heatmap", "Kernel heatmap", f'<p class="note">{_e(note)} Rows are the rows '
                "helped, columns the in-context examples; selected rows come first.</p>"
                + F.div(fig))
    else:
        section("heatmap", "Kernel heatmap", '<p class="note">Not shown: the selection folder '
                "does not hold its kernel; pass the `delift kernel` folder with --kernel.</p>")

    if evaluation is not None:
        section("evaluation", "Evaluation", _evaluation(F, evaluation))
    if audit is not None:
        section("audit", "Audit", "<p>What the kernel says about the rows (thresholds in the "
                "rule column; every value is in audit.json / the studio's Audit page).</p>"
                + _audit_html(audit))
    section("samples", "Sample rows and why", _samples(selection, sample, annotated))
    section("manifest", "Manifest", "<pre>" + _e(json.dumps(manifest, indent=1, default=str))
            + "</pre>")
    nav = '<p class="note">' + " · ".join(contents) + "</p>"
    parts.insert(3, nav)
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_e(title or 'DELIFT selection report')}</title><style>{CSS}</style>"
            f"{F.script()}</head><body>{''.join(parts)}</body></html>")


def report_from_folder(select_dir: str | Path, *, pool: str | None = None,
                       kernel: str | Path | None = None, evaluation: str | Path | None = None,
                       label_col: str | None = None, clusters: int = 8, sample: int = 10,
                       embedder: str | None = None, device: str | None = None,
                       html_path: str | Path | None = None, audit_result: Any = None) -> Path:
    """Write ``report.html`` (or ``html_path``) for a ``delift select`` folder: the pool is read
    again from the manifest's source (or ``pool``) and checked against its hash; the kernel
    from ``kernel`` (a ``delift kernel`` folder), else recomputed when it was an embedding
    kernel, else left out (said in the report)."""
    from delift_core.outputs.audit import audit as run_audit
    from delift_core.kernels.embedding import embed_rows, embedding_kernel
    from delift_core.outputs.maps import cluster_labels
    from delift_core.lm.models import load_embedder
    from delift_core.kernels.files import load_kernels

    folder = Path(select_dir)
    if not folder.is_dir():
        raise ReportError(f"{select_dir}: not a folder; give a `delift select` output folder")
    manifest = _read_json(folder / "manifest.json")
    ds = _pool_of(manifest, folder, pool)
    if label_col:
        _check_label(ds, label_col)  # before any work
    emb = embed_rows(load_embedder(embedder, device=device), ds)
    kind = manifest.get("kernel")
    if kernel is not None:
        kernels = load_kernels(kernel, ds)
    elif kind == "embedding":
        kernels = Kernels("embedding", pool=embedding_kernel(emb, emb),
                          meta={"note": "recomputed from the embeddings for the report"})
    else:
        kernels = None
    selection = read_select_folder(folder, ds, kernels)
    try:
        labels = cluster_labels(emb, clusters)
    except MissingDependencyError as e:
        logger.warning("no clusters in the report: %s", e)
        labels = None
    ev = None
    if evaluation is not None:
        ev = _read_json(Path(evaluation) / "results.json" if Path(evaluation).is_dir()
                        else Path(evaluation))
    annotated = None
    if (folder / "annotated.csv").exists():
        annotated = pd.read_csv(folder / "annotated.csv", dtype={"id": str, "covered_by": str})
    a = audit_result or run_audit(ds, kernels, selection=selection if kernels else None,
                                  embeddings=emb, clusters=labels)
    text = build_report(selection, manifest=manifest, embeddings=emb, clusters=labels,
                        label_col=label_col, audit=a, evaluation=ev, sample=sample,
                        annotated=annotated,
                        title=f"DELIFT selection report: {folder.name}")
    out = Path(html_path) if html_path else folder / "report.html"
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, out)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise ReportError(f"{out}: cannot write the report ({e})") from None
    logger.info("report: %s, %.1f MB", out, out.stat().st_size / 1e6)
    return out
