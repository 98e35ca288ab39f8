"""Quality benchmark: does DELIFT earn its place against random? Paired evidence, CPU-sized.

    python benchmarks/bench_quality.py                 # the committed run -> docs/quality/
    python benchmarks/bench_quality.py --dry-run       # tiny sizes, to time the engine first
    python benchmarks/bench_quality.py --report-only   # tables and chart from results.json

Pools (built by :func:`build_pool` from ../shared/data with a pool seed): six P3 templates of
unequal size, GSM8K train and Code Alpaca rows, plus near-duplicates (rows copied with a small
edit to the prompt, as real data has them). One pool per seed serves the three stages:

- stage 1 (instruction tuning, FL): test = unseen rows of every family of the pool;
- stage 2 (task-specific, FLMI in both target directions and FLQMI): target = GSM8K test
  questions; test = other GSM8K test questions;
- stage 3 (continual, FLCG): existing = unseen rows of the two largest P3 templates (the model
  "knows" them: they are always in the ICL context); test = the stage 1 test.

Methods per budget (5 %, 10 %, 30 %): DELIFT (sparse utility kernel) under every diagonal policy,
DELIFT-SE (embedding kernel), random (10 seeds), the full pool, none; with the ``heuristics``
profile also what practitioners pick instead (stage 1): IFD, IFD-FL (Superfiltering.D) and the
longest responses, each compared with DELIFT under the default diagonal. Measures: 1-shot and 3-shot
k-NN ICL (teacher-forced NLL per token and DELIFT distance, delift_core.evaluation) and LoRA
fine-tuning (stage 1; same epochs for every subset, so the same steps within a budget), then
zero-shot test NLL. Statistics: delift_core.evaluation.stats (paired bootstrap over test items
and random seeds; "wins" only when the 95 % interval excludes zero).

All settings are in :data:`SETTINGS`, fixed before the run and written into results.json.
Results are written after every stage (``docs/quality/results.json``), so a partial run leaves
data. The P3 ``template`` label builds the pools and splits only; it is never a selection input.
Nothing from ../shared/data is written into the project except ids and scores.
"""

from __future__ import annotations

import argparse
import json
import math
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

from delift_core.data.dataset import Dataset, load_dataset_bytes
from delift_core.kernels.utility_settings import UtilitySettings
from delift_core.kernels.builder import compute_kernels
from delift_core.lm.models import load_causal_lm, load_embedder
from delift_core.selection.select import select
from delift_core.settings import choices
from delift_core.evaluation.settings import EvalSettings
from delift_core.evaluation.subsets import Subset
from delift_core.evaluation.run import evaluate
from delift_core.evaluation.stats import compare_paired

sys.path.insert(0, str(ROOT / "benchmarks"))
from study import _ds, _jsonl, machine as study_machine  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
OUT = ROOT / "docs" / "quality"

SETTINGS: dict[str, Any] = {
    "pool_seeds": [0, 1],
    "p3_template_sizes": [40, 24, 14, 8, 5, 3],  # unequal task families
    "gsm8k_pool": 32, "code_pool": 20, "near_duplicates": 8,
    "p3_test_per_template": 5, "gsm8k_test_stage1": 8, "code_test": 8,
    "target_rows": 10, "gsm8k_test_stage2": 30, "existing_per_template": 8,
    "max_prompt_chars": 300, "max_p3_answer_chars": 80, "max_gsm8k_question_chars": 260,
    "max_code_prompt_chars": 200, "max_code_answer_chars": 150,
    "budgets": [0.05, 0.10, 0.30],
    "random_seeds": list(range(10)),
    "dtype": "bfloat16",
    "kernel_field_tokens": 48, "kernel_response_tokens": 32, "kernel_batch_size": 8,
    "neighbours": 8, "neighbour_random": 1,
    "diagonals": list(choices("diagonal")),
    "target_directions": ["helps-target", "reference"],
    "shots": [1, 3],
    "eval_field_tokens": 48, "eval_reference_tokens": 32, "eval_batch_size": 8,
    "lora_stage": "stage1", "lora_budgets": [0.10, 0.30], "lora_random_seeds": [0, 1, 2, 3, 4],
    "lora_epochs": 2, "lora_batch_size": 4, "lora_lr": 1e-3, "lora_r": 8, "lora_alpha": 16,
    "lora_max_tokens": 96, "lora_full_pool": False,
    "bootstrap": {"n_boot": 10000, "level": 0.95, "seed": 0},
    "selection_seed": 0,
    "heuristics": [],
    "learned": None,
}

DRY = {"pool_seeds": [0], "p3_template_sizes": [8, 5, 3], "gsm8k_pool": 6, "code_pool": 4,
       "near_duplicates": 2, "p3_test_per_template": 2, "gsm8k_test_stage1": 2, "code_test": 2,
       "target_rows": 3, "gsm8k_test_stage2": 4, "existing_per_template": 3,
       "budgets": [0.3], "random_seeds": [0, 1], "lora_budgets": [0.3],
       "lora_random_seeds": [0]}


SMALL = {"p3_template_sizes": [8, 6, 4, 2], "gsm8k_pool": 5, "code_pool": 3,
         "near_duplicates": 2, "p3_test_per_template": 2, "gsm8k_test_stage1": 2, "code_test": 2,
         "target_rows": 4, "gsm8k_test_stage2": 10, "existing_per_template": 3,
         "budgets": [0.10, 0.30], "neighbour_random": 0, "dtype": "float32",
         "lora_budgets": [0.30], "lora_random_seeds": [0, 1, 2], "lora_epochs": 2}
"""What ran on 2026-12-01: the machine was shared with several other model runs (load average
10-13 on 2 cores; a 8 x 100-token forward of the 270M model took 17 s on one thread, 34 s on
two), so the planned sizes (SETTINGS) were out of reach; bfloat16 was slower than float32 there."""

MEDIUM = {"p3_template_sizes": [16, 10, 6, 4, 2], "gsm8k_pool": 10, "code_pool": 8,
          "near_duplicates": 4, "p3_test_per_template": 2, "gsm8k_test_stage1": 3,
          "code_test": 2, "budgets": [0.05, 0.10, 0.30], "dtype": "float32",
          "stages": ["stage1"], "lora_budgets": [0.30], "lora_random_seeds": [0, 1, 2],
          "lora_epochs": 2}
"""Fixed on 2026-12-01 before its run, for a quiet hour of the 2-core machine (the small
profile's second pool seed ran at 4.2 pairs/s in float32): 60-row pools (five P3 templates of
16/10/6/4/2 rows, 10 GSM8K, 8 Code Alpaca, 4 near-duplicates), budgets 5 % (3 rows), 10 % and 30 %,
two pool seeds, stage 1 only (FL: the instruction-tuning claim), 15 test items, LoRA at 30 %
with 3 random seeds. Stages 2 and 3 stay with the small profile: at these rates the three stages
at three budgets need about 40 min per pool seed more."""

