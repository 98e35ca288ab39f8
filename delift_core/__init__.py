"""DELIFT Studio's engine: data, models, utility and embedding kernels, submodular selection.

    from delift_core import load_dataset, compute_kernels, select, export_selection
    pool = load_dataset("demo:pool")
    kernels = compute_kernels(pool, kind="embedding")
    selection = select(pool, "fl", kernels, budget=0.3)
    export_selection(selection, "out/")
"""

from .data import ColumnMapping, Dataset, SkippedRow, detect_layout, load_dataset, load_dataset_bytes
from .embedding import embed_texts, embedding_kernel
from .errors import DataError, DeliftError, ModelError, SelectionError
from .export import export_selection, rows_to_bytes, selection_artifacts
from .greedy import GreedyResult, greedy_maximize, random_order
from .models import (DEFAULT_EMBEDDER, DEFAULT_MODEL, CausalLM, load_causal_lm, load_embedder,
                     resolve_device)
from .cover import best_cover
from .kernels import Kernels, SparseSpec, compute_kernels, load_kernels, save_kernels
from .objectives import (OBJECTIVES, CoverageObjective, FacilityLocation,
                         FacilityLocationConditionalGain, FacilityLocationMutualInformation,
                         FacilityLocationQueryMutualInformation, Objective, ObjectiveSpec)
from .review import Decisions, load_decisions
from .selection import Selection, build_objective, resolve_budget, select
from .utility import (DEFAULT_EXAMPLE_TEMPLATE, DEFAULT_PLAIN_TEMPLATE, KernelCancelled,
                      KernelResult, UtilityKernel, UtilitySettings)
from .matrices import minmax_scale, scale_to_unit

__version__ = "0.1.0"

__all__ = [name for name in dir() if not name.startswith("_")]
