"""What an evaluation run is asked to do: its settings, modes and the error it raises.

Kept apart from the code that runs it so the CLI, the Evaluate page and the cache keys all read
one definition of every knob (and which knobs change which numbers).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from delift_core.errors import DeliftError

__all__ = ["EVAL_VERSION", "MODES", "EvaluationCancelled", "EvaluationError", "EvalSettings"]

EVAL_VERSION = "evaluate-v1"
MODES = ("icl", "lora")


class EvaluationError(DeliftError, ValueError):
    """An evaluation cannot run as asked (inputs, settings, missing pool for baselines)."""


class EvaluationCancelled(RuntimeError):
    """Raised when the caller's cancel event is set; scored items stay in the on-disk cache."""


@dataclass(frozen=True)
class EvalSettings:
    """Everything besides data and model that changes evaluation numbers (batching excepted)."""

    shots: int = 2
    max_field_tokens: int = 160
    max_reference_tokens: int = 96
    generate: bool = True
    max_new_tokens: int = 32
    batch_size: int = 4
    lora_steps: int = 12
    lora_batch_size: int = 4
    lora_lr: float = 1e-3
    lora_r: int = 8
    lora_alpha: int = 16
    lora_targets: str = "q_proj,k_proj,v_proj,o_proj"
    lora_max_tokens: int = 192
    lora_seed: int = 0

    def validate(self) -> None:
        """Raise :class:`EvaluationError` for settings that cannot run."""
        ints = {"shots": (self.shots, 0), "max_field_tokens": (self.max_field_tokens, 1),
                "max_reference_tokens": (self.max_reference_tokens, 1),
                "max_new_tokens": (self.max_new_tokens, 1), "batch_size": (self.batch_size, 1),
                "lora_steps": (self.lora_steps, 0), "lora_batch_size": (self.lora_batch_size, 1),
                "lora_r": (self.lora_r, 1), "lora_max_tokens": (self.lora_max_tokens, 8)}
        for name, (value, low) in ints.items():
            if value < low:
                raise EvaluationError(f"{name.replace('_', '-')} must be at least {low} "
                                      f"(got {value})")
        if not self.lora_lr > 0:
            raise EvaluationError("lora-lr must be positive")
        if not [t for t in self.lora_targets.split(",") if t.strip()]:
            raise EvaluationError("lora-targets names no module")

    def icl_key(self) -> dict:
        """The settings that change ICL item scores."""
        return {"shots": self.shots, "max_field_tokens": self.max_field_tokens,
                "max_reference_tokens": self.max_reference_tokens, "generate": self.generate,
                "max_new_tokens": self.max_new_tokens}

    def lora_key(self) -> dict:
        """The settings that change a trained adapter."""
        return {k: v for k, v in asdict(self).items() if k.startswith("lora_")} | {
            "max_field_tokens": self.max_field_tokens,
            "max_reference_tokens": self.max_reference_tokens}
