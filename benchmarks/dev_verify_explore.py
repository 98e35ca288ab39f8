"""Development study (not a benchmark): why cover verification stalls at small budgets, and
whether verifying candidate columns helps, on ``dev_verify``'s 600-row pool (never a benchmark
pool), verification simulated with the exact kernel's values as there.

    python benchmarks/dev_verify_explore.py

Modes, each for 4 rounds at 5, 10 and 30 %, for the learned kernel at one and two tenths of the
exact passes:

- ``covers``: what ``verify_selection`` does (each row's predicted cover scored exactly);
- ``oracle``: before round 0, every pair of the *exact* selection's columns made exact (what a
  verification would reach if it knew which helpers are under-predicted; not a method);
- ``explore``: covers plus, each round, every pair of as many unselected columns as the budget,
  those with the highest predicted gain to the current selection;
- ``degree``: the same, the unselected columns that most rows list as candidates (not yet exact).

Prints per mode the value ratio under the exact kernel by round and the passes so far / the
exact kernel's (one pass per pair plus one plain pass per row not scored before).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402

from bench_learned import fl_value  # noqa: E402
from dev_verify import ROUNDS, ROWS, dev_kernels  # noqa: E402
from delift_core.kernels.builder import Kernels  # noqa: E402
from delift_core.kernels.diagonal import self_pairs  # noqa: E402
from delift_core.selection.cover import best_cover  # noqa: E402
from delift_core.selection.select import select  # noqa: E402
from delift_core.selection.verify import _covers, _is_exact, _set_exact  # noqa: E402


def column_pairs(k: Kernels, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every (row, column) pair the kernel holds in ``cols``, self pairs left out."""
    p = k.pool.tocsc()[:, cols].tocoo()
    r, c = p.row.astype(np.int64), np.asarray(cols)[p.col].astype(np.int64)
    sr, sc = self_pairs("pool", k.meta, k.pool.shape)
    keep = ~np.isin(r * ROWS + c, sr * ROWS + sc)
    return r[keep], c[keep]


def top_gain(k: Kernels, chosen: np.ndarray, t: int) -> np.ndarray:
    """The ``t`` unselected columns with the highest predicted FL gain to ``chosen``."""
    s = k.scaled("pool").tocsc()
    _, value = best_cover(k.scaled("pool"), chosen)
    value = np.where(np.isfinite(value), value, 0.0)
    gains = np.array([np.maximum(s.data[s.indptr[j]:s.indptr[j + 1]]
                                 - value[s.indices[s.indptr[j]:s.indptr[j + 1]]], 0).sum()
                      for j in range(ROWS)])
    gains[chosen] = -1
    return np.argsort(-gains)[:t]


def top_degree(k: Kernels, chosen: np.ndarray, t: int) -> np.ndarray:
    """The ``t`` unselected, not yet exact columns that most rows list as candidates."""
    deg = np.bincount(k.pool.tocoo().col, minlength=ROWS).astype(float)
    done = np.asarray(k.exact["pool"].sum(0)).ravel() >= deg
    deg[chosen], deg[done] = -1, -1
    return np.argsort(-deg)[:t]


def main() -> None:
    for mult in (1, 2):
        pool, lk, ek = dev_kernels(mult)
        exact_scaled, exact = ek.scaled("pool"), ek.pool.tocsr()
        for frac in (0.05, 0.1, 0.3):
            best = select(pool, "fl", ek, frac, full_order=False).selected_indices
            ref = fl_value(exact_scaled, best)
            for mode in ("covers", "oracle", "explore", "degree"):
                scored = set(np.flatnonzero(np.asarray(lk.exact["pool"].sum(1)).ravel()).tolist())
                cur, passes, ratios, spent = lk, 0, [], []

                def verify(k: Kernels, r: np.ndarray, c: np.ndarray) -> tuple[Kernels, int]:
                    todo = ~_is_exact(k.exact["pool"], r, c)
                    r, c = r[todo], c[todo]
                    if not len(r):
                        return k, 0
                    cost = len(r) + len(set(r.tolist()) - scored)
                    scored.update(r.tolist())
                    v, m = _set_exact(k.pool, k.exact["pool"], r, c,
                                      np.asarray(exact[r, c]).ravel().astype(np.float32))
                    return Kernels("utility", pool=v, exact={"pool": m}, meta=k.meta,
                                   diagonal=k.diagonal), cost

                if mode == "oracle":
                    cur, n = verify(cur, *column_pairs(cur, best))
                    passes += n
                for k in range(ROUNDS + 1):
                    sel = select(pool, "fl", cur, frac, full_order=False)
                    ratios.append(round(fl_value(exact_scaled, sel.selected_indices) / ref, 4))
                    spent.append(round(passes / (ROWS * 11), 3))
                    if k == ROUNDS:
                        break
                    r, c = _covers(cur, "pool", sel.selected_indices)
                    if mode in ("explore", "degree"):
                        pick = (top_gain if mode == "explore" else top_degree)(
                            cur, sel.selected_indices, len(sel.selected_indices))
                        r2, c2 = column_pairs(cur, pick)
                        r, c = np.concatenate([r, r2]), np.concatenate([c, c2])
                    cur, n = verify(cur, r, c)
                    passes += n
                print(f"{mult}/10 of the passes, {frac:g}, {mode:<8} value ratio by round "
                      f"{ratios}; passes / exact {spent}", flush=True)


if __name__ == "__main__":
    main()
