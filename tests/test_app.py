"""The studio's pages, driven with Streamlit's AppTest (embedding kernel, which is fast).

Each test walks a page's main path or an error path and checks what the page shows and what it
keeps in ``st.session_state`` (the keys documented in ``studio/state.py``).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from delift_core.data.dataset import load_dataset
from delift_core.outputs.export import selection_artifacts
from delift_core.selection import plan
from delift_core.selection import objectives as registry
from delift_core.selection.objectives.facility_location import FacilityLocation
from delift_core.selection.objectives.spec import ObjectiveSpec, Param
from studio.state import param_key

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
TIMEOUT = 300


def new_app() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    assert not at.exception
    return at


def goto(at: AppTest, page: str) -> AppTest:
    at.switch_page(f"pages/{page}.py")
    at.run()
    assert not at.exception, at.exception
    return at


def wait_for_jobs() -> None:
    """Join this process's kernel threads (the jobs of every AppTest session)."""
    for t in threading.enumerate():
        if t.name.startswith("delift-kernel-"):
            t.join(TIMEOUT)


def load_demo(at: AppTest) -> AppTest:
    goto(at, "1_Data")
    at.button(key="load_demo_all").click().run()
    assert not at.exception
    return at


def compute(at: AppTest, kind: str = "embedding", stage: str = "instruction",
            limit: int | None = None) -> AppTest:
    goto(at, "2_Kernel")
    at.radio(key="p_stage").set_value(stage).run()
    at.radio(key="p_kernel").set_value(kind).run()
    if kind == "utility" and at.session_state["p_learned"]:
        at.toggle(key="p_learned").set_value(False).run()  # the exact kernel of the first N rows
    if limit is not None:
        n = len(at.session_state["pool"])
        at.number_input(key=f"p_limit_{kind}_{n}").set_value(limit).run()
    at.button(key="start_kernel").click().run()
    assert not at.exception, at.exception
    wait_for_jobs()
    at.run()
    assert not at.exception, at.exception
    assert at.session_state["kernels"] is not None, [e.value for e in at.error]
    return at


def ready(kind: str = "embedding", stage: str = "instruction") -> AppTest:
    at = new_app()
    load_demo(at)
    compute(at, kind, stage)
    at.session_state["p_map_method"] = "pca"  # keep most tests fast; one test draws UMAP
    return at


def texts(elements) -> list[str]:
    return [str(e.value) for e in elements]


# ----------------------------------------------------------------------------------------------
# Landing and data


def test_landing_says_what_delift_does_and_where_to_start() -> None:
    at = new_app()
    assert at.title[0].value == "DELIFT Studio"
    body = " ".join(texts(at.markdown))
    assert "facility location" in body and "Data" in body


def test_demo_data_loads_all_three_sets_with_preview() -> None:
    at = load_demo(new_app())
    s = at.session_state
    assert (len(s["pool"]), len(s["target"]), len(s["existing"])) == (240, 40, 60)
    metrics = texts(at.metric)
    assert metrics[:4] == ["240", "alpaca", "jsonl", "0"]
    assert at.dataframe[0].value.shape[0] == 200  # preview of the first 200 rows
    assert list(at.dataframe[0].value.columns[:3]) == ["id", "prompt", "response"]


def test_bad_file_shows_the_line_and_the_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "c", "response": \n')
    at = goto(new_app(), "1_Data")
    at.radio(key="p_src_pool").set_value("path").run()
    at.text_input(key="p_path_pool").input(str(bad)).run()
    at.button(key="load_path_pool").click().run()
    assert not at.exception
    errors = texts(at.error)
    assert any("bad.jsonl" in e and "line 2" in e and "not valid JSON" in e for e in errors), errors
    assert at.session_state["pool"] is None


def test_missing_file_and_unknown_layout_then_mapping_by_hand(tmp_path: Path) -> None:
    at = goto(new_app(), "1_Data")
    at.radio(key="p_src_pool").set_value("path").run()
    at.text_input(key="p_path_pool").input(str(tmp_path / "nope.jsonl")).run()
    at.button(key="load_path_pool").click().run()
    assert any("no such file" in e for e in texts(at.error))

    odd = tmp_path / "odd.csv"
    odd.write_text("key,question_text,reply\nk1,What is 2+2?,4\nk2,Capital of France?,Paris\n"
                   "k3,Empty one,\n")
    at.text_input(key="p_path_pool").input(str(odd)).run()
    at.button(key="load_path_pool").click().run()
    assert any("unknown layout" in e for e in texts(at.error))
    at.checkbox(key="p_map_on_pool").check().run()
    at.multiselect(key="p_map_prompt_pool").select("question_text").run()
    at.selectbox(key="p_map_resp_pool").set_value("reply").run()
    at.selectbox(key="p_map_id_pool").set_value("key").run()
    at.button(key="load_path_pool").click().run()
    assert not at.error, texts(at.error)
    pool = at.session_state["pool"]
    assert pool.ids == ["k1", "k2"] and pool.layout == "mapping"
    assert pool.responses == ["4", "Paris"]
    assert "1" in texts(at.metric)  # one skipped row (empty response)


