"""Kernels for a pool (and a target or existing set): computed by one builder, saved, loaded.

One builder serves every kernel kind (utility, embedding) in both forms (dense; sparse with
``neighbours``) and every role (:data:`ROLES`): what differs between them is only which pairs are
computed and how a pair's value is found. :class:`Kernels` holds the raw matrices and gives the
selection kernel in [0, 1] (:meth:`Kernels.scaled`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import scipy.sparse as sp

from .data import Dataset
from .embedding import EmbedStats, embed_texts, embedding_kernel, sample_text
from .errors import KernelError, SelectionError
from .matrices import KernelMatrix, is_sparse, scale_to_unit
from .sparse import DEFAULT_RANDOM, neighbour_pairs
from .utility import UtilityKernel, UtilitySettings

__all__ = ["KERNEL_KINDS", "ROLES", "Kernels", "SparseSpec", "StageProgress", "compute_kernels",
           "save_kernels", "load_kernels", "check_kernels", "kernel_report", "row_hashes",
           "MAX_DENSE_BYTES"]

logger = logging.getLogger(__name__)

KERNEL_KINDS = ("utility", "embedding")
ROLES: dict[str, tuple[str, str]] = {"pool": ("pool", "pool"), "target": ("target", "pool"),
                                     "existing": ("pool", "existing")}
"""Each kernel's (row set, column set): rows are the items helped, columns the examples."""

StageProgress = Callable[[str, int, int], None]
"""``progress(stage label, done, total)``: what the pipeline reports (the engine's per-stage
``PairProgress`` is ``(done, total)``)."""


@dataclass(frozen=True)
class SparseSpec:
    """A sparse kernel: each row's ``k`` nearest columns by sentence embedding plus ``random``
    seeded random ones (``seed``); pairs not computed count as similarity 0."""

    k: int
    random: int = DEFAULT_RANDOM
    seed: int = 0

    def meta(self) -> dict:
        return {"sparse": True, "neighbours": int(self.k), "random_neighbours": int(self.random),
                "neighbour_seed": int(self.seed)}


@dataclass
class Kernels:
    """Raw kernels: pool (n x n, row = item helped), target (m x n), existing (n x p); each a dense
    float32 array or a scipy CSR float32 matrix."""

    kind: str
    pool: KernelMatrix | None = None
    target: KernelMatrix | None = None
    existing: KernelMatrix | None = None
    meta: dict = field(default_factory=dict)
    _scaled: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def sparse(self) -> bool:
        """Whether the pool kernel is sparse (computed with ``neighbours``)."""
        return is_sparse(self.pool)

    def scaled(self, which: str) -> KernelMatrix:
        """The selection kernel in [0, 1]: min-max of the raw utility matrix; embedding as is.

        Made once per kernel and kept (read-only for callers): selection, the heatmap and the
        explanations all ask for it, on every rerun of a studio page.
        """
        raw = getattr(self, which)
        if raw is None:
            raise SelectionError(f"no {which} kernel was computed")
        cached = self._scaled.get(which)
        if cached is not None and cached[0] is raw:
            return cached[1]
        if self.kind == "embedding":
            out = raw.tocsr().astype(np.float32) if is_sparse(raw) else np.asarray(raw, np.float32)
        else:
            out = scale_to_unit(raw)
        self._scaled[which] = (raw, out)
        return out


ROW_HASH = "sha256 of the JSON [prompt, response] (UTF-8), first 16 hex digits"


def row_hashes(ds: Dataset) -> list[str]:
    """Each row's content hash (what the models see: prompt and response), recorded with a
    kernel so that a kernel is never used for rows whose text has changed since."""
    return [hashlib.sha256(json.dumps([p, r], ensure_ascii=False).encode("utf-8")).hexdigest()[:16]
            for p, r in zip(ds.prompts, ds.responses)]


