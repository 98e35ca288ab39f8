"""Model & kernel: stage, kernel, models, work estimate, and the background computation."""

from __future__ import annotations

import streamlit as st

import studio  # noqa: F401  (first: imports the engine once, see studio/__init__.py)
from delift_core.selection import objectives as registry
from delift_core.selection import plan
from delift_core import settings as spec
from delift_core.lm.models import PACKAGED_MODELS
from delift_core.errors import DeliftError
from delift_core.kernels.estimates import (estimate_seconds, estimate_work, format_seconds,
                                           speed_key, stored_passes)
from studio import state, ui

ui.setup("Model & kernel", "🧮")
s = state.ss()
ui.need("pool")
pool = s["pool"]

c1, c2 = st.columns(2)
with c1:
    stage = st.radio("Stage", plan.stages(), format_func=state.stage_label, key="p_stage")
    choices = registry.stage_objectives(stage)
    if len(choices) > 1:  # the stage offers a choice of objective (kept per stage)
        choice_key = f"p_{stage}_objective"
        s[choice_key] = plan.stage_objective(stage, s.get(choice_key))
        objective = st.radio("Objective", choices, format_func=state.objective_label,
                             key=choice_key, horizontal=True,
                             help=" ".join(f"{registry.get(c).label}: {registry.get(c).help}"
                                           for c in choices))
    else:
        objective = plan.stage_objective(stage)
with c2:
    kind = st.radio("Kernel", list(state.KERNEL_LABELS), format_func=state.KERNEL_LABELS.get,
                    key="p_kernel",
                    help="DELIFT: how much each sample helps the causal LM answer another as an "
                         "in-context example (slow: every pair). DELIFT-SE: cosine similarity "
                         "of sentence embeddings (fast). Random: a random order (the baseline; "
                         "embeddings are still computed for the maps).")
    if kind == "utility":
        custom = "hub id or local folder"
        packaged = list(PACKAGED_MODELS)
        choice = st.selectbox("Causal LM", [*packaged, custom], key="p_model_choice",
                              format_func=lambda m: PACKAGED_MODELS[m].label if m in packaged
                              else m,
                              help="The packaged models work offline; SmolLM2 is chat-tuned "
                                   "(a smaller vocabulary, so a cheaper output layer).")
        if choice == custom:
            st.text_input("Hub id or local folder", key="p_model_custom",
                          placeholder="e.g. HuggingFaceTB/SmolLM2-360M-Instruct or ./my-model")
            s["p_model"] = s["p_model_custom"].strip()
            if not s["p_model"]:
                st.info(f"No model given yet: {PACKAGED_MODELS[spec.default('model')].label} "
                        "is used.")
        else:
            s["p_model"] = choice
    else:
        st.text_input("Sentence embedder (default: packaged all-MiniLM-L6-v2; or a hub id / "
                      "local folder)", key="p_embedder")

extra = registry.needs(objective)
missing = extra is not None and s[extra] is None
if missing:
    st.error(f"{registry.STAGES[stage]} selection needs a "
             f"{state.ROLE_LABELS[extra].lower()}: load one on the Data page (the demo has one).")
    ui.link("data", "Load it on the Data page")

on_cpu = state.resolve_device().type == "cpu"
learned = False
if kind == "utility":  # the whole pool, learned from a sample of exact pairs: the CPU default
    s.setdefault("p_learned", plan.default_learned(len(pool), on_cpu))
    learned = bool(ui.setting_widget(
        "learned", help="Scores only a sample of pairs exactly with the model (a few rows "
                        "spread over the pool, each with some neighbours and random rows), "
                        "trains a small predictor on them and predicts every other pair. Exact "
                        "values stay exact; the predictor's fidelity on exact pairs it never saw "
                        "is measured and shown when the kernel is ready. Exact pairs go to the "
                        "pair store, so a cancelled or later run reuses them."))

# first N rows: a short default for the exact utility kernel on CPU
limit_key = f"p_limit_{kind}{'_learned' if learned else ''}_{len(pool)}"
s.setdefault(limit_key, len(pool) if learned else plan.default_limit(len(pool), kind, on_cpu))
limit = st.number_input(f"Use the first N rows of the pool (of {len(pool)})", min_value=1,
                        max_value=len(pool), step=1, key=limit_key,
                        help="The exact utility kernel scores every pair of rows; on a CPU keep "
                             "N small, or use the learned kernel for the whole pool.")

