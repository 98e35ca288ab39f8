"""Bulk changes to the review decisions, shared by the Review and Audit pages: apply one action to
many rows as a single step, undo the last step, and count what changed since the decisions were
started or loaded.

Session keys: ``"decisions"`` (:class:`delift_core.Decisions`), ``"_decisions_undo"`` (a list of
(label, decisions before the step)) and ``"_decisions_baseline"`` (the decisions when started or
loaded from a file).
"""

from __future__ import annotations

from typing import Sequence

from delift_core.outputs.review import Decisions

from . import state

__all__ = ["UNDO_DEPTH", "bulk", "replace", "undo", "last_step", "changes", "reset_baseline"]

UNDO_DEPTH = 20


def _stack() -> list[tuple[str, Decisions]]:
    return state.ss().setdefault("_decisions_undo", [])


def reset_baseline() -> None:
    """Count changes from the decisions as they are now (after loading a file)."""
    s = state.ss()
    s["_decisions_baseline"] = s["decisions"].copy()
    s["_decisions_undo"] = []


def bulk(action: str, row_ids: Sequence[str], label: str, note: str | None = None) -> int:
    """Apply ``action`` (pin, ban, clear, note) to every row in one undoable step; returns how
    many rows changed (a step that changes nothing is not recorded)."""
    s = state.ss()
    s.setdefault("_decisions_baseline", Decisions())
    before = s["decisions"].copy()
    changed = s["decisions"].apply(action, row_ids, note)
    if changed:
        stack = _stack()
        stack.append((f"{label} ({changed} rows)", before))
        del stack[:-UNDO_DEPTH]
    return changed


def replace(new: Decisions, label: str) -> int:
    """Make ``new`` the decisions in one undoable step (e.g. many table edits applied at once);
    returns how many rows changed."""
    s = state.ss()
    s.setdefault("_decisions_baseline", Decisions())
    before = s["decisions"]
    changed = len(new.changed_ids(before))
    if changed:
        stack = _stack()
        stack.append((f"{label} ({changed} rows)", before.copy()))
        del stack[:-UNDO_DEPTH]
    s["decisions"] = new
    return changed


def last_step() -> str | None:
    """The label of the step :func:`undo` would undo, if any."""
    stack = _stack()
    return stack[-1][0] if stack else None


def undo() -> str | None:
    """Restore the decisions from before the last bulk step; returns its label."""
    stack = _stack()
    if not stack:
        return None
    label, before = stack.pop()
    state.ss()["decisions"] = before
    return label


def changes() -> int:
    """Rows whose pin, ban or note differs from the decisions started or loaded."""
    s = state.ss()
    base = s.get("_decisions_baseline") or Decisions()
    return len(s["decisions"].changed_ids(base))
