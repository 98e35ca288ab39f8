"""Development study (not a benchmark): why cover verification stalls at small budgets, and
whether verifying candidate columns helps, on ``dev_verify``'s 600-row pool (never a benchmark
pool) or, with ``--rows/--seed``, another pool outside every benchmark pool and that one,
verification simulated with the exact kernel's values as there.

    python benchmarks/dev_verify_explore.py
    python benchmarks/dev_verify_explore.py --rows 240 --seed 5 --dtype float32

Modes, each for 4 rounds at 5, 10 and 30 %, for the learned kernel at one and two tenths of the
exact passes:

- ``covers``: what ``verify_selection`` does with ``explore=0`` (each row's predicted cover
  scored exactly);
- ``oracle``: before round 0, every pair of the *exact* selection's columns made exact (what a
  verification would reach if it knew which helpers are under-predicted; not a method);
- ``explore``: covers plus, each round, the engine's explored pairs
  (``verify._explored``, ``--explore`` share of the columns, 0.1 by default: at 10 % as many
  columns as the budget, the study's first form);
- ``degree``: covers plus the pairs of as many unselected, not yet exact columns as the budget
  that most rows list as candidates.

With ``--engine``, covers and explore also run through ``verify_selection`` itself (the model,
the pair store on), to check the simulation against the shipped path.

Prints per mode the value ratio under the exact kernel by round and the passes so far / the
exact kernel's (one pass per pair plus one plain pass per row not scored before). The first run
(2026-12-04) chose the explored columns with its own copy of the gain rule and as many as the
budget at every budget; ``explore`` now runs the shipped code, so its 5 % and 30 % rows differ.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402

from bench_learned import fl_value  # noqa: E402
from dev_predictor_features import BENCH_POOLS  # noqa: E402
from dev_verify import ROUNDS, ROWS, SEED, dev_kernels, pool_indices  # noqa: E402
from delift_core.kernels.builder import Kernels  # noqa: E402
from delift_core.kernels.diagonal import self_pairs  # noqa: E402
from delift_core.selection.select import select  # noqa: E402
from delift_core.selection.verify import _covers, _explored, _is_exact, _set_exact  # noqa: E402


def column_pairs(k: Kernels, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every (row, column) pair the kernel holds in ``cols``, self pairs left out."""
    p = k.pool.tocsc()[:, cols].tocoo()
    r, c = p.row.astype(np.int64), np.asarray(cols)[p.col].astype(np.int64)
    sr, sc = self_pairs("pool", k.meta, k.pool.shape)
    n = k.pool.shape[1]
    keep = ~np.isin(r * n + c, sr * n + sc)
    return r[keep], c[keep]


def top_degree(k: Kernels, chosen: np.ndarray, t: int) -> np.ndarray:
    """The ``t`` unselected, not yet exact columns that most rows list as candidates."""
    deg = np.bincount(k.pool.tocoo().col, minlength=k.pool.shape[1]).astype(float)
    done = np.asarray(k.exact["pool"].sum(0)).ravel() >= deg
    deg[chosen], deg[done] = -1, -1
    return np.argsort(-deg)[:t]


