"""``delift evaluate``: subsets against baselines by ICL or LoRA."""

from __future__ import annotations

import argparse
import logging
import sys

from delift_core import settings as spec
from delift_core.cli.common import _Bars, _add_out_args
from delift_core.cli.options import Command, emit_summary
from delift_core.data.dataset import load_dataset
from delift_core.kernels.request import engine_values, load_models
from delift_core.outputs.outdir import check_output, output_folder

logger = logging.getLogger(__name__)


def _evaluate_arguments(p: argparse.ArgumentParser) -> None:
    """The ``evaluate`` command's arguments (see :mod:`delift_core.evaluation`)."""
    from delift_core.evaluation.settings import EvalSettings

    p.add_argument("subsets", nargs="*", metavar="SUBSET",
                   help="subset file or `delift select` output folder; NAME=PATH names it")
    p.add_argument("--test", required=True, help="held-out test set (file, hub id or demo:...)")
    p.add_argument("--pool", help="pool for the random and full baselines (default: the pool "
                                  "named in a select folder's manifest)")
    p.add_argument("--baselines", default="",
                   help="comma list of random, full, none (e.g. random,full,none)")
    p.add_argument("--seeds", default="0,1,2", help="seeds of the random baselines")
    p.add_argument("--random-size", type=int, action="append", default=[],
                   help="size of random subsets when no subset is given (repeatable)")
    p.add_argument("--mode", choices=["icl", "lora", "both"], default="icl")
    p.add_argument("--shots", type=int, default=EvalSettings.shots,
                   help="in-context examples per test item")
    p.add_argument("--test-limit", type=int, help="use only the first N test rows")
    p.add_argument("--max-new-tokens", type=int, default=EvalSettings.max_new_tokens)
    p.add_argument("--max-field-tokens", type=int, default=EvalSettings.max_field_tokens)
    p.add_argument("--max-reference-tokens", type=int, default=EvalSettings.max_reference_tokens)
    p.add_argument("--no-generate", action="store_true",
                   help="teacher-forced scores only (no ROUGE-L, cosine, exact match)")
    p.add_argument("--batch-size", type=int, default=EvalSettings.batch_size)
    for name in ("steps", "batch_size", "lr", "r", "alpha", "targets", "max_tokens", "seed"):
        default = getattr(EvalSettings, f"lora_{name}")
        p.add_argument(f"--lora-{name.replace('_', '-')}", default=default,
                       type=type(default) if not isinstance(default, str) else None)
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    _add_out_args(p)  # results.json, results.md, chart.html


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Run ``delift evaluate`` with tqdm progress bars; user errors raise :class:`DeliftError`."""
    from pathlib import Path

    from delift_core.evaluation.settings import EvalSettings, EvaluationError
    from delift_core.evaluation.subsets import Subset, baseline_subsets, load_subset, parse_int_list
    from delift_core.evaluation.run import evaluate
    from delift_core.lm.models import load_embedder

    check_output(args.out, overwrite=args.overwrite)  # a bad --out fails now, not after the work
    settings = EvalSettings(
        shots=args.shots, max_field_tokens=args.max_field_tokens,
        max_reference_tokens=args.max_reference_tokens, generate=not args.no_generate,
        max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
        lora_steps=args.lora_steps, lora_batch_size=args.lora_batch_size, lora_lr=args.lora_lr,
        lora_r=args.lora_r, lora_alpha=args.lora_alpha, lora_targets=args.lora_targets,
        lora_max_tokens=args.lora_max_tokens, lora_seed=args.lora_seed)
    settings.validate()
    baselines = [b.strip() for b in args.baselines.split(",") if b.strip()]
    seeds = parse_int_list(args.seeds, "--seeds")
    subsets: list[Subset] = []
    pool = None
    for arg in args.subsets:
        name, _, path = arg.partition("=") if "=" in arg and not Path(arg).exists() else (
            None, "", arg)
        sub, sub_pool = load_subset(path, name)
        subsets.append(sub)
        pool = pool or sub_pool
    if args.pool:
        pool = load_dataset(args.pool)
    test = load_dataset(args.test)
    if args.test_limit is not None:
        if args.test_limit < 1:
            raise EvaluationError("--test-limit must be at least 1")
        test = test.subset(range(min(args.test_limit, len(test))))
    logger.info(test.summary())
    if baselines:
        subsets += baseline_subsets(pool, [s.size for s in subsets] + list(args.random_size),
                                    baselines, seeds)
    if not subsets:
        raise EvaluationError("nothing to evaluate: give a subset or --baselines")
    modes = ("icl", "lora") if args.mode == "both" else (args.mode,)
    model = engine_values(spec.from_args(args, "model"))
    lm = load_models(model, "utility")["lm"]
    embedder = load_embedder(model["embedder"], device=model["device"])
    report = evaluate(subsets, test, lm=lm, embedder=embedder, settings=settings, modes=modes,
                      progress=_Bars(), use_cache=not args.no_cache)
    report.meta["command"] = list(sys.argv)
    with output_folder(args.out, command="evaluate", overwrite=args.overwrite) as tmp:
        paths = report.write(tmp)
    print(report.to_markdown())
    logger.info("wrote %s to %s", ", ".join(sorted(p.name for p in paths.values())), args.out)
    emit_summary(args, out=args.out,
                 files={p.name: str(Path(args.out) / p.name) for p in paths.values()},
                 subsets=len(subsets), test_rows=len(test), modes=list(modes),
                 results=report.summary())
    return 0


COMMANDS = [
    Command("evaluate", "score subsets (and baselines) by in-context learning or LoRA on a "
                        "held-out test set", _evaluate_arguments, cmd_evaluate, models=True),
]