def test_upload_size_limit_message() -> None:
    from studio.state import upload_too_large

    assert upload_too_large(10, limit=100) is None
    msg = upload_too_large(300 * 1024 * 1024, limit=200 * 1024 * 1024)
    assert "300.0 MB" in msg and "limited to 200 MB" in msg and "maxUploadSize" in msg
    config = (ROOT / ".streamlit" / "config.toml").read_text()
    assert "maxUploadSize" in config


def test_server_config_turns_off_the_gc_after_every_script_run() -> None:
    """Streamlit's forced full GC after each run (each 1 s progress poll included) holds the GIL
    over a heap with torch loaded, and made a studio kernel 2x slower than the CLI's
    (benchmarks/README.md). The option must exist under this name, or the line does nothing."""
    import tomllib

    from streamlit import config as st_config

    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    st_config.get_option("runner.postScriptGC")  # raises for an unknown option name
    assert config["runner"]["postScriptGC"] is False
    assert config["server"]["fileWatcherType"] == "poll"  # no inotify flood over .venv


# ----------------------------------------------------------------------------------------------
# Kernel


def test_task_specific_without_target_is_refused() -> None:
    at = goto(new_app(), "1_Data")
    at.button(key="demo_pool").click().run()
    assert len(at.session_state["pool"]) == 240 and at.session_state["target"] is None
    goto(at, "2_Kernel")
    at.radio(key="p_stage").set_value("task").run()
    assert any("needs a target set" in e for e in texts(at.error))
    assert at.button(key="start_kernel").disabled


def test_kernel_estimate_and_first_n_rows() -> None:
    at = load_demo(new_app())
    goto(at, "2_Kernel")
    at.radio(key="p_kernel").set_value("utility").run()
    # the exact kernel (the learned one is the CPU default for the demo pool, tested below)
    at.toggle(key="p_learned").set_value(False).run()
    # utility on CPU defaults to the first 24 rows: 24*24 pairs + 24 plain passes
    assert at.number_input(key="p_limit_utility_240").value == 24
    assert texts(at.metric)[0] == f"{24 * 24 + 24:,}"
    # a first time estimate from the benchmark machine's measured speed (CPU, no run yet)
    first_guess = texts(at.metric)[2]
    assert first_guess.endswith(" s") or " min" in first_guess, first_guess
    at.radio(key="p_dtype").set_value("bfloat16").run()
    assert texts(at.metric)[2] == "—"  # bfloat16's CPU speed is measured, never guessed
    at.radio(key="p_dtype").set_value("float32").run()
    # sparse: K nearest + 4 random per row; K never exceeds N (and stays there when N grows)
    at.toggle(key="p_sparse").set_value(True).run()
    assert at.number_input(key="p_neighbours").value == 16
    assert texts(at.metric)[0] == f"{24 * 20 + 24:,}"
    at.number_input(key="p_limit_utility_240").set_value(5).run()
    assert at.number_input(key="p_neighbours").value == 5
    at.number_input(key="p_limit_utility_240").set_value(24).run()
    assert at.number_input(key="p_neighbours").value == 5
    assert texts(at.metric)[0] == f"{24 * 9 + 24:,}"
    at.toggle(key="p_sparse").set_value(False).run()
    at.radio(key="p_kernel").set_value("embedding").run()
    assert at.number_input(key="p_limit_embedding_240").value == 240
    assert texts(at.metric)[0] == f"{240 + 40 + 60:,}"  # every loaded set is embedded


