"""Per-session state of DELIFT Studio, shared by every page (the evaluation page included).

Session keys (``st.session_state``); everything is per browser session, nothing is shared:

- ``"pool"``, ``"target"``, ``"existing"``: :class:`delift_core.Dataset` or None, the data
  loaded on the Data page (``target`` for task-specific, ``existing`` for continual).
- ``"kernels"``: :class:`delift_core.Kernels` or None, from the Kernel page.
- ``"kernel_pool"``: the Dataset the kernels cover (the first ``limit`` rows of ``pool``); every
  selection is a selection of these rows. ``"kernel_target"``/``"kernel_existing"`` likewise.
- ``"kernel_config"``: dict of the choices the kernels were computed with: ``kind``
  ('utility' | 'embedding' | 'random'), ``stage``, ``objective``, ``model``, ``embedder``,
  ``limit``, ``neighbours`` (K of a sparse utility kernel, or None for every pair), ``dtype``
  (the causal LM's precision for the utility kernel).
- ``"kernels_version"``: int, bumped whenever ``kernels`` change.
- ``"selection"``: :class:`delift_core.Selection` or None, the current selection at the chosen
  budget, kept up to date by :func:`current_selection` (any page may call it).
- ``"selection_error"``: str or None, why there is no selection (bad budget, ...).
- ``"row_scores"``: the per-row scores (``RowScores``: IFD or response tokens) the kernel job
  computed for a score-based objective chosen on the Kernel page, or None.
- ``"decisions"``: :class:`delift_core.Decisions`, pins, bans and notes from the Review page;
  every selection run passes the pins and bans to ``select``.
- ``"snapshots"``: dict label -> Selection, the latest selection per method, for comparisons.
- ``"p_*"``: widget values that persist across page switches (see :func:`init`); an
  objective's parameters are ``"p_param_<objective>_<name>"`` (see :func:`param_key`), one per
  ``Param`` of its registry spec.
- ``"ev_*"``: the Evaluate page's settings (:data:`EVAL_DEFAULTS`, persisted like ``p_*``) and
  ``"ev_report"``, its last report.
- ``"_sid"``: this session's id (the key of its background jobs, a kernel computation and an
  evaluation, see :mod:`studio.jobs`).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path
from typing import Any, Callable

import numpy as np
import streamlit as st

from delift_core.data.layouts import ColumnMapping
from delift_core.data.dataset import Dataset, load_dataset, load_dataset_bytes
from delift_core.outputs.review import Decisions
from delift_core.kernels.builder import Kernels
from delift_core.selection.select import Selection, select
from delift_core.errors import SelectionError
from delift_core.lm.models import load_embedder
from delift_core.selection import plan
from delift_core.selection import objectives as registry
from delift_core.data.formats import read_records
from delift_core.kernels.embedding import embed_rows
from delift_core import settings as spec
from delift_core.lm.models import resolve_device

from . import jobs, served

ROLES = ("pool", "target", "existing")
ROLE_LABELS = {"pool": "Pool", "target": "Target set", "existing": "Existing set"}
KERNEL_LABELS = {"utility": "DELIFT (model utility)", "embedding": "DELIFT-SE (sentence embedding)",
                 "random": "Random baseline"}
SHORT_KERNEL = {"utility": "DELIFT", "embedding": "DELIFT-SE", "random": "Random"}
STUDIO_DECIDES = {"learned": "the Kernel page turns it on for pools larger than an exact kernel "
                             "affords on a CPU (plan.default_learned)",
                  "verify_rounds": "the Select page's Verify button offers the spec's suggested "
                                   "rounds (its default 0, off, is not pressing the button)",
                  "verify_explore": "the Select page's Verify button offers the spec's suggested "
                                    "share (exploring is part of verifying)"}
"""Engine settings whose first value in the studio depends on the data, not the spec default."""


def setting_key(name: str) -> str:
    """The session key of an engine setting's widget value."""
    return f"p_{name}"


