"""Data: load the pool (and a target or existing set) from the demo, an upload, a path or the hub."""

from __future__ import annotations

import pandas as pd
import streamlit as st

import studio  # noqa: F401  (first: imports the engine once, see studio/__init__.py)
from delift_core.data.formats import EXTENSIONS, FORMATS, SUFFIXES
from delift_core.errors import DataError, DeliftError
from delift_core.data.dataset import Dataset
from studio import served, state, ui

ui.setup("Data", "📂")
s = state.ss()

st.write("The **pool** is the data to select from. A **target set** (examples of your task) is "
         "needed for task-specific selection, an **existing set** (what the model was already "
         "trained on) for continual learning.")

if st.button("Load the demo data (pool 240, target 40, existing 60 rows)", type="primary",
             key="load_demo_all"):
    for role in state.ROLES:
        state.set_dataset(role, state.load_demo(role))
    s["_data_flash"] = ("Demo data loaded. The 'family' column is a label for colouring only; it "
                        "is never used for selection.")
    st.rerun()  # so the sidebar shows the new data
if s.get("_data_flash"):
    st.success(s.pop("_data_flash"))

SOURCES = {"demo": "Demo data", "upload": "Upload a file", "path": "Local path",
           "hub": "Hugging Face dataset id"}


def mapping_widgets(role: str, columns: list[str] | None) -> tuple | None:
    """Hand-made column mapping (prompt columns, response column, id column) or None."""
    on = st.checkbox("Set the prompt / response columns by hand", key=f"p_map_on_{role}")
    if not on:
        return None
    if not columns:
        st.caption("Column names will be listed once the file can be read; type them meanwhile.")
        prompt = st.text_input("Prompt column(s), comma-separated", key=f"p_map_prompt_txt_{role}")
        response = st.text_input("Response column", key=f"p_map_resp_txt_{role}")
        rid = st.text_input("Id column (optional)", key=f"p_map_id_txt_{role}")
        cols = [c.strip() for c in prompt.split(",") if c.strip()]
        return (tuple(cols), response.strip(), rid.strip() or None) if cols and response else None
    c1, c2, c3 = st.columns(3)
    prompt = c1.multiselect("Prompt column(s)", columns, key=f"p_map_prompt_{role}",
                            help="Several columns are joined with a blank line.")
    response = c2.selectbox("Response column", [None, *columns], key=f"p_map_resp_{role}")
    rid = c3.selectbox("Id column (optional)", [None, *columns], key=f"p_map_id_{role}")
    if not prompt or not response:
        st.warning("Choose at least one prompt column and the response column.")
        return None
    return (tuple(prompt), response, rid)


def try_load(role: str, fn, *args) -> None:
    """Run a loader; on success make it the role's data, else show the readable error."""
    try:
        ds = fn(*args)
    except DeliftError as e:
        st.error(str(e))
        if isinstance(e, DataError) and "unknown layout" in str(e):
            st.info("Tick 'Set the prompt / response columns by hand' above to map the columns.")
        return
    except OSError as e:
        st.error(f"Cannot read the file: {e.strerror or e}")
        return
    if state.set_dataset(role, ds):
        st.rerun()  # so the sidebar and the preview show the new data


def loader(role: str) -> None:
    """The source picker for one role."""
    src = st.radio("Source", list(SOURCES), format_func=SOURCES.get, horizontal=True,
                   key=f"p_src_{role}")
    if src == "demo":
        if st.button(f"Use demo:{role}", key=f"demo_{role}"):
            try_load(role, state.load_demo, role)
    elif src == "upload":
        up = st.file_uploader(" ".join(FORMATS).upper(),
                              type=[ext.lstrip(".") for ext in EXTENSIONS],
                              key=f"upload_{role}")
        columns = None
        if up is not None:
            too_big = state.upload_too_large(up.size)
            if too_big:
                st.error(too_big)
                return
            data = up.getvalue()
            try:
                columns = state.columns_of(data, up.name)
            except DeliftError:
                columns = None
            mapping = mapping_widgets(role, columns)
            try_load(role, state.load_bytes, data, up.name, mapping)
    elif src == "path":
        root = served.served_settings().data_root
        path = st.text_input(f"Path of a file ({SUFFIXES}) or a saved dataset folder"
                             + (f", inside {root}" if root else ""), key=f"p_path_{role}")
        columns = None
        if path.strip():
            from pathlib import Path

            try:  # on a served studio, only inside the data root
                p = Path(served.data_source(path.strip())).expanduser()
                if p.is_file() and p.stat().st_size < state.max_upload_bytes():
                    columns = state.columns_of(p.read_bytes(), p.name)
            except (DeliftError, OSError):
                columns = None
        mapping = mapping_widgets(role, columns)
        if st.button("Load", key=f"load_path_{role}", disabled=not path.strip()):
            try_load(role, state.load_source, path.strip(), mapping)
    else:
        c1, c2 = st.columns([3, 1])
        repo = c1.text_input("Dataset id, e.g. tatsu-lab/alpaca", key=f"p_hub_{role}")
        s.setdefault(f"p_split_{role}", "train")
        split = c2.text_input("Split", key=f"p_split_{role}")
        st.caption("Needs a network connection (or the dataset in the local Hugging Face cache)"
                   + ("" if served.served_settings().allow_hub else
                      "; turned off on this server (DELIFT_ALLOW_HUB)") + ".")
        mapping = mapping_widgets(role, None)
        if st.button("Load", key=f"load_hub_{role}", disabled=not repo.strip()):
            with st.spinner("Loading from the hub…"):
                try_load(role, state.load_source, repo.strip(), mapping, split.strip())


def show(role: str, ds: Dataset) -> None:
    """Summary, preview and skipped rows of a loaded set."""
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Rows", len(ds))
    c2.metric("Layout", ds.layout)
    c3.metric("Format", ds.source_format)
    c4.metric("Skipped rows", len(ds.skipped))
    st.caption("Source")
    st.text(ds.source)
    st.dataframe(state.rows_preview(ds), hide_index=True, width="stretch", height=300)
    if len(ds) > 200:
        st.caption(f"Preview of the first 200 of {len(ds)} rows.")
    if ds.skipped:
        with st.expander(f"{len(ds.skipped)} skipped rows (left out of selection, exported as "
                         "skipped)"):
            st.dataframe(pd.DataFrame({"where": [x.location for x in ds.skipped],
                                       "reason": [x.reason for x in ds.skipped]}),
                         hide_index=True, width="stretch")
    if role != "pool" and st.button(f"Remove the {state.ROLE_LABELS[role].lower()}",
                                    key=f"remove_{role}"):
        state.set_dataset(role, None)
        st.rerun()


tabs = st.tabs(["Pool (required)", "Target set (task-specific)", "Existing set (continual)"])
for role, tab in zip(state.ROLES, tabs):
    with tab:
        loader(role)
        ds = s[role]
        if ds is not None:
            st.divider()
            show(role, ds)
        else:
            st.caption(f"No {state.ROLE_LABELS[role].lower()} loaded.")

if s["pool"] is not None:
    st.divider()
    ui.link("kernel", "Next: Model & kernel")
