"""The ``delift`` command line: a thin layer over the :mod:`delift_core` API."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from .cli_options import JSON_COMMANDS, emit_summary, json_option, model_options, print_summary
from .data import ColumnMapping, Dataset, load_dataset
from .errors import DeliftError
from . import objectives
from .kernel_io import load_kernels, save_kernels
from .diagonal import DEFAULT_DIAGONAL, DIAGONAL_HELP, DIAGONAL_POLICIES
from .kernels import DEFAULT_TARGET_DIRECTION, KERNEL_KINDS, TARGET_DIRECTIONS, compute_kernels, \
    kernel_report
from .outdir import check_output, output_folder
from .selection import resolve_budget, select
from .utility import DEFAULT_EXAMPLE_TEMPLATE, DEFAULT_PLAIN_TEMPLATE, UtilitySettings

logger = logging.getLogger(__name__)


class _Bars:
    """tqdm progress bars (with ETA) keyed by the stage label the engine reports."""

    def __init__(self) -> None:
        from tqdm import tqdm

        self._tqdm = tqdm
        self.bars: dict[str, Any] = {}

    def __call__(self, label: str, done: int, total: int) -> None:
        bar = self.bars.get(label)
        if bar is None and total == 0:
            return
        if bar is None:
            bar = self.bars[label] = self._tqdm(total=total, desc=label, unit="seq",
                                                file=sys.stderr, dynamic_ncols=True)
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()


def _add_data_args(p: argparse.ArgumentParser, with_target: bool = True) -> None:
    p.add_argument("--pool", required=True,
                   help="pool file (.jsonl .json .csv .parquet), save_to_disk folder, hub id, or "
                        "demo:pool")
    if with_target:
        g = p.add_mutually_exclusive_group()
        g.add_argument("--target", help="target set for task-specific selection (flmi, flqmi)")
        g.add_argument("--existing", help="data the model was already tuned on (flcg)")
    p.add_argument("--prompt-col", action="append",
                   help="column holding the prompt (repeat to join several)")
    p.add_argument("--response-col", help="column holding the response")
    p.add_argument("--id-col", help="column holding a unique id (default: 'id' if present)")
    p.add_argument("--split", help="split of a hub or save_to_disk dataset")
    p.add_argument("--limit", type=int, help="use only the first N pool rows (reported)")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    """The utility kernel's settings (--model, --device ... come from cli_options.model_options)."""
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-field-tokens", type=int, default=256)
    p.add_argument("--max-response-tokens", type=int, default=256)
    p.add_argument("--plain-template", default=DEFAULT_PLAIN_TEMPLATE)
    p.add_argument("--example-template", default=DEFAULT_EXAMPLE_TEMPLATE)
    p.add_argument("--no-score-eos", action="store_true", help="do not score an EOS after the "
                                                               "response")
    p.add_argument("--chat-template", action="store_true",
                   help="wrap each prompt in the model's chat template (a user turn and the "
                        "assistant prompt): for chat-tuned models such as smollm2-135m-instruct")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the kernel "
                                                           "cache")
    p.add_argument("--neighbours", type=int, default=None, metavar="K",
                   help="sparse kernel: compute each row only for its K nearest columns by "
                        "sentence embedding (plus --neighbour-random random ones)")
    p.add_argument("--neighbour-random", type=int, default=4,
                   help="with --neighbours: seeded random columns added per row (default 4)")
    p.add_argument("--target-direction", choices=TARGET_DIRECTIONS, default=None,
                   help="utility target kernel: helps-target (default; UF(q | i), how much pool "
                        "item i helps target q) or reference (UF(i | q), the official DELIFT "
                        "code); embedding kernels are symmetric")
    p.add_argument("--backend", choices=["local", "ray"], default="local",
                   help="where the utility pairs the pair store lacks are computed: this process "
                        "(default) or Ray workers (pip install \"delift-studio[ray]\")")
    p.add_argument("--ray-address", default=None, metavar="auto|HOST:PORT",
                   help="with --backend ray: join a running cluster (`ray start --head`); "
                        "without it a local cluster is started")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="with --backend ray: worker actors of one thread each (default: one per "
                        "CPU of the cluster)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="delift", description="DELIFT data selection for LLM "
                                     "fine-tuning.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    noise = parser.add_mutually_exclusive_group()
    noise.add_argument("-v", "--verbose", dest="verbosity", action="store_const", const=1,
                       default=0, help="also show debug messages")
    noise.add_argument("-q", "--quiet", dest="verbosity", action="store_const", const=-1,
                       help="show only warnings and errors")
    sub = parser.add_subparsers(dest="command", required=True)

    ins = sub.add_parser("inspect", help="show how a data file is read: layout, counts, a preview",
                         parents=[json_option()])
    ins.add_argument("path")
    ins.add_argument("--prompt-col", action="append")
    ins.add_argument("--response-col")
    ins.add_argument("--id-col")
    ins.add_argument("--split")
    ins.add_argument("--rows", type=int, default=3)

    k = sub.add_parser("kernel", help="compute and save the raw kernels",
                       parents=[model_options(), json_option()])
    _add_data_args(k)
    k.add_argument("--kernel", choices=KERNEL_KINDS, default="utility")
    _add_model_args(k)
    _add_out_args(k)

    s = sub.add_parser("select", help="select a subset and write it with its annotations",
                       parents=[model_options(), json_option()])
    _add_data_args(s)
    s.add_argument("--objective", choices=objectives.names(), default="fl",
                   help="; ".join(f"{o.name}: {o.label}, {o.help}"
                                  + (f" (needs --{o.needs})" if o.needs else "")
                                  for o in objectives.OBJECTIVES.values()))
    s.add_argument("--kernel", default="utility",
                   help="utility, embedding, a .npy pool kernel, or a `delift kernel` folder")
    s.add_argument("--target-kernel", help="with a .npy --kernel: the target kernel file")
    s.add_argument("--existing-kernel", help="with a .npy --kernel: the existing kernel file")
    s.add_argument("--trust-kernel", action="store_true",
                   help="accept a kernel file with no kernel_meta.json recording its rows (a bare "
                        ".npy): without this, a kernel is used only when its recorded row ids and "
                        "content hashes match the pool (and target/existing) given")
    s.add_argument("--budget", default="0.3", help="fraction (0.3, 30%%) or count (90)")
    s.add_argument("--diagonal", choices=DIAGONAL_POLICIES, default=None,
                   help="utility kernels: the self-pair value in selection; " + "; ".join(
                       f"{k}: {v}" for k, v in DIAGONAL_HELP.items())
                   + f" (default {DEFAULT_DIAGONAL})")
    _add_objective_params(s)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--method", choices=["lazy", "stochastic", "naive"], default="lazy")
    s.add_argument("--epsilon", type=float, default=0.01, help="stochastic greedy's epsilon")
    s.add_argument("--pin", action="append", default=[], help="id to keep (repeatable)")
    s.add_argument("--ban", action="append", default=[], help="id never to pick (repeatable)")
    s.add_argument("--decisions", help="review decisions JSON from the app (pins and bans)")
    s.add_argument("--format", choices=["jsonl", "json", "csv", "parquet", "hf"],
                   help="row files' format (default: the pool's own, else jsonl); hf writes "
                        "selected.hf/ and rejected.hf/ as datasets.save_to_disk folders")
    s.add_argument("--push-to-hub", metavar="REPO",
                   help="also upload the selected rows as the train split of the (private) "
                        "dataset repository OWNER/NAME; needs the network and a token, checked "
                        "before any work")
    s.add_argument("--csv-escape", action="store_true",
                   help="with --format csv: quote cells that start with = + - @ in the selected/"
                        "rejected files too (annotated.csv always is), against spreadsheet "
                        "formula injection; off by default because it changes the data")
    _add_model_args(s)
    _add_out_args(s)
    _add_evaluate_parser(sub)
    _add_audit_parser(sub)
    _add_report_parser(sub)
    _add_cache_parser(sub)
    return parser