DEFAULTS: dict[str, Any] = {
    **{setting_key(s.name): s.default for s in spec.SETTINGS.values()
       if s.widget and s.default is not None and s.name not in STUDIO_DECIDES},
    "p_stage": "instruction", "p_model_choice": spec.default("model"), "p_model_custom": "",
    "p_budget_mode": "percent", "p_budget_pct": 30, "p_sparse": False,
    "p_neighbours": spec.get("neighbours").suggested,
    "p_verify_rounds": spec.get("verify_rounds").suggested,
    "p_verify_explore": spec.get("verify_explore").suggested,
}
"""Widget values a new session starts with: the engine settings' defaults from the spec, and the
studio's own choices (stage, budget; K offered when the sparse kernel is switched on)."""
EVAL_DEFAULTS: dict[str, Any] = {
    "ev_subset_src": "demo:existing", "ev_pool_src": "demo:pool", "ev_test_src": "demo:target",
    "ev_test_limit": 10, "ev_baselines": ["random", "full", "none"], "ev_seeds": "0,1,2",
    "ev_mode": "icl", "ev_shots": 2, "ev_max_new": 24, "ev_lora_steps": 12,
    "ev_model": spec.default("model"), "ev_embedder": spec.default("embedder"),
    "ev_use_current": True, "ev_methods": [],
}
"""The Evaluate page's widget values (``ev_*``), persisted across page switches like ``p_*``;
``ev_generate`` (generating answers, much slower than teacher-forced scores) defaults to on
only with a GPU (:func:`init`)."""


def stage_label(stage: str) -> str:
    """'<stage> → <OBJECTIVE> / ...': a stage and its objectives (from the registry)."""
    return registry.stage_label(stage)


def objective_label(name: str) -> str:
    """An objective's label from its registry spec."""
    return registry.get(name).label


def ss() -> Any:
    """Shorthand for ``st.session_state``."""
    return st.session_state


def default_kind() -> str:
    """The kernel a first-time user gets: the model utility on a GPU, the fast embedding on CPU."""
    return "utility" if resolve_device().type == "cuda" else "embedding"


def init() -> None:
    """Call at the top of every page: defaults, persistent widgets, adopt a finished job."""
    s = ss()
    s.setdefault("_sid", uuid.uuid4().hex)
    for role in ROLES:
        s.setdefault(role, None)
    for key in ("kernels", "kernel_pool", "kernel_target", "kernel_existing", "kernel_config",
                "selection", "selection_error", "row_scores"):
        s.setdefault(key, None)
    s.setdefault("kernels_version", 0)
    s.setdefault("decisions", Decisions())
    s.setdefault("snapshots", {})
    s.setdefault("p_kernel", default_kind())
    for key, value in {**DEFAULTS, **EVAL_DEFAULTS}.items():
        s.setdefault(key, value)
    if "ev_generate" not in s:  # teacher-forced scores only on a CPU: generation is slow there
        s["ev_generate"] = resolve_device().type != "cpu"
    # Streamlit forgets a widget's value when a page without it runs; re-setting keeps it.
    for key in list(s.keys()):
        if isinstance(key, str) and (key.startswith("p_") or key in EVAL_DEFAULTS):
            s[key] = s[key]
    adopt_finished_job()
    adopt_verified_job()


def session_id() -> str:
    return ss()["_sid"]


def tab_open() -> Callable[[], bool]:
    """A check, safe from any thread, of whether this browser session is still connected (a
    closed tab's queued model job leaves the queue, :class:`studio.jobs.ModelQueue`)."""
    from streamlit.runtime import Runtime, exists
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    if ctx is None or not exists():  # outside a server (AppTest, scripts): always open
        return lambda: True
    runtime, sid = Runtime.instance(), ctx.session_id
    return lambda: runtime.is_active_session(sid)


# ----------------------------------------------------------------------------------------------
# Data


def mapping_key(mapping: ColumnMapping | None) -> tuple | None:
    """A hashable form of a column mapping (for caches)."""
    if mapping is None:
        return None
    return (tuple(mapping.prompt_columns), mapping.response, mapping.id)


def _mapping(key: tuple | None) -> ColumnMapping | None:
    return None if key is None else ColumnMapping(prompt=list(key[0]), response=key[1], id=key[2])


@st.cache_data(show_spinner=False, max_entries=32)
def load_demo(role: str) -> Dataset:
    """The shipped demo set for a role."""
    return load_dataset(f"demo:{role}")


