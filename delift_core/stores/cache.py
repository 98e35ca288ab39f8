"""The DELIFT cache folder: what ``delift cache info|prune|clear`` shows and removes, and the
content-keyed block store the evaluation keeps its results in.

Utility kernel values live in the pair store (:mod:`delift_core.stores.pairstore`,
``<cache>/utility/pairs.sqlite``), embeddings in ``<cache>/embeddings.sqlite``. The old kernel
block cache (``<cache>/kernels``, one folder of ``.npy`` blocks per whole pool) is no longer read
or written: it is listed by ``info`` and removed by ``clear``, and its presence changes nothing.

:class:`BlockStore`: each block an ``.npy`` file written atomically, with a sidecar holding its
SHA-256; a block whose file is missing, unreadable or does not match its checksum counts as absent
and is recomputed (the evaluation's item results and adapters).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import threading
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["BlockStore", "atomic_write", "content_key", "cache_info", "info_lines", "prune", "clear"]

logger = logging.getLogger(__name__)


def content_key(payload: Any) -> str:
    """A stable SHA-256 over a JSON-serialisable description of a computation."""
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def atomic_write(path: Path, data: bytes) -> None:
    """Write through a temporary file and rename, so a reader never sees half a file (the
    temporary name is per process and thread: the studio's sessions write from threads)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
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
            atomic_write(self.path / "info.json",
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
        atomic_write(data_path, data)
        atomic_write(sum_path, hashlib.sha256(data).hexdigest().encode())

    def has(self, name: str) -> bool:
        """Whether an intact copy of the block is stored."""
        return self.get(name) is not None


# ----------------------------------------------------------------------------------------------
# The cache folder as a whole


def _size(path: Path) -> int:
    """Bytes of a file (with its SQLite -wal/-shm companions) or of a folder tree."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return sum(Path(f"{path}{s}").stat().st_size for s in ("", "-wal", "-shm")
               if Path(f"{path}{s}").exists())


def _paths() -> dict[str, Path]:
    from delift_core.lm.models import cache_dir
    from delift_core.kernels.utility import store_path

    root = cache_dir()
    return {"pairs": store_path(), "embeddings": root / "embeddings.sqlite",
            "old_blocks": root / "kernels"}


def cache_info() -> dict:
    """The pair store's size and value spaces (model, dtype, entries, last used), the embedding
    store's size, and the old block cache folder's, if any; nothing is created."""
    from delift_core.stores.pairstore import PairStore

    paths = _paths()
    out: dict[str, Any] = {"pair_store": str(paths["pairs"]), "spaces": [],
                           "sizes": {k: _size(p) for k, p in paths.items() if p.exists()}}
    if paths["pairs"].exists():
        store = PairStore(paths["pairs"])
        try:
            out["spaces"] = [{"id": s.id, "model": s.model, "dtype": s.dtype, "pairs": s.pairs,
                              "plain": s.plain, "last_used": s.last_used}
                             for s in store.spaces()]
        finally:
            store.close()
    return out


def info_lines(info: dict) -> list[str]:
    """``cache_info()`` as the lines ``delift cache info`` prints."""
    sizes = info["sizes"]
    lines = [f"pair store: {info['pair_store']} ({sizes.get('pairs', 0) / 2**20:.1f} MiB)"]
    if not info["spaces"]:
        lines.append("  no stored utility values")
    for s in info["spaces"]:
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(s["last_used"]))
        lines.append(f"  {s['model']} ({s['dtype']}): {s['pairs']:,} pairs, {s['plain']:,} plain "
                     f"distances, last used {used}")
    if "embeddings" in sizes:
        lines.append(f"embedding store: {sizes['embeddings'] / 2**20:.1f} MiB")
    if "old_blocks" in sizes:
        lines.append(f"old block cache (no longer read; `delift cache clear` removes it): "
                     f"{sizes['old_blocks'] / 2**20:.1f} MiB")
    return lines


def prune(model: str | None = None, older_than_days: float | None = None) -> dict:
    """Delete the pair store's value spaces whose model contains ``model`` and/or that were not
    used for ``older_than_days``; returns the spaces and entries deleted."""
    from delift_core.stores.pairstore import PairStore

    path = _paths()["pairs"]
    if not path.exists():
        return {"spaces": 0, "entries": 0}
    store = PairStore(path)
    try:
        now = time.time()
        ids = [s.id for s in store.spaces()
               if (model is None or model in s.model or model in str(s.info.get("model", "")))
               and (older_than_days is None or now - s.last_used > older_than_days * 86400)]
        entries = store.drop_spaces(ids)
    finally:
        store.close()
    logger.info("pruned %d value spaces (%d entries) from %s", len(ids), entries, path)
    return {"spaces": len(ids), "entries": entries}


def clear() -> list[str]:
    """Remove the pair store, the embedding store and the old block cache folder (the
    dequantised models stay); returns what was removed."""
    removed = []
    for p in _paths().values():
        if p.is_dir():
            shutil.rmtree(p)
            removed.append(str(p))
            continue
        for suffix in ("", "-wal", "-shm"):
            f = Path(f"{p}{suffix}")
            if f.exists():
                f.unlink()
                if not suffix:
                    removed.append(str(p))
    return removed