def _report(kernels: Any) -> None:
    """Say what the kernel computation did (computed, reused, damaged and recomputed)."""
    for line in kernel_report(kernels):
        logger.info(line)


def _add_out_args(p: argparse.ArgumentParser) -> None:
    """--out and --overwrite: the folder is checked before any work and written whole."""
    p.add_argument("--out", required=True,
                   help="output folder: written whole when the run succeeds (an earlier delift "
                        "output there is replaced; a failed run leaves it as it was)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out even when it is a non-empty folder delift did not write")


def _add_objective_params(p: argparse.ArgumentParser) -> None:
    """One option per objective parameter in the registry (``--eta``, ``--nu``, ``--lam``, ...)."""
    for name, users in objectives.param_specs().items():
        first = users[0][1]
        p.add_argument(f"--{name}", type=float, default=None,
                       help=f"{first.help or first.label} (for {', '.join(o for o, _ in users)}; "
                            f"default {first.default:g}, range {first.low:g}..{first.high:g})")


def _objective_params(args: argparse.Namespace) -> dict:
    """The objective parameters the user gave (unset ones take the registry's defaults)."""
    return {name: getattr(args, name) for name in objectives.param_specs()
            if getattr(args, name, None) is not None}


def _mapping(args: argparse.Namespace) -> ColumnMapping | None:
    if not args.prompt_col and not args.response_col:
        if getattr(args, "id_col", None):
            raise DeliftError("--id-col needs --prompt-col and --response-col")
        return None
    if not (args.prompt_col and args.response_col):
        raise DeliftError("give both --prompt-col and --response-col")
    return ColumnMapping(prompt=args.prompt_col, response=args.response_col, id=args.id_col)


