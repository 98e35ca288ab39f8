"""Record layouts: recognising Alpaca, prompt/completion, chat and other layouts from column names,
and turning one record into the (prompt, response) pair the models see.

TRL's formats are read as they are: ``prompt``/``completion`` holding text (standard) or lists of
``{"role", "content"}`` messages (conversational), and ``messages`` with any system turn; the
records themselves are kept, so an export writes them back in the same layout.

A layout we do not recognise is read through a :class:`ColumnMapping` that names the columns.
Bad records raise :class:`DataError` naming the file, the row and the column.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from delift_core.errors import DataError

__all__ = ["LAYOUTS", "ColumnMapping", "column_value", "detect_layout", "is_messages",
           "record_pair"]

LAYOUTS = ("alpaca", "prompt_completion", "prompt_response", "question_answer", "messages",
           "conversations", "mapping")
_ROLE_NAMES = {"system": "System", "user": "User", "assistant": "Assistant", "human": "User",
               "gpt": "Assistant", "bot": "Assistant", "model": "Assistant", "tool": "Tool"}
_ASSISTANT_ROLES = {"assistant", "gpt", "bot", "model"}


@dataclass(frozen=True)
class ColumnMapping:
    """Which columns hold the prompt, the response and the id, for layouts we do not recognise.

    ``prompt`` may name several columns; their non-empty values are joined with a blank line
    (the Alpaca convention for ``instruction`` + ``input``).
    """

    prompt: str | Sequence[str]
    response: str
    id: str | None = None

    @property
    def prompt_columns(self) -> list[str]:
        """The prompt column names as a list (one or several)."""
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)




def detect_layout(columns: Iterable[str]) -> str:
    """Name the layout of a table from its column names, or raise DataError."""
    cols = set(columns)
    if "messages" in cols:
        return "messages"
    if "conversations" in cols:
        return "conversations"
    if {"instruction", "output"} <= cols:
        return "alpaca"
    if {"prompt", "completion"} <= cols:
        return "prompt_completion"
    if {"prompt", "response"} <= cols:
        return "prompt_response"
    if {"question", "answer"} <= cols:
        return "question_answer"
    raise DataError(
        f"unknown layout: columns {sorted(cols)}. Recognised layouts: Alpaca (instruction/input/"
        "output), prompt/completion, prompt/response, question/answer, OpenAI messages, ShareGPT "
        "conversations. Otherwise name the columns: --prompt-col COL --response-col COL "
        "(ColumnMapping in the API)")


def _text(value: Any, column: str, where: str, name: str) -> str:
    """A cell as text (None as empty, numbers as written); anything else is an error."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float, bool)):
        return str(value)
    raise DataError(f"{name}: {where}: column '{column}' holds a {type(value).__name__}, "
                    "expected text")


def column_value(record: dict, column: str, where: str, name: str, required: bool = True) -> Any:
    """A record's value in ``column``; a missing required column is an error naming the row."""
    if column not in record:
        if not required:
            return None
        raise DataError(f"{name}: {where}: missing column '{column}' (present: "
                        f"{sorted(record)[:12]})")
    return record[column]


def _turns(turns: Any, column: str, role_key: str, text_key: str, where: str,
           name: str) -> list[dict]:
    """A list of chat turns (a JSON text of one, as CSV holds it, is parsed), checked."""
    if isinstance(turns, str):
        try:
            turns = json.loads(turns)
        except json.JSONDecodeError:
            raise DataError(f"{name}: {where}: column '{column}' is text that is not a JSON "
                            "list of turns") from None
    if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
        raise DataError(f"{name}: {where}: column '{column}' must be a list of turns "
                        f"({{'{role_key}': ..., '{text_key}': ...}})")
    for k, t in enumerate(turns):
        if role_key not in t or text_key not in t:
            raise DataError(f"{name}: {where}: turn {k} of '{column}' lacks '{role_key}' or "
                            f"'{text_key}'")
    return turns


