"""Sentence-embedding kernels for DELIFT (SE): cosine similarity rescaled to [0, 1] as (s + 1) / 2."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from .cache import BlockStore, content_key
from .models import cache_dir

__all__ = ["embed_texts", "embedding_kernel", "sample_text"]


def sample_text(prompt: str, response: str) -> str:
    """The text embedded for a sample: its prompt and its response."""
    return f"{prompt}\n{response}"


def embed_texts(embedder: Any, texts: Sequence[str], *, batch_size: int = 64,
                use_cache: bool = True,
                progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Unit-normalised float32 embeddings, cached on disk by embedder and text content."""
    name = getattr(embedder, "delift_name", type(embedder).__name__)
    store = None
    if use_cache:
        key = content_key({"embedder": name, "texts": list(texts)})
        store = BlockStore(cache_dir() / "embeddings", key, {"embedder": name, "n": len(texts)})
        hit = store.get("embeddings")
        if hit is not None and hit.shape[0] == len(texts):
            if progress:
                progress(len(texts), len(texts))
            return hit
    out = []
    for start in range(0, len(texts), batch_size):
        chunk = list(texts[start: start + batch_size])
        out.append(embedder.encode(chunk, batch_size=batch_size, convert_to_numpy=True,
                                   normalize_embeddings=True, show_progress_bar=False))
        if progress:
            progress(min(len(texts), start + batch_size), len(texts))
    emb = np.concatenate(out).astype(np.float32) if out else np.zeros((0, 0), np.float32)
    if store is not None:
        store.put("embeddings", emb)
    return emb


def embedding_kernel(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """(cos + 1) / 2 between unit-normalised row and column embeddings, float32 in [0, 1]."""
    sim = np.asarray(rows, np.float32) @ np.asarray(cols, np.float32).T
    return np.clip((sim + 1.0) / 2.0, 0.0, 1.0).astype(np.float32)