HEURISTICS = dict(MEDIUM, heuristics=["ifd", "ifd-fl", "longest"])
"""Fixed on 2026-12-04 before its run: the medium profile as it ran on 2026-12-01 (60-row
pools, two pool seeds, stage 1, budgets 5/10/30 %, ICL 1 and 3 shots, LoRA at 30 % with 3 random
seeds), plus IFD (the default model's two passes a row, the kernel's token cuts), IFD-FL (the
top 20 % by IFD, then FL on the DELIFT-SE kernel; at 5 % of a 60-row pool that is 3 of 12 kept
rows) and the longest responses (the model's tokens)."""

LARGE = dict(HEURISTICS, pool_seeds=[0],
             p3_template_sizes=[40, 38, 35, 32, 29, 26, 23, 20, 18, 16, 14, 12, 10, 8, 6, 4],
             gsm8k_pool=100, code_pool=64, near_duplicates=24, p3_test_per_template=2,
             existing_per_template=0, gsm8k_test_stage1=8, code_test=8, dtype="bfloat16",
             neighbours=8, neighbour_random=2, lora_budgets=[0.10], lora_full_pool=True,
             learned={"neighbours": 32, "neighbour_random": 2, "exact_passes": 1800,
                      "diagonal": "max"})
"""Fixed on 2026-12-04 before its run (issues 22 and 23): one pool of 519 rows (16 P3 templates
of 40 down to 4 rows, one per source dataset, 100 GSM8K, 64 Code Alpaca, 24 near-duplicates:
18 task families), 48 test items (2 per template, 8 GSM8K, 8 code), stage 1, budgets 5/10/30 %,
ICL 1 and 3 shots, random 10 seeds. Methods: DELIFT under the three diagonal policies on the
exact sparse kernel at K = 8 + 2 (what tied random on the 550-row held-out pool), DELIFT on a
learned kernel of K = 32 + 2 from 1,800 exact passes (a tenth of an exact kernel at that K; it
asks whether a wider K carries the small-pool win), DELIFT-SE, IFD, IFD-FL, LONGEST. LoRA at
10 % (3 random seeds) plus the full pool and none with the same epochs, so that whether the
LoRA runs measure anything (full beats none) is in the results. bfloat16 (this CPU has
AVX512-BF16): the kernel is about 6,000 passes. Saturation: for every subset, how many of the
test families it covers and the share of test items whose nearest shot is of their family."""

HEURISTICS_STAGE2 = dict(HEURISTICS, stages=["stage2"])
"""Fixed on 2026-12-04 before its run: the heuristics profile's pools and settings, stage 2 only
(task-specific: the GSM8K target of 10 test questions, 30 other GSM8K test questions as the test
set): DELIFT's target-aware FLMI (both target directions, every diagonal) and FLQMI, DELIFT-SE's,
against IFD, IFD-FL and the longest responses, which do not see the target, and random."""

PROFILES = {"planned": {}, "small": SMALL, "medium": MEDIUM, "dry": DRY,
            "heuristics": HEURISTICS, "large": LARGE, "heuristics-stage2": HEURISTICS_STAGE2}

HEURISTIC_LABELS = {"ifd": "IFD", "ifd-fl": "IFD-FL", "longest": "LONGEST"}
"""How the score-based methods are named in the results (DELIFT is compared with each)."""


LEARNED_VERSUS = "DELIFT (exact kernel)"
"""What the learned kernel's DELIFT is compared with besides random: the exact sparse kernel's."""


def versus_names(data: dict) -> list[str]:
    """What every method is compared with: random, DELIFT-SE, the heuristics that ran, and the
    exact kernel (for the learned one)."""
    return (["random", "DELIFT-SE"] + [HEURISTIC_LABELS[h] for h in
                                       data["settings"].get("heuristics", [])]
            + ([LEARNED_VERSUS] if data["settings"].get("learned") else [])
            + (["none"] if data["settings"].get("lora_full_pool") else []))


def log(msg: str) -> None:
    """A timestamped line on stderr (the benchmark's own progress log)."""
    print(time.strftime("%H:%M:%S ") + msg, file=sys.stderr, flush=True)


def _edit(prompt: str, rng: random.Random) -> str:
    """A small edit, as near-duplicates in real data have: casing, spacing, a word added."""
    how = rng.randrange(3)
    if how == 0:
        return prompt[:1].swapcase() + prompt[1:]
    if how == 1:
        return prompt.replace(" ", "  ", 1) + " "
    return "Please answer. " + prompt


def build_pool(seed: int, s: dict) -> dict[str, Any]:
    """The pool, its near-duplicates, the targets, the existing set and the test sets of one pool
    seed; every row carries its family (``group``) for composition tables only."""
    rng = random.Random(seed)
    groups: dict[str, list[dict]] = {}
    for r in _jsonl(DATA / "p3_sample.jsonl"):
        if len(r["prompt"]) <= s["max_prompt_chars"] and \
                0 < len(r["completion"].strip()) <= s["max_p3_answer_chars"]:
            groups.setdefault(r["template"], []).append(
                {"id": r["id"], "prompt": r["prompt"], "response": r["completion"].strip(),
                 "group": r["template"]})
    sizes = s["p3_template_sizes"]
    need_extra = s["p3_test_per_template"] + s["existing_per_template"]
    names = sorted(t for t, rows in groups.items() if len(rows) >= sizes[0] + need_extra)
    rng.shuffle(names)
    chosen, families = [], set()
    for t in names:  # one template per source dataset, so families are distinct tasks
        fam = t.split("_")[0]
        if fam not in families:
            chosen.append(t)
            families.add(fam)
        if len(chosen) == len(sizes):
            break
    pool, test1, existing = [], [], []
    for k, t in enumerate(chosen):
        rows = groups[t][:]
        rng.shuffle(rows)
        pool += rows[: sizes[k]]
        test1 += rows[sizes[k]: sizes[k] + s["p3_test_per_template"]]
        if k < 2:
            existing += rows[sizes[k] + s["p3_test_per_template"]:
                             sizes[k] + s["p3_test_per_template"] + s["existing_per_template"]]
    gtrain = [r for r in _jsonl(DATA / "gsm8k_train.jsonl")
              if len(r["question"]) <= s["max_gsm8k_question_chars"]]
    gtest = [r for r in _jsonl(DATA / "gsm8k_test.jsonl")
             if len(r["question"]) <= s["max_gsm8k_question_chars"]]
    rng.shuffle(gtrain)
    rng.shuffle(gtest)
    g = lambda r: {"id": r["id"], "prompt": r["question"], "response": r["answer"],  # noqa: E731
                   "group": "gsm8k"}
    pool += [g(r) for r in gtrain[: s["gsm8k_pool"]]]
    n1, nt, n2 = s["gsm8k_test_stage1"], s["target_rows"], s["gsm8k_test_stage2"]
    test1 += [g(r) for r in gtest[:n1]]
    target = [g(r) for r in gtest[n1: n1 + nt]]
    test2 = [g(r) for r in gtest[n1 + nt: n1 + nt + n2]]
    code = []
    for k, r in enumerate(json.loads((DATA / "code_alpaca_2k.json").read_text(encoding="utf-8"))):
        prompt = r["instruction"] + ("\n\n" + r["input"] if r.get("input") else "")
        if len(prompt) <= s["max_code_prompt_chars"] and \
                0 < len(r["output"]) <= s["max_code_answer_chars"]:
            code.append({"id": f"code-{k}", "prompt": prompt, "response": r["output"],
                         "group": "code_alpaca"})
    rng.shuffle(code)
    pool += code[: s["code_pool"]]
    test1 += code[s["code_pool"]: s["code_pool"] + s["code_test"]]
    dups = []
    for r in rng.sample(pool, s["near_duplicates"]):
        dups.append(dict(r, id=r["id"] + "-neardup", prompt=_edit(r["prompt"], rng)))
    pool += dups
    rng.shuffle(pool)
    return {"pool": pool, "test1": test1, "target": target, "test2": test2,
            "existing": existing, "templates": chosen, "near_duplicates": [d["id"] for d in dups]}


