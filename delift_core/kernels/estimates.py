"""Work estimates of a kernel computation, and the speeds this machine measured, kept on disk.

:func:`estimate_work` counts what a kernel computation does (forward passes or texts, and about
how many tokens). Every fresh single-process utility kernel, from the CLI, the API or the studio,
records the speed it ran at (:func:`record_speed`, in ``<cache>/speeds.json``), by model
precision, full or sparse kernel and device; :func:`estimate_seconds` divides an estimate's tokens
by the latest measured speeds, and falls back on the benchmark CPU's speed (labelled as a guess)
before a first run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import statistics
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from delift_core import settings as spec
from delift_core.data.dataset import Dataset
from delift_core.lm.models import DEFAULT_MODEL, packaged_model
from delift_core.kernels.learned import budget_shares
from delift_core.kernels.utility_settings import (DEFAULT_EXAMPLE_TEMPLATE, DEFAULT_PLAIN_TEMPLATE,
                                                  UtilitySettings)

__all__ = ["WorkEstimate", "estimate_work", "stored_passes", "CPU_TOKENS_PER_S",
           "utility_time_guess", "format_seconds", "speed_key", "record_speed",
           "measured_speed", "estimate_seconds", "SPEEDS_FILE"]

logger = logging.getLogger(__name__)


@dataclass
class WorkEstimate:
    """What a kernel computation will do: per stage, units (forward passes or texts) and tokens."""

    kind: str
    stages: list[tuple[str, int, int]]
    full_units: int | None = None
    """Of a learned kernel: the passes of the exact kernel it stands for (None otherwise)."""

    @property
    def units(self) -> int:
        return sum(u for _, u, _ in self.stages)

    @property
    def tokens(self) -> int:
        return sum(t for _, _, t in self.stages)

    def seconds(self, tokens_per_second: float | None) -> float | None:
        return self.tokens / tokens_per_second if tokens_per_second else None


def _chars(ds: Dataset) -> np.ndarray:
    return np.array([len(p) + len(r) for p, r in zip(ds.prompts, ds.responses)], float)


def estimate_work(pool: Dataset, *, target: Dataset | None = None,
                  existing: Dataset | None = None, kind: str = "utility",
                  chars_per_token: float = 4.0,
                  plain_template: str = DEFAULT_PLAIN_TEMPLATE,
                  example_template: str = DEFAULT_EXAMPLE_TEMPLATE,
                  neighbours: int | None = None,
                  neighbour_random: int | None = None,
                  exact_passes: int | None = None) -> WorkEstimate:
    """Forward passes (utility: one per pair plus one plain pass per row; embedding: one per
    text) and approximate tokens (``chars_per_token``), with the labels ``compute_kernels``
    reports progress under. With ``neighbours`` (a sparse kernel) each row is paired with at most
    ``neighbours + neighbour_random`` columns (the quick embedding that finds them is left out;
    ``neighbour_random`` None: the setting's default). With ``exact_passes`` (a learned kernel)
    each utility stage is its share of those passes (by rows), then the predictor's training and
    prediction, weighted as a small part of the work; the passes of the full kernel it stands for
    are in :attr:`WorkEstimate.full_units`."""
    neighbour_random = spec.check("neighbour_random", neighbour_random)
    stages: list[tuple[str, int, int]] = []
    if kind == "embedding":
        for label, ds in (("pool", pool), ("target", target), ("existing", existing)):
            if ds is not None:
                stages.append((f"embedding {label}", len(ds),
                               int(_chars(ds).sum() / chars_per_token)))
        return WorkEstimate(kind, stages)
    tpl_plain, tpl_ex = len(plain_template) - 8, len(example_template) - 40

    def pairs(label: str, rows: Dataset, cols: Dataset) -> None:
        cr, cc = _chars(rows), _chars(cols)
        n_r, n_c = len(rows), len(cols)
        per_row = n_c if not neighbours else min(n_c, neighbours + neighbour_random)
        share = per_row / max(n_c, 1)  # pairs kept, spread evenly over rows and columns
        chars = (share * (n_r * n_c * tpl_ex + n_c * cr.sum() + n_r * cc.sum())
                 + n_r * tpl_plain + cr.sum())
        stages.append((f"utility {label}", n_r * per_row + n_r, int(chars / chars_per_token)))

    pairs("pool", pool, pool)
    if target is not None:
        pairs("target", target, pool)
    if existing is not None:
        pairs("existing", pool, existing)
    if exact_passes is None:
        return WorkEstimate(kind, stages)
    full = sum(u for _, u, _ in stages)
    rows = {"utility pool": len(pool), "utility target": len(target or []),
            "utility existing": len(pool)}
    shares = budget_shares(exact_passes, {label: rows[label] for label, _, _ in stages})
    learned: list[tuple[str, int, int]] = []
    for label, units, tokens in stages:
        share = min(units, shares[label])
        learned += [(f"{label}: exact pairs", share, int(tokens * share / max(units, 1))),
                    (f"{label}: training", max(1, share // 30), 0),
                    (f"{label}: predicting", max(1, share // 50), 0)]
    return WorkEstimate(kind, learned, full_units=full)


def stored_passes(estimate: WorkEstimate, pool: Dataset, *, target: Dataset | None = None,
                  existing: Dataset | None = None, model: str | None = None,
                  dtype: str | None = spec.default("dtype"), sparse: bool = False,
                  settings: Any = None) -> int:
    """How many of a utility ``estimate``'s passes the pair store already holds (see
    :func:`delift_core.kernels.utility.stored_pairs`): exact for a dense kernel; for a sparse one an upper
    bound (the stored pairs among the rows, at most each stage's passes), because which pairs a
    sparse kernel takes is known only after the embeddings."""
    from delift_core.kernels.utility import stored_pairs

    units = {label: u for label, u, _ in estimate.stages}
    total = 0
    for label, rows, cols in (("utility pool", pool, pool), ("utility target", target, pool),
                              ("utility existing", pool, existing)):
        if rows is None or cols is None or label not in units:
            continue
        pairs, plain = stored_pairs(rows, cols, dtype=dtype or spec.default("dtype"),
                                    model=model or None,
                                    settings=settings)
        total += min(units[label], pairs + plain) if sparse else pairs + plain
    return total


# Estimated tokens per second of the utility kernel on a 2-core CPU (AMD EPYC Zen 4): the demo
# pool's sparse K = 16 run (estimate_work: 546,778 tokens) took 421 s in float32 and 154 s in
# bfloat16 (benchmarks/bench_end_to_end.py, benchmarks/README.md). A first guess only, until a
# machine has measured its own speed.
CPU_TOKENS_PER_S = {"float32": 1300.0}
"""No guess for bfloat16: its CPU speed depends on the CPU (2.7x float32 on a Zen 4 with
AVX512-BF16, 0.19x on an AVX2-only VM, same torch 2.13), so it is "unknown" until this machine
has measured it."""


def utility_time_guess(estimate: "WorkEstimate", dtype: str | None = "float32") -> float | None:
    """Seconds a utility kernel of ``estimate`` would take at the benchmark CPU's speed."""
    rate = CPU_TOKENS_PER_S.get(str(dtype or "float32"))
    return estimate.seconds(rate) if rate else None


def format_seconds(seconds: float | None) -> str:
    """'42 s', '3 min 5 s', '1 h 20 min' (or 'unknown')."""
    if seconds is None or not np.isfinite(seconds):
        return "unknown"
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {(s % 3600) // 60} min"


SPEEDS_FILE = "speeds.json"
"""Measured speeds, in the DELIFT cache folder: key -> the last few runs' tokens per second."""
_KEEP = 5


def _speeds_path() -> Path:
    from delift_core.lm.models import cache_dir

    return cache_dir() / SPEEDS_FILE


def _read_speeds() -> dict[str, list[dict[str, Any]]]:
    try:
        data = json.loads(_speeds_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):  # none yet, or damaged: estimates fall back on the guess
        return {}
    return data if isinstance(data, dict) else {}


def speed_key(kind: str, dtype: str | None, sparse: bool, device: str = "cpu",
              model: str | None = None, settings: Any = None) -> str:
    """Speeds are kept per kernel kind, model, engine settings (templates, cuts, batch size: a
    short hash; the defaults when None), precision, full/sparse kernel and device type.

    A packaged model is keyed by its alias however it was named ("Gemma-3-270M", a hub id it
    is known by), as :func:`delift_core.lm.models.load_causal_lm` names the model it loads, so an
    estimate finds the speed its kernel recorded."""
    spec = packaged_model(model)
    if spec is not None and not (model and Path(model).expanduser().is_dir()):
        model = spec.alias
    s = json.dumps(asdict(settings or UtilitySettings()), sort_keys=True, default=str)
    digest = hashlib.sha256(s.encode()).hexdigest()[:8]
    return (f"{kind}-{model or DEFAULT_MODEL}-{digest}-{dtype or 'float32'}-"
            f"{'sparse' if sparse else 'full'}-{device}")


def record_speed(key: str, tokens: int, seconds: float) -> float | None:
    """Record a run of ``tokens`` (its :func:`estimate_work` tokens) in ``seconds``; returns the
    speed, or None for runs too short to time. Written atomically; a failed write only logs."""
    if seconds < 0.5 or tokens <= 0:
        return None
    speed = tokens / seconds
    data = _read_speeds()
    runs = [r for r in _runs(data, key)][-(_KEEP - 1):]
    runs.append({"tokens_per_s": round(speed, 3), "tokens": int(tokens),
                 "seconds": round(seconds, 3), "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    data[key] = runs
    path = _speeds_path()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as e:  # a record is a convenience: never lose the kernel over it
        logger.warning("could not record the kernel speed in %s: %s", path, e)
    return speed


def _runs(data: dict, key: str) -> list[dict]:
    """The well-formed records of ``key`` (anything else in the file is ignored)."""
    runs = data.get(key)
    if not isinstance(runs, list):
        return []
    return [r for r in runs if isinstance(r, dict) and isinstance(r.get("tokens_per_s"),
                                                                  (int, float))
            and r["tokens_per_s"] > 0]


def measured_speed(key: str) -> float | None:
    """Tokens per second this machine measured for ``key``: the median of the last 3 runs."""
    runs = [float(r["tokens_per_s"]) for r in _runs(_read_speeds(), key)[-3:]]
    return statistics.median(runs) if runs else None


def estimate_seconds(estimate: WorkEstimate, key: str, dtype: str | None = "float32",
                     stored: int = 0) -> tuple[float | None, str]:
    """(seconds, where the speed comes from): ``"measured"`` on this machine, ``"guess"`` (the
    benchmark CPU's speed, CPU only) or ``"unknown"``. ``stored`` passes (:func:`stored_passes`)
    are read from the pair store, not computed, so only the rest's share of the tokens counts."""
    speed = measured_speed(key)
    if speed:
        seconds, source = estimate.seconds(speed), "measured"
    else:
        guess = utility_time_guess(estimate, dtype) if key.endswith("-cpu") else None
        seconds, source = (guess, "guess") if guess is not None else (None, "unknown")
    if seconds is not None and estimate.units:
        seconds *= max(0, estimate.units - stored) / estimate.units
    return seconds, source
