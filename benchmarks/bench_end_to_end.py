"""From data to selected subset on the demo pool (240 rows): the utility kernel, sparse k = 16.

    python benchmarks/bench_end_to_end.py [--k 16] [--rows 240] [--fidelity-rows 0]

Times every stage (model and embedder loading, embedding, the sparse utility kernel, FL
selection at 30 %) through the same pipeline the CLI and app use (selection.compute_kernels with
``neighbours``, then selection.select), with the kernel cache off. The full 240 x 240 kernel is
not run by default (its time is estimated from the measured pairs/s); --fidelity-rows N computes
the full kernel on the first N rows and compares the sparse selection with the full one.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from bench_kernel import body_only_tokens_per_s, flops_per_token
from delift_core.data.dataset import load_dataset
from delift_core.lm.models import load_causal_lm, load_embedder
from delift_core.selection.objectives.facility_location import FacilityLocation
from delift_core.kernels.builder import compute_kernels
from delift_core.selection.select import select
from delift_core.kernels.sparse import fidelity
from delift_core.kernels.matrices import minmax_scale


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--rows", type=int, default=240)
    ap.add_argument("--budget", default="0.3")
    ap.add_argument("--fidelity-rows", type=int, default=0)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = ap.parse_args()
    t_all = time.perf_counter()
    pool = load_dataset("demo:pool")
    if args.rows < len(pool):
        pool = pool.subset(range(args.rows))
    t0 = time.perf_counter()
    lm = load_causal_lm(dtype=args.dtype)
    emb = load_embedder()
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    kern = compute_kernels(pool, kind="utility", lm=lm, embedder=emb, use_cache=False,
                           neighbours=args.k)
    t_kernel = time.perf_counter() - t0
    t0 = time.perf_counter()
    sel = select(pool, "fl", kern, args.budget)
    t_select = time.perf_counter() - t0
    total = time.perf_counter() - t_all
    m = kern.meta["pool"]
    pairs = kern.pool.nnz
    print(f"model dtype {args.dtype}, torch threads {__import__('torch').get_num_threads()}")
    print(f"demo pool {len(pool)} rows, k={args.k} (+4 random): {pairs} pairs of "
          f"{len(pool) ** 2} ({pairs / len(pool) ** 2:.1%})")
    print(f"load model+embedder {t_load:.1f} s | embed + sparse utility kernel {t_kernel:.1f} s "
          f"({(pairs + len(pool)) / m['seconds']:.2f} sequences/s in the engine) | FL select "
          f"{t_select:.2f} s -> {len(sel.selected_indices)} rows | TOTAL {total:.1f} s")
    f_body, f_head = flops_per_token(lm)
    work = m["tokens_processed"] * f_body + m["positions_scored"] * f_head
    body_tps = body_only_tokens_per_s(lm)
    limit_s = work / (body_tps * f_body)
    print(f"work (model FLOPs from the counted tokens): {m['tokens_processed']:,} body tokens + "
          f"{m['positions_scored']:,} scored positions = {work / 1e12:.1f} TFLOP; the kernel ran at "
          f"{work / m['seconds'] / 1e9:.0f} GFLOP/s; the body alone runs at "
          f"{body_tps * f_body / 1e9:.0f} GFLOP/s here (32 x 128 tokens), so this work needs at "
          f"least ~{limit_s:.0f} s on this machine at this precision")
    est = (len(pool) ** 2 + len(pool)) / ((pairs + len(pool)) / m["seconds"])
    print(f"full kernel ({len(pool) ** 2} pairs) not run: about {est / 60:.0f} min at the same rate")
    if args.fidelity_rows:
        n = args.fidelity_rows
        sub = pool.subset(range(n))
        t0 = time.perf_counter()
        full = compute_kernels(sub, kind="utility", lm=lm, use_cache=False)
        t_full = time.perf_counter() - t0
        sparse = compute_kernels(sub, kind="utility", lm=lm, embedder=emb, use_cache=False,
                                 neighbours=args.k)
        b = max(1, int(round(0.3 * n)))
        full_obj = FacilityLocation(minmax_scale(full.pool))
        f = fidelity(full_obj, select(sub, "fl", sparse, b).order,
                     select(sub, "fl", full, b).order, b)
        print(f"fidelity on the first {n} rows (full kernel {t_full:.0f} s), budget {b}: "
              f"f_full(sparse pick) / f_full(full pick) = {f['value_ratio']:.4f}, overlap "
              f"{f['overlap']:.3f}")


if __name__ == "__main__":
    main()