def composition(rows: list[dict]) -> dict[str, int]:
    """Rows per family."""
    return dict(sorted(Counter(r["group"] for r in rows).items()))


def machine() -> str:
    """CPU model, cores, torch threads (as benchmarks/study.py says it) and the load average."""
    return f"{study_machine()}, load average at the start {os.getloadavg()}"


def progress_log() -> Any:
    """A progress callback that logs each stage's count and rate at most every 20 s."""
    last: dict[str, float] = {}
    first: dict[str, tuple[float, int]] = {}

    def cb(label: str, done: int, total: int) -> None:
        now = time.time()
        t0, d0 = first.setdefault(label, (now, done))  # the rate counts from the first report
        if done >= total or now - last.get(label, 0) > 20:
            last[label] = now
            rate = f"{(done - d0) / (now - t0):.2f}/s" if now > t0 and done > d0 else "…"
            log(f"  {label}: {done}/{total} ({rate})")

    return cb


class Results:
    """results.json, rewritten after every stage so a partial run still leaves its data."""

    def __init__(self, path: Path, settings: dict, started: str) -> None:
        self.path = path
        self.data: dict[str, Any] = {"settings": settings, "started": started,
                                     "machine": machine(), "command": " ".join(sys.argv),
                                     "pools": {}, "runs": [], "comparisons": [], "timing": {},
                                     "finished": None}

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        tmp.replace(self.path)


def _label(stage: str, method: str, kernel: str, diagonal: str | None, direction: str | None
           ) -> str:
    if method in HEURISTIC_LABELS:
        return HEURISTIC_LABELS[method]
    name = f"{method.upper()} " + {"utility": "DELIFT", "learned": "DELIFT-LEARNED"}.get(
        kernel, "DELIFT-SE")
    if diagonal and kernel in ("utility", "learned") and method != "flqmi":
        name += f" [{diagonal}]"
    if direction and kernel == "utility":
        name += f" <{direction}>"
    return name


def stage_methods(stage: str, s: dict) -> list[tuple[str, str, str | None, str | None]]:
    """(objective, kernel, diagonal, target direction) of every selection method of a stage;
    FLQMI reads only the target kernel (no self pairs here), so it has no diagonal variants."""
    obj = {"stage1": "fl", "stage2": None, "stage3": "flcg"}[stage]
    out = []
    if obj:
        out += [(obj, "utility", d, None) for d in s["diagonals"]] + [(obj, "embedding", None,
                                                                       None)]
    # what practitioners pick instead (target-blind; ifd-fl runs FL on DELIFT-SE's kernel)
    if stage != "stage3":
        out += [(h, "embedding" if h == "ifd-fl" else None, None, None)
                for h in s.get("heuristics", [])]
    if stage == "stage1":
        if s.get("learned"):  # DELIFT on the learned kernel (a wider K from a tenth of the passes)
            out.append((obj, "learned", s["learned"]["diagonal"], None))
    else:
        for direction in s["target_directions"]:
            out += [("flmi", "utility", d, direction) for d in s["diagonals"]]
            out.append(("flqmi", "utility", None, direction))
        out += [("flmi", "embedding", None, None), ("flqmi", "embedding", None, None)]
    return out


def make_subsets(stage: str, pool: Dataset, kernels: dict, s: dict,
                 rows_by_id: dict[str, dict], scores: dict | None = None
                 ) -> tuple[list[Subset], dict]:
    """Every method's subset at every budget, the random seeds, the full pool and none
    (``scores``: the per-row scores of the pool by kind, for the heuristics)."""
    from delift_core.selection.objectives import get as objective_spec

    subsets, comp = [], {}
    for budget in s["budgets"]:
        size = max(1, round(budget * len(pool)))
        for objective, kind, diag, direction in stage_methods(stage, s):
            k = kernels[(kind, (direction or "helps-target") if kind == "utility" else None)] \
                if kind else None
            kind_of_scores = objective_spec(objective).scores
            sel = select(pool, objective, k, size, seed=s["selection_seed"],
                         diagonal=diag if kind in ("utility", "learned") else None,
                         scores=(scores or {}).get(kind_of_scores) if kind_of_scores else None)
            chosen = pool.subset(sel.selected_indices)
            label = _label(stage, objective, kind, diag, direction)
            name = f"{label} @{budget:g}"
            comp[name] = composition([rows_by_id[i] for i in chosen.ids])
            subsets.append(Subset(name, chosen, "subset", None,
                                  {"objective": objective, "kernel": kind, "diagonal": diag,
                                   "target_direction": direction, "budget": budget,
                                   "method": label}))
        for seed in s["random_seeds"]:
            idx = np.sort(np.random.default_rng(seed).choice(len(pool), size, replace=False))
            sub = pool.subset(idx)
            subsets.append(Subset(f"random @{budget:g}", sub, "random", int(seed),
                                  {"budget": budget, "method": "random"}))
            comp[f"random @{budget:g} seed {seed}"] = composition([rows_by_id[i] for i in sub.ids])
    subsets.append(Subset("full", pool, "full", None, {"budget": 1.0, "method": "full"}))
    subsets.append(Subset("none", None, "none", None, {"budget": 0.0, "method": "none"}))
    return subsets, comp