def test_learned_kernel_is_the_cpu_default_for_the_demo_pool_only(tmp_path: Path) -> None:
    """On a CPU the utility kernel of the demo pool (240 rows) starts as a learned kernel of the
    whole pool with the suggested exact passes, its estimate set against the exact kernel's
    passes; switched off, it is the exact kernel of the first 24 rows. A 20-row pool, which the
    exact kernel affords, starts with the exact kernel of every row."""
    from delift_core import settings as spec
    from delift_core.lm.models import resolve_device

    if resolve_device().type != "cpu":
        pytest.skip("on a GPU the exact kernel is the default (plan.default_learned)")
    passes = spec.get("exact_passes").suggested
    at = load_demo(new_app())
    goto(at, "2_Kernel")
    at.radio(key="p_kernel").set_value("utility").run()
    assert not at.exception, at.exception
    assert at.toggle(key="p_learned").value is True
    assert at.number_input(key="p_limit_utility_learned_240").value == 240
    assert at.number_input(key="p_exact_passes").value == passes == 3000
    learned = [c for c in texts(at.caption) if c.startswith("Learned kernel:")]
    assert len(learned) == 1, texts(at.caption)
    assert f"about {passes:,} exact model passes" in learned[0], learned
    assert f"instead of the {240 * 240 + 240:,} passes of the exact kernel" in learned[0], learned
    at.toggle(key="p_learned").set_value(False).run()
    assert not at.exception, at.exception
    assert at.number_input(key="p_limit_utility_240").value == 24
    assert not [n for n in at.number_input if n.key == "p_exact_passes"]
    assert not [c for c in texts(at.caption) if c.startswith("Learned kernel:")]
    assert texts(at.metric)[0] == f"{24 * 24 + 24:,}"
    at.toggle(key="p_learned").set_value(True).run()  # back: the whole pool again
    assert at.number_input(key="p_limit_utility_learned_240").value == 240

    small = tmp_path / "small.jsonl"
    small.write_text("".join(json.dumps(r) + "\n" for r in load_dataset("demo:pool").rows[:20]))
    at = goto(new_app(), "1_Data")
    at.radio(key="p_src_pool").set_value("path").run()
    at.text_input(key="p_path_pool").input(str(small)).run()
    at.button(key="load_path_pool").click().run()
    assert not at.error, texts(at.error)
    assert len(at.session_state["pool"]) == 20
    goto(at, "2_Kernel")
    at.radio(key="p_kernel").set_value("utility").run()
    assert not at.exception, at.exception
    assert at.toggle(key="p_learned").value is False
    assert at.number_input(key="p_limit_utility_20").value == 20
    assert not [n for n in at.number_input if n.key == "p_exact_passes"]
    assert not [c for c in texts(at.caption) if c.startswith("Learned kernel:")]
    assert texts(at.metric)[0] == f"{20 * 20 + 20:,}"


def test_embedding_kernel_job_and_instant_budget() -> None:
    at = ready()
    s = at.session_state
    assert s["kernels"].kind == "embedding" and s["kernels"].pool.shape == (240, 240)
    assert s["kernel_config"]["objective"] == "fl"
    assert any("Kernel ready" in x for x in texts(at.success))
    goto(at, "3_Select")
    assert texts(at.metric)[0] == "72 of 240"
    order = list(s["selection"].order)
    at.slider(key="p_budget_pct").set_value(10).run()
    assert texts(at.metric)[0] == "24 of 240"
    sel = s["selection"]
    assert list(sel.order) == order and sel.selected_ids == [sel.pool.ids[k] for k in order[:24]]
    assert len(at.get("plotly_chart")) == 1  # the gain curve
    at.radio(key="p_budget_mode").set_value("count").run()  # the same budget, as a count
    assert s["p_budget_count"] == 24 and texts(at.metric)[0] == "24 of 240"
    at.number_input(key="p_budget_count").set_value(60).run()
    at.radio(key="p_budget_mode").set_value("percent").run()
    assert s["p_budget_pct"] == 25 and texts(at.metric)[0] == "60 of 240"


def test_budget_of_zero_is_an_error() -> None:
    at = ready()
    goto(at, "3_Select")
    at.slider(key="p_budget_pct").set_value(0).run()
    assert not at.exception
    assert any("must be in (0, 1]" in e for e in texts(at.error))
    at.radio(key="p_budget_mode").set_value("count").run()
    at.number_input(key="p_budget_count").set_value(0).run()
    assert any("selects nothing" in e for e in texts(at.error))
    at.number_input(key="p_budget_count").set_value(5).run()
    assert not at.error and texts(at.metric)[0] == "5 of 240"


def test_task_specific_flmi_and_eta() -> None:
    at = ready(stage="task")
    assert at.session_state["kernels"].target.shape == (40, 240)
    goto(at, "3_Select")
    assert at.selectbox(key="p_objective").value == "flmi"
    before = at.session_state["selection"].selected_ids
    at.slider(key=param_key("flmi", "eta")).set_value(0.0).run()
    assert not at.exception
    assert at.session_state["selection"].params["eta"] == 0.0
    assert at.session_state["selection"].selected_ids != before
    # the value persists across page switches, like every p_* widget
    goto(at, "1_Data")
    goto(at, "3_Select")
    assert at.slider(key=param_key("flmi", "eta")).value == 0.0
    assert at.session_state["selection"].params["eta"] == 0.0


def served_objectives(s) -> list[str]:
    """The registry's non-baseline objectives whose needed set is loaded, in registry order."""
    return [name for name, spec in registry.OBJECTIVES.items()
            if not spec.baseline and (spec.needs is None or s[spec.needs] is not None)
            and spec.scores is None]  # score-based methods: once their scores are computed