@st.cache_data(show_spinner=False, max_entries=16)
def load_bytes(data: bytes, filename: str, mapping: tuple | None = None) -> Dataset:
    """An uploaded file (cached by content)."""
    return load_dataset_bytes(data, filename, mapping=_mapping(mapping))


@st.cache_data(show_spinner=False, max_entries=16)
def _load_source(source: str, mapping: tuple | None, split: str | None, stamp: Any) -> Dataset:
    return load_dataset(source, mapping=_mapping(mapping), split=split or None)


def load_source(source: str, mapping: tuple | None = None, split: str | None = None) -> Dataset:
    """A local path, saved-dataset folder or hub id (cached; a changed file reloads); on a served
    studio only inside the data root, hub ids only when allowed (:mod:`studio.served`)."""
    source = served.data_source(source)
    p = Path(source).expanduser()
    stamp = (p.stat().st_mtime_ns, p.stat().st_size) if p.is_file() else None
    return _load_source(source.strip(), mapping, split, stamp)


@st.cache_data(show_spinner=False, max_entries=16)
def columns_of(data: bytes, filename: str) -> list[str]:
    """Column names of a file's records (to map columns by hand when the layout is unknown)."""
    records, _ = read_records(data, filename)
    seen: dict[str, None] = {}
    for r in records[:1000]:
        seen.update(dict.fromkeys(r))
    return list(seen)


def max_upload_bytes() -> int:
    """The upload limit in bytes (``server.maxUploadSize`` in .streamlit/config.toml, MB)."""
    return int(st.get_option("server.maxUploadSize")) * 1024 * 1024


def upload_too_large(size: int, limit: int | None = None) -> str | None:
    """A message when an upload is over the limit, else None."""
    limit = max_upload_bytes() if limit is None else limit
    if size > limit:
        return (f"The file is {size / 2**20:.1f} MB; uploads are limited to {limit / 2**20:.0f} MB "
                "(server.maxUploadSize in .streamlit/config.toml). Give a local path instead.")
    return None


def set_dataset(role: str, ds: Dataset | None) -> bool:
    """Make ``ds`` the session's pool/target/existing; clears kernels that no longer fit.

    Returns True when something changed.
    """
    s = ss()
    old = s[role]
    same = (old is None and ds is None) or (old is not None and ds is not None and
                                            old.text_sha256 == ds.text_sha256 and
                                            old.source == ds.source)
    if same:
        return False
    s[role] = ds
    clear_kernels()
    if role == "pool" and ds is not None:  # the decisions kept for this pool's content
        from . import decisions

        decisions.restore()
    return True


def clear_kernels() -> None:
    """Forget kernels and selections (the data they were computed for changed)."""
    s = ss()
    for key in ("kernels", "kernel_pool", "kernel_target", "kernel_existing", "kernel_config",
                "selection", "selection_error", "_full", "row_scores"):
        s[key] = None
    s["kernels_version"] += 1
    s["snapshots"] = {}


def rows_preview(ds: Dataset, limit: int = 200) -> "Any":
    """The first rows as a table: id, the prompt and response the models see, and raw fields."""
    import pandas as pd

    raw = []
    for row in ds.rows[:limit]:
        raw.append({k: (json.dumps(v, ensure_ascii=False) if isinstance(v, (list, dict)) else v)
                    for k, v in row.items()})
    table = pd.DataFrame({"id": ds.ids[:limit], "prompt": ds.prompts[:limit],
                          "response": ds.responses[:limit]})
    extra = pd.DataFrame(raw).drop(columns=[c for c in ("id",) if c in (raw[0] if raw else {})],
                                   errors="ignore")
    extra.columns = [f"[{c}]" for c in extra.columns]
    return pd.concat([table, extra.astype(str)], axis=1)


# ----------------------------------------------------------------------------------------------
# Kernels


def kernel_inputs(stage: str, kind: str, limit: int) -> plan.KernelInputs:
    """The session's pool cut to its first ``limit`` rows and the loaded extra sets this stage
    and kernel use (the rule is :func:`delift_core.selection.plan.kernel_inputs`)."""
    s = ss()
    return plan.kernel_inputs(s["pool"], stage, kind, limit, target=s["target"],
                              existing=s["existing"])


