"""The command table's entry type, and the options the ``delift`` commands share.

Each command module lists its commands as :class:`Command` entries (its parser, its handler,
whether it has ``--json``); :mod:`delift_core.cli` builds the parser from them. Every command that
loads a causal LM takes the same ``--model``, ``--embedder``, ``--dtype`` and ``--device``
(:func:`model_options`, from :mod:`delift_core.settings`); the commands with a machine-readable
summary take the same ``--json``. :func:`emit_summary` is how a command hands that summary to
:func:`delift_core.cli.main`, which prints it as the only thing on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from typing import Any, Callable

from delift_core import settings as spec

__all__ = ["Command", "emit_summary", "json_option", "model_options", "print_summary"]


@dataclass(frozen=True)
class Command:
    """One ``delift`` command: its name and help, the function that adds its arguments, the
    function that runs it (returns the exit code), and whether it prints a ``--json`` summary."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    json: bool = True
    models: bool = False
    """Whether it takes the model options (:func:`model_options`)."""


def model_options() -> argparse.ArgumentParser:
    """The model options of every command that loads a causal LM or an embedder."""
    p = argparse.ArgumentParser(add_help=False)
    spec.add_cli_options(p.add_argument_group("model"), "model")
    return p


def json_option() -> argparse.ArgumentParser:
    """``--json``: one JSON summary on stdout and nothing else there (human lines go to stderr)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--json", action="store_true",
                   help="print one machine-readable JSON summary on stdout (paths written, "
                        "counts, values, timings) and nothing else there")
    return p


def emit_summary(args: argparse.Namespace, **fields: Any) -> None:
    """Record a command's summary for ``--json`` (merged when a command records it in parts)."""
    summary = getattr(args, "json_summary", None) or {}
    summary.update(fields)
    args.json_summary = summary


def print_summary(summary: dict, stream: Any = None) -> None:
    """Write one summary as a single JSON line (paths and other objects as text)."""
    stream = stream or sys.stdout
    stream.write(json.dumps(summary, default=str, ensure_ascii=False) + "\n")
    stream.flush()