def test_select_offers_a_slider_per_parameter_of_every_registered_objective() -> None:
    at = ready()  # demo pool, target and existing: the embedding kernel covers all three
    s = at.session_state
    goto(at, "3_Select")
    names = served_objectives(s)
    labels = [registry.get(n).label for n in names]
    baselines = [spec.label for spec in registry.OBJECTIVES.values() if spec.baseline]
    assert at.selectbox(key="p_objective").options == labels + baselines
    for name in names:
        spec = registry.get(name)
        at.selectbox(key="p_objective").set_value(name).run()
        assert not at.exception, at.exception
        assert s["selection"].objective == name, (name, [e.value for e in at.error])
        keys = {sl.key for sl in at.slider} - {"p_budget_pct"}
        assert keys == {param_key(name, p.name) for p in spec.params}, name
        for p in spec.params:
            slider = at.slider(key=param_key(name, p.name))
            assert slider.label == p.label
            assert (slider.min, slider.max, slider.step) == (p.low, p.high, p.step)
            assert slider.value == p.default and s["selection"].params[p.name] == p.default
            slider.set_value(p.low).run()
            assert not at.exception, at.exception
            assert s["selection"].params[p.name] == p.low, (name, p.name)


def test_kernel_page_offers_each_stage_and_its_objectives() -> None:
    at = load_demo(new_app())
    goto(at, "2_Kernel")
    stage_radio = at.radio(key="p_stage")
    assert stage_radio.options == [registry.stage_label(st_) for st_ in plan.stages()]
    for stage in plan.stages():
        at.radio(key="p_stage").set_value(stage).run()
        names = registry.stage_objectives(stage)
        choice = [r for r in at.radio if r.key == f"p_{stage}_objective"]
        assert len(choice) == (1 if len(names) > 1 else 0), stage
        if choice:
            assert choice[0].options == [registry.get(n).label for n in names]
            assert choice[0].value == names[0]


def test_a_newly_registered_objective_appears_without_a_studio_edit(monkeypatch) -> None:
    """A registry entry alone (here a toy copy of FL with a parameter, in the continual stage,
    so that stage now has a choice) reaches the Kernel and Select pages."""
    toy = ObjectiveSpec(name="toy", label="TOY (test objective)", stage="continual",
                        help="A test objective.", params=(Param("w", "w: a weight", 0.5, 0.0,
                                                                1.0, step=0.25),),
                        build=lambda kernels, w: FacilityLocation(kernels.scaled("pool")))
    monkeypatch.setitem(registry.OBJECTIVES, "toy", toy)
    at = load_demo(new_app())
    goto(at, "2_Kernel")
    at.radio(key="p_stage").set_value("continual").run()
    radio = at.radio(key="p_continual_objective")
    assert "TOY (test objective)" in radio.options
    radio.set_value("toy").run()
    compute(at, stage="continual")  # the choice persisted; the kernel is computed for it
    assert at.session_state["kernel_config"]["objective"] == "toy"
    goto(at, "3_Select")
    assert at.selectbox(key="p_objective").value == "toy"
    assert at.slider(key=param_key("toy", "w")).value == 0.5
    at.slider(key=param_key("toy", "w")).set_value(0.25).run()
    assert not at.exception
    assert at.session_state["selection"].params["w"] == 0.25


def test_kernel_results_survive_page_switches_and_reruns() -> None:
    at = ready()
    version = at.session_state["kernels_version"]
    for page in ("1_Data", "3_Select", "2_Kernel", "4_Explore"):
        goto(at, page)
    assert at.session_state["kernels_version"] == version
    assert at.session_state["p_kernel"] == "embedding"  # the widget value persisted


def test_evaluate_settings_survive_page_switches() -> None:
    at = goto(new_app(), "7_Evaluate")
    at.text_input(key="ev_test_src").input("demo:pool").run()
    at.number_input(key="ev_shots").set_value(5).run()
    at.radio(key="ev_mode").set_value("lora").run()
    for page in ("1_Data", "2_Kernel", "7_Evaluate"):
        goto(at, page)
    assert at.text_input(key="ev_test_src").value == "demo:pool"
    assert at.number_input(key="ev_shots").value == 5
    assert at.radio(key="ev_mode").value == "lora"


# ----------------------------------------------------------------------------------------------
# Explore, review, download


def test_explore_heatmap_map_compare_and_explain() -> None:
    at = ready()
    at.session_state["p_map_method"] = "umap"
    goto(at, "4_Explore")
    # the first open prepares the map above the tabs, with its steps shown; later opens do not
    def statuses() -> list:
        return [x for x in at.main if type(x).__name__ == "Status"]

    first = statuses()
    assert first and first[0].label == "Embedding map ready"
    assert "Embedding the 240 samples" in " ".join(m.value for m in first[0].markdown)
    at.run()
    assert not statuses()
    charts = at.get("plotly_chart")
    assert len(charts) >= 2  # heatmap and map
    assert any("Showing 160 of 240 rows" in x for x in texts(at.info))  # sampled, with notice
    heat = json.loads(charts[0].proto.spec)
    assert heat["data"][0]["z"]["shape"] == "160, 160"
    # explain: the default sample is the first pick
    metrics = texts(at.metric)
    assert "selected" in metrics[0] and metrics[1] == "1 of 72"
    rejected = next(i for i in at.session_state["kernel_pool"].ids
                    if i not in set(at.session_state["selection"].selected_ids))
    at.selectbox(key="p_explain_id").set_value(rejected).run()
    metrics = texts(at.metric)
    assert metrics[0] == "rejected"
    assert metrics[1] in at.session_state["selection"].selected_ids
    # a second selection (random baseline) makes the comparison appear
    goto(at, "3_Select")
    at.selectbox(key="p_objective").set_value("random").run()
    goto(at, "4_Explore")
    assert len(at.session_state["snapshots"]) == 2
    labels = [m.label for m in at.metric]
    assert "Jaccard overlap" in labels
    counts = {m.label: m.value for m in at.metric}
    assert int(counts["In both"]) + int(counts["Only A"]) == 72


