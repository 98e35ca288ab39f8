"""The training subsets an evaluation compares: a selected subset read from a file or a
``delift select`` folder, and the baselines beside it (random subsets of the same size over
several seeds, the full pool, no data at all).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from delift_core.stores.cache import content_key
from delift_core.data.dataset import Dataset, load_dataset
from delift_core.errors import DeliftError
from delift_core.evaluation.settings import EvaluationError

__all__ = ["BASELINES", "Subset", "load_subset", "baseline_subsets", "method_subsets",
           "parse_int_list", "dataset_key"]

BASELINES = ("random", "full", "none")


@dataclass
class Subset:
    """A training subset to evaluate: ``kind`` is 'subset', 'random', 'full' or 'none'."""

    name: str
    data: Dataset | None
    kind: str = "subset"
    seed: int | None = None
    info: dict = field(default_factory=dict)

    @property
    def size(self) -> int:
        return 0 if self.data is None else len(self.data)


def load_subset(path: str | Path, name: str | None = None,
                resolve: Callable[[str], str] | None = None) -> tuple[Subset, Dataset | None]:
    """A subset from a data file or a ``delift select`` output folder, and that folder's pool.

    The pool comes back only when the folder's manifest names a pool file that still exists and
    hashes to the same text; random baselines are drawn from it. ``resolve`` checks the source
    the manifest names before anything is read from it (the served studio's ``data_source``: a
    refusal means no pool).
    """
    p = Path(path).expanduser()
    pool = None
    info: dict[str, Any] = {"source": str(path)}
    if p.is_dir() and (p / "selection.json").exists():
        picks = sorted(p.glob("selected.*"))
        if not picks:
            raise EvaluationError(f"{path}: a `delift select` folder without a selected.* file")
        data = load_dataset(picks[0])
        try:
            sel = json.loads((p / "selection.json").read_text())
            manifest = json.loads((p / "manifest.json").read_text()) if (
                p / "manifest.json").exists() else {}
        except (OSError, json.JSONDecodeError) as e:
            raise EvaluationError(f"{path}: unreadable selection.json/manifest.json ({e})") from None
        info.update({"objective": sel.get("objective"), "budget": sel.get("budget"),
                     "selection_seed": (sel.get("params") or {}).get("seed"),
                     "kernel": (sel.get("params") or {}).get("kernel"),
                     "cost": manifest.get("cost")})  # what the selection cost, when recorded
        pool_rec = ((manifest.get("inputs") or {}).get("pool") or {})
        src = pool_rec.get("source")
        if src:
            try:
                cand = load_dataset(resolve(src) if resolve else src)
                if cand.text_sha256 == pool_rec.get("text_sha256"):
                    pool = cand
            except DeliftError:
                pool = None
        label = name or p.name
    elif p.is_dir():
        raise EvaluationError(f"{path}: a folder, but not a `delift select` output (no "
                              "selection.json)")
    else:
        data = load_dataset(str(path))
        label = name or (p.stem if p.suffix else str(path))
    if len(data) == 0:
        raise EvaluationError(f"{path}: the subset has no usable rows")
    return Subset(label, data, "subset", info.get("selection_seed"), info), pool


def baseline_subsets(pool: Dataset | None, sizes: Sequence[int], baselines: Sequence[str],
                     seeds: Sequence[int]) -> list[Subset]:
    """Random subsets of each size for each seed, the full pool and the empty subset, as asked.

    ``pool`` may be None when only the "none" baseline is asked for."""
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise EvaluationError(f"unknown baseline(s) {unknown}; use {', '.join(BASELINES)}")
    if pool is None and any(b != "none" for b in baselines):
        raise EvaluationError("the random and full baselines need a pool (the data the subset was "
                              "chosen from; on the command line --pool FILE, or a `delift "
                              "select` folder whose manifest names its pool)")
    out = []
    if "random" in baselines:
        if not sizes:
            raise EvaluationError("random baselines need a size: give a subset (or, on the "
                                  "command line, --random-size N)")
        if not seeds:
            raise EvaluationError("random baselines need at least one seed")
        for size in sorted(set(sizes)):
            if size > len(pool):
                raise EvaluationError(f"a random subset of {size} rows needs a pool that large "
                                      f"(the pool has {len(pool)})")
            for seed in seeds:
                idx = np.sort(np.random.default_rng(seed).choice(len(pool), size, replace=False))
                out.append(Subset(f"random-{size}", pool.subset(idx), "random", int(seed)))
    if "full" in baselines:
        out.append(Subset("full", pool, "full"))
    if "none" in baselines:
        out.append(Subset("none", None, "none"))
    return out


def method_subsets(selection: Any, objectives: Sequence[str],
                   scores: dict[str, Any] | None = None, lm: Any = None) -> list[Subset]:
    """``selection``'s pool, kernels and budget chosen again by each of ``objectives``, each as
    it ships (no pins, bans or notes), as subsets named ``'<objective> (same budget)'`` with what
    each cost in their info: one evaluation then compares methods on the user's own data.

    ``scores`` holds the per-row scores (``RowScores``) by kind for the methods that rank by them
    (IFD, longest); a method whose scores are missing, or one the kernels cannot serve, is
    refused by name before anything is selected. Response lengths (``longest``) need no model
    pass: when missing they are counted here with ``lm``'s tokenizer (the default model's when
    None)."""
    from delift_core.selection.objectives import registry
    from delift_core.selection.select import select

    scores = dict(scores or {})
    out, plan = [], []
    if any(registry.get(n).scores == "response_tokens" for n in objectives) and \
            "response_tokens" not in scores:
        from delift_core.kernels.scores import compute_row_scores

        scores["response_tokens"] = compute_row_scores(selection.pool, "response_tokens", lm=lm)
    for name in objectives:
        spec = registry.get(name)
        if spec.baseline:
            raise EvaluationError(f"'{name}' is a baseline; ask for it among the baselines")
        if spec.needs and getattr(selection.kernels, spec.needs, None) is None:
            raise EvaluationError(f"{spec.label} needs a {spec.needs} kernel, which the current "
                                  "kernels do not have")
        if spec.needs_kernel and selection.kernels is None:
            raise EvaluationError(f"{spec.label} needs a kernel; compute one first")
        if spec.scores and spec.scores not in scores:
            raise EvaluationError(f"{spec.label} ranks rows by per-row scores ({spec.scores}) "
                                  "that are not computed for this pool: choose it on the Kernel "
                                  "page (or `delift select --objective "
                                  f"{name}`) to compute them")
        plan.append(spec)
    for spec in plan:
        kernels = selection.kernels if spec.needs_kernel else None  # no cost it did not incur
        sel = select(selection.pool, spec.name, kernels, selection.budget,
                     seed=selection.params.get("seed", 0), scores=scores.get(spec.scores))
        out.append(sel.subset(f"{spec.name} (same budget)"))
    return out


MAX_SEEDS = 100
"""The most seeds a comma list may give: each is a whole subset to build and train or prompt on."""


def parse_int_list(text: str, what: str) -> list[int]:
    """Whole numbers from a comma list such as "0,1,2" (the seeds of the random baselines), at
    most :data:`MAX_SEEDS` of them."""
    parts = [x for x in text.split(",") if x.strip()]
    if len(parts) > MAX_SEEDS:
        raise EvaluationError(f"{what}: {len(parts):,} numbers; at most {MAX_SEEDS} (each is a "
                              "subset to evaluate)")
    try:
        return [int(x) for x in parts]
    except ValueError:
        shown = text if len(text) <= 80 else text[:77] + "..."
        raise EvaluationError(f"{what} must be a comma list of whole numbers, got "
                              f"'{shown}'") from None


def dataset_key(ds: Dataset | None) -> str:
    """The content key of a subset's texts (what a trained adapter depends on)."""
    return "empty" if ds is None else content_key([ds.prompts, ds.responses])
