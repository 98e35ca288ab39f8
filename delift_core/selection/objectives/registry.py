"""The objective registry: every objective module, one line each, read once into specs.

To add an objective, write its module (the class and its ``SPEC``) and add its name here.
"""

from __future__ import annotations

import importlib

from delift_core.selection.objectives.spec import STAGES, ObjectiveSpec

__all__ = ["OBJECTIVES", "get", "names", "stage_objectives", "stage_label", "needs", "param_specs"]

_MODULES = (
    "facility_location",
    "flmi",
    "flqmi",
    "flcg",
    "graph_cut",
    "ifd",
    "ifd_fl",
    "longest",
    "random_baseline",
)

OBJECTIVES: dict[str, ObjectiveSpec] = {}
for _module in _MODULES:
    _spec: ObjectiveSpec = importlib.import_module(f"{__package__}.{_module}").SPEC
    OBJECTIVES[_spec.name] = _spec


def names() -> tuple[str, ...]:
    """Every objective name, in registry order (the baseline last)."""
    return tuple(OBJECTIVES)


def get(name: str) -> ObjectiveSpec:
    """The spec of an objective; ``KeyError`` names the choices."""
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise KeyError(f"unknown objective '{name}'; use one of {', '.join(OBJECTIVES)}") from None


def needs(name: str) -> str | None:
    """Which extra set an objective needs: 'target', 'existing' or None."""
    return get(name).needs


def stage_objectives(stage: str) -> tuple[str, ...]:
    """The objectives of a stage, in registry order."""
    return tuple(s.name for s in OBJECTIVES.values() if s.stage == stage)


def stage_label(stage: str) -> str:
    """'Instruction tuning → FL / GC': the stage and its objectives."""
    objs = " / ".join(n.upper() for n in stage_objectives(stage))
    return f"{STAGES[stage]} → {objs}"


def param_specs() -> dict[str, list[tuple[str, object]]]:
    """Every parameter name with the (objective, Param) pairs that take it (for CLI options)."""
    out: dict[str, list[tuple[str, object]]] = {}
    for spec in OBJECTIVES.values():
        for p in spec.params:
            out.setdefault(p.name, []).append((spec.name, p))
    return out