def test_review_pin_ban_note_persist_and_rerun_selection() -> None:
    at = ready()
    goto(at, "5_Review")
    sel = at.session_state["selection"]
    rejected = next(i for i in sel.pool.ids if i not in set(sel.selected_ids))
    first = sel.selected_ids[0]
    at.selectbox(key="p_review_id").set_value(rejected).run()
    at.button(key="pin").click().run()
    at.selectbox(key="p_review_id").set_value(first).run()
    at.button(key="ban").click().run()
    at.text_area(key=f"note_{first}").input("off-topic").run()
    at.button(key="save_note").click().run()
    assert not at.exception
    d = at.session_state["decisions"]
    assert d.pinned == [rejected] and d.banned == [first] and d.notes == {first: "off-topic"}
    goto(at, "3_Select")
    goto(at, "5_Review")
    sel = at.session_state["selection"]
    assert rejected in sel.selected_ids and first not in sel.selected_ids
    assert sel.pinned == [rejected] and sel.banned == [first]
    assert len(sel.selected_ids) == 72
    at.text_input(key="p_review_query").input("off-topic").run()
    assert list(at.dataframe[0].value["id"]) == [first]


def test_download_offers_every_artifact() -> None:
    at = ready()
    goto(at, "6_Download")
    labels = [b.label for b in at.get("download_button")]
    for name in ("selected.jsonl", "rejected.jsonl", "annotated.csv", "selection.json",
                 "manifest.json", "decisions.json"):
        assert any(name in x for x in labels), labels
    sel = at.session_state["selection"]
    files = selection_artifacts(sel, "jsonl")
    rows = [json.loads(x) for x in files["selected.jsonl"].decode().splitlines()]
    pool = load_dataset("demo:pool")
    assert len(rows) == 72 and all(r in pool.rows for r in rows)
    at.selectbox(key="p_format").set_value("csv").run()
    assert any("selected.csv" in b.label for b in at.get("download_button"))