def _load_sets(args: argparse.Namespace) -> tuple[Dataset, Dataset | None, Dataset | None]:
    mapping = _mapping(args)
    pool = load_dataset(args.pool, mapping=mapping, split=args.split)
    if args.limit is not None:
        if args.limit < 1:
            raise DeliftError("--limit must be at least 1")
        if args.limit < len(pool):
            logger.info("using the first %d of %d pool rows (--limit)", args.limit, len(pool))
            pool = pool.subset(range(args.limit))
    target = load_dataset(args.target, mapping=mapping) if getattr(args, "target", None) else None
    existing = (load_dataset(args.existing, mapping=mapping)
                if getattr(args, "existing", None) else None)
    for ds in (pool, target, existing):
        if ds is not None:
            logger.info(ds.summary())
            for s in ds.skipped[:5]:
                logger.info("  skipped %s: %s", s.location, s.reason)
            if len(ds.skipped) > 5:
                logger.info("  ... and %d more skipped rows", len(ds.skipped) - 5)
    return pool, target, existing


def _models(args: argparse.Namespace, kind: str) -> dict:
    backend = _backend_args(args)  # a bad --backend combination fails before any model loads
    extra = _sparse_args(args)
    if extra and kind != "embedding":
        from .models import load_embedder

        extra["embedder"] = load_embedder(args.embedder, device=args.device)
    return {**_models_dense(args, kind), **extra, **backend}


def _backend_args(args: argparse.Namespace) -> dict:
    """compute_kernels arguments for --backend ray (none for the local default)."""
    backend = getattr(args, "backend", "local")
    if backend == "local":
        if getattr(args, "ray_address", None) or getattr(args, "workers", None):
            raise DeliftError("--ray-address and --workers need --backend ray")
        return {}
    if args.workers is not None and args.workers < 1:
        raise DeliftError(f"--workers must be at least 1, got {args.workers}")
    return {"backend": backend, "ray_address": args.ray_address, "workers": args.workers}


def _sparse_args(args: argparse.Namespace) -> dict:
    """compute_kernels arguments for --neighbours (none without it)."""
    k = getattr(args, "neighbours", None)
    if not k:
        return {}
    if k < 1:
        raise DeliftError("--neighbours must be at least 1")
    return {"neighbours": k, "neighbour_random": max(0, getattr(args, "neighbour_random", 4)),
            "neighbour_seed": getattr(args, "seed", 0) or 0}


def _load_lm(args: argparse.Namespace) -> Any:
    """The causal LM the options name (default: the packaged Gemma 3 270M), loading said."""
    from .models import load_causal_lm

    logger.info("loading %s ...", args.model or "the packaged Gemma 3 270M")
    return load_causal_lm(args.model, device=args.device, dtype=args.dtype,
                          progress=lambda msg: logger.info("  %s", msg))