def _turns_text(turns: list[dict], column: str, role_key: str, text_key: str, where: str,
                name: str, alone: set[str]) -> str:
    """Turns as one text: a lone turn whose role is in ``alone`` as its content, else each turn
    as "Role: content", separated by a blank line."""
    if len(turns) == 1 and str(turns[0][role_key]).lower() in alone:
        return _text(turns[0][text_key], column, where, name)
    return "\n\n".join(
        f"{_ROLE_NAMES.get(str(t[role_key]).lower(), str(t[role_key]))}: "
        f"{_text(t[text_key], column, where, name)}" for t in turns)


def _chat_pair(turns: Any, column: str, role_key: str, text_key: str, where: str,
               name: str) -> tuple[str, str]:
    """A chat's last assistant turn as the response and the turns before it as the prompt."""
    turns = _turns(turns, column, role_key, text_key, where, name)
    last = max((k for k, t in enumerate(turns) if str(t[role_key]).lower() in _ASSISTANT_ROLES),
               default=None)
    if last is None:
        raise DataError(f"{name}: {where}: '{column}' has no assistant turn to use as the "
                        "response")
    response = _text(turns[last][text_key], column, where, name)
    prompt = _turns_text(turns[:last], column, role_key, text_key, where, name,
                         {"user", "human"})
    return prompt, response


def is_messages(value: Any) -> bool:
    """Whether a cell is a list of chat messages (TRL's conversational prompt/completion), or the
    JSON text of one as a CSV file holds it: a list of objects that all have 'role' and
    'content'."""
    if isinstance(value, str):
        if not value.startswith("[{"):
            return False
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return False
    return (isinstance(value, list) and bool(value)
            and all(isinstance(t, dict) and "role" in t and "content" in t for t in value))


def _field_text(value: Any, column: str, where: str, name: str, alone: set[str]) -> str:
    """A prompt or completion cell as text: plain text as it is; a list of messages (TRL's
    conversational layout) rendered as turns (one lone turn of an ``alone`` role as its text)."""
    if isinstance(value, (list, str)) and is_messages(value):
        return _turns_text(_turns(value, column, "role", "content", where, name), column,
                           "role", "content", where, name, alone)
    if isinstance(value, list):
        raise DataError(f"{name}: {where}: column '{column}' holds a list that is not a list of "
                        "messages ({'role': ..., 'content': ...})")
    return _text(value, column, where, name)


def record_pair(record: dict, layout: str, mapping: ColumnMapping | None, where: str,
                name: str) -> tuple[str, str]:
    """The (prompt, response) of one record in ``layout``; ``where`` and ``name`` go in errors."""

    def text(column: str, required: bool = True) -> str:
        return _text(column_value(record, column, where, name, required), column, where, name)

    if layout == "mapping":
        assert mapping is not None
        prompt = "\n\n".join(p for p in map(text, mapping.prompt_columns) if p.strip())
        return prompt, text(mapping.response)
    if layout == "alpaca":
        ins, inp = text("instruction"), text("input", required=False)
        return (f"{ins}\n\n{inp}" if inp.strip() else ins), text("output")
    if layout == "messages":
        return _chat_pair(column_value(record, "messages", where, name), "messages", "role",
                          "content", where, name)
    if layout == "conversations":
        return _chat_pair(column_value(record, "conversations", where, name), "conversations",
                          "from", "value", where, name)
    pc, rc = {"prompt_completion": ("prompt", "completion"),
              "prompt_response": ("prompt", "response"),
              "question_answer": ("question", "answer")}[layout]
    if layout == "prompt_completion":  # TRL: text, or lists of messages (conversational)
        return (_field_text(column_value(record, pc, where, name), pc, where, name,
                            {"user", "human"}),
                _field_text(column_value(record, rc, where, name), rc, where, name,
                            _ASSISTANT_ROLES))
    return text(pc), text(rc)
