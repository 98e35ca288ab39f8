"""DELIFT's submodular objectives, one module per function, and their registry.

``OBJECTIVES`` maps each name to its :class:`ObjectiveSpec`; see :mod:`.registry` for how to add
one and :mod:`.base` for the gain/update protocol every objective follows.
"""

from .base import CoverageObjective, Objective
from .facility_location import FacilityLocation
from .flcg import FacilityLocationConditionalGain
from .flmi import FacilityLocationMutualInformation
from .flqmi import FacilityLocationQueryMutualInformation
from .registry import (OBJECTIVES, STAGES, get, names, needs, param_specs, stage_label,
                       stage_objectives)
from .spec import ObjectiveSpec, Param

__all__ = ["Objective", "CoverageObjective", "FacilityLocation", "FacilityLocationMutualInformation",
           "FacilityLocationQueryMutualInformation", "FacilityLocationConditionalGain",
           "OBJECTIVES", "STAGES", "ObjectiveSpec", "Param", "get", "names", "needs", "param_specs",
           "stage_label", "stage_objectives"]
