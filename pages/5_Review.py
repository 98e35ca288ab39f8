"""Review: search and filter every sample, pin / ban / note, save and load the decisions."""

from __future__ import annotations

import streamlit as st

from delift_core import DataError, Decisions
from studio import state, ui

ui.setup("Review", "✍️")
s = state.ss()
sel = ui.need("pool", "kernels", "selection")
pool = sel.pool
decisions: Decisions = s["decisions"]

st.write("Pinned samples are always selected and banned ones never; the selection is re-run "
         "with them at once, on every page. Notes are saved with the decisions.")

table = sel.annotate()
table["note"] = [decisions.notes.get(i, "") for i in table["id"]]
c1, c2 = st.columns([3, 2])
query = c1.text_input("Search prompt, response, id or note", key="p_review_query")
show = c2.selectbox("Show", ["all", "selected", "rejected", "pinned", "banned", "with a note"],
                    key="p_review_filter")
view = table
if query.strip():
    q = query.strip().lower()
    hit = (view["prompt"].str.lower().str.contains(q, regex=False)
           | view["response"].str.lower().str.contains(q, regex=False)
           | view["id"].str.lower().str.contains(q, regex=False)
           | view["note"].str.lower().str.contains(q, regex=False))
    view = view[hit]
view = {"all": view, "selected": view[view["selected"]], "rejected": view[~view["selected"]],
        "pinned": view[view["pinned"]], "banned": view[view["banned"]],
        "with a note": view[view["note"] != ""]}[show]
st.caption(f"{len(view)} of {len(table)} samples · {len(decisions.pinned)} pinned · "
           f"{len(decisions.banned)} banned · {len(decisions.notes)} notes")

visible_ids = list(view["id"])


def on_table_pick() -> None:
    """Clicking a row of the table picks it for the panel below."""
    rows = s["review_table"].selection.rows
    if rows:
        s["p_review_id"] = s["_review_visible"][rows[0]]


s["_review_visible"] = visible_ids
st.dataframe(view[["id", "selected", "rank", "gain", "covered_by", "coverage", "pinned", "banned",
                   "note", "prompt", "response"]],
             hide_index=True, width="stretch", height=340, key="review_table",
             on_select=on_table_pick, selection_mode="single-row")

if not visible_ids:
    st.info("No sample matches.")
else:
    if s.get("p_review_id") not in visible_ids:
        s["p_review_id"] = visible_ids[0]
    rid = st.selectbox("Sample (or click a row above)", visible_ids, key="p_review_id",
                       format_func=lambda i: ui.short(pool, i))
    left, right = st.columns([3, 2])
    with left:
        ui.sample_text(pool, rid, height=140)
        with st.expander("Why this decision?", expanded=True):
            ui.show_explanation(sel, rid)
    with right:
        status = ("pinned" if rid in decisions.pinned else
                  "banned" if rid in decisions.banned else "no override")
        st.metric("Override", status)
        b1, b2, b3 = st.columns(3)
        if b1.button("Pin", key="pin", icon=":material/push_pin:", disabled=status == "pinned"):
            decisions.pin(rid)
            st.rerun()
        if b2.button("Ban", key="ban", icon=":material/block:", disabled=status == "banned"):
            decisions.ban(rid)
            st.rerun()
        if b3.button("Clear", key="clear", disabled=status == "no override"):
            decisions.clear(rid)
            st.rerun()
        note_key = f"note_{rid}"
        if note_key not in s:
            s[note_key] = decisions.notes.get(rid, "")
        note = st.text_area("Note", key=note_key, height=100)
        if st.button("Save note", key="save_note"):
            if note.strip():
                decisions.notes[rid] = note.strip()
            else:
                decisions.notes.pop(rid, None)
            st.rerun()

st.divider()
st.subheader("Save or load decisions")
c1, c2 = st.columns(2)
c1.download_button("Save decisions (decisions.json)", decisions.to_json().encode("utf-8"),
                   "decisions.json", mime="application/json", key="save_decisions")
up = c2.file_uploader("Load decisions (.json)", type=["json"], key="load_decisions")
if up is not None and s.get("_decisions_loaded") != (up.name, up.size, up.file_id):
    try:
        loaded = Decisions.from_json(up.getvalue().decode("utf-8", errors="replace"), up.name)
    except DataError as e:
        c2.error(str(e))
    else:
        s["decisions"] = loaded
        s["_decisions_loaded"] = (up.name, up.size, up.file_id)
        for key in [k for k in s.keys() if isinstance(k, str) and k.startswith("note_")]:
            del s[key]
        unknown = [i for i in [*loaded.pinned, *loaded.banned] if i not in set(pool.ids)]
        if unknown:
            st.warning(f"{len(unknown)} pinned or banned ids are not among the current pool rows "
                       "and are ignored for now.")
        st.rerun()
ui.link("download", "Next: Download")
