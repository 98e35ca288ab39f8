"""The same sparse utility kernel in this process and on a local Ray cluster with 1 and 2 workers.

    python benchmarks/bench_ray.py [--rows 16] [--k 8] [--dtype bfloat16] [--block 2]
                                   [--local-threads 1,2]

Every arm computes the same pairs (the first N demo rows, each with its k nearest rows by
sentence embedding + 4 random; found once, before the timed runs) with the pair store off:

- local with 1 thread (and 2 with ``--local-threads 1,2``; ``DELIFT_NUM_THREADS``);
- Ray with 1 and 2 worker actors of one thread each (``backend="ray"``), timed warm (the actors
  and their models are started by an untimed 2-row run first; that start-up is printed apart).

Prints pairs/s of each arm, Ray's overhead against the 1-thread local arm, the largest value
difference from the local arm, and the per-worker rate that benchmarks/README.md scales to
larger pools on paper.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from delift_core.data.dataset import load_dataset
from delift_core.kernels.embedding import embed_texts, sample_text
from delift_core.lm.models import load_causal_lm, load_embedder
from delift_core.kernels.sparse import neighbour_pairs
from delift_core.kernels.utility import UtilityKernel
from delift_core.kernels.utility_settings import UtilitySettings


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--block", type=int, default=2, help="examples per work unit")
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    ap.add_argument("--local-threads", default="1", help="comma-separated thread counts")
    args = ap.parse_args()
    import ray

    from delift_core.kernels import ray_backend

    pool = load_dataset("demo:pool").subset(range(args.rows))
    lm, emb = load_causal_lm(dtype=args.dtype), load_embedder()
    e = embed_texts(emb, [sample_text(p, r) for p, r in zip(pool.prompts, pool.responses)],
                    use_cache=False)
    rows, cols = neighbour_pairs(e, e, args.k)
    n_pairs = len(rows)
    settings = UtilitySettings(block_size=args.block)
    results: dict[str, tuple[float, np.ndarray]] = {}

    def timed(label: str, engine: UtilityKernel) -> None:
        t0 = time.perf_counter()
        res = engine.compute(pool, pool, pairs=(rows, cols))
        results[label] = (time.perf_counter() - t0, res.values.toarray())
        print(f"{label:22s} {results[label][0]:7.1f} s  "
              f"{(n_pairs + args.rows) / results[label][0]:6.2f} passes/s", flush=True)

    for threads in sorted({1, *(int(t) for t in args.local_threads.split(","))}):
        os.environ["DELIFT_NUM_THREADS"] = str(threads)
        timed(f"local, {threads} thread(s)", UtilityKernel(lm, settings, use_cache=False))
    os.environ["DELIFT_NUM_THREADS"] = "1"  # the driver's own plain passes, as in arm 1
    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    t_init = time.perf_counter() - t0
    warm = pool.subset(range(2))
    for workers in (1, 2):
        opts = {"workers": workers, "threads": 1}
        t0 = time.perf_counter()
        UtilityKernel(lm, settings, use_cache=False, backend="ray", ray_options=opts).compute(
            warm, warm)
        t_start = time.perf_counter() - t0
        print(f"ray {workers} worker(s): actors + model load + a 2x2 kernel {t_start:.1f} s "
              f"(ray.init {t_init:.1f} s once)", flush=True)
        timed(f"ray, {workers} worker(s)", UtilityKernel(lm, settings, use_cache=False,
                                                         backend="ray", ray_options=opts))
        ray_backend.shutdown_workers()
    ray.shutdown()
    base_t, base_v = results["local, 1 thread(s)"]
    print(f"model {args.dtype}, {args.rows} rows, k={args.k} (+4 random): {n_pairs} pairs + "
          f"{args.rows} plain passes, work units of {args.block} examples")
    for label, (t, v) in results.items():
        print(f"{label:22s} {t / base_t:5.2f}x the time of local 1 thread, max |diff| "
              f"{np.abs(v - base_v).max():.2e}")
    per_worker = n_pairs / results["ray, 1 worker(s)"][0]
    print(f"per-worker rate (ray, 1 worker, 1 thread): {per_worker:.2f} pairs/s; "
          f"2 workers: {n_pairs / results['ray, 2 worker(s)'][0]:.2f} pairs/s")


if __name__ == "__main__":
    main()
