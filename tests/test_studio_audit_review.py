"""The Audit page (findings on the demo kernel, one-click ban / pin into the decisions, undo, its
threshold sliders built from the findings registry) and bulk review on the Review page (filter,
pin or ban every row shown in one undoable step, a running count of changes), driven with
Streamlit's AppTest on the embedding kernel."""

from __future__ import annotations

import json

from delift_core.outputs.audit_findings import FINDINGS, thresholds
from delift_core.outputs.review import Decisions
from delift_core.data.dataset import load_dataset
from delift_core.cli import main
from test_app import goto, ready


def test_audit_page_shows_each_finding_and_bans_duplicates_in_one_click() -> None:
    at = ready()
    goto(at, "8_Audit")
    metrics = {m.label: m.value for m in at.metric}
    # an embedding kernel: the utility findings say they need the utility kernel
    for title in ("Already known", "Helps no one / hurts others", "Helped by no one",
                  "Copies itself"):
        assert metrics[title] == "n/a"
    assert int(metrics["Near-duplicates"]) > 0  # the demo pool has templated near-copies
    assert int(metrics["Covered worst"]) == 24  # 10 % of 240
    assert any("needs the DELIFT utility kernel" in i.value or "utility kernel" in i.value
               for i in at.info)
    sel = at.session_state["selection"]
    button = at.button(key="audit_ban_near_duplicates")
    n_spare = int(button.label.split()[2])
    button.click().run()
    assert not at.exception
    d = at.session_state["decisions"]
    assert len(d.banned) == n_spare and not d.pinned
    assert not set(d.banned) & set(sel.selected_ids)  # the rows the selection kept stay
    at.button(key="audit_undo").click().run()
    assert at.session_state["decisions"].banned == []
    at.button(key="audit_pin_coverage").click().run()
    assert len(at.session_state["decisions"].pinned) == 24


def test_audit_page_sliders_come_from_the_findings_registry() -> None:
    at = ready()
    goto(at, "8_Audit")
    for t in thresholds():
        slider = at.slider(key=f"p_audit_{t.name}")
        assert (slider.label, slider.value, slider.step) == (t.label, t.default, t.step), t.name
        assert (slider.min, slider.max) == t.slider_range and slider.help == t.help, t.name
    assert len(at.slider) == len(thresholds())
    assert [t.label for t in at.tabs] == [f.label for f in FINDINGS.values()]
    before = int({m.label: m.value for m in at.metric}["Near-duplicates"])
    at.slider(key="p_audit_duplicate_min_cosine").set_value(0.99).run()
    assert not at.exception
    after = int({m.label: m.value for m in at.metric}["Near-duplicates"])
    assert after < before
    assert any("cosine >= 0.99" in c.value for c in at.caption)
    at.slider(key="p_audit_coverage_fraction").set_value(0.2).run()
    assert int({m.label: m.value for m in at.metric}["Covered worst"]) == 48


def test_review_bulk_pin_count_undo_and_round_trip(tmp_path) -> None:
    at = ready()
    goto(at, "5_Review")
    at.text_input(key="p_review_query").input("sentiment").run()
    at.selectbox(key="p_review_filter").set_value("rejected").run()
    sel = at.session_state["selection"]
    pool = sel.pool
    shown = [i for k, i in enumerate(pool.ids) if k not in set(sel.selected_indices)
             and ("sentiment" in pool.prompts[k].lower() or "sentiment" in pool.responses[k].lower()
                  or "sentiment" in i.lower())]
    assert len(shown) >= 3
    at.button(key="bulk_pin").click().run()
    assert not at.exception
    d = at.session_state["decisions"]
    assert d.pinned == shown
    assert any(f"{len(shown)} rows changed" in c.value for c in at.caption)
    # the selection re-runs with the pins: every pinned row is now selected
    goto(at, "3_Select")
    goto(at, "5_Review")
    assert set(shown) <= set(at.session_state["selection"].selected_ids)
    at.selectbox(key="p_review_filter").set_value("all").run()
    at.button(key="bulk_ban").click().run()  # every 'sentiment' row, pinned ones included
    d = at.session_state["decisions"]
    assert set(shown) <= set(d.banned) and not d.pinned
    at.button(key="bulk_undo").click().run()
    assert at.session_state["decisions"].pinned == shown
    assert at.session_state["decisions"].banned == []
    # the decisions file round-trips into `delift select --decisions`
    path = tmp_path / "decisions.json"
    path.write_text(at.session_state["decisions"].to_json(), encoding="utf-8")
    assert Decisions.from_json(path.read_text()).pinned == shown
    out = tmp_path / "sel"
    assert main(["select", "--pool", "demo:pool", "--kernel", "embedding", "--objective", "fl",
                 "--budget", "0.3", "--decisions", str(path), "--out", str(out)]) == 0
    selected = json.loads((out / "selection.json").read_text())["selected_ids"]
    assert set(shown) <= set(selected) and len(selected) == 72
    assert len(load_dataset(out / "selected.jsonl")) == 72


def test_decisions_apply_counts_changes() -> None:
    d = Decisions()
    assert d.apply("pin", ["a", "b", "a"]) == 2
    before = d.copy()
    assert d.apply("ban", ["b", "c"]) == 2 and d.pinned == ["a"] and d.banned == ["b", "c"]
    assert d.changed_ids(before) == ["b", "c"]
    assert d.apply("note", ["a"], "  check  ") == 1 and d.notes == {"a": "check"}
    assert d.apply("note", ["a"], "") == 1 and d.notes == {}
    assert d.apply("clear", ["z"]) == 0
    assert before.pinned == ["a", "b"]  # the copy is independent


def test_download_page_builds_the_html_report() -> None:
    at = ready()
    goto(at, "6_Download")
    at.selectbox(key="p_report_label").set_value("family").run()
    at.button(key="build_report").click().run()
    assert not at.exception, at.exception
    key, data = at.session_state["_report_html"]
    text = data.decode("utf-8")
    assert "<b>72</b> of <b>240</b> rows selected" in text
    assert ">By family</h3>" in text and ">Audit</h2>" in text
    assert any(b.label.startswith("report.html") for b in at.get("download_button"))
