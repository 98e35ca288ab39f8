"""Widgets shared by the pages: page set-up, sidebar status, guards, sample cards, explanations.

Dataset text is shown with ``st.text``/``st.code``/``st.dataframe`` only (never as markdown or
HTML), so untrusted text cannot inject markup.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import streamlit as st

from delift_core.data.dataset import Dataset
from delift_core.selection.select import Selection
from delift_core.kernels.estimates import format_seconds
from delift_core.outputs.views import explain

from . import served, state

PAGES = {"home": ("pages/0_Home.py", "Home", ":material/home:"),
         "data": ("pages/1_Data.py", "Data", ":material/table_view:"),
         "kernel": ("pages/2_Kernel.py", "Model & kernel", ":material/grid_on:"),
         "select": ("pages/3_Select.py", "Selection", ":material/tune:"),
         "explore": ("pages/4_Explore.py", "Explore & explain", ":material/scatter_plot:"),
         "review": ("pages/5_Review.py", "Review", ":material/rate_review:"),
         "download": ("pages/6_Download.py", "Download", ":material/download:"),
         "evaluate": ("pages/7_Evaluate.py", "Evaluate", ":material/fact_check:"),
         "audit": ("pages/8_Audit.py", "Audit", ":material/policy:")}
"""Every page of the studio, in sidebar order: key -> (file, title, icon)."""


def md_escape(text: str) -> str:
    """Escape markdown (for short labels built from data, e.g. a file name in a caption)."""
    out = str(text)
    for ch in "\\`*_{}[]()#+-.!|<>$~":
        out = out.replace(ch, "\\" + ch)
    return out


def link(page: str, label: str | None = None) -> None:
    """A link to another page of the studio."""
    path, name, icon = PAGES[page]
    st.page_link(path, label=label or name, icon=icon)


def setup(title: str, icon: str = "🎯", heading: str | None = None) -> None:
    """Page config, session defaults, the sidebar status panel and the page's title."""
    st.set_page_config(page_title=f"{title} · DELIFT Studio", page_icon=icon, layout="wide")
    served.require_sign_in(entry=False)  # app.py shows the sign-in screen; no page runs before
    state.init()
    if state.ss()["kernels"] is not None:
        state.current_selection()  # cheap (cached greedy order); keeps the sidebar current
    sidebar_status()
    st.title(heading or title)


def sidebar_status() -> None:
    """What is loaded, computed and selected in this session."""
    s = state.ss()
    with st.sidebar:
        st.caption("This session")
        pool = s["pool"]
        st.text(f"Pool: {len(pool)} rows" if pool is not None else "Pool: not loaded")
        for role in ("target", "existing"):
            if s[role] is not None:
                st.text(f"{state.ROLE_LABELS[role]}: {len(s[role])} rows")
        job = state.current_job()
        if job is not None and job.status == "queued":
            st.text("Kernel: queued")
        elif job is not None and job.running:
            st.text(f"Kernel: computing ({job.fraction():.0%})")
        elif s["kernels"] is not None:
            cfg = s["kernel_config"]
            st.text(f"Kernel: {state.SHORT_KERNEL[cfg['kind']]} on {len(s['kernel_pool'])} rows")
        sel = s["selection"]
        if sel is not None:
            st.text(f"Selected: {sel.budget} of {len(sel.pool)} ({sel.objective})")


def need(*what: str) -> Selection | None:
    """Stop the page with a pointer to the page that provides what is missing; with
    ``"selection"``, return the current selection (made by :func:`setup` in this run)."""
    s = state.ss()
    if "pool" in what and s["pool"] is None:
        st.info("No data loaded yet. Start on the Data page (one click loads the demo data).")
        link("data", "Go to the Data page")
        st.stop()
    if "kernels" in what and s["kernels"] is None:
        job = state.current_job()
        if job is not None and job.running:
            st.info(f"The kernel is still being computed ({job.fraction():.0%}); follow it on "
                    "the Model & kernel page.")
        else:
            st.info("No kernel yet. Compute one on the Model & kernel page.")
        link("kernel", "Go to the Model & kernel page")
        st.stop()
    if "selection" in what:
        sel = s["selection"]
        if sel is None:
            st.error(s["selection_error"] or "No selection.")
            link("select", "Go to the Selection page")
            st.stop()
        return sel
    return None


