"""Evaluate: score the current selection (or any subset file) against baselines on a test set."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd
import streamlit as st

import studio  # noqa: F401  (first: imports the engine once, see studio/__init__.py)
from delift_core.errors import DeliftError
from delift_core.evaluation.subsets import (BASELINES, baseline_subsets, load_subset,
                                            method_subsets, parse_int_list)
from delift_core.evaluation.metrics import METRIC_LABELS
from delift_core.evaluation.settings import EvalSettings
from delift_core.evaluation.run import evaluate
from delift_core.selection import plan
from delift_core.selection.cost import cost_cell
from delift_core.selection.objectives import registry
from studio import served, state, ui

ui.setup("Evaluate", "🎯", heading="Evaluate a selection")
s = state.ss()  # the ev_* settings persist across page switches (studio.state.EVAL_DEFAULTS)
s.setdefault("ev_report", None)

st.caption("Each test item gets its nearest subset items (by sentence embedding of the prompt) "
           "as in-context examples, or the model is LoRA-tuned on the subset; then the reference "
           "answer is scored (NLL per token, DELIFT distance) and a greedy answer is generated "
           "(ROUGE-L, embedding cosine, exact match where the reference has '#### answer'). "
           "Results are cached on disk, so a second run is instant.")

current = s.get("selection")
has_current = current is not None and getattr(current, "pool", None) is not None
if has_current:
    st.checkbox(f"Evaluate the current selection ({len(current.selected_indices)} of "
                f"{len(current.pool)} rows, objective {current.objective})", key="ev_use_current")
use_current = has_current and s["ev_use_current"]
if use_current:  # other methods on the same pool, kernels and budget, in the same evaluation
    offered = [o for o in plan.available_objectives(current.kernels, s.get("row_scores"))
               if o != current.objective and not registry.get(o).baseline]
    offered += [o for o in ("longest",) if o not in offered and o != current.objective]
    s["ev_methods"] = [m for m in s["ev_methods"] if m in offered]
    st.multiselect(f"Compare with other methods at the same budget ({current.budget} rows)",
                   offered, key="ev_methods", format_func=lambda o: registry.get(o).label,
                   help="Each method chooses from the same pool with the same kernels, as it "
                        "ships (no pins or bans); all are scored in one run and judged against "
                        "the same random seeds, with what each selection cost. IFD and IFD-FL "
                        "are offered once their scores are computed (choose them on the Kernel "
                        "page); the longest responses need only the model's tokenizer.")

c1, c2 = st.columns(2)
with c1:
    if not use_current:
        st.text_input("Subset: a data file, a `delift select` output folder, or demo:pool / "
                      "demo:target / demo:existing", key="ev_subset_src")
        st.text_input("Pool for the random and full baselines", key="ev_pool_src")
    st.text_input("Held-out test set (file path or demo:...)", key="ev_test_src")
    st.number_input("Use the first N test rows", min_value=1, max_value=100000,
                    key="ev_test_limit")
    st.multiselect("Baselines", list(BASELINES), key="ev_baselines",
                   help="random: subsets of the same size, one per seed (mean ± sd); full: the "
                        "whole pool; none: no examples / no fine-tuning")
    st.text_input("Seeds of the random baselines", key="ev_seeds")
with c2:
    st.radio("Measure", ["icl", "lora", "both"], key="ev_mode", horizontal=True,
             help="icl: in-context examples; lora: fine-tune LoRA adapters on the subset")
    st.number_input("In-context examples per test item", min_value=0, max_value=16,
                    key="ev_shots")
    st.checkbox("Generate answers (ROUGE-L, cosine, exact match)", key="ev_generate")
    st.number_input("Max new tokens", min_value=1, max_value=1024, key="ev_max_new")
    st.number_input("LoRA steps", min_value=0, max_value=100000, key="ev_lora_steps")
    st.text_input("Causal LM (hub id or local folder)", key="ev_model")
    st.text_input("Sentence embedder", key="ev_embedder")


def _methods() -> list[Any]:
    """The compared methods' subsets (delift_core.evaluation.method_subsets), ranking by the
    kernel job's per-row scores; the model is loaded only when response lengths must be counted."""
    from delift_core.lm.models import load_causal_lm

    got = {sc.kind: sc for sc in [s.get("row_scores")] if sc is not None}
    lm = (load_causal_lm(served.model_source(s["ev_model"].strip() or None))
          if "longest" in s["ev_methods"] and "response_tokens" not in got else None)
    return method_subsets(current, s["ev_methods"], got, lm=lm)


