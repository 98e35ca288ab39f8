"""Kernels for a pool (and a target or existing set), computed by one builder (files:
:mod:`delift_core.kernels.files`).

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
from typing import Any, Callable

import numpy as np
import scipy.sparse as sp

from delift_core import settings as spec
from delift_core.data.dataset import Dataset
from delift_core.kernels.diagonal import diagonal_record, scale_with_diagonal, self_pairs
from delift_core.kernels.embedding import EmbedStats, embed_rows, embedding_kernel
from delift_core.errors import KernelError, SelectionError
from delift_core.kernels.learned import LearnedSpec, build_learned, check_rows, fidelity_line
from delift_core.kernels.matrices import KernelMatrix, is_sparse
from delift_core.kernels.meta import KernelMeta
from delift_core.kernels.sparse import neighbour_pairs
from delift_core.kernels.utility import UtilityKernel
from delift_core.kernels.utility_settings import UtilitySettings

__all__ = ["ROLES", "Kernels", "SparseSpec", "StageProgress", "check_learned_sizes",
           "compute_kernels", "kernel_report",
           "row_hashes", "MAX_DENSE_BYTES"]

logger = logging.getLogger(__name__)

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
    random: int = spec.default("neighbour_random")
    seed: int = spec.default("neighbour_seed")

    def __post_init__(self) -> None:
        object.__setattr__(self, "k", spec.check("neighbours", self.k))
        object.__setattr__(self, "random", spec.check("neighbour_random", self.random))
        object.__setattr__(self, "seed", spec.check("neighbour_seed", self.seed))

    def meta(self) -> dict:
        return {"neighbours": int(self.k), "random_neighbours": int(self.random),
                "neighbour_seed": int(self.seed)}


@dataclass
class Kernels:
    """Raw kernels: pool (n x n, row = item helped), target (m x n), existing (n x p); each a dense
    float32 array or a scipy CSR float32 matrix."""

    kind: str
    pool: KernelMatrix | None = None
    target: KernelMatrix | None = None
    existing: KernelMatrix | None = None
    exact: dict[str, Any] = field(default_factory=dict)
    """Of a learned kernel: per kernel (pool, target, existing), a 0/1 CSR matrix marking the
    exact values; every other value is predicted (:mod:`delift_core.kernels.learned`)."""
    meta: KernelMeta = None  # type: ignore[assignment]
    """How they were made (:class:`~delift_core.kernels.meta.KernelMeta`; a dict is read as one)."""
    diagonal: str = spec.default("diagonal")
    """Self-pair policy of utility kernels in selection (:mod:`delift_core.kernels.diagonal`)."""
    _scaled: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.meta = KernelMeta.from_json(self.meta if self.meta is not None else
                                         {"kind": self.kind})
        self.diagonal = spec.check("diagonal", self.diagonal)

    @property
    def sparse(self) -> bool:
        """Whether the pool kernel is sparse (computed with ``neighbours``)."""
        return is_sparse(self.pool)

    def with_diagonal(self, policy: str) -> "Kernels":
        """The same raw kernels under another diagonal policy (recorded in ``meta['diagonal']``)."""
        policy = spec.check("diagonal", policy)
        if policy == self.diagonal and self.meta.diagonal is not None:
            return self  # the same policy: keep the scaled kernels already made
        k = Kernels(self.kind, pool=self.pool, target=self.target, existing=self.existing,
                    exact=self.exact, meta=self.meta, diagonal=policy)
        k.meta = k.meta.with_(diagonal=k.diagonal_record())
        return k

    def diagonal_record(self) -> dict:
        """The diagonal policy, whether it applies, and each kernel's number of self pairs."""
        return diagonal_record(self.kind, self.diagonal, self.meta,
                               {w: getattr(getattr(self, w), "shape", None) for w in ROLES})

    def scaled(self, which: str) -> KernelMatrix:
        """The selection kernel in [0, 1]: min-max of the raw utility matrix with its self pairs
        set by :attr:`diagonal` (:func:`delift_core.kernels.diagonal.scale_with_diagonal`); embedding
        as is.

        Made once per kernel and kept (read-only for callers): selection, the heatmap and the
        explanations all ask for it, on every rerun of a studio page.
        """
        raw = getattr(self, which)
        if raw is None:
            raise SelectionError(f"no {which} kernel was computed")
        cached = self._scaled.get(which)
        if cached is not None and cached[0] is raw and cached[2] == self.diagonal:
            return cached[1]
        if self.kind == "embedding":
            out = raw.tocsr().astype(np.float32) if is_sparse(raw) else np.asarray(raw, np.float32)
        else:
            out = scale_with_diagonal(raw, self.diagonal, self_pairs(which, self.meta, raw.shape))
        self._scaled[which] = (raw, out, self.diagonal)
        return out


