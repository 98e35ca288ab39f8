"""2-D maps of sentence embeddings: a seeded UMAP (or PCA) projection and k-means clusters.

Used by the studio's Explore page and usable from a notebook; UMAP and k-means need the
``studio`` extra (``pip install "delift-studio[studio]"``), PCA does not:

    emb = embed_texts(load_embedder(), texts)
    xy = project_2d(emb, seed=0)            # (n, 2), same input + seed -> same map
    labels = cluster_labels(emb, k=8, seed=0)
"""

from __future__ import annotations

import warnings

import numpy as np

from delift_core.errors import optional_import

__all__ = ["PROJECTIONS", "cluster_labels", "pca_2d", "project_2d"]

PROJECTIONS = ("umap", "pca")


def pca_2d(embeddings: np.ndarray) -> np.ndarray:
    """The first two principal components (deterministic up to sign, which we fix)."""
    x = np.asarray(embeddings, np.float64)
    n = x.shape[0]
    if n == 0:
        return np.zeros((0, 2), np.float32)
    x = x - x.mean(axis=0, keepdims=True)
    if n == 1:
        return np.zeros((1, 2), np.float32)
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    xy = u[:, :2] * s[:2]
    if xy.shape[1] < 2:
        xy = np.hstack([xy, np.zeros((n, 2 - xy.shape[1]))])
    # fix the sign of each axis so the largest coordinate is positive
    for c in range(2):
        k = int(np.argmax(np.abs(xy[:, c])))
        if xy[k, c] < 0:
            xy[:, c] = -xy[:, c]
    return xy.astype(np.float32)


def project_2d(embeddings: np.ndarray, *, method: str = "umap", seed: int = 0,
               n_neighbors: int = 15, min_dist: float = 0.1) -> np.ndarray:
    """Project embeddings to 2-D with UMAP (cosine metric, seeded) or PCA.

    Tiny inputs (fewer than 6 points) use PCA, where UMAP is not defined well.
    """
    if method not in PROJECTIONS:
        raise ValueError(f"unknown projection '{method}'; use one of {PROJECTIONS}")
    x = np.asarray(embeddings, np.float32)
    n = x.shape[0]
    if method == "pca" or n < 6:
        return pca_2d(x)
    # imported lazily: it compiles with numba on first use, and only the studio extra installs it
    umap = optional_import("umap", "studio", "the UMAP map", package="umap-learn")

    kwargs = dict(n_components=2, n_neighbors=max(2, min(n_neighbors, n - 1)),
                  min_dist=min_dist, metric="cosine", random_state=seed, n_jobs=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            xy = umap.UMAP(**kwargs).fit_transform(x)
        except Exception:  # spectral init can fail on very small or degenerate inputs
            xy = umap.UMAP(init="random", **kwargs).fit_transform(x)
    return np.asarray(xy, np.float32)


def cluster_labels(embeddings: np.ndarray, k: int = 8, *, seed: int = 0) -> np.ndarray:
    """k-means cluster labels (0..k-1), numbered by cluster size (largest first)."""
    KMeans = optional_import("sklearn.cluster", "studio", "k-means clustering",
                             package="scikit-learn").KMeans

    x = np.asarray(embeddings, np.float32)
    n = x.shape[0]
    if n == 0:
        return np.zeros(0, int)
    k = max(1, min(int(k), n))
    raw = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(x)
    sizes = np.bincount(raw, minlength=k)
    # relabel: largest cluster 0, ties by first appearance
    first = np.array([np.flatnonzero(raw == c)[0] if sizes[c] else n for c in range(k)])
    rank = sorted(range(k), key=lambda c: (-sizes[c], first[c]))
    remap = np.empty(k, int)
    remap[rank] = np.arange(k)
    return remap[raw]
