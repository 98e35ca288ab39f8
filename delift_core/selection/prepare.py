"""Before a selection runs: the checks that fail fast, and the kernels it needs.

The one preparation every surface shares (``delift select``, ``delift audit``, the studio):
:func:`check_request` refuses an objective without its set, a bad budget or objective parameter
before any model loads; :func:`selection_kernels` computes or loads the kernels a selection needs
(none for a baseline).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Mapping

from delift_core import settings as spec
from delift_core.data.dataset import Dataset
from delift_core.errors import KernelError, SelectionError
from delift_core.kernels.builder import Kernels, StageProgress
from delift_core.kernels.files import check_target_direction, load_kernels
from delift_core.kernels.request import kernels_from_settings, scores_from_settings
from delift_core.selection import objectives
from delift_core.selection.objectives.spec import ObjectiveSpec
from delift_core.selection.select import resolve_budget

__all__ = ["check_request", "selection_kernels", "selection_scores", "KERNEL_NONE"]

KERNEL_NONE = "none"
"""``--kernel none``: no kernel (a baseline)."""


def check_request(pool: Dataset, objective: str, budget: Any, *,
                  params: Mapping[str, Any] | None = None, target: Dataset | None = None,
                  existing: Dataset | None = None) -> ObjectiveSpec:
    """The objective's spec, or a SelectionError for what would fail later: the set it needs
    missing, a budget or an objective parameter out of range."""
    try:
        ospec = objectives.get(objective)
    except KeyError as e:
        raise SelectionError(str(e.args[0])) from None
    if ospec.needs and {"target": target, "existing": existing}[ospec.needs] is None:
        raise SelectionError(f"objective '{objective}' needs --{ospec.needs} FILE")
    resolve_budget(budget, len(pool))
    try:
        ospec.resolve(dict(params or {}))
    except ValueError as e:
        raise SelectionError(str(e)) from None
    return ospec


def selection_kernels(pool: Dataset, objective: str, kernel: str, values: Mapping[str, Any], *,
                      target: Dataset | None = None, existing: Dataset | None = None,
                      trust: bool = False, target_kernel: str | None = None,
                      existing_kernel: str | None = None, progress: StageProgress | None = None,
                      cancel: threading.Event | None = None) -> Kernels | None:
    """The kernels a selection of ``objective`` needs: None for a baseline (even when the default
    utility kernel is named) or ``kernel="none"``; computed for ``utility``/``embedding`` with the
    setting ``values``; otherwise loaded from a ``delift kernel`` folder or file and checked
    against the data (and a target direction asked for in ``values``)."""
    ospec = objectives.get(objective)
    kinds = spec.choices("kernel")
    if kernel == KERNEL_NONE or ((ospec.baseline or not ospec.needs_kernel)
                                 and kernel == spec.default("kernel")):
        return None
    if kernel in kinds:
        return kernels_from_settings(pool, {**values, "kernel": kernel}, target=target,
                                     existing=existing, progress=progress, cancel=cancel)
    if not Path(kernel).exists() and not Path(kernel).with_suffix(".npz").exists():
        raise KernelError(f"--kernel {kernel}: no such kernel folder or file (or give "
                          f"{', '.join(kinds)})")
    kernels = load_kernels(kernel, pool, target=target, existing=existing,
                           target_kernel=target_kernel, existing_kernel=existing_kernel,
                           trust=trust)
    check_target_direction(kernels, values.get("target_direction"))
    return kernels


def selection_scores(pool: Dataset, objective: str, values: Mapping[str, Any], *,
                     scores_file: str | Path | None = None, progress: StageProgress | None = None,
                     cancel: threading.Event | None = None) -> Any:
    """The per-row scores a method ranks by (None when it ranks by none): read from
    ``scores_file`` (a ``row_scores.json`` or its folder, refused when stale or of another
    kind), else computed with the model the setting ``values`` name (cached by content)."""
    from delift_core.kernels.scores import load_row_scores

    ospec = objectives.get(objective)
    if ospec.scores is None:
        return None
    if scores_file is not None:
        scores = load_row_scores(scores_file, pool)
        if scores.kind != ospec.scores:
            raise SelectionError(f"{scores_file}: holds '{scores.kind}' scores; objective "
                                 f"'{objective}' ranks by '{ospec.scores}'")
        return scores
    return scores_from_settings(pool, ospec.scores, values, progress=progress, cancel=cancel)