def start_kernel_job(config: dict, pool: Dataset, target: Dataset | None,
                     existing: Dataset | None, est: Any) -> jobs.KernelJob:
    """Start computing kernels for this session in a background thread (``est``: the page's
    work estimate of exactly this computation, which the job's progress is weighted by).
    A model or embedder the served studio does not allow, or Ray on a served studio, is
    refused here (AccessRefused)."""
    config = dict(config)
    if config.get("backend") == "ray" and served.served_settings().served:
        raise served.AccessRefused(  # a cluster per request, workers for everyone to stop
            "Ray is not offered on a shared studio: its workers and cluster are the server's, "
            "not a session's; compute in this process (Compute on) or run `delift kernel "
            "--backend ray` on the cluster")
    for key, embedder in (("model", False), ("embedder", True)):
        if config.get(key):
            config[key] = served.model_source(config[key], embedder=embedder)
    job = jobs.KernelJob(config=config, pool=pool, target=target, existing=existing,
                         estimate=est)
    return jobs.job_registry().start(session_id(), job, tab_open(), served.signed_in_user())


def current_job() -> jobs.KernelJob | None:
    """This session's kernel job (running or finished), if any."""
    return jobs.job_registry().get(session_id())


def start_eval_job(**request: Any) -> jobs.EvalJob:
    """Start an evaluation for this session in a background thread (``jobs.EvalJob``'s fields:
    subsets, test, settings, modes, model, embedder); a running one is cancelled."""
    request = dict(request)
    request["model"] = served.model_source(request.get("model"))
    request["embedder"] = served.model_source(request.get("embedder"), embedder=True)
    return jobs.job_registry().start(session_id(), jobs.EvalJob(**request), tab_open(),
                                     served.signed_in_user())


def current_eval_job() -> jobs.EvalJob | None:
    """This session's evaluation job (running or finished), if any."""
    return jobs.job_registry().get(session_id(), jobs.EvalJob.KIND)


def adopt_finished_job() -> None:
    """Move a finished job's kernels into this session (once)."""
    job = current_job()
    if job is None or job.status != "done" or job.adopted:
        return
    job.adopted = True
    set_kernels(job.result, job.config, job.pool, job.target, job.existing)
    ss()["row_scores"] = job.scores  # what a score-based method (ifd, longest) ranks by


def start_verify_job(sel: Selection, rounds: int, explore: float = 0.0) -> jobs.VerifyJob:
    """Verify the current selection of a learned kernel in a background thread: its predicted
    covers (and with ``explore`` > 0 that share of the unselected columns of highest predicted
    gain) scored exactly, ``rounds`` rounds at most, with the same objective, parameters,
    decisions and greedy settings (:class:`jobs.VerifyJob`)."""
    s = ss()
    options = {"params": objective_params(sel.objective),
               "seed": int(s["p_seed"]), "pinned": list(sel.pinned), "banned": list(sel.banned),
               "diagonal": s["p_diagonal"], "method": s["p_method"],
               "epsilon": float(s["p_epsilon"]), "scores": s.get("row_scores"),
               "full_order": True}  # as the page selects: the same rows, stochastic greedy too
    job = jobs.VerifyJob(pool=s["kernel_pool"], kernels=s["kernels"], target=s["kernel_target"],
                         existing=s["kernel_existing"],
                         config=dict(s["kernel_config"]), objective=sel.objective,
                         budget=int(sel.budget), rounds=int(rounds), explore=float(explore),
                         options=options)
    return jobs.job_registry().start(session_id(), job, tab_open(), served.signed_in_user())


def current_verify_job() -> jobs.VerifyJob | None:
    """This session's verification job (running or finished), if any."""
    return jobs.job_registry().get(session_id(), jobs.VerifyJob.KIND)


def adopt_verified_job() -> None:
    """Take a finished verification's kernels (the learned kernel with the verified values) into
    this session, once, unless the session's kernels changed while it ran."""
    job = current_verify_job()
    s = ss()
    if job is None or job.status != "done" or job.adopted:
        return
    job.adopted = True
    if job.kernels is not s["kernels"]:
        return  # verified for kernels this session no longer uses
    s["kernels"] = job.result.kernels
    s["kernels_version"] += 1
    s["_full"] = None