ROW_HASH = "sha256 of the JSON [prompt, response] (UTF-8), first 16 hex digits"


def row_hashes(ds: Dataset) -> list[str]:
    """Each row's content hash (what the models see: prompt and response), recorded with a
    kernel so that a kernel is never used for rows whose text has changed since."""
    return [hashlib.sha256(json.dumps([p, r], ensure_ascii=False).encode("utf-8")).hexdigest()[:16]
            for p, r in zip(ds.prompts, ds.responses)]


def differing_rows(ids: list[str], hashes: list[str], ds: Dataset, what: str,
                   rows: str = "rows") -> str | None:
    """None when ``ids`` and ``hashes`` (recorded with a kernel or scores) are exactly ``ds``'s
    rows; else what differs, naming the first rows ("2 of 20 rows differ from the rows the
    <what> computed for, first: rows 3 (id 'x': text changed), ...")."""
    mine = row_hashes(ds)
    differ = [k for k in range(len(ds)) if ids[k] != ds.ids[k] or hashes[k] != mine[k]]
    if not differ:
        return None
    shown = ", ".join(f"{k} (id {ds.ids[k]!r}"
                      + (f", {what} has id {ids[k]!r})" if ids[k] != ds.ids[k]
                         else ": text changed)") for k in differ[:5])
    return (f"{len(differ)} of {len(ds)} {rows} differ from the rows the {what} was computed "
            f"for, first: rows {shown}")


