"""The plotly figures of a selection, built once for the HTML report and the studio's pages.

The gain curve with the budget marked, the utility heatmap, the 2-D map of rows coloured by their
decision and the selected/rejected composition bars, with their colours in one table
(:data:`STATUS_COLOURS`). plotly is in the ``studio`` (and ``eval``) extra, so it is imported when
a figure is built, never when this module is: ``import delift_core`` needs no plotly. The
evaluation chart is :meth:`delift_core.evaluation.report.EvalReport.figure`, which both use too.

Dataset text in hover labels and tick labels always goes through
:func:`delift_core.outputs.views.hover_safe`, which escapes HTML: Plotly renders a subset of HTML
in them.
"""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd

from delift_core.data.dataset import Dataset
from delift_core.errors import optional_import
from delift_core.outputs.views import HeatmapView, hover_safe

if TYPE_CHECKING:
    import plotly.graph_objects as go

__all__ = ["CURVE_COLOUR", "PALETTE", "STATUS_COLOURS", "composition_figure",
           "gain_curve_figure", "heatmap_figure", "map_figure", "row_label"]

#: the colour of each decision (and of each side of a comparison of two selections)
STATUS_COLOURS = {"selected": "#d62728", "rejected": "#9ecae1", "pinned": "#ff7f0e",
                  "banned": "#555555", "target": "#2ca02c", "existing": "#9467bd",
                  "both": "#d62728", "only A": "#1f77b4", "only B": "#ff7f0e",
                  "neither": "#d9d9d9"}
#: the gain curve's line
CURVE_COLOUR = "#1f77b4"
#: groups with no colour in the table given (clusters, label values), in turn
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf", "#aec7e8", "#ffbb78"]


def _go() -> ModuleType:
    """plotly.graph_objects, or a MissingDependencyError naming the extra to install."""
    return optional_import("plotly.graph_objects", "studio", "the selection charts",
                           package="plotly")


def _margin(title: str) -> dict:
    return dict(l=10, r=10, t=40 if title else 30, b=10)


def gain_curve_figure(curve: pd.DataFrame, budget: int, height: int = 340) -> "go.Figure":
    """Objective value against budget (a :func:`~delift_core.outputs.views.gain_curve` frame),
    with the chosen budget marked: where the curve flattens, more rows add little."""
    go = _go()
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=curve["budget"], y=curve["value"], mode="lines",
                             name="objective value", line=dict(color=CURVE_COLOUR),
                             hovertemplate="budget %{x}<br>value %{y:.3f}<extra></extra>"))
    if 1 <= budget <= len(curve):
        y = float(curve["value"].iat[budget - 1])
        colour = STATUS_COLOURS["selected"]
        fig.add_vline(x=budget, line=dict(color=colour, dash="dash"))
        fig.add_trace(go.Scatter(x=[budget], y=[y], mode="markers", name=f"budget {budget}",
                                 marker=dict(color=colour, size=10),
                                 hovertemplate="chosen budget %{x}<br>value %{y:.3f}"
                                               "<extra></extra>"))
    fig.update_layout(height=height, margin=_margin(""),
                      xaxis_title="budget (rows selected, greedy order)",
                      yaxis_title="objective value", showlegend=False)
    return fig


def row_label(pool: Dataset, group: Sequence[int]) -> str:
    """A hover label for one pool row (its id and prompt) or a block of rows (first … last id)."""
    if len(group) == 1:
        k = group[0]
        return f"{hover_safe(pool.ids[k], 40)}: {hover_safe(pool.prompts[k], 120)}"
    return f"block of {len(group)}: {hover_safe(pool.ids[group[0]], 40)} … " \
           f"{hover_safe(pool.ids[group[-1]], 40)}"


def heatmap_figure(view: HeatmapView, pool: Dataset, n_selected_shown: int | None = None,
                   title: str = "", height: int = 640) -> "go.Figure":
    """The (re-ordered, maybe down-sampled) kernel of a :class:`HeatmapView`; hover names both
    rows and the value, and dotted lines close the first ``n_selected_shown`` (selected) rows."""
    go = _go()
    n = len(view.rows)
    labels = [f"{a}. {row_label(pool, g)}" for a, g in enumerate(view.rows, start=1)]
    ticks = [hover_safe(pool.ids[g[0]], 30) + ("" if len(g) == 1 else "…") for g in view.rows]
    fig = go.Figure(go.Heatmap(
        z=view.values, x=labels, y=labels, colorscale="Viridis", colorbar=dict(title="value"),
        hovertemplate="<b>helped (row)</b>: %{y}<br><b>example (column)</b>: %{x}"
                      "<br><b>value</b>: %{z:.3f}<extra></extra>"))
    step = max(1, n // 25)
    fig.update_xaxes(tickvals=labels[::step], ticktext=ticks[::step], tickangle=-60,
                     title="in-context example j")
    fig.update_yaxes(tickvals=labels[::step], ticktext=ticks[::step], autorange="reversed",
                     title="sample helped i")
    if n_selected_shown:
        edge = n_selected_shown - 0.5
        for fn in (fig.add_vline, fig.add_hline):
            fn(edge, line=dict(color="white", width=2, dash="dot"))
    fig.update_layout(height=height, margin=_margin(title), title=title)
    return fig


def map_figure(frame: pd.DataFrame, colour: str, title: str = "",
               colours: dict[str, str] | None = None, height: int = 560,
               dragmode: str = "lasso") -> "go.Figure":
    """A 2-D scatter of rows, one trace per value of ``frame[colour]`` (in order of appearance).

    ``frame`` has x, y, id, hover and the ``colour`` column (and, optionally, ``set``: target and
    existing rows are drawn as diamonds and squares). A value's colour comes from ``colours``
    (e.g. :data:`STATUS_COLOURS`), else from :data:`PALETTE`. Each point's ``customdata`` is its
    id (the studio lists lasso and box selections by it).
    """
    go = _go()
    fig = go.Figure()
    palette = colours or {}
    size = 6 if len(frame) > 1000 else 8
    for k, (value, part) in enumerate(frame.groupby(colour, sort=False)):
        name = str(value)
        symbol = {"target": "diamond", "existing": "square"}.get(
            str(part["set"].iat[0]) if "set" in part else "", "circle")
        fig.add_trace(go.Scattergl(
            x=part["x"], y=part["y"], mode="markers", name=hover_safe(name, 40),
            customdata=np.asarray(part["id"]).reshape(-1, 1), text=part["hover"],
            marker=dict(size=size if symbol == "circle" else size + 2, symbol=symbol,
                        opacity=0.85, color=palette.get(name, PALETTE[k % len(PALETTE)]),
                        line=dict(width=0.5, color="white")),
            hovertemplate="%{text}<extra></extra>"))
    fig.update_layout(height=height, margin=_margin(title), title=title, dragmode=dragmode,
                      legend=dict(itemsizing="constant"))
    fig.update_xaxes(showticklabels=False, title=None)
    fig.update_yaxes(showticklabels=False, title=None)
    return fig


def composition_figure(table: pd.DataFrame, what: str, height: int = 340) -> "go.Figure":
    """Stacked bars of selected and rejected rows per group; ``table`` has the columns group,
    selected and rejected (one row per group, in the order drawn)."""
    go = _go()
    names = [hover_safe(g, 40) for g in table["group"]]
    fig = go.Figure([go.Bar(x=names, y=table[status], name=status,
                            marker_color=STATUS_COLOURS[status])
                     for status in ("selected", "rejected")])
    fig.update_layout(barmode="stack", height=height, margin=_margin(""), xaxis_title=what,
                      yaxis_title="rows")
    return fig
