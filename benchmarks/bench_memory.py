"""Where the memory goes: peak resident memory per phase of a learned utility kernel and an
embedding-kernel selection, sampled every 0.2 s in one process.

    python benchmarks/bench_memory.py --rows 2000 --exact-passes 1500 [--dtype bfloat16]
    python benchmarks/bench_memory.py --kind embedding --pool /tmp/pool100k.jsonl --rows 100000

The pool is the first ``--rows`` rows of ``--pool`` (default ../shared/data/p3_sample.jsonl).
Phases: loading the pool, loading the models, each progress stage the kernel reports
(embedding, exact pairs, predicting, ...), and the FL selection at 10 %. Printed: the resident
memory (RSS) at the start and the peak of each phase, and the overall peak, in MiB.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from delift_core.data.dataset import load_dataset  # noqa: E402

MIB = 1 << 20


class Sampler:
    """RSS of this process every ``every`` seconds, attributed to the phase named last."""

    def __init__(self, every: float = 0.2) -> None:
        self.proc = psutil.Process()
        self.phase = "start"
        self.peaks: dict[str, dict[str, float]] = {}
        self.every = every
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def set(self, phase: str) -> None:
        if phase != self.phase:
            self.phase = phase
            rss = self.proc.memory_info().rss / MIB
            self.peaks.setdefault(phase, {"start_mib": rss, "peak_mib": rss})

    def _run(self) -> None:
        while not self.stop.is_set():
            rss = self.proc.memory_info().rss / MIB
            p = self.peaks.setdefault(self.phase, {"start_mib": rss, "peak_mib": rss})
            p["peak_mib"] = max(p["peak_mib"], rss)
            time.sleep(self.every)

    def __enter__(self) -> "Sampler":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pool", default=str(ROOT.parent / "shared" / "data" / "p3_sample.jsonl"))
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--kind", choices=["learned", "embedding"], default="learned")
    ap.add_argument("--exact-passes", type=int, default=1500)
    ap.add_argument("--neighbours", type=int, default=32)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--no-trim", action="store_true",
                    help="the engine keeps freed heap memory (no malloc_trim between work units): "
                         "the arm to compare with")
    ap.add_argument("--batch-size", type=int, default=None,
                    help="sequences per model batch (default: the engine's)")
    ap.add_argument("--no-cache", action="store_true",
                    help="compute every pass (the pair and embedding stores neither read nor "
                         "written), so two arms do the same work")
    ap.add_argument("--json-out", type=Path)
    args = ap.parse_args()

    from delift_core.kernels.builder import compute_kernels
    if args.no_trim:
        from delift_core.kernels import utility
        utility.release_free_memory = lambda: False
    from delift_core.lm.models import load_causal_lm, load_embedder
    from delift_core.selection.select import select

    with Sampler() as s:
        s.set("loading the pool")
        pool = load_dataset(args.pool)
        pool = pool.subset(range(min(args.rows, len(pool))))
        s.set("loading the models")
        emb = load_embedder()
        lm = load_causal_lm(dtype=args.dtype) if args.kind == "learned" else None
        t = time.time()
        kw = dict(kind="utility", lm=lm, learned=True, exact_passes=args.exact_passes) \
            if args.kind == "learned" else dict(kind="embedding")
        if args.batch_size is not None and args.kind == "learned":
            from delift_core.kernels.utility_settings import UtilitySettings
            kw["settings"] = UtilitySettings(batch_size=args.batch_size)
        kernels = compute_kernels(pool, embedder=emb, neighbours=args.neighbours,
                                  use_cache=not args.no_cache,
                                  progress=lambda label, done, total: s.set(label), **kw)
        kernel_s = time.time() - t
        s.set("FL selection at 10 %")
        sel = select(pool, "fl", kernels, 0.1)
        s.set("end")
    peak = max(p["peak_mib"] for p in s.peaks.values())
    print(f"{args.kind} kernel of {len(pool):,} rows (K = {args.neighbours}) in {kernel_s:.0f} s; "
          f"FL selected {len(sel.selected_indices):,} rows")
    print(f"{'phase':<40} {'RSS at start':>14} {'peak':>10}")
    for phase, p in s.peaks.items():
        print(f"{phase:<40} {p['start_mib']:>10.0f} MiB {p['peak_mib']:>6.0f} MiB")
    print(f"peak resident memory: {peak:,.0f} MiB")
    if args.json_out:
        args.json_out.write_text(json.dumps({"settings": vars(args) | {"pool": args.pool,
                                                                         "json_out": None},
                                             "kernel_seconds": kernel_s, "phases": s.peaks,
                                             "peak_mib": peak}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
