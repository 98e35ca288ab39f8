"""The longest responses ("Long Is More for Alignment", Zhao et al., ICML 2024)."""

from __future__ import annotations

from delift_core.selection.objectives.spec import ObjectiveSpec

__all__ = ["SPEC"]

SPEC = ObjectiveSpec(
    name="longest", label="longest responses", stage="instruction",
    build=None, scores="response_tokens", needs_kernel=False,
    help="The rows with the longest responses in the chosen model's tokens (Zhao et al., 'Long "
         "Is More for Alignment', ICML 2024): a strong, nearly free baseline. No model pass, no "
         "kernel.")