def sample_text(ds: Dataset, row_id: str, height: int | None = None) -> None:
    """A sample's prompt and response, shown as plain text."""
    k = ds.index_of(row_id)
    st.caption("Prompt")
    st.code(ds.prompts[k], language=None, wrap_lines=True, height=height)
    st.caption("Response")
    st.code(ds.responses[k], language=None, wrap_lines=True, height=height)


def short(ds: Dataset, row_id: str, n: int = 90) -> str:
    """'id: first words of the prompt' for select boxes (plain text widgets)."""
    k = ds.index_of(row_id)
    p = " ".join(ds.prompts[k].split())
    return f"{row_id}: {p[:n]}{'…' if len(p) > n else ''}"


def show_explanation(sel: Selection, row_id: str, top: int = 5) -> None:
    """Why a sample is selected (rank, gain, what it covers) or rejected (who covers it)."""
    import pandas as pd

    ex = explain(sel, row_id, top=top)
    pool = sel.pool
    if ex.selected:
        c1, c2, c3 = st.columns(3)
        c1.metric("Decision", "selected" + (" (pinned)" if ex.pinned else ""))
        c2.metric("Greedy rank", f"{ex.rank} of {sel.budget}")
        c3.metric("Marginal gain", f"{ex.gain:.4f}",
                  help="What this sample added to the objective when greedy picked it, in the "
                       "objective's units (for FL: the summed gain in coverage over every pool "
                       "row, each row's coverage being 0-1); later picks add less.")
        if ex.covers:
            st.write(f"Best cover for {ex.best_cover_for} rejected samples; the ones it covers "
                     "most (kernel value: how much it helps each as an example):")
            st.dataframe(pd.DataFrame({
                "id": [i for i, _ in ex.covers], "value": [round(v, 4) for _, v in ex.covers],
                "selected": [i in set(sel.selected_ids) for i, _ in ex.covers],
                "prompt": [pool.prompts[pool.index_of(i)] for i, _ in ex.covers]}),
                hide_index=True, width="stretch")
    else:
        c1, c2, c3 = st.columns(3)
        c1.metric("Decision", "rejected" + (" (banned)" if ex.banned else ""))
        c2.metric("Covered by", ex.covered_by or "–")
        c3.metric("Coverage", f"{ex.coverage:.4f}" if ex.coverage is not None else "–",
                  help="How well the selected subset stands in for this sample: its scaled "
                       "kernel value (0-1) with the selected sample that covers it best; 1 = as "
                       "good as itself, 0 = no selected sample helps it.")
        if ex.covered_by:
            st.write("The selected sample that covers it best:")
            sample_text(pool, ex.covered_by, height=120)
            if ex.alternatives:
                st.write("Next-best covers among the selected samples:")
                st.dataframe(pd.DataFrame({
                    "id": [i for i, _ in ex.alternatives],
                    "coverage": [round(v, 4) for _, v in ex.alternatives],
                    "prompt": [pool.prompts[pool.index_of(i)] for i, _ in ex.alternatives]}),
                    hide_index=True, width="stretch")


def job_panel(job: Any, *, page_saw_running: bool, cancel_key: str, cancelling: str,
              cancelled: str, failed: str = "",
              adopt: Callable[[Any], None] | None = None) -> None:
    """The live part of a background job (call it in a polling fragment): progress and Cancel
    while it runs; when it ends, rerun the whole page (``adopt`` a done job's result first), then
    say whether it was cancelled or failed.

    ``page_saw_running`` is whether the page's last full run saw the job running (a fragment's
    reruns keep the arguments of the last full run): while it is true and the job has ended,
    every poll asks for a full rerun again, so a rerun request that Streamlit drops (one made
    while another run is starting) cannot leave the page showing a job that has ended."""
    if job is None:
        return
    if job.running:
        job_progress(job)
        if st.button("Cancel", key=cancel_key):
            job.cancel.set()
            st.info(cancelling)
        return
    if job.status == "done" and adopt is not None and not job.adopted:
        job.adopted = True
        adopt(job)
    if page_saw_running:  # the page still shows it running: its buttons and results must follow
        st.rerun()  # (kernel jobs are adopted by state.init at the top of the rerun)
    if job.status == "cancelled":
        st.warning(cancelled)
    elif job.status == "error":
        st.error(md_escape(f"{failed}{job.error}"[:700]))


