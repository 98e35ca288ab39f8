"""Utility distances stored per (target row, example row) pair, by content, in SQLite.

Every value the utility engine computes is kept under its *value space* (model fingerprint, dtype,
the settings that change values: templates, truncation, BOS/EOS, segmentation, the engine
version) and the content hashes of the rows it involves: ``d(i, with j)`` under (target i's
(prompt, response), example j's (prompt, response)) and ``d(i, plain)`` under target i alone. Any
kernel, dense or sparse, of any pool, target or existing set, is assembled from the store, and
only pairs it lacks are computed: a grown, cut or edited pool, or another pool sharing rows, costs
only its new pairs.

Values are float64 (SQLite REAL), exactly as computed, so an assembled kernel is bit-identical
to the one the computing run returned. Each batch of results is one transaction (committed whole
or absent; a killed run loses at most the batch in flight, then resumes at pair granularity), and
WAL mode lets two processes (the studio and a CLI run, or a Ray driver) share the file.

Damage: SQLite's ``quick_check`` runs when the store is opened (a damaged file is moved aside and
a new one started, see :mod:`delift_core.stores.sqlite_store`), and each entry carries a CRC-32 of its
key and value bytes, checked on every read: a wrong entry is counted and recomputed. A CRC per
entry rather than per batch, because a kernel reads single pairs out of many batches: a batch
checksum would force reading whole batches to trust one pair.
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from delift_core.stores.sqlite_store import chunks, open_checked

__all__ = ["PairStore", "SpaceInfo", "row_key", "space_key"]

logger = logging.getLogger(__name__)

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS spaces (id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, "
    "model TEXT NOT NULL, dtype TEXT NOT NULL, info TEXT NOT NULL, created REAL NOT NULL, "
    "last_used REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS plain (space INTEGER NOT NULL, target BLOB NOT NULL, "
    "value REAL, crc INTEGER NOT NULL, PRIMARY KEY (space, target)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS pairs (space INTEGER NOT NULL, target BLOB NOT NULL, "
    "example BLOB NOT NULL, value REAL, crc INTEGER NOT NULL, "
    "PRIMARY KEY (space, target, example)) WITHOUT ROWID",
)


def row_key(prompt: str, response: str) -> bytes:
    """A row's content key: the first 16 bytes of SHA-256 over the JSON [prompt, response]."""
    return hashlib.sha256(json.dumps([prompt, response], ensure_ascii=False).encode("utf-8")
                          ).digest()[:16]