def _models_dense(args: argparse.Namespace, kind: str) -> dict:
    from .models import load_embedder

    if kind == "embedding":
        return {"embedder": load_embedder(args.embedder, device=args.device)}
    lm = _load_lm(args)
    settings = UtilitySettings(plain_template=args.plain_template,
                               example_template=args.example_template,
                               score_eos=not args.no_score_eos,
                               max_field_tokens=args.max_field_tokens,
                               max_response_tokens=args.max_response_tokens,
                               batch_size=args.batch_size,
                               chat_template=args.chat_template)
    try:
        settings.validate()
        if settings.chat_template:  # a model without a chat template fails now, clearly
            from .tokens import chat_wrapped_template

            chat_wrapped_template(lm, settings.plain_template)
    except ValueError as e:
        raise DeliftError(f"--chat-template: {e}" if settings.chat_template else str(e)) from None
    return {"lm": lm, "settings": settings}


def cmd_inspect(args: argparse.Namespace) -> int:
    ds = load_dataset(args.path, mapping=_mapping(args), split=args.split)
    print(ds.summary())
    print(f"columns: {ds.columns}")
    for s in ds.skipped[:10]:
        print(f"skipped {s.location}: {s.reason}")
    for k in range(min(args.rows, len(ds))):
        print(f"--- id {ds.ids[k]}\nPROMPT: {ds.prompts[k][:300]}\nRESPONSE: {ds.responses[k][:300]}")
    reasons: dict[str, int] = {}
    for s in ds.skipped:
        reasons[s.reason] = reasons.get(s.reason, 0) + 1
    emit_summary(args, source=ds.source, format=ds.source_format, layout=ds.layout,
                 rows=len(ds), skipped=len(ds.skipped), skipped_by_reason=reasons,
                 columns=ds.columns, ids=ds.ids[:args.rows])
    return 0


def cmd_kernel(args: argparse.Namespace) -> int:
    check_output(args.out, overwrite=args.overwrite)  # a bad --out fails now, not after the work
    pool, target, existing = _load_sets(args)
    kernels = compute_kernels(pool, target=target, existing=existing, kind=args.kernel,
                              progress=_Bars(), use_cache=not args.no_cache,
                              target_direction=args.target_direction or DEFAULT_TARGET_DIRECTION,
                              **_models(args, args.kernel))
    _report(kernels)
    with output_folder(args.out, command="kernel", overwrite=args.overwrite) as tmp:
        paths = save_kernels(kernels, tmp)
    print(f"wrote to {args.out}: " + ", ".join(f"{paths[w].name} {getattr(kernels, w).shape}"
                                              for w in ("pool", "target", "existing")
                                              if w in paths)
          + f" and {paths['meta'].name} in {kernels.meta.get('seconds')} s")
    emit_summary(args, out=args.out, kind=kernels.kind,
                 files={w: str(Path(args.out) / p.name) for w, p in paths.items()},
                 shapes={w: list(getattr(kernels, w).shape) for w in ("pool", "target",
                                                                      "existing") if w in paths},
                 rows={"pool": len(pool), "target": len(target) if target else None,
                       "existing": len(existing) if existing else None},
                 kernel_seconds=kernels.meta.get("seconds"), report=list(kernel_report(kernels)))
    return 0


def _check_direction(kernels: Any, asked: str | None, has_target: bool) -> None:
    """A loaded kernel folder's target direction is what it was computed with: refuse an
    explicit --target-direction that differs, rather than select with the other one silently."""
    if asked is None or not has_target:
        return
    got = (kernels.meta.get("computed") or {}).get("target_direction")
    if got != asked:
        raise DeliftError(f"--target-direction {asked}: the kernel folder's target kernel was "
                          f"computed with {got or 'no recorded direction'}; recompute it with "
                          f"`delift kernel --target-direction {asked}` or drop the flag")


