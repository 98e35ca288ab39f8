"""The SQLite set-up shared by DELIFT's content-keyed stores (embeddings, utility pairs).

One connection per store in autocommit mode with WAL journaling, so the studio and a CLI run can
read and write the same file at once and every explicit transaction is committed whole or not at
all; a long busy timeout, because the other writer may be in the middle of a batch. A store file
that SQLite cannot open or whose pages fail ``PRAGMA quick_check`` is moved aside (never deleted)
and a new one started, so a damaged cache costs a recomputation, never a crash or a wrong value.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path
from typing import Iterator, Sequence, TypeVar

__all__ = ["MAX_PARAMS", "chunks", "connect", "open_checked"]

logger = logging.getLogger(__name__)

MAX_PARAMS = 900
"""Bound parameters per statement, below SQLite's oldest default limit (999)."""

T = TypeVar("T")


def connect(path: str | Path, timeout: float = 60.0) -> sqlite3.Connection:
    """An autocommit connection in WAL mode (``synchronous=NORMAL``: a committed transaction
    survives a killed process; only a power cut can lose the last ones, never tear them)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    return db


def open_checked(path: str | Path, schema: Sequence[str], timeout: float = 60.0
                 ) -> tuple[sqlite3.Connection, str | None]:
    """Open a store, create its ``schema`` statements, and check SQLite's own integrity.

    Returns the connection and, when the old file was damaged (not a database, or failing
    ``quick_check``), why; that file is then renamed ``<name>.damaged-<time>`` and replaced.
    """
    path = Path(path)
    problem = None
    try:
        db = connect(path, timeout)
        rows = db.execute("PRAGMA quick_check").fetchall()
        if rows != [("ok",)]:
            problem = "; ".join(str(r[0]) for r in rows[:3])
            db.close()
        else:
            for stmt in schema:
                db.execute(stmt)
            return db, None
    except sqlite3.DatabaseError as e:
        problem = str(e)
    aside = path.with_name(f"{path.name}.damaged-{int(time.time())}")
    logger.warning("%s is damaged (%s); moved to %s and started anew", path, problem, aside)
    for suffix in ("", "-wal", "-shm"):
        p = Path(f"{path}{suffix}")
        if p.exists():
            p.replace(Path(f"{aside}{suffix}"))
    db = connect(path, timeout)
    for stmt in schema:
        db.execute(stmt)
    return db, problem


def chunks(items: Sequence[T], size: int = MAX_PARAMS) -> Iterator[Sequence[T]]:
    """``items`` in slices of at most ``size`` (one IN (...) query each)."""
    for s in range(0, len(items), size):
        yield items[s: s + size]
