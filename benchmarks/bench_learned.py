"""The learned utility kernel against the exact sparse kernel it stands in for, side by side.

    python benchmarks/bench_learned.py --rows 600 2000 --json-out benchmarks/results/learned.json

(the README table: the defaults below, ``--rows 600 2000``; ``--verify-rounds R`` verifies each
learned kernel's selections for up to R rounds, ``--verify-explore S`` exploring that share
of the pool's columns each round as well; ``--same-k-arm`` adds the learned
kernel at the exact kernel's K, ``--same-k-fractions 0.1 0.25`` that kernel at those fractions of
the exact kernel's passes, ``--no-default-arm`` leaves out the K = 32 kernel; ``--rows all`` runs the whole P3 sample, without the exact arm).

For each pool size (a seeded random subset of ``../shared/data/p3_sample.jsonl``, seed 0) it
measures, in one run:

1. Time per phase of the learned kernel (``compute_kernels(learned=True)``): sentence embedding
   (timed here by one cold :func:`~delift_core.kernels.embedding.embed_rows` call with the
   embedding store off; every kernel of the run is then served those same vectors from memory,
   so the stores never change which vectors a kernel sees), then plan, exact passes, predictor
   training and prediction (the kernel's ``seconds_by_phase``), and the FL greedy selection time
   at each budget (``select(..., full_order=False)``: the greedy stops at the budget; one
   untimed selection per kernel first, so no figure includes compiling the greedy or scaling).
2. The learned kernel's model passes against the exact sparse kernel's at the same K:
   ``rows * (K + R) + rows`` (one pass per pair plus one plain pass per row), as a ratio; also
   the exact kernel's actual pass count (a row's random columns can repeat a neighbour).
3. The learned kernel's held-out fidelity (rows never trained on): pair Spearman and R², median
   row Spearman (and the same for plain cosine similarity, the figure to beat), top-k recovered,
   and whether it is below the fidelity floor.
4. With ``--exact`` (default for pools up to 2,000 rows): the exact sparse kernel (each row's K
   nearest plus R random columns; through the pair store, so a re-run reads it back), and at each
   budget (5 %, 10 %, 30 %) FL selections on the learned kernel, the exact kernel, the embedding
   kernel on the same sparse pattern (DELIFT-SE) and a seeded random selection. Per arm: (a) its
   FL value under the exact kernel / the exact selection's FL value under the exact kernel, and
   (b) its overlap with the exact selection, |A ∩ B| / |B|. FL values are computed by
   :func:`fl_value` on the scaled kernels (``Kernels.scaled("pool")``), checked against each
   selection's own ``objective_value`` (relative 1e-4) before any figure is reported.

The learned kernels are computed with the pair store off (``use_cache=False``): every exact pass
is computed and timed, and ``--exact-passes`` means the same thing in every run (with the store
on, pairs the exact kernel already stored would be free and a re-run would go further). The
exact kernel's wall time is reported as measured with the passes it computed and read back; its
"projected" time is its pass count at the learned kernel's measured exact-phase rate (same model,
same run; an estimate: the exact kernel's pairs share example prefixes more, so its measured rate
per pass can be faster).

Output: one markdown table per pool size (stdout) and a JSON record of every figure with the
command line, date, CPU model and torch threads (stdout; ``--json-out PATH`` writes it too).
Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402

from delift_core import settings as spec  # noqa: E402
from delift_core.data.dataset import Dataset, load_dataset  # noqa: E402
from delift_core.kernels.builder import Kernels, compute_kernels, kernel_report  # noqa: E402
from delift_core.kernels.embedding import embed_rows  # noqa: E402
from delift_core.kernels.learned import LearnedKernelError  # noqa: E402
from delift_core.lm.models import load_causal_lm, load_embedder  # noqa: E402
from delift_core.selection.select import Selection, select  # noqa: E402

log = logging.getLogger("bench_learned")

DATA = ROOT.parent / "shared" / "data" / "p3_sample.jsonl"
BUDGETS = (0.05, 0.10, 0.30)
EXACT_AUTO_MAX_ROWS = 2000
VALUE_RTOL = 1e-4
_DROP_FROM_RECORD = ("heldout_rows_list", "train_rows_list")


# ------------------------------------------------------------------------------------------------
# Helpers


def fl_value(scaled_kernel: Any, indices: Sequence[int] | np.ndarray) -> float:
    """Facility location of the set ``indices`` under a scaled kernel (rows = items covered,
    columns = candidates): sum_i max(0, max_{j in S} s_ij); a sparse kernel's absent entries
    count as 0. Dense numpy arrays and scipy sparse matrices alike."""
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    n = scaled_kernel.shape[0]
    if idx.size == 0:
        return 0.0
    best = np.zeros(n, dtype=np.float64)
    if sp.issparse(scaled_kernel):
        cols = sp.csc_matrix(scaled_kernel)[:, idx].tocsr()
        rmax = cols.max(axis=1)  # over the stored entries and the absent ones (0)
        best = np.asarray(rmax.todense() if sp.issparse(rmax) else rmax,
                          dtype=np.float64).reshape(-1)
    else:
        k = np.asarray(scaled_kernel)
        for s in range(0, idx.size, 256):  # in column blocks: no n x |S| temporary
            best = np.maximum(best, k[:, idx[s: s + 256]].max(axis=1).astype(np.float64))
    return float(np.maximum(best, 0.0).sum())


def check_value(label: str, scaled_kernel: Any, selection: Selection) -> float:
    """``fl_value`` of a selection on the kernel it was made on, asserted equal (relative
    :data:`VALUE_RTOL`) to the selection's own objective value; returns it."""
    mine = fl_value(scaled_kernel, selection.selected_indices)
    theirs = float(selection.objective_value)
    assert abs(mine - theirs) <= VALUE_RTOL * max(abs(theirs), 1e-12), \
        f"{label}: fl_value {mine!r} != objective_value {theirs!r}"
    return mine