class _Builder:
    """Computes one role's kernel: which pairs (all, or each row's neighbours) and their values
    (utility engine or embedding similarity); models and embeddings are loaded once, when needed."""

    def __init__(self, kind: str, lm: Any, embedder: Any, settings: UtilitySettings | None,
                 progress: StageProgress | None, cancel: threading.Event | None, use_cache: bool,
                 sparse: SparseSpec | None) -> None:
        self.kind, self.lm, self.embedder, self.settings = kind, lm, embedder, settings
        self.progress, self.cancel, self.use_cache, self.sparse = progress, cancel, use_cache, sparse
        self._emb: dict[int, np.ndarray] = {}
        self._engine: UtilityKernel | None = None
        self.embed_stats: dict[str, dict] = {}

    def _stage(self, label: str) -> Callable[[int, int], None] | None:
        progress = self.progress
        return (lambda done, total: progress(label, done, total)) if progress else None

    def embeddings(self, ds: Dataset, role: str) -> np.ndarray:
        if id(ds) not in self._emb:
            if self.embedder is None:
                from .models import load_embedder

                self.embedder = load_embedder()
            texts = [sample_text(p, r) for p, r in zip(ds.prompts, ds.responses)]
            stats = EmbedStats()
            self._emb[id(ds)] = embed_texts(self.embedder, texts, use_cache=self.use_cache,
                                            progress=self._stage(f"embedding {role}"),
                                            stats=stats)
            self.embed_stats[role] = stats.as_dict()
        return self._emb[id(ds)]

    def engine(self) -> UtilityKernel:
        if self._engine is None:
            if self.lm is None:
                from .models import load_causal_lm

                self.lm = load_causal_lm()
            self._engine = UtilityKernel(self.lm, self.settings, use_cache=self.use_cache)
        return self._engine

    def build(self, role: str, rows: Dataset, cols: Dataset, row_role: str, col_role: str
              ) -> tuple[KernelMatrix, dict | None]:
        """The raw kernel of ``role`` (rows helped by columns) and the engine's meta, if any."""
        pairs = None
        if self.sparse is not None:
            pairs = neighbour_pairs(self.embeddings(rows, row_role), self.embeddings(cols, col_role),
                                    self.sparse.k, n_random=self.sparse.random, seed=self.sparse.seed)
        if self.kind == "embedding":
            e_rows, e_cols = self.embeddings(rows, row_role), self.embeddings(cols, col_role)
            return _embedding_values(e_rows, e_cols, pairs), None
        res = self.engine().compute(rows, cols, pairs=pairs, progress=self._stage(f"utility {role}"),
                                    cancel=self.cancel)
        if self.sparse is not None:
            res.meta.update({**self.sparse.meta(),
                             "neighbour_rule": "k most cosine-similar examples by sentence "
                                               "embedding (ties to the lower index) plus seeded "
                                               "random examples"})
        return res.values, res.meta


def _embedding_values(e_rows: np.ndarray, e_cols: np.ndarray,
                      pairs: tuple[np.ndarray, np.ndarray] | None) -> KernelMatrix:
    """(cos + 1) / 2 for every pair (dense) or for the given pairs only (CSR float32)."""
    if pairs is None:
        return embedding_kernel(e_rows, e_cols)
    r, c = pairs
    vals = np.empty(len(r), np.float32)
    step = 1 << 16
    for s in range(0, len(r), step):
        vals[s: s + step] = np.einsum("ij,ij->i", e_rows[r[s: s + step]], e_cols[c[s: s + step]])
    vals = np.clip((vals + 1.0) / 2.0, 0.0, 1.0).astype(np.float32)
    return sp.csr_matrix((vals, (r, c)), shape=(len(e_rows), len(e_cols)), dtype=np.float32)


MAX_DENSE_BYTES = 4 << 30
"""The largest dense kernel set computed (raw values plus the scaled copy selection makes);
above it ``neighbours`` is required: 4 GiB, a dense pool kernel of about 23,000 rows."""


def _check_dense_size(pool: Dataset, target: Dataset | None, existing: Dataset | None,
                      limit: int | None) -> None:
    """SelectionError, before any work, when dense kernels would not fit the stated limit."""
    limit = MAX_DENSE_BYTES if limit is None else int(limit)
    n = len(pool)
    entries = n * n + (len(target) * n if target is not None else 0) + \
        (n * len(existing) if existing is not None else 0)
    need = entries * 4 * 2  # float32 raw kernel and its scaled copy
    if need > limit:
        raise SelectionError(f"dense kernels for {n:,} pool rows need about {need / 2**30:.1f} GiB "
                             f"(limit {limit / 2**30:.1f} GiB); compute a sparse kernel instead "
                             "with --neighbours 32 (neighbours=32 in the API): each row then keeps "
                             "only its 32 nearest rows by sentence embedding plus 4 random ones")


