"""Selection: objective and its parameters, the budget (instant re-cut of the greedy order), gain
curve. The objectives and their sliders come from the registry (delift_core.selection.objectives)."""

from __future__ import annotations

import streamlit as st

import studio  # noqa: F401  (first: imports the engine once, see studio/__init__.py)
from delift_core.errors import DeliftError
from delift_core.selection import objectives as registry
from delift_core.outputs.views import gain_curve
from delift_core.outputs import figures
from delift_core.selection.cost import cost_line
from delift_core.kernels.learned import verification_line
from delift_core.selection.verify import first_round, plan_words, serves
from studio import state, ui

ui.setup("Selection", "🎯")
s = state.ss()
ui.need("pool", "kernels")
pool = s["kernel_pool"]
n = len(pool)

c1, c2 = st.columns([2, 3])
with c1:
    objectives = state.available_objectives()
    if s.get("p_objective") not in objectives:
        s["p_objective"] = s["kernel_config"]["objective"]
    objective = st.selectbox("Objective", objectives, format_func=state.objective_label,
                             key="p_objective",
                             help="Objectives these kernels can serve; the Model & kernel page "
                                  "computes the target or existing kernel when a stage needs it.")
    spec = registry.get(objective)
    if not spec.baseline:
        st.caption(spec.help)
    for param in spec.params:
        param_key = state.param_key(objective, param.name)
        s.setdefault(param_key, float(param.default))
        st.slider(param.label, float(param.low), float(param.high), step=float(param.step),
                  key=param_key, help=ui.md_escape(param.help) if param.help else None)
    if spec.baseline:
        ui.setting_widget("seed")
    elif s["kernels"].kind == "utility":
        ui.setting_widget("diagonal", format_func=lambda p: p)
    mode = st.radio("Budget as", ["percent", "count"], horizontal=True, key="p_budget_mode",
                    format_func={"percent": "percent of the pool", "count": "number of rows"}.get,
                    on_change=state.keep_budget_across_modes, args=(n,))
    if mode == "percent":
        st.slider("Budget (%)", 0, 100, step=1, key="p_budget_pct")
    else:
        s.setdefault("p_budget_count", max(1, round(0.3 * n)))
        if s["p_budget_count"] > n:
            s["p_budget_count"] = n
        st.number_input(f"Budget (rows, of {n})", min_value=0, max_value=n, step=1,
                        key="p_budget_count")
    ui.advanced_settings("select")

sel = state.current_selection()
with c1:
    if sel is None:
        st.error(s["selection_error"])
    else:
        m1, m2 = st.columns(2)
        m1.metric("Selected", f"{sel.budget} of {n}")
        whole = float(sel.values[-1]) if len(sel.values) else float("nan")
        share = sel.objective_value / whole if whole and whole == whole else None
        m2.metric("Objective value", f"{sel.objective_value:.3f}",
                  help="The objective of the selected rows. For FL: for every pool row, the "
                       "similarity (scaled 0-1) of its closest selected row, summed; so at most "
                       f"{n} here. A ranking method (IFD, longest) sums its scores. Read it as "
                       "the share of what the whole pool reaches, below.")
        if share is not None:
            st.caption(f"**{share:.0%}** of the value the whole pool reaches ({whole:.1f}) with "
                       f"{sel.budget / n:.0%} of the rows. A row's *gain* (table below) is what "
                       "it added when it was picked, in the same units: the gains add up to the "
                       "value, and they shrink as the pool gets covered.")
        d = s["decisions"]
        if d.pinned or d.banned:
            st.caption(f"Review decisions applied: {len(sel.pinned)} pinned, {len(sel.banned)} "
                       "banned.")
        for note in sel.notes:
            st.caption(note)
        st.caption(ui.md_escape(cost_line(sel.cost())) + " (the kernel's passes and texts, "
                   "the per-row scores' passes, and the selection's own time; recorded in the "
                   "manifest as `cost`).")
