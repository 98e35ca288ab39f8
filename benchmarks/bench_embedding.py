"""Embedding throughput: delift's per-text cached embedding against plain
``SentenceTransformer.encode`` on the same rows, side by side in one run; and a large pool file
for the 100,000-row end-to-end run.

    python benchmarks/bench_embedding.py [--rows 3000] [--batch 64]
    python benchmarks/bench_embedding.py --write-pool /tmp/pool100k.jsonl --pool-rows 100000

Rows are short P3 / GSM8K / Code Alpaca samples from ../shared/data (prompt + newline + response,
the text the SE kernel embeds). Arms: plain ``encode`` over all texts (it sorts by length within
the call); ``embed_texts`` into an empty cache (length-sorted chunks, each stored in SQLite); the
same call again (every text reused). ``--write-pool`` writes a JSONL pool of N distinct rows made
from the same sources (each source row repeated with a numbered variant suffix, seeded order), for
``delift select --kernel embedding --neighbours 32`` at scale.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def source_rows(max_chars: int = 400) -> list[tuple[str, str]]:
    """(prompt, response) pairs from the shared data, short ones only."""
    out = []
    for line in (SHARED / "p3_sample.jsonl").read_text().split("\n"):  # not splitlines():
        if not line.strip():  # texts hold U+2028 line separators
            continue
        r = json.loads(line)
        out.append((r["prompt"], r["completion"]))
    for line in (SHARED / "gsm8k_train.jsonl").read_text().split("\n"):
        if not line.strip():
            continue
        r = json.loads(line)
        out.append((r["question"], r["answer"]))
    for r in json.loads((SHARED / "code_alpaca_2k.json").read_text()):
        out.append(((r["instruction"] + "\n" + r["input"]).strip(), r["output"]))
    return [(p, a) for p, a in out if p and a and len(p) + len(a) <= max_chars]


def write_pool(path: str, n: int, seed: int = 0) -> None:
    rows = source_rows()
    random.Random(seed).shuffle(rows)
    with open(path, "w") as f:
        for k in range(n):
            p, a = rows[k % len(rows)]
            variant = k // len(rows)
            f.write(json.dumps({"id": f"r{k}", "prompt": p + (f" (variant {variant})" if variant
                                                               else ""),
                                "response": a}) + "\n")
    print(f"wrote {n} rows ({len(rows)} distinct source rows, seed {seed}) to {path}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--write-pool")
    ap.add_argument("--pool-rows", type=int, default=100_000)
    args = ap.parse_args()
    if args.write_pool:
        write_pool(args.write_pool, args.pool_rows)
        return
    os.environ["DELIFT_CACHE_DIR"] = tempfile.mkdtemp(prefix="bench_emb_")
    from delift_core.kernels.embedding import EmbedStats, embed_texts, sample_text
    from delift_core.lm.models import load_embedder

    rows = source_rows()
    random.Random(0).shuffle(rows)
    texts = [sample_text(p, a) for p, a in rows[: args.rows]]
    model = load_embedder()
    model.encode(texts[:64], batch_size=args.batch)  # warm-up (first call allocates)
    t = time.perf_counter()
    plain = model.encode(texts, batch_size=args.batch, convert_to_numpy=True,
                         normalize_embeddings=True, show_progress_bar=False)
    t_plain = time.perf_counter() - t
    stats = EmbedStats()
    t = time.perf_counter()
    ours = embed_texts(model, texts, batch_size=args.batch, stats=stats)
    t_ours = time.perf_counter() - t
    t = time.perf_counter()
    again = embed_texts(model, texts, batch_size=args.batch)
    t_again = time.perf_counter() - t
    diff = float(abs(ours - plain).max())
    print(f"{len(texts)} texts, batch {args.batch}, mean {sum(map(len, texts)) / len(texts):.0f} chars")
    print(f"plain SentenceTransformer.encode: {t_plain:7.2f} s = {len(texts) / t_plain:7.1f} rows/s")
    print(f"delift embed_texts (empty cache):  {t_ours:7.2f} s = {len(texts) / t_ours:7.1f} rows/s "
          f"({stats.computed} computed) -> RATIO ours/plain {t_plain / t_ours:.2f}x speed")
    print(f"delift embed_texts (all cached):   {t_again:7.2f} s = {len(texts) / t_again:7.1f} rows/s")
    print(f"max |ours - plain| = {diff:.2e}; equal vectors again: {bool((again == ours).all())}")


if __name__ == "__main__":
    main()