def compute_kernels(pool: Dataset, *, target: Dataset | None = None,
                    existing: Dataset | None = None, kind: str = "utility", lm: Any = None,
                    embedder: Any = None, settings: UtilitySettings | None = None,
                    progress: StageProgress | None = None, cancel: threading.Event | None = None,
                    use_cache: bool = True, neighbours: int | SparseSpec | None = None,
                    neighbour_random: int = DEFAULT_RANDOM, neighbour_seed: int = 0,
                    max_dense_bytes: int | None = None) -> Kernels:
    """Compute the pool kernel and, when given, the target and existing kernels.

    Dense kernels larger than ``max_dense_bytes`` (default :data:`MAX_DENSE_BYTES`) are refused
    before any work, with the memory they would need and the sparse alternative.

    With ``neighbours=K`` (or a :class:`SparseSpec`) each kernel is sparse (scipy CSR float32):
    every row gets values only for its K nearest columns by sentence embedding plus
    ``neighbour_random`` seeded random ones.
    """
    if kind not in KERNEL_KINDS:
        raise SelectionError(f"unknown kernel '{kind}'; use one of {KERNEL_KINDS} or a .npy file")
    sparse = (neighbours if isinstance(neighbours, SparseSpec) or not neighbours
              else SparseSpec(int(neighbours), int(neighbour_random), int(neighbour_seed)))
    if sparse and sparse.k < 1:
        raise SelectionError("neighbours must be at least 1")
    if not sparse:
        _check_dense_size(pool, target, existing, max_dense_bytes)
    start = time.time()
    sets = {"pool": pool, "target": target, "existing": existing}
    meta: dict[str, Any] = {"kind": kind, **{f"{r}_ids": ds.ids for r, ds in sets.items()
                                             if ds is not None},
                            **{f"{r}_hashes": row_hashes(ds) for r, ds in sets.items()
                               if ds is not None},
                            "row_hash": ROW_HASH}
    builder = _Builder(kind, lm, embedder, settings, progress, cancel, use_cache, sparse or None)
    kernels = Kernels(kind, meta=meta)
    for role, (row_role, col_role) in ROLES.items():
        rows, cols = sets[row_role], sets[col_role]
        if rows is None or cols is None:
            continue
        values, role_meta = builder.build(role, rows, cols, row_role, col_role)
        setattr(kernels, role, values)
        if role_meta is not None:
            meta[role] = role_meta
    if sparse:
        meta.update(sparse.meta())
    if builder.embedder is not None:
        meta["embedder"] = getattr(builder.embedder, "delift_name", str(builder.embedder))
        meta["embeddings"] = builder.embed_stats
    if kind == "embedding":
        meta.update({"similarity": "(cosine + 1) / 2", "text": "prompt + newline + response"})
    meta["seconds"] = round(time.time() - start, 3)
    logger.info("%s kernels (%s) in %.1f s", kind, ", ".join(r for r in ROLES
                                                            if getattr(kernels, r) is not None),
                meta["seconds"])
    return kernels


def kernel_report(kernels: Kernels) -> list[str]:
    """What a kernel computation actually did, one line per stage: texts embedded or reused,
    utility pairs computed or reused from the cache, damaged cache entries recomputed (for the
    CLI's console and the studio, so neither guesses "from the cache")."""
    meta = kernels.meta
    lines = []
    for role, st in (meta.get("embeddings") or {}).items():
        line = f"embedding {role}: {st['computed']} of {st['total']} texts computed, {st['reused']} " \
               "reused from the cache"
        if st.get("damaged_recomputed"):
            line += f", {st['damaged_recomputed']} damaged cache entries recomputed"
        lines.append(line)
    for role in ROLES:
        m = meta.get(role)
        if not isinstance(m, dict) or "pairs_computed" not in m:
            continue
        n_t, n_e = m.get("shape", [0, 0])
        total = int(m.get("nnz", n_t * n_e)) + n_t
        computed = int(m["pairs_computed"])
        line = (f"utility {role}: {computed} of {total} passes computed, {total - computed} reused "
                f"from the cache ({m.get('blocks_reused', 0)} of {m.get('blocks_total', 0)} blocks)")
        damaged = m.get("blocks_damaged_recomputed") or []
        if damaged:
            line += f"; {len(damaged)} damaged cache blocks recomputed"
        lines.append(line)
    return lines