def cmd_select(args: argparse.Namespace) -> int:
    from .export import export_selection

    started = time.time()
    check_output(args.out, overwrite=args.overwrite)  # a bad --out fails now, not after the work
    if args.push_to_hub:  # offline, or no token: fail now, not after the kernels
        from .hf_export import check_push

        check_push(args.push_to_hub)
    pool, target, existing = _load_sets(args)
    spec = objectives.get(args.objective)
    if spec.needs and {"target": target, "existing": existing}[spec.needs] is None:
        raise DeliftError(f"objective '{args.objective}' needs --{spec.needs} FILE")
    resolve_budget(args.budget, len(pool))  # a bad budget fails now, not after the kernels
    try:
        spec.resolve(_objective_params(args))  # so do objective parameters out of range
    except ValueError as e:
        raise DeliftError(str(e)) from None
    pins, bans = list(args.pin), list(args.ban)
    if args.decisions:
        from .review import load_decisions

        d = load_decisions(args.decisions)
        pins += d.pinned
        bans += d.banned
    kernel_arg = args.kernel
    if kernel_arg == "none" or (spec.baseline and kernel_arg == "utility"):
        kernels = None  # a baseline needs no kernel: not even the default utility one
    elif kernel_arg in KERNEL_KINDS:
        kernels = compute_kernels(pool, target=target, existing=existing, kind=kernel_arg,
                                  progress=_Bars(), use_cache=not args.no_cache,
                                  target_direction=args.target_direction
                                  or DEFAULT_TARGET_DIRECTION, **_models(args, kernel_arg))
        _report(kernels)
    else:
        kernels = load_kernels(kernel_arg, pool, target=target, existing=existing,
                               target_kernel=args.target_kernel,
                               existing_kernel=args.existing_kernel, trust=args.trust_kernel)
        _check_direction(kernels, args.target_direction, target is not None)
    selection = select(pool, args.objective, kernels, args.budget,
                       params=_objective_params(args), seed=args.seed, method=args.method,
                       epsilon=args.epsilon, pinned=pins, banned=bans, diagonal=args.diagonal)
    with output_folder(args.out, command="select", overwrite=args.overwrite) as tmp:
        paths = export_selection(selection, tmp, args.format, target=target, existing=existing,
                                 escape_csv=args.csv_escape,
                                 extra={"command": sys.argv, "total_seconds":
                                        round(time.time() - started, 3)})
    print(f"selected {len(selection.selected_indices)} of {len(pool)} rows "
          f"(objective {args.objective}, value {selection.objective_value:.4f}); wrote "
          + ", ".join(sorted(p.name for p in paths.values())) + f" to {args.out}")
    for note in selection.notes:
        print(f"note: {note}", file=sys.stderr)
    if args.push_to_hub:
        from .hf_export import push_selection

        emit_summary(args, pushed_to=push_selection(selection, args.push_to_hub))
    emit_summary(args, out=args.out,
                 files={n: str(Path(args.out) / p.name) for n, p in sorted(paths.items())},
                 objective=args.objective, objective_value=selection.objective_value,
                 selected=len(selection.selected_indices), pool_rows=len(pool),
                 rejected=len(pool) - len(selection.selected_indices), skipped=len(pool.skipped),
                 format=args.format, kernel_seconds=(kernels.meta.get("seconds")
                                                     if kernels is not None else None),
                 selection_seconds=selection.seconds, notes=list(selection.notes))
    return 0


def _add_evaluate_parser(sub: Any) -> None:
    """The ``evaluate`` subcommand (see :mod:`delift_core.evaluation`)."""
    from .evaluation import EvalSettings

    p = sub.add_parser("evaluate", help="score subsets (and baselines) by in-context learning "
                                        "or LoRA on a held-out test set",
                       parents=[model_options(), json_option()])
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

    from .evaluation import (EvalSettings, EvaluationError, Subset, baseline_subsets, evaluate,
                             load_subset, parse_int_list)
    from .models import load_embedder

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
    for spec in args.subsets:
        name, _, path = spec.partition("=") if "=" in spec and not Path(spec).exists() else (
            None, "", spec)
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
    lm = _load_lm(args)
    embedder = load_embedder(args.embedder, device=args.device)
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


def _add_audit_parser(sub: Any) -> None:
    """The ``audit`` subcommand (see :mod:`delift_core.audit`)."""
    from .audit import AuditSettings

    p = sub.add_parser("audit", help="what the kernel says about the data: rows already known, "
                                     "harmful, unhelped, self-copying, near-duplicate, covered worst",
                       parents=[model_options()])
    _add_data_args(p, with_target=False)
    p.add_argument("--kernel", default="embedding",
                   help="a `delift kernel` folder (utility findings need a utility kernel), or "
                        "utility / embedding to compute one (default: embedding)")
    p.add_argument("--selection", metavar="SELECT_DIR",
                   help="a `delift select` folder whose selection the coverage finding judges "
                        "(default: facility location at --budget on the kernel)")
    p.add_argument("--budget", default="0.3", help="without --selection: the FL budget (0.3)")
    p.add_argument("--clusters", type=int, default=8, help="k-means clusters for coverage (8)")
    p.add_argument("--no-embeddings", action="store_true",
                   help="load no sentence embedder: no near-duplicates or clusters unless the "
                        "kernel is an embedding kernel")
    defaults = AuditSettings()
    for flag, name in _AUDIT_FLAGS.items():
        p.add_argument(f"--{flag}", type=float, default=None, dest=f"audit_{name}",
                       help=f"{name} (default {getattr(defaults, name):g})")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    _add_model_args(p)
    _add_out_args(p)


