"""Which pair features let the learned kernel's ridge regression rank a row's examples better
than cosine similarity: grouped 5-fold cross-validation on exact pairs already in the pair store.

    python benchmarks/dev_predictor_features.py

The rows: every P3-sample row (``../shared/data/p3_sample.jsonl``) with exact pairs in the pair
store's bfloat16 value space of the default settings (the whole-sample learned run,
``delift select --pool ../shared/data/p3_sample.jsonl --kernel utility --learned ...``, leaves
about 460 anchor rows of 12 pairs there), minus every row of ``bench_learned``'s pools
(:data:`BENCH_POOLS`: seed 1 at 600 and 2,000 rows, seed 3 at 1,000; the benchmark's pools are
never used to choose the design). What it prints depends on what the pair store holds when it
runs: each learned run adds anchor rows. Embeddings come from the embedding store (rows without one are skipped). Each feature set is fitted by
:class:`delift_core.kernels.learned.Predictor` (the shipped ridge, penalty chosen inside the
training folds) and measured on the held-out fold's rows by :func:`learned.fidelity`.
"""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from delift_core.data.dataset import load_dataset  # noqa: E402
from delift_core.kernels.embedding import sample_text  # noqa: E402
from delift_core.kernels.learned import Predictor, fidelity  # noqa: E402
from delift_core.kernels.utility import store_path  # noqa: E402
from delift_core.lm.models import DEFAULT_EMBEDDER, cache_dir  # noqa: E402
from delift_core.stores.embedding_store import text_key  # noqa: E402
from delift_core.stores.pairstore import row_key  # noqa: E402
from delift_core.kernels.utility_settings import UtilitySettings  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "p3_sample.jsonl"
BENCH_POOLS = ((1, 600), (1, 2000), (3, 1000))
"""(seed, rows) of every pool bench_learned has reported on: never development rows."""


def load() -> dict[str, np.ndarray]:
    """The exact pairs (row, column, UF) of the development rows, embeddings and lengths."""
    full = load_dataset(str(DATA))
    n = len(full)
    bench: set[int] = set()
    for seed, rows in BENCH_POOLS:  # bench_learned's pools: rng(seed).choice(n, rows)
        bench |= set(np.random.default_rng(seed).choice(n, rows, replace=False).tolist())
    idx = {row_key(p, r): i for i, (p, r) in enumerate(zip(full.prompts, full.responses))}
    if not store_path().exists():
        raise SystemExit(f"no pair store at {store_path()}: run the whole-sample learned select "
                         "first (see this script's docstring)")
    con = sqlite3.connect(store_path())
    want = UtilitySettings().value_key()
    import json
    space = next((s for s, info, dtype in con.execute("select id, info, dtype from spaces")
                  if dtype == "bfloat16" and json.loads(info).get("settings") == want), None)
    if space is None:
        raise SystemExit(f"{store_path()} holds no bfloat16 pairs of the default settings")
    plain = {idx[t]: v for t, v in con.execute("select target, value from plain where space=?",
                                                (space,)) if t in idx and v is not None}
    trip = [(idx[t], idx[e], plain[idx[t]] - v) for t, e, v in con.execute(
        "select target, example, value from pairs where space=?", (space,))
        if t in idx and e in idx and v is not None and idx[t] in plain and idx[t] not in bench]
    if len(trip) < 100:
        raise SystemExit(f"only {len(trip)} stored exact pairs of development rows: too few")
    r, c, uf = (np.array(x) for x in zip(*trip))
    keys = {text_key(sample_text(p, q)): i for i, (p, q) in enumerate(zip(full.prompts,
                                                                            full.responses))}
    emb, have = np.zeros((n, 384), np.float32), np.zeros(n, bool)
    econ = sqlite3.connect(cache_dir() / "embeddings.sqlite")
    for k, vec in econ.execute("select key, vec from vectors where embedder=?",
                               (DEFAULT_EMBEDDER,)):
        if k in keys:
            emb[keys[k]], have[keys[k]] = np.frombuffer(vec, np.float32), True
    ok = have[r] & have[c]
    lens = np.log1p([len(p) + len(q) for p, q in zip(full.prompts, full.responses)])
    d_plain = np.full(n, np.nan)
    d_plain[list(plain)] = list(plain.values())
    return {"d_plain": d_plain, "r": r[ok].astype(int), "c": c[ok].astype(int), "y": uf[ok], "emb": emb,
            "have": have, "lens": lens.astype(np.float32)}