def test_sessions_do_not_share_data_jobs_or_decisions(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Served (a data root, no sign-in): nothing tells two visitors apart, so decisions stay in
    each session; data, jobs and decisions never cross."""
    monkeypatch.setenv("DELIFT_DATA_ROOT", str(tmp_path))
    a = ready()
    b = new_app()
    assert b.session_state["pool"] is None and b.session_state["kernels"] is None
    assert a.session_state["_sid"] != b.session_state["_sid"]
    from studio import jobs

    assert jobs.job_registry().get(b.session_state["_sid"]) is None
    assert jobs.job_registry().get(a.session_state["_sid"]) is not None
    goto(a, "5_Review")
    a.button(key="pin").click().run()
    load_demo(b)
    compute(b)
    goto(b, "5_Review")
    assert b.session_state["decisions"].pinned == []
    assert len(a.session_state["decisions"].pinned) == 1


# ----------------------------------------------------------------------------------------------
# The model utility kernel on a few rows (real Gemma 3 270M)


@pytest.mark.slow
@pytest.mark.real_cache
def test_utility_kernel_on_six_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from delift_core.lm.models import cache_dir

    real = cache_dir()  # the user's cache, where the dequantised model is kept
    (real / "models").mkdir(exist_ok=True)
    (tmp_path / "models").symlink_to(real / "models")
    monkeypatch.setenv("DELIFT_CACHE_DIR", str(tmp_path))  # kernels go to a fresh cache
    at = new_app()
    load_demo(at)
    compute(at, "utility", limit=6)
    s = at.session_state
    k = s["kernels"]
    assert k.kind == "utility" and k.pool.shape == (6, 6)
    assert k.meta["pool"]["pairs_computed"] == 6 * 6 + 6
    assert len(s["kernel_pool"]) == 6
    goto(at, "3_Select")
    assert texts(at.metric)[0] == "2 of 6"
    # computing the same kernel again reuses the cache
    goto(at, "2_Kernel")
    at.button(key="start_kernel").click().run()
    wait_for_jobs()
    at.run()
    assert at.session_state["kernels"].meta["pool"]["blocks_reused"] == 1
    # a cancelled run reports it and keeps the previous kernel
    n = len(s["pool"])
    at.number_input(key=f"p_limit_utility_{n}").set_value(12).run()
    at.button(key="start_kernel").click()
    at.run()
    from studio import jobs

    job = jobs.job_registry().get(s["_sid"])
    job.cancel.set()
    wait_for_jobs()
    at.run()
    assert job.status == "cancelled"
    assert any("cancelled" in w for w in texts(at.warning))
    assert at.session_state["kernels"].pool.shape == (6, 6)


@pytest.mark.slow
@pytest.mark.real_cache
def test_sparse_utility_kernel_then_select_and_explore(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from delift_core.lm.models import cache_dir

    real = cache_dir()
    (real / "models").mkdir(exist_ok=True)
    (tmp_path / "models").symlink_to(real / "models")
    monkeypatch.setenv("DELIFT_CACHE_DIR", str(tmp_path))
    at = load_demo(new_app())
    goto(at, "2_Kernel")
    at.radio(key="p_kernel").set_value("utility").run()
    at.toggle(key="p_learned").set_value(False).run()  # the exact sparse kernel
    at.toggle(key="p_sparse").set_value(True).run()
    at.number_input(key="p_neighbours").set_value(2).run()
    at.radio(key="p_dtype").set_value("bfloat16").run()
    n = len(at.session_state["pool"])
    at.number_input(key=f"p_limit_utility_{n}").set_value(12).run()
    # 12 rows, each scored with at most 2 neighbours + 4 random examples, plus 12 plain passes
    assert texts(at.metric)[0] == f"{12 * 6 + 12:,}"
    at.button(key="start_kernel").click().run()
    wait_for_jobs()
    at.run()
    assert not at.exception, at.exception
    k = at.session_state["kernels"]
    # each row: its 2 nearest + 4 random draws (a draw that repeats a pair is scored once)
    assert k.kind == "utility" and k.pool.shape == (12, 12) and 12 * 2 < k.pool.nnz <= 12 * 6
    assert all(k.pool[i].nnz >= 2 for i in range(12))
    assert any(f"sparse: {k.pool.nnz} pairs scored" in c for c in texts(at.caption))
    goto(at, "3_Select")
    assert texts(at.metric)[0] == "4 of 12"
    at.session_state["p_map_method"] = "pca"
    goto(at, "4_Explore")
    heat = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert heat["data"][0]["z"]["shape"] == "12, 12"


def test_diagonal_radio_only_for_utility_kernels_and_it_persists() -> None:
    """The Select page's self-utility radio (p_diagonal) shows for utility kernels only, selects
    with the chosen policy, and keeps its value across page switches."""
    from delift_core.kernels.builder import Kernels

    at = goto(ready("embedding"), "3_Select")
    assert not [r for r in at.radio if r.key == "p_diagonal"]
    emb = at.session_state["kernels"]
    at.session_state["kernels"] = Kernels("utility", pool=emb.pool, meta=dict(emb.meta))
    at.session_state["kernels_version"] = at.session_state["kernels_version"] + 1
    at.run()
    assert at.radio(key="p_diagonal").value == "max"  # the default
    assert at.session_state["selection"].params["diagonal"] == "max"
    at.radio(key="p_diagonal").set_value("reference").run()
    assert not at.exception
    assert at.session_state["selection"].params["diagonal"] == "reference"
    goto(at, "4_Explore")
    goto(at, "3_Select")
    assert at.radio(key="p_diagonal").value == "reference"
    assert at.session_state["selection"].kernels.diagonal == "reference"


def test_an_ended_job_asks_for_a_page_rerun_on_every_poll_until_the_page_has_seen_it_end(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A full rerun asked for from the polling fragment can be dropped by Streamlit (one asked for
    while another run starts); the panel must ask again on the next poll, or the page shows a
    finished kernel as still computing for ever (the hang seen in fresh-clone CI). The result is
    adopted once, however many polls there are."""
    from types import SimpleNamespace

    from studio import ui

    reruns: list[int] = []
    adopted: list[object] = []
    monkeypatch.setattr(ui.st, "rerun", lambda: reruns.append(1))
    job = SimpleNamespace(running=False, status="done", adopted=False, error=None, result="r")
    kw = dict(cancel_key="c", cancelling="", cancelled="", adopt=lambda j: adopted.append(j.result))
    for _ in range(3):  # three polls with the page still showing the job as running
        ui.job_panel(job, page_saw_running=True, **kw)
    assert reruns == [1, 1, 1] and adopted == ["r"]
    ui.job_panel(job, page_saw_running=False, **kw)  # the full run that shows the result
    assert reruns == [1, 1, 1] and adopted == ["r"]


def test_the_first_import_of_the_engine_is_serialised_across_sessions():
    """Two browser sessions importing the package at once deadlocked on Python's module locks
    in CI; app.py imports the engine under one process-wide lock before any page runs."""
    import studio

    text = (ROOT / "app.py").read_text()
    assert "with studio.IMPORT_LOCK:" in text
    assert text.index("studio.IMPORT_LOCK") < text.index("from studio.ui import PAGES")
    assert hasattr(studio.IMPORT_LOCK, "acquire")
    for page in sorted((ROOT / "pages").glob("*.py")):  # a page may run before app.py
        lines = [ln for ln in page.read_text().splitlines()
                 if ln.startswith(("import ", "from ")) and "__future__" not in ln]
        first = next(ln for ln in lines if "delift_core" in ln or "studio" in ln)
        assert first.startswith("import studio"), page.name


@pytest.mark.slow
def test_a_score_method_chosen_on_the_kernel_page_gets_its_scores_and_selects() -> None:
    """"longest" chosen with the embedding kernel: the kernel job also computes the response
    lengths with the default model's tokenizer, and the Select page ranks by them."""
    at = load_demo(new_app())
    goto(at, "2_Kernel")
    at.radio(key="p_instruction_objective").set_value("longest").run()
    at.radio(key="p_kernel").set_value("embedding").run()
    at.button(key="start_kernel").click().run()
    wait_for_jobs()
    at.run()
    assert not at.exception, at.exception
    s = at.session_state
    assert s["row_scores"].kind == "response_tokens"
    goto(at, "3_Select")
    sel = s["selection"]
    assert sel.objective == "longest", [e.value for e in at.error]
    counts = s["row_scores"].values
    picked = counts[sel.selected_indices]
    assert picked.min() >= max(np.delete(counts, sel.selected_indices))
    assert sel.cost()["scores"] == "response_tokens"
    assert any(c.value.startswith("cost: 0 model passes computed") for c in at.caption)


def test_review_decisions_are_saved_as_made_and_restored_with_the_pool() -> None:
    """A refresh or a closed tab loses nothing: every change, single rows included, is saved for
    the pool's content, and a new session that loads the same pool gets them back; a single-row
    pin is one undoable step."""
    at = ready()
    goto(at, "5_Review")
    sel = at.session_state["selection"]
    rejected = next(i for i in sel.pool.ids if i not in set(sel.selected_ids))
    at.selectbox(key="p_review_id").set_value(rejected).run()
    at.button(key="pin").click().run()
    at.text_area(key=f"note_{rejected}").input("keep: rare task").run()
    at.button(key="save_note").click().run()
    assert any(c.value.startswith("Saved automatically at") for c in at.caption)
    at.button(key="bulk_undo").click().run()  # the note was a step of its own
    assert at.session_state["decisions"].notes == {}
    assert at.session_state["decisions"].pinned == [rejected]
    at.button(key="save_note").click().run()
    # a new session (a refresh): load the same pool, the decisions are back
    b = load_demo(new_app())
    d = b.session_state["decisions"]
    assert d.pinned == [rejected] and d.notes == {rejected: "keep: rare task"}
    compute(b)
    goto(b, "5_Review")
    assert any(c.value.startswith("Decisions restored") for c in b.caption)
    assert rejected in b.session_state["selection"].selected_ids


def test_try_the_demo_goes_from_home_to_a_selection_in_one_click() -> None:
    at = new_app()
    at.button(key="try_demo").click().run()
    assert not at.exception, at.exception
    s = at.session_state
    assert (len(s["pool"]), len(s["target"]), len(s["existing"])) == (240, 40, 60)
    assert s["kernels"] is not None and s["kernels"].kind == "embedding"
    sel = s["selection"]
    assert sel is not None and sel.objective == "fl" and sel.budget == 72
    # the Select page explains the value as a share of the whole pool's
    goto(at, "3_Select")
    assert any("of the value the whole pool reaches" in c.value for c in at.caption)


def test_evaluate_defaults_to_the_three_baselines_and_on_a_cpu_to_scores_only() -> None:
    at = goto(new_app(), "7_Evaluate")
    assert at.multiselect(key="ev_baselines").value == ["random", "full", "none"]
    assert at.checkbox(key="ev_generate").value is False  # this test machine has no GPU


def test_select_page_verifies_a_learned_kernels_selection(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          tiny_llama) -> None:
    """On a learned kernel the Select page offers to verify the selection: the job scores its
    predicted covers exactly (the tiny model stands in for the default one), the session takes
    the verified kernel, and the page says what was verified."""
    import delift_core.lm.models as models
    from delift_core.kernels.builder import compute_kernels

    monkeypatch.setenv("DELIFT_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(models, "load_causal_lm", lambda *a, **k: tiny_llama)
    at = load_demo(new_app())
    pool = at.session_state["pool"]
    k = compute_kernels(pool, kind="utility", lm=tiny_llama, learned=True, exact_passes=400)
    s = at.session_state
    s["kernels"], s["kernel_pool"] = k, pool
    s["kernel_config"] = {"kind": "utility", "stage": "instruction", "objective": "fl",
                          "model": None, "embedder": None, "limit": len(pool), "neighbours": None,
                          "dtype": None, "backend": "local", "target_direction": None,
                          "engine": {"learned": True, "exact_passes": 400}}
    s["kernels_version"] += 1
    s["p_budget_pct"] = 10
    s["p_method"] = "stochastic"  # its sample size follows the budget: the job must select alike
    goto(at, "3_Select")
    assert texts(at.metric)[0] == "24 of 240"
    shown_value = at.session_state["selection"].objective_value
    before = at.session_state["kernels"].exact["pool"].nnz
    plan = [c for c in texts(at.caption) if c.startswith("Round 1 scores")]
    assert len(plan) == 1
    from studio import jobs, state, ui

    def refused(*a, **k):
        raise jobs.QueueRefused("ann@team.org already has a model job (kernel, running)")

    with monkeypatch.context() as m:  # the shared queue refuses it: said, never a traceback
        m.setattr(state, "start_verify_job", refused)
        at.button(key="verify_start").click().run()
    assert not at.exception, at.exception
    assert [e.value for e in at.error] == [ui.md_escape("ann@team.org already has a model job "
                                                       "(kernel, running)")]
    at.button(key="verify_start").click().run()
    assert not at.exception, at.exception
    for t in threading.enumerate():
        if t.name.startswith("delift-verify-"):
            t.join(TIMEOUT)
    at.run()
    assert not at.exception, at.exception
    verified = at.session_state["kernels"]
    v = verified.meta.learned["pool"]["verification"]
    # the spec's suggested rounds and exploration, both offered beside the button
    assert v["rounds"] == 2 and v["explore"] == 0.1 and v["pairs_verified"] > 0
    assert v["explored_pairs_verified"] > 0 and v["by_round"][0]["explored_columns"] == 24
    # the page said beforehand what round 1 would score, and it did
    b = v["by_round"][0]
    assert plan[0].startswith(f"Round 1 scores {b['covers_scored']:,} predicted covers and "
                              f"{b['explored_pairs_scored']:,} pairs of 24 explored rows: "
                              f"{b['covers_scored'] + b['explored_pairs_scored']:,} model passes")
    assert verified.exact["pool"].nnz == before + v["pairs_verified"]
    shown = [c for c in texts(at.caption) if c.startswith("**Verified**")]
    assert len(shown) == 1 and (f"{v['covers_verified']:,} covers and "
                                f"{v['explored_pairs_verified']:,} pairs of explored columns "
                                "scored exactly") in shown[0]
    assert texts(at.metric)[0] == "24 of 240"
    # the job verified the selection the page showed (the same full greedy order, cut at 24)
    assert b["value_before"] == round(shown_value, 6)
    # at another budget the page says the verification served another selection
    at.session_state["p_budget_pct"] = 20
    at.run()
    other = [c for c in texts(at.caption) if "Verified" in c]
    assert len(other) == 1 and other[0].startswith("**Verified for another selection**")
    assert other[0].endswith("it verified FL at 24 rows.")
    # the Review page's gain and covers say they stand on a learned kernel
    goto(at, "5_Review")
    assert not at.exception, at.exception
    assert any("stand on a LEARNED kernel" in c for c in texts(at.caption))
    # a GC selection stands on every pair of its columns: the plan names them so
    at.session_state["p_objective"] = "gc"
    goto(at, "3_Select")
    from delift_core.selection.verify import first_round as plan_of

    n = plan_of(at.session_state["kernels"], at.session_state["selection"])["covers"]
    assert any(c.startswith(f"Round 1 scores {n:,} predicted pairs the selection stands on: ")
               for c in texts(at.caption))
    assert any(c.startswith("Nothing to explore: GC (graph cut) stands on no covers")
               for c in texts(at.caption))


def test_naive_greedy_on_a_large_pool_is_refused_on_the_page(monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    """The page computes the full greedy order in its own thread: naive greedy is cubic in the
    rows, so past NAIVE_MAX_ROWS the page says to use lazy greedy (the same selection) instead of
    running for hours; below it, naive and lazy select the same rows."""
    from studio import state

    at = ready("embedding")
    lazy = list(at.session_state["selection"].selected_ids)
    at.session_state["p_method"] = "naive"
    goto(at, "3_Select")
    assert list(at.session_state["selection"].selected_ids) == lazy
    monkeypatch.setattr(state, "NAIVE_MAX_ROWS", 100)
    at.session_state["p_seed"] = 1  # another key: the order is computed again
    goto(at, "3_Select")
    assert at.session_state["selection"] is None
    assert any("naive greedy on 240 rows" in e.value and "lazy greedy selects exactly the same"
               in e.value for e in at.error), [e.value for e in at.error]
