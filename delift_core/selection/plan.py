"""What a run computes from the user's choices: the rules between "stage, method, first N rows"
and the engine's calls, in one place for the studio (and any script).

Everything here reads the objective registry (:mod:`delift_core.selection.objectives`), so an objective
added there (its module and one registry line) shows up in every choice below with no other edit:

- :func:`stages`, :func:`stage_objective`: the stages that have objectives, and a stage's objective.
- :func:`method_objective`: the random method serves the baseline objective.
- :func:`engine_kind`: which kernel the engine computes for a method ('random' embeds, for maps).
- :func:`default_limit`, :func:`kernel_inputs`: the first-N cut of the pool and which extra sets
  (target, existing) a stage and method compute kernels for.
- :func:`available_objectives`: the objectives a set of kernels can serve.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from delift_core.selection import objectives as registry
from delift_core.data.dataset import Dataset

__all__ = ["METHODS", "UTILITY_CPU_ROWS", "KernelInputs", "default_learned", "stages",
           "stage_needs",
           "stage_objective", "baseline_objective", "method_objective", "engine_kind",
           "default_limit", "kernel_inputs", "available_objectives"]

METHODS = ("utility", "embedding", "random")
"""The studio's methods: DELIFT (model utility), DELIFT-SE (sentence embedding), random baseline."""

UTILITY_CPU_ROWS = 24
"""The first rows the utility kernel uses by default on a CPU (it scores every pair)."""

EXTRA_ROLES = ("target", "existing")


def stages() -> list[str]:
    """The stage keys that have at least one objective, in the registry's stage order."""
    return [stage for stage in registry.STAGES if registry.stage_objectives(stage)]


def stage_needs(stage: str) -> tuple[str, ...]:
    """The extra sets ('target', 'existing') the objectives of a stage need, in role order."""
    needed = {registry.needs(name) for name in registry.stage_objectives(stage)}
    return tuple(role for role in EXTRA_ROLES if role in needed)


def stage_objective(stage: str, choice: str | None = None) -> str:
    """The objective of a stage: ``choice`` when it is one of the stage's, else its first."""
    names = registry.stage_objectives(stage)
    if not names:
        raise KeyError(f"stage '{stage}' has no objective; use one of {', '.join(stages())}")
    return choice if choice in names else names[0]


def baseline_objective() -> str:
    """The registry's baseline order (the random baseline)."""
    return next(name for name, spec in registry.OBJECTIVES.items() if spec.baseline)


def method_objective(method: str, objective: str) -> str:
    """The objective a method selects with: the random method always takes the baseline."""
    return baseline_objective() if method == "random" else objective


def engine_kind(method: str) -> str:
    """The kernel the engine computes for a method: the utility kernel for DELIFT, the embedding
    kernel otherwise (the random method still embeds, for the maps and FL-measured gains)."""
    if method not in METHODS:
        raise ValueError(f"unknown method '{method}'; use one of {', '.join(METHODS)}")
    return "utility" if method == "utility" else "embedding"


def default_learned(n_rows: int, on_cpu: bool) -> bool:
    """Whether the studio offers the learned utility kernel first: on a CPU, for pools larger
    than the exact kernel's first :data:`UTILITY_CPU_ROWS` rows (a GPU affords exact kernels)."""
    return on_cpu and n_rows > UTILITY_CPU_ROWS


def default_limit(n_rows: int, method: str, on_cpu: bool) -> int:
    """How many of the pool's first rows to use by default: every row, except the utility kernel
    on a CPU, which starts with the first :data:`UTILITY_CPU_ROWS`."""
    if engine_kind(method) == "utility" and on_cpu:
        return min(n_rows, UTILITY_CPU_ROWS)
    return n_rows


class KernelInputs(NamedTuple):
    """The sets a kernel job computes for: the pool (cut to the first N rows) and the extras."""

    pool: Dataset
    target: Dataset | None
    existing: Dataset | None


def kernel_inputs(pool: Dataset, stage: str, method: str, limit: int, *,
                  target: Dataset | None = None, existing: Dataset | None = None) -> KernelInputs:
    """The pool cut to its first ``limit`` rows and the extra sets a stage and method use.

    The embedding kernels are cheap, so they are computed for every loaded set (the maps and any
    objective can then use them); the utility kernel only for the sets the stage's objectives
    need (a needed set that is not loaded stays None: the caller refuses to start).
    """
    if int(limit) < 1:
        raise ValueError(f"use at least the first row of the pool, not {limit}")
    cut = pool if int(limit) >= len(pool) else pool.subset(range(int(limit)))
    cheap = engine_kind(method) != "utility"
    needed = stage_needs(stage)
    given = {"target": target, "existing": existing}
    extra = {role: given[role] if (role in needed or cheap) else None for role in EXTRA_ROLES}
    return KernelInputs(cut, extra["target"], extra["existing"])


def available_objectives(kernels: Any, scores: Any = None) -> list[str]:
    """The objectives ``kernels`` (and the per-row ``scores``, a ``RowScores`` or None) can
    serve, in registry order: every objective whose needed kernel (target or existing) was
    computed and whose per-row scores are there, then the baselines. None: no objectives."""
    if kernels is None:
        return []
    specs = registry.OBJECTIVES.values()
    kind = getattr(scores, "kind", None)
    served = [s.name for s in specs
              if not s.baseline and (s.needs is None or getattr(kernels, s.needs) is not None)
              and (s.scores is None or s.scores == kind)]
    return served + [s.name for s in specs if s.baseline]
