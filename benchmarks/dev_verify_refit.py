"""Development study (not a benchmark): does refitting the predictor on the pairs a verification
has scored make the next round's predictions, and so the verified selection, better?

    python benchmarks/dev_verify_refit.py --rows 240 --seed 5 --dtype float32

Same pools, kernels and simulation as ``dev_verify_explore`` (verification reads the exact
kernel's values instead of running the model; one pass per pair plus one plain pass per row not
scored before). After each round the ``+refit`` modes refit the shipped ridge predictor
(:class:`delift_core.kernels.learned.Predictor`, penalty by grouped cross-validation) on every
exact pair the kernel now holds (the learned kernel's own and the verified ones) and predict
every pair still predicted again; ``+offsets`` also adds each row's and each column's mean
residual on those exact pairs, shrunk towards 0 (``n / (n + SHRINK)``), so a row or an example
the regression misjudges is moved as a whole. Exact values are never touched. Verification
costs the same passes either way; the question is only whether the same passes buy more value.
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
import scipy.sparse as sp  # noqa: E402

from bench_learned import fl_value  # noqa: E402
from dev_predictor_features import BENCH_POOLS  # noqa: E402
from dev_verify import ROWS, SEED, dev_kernels, pool_indices  # noqa: E402
from dev_verify_explore import Simulation  # noqa: E402
from delift_core.kernels.builder import Kernels  # noqa: E402
from delift_core.kernels.diagonal import self_pairs  # noqa: E402
from delift_core.kernels.embedding import embed_rows  # noqa: E402
from delift_core.kernels.learned import Predictor  # noqa: E402
from delift_core.lm.models import load_embedder  # noqa: E402
from delift_core.selection.select import select  # noqa: E402
from delift_core.selection.verify import _explored, _is_exact  # noqa: E402

SHRINK = 5.0  # pairs a row or column needs before its mean residual counts half
MODES = ("covers", "covers+refit", "covers+refit+offsets", "explore", "explore+refit",
         "explore+refit+offsets")


class Refitter:
    """Refits the ridge predictor on a kernel's exact pairs and re-predicts the others."""

    def __init__(self, pool, lk: Kernels, seed: int) -> None:
        self.e = embed_rows(load_embedder(), pool).astype(np.float32)
        lens = [len(p) + len(q) for p, q in zip(pool.prompts, pool.responses)]
        self.lens = np.log1p(np.asarray(lens, np.float64)).astype(np.float32)
        coo = lk.pool.tocoo()
        n = lk.pool.shape[1]
        sr, sc = self_pairs("pool", lk.meta, lk.pool.shape)
        keep = ~np.isin(coo.row.astype(np.int64) * n + coo.col, sr.astype(np.int64) * n + sc)
        self.r, self.c = coo.row[keep].astype(np.int64), coo.col[keep].astype(np.int64)
        self.seed = seed

    def __call__(self, k: Kernels, offsets: bool) -> Kernels:
        vals = k.pool.tocsr()
        ex = _is_exact(k.exact["pool"], self.r, self.c)
        r, c = self.r[ex], self.c[ex]
        y = np.asarray(vals[r, c]).ravel().astype(np.float64)
        model = Predictor.for_rows(self.e)
        model.fit(model.features(self.e, self.e, r, c, self.lens, self.lens), y, r, self.seed)
        pr, pc = self.r[~ex], self.c[~ex]
        pred = model.predict(self.e, self.e, pr, pc, self.lens, self.lens).astype(np.float64)
        if offsets:
            res = y - model.predict(self.e, self.e, r, c, self.lens, self.lens)
            n = k.pool.shape[0]
            cnt_r = np.bincount(r, minlength=n)
            row_off = np.bincount(r, res, minlength=n) / (cnt_r + SHRINK)
            res2 = res - row_off[r]
            cnt_c = np.bincount(c, minlength=n)
            col_off = np.bincount(c, res2, minlength=n) / (cnt_c + SHRINK)
            pred = pred + row_off[pr] + col_off[pc]
        new = vals.copy()
        new[pr, pc] = pred.astype(np.float32)  # predicted pairs only; exact ones stay
        return Kernels("utility", pool=new, exact=k.exact, meta=k.meta, diagonal=k.diagonal)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=ROWS)
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--explore", type=float, default=0.1)
    ap.add_argument("--mults", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--budgets", type=float, nargs="+", default=[0.05, 0.1, 0.3])
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if (args.rows, args.seed) == (ROWS, SEED):
        where: dict = {}
    else:
        from delift_core.data.dataset import load_dataset
        from dev_verify import DATA

        n = len(load_dataset(str(DATA)))
        where = {"exclude": BENCH_POOLS, "exclude_rows": set(pool_indices(n, ROWS, SEED))}
    for mult in args.mults:
        pool, lk, ek = dev_kernels(mult, args.rows, args.seed, args.dtype, **where)
        if not sp.issparse(lk.pool):
            raise SystemExit("this study expects a sparse learned kernel (K = 8 + 2)")
        refit = Refitter(pool, lk, args.seed)
        rows = len(pool)
        exact_scaled, exact = ek.scaled("pool"), ek.pool.tocsr()
        print(f"{rows} rows (seed {args.seed}, {args.dtype}), {mult}/10 of the passes", flush=True)
        for frac in args.budgets:
            best = select(pool, "fl", ek, frac, full_order=False).selected_indices
            ref = fl_value(exact_scaled, best)
            for mode in MODES:
                def extra(k: Kernels, chosen: np.ndarray, mode: str = mode) -> tuple:
                    if mode.startswith("explore"):
                        return _explored(k, "pool", chosen, args.explore)[:2]
                    return np.zeros(0, np.int64), np.zeros(0, np.int64)

                after = ((lambda k, o="offsets" in mode: refit(k, offsets=o))
                         if "refit" in mode else None)
                ratios, spent = Simulation(pool, lk, exact, exact_scaled, ref, frac).run(
                    extra, after)
                print(f"{mult}/10, {frac:g}, {mode:<22} value ratio by round {ratios}; "
                      f"passes / exact {spent}", flush=True)

if __name__ == "__main__":
    main()