def job_progress(job: Any) -> None:
    """Progress bar with stage, counts and time left for a background job (kernel or evaluation);
    while it waits in the server's model queue, its place and how long it has waited."""
    place = job.place() if job.status == "queued" else None
    if place is not None:
        st.progress(0.0, text=f"Queued: place {place[0]} of {place[1]} waiting for the model "
                              f"(other sessions' model jobs run first) · waiting "
                              f"{format_seconds(time.time() - job.created)}")
        return
    left = job.seconds_left()
    frac = job.fraction()
    if job.total:
        text = (f"{job.stage}: {job.done:,} / {job.total:,} · {frac:.0%} overall · "
                f"about {format_seconds(left)} left" if left is not None
                else f"{job.stage}: {job.done:,} / {job.total:,}")
    else:
        text = f"{job.stage} …"
    st.progress(frac, text=text)


def setting_widget(name: str, **overrides: Any) -> Any:
    """The widget of an engine setting (:mod:`delift_core.settings`), built from its spec: a radio
    for a few choices, a select box for more, a toggle, a number or a text box; the value is kept
    in ``st.session_state["p_<name>"]`` (its default from the spec, see :func:`state.init`).
    ``overrides`` go to the widget (label, help, format_func, horizontal, ...)."""
    from delift_core import settings as spec

    s = spec.get(name)
    key = state.setting_key(name)
    kw: dict[str, Any] = {"label": s.label or name, "key": key,
                          "help": md_escape(s.cli_help()).replace("%%", "%")}
    if s.optional and key not in state.ss():
        kw["value"] = None  # "off" / "automatic" until the user sets it
    if s.choices:
        options = list(s.choices)
        labels = {k: f"{k}: {v}" if v else k for k, v in s.choices.items()}
        kw.update(options=options, format_func=lambda v: labels.get(v, str(v)))
        kw.update(overrides)
        if len(options) <= 3:
            kw.setdefault("horizontal", True)
            return st.radio(**kw)
        kw.pop("horizontal", None)
        return st.selectbox(**kw)
    kw.update(overrides)
    if s.type is bool:
        return st.toggle(**kw)
    if s.type in (int, float):
        if s.low is not None:
            kw.setdefault("min_value", s.type(s.low))
        if s.high is not None:
            kw.setdefault("max_value", s.type(s.high))
        kw.setdefault("step", 1 if s.type is int else float(s.low or 0.01))
        if s.type is float:
            kw.setdefault("format", "%g")
        return st.number_input(**kw)
    if "\n" in str(s.default):
        return st.text_area(**kw)
    return st.text_input(**kw)


ADVANCED_GROUPS = {"kernel": ("kernel", "utility"), "select": ("selection",)}
"""Which setting groups each page's "Advanced settings" shows (those marked ``advanced``)."""


def advanced_settings(page: str, groups: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Every ``advanced`` setting of a page's groups (or of ``groups``, a part of them) in one
    expander, built from the spec; their values by setting name (what the page passes on to the
    engine)."""
    from delift_core import settings as spec

    groups = tuple(g for g in ADVANCED_GROUPS[page] if groups is None or g in groups)
    found = [s for s in spec.in_group(*groups) if s.widget == "advanced"]
    with st.expander("Advanced settings"):
        st.caption("Defaults and ranges come from the engine's settings; the CLI takes the same "
                   "settings as options (`delift " + ("select" if page == "select" else "kernel")
                   + " --help`).")
        for s in found:
            setting_widget(s.name)
    return {s.name: state.ss()[state.setting_key(s.name)] for s in found}


def learned_fidelity(kernels: Any) -> None:
    """For a learned kernel: what is exact and what predicted, and its held-out fidelity (a
    warning below the fidelity floor or when a cancel stopped it early); nothing for an exact
    kernel."""
    from delift_core.kernels.learned import fidelity_line

    for role, m in kernels.meta.learned.items():
        line = fidelity_line(role, m)
        loud = (m.get("fidelity") or {}).get("below_floor") or m.get("stopped") == "cancelled"
        (st.warning if loud else st.info)(
            md_escape(line) + " · R² and Spearman compare predictions with exact values of "
            "rows the predictor never saw; 'cosine alone' is the same figure for plain "
            "embedding similarity (DELIFT-SE); a bracket is the range the figure would likely "
            "take on other held-out rows (95 %), so a wide one says the figure is not sure.")