neighbours, dtype, backend, engine = None, None, "local", {}
target_direction = None
if kind == "utility":
    dtype = ui.setting_widget(
        "dtype", options=["float32", "bfloat16"],
        format_func={"float32": "float32 (exact, default)",
                     "bfloat16": "bfloat16 (reduced precision; speed depends on the hardware)"}.get,
        help="bfloat16 runs the model at reduced precision: measured on the demo rows, its "
             "utility values differ from float32 by at most ~4% of the kernel's range. Whether it "
             "is faster depends on the hardware: on a 2-core CPU with AVX512-BF16 it was 2.7x "
             "faster, on one without it 5x slower (benchmarks/README.md), so try it on a small "
             "kernel first; the time estimate uses each precision's own measured speed. Kernels "
             "of each precision are cached separately.")
    sparse = st.toggle("Sparse kernel: score each sample only with its nearest neighbours",
                       key="p_sparse",
                       help="Every pair costs one model pass, so a full kernel grows with N². A "
                            "sparse kernel scores each row only with its K most similar samples "
                            f"by sentence embedding (plus {s['p_neighbour_random']} random ones, "
                            "see Advanced settings); pairs not scored count as 0. It makes the "
                            "whole pool affordable: the demo pool at K = 16 is ~5,000 passes "
                            "instead of ~58,000.")
    if sparse:
        s["p_neighbours"] = min(int(s["p_neighbours"]), int(limit))  # K cannot exceed N
        neighbours = int(ui.setting_widget("neighbours", max_value=max(1, int(limit))))
    target_direction = spec.default("target_direction")
    if "target" in plan.stage_needs(stage):
        target_direction = ui.setting_widget("target_direction")
    backend = ui.setting_widget("backend",
                                format_func={"local": "this process (default)",
                                             "ray": "Ray (a local cluster, or RAY_ADDRESS's)"}.get,
                                help="Ray runs the missing pairs on worker processes, one thread "
                                     "each; it needs `pip install \"delift-studio[ray]\"`. Either "
                                     "way every value goes to the same pair store.")

exact_passes = None
if learned:
    s.setdefault("p_exact_passes", spec.get("exact_passes").suggested)
    exact_passes = int(ui.setting_widget("exact_passes") or spec.get("exact_passes").suggested)
if kind != "random":  # the engine settings the widgets above leave out, built from the spec
    engine = ui.advanced_settings("kernel", groups=("kernel", "utility") if kind == "utility"
                                  else ("kernel",))
    if learned:
        engine = {**engine, "learned": True, "exact_passes": exact_passes}
        if engine.get("exact_minutes"):
            engine["exact_passes"] = exact_passes = None  # the time budget, set in Advanced
    else:
        engine = {**engine, "exact_minutes": None}

run_pool, run_target, run_existing = state.kernel_inputs(stage, kind, int(limit))
est = estimate_work(run_pool, target=run_target, existing=run_existing,
                    kind=plan.engine_kind(kind), neighbours=neighbours,
                    neighbour_random=engine.get("neighbour_random"),
                    exact_passes=(exact_passes or spec.get("exact_passes").suggested)
                    if learned else None)
st.subheader("Estimate")
m1, m2, m3 = st.columns(3)
unit = "forward passes" if kind == "utility" else "texts to embed"
m1.metric(f"{unit.capitalize()}", f"{est.units:,}")
m2.metric("Tokens (about)", f"{est.tokens:,}")
stored = (stored_passes(est, run_pool, target=run_target, existing=run_existing,
                        model=s["p_model"], dtype=dtype, sparse=bool(neighbours))
          if kind == "utility" else 0)
seconds, speed_source = (estimate_seconds(est, speed_key(
    "utility", dtype, bool(neighbours), state.resolve_device().type,
    s["p_model"] or spec.default("model")), dtype, stored=stored) if kind == "utility"
    else (None, "unknown"))
if kind != "utility":
    m3.metric("Time (about)", "seconds",
              help="Sentence embeddings take seconds for a few thousand rows on a CPU (and are "
                   "cached by content); no time is estimated for them.")
elif speed_source == "measured":
    m3.metric("Time (about)", format_seconds(seconds),
              help="From this machine's measured speed on its latest utility kernels (CLI or "
                   "studio) of this precision and kind; the model's loading time is not "
                   "included.")
elif speed_source == "guess":
    m3.metric("Time (about)", format_seconds(seconds),
              help="A first guess from the speed measured on a quiet 2-core CPU "
                   "(benchmarks/README.md): a busy or slower machine takes longer. Replaced by "
                   "this machine's own speed after a first utility kernel.")
