"""``delift inspect``, ``delift kernel`` and ``delift select``."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from delift_core import settings as spec
from delift_core.cli.common import (_Bars, _add_data_args, _add_engine_args, _add_kernel_args,
                                    _add_objective_params, _add_out_args, _compute,
                                    _engine_values, _load_sets, _mapping, _objective_params,
                                    _report)
from delift_core.cli.options import Command, emit_summary
from delift_core.data.dataset import load_dataset
from delift_core.errors import SettingError
from delift_core.kernels.builder import kernel_report
from delift_core.kernels.files import save_kernels
from delift_core.outputs.outdir import check_output, output_folder
from delift_core.selection import objectives
from delift_core.selection.cost import cost_line
from delift_core.selection.prepare import check_request, selection_kernels, selection_scores
from delift_core.selection.select import select

logger = logging.getLogger(__name__)


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
    kernels = _compute(args, args.kernel, pool, target, existing)
    with output_folder(args.out, command="kernel", overwrite=args.overwrite) as tmp:
        paths = save_kernels(kernels, tmp)
    print(f"wrote to {args.out}: " + ", ".join(f"{paths[w].name} {getattr(kernels, w).shape}"
                                              for w in ("pool", "target", "existing")
                                              if w in paths)
          + f" and {paths['meta'].name} in {kernels.meta.seconds} s")
    emit_summary(args, out=args.out, kind=kernels.kind,
                 files={w: str(Path(args.out) / p.name) for w, p in paths.items()},
                 shapes={w: list(getattr(kernels, w).shape) for w in ("pool", "target",
                                                                      "existing") if w in paths},
                 rows={"pool": len(pool), "target": len(target) if target else None,
                       "existing": len(existing) if existing else None},
                 kernel_seconds=kernels.meta.seconds, settings=kernels.meta.settings,
                 report=list(kernel_report(kernels)))
    return 0


def cmd_select(args: argparse.Namespace) -> int:
    from delift_core.outputs.export import export_selection

    started = time.time()
    check_output(args.out, overwrite=args.overwrite)  # a bad --out fails now, not after the work
    if args.push_to_hub:  # offline, or no token: fail now, not after the kernels
        from delift_core.outputs.hf_export import check_push

        check_push(args.push_to_hub)
    chosen = spec.from_args(args, "selection", "export")  # bad values fail before any work
    pool, target, existing = _load_sets(args)
    check_request(pool, args.objective, args.budget, params=_objective_params(args),
                  target=target, existing=existing)
    pins, bans = list(args.pin), list(args.ban)
    if args.decisions:
        from delift_core.outputs.review import load_decisions

        d = load_decisions(args.decisions)
        pins += d.pinned
        bans += d.banned
    if args.scores:  # a stale or wrong score file fails before any kernel work
        selection_scores(pool, args.objective, {}, scores_file=args.scores)
    if chosen["verify_rounds"] and (args.kernel == "embedding" or
                                    (args.kernel == "utility" and not args.learned)):
        raise SettingError("--verify-rounds verifies a learned kernel's selection: add --learned "
                           "(--kernel utility), or give a learned `delift kernel` folder")
    if chosen["verify_rounds"] and objectives.get(args.objective).build is None:
        raise SettingError(f"--verify-rounds verifies the kernel values a selection stands on; "
                           f"{args.objective} selects without a kernel: drop --verify-rounds")
    if chosen["verify_explore"] and not objectives.get(args.objective).explores():
        raise SettingError(f"--verify-explore explores columns beyond a selection's covers; "
                           f"{args.objective}'s verification scores every pair its value "
                           "stands on, none of them covers: drop --verify-explore")
    if chosen["verify_explore"] and not chosen["verify_rounds"]:
        raise SettingError("--verify-explore explores columns in each verification round: add "
                           "--verify-rounds R (R >= 1)")
    kernels = selection_kernels(pool, args.objective, args.kernel, _engine_values(args, "utility"),
                                target=target, existing=existing, trust=args.trust_kernel,
                                target_kernel=args.target_kernel,
                                existing_kernel=args.existing_kernel, progress=_Bars())
    if kernels is not None and not kernels.meta.loaded:
        _report(kernels)
    scores = selection_scores(pool, args.objective, _engine_values(args, "utility"),
                              scores_file=args.scores, progress=_Bars())
    options = dict(params=_objective_params(args), seed=chosen["seed"], method=chosen["method"],
                   epsilon=chosen["epsilon"], pinned=pins, banned=bans, diagonal=args.diagonal,
                   scores=scores)
    if chosen["verify_rounds"]:
        from delift_core.selection.verify import verify_from_settings

        selection = verify_from_settings(pool, args.objective, kernels, args.budget,
                                         _engine_values(args, "utility"),
                                         rounds=chosen["verify_rounds"],
                                         explore=chosen["verify_explore"], target=target,
                                         existing=existing,
                                         progress=_Bars(), **options)
    else:
        selection = select(pool, args.objective, kernels, args.budget, **options)
    cost = selection.cost()
    with output_folder(args.out, command="select", overwrite=args.overwrite) as tmp:
        paths = export_selection(selection, tmp, chosen["format"], target=target,
                                 existing=existing, escape_csv=chosen["csv_escape"],
                                 extra={"command": sys.argv, "total_seconds":
                                        round(time.time() - started, 3)})
    print(f"selected {len(selection.selected_indices)} of {len(pool)} rows "
          f"(objective {args.objective}, value {selection.objective_value:.4f}); wrote "
          + ", ".join(sorted(p.name for p in paths.values())) + f" to {args.out}")
    print(cost_line(cost))
    if chosen["verify_rounds"]:
        from delift_core.kernels.learned import verification_line

        for role, m in selection.kernels.meta.learned.items():
            if m.get("verification"):
                print(f"verified ({role} kernel): {verification_line(m['verification'])}")
    for note in selection.notes:
        print(f"note: {note}", file=sys.stderr)
    if args.push_to_hub:
        from delift_core.outputs.hf_export import push_selection

        emit_summary(args, pushed_to=push_selection(selection, args.push_to_hub))
    emit_summary(args, out=args.out,
                 files={n: str(Path(args.out) / p.name) for n, p in sorted(paths.items())},
                 objective=args.objective, objective_value=selection.objective_value,
                 selected=len(selection.selected_indices), pool_rows=len(pool),
                 rejected=len(pool) - len(selection.selected_indices), skipped=len(pool.skipped),
                 format=chosen["format"], kernel_seconds=(kernels.meta.seconds
                                                          if kernels is not None else None),
                 selection_seconds=selection.seconds, cost=cost, notes=list(selection.notes))
    return 0


def _inspect_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path")
    p.add_argument("--prompt-col", action="append")
    p.add_argument("--response-col")
    p.add_argument("--id-col")
    p.add_argument("--split")
    p.add_argument("--rows", type=int, default=3)


def _kernel_arguments(p: argparse.ArgumentParser) -> None:
    _add_data_args(p)
    k = spec.get("kernel")
    p.add_argument("--kernel", default=k.default, metavar="{" + ",".join(k.choices) + "}",
                   help=k.cli_help())
    _add_kernel_args(p)
    _add_out_args(p)


def _select_arguments(s: argparse.ArgumentParser) -> None:
    _add_data_args(s)
    s.add_argument("--objective", choices=objectives.names(), default="fl",
                   help="; ".join(f"{o.name}: {o.label}, {o.help}"
                                  + (f" (needs --{o.needs})" if o.needs else "")
                                  for o in objectives.OBJECTIVES.values()))
    kinds = ", ".join(spec.choices("kernel"))
    s.add_argument("--kernel", default=spec.default("kernel"),
                   help=f"{kinds} (computed), none (a baseline), a .npy pool kernel, or a "
                        f"`delift kernel` folder (default {spec.default('kernel')})")
    s.add_argument("--target-kernel", help="with a .npy --kernel: the target kernel file")
    s.add_argument("--existing-kernel", help="with a .npy --kernel: the existing kernel file")
    s.add_argument("--trust-kernel", action="store_true",
                   help="accept a kernel file with no kernel_meta.json recording its rows (a bare "
                        ".npy): without this, a kernel is used only when its recorded row ids and "
                        "content hashes match the pool (and target/existing) given")
    s.add_argument("--budget", default="0.3", help="fraction (0.3, 30%%) or count (90)")
    s.add_argument("--scores", metavar="FILE",
                   help="for a method that ranks by per-row scores (ifd, ifd-fl, longest): a "
                        "row_scores.json (or the `delift select` folder holding it) to use "
                        "instead of computing them; refused when computed for other rows")
    _add_objective_params(s)
    _add_engine_args(s, "selection", "export")
    s.add_argument("--pin", action="append", default=[], help="id to keep (repeatable)")
    s.add_argument("--ban", action="append", default=[], help="id never to pick (repeatable)")
    s.add_argument("--decisions", help="review decisions JSON from the app (pins and bans)")
    s.add_argument("--push-to-hub", metavar="REPO",
                   help="also upload the selected rows as the train split of the (private) "
                        "dataset repository OWNER/NAME; needs the network and a token, checked "
                        "before any work")
    _add_kernel_args(s)
    _add_out_args(s)


COMMANDS = [
    Command("inspect", "show how a data file is read: layout, counts, a preview",
            _inspect_arguments, cmd_inspect),
    Command("kernel", "compute and save the raw kernels", _kernel_arguments, cmd_kernel,
            models=True),
    Command("select", "select a subset and write it with its annotations", _select_arguments,
            cmd_select, models=True),
]
