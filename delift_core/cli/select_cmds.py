"""``delift inspect``, ``delift kernel`` and ``delift select``."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

from delift_core.cli.options import emit_summary
from delift_core.data.dataset import load_dataset
from delift_core.errors import DeliftError
from delift_core.selection import objectives
from delift_core.kernels.files import check_target_direction, load_kernels, save_kernels
from delift_core.kernels.builder import (DEFAULT_TARGET_DIRECTION, KERNEL_KINDS, compute_kernels,
                                         kernel_report)
from delift_core.outputs.outdir import check_output, output_folder
from delift_core.selection.select import resolve_budget, select
from delift_core.cli.common import _Bars, _load_sets, _mapping, _models, _objective_params, _report

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


def cmd_select(args: argparse.Namespace) -> int:
    from delift_core.outputs.export import export_selection

    started = time.time()
    check_output(args.out, overwrite=args.overwrite)  # a bad --out fails now, not after the work
    if args.push_to_hub:  # offline, or no token: fail now, not after the kernels
        from delift_core.outputs.hf_export import check_push

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
        from delift_core.outputs.review import load_decisions

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
        check_target_direction(kernels, args.target_direction)
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
        from delift_core.outputs.hf_export import push_selection

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