learned = sel.kernels.meta.learned if sel is not None and sel.kernels is not None else {}
if learned and spec.build is not None:  # a ranking by scores (IFD, longest) reads no kernel
    with c1:
        for role, m in learned.items():
            if m.get("verification"):
                st.caption(("**Verified**" if serves(m["verification"], sel, role) else
                            "**Verified for another selection**, not this one (the pairs it "
                            "stands on may be predicted)") + f" ({role} kernel): "
                           + ui.md_escape(verification_line(m["verification"])) + ".")
        with st.expander("Verify this selection with exact passes",
                         expanded=state.current_verify_job() is not None):
            st.caption("On a learned kernel most of a selection's covers (each row's best "
                       "selected helper) are predicted. Verifying scores the predicted covers "
                       "exactly (one model pass each, plus a row's plain pass the pair store "
                       "lacks), puts those values in the kernel and selects again, for up to "
                       "the rounds below (FLMI's caps, FLCG's floors and GC's columns: every "
                       "pair the value stands on). Exploring also scores every pair of that "
                       "share of the unselected rows with the highest predicted gain, helpers the "
                       "prediction under-rates (it lifted 10 % selections on two development "
                       "pools; 0: covers only). The kernel stays learned and records what was "
                       "verified; the pairs stay in the pair store.")
            vc1, vc2 = st.columns(2)
            vc1.number_input("Rounds", min_value=1, max_value=20, step=1, key="p_verify_rounds")
            explores = spec.explores(learned)
            with vc2:
                if explores:
                    ui.setting_widget("verify_explore", step=0.05, format="%.2f")
                else:  # every pair its value stands on is scored: none is a cover
                    st.caption(f"Nothing to explore: {spec.label} stands on no covers, and "
                               "verifying scores every pair its value stands on.")
            explore = float(s["p_verify_explore"]) if explores else 0.0
            plan = first_round(s["kernels"], sel, explore)
            st.caption(f"Round 1 scores {plan['covers']:,} predicted "
                       f"{plan_words(s['kernels'], sel.objective)}"
                       + (f" and {plan['explored_pairs']:,} pairs of "
                          f"{plan['explored_columns']:,} explored rows"
                          if plan["explored_columns"] else "")
                       + f": {plan['covers'] + plan['explored_pairs']:,} model passes, plus "
                       "the plain passes the pair store lacks; later rounds score what it "
                       "changes.")
            job = state.current_verify_job()
            verifying = job is not None and job.running
            if st.button(f"Verify the {sel.budget} selected rows", key="verify_start",
                         disabled=verifying):
                try:
                    state.start_verify_job(sel, int(s["p_verify_rounds"]), explore)
                    verifying = True
                except DeliftError as e:  # the server's queue does not take it now
                    st.error(ui.md_escape(str(e)))

            @st.fragment(run_every=1.0 if verifying else None)
            def verify_panel(page_saw_running: bool) -> None:
                """Live progress of this session's verification (state.init adopts it)."""
                ui.job_panel(state.current_verify_job(), page_saw_running=page_saw_running,
                             cancel_key="verify_cancel",
                             cancelling="Cancelling after the current batch; the pairs scored "
                                        "so far stay in the pair store.",
                             cancelled="The verification was cancelled. The pairs it scored "
                                       "are in the pair store: verifying again reads them back.",
                             failed="The verification failed: ")

            verify_panel(verifying)
with c2:
    if sel is not None:
        if spec.baseline and sel.kernels is None:
            st.info("The random baseline has no objective curve.")
        else:
            st.plotly_chart(figures.gain_curve_figure(gain_curve(sel), sel.budget),
                            key="gain_curve")
            st.caption("Objective value after each greedy pick: the curve flattens where "
                       "extra rows add little." + (f" {spec.help}" if spec.baseline else ""))

if sel is not None:
    st.subheader(f"Selected rows ({sel.budget})")
    table = sel.annotate()
    whole = float(sel.values[-1]) if len(sel.values) else float("nan")
    table["gain (% of the whole)"] = (100 * table["gain"] / whole).round(2) \
        if whole and whole == whole else float("nan")
    shown = table[table["selected"]].sort_values("rank")[["rank", "id", "gain",
                                                         "gain (% of the whole)", "pinned",
                                                         "prompt", "response"]]
    st.dataframe(shown, hide_index=True, width="stretch", height=320)
    st.caption("gain (% of the whole): the share of the whole pool's objective value the row "
               "added when it was picked.")
    c1, c2, c3 = st.columns(3)
    with c1:
        ui.link("explore")
    with c2:
        ui.link("review")
    with c3:
        ui.link("download")
