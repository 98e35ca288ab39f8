"""FL conditional gain against data the model already saw (continual tuning)."""

from __future__ import annotations

from typing import Any

from delift_core.selection.objectives.base import CoverageObjective, axis_max, paired_kernels
from delift_core.selection.objectives.spec import ObjectiveSpec, Param

__all__ = ["FacilityLocationConditionalGain", "SPEC"]


class FacilityLocationConditionalGain(CoverageObjective):
    """Continual: f(A | P) = sum_i max(max_{j in A} s_ij - nu * max_{p in P} s_ip, 0).

    ``existing_kernel`` has a row per pool item i and a column per existing item p.
    """

    name = "flcg"

    def __init__(self, pool_kernel: Any, existing_kernel: Any, nu: float = 1.0) -> None:
        pool, existing = paired_kernels(pool_kernel, existing_kernel, "existing", axis=0)
        self.nu = float(nu)
        super().__init__(pool, floor=self.nu * axis_max(existing, 1))


SPEC = ObjectiveSpec(
    name="flcg", label="FLCG (conditional gain)", stage="continual", needs="existing",
    reads=("pool", "existing"),
    stands_on={"existing": ("row_best",)},  # each pool row's floor nu * max_p s_ip
    params=(Param("nu", "ν (nu): how much the existing set already covers", 1.0, 0.0, 5.0,
                  help="floor nu * max_p s_ip: coverage the existing data already gives"),),
    help="Picks what the existing data does not already cover.",
    build=lambda kernels, nu: FacilityLocationConditionalGain(
        kernels.scaled("pool"), kernels.scaled("existing"), nu=nu))