def space_key(info: dict) -> str:
    """The key of a value space: SHA-256 of its JSON description (sorted keys)."""
    return hashlib.sha256(json.dumps(info, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def _crc(space: int, target: bytes, example: bytes, value: float | None) -> int:
    """CRC-32 of an entry's key and its value's 8 bytes (None: a NaN SQLite turned into NULL)."""
    v = struct.pack("<d", float("nan") if value is None else value)
    return zlib.crc32(struct.pack("<q", space) + target + example + v)


@dataclass(frozen=True)
class SpaceInfo:
    """One value space of the store, as ``delift cache info`` lists it."""

    id: int
    model: str
    dtype: str
    pairs: int
    plain: int
    created: float
    last_used: float
    info: dict


class PairStore:
    """The utility distances of every value space in one SQLite file (see the module doc)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db, self.file_damage = open_checked(self.path, SCHEMA)
        self.damaged = 0

    def close(self) -> None:
        """Close the connection (the file stays)."""
        self._db.close()

    # ------------------------------------------------------------------------------------------
    # Spaces

    def space(self, info: dict, model: str, dtype: str) -> int:
        """The id of the value space described by ``info`` (created when new; marked used now)."""
        key, now = space_key(info), time.time()
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("INSERT OR IGNORE INTO spaces (key, model, dtype, info, created, "
                             "last_used) VALUES (?, ?, ?, ?, ?, ?)",
                             (key, model, dtype, json.dumps(info, sort_keys=True, default=str),
                              now, now))
            self._db.execute("UPDATE spaces SET last_used = ? WHERE key = ?", (now, key))
            (sid,) = self._db.execute("SELECT id FROM spaces WHERE key = ?", (key,)).fetchone()
        return int(sid)

    def spaces(self) -> list[SpaceInfo]:
        """Every value space with its entry counts, most recently used first."""
        counts = {s: n for s, n in self._db.execute("SELECT space, COUNT(*) FROM pairs GROUP BY space")}
        plains = {s: n for s, n in self._db.execute("SELECT space, COUNT(*) FROM plain GROUP BY space")}
        return [SpaceInfo(int(i), m, d, counts.get(i, 0), plains.get(i, 0), c, u, json.loads(info))
                for i, m, d, info, c, u in self._db.execute(
                    "SELECT id, model, dtype, info, created, last_used FROM spaces "
                    "ORDER BY last_used DESC")]

    def drop_spaces(self, ids: Iterable[int]) -> int:
        """Delete the given value spaces and their entries (one transaction); entries deleted."""
        ids = list(ids)
        gone = 0
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            for sid in ids:
                gone += self._db.execute("DELETE FROM pairs WHERE space = ?", (sid,)).rowcount
                gone += self._db.execute("DELETE FROM plain WHERE space = ?", (sid,)).rowcount
                self._db.execute("DELETE FROM spaces WHERE id = ?", (sid,))
        if ids:
            self._db.execute("VACUUM")
        return gone

    # ------------------------------------------------------------------------------------------
    # Values

    def get_plain(self, space: int, targets: Sequence[bytes]) -> dict[bytes, float]:
        """Stored ``d(i, plain)`` among ``targets`` (a damaged entry is left out and counted)."""
        found: dict[bytes, float] = {}
        for chunk in chunks(list(dict.fromkeys(targets))):
            marks = ",".join("?" * len(chunk))
            for t, v, crc in self._db.execute(
                    f"SELECT target, value, crc FROM plain WHERE space = ? AND target IN ({marks})",
                    [space, *chunk]):
                if v is None or crc != _crc(space, t, b"", v):
                    self.damaged += 1
                    continue
                found[t] = v
        return found

    def get_pairs(self, space: int, targets: Sequence[bytes],
                  examples: set[bytes] | None = None) -> dict[tuple[bytes, bytes], float]:
        """Stored ``d(i, with j)`` of the given targets, as {(target, example): value}: only with
        the given ``examples`` when given (damaged entries among them are left out and counted)."""
        found: dict[tuple[bytes, bytes], float] = {}
        for chunk in chunks(list(dict.fromkeys(targets))):
            marks = ",".join("?" * len(chunk))
            for t, e, v, crc in self._db.execute(
                    f"SELECT target, example, value, crc FROM pairs WHERE space = ? AND target IN "
                    f"({marks})", [space, *chunk]):
                if examples is not None and e not in examples:
                    continue
                if v is None or crc != _crc(space, t, e, v):
                    self.damaged += 1
                    continue
                found[(t, e)] = v
        return found

    def put_plain(self, space: int, items: Iterable[tuple[bytes, float]]) -> None:
        """Store plain distances in one transaction (all or none)."""
        rows = [(space, t, float(v), _crc(space, t, b"", float(v))) for t, v in items]
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("INSERT OR REPLACE INTO plain VALUES (?, ?, ?, ?)", rows)

    def put_pairs(self, space: int, items: Iterable[tuple[bytes, bytes, float]]) -> None:
        """Store pair distances in one transaction (all or none)."""
        rows = [(space, t, e, float(v), _crc(space, t, e, float(v))) for t, e, v in items]
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("INSERT OR REPLACE INTO pairs VALUES (?, ?, ?, ?, ?)", rows)

    def count_pairs(self, space: int | None = None) -> int:
        """Stored pair entries (of one value space, or all)."""
        if space is None:
            return int(self._db.execute("SELECT COUNT(*) FROM pairs").fetchone()[0])
        return int(self._db.execute("SELECT COUNT(*) FROM pairs WHERE space = ?",
                                    (space,)).fetchone()[0])

    def find_space(self, info: dict) -> int | None:
        """The id of an existing value space, or None (nothing is created)."""
        row = self._db.execute("SELECT id FROM spaces WHERE key = ?", (space_key(info),)).fetchone()
        return None if row is None else int(row[0])

    def count_stored(self, space: int, targets: Sequence[bytes], examples: Sequence[bytes]
                     ) -> tuple[int, int]:
        """(stored pairs among targets x examples, stored plain distances among targets),
        checksums not verified: for estimates before a run."""
        ex = set(examples)
        n = 0
        for chunk in chunks(list(dict.fromkeys(targets))):
            marks = ",".join("?" * len(chunk))
            n += sum(1 for (e,) in self._db.execute(
                f"SELECT example FROM pairs WHERE space = ? AND target IN ({marks})",
                [space, *chunk]) if e in ex)
        plain = len(self.get_plain(space, targets))
        return n, plain