def saturation(subsets: list[Subset], test_rows: list[dict], rows_by_id: dict[str, dict],
               emb: Any) -> dict[str, dict]:
    """Per subset (and random seed): how many of the test set's families it holds, and the share
    of test items whose nearest example (the 1-shot ICL shot, same embedding and rule as the
    evaluation) is of the item's own family: once random reaches every family, the k-NN shots
    may leave a selection nothing to add."""
    from delift_core.evaluation.icl import nearest_examples
    from delift_core.kernels.embedding import embed_texts

    test_emb = embed_texts(emb, [r["prompt"] for r in test_rows])
    fams = [r["group"] for r in test_rows]
    out = {}
    for sub in subsets:
        if sub.kind not in ("subset", "random"):
            continue
        groups = [rows_by_id[i]["group"] for i in sub.data.ids]
        near = nearest_examples(test_emb, embed_texts(emb, sub.data.prompts), 1)[:, 0]
        out[sub.name + ("" if sub.seed is None else f" seed {sub.seed}")] = {
            "families_covered": len(set(fams) & set(groups)), "test_families": len(set(fams)),
            "same_family_nearest": float(np.mean([groups[j] == f for j, f in zip(near, fams)]))}
    return out


def with_context(subsets: list[Subset], context: list[dict], stage: str) -> list[Subset]:
    """Stage 3: the existing set is always in the ICL context (the model knows it)."""
    out = []
    for sub in subsets:
        rows = [dict(r) for r in context] + ([{"id": i, "prompt": p, "response": r}
                                              for i, p, r in zip(sub.data.ids, sub.data.prompts,
                                                                 sub.data.responses)]
                                             if sub.data is not None else [])
        out.append(Subset(sub.name, _ds([{k: r[k] for k in ("id", "prompt", "response")}
                                         for r in rows], f"{stage}-{sub.name}-{sub.seed}"),
                          sub.kind, sub.seed, dict(sub.info, subset_size=sub.size,
                                                   context="existing + subset")))
    return out


def item_matrix(items: list[dict], subset: str, seed: Any, metric: str,
                test_ids: list[str]) -> np.ndarray:
    """One subset's per-item scores in test order."""
    got = {it["test_id"]: it[metric] for it in items if it["subset"] == subset
           and it["seed"] == seed}
    return np.array([got[t] for t in test_ids], dtype=np.float64)


def comparisons(report: Any, test_ids: list[str], s: dict, where: dict) -> list[dict]:
    """Each method vs the random seeds of its budget, and DELIFT vs DELIFT-SE, per metric."""
    out = []
    bs = s["bootstrap"]
    subsets = {(r["subset"], r["seed"]): r for r in report.rows}
    for metric in ("nll", "distance"):
        for (name, seed), row in subsets.items():
            if row["kind"] != "subset":
                continue
            info = row["subset_info"]
            budget = info["budget"]
            x = item_matrix(report.items, name, seed, metric, test_ids)
            rnd = np.stack([item_matrix(report.items, f"random @{budget:g}", rs, metric, test_ids)
                            for rs in s["random_seeds"]])
            c = compare_paired(x, rnd, n_boot=bs["n_boot"], level=bs["level"], seed=bs["seed"])
            out.append({**where, "metric": metric, "budget": budget, "method": info["method"],
                        "versus": "random", **c.as_dict(), "mean": float(x.mean()),
                        "versus_mean": float(rnd.mean())})
            for versus, other in versus_subsets(info, s):
                if (other, None) not in subsets:
                    continue
                y = item_matrix(report.items, other, None, metric, test_ids)
                c = compare_paired(x, y, n_boot=bs["n_boot"], level=bs["level"], seed=bs["seed"])
                out.append({**where, "metric": metric, "budget": budget,
                            "method": info["method"], "versus": versus, **c.as_dict(),
                            "mean": float(x.mean()), "versus_mean": float(y.mean())})
        full, none = subsets.get(("full", None)), subsets.get(("none", None))
        if full and none:  # does the measure measure anything: the whole pool against nothing
            x = item_matrix(report.items, "full", None, metric, test_ids)
            y = item_matrix(report.items, "none", None, metric, test_ids)
            c = compare_paired(x, y, n_boot=bs["n_boot"], level=bs["level"], seed=bs["seed"])
            out.append({**where, "metric": metric, "budget": 1.0, "method": "full pool",
                        "versus": "none", **c.as_dict(), "mean": float(x.mean()),
                        "versus_mean": float(y.mean())})
    return out


def versus_subsets(info: dict, s: dict) -> list[tuple[str, str]]:
    """(versus, subset name) a DELIFT subset is compared with besides random: the exact kernel's
    with DELIFT-SE and (as it ships) with the heuristics; the learned kernel's with the exact."""
    budget, obj = info["budget"], info["objective"].upper()
    if info.get("kernel") == "learned":
        return [(LEARNED_VERSUS, f"{obj} DELIFT [{info['diagonal']}] @{budget:g}")]
    if info.get("kernel") != "utility":
        return []
    others = [("DELIFT-SE", f"{obj} DELIFT-SE @{budget:g}")]
    if info.get("diagonal") == choices_default_diagonal():  # DELIFT as it ships
        others += [(HEURISTIC_LABELS[h], f"{HEURISTIC_LABELS[h]} @{budget:g}")
                   for h in s.get("heuristics", [])]
    return others


def choices_default_diagonal() -> str:
    """The diagonal policy DELIFT ships with (the one compared with the heuristics)."""
    from delift_core.settings import default

    return default("diagonal")


def run_eval(res: Results, where: dict, subsets: list[Subset], test: Dataset, lm: Any, emb: Any,
             esettings: EvalSettings, modes: tuple[str, ...]) -> None:
    """Evaluate, keep the per-run rows and per-item scores, add the paired comparisons, save."""
    t = time.time()
    report = evaluate(subsets, test, lm=lm, embedder=emb, settings=esettings, modes=modes,
                      progress=progress_log())
    secs = round(time.time() - t, 1)
    for r in report.rows:
        res.data["runs"].append({**where, **{k: r[k] for k in (
            "subset", "kind", "mode", "size", "seed", "n_test", "nll", "distance")},
            "info": r.get("subset_info"), "train_loss_first": r.get("train_loss_first"),
            "train_loss_last": r.get("train_loss_last")})
    res.data.setdefault("items", []).extend(
        {**where, **{k: it[k] for k in ("subset", "seed", "test_id", "nll", "distance")}}
        for it in report.items)
    res.data["comparisons"] += comparisons(report, test.ids, res.data["settings"], where)
    key = "/".join(str(v) for v in where.values())
    res.data["timing"][key] = secs
    res.save()
    log(f"{key}: {len(report.rows)} runs evaluated in {secs:.0f} s")