def try_demo() -> None:
    """The first-visit path in one step: the demo data, the DELIFT-SE (embedding) kernel of its
    pool for instruction tuning (FL), so the Select page has a selection at once (seconds on a
    CPU; the embeddings are cached)."""
    from delift_core.kernels.request import kernels_from_settings

    for role in ROLES:
        set_dataset(role, load_demo(role))
    s = ss()
    pool = s["pool"]
    s["p_kernel"], s["p_stage"] = "embedding", "instruction"
    kernels = kernels_from_settings(pool, {"kernel": "embedding"})
    config = {"kind": "embedding", "stage": "instruction", "objective": "fl", "model": None,
              "embedder": None, "limit": len(pool), "neighbours": None, "dtype": None,
              "backend": "local", "target_direction": None, "engine": {}}
    set_kernels(kernels, config, pool, None, None)


def set_kernels(kernels: Kernels, config: dict, pool: Dataset, target: Dataset | None,
                existing: Dataset | None) -> None:
    """Install computed kernels and point the selection at the stage's objective."""
    s = ss()
    s["kernels"], s["kernel_config"] = kernels, dict(config)
    s["kernel_pool"], s["kernel_target"], s["kernel_existing"] = pool, target, existing
    s["kernels_version"] += 1
    s["p_objective"] = config["objective"]
    s["p_budget_count"] = max(1, round(0.3 * len(pool)))
    s["_full"] = None


def available_objectives() -> list[str]:
    """Objectives the current kernels can serve (:func:`delift_core.selection.plan.available_objectives`)."""
    return plan.available_objectives(ss()["kernels"], ss().get("row_scores"))


def param_key(objective: str, name: str) -> str:
    """The session key of an objective parameter's slider (one per objective and parameter, so
    objectives that share a name such as a weight keep their own ranges and values)."""
    return f"p_param_{objective}_{name}"


def objective_params(objective: str) -> dict[str, float]:
    """The objective's parameters as the Select page set them (its registry defaults until then)."""
    s = ss()
    return {p.name: float(s.get(param_key(objective, p.name), p.default))
            for p in registry.get(objective).params}


# ----------------------------------------------------------------------------------------------
# Selection


def keep_budget_across_modes(n: int) -> None:
    """When the budget switches between percent and count, carry the same budget over (6 of 12
    rows stays 6 rows, not the count last set): called as the mode radio's on_change."""
    from delift_core.selection.select import resolve_budget

    s = ss()
    if s["p_budget_mode"] == "count":
        pct = float(s["p_budget_pct"])
        s["p_budget_count"] = resolve_budget(pct / 100, n) if pct > 0 else 0
    else:
        s["p_budget_pct"] = int(round(100 * int(s.get("p_budget_count", 0) or 0) / max(1, n)))


def budget_value() -> float | int:
    """The budget the Select page set: a fraction (percent mode) or a count."""
    s = ss()
    if s["p_budget_mode"] == "percent":
        return float(s["p_budget_pct"]) / 100.0
    return int(s.get("p_budget_count", 0) or 0)


def method_label(config: dict | None, objective: str, n_rows: int, n_pool: int) -> str:
    """A short name for a selection method, '<kernel> · <OBJECTIVE>' or a baseline's label, then
    ' · first N rows' when the kernels cover only part of the pool."""
    kind = (config or {}).get("kind", "embedding")
    spec = registry.get(objective)
    name = (spec.label.capitalize() if spec.baseline
            else f"{SHORT_KERNEL[kind]} · {objective.upper()}")
    return name + (f" · first {n_rows} rows" if n_rows < n_pool else "")


NAIVE_MAX_ROWS = 3000
"""The most rows the studio runs naive greedy on: its full order is cubic in the rows and runs in
the page's own thread; lazy greedy gives the same selection."""


