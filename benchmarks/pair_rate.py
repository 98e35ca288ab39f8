"""Utility pairs per second of the default model in each precision, on this machine, side by
side in one run: 72 pairs (12 rows of ``bench_learned``'s 2,000-row seed-1 pool x 6 seeded
random columns, plus the 12 rows' plain passes), pair store off, after a 2-pair warm-up.

    python benchmarks/pair_rate.py float32 bfloat16

Rows 40 to 51 of that pool are longer than its median, so the rates are below a whole pool's;
what the run is for is the ratio between precisions on one CPU.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402

from bench_learned import DATA  # noqa: E402
from delift_core.data.dataset import load_dataset  # noqa: E402
from delift_core.kernels.utility import UtilityKernel  # noqa: E402
from delift_core.lm.models import load_causal_lm  # noqa: E402


def main(dtypes: list[str]) -> None:
    full = load_dataset(str(DATA))
    pool = full.subset(sorted(np.random.default_rng(1).choice(len(full), 2000, replace=False)
                              .tolist()))
    rows = pool.subset(list(range(40, 52)))
    r = np.repeat(np.arange(12), 6)
    c = np.random.default_rng(0).choice(2000, 72)
    for dt in dtypes or ["float32", "bfloat16"]:
        engine = UtilityKernel(load_causal_lm(None, dtype=dt), use_cache=False)
        engine.compute(rows.subset([0]), pool, pairs=(np.zeros(2, int), c[:2]))  # warm-up
        t0 = time.time()
        engine.compute(rows, pool, pairs=(r, c))
        print(f"{dt}: {72 / (time.time() - t0):.2f} pairs/s (plus 12 plain passes)", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
