"""Review decisions made by hand: pins (always selected), bans (never selected) and notes."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from delift_core.errors import DataError

__all__ = ["DECISIONS_VERSION", "BULK_ACTIONS", "Decisions", "load_decisions", "saved_decisions",
           "save_decisions_for"]

DECISIONS_VERSION = 1
BULK_ACTIONS = ("pin", "ban", "clear", "note")
"""What :meth:`Decisions.apply` does to many rows at once."""


@dataclass
class Decisions:
    """Per-sample overrides; re-running a selection starts from the pins and skips the bans."""

    pinned: list[str] = field(default_factory=list)
    banned: list[str] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)

    def pin(self, row_id: str) -> None:
        """Always select this row (undoes a ban)."""
        self.banned = [b for b in self.banned if b != row_id]
        if row_id not in self.pinned:
            self.pinned.append(row_id)

    def ban(self, row_id: str) -> None:
        """Never select this row (undoes a pin)."""
        self.pinned = [p for p in self.pinned if p != row_id]
        if row_id not in self.banned:
            self.banned.append(row_id)

    def clear(self, row_id: str) -> None:
        """Neither pin nor ban this row (its note stays)."""
        self.pinned = [p for p in self.pinned if p != row_id]
        self.banned = [b for b in self.banned if b != row_id]

    def copy(self) -> "Decisions":
        """An independent copy (the undo of a bulk action restores one)."""
        return Decisions(list(self.pinned), list(self.banned), dict(self.notes))

    def apply(self, action: str, row_ids: Sequence[str], note: str | None = None) -> int:
        """Pin, ban, clear or note (``note``; empty removes it) every row of ``row_ids`` at once;
        returns how many rows changed."""
        if action not in BULK_ACTIONS:
            raise ValueError(f"unknown bulk action '{action}'; use one of {BULK_ACTIONS}")
        before = self.copy()
        for rid in dict.fromkeys(map(str, row_ids)):
            if action == "note":
                if note and note.strip():
                    self.notes[rid] = note.strip()
                else:
                    self.notes.pop(rid, None)
            else:
                getattr(self, action)(rid)
        return len(self.changed_ids(before))

    def changed_ids(self, other: "Decisions") -> list[str]:
        """Rows whose pin, ban or note differs between ``other`` and these decisions."""
        ids = dict.fromkeys([*self.pinned, *self.banned, *self.notes, *other.pinned,
                             *other.banned, *other.notes])
        mine = (set(self.pinned), set(self.banned))
        theirs = (set(other.pinned), set(other.banned))
        return [i for i in ids if (i in mine[0]) != (i in theirs[0])
                or (i in mine[1]) != (i in theirs[1])
                or self.notes.get(i) != other.notes.get(i)]

    def to_json(self) -> str:
        """The decisions file's text, read back by :meth:`from_json` and the CLI's --decisions."""
        return json.dumps({"version": DECISIONS_VERSION, "pinned": self.pinned,
                           "banned": self.banned, "notes": self.notes}, indent=1,
                          ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str, source: str = "decisions") -> "Decisions":
        """Parse a decisions file, naming what is wrong with it."""
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{source}: not valid JSON ({e.msg} at line {e.lineno})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{source}: expected an object with 'pinned', 'banned' and 'notes'")
        pinned, banned, notes = obj.get("pinned", []), obj.get("banned", []), obj.get("notes", {})
        if not isinstance(pinned, list) or not isinstance(banned, list) or not isinstance(notes, dict):
            raise DataError(f"{source}: 'pinned' and 'banned' must be lists of ids and 'notes' an "
                            "object of id -> text")
        both = set(map(str, pinned)) & set(map(str, banned))
        if both:
            raise DataError(f"{source}: ids both pinned and banned: {sorted(both)[:10]}")
        return cls([str(x) for x in pinned], [str(x) for x in banned],
                   {str(k): str(v) for k, v in notes.items()})


def load_decisions(path: str | Path) -> Decisions:
    """Read a decisions file written by the studio or by :meth:`Decisions.to_json`."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read the decisions file ({e})") from None
    return Decisions.from_json(text, str(path))


def _saved_path(pool_sha: str, owner: str | None) -> Path:
    """``<cache>/decisions/<pool content>[-<owner hash>].json``: one file per pool content (and
    per signed-in user, so users of a shared studio never see each other's decisions)."""
    import hashlib

    from delift_core.lm.models import cache_dir

    tail = "" if owner is None else "-" + hashlib.sha256(owner.encode("utf-8")).hexdigest()[:16]
    return cache_dir() / "decisions" / f"{pool_sha[:32]}{tail}.json"


def save_decisions_for(decisions: Decisions, pool_sha: str, owner: str | None = None) -> Path:
    """Keep ``decisions`` for the pool whose content hash is ``pool_sha`` (written atomically,
    so a crash mid-write leaves the previous file); :func:`saved_decisions` reads them back."""
    from delift_core.stores.cache import atomic_write

    path = _saved_path(pool_sha, owner)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, decisions.to_json().encode("utf-8"))
    return path


def saved_decisions(pool_sha: str, owner: str | None = None) -> Decisions | None:
    """The decisions last kept for this pool content (and owner), or None; a damaged file is
    reported (DataError naming it), never silently dropped."""
    path = _saved_path(pool_sha, owner)
    if not path.exists():
        return None
    return load_decisions(path)
