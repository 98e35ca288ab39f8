"""The selection pipeline: kernels for a pool (and a target or existing set), an objective, greedy.

This is the one place where the CLI and the app turn user choices into a subset:
:func:`compute_kernels` builds the raw kernels, :func:`select` maximises the chosen objective and
returns a :class:`Selection` that can be re-cut at any budget (the greedy order is a prefix order),
annotated row by row, and exported.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from .data import Dataset
from .embedding import embed_texts, embedding_kernel, sample_text
from .errors import SelectionError
from .greedy import GreedyResult, greedy_maximize, random_order
from .objectives import (CoverageObjective, FacilityLocation, FacilityLocationConditionalGain,
                         FacilityLocationMutualInformation, FacilityLocationQueryMutualInformation)
from .matrices import minmax_scale
from .utility import UtilityKernel, UtilitySettings

OBJECTIVE_NAMES = ("fl", "flmi", "flqmi", "flcg", "random")
KERNEL_KINDS = ("utility", "embedding")
STAGES = {"instruction": ("fl",), "task": ("flmi", "flqmi"), "continual": ("flcg",)}
ProgressFn = Callable[[str, int, int], None]


def needs(objective: str) -> str | None:
    """Which extra set an objective needs: 'target', 'existing' or None."""
    return {"flmi": "target", "flqmi": "target", "flcg": "existing"}.get(objective)


def parse_budget(budget: str | float | int) -> float | int:
    """'0.3', '30%' -> a fraction; '90' -> a count. Fractions are in (0, 1]; counts are >= 1."""
    if isinstance(budget, str):
        text = budget.strip()
        try:
            if text.endswith("%"):
                budget = float(text[:-1]) / 100
            elif any(c in text for c in ".eE"):
                budget = float(text)
            else:
                budget = int(text)
        except ValueError:
            raise SelectionError(f"budget '{budget}' is neither a fraction (0.3, 30%) nor a count "
                                 "(90)") from None
    if isinstance(budget, bool):
        raise SelectionError("budget must be a fraction or a count")
    if isinstance(budget, float):
        if not 0 < budget <= 1:
            raise SelectionError(f"budget fraction {budget} must be in (0, 1]; give a count as a "
                                 "whole number")
        return budget
    if budget < 1:
        raise SelectionError(f"budget {budget} selects nothing; give at least 1 row or a fraction")
    return int(budget)


def resolve_budget(budget: str | float | int, n: int) -> int:
    """The number of rows a budget selects from a pool of n (a fraction rounds, at least 1)."""
    b = parse_budget(budget)
    if isinstance(b, float):
        return max(1, min(n, int(round(b * n))))
    if b > n:
        raise SelectionError(f"budget {b} is larger than the pool ({n} rows)")
    return b


@dataclass
class Kernels:
    """Raw kernels: pool (n x n, row = item helped), target (m x n), existing (n x p)."""

    kind: str
    pool: np.ndarray | None = None
    target: np.ndarray | None = None
    existing: np.ndarray | None = None
    meta: dict = field(default_factory=dict)
    _scaled: dict = field(default_factory=dict, repr=False, compare=False)

    def scaled(self, which: str) -> np.ndarray:
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
        if self.kind == "embedding" and hasattr(raw, "tocsr"):  # sparse (--neighbours)
            out = raw.tocsr().astype(np.float32)
        elif self.kind == "embedding":
            out = np.asarray(raw, np.float32)
        else:
            out = minmax_scale(raw)
        self._scaled[which] = (raw, out)
        return out


def compute_kernels(pool: Dataset, *, target: Dataset | None = None,
                    existing: Dataset | None = None, kind: str = "utility", lm: Any = None,
                    embedder: Any = None, settings: UtilitySettings | None = None,
                    progress: ProgressFn | None = None, cancel: threading.Event | None = None,
                    use_cache: bool = True, neighbours: int | None = None,
                    neighbour_random: int = 4, neighbour_seed: int = 0) -> Kernels:
    """Compute the pool kernel and, when given, the target and existing kernels.

    With ``neighbours=K`` each kernel is sparse (scipy CSR float32): every row gets values only
    for its K nearest columns by sentence embedding plus ``neighbour_random`` seeded random ones.
    """
    if kind not in KERNEL_KINDS:
        raise SelectionError(f"unknown kernel '{kind}'; use one of {KERNEL_KINDS} or a .npy file")
    start = time.time()
    meta: dict[str, Any] = {"kind": kind, "pool_ids": pool.ids}
    if target is not None:
        meta["target_ids"] = target.ids
    if existing is not None:
        meta["existing_ids"] = existing.ids
    if neighbours:
        k = _sparse_kernels(pool, target, existing, kind, lm, embedder, settings, progress,
                            cancel, use_cache, int(neighbours), int(neighbour_random),
                            int(neighbour_seed), meta)
        meta["seconds"] = round(time.time() - start, 3)
        return k
    if kind == "embedding":
        if embedder is None:
            from .models import load_embedder

            embedder = load_embedder()

        def emb(ds: Dataset, label: str) -> np.ndarray:
            cb = (lambda d, t: progress(f"embedding {label}", d, t)) if progress else None
            return embed_texts(embedder, [sample_text(p, r) for p, r in
                                          zip(ds.prompts, ds.responses)], progress=cb,
                               use_cache=use_cache)

        e_pool = emb(pool, "pool")
        k = Kernels(kind, pool=embedding_kernel(e_pool, e_pool), meta=meta)
        if target is not None:
            k.target = embedding_kernel(emb(target, "target"), e_pool)
        if existing is not None:
            k.existing = embedding_kernel(e_pool, emb(existing, "existing"))
        meta.update({"embedder": getattr(embedder, "delift_name", str(embedder)),
                     "similarity": "(cosine + 1) / 2", "text": "prompt + newline + response"})
    else:
        if lm is None:
            from .models import load_causal_lm

            lm = load_causal_lm()
        engine = UtilityKernel(lm, settings, use_cache=use_cache)

        def util(t: Dataset, e: Dataset, label: str):
            cb = (lambda d, tot: progress(f"utility {label}", d, tot)) if progress else None
            return engine.compute(t.prompts, t.responses, e.prompts, e.responses,
                                  row_ids=t.ids, col_ids=e.ids, progress=cb, cancel=cancel)

        res = util(pool, pool, "pool")
        k = Kernels(kind, pool=res.values, meta=meta)
        meta["pool"] = res.meta
        if target is not None:
            r = util(target, pool, "target")
            k.target, meta["target"] = r.values, r.meta
        if existing is not None:
            r = util(pool, existing, "existing")
            k.existing, meta["existing"] = r.values, r.meta
    meta["seconds"] = round(time.time() - start, 3)
    return k


def _sparse_kernels(pool: Dataset, target: Dataset | None, existing: Dataset | None, kind: str,
                    lm: Any, embedder: Any, settings: UtilitySettings | None,
                    progress: ProgressFn | None, cancel: threading.Event | None, use_cache: bool,
                    k: int, n_random: int, seed: int, meta: dict) -> Kernels:
    """Sparse kernels: each row's k nearest columns by embedding (+ random), CSR float32."""
    from .sparse import neighbour_pairs, sparse_utility_kernel

    if embedder is None:
        from .models import load_embedder

        embedder = load_embedder()

    def emb(ds: Dataset, label: str) -> np.ndarray:
        cb = (lambda d, t: progress(f"embedding {label}", d, t)) if progress else None
        return embed_texts(embedder, [sample_text(p, r) for p, r in zip(ds.prompts, ds.responses)],
                           progress=cb, use_cache=use_cache)

    e_pool = emb(pool, "pool")
    e_target = emb(target, "target") if target is not None else None
    e_existing = emb(existing, "existing") if existing is not None else None
    meta.update({"sparse": True, "neighbours": k, "random_neighbours": n_random,
                 "neighbour_seed": seed,
                 "embedder": getattr(embedder, "delift_name", str(embedder))})
    if kind == "embedding":
        import scipy.sparse as sp

        def sim(t_emb: np.ndarray, e_emb: np.ndarray):
            r, c = neighbour_pairs(t_emb, e_emb, k, n_random=n_random, seed=seed)
            vals = np.empty(len(r), np.float32)
            for s in range(0, len(r), 1 << 16):
                vals[s: s + (1 << 16)] = np.einsum("ij,ij->i", t_emb[r[s: s + (1 << 16)]],
                                                   e_emb[c[s: s + (1 << 16)]])
            vals = np.clip((vals + 1.0) / 2.0, 0.0, 1.0).astype(np.float32)
            return sp.csr_matrix((vals, (r, c)), shape=(len(t_emb), len(e_emb)), dtype=np.float32)

        kern = Kernels(kind, pool=sim(e_pool, e_pool), meta=meta)
        if target is not None:
            kern.target = sim(e_target, e_pool)
        if existing is not None:
            kern.existing = sim(e_pool, e_existing)
        meta.update({"similarity": "(cosine + 1) / 2", "text": "prompt + newline + response"})
        return kern
    if lm is None:
        from .models import load_causal_lm

        lm = load_causal_lm()
    engine = UtilityKernel(lm, settings, use_cache=use_cache)

    def util(t: Dataset, e: Dataset, t_emb: np.ndarray, e_emb: np.ndarray, label: str):
        cb = (lambda d, tot: progress(f"utility {label}", d, tot)) if progress else None
        return sparse_utility_kernel(engine, t.prompts, t.responses, e.prompts, e.responses, t_emb,
                                     e_emb, k, n_random=n_random, seed=seed, row_ids=t.ids,
                                     col_ids=e.ids, progress=cb, cancel=cancel)

    res = util(pool, pool, e_pool, e_pool, "pool")
    kern = Kernels(kind, pool=res.values, meta=meta)
    meta["pool"] = res.meta
    if target is not None:
        r = util(target, pool, e_target, e_pool, "target")
        kern.target, meta["target"] = r.values, r.meta
    if existing is not None:
        r = util(pool, existing, e_pool, e_existing, "existing")
        kern.existing, meta["existing"] = r.values, r.meta
    return kern


