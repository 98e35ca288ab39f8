"""The ``delift`` command line: a thin layer over the :mod:`delift_core` API.

One module per group of commands (``select_cmds``: inspect, kernel, select;
``evaluate_cmd``; ``audit_cmds``: audit, report; ``cache_cmd``), the options they
share in ``common`` and ``options``; this module builds the
parser and runs a command (user errors: ``delift: error: ...``, exit 2).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Sequence

from delift_core.cli.options import JSON_COMMANDS, json_option, model_options, print_summary
from delift_core.errors import DeliftError
from delift_core.selection import objectives
from delift_core.kernels.diagonal import DEFAULT_DIAGONAL, DIAGONAL_HELP, DIAGONAL_POLICIES
from delift_core.kernels.builder import KERNEL_KINDS
from delift_core.cli.audit_cmds import _add_audit_parser, _add_report_parser, cmd_audit, cmd_report
from delift_core.cli.cache_cmd import _add_cache_parser, cmd_cache
from delift_core.cli.common import (_add_data_args, _add_model_args, _add_objective_params,
                                    _add_out_args)
from delift_core.cli.evaluate_cmd import _add_evaluate_parser, cmd_evaluate
from delift_core.cli.select_cmds import cmd_inspect, cmd_kernel, cmd_select

logger = logging.getLogger(__name__)

__all__ = ["main", "build_parser",
           "cmd_inspect", "cmd_kernel", "cmd_select", "cmd_evaluate", "cmd_audit", "cmd_report", "cmd_cache"]


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


def _version() -> str:
    """The installed package's version, for ``delift --version`` (the source's when not installed)."""
    from importlib import metadata

    try:
        return metadata.version("delift-studio")
    except metadata.PackageNotFoundError:
        from delift_core import __version__

        return __version__


def _log_to_stderr(verbosity: int) -> logging.Handler:
    """Show delift_core's log records as plain lines on stderr: INFO, or WARNING (-q), DEBUG (-v)."""

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger("delift_core")
    log.addHandler(handler)
    log.setLevel({-1: logging.WARNING, 0: logging.INFO, 1: logging.DEBUG}[verbosity])
    return handler


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
