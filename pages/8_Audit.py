"""Audit: what the kernel says about the data, finding by finding, with one-click ban / pin."""

from __future__ import annotations

from dataclasses import asdict

import streamlit as st

import studio  # noqa: F401  (first: imports the engine once, see studio/__init__.py)
from delift_core.errors import DeliftError, MissingDependencyError
from delift_core.outputs.audit import DEFAULT_CLUSTERS, audit_pool, audit_settings
from delift_core.outputs.audit_findings import FINDINGS
from studio import decisions as bulk
from studio import state, ui

ui.setup("Audit", "🔎")
s = state.ss()
sel = ui.need("pool", "kernels", "selection")
pool = sel.pool
kernels = s["kernels"]

st.write("What the kernel says about each row, beyond the selection: rows the model already "
         "knows, rows that make the model worse as examples, rows nothing helps, rows that only "
         "help themselves, near-duplicates and the rows the selection covers worst. The utility "
         "findings need the DELIFT utility kernel; near-duplicates and clusters use the sentence "
         "embeddings. Ban or pin the rows of a finding in one click: the selection re-runs with "
         "them on every page, and the Review page can undo it.")

# one slider per threshold of the findings registry, the findings spread over three columns
with st.expander("Thresholds", expanded=False):
    cols = st.columns(3)
    values = {}
    for pos, finding in enumerate(FINDINGS.values()):
        col = cols[pos * len(cols) // len(FINDINGS)]
        for t in finding.thresholds:
            low, high = t.slider_range
            values[t.name] = col.slider(t.label, low, high, t.default, t.step, help=t.help,
                                        key=f"p_audit_{t.name}")
    k = cols[-1].number_input("Clusters (k-means)", 2, 30, DEFAULT_CLUSTERS, key="p_audit_k")
settings = audit_settings(values)

emb = None
try:
    with st.spinner("Embedding the pool for near-duplicates and clusters ..."):
        emb = state.embeddings(pool)
except MissingDependencyError as e:
    st.warning(str(e))
except DeliftError as e:
    st.warning(f"no sentence embeddings: {e}")


@st.cache_data(show_spinner=False, max_entries=8)
def run_audit(key: tuple, _pool, _kernels, _sel, _emb, clusters: int, settings: dict):
    """The audit pipeline on the current selection, cached per kernels, selection, clusters and
    thresholds."""
    return audit_pool(_pool, _kernels, selection=_sel, embeddings=_emb, clusters=clusters,
                      settings=audit_settings(settings))


key = (s["kernels_version"], s["_sid"], tuple(sel.selected_ids), emb is not None)
try:
    with st.spinner("Auditing ..."):
        result = run_audit(key, pool, kernels, sel, emb, int(k), asdict(settings))
except DeliftError as e:
    st.error(str(e))
    st.stop()
for note in result.notes:
    st.warning(note)

decisions = s["decisions"]
st.caption(f"{len(pool)} rows audited · kernel: {result.meta['kernel']}"
           + (" (sparse)" if result.meta["sparse"] else "")
           + f" · selection: {sel.objective.upper()}, {sel.budget} rows · "
           f"{len(decisions.pinned)} pinned, {len(decisions.banned)} banned")

counts = st.columns(len(FINDINGS))
for col, f in zip(counts, result.findings.values()):
    col.metric(f.title, f.count if f.available else "n/a",
               help=f"{f.meaning} " + (f"Rule: {f.rule}." if f.available else
                                       f"n/a: not available for this kernel ({f.reason}); it "
                                       f"needs {f.needs}."))
if any(not f.available for f in result.findings.values()):
    st.caption("n/a: the finding needs something this kernel does not have (hover a count, or "
               "open its tab, for what).")

tabs = st.tabs([f.title for f in result.findings.values()])
for tab, (fkey, f) in zip(tabs, result.findings.items()):
    with tab:
        st.markdown(f"**{f.title}.** {f.meaning}")
        st.caption(f"Needs: {f.needs}." + (f" Rule: {f.rule}." if f.available else ""))
        if not f.available:
            st.info(f"Not available here: {f.reason}.")
            continue
        if not f.ids:
            st.success("No row meets the rule with these thresholds.")
            continue
        rows = result.finding_rows(fkey)
        table = rows[["id", *FINDINGS[fkey].table_columns, "selected", "prompt",
                      "response"]].copy()
        table["pinned"] = table["id"].isin(set(decisions.pinned))
        table["banned"] = table["id"].isin(set(decisions.banned))
        st.dataframe(table, hide_index=True, width="stretch", height=300,
                     key=f"audit_table_{fkey}")
        ids = list(rows["id"])
        if fkey == "near_duplicates":
            st.dataframe([{"group": g["group"], "rows": len(g["ids"]), "ids": ", ".join(g["ids"]),
                           "kept by the selection": ", ".join(g["kept"] or []) or "none",
                           "max cosine": g["max_cosine"]} for g in f.groups],
                         hide_index=True, width="stretch", key="audit_dup_groups")
            spare = [i for g in f.groups for i in
                     ([x for x in g["ids"] if x not in set(g["kept"] or [])]
                      if g["kept"] else g["ids"][1:])]
            b1, b2 = st.columns(2)
            if b1.button(f"Ban the {len(spare)} duplicates the selection did not keep "
                         "(one per group stays)", key="audit_ban_near_duplicates",
                         icon=":material/block:", disabled=not spare):
                n = bulk.bulk("ban", spare, "Audit: ban near-duplicates")
                st.toast(f"Banned {n} rows")
                st.rerun()
            if b2.button(f"Pin these {len(ids)}", key="audit_pin_near_duplicates",
                         icon=":material/push_pin:"):
                n = bulk.bulk("pin", ids, "Audit: pin near-duplicates")
                st.toast(f"Pinned {n} rows")
                st.rerun()
            continue
        if fkey == "coverage" and f.groups:
            st.dataframe(f.groups, hide_index=True, width="stretch", key="audit_cov_groups")
        b1, b2 = st.columns(2)
        if b1.button(f"Ban these {len(ids)}", key=f"audit_ban_{fkey}", icon=":material/block:"):
            n = bulk.bulk("ban", ids, f"Audit: ban {f.title.lower()}")
            st.toast(f"Banned {n} rows")
            st.rerun()
        if b2.button(f"Pin these {len(ids)}", key=f"audit_pin_{fkey}",
                     icon=":material/push_pin:"):
            n = bulk.bulk("pin", ids, f"Audit: pin {f.title.lower()}")
            st.toast(f"Pinned {n} rows")
            st.rerun()

last = bulk.last_step()
if last and st.button(f"Undo: {last}", key="audit_undo", icon=":material/undo:"):
    bulk.undo()
    st.rerun()
ui.link("review", "Next: Review the decisions")
