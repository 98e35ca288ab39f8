"""``delift audit`` and ``delift report``."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from delift_core import settings as spec
from delift_core.cli.common import (_add_data_args, _add_kernel_args, _add_out_args, _compute,
                                    _load_sets)
from delift_core.cli.options import Command, emit_summary
from delift_core.errors import DeliftError
from delift_core.kernels.files import load_kernels
from delift_core.outputs.outdir import check_output, output_folder

logger = logging.getLogger(__name__)


def _audit_arguments(p: argparse.ArgumentParser) -> None:
    """The ``audit`` command's arguments (see :mod:`delift_core.outputs.audit`); the threshold
    options come from the findings registry (:mod:`delift_core.outputs.audit_findings`)."""
    from delift_core.outputs.audit import DEFAULT_CLUSTERS

    _add_data_args(p, with_target=False)
    p.add_argument("--kernel", default="embedding",
                   help="a `delift kernel` folder (utility findings need a utility kernel), or "
                        "utility / embedding to compute one (default: embedding)")
    p.add_argument("--selection", metavar="SELECT_DIR",
                   help="a `delift select` folder whose selection the coverage finding judges "
                        "(default: facility location at --budget on the kernel)")
    p.add_argument("--budget", default="0.3", help="without --selection: the FL budget (0.3)")
    p.add_argument("--clusters", type=int, default=DEFAULT_CLUSTERS,
                   help=f"k-means clusters for coverage ({DEFAULT_CLUSTERS})")
    p.add_argument("--no-embeddings", action="store_true",
                   help="load no sentence embedder: no near-duplicates or clusters unless the "
                        "kernel is an embedding kernel")
    _add_threshold_args(p)
    _add_kernel_args(p)
    _add_out_args(p)


def _add_threshold_args(p: argparse.ArgumentParser) -> None:
    """One option per threshold of the findings registry, with its help, default and range."""
    from delift_core.outputs.audit_findings import FINDINGS

    group = p.add_argument_group("finding thresholds",
                                 "the rules of the findings (each written into audit.json)")
    for finding in FINDINGS.values():
        for t in finding.thresholds:
            text = (f"{finding.label}: {t.help} (default {t.default:g}; {t.name} in "
                    f"[{t.low:g}, {t.high:g}])")
            group.add_argument(f"--{t.flag}", type=float, default=None, metavar="X",
                               dest=f"audit_{t.name}", help=text.replace("%", "%%"))


def cmd_audit(args: argparse.Namespace) -> int:
    """Audit a pool from its kernel and write audit.json and audit.csv into --out."""
    from delift_core.outputs.audit import audit_pool, audit_settings, write_audit
    from delift_core.outputs.audit_findings import thresholds
    from delift_core.outputs.report import read_select_folder

    settings = audit_settings({t.name: getattr(args, f"audit_{t.name}") for t in thresholds()})
    check_output(args.out, overwrite=args.overwrite)
    kinds = spec.choices("kernel")
    if args.kernel not in kinds and not Path(args.kernel).exists():
        raise DeliftError(f"--kernel {args.kernel}: no such kernel folder (or give utility or "
                          "embedding)")
    pool, _, _ = _load_sets(args)
    embedder = None
    if not args.no_embeddings or args.kernel == "embedding":
        from delift_core.lm.models import load_embedder

        model = spec.from_args(args, "model")
        embedder = load_embedder(model.get("embedder"), device=model.get("device"))
    if args.kernel in kinds:
        kernels = _compute(args, args.kernel, pool,
                           models={"embedder": embedder} if embedder else None)
    else:
        kernels = load_kernels(args.kernel, pool)
    selection = read_select_folder(args.selection, pool, kernels) if args.selection else None
    result = audit_pool(pool, kernels, selection=selection, budget=args.budget,
                        embedder=None if args.no_embeddings else embedder,
                        clusters=args.clusters, use_cache=args.use_cache, settings=settings)
    with output_folder(args.out, command="audit", overwrite=args.overwrite) as tmp:
        paths = write_audit(result, tmp)
    for line in result.lines():
        print(line)
    emit_summary(args, out=args.out,
                 files={n: str(Path(args.out) / p.name) for n, p in sorted(paths.items())},
                 **json.loads(json.dumps(result.summary(), default=str)))
    logger.info("wrote %s to %s", ", ".join(sorted(p.name for p in paths.values())), args.out)
    return 0


def _report_arguments(p: argparse.ArgumentParser) -> None:
    """The ``report`` command's arguments (see :mod:`delift_core.outputs.report`)."""
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
    from delift_core.outputs.report import report_from_folder

    path = report_from_folder(args.select_dir, pool=args.pool, kernel=args.kernel,
                              evaluation=args.evaluation, label_col=args.label_col,
                              clusters=args.clusters, sample=args.sample,
                              embedder=args.embedder, device=args.device, html_path=args.html)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


COMMANDS = [
    Command("audit", "what the kernel says about the data: rows already known, harmful, "
                     "unhelped, self-copying, near-duplicate, covered worst", _audit_arguments,
            cmd_audit, models=True),
    Command("report", "one self-contained HTML report of a `delift select` folder",
            _report_arguments, cmd_report, json=False),
]
