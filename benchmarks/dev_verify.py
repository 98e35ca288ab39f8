"""The development run behind ``verify_selection``'s rounds: how the value of a learned kernel's
FL selection under the exact kernel moves as its covers are verified, on a pool the benchmark
never uses.

    python benchmarks/dev_verify.py

The pool: 600 rows of ``../shared/data/p3_sample.jsonl`` (seed 2) outside ``bench_learned``'s
2,000-row seed-1 pool. Through the pair store (bfloat16, default settings): the learned K = 8 + 2
kernel at a tenth of the exact passes (``exact_passes = rows * 11 // 10``, 12 exact examples per
anchor, neighbour seed 2) and the exact K = 8 + 2 kernel (6,600 passes; about 12 minutes on this
2-core CPU the first time, read back after). Verification is then *simulated*: each round takes
the FL selection's predicted covers (``verify._covers``) and reads their exact values from the
exact kernel instead of running the model (the same values the engine would compute, up to
bfloat16 batch effects), counting one pass per pair plus one plain pass per row not yet scored.
Prints, per budget, the value ratio after rounds 0 to 4 and the verification passes so far.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402

from bench_learned import fl_value  # noqa: E402
from delift_core.data.dataset import load_dataset  # noqa: E402
from delift_core.kernels.builder import Kernels, compute_kernels  # noqa: E402
from delift_core.lm.models import load_causal_lm, load_embedder  # noqa: E402
from delift_core.selection.select import select  # noqa: E402
from delift_core.selection.verify import _covers, _is_exact, _set_exact  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "p3_sample.jsonl"
ROWS, SEED, ROUNDS, BUDGETS = 600, 2, 4, (0.05, 0.1, 0.3)


def pool_indices(n: int, rows: int, seed: int, exclude: tuple = ((1, 2000),),
                 exclude_rows: set[int] | None = None) -> list[int]:
    """The rows of a development pool: ``rows`` of the sample's ``n`` drawn with ``seed``,
    outside each excluded (seed, rows) pool as bench_learned draws it and ``exclude_rows``."""
    test = set(exclude_rows or ())
    for s, k in exclude:
        test |= set(np.random.default_rng(s).choice(n, k, replace=False).tolist())
    rest = np.array(sorted(set(range(n)) - test))
    return sorted(np.random.default_rng(seed).choice(rest, rows, replace=False).tolist())


def dev_kernels(mult: int = 1, rows: int = ROWS, seed: int = SEED, dtype: str = "bfloat16",
                exclude: tuple = ((1, 2000),), exclude_rows: set[int] | None = None,
                progress: object = None) -> tuple:
    """The development pool (``rows`` rows drawn with ``seed`` from the sample outside the
    ``exclude`` pools, each (seed, rows) as bench_learned draws it), its learned kernel (``mult``
    tenths of the exact passes) and its exact K = 8 + 2 kernel, through the pair store
    (``progress(label, done, total)`` sees both computations)."""
    full = load_dataset(str(DATA))
    pool = full.subset(pool_indices(len(full), rows, seed, exclude, exclude_rows))
    lm, emb = load_causal_lm(None, dtype=dtype), load_embedder()
    common = dict(kind="utility", lm=lm, embedder=emb, neighbours=8, neighbour_random=2,
                  neighbour_seed=seed, progress=progress)
    lk = compute_kernels(pool, learned=True, exact_passes=rows * 11 // 10 * mult,
                         exact_per_row=12, **common)
    return pool, lk, compute_kernels(pool, **common)


def main() -> None:
    pool, lk, ek = dev_kernels()
    exact_scaled, exact = ek.scaled("pool"), ek.pool.tocsr()
    m = lk.meta.learned["pool"]
    print(f"{ROWS} rows: learned kernel {m['passes_computed'] + m['passes_reused']:,} exact "
          f"passes, held-out median row Spearman {m['fidelity']['row_spearman_median']}")
    for frac in BUDGETS:
        ref = fl_value(exact_scaled, select(pool, "fl", ek, frac, full_order=False)
                       .selected_indices)
        cur, scored_rows, passes, ratios, spent = lk, set(), 0, [], []
        scored_rows |= set(np.flatnonzero(np.asarray(lk.exact["pool"].sum(1)).ravel()).tolist())
        for k in range(ROUNDS + 1):
            sel = select(pool, "fl", cur, frac, full_order=False)
            ratios.append(round(fl_value(exact_scaled, sel.selected_indices) / ref, 4))
            spent.append(passes)
            if k == ROUNDS:
                break
            r, c = _covers(cur, "pool", sel.selected_indices)
            todo = ~_is_exact(cur.exact["pool"], r, c)
            r, c = r[todo], c[todo]
            if not len(r):
                break
            vals = np.asarray(exact[r, c]).ravel().astype(np.float32)
            passes += len(r) + len(set(r.tolist()) - scored_rows)
            scored_rows |= set(r.tolist())
            pool_v, mask = _set_exact(cur.pool, cur.exact["pool"], r, c, vals)
            cur = Kernels("utility", pool=pool_v, exact={"pool": mask}, meta=cur.meta,
                          diagonal=cur.diagonal)
        print(f"{frac:g}: value ratio by round {ratios}; verification passes {spent}")


if __name__ == "__main__":
    main()
