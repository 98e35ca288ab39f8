"""DELIFT Studio's engine: data, models, utility and embedding kernels, submodular selection.

    from delift_core import load_dataset, compute_kernels, select, export_selection
    pool = load_dataset("demo:pool")
    kernels = compute_kernels(pool, kind="embedding")
    selection = select(pool, "fl", kernels, budget=0.3)
    export_selection(selection, "out/")

Subpackages and modules not re-exported here (``objectives``, ``plan``, ``views``, ``evaluation``,
``sparse``, ``cover``) are imported by name: ``from delift_core.selection.objectives import OBJECTIVES``.
"""

from importlib import metadata as _metadata

from delift_core.selection import objectives, plan
from delift_core.selection.cover import best_cover
from delift_core.data.layouts import ColumnMapping, detect_layout
from delift_core.data.dataset import Dataset, SkippedRow, load_dataset, load_dataset_bytes
from delift_core.kernels.embedding import embed_texts, embedding_kernel
from delift_core.errors import (DataError, DeliftError, KernelError, MissingDependencyError,
                                ModelError, SelectionError)
from delift_core.outputs.export import export_selection, rows_to_bytes, selection_artifacts
from delift_core.selection.greedy import GreedyResult, greedy_maximize, random_order
from delift_core.kernels.files import load_kernels, save_kernels
from delift_core.kernels.builder import Kernels, SparseSpec, compute_kernels, kernel_report
from delift_core.kernels.matrices import minmax_scale, scale_to_unit
from delift_core.lm.models import (DEFAULT_EMBEDDER, DEFAULT_MODEL, CausalLM, load_causal_lm,
                                   load_embedder, resolve_device)
from delift_core.selection.objectives.registry import OBJECTIVES
from delift_core.selection.objectives.base import CoverageObjective, Objective
from delift_core.selection.objectives.facility_location import FacilityLocation
from delift_core.selection.objectives.flcg import FacilityLocationConditionalGain
from delift_core.selection.objectives.flmi import FacilityLocationMutualInformation
from delift_core.selection.objectives.flqmi import FacilityLocationQueryMutualInformation
from delift_core.selection.objectives.spec import ObjectiveSpec
from delift_core.outputs.review import Decisions, load_decisions
from delift_core.selection.select import Selection, build_objective, resolve_budget, select
from delift_core.kernels.utility_settings import (DEFAULT_EXAMPLE_TEMPLATE, DEFAULT_PLAIN_TEMPLATE,
                                                  KernelCancelled, KernelResult, Texts,
                                                  UtilitySettings)
from delift_core.kernels.utility import UtilityKernel

try:
    __version__ = _metadata.version("delift-studio")
except _metadata.PackageNotFoundError:  # pragma: no cover - run from a source tree, not installed
    __version__ = "0.0.0+unknown"

__all__ = [
    # data
    "ColumnMapping", "Dataset", "SkippedRow", "detect_layout", "load_dataset", "load_dataset_bytes",
    # errors
    "DataError", "DeliftError", "KernelError", "MissingDependencyError", "ModelError",
    "SelectionError",
    # models
    "DEFAULT_EMBEDDER", "DEFAULT_MODEL", "CausalLM", "load_causal_lm", "load_embedder",
    "resolve_device",
    # kernels
    "Kernels", "SparseSpec", "compute_kernels", "kernel_report", "load_kernels", "save_kernels",
    "embed_texts", "embedding_kernel", "minmax_scale", "scale_to_unit",
    "DEFAULT_EXAMPLE_TEMPLATE", "DEFAULT_PLAIN_TEMPLATE", "KernelCancelled", "KernelResult",
    "Texts", "UtilityKernel", "UtilitySettings",
    # objectives and selection
    "objectives", "OBJECTIVES", "Objective", "ObjectiveSpec", "CoverageObjective",
    "FacilityLocation", "FacilityLocationConditionalGain", "FacilityLocationMutualInformation",
    "FacilityLocationQueryMutualInformation", "GreedyResult", "greedy_maximize", "random_order",
    "Selection", "build_objective", "resolve_budget", "select", "best_cover", "plan",
    # review and export
    "Decisions", "load_decisions", "export_selection", "rows_to_bytes", "selection_artifacts",
    "__version__",
]
