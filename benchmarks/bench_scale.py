"""FL and FLCG on a sparse kernel at n = 50,000 (k = 32 neighbours): wall time and peak memory.

    python benchmarks/bench_scale.py [--n 50000] [--k 32] [--budget 5000] [--fidelity-n 5000]

The kernel is (cos + 1) / 2 between random clustered unit vectors, kept for each row's k nearest
columns plus 4 seeded random ones (delift_core.kernels.sparse.neighbour_pairs), as scipy CSR float32.
Peak memory: Python-traced allocations (tracemalloc, numpy included) of the selection step, and
the process's maximum resident set. Also reports sparse-vs-dense fidelity at --fidelity-n.
"""

from __future__ import annotations

import argparse
import resource
import time
import tracemalloc

import numpy as np
import scipy.sparse as sp

from delift_core.selection.greedy import greedy_maximize
from delift_core.selection.objectives.facility_location import FacilityLocation
from delift_core.selection.objectives.flcg import FacilityLocationConditionalGain
from delift_core.kernels.sparse import fidelity, neighbour_pairs


def embeddings(rng, n: int, d: int = 32, clusters: int = 200) -> np.ndarray:
    centres = rng.normal(size=(clusters, d))
    x = centres[rng.integers(0, clusters, n)] + 0.6 * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def sparse_kernel(a: np.ndarray, b: np.ndarray, k: int) -> sp.csr_matrix:
    r, c = neighbour_pairs(a, b, k, n_random=4, seed=0)
    vals = np.empty(len(r), np.float32)
    for s in range(0, len(r), 1 << 16):
        vals[s: s + (1 << 16)] = np.einsum("ij,ij->i", a[r[s: s + (1 << 16)]], b[c[s: s + (1 << 16)]])
    vals = np.clip((vals + 1) / 2, 0, 1).astype(np.float32)
    return sp.csr_matrix((vals, (r, c)), shape=(len(a), len(b)), dtype=np.float32)


def measure(label: str, fn) -> object:
    tracemalloc.start()
    t0 = time.perf_counter()
    out = fn()
    t = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"{label}: {t:.2f} s, peak traced memory {peak / 2**30:.3f} GiB", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=50000)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--budget", type=int, default=5000)
    ap.add_argument("--fidelity-n", type=int, default=5000)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    x = embeddings(rng, args.n)
    e = embeddings(rng, args.n // 10)
    t0 = time.perf_counter()
    pool = sparse_kernel(x, x, args.k)
    existing = sparse_kernel(x, e, args.k)
    print(f"n={args.n} k={args.k} (+4 random) budget={args.budget}: pool kernel nnz={pool.nnz} "
          f"({(pool.data.nbytes + pool.indices.nbytes + pool.indptr.nbytes) / 2**20:.0f} MiB), "
          f"existing {existing.shape} nnz={existing.nnz}; kernels built in "
          f"{time.perf_counter() - t0:.1f} s (not counted below)", flush=True)
    res = measure("FL   sparse objective + lazy greedy",
                  lambda: greedy_maximize(FacilityLocation(pool), args.budget))
    print(f"     f = {res.values[-1]:.2f}, evaluations {res.evaluations}")
    res = measure("FLCG sparse objective + lazy greedy",
                  lambda: greedy_maximize(FacilityLocationConditionalGain(pool, existing),
                                          args.budget))
    print(f"     f = {res.values[-1]:.2f}, evaluations {res.evaluations}")
    print(f"process max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")

    if args.fidelity_n:
        m = args.fidelity_n
        xs = x[:m]
        dense = np.clip((xs @ xs.T + 1) / 2, 0, 1).astype(np.float32)
        b = max(1, m // 10)
        full_obj = FacilityLocation(dense)
        full = greedy_maximize(full_obj, b).order
        sparse_order = greedy_maximize(FacilityLocation(sparse_kernel(xs, xs, args.k)), b).order
        f = fidelity(full_obj, sparse_order, full, b)
        print(f"fidelity at n={m}, budget {b}: f_full(sparse pick) / f_full(full pick) = "
              f"{f['value_ratio']:.4f}, overlap {f['overlap']:.3f}")


if __name__ == "__main__":
    main()
