"""What the utility kernel engine takes and gives: its settings (everything besides data and
model that changes values), the default templates, the rows it reads and the result it returns.

Kept apart from :mod:`delift_core.kernels.utility` (the orchestration) so that the CLI, the studio and the
pair store can name settings and results without the engine.
"""

from __future__ import annotations

import string
from dataclasses import asdict, dataclass, fields
from typing import Any, Protocol, Sequence

from delift_core import settings as spec
from delift_core.errors import SettingError
from delift_core.kernels.matrices import scale_to_unit

__all__ = ["DEFAULT_PLAIN_TEMPLATE", "DEFAULT_EXAMPLE_TEMPLATE", "ENGINE_VERSION", "TextRows",
           "Texts", "KernelCancelled", "UtilitySettings", "KernelResult"]


ENGINE_VERSION = "utility-v1"
DEFAULT_PLAIN_TEMPLATE: str = spec.default("plain_template")
DEFAULT_EXAMPLE_TEMPLATE: str = spec.default("example_template")


class TextRows(Protocol):
    """What the kernel reads from targets and examples (a :class:`~delift_core.data.dataset.Dataset` or
    :class:`Texts`)."""

    prompts: Sequence[str]
    responses: Sequence[str]
    ids: Sequence[str]


@dataclass(frozen=True)
class Texts:
    """Prompts and responses given as plain lists; ids default to "0".."n-1"."""

    prompts: Sequence[str]
    responses: Sequence[str]
    ids: Sequence[str] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompts", list(self.prompts))
        object.__setattr__(self, "responses", list(self.responses))
        ids = [str(k) for k in range(len(self.prompts))] if self.ids is None else list(self.ids)
        object.__setattr__(self, "ids", ids)
        if not len(self.prompts) == len(self.responses) == len(ids):
            raise ValueError(f"{len(self.prompts)} prompts, {len(self.responses)} responses and "
                             f"{len(ids)} ids: they must be as many")


class KernelCancelled(RuntimeError):
    """Raised when a caller's cancel event is set; finished work units stay in the pair store."""


@dataclass(frozen=True)
class UtilitySettings:
    """Everything besides the data and the model that changes the utility values."""

    plain_template: str = spec.default("plain_template")
    example_template: str = spec.default("example_template")
    score_eos: bool = spec.default("score_eos")
    max_field_tokens: int = spec.default("max_field_tokens")
    max_response_tokens: int = spec.default("max_response_tokens")
    batch_size: int = spec.default("batch_size")
    block_size: int = spec.default("block_size")
    #: wrap each prompt in the tokenizer's chat template (a user turn + the assistant prompt);
    #: for chat-tuned models, off by default (base models have none or were not tuned on it)
    chat_template: bool = spec.default("chat_template")

    @classmethod
    def from_values(cls, values: dict) -> "UtilitySettings":
        """The settings among ``values`` (a dict of setting name -> value, others ignored),
        checked against :mod:`delift_core.settings`; unset ones take their defaults."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in spec.check_all(
            {k: v for k, v in values.items() if k in names}, ["utility"]).items() if k in names})

    def validate(self) -> None:
        """Raise a SettingError (a ValueError) for templates or sizes that cannot run."""
        for f in fields(self):
            spec.check(f.name, getattr(self, f.name))
        _check_template(self.plain_template, {"prompt"}, "plain_template (--plain-template)")
        _check_template(self.example_template, {"prompt", "example_prompt", "example_response"},
                        "example_template (--example-template)")

    def value_key(self) -> dict:
        """The settings that change values (batching and work-unit sizes do not)."""
        d = asdict(self)
        d.pop("batch_size")
        d.pop("block_size")
        return d


def _check_template(template: str, fields: set[str], what: str) -> None:
    try:
        found = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise SettingError(f"{what}: not a valid format string ({e})") from None
    unknown = set(found) - fields
    if unknown or set(found) != fields or len(found) != len(set(found)):
        raise SettingError(f"{what}: must use each of {sorted(fields)} exactly once, found {found}")


@dataclass
class KernelResult:
    """A raw kernel (rows = items helped, columns = in-context examples) and how it was made."""

    values: Any  # dense float32 ndarray, or a scipy CSR float32 matrix for given pairs
    row_ids: list[str]
    col_ids: list[str]
    meta: dict

    @property
    def scaled(self) -> Any:
        return scale_to_unit(self.values)
