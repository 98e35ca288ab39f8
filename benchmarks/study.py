"""A CPU-scale study of the three DELIFT stages on real data (../shared/data), with ICL evaluation.

    python benchmarks/study.py --stages 1 2 3            # writes docs/study/stage*/ and summary
    python benchmarks/study.py --chart-only              # docs/study/chart.{html,png} from results
    python benchmarks/study.py --stages 1 --lora         # also LoRA-tune on stage 1 (slow)

Defaults = the run in docs/study/README.md: stage 1 pool 12 P3 templates x 17 rows = 204, test
12 x 5 = 60; mixed pool 4 other P3 templates x 8 + 34 GSM8K train + 34 Code Alpaca = 100; GSM8K
target 20, GSM8K test 30; existing 2 x 20 = 40 P3 rows; stage 3 test 4 x 5 P3 + 10 GSM8K + 10 code.
Utility kernels are sparse (``--neighbours 4`` nearest by embedding + 1 random per row) and
bfloat16 (on a loaded 2-core CPU the kernel ran at about 1 pair/s, so k = 8 in float32 was out of
reach); the embedding kernel is dense. Random baselines use seeds 0-4.

Stage 1, instruction tuning: a pool of short P3 rows from a dozen templates; FL on the utility
kernel (DELIFT) and on the embedding kernel (DELIFT-SE) vs random (several seeds) vs the full
pool vs no examples, at 30 %. Test: unseen rows of the same templates.
Stage 2, task-specific: a mixed pool (P3, GSM8K, Code Alpaca); a target set of GSM8K test
questions; FLMI and FLQMI vs the same baselines; test: other GSM8K test questions.
Stage 3, continual: an "existing" set from some P3 templates and the mixed pool; FLCG; the ICL
context is existing + selected (the model "knows" the existing set); test covers both.

Diagnostic variant (study only, not the reference behaviour): the same objectives on the utility
pool kernel with the self-utility UF(i, i) excluded from min-max scaling -- "rowmax" sets each
diagonal entry to that row's largest off-diagonal utility, "nodiag" removes it from the pattern.

The P3 ``template`` label builds the splits and measures coverage; it is never a selection input.
Nothing from ../shared/data is written into the project except ids and scores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402

from delift_core.data.dataset import Dataset, load_dataset_bytes
from delift_core.kernels.utility_settings import UtilitySettings
from delift_core.kernels.builder import compute_kernels
from delift_core.lm.models import load_causal_lm, load_embedder
from delift_core.selection.select import select
from delift_core.kernels.builder import Kernels
from delift_core.evaluation.report import EvalReport
from delift_core.evaluation.settings import EvalSettings
from delift_core.evaluation.subsets import Subset, baseline_subsets
from delift_core.evaluation.run import evaluate

DATA = ROOT.parent / "shared" / "data"
OUT = ROOT / "docs" / "study"


def _progress_bars() -> Any:
    from tqdm import tqdm

    bars: dict[str, Any] = {}

    def cb(label: str, done: int, total: int) -> None:
        bar = bars.get(label)
        if bar is None:
            bar = bars[label] = tqdm(total=total, desc=label, file=sys.stderr, leave=False)
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()

    return cb


def _ds(records: list[dict], name: str) -> Dataset:
    """A Dataset from normalised records (id, prompt, response, group) held in memory."""
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    ds = load_dataset_bytes(data, f"{name}.jsonl")
    ds.source = name
    return ds


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line]


def p3_by_template(args: argparse.Namespace) -> dict[str, list[dict]]:
    """Short P3 rows grouped by template, each group shuffled with the study seed."""
    groups: dict[str, list[dict]] = {}
    for r in _jsonl(DATA / "p3_sample.jsonl"):
        if len(r["prompt"]) <= args.max_prompt_chars and 0 < len(r["completion"].strip()) <= 80:
            groups.setdefault(r["template"], []).append(
                {"id": r["id"], "prompt": r["prompt"], "response": r["completion"].strip(),
                 "group": r["template"]})
    rng = random.Random(args.seed)
    for rows in groups.values():
        rng.shuffle(rows)
    return groups


def pick_templates(groups: dict[str, list[dict]], n: int, need: int, seed: int,
                   exclude: set[str] = frozenset()) -> list[str]:
    """``n`` templates with at least ``need`` short rows, at most one per source dataset."""
    names = sorted(t for t, rows in groups.items() if len(rows) >= need and t not in exclude)
    random.Random(seed).shuffle(names)
    chosen, datasets = [], set()
    for t in names:
        family = t.split("_")[0]
        if family in datasets:
            continue
        chosen.append(t)
        datasets.add(family)
        if len(chosen) == n:
            break
    return sorted(chosen)


def gsm8k(split: str, n: int, skip: int = 0, seed: int = 0) -> list[dict]:
    """GSM8K rows (shortest questions first after a seeded shuffle is not used: plain order)."""
    rows = _jsonl(DATA / f"gsm8k_{split}.jsonl")
    rows = [r for r in rows if len(r["question"]) <= 260]
    random.Random(seed).shuffle(rows)
    return [{"id": r["id"], "prompt": r["question"], "response": r["answer"], "group": "gsm8k"}
            for r in rows[skip: skip + n]]


def code_alpaca(n: int, seed: int = 0) -> list[dict]:
    """Short Code Alpaca rows with ids ``code-<position>``."""
    rows = json.loads((DATA / "code_alpaca_2k.json").read_text(encoding="utf-8"))
    out = []
    for k, r in enumerate(rows):
        prompt = r["instruction"] + ("\n\n" + r["input"] if r.get("input") else "")
        if len(prompt) <= 200 and 0 < len(r["output"]) <= 150:
            out.append({"id": f"code-{k}", "prompt": prompt, "response": r["output"],
                        "group": "code_alpaca"})
    random.Random(seed).shuffle(out)
    return out[:n]


def coverage(ds: Dataset, groups: dict[str, str]) -> dict[str, int]:
    """How many selected rows fall in each group (template or source)."""
    return dict(sorted(Counter(groups[i] for i in ds.ids).items()))


def without_diagonal(kernels: Kernels, how: str) -> Kernels:
    """The study's diagnostic variant: the pool kernel with UF(i, i) kept out of min-max scaling.

    ``rowmax``: each diagonal entry becomes the largest off-diagonal utility of its row (so the
    scaling range is that of the off-diagonal pairs, and an item covers itself as well as its best
    helper does); ``nodiag``: diagonal entries are dropped (a selected item then covers itself only
    through the other selected items). Target and existing kernels have no diagonal and stay.
    """
    raw = kernels.pool
    coo = raw.tocoo() if sp.issparse(raw) else sp.coo_matrix(np.asarray(raw))
    r, c, v = coo.row, coo.col, coo.data.astype(np.float32)
    off = r != c
    if how == "nodiag":
        r, c, v = r[off], c[off], v[off]
    elif how == "rowmax":
        rowmax = np.full(raw.shape[0], -np.inf, np.float32)
        np.maximum.at(rowmax, r[off], v[off])
        diag = ~off
        v = v.copy()
        v[diag] = np.where(np.isfinite(rowmax[r[diag]]), rowmax[r[diag]], v[off].min())
    else:
        raise ValueError(how)
    pool = sp.csr_matrix((v, (r, c)), shape=raw.shape, dtype=np.float32)
    return Kernels(kernels.kind, pool=pool, target=kernels.target, existing=kernels.existing,
                   meta=dict(kernels.meta, diagonal_variant=how))


def diagonal_diagnostics(raw: Any, selected: dict[str, list[int]]) -> dict:
    """Self-utility vs off-diagonal utility of a pool kernel; where the picks rank by UF(i, i)."""
    coo = raw.tocoo() if sp.issparse(raw) else sp.coo_matrix(np.asarray(raw))
    diag_mask = coo.row == coo.col
    n = raw.shape[0]
    diag = np.full(n, np.nan)
    diag[coo.row[diag_mask]] = coo.data[diag_mask]
    offv = coo.data[~diag_mask]
    order = np.argsort(-np.nan_to_num(diag, nan=-np.inf), kind="stable")
    rank = np.empty(n, int)
    rank[order] = np.arange(n)
    out = {"n": int(n), "stored_pairs": int(coo.nnz), "diag_mean": float(np.nanmean(diag)),
           "diag_max": float(np.nanmax(diag)), "offdiag_mean": float(offv.mean()),
           "offdiag_max": float(offv.max()), "offdiag_min": float(offv.min()),
           "offdiag_p90": float(np.quantile(offv, 0.9)),
           "selected_mean_self_rank_pct": {}}
    for label, idx in selected.items():
        out["selected_mean_self_rank_pct"][label] = round(100 * float(np.mean(rank[idx])) / n, 1)
    return out


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (the platform's name where it has none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    """A one-line description of the machine (CPU model, cores, torch threads)."""
    import torch

    cpu = cpu_model()
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} with "
            f"{torch.get_num_threads()} threads")


def run_stage(name: str, title: str, pool: Dataset, test: Dataset, selections: list[tuple],
              args: argparse.Namespace, lm: Any, emb: Any, group_of: dict[str, str],
              *, target: Dataset | None = None, existing: Dataset | None = None,
              context: Dataset | None = None) -> EvalReport:
    """Kernels, selections, baselines and the evaluation of one stage; writes its folder.

    ``selections``: (objective, kernel kind, diagonal variant or None) triples.
    """
    t0 = time.time()
    usettings = UtilitySettings(max_field_tokens=args.kernel_field_tokens,
                                max_response_tokens=args.kernel_response_tokens,
                                batch_size=args.batch_size)
    kernels = {}
    timing = {}
    for kind in sorted({k for _, k, _ in selections}):
        t = time.time()
        sparse = kind == "utility" and args.neighbours > 0
        kernels[kind] = compute_kernels(pool, target=target, existing=existing, kind=kind,
                                        lm=lm if kind == "utility" else None,
                                        embedder=emb,
                                        settings=usettings if kind == "utility" else None,
                                        progress=_progress_bars(),
                                        neighbours=args.neighbours if sparse else None,
                                        neighbour_random=args.neighbour_random)
        timing[f"kernel_{kind}_s"] = round(time.time() - t, 1)
    subsets, comp, picks = [], {}, {}
    for objective, kind, variant in selections:
        kern = kernels[kind] if variant is None else without_diagonal(kernels[kind], variant)
        sel = select(pool, objective, kern, args.budget, seed=0)
        chosen = pool.subset(sel.selected_indices)
        label = f"{objective.upper()} {'DELIFT' if kind == 'utility' else 'DELIFT-SE'}"
        if variant:
            label += f" [{variant}]"
        comp[label] = coverage(chosen, group_of)
        picks[label] = [int(x) for x in sel.selected_indices]
        subsets.append(Subset(label, chosen, "subset", 0, {"objective": objective,
                                                             "kernel": kind,
                                                             "diagonal_variant": variant}))
    size = subsets[0].size
    base = baseline_subsets(pool, [size], ["random", "full", "none"], args.seeds)
    for b in base:
        if b.kind == "random":
            comp[f"random seed {b.seed}"] = coverage(b.data, group_of)
            picks[f"random seed {b.seed}"] = [pool.index_of(i) for i in b.data.ids]
    subsets += base
    diag = (diagonal_diagnostics(kernels["utility"].pool, picks) if "utility" in kernels
            else None)
    if context is not None:
        # continual: the model already "knows" the existing set, so it is always in the context
        merged = []
        for s in subsets:
            rows = list(context.rows) + (list(s.data.rows) if s.data is not None else [])
            merged.append(Subset(s.name if s.kind != "none" else "existing only",
                                 _ds(rows, f"{name}-{s.name}"), s.kind, s.seed,
                                 dict(s.info, context="existing + subset")))
            merged[-1].info["subset_size"] = s.size
        subsets = merged
    esettings = EvalSettings(shots=args.shots, max_field_tokens=args.eval_field_tokens,
                             max_reference_tokens=args.eval_reference_tokens,
                             max_new_tokens=args.max_new_tokens,
                             generate=name in args.generate_stages, batch_size=args.batch_size // 2
                             or 1, lora_steps=args.lora_steps, lora_max_tokens=128,
                             lora_batch_size=4)
    modes = ("icl", "lora") if args.lora and name in args.lora_stages else ("icl",)
    if args.lora_only:
        modes = ("lora",)
        title = title.replace("(ICL)", f"(LoRA, {args.lora_steps} steps)")
    t = time.time()
    report = evaluate(subsets, test, lm=lm, embedder=emb, settings=esettings, modes=modes,
                      progress=_progress_bars())
    timing["evaluate_s"] = round(time.time() - t, 1)
    timing["total_s"] = round(time.time() - t0, 1)
    kmeta = {kind: {k: v for k, v in kern.meta.items() if not k.endswith("_ids")}
             for kind, kern in kernels.items()}
    report.meta.update({
        "stage": name, "title": title, "pool_rows": len(pool), "test_rows": len(test),
        "target_rows": len(target) if target is not None else None,
        "existing_rows": len(existing) if existing is not None else None,
        "budget": args.budget, "selected": size, "seeds": args.seeds,
        "utility_settings": usettings.value_key(), "kernels": kmeta, "timing": timing,
        "composition": comp, "pool_composition": coverage(pool, group_of),
        "test_composition": coverage(test, group_of),
        "existing_composition": coverage(existing, group_of) if existing is not None else None,
        "diagonal": diag, "machine": machine(),
        "command": " ".join(sys.argv),
    })
    folder = OUT / (name + ("-lora" if args.lora_only else ""))
    report.write(folder, title=title)
    print(report.to_markdown())
    print(json.dumps(timing), file=sys.stderr)
    return report


METHOD_COLOURS = {"DELIFT": "#E45756", "DELIFT [rowmax]": "#FF9DA6", "DELIFT [nodiag]": "#9D755D",
                  "DELIFT-SE": "#4C78A8", "random": "#BAB0AC", "full": "#54A24B",
                  "none": "#222222"}


def _method(subset: str, kind: str) -> str:
    if kind != "subset":
        return {"random": "random", "full": "full", "none": "none"}[kind]
    m = subset.split(" ", 1)[1]
    return m


def write_chart(out: Path = OUT) -> Path | None:
    """One summary chart: NLL/token per stage (panel) and method (bar), random ± sd over seeds.

    Written as ``chart.html``; ``chart.png`` is a headless-Chromium screenshot of it (Playwright,
    /usr/bin/chromium), kaleido not being installed.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    stages = [p for p in sorted(out.glob("stage[0-9]")) if (p / "results.json").exists()]
    if not stages:
        return None
    titles = {"stage1": "1 instruction tuning (FL)", "stage2": "2 task-specific, GSM8K",
              "stage3": "3 continual (FLCG)"}
    fig = make_subplots(rows=1, cols=len(stages), horizontal_spacing=0.06,
                        subplot_titles=[titles.get(p.name, p.name) for p in stages])
    shown, n_seeds = set(), set()
    for c, p in enumerate(stages, start=1):
        data = json.loads((p / "results.json").read_text())
        n_test = data["meta"]["test_rows"]
        for r in data["summary"]:
            if r["mode"] != "icl":
                continue
            method = _method(r["subset"], r["kind"])
            obj = r["subset"].split(" ", 1)[0] if r["kind"] == "subset" else ""
            x = f"{obj} {method}".strip() if r["kind"] == "subset" else method
            if r["kind"] == "random":
                x = f"random ({r['n_seeds']} seeds)"
                n_seeds.add(r["n_seeds"])
            elif r["kind"] == "none" and p.name == "stage3":
                x = "existing only"
            elif r["kind"] == "full":
                x = f"full ({r['size']})" if p.name != "stage3" else "existing + full"
            fig.add_trace(go.Bar(
                x=[x], y=[r["nll"]], name=method, legendgroup=method,
                showlegend=method not in shown, marker_color=METHOD_COLOURS.get(method, "#72B7B2"),
                error_y={"type": "data", "array": [r.get("nll_sd") or 0],
                         "visible": r["kind"] == "random", "thickness": 2, "width": 6},
                text=[f"{r['nll']:.2f}"], cliponaxis=False,
                textposition="inside" if r["kind"] == "random" else "outside",
                hovertext=[f"{r['subset']}: n={r['size']}, {n_test} test items"]), row=1, col=c)
            shown.add(method)
        fig.update_yaxes(title_text="NLL/token ↓ (1-shot k-NN ICL)" if c == 1 else None,
                         rangemode="tozero", row=1, col=c)
        fig.update_xaxes(tickangle=-40, row=1, col=c)
    fig.update_layout(
        title="DELIFT study on CPU (Gemma 3 270M): test NLL/token per stage and subset, 30 % "
              f"budget; random = mean ± sd over {'/'.join(map(str, sorted(n_seeds)))} seeds",
        barmode="group", height=560, width=1500, bargap=0.25, template="plotly_white",
        legend={"title": "method"}, margin={"t": 90, "b": 130})
    html = out / "chart.html"
    fig.write_html(html, include_plotlyjs="cdn")
    png = out / "chart.png"
    import tempfile

    tmp = Path(tempfile.mkdtemp()) / "chart.html"  # plotly.js inline: the screenshot is offline
    fig.write_html(tmp, include_plotlyjs=True)
    try:
        from playwright.sync_api import sync_playwright

        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path="/usr/bin/chromium",
                args=["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                      "--disable-background-networking", "--disable-component-update",
                      "--disable-sync"])
            page = browser.new_page(viewport={"width": 1520, "height": 580})
            page.goto(tmp.resolve().as_uri())
            page.wait_for_selector(".main-svg")
            page.wait_for_timeout(500)
            page.locator(".plotly-graph-div").screenshot(path=str(png))
            browser.close()
    except Exception as e:  # no browser: the HTML is still there
        print(f"chart.png not written ({e})", file=sys.stderr)
        return html
    return png


