"""The ``delift`` command line: a thin layer over the :mod:`delift_core` API.

One module per group of commands (``select_cmds``: inspect, kernel, select; ``evaluate_cmd``;
``audit_cmds``: audit, report; ``cache_cmd``), each listing its commands in ``COMMANDS`` (a
:class:`~delift_core.cli.options.Command`: parser, handler, ``--json``). :data:`COMMANDS` here is
the whole table; :func:`build_parser` builds the parser from it and :func:`main` runs a command
(user errors: ``delift: error: ...``, exit 2). The engine options come from
:mod:`delift_core.settings`.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Sequence

from delift_core.cli import audit_cmds, cache_cmd, evaluate_cmd, select_cmds
from delift_core.cli.options import Command, json_option, model_options, print_summary
from delift_core.errors import DeliftError

logger = logging.getLogger(__name__)

__all__ = ["COMMANDS", "main", "build_parser"]

COMMANDS: dict[str, Command] = {c.name: c for module in (select_cmds, evaluate_cmd, audit_cmds,
                                                         cache_cmd) for c in module.COMMANDS}
"""Every ``delift`` command by name, in the order ``delift --help`` lists them."""


def build_parser() -> argparse.ArgumentParser:
    """The ``delift`` parser: global options, then one subparser per entry of :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(prog="delift", description="DELIFT data selection for LLM "
                                     "fine-tuning.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    noise = parser.add_mutually_exclusive_group()
    noise.add_argument("-v", "--verbose", dest="verbosity", action="store_const", const=1,
                       default=0, help="also show debug messages")
    noise.add_argument("-q", "--quiet", dest="verbosity", action="store_const", const=-1,
                       help="show only warnings and errors")
    sub = parser.add_subparsers(dest="command", required=True)
    for c in COMMANDS.values():
        parents = ([model_options()] if c.models else []) + ([json_option()] if c.json else [])
        c.add_arguments(sub.add_parser(c.name, help=c.help, parents=parents))
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
    command = COMMANDS[args.command]
    handler = command.run
    log_handler = _log_to_stderr(args.verbosity)
    as_json = command.json and getattr(args, "json", False)
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
