"""The result of an evaluation: one row per subset, seed and mode, per-item scores, and what
produced them, with the views people read (a summary folding random seeds into mean ± sd, a
markdown table, a plotly chart) and the files ``delift evaluate`` writes.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from delift_core.errors import optional_import
from delift_core.evaluation.metrics import LOWER_IS_BETTER, METRIC_LABELS, METRICS
from delift_core.evaluation.stats import compare_paired

__all__ = ["EvalReport"]

logger = logging.getLogger(__name__)


@dataclass
class EvalReport:
    """Per-run rows (one per subset, seed and mode), per-item scores, and what produced them."""

    rows: list[dict]
    items: list[dict]
    settings: dict
    meta: dict

    def summary(self) -> list[dict]:
        """Rows with random seeds folded into mean and sample standard deviation."""
        out, groups = [], {}
        for r in self.rows:
            if r["kind"] == "random":
                groups.setdefault((r["subset"], r["mode"]), []).append(r)
            else:
                out.append(dict(r, n_seeds=1))
        for (name, mode), rs in groups.items():
            s = {"subset": name, "kind": "random", "mode": mode, "size": rs[0]["size"],
                 "seed": ",".join(str(r["seed"]) for r in rs), "n_seeds": len(rs),
                 "n_test": rs[0]["n_test"], "n_exact": rs[0].get("n_exact", 0)}
            for m in METRICS:
                vals = [r[m] for r in rs if r.get(m) is not None]
                s[m] = float(np.mean(vals)) if vals else None
                s[m + "_sd"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else None
            if "train_loss_first" in rs[0]:
                for k in ("train_loss_first", "train_loss_last"):
                    s[k] = float(np.mean([r[k] for r in rs if r.get(k) is not None] or [np.nan]))
            out.append(s)
        order = {"subset": 0, "random": 1, "full": 2, "none": 3}
        return sorted(out, key=lambda r: (r["mode"], order.get(r["kind"], 9)))

    def comparisons(self, metrics: tuple[str, ...] = ("nll", "distance", "rouge_l", "cosine"),
                    *, n_boot: int = 10_000, level: float = 0.95) -> list[dict]:
        """Each named subset against the random baseline of its size, per mode and metric.

        Per test item the subset's score is paired with each random seed's on the same item; the
        95 % interval is a bootstrap over test items and seeds
        (:func:`~delift_core.evaluation.stats.compare_paired`), "beats k of N" counts the seeds
        whose mean the subset beats, and the verdict is "wins"/"loses" only when the interval
        excludes zero. Needs the per-item scores (``keep_items``) and at least one random seed.
        """
        by_run: dict[tuple, dict[str, Any]] = {}
        for it in self.items:
            by_run.setdefault((it["mode"], it["subset"], it["seed"]), {})[it["test_id"]] = it
        out = []
        for r in self.rows:
            if r["kind"] != "subset":
                continue
            rnd = [x for x in self.rows if x["kind"] == "random" and x["mode"] == r["mode"]
                   and x["size"] == r["size"]]
            mine = by_run.get((r["mode"], r["subset"], r["seed"]))
            if not rnd or not mine:
                continue
            ids = list(mine)
            for m in metrics:
                if mine[ids[0]].get(m) is None:
                    continue
                base = [[by_run[(x["mode"], x["subset"], x["seed"])][t][m] for t in ids]
                        for x in rnd]
                c = compare_paired([mine[t][m] for t in ids], base,
                                   lower_is_better=m in LOWER_IS_BETTER, n_boot=n_boot,
                                   level=level)
                out.append({"subset": r["subset"], "mode": r["mode"], "size": r["size"],
                            "metric": m, "versus": rnd[0]["subset"],
                            "random_seeds": [x["seed"] for x in rnd], **c.as_dict(),
                            "summary": c.text(4)})
        return out

    def to_json(self) -> dict:
        """Everything: settings, model, per-run rows, the summary, the paired comparisons with
        random, and per-item scores."""
        return {"settings": self.settings, "meta": self.meta, "rows": self.rows,
                "summary": self.summary(), "comparisons": self.comparisons(),
                "items": self.items}

    def to_markdown(self) -> str:
        """A markdown table of the summary; random rows show mean ± sd over seeds."""
        has_em = any(r.get("exact_match") is not None for r in self.rows)
        metrics = [m for m in METRICS if m != "exact_match" or has_em]
        if not self.settings.get("generate", True):
            metrics = [m for m in metrics if m in ("nll", "distance")]
        head = ["mode", "subset", "size", "seed(s)", *[METRIC_LABELS[m] for m in metrics], "n test"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in self.summary():
            cells = [r["mode"], r["subset"], str(r["size"]), str(r["seed"] if r["seed"] is not None
                                                                  else "–")]
            for m in metrics:
                v, sd = r.get(m), r.get(m + "_sd")
                cells.append("–" if v is None else (f"{v:.4f} ± {sd:.4f}" if sd is not None
                                                      else f"{v:.4f}"))
            cells.append(str(r["n_test"]) + (f" ({r.get('n_exact', 0)} with a final answer)"
                                             if has_em else ""))
            lines.append("| " + " | ".join(cells) + " |")
        comps = self.comparisons()
        if comps:
            lines += ["", "Against random (subset − random on the same test items; 95 % "
                          "bootstrap interval over test items and random seeds; wins/loses only "
                          "when the "
                          "interval excludes zero):", "",
                      "| mode | subset | metric | mean difference [95 % interval] | random seeds "
                      "beaten | verdict |", "|---|---|---|---|---|---|"]
            for c in comps:
                lines.append(f"| {c['mode']} | {c['subset']} | {METRIC_LABELS[c['metric']]} | "
                             f"{c['mean_diff']:+.4f} [{c['low']:+.4f}, {c['high']:+.4f}] | "
                             f"{c['seeds_beaten']} of {c['n_seeds']} | {c['verdict']} |")
        s = self.settings
        lines.append("")
        lines.append(f"Model {self.meta.get('model')} ({self.meta.get('model_fingerprint')}), "
                     f"embedder {self.meta.get('embedder')}; settings: "
                     + ", ".join(f"{k}={v}" for k, v in s.items()) + ".")
        return "\n".join(lines) + "\n"

    def figure(self, title: str | None = None) -> Any:
        """A plotly bar chart: one panel per metric, random bars with ± sd error bars and every
        random seed's value as a point (the spread a subset has to beat)."""
        go = optional_import("plotly.graph_objects", "eval", "the evaluation chart")
        make_subplots = optional_import("plotly.subplots", "eval",
                                        "the evaluation chart").make_subplots

        summ = self.summary()
        metrics = [m for m in METRICS if any(r.get(m) is not None for r in summ)]
        modes = sorted({r["mode"] for r in summ})
        fig = make_subplots(rows=1, cols=max(1, len(metrics)),
                            subplot_titles=[METRIC_LABELS[m] for m in metrics])
        colours = {"icl": "#4C78A8", "lora": "#F58518"}
        for c, m in enumerate(metrics, start=1):
            for mode in modes:
                rs = [r for r in summ if r["mode"] == mode and r.get(m) is not None]
                fig.add_trace(go.Bar(
                    x=[f"{r['subset']} (n={r['size']})" for r in rs], y=[r[m] for r in rs],
                    error_y={"type": "data", "array": [r.get(m + "_sd") or 0 for r in rs]},
                    name=mode, legendgroup=mode, showlegend=c == 1,
                    marker_color=colours.get(mode),
                    hovertext=[f"seed(s) {r['seed']}, {r['n_test']} test items" for r in rs]),
                    row=1, col=c)
                seeds = [(f"{x['subset']} (n={x['size']})", x[m], x["seed"]) for x in self.rows
                         if x["kind"] == "random" and x["mode"] == mode and x.get(m) is not None]
                if seeds:  # the random spread: every seed, not only mean ± sd
                    fig.add_trace(go.Scatter(
                        x=[a for a, _, _ in seeds], y=[v for _, v, _ in seeds], mode="markers",
                        marker={"color": "#222222", "size": 6, "symbol": "circle-open"},
                        name=f"{mode}: each random seed", legendgroup=f"{mode}-seeds",
                        showlegend=c == 1, hovertext=[f"seed {k}" for _, _, k in seeds]),
                        row=1, col=c)
        fig.update_layout(barmode="group", title=title or "Evaluation of selected subsets",
                          height=420, width=max(600, 330 * len(metrics)))
        return fig

    def write(self, out_dir: str | Path, title: str | None = None) -> dict[str, Path]:
        """Write ``results.json``, ``results.md`` and ``chart.html`` (``chart.png`` if kaleido)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"json": out / "results.json", "markdown": out / "results.md",
                 "chart": out / "chart.html"}
        paths["json"].write_text(json.dumps(self.to_json(), indent=1, default=str))
        paths["markdown"].write_text(self.to_markdown())
        fig = self.figure(title)
        fig.write_html(paths["chart"], include_plotlyjs="cdn")
        try:
            import kaleido  # noqa: F401

            fig.write_image(out / "chart.png")
            paths["png"] = out / "chart.png"
        except Exception as e:  # kaleido missing or unable to render: the HTML chart is enough
            logger.debug("no chart.png (%s)", e)
        return paths
