"""Sentence embeddings stored per row, by content, in SQLite: a long embedding run keeps what it
finished (resumable), and a new data version embeds only its new or edited rows.

One table keyed by (embedder, SHA-256 of the text); each value is the float32 vector with a
CRC-free check that its byte length matches the stored dimension (SQLite's own page checksums
are off by default, so a damaged vector is detected by length and finiteness and recomputed).
WAL mode: the studio and a CLI run can use the store at once; every batch is one transaction,
so a killed run loses at most the batch it was in.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from delift_core.stores.sqlite_store import chunks, connect

__all__ = ["EmbeddingStore", "text_key"]

logger = logging.getLogger(__name__)


def text_key(text: str) -> str:
    """The content key of one embedded text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class EmbeddingStore:
    """Per-text vectors of one or more embedders in one SQLite file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.damaged = 0
        self._db = connect(self.path)
        self._db.execute("CREATE TABLE IF NOT EXISTS vectors (embedder TEXT NOT NULL, "
                         "key TEXT NOT NULL, dim INTEGER NOT NULL, vec BLOB NOT NULL, "
                         "PRIMARY KEY (embedder, key)) WITHOUT ROWID")

    def close(self) -> None:
        self._db.close()

    def get_many(self, embedder: str, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """The stored vectors among ``keys`` (a damaged one is left out and counted)."""
        found: dict[str, np.ndarray] = {}
        unique = list(dict.fromkeys(keys))
        for chunk in chunks(unique):
            marks = ",".join("?" * len(chunk))
            for key, dim, blob in self._db.execute(
                    f"SELECT key, dim, vec FROM vectors WHERE embedder = ? AND key IN ({marks})",
                    [embedder, *chunk]):
                vec = np.frombuffer(blob, dtype=np.float32) if len(blob) == 4 * dim else None
                if vec is None or not np.isfinite(vec).all():
                    self.damaged += 1
                    continue
                found[key] = vec
        return found

    def put_many(self, embedder: str, items: Iterable[tuple[str, np.ndarray]]) -> None:
        """Store vectors in one transaction (all or none)."""
        rows = [(embedder, k, int(v.shape[0]), np.ascontiguousarray(v, np.float32).tobytes())
                for k, v in items]
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?, ?, ?)", rows)