def lora_settings(s: dict, size: int) -> EvalSettings:
    """LoRA with the same epochs for every subset (so the same steps within a budget)."""
    steps = max(1, math.ceil(s["lora_epochs"] * size / s["lora_batch_size"]))
    return EvalSettings(shots=0, max_field_tokens=s["eval_field_tokens"],
                        max_reference_tokens=s["eval_reference_tokens"], generate=False,
                        batch_size=s["eval_batch_size"], lora_steps=steps,
                        lora_batch_size=s["lora_batch_size"], lora_lr=s["lora_lr"],
                        lora_r=s["lora_r"], lora_alpha=s["lora_alpha"],
                        lora_max_tokens=s["lora_max_tokens"], lora_seed=0)


def run(args: argparse.Namespace) -> int:
    """Build pools, compute kernels, select, evaluate, compare; write docs/quality/."""
    # a dry run: the chosen profile's methods at tiny sizes (the profile's name stays "dry")
    s = {**SETTINGS, **PROFILES[args.profile], **(DRY if args.dry_run else {})}
    s["profile"] = "dry" if args.dry_run else args.profile
    out = Path(args.out)
    res = Results(out / "results.json", s, time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    if args.resume:  # a later part of the same run: the same fixed settings, results appended
        old = json.loads(res.path.read_text())
        if old["settings"].get("profile") != s["profile"]:
            raise SystemExit(f"--resume: {res.path} holds profile {old['settings'].get('profile')}")
        res.data = old
        res.data.setdefault("parts", []).append({"command": " ".join(sys.argv),
                                                 "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        s = dict(old["settings"])
    res.data["dry_run"] = bool(args.dry_run)
    res.save()
    lm = load_causal_lm(dtype=s["dtype"])
    emb = load_embedder()
    usettings = UtilitySettings(max_field_tokens=s["kernel_field_tokens"],
                                max_response_tokens=s["kernel_response_tokens"],
                                batch_size=s["kernel_batch_size"])
    res.data["utility_settings"] = usettings.value_key()
    for pseed in args.pool_seeds or s["pool_seeds"]:
        data = build_pool(pseed, s)
        rows_by_id = {r["id"]: r for r in data["pool"]}
        pool, target, existing = (_ds(data[k], f"pool{pseed}-{k}") if data[k] else None
                                  for k in ("pool", "target", "existing"))  # large: no existing
        test1, test2 = _ds(data["test1"], f"pool{pseed}-test1"), _ds(data["test2"],
                                                                     f"pool{pseed}-test2")
        res.data["pools"][str(pseed)] = res.data["pools"].get(str(pseed)) or {
            "rows": len(pool), "composition": composition(data["pool"]),
            "templates": data["templates"], "near_duplicates": data["near_duplicates"],
            "test1": composition(data["test1"]), "test2": len(test2), "target": len(target),
            "existing": composition(data["existing"]), "pool_ids": pool.ids,
            "test1_ids": test1.ids, "test2_ids": test2.ids, "target_ids": target.ids,
            "existing_ids": existing.ids if existing else []}
        res.save()
        common = dict(lm=lm, embedder=emb, settings=usettings, neighbours=s["neighbours"],
                      neighbour_random=s["neighbour_random"], progress=progress_log())
        lset = s.get("learned") or {}
        learned_kw = dict(common, learned=True, neighbours=lset.get("neighbours"),
                          neighbour_random=lset.get("neighbour_random", 0),
                          exact_passes=lset.get("exact_passes"))
        pmeta = res.data["pools"][str(pseed)]
        kernel_cache: dict = {}
        row_scores: dict = {}
        from delift_core.selection.objectives import get as objective_spec

        for kind in sorted({objective_spec(h).scores for h in s.get("heuristics", [])}):
            from delift_core.kernels.scores import compute_row_scores

            t = time.time()
            row_scores[kind] = compute_row_scores(pool, kind, lm=lm, settings=usettings)
            sc = row_scores[kind].meta
            res.data["timing"][f"pool{pseed}/scores_{kind}_s"] = round(time.time() - t, 1)
            pmeta.setdefault("row_scores", {})[kind] = {
                "passes_computed": sc["passes_computed"], "passes_reused": sc["passes_reused"],
                "seconds": sc["seconds"], "values": [None if not np.isfinite(v) else float(v)
                                                     for v in row_scores[kind].values]}
            log(f"pool {pseed}: {kind} scores in {time.time() - t:.0f} s")

        def stage_kernels(stage: str) -> dict:
            """The kernels a stage needs, computed when first needed (the pool kernel once,
            then from the pair store), so stage 1 results come before stage 2/3 kernels."""
            extra = {"stage1": {}, "stage2": {"target": target},
                     "stage3": {"existing": existing}}[stage]
            out = {}
            for kind, direction in (("utility", "helps-target"), ("utility", "reference"),
                                    ("embedding", None), ("learned", None)):
                if (direction == "reference" and stage != "stage2") or (
                        kind == "learned" and (extra or not s.get("learned"))):
                    continue
                key = (stage if extra else "pool", kind, direction)
                if key not in kernel_cache:
                    t = time.time()
                    kw = {"utility": common, "embedding": {"embedder": emb},
                          "learned": learned_kw}[kind]
                    kernel_cache[key] = compute_kernels(
                        pool, kind="embedding" if kind == "embedding" else "utility", **extra,
                        **kw,
                        **({"target_direction": direction} if stage == "stage2" and direction
                           else {}))
                    res.data["timing"][f"pool{pseed}/{'/'.join(map(str, key))}_kernel_s"] = \
                        round(time.time() - t, 1)
                    kern = kernel_cache[key]
                    pmeta.setdefault("kernel_meta", {})["/".join(map(str, key))] = {
                        m: v for m, v in kern.meta.items()
                        if not m.endswith("_ids") and not m.endswith("_hashes")}
                    if kind == "utility" and not extra:
                        pmeta["diagonal_stats"] = diagonal_stats(kern.pool)
                    res.save()
                    log(f"pool {pseed} {key}: kernels in {time.time() - t:.0f} s")
                out[(kind, direction)] = kernel_cache[key]
            return out

        stages = {"stage1": (test1, None), "stage2": (test2, None), "stage3": (test1, "existing")}
        stages_run = args.stages or s.get("stages") or ["stage1", "stage2", "stage3"]
        for stage in stages_run:
            test, ctx = stages[stage]
            subsets, comp = make_subsets(stage, pool, stage_kernels(stage), s, rows_by_id,
                                         row_scores)
            res.data["pools"][str(pseed)].setdefault("composition_by_subset", {})[stage] = comp
            res.data["pools"][str(pseed)].setdefault("saturation", {})[stage] = saturation(
                subsets, data["test1"] if stage != "stage2" else data["test2"], rows_by_id, emb)
            if ctx:
                subsets = with_context(subsets, data["existing"], stage)
            for shots in [k for k in s["shots"] if "icl" in args.measures
                          and (not args.shots or k in args.shots)]:
                es = EvalSettings(shots=shots, max_field_tokens=s["eval_field_tokens"],
                                  max_reference_tokens=s["eval_reference_tokens"], generate=False,
                                  batch_size=s["eval_batch_size"])
                run_eval(res, {"pool_seed": pseed, "stage": stage, "measure": f"icl-{shots}shot"},
                         subsets, test, lm, emb, es, ("icl",))
        if "lora" in args.measures and s["lora_stage"] in stages_run:
            stage = s["lora_stage"]
            subsets, _ = make_subsets(stage, pool, stage_kernels(stage), s, rows_by_id,
                                      row_scores)
            for budget in s["lora_budgets"]:
                pick = [x for x in subsets if x.info.get("budget") == budget and (
                    x.kind == "subset" or x.seed in s["lora_random_seeds"])]
                ls = lora_settings(s, pick[0].size)
                rs = dict(s, random_seeds=s["lora_random_seeds"])
                res.data["settings"].setdefault("lora_steps", {})[f"{budget:g}"] = ls.lora_steps
                where = {"pool_seed": pseed, "stage": stage, "measure": f"lora@{budget:g}"}
                t = time.time()
                # one subset at a time, a random seed first, so a stopped run keeps what ran
                rnd = [x for x in pick if x.kind == "random"]
                order = rnd[:1] + [x for x in pick if x.kind != "random"] + rnd[1:]
                rows_done: list[dict] = []
                items_done: list[dict] = []
                for sub in order:
                    report = evaluate([sub], test1, lm=lm, embedder=emb, settings=ls,
                                      modes=("lora",), progress=progress_log())
                    rows_done += report.rows
                    items_done += report.items
                    for r in report.rows:
                        res.data["runs"].append({**where, **{k: r[k] for k in (
                            "subset", "kind", "mode", "size", "seed", "n_test", "nll",
                            "distance")}, "info": r.get("subset_info"),
                            "train_loss_first": r.get("train_loss_first"),
                            "train_loss_last": r.get("train_loss_last")})
                    res.data.setdefault("items", []).extend(
                        {**where, **{k: it[k] for k in ("subset", "seed", "test_id", "nll",
                                                        "distance")}} for it in report.items)
                    seeds_done = [r["seed"] for r in rows_done if r["kind"] == "random"]
                    merged = type(report)(rows=rows_done, items=items_done, settings={},
                                          meta={})
                    res.data["comparisons"] = [c for c in res.data["comparisons"]
                                               if any(c.get(k) != v for k, v in where.items())]
                    res.data["comparisons"] += comparisons(
                        merged, test1.ids, dict(rs, random_seeds=seeds_done), where)
                    res.data["timing"]["/".join(map(str, where.values()))] = round(
                        time.time() - t, 1)
                    res.save()
                    log(f"LoRA {where} {sub.name} seed {sub.seed}: NLL "
                        f"{report.rows[0]['nll']:.4f} ({time.time() - t:.0f} s so far)")
            if s.get("lora_full_pool"):  # does LoRA measure anything: the whole pool vs none
                pick = [x for x in subsets if x.kind in ("full", "none")]
                ls = lora_settings(s, len(pool))
                res.data["settings"].setdefault("lora_steps", {})["full"] = ls.lora_steps
                run_eval(res, {"pool_seed": pseed, "stage": stage, "measure": "lora-full"},
                         pick, test1, lm, emb, ls, ("lora",))
    res.data["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    res.save()
    write_report(out)
    return 0


def diagonal_stats(raw: Any) -> dict:
    """Self-utility vs the other stored utilities of the pool kernel."""
    import scipy.sparse as sp

    coo = raw.tocoo() if sp.issparse(raw) else sp.coo_matrix(np.asarray(raw))
    d = coo.row == coo.col
    return {"diag_mean": float(coo.data[d].mean()) if d.any() else None,
            "offdiag_mean": float(coo.data[~d].mean()), "offdiag_max": float(coo.data[~d].max()),
            "stored": int(coo.nnz)}


# ---------------------------------------------------------------------------------------------
# tables and chart


def _fmt(c: dict) -> str:
    return (f"{c['mean_diff']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}]"
            + (f" {c['seeds_beaten']}/{c['n_seeds']}" if c["n_seeds"] > 1 else "")
            + f" **{c['verdict']}**")


def write_report(out: Path = OUT) -> None:
    """results.md (every comparison, by stage and measure) and chart.{html,png}."""
    data = json.loads((out / "results.json").read_text())
    comps = data["comparisons"]
    lines = ["# Quality benchmark results", "",
             f"Started {data['started']}, finished {data.get('finished') or 'NOT FINISHED'}; "
             f"machine: {data['machine']}.", "",
             "Cells: mean paired difference (method − baseline, NLL/token or DELIFT distance; "
             "negative = method better) [95 % bootstrap interval over test items and random "
             "seeds] k/N random seeds beaten on the mean, verdict (wins/loses only when the "
             "interval excludes zero).", ""]
    keys = sorted({(c["stage"], c["measure"], c["pool_seed"]) for c in comps})
    for stage, measure, pseed in keys:
        rows = [c for c in comps if (c["stage"], c["measure"], c["pool_seed"]) == (stage, measure,
                                                                                  pseed)]
        budgets = sorted({c["budget"] for c in rows})
        lines += [f"## {stage}, {measure}, pool seed {pseed}", ""]
        for metric in ("nll", "distance"):
            for versus in versus_names(data):
                sel = [c for c in rows if c["metric"] == metric and c["versus"] == versus]
                if not sel:
                    continue
                lines += [f"{metric} vs {versus}:", "",
                          "| method | " + " | ".join(f"{b:g}" for b in budgets) + " |",
                          "|---|" + "---|" * len(budgets)]
                for m in sorted({c["method"] for c in sel}):
                    cells = []
                    for b in budgets:
                        got = [c for c in sel if c["method"] == m and c["budget"] == b]
                        cells.append(_fmt(got[0]) if got else "–")
                    lines.append(f"| {m} | " + " | ".join(cells) + " |")
                lines.append("")
        means = [r for r in data["runs"] if (r["stage"], r["measure"], r["pool_seed"]) == (
            stage, measure, pseed)]
        agg: dict = {}
        for r in means:
            agg.setdefault((r["subset"], r["kind"]), []).append(r["nll"])
        lines += ["Mean NLL/token per subset (random: mean ± sd over seeds):", "",
                  "| subset | NLL/token |", "|---|---|"]
        for (name, kind), v in agg.items():
            lines.append(f"| {name} | {np.mean(v):.4f}" + (f" ± {np.std(v, ddof=1):.4f}"
                                                          if len(v) > 1 else "") + " |")
        lines.append("")
    diag = diagonal_comparisons(data)
    data["diagonal_comparisons"] = diag
    if diag:
        lines += ["## Diagonal policy vs reference (same objective, kernel and direction; "
                  "NLL/token, paired per test item)", "",
                  "| pool seed | stage | measure | subset | policy − reference [95 %] "
                  "| verdict |",
                  "|---|---|---|---|---|---|"]
        for c in diag:
            lines.append(f"| {c['pool_seed']} | {c['stage']} | {c['measure']} | {c['subset']} | "
                         f"{c['mean_diff']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}] | "
                         f"{c['verdict']} |")
        lines.append("")
    pooled = pooled_comparisons(data)
    data["pooled_comparisons"] = pooled
    if pooled:
        lines += ["## All pool seeds together (NLL/token)", "",
                  "The items of every pool seed in one paired comparison: the method's subset "
                  "of each pool against random seed k of the same pool, seed k of every pool "
                  "resampled together (so N is the number of random seeds), and the test "
                  "items of all pools resampled as one set.", ""]
        for stage, measure in sorted({(c["stage"], c["measure"]) for c in pooled}):
            rows = [c for c in pooled if (c["stage"], c["measure"]) == (stage, measure)]
            budgets = sorted({c["budget"] for c in rows})
            for versus in versus_names(data):
                sel = [c for c in rows if c["versus"] == versus]
                if not sel:
                    continue
                lines += [f"{stage}, {measure}, vs {versus} (pools "
                          f"{', '.join(map(str, sel[0]['pool_seeds']))}, "
                          f"{sel[0]['n_items']} items):", "",
                          "| method | " + " | ".join(f"{b:g}" for b in budgets) + " |",
                          "|---|" + "---|" * len(budgets)]
                for m in sorted({c["method"] for c in sel}):
                    got = {c["budget"]: c for c in sel if c["method"] == m}
                    lines.append(f"| {m} | " + " | ".join(_fmt(got[b]) if b in got else "–"
                                                          for b in budgets) + " |")
                lines.append("")
        ptally = Counter((c["versus"], c["verdict"]) for c in pooled)
        lines += ["Tally, all pool seeds together:", "",
                  "| versus | wins | ties | loses |", "|---|---|---|---|"]
        for versus in versus_names(data):
            lines.append(f"| {versus} | {ptally[(versus, 'wins')]} | "
                         f"{ptally[(versus, 'ties')]} | {ptally[(versus, 'loses')]} |")
        lines.append("")
    lines += saturation_lines(data)
    tally = Counter((c["versus"], c["verdict"]) for c in comps if c["metric"] == "nll")
    lines += ["## Tally (NLL/token, every configuration)", "",
              "| versus | wins | ties | loses |", "|---|---|---|---|"]
    for versus in versus_names(data):
        lines.append(f"| {versus} | {tally[(versus, 'wins')]} | {tally[(versus, 'ties')]} | "
                     f"{tally[(versus, 'loses')]} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    write_chart(out, data)


def saturation_lines(data: dict) -> list[str]:
    """results.md's saturation section: per budget, the test families each subset holds and the
    share of test items whose nearest shot is of their own family (random: the mean over seeds),
    and how closely a subset's ICL NLL follows that share (Pearson r over every subset and
    random seed of the budget)."""
    lines: list[str] = []
    for pseed, pool in sorted(data["pools"].items()):
        sat = (pool.get("saturation") or {}).get("stage1")
        if not sat:
            continue
        n_fam = next(iter(sat.values()))["test_families"]
        lines += [f"## Saturation, stage 1, pool seed {pseed}", "",
                  f"Families: of the test set's {n_fam}, how many the subset holds. Same-family "
                  "shot: the share of test items whose nearest subset row (the 1-shot example, "
                  "the evaluation's own rule) is of the item's family. r: Pearson correlation of "
                  "a subset's mean NLL/token with its same-family share, over every method and "
                  "random seed of the budget (negative: more own-family shots, lower NLL).", "",
                  "| subset | families | same-family shot |", "|---|---|---|"]
        groups: dict[str, list[dict]] = {}
        for key, v in sat.items():
            groups.setdefault(key.split(" seed ")[0], []).append(v)
        for name, vs in groups.items():
            fam = np.mean([v["families_covered"] for v in vs])
            same = np.mean([v["same_family_nearest"] for v in vs])
            lines.append(f"| {name}{' (mean of ' + str(len(vs)) + ' seeds)' if len(vs) > 1 else ''}"
                         f" | {fam:.1f} | {same:.2f} |")
        lines += ["", "| measure | budget | r (all subsets) | r (random seeds only) |",
                  "|---|---|---|---|"]
        for measure in sorted({r["measure"] for r in data["runs"]
                               if r["measure"].startswith("icl") and
                               str(r["pool_seed"]) == str(pseed)}):
            for budget in data["settings"]["budgets"]:
                pts = [(sat[k]["same_family_nearest"], r["nll"], r["kind"]) for r in data["runs"]
                       if r["measure"] == measure and str(r["pool_seed"]) == str(pseed)
                       and (r.get("info") or {}).get("budget") == budget
                       and (k := r["subset"] + ("" if r["seed"] is None
                                                else f" seed {r['seed']}")) in sat]
                if len(pts) < 3:
                    continue
                x, y = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
                rnd = np.array([p[2] == "random" for p in pts])
                lines.append(f"| {measure} | {budget:g} | {np.corrcoef(x, y)[0, 1]:+.2f} | "
                             f"{np.corrcoef(x[rnd], y[rnd])[0, 1]:+.2f} |")
        lines.append("")
    return lines


def pooled_comparisons(data: dict, metric: str = "nll") -> list[dict]:
    """Every method against random (and DELIFT against DELIFT-SE) with the test items of all pool
    seeds that ran it in one paired comparison; only where two or more pool seeds ran it."""
    bs = data["settings"]["bootstrap"]
    scores: dict[tuple, dict[str, float]] = {}
    for it in data.get("items", []):
        key = (it["stage"], it["measure"], it["pool_seed"], it["subset"], it["seed"])
        scores.setdefault(key, {})[it["test_id"]] = it[metric]
    pseeds = sorted({k[2] for k in scores})
    info = {(r["stage"], r["measure"], r["subset"]): r["info"] for r in data["runs"]
            if r["kind"] == "subset"}
    out = []
    for (stage, measure, name), inf in sorted(info.items()):
        pools = [p for p in pseeds if (stage, measure, p, name, None) in scores]
        if len(pools) < 2:
            continue
        budget = inf["budget"]
        rnd_name = f"random @{budget:g}"
        seeds = sorted({k[4] for k in scores if k[:4] == (stage, measure, pools[0], rnd_name)})
        seeds = [s for s in seeds if all((stage, measure, p, rnd_name, s) in scores
                                         for p in pools)]

        def vec(pool: Any, subset: str, seed: Any) -> np.ndarray:
            got = scores[(stage, measure, pool, subset, seed)]
            ref = scores[(stage, measure, pool, name, None)]
            return np.array([got[t] for t in sorted(ref)], dtype=np.float64)

        x = np.concatenate([vec(p, name, None) for p in pools])
        where = {"stage": stage, "measure": measure, "pool_seeds": pools, "metric": metric,
                 "budget": budget, "method": inf["method"]}
        if seeds:
            rnd = np.stack([np.concatenate([vec(p, rnd_name, s) for p in pools]) for s in seeds])
            c = compare_paired(x, rnd, n_boot=bs["n_boot"], level=bs["level"], seed=bs["seed"])
            out.append({**where, "versus": "random", **c.as_dict()})
        for versus, other in versus_subsets(inf, data["settings"]):
            if all((stage, measure, p, other, None) in scores for p in pools):
                y = np.concatenate([vec(p, other, None) for p in pools])
                c = compare_paired(x, y, n_boot=bs["n_boot"], level=bs["level"],
                                   seed=bs["seed"])
                out.append({**where, "versus": versus, **c.as_dict()})
    return out


def diagonal_comparisons(data: dict) -> list[dict]:
    """Each [max] / [rowmax] subset against the [reference] subset of the same objective, kernel,
    direction and budget, paired on the test items (NLL/token)."""
    bs = data["settings"]["bootstrap"]
    runs: dict[tuple, dict[str, float]] = {}
    for it in data.get("items", []):
        if it["seed"] is None:
            key = (it["pool_seed"], it["stage"], it["measure"], it["subset"])
            runs.setdefault(key, {})[it["test_id"]] = it["nll"]
    out = []
    for (pseed, stage, measure, name), x in sorted(runs.items()):
        for policy in ("max", "rowmax"):
            if f"[{policy}]" not in name:
                continue
            ref = runs.get((pseed, stage, measure, name.replace(f"[{policy}]", "[reference]")))
            if not ref:
                continue
            ids = sorted(ref)
            c = compare_paired([x[t] for t in ids], [ref[t] for t in ids], n_boot=bs["n_boot"],
                               level=bs["level"], seed=bs["seed"])
            out.append({"pool_seed": pseed, "stage": stage, "measure": measure, "subset": name,
                        "policy": policy, **c.as_dict()})
    return out


def write_chart(out: Path, data: dict) -> Path | None:
    """One chart: per stage and measure (pool seed 0 if present), the NLL difference vs random
    of each method at each budget with its 95 % interval; zero = random."""
    import plotly.graph_objects as go

    comps = [c for c in data["comparisons"] if c["metric"] == "nll" and c["versus"] == "random"]
    if not comps:
        return None
    panels = sorted({(c["stage"], c["measure"]) for c in comps})
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=len(panels), cols=1, shared_xaxes=False, vertical_spacing=0.09,
                        subplot_titles=[f"{s}, {m}" for s, m in panels])
    colours = {0.05: "#E45756", 0.1: "#4C78A8", 0.3: "#54A24B"}
    shown = set()
    for k, (stage, measure) in enumerate(panels, start=1):
        for b in sorted({c["budget"] for c in comps}):
            sel = [c for c in comps if (c["stage"], c["measure"], c["budget"]) == (stage, measure,
                                                                                  b)]
            if not sel:
                continue
            sel.sort(key=lambda c: (c["method"], c["pool_seed"]))
            fig.add_trace(go.Scatter(
                x=[f"{c['method']} (pool {c['pool_seed']})" for c in sel],
                y=[c["mean_diff"] for c in sel], mode="markers",
                marker={"color": colours.get(b, "#888"), "size": 7},
                error_y={"type": "data", "symmetric": False,
                         "array": [c["high"] - c["mean_diff"] for c in sel],
                         "arrayminus": [c["mean_diff"] - c["low"] for c in sel]},
                name=f"budget {b:g}", legendgroup=str(b), showlegend=b not in shown),
                row=k, col=1)
            shown.add(b)
        fig.add_hline(y=0, line_color="#999", row=k, col=1)
        fig.update_yaxes(title_text="Δ NLL vs random", row=k, col=1)
    fig.update_layout(title="DELIFT vs random (10 seeds): mean paired Δ NLL/token with 95 % "
                            "bootstrap interval; below 0 = better than random",
                      height=340 * len(panels) + 120, width=1400, template="plotly_white",
                      margin={"b": 60})
    html = out / "chart.html"
    fig.write_html(html, include_plotlyjs="cdn")
    png = out / "chart.png"
    try:
        fig.write_image(png)
        return png
    except Exception as e:  # kaleido missing or unable: a Chromium screenshot of the HTML
        log(f"kaleido: {e}; trying Chromium")
    import tempfile

    tmp = Path(tempfile.mkdtemp()) / "chart.html"
    fig.write_html(tmp, include_plotlyjs=True)
    try:
        from playwright.sync_api import sync_playwright

        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium",
                                         args=["--headless", "--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1420,
                                              "height": 340 * len(panels) + 140})
            page.goto(tmp.resolve().as_uri())
            page.wait_for_selector(".main-svg")
            page.wait_for_timeout(500)
            page.locator(".plotly-graph-div").screenshot(path=str(png))
            browser.close()
    except Exception as e:
        log(f"chart.png not written ({e})")
        return html
    return png


def main() -> int:
    """Command line."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes, to time the run")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--profile", choices=sorted(PROFILES), default="small",
                    help="planned: the sizes designed for a quiet machine; small and medium: "
                         "what ran (docs/quality/ and docs/quality/medium/)")
    ap.add_argument("--stages", nargs="+", help="only these stages (default: the profile's, "
                                                  "else all three)")
    ap.add_argument("--measures", nargs="+", default=["icl", "lora"])
    ap.add_argument("--shots", type=int, nargs="+", help="only these of the fixed ICL shots")
    ap.add_argument("--pool-seeds", type=int, nargs="+", help="only these of the pool seeds")
    ap.add_argument("--resume", action="store_true",
                    help="append to the results.json of the same profile (a later part)")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    if args.report_only:
        write_report(Path(args.out))
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
