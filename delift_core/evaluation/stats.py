"""Paired statistics for subset comparisons: is a subset's edge over random (or another method)
real, or within the noise of the test items and of the random draw?

Per test item the method's score is paired with the baseline's on the same item. Against random
baselines over several seeds the interval is a two-level percentile bootstrap of the mean paired
difference (test items *and* random seeds resampled with replacement), so it carries both the test
set's and the random draw's uncertainty; per seed the mean difference says whether that seed was
beaten. A method *wins* only when the whole 95 % interval is on the better side of zero, *loses*
when it is on the worse side, and otherwise *ties*.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

__all__ = ["PairedComparison", "bootstrap_interval", "compare_paired", "median_intervals",
           "verdict"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PairedComparison:
    """Method minus baseline on the same test items (lower is better unless said otherwise)."""

    mean_diff: float
    low: float
    high: float
    level: float
    n_items: int
    n_seeds: int
    seeds_beaten: int
    per_seed_diff: tuple[float, ...]
    lower_is_better: bool
    verdict: str

    def as_dict(self) -> dict:
        """A JSON-ready dict."""
        d = asdict(self)
        d["per_seed_diff"] = list(self.per_seed_diff)
        return d

    def text(self, digits: int = 3) -> str:
        """'-0.081 [-0.140, -0.020], beats 9 of 10 random seeds: wins' (one line)."""
        f = f"{{:+.{digits}f}}"
        s = f"{f.format(self.mean_diff)} [{f.format(self.low)}, {f.format(self.high)}]"
        if self.n_seeds > 1:
            s += f", beats {self.seeds_beaten} of {self.n_seeds} random seeds"
        return f"{s}: {self.verdict}"


def verdict(low: float, high: float, lower_is_better: bool = True) -> str:
    """'wins' when the interval excludes zero on the better side, 'loses' on the worse, else
    'ties'."""
    better_high, better_low = (high < 0, low > 0) if lower_is_better else (low > 0, high < 0)
    return "wins" if better_high else ("loses" if better_low else "ties")


def bootstrap_interval(diffs: np.ndarray, *, level: float = 0.95, n_boot: int = 10_000,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``diffs``.

    ``diffs`` of shape (items,) resamples items; of shape (seeds, items) resamples seeds and items
    independently (each replicate: mean over the drawn seeds' rows at the drawn items).
    """
    d = np.asarray(diffs, dtype=np.float64)
    if d.ndim == 1:
        d = d[None, :]
    n_s, n_t = d.shape
    if n_t == 0 or n_s == 0:
        raise ValueError("no paired differences to bootstrap")
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    step = max(1, 2_000_000 // max(1, n_s * n_t))
    for s in range(0, n_boot, step):
        b = min(step, n_boot - s)
        ti = rng.integers(0, n_t, size=(b, n_t))
        si = rng.integers(0, n_s, size=(b, n_s)) if n_s > 1 else np.zeros((b, 1), np.int64)
        seed_means = d[si[:, :, None], ti[:, None, :]]  # (b, seeds, items)
        means[s: s + b] = seed_means.mean(axis=(1, 2))
    alpha = (1 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def median_intervals(a: Sequence[float], b: Sequence[float] | None = None, *,
                     level: float = 0.95, n_boot: int = 2_000,
                     seed: int = 0) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals of the median of ``a`` and, when ``b`` is given (paired
    with ``a`` item by item), of the median of ``b`` and of median(a) - median(b); items are
    resampled together, so the difference's interval is paired. Keys ``a``, ``b``, ``diff``.
    A learned kernel's held-out fidelity uses it: how sure a median over a few dozen rows is."""
    x = np.asarray(a, dtype=np.float64)
    y = None if b is None else np.asarray(b, dtype=np.float64)
    if x.ndim != 1 or not len(x) or (y is not None and y.shape != x.shape):
        raise ValueError(f"median intervals need one non-empty series of paired items "
                         f"(got {x.shape} and {None if y is None else y.shape})")
    idx = np.random.default_rng(seed).integers(0, len(x), size=(n_boot, len(x)))
    alpha = (1 - level) / 2

    def interval(v: np.ndarray) -> tuple[float, float]:
        return float(np.quantile(v, alpha)), float(np.quantile(v, 1 - alpha))

    mx = np.median(x[idx], axis=1)
    out = {"a": interval(mx)}
    if y is not None:
        my = np.median(y[idx], axis=1)
        out["b"], out["diff"] = interval(my), interval(mx - my)
    return out


def compare_paired(method: Sequence[float], baseline: Sequence[float] | Sequence[Sequence[float]],
                   *, lower_is_better: bool = True, level: float = 0.95, n_boot: int = 10_000,
                   seed: int = 0) -> PairedComparison:
    """Method vs baseline on the same test items: mean paired difference (method - baseline), its
    bootstrap interval, and how many baseline rows (random seeds) the method beats on the mean.

    ``baseline`` is one score per item, or one row per random seed (seeds x items)."""
    x = np.asarray(method, dtype=np.float64)
    b = np.asarray(baseline, dtype=np.float64)
    if b.ndim == 1:
        b = b[None, :]
    if b.ndim != 2 or x.ndim != 1 or b.shape[1] != x.shape[0]:
        raise ValueError(f"method scores ({x.shape}) and baseline scores ({b.shape}) are not "
                         "paired on the same test items")
    d = x[None, :] - b
    per_seed = d.mean(axis=1)
    lo, hi = bootstrap_interval(d, level=level, n_boot=n_boot, seed=seed)
    beaten = int(np.sum(per_seed < 0)) if lower_is_better else int(np.sum(per_seed > 0))
    return PairedComparison(mean_diff=float(d.mean()), low=lo, high=hi, level=level,
                            n_items=int(x.shape[0]), n_seeds=int(b.shape[0]), seeds_beaten=beaten,
                            per_seed_diff=tuple(float(v) for v in per_seed),
                            lower_is_better=lower_is_better,
                            verdict=verdict(lo, hi, lower_is_better))