class MemoEmbedder:
    """The embedder, serving the vectors of texts it has already embedded from memory (same name,
    so kernels and stores record the real embedder)."""

    def __init__(self, embedder: Any) -> None:
        self.embedder = embedder
        self.delift_name = getattr(embedder, "delift_name", str(embedder))
        self.vectors: dict[str, np.ndarray] = {}

    def encode(self, texts: Sequence[str], **options: Any) -> np.ndarray:
        todo = [t for t in dict.fromkeys(texts) if t not in self.vectors]
        if todo:
            vecs = np.asarray(self.embedder.encode(todo, **options), np.float32)
            self.vectors.update(zip(todo, vecs))
        return np.stack([self.vectors[t] for t in texts]).astype(np.float32)


class Progress:
    """Stage progress to the log (stderr), at most one line per stage every ``every`` seconds."""

    def __init__(self, every: float = 20.0) -> None:
        self.every, self.last = every, {}  # type: ignore[var-annotated]

    def __call__(self, label: str, done: int, total: int) -> None:
        now = time.time()
        if done >= total or now - self.last.get(label, 0.0) >= self.every:
            self.last[label] = now
            log.info("  %s: %s / %s", label, f"{done:,}", f"{total:,}")


def machine() -> dict[str, Any]:
    """CPU model (``/proc/cpuinfo``), cores, torch version and threads."""
    import torch

    from delift_core.lm.scorer import cpu_threads

    from study import cpu_model

    return {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "engine_threads": cpu_threads(),
            "python": platform.python_version()}


def _round(x: Any, nd: int = 4) -> Any:
    return round(float(x), nd) if isinstance(x, (float, np.floating)) and np.isfinite(x) else x


# ------------------------------------------------------------------------------------------------
# One pool size