def _load_matrix(path: str | Path, shape: tuple[int, int], what: str) -> np.ndarray:
    p = Path(path)
    if p.suffix == ".npy" and not p.exists() and p.with_suffix(".npz").exists():
        p = p.with_suffix(".npz")  # a sparse kernel saved by `delift kernel --neighbours`
    if p.suffix == ".npz" and p.exists():
        import scipy.sparse as sp

        try:
            m = sp.load_npz(p).tocsr().astype(np.float32)
        except Exception as e:
            raise SelectionError(f"{path}: not a readable sparse .npz matrix ({e})") from None
        if m.shape != shape:
            raise SelectionError(f"{path}: the {what} kernel has shape {tuple(m.shape)}, expected "
                                 f"{shape} for this data")
        return m
    if not p.exists():
        raise SelectionError(f"{path}: no such kernel file")
    try:
        m = np.load(p, mmap_mode="r", allow_pickle=False)
    except Exception as e:
        raise SelectionError(f"{path}: not a readable .npy matrix ({e})") from None
    if m.shape != shape:
        raise SelectionError(f"{path}: the {what} kernel has shape {tuple(m.shape)}, expected "
                             f"{shape} for this data")
    return np.asarray(m, dtype=np.float32)


def save_kernels(kernels: Kernels, folder: str | Path) -> dict[str, Path]:
    """Write kernels the way :func:`load_kernels` reads them back: ``kernel_<which>.npy`` (dense)
    or ``.npz`` (scipy sparse, from ``neighbours``) for pool/target/existing, and
    ``kernel_meta.json`` (how they were made, with the row ids checked on loading)."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for which in ("pool", "target", "existing"):
        m = getattr(kernels, which)
        if m is None:
            continue
        if hasattr(m, "tocsr"):
            import scipy.sparse as sp

            paths[which] = out / f"kernel_{which}.npz"
            sp.save_npz(paths[which], m.tocsr())
        else:
            paths[which] = out / f"kernel_{which}.npy"
            np.save(paths[which], m)
    paths["meta"] = out / "kernel_meta.json"
    paths["meta"].write_text(json.dumps(kernels.meta, indent=1, default=str))
    return paths


def load_kernels(path: str | Path, pool: Dataset, *, target: Dataset | None = None,
                 existing: Dataset | None = None, target_kernel: str | Path | None = None,
                 existing_kernel: str | Path | None = None) -> Kernels:
    """Kernels from a ``delift kernel`` output folder or a pool ``.npy`` file, checked for shape.

    Matrices from files are treated as raw utilities (min-max scaled for selection).
    """
    p = Path(path)
    folder = p if p.is_dir() else p.parent
    pool_file = p / "kernel_pool.npy" if p.is_dir() else p
    if p.is_dir() and not pool_file.exists() and (p / "kernel_pool.npz").exists():
        pool_file = p / "kernel_pool.npz"
    n = len(pool)
    meta: dict[str, Any] = {"kind": "file", "pool_file": str(pool_file)}
    meta_file = folder / "kernel_meta.json"
    if p.is_dir() and meta_file.exists():
        saved = json.loads(meta_file.read_text())
        ids = saved.get("pool_ids")
        if ids is not None and list(ids) != pool.ids:
            raise SelectionError(f"{meta_file}: the kernel was computed for other pool rows "
                                 f"({len(ids)} ids) than the pool given ({n} rows)")
        meta["computed"] = saved
    kind = meta.get("computed", {}).get("kind", "file")
    k = Kernels("embedding" if kind == "embedding" else "utility",
                pool=_load_matrix(pool_file, (n, n), "pool"), meta=meta)
    if target is not None:
        f = target_kernel or folder / "kernel_target.npy"
        k.target = _load_matrix(f, (len(target), n), "target")
    if existing is not None:
        f = existing_kernel or folder / "kernel_existing.npy"
        k.existing = _load_matrix(f, (n, len(existing)), "existing")
    return k


def build_objective(name: str, kernels: Kernels, *, eta: float = 1.0,
                    nu: float = 1.0) -> CoverageObjective:
    """The objective object for a name, from the scaled kernels."""
    if name == "fl":
        return FacilityLocation(kernels.scaled("pool"))
    if name == "flmi":
        return FacilityLocationMutualInformation(kernels.scaled("pool"), kernels.scaled("target"),
                                                 eta=eta)
    if name == "flqmi":
        return FacilityLocationQueryMutualInformation(kernels.scaled("target"), eta=eta)
    if name == "flcg":
        return FacilityLocationConditionalGain(kernels.scaled("pool"), kernels.scaled("existing"),
                                               nu=nu)
    raise SelectionError(f"unknown objective '{name}'; use one of {OBJECTIVE_NAMES}")


@dataclass
class Selection:
    """A greedy order over a pool, cut at a budget; re-cut with :meth:`at_budget`."""

    pool: Dataset
    objective: str
    budget: int
    order: np.ndarray
    gains: np.ndarray
    values: np.ndarray
    kernels: Kernels | None
    params: dict
    pinned: list[str] = field(default_factory=list)
    banned: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def selected_indices(self) -> np.ndarray:
        return self.order[: self.budget]

    @property
    def selected_ids(self) -> list[str]:
        return [self.pool.ids[k] for k in self.selected_indices]

    @property
    def objective_value(self) -> float:
        return float(self.values[self.budget - 1]) if self.budget and len(self.values) else 0.0

    @property
    def max_budget(self) -> int:
        return len(self.order)

    def at_budget(self, budget: str | float | int) -> "Selection":
        """The same selection at another budget (a prefix of the greedy order, no recompute)."""
        b = resolve_budget(budget, len(self.pool))
        if b > len(self.order):
            raise SelectionError(f"the greedy order was computed up to {len(self.order)} rows; "
                                 f"select again for a budget of {b}")
        return replace(self, budget=max(b, len(self.pinned)))

    def annotate(self) -> pd.DataFrame:
        """One row per pool row: decision, greedy rank and gain, and best cover for rejected rows."""
        n = len(self.pool)
        sel = self.selected_indices
        rank = np.full(n, -1)
        rank[sel] = np.arange(1, len(sel) + 1)
        gain = np.full(n, np.nan)
        gain[sel] = self.gains[: len(sel)]
        covered_by = [""] * n
        coverage = np.full(n, np.nan)
        if self.kernels is not None and self.kernels.pool is not None and len(sel):
            pool_k = self.kernels.scaled("pool")
            if hasattr(pool_k, "tocsr"):  # sparse kernel: never densified
                cover, best = FacilityLocation(pool_k).best_cover(sel)
                arg = np.searchsorted(np.sort(sel), cover)
                arg = np.argsort(sel)[arg]
            else:
                sub = pool_k[:, sel]
                arg = sub.argmax(axis=1)
                best = sub[np.arange(n), arg]
            for i in range(n):
                if rank[i] < 0:
                    covered_by[i] = self.pool.ids[int(sel[arg[i]])]
                    coverage[i] = float(best[i])
        pinned, banned = set(self.pinned), set(self.banned)
        return pd.DataFrame({
            "id": self.pool.ids,
            "position": self.pool.positions or list(range(n)),
            "selected": rank > 0,
            "rank": pd.array([int(r) if r > 0 else None for r in rank], dtype="Int64"),
            "gain": gain,
            "covered_by": covered_by,
            "coverage": coverage,
            "pinned": [i in pinned for i in self.pool.ids],
            "banned": [i in banned for i in self.pool.ids],
            "prompt": self.pool.prompts,
            "response": self.pool.responses,
        })

    def to_json(self) -> dict:
        """What ``selection.json`` holds: ordered ids, gains, value and parameters."""
        sel = self.selected_indices
        return {"objective": self.objective, "budget": int(self.budget), "pool_size": len(self.pool),
                "selected_ids": [self.pool.ids[k] for k in sel],
                "gains": [float(g) for g in self.gains[: len(sel)]],
                "objective_value": self.objective_value,
                "greedy_order_ids": [self.pool.ids[k] for k in self.order],
                "greedy_gains": [float(g) for g in self.gains],
                "pinned": self.pinned, "banned": self.banned, "params": self.params,
                "notes": self.notes}


def select(pool: Dataset, objective: str, kernels: Kernels | None, budget: str | float | int, *,
           eta: float = 1.0, nu: float = 1.0, seed: int = 0, method: str = "lazy",
           epsilon: float = 0.01, pinned: Sequence[str] = (), banned: Sequence[str] = (),
           full_order: bool | None = None) -> Selection:
    """Select a subset of ``pool`` by maximising ``objective`` on ``kernels`` under ``budget``.

    With ``full_order`` (default for pools up to 3,000 rows) the greedy order covers every allowed
    row, so :meth:`Selection.at_budget` can re-cut any budget instantly.
    """
    start = time.time()
    if objective not in OBJECTIVE_NAMES:
        raise SelectionError(f"unknown objective '{objective}'; use one of {OBJECTIVE_NAMES}")
    n = len(pool)
    b = resolve_budget(budget, n)
    extra = needs(objective)
    if extra and (kernels is None or getattr(kernels, extra) is None):
        raise SelectionError(f"objective '{objective}' needs {'a target' if extra == 'target' else 'an existing'}"
                             f" set (--{extra} FILE) and its kernel")
    if objective != "random" and kernels is None:
        raise SelectionError(f"objective '{objective}' needs a kernel")
    unknown = [x for x in [*pinned, *banned] if x not in set(pool.ids)]
    if unknown:
        raise SelectionError(f"pinned or banned ids not in the pool: {unknown[:10]}")
    pin_idx = [pool.index_of(x) for x in pinned]
    ban_idx = [pool.index_of(x) for x in banned]
    if full_order is None:
        full_order = n <= 3000
    order_budget = None if full_order else b
    params = {"eta": eta, "nu": nu, "seed": seed, "method": method, "epsilon": epsilon,
              "budget_requested": budget, "kernel": kernels.kind if kernels else None}
    if objective == "random":
        order = random_order(n, order_budget, seed=seed, pinned=pin_idx, banned=ban_idx)
        if kernels is not None and kernels.pool is not None:
            obj = FacilityLocation(kernels.scaled("pool"))
            state, gains = obj.initial_state(), []
            for j in order:
                gains.append(float(obj.gains(state, np.array([j]))[0]))
                state = obj.update(state, int(j))
            gains_arr = np.asarray(gains)
            params["gains_measured_with"] = "fl"
        else:
            gains_arr = np.full(len(order), np.nan)
        result = GreedyResult(order=order, gains=gains_arr, values=np.cumsum(gains_arr),
                              n_pinned=len(pin_idx), method="random")
    else:
        obj = build_objective(objective, kernels, eta=eta, nu=nu)
        try:
            result = greedy_maximize(obj, order_budget, method=method, pinned=pin_idx,
                                     banned=ban_idx, seed=seed, epsilon=epsilon)
        except ValueError as e:
            raise SelectionError(str(e)) from None
    b = min(max(b, len(pin_idx)), len(result.order))
    return Selection(pool=pool, objective=objective, budget=b, order=result.order,
                     gains=result.gains, values=result.values, kernels=kernels, params=params,
                     pinned=list(pinned), banned=list(banned), notes=result.notes,
                     seconds=round(time.time() - start, 3))