def _load_matrix(path: str | Path, shape: tuple[int, int], what: str) -> KernelMatrix:
    """A kernel file (.npy dense, memory-mapped; .npz sparse), checked for shape, numeric type and
    finite values; every problem is a :class:`KernelError` naming the file."""
    p = Path(path)
    if p.suffix == ".npy" and not p.exists() and p.with_suffix(".npz").exists():
        p = p.with_suffix(".npz")  # a sparse kernel saved by `delift kernel --neighbours`
    if not p.exists():
        raise KernelError(f"{path}: no such kernel file")
    if p.is_dir():
        raise KernelError(f"{path}: is a folder, not a kernel file")
    if p.suffix == ".npz":
        try:
            m = sp.load_npz(p).tocsr()
        except Exception as e:
            raise KernelError(f"{p}: not a readable sparse .npz matrix ({e})") from None
        values = m.data
    else:
        try:
            m = np.load(p, mmap_mode="r", allow_pickle=False)
        except Exception as e:
            raise KernelError(f"{p}: not a readable .npy matrix ({type(e).__name__}: {e})") from None
        values = m
    if not np.issubdtype(values.dtype, np.number) or np.issubdtype(values.dtype, np.complexfloating):
        raise KernelError(f"{p}: the {what} kernel holds non-numeric values (dtype {values.dtype})")
    if m.shape != shape:
        raise KernelError(f"{p}: the {what} kernel has shape {tuple(m.shape)}, expected "
                          f"{shape} for this data")
    _check_finite(m, f"{p}: the {what} kernel")
    if is_sparse(m):
        return m.astype(np.float32)
    return np.asarray(m, dtype=np.float32)


