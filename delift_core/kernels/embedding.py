"""Sentence-embedding kernels for DELIFT (SE): cosine similarity rescaled to [0, 1] as (s + 1) / 2.

Embeddings are cached per text by content (:mod:`delift_core.stores.embedding_store`), computed in
length-sorted batches (less padding) and checkpointed every ``commit_rows`` rows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from delift_core.stores.embedding_store import EmbeddingStore, text_key
from delift_core.lm.models import cache_dir

__all__ = ["EmbedStats", "embed_texts", "embed_rows", "embedding_kernel", "sample_text"]

logger = logging.getLogger(__name__)


@dataclass
class EmbedStats:
    """What one :func:`embed_texts` call did: texts reused from the store, computed, and damaged
    entries found (and recomputed)."""

    total: int = 0
    reused: int = 0
    computed: int = 0
    damaged: int = 0

    def as_dict(self) -> dict:
        return {"total": self.total, "reused": self.reused, "computed": self.computed,
                "damaged_recomputed": self.damaged}


def sample_text(prompt: str, response: str) -> str:
    """The text embedded for a sample: its prompt and its response."""
    return f"{prompt}\n{response}"


def embed_texts(embedder: Any, texts: Sequence[str], *, batch_size: int = 64,
                use_cache: bool = True, commit_rows: int = 2048,
                progress: Callable[[int, int], None] | None = None,
                stats: EmbedStats | None = None) -> np.ndarray:
    """Unit-normalised float32 embeddings, one row per text.

    Texts already in the store (same embedder, same content) are reused; the rest are embedded
    longest first in chunks of ``commit_rows`` (each chunk stored in one transaction, so a
    stopped run resumes), and ``progress(done, total)`` counts only the texts computed. ``stats``
    (if given) is filled with what happened.
    """
    stats = stats if stats is not None else EmbedStats()
    name = getattr(embedder, "delift_name", type(embedder).__name__)
    keys = [text_key(t) for t in texts]
    stats.total = len(texts)
    store = EmbeddingStore(cache_dir() / "embeddings.sqlite") if use_cache else None
    try:
        found = store.get_many(name, keys) if store else {}
        stats.damaged = store.damaged if store else 0
        todo = list(dict.fromkeys(k for k in keys if k not in found))
        text_of = {k: t for k, t in zip(keys, texts)}
        todo.sort(key=lambda k: -len(text_of[k]))  # similar lengths share a batch: less padding
        stats.reused = len(texts) - sum(1 for k in keys if k not in found)
        done = 0
        if progress and todo:
            progress(0, len(todo))
        for s in range(0, len(todo), commit_rows):
            chunk = todo[s: s + commit_rows]
            vecs = np.asarray(embedder.encode([text_of[k] for k in chunk], batch_size=batch_size,
                                              convert_to_numpy=True, normalize_embeddings=True,
                                              show_progress_bar=False), np.float32)
            found.update(zip(chunk, vecs))
            if store:
                store.put_many(name, zip(chunk, vecs))
            done += len(chunk)
            if progress:
                progress(done, len(todo))
        stats.computed = len(texts) - stats.reused
    finally:
        if store:
            store.close()
    if not texts:
        return np.zeros((0, 0), np.float32)
    out = np.stack([found[k] for k in keys]).astype(np.float32, copy=False)
    logger.debug("embeddings with %s: %d reused, %d computed", name, stats.reused, stats.computed)
    return out


def embed_rows(embedder: Any, rows: Any, **options: Any) -> np.ndarray:
    """Unit embeddings of a data set's samples (each prompt + newline + response, as every kernel,
    map and audit sees a row); ``options`` go to :func:`embed_texts` (cache, progress, stats)."""
    return embed_texts(embedder, [sample_text(p, r) for p, r in zip(rows.prompts, rows.responses)],
                       **options)


def embedding_kernel(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """(cos + 1) / 2 between unit-normalised row and column embeddings, float32 in [0, 1]."""
    sim = np.asarray(rows, np.float32) @ np.asarray(cols, np.float32).T
    return np.clip((sim + 1.0) / 2.0, 0.0, 1.0).astype(np.float32)
