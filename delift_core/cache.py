"""A content-keyed on-disk store of array blocks, so long kernel runs resume and damage is caught.

Each block is an ``.npy`` file written atomically, with a sidecar holding its SHA-256. A block whose
file is missing, unreadable or does not match its checksum counts as absent and is recomputed.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["BlockStore", "content_key"]

logger = logging.getLogger(__name__)


def content_key(payload: Any) -> str:
    """A stable SHA-256 over a JSON-serialisable description of a computation."""
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    """Write through a temporary file and rename, so a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class BlockStore:
    """Blocks of one computation under ``root/key``; ``info.json`` describes what they hold."""

    def __init__(self, root: Path, key: str, info: dict | None = None) -> None:
        self.path = Path(root) / key
        self.path.mkdir(parents=True, exist_ok=True)
        self.damaged: list[str] = []
        if info is not None and not (self.path / "info.json").exists():
            _atomic_write(self.path / "info.json",
                          json.dumps(info, indent=1, default=str).encode("utf-8"))

    def _damaged(self, name: str, why: str) -> None:
        """Note a block that has to be recomputed."""
        logger.debug("%s: block %s is %s; it will be recomputed", self.path, name, why)
        self.damaged.append(name)

    def _files(self, name: str) -> tuple[Path, Path]:
        return self.path / f"{name}.npy", self.path / f"{name}.sha256"

    def get(self, name: str) -> np.ndarray | None:
        """The stored block, or None when it is absent or damaged (damage is noted in ``damaged``)."""
        data_path, sum_path = self._files(name)
        if not data_path.exists():
            return None
        try:
            data = data_path.read_bytes()
            expected = sum_path.read_text().strip()
        except OSError:
            self._damaged(name, "unreadable")
            return None
        if hashlib.sha256(data).hexdigest() != expected:
            self._damaged(name, "damaged (checksum mismatch)")
            return None
        try:
            return np.load(io.BytesIO(data), allow_pickle=False)
        except (ValueError, OSError):
            self._damaged(name, "not a readable array")
            return None

    def put(self, name: str, array: np.ndarray) -> None:
        """Store a block; the checksum is written last, so a torn write reads as absent."""
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
        data = buf.getvalue()
        data_path, sum_path = self._files(name)
        sum_path.unlink(missing_ok=True)
        _atomic_write(data_path, data)
        _atomic_write(sum_path, hashlib.sha256(data).hexdigest().encode())

    def has(self, name: str) -> bool:
        """Whether an intact copy of the block is stored."""
        return self.get(name) is not None
