"""Superfiltering.D (Li et al., ACL 2024): keep the rows of highest IFD, then facility location
on the kernel among them (the paper uses sentence embeddings: the DELIFT-SE kernel)."""

from __future__ import annotations

from delift_core.selection.objectives.facility_location import FacilityLocation
from delift_core.selection.objectives.spec import ObjectiveSpec, Param

__all__ = ["SPEC"]

SPEC = ObjectiveSpec(
    name="ifd-fl", label="IFD then FL (Superfiltering.D)", stage="instruction",
    scores="ifd",
    params=(Param("keep", "share of the pool kept by IFD before FL", 0.2, 0.01, 1.0, step=0.01,
                  help="Superfiltering.D keeps the top 20 % by IFD (10,400 of Alpaca's 52,002 "
                       "rows in its script), then runs FL on sentence embeddings"),),
    help="Superfiltering.D (Li et al., ACL 2024): keep the top share of rows by IFD (IFD < 1 "
         "only), then facility location on the kernel among them; with the DELIFT-SE kernel "
         "this is the paper's method.",
    build=lambda kernels, keep: FacilityLocation(kernels.scaled("pool")))