def _request() -> dict[str, Any]:
    """The evaluation the widgets ask for (data read here, so bad input fails at once)."""
    if use_current:
        sub, pool = current.subset(), current.pool
    else:
        sub, pool = load_subset(served.data_source(s["ev_subset_src"]),
                                resolve=served.data_source)  # the manifest's pool: checked first
        if s["ev_pool_src"].strip():
            pool = state.load_source(s["ev_pool_src"])
    test = state.load_source(s["ev_test_src"])
    test = test.subset(range(min(int(s["ev_test_limit"]), len(test))))
    baselines = list(s["ev_baselines"])
    subsets = [sub] + (_methods() if use_current and s["ev_methods"] else [])
    if baselines:
        subsets += baseline_subsets(pool, [sub.size], baselines,
                                    parse_int_list(s["ev_seeds"], "seeds"))
    settings = EvalSettings(shots=int(s["ev_shots"]), generate=bool(s["ev_generate"]),
                            max_new_tokens=int(s["ev_max_new"]),
                            lora_steps=int(s["ev_lora_steps"]))
    settings.validate()
    modes = ("icl", "lora") if s["ev_mode"] == "both" else (s["ev_mode"],)
    return {"subsets": subsets, "test": test, "settings": settings, "modes": modes,
            "model": s["ev_model"].strip() or None, "embedder": s["ev_embedder"].strip() or None}


job = state.current_eval_job()
running = job is not None and job.running
if st.button("Run the evaluation", type="primary", key="ev_run", disabled=running):
    try:
        job = state.start_eval_job(**_request())
        s["ev_report"] = None  # the last report is not shown under a new run
        running = True
    except DeliftError as e:
        st.error(ui.md_escape(str(e)))
    except Exception as e:  # noqa: BLE001 - shown as a message, never a traceback
        st.error(ui.md_escape(f"The evaluation could not start: {type(e).__name__}: "
                              f"{str(e)[:500]}"))


def _adopt(job: Any) -> None:
    s["ev_report"] = job.result


@st.fragment(run_every=1.0 if running else None)
def progress_panel(page_saw_running: bool) -> None:
    """Live progress of this session's evaluation; its report is adopted when it ends."""
    ui.job_panel(state.current_eval_job(), page_saw_running=page_saw_running,
                 cancel_key="ev_cancel", adopt=_adopt,
                 cancelling="Cancelling after the current batch; scored items stay cached, so "
                            "running again resumes where it stopped.",
                 cancelled="The evaluation was cancelled. Scored items are cached: running it "
                           "again resumes where it stopped.", failed="The evaluation failed: ")


progress_panel(running)

report = s.get("ev_report")
if report is not None:
    summary = pd.DataFrame(report.summary())
    cols = [c for c in ["mode", "subset", "kind", "size", "seed", "n_seeds", "n_test", "nll",
                        "nll_sd", "distance", "distance_sd", "rouge_l", "rouge_l_sd", "cosine",
                        "cosine_sd", "exact_match", "exact_match_sd", "train_loss_first",
                        "train_loss_last"] if c in summary.columns]
    st.subheader("Results")
    st.dataframe(summary[cols].rename(columns=METRIC_LABELS), hide_index=True,
                 width="stretch")
    comps = report.comparisons()
    if comps:
        st.subheader("Is the edge real? Each subset against random")
        st.caption("Per test item, the subset's score minus each random seed's on the same item "
                   "(negative NLL/distance = the subset is better). The 95 % interval is a "
                   "bootstrap over test items and random seeds; a subset **wins** or **loses** "
                   "only when the interval excludes zero, otherwise it **ties** with random.")
        costs = {r["subset"]: (r.get("subset_info") or {}).get("cost") for r in report.rows}
        st.dataframe(pd.DataFrame([{
            "mode": c["mode"], "subset": c["subset"], "metric": METRIC_LABELS[c["metric"]],
            "mean difference": round(c["mean_diff"], 4), "95 % low": round(c["low"], 4),
            "95 % high": round(c["high"], 4),
            "random seeds beaten": f"{c['seeds_beaten']} of {c['n_seeds']}",
            "verdict": c["verdict"],
            "what the selection cost": cost_cell(costs.get(c["subset"]))} for c in comps]),
            hide_index=True, width="stretch")
        st.caption("What the selection cost: the model passes (kernel and per-row scores, "
                   "computed or read from the stores), texts embedded and seconds on the "
                   "machine that made it, from its manifest; a random subset costs nothing.")
    elif any(r["kind"] == "subset" for r in report.rows):
        st.info("Add the random baseline (several seeds) to see whether the subset's edge over "
                "random is real: a paired interval and how many random seeds it beats.")
    st.plotly_chart(report.figure(), width="stretch")
    st.caption("Open circles: each random seed's value (the spread a subset has to beat).")
    st.caption("Settings: " + ", ".join(f"{k}={v}" for k, v in report.settings.items())
               + f"; model {report.meta['model']} ({report.meta['model_fingerprint']}).")
    d1, d2 = st.columns(2)
    d1.download_button("results.md", report.to_markdown(), file_name="results.md")
    d2.download_button("results.json", json.dumps(report.to_json(), indent=1, default=str),
                       file_name="results.json")
    if report.items:
        with st.expander("Per test item (generated answers)"):
            st.dataframe(pd.DataFrame(report.items), hide_index=True, width="stretch")