def current_selection() -> Selection | None:
    """The selection for the current kernels, objective, parameters, decisions and budget.

    The full greedy order is computed once per (kernels, objective, parameters, pins, bans);
    a budget change only re-cuts it (``Selection.at_budget``). Errors go to
    ``"selection_error"``.
    """
    s = ss()
    s["selection_error"] = None
    kernels: Kernels | None = s["kernels"]
    pool: Dataset | None = s["kernel_pool"]
    if kernels is None or pool is None:
        s["selection"] = None
        return None
    objective = s.get("p_objective") or s["kernel_config"]["objective"]
    if objective not in available_objectives():
        objective = s["kernel_config"]["objective"]
        s["p_objective"] = objective
    decisions: Decisions = s["decisions"]
    ids = set(pool.ids)
    pins = [i for i in decisions.pinned if i in ids]
    bans = [i for i in decisions.banned if i in ids]
    params = objective_params(objective)
    diagonal, method, epsilon = s["p_diagonal"], s["p_method"], float(s["p_epsilon"])
    key = (s["kernels_version"], objective, tuple(sorted(params.items())), int(s["p_seed"]),
           tuple(pins), tuple(bans), diagonal, method, epsilon)
    try:
        if method == "naive" and len(pool) > NAIVE_MAX_ROWS:
            raise SelectionError(
                f"naive greedy on {len(pool):,} rows scans every candidate at every step of the "
                f"page's full order (hours at this size, and a page cannot be stopped); lazy "
                f"greedy selects exactly the same rows far faster: choose it under Greedy")
        full = s.get("_full")
        if not full or full[0] != key:
            full = (key, select(pool, objective, kernels, len(pool), params=params,
                                seed=int(s["p_seed"]), pinned=pins, banned=bans,
                                full_order=True, diagonal=diagonal, method=method,
                                epsilon=epsilon, scores=s.get("row_scores")))
            s["_full"] = full
        sel: Selection = full[1]
        budget = budget_value()
        from delift_core.selection.select import resolve_budget

        b = resolve_budget(budget, len(pool))
        sel = sel.at_budget(min(b, sel.max_budget))
    except SelectionError as e:
        s["selection"], s["selection_error"] = None, str(e)
        return None
    s["selection"] = sel
    n_all = len(s["pool"]) if s["pool"] is not None else len(pool)
    s["snapshots"][method_label(s["kernel_config"], objective, len(pool), n_all)] = sel
    return sel


def extra_sets() -> dict[str, Dataset | None]:
    """The target/existing sets the current kernels used (for exports and manifests)."""
    s = ss()
    return {"target": s["kernel_target"], "existing": s["kernel_existing"]}


# ----------------------------------------------------------------------------------------------
# Embeddings for maps


@st.cache_resource(show_spinner=False)
def cached_embedder(name: str) -> Any:
    """The sentence embedder, loaded once per process."""
    return load_embedder(name or None)


@st.cache_data(show_spinner=False, max_entries=16)
def _embed(key: str, _ds: Dataset, embedder: str) -> np.ndarray:
    return embed_rows(cached_embedder(embedder), _ds)


def embeddings(ds: Dataset, embedder: str | None = None) -> np.ndarray:
    """Unit sentence embeddings of a dataset's samples (cached by content), with the embedder
    checked as every model a page takes is (a served studio: packaged, inside the data root, or
    an allowed hub id); a refused one stops the page with its message."""
    try:
        name = served.model_source(embedder or ss()["p_embedder"], embedder=True) or ""
    except served.AccessRefused as e:
        st.error(str(e))
        st.stop()
    return _embed(ds.text_sha256 + name, ds, name)


@st.cache_data(show_spinner=False, max_entries=16)
def _project(key: str, _emb: np.ndarray, method: str, seed: int) -> np.ndarray:
    from delift_core.outputs.maps import project_2d

    return project_2d(_emb, method=method, seed=seed)


def projection(emb: np.ndarray, method: str, seed: int = 0) -> np.ndarray:
    """2-D map of embeddings (cached by content, method and seed)."""
    key = hashlib.sha256(np.ascontiguousarray(emb).tobytes()).hexdigest()
    return _project(key, emb, method, seed)


@st.cache_data(show_spinner=False, max_entries=16)
def _clusters(key: str, _emb: np.ndarray, k: int, seed: int) -> np.ndarray:
    from delift_core.outputs.maps import cluster_labels

    return cluster_labels(_emb, k, seed=seed)


def clusters(emb: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """k-means labels of embeddings (cached)."""
    key = hashlib.sha256(np.ascontiguousarray(emb).tobytes()).hexdigest()
    return _clusters(key, emb, k, seed)