else:
    m3.metric("Time (about)", "—",
              help="Known after a first utility kernel of this model and precision on this "
                   "machine (its measured speed is reused).")
st.caption(" · ".join(f"{label}: {u:,} {unit}, ~{t:,} tokens" for label, u, t in est.stages)
           + (" · cached results are reused, so the same inputs never compute twice." ))
scores_kind = registry.get(plan.method_objective(kind, objective)).scores
if scores_kind:  # a heuristic's per-row scores, computed by the same job after the kernel
    lm_name = (s.get("p_model") if kind == "utility" else None) or spec.default("model")
    lm_label = PACKAGED_MODELS[lm_name].label if lm_name in PACKAGED_MODELS else lm_name
    st.caption(f"{registry.get(objective).label} also needs per-row scores with {lm_label}: "
               + (f"{2 * len(run_pool):,} more model passes (2 a row; cached by content), "
                  "computed after the kernel; this job waits its turn for the model."
                  if scores_kind == "ifd" else
                  "the response lengths in its tokens (no model pass), after the kernel."))
if est.full_units:
    st.caption(f"Learned kernel: {est.units:,} weighted units of work, of which about "
               f"{exact_passes or spec.get('exact_passes').suggested:,} exact model passes, "
               f"instead of the {est.full_units:,} passes of the exact kernel of these rows "
               "(training and prediction take seconds).")
if kind == "utility":
    if stored:
        st.caption(f"{'Up to ' if neighbours else ''}{stored:,} of these {est.units:,} passes "
                   "are already in the pair store (earlier kernels of the same rows, model and "
                   "precision): only the rest is computed, and the time above counts only "
                   "the rest.")
if kind == "utility" and on_cpu and est.units - stored > 2000:
    cheaper = ("lower N or K, or use DELIFT-SE" if neighbours else
               "lower N, use a sparse kernel, or use DELIFT-SE")
    when = (f"about {format_seconds(seconds)} by the estimate above" if seconds is not None
            else "the time is known after a first kernel in this precision")
    st.warning(f"{est.units - stored:,} forward passes of the model on a CPU take a while "
               f"({when}); {cheaper}.")

config = {"kind": kind, "stage": stage, "objective": plan.method_objective(kind, objective),
          "model": s["p_model"] if kind == "utility" else None,
          "embedder": s["p_embedder"] if kind != "utility" else None, "limit": int(limit),
          "neighbours": neighbours, "dtype": dtype,
          "backend": backend if kind == "utility" else "local",
          "target_direction": target_direction if kind == "utility" else None,
          "engine": engine}
job = state.current_job()
running = job is not None and job.running
same_as_current = s["kernels"] is not None and s["kernel_config"] == config
start = st.button("Recompute" if same_as_current else "Compute the kernel", type="primary",
                  disabled=missing or running, key="start_kernel")
if start:
    try:
        job = state.start_kernel_job(config, run_pool, run_target, run_existing, est)
        running = True
    except DeliftError as e:  # a model the served studio does not allow
        st.error(ui.md_escape(str(e)))


@st.fragment(run_every=1.0 if running else None)
def progress_panel(page_saw_running: bool) -> None:
    """Live progress of this session's kernel job (state.init adopts its kernels)."""
    ui.job_panel(state.current_job(), page_saw_running=page_saw_running,
                 cancel_key="cancel_kernel",
                 cancelling="Cancelling after the current batch; finished pairs stay in the "
                            "pair store.",
                 cancelled="The computation was cancelled. Finished pairs are in the pair "
                           "store: starting again resumes where it stopped.")


progress_panel(running)

if s["kernels"] is not None:
    cfg, k = s["kernel_config"], s["kernels"]
    st.success(f"Kernel ready: {state.KERNEL_LABELS[cfg['kind']]} on {len(s['kernel_pool'])} "
               f"rows, objective {cfg['objective'].upper()} "
               f"({k.meta.get('seconds', 0):.1f} s).")
    parts = []
    for w in ("pool", "target", "existing"):
        m = getattr(k, w)
        if m is not None:
            a, b = m.shape
            valued = "valued, most predicted" if w in k.meta.learned else "scored"
            parts.append(f"{w} {a}×{b}" + (f" (sparse: {m.nnz:,} pairs {valued}, "
                                           f"{m.nnz / (a * b):.0%})" if hasattr(m, "nnz") else ""))
    st.caption("Kernels: " + ", ".join(parts))
    ui.learned_fidelity(k)
    if not same_as_current:
        st.info("The settings above differ from the ones this kernel was computed with; compute "
                "again to use them.")
    ui.link("select", "Next: choose the budget")
