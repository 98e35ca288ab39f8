"""delift_core.outputs.figures: the one set of plotly figures the report and the studio draw (gain
curve with the budget, heatmap, map, composition bars), their one colour table, escaped text, and
that ``import delift_core`` needs no plotly."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("plotly")

from delift_core.kernels.builder import Kernels  # noqa: E402
from delift_core.outputs.figures import (PALETTE, STATUS_COLOURS, composition_figure,  # noqa: E402
                                         gain_curve_figure, heatmap_figure, map_figure, row_label)
from delift_core.outputs.report import build_report  # noqa: E402
from delift_core.outputs.views import gain_curve, heatmap_view, rank_order  # noqa: E402
from delift_core.selection.select import select  # noqa: E402
from test_report import embeddings, pool  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def selection():
    ds, e = pool(), embeddings()
    return select(ds, "fl", Kernels("embedding", pool=((e @ e.T + 1) / 2).astype(np.float32)), 4)


def test_gain_curve_marks_the_budget(selection) -> None:
    curve = gain_curve(selection)
    fig = gain_curve_figure(curve, 4)
    line, marker = fig.data
    assert (line.type, line.mode, marker.type, marker.mode) == ("scatter", "lines", "scatter",
                                                                "markers")
    assert len(line.x) == len(curve) == 12
    assert list(marker.x) == [4] and marker.y[0] == pytest.approx(curve["value"].iat[3])
    (vline,) = fig.layout.shapes
    assert vline.x0 == vline.x1 == 4 and vline.line.dash == "dash"
    assert vline.line.color == marker.marker.color == STATUS_COLOURS["selected"]
    assert fig.layout.height == 340 and fig.layout.xaxis.title.text.startswith("budget")
    # a budget past the curve: no marker, no line
    off = gain_curve_figure(curve, 99)
    assert len(off.data) == 1 and not off.layout.shapes


def test_heatmap_labels_escape_text_and_mark_the_selected_rows(selection) -> None:
    ds = selection.pool
    view = heatmap_view(selection.kernels.scaled("pool"), rank_order(selection), max_size=50)
    fig = heatmap_figure(view, ds, 4, title="kernel")
    (heat,) = fig.data
    assert heat.type == "heatmap" and np.asarray(heat.z).shape == (12, 12)
    assert len(heat.x) == len(heat.y) == 12 and heat.x[0].startswith("1. ")
    text = json.dumps(list(heat.x) + list(fig.layout.xaxis.ticktext))
    assert "<b>bold-id</b>" not in text and "<script>" not in text  # shown as text, not HTML
    assert "&lt;b&gt;bold-id&lt;/b&gt;" in text
    vline, hline = fig.layout.shapes
    assert vline.x0 == vline.x1 == 3.5 and hline.y0 == hline.y1 == 3.5
    assert vline.line.dash == "dot"
    assert fig.layout.title.text == "kernel" and fig.layout.yaxis.autorange == "reversed"
    # averaged blocks are named by their first and last row
    agg = heatmap_view(selection.kernels.scaled("pool"), rank_order(selection), max_size=4,
                       mode="aggregate")
    fig = heatmap_figure(agg, ds)
    assert np.asarray(fig.data[0].z).shape == (4, 4) and "block of 3" in fig.data[0].x[0]
    assert not fig.layout.shapes


def test_map_colours_come_from_the_one_table() -> None:
    frame = pd.DataFrame({"x": np.arange(7.0), "y": np.arange(7.0),
                          "id": [f"r{k}" for k in range(7)], "hover": ["h"] * 7,
                          "set": ["pool"] * 5 + ["target", "existing"],
                          "status": ["rejected", "selected", "rejected", "pinned", "selected",
                                     "target", "existing"]})
    fig = map_figure(frame, "status", colours=STATUS_COLOURS, title="m")
    names = [t.name for t in fig.data]
    assert names == ["rejected", "selected", "pinned", "target", "existing"]
    assert all(t.type == "scattergl" and t.mode == "markers" for t in fig.data)
    assert [t.marker.color for t in fig.data] == [STATUS_COLOURS[n] for n in names]
    assert [len(t.x) for t in fig.data] == [2, 2, 1, 1, 1]
    assert [c[0] for c in fig.data[1].customdata] == ["r1", "r4"]
    assert [t.marker.symbol for t in fig.data[3:]] == ["diamond", "square"]
    assert fig.layout.dragmode == "lasso"
    # values the table does not name take the palette in turn
    frame["cluster"] = ["a", "b", "a", "c", "b", "a", "c"]
    fig = map_figure(frame, "cluster", dragmode="zoom")
    assert [t.marker.color for t in fig.data] == PALETTE[:3] and fig.layout.dragmode == "zoom"


def test_composition_bars_are_stacked_selected_over_rejected() -> None:
    table = pd.DataFrame({"group": ["<i>x</i>", "y"], "selected": [3, 1], "rejected": [2, 4]})
    fig = composition_figure(table, "family")
    assert [(t.type, t.name, t.marker.color) for t in fig.data] == [
        ("bar", "selected", STATUS_COLOURS["selected"]),
        ("bar", "rejected", STATUS_COLOURS["rejected"])]
    assert list(fig.data[0].y) == [3, 1] and list(fig.data[1].y) == [2, 4]
    assert fig.layout.barmode == "stack" and fig.data[0].x[0] == "&lt;i&gt;x&lt;/i&gt;"
    assert row_label(pool(), [0]) == "r0: question 0 about math"


def test_the_report_draws_these_figures(selection) -> None:
    ds, e = selection.pool, embeddings()
    html = build_report(selection, embeddings=e, clusters=[k % 3 for k in range(12)],
                        label_col="family", map_method="pca")
    found = re.findall(r'class="fig" style="height:(\d+)px"></div><script>\(function\(\)\{'
                       r'var f=(\{.*?\});Plotly', html)
    assert [int(h) for h, _ in found] == [340, 320, 340, 520, 620]
    gain, by_cluster, by_family, fmap, heat = (json.loads(s) for _, s in found)
    assert gain["layout"]["shapes"][0]["x0"] == 4
    assert gain["layout"]["shapes"][0]["line"]["color"] == STATUS_COLOURS["selected"]
    for bars in (by_cluster, by_family):
        assert [b["marker"]["color"] for b in bars["data"]] == [STATUS_COLOURS["selected"],
                                                               STATUS_COLOURS["rejected"]]
    assert [(t["name"], t["marker"]["color"]) for t in fmap["data"]] == [
        ("rejected", STATUS_COLOURS["rejected"]), ("selected", STATUS_COLOURS["selected"])]
    assert fmap["layout"]["dragmode"] == "zoom"
    assert sorted(c[0] for c in fmap["data"][1]["customdata"]) == sorted(selection.selected_ids)
    assert heat["data"][0]["type"] == "heatmap" and len(heat["data"][0]["x"]) == len(ds)
    vline, hline = heat["layout"]["shapes"]  # the 4 selected rows closed by dotted lines
    assert vline["x0"] == vline["x1"] == 3.5 and hline["y0"] == hline["y1"] == 3.5


def test_import_delift_core_needs_no_plotly() -> None:
    code = ("import sys; sys.modules['plotly'] = None\n"
            "import delift_core, delift_core.outputs.report\n"
            "from delift_core.outputs import figures\n"
            "from delift_core.errors import MissingDependencyError\n"
            "import pandas as pd\n"
            "try:\n"
            "    figures.gain_curve_figure(pd.DataFrame({'budget': [1], 'value': [1.0]}), 1)\n"
            "except MissingDependencyError as e:\n"
            "    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "needs the package 'plotly'" in out.stdout and "delift-studio[studio]" in out.stdout
