"""Bulk changes to the review decisions, shared by the Review and Audit pages: apply one action to
many rows as a single step, undo the last step, and count what changed since the decisions were
started or loaded.

Every change is one undoable step, single rows included, and is saved at once in the cache
folder for the pool's content (:func:`delift_core.outputs.review.save_decisions_for`): a refresh,
a closed tab or a server restart loses nothing, and loading the same pool again restores them.
A signed-in user's decisions are kept apart from everyone else's; on a served studio without
sign-in they live in the session only (nothing tells two visitors apart).

Session keys: ``"decisions"`` (:class:`delift_core.Decisions`), ``"_decisions_undo"`` (a list of
(label, decisions before the step)), ``"_decisions_baseline"`` (the decisions when started or
loaded from a file), ``"_decisions_saved"`` (when they were last saved, or why not).
"""

from __future__ import annotations

import time
from typing import Sequence

from delift_core.errors import DataError
from delift_core.outputs.review import Decisions, save_decisions_for, saved_decisions

from . import served, state

__all__ = ["UNDO_DEPTH", "bulk", "single", "replace", "undo", "last_step", "changes",
           "reset_baseline", "load", "restore", "saved_state"]

UNDO_DEPTH = 20


def _stack() -> list[tuple[str, Decisions]]:
    return state.ss().setdefault("_decisions_undo", [])


def reset_baseline() -> None:
    """Count changes from the decisions as they are now (after loading a file)."""
    s = state.ss()
    s["_decisions_baseline"] = s["decisions"].copy()
    s["_decisions_undo"] = []


def _owner() -> tuple[bool, str | None]:
    """(whether decisions may be kept beyond the session, whose they are)."""
    if served.auth_configured():  # an account without a verified address keeps nothing: its
        owner = served.signed_in_user()  # file would be another's (or the local one)
        return owner is not None, owner
    return not served.served_settings().served, None


def _persist() -> None:
    """Save the session's decisions for its pool now; the outcome goes to ``_decisions_saved``."""
    s = state.ss()
    pool = s.get("pool")
    keep, owner = _owner()
    if pool is None or not keep:
        s["_decisions_saved"] = None
        return
    try:
        save_decisions_for(s["decisions"], pool.text_sha256, owner)
        s["_decisions_saved"] = time.strftime("%H:%M:%S")
    except OSError as e:  # said on the page: the user can still download them
        s["_decisions_saved"] = f"not saved: {e}"


def restore() -> int:
    """After a pool is loaded: the decisions last saved for its content, if any, become the
    session's (one baseline, no undo across pools); returns how many rows they touch."""
    s = state.ss()
    pool = s.get("pool")
    keep, owner = _owner()
    if pool is None or not keep:
        return 0
    try:
        saved = saved_decisions(pool.text_sha256, owner)
    except DataError as e:
        s["_decisions_saved"] = f"the saved decisions could not be read: {e}"
        return 0
    if saved is None:
        return 0
    s["decisions"] = saved
    reset_baseline()
    s["_decisions_saved"] = "restored"
    return len(saved.changed_ids(Decisions()))


def saved_state() -> str:
    """One line for the page: saved when, restored, or why not kept."""
    s = state.ss()
    keep, _ = _owner()
    if not keep:
        return ("Decisions live in this session only (a served studio without sign-in cannot "
                "tell visitors apart): download them to keep them.")
    what = s.get("_decisions_saved")
    if what is None:
        return "Decisions are saved automatically as you make them."
    if what == "restored":
        return ("Decisions restored from the last session on this pool; every change is saved "
                "automatically.")
    if what.startswith(("not saved", "the saved")):
        return f"Decisions {what}. Download them to keep them."
    return f"Saved automatically at {what}; loading this pool again restores them."


def load(new: Decisions) -> None:
    """Decisions from a file become the session's (a new baseline), saved at once."""
    state.ss()["decisions"] = new
    reset_baseline()
    _persist()


def single(action: str, row_id: str, note: str | None = None) -> int:
    """One row pinned, banned, cleared or noted: an undoable step like a bulk one."""
    return bulk(action, [row_id], f"{action} {row_id}", note)


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
        _persist()
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
    if changed:
        _persist()
    return changed


def last_step() -> str | None:
    """The label of the step :func:`undo` would undo, if any."""
    stack = _stack()
    return stack[-1][0] if stack else None


def undo() -> str | None:
    """Restore the decisions from before the last step (bulk or single row); returns its label."""
    stack = _stack()
    if not stack:
        return None
    label, before = stack.pop()
    state.ss()["decisions"] = before
    _persist()
    return label


def changes() -> int:
    """Rows whose pin, ban or note differs from the decisions started or loaded."""
    s = state.ss()
    base = s.get("_decisions_baseline") or Decisions()
    return len(s["decisions"].changed_ids(base))
