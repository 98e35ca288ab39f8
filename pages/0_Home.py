"""Home: what DELIFT does and where to start (the studio's default page)."""

from __future__ import annotations

import streamlit as st

import studio  # noqa: F401  (first: imports the engine once, see studio/__init__.py)
from delift_core.selection import objectives as registry
from delift_core.selection import plan
from studio import state, ui

ui.setup("Home", "🎯", heading="DELIFT Studio")

NEEDS = {None: "", "target": " (needs a *target* set of your task)",
         "existing": " (needs an *existing* set the model already saw)"}


def stage_line(stage: str) -> str:
    """'- **Stage**: Label: help; Label: help' for each objective of the stage (registry)."""
    specs = [registry.get(name) for name in registry.stage_objectives(stage)]
    return f"- **{registry.STAGES[stage]}**: " + "; ".join(
        f"{ui.md_escape(spec.label)}: {ui.md_escape(spec.help)}{NEEDS.get(spec.needs, '')}"
        for spec in specs)


st.markdown(
    "**Pick the fine-tuning data that teaches your model the most.** DELIFT (Agarwal et al., "
    "ICLR 2025) scores how much each sample helps the model answer every other sample when it is "
    "shown as an in-context example (the *utility kernel*), then keeps a small subset that covers "
    "the whole pool by maximising a submodular objective, one per stage:\n\n"
    + "\n".join(stage_line(stage) for stage in plan.stages()) + "\n\n"
    "DELIFT-SE swaps the model utility for sentence-embedding similarity: much faster, a bit "
    "less faithful.")

st.subheader("Start here")
if st.button("Try the demo: 240 rows to a selection in one click", type="primary",
             key="try_demo", help="Loads the demo data (pool, target and existing sets), "
                                  "computes the fast DELIFT-SE (sentence embedding) kernel of "
                                  "the pool and opens the Selection page at a 30 % budget. The "
                                  "model utility kernel (DELIFT proper) is one click away on the "
                                  "Model & kernel page."):
    with st.spinner("Loading the demo data and embedding 240 rows…"):
        state.try_demo()
    st.switch_page(ui.PAGES["select"][0])
st.markdown(
    "1. **Data**: load the demo data with one click, or your own JSONL / JSON / CSV / Parquet.\n"
    "2. **Model & kernel**: choose the stage and the kernel, see the work estimate, compute.\n"
    "3. **Selection**: drag the budget; the subset updates instantly along the greedy order.\n"
    "4. **Explore**, **Review**: see why samples were kept, pin or ban samples by hand.\n"
    "5. **Download** the selected rows in your file's own layout, with a manifest.")
s = state.ss()
if s["pool"] is None:
    ui.link("data", "Start: load data")
elif s["kernels"] is None:
    ui.link("kernel", "Next: compute a kernel")
else:
    ui.link("select", "Next: choose the budget")
st.caption("Runs offline: the default models (Gemma 3 270M, all-MiniLM-L6-v2) ship as Python "
           "packages. On a CPU the model utility kernel is slow (it scores every pair of samples), "
           "so the Model & kernel page offers to use only the first rows of the pool, or a sparse "
           "kernel that scores each sample only with its nearest neighbours.")
