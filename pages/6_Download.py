"""Download: the selected and rejected rows in the input's own layout, tables, decisions, manifest."""

from __future__ import annotations

import io
import json
import zipfile

import streamlit as st

import studio  # noqa: F401  (first: imports the engine once, see studio/__init__.py)
from delift_core.outputs.audit import audit
from delift_core.errors import DeliftError, MissingDependencyError
from delift_core.outputs.export import EXPORT_FORMATS, default_format, selection_artifacts
from delift_core.outputs.report import build_report
from studio import state, ui

ui.setup("Download", "⬇️")
s = state.ss()
sel = ui.need("pool", "kernels", "selection")


@st.cache_data(show_spinner=False, max_entries=8)
def artifacts(_sel, key: tuple, fmt: str, escape_csv: bool, _target, _existing, _full_pool,
              _decisions
              ) -> dict[str, bytes]:
    """The export files (the same bytes `delift select` writes), cached per selection."""
    return selection_artifacts(_sel, fmt, target=_target, existing=_existing,
                               full_pool=_full_pool, decisions=_decisions, escape_csv=escape_csv)


own = default_format(sel.pool)
s.setdefault("p_format", own)
fmt = ui.setting_widget("format", options=list(EXPORT_FORMATS),
                        format_func=lambda f: f + (" (the input's own)" if f == own else ""),
                        help="The row files' format (hf folders: `delift select --format hf`).")
escape_csv = bool(ui.setting_widget("csv_escape")) if fmt == "csv" else False
full_pool = s["pool"] if s["pool"] is not None and len(s["pool"]) > len(sel.pool) else None
decisions = s["decisions"]
key = (s["kernels_version"], s["_sid"], sel.objective, sel.budget, tuple(sel.selected_ids),
       tuple(sel.pinned), tuple(sel.banned), str(sel.params), decisions.to_json(),
       len(full_pool) if full_pool is not None else 0)
files = artifacts(sel, key, fmt, escape_csv, **{f"_{k}": v for k, v in state.extra_sets().items()},
                  _full_pool=full_pool, _decisions=decisions)

st.write(f"**{sel.budget}** of {len(sel.pool)} rows selected with {sel.objective.upper()}; the "
         "row files keep every original field in the input's layout.")
if full_pool is not None:
    st.warning(f"The kernel covered only the first {len(sel.pool)} of the {len(full_pool)} pool "
               f"rows. The other {len(full_pool) - len(sel.pool)} rows were not considered: they "
               f"are in left_out.{fmt}, so selected + rejected + left out (+ skipped) is the whole "
               "pool. Raise N on the Model & kernel page to select from more rows.")
MIME = {"jsonl": "application/jsonl", "json": "application/json", "csv": "text/csv",
        "parquet": "application/octet-stream"}
DESCRIBE = {"selected": "the selected rows", "rejected": "the rows not selected",
            "skipped": "rows skipped on loading (empty prompt or response)",
            "left_out": "pool rows beyond the first N the kernel covered (not considered)",
            "annotated": "every row with decision, rank, gain and best cover",
            "selection": "ordered ids, gains, objective value and parameters",
            "manifest": "inputs with hashes, models, objective, budget, versions",
            "decisions": "your pins, bans and notes (load it on the Review page)"}
for name, data in files.items():
    stem, ext = name.rsplit(".", 1)
    c1, c2 = st.columns([2, 3])
    c1.download_button(name, data, file_name=name, mime=MIME.get(ext, "text/plain"),
                       key=f"dl_{name}", icon=":material/download:", type="primary" if stem == "selected" else "secondary")
    c2.caption(f"{DESCRIBE.get(stem, '')} · {len(data):,} bytes")

buf = io.BytesIO()
with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
    for name, data in files.items():
        z.writestr(name, data)
st.download_button("Everything as a zip", buf.getvalue(), file_name="delift_selection.zip",
                   mime="application/zip", key="dl_zip",
                   icon=":material/folder_zip:")
with st.expander("manifest.json"):
    st.code(files["manifest.json"].decode("utf-8"), language="json")

st.divider()
st.subheader("A report to share")
st.write("One self-contained HTML file a stakeholder can open from an e-mail, with no network: "
         "what was selected from what and how, the gain curve, the composition by cluster (and "
         "by a column you choose), the embedding map, the heatmap, the evaluation (when the "
         "Evaluate page has one), the audit summary, sample rows with the why of each, and the "
         "manifest.")
label_cols = [c for c in sel.pool.columns if c not in ("id",)]
r1, r2 = st.columns([2, 3])
label_col = r1.selectbox("Break the composition down by a column (optional)",
                         ["(none)", *label_cols], key="p_report_label")
if r1.button("Build the HTML report", key="build_report", icon=":material/summarize:"):
    with st.spinner("Building the report (embeddings, map, heatmap, audit) ..."):
        try:
            emb = state.embeddings(sel.pool)
            try:
                labels = state.clusters(emb, 8)
            except MissingDependencyError:
                labels = None
            ev = s.get("ev_report")
            html_text = build_report(
                sel, manifest=json.loads(files["manifest.json"]), embeddings=emb,
                clusters=labels, label_col=None if label_col == "(none)" else label_col,
                audit=audit(sel.pool, s["kernels"], selection=sel, embeddings=emb,
                            clusters=labels),
                evaluation=ev.to_json() if ev is not None else None,
                map_method=s.get("p_map_method", "umap"))
        except DeliftError as e:
            st.error(str(e))
        else:
            s["_report_html"] = (key, html_text.encode("utf-8"))
made = s.get("_report_html")
if made and made[0] == key:
    r2.download_button(f"report.html ({len(made[1]) / 1e6:.1f} MB)", made[1],
                       file_name="delift_report.html", mime="text/html", key="dl_report",
                       icon=":material/download:", type="primary")
elif made:
    r2.caption("The selection changed since the report was built: build it again.")