_AUDIT_FLAGS = {"known-distance": "known_max_distance", "hurts-mean": "hurts_max_mean",
                "helped-max": "helped_max", "copy-self": "copy_min_self",
                "copy-ratio": "copy_max_ratio", "dup-cosine": "duplicate_min_cosine",
                "coverage-fraction": "coverage_fraction"}


def cmd_audit(args: argparse.Namespace) -> int:
    """Audit a pool from its kernel and write audit.json and audit.csv into --out."""
    import json
    import logging
    from pathlib import Path

    from .audit import AuditSettings, audit, write_audit
    from .report import read_select_folder

    settings = AuditSettings(**{name: getattr(args, f"audit_{name}")
                                for name in _AUDIT_FLAGS.values()
                                if getattr(args, f"audit_{name}") is not None})
    settings.validate()
    check_output(args.out, overwrite=args.overwrite)
    if args.kernel not in KERNEL_KINDS and not Path(args.kernel).exists():
        raise DeliftError(f"--kernel {args.kernel}: no such kernel folder (or give utility or "
                          "embedding)")
    pool, _, _ = _load_sets(args)
    embedder = None
    if not args.no_embeddings or args.kernel == "embedding":
        from .models import load_embedder

        embedder = load_embedder(args.embedder, device=args.device)
    if args.kernel in KERNEL_KINDS:
        models = {**_models(args, args.kernel), **({"embedder": embedder} if embedder else {})}
        kernels = compute_kernels(pool, kind=args.kernel, progress=_Bars(),
                                  use_cache=not args.no_cache, **models)
        _report(kernels)
    else:
        kernels = load_kernels(args.kernel, pool)
    if args.selection:
        selection = read_select_folder(args.selection, pool, kernels)
    else:
        selection = select(pool, "fl", kernels, args.budget)
    emb = clusters = None
    if embedder is not None and not args.no_embeddings:
        from .embedding import embed_texts, sample_text

        emb = embed_texts(embedder, [sample_text(p, r) for p, r in
                                     zip(pool.prompts, pool.responses)],
                          use_cache=not args.no_cache)
        from .errors import MissingDependencyError
        from .maps import cluster_labels

        try:
            clusters = cluster_labels(emb, args.clusters)
        except MissingDependencyError as e:
            logging.getLogger(__name__).warning("coverage is not grouped by cluster: %s", e)
    result = audit(pool, kernels, selection=selection, embeddings=emb, clusters=clusters,
                   settings=settings)
    with output_folder(args.out, command="audit", overwrite=args.overwrite) as tmp:
        paths = write_audit(result, tmp)
    if args.json:
        print(json.dumps(result.summary(), indent=1, default=str))
    else:
        for line in result.lines():
            print(line)
    logging.getLogger(__name__).info("wrote %s to %s", ", ".join(
        sorted(p.name for p in paths.values())), args.out)
    return 0


def _add_report_parser(sub: Any) -> None:
    """The ``report`` subcommand (see :mod:`delift_core.report`)."""
    p = sub.add_parser("report", help="one self-contained HTML report of a `delift select` folder")
    p.add_argument("select_dir", metavar="OUT_DIR", help="a `delift select` output folder")
    p.add_argument("--pool", help="the pool, when the manifest's source cannot be read again")
    p.add_argument("--kernel", help="the `delift kernel` folder of a utility selection (for the "
                                    "heatmap, explanations and the utility audit)")
    p.add_argument("--evaluation", metavar="EVAL_DIR", help="a `delift evaluate` folder")
    p.add_argument("--label-col", help="a pool column to break the composition down by "
                                       "(e.g. template for P3)")
    p.add_argument("--clusters", type=int, default=8, help="k-means clusters (8)")
    p.add_argument("--sample", type=int, default=10,
                   help="selected and rejected rows shown with their why (10 each)")
    p.add_argument("--embedder", help="sentence embedder (default: packaged all-MiniLM-L6-v2)")
    p.add_argument("--device", default=None)
    p.add_argument("--html", help="the file to write (default OUT_DIR/report.html)")


