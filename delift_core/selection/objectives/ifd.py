"""IFD ranking (Li et al., "From Quantity to Quality", NAACL 2024; Superfiltering, Li et al.,
ACL 2024): the rows whose instruction helps the model least, among those it helps at all."""

from __future__ import annotations

from delift_core.selection.objectives.spec import ObjectiveSpec

__all__ = ["SPEC"]

SPEC = ObjectiveSpec(
    name="ifd", label="IFD (instruction-following difficulty)", stage="instruction",
    build=None, scores="ifd", needs_kernel=False,
    help="The rows with the highest IFD: the response's loss given the instruction over its loss "
         "alone, from two passes of the chosen causal LM per row; rows with IFD >= 1 (the "
         "instruction does not help) come last, as Superfiltering drops them (Li et al., "
         "NAACL 2024; Superfiltering, ACL 2024). A quality heuristic: no kernel, no diversity.")
