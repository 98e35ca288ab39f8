"""A CPU-scale study of the three DELIFT stages on real data (../shared/data), with ICL evaluation.

    python benchmarks/study.py --stages 1 2 3            # writes docs/study/stage*/ and summary
    python benchmarks/study.py --stages 1 --lora         # also LoRA-tune on stage 1 (slow)

Stage 1, instruction tuning: a pool of short P3 rows from a dozen templates; FL on the utility
kernel (DELIFT) and on the embedding kernel (DELIFT-SE) vs random (several seeds) vs the full
pool vs no examples, at 30 %. Test: unseen rows of the same templates.
Stage 2, task-specific: a mixed pool (P3, GSM8K, Code Alpaca); a target set of GSM8K test
questions; FLMI and FLQMI vs the same baselines; test: other GSM8K test questions.
Stage 3, continual: an "existing" set from some P3 templates and the mixed pool; FLCG; the ICL
context is existing + selected (the model "knows" the existing set); test covers both.

The P3 ``template`` label builds the splits and measures coverage; it is never a selection input.
Nothing from ../shared/data is written into the project except ids and scores.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from delift_core import (Dataset, UtilitySettings, compute_kernels, load_causal_lm,  # noqa: E402
                         load_dataset_bytes, load_embedder, select)
from delift_core.evaluate import (EvalReport, EvalSettings, Subset, baseline_subsets,  # noqa: E402
                                  evaluate)

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


def run_stage(name: str, title: str, pool: Dataset, test: Dataset, selections: list[tuple],
              args: argparse.Namespace, lm: Any, emb: Any, group_of: dict[str, str],
              *, target: Dataset | None = None, existing: Dataset | None = None,
              context: Dataset | None = None) -> EvalReport:
    """Kernels, selections, baselines and the evaluation of one stage; writes its folder."""
    t0 = time.time()
    usettings = UtilitySettings(max_field_tokens=args.kernel_field_tokens,
                                max_response_tokens=args.kernel_response_tokens,
                                batch_size=args.batch_size)
    kernels = {}
    timing = {}
    for kind in sorted({k for _, k in selections}):
        t = time.time()
        kernels[kind] = compute_kernels(pool, target=target, existing=existing, kind=kind,
                                        lm=lm if kind == "utility" else None,
                                        embedder=emb if kind == "embedding" else None,
                                        settings=usettings if kind == "utility" else None,
                                        progress=_progress_bars())
        timing[f"kernel_{kind}_s"] = round(time.time() - t, 1)
    subsets, comp = [], {}
    for objective, kind in selections:
        sel = select(pool, objective, kernels[kind], args.budget, seed=0)
        chosen = pool.subset(sel.selected_indices)
        label = f"{objective.upper()} {'DELIFT' if kind == 'utility' else 'DELIFT-SE'}"
        comp[label] = coverage(chosen, group_of)
        subsets.append(Subset(label, chosen, "subset", 0, {"objective": objective,
                                                             "kernel": kind}))
    size = subsets[0].size
    base = baseline_subsets(pool, [size], ["random", "full", "none"], args.seeds)
    for b in base:
        if b.kind == "random":
            comp[f"random seed {b.seed}"] = coverage(b.data, group_of)
    subsets += base
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
    report.meta.update({
        "stage": name, "title": title, "pool_rows": len(pool), "test_rows": len(test),
        "target_rows": len(target) if target is not None else None,
        "existing_rows": len(existing) if existing is not None else None,
        "budget": args.budget, "selected": size, "seeds": args.seeds,
        "utility_settings": usettings.value_key(), "timing": timing,
        "composition": comp, "pool_composition": coverage(pool, group_of),
        "test_composition": coverage(test, group_of),
        "command": " ".join(sys.argv),
    })
    folder = OUT / (name + ("-lora" if args.lora_only else ""))
    report.write(folder, title=title)
    print(report.to_markdown())
    print(json.dumps(timing), file=sys.stderr)
    return report


def main() -> int:
    """Run the chosen stages and write docs/study/<stage>/ plus docs/study/summary.md."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stages", nargs="+", default=["1", "2", "3"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--budget", default="0.3")
    ap.add_argument("--templates", type=int, default=12)
    ap.add_argument("--per-template", type=int, default=2, help="stage 1 pool rows per template")
    ap.add_argument("--test-per-template", type=int, default=2)
    ap.add_argument("--mixed-per-source", type=int, default=8)
    ap.add_argument("--target-rows", type=int, default=6)
    ap.add_argument("--gsm-test-rows", type=int, default=16)
    ap.add_argument("--max-prompt-chars", type=int, default=300)
    ap.add_argument("--kernel-field-tokens", type=int, default=48)
    ap.add_argument("--kernel-response-tokens", type=int, default=24)
    ap.add_argument("--eval-field-tokens", type=int, default=96)
    ap.add_argument("--eval-reference-tokens", type=int, default=48)
    ap.add_argument("--shots", type=int, default=1)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--generate-stages", nargs="*", default=["stage1"],
                    help="stages that also generate answers (ROUGE-L, cosine, exact match)")
    ap.add_argument("--lora", action="store_true")
    ap.add_argument("--lora-stages", nargs="+", default=["stage1"])
    ap.add_argument("--lora-steps", type=int, default=8)
    ap.add_argument("--lora-only", action="store_true",
                    help="LoRA evaluation only, written to docs/study/<stage>-lora/")
    args = ap.parse_args()

    lm = load_causal_lm()
    emb = load_embedder()
    groups = p3_by_template(args)
    need = args.per_template + args.test_per_template
    reports = {}
    if "1" in args.stages:
        temps = pick_templates(groups, args.templates, need, args.seed)
        pool_rows = [r for t in temps for r in groups[t][: args.per_template]]
        test_rows = [r for t in temps for r in groups[t][args.per_template: need]]
        group_of = {r["id"]: r["group"] for r in pool_rows + test_rows}
        reports["stage1"] = run_stage(
            "stage1", "Stage 1, instruction tuning: FL on P3 (ICL)", _ds(pool_rows, "p3-pool"),
            _ds(test_rows, "p3-test"), [("fl", "utility"), ("fl", "embedding")], args, lm, emb,
            group_of)
    if "2" in args.stages or "3" in args.stages:
        # the mixed pool (shared by stages 2 and 3, so its pool kernel is computed once)
        temps1 = set(pick_templates(groups, args.templates, need, args.seed))
        per = 2  # P3 rows per mixed template in the pool; then 2 for test, 3 for existing
        mixed_t = pick_templates(groups, 4, per + 5, args.seed + 1, exclude=temps1)
        old_t = mixed_t[:2]
        p3_pool = [r for t in mixed_t for r in groups[t][:per]]
        gsm_pool = gsm8k("train", args.mixed_per_source, seed=args.seed)
        code = code_alpaca(args.mixed_per_source + 6, seed=args.seed)
        code_pool, code_test = code[: args.mixed_per_source], code[args.mixed_per_source:]
        mixed = p3_pool + gsm_pool + code_pool
        group_of = {r["id"]: r["group"] for r in mixed + code_test}
        pool = _ds(mixed, "mixed-pool")
        if "2" in args.stages:
            target_rows = gsm8k("test", args.target_rows, seed=args.seed)
            test_rows = gsm8k("test", args.gsm_test_rows, skip=args.target_rows, seed=args.seed)
            group_of.update({r["id"]: r["group"] for r in target_rows + test_rows})
            reports["stage2"] = run_stage(
                "stage2", "Stage 2, task-specific: FLMI / FLQMI towards GSM8K (ICL)", pool,
                _ds(test_rows, "gsm8k-test"),
                [("flmi", "utility"), ("flqmi", "utility"), ("flmi", "embedding"),
                 ("flqmi", "embedding")], args, lm, emb, group_of,
                target=_ds(target_rows, "gsm8k-target"))
        if "3" in args.stages:
            existing_rows = [r for t in old_t for r in groups[t][per + 2: per + 5]]
            test_rows = ([r for t in mixed_t for r in groups[t][per: per + 2]]
                         + gsm8k("test", 4, skip=args.target_rows + args.gsm_test_rows,
                                 seed=args.seed) + code_test[:4])
            group_of.update({r["id"]: r["group"] for r in existing_rows + test_rows})
            existing = _ds(existing_rows, "p3-existing")
            reports["stage3"] = run_stage(
                "stage3", "Stage 3, continual: FLCG with an existing P3 set (ICL)", pool,
                _ds(test_rows, "mixed-test"), [("flcg", "utility"), ("flcg", "embedding")],
                args, lm, emb, group_of, existing=existing, context=existing)
    lines = ["# Study results (generated by benchmarks/study.py)", ""]
    for name in sorted(p.name for p in OUT.glob("stage*") if (p / "results.md").exists()):
        if not (OUT / name / "results.json").exists():
            continue
        data = json.loads((OUT / name / "results.json").read_text())
        lines += [f"## {data['meta'].get('title', name)}", "",
                  (OUT / name / "results.md").read_text(), "",
                  f"Timing: {data['meta'].get('timing')}", "",
                  "Composition of the subsets (rows per template / source):", "", "```"]
        lines += [f"{k}: {v}" for k, v in data["meta"].get("composition", {}).items()]
        lines += ["```", ""]
    (OUT / "summary.md").write_text("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
