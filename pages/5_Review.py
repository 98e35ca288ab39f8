"""Review: filter every sample, then pin / ban / note many at once (an editable table and bulk
buttons) or one at a time, each change one undoable step, saved as it is made; download and load
the decisions."""

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
         "in it (arrow keys move, space ticks, Enter edits): each edit counts at once. Or pin, "
         "ban or note every sample shown. Every step can be undone, and every change is saved "
         "as you make it.")

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
if b4.button("Undo the last step", key="bulk_undo", icon=":material/undo:",
             disabled=last is None, help=f"undo: {last}" if last else "no step yet"):
    bulk.undo()
    fresh_editor()
    st.rerun()
if last:
    st.caption(f"Last step: {last}")
with st.popover("Note all shown"):
    bulk_note = st.text_input("Note for every sample shown (empty removes their notes)",
                              key="p_bulk_note")
    if st.button(f"Set the note on {len(visible_ids)} samples", key="bulk_note",
                 disabled=not visible_ids):
        bulk.bulk("note", visible_ids, f"note {label}", bulk_note)
        fresh_editor()
        st.rerun()

# -- the editable table: each tick or note is applied (and saved) as it is made, one step each
# keyed by the rows shown too: edits are kept by row position, so another filter starts afresh
shown_key = hashlib.sha256("\n".join(visible_ids).encode("utf-8")).hexdigest()[:12]
editor_key = f"review_editor_{s.get('_review_editor_n', 0)}_{shown_key}"
shown = view[["id", "pin", "ban", "note", "selected", "rank", "gain", "covered_by", "coverage",
              "prompt", "response"]].reset_index(drop=True)


def apply_table_edit(ids: list[str], key: str) -> None:
    """The table's edits as one undoable step: a tick pins or bans (and clears the other), an
    unticked box clears, a note is set or removed."""
    new = s["decisions"].copy()
    for row, change in (s.get(key) or {}).get("edited_rows", {}).items():
        rid = ids[int(row)]
        if "pin" in change:
            new.pin(rid) if change["pin"] else (rid in new.pinned and new.clear(rid))
        if "ban" in change:
            new.ban(rid) if change["ban"] else (rid in new.banned and new.clear(rid))
        if "note" in change:
            text = str(change["note"] or "").strip()
            if text:
                new.notes[rid] = text
            else:
                new.notes.pop(rid, None)
    bulk.replace(new, "table edit")
    fresh_editor()


st.data_editor(
    shown, hide_index=True, width="stretch", height=360, key=editor_key,
    on_change=apply_table_edit, args=(list(shown["id"]), editor_key),
    disabled=["id", "selected", "rank", "gain", "covered_by", "coverage", "prompt", "response"],
    column_config={"pin": st.column_config.CheckboxColumn("pin", help="always select"),
                   "ban": st.column_config.CheckboxColumn("ban", help="never select (a tick "
                                                                      "here clears a pin)"),
                   "note": st.column_config.TextColumn("note", width="medium")})
st.caption(bulk.saved_state())
if sel.kernels is not None and sel.kernels.meta.learned:
    st.caption("gain, covered_by and coverage stand on a LEARNED kernel: most of its values are "
               "predicted (the Kernel page gives its held-out fidelity; the Select page can "
               "verify the pairs the selection stands on).")

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
        for col, action, label, icon, off in ((b1, "pin", "Pin", ":material/push_pin:",
                                               "pinned"),
                                              (b2, "ban", "Ban", ":material/block:", "banned"),
                                              (b3, "clear", "Clear", None, "no override")):
            if col.button(label, key=action, icon=icon, disabled=status == off):
                bulk.single(action, rid)
                fresh_editor()
                st.rerun()
        note_key = f"note_{rid}"
        if note_key not in s:
            s[note_key] = decisions.notes.get(rid, "")
        note = st.text_area("Note", key=note_key, height=100)
        if st.button("Save note", key="save_note"):
            bulk.single("note", rid, note.strip())
            fresh_editor()
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
        s["_decisions_loaded"] = (up.name, up.size, up.file_id)
        bulk.load(loaded)
        fresh_editor()
        for key in [k for k in s.keys() if isinstance(k, str) and k.startswith("note_")]:
            del s[key]
        unknown = [i for i in [*loaded.pinned, *loaded.banned] if i not in set(pool.ids)]
        if unknown:
            st.warning(f"{len(unknown)} pinned or banned ids are not among the current pool rows "
                       "and are ignored for now.")
        st.rerun()
ui.link("download", "Next: Download")
