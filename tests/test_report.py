"""The HTML report: one self-contained file (plotly.js inlined once, no network), every section,
data text escaped (a row holding <script> shows as text), composition counts by a label column,
the evaluation table, and `delift report` on a `delift select` folder with its plain errors."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from delift_core.selection.select import select
from delift_core.outputs.audit import audit
from delift_core.cli import main
from delift_core.data.dataset import Dataset
from delift_core.kernels.builder import Kernels
from delift_core.outputs.report import build_report

EVIL = "<script>alert('x')</script>"


def pool(n: int = 12) -> Dataset:
    fams = ["math", "geo", "code"]
    rows = [{"id": f"r{k}", "prompt": f"question {k} about {fams[k % 3]}",
             "response": f"answer {k}", "family": fams[k % 3]} for k in range(n)]
    rows[5]["prompt"] = f"Explain {EVIL} please"
    rows[7]["id"] = "<b>bold-id</b>"
    return Dataset(rows=rows, ids=[r["id"] for r in rows], prompts=[r["prompt"] for r in rows],
                   responses=[r["response"] for r in rows], layout="prompt/response",
                   source="fixture.jsonl", source_format="jsonl")


def embeddings(n: int = 12) -> np.ndarray:
    rng = np.random.default_rng(0)
    e = rng.normal(size=(n, 8)).astype(np.float32)
    e[1] = e[0] + 0.01  # a near-duplicate pair
    return e / np.linalg.norm(e, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def report_html() -> str:
    ds, e = pool(), embeddings()
    k = Kernels("embedding", pool=((e @ e.T + 1) / 2).astype(np.float32))
    sel = select(ds, "fl", k, 4)
    clusters = [k % 3 for k in range(len(ds))]
    evaluation = {"rows": [
        {"subset": "DELIFT-SE", "kind": "subset", "mode": "icl", "size": 4, "seed": 0,
         "n_test": 6, "nll": 1.25, "distance": 0.41},
        *[{"subset": "random", "kind": "random", "mode": "icl", "size": 4, "seed": s,
           "n_test": 6, "nll": v, "distance": 0.45} for s, v in ((0, 1.4), (1, 1.3), (2, 1.5))]],
        "settings": {"shots": 1}, "meta": {"model": "tiny"}}
    return build_report(sel, manifest={"objective": "fl", "note": EVIL}, embeddings=e,
                        clusters=clusters, label_col="family",
                        audit=audit(ds, k, selection=sel, embeddings=e, clusters=clusters),
                        evaluation=evaluation, sample=5, map_method="pca")


def test_report_is_self_contained_with_plotly_inlined_once(report_html: str) -> None:
    from plotly.offline import get_plotlyjs

    js = get_plotlyjs()
    assert report_html.count(js[:500]) == 1
    assert not re.search(r"<script[^>]+src=", report_html)  # nothing fetched to open it
    ours = report_html.replace(js, "")  # plotly.js mentions its CDN (for geo maps, unused here)
    assert "cdn.plot.ly" not in ours and "<link" not in ours and "http" not in ours.split(
        "<pre>")[0]
    for section in ("Gain curve", "Composition: selected vs rejected", "Embedding map",
                    "Kernel heatmap", "Evaluation", "Audit", "Sample rows and why", "Manifest"):
        assert f">{section}</h2>" in report_html, section
    figures = report_html.split("</script>", 1)[1].count("Plotly.newPlot(")
    assert figures == 6  # gain, cluster, label, map, heatmap, evaluation


def test_report_has_the_evaluation_chart_and_table(report_html: str) -> None:
    body = report_html.split('id="evaluation"')[1].split("<h2")[0]
    assert "DELIFT-SE" in body and "random" in body and "nll_sd" in body
    assert "1.4" in body  # the random mean over seeds 0-2: (1.4 + 1.3 + 1.5) / 3
    assert "Plotly.newPlot(" in body


def test_data_text_is_escaped_everywhere(report_html: str) -> None:
    without_plotly = report_html.split("</script>", 1)[1]  # plotly.js itself is trusted code
    assert "<script>alert" not in without_plotly
    assert "alert('x')" not in without_plotly.replace("&#x27;", "'").split("&lt;script&gt;")[0]
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in without_plotly  # tables
    assert "<b>bold-id</b>" not in without_plotly
    # inside figure JSON no '<' survives (hover labels are escaped, then '<' is \u003c)
    for spec in re.findall(r"var f=(\{.*?\});Plotly", without_plotly):
        assert "<" not in spec and ">" not in spec


def test_composition_counts_by_label_column(report_html: str) -> None:
    body = report_html.split('id="composition"')[1].split("<h2")[0]
    # 12 rows, 4 per family; 4 selected in all
    rows = re.findall(r"<tr><td>(math|geo|code)</td><td>(\d+)</td><td>(\d+)</td><td>(\d+)</td>",
                      body)
    assert len(rows) == 3
    assert sum(int(s) for _, s, _, _ in rows) == 4
    assert all(int(n) == 4 and int(s) + int(r) == 4 for _, s, n, r in rows)


def select_folder(tmp_path) -> tuple:
    """The fixture pool as a file and a `delift select` folder of 4 of its rows."""
    data = tmp_path / "pool.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in pool().rows))
    out = tmp_path / "sel"
    assert main(["select", "--pool", str(data), "--kernel", "embedding", "--objective", "fl",
                 "--budget", "4", "--out", str(out)]) == 0
    return data, out


def test_report_cli_on_a_select_folder(tmp_path) -> None:
    _, out = select_folder(tmp_path)
    assert main(["report", str(out), "--label-col", "family", "--clusters", "3"]) == 0
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "<b>4</b> of <b>12</b> rows selected" in html
    assert "&lt;script&gt;alert" in html and ">Kernel heatmap</h2>" in html
    assert 4_000_000 < len(html.encode()) < 8_000_000  # plotly.js is ~4.8 MB of it


def test_report_cli_errors_are_plain(tmp_path, capsys) -> None:
    data, out = select_folder(tmp_path)
    capsys.readouterr()
    assert main(["report", str(out), "--label-col", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("delift: error: --label-col nope: no pool row has that column")
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "not a folder" in capsys.readouterr().err
    data.write_text(data.read_text().replace("answer 3", "answer three"))  # the pool changed
    assert main(["report", str(out)]) == 2
    assert "not the data the selection was made on" in capsys.readouterr().err


def test_the_cost_line_never_rounds_a_small_share_of_the_exact_kernel_to_zero() -> None:
    from delift_core.selection.cost import cost_line

    base = {"model_passes_computed": 5838, "model_passes_reused": 6161, "texts_embedded": 0,
            "texts_embedding_reused": 16248, "seconds": 1511.3, "kernel_passes": 11999,
            "exact_kernel_passes": 16248 * 16248 + 16248}  # the whole P3 sample, learned
    assert "= 0.0045 % (1 in 22,003) of the exact kernel's 264,013,752" in cost_line(base)
    assert "= 34.1 % of the exact" in cost_line({**base, "kernel_passes": 341,
                                                 "exact_kernel_passes": 1000})


def test_the_evaluation_section_puts_each_gain_beside_its_cost() -> None:
    ds, e = pool(), embeddings()
    k = Kernels("embedding", pool=((e @ e.T + 1) / 2).astype(np.float32))
    sel = select(ds, "fl", k, 4)
    cost = sel.cost()
    tests = ["t1", "t2", "t3"]
    rows = [{"subset": "FL", "kind": "subset", "mode": "icl", "size": 4, "seed": 0, "n_test": 3,
             "nll": 1.0, "distance": 0.4, "subset_info": {"objective": "fl", "cost": cost}},
            *[{"subset": "random", "kind": "random", "mode": "icl", "size": 4, "seed": s,
               "n_test": 3, "nll": 1.2, "distance": 0.45} for s in (0, 1)]]
    items = [{"mode": "icl", "subset": name, "seed": seed, "test_id": t, "nll": v,
              "distance": 0.4} for name, seed, v in (("FL", 0, 1.0), ("random", 0, 1.2),
                                                     ("random", 1, 1.3)) for t in tests]
    html = build_report(sel, manifest={"objective": "fl"}, embeddings=e, sample=2,
                        evaluation={"rows": rows, "items": items, "settings": {}, "meta": {}},
                        map_method="pca")
    body = html.split('id="evaluation"')[1].split("<h2")[0]
    from delift_core.selection.cost import cost_cell

    assert "what the selection cost" in body and cost_cell(cost) in body
    assert "Cost.</b>" in html  # and the selection's own cost at the top
