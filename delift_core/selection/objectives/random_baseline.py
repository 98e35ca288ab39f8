"""The random baseline: a seeded random order (no kernel needed), the control every method must beat."""

from __future__ import annotations

from delift_core.selection.objectives.spec import ObjectiveSpec

__all__ = ["SPEC"]

SPEC = ObjectiveSpec(
    name="random", label="random order", stage=None, baseline=True, build=None,
    help="A seeded random order: the baseline. Needs no kernel; with one, gains are measured with FL.")
