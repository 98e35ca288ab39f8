"""DELIFT's submodular objectives, one module per function, and their registry.

``OBJECTIVES`` maps each name to its :class:`ObjectiveSpec`; see :mod:`.registry` for how to add
one and :mod:`.base` for the gain/update protocol every objective follows.
"""

from delift_core.selection.objectives.base import CoverageObjective, Objective
from delift_core.selection.objectives.facility_location import FacilityLocation
from delift_core.selection.objectives.flcg import FacilityLocationConditionalGain
from delift_core.selection.objectives.flmi import FacilityLocationMutualInformation
from delift_core.selection.objectives.flqmi import FacilityLocationQueryMutualInformation
from delift_core.selection.objectives.registry import (OBJECTIVES, get, names, needs, param_specs,
                                                       stage_label, stage_objectives)
from delift_core.selection.objectives.spec import STAGES
from delift_core.selection.objectives.spec import ObjectiveSpec, Param

__all__ = ["Objective", "CoverageObjective", "FacilityLocation", "FacilityLocationMutualInformation",
           "FacilityLocationQueryMutualInformation", "FacilityLocationConditionalGain",
           "OBJECTIVES", "STAGES", "ObjectiveSpec", "Param", "get", "names", "needs", "param_specs",
           "stage_label", "stage_objectives"]