def main() -> int:
    """Run the chosen stages and write docs/study/<stage>/ plus docs/study/summary.md."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stages", nargs="+", default=["1", "2", "3"])
    ap.add_argument("--seed", type=int, default=0, help="data-split seed")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4],
                    help="random-baseline seeds")
    ap.add_argument("--budget", default="0.3")
    ap.add_argument("--templates", type=int, default=12)
    ap.add_argument("--per-template", type=int, default=17, help="stage 1 pool rows per template")
    ap.add_argument("--test-per-template", type=int, default=5)
    ap.add_argument("--mixed-templates", type=int, default=4,
                    help="P3 templates in the mixed pool (half of them feed the existing set)")
    ap.add_argument("--mixed-p3-per-template", type=int, default=8)
    ap.add_argument("--mixed-per-source", type=int, default=34,
                    help="GSM8K train and Code Alpaca rows each in the mixed pool")
    ap.add_argument("--existing-per-template", type=int, default=20)
    ap.add_argument("--target-rows", type=int, default=20)
    ap.add_argument("--gsm-test-rows", type=int, default=30)
    ap.add_argument("--stage3-test-per-source", type=int, default=10,
                    help="GSM8K and Code Alpaca test rows each in stage 3 (plus P3 test rows)")
    ap.add_argument("--max-prompt-chars", type=int, default=300)
    ap.add_argument("--neighbours", type=int, default=4,
                    help="sparse utility kernel: nearest examples per row (0: dense)")
    ap.add_argument("--neighbour-random", type=int, default=1)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--no-diagonal-variants", action="store_true",
                    help="skip the study-only variants with UF(i, i) kept out of the scaling")
    ap.add_argument("--kernel-field-tokens", type=int, default=48)
    ap.add_argument("--kernel-response-tokens", type=int, default=24)
    ap.add_argument("--eval-field-tokens", type=int, default=96)
    ap.add_argument("--eval-reference-tokens", type=int, default=48)
    ap.add_argument("--shots", type=int, default=1)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--generate-stages", nargs="*", default=[],
                    help="stages that also generate answers (ROUGE-L, cosine, exact match)")
    ap.add_argument("--lora", action="store_true")
    ap.add_argument("--lora-stages", nargs="+", default=["stage1"])
    ap.add_argument("--lora-steps", type=int, default=8)
    ap.add_argument("--lora-only", action="store_true",
                    help="LoRA evaluation only, written to docs/study/<stage>-lora/")
    ap.add_argument("--chart-only", action="store_true",
                    help="only (re)write docs/study/chart.html/.png from the results")
    args = ap.parse_args()
    if args.chart_only:
        print(write_chart())
        return 0

    lm = load_causal_lm(dtype=args.dtype)
    emb = load_embedder()
    groups = p3_by_template(args)
    need = args.per_template + args.test_per_template
    variants = [] if args.no_diagonal_variants else ["rowmax", "nodiag"]
    reports = {}
    temps1 = pick_templates(groups, args.templates, need, args.seed)
    if "1" in args.stages:
        pool_rows = [r for t in temps1 for r in groups[t][: args.per_template]]
        test_rows = [r for t in temps1 for r in groups[t][args.per_template: need]]
        group_of = {r["id"]: r["group"] for r in pool_rows + test_rows}
        sels = [("fl", "utility", None), ("fl", "embedding", None)]
        sels += [("fl", "utility", v) for v in variants]
        reports["stage1"] = run_stage(
            "stage1", "Stage 1, instruction tuning: FL on P3 (ICL)", _ds(pool_rows, "p3-pool"),
            _ds(test_rows, "p3-test"), sels, args, lm, emb, group_of)
    if "2" in args.stages or "3" in args.stages:
        # the mixed pool (shared by stages 2 and 3, so its pool kernel is computed once, cached)
        per, tpt = args.mixed_p3_per_template, args.test_per_template
        ex = args.existing_per_template
        fams1 = {t.split("_")[0] for t in temps1}
        mixed_t = pick_templates(groups, args.mixed_templates, per + tpt + ex, args.seed + 1,
                                 exclude={t for t in groups if t.split("_")[0] in fams1})
        old_t = mixed_t[: len(mixed_t) // 2]
        p3_pool = [r for t in mixed_t for r in groups[t][:per]]
        n_src, n3 = args.mixed_per_source, args.stage3_test_per_source
        gsm_pool = gsm8k("train", n_src, seed=args.seed)
        code = code_alpaca(n_src + n3, seed=args.seed)
        code_pool, code_test = code[:n_src], code[n_src:]
        mixed = p3_pool + gsm_pool + code_pool
        group_of = {r["id"]: r["group"] for r in mixed + code_test}
        pool = _ds(mixed, "mixed-pool")
        if "2" in args.stages:
            target_rows = gsm8k("test", args.target_rows, seed=args.seed)
            test_rows = gsm8k("test", args.gsm_test_rows, skip=args.target_rows, seed=args.seed)
            group_of.update({r["id"]: r["group"] for r in target_rows + test_rows})
            sels = [("flmi", "utility", None), ("flqmi", "utility", None),
                    ("flmi", "embedding", None), ("flqmi", "embedding", None)]
            sels += [("flmi", "utility", v) for v in variants[:1]]
            reports["stage2"] = run_stage(
                "stage2", "Stage 2, task-specific: FLMI / FLQMI towards GSM8K (ICL)", pool,
                _ds(test_rows, "gsm8k-test"), sels, args, lm, emb, group_of,
                target=_ds(target_rows, "gsm8k-target"))
        if "3" in args.stages:
            existing_rows = [r for t in old_t for r in groups[t][per + tpt: per + tpt + ex]]
            test_rows = ([r for t in mixed_t for r in groups[t][per: per + tpt]]
                         + gsm8k("test", n3, skip=args.target_rows + args.gsm_test_rows,
                                 seed=args.seed) + code_test)
            group_of.update({r["id"]: r["group"] for r in existing_rows + test_rows})
            existing = _ds(existing_rows, "p3-existing")
            sels = [("flcg", "utility", None), ("flcg", "embedding", None)]
            sels += [("flcg", "utility", v) for v in variants]
            reports["stage3"] = run_stage(
                "stage3", "Stage 3, continual: FLCG with an existing P3 set (ICL)", pool,
                _ds(test_rows, "mixed-test"), sels, args, lm, emb, group_of, existing=existing,
                context=existing)
    lines = ["# Study results (generated by benchmarks/study.py)", "",
             "Set-up, commands, verdicts and diagnosis: README.md in this folder.", ""]
    for name in sorted(p.name for p in OUT.glob("stage*") if (p / "results.md").exists()):
        if not (OUT / name / "results.json").exists():
            continue
        data = json.loads((OUT / name / "results.json").read_text())
        m = data["meta"]
        lines += [f"## {m.get('title', name)}", "",
                  f"Pool {m.get('pool_rows')} rows, {m.get('selected')} selected "
                  f"(budget {m.get('budget')}), test {m.get('test_rows')}, target "
                  f"{m.get('target_rows')}, existing {m.get('existing_rows')}; "
                  f"machine: {m.get('machine')}; dtype {m.get('dtype')}.", "",
                  (OUT / name / "results.md").read_text(), "",
                  f"Timing (s): {m.get('timing')}", ""]
        if m.get("diagonal"):
            lines += ["Utility pool kernel, diagonal vs off-diagonal (raw UF; self-rank % = mean "
                      "rank of the picks by UF(i, i), 0 = largest):", "", "```",
                      json.dumps(m["diagonal"], indent=1), "```", ""]
        lines += ["Composition of the subsets (rows per template / source):", "", "```"]
        lines += [f"pool: {m.get('pool_composition')}", f"test: {m.get('test_composition')}"]
        if m.get("existing_composition"):
            lines += [f"existing: {m.get('existing_composition')}"]
        lines += [f"{k}: {v}" for k, v in m.get("composition", {}).items()]
        lines += ["```", ""]
    (OUT / "summary.md").write_text("\n".join(lines))
    print(write_chart())
    return 0


if __name__ == "__main__":
    sys.exit(main())
