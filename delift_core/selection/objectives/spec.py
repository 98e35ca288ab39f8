"""What the registry knows about an objective: one :class:`ObjectiveSpec` per objective module.

Selection, the CLI's choices and help, the studio's stage and objective widgets and the tests'
parametrisation are all derived from these specs, so an objective is described in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

__all__ = ["Param", "ObjectiveSpec", "STAGES"]

STAGES: dict[str, str] = {
    "instruction": "Instruction tuning",
    "task": "Task-specific",
    "continual": "Continual",
}
"""DELIFT's three stages (the key is what specs name; the value is the label shown)."""


@dataclass(frozen=True)
class Param:
    """A numeric objective parameter: its name (a keyword of the objective), label, default and
    range (checked by selection; the studio's slider and the CLI's option use them)."""

    name: str
    label: str
    default: float
    low: float
    high: float
    step: float = 0.1
    help: str = ""


@dataclass(frozen=True)
class ObjectiveSpec:
    """One objective: name, label, stage, which extra set it needs, parameters, help, and how to
    build it from the scaled kernels (``build(kernels, **params)``; None for a baseline that needs
    no kernel)."""

    name: str
    label: str
    stage: str | None
    help: str
    build: Callable[..., Any] | None
    needs: str | None = None  # "target" | "existing" | None
    params: tuple[Param, ...] = field(default_factory=tuple)
    baseline: bool = False  # an order that is not a maximisation (the random baseline)
    scores: str | None = None
    """The per-row score (:data:`delift_core.kernels.scores.ROW_SCORES`) the method ranks by;
    with ``build`` None it is a plain ranking by that score, with one it filters by the score
    (``keep``) and maximises the built objective on what is left."""
    needs_kernel: bool = True
    """Whether it needs a pool kernel (a ranking by scores does not)."""
    reads: tuple[str, ...] = ("pool",)
    """The kernels its objective is built from (``build``): the ones whose values a selection
    stands on, so the ones a verification scores; none for a method without ``build``."""
    stands_on: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """For a kernel in ``reads`` that the objective does not read by covers (each row's best
    selected column), the pairs its value stands on instead: ``"column_best"`` (every column's
    best row, a cap max_q s_qi), ``"selected_column_best"`` (the selected columns' best rows, a
    modular term), ``"row_best"`` (every row's best column, a floor max_p s_ip),
    ``"selected_columns"`` (every pair in the selected columns, a sum), ``"covers"``;
    :mod:`delift_core.selection.verify` scores them."""

    def pair_rules(self, role: str) -> tuple[str, ...]:
        """Which pairs of kernel ``role`` a selection with this objective stands on."""
        return tuple(self.stands_on.get(role, ("covers",)))

    def explores(self, learned: Any = None) -> bool:
        """Whether verification can explore columns for this objective: some kernel it reads
        (of those in ``learned``, when given) is read by covers; GC's and FLMI's target's
        verified pairs are all the pairs their value stands on, so they have nothing to explore."""
        return any("covers" in self.pair_rules(r) for r in self.reads
                   if learned is None or r in learned)

    def defaults(self) -> dict[str, float]:
        """Every parameter at its default."""
        return {p.name: p.default for p in self.params}

    def resolve(self, given: Mapping[str, Any] | None) -> dict[str, float]:
        """The parameters for a run: defaults, overridden by ``given`` (None values ignored),
        each checked to be a number in its range. Names this objective does not take are ignored
        (the CLI passes every objective's options), so a caller can pass one mapping to any spec."""
        out = self.defaults()
        for p in self.params:
            value = (given or {}).get(p.name)
            if value is None:
                continue
            try:
                v = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"objective '{self.name}': {p.name} must be a number, got "
                                 f"{value!r}") from None
            if not p.low <= v <= p.high:
                raise ValueError(f"objective '{self.name}': {p.name} = {v} is outside "
                                 f"[{p.low}, {p.high}]")
            out[p.name] = v
        return out