def learned_arm(pool: Dataset, lm: Any, embedder: MemoEmbedder, args: argparse.Namespace,
                k: int, exact_passes: int | None, nominal_exact: int,
                progress: Progress) -> tuple[Kernels | None, dict[str, Any]]:
    """A learned kernel predicting each row's ``k`` nearest plus R random columns: its kernel
    (None when it could not be fitted) and its figures."""
    log.info("learned kernel, K=%d + R=%d, %s", k, args.neighbour_random,
             f"{exact_passes:,} exact passes" if exact_passes is not None
             else f"{args.exact_minutes} exact minutes")
    t0 = time.perf_counter()
    try:
        kern = compute_kernels(pool, kind="utility", lm=lm, embedder=embedder, use_cache=False,
                               learned=True, exact_passes=exact_passes,
                               exact_minutes=args.exact_minutes,
                               exact_per_row=args.exact_per_row, neighbours=k,
                               neighbour_random=args.neighbour_random, neighbour_seed=args.seed,
                               progress=progress)
    except LearnedKernelError as e:
        log.error("learned kernel K=%d: %s", k, e)
        return None, {"neighbours": k, "error": str(e)}
    wall = time.perf_counter() - t0
    for line in kernel_report(kern):
        log.info("  %s", line)
    m = kern.meta.learned["pool"]
    passes = int(m["passes_computed"]) + int(m["passes_reused"])
    phases = {p: float(m["seconds_by_phase"].get(p, 0.0))
              for p in ("plan", "exact", "training", "prediction")}
    rec = {"neighbours": k, "neighbour_random": args.neighbour_random,
           "exact_passes_budget": exact_passes, "exact_minutes_budget": args.exact_minutes,
           "exact_pairs": int(m["exact_pairs"]), "exact_rows": int(m["exact_rows"]),
           "passes_computed": int(m["passes_computed"]), "passes_reused": int(m["passes_reused"]),
           "passes": passes, "passes_vs_exact_nominal": _round(passes / nominal_exact),
           "predicted_pairs": int(m["predicted_pairs"]), "nnz": int(kern.pool.nnz)
           if sp.issparse(kern.pool) else int(np.size(kern.pool)),
           "exact_mask_nnz": int(kern.exact["pool"].nnz),
           "fidelity": m["fidelity"], "seconds_by_phase": phases,
           "seconds_per_exact_pass": _round(phases["exact"] / m["passes_computed"], 5)
           if m["passes_computed"] else None,
           "kernel_seconds": float(kern.meta.seconds or wall), "wall_seconds": round(wall, 3),
           "embeddings": kern.meta.embeddings,
           "record": {k_: v for k_, v in m.items() if k_ not in _DROP_FROM_RECORD}}
    return kern, rec