class Simulation:
    """Verification of a learned kernel's FL selection simulated with the exact kernel's values:
    each round selects, measures the value ratio under the exact kernel, and makes the covers
    plus ``extra(kernel, chosen)``'s pairs exact, counting one pass per pair plus one plain pass
    per row not scored before (the learned kernel's own rows count as scored)."""

    def __init__(self, pool, lk: Kernels, exact, exact_scaled, ref: float, frac: float) -> None:
        self.pool, self.cur, self.exact, self.exact_scaled = pool, lk, exact, exact_scaled
        self.ref, self.frac, self.passes = ref, frac, 0
        self.scored = set(np.flatnonzero(np.asarray(lk.exact["pool"].sum(1)).ravel()).tolist())

    def verify(self, r: np.ndarray, c: np.ndarray) -> None:
        """Make the pairs (r, c) not yet exact exact, paying for them."""
        k = self.cur
        todo = ~_is_exact(k.exact["pool"], r, c)
        r, c = r[todo], c[todo]
        if not len(r):
            return
        self.passes += len(r) + len(set(r.tolist()) - self.scored)
        self.scored.update(r.tolist())
        v, m = _set_exact(k.pool, k.exact["pool"], r, c,
                          np.asarray(self.exact[r, c]).ravel().astype(np.float32))
        self.cur = Kernels("utility", pool=v, exact={"pool": m}, meta=k.meta, diagonal=k.diagonal)

    def run(self, extra, after=None) -> tuple[list[float], list[float]]:
        """ROUNDS rounds (``after(kernel)`` may change the kernel after each): the value ratio
        and the passes / the exact kernel's (11 per row) before each round and after the last."""
        rows, ratios, spent = self.cur.pool.shape[0], [], []
        for k in range(ROUNDS + 1):
            sel = select(self.pool, "fl", self.cur, self.frac, full_order=False)
            ratios.append(round(fl_value(self.exact_scaled, sel.selected_indices) / self.ref, 4))
            spent.append(round(self.passes / (rows * 11), 3))
            if k == ROUNDS:
                break
            r, c = _covers(self.cur, "pool", sel.selected_indices)
            r2, c2 = extra(self.cur, sel.selected_indices)
            self.verify(np.concatenate([r, r2]).astype(np.int64),
                        np.concatenate([c, c2]).astype(np.int64))
            if after is not None:
                self.cur = after(self.cur)
        return ratios, spent


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=ROWS)
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--explore", type=float, default=0.1, help="the explore mode's share")
    ap.add_argument("--mults", type=int, nargs="+", default=[1, 2],
                    help="the learned kernels' exact passes, in tenths of the exact kernel's")
    ap.add_argument("--budgets", type=float, nargs="+", default=[0.05, 0.1, 0.3])
    ap.add_argument("--engine", action="store_true",
                    help="also run covers and explore through verify_selection itself (the "
                         "model, the pair store on: stored pairs are read back, the rest "
                         "computed), to check the simulation against the shipped path")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if (args.rows, args.seed) == (ROWS, SEED):  # the first development pool, as it was drawn
        where: dict = {}
    else:  # another pool: outside every benchmark pool and the first development pool
        from delift_core.data.dataset import load_dataset
        from dev_verify import DATA

        n = len(load_dataset(str(DATA)))
        where = {"exclude": BENCH_POOLS, "exclude_rows": set(pool_indices(n, ROWS, SEED))}
    last: dict = {}

    def progress(label: str, done: int, total: int) -> None:
        if done >= total or done - last.get(label, 0) >= 250:
            last[label] = done
            logging.info("%s: %d / %d", label, done, total)

    for mult in args.mults:
        pool, lk, ek = dev_kernels(mult, args.rows, args.seed, args.dtype, progress=progress,
                                   **where)
        rows = len(pool)
        exact_scaled, exact = ek.scaled("pool"), ek.pool.tocsr()
        fid = lk.meta.learned["pool"]["fidelity"]
        print(f"{rows} rows (seed {args.seed}, {args.dtype}), {mult}/10 of the passes: held-out "
              f"median row Spearman {fid['row_spearman_median']}", flush=True)
        for frac in args.budgets:
            best = select(pool, "fl", ek, frac, full_order=False).selected_indices
            ref = fl_value(exact_scaled, best)
            for mode in ("covers", "oracle", "explore", "degree"):
                sim = Simulation(pool, lk, exact, exact_scaled, ref, frac)
                if mode == "oracle":
                    sim.verify(*column_pairs(sim.cur, best))

                def extra(k: Kernels, chosen: np.ndarray, mode: str = mode) -> tuple:
                    if mode == "explore":
                        return _explored(k, "pool", chosen, args.explore)[:2]
                    if mode == "degree":
                        return column_pairs(k, top_degree(k, chosen, len(chosen)))
                    return np.zeros(0, np.int64), np.zeros(0, np.int64)

                ratios, spent = sim.run(extra)
                print(f"{mult}/10 of the passes, {frac:g}, {mode:<8} value ratio by round "
                      f"{ratios}; passes / exact {spent}", flush=True)
            if args.engine:
                from delift_core.lm.models import load_causal_lm
                from delift_core.selection.verify import verify_selection

                lm = load_causal_lm(None, dtype=args.dtype)
                for share in (0.0, args.explore):
                    seen: list = []
                    final = verify_selection(pool, "fl", lk, frac, rounds=ROUNDS, explore=share,
                                             lm=lm, full_order=False,
                                             on_round=lambda k, s_: seen.append(s_))
                    v = final.kernels.meta.learned["pool"]["verification"]
                    ratios = [round(fl_value(exact_scaled, x.selected_indices) / ref, 4)
                              for x in [*seen[: v["rounds_run"]], final]]
                    print(f"{mult}/10 of the passes, {frac:g}, engine explore={share:g} value "
                          f"ratio by round {ratios}; pairs verified {v['pairs_verified']}, "
                          f"passes computed {v['passes_computed']}, read back "
                          f"{v['passes_reused']}", flush=True)


if __name__ == "__main__":
    main()
