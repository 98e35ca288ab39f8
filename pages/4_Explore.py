"""Explore & explain: kernel heatmap, embedding map, comparison of selections, explanations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

import studio  # noqa: F401  (first: imports the engine once, see studio/__init__.py)
from delift_core.outputs.views import (cluster_order, compare_selections, decision_status,
                                       heatmap_view, hover_safe, rank_order)
from delift_core.outputs import figures
from studio import state, ui

ui.setup("Explore & explain", "🗺️")
s = state.ss()
sel = ui.need("pool", "kernels", "selection")
pool = sel.pool
ui.learned_fidelity(sel.kernels)
selected = set(sel.selected_ids)


def pool_embeddings() -> np.ndarray:
    with st.spinner("Embedding the samples (once)…"):
        return state.embeddings(pool)


def map_frame(method: str) -> pd.DataFrame:
    """Pool (and target/existing) points on a shared 2-D map, with hover text and decisions."""
    sets = [("pool", pool)] + [(r, s[f"kernel_{r}"]) for r in ("target", "existing")
                               if s[f"kernel_{r}"] is not None]
    embs = [pool_embeddings()] + [state.embeddings(ds) for r, ds in sets[1:]]
    with st.spinner(f"Projecting with {method.upper()} (the first UMAP run compiles, ~20 s)…"):
        xy = state.projection(np.vstack(embs), method, seed=0)
    rows, start = [], 0
    pool_status = decision_status(sel)
    for (role, ds), e in zip(sets, embs):
        for k in range(len(ds)):
            rid = ds.ids[k]
            status = pool_status[k] if role == "pool" else role
            rows.append({"x": float(xy[start + k, 0]), "y": float(xy[start + k, 1]),
                         "id": rid, "set": role, "status": status,
                         "hover": f"<b>{hover_safe(rid, 40)}</b> ({status})<br>"
                                  f"{hover_safe(ds.prompts[k], 200)}<br><i>→ "
                                  f"{hover_safe(ds.responses[k], 120)}</i>"})
        start += len(ds)
    return pd.DataFrame(rows)


# The map's inputs are slow only the first time (the embedder loads, every sample is embedded,
# UMAP compiles). Tabs render all at once, so a spinner inside the map tab is invisible from the
# heatmap tab: do that work here, above the tabs, with its steps shown.
prep_key = (pool.text_sha256, s["p_embedder"], s.get("p_map_method", "umap"),
            tuple(s[f"kernel_{r}"].text_sha256 for r in ("target", "existing")
                  if s[f"kernel_{r}"] is not None))
if s.get("_explore_prepared") != prep_key:
    with st.status("Preparing the embedding map (first open only) …", expanded=True) as status:
        try:
            st.write(f"Embedding the {len(pool):,} samples with {s['p_embedder']} …")
            state.embeddings(pool)
            method0 = s.get("p_map_method", "umap")
            st.write(f"Projecting with {method0.upper()}"
                     + (" (the first UMAP run compiles, about 20 s) …" if method0 == "umap"
                        else " …"))
            map_frame(method0)
            status.update(label="Embedding map ready", state="complete", expanded=False)
            s["_explore_prepared"] = prep_key
        except Exception as e:  # noqa: BLE001 - the heatmap still renders; said in one line
            status.update(label="The embedding map could not be prepared", state="error")
            st.error(ui.md_escape(f"{type(e).__name__}: {str(e)[:400]}"))

tab_heat, tab_map, tab_cmp, tab_explain = st.tabs(
    ["Utility heatmap", "Embedding map", "Compare selections", "Explain a sample"])

with tab_heat:
    c1, c2, c3 = st.columns(3)
    by = c1.radio("Order rows and columns by", ["rank", "cluster"], horizontal=True,
                  key="p_heat_order", format_func={"rank": "greedy rank (selected first)",
                                                   "cluster": "embedding cluster"}.get)
    s.setdefault("p_heat_max", 160)
    max_size = c2.slider("Most rows drawn", 20, 400, step=10, key="p_heat_max")
    mode = c3.radio("Above that", ["sample", "aggregate"], horizontal=True, key="p_heat_mode",
                    format_func={"sample": "sample rows", "aggregate": "average blocks"}.get)
    order = rank_order(sel)
    if by == "cluster":
        s.setdefault("p_clusters", 8)
        order = cluster_order(state.clusters(pool_embeddings(), int(s["p_clusters"])), order)
    kernel = sel.kernels.scaled("pool")
    view = heatmap_view(kernel, order, max_size=int(max_size), mode=mode)
    if view.notice:
        st.info(view.notice)
    n_sel = None
    if by == "rank" and view.mode == "full":
        n_sel = sel.budget
    kind = state.SHORT_KERNEL[s["kernel_config"]["kind"]]
    st.plotly_chart(figures.heatmap_figure(view, pool, n_sel,
                                           f"{kind} pool kernel (scaled to [0, 1])"),
                    key="heatmap")
    st.caption("Cell (i, j): how much sample j helps sample i as an in-context example (DELIFT) "
               "or their similarity (DELIFT-SE). The dotted lines separate the selected rows.")

with tab_map:
    c1, c2, c3 = st.columns(3)
    method = c1.radio("Projection", ["umap", "pca"], horizontal=True, key="p_map_method",
                      format_func=str.upper)
    colour_options = ["status", "cluster"] + [
        c for c in pool.columns if c not in ("id",) and
        1 < len({str(r.get(c)) for r in pool.rows}) <= 20]
    colour = c2.selectbox("Colour by", colour_options, key="p_map_colour",
                          format_func=lambda c: {"status": "decision", "cluster": "cluster (k-means)"}
                          .get(c, f"column '{c}'"))
    s.setdefault("p_clusters", 8)
    k = c3.slider("Clusters", 2, 20, key="p_clusters", disabled=colour != "cluster")
    if s.get("_explore_prepared") != prep_key:  # preparing it failed: said above the tabs
        st.warning("The embedding map is not available: see the message above the tabs.")
    else:
        frame = map_frame(method)
        if colour == "cluster":
            labels = state.clusters(pool_embeddings(), int(k))
            frame.loc[frame["set"] == "pool", "cluster"] = [f"cluster {c + 1}" for c in labels]
            frame["cluster"] = frame["cluster"].fillna(frame["set"])
        elif colour not in ("status",):
            values = {rid: str(r.get(colour)) for rid, r in zip(pool.ids, pool.rows)}
            frame[colour] = [values.get(i, "") if st_ == "pool" else st_
                             for i, st_ in zip(frame["id"], frame["set"])]
        fig = figures.map_figure(frame, colour,
                                 colours=figures.STATUS_COLOURS if colour == "status" else None,
                                 title=f"{len(selected)} selected of {len(pool)} · "
                                       "lasso or box to list")
        event = st.plotly_chart(fig, key="map", on_select="rerun",
                                selection_mode=("points", "box", "lasso"))
        picked = []
        for p in (event.selection.points if event and event.selection else []):
            cd = p.get("customdata")
            picked.append(cd[0] if isinstance(cd, list) else cd)
        if picked:
            by_id = frame.drop_duplicates("id").set_index("id")
            st.write(f"{len(picked)} samples in the selection on the map:")
            table = pd.DataFrame({"id": picked, "set": [by_id.at[i, "set"] for i in picked],
                                  "decision": [by_id.at[i, "status"] for i in picked]})
            ann = sel.annotate().set_index("id")
            ranks = [ann.at[i, "rank"] if i in ann.index else pd.NA for i in picked]
            # "–": not selected
            table["rank"] = [str(int(r)) if pd.notna(r) else "–" for r in ranks]
            texts = {}
            for role in ("pool", "target", "existing"):
                ds = pool if role == "pool" else s[f"kernel_{role}"]
                if ds is not None:
                    texts.update({(role, i): (p_, r_) for i, p_, r_ in
                                  zip(ds.ids, ds.prompts, ds.responses)})
            table["prompt"] = [texts.get((r, i), ("", ""))[0] for r, i in zip(table["set"], picked)]
            table["response"] = [texts.get((r, i), ("", ""))[1]
                                 for r, i in zip(table["set"], picked)]
            st.dataframe(table, hide_index=True, width="stretch")
        else:
            st.caption("Draw a lasso or a box on the map (or click a point) to list those samples.")

with tab_cmp:
    snaps = s["snapshots"]
    st.write("Every selection you make is kept here under its method, so you can compare e.g. "
             "DELIFT, DELIFT-SE and the random baseline: change the objective on the Selection "
             "page or compute another kernel, then come back.")
    if len(snaps) < 2:
        st.info(f"Only one selection so far ({', '.join(snaps)}). Make another one to compare, "
                "e.g. pick 'random order' as the objective on the Selection page.")
    else:
        names = list(snaps)
        c1, c2 = st.columns(2)
        a = c1.selectbox("Selection A", names, index=len(names) - 2, key="cmp_a")
        b = c2.selectbox("Selection B", names, index=len(names) - 1, key="cmp_b")
        sa, sb = snaps[a], snaps[b]
        base = sa.pool if len(sa.pool) <= len(sb.pool) else sb.pool
        cmp = compare_selections(sa.selected_ids, sb.selected_ids, base.ids, ("A", "B"))
        for note in cmp.notes:
            st.caption(note)
        m = st.columns(5)
        m[0].metric("In both", cmp.counts["both"])
        m[1].metric("Only A", cmp.counts["only A"])
        m[2].metric("Only B", cmp.counts["only B"])
        m[3].metric("In neither", cmp.counts["neither"])
        m[4].metric("Jaccard overlap", f"{cmp.jaccard:.2f}")
        st.caption(f"A = {a} ({sa.budget} rows) · B = {b} ({sb.budget} rows) · over "
                   f"{len(base)} pool rows")
        if base is pool or base.ids == pool.ids:
            cf = map_frame(s.get("p_map_method", "umap"))
            status = dict(zip(cmp.ids, cmp.status))
            cf = cf[cf["set"] == "pool"].copy()
            cf["comparison"] = [status.get(i, "neither") for i in cf["id"]]
            st.plotly_chart(figures.map_figure(
                cf, "comparison", title="Where the two selections differ",
                colours=figures.STATUS_COLOURS), key="cmp_map")
        diff = cmp.frame()
        diff = diff[diff["status"].str.startswith("only")]
        diff["prompt"] = [base.prompts[base.index_of(i)] for i in diff["id"]]
        st.dataframe(diff, hide_index=True, width="stretch")

with tab_explain:
    ids = pool.ids
    s.setdefault("p_explain_id", sel.selected_ids[0] if sel.selected_ids else ids[0])
    if s["p_explain_id"] not in ids:
        s["p_explain_id"] = ids[0]
    rid = st.selectbox("Sample", ids, key="p_explain_id",
                       format_func=lambda i: f"{'✓' if i in selected else '✗'} "
                                             f"{ui.short(pool, i)}")
    ui.sample_text(pool, rid, height=120)
    ui.show_explanation(sel, rid)
