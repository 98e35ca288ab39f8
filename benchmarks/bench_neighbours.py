"""The neighbour search's memory and time: this checkout's ``neighbour_pairs`` against the one of
an earlier commit (default: before the bounded chunks), side by side, same inputs.

    python benchmarks/bench_neighbours.py [--rows 4096] [--cols 100000] [--old-rev b00f287^]

Each arm runs in its own process (so its peak is its own): ``rows`` targets against ``cols``
random unit vectors (384 dimensions, seed 0), K = 32 + 2 random. Printed per arm: resident
memory before the call, the call's peak above it (``ru_maxrss``), its seconds; then whether both
arms gave the same pairs. The earlier version is read with ``git show REV:delift_core/kernels/
sparse.py`` (so it needs this repository's history).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

ARM = r'''
import importlib.util, json, resource, sys, time
import numpy as np
sys.path.insert(0, {root!r})
spec = importlib.util.spec_from_file_location("sparse_arm", {path!r})
m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
rng = np.random.default_rng(0)
e = rng.standard_normal(({cols}, 384)).astype(np.float32)
e /= np.linalg.norm(e, axis=1, keepdims=True)
t = e[:{rows}]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t0 = time.perf_counter()
r, c = m.neighbour_pairs(t, e, 32, n_random=2, seed=0)
secs = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
np.save({out!r}, np.stack([r, c]))
print(json.dumps({{"before_mib": before, "peak_above_mib": peak - before, "seconds": secs,
                  "pairs": int(len(r))}}))
'''


def run_arm(path: Path, rows: int, cols: int, out: Path) -> dict:
    code = ARM.format(root=str(ROOT), path=str(path), rows=rows, cols=cols, out=str(out))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--cols", type=int, default=100_000)
    ap.add_argument("--old-rev", default="b00f287^",
                    help="the commit whose neighbour search is the other arm")
    args = ap.parse_args()
    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "sparse_old.py"
        try:
            old.write_text(subprocess.run(
                ["git", "-C", str(ROOT), "show", f"{args.old_rev}:delift_core/kernels/sparse.py"],
                capture_output=True, text=True, check=True).stdout)
        except subprocess.CalledProcessError as e:
            print(f"cannot read sparse.py at {args.old_rev!r} from git: {e.stderr.strip()}",
                  file=sys.stderr)
            return 2
        arms = {f"{args.old_rev}": old, "this checkout": ROOT / "delift_core/kernels/sparse.py"}
        got, pairs = {}, {}
        for name, path in arms.items():
            out = Path(tmp) / f"{len(got)}.npy"
            got[name] = run_arm(path, args.rows, args.cols, out)
            pairs[name] = np.load(out)
        print(f"neighbour search, {args.rows:,} rows x {args.cols:,} columns, K = 32 + 2")
        for name, g in got.items():
            print(f"  {name:<16} before {g['before_mib']:,.0f} MiB, peak +{g['peak_above_mib']:,.0f}"
                  f" MiB, {g['seconds']:.1f} s, {g['pairs']:,} pairs")
        a, b = pairs.values()
        print(f"same pairs: {a.shape == b.shape and bool((a == b).all())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