class _Builder:
    """Computes one role's kernel: which pairs (all, or each row's neighbours) and their values
    (utility engine or embedding similarity); models and embeddings are loaded once, when needed."""

    def __init__(self, kind: str, lm: Any, embedder: Any, settings: UtilitySettings | None,
                 progress: StageProgress | None, cancel: threading.Event | None, use_cache: bool,
                 sparse: SparseSpec | None, embed_batch_size: int) -> None:
        self.kind, self.lm, self.embedder, self.settings = kind, lm, embedder, settings
        self.embed_batch_size = embed_batch_size
        self.progress, self.cancel, self.use_cache, self.sparse = progress, cancel, use_cache, sparse
        self._emb: dict[int, np.ndarray] = {}
        self._engine: UtilityKernel | None = None
        self.embed_stats: dict[str, dict] = {}
        self.engine_options: dict[str, Any] = {}  # backend and ray_options of UtilityKernel
        self.learned: LearnedSpec | None = None
        self.neighbour_random: int = spec.default("neighbour_random")  # a learned kernel's R

    def _stage(self, label: str) -> Callable[[int, int], None] | None:
        progress = self.progress
        return (lambda done, total: progress(label, done, total)) if progress else None

    def embeddings(self, ds: Dataset, role: str) -> np.ndarray:
        if id(ds) not in self._emb:
            if self.embedder is None:
                from delift_core.lm.models import load_embedder

                self.embedder = load_embedder()
            stats = EmbedStats()
            self._emb[id(ds)] = embed_rows(self.embedder, ds, use_cache=self.use_cache,
                                           batch_size=self.embed_batch_size,
                                           progress=self._stage(f"embedding {role}"),
                                           stats=stats)
            self.embed_stats[role] = stats.as_dict()
        return self._emb[id(ds)]

    def engine(self) -> UtilityKernel:
        if self._engine is None:
            if self.lm is None:
                from delift_core.lm.models import load_causal_lm

                self.lm = load_causal_lm()
            self._engine = UtilityKernel(self.lm, self.settings, use_cache=self.use_cache,
                                         **self.engine_options)
        return self._engine

    def build_learned(self, role: str, rows: Dataset, cols: Dataset, row_role: str,
                      col_role: str, transpose: bool, learned: LearnedSpec
                      ) -> tuple[KernelMatrix, Any, dict]:
        """A learned utility kernel of ``role`` (values, exact mask, record) on its share
        ``learned`` of the run's budget; with ``transpose`` the pairs are valued the other way
        and returned rows x columns, like :meth:`build`."""
        if transpose:
            rows, cols, row_role, col_role = cols, rows, col_role, row_role
        values, mask, meta = build_learned(
            self.engine(), rows, cols, self.embeddings(rows, row_role),
            self.embeddings(cols, col_role), learned=learned,
            neighbours=self.sparse.k if self.sparse else None,
            neighbour_random=self.sparse.random if self.sparse else self.neighbour_random,
            same_set=row_role == col_role, label=f"utility {role}", pairs_by_column=transpose,
            progress=self.progress, cancel=self.cancel)
        if learned != self.learned and self.learned is not None:
            meta["budget"]["whole_run"] = {
                "exact_passes": self.learned.exact_passes,
                "exact_minutes": self.learned.exact_minutes,
                "split": "among the run's kernels in proportion to their rows"}
        if transpose:
            values = values.T.tocsr() if is_sparse(values) else np.ascontiguousarray(values.T)
            mask = mask.T.tocsr()
            meta["computed_as"] = f"{row_role} rows x {col_role} columns, transposed"
        return values, mask, meta

    def build(self, role: str, rows: Dataset, cols: Dataset, row_role: str, col_role: str,
              transpose: bool = False) -> tuple[KernelMatrix, dict | None]:
        """The raw kernel of ``role`` (rows helped by columns) and the engine's meta, if any.

        With ``transpose`` (a utility kernel only) the same pairs are valued the other way, the
        columns helped by the rows, and returned in the rows x columns orientation.
        """
        pairs = None
        if self.sparse is not None:
            pairs = neighbour_pairs(self.embeddings(rows, row_role), self.embeddings(cols, col_role),
                                    self.sparse.k, n_random=self.sparse.random, seed=self.sparse.seed)
        if self.kind == "embedding":
            e_rows, e_cols = self.embeddings(rows, row_role), self.embeddings(cols, col_role)
            return _embedding_values(e_rows, e_cols, pairs), None
        if transpose:
            flipped = None if pairs is None else (pairs[1], pairs[0])
            res = self.engine().compute(cols, rows, pairs=flipped,
                                        progress=self._stage(f"utility {role}"), cancel=self.cancel)
            res.values = res.values.T.tocsr() if is_sparse(res.values) else \
                np.ascontiguousarray(np.asarray(res.values).T)
            res.meta["computed_as"] = f"{col_role} rows x {row_role} columns, transposed"
        else:
            res = self.engine().compute(rows, cols, pairs=pairs,
                                        progress=self._stage(f"utility {role}"), cancel=self.cancel)
        if self.sparse is not None:
            res.meta.update({"sparse": True, **self.sparse.meta(),
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
        k = spec.get("neighbours").suggested
        raise SelectionError(f"dense kernels for {n:,} pool rows need about {need / 2**30:.1f} GiB "
                             f"(limit {limit / 2**30:.1f} GiB); compute a sparse kernel instead "
                             f"with --neighbours {k} (neighbours={k} in the API): each row then "
                             f"keeps only its {k} nearest rows by sentence embedding plus "
                             f"{spec.default('neighbour_random')} random ones")


PAIR_BYTES = 32
"""Memory a sparse kernel's pair takes while it is built (row and column indices, the value and
the sorting copies): what its size check counts."""


def _check_sparse_size(sets: dict[str, Dataset | None], sparse: SparseSpec,
                       limit: int | None) -> None:
    """KernelError, before any work, when a sparse kernel's pairs would not fit the stated
    limit (a K close to the pool's size is a dense kernel by another name)."""
    limit = MAX_DENSE_BYTES if limit is None else int(limit)
    pairs = sum(len(sets[r]) * min(len(sets[c]), sparse.k + sparse.random)
                for r, c in ROLES.values() if sets[r] is not None and sets[c] is not None)
    if pairs * PAIR_BYTES > limit:
        raise KernelError(f"a sparse kernel of {sparse.k} neighbours and {sparse.random} random "
                          f"columns per row is {pairs:,} pairs, about "
                          f"{pairs * PAIR_BYTES / 2**30:.1f} GiB to build (limit "
                          f"{limit / 2**30:.1f} GiB): lower --neighbours")


def check_learned_sizes(pool: Dataset, target: Dataset | None, existing: Dataset | None,
                        target_direction: str = spec.default("target_direction")) -> None:
    """A :class:`LearnedKernelError` naming the set, before any model loads, when a learned
    kernel would anchor on too few rows to hold any out (:func:`learned.check_rows`)."""
    sets = {"pool": pool, "target": target, "existing": existing}
    for role, (r, c) in ROLES.items():
        if sets[r] is not None and sets[c] is not None:
            reference = role == "target" and target_direction == "reference"
            check_rows(f"utility {role}", len(sets[c if reference else r]))


def compute_kernels(pool: Dataset, *, target: Dataset | None = None,
                    existing: Dataset | None = None, kind: str = "utility", lm: Any = None,
                    embedder: Any = None, settings: UtilitySettings | None = None,
                    progress: StageProgress | None = None, cancel: threading.Event | None = None,
                    use_cache: bool = True, neighbours: int | SparseSpec | None = None,
                    neighbour_random: int = spec.default("neighbour_random"),
                    neighbour_seed: int = spec.default("neighbour_seed"),
                    max_dense_bytes: int | None = None,
                    target_direction: str = spec.default("target_direction"),
                    backend: str = spec.default("backend"), ray_address: str | None = None,
                    workers: int | None = None,
                    embed_batch_size: int = spec.default("embed_batch_size"),
                    learned: bool = spec.default("learned"), exact_passes: int | None = None,
                    exact_minutes: float | None = None,
                    exact_per_row: int = spec.default("exact_per_row")) -> Kernels:
    """Compute the pool kernel and, when given, the target and existing kernels.

    Dense kernels larger than ``max_dense_bytes`` (default :data:`MAX_DENSE_BYTES`) are refused
    before any work, with the memory they would need and the sparse alternative.

    With ``neighbours=K`` (or a :class:`SparseSpec`) each kernel is sparse (scipy CSR float32):
    every row gets values only for its K nearest columns by sentence embedding plus
    ``neighbour_random`` seeded random ones.

    Every setting is checked against :mod:`delift_core.settings` (a SettingError names it).

    ``target_direction`` says how a utility target kernel is valued:
    ``helps-target`` (default) UF(q | i), ``reference`` UF(i | q) transposed; a sparse kernel
    values the same (q, i) pairs in both directions.

    ``backend="ray"`` computes the utility pairs the pair store lacks on Ray workers
    (``workers`` actors of one thread each; ``ray_address`` "auto" or "HOST:PORT" joins a running
    cluster, none starts a local one): see :mod:`delift_core.kernels.ray_backend`.
    """
    kind = spec.check("kernel", kind)
    target_direction = spec.check("target_direction", target_direction)
    backend = spec.check("backend", backend)
    workers = spec.check("workers", workers)
    embed_batch_size = spec.check("embed_batch_size", embed_batch_size)
    learned = spec.check("learned", learned)
    spec.check_together({"backend": backend, "ray_address": ray_address, "workers": workers,
                         "kernel": kind, "learned": learned, "exact_passes": exact_passes,
                         "exact_minutes": exact_minutes})
    if settings is not None:
        settings.validate()
    sparse = (neighbours if isinstance(neighbours, SparseSpec) or neighbours is None
              else SparseSpec(neighbours, neighbour_random, neighbour_seed))
    if not sparse and not learned:
        _check_dense_size(pool, target, existing, max_dense_bytes)
    elif sparse:
        _check_sparse_size({"pool": pool, "target": target, "existing": existing}, sparse,
                           max_dense_bytes)
    start = time.time()
    sets = {"pool": pool, "target": target, "existing": existing}
    meta: dict[str, Any] = {"kind": kind, **{f"{r}_ids": ds.ids for r, ds in sets.items()
                                             if ds is not None},
                            **{f"{r}_hashes": row_hashes(ds) for r, ds in sets.items()
                               if ds is not None},
                            "row_hash": ROW_HASH}
    builder = _Builder(kind, lm, embedder, settings, progress, cancel, use_cache, sparse or None,
                       embed_batch_size)
    if learned:
        builder.neighbour_random = spec.check("neighbour_random", neighbour_random)
        builder.learned = LearnedSpec(exact_passes, exact_minutes, exact_per_row,
                                      sparse.seed if sparse else neighbour_seed)
    if backend == "ray" and kind == "utility":
        from delift_core.kernels.ray_backend import engine_options

        builder.engine_options = engine_options(ray_address, workers)  # Ray joined first
    kernels = Kernels(kind, meta=meta)
    shares: dict[str, LearnedSpec] = {}
    if builder.learned is not None:
        check_learned_sizes(pool, target, existing, target_direction)
        shares = builder.learned.split({role: len(sets[r]) for role, (r, c) in ROLES.items()
                                        if sets[r] is not None and sets[c] is not None})
    for role, (row_role, col_role) in ROLES.items():
        rows, cols = sets[row_role], sets[col_role]
        if rows is None or cols is None:
            continue
        transpose = role == "target" and kind == "utility" and target_direction == "reference"
        if builder.learned is not None:
            values, kernels.exact[role], role_meta = builder.build_learned(
                role, rows, cols, row_role, col_role, transpose, shares[role])
        else:
            values, role_meta = builder.build(role, rows, cols, row_role, col_role,
                                              transpose=transpose)
        setattr(kernels, role, values)
        if role_meta is not None:
            meta[role] = role_meta
    if sparse:
        meta.update({"sparse": True, **sparse.meta()})
    if builder.embedder is not None:
        meta["embedder"] = getattr(builder.embedder, "delift_name", str(builder.embedder))
        meta["embeddings"] = builder.embed_stats
    if target is not None:
        meta["target_direction"] = target_direction
        meta["target_direction_rule"] = spec.get("target_direction").choices[target_direction] \
            if kind == "utility" \
            else "embedding kernels are symmetric: both directions are the same matrix"
    if kind == "embedding":
        meta.update({"similarity": "(cosine + 1) / 2", "text": "prompt + newline + response"})
    meta["seconds"] = round(time.time() - start, 3)
    meta["settings"] = _recorded_settings(kind, sparse or None, target_direction if target is not
                                          None else None, settings, builder)
    kernels.meta = KernelMeta.from_json(meta)
    if kind == "utility" and backend == "local" and builder.lm is not None and not learned:
        _record_speed(kernels, pool, target, existing, builder.lm, sparse, settings)
    logger.info("%s kernels (%s) in %.1f s", kind, ", ".join(r for r in ROLES
                                                            if getattr(kernels, r) is not None),
                meta["seconds"])
    return kernels


def _recorded_settings(kind: str, sparse: SparseSpec | None, target_direction: str | None,
                       settings: UtilitySettings | None, builder: _Builder) -> dict[str, Any]:
    """The settings that made these values, as :mod:`delift_core.settings` names them."""
    values: dict[str, Any] = {"kernel": kind}
    if sparse is not None:
        values.update(neighbours=sparse.k, neighbour_random=sparse.random,
                      neighbour_seed=sparse.seed)
    if target_direction is not None:
        values["target_direction"] = target_direction
    if builder.learned is not None:
        values.update(learned=True, exact_passes=builder.learned.exact_passes,
                      exact_minutes=builder.learned.exact_minutes,
                      exact_per_row=builder.learned.exact_per_row,
                      neighbour_seed=builder.learned.seed)
    if kind == "utility":
        values.update((settings or UtilitySettings()).value_key())
        if builder.lm is not None:
            values["model"] = getattr(builder.lm, "name", None)
            values["dtype"] = str(getattr(builder.lm, "dtype", "float32")).replace("torch.", "")
    if builder.embedder is not None:
        values["embedder"] = getattr(builder.embedder, "delift_name", str(builder.embedder))
    return spec.record(values)


def _record_speed(kernels: Kernels, pool: Dataset, target: Dataset | None,
                  existing: Dataset | None, lm: Any, sparse: SparseSpec | None,
                  settings: UtilitySettings | None) -> None:
    """Record this machine's speed for later time estimates, from the work this call computed:
    the estimate's tokens times the share of passes computed (not read from the pair store;
    plain passes one set's kernel reuses from another's in the same call count as read). Runs
    that computed under half their passes are not recorded: their time is mostly the store's.
    The time is the utility engine's own (each role's ``seconds``): loading the sentence embedder
    and the neighbour search are not model passes, and on a first kernel in a process they were
    most of a small kernel's time, so its estimate came out several times too slow."""
    from delift_core.kernels.estimates import estimate_work, record_speed, speed_key

    roles = [kernels.meta.get(r) for r in ROLES if isinstance(kernels.meta.get(r), dict)]
    computed = sum(int(m.get("pairs_computed") or 0) for m in roles)
    total = computed + sum(int(m.get("pairs_reused") or 0) for m in roles)
    if not total or computed < total / 2:
        return
    est = estimate_work(pool, target=target, existing=existing, kind="utility",
                        neighbours=sparse.k if sparse else None,
                        neighbour_random=sparse.random if sparse else 0)
    dtype = str(getattr(lm, "dtype", "float32")).replace("torch.", "")
    device = getattr(getattr(lm, "device", None), "type", "cpu")
    key = speed_key("utility", dtype, bool(sparse), device, getattr(lm, "name", None), settings)
    seconds = sum(float(m.get("seconds") or 0.0) for m in roles)
    record_speed(key, round(est.tokens * computed / total), seconds)


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
        if m.get("learned"):
            lines.append(fidelity_line(role, m))
            continue
        n_t, n_e = m.get("shape", [0, 0])
        computed = int(m["pairs_computed"])
        reused = int(m.get("pairs_reused", int(m.get("nnz", n_t * n_e)) + n_t - computed))
        line = (f"utility {role}: {computed} of {computed + reused} passes computed, {reused} "
                f"reused from the pair store")
        if m.get("backend") == "ray":
            line += " (computed on Ray)"
        damaged = int(m.get("entries_damaged_recomputed") or 0)
        if damaged:
            line += f"; {damaged} damaged store entries recomputed"
        if m.get("store_file_damaged"):
            line += f"; the store file was damaged ({m['store_file_damaged']}), set aside and " \
                    "started anew"
        lines.append(line)
    return lines
