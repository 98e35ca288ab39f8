"""From setting values to kernels: the one path the CLI, the studio and the audit take.

:func:`kernels_from_settings` checks every value against :mod:`delift_core.settings`, loads the
causal LM and the embedder the settings name (only those the kernel needs), and calls
:func:`~delift_core.kernels.builder.compute_kernels` with every ``kernel``-group setting by name.
A setting added to the spec reaches the engine from every surface without touching this module,
as long as ``compute_kernels`` (or :class:`~delift_core.kernels.utility_settings.UtilitySettings`
for a ``utility``-group setting) takes it.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Mapping

from delift_core import settings as spec
from delift_core.data.dataset import Dataset
from delift_core.errors import SettingError
from delift_core.kernels.builder import (Kernels, StageProgress, check_learned_sizes,
                                         compute_kernels)
from delift_core.kernels.utility_settings import UtilitySettings

__all__ = ["kernels_from_settings", "scores_from_settings", "load_models", "engine_values"]

logger = logging.getLogger(__name__)


def engine_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """Every model, kernel and utility setting: the given values checked, the rest defaulted."""
    checked = spec.check_all({k: v for k, v in values.items()
                              if k in spec.SETTINGS and spec.SETTINGS[k].group in
                              ("model", "kernel", "utility")}, ["model", "kernel", "utility"])
    spec.check_together(checked)
    return checked


def load_models(values: Mapping[str, Any], kind: str, *,
                progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The causal LM (a utility kernel), the embedder (an embedding or sparse kernel) and the
    utility settings that ``values`` name, loaded once; a chat template the model lacks fails
    here, before any work."""
    from delift_core.lm.models import load_causal_lm, load_embedder

    v = engine_values(values)
    out: dict[str, Any] = {}
    if kind == "embedding" or v["neighbours"] is not None or v["learned"]:
        out["embedder"] = load_embedder(v["embedder"], device=v["device"])
    if kind == "utility":
        logger.info("loading %s ...", v["model"])
        out["lm"] = load_causal_lm(v["model"], device=v["device"], dtype=v["dtype"],
                                   progress=progress or (lambda msg: logger.info("  %s", msg)))
        out["settings"] = UtilitySettings.from_values(v)
        out["settings"].validate()
        if v["chat_template"]:  # a model without a chat template fails now, clearly
            from delift_core.lm.tokens import chat_wrapped_template

            try:
                chat_wrapped_template(out["lm"], out["settings"].plain_template)
            except ValueError as e:
                raise SettingError(f"chat_template (--chat-template): {e}") from None
    return out


def kernels_from_settings(pool: Dataset, values: Mapping[str, Any], *,
                          target: Dataset | None = None, existing: Dataset | None = None,
                          progress: StageProgress | None = None,
                          cancel: threading.Event | None = None,
                          models: Mapping[str, Any] | None = None,
                          model_progress: Callable[[str], None] | None = None) -> Kernels:
    """Compute the kernels that the setting ``values`` describe (``kernel``: utility or
    embedding; the rest as :data:`delift_core.settings.SETTINGS` defines them).

    ``models`` passes models already loaded (``lm``, ``embedder``, ``settings``); what is missing
    is loaded from the values (:func:`load_models`).
    """
    v = engine_values({**values, "kernel": values.get("kernel", spec.default("kernel"))})
    kind = v["kernel"]
    if kind == "utility" and v["learned"]:  # a set too small for one: refused before any load
        check_learned_sizes(pool, target, existing, v["target_direction"])
    loaded = dict(models or {})
    if kind == "utility" and "lm" not in loaded or \
            (v["neighbours"] is not None or kind == "embedding" or v["learned"]) and \
            "embedder" not in loaded:
        loaded = {**load_models(v, kind, progress=model_progress), **loaded}
    if kind == "utility" and "settings" not in loaded:
        loaded["settings"] = UtilitySettings.from_values(v)
    if kind != "utility":
        loaded.pop("lm", None)
        loaded.pop("settings", None)
    engine = {s.name: v[s.name] for s in spec.in_group("kernel") if s.name != "kernel"}
    return compute_kernels(pool, target=target, existing=existing, kind=kind, progress=progress,
                           cancel=cancel, **loaded, **engine)


def scores_from_settings(pool: Dataset, kind: str, values: Mapping[str, Any], *,
                         progress: StageProgress | None = None,
                         cancel: threading.Event | None = None,
                         model_progress: Callable[[str], None] | None = None) -> Any:
    """Per-row scores (:func:`delift_core.kernels.scores.compute_row_scores`) with the causal LM,
    precision and utility settings that ``values`` name (the utility kernel's)."""
    from delift_core.kernels.scores import compute_row_scores

    v = engine_values({**values, "kernel": "utility"})
    models = load_models(v, "utility", progress=model_progress)
    return compute_row_scores(pool, kind, lm=models["lm"], settings=models["settings"],
                              progress=progress, cancel=cancel, use_cache=v["use_cache"])
