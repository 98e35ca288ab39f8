"""FL mutual information with a target set (task-specific, the reference form)."""

from __future__ import annotations

from typing import Any

from delift_core.selection.objectives.base import CoverageObjective, axis_max, paired_kernels
from delift_core.selection.objectives.spec import ObjectiveSpec, Param

__all__ = ["FacilityLocationMutualInformation", "SPEC"]


class FacilityLocationMutualInformation(CoverageObjective):
    """Task-specific (reference form): f(A) = sum_i min(max_{j in A} s_ij, eta * max_q s_iq).

    ``target_kernel`` has a row per target q and a column per pool item j (utility of j as an
    example for q); s_iq is read from it transposed, so no combined kernel is built.
    """

    name = "flmi"

    def __init__(self, pool_kernel: Any, target_kernel: Any, eta: float = 1.0) -> None:
        pool, target = paired_kernels(pool_kernel, target_kernel, "target", axis=1)
        self.eta = float(eta)
        super().__init__(pool, cap=self.eta * axis_max(target, 0))


ETA = Param("eta", "η (eta): weight of covering the target", 1.0, 0.0, 5.0,
            help="how much of each pool row's relevance to the target counts (cap eta * max_q s_iq)")

SPEC = ObjectiveSpec(
    name="flmi", label="FLMI (mutual information)", stage="task", needs="target",
    reads=("pool", "target"),
    stands_on={"target": ("column_best",)},  # each pool row's cap eta * max_q s_qi
    params=(ETA,),
    help="Balances covering the target with covering the pool.",
    build=lambda kernels, eta: FacilityLocationMutualInformation(
        kernels.scaled("pool"), kernels.scaled("target"), eta=eta))