def cmd_report(args: argparse.Namespace) -> int:
    """Write the HTML report of a `delift select` folder."""
    from .report import report_from_folder

    path = report_from_folder(args.select_dir, pool=args.pool, kernel=args.kernel,
                              evaluation=args.evaluation, label_col=args.label_col,
                              clusters=args.clusters, sample=args.sample,
                              embedder=args.embedder, device=args.device, html_path=args.html)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


def _version() -> str:
    """The installed package's version, for ``delift --version`` (the source's when not installed)."""
    from importlib import metadata

    try:
        return metadata.version("delift-studio")
    except metadata.PackageNotFoundError:
        from . import __version__

        return __version__


def _log_to_stderr(verbosity: int) -> logging.Handler:
    """Show delift_core's log records as plain lines on stderr: INFO, or WARNING (-q), DEBUG (-v)."""

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger("delift_core")
    log.addHandler(handler)
    log.setLevel({-1: logging.WARNING, 0: logging.INFO, 1: logging.DEBUG}[verbosity])
    return handler


def _add_cache_parser(sub: Any) -> None:
    p = sub.add_parser("cache", help="the pair store of utility values: info, prune, clear")
    act = p.add_subparsers(dest="cache_action", required=True)
    act.add_parser("info", help="size, entries per model, last used")
    pr = act.add_parser("prune", help="delete the values of one model, or those not used lately")
    pr.add_argument("--model", help="delete the values computed with models whose name or "
                                    "fingerprint contains this")
    pr.add_argument("--older-than", type=float, metavar="DAYS",
                    help="delete the values of settings not used for DAYS days")
    act.add_parser("clear", help="delete the pair store, the embedding store and the old block "
                                 "cache folder")


def cmd_cache(args: argparse.Namespace) -> int:
    from . import cache

    if args.cache_action == "info":
        print("\n".join(cache.info_lines(cache.cache_info())))
    elif args.cache_action == "prune":
        if not args.model and args.older_than is None:
            raise DeliftError("delift cache prune: give --model NAME or --older-than DAYS")
        if args.older_than is not None and args.older_than < 0:
            raise DeliftError(f"--older-than must be at least 0 days, got {args.older_than}")
        gone = cache.prune(model=args.model, older_than_days=args.older_than)
        print(f"pruned {gone['spaces']} value spaces ({gone['entries']} entries)")
    else:
        removed = cache.clear()
        print("removed " + (", ".join(removed) if removed else "nothing (the cache was empty)"))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``delift`` console script; user errors exit 2 with a message."""
    import logging

    args = build_parser().parse_args(argv)
    handler = {"inspect": cmd_inspect, "kernel": cmd_kernel, "select": cmd_select,
               "evaluate": cmd_evaluate, "audit": cmd_audit, "report": cmd_report,
               "cache": cmd_cache}[args.command]
    log_handler = _log_to_stderr(args.verbosity)
    as_json = args.command in JSON_COMMANDS and getattr(args, "json", False)
    started = time.time()
    try:
        if not as_json:
            return handler(args)
        import contextlib

        with contextlib.redirect_stdout(sys.stderr):  # only the summary goes to stdout
            code = handler(args)
        print_summary({"command": args.command, "ok": code == 0,
                       **(getattr(args, "json_summary", None) or {}),
                       "seconds": round(time.time() - started, 3)})
        return code
    except DeliftError as e:
        print(f"delift: error: {e}", file=sys.stderr)
        if as_json:
            print_summary({"command": args.command, "ok": False, "error": str(e),
                           "seconds": round(time.time() - started, 3)})
        return 2
    except KeyboardInterrupt:
        print("delift: interrupted; finished kernel pairs are in the pair store and will be "
              "reused",
              file=sys.stderr)
        return 130
    finally:
        # main() may run many times in one process (tests, notebooks): leave logging as it was
        log = logging.getLogger("delift_core")
        log.removeHandler(log_handler)
        log.setLevel(logging.NOTSET)


if __name__ == "__main__":
    sys.exit(main())