def main() -> None:
    d = load()
    r, c, y, emb, lens = d["r"], d["c"], d["y"], d["emb"], d["lens"]
    rows = np.unique(r)
    print(f"{len(y):,} exact pairs of {len(rows)} development rows")
    base = Predictor.for_rows(emb[d["have"]])
    pa_all = (emb - base.mean) @ base.components.T
    fold_of = dict(zip(np.random.default_rng(0).permutation(rows).tolist(),
                       np.arange(len(rows)) % 5))
    fold = np.array([fold_of[g] for g in r.tolist()])

    def parts(ri: np.ndarray, ci: np.ndarray, which: list[str]) -> np.ndarray:
        cos = np.einsum("ij,ij->i", emb[ri], emb[ci])[:, None]
        pa, pb = pa_all[ri], pa_all[ci]
        out = {"cos1": cos, "leni": lens[ri][:, None], "cos": np.hstack([cos, cos ** 2]), "pa": pa, "pb": pb, "pa*pb": pa * pb,
               "pa*cos": pa * cos, "pb*cos": pb * cos,
               "len": np.stack([lens[ri], lens[ci]], 1), "1": np.ones((len(ri), 1))}
        s = d["d_plain"][ri][:, None]  # the target's exact plain distance (its headroom)
        out["d_plain*cos"] = np.hstack([s, s * cos, s * cos ** 2])
        return np.hstack([out[w] for w in which + ["1"]])

    sets = [["cos", "pa", "pb", "pa*pb", "len"],  # the shipped predictor
            ["cos", "pa", "len"], ["cos", "pa", "pb", "len"], ["cos", "pa", "pa*cos", "len"],
            ["cos", "pa", "pa*cos", "pb", "pb*cos", "len"],
            ["cos", "pa", "pb", "pa*pb", "pa*cos", "pb*cos", "len"],
            ["cos", "pa", "pb", "pa*pb", "len", "d_plain*cos"],  # one plain pass per row
            # within a row, a rank by cosine alone (cos1: no square) scaled per row
            ["cos1", "pa", "pa*cos", "leni"], ["cos1", "pa", "pa*cos", "len"]]
    cos = np.einsum("ij,ij->i", emb[r], emb[c])
    print(f"{'features':<42} {'pair Sp.':>8} {'R²':>6} {'row Sp.':>8} {'cosine':>7} {'top-3':>6}")
    for which in sets:
        pred = np.empty(len(y))
        for f in range(5):
            tr, te = fold != f, fold == f
            p = Predictor(base.mean, base.components)
            p.fit(parts(r[tr], c[tr], which), y[tr], r[tr], 0)
            pred[te] = parts(r[te], c[te], which) @ p.weights
        fid = fidelity(y, pred, r, baseline=cos)
        print(f"{' + '.join(which):<42} {fid['pair_spearman']:>8.3f} {fid['pair_r2']:>6.3f} "
              f"{fid['row_spearman_median']:>8.3f} {fid['cosine_row_spearman_median']:>7.3f} "
              f"{fid['top_k_recovered']:>6.3f}")
    allocation(d, base)


def allocation(d: dict[str, np.ndarray], base: Predictor) -> None:
    """The same number of training pairs spread as fewer rows with more examples each or the
    reverse: 150 held-out rows, the shipped features, three random splits."""
    r, c, y, emb, lens = d["r"], d["c"], d["y"], d["emb"], d["lens"]
    rows = np.unique(r)
    print("\nrows x examples per row (the same pairs), shipped features, 150 held-out rows")
    for rep in range(3):
        rng = np.random.default_rng(rep)
        perm = rng.permutation(rows)
        te = np.isin(r, perm[:150])
        cos = np.einsum("ij,ij->i", emb[r[te]], emb[c[te]])
        line = []
        for n_rows, per in ((75, 12), (150, 6), (300, 3)):
            tr = np.zeros(len(r), bool)
            for i in perm[150: 150 + n_rows]:
                tr[rng.permutation(np.flatnonzero(r == i))[:per]] = True
            p = Predictor(base.mean, base.components)
            p.fit(p.features(emb, emb, r[tr], c[tr], lens, lens), y[tr], r[tr], 0)
            f = fidelity(y[te], p.predict(emb, emb, r[te], c[te], lens, lens), r[te],
                         baseline=cos)
            line.append(f"{n_rows}x{per}: {f['row_spearman_median']:.3f}")
        print(f"  split {rep}: median row Spearman " + ", ".join(line) +
              f" (cosine {f['cosine_row_spearman_median']:.3f})")


if __name__ == "__main__":
    main()