def run_pool(full: Dataset, n_rows: int | None, lm: Any, embedder: MemoEmbedder,
             args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    """Every figure for one pool size (``n_rows`` None: the whole file)."""
    rng = np.random.default_rng(args.seed)
    if n_rows is None or n_rows >= len(full):
        pool = full
    else:
        pool = full.subset(sorted(rng.choice(len(full), n_rows, replace=False).tolist()))
    n = len(pool)
    K, R = args.neighbours, args.neighbour_random
    nominal_exact = n * (K + R) + n
    if args.exact_minutes is not None:
        exact_passes = None
    elif args.exact_passes == "tenth":
        exact_passes = max(1, n * (K + R + 1) // 10)
    else:
        exact_passes = int(args.exact_passes)
    do_exact = args.exact if args.exact is not None else n <= EXACT_AUTO_MAX_ROWS
    log.info("=== pool of %s rows (seed %d): exact K=%d + R=%d is %s passes; exact arm %s",
             f"{n:,}", args.seed, K, R, f"{nominal_exact:,}", "on" if do_exact else "off")
    out: dict[str, Any] = {"rows": n, "neighbours": K, "neighbour_random": R,
                           "exact_passes_nominal": nominal_exact, "exact_arm": do_exact}

    # embedding, timed once, cold (store off); every kernel below gets these vectors from memory
    embedder.vectors.clear()
    t0 = time.perf_counter()
    embed_rows(embedder, pool, use_cache=False, batch_size=spec.default("embed_batch_size"))
    out["embedding"] = {"seconds": round(time.perf_counter() - t0, 3), "texts": n,
                        "how": "one embed_rows call with the embedding store off (computed, "
                               "not read back); the kernels reuse these vectors from memory"}
    log.info("embedding %s rows: %.1f s", f"{n:,}", out["embedding"]["seconds"])

    arms: dict[str, tuple[Kernels | None, dict]] = {}
    lk = args.learned_neighbours
    if args.default_arm:
        arms[f"learned K={lk}"] = learned_arm(pool, lm, embedder, args, lk, exact_passes,
                                              nominal_exact, progress)
    if args.same_k_arm and lk != K:
        arms[f"learned K={K}"] = learned_arm(pool, lm, embedder, args, K, exact_passes,
                                             nominal_exact, progress)
    for frac in args.same_k_fractions:  # the same-K kernel at larger exact budgets
        passes = max(1, int(nominal_exact * frac))
        arms[f"learned K={K} @ {frac:g} of exact passes"] = learned_arm(
            pool, lm, embedder, args, K, passes, nominal_exact, progress)
    out["learned"] = {name: rec for name, (_, rec) in arms.items()}

    exact_k: Kernels | None = None
    se_k: Kernels | None = None
    if do_exact:
        log.info("exact sparse kernel, K=%d + R=%d (pair store: %s)", K, R,
                 os.environ.get("DELIFT_CACHE_DIR", "~/.cache/delift"))
        t0 = time.perf_counter()
        exact_k = compute_kernels(pool, kind="utility", lm=lm, embedder=embedder, neighbours=K,
                                  neighbour_random=R, neighbour_seed=args.seed, progress=progress)
        wall = time.perf_counter() - t0
        for line in kernel_report(exact_k):
            log.info("  %s", line)
        m = exact_k.meta["pool"]
        computed, reused = int(m["pairs_computed"]), int(m["pairs_reused"])
        rates = [r["seconds_per_exact_pass"] for r in out["learned"].values()
                 if r.get("seconds_per_exact_pass")]
        projected = (computed + reused) * rates[0] if rates else None
        out["exact"] = {"passes": computed + reused, "passes_computed": computed,
                        "passes_reused": reused, "nnz": int(exact_k.pool.nnz),
                        "kernel_seconds": float(exact_k.meta.seconds or wall),
                        "wall_seconds": round(wall, 3),
                        "projected_seconds": _round(projected, 2),
                        "projected_rule": "its passes x the first learned arm's seconds per "
                                          "exact pass in this run"}
        for rec in out["learned"].values():
            if "error" in rec:
                continue
            rec["passes_vs_exact_actual"] = _round(rec["passes"] / (computed + reused))
            learned_s = out["embedding"]["seconds"] + sum(rec["seconds_by_phase"].values())
            rec["seconds_with_embedding"] = round(learned_s, 3)
            rec["seconds_vs_exact_projected"] = _round(
                learned_s / (out["embedding"]["seconds"] + projected)) if projected else None
            rec["seconds_vs_exact_measured"] = (
                _round(rec["kernel_seconds"] / out["exact"]["kernel_seconds"]) if reused == 0
                else None)  # the exact kernel read pairs back: its time is not its cost
        log.info("DELIFT-SE: embedding kernel on the same pattern, K=%d + R=%d", K, R)
        t0 = time.perf_counter()
        se_k = compute_kernels(pool, kind="embedding", embedder=embedder, neighbours=K,
                               neighbour_random=R, neighbour_seed=args.seed)
        out["embedding_kernel"] = {"nnz": int(se_k.pool.nnz),
                                   "seconds": round(time.perf_counter() - t0, 3)}

    out["selection"] = select_all(pool, arms, exact_k, se_k, args)
    if args.verify_rounds and exact_k is not None:
        out["verification"] = verify_all(pool, arms, exact_k, lm, args, nominal_exact, progress)
    return out


def verify_all(pool: Dataset, arms: dict[str, tuple[Kernels | None, dict]], exact_k: Kernels,
               lm: Any, args: argparse.Namespace, nominal_exact: int,
               progress: Progress) -> dict[str, Any]:
    """Each learned kernel's FL selection verified (:func:`verify_selection`, pair store off:
    every pass computed, a row's plain pass again in each round it appears; with
    ``--verify-store`` the store serves what it holds and a round's passes are those computed
    plus those read back) at each budget: the value under the exact kernel / the exact
    selection's, its overlap with the exact selection, and the passes spent, after each round
    (round 0: unverified)."""
    from delift_core.selection.verify import verify_selection

    exact_scaled = exact_k.scaled("pool")
    out: dict[str, Any] = {}
    for name, (kern, rec) in arms.items():
        if kern is None:
            continue
        per: dict[str, Any] = {}
        for frac, share in [(f, x) for f in args.budgets for x in args.verify_explore]:
            ref = select(pool, "fl", exact_k, frac, seed=args.seed, full_order=False)
            ref_value = fl_value(exact_scaled, ref.selected_indices)
            ref_set = set(ref.selected_indices.tolist())
            rounds: list[Selection] = []
            t0 = time.perf_counter()
            final = verify_selection(pool, "fl", kern, frac, rounds=args.verify_rounds,
                                     explore=share, lm=lm,
                                     use_cache=args.verify_store, progress=progress,
                                     seed=args.seed,
                                     full_order=False,
                                     on_round=lambda k, s_: rounds.append(s_))
            secs = time.perf_counter() - t0
            v = final.kernels.meta.learned["pool"]["verification"]
            by_round = []
            passes = 0
            for k, sel in enumerate([*rounds[: v["rounds_run"]], final]):
                if k:
                    passes += v["by_round"][k - 1]["passes_computed"]
                    passes += v["by_round"][k - 1]["passes_reused"]  # 0 with the store off
                value = fl_value(exact_scaled, sel.selected_indices)
                by_round.append({
                    "round": k, "verify_passes": passes,
                    "passes_total": rec["passes"] + passes,
                    "passes_vs_exact_nominal": _round((rec["passes"] + passes) / nominal_exact),
                    "value_ratio": _round(value / ref_value, 6),
                    "overlap": _round(len(ref_set & set(sel.selected_indices.tolist()))
                                      / len(ref_set), 6)})
                log.info("verify %s @ %g, explore %g, round %d: value ratio %.4f, %d verify "
                         "passes", name, frac, share, k, value / ref_value, passes)
            key = f"{frac:g}" if len(args.verify_explore) == 1 else f"{frac:g} explore {share:g}"
            per[key] = {"budget": int(final.budget), "explore": share,
                        "seconds": round(secs, 3), "record": v, "by_round": by_round}
        out[name] = per
    return out


def select_all(pool: Dataset, arms: dict[str, tuple[Kernels | None, dict]],
               exact_k: Kernels | None, se_k: Kernels | None,
               args: argparse.Namespace) -> dict[str, Any]:
    """FL selections at each budget; with the exact kernel, each arm's value ratio and overlap."""
    out: dict[str, Any] = {}
    exact_scaled = exact_k.scaled("pool") if exact_k is not None else None
    kernels_of: dict[str, Kernels] = {name: k for name, (k, _) in arms.items() if k is not None}
    if exact_k is not None:
        kernels_of[f"exact K={args.neighbours}+{args.neighbour_random}"] = exact_k
        kernels_of["DELIFT-SE"] = se_k  # type: ignore[assignment]
    for kern in kernels_of.values():  # untimed: the compiled greedy and each scaled kernel
        select(pool, "fl", kern, 1, seed=args.seed, full_order=False)  # made once, up front
    for frac in args.budgets:
        per: dict[str, Any] = {}
        b = None
        sels: dict[str, Selection] = {}
        for name, kern in kernels_of.items():
            t0 = time.perf_counter()
            sel = select(pool, "fl", kern, frac, seed=args.seed, full_order=False)
            secs = time.perf_counter() - t0
            own = check_value(name, kern.scaled("pool"), sel)
            sels[name] = sel
            b = sel.budget
            per[name] = {"budget": int(sel.budget), "selection_seconds": round(secs, 6),
                         "value_own_kernel": _round(own, 6)}
            log.info("FL %s @ %g: %d rows in %.4f s", name, frac, sel.budget, secs)
        if exact_k is not None:
            t0 = time.perf_counter()
            rnd = select(pool, "random", exact_k, frac, seed=args.seed, full_order=False)
            secs = time.perf_counter() - t0
            check_value("random (FL under the exact kernel)", exact_scaled, rnd)
            sels["random"] = rnd
            per["random"] = {"budget": int(rnd.budget), "selection_seconds": round(secs, 6)}
            ref_name = f"exact K={args.neighbours}+{args.neighbour_random}"
            ref = sels[ref_name]
            ref_value = fl_value(exact_scaled, ref.selected_indices)
            ref_set = set(ref.selected_indices.tolist())
            for name, sel in sels.items():
                v = fl_value(exact_scaled, sel.selected_indices)
                per[name].update({
                    "value_under_exact": _round(v, 6),
                    "value_ratio": _round(v / ref_value, 6) if ref_value else None,
                    "overlap": _round(len(ref_set & set(sel.selected_indices.tolist()))
                                      / len(ref_set), 6)})
        out[f"{frac:g}"] = {"budget": b, "arms": per}
    return out


# ------------------------------------------------------------------------------------------------
# Report


def _fmt(x: Any, nd: int = 3) -> str:
    if x is None:
        return "—"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return f"{int(x):,}"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def table(res: dict[str, Any], args: argparse.Namespace) -> str:
    """One markdown table for a pool size: figures as rows, arms as columns."""
    learned = res["learned"]
    ex_name = f"exact K={res['neighbours']}+{res['neighbour_random']}"
    cols = list(learned) + ([ex_name, "DELIFT-SE", "random"] if res["exact_arm"] else [])
    ex = res.get("exact") or {}
    rows: list[tuple[str, dict[str, Any]]] = []

    def lrow(label: str, get: Any) -> None:
        rows.append((label, {c: (get(learned[c]) if "error" not in learned[c] else None)
                             for c in learned}))

    rows.append(("model passes", {**{c: learned[c].get("passes") for c in learned},
                                  ex_name: ex.get("passes"), "DELIFT-SE": 0, "random": 0}))
    lrow(f"passes / exact at K={res['neighbours']} "
         f"(rows·(K+R)+rows = {res['exact_passes_nominal']:,})",
         lambda r: r["passes_vs_exact_nominal"])
    if ex:
        lrow("passes / exact kernel's actual passes", lambda r: r.get("passes_vs_exact_actual"))
    lrow("exact pairs (rows)", lambda r: f"{r['exact_pairs']:,} ({r['exact_rows']})")
    lrow("predicted pairs", lambda r: r["predicted_pairs"])
    emb_s = res["embedding"]["seconds"]
    rows.append(("s: embedding (once, cold)", {c: emb_s for c in cols if c != "random"}))
    for p in ("plan", "exact", "training", "prediction"):
        lrow(f"s: {p}", lambda r, p=p: r["seconds_by_phase"][p])
    if ex:
        rows.append(("s: kernel (measured this run)",
                     {**{c: learned[c].get("kernel_seconds") for c in learned},
                      ex_name: f"{ex['kernel_seconds']:.1f} ({ex['passes_computed']:,} computed, "
                               f"{ex['passes_reused']:,} read back)",
                      "DELIFT-SE": res["embedding_kernel"]["seconds"]}))
        rows.append(("s: embedding + kernel, exact projected at the learned pass rate",
                     {**{c: learned[c].get("seconds_with_embedding") for c in learned},
                      ex_name: (emb_s + ex["projected_seconds"])
                      if ex.get("projected_seconds") is not None else None}))
        lrow("time / exact (projected)", lambda r: r.get("seconds_vs_exact_projected"))
        lrow("kernel time / exact kernel time (measured; only when no pass was read back)",
             lambda r: r.get("seconds_vs_exact_measured"))
    f = [("pair Spearman", "pair_spearman"), ("pair R²", "pair_r2"),
         ("median row Spearman", "row_spearman_median"),
         ("median row Spearman, 95 % interval", "row_spearman_interval"),
         ("cosine median row Spearman", "cosine_row_spearman_median"),
         ("cosine median row Spearman, 95 % interval", "cosine_row_spearman_interval"),
         ("learned minus cosine, 95 % interval", "row_spearman_minus_cosine_interval"),
         ("top-k recovered", "top_k_recovered"), ("below floor", "below_floor")]
    for label, key in f:
        lrow(f"held-out {label}", lambda r, key=key: r["fidelity"].get(key))
    for frac, s in res["selection"].items():
        pct = f"{float(frac) * 100:g} % ({s['budget']} rows)"
        arms = s["arms"]
        if res["exact_arm"]:
            rows.append((f"FL value under exact / exact's @ {pct}",
                         {c: arms.get(c, {}).get("value_ratio") for c in cols}))
            rows.append((f"overlap with exact @ {pct}",
                         {c: arms.get(c, {}).get("overlap") for c in cols}))
        rows.append((f"ms: FL selection @ {pct}",
                     {c: (1000 * arms[c]["selection_seconds"] if c in arms else None)
                      for c in cols if c != "random"}))
    for name, per in (res.get("verification") or {}).items():
        for frac, vr in per.items():
            for b in vr["by_round"]:
                label = f"{float(frac.split()[0]) * 100:g} %" + (
                    f", explore {vr['explore']:g}" if " explore " in frac else "")
                rows.append((f"{name} verified @ {label}, round {b['round']}: "
                             f"value ratio / overlap / passes vs exact",
                             {name: f"{b['value_ratio']:.3f} / {b['overlap']:.3f} / "
                                    f"{b['passes_vs_exact_nominal']:.3f}"}))
    head = f"### {res['rows']:,} rows (K={res['neighbours']}, R={res['neighbour_random']}, " \
           f"exact per anchor row {args.exact_per_row}, seed {args.seed})\n\n"
    lines = ["| figure | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for label, vals in rows:
        lines.append(f"| {label} | " + " | ".join(_fmt(vals.get(c)) for c in cols) + " |")
    errors = [f"- {c}: {r['error']}" for c, r in learned.items() if "error" in r]
    return head + "\n".join(lines) + ("\n\n" + "\n".join(errors) if errors else "") + "\n"


# ------------------------------------------------------------------------------------------------
# Command line


def _rows(text: str) -> int | None:
    if text.strip().lower() == "all":
        return None
    n = int(text)
    if n < 2:
        raise argparse.ArgumentTypeError("a pool needs at least 2 rows")
    return n


def _passes(text: str) -> str | int:
    if text.strip().lower() in ("tenth", "auto"):
        return "tenth"
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError("--exact-passes must be at least 1")
    return n


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", nargs="+", type=_rows, default=[600, 2000],
                    help="pool sizes (seeded random subsets of the P3 sample); 'all' = every row")
    ap.add_argument("--data", default=str(DATA), help="the rows (default: the P3 sample)")
    ap.add_argument("--neighbours", type=int, default=8,
                    help="K of the exact sparse kernel (the comparison point)")
    ap.add_argument("--neighbour-random", type=int, default=2,
                    help="R random columns per row (every kernel)")
    ap.add_argument("--learned-neighbours", type=int, default=32,
                    help="K of the learned kernel's predicted structure")
    budget = ap.add_mutually_exclusive_group()
    budget.add_argument("--exact-passes", type=_passes, default="tenth",
                        help="the learned kernel's exact-pass budget: a number, or 'tenth' "
                             "(default): rows*(K+R+1)//10, a tenth of the exact kernel's passes")
    budget.add_argument("--exact-minutes", type=float, default=None,
                        help="a time budget for the exact passes instead")
    ap.add_argument("--exact-per-row", type=int, default=12,
                    help="exact examples per anchor row")
    ap.add_argument("--same-k-arm", action="store_true",
                    help="also a learned kernel at the exact kernel's K (--neighbours)")
    ap.add_argument("--same-k-fractions", nargs="+", type=float, default=[],
                    help="also learned kernels at the exact kernel's K with these fractions of "
                         "its passes as their exact budget (a budget sweep)")
    ap.add_argument("--verify-rounds", type=int, default=0,
                    help="with the exact arm: also verify each learned kernel's FL selection at "
                         "each budget for up to this many rounds (verify_selection, every pass "
                         "computed), reporting the value under the exact kernel after each round")
    ap.add_argument("--verify-explore", type=float, nargs="+", default=[0.0],
                    help="with --verify-rounds: each round also scores the pairs of this share of "
                         "the pool's unselected columns, those of highest predicted gain "
                         "(verify_selection's explore; 0: covers only); several shares: each "
                         "verified in turn, keyed '<budget> explore <share>' in the JSON")
    ap.add_argument("--verify-store", action="store_true",
                    help="with --verify-rounds: the pair store serves the verification's passes "
                         "(the exact kernel's own pairs are read back, not recomputed), each "
                         "round's cost counted as passes computed + read back; same values, "
                         "for a machine too slow to recompute them")
    ap.add_argument("--default-arm", action=argparse.BooleanOptionalAction, default=True,
                    help="the learned kernel at --learned-neighbours (on by default)")
    ap.add_argument("--exact", action=argparse.BooleanOptionalAction, default=None,
                    help="compute the exact sparse kernel and compare selections (default: on "
                         f"for pools up to {EXACT_AUTO_MAX_ROWS:,} rows)")
    ap.add_argument("--budgets", nargs="+", type=float, default=list(BUDGETS),
                    help="selection budgets as fractions")
    ap.add_argument("--seed", type=int, default=0,
                    help="pool subset, random columns, anchors and random selection")
    ap.add_argument("--dtype", default="bfloat16", choices=spec.choices("dtype"))
    ap.add_argument("--json-out", type=Path, default=None, help="also write the JSON here")
    args = ap.parse_args(argv)
    for name in ("neighbours", "neighbour_random", "exact_per_row"):
        spec.check(name, getattr(args, name))
    spec.check("neighbours", args.learned_neighbours)
    if any(not 0 < f <= 1 for f in args.same_k_fractions):
        ap.error("--same-k-fractions are fractions in (0, 1]")
    if any(not 0 < b <= 1 for b in args.budgets):
        ap.error("--budgets are fractions in (0, 1]")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    args = parse_args(argv)
    started = dt.datetime.now(dt.timezone.utc)
    full = load_dataset(args.data)
    log.info("%s: %s rows", args.data, f"{len(full):,}")
    t0 = time.perf_counter()
    lm = load_causal_lm(None, dtype=args.dtype)
    t_lm = time.perf_counter() - t0
    t0 = time.perf_counter()
    embedder = MemoEmbedder(load_embedder())
    t_emb = time.perf_counter() - t0
    log.info("model %s (%s) loaded in %.1f s, embedder %s in %.1f s", lm.name, args.dtype, t_lm,
             embedder.delift_name, t_emb)
    progress = Progress()
    results = []
    for n_rows in args.rows:
        res = run_pool(full, n_rows, lm, embedder, args, progress)
        results.append(res)
        print(table(res, args), flush=True)
    record = {"benchmark": "bench_learned", "command": [sys.executable, *sys.argv],
              "date": started.isoformat(timespec="seconds"),
              "seconds": round((dt.datetime.now(dt.timezone.utc) - started).total_seconds(), 1),
              "machine": machine(), "model": getattr(lm, "name", None), "dtype": args.dtype,
              "embedder": embedder.delift_name, "data": args.data,
              "cache_dir": os.environ.get("DELIFT_CACHE_DIR"),
              "load_seconds": {"model": round(t_lm, 3), "embedder": round(t_emb, 3)},
              "settings": {k: (str(v) if isinstance(v, Path) else v)
                           for k, v in vars(args).items()},
              "pools": results}
    text = json.dumps(record, indent=1, default=lambda o: o.item() if hasattr(o, "item")
                      else str(o))
    print("```json\n" + text + "\n```")
    if args.json_out is not None:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(text + "\n")
        log.info("wrote %s", args.json_out)
    return record


if __name__ == "__main__":
    main()
