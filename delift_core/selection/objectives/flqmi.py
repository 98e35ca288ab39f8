"""FL query mutual information (task-specific, the paper's query form)."""

from __future__ import annotations

from typing import Any

import numpy as np

from delift_core.selection.objectives.base import CoverageObjective, as_kernel, axis_max
from delift_core.selection.objectives.spec import ObjectiveSpec, Param

__all__ = ["FacilityLocationQueryMutualInformation", "SPEC"]


class FacilityLocationQueryMutualInformation(CoverageObjective):
    """Task-specific (paper's query form): f(A) = sum_q max_{j in A} s_qj + eta sum_{j in A} max_q s_qj."""

    name = "flqmi"

    def __init__(self, target_kernel: Any, eta: float = 1.0) -> None:
        target = as_kernel(target_kernel, "target kernel")
        self.eta = float(eta)
        super().__init__(target, modular=self.eta * np.maximum(axis_max(target, 0), 0))


SPEC = ObjectiveSpec(
    name="flqmi", label="FLQMI (query mutual information)", stage="task", needs="target",
    reads=("target",),
    stands_on={"target": ("covers", "selected_column_best")},  # the sum and the modular term
    params=(Param("eta", "η (eta): weight of each pick's best target similarity", 1.0, 0.0, 5.0,
                  help="weight of the modular term sum_{j in A} max_q s_qj"),),
    help="Only looks at the target: covers the target rows.",
    build=lambda kernels, eta: FacilityLocationQueryMutualInformation(kernels.scaled("target"),
                                                                      eta=eta))