def _check_finite(m: KernelMatrix, what: str) -> None:
    """KernelError naming the first NaN or infinite entry (row, column), in row blocks."""
    if is_sparse(m):
        csr = m.tocsr()
        bad = np.flatnonzero(~np.isfinite(csr.data))
        if bad.size:
            row = int(np.searchsorted(csr.indptr, bad[0], side="right") - 1)
            col = int(csr.indices[bad[0]])
            raise KernelError(f"{what} holds {_kind(csr.data[bad[0]])} at row {row}, column {col}")
        return
    step = max(1, (1 << 22) // max(1, m.shape[1] if m.ndim == 2 else 1))
    for r in range(0, m.shape[0], step):
        chunk = np.asarray(m[r: r + step])
        if not np.isfinite(chunk).all():
            i, j = np.argwhere(~np.isfinite(chunk))[0]
            raise KernelError(f"{what} holds {_kind(chunk[i, j])} at row {r + int(i)}, "
                              f"column {int(j)}")


def _kind(x: Any) -> str:
    return "NaN" if np.isnan(x) else "an infinite value"


def save_kernels(kernels: Kernels, folder: str | Path) -> dict[str, Path]:
    """Write kernels the way :func:`load_kernels` reads them back: ``kernel_<which>.npy`` (dense)
    or ``.npz`` (scipy sparse, from ``neighbours``) for pool/target/existing, and
    ``kernel_meta.json`` (how they were made, with each set's row ids and content hashes, checked
    on loading)."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for which in ROLES:
        m = getattr(kernels, which)
        if m is None:
            continue
        if is_sparse(m):
            paths[which] = out / f"kernel_{which}.npz"
            sp.save_npz(paths[which], m.tocsr())
        else:
            paths[which] = out / f"kernel_{which}.npy"
            np.save(paths[which], m)
    paths["meta"] = out / "kernel_meta.json"
    paths["meta"].write_text(json.dumps(kernels.meta, indent=1, default=str))
    return paths


def _check_rows(saved: dict, role: str, ds: Dataset, meta_file: Path) -> None:
    """KernelError unless the kernel's ``role`` rows are exactly ``ds``'s rows (ids, order and
    content), naming the first rows that differ."""
    ids, hashes = saved.get(f"{role}_ids"), saved.get(f"{role}_hashes")
    if ids is None or hashes is None:
        raise KernelError(f"{meta_file}: records no {role} row ids and content hashes (an older "
                          f"kernel folder), so it cannot be checked against the {role} given; "
                          "recompute it, or pass --trust-kernel (trust=True) if it was computed "
                          "for exactly these rows in this order")
    if len(ids) != len(ds):
        raise KernelError(f"{meta_file}: the kernel was computed for {len(ids)} {role} rows, the "
                          f"{role} given has {len(ds)}")
    mine = row_hashes(ds)
    differ = [k for k in range(len(ds)) if ids[k] != ds.ids[k] or hashes[k] != mine[k]]
    if differ:
        shown = ", ".join(f"{k} (id {ds.ids[k]!r}"
                          + (f", kernel has id {ids[k]!r})" if ids[k] != ds.ids[k]
                             else ": text changed)") for k in differ[:5])
        raise KernelError(f"{meta_file}: {len(differ)} of {len(ds)} {role} rows differ from the "
                          f"rows the kernel was computed for, first: rows {shown}; recompute the "
                          "kernel for this data")


def load_kernels(path: str | Path, pool: Dataset, *, target: Dataset | None = None,
                 existing: Dataset | None = None, target_kernel: str | Path | None = None,
                 existing_kernel: str | Path | None = None, trust: bool = False) -> Kernels:
    """Kernels from a ``delift kernel`` output folder or a pool ``.npy``/``.npz`` file.

    The folder's ``kernel_meta.json`` (or one beside a file) must record the rows of each set:
    ids, order and content hashes are checked against the data given, and a kernel of other rows
    is refused with the first differing rows named. A file without such a record is accepted only
    with ``trust=True`` (the CLI's ``--trust-kernel``). Shapes, numeric type and finite values are
    always checked. Matrices from files are treated as raw utilities (min-max scaled for selection).
    """
    p = Path(path)
    if not p.exists() and not (p.suffix == ".npy" and p.with_suffix(".npz").exists()):
        raise KernelError(f"{path}: no such kernel file or folder")
    folder = p if p.is_dir() else p.parent
    pool_file = p / "kernel_pool.npy" if p.is_dir() else p
    if p.is_dir() and not pool_file.exists() and (p / "kernel_pool.npz").exists():
        pool_file = p / "kernel_pool.npz"
    n = len(pool)
    meta: dict[str, Any] = {"kind": "file", "pool_file": str(pool_file), "trusted": bool(trust)}
    meta_file = folder / "kernel_meta.json"
    saved: dict | None = None
    if meta_file.exists():
        try:
            saved = json.loads(meta_file.read_text())
        except (OSError, ValueError) as e:
            raise KernelError(f"{meta_file}: not readable JSON ({e})") from None
        meta["computed"] = saved
    if not trust:
        if saved is None:
            raise KernelError(f"{pool_file}: no kernel_meta.json beside it says which rows this "
                              "kernel is for, so it cannot be checked against the pool; give the "
                              "`delift kernel` output folder, or pass --trust-kernel "
                              "(trust=True) if it was computed for exactly these rows in this order")
        for role, ds in (("pool", pool), ("target", target), ("existing", existing)):
            if ds is not None:
                _check_rows(saved, role, ds, meta_file)
    kind = (saved or {}).get("kind", "file")
    k = Kernels("embedding" if kind == "embedding" else "utility",
                pool=_load_matrix(pool_file, (n, n), "pool"), meta=meta)
    if target is not None:
        f = target_kernel or folder / "kernel_target.npy"
        k.target = _load_matrix(f, (len(target), n), "target")
    if existing is not None:
        f = existing_kernel or folder / "kernel_existing.npy"
        k.existing = _load_matrix(f, (n, len(existing)), "existing")
    return k


def check_kernels(kernels: Kernels, pool_size: int) -> None:
    """KernelError unless the kernels fit a pool of ``pool_size`` rows (pool n x n, target m x n,
    existing n x p) and hold only finite numbers: checked where the API takes kernels."""
    want = {"pool": (pool_size, pool_size), "target": (None, pool_size),
            "existing": (pool_size, None)}
    for role, (rows, cols) in want.items():
        m = getattr(kernels, role)
        if m is None:
            continue
        shape = getattr(m, "shape", None)
        if shape is None or len(shape) != 2 or (rows is not None and shape[0] != rows) or \
                (cols is not None and shape[1] != cols):
            expect = f"({rows if rows is not None else 'any'}, {cols if cols is not None else 'any'})"
            raise KernelError(f"the {role} kernel has shape {tuple(shape) if shape else '?'}, "
                              f"expected {expect} for a pool of {pool_size} rows")
        _check_finite(m, f"the {role} kernel")
