"""Plotly figures for the studio (built from :mod:`delift_core.outputs.views` results).

Dataset text in hover labels always goes through :func:`delift_core.outputs.views.hover_safe`, which
escapes HTML: Plotly renders a subset of HTML in hover labels.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from delift_core import Dataset
from delift_core.outputs.views import HeatmapView, hover_safe

STATUS_COLOURS = {"selected": "#d62728", "rejected": "#9ecae1", "pinned": "#ff7f0e",
                  "banned": "#555555", "target": "#2ca02c", "existing": "#9467bd",
                  "both": "#d62728", "neither": "#d9d9d9"}


def gain_curve_figure(curve: pd.DataFrame, budget: int) -> go.Figure:
    """Objective value against budget, with the chosen budget marked."""
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=curve["budget"], y=curve["value"], mode="lines",
                             name="objective value", line=dict(color="#1f77b4"),
                             hovertemplate="budget %{x}<br>value %{y:.3f}<extra></extra>"))
    if 1 <= budget <= len(curve):
        y = float(curve["value"].iat[budget - 1])
        fig.add_vline(x=budget, line=dict(color="#d62728", dash="dash"))
        fig.add_trace(go.Scatter(x=[budget], y=[y], mode="markers", name=f"budget {budget}",
                                 marker=dict(color="#d62728", size=10),
                                 hovertemplate="chosen budget %{x}<br>value %{y:.3f}"
                                               "<extra></extra>"))
    fig.update_layout(height=340, margin=dict(l=10, r=10, t=30, b=10),
                      xaxis_title="budget (rows selected, greedy order)",
                      yaxis_title="objective value", showlegend=False)
    return fig


def _label(pool: Dataset, group: Sequence[int]) -> str:
    if len(group) == 1:
        k = group[0]
        return f"{hover_safe(pool.ids[k], 40)}: {hover_safe(pool.prompts[k], 120)}"
    return f"block of {len(group)}: {hover_safe(pool.ids[group[0]], 40)} … " \
           f"{hover_safe(pool.ids[group[-1]], 40)}"


def heatmap_figure(view: HeatmapView, pool: Dataset, n_selected_shown: int | None = None,
                   title: str = "") -> go.Figure:
    """The (re-ordered, maybe down-sampled) kernel; hover names both samples and the value."""
    n = len(view.rows)
    labels = [f"{a}. {_label(pool, g)}" for a, g in enumerate(view.rows, start=1)]
    ticks = [pool.ids[g[0]] if len(g) == 1 else f"{pool.ids[g[0]]}…" for g in view.rows]
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
    fig.update_layout(height=640, margin=dict(l=10, r=10, t=40, b=10), title=title)
    return fig


def map_figure(frame: pd.DataFrame, colour: str, title: str = "",
               colours: dict[str, str] | None = None) -> go.Figure:
    """A 2-D scatter of samples; ``frame`` has x, y, id, group (legend), hover, colour column.

    Each point's ``customdata`` is its id (used to list lasso/box selections).
    """
    fig = go.Figure()
    palette = colours or {}
    default = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
               "#7f7f7f", "#bcbd22", "#17becf", "#aec7e8", "#ffbb78"]
    for k, (value, part) in enumerate(frame.groupby(colour, sort=False)):
        name = str(value)
        symbol = {"target": "diamond", "existing": "square"}.get(
            str(part["set"].iat[0]) if "set" in part else "", "circle")
        fig.add_trace(go.Scattergl(
            x=part["x"], y=part["y"], mode="markers", name=hover_safe(name, 40),
            customdata=np.asarray(part["id"]).reshape(-1, 1), text=part["hover"],
            marker=dict(size=8 if symbol == "circle" else 10, symbol=symbol, opacity=0.85,
                        color=palette.get(name, default[k % len(default)]),
                        line=dict(width=0.5, color="white")),
            hovertemplate="%{text}<extra></extra>"))
    fig.update_layout(height=560, margin=dict(l=10, r=10, t=40, b=10), title=title,
                      dragmode="lasso", legend=dict(itemsizing="constant"))
    fig.update_xaxes(showticklabels=False, title=None)
    fig.update_yaxes(showticklabels=False, title=None)
    return fig
