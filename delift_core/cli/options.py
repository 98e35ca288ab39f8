"""Options the ``delift`` commands share, defined once as argparse parent parsers.

Every command that loads a causal LM takes the same ``--model``, ``--embedder``, ``--dtype`` and
``--device`` (:func:`model_options`); the commands with a machine-readable summary take the same
``--json`` (:func:`json_option`). :func:`emit_summary` is how a command hands that summary to
:func:`delift_core.cli.main`, which prints it as the only thing on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from delift_core.lm.models import DEFAULT_MODEL, PACKAGED_MODELS

__all__ = ["JSON_COMMANDS", "MODEL_HELP", "emit_summary", "json_option", "model_options",
           "print_summary"]

#: the commands whose ``--json`` summary :func:`delift_core.cli.main` prints
JSON_COMMANDS = ("inspect", "kernel", "select", "evaluate")

MODEL_HELP = ("causal LM: " + ", ".join(
    f"{alias} ({'packaged, default' if alias == DEFAULT_MODEL else 'packaged'})"
    for alias in PACKAGED_MODELS) + ", a Hugging Face hub id (online) or a local folder")


def model_options() -> argparse.ArgumentParser:
    """The model options of every command that loads a causal LM or an embedder."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("model")
    g.add_argument("--model", help=MODEL_HELP)
    g.add_argument("--embedder", help="sentence embedder (default: packaged all-MiniLM-L6-v2)")
    g.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    g.add_argument("--device", default=None, help="cpu, cuda, mps (default: best available)")
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
