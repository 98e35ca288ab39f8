"""What the Select page's "Round 1 scores ..." line costs on each rerun at a real pool's size,
against the FL selection it describes, side by side in one run (no model).

    python benchmarks/bench_first_round.py [--rows 16248] [--columns 34] [--budget 0.1]

A synthetic learned sparse kernel: each row holds ``--columns`` random columns (the learned
kernel's K = 32 neighbours + 2 random), uniform values, 3 % of its pairs marked exact.
:func:`delift_core.selection.verify.first_round` (covers only, and exploring a tenth of the
columns) is timed on its first call, which builds the scaled kernel and compiles, and on later
calls (what a page rerun pays: the scaled kernel is kept on the ``Kernels`` object), each as a
ratio to the time of the greedy FL selection at ``--budget`` on the same scaled kernel.
"""

from __future__ import annotations

import argparse
import time
from types import SimpleNamespace

import numpy as np
import scipy.sparse as sp

from delift_core.kernels.builder import Kernels
from delift_core.selection.greedy import greedy_maximize
from delift_core.selection.objectives.facility_location import FacilityLocation
from delift_core.selection.verify import first_round


def learned_kernel(n: int, columns: int, exact_share: float, seed: int) -> Kernels:
    """A sparse n x n kernel marked learned, ``columns`` random columns per row."""
    rng = np.random.default_rng(seed)
    rows = np.repeat(np.arange(n), columns)
    values = sp.csr_matrix((rng.random(n * columns).astype(np.float32),
                            (rows, rng.integers(0, n, n * columns))), shape=(n, n))
    values.sum_duplicates()
    mask = values.copy()
    mask.data = (rng.random(mask.nnz) < exact_share).astype(np.float32)
    mask.eliminate_zeros()
    return Kernels(kind="utility", pool=values, exact={"pool": mask},
                   meta={"kind": "utility", "pool": {"learned": True}})


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=16248)
    ap.add_argument("--columns", type=int, default=34)
    ap.add_argument("--budget", type=float, default=0.1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    kern = learned_kernel(args.rows, args.columns, 0.03, args.seed)
    k = int(round(args.budget * args.rows))
    greedy_maximize(FacilityLocation(kern.scaled("pool")), 5)  # compile
    res, t_sel = timed(lambda: greedy_maximize(FacilityLocation(kern.scaled("pool")), k))
    sel = SimpleNamespace(selected_indices=np.asarray(res.order, np.int64))
    print(f"{args.rows:,} rows x {args.columns} columns ({kern.pool.nnz:,} pairs), "
          f"FL selection of {k:,}: {t_sel:.3f} s")
    for explore in (0.0, 0.1):
        plan, t_first = timed(lambda: first_round(kern, sel, explore))
        later = [timed(lambda: first_round(kern, sel, explore))[1] for _ in range(args.repeats)]
        t_later = float(np.median(later))
        print(f"first_round(explore={explore:g}): {plan}; first call {t_first:.3f} s "
              f"({t_first / t_sel:.2f} x the selection), later calls {t_later:.3f} s "
              f"({t_later / t_sel:.3f} x the selection, median of {args.repeats})")


if __name__ == "__main__":
    main()
