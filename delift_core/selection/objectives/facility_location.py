"""Facility location (instruction tuning): f(A) = sum_i max_{j in A} s_ij over the pool kernel."""

from __future__ import annotations

from typing import Any

from delift_core.selection.objectives.base import CoverageObjective, as_kernel
from delift_core.selection.objectives.spec import ObjectiveSpec

__all__ = ["FacilityLocation", "SPEC"]


class FacilityLocation(CoverageObjective):
    """Instruction tuning: f(A) = sum_i max_{j in A} s_ij over the pool kernel (rows covered)."""

    name = "fl"

    def __init__(self, pool_kernel: Any) -> None:
        super().__init__(as_kernel(pool_kernel, "pool kernel"))


SPEC = ObjectiveSpec(
    name="fl", label="FL (facility location)", stage="instruction",
    help="Covers the whole pool: every row is represented by its most useful selected example.",
    build=lambda kernels: FacilityLocation(kernels.scaled("pool")))
