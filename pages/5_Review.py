"""Review: filter every sample, then pin / ban / note many at once (an editable table and bulk
buttons, one undoable step each), or one at a time; save and load the decisions."""

from __future__ import annotations

import hashlib

import streamlit as st

import studio  # noqa: F401  (first: imports the engine once, see studio/__init__.py)
from delift_core.errors import DataError
from delift_core.outputs.review import Decisions
from studio import decisions as bulk
from studio import state, ui

ui.setup("Review", "✍️")
s = state.ss()
sel = ui.need("pool", "kernels", "selection")
pool = sel.pool
s.setdefault("_decisions_baseline", s["decisions"].copy())
decisions: Decisions = s["decisions"]

st.write("Pinned samples are always selected and banned ones never; the selection is re-run "
         "with them at once, on every page. Filter the table, then tick pin / ban or type notes "
         "in it (arrow keys move, space ticks, Enter edits) and apply them together, or pin, ban "
         "or note every sample shown at once. Each bulk step can be undone.")

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
visible_ids = list(view["id"])
# pins and bans as the decisions hold them (the selection's own flags lag one rerun behind)
view = view.assign(pin=view["id"].isin(set(decisions.pinned)),
                   ban=view["id"].isin(set(decisions.banned)))
st.caption(f"{len(view)} of {len(table)} samples shown · {len(decisions.pinned)} pinned · "
           f"{len(decisions.banned)} banned · {len(decisions.notes)} notes · "
           f"**{bulk.changes()} rows changed** since the decisions were started or loaded")



def fresh_editor() -> None:
    """Start the editable table again from the decisions (after a step changed them)."""
    s["_review_editor_n"] = s.get("_review_editor_n", 0) + 1


# -- bulk buttons over every sample shown
b1, b2, b3, b4 = st.columns(4)
label = f"{show} samples" + (f" matching '{query.strip()}'" if query.strip() else "")
if b1.button(f"Pin all {len(visible_ids)} shown", key="bulk_pin", icon=":material/push_pin:",
             disabled=not visible_ids):
    bulk.bulk("pin", visible_ids, f"pin {label}")
    fresh_editor()
    st.rerun()
if b2.button(f"Ban all {len(visible_ids)} shown", key="bulk_ban", icon=":material/block:",
             disabled=not visible_ids):
    bulk.bulk("ban", visible_ids, f"ban {label}")
    fresh_editor()
    st.rerun()
if b3.button(f"Clear all {len(visible_ids)} shown", key="bulk_clear", disabled=not visible_ids):
    bulk.bulk("clear", visible_ids, f"clear {label}")
    fresh_editor()
    st.rerun()
last = bulk.last_step()
if b4.button("Undo the last bulk step", key="bulk_undo", icon=":material/undo:",
             disabled=last is None, help=f"undo: {last}" if last else "no bulk step yet"):
    bulk.undo()
    fresh_editor()
    st.rerun()
if last:
    st.caption(f"Last bulk step: {last}")
with st.popover("Note all shown"):
    bulk_note = st.text_input("Note for every sample shown (empty removes their notes)",
                              key="p_bulk_note")
    if st.button(f"Set the note on {len(visible_ids)} samples", key="bulk_note",
                 disabled=not visible_ids):
        bulk.bulk("note", visible_ids, f"note {label}", bulk_note)
        fresh_editor()
        st.rerun()

# -- the editable table: tick pin / ban, type notes, apply them as one step
# keyed by the rows shown too: edits are kept by row position, so another filter starts afresh
shown_key = hashlib.sha256("\n".join(visible_ids).encode("utf-8")).hexdigest()[:12]
editor_key = f"review_editor_{s.get('_review_editor_n', 0)}_{shown_key}"
shown = view[["id", "pin", "ban", "note", "selected", "rank", "gain", "covered_by", "coverage",
              "prompt", "response"]].reset_index(drop=True)
edited = st.data_editor(
    shown, hide_index=True, width="stretch", height=360, key=editor_key,
    disabled=["id", "selected", "rank", "gain", "covered_by", "coverage", "prompt", "response"],
    column_config={"pin": st.column_config.CheckboxColumn("pin", help="always select"),
                   "ban": st.column_config.CheckboxColumn("ban", help="never select"),
                   "note": st.column_config.TextColumn("note", width="medium")})
pending = []
for k in range(len(shown)):
    a, b = shown.iloc[k], edited.iloc[k]
    if bool(a["pin"]) != bool(b["pin"]) or bool(a["ban"]) != bool(b["ban"]) or \
            str(a["note"] or "") != str(b["note"] or ""):
        pending.append((a["id"], bool(b["pin"]), bool(b["ban"]), str(b["note"] or "").strip()))
conflict = [rid for rid, p, bn, _ in pending if p and bn]
a1, a2 = st.columns([1, 3])
if a1.button(f"Apply {len(pending)} table edits", key="apply_edits", type="primary",
             disabled=not pending or bool(conflict)):
    new = decisions.copy()
    for rid, p, bn, note in pending:
        if p:
            new.pin(rid)
        elif bn:
            new.ban(rid)
        else:
            new.clear(rid)
        if note:
            new.notes[rid] = note
        else:
            new.notes.pop(rid, None)
    bulk.replace(new, "table edits")
    fresh_editor()
    st.rerun()
if conflict:
    a2.error(f"A sample cannot be both pinned and banned: {', '.join(conflict[:5])}")
elif pending:
    a2.caption(f"{len(pending)} rows edited in the table, not applied yet")

# -- one sample in detail
if not visible_ids:
    st.info("No sample matches.")
else:
    if s.get("p_review_id") not in visible_ids:
        s["p_review_id"] = visible_ids[0]
    rid = st.selectbox("Sample in detail", visible_ids, key="p_review_id",
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
        bulk.reset_baseline()
        fresh_editor()
        for key in [k for k in s.keys() if isinstance(k, str) and k.startswith("note_")]:
            del s[key]
        unknown = [i for i in [*loaded.pinned, *loaded.banned] if i not in set(pool.ids)]
        if unknown:
            st.warning(f"{len(unknown)} pinned or banned ids are not among the current pool rows "
                       "and are ignored for now.")
        st.rerun()
ui.link("download", "Next: Download")
