"""Fingerprint the values delift computes: kernels, selections and exported rows.

Runs a fixed set of ``delift`` commands on the demo data (embedding kernels for every stage and
objective, sparse kernels, the default model's utility kernel on a few rows, dense and sparse,
both target directions, every row format) into ``--work`` and prints one JSON object: each output
file's SHA-256, with JSON files hashed after dropping what is allowed to change (timings, versions,
paths, the metadata's shape). Run it before and after a refactor and compare the two files::

    python scripts/output_fingerprint.py --work /tmp/fp-a > before.json
    python scripts/output_fingerprint.py --work /tmp/fp-b > after.json
    python scripts/output_fingerprint.py --compare before.json after.json

Utility kernels run with ``--no-cache`` so that values are computed, not read from the pair store.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

EMB = ["--kernel", "embedding"]
UTIL8 = ["--kernel", "utility", "--limit", "8", "--no-cache"]
RUNS: dict[str, list[str]] = {
    "fl_emb": ["select", "--pool", "demo:pool", *EMB, "--objective", "fl", "--budget", "0.3"],
    "gc_emb": ["select", "--pool", "demo:pool", *EMB, "--objective", "gc", "--budget", "20"],
    "flmi_emb": ["select", "--pool", "demo:pool", "--target", "demo:target", *EMB,
                 "--objective", "flmi", "--budget", "0.1"],
    "flqmi_emb": ["select", "--pool", "demo:pool", "--target", "demo:target", *EMB,
                  "--objective", "flqmi", "--budget", "0.1"],
    "flcg_emb": ["select", "--pool", "demo:pool", "--existing", "demo:existing", *EMB,
                 "--objective", "flcg", "--budget", "0.1", "--format", "csv"],
    "random": ["select", "--pool", "demo:pool", "--objective", "random", "--budget", "0.2",
               "--seed", "3", "--format", "parquet"],
    "fl_emb_sparse": ["select", "--pool", "demo:pool", *EMB, "--neighbours", "8",
                      "--objective", "fl", "--budget", "0.2", "--format", "hf"],
    "stochastic": ["select", "--pool", "demo:pool", *EMB, "--objective", "fl", "--budget", "0.2",
                   "--method", "stochastic", "--seed", "0"],
    "kernel_util": ["kernel", "--pool", "demo:pool", *UTIL8, "--target", "demo:target"],
    "fl_util": ["select", "--pool", "demo:pool", *UTIL8, "--objective", "fl", "--budget", "3"],
    "fl_util_reference": ["select", "--pool", "demo:pool", *UTIL8, "--objective", "fl",
                          "--budget", "3", "--diagonal", "reference"],
    "flmi_util_ref": ["select", "--pool", "demo:pool", "--target", "demo:target", *UTIL8,
                      "--objective", "flmi", "--budget", "3", "--target-direction", "reference"],
    "fl_util_sparse": ["select", "--pool", "demo:pool", *UTIL8, "--neighbours", "3",
                       "--neighbour-random", "1", "--objective", "fl", "--budget", "3"],
}
VOLATILE = {"seconds", "total_seconds", "kernel_seconds", "selection_seconds", "started",
            "finished", "created", "time", "times", "versions", "command", "out", "path", "paths",
            "source", "pool_file", "meta", "kernel_meta", "kernel", "manifest", "cache", "store"}


def _norm(x: object) -> object:
    if isinstance(x, dict):
        return {k: _norm(v) for k, v in sorted(x.items()) if k not in VOLATILE}
    if isinstance(x, list):
        return [_norm(v) for v in x]
    return x


def _hash_file(p: Path) -> str:
    if p.suffix == ".json" and p.name in ("manifest.json", "kernel_meta.json"):
        return "metadata (not compared)"
    if p.suffix == ".json" and p.name not in ("selected.json", "rejected.json"):
        data = _norm(json.loads(p.read_text()))
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
    if p.name in ("state.json", "dataset_info.json") or p.name.startswith("cache-"):
        return "hf metadata (not compared)"
    return hashlib.sha256(p.read_bytes()).hexdigest()


def fingerprint(work: Path) -> dict:
    out: dict[str, dict] = {}
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    for name, cmd in RUNS.items():
        folder = work / name
        r = subprocess.run([sys.executable, "-m", "delift_core", "-q", *cmd, "--out", str(folder)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            out[name] = {"error": r.stderr.strip().splitlines()[-1:]}
            continue
        out[name] = {str(p.relative_to(folder)): _hash_file(p)
                     for p in sorted(folder.rglob("*")) if p.is_file()
                     and not p.name.startswith(".")}
        print(f"{name}: {len(out[name])} files", file=sys.stderr)
    return out


def compare(a: dict, b: dict) -> int:
    bad = 0
    for run in sorted(set(a) | set(b)):
        fa, fb = a.get(run, {}), b.get(run, {})
        for f in sorted(set(fa) | set(fb)):
            if fa.get(f) != fb.get(f):
                bad += 1
                print(f"DIFFERS {run}/{f}: {fa.get(f)} vs {fb.get(f)}")
    n = sum(len(v) for v in a.values())
    print(f"{n - bad} of {n} outputs identical" if not bad else f"{bad} outputs differ")
    return 1 if bad else 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/delift-fingerprint")
    ap.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"))
    args = ap.parse_args()
    if args.compare:
        sys.exit(compare(*(json.loads(Path(f).read_text()) for f in args.compare)))
    print(json.dumps(fingerprint(Path(args.work)), indent=1, sort_keys=True))
