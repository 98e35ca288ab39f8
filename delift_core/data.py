"""Loading and normalising instruction data into (prompt, response) pairs.

Every row keeps a stable id and all of its original fields, so that a selection can be written
back in the user's own layout. Bad input raises :class:`DataError` with a message that names the
file, the line or row and the problem; rows skipped on purpose (empty responses) are reported.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from .errors import DataError

FORMATS = ("jsonl", "json", "csv", "parquet")
LAYOUTS = ("alpaca", "prompt_completion", "prompt_response", "question_answer", "messages",
           "conversations", "mapping")
_EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv",
               ".parquet": "parquet", ".pq": "parquet"}
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
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


@dataclass(frozen=True)
class SkippedRow:
    """A row left out of selection on purpose, with where it was and why."""

    position: int
    location: str
    reason: str
    row: dict
    id: str = ""


@dataclass
class Dataset:
    """Normalised rows: ``prompts[k]``/``responses[k]`` come from ``rows[k]`` with id ``ids[k]``."""

    rows: list[dict]
    ids: list[str]
    prompts: list[str]
    responses: list[str]
    layout: str
    source: str
    source_format: str
    positions: list[int] = field(default_factory=list)
    skipped: list[SkippedRow] = field(default_factory=list)
    file_sha256: str | None = None
    mapping: ColumnMapping | None = None

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def columns(self) -> list[str]:
        seen: dict[str, None] = {}
        for row in self.rows:
            seen.update(dict.fromkeys(row))
        return list(seen)

    @property
    def text_sha256(self) -> str:
        """Hash of exactly what the models see (ids, prompts, responses): the cache key for kernels."""
        h = hashlib.sha256()
        for rid, p, r in zip(self.ids, self.prompts, self.responses):
            h.update(json.dumps([rid, p, r], ensure_ascii=False).encode("utf-8"))
            h.update(b"\n")
        return h.hexdigest()

    def index_of(self, row_id: str) -> int:
        try:
            return self._id_index[row_id]
        except AttributeError:
            self._id_index = {rid: k for k, rid in enumerate(self.ids)}
            return self._id_index[row_id]

    def subset(self, indices: Iterable[int]) -> "Dataset":
        """A dataset of the given rows, in the given order (skipped rows are not carried)."""
        idx = list(indices)
        return Dataset(
            rows=[self.rows[k] for k in idx], ids=[self.ids[k] for k in idx],
            prompts=[self.prompts[k] for k in idx], responses=[self.responses[k] for k in idx],
            layout=self.layout, source=self.source, source_format=self.source_format,
            positions=[self.positions[k] for k in idx] if self.positions else [],
            file_sha256=self.file_sha256, mapping=self.mapping)

    def summary(self) -> str:
        text = (f"{self.source}: {len(self)} rows, layout '{self.layout}', format "
                f"'{self.source_format}'")
        if self.skipped:
            reasons: dict[str, int] = {}
            for s in self.skipped:
                reasons[s.reason] = reasons.get(s.reason, 0) + 1
            text += "; skipped " + ", ".join(f"{n} ({r})" for r, n in reasons.items())
        return text


# ----------------------------------------------------------------------------------------------
# Reading raw records


def _decode(data: bytes, name: str) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataError(f"{name}: line {line} is not valid UTF-8 (byte offset {e.start}); "
                        "save the file as UTF-8") from None
    return text.lstrip("\ufeff")


def _read_jsonl(data: bytes, name: str) -> tuple[list[dict], list[str]]:
    text = _decode(data, name)
    records, where = [], []
    # split on newlines only: str.splitlines() would also split inside values at U+2028 etc.
    for lineno, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{name}: line {lineno} is not valid JSON ({e.msg} at column "
                            f"{e.colno})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{name}: line {lineno} is a JSON {type(obj).__name__}, expected an "
                            "object with fields")
        records.append(obj)
        where.append(f"line {lineno}")
    return records, where


def _read_json(data: bytes, name: str) -> tuple[list[dict], list[str]]:
    text = _decode(data, name)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{name}: not valid JSON ({e.msg} at line {e.lineno}, column "
                        f"{e.colno})") from None
    if isinstance(obj, dict):
        lists = [k for k, v in obj.items() if isinstance(v, list)]
        if len(lists) == 1:
            obj = obj[lists[0]]
        else:
            raise DataError(f"{name}: expected a JSON array of objects (or an object holding one "
                            f"array), found an object with keys {sorted(obj)[:10]}")
    if not isinstance(obj, list):
        raise DataError(f"{name}: expected a JSON array of objects, found {type(obj).__name__}")
    for k, item in enumerate(obj):
        if not isinstance(item, dict):
            raise DataError(f"{name}: item {k} of the array is a {type(item).__name__}, expected "
                            "an object")
    return obj, [f"item {k}" for k in range(len(obj))]


def _read_csv(data: bytes, name: str) -> tuple[list[dict], list[str]]:
    import csv

    text = _decode(data, name)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise DataError(f"{name}: the CSV file is empty") from None
    except csv.Error as e:
        raise DataError(f"{name}: line 1: {e}") from None
    if len(set(header)) != len(header):
        dup = sorted({h for h in header if header.count(h) > 1})
        raise DataError(f"{name}: the header names columns twice: {dup}")
    records, where = [], []
    try:
        for row in reader:
            line = reader.line_num
            if not row or all(not c for c in row) and len(row) <= 1:
                continue
            if len(row) != len(header):
                raise DataError(f"{name}: row {len(records) + 1} (line {line}) has {len(row)} "
                                f"fields, the header has {len(header)}")
            records.append(dict(zip(header, row)))
            where.append(f"row {len(records)} (line {line})")
    except csv.Error as e:
        raise DataError(f"{name}: line {reader.line_num}: {e}") from None
    return records, where


def _read_parquet(data: bytes, name: str) -> tuple[list[dict], list[str]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(io.BytesIO(data))
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise DataError(f"{name}: not a readable Parquet file ({e})") from None
    records = table.to_pylist()
    return records, [f"row {k + 1}" for k in range(len(records))]


_READERS = {"jsonl": _read_jsonl, "json": _read_json, "csv": _read_csv, "parquet": _read_parquet}


def detect_format(filename: str) -> str:
    """The file format from a file name's extension."""
    suffix = Path(filename).suffix.lower()
    if suffix not in _EXTENSIONS:
        raise DataError(f"{filename}: unknown file type '{suffix or '(none)'}'; use one of "
                        ".jsonl, .json, .csv, .parquet, a datasets.save_to_disk folder or a "
                        "Hugging Face dataset id")
    return _EXTENSIONS[suffix]


def read_records(data: bytes, filename: str, fmt: str | None = None) -> tuple[list[dict], list[str]]:
    """Parse file bytes into records and a human location ("line 3") for each."""
    fmt = fmt or detect_format(filename)
    if fmt not in _READERS:
        raise DataError(f"{filename}: unknown format '{fmt}'; use one of {', '.join(FORMATS)}")
    return _READERS[fmt](data, filename)


# ----------------------------------------------------------------------------------------------
# Layouts


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
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float, bool)):
        return str(value)
    raise DataError(f"{name}: {where}: column '{column}' holds a {type(value).__name__}, "
                    "expected text")


def _get(record: dict, column: str, where: str, name: str, required: bool = True) -> Any:
    if column not in record:
        if not required:
            return None
        raise DataError(f"{name}: {where}: missing column '{column}' (present: "
                        f"{sorted(record)[:12]})")
    return record[column]


def _chat_pair(turns: Any, column: str, role_key: str, text_key: str, where: str,
               name: str) -> tuple[str, str]:
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
    last = max((k for k, t in enumerate(turns) if str(t[role_key]).lower() in _ASSISTANT_ROLES),
               default=None)
    if last is None:
        raise DataError(f"{name}: {where}: '{column}' has no assistant turn to use as the "
                        "response")
    before = turns[:last]
    response = _text(turns[last][text_key], column, where, name)
    if len(before) == 1 and str(before[0][role_key]).lower() in ("user", "human"):
        prompt = _text(before[0][text_key], column, where, name)
    else:
        prompt = "\n\n".join(
            f"{_ROLE_NAMES.get(str(t[role_key]).lower(), str(t[role_key]))}: "
            f"{_text(t[text_key], column, where, name)}" for t in before)
    return prompt, response


def _pair(record: dict, layout: str, mapping: ColumnMapping | None, where: str,
          name: str) -> tuple[str, str]:
    if layout == "mapping":
        assert mapping is not None
        parts = [_text(_get(record, c, where, name), c, where, name)
                 for c in mapping.prompt_columns]
        prompt = "\n\n".join(p for p in parts if p.strip())
        return prompt, _text(_get(record, mapping.response, where, name), mapping.response,
                             where, name)
    if layout == "alpaca":
        ins = _text(_get(record, "instruction", where, name), "instruction", where, name)
        inp = _text(_get(record, "input", where, name, required=False), "input", where, name)
        prompt = f"{ins}\n\n{inp}" if inp.strip() else ins
        return prompt, _text(_get(record, "output", where, name), "output", where, name)
    if layout == "messages":
        return _chat_pair(_get(record, "messages", where, name), "messages", "role", "content",
                          where, name)
    if layout == "conversations":
        return _chat_pair(_get(record, "conversations", where, name), "conversations", "from",
                          "value", where, name)
    pc, rc = {"prompt_completion": ("prompt", "completion"),
              "prompt_response": ("prompt", "response"),
              "question_answer": ("question", "answer")}[layout]
    return (_text(_get(record, pc, where, name), pc, where, name),
            _text(_get(record, rc, where, name), rc, where, name))


def normalise(records: list[dict], *, source: str, source_format: str,
              locations: list[str] | None = None, mapping: ColumnMapping | None = None,
              layout: str | None = None, file_sha256: str | None = None) -> Dataset:
    """Turn raw records into a :class:`Dataset`: detect the layout, extract pairs, check ids."""
    name = source
    if not records:
        raise DataError(f"{name}: no rows")
    locations = locations or [f"row {k + 1}" for k in range(len(records))]
    columns: dict[str, None] = {}
    for r in records[:1000]:
        columns.update(dict.fromkeys(r))
    if mapping is not None:
        layout = "mapping"
        for col in [*mapping.prompt_columns, mapping.response] + ([mapping.id] if mapping.id else []):
            if col not in columns:
                raise DataError(f"{name}: the column mapping names '{col}', which is not a column "
                                f"(columns: {sorted(columns)})")
    elif layout is None:
        try:
            layout = detect_layout(columns)
        except DataError as e:
            raise DataError(f"{name}: {e}") from None
    id_col = mapping.id if mapping and mapping.id else ("id" if "id" in columns else None)

    kept_rows, ids, prompts, responses, positions, skipped = [], [], [], [], [], []
    first_seen: dict[str, str] = {}
    for pos, (record, where) in enumerate(zip(records, locations)):
        if id_col is not None:
            raw_id = _get(record, id_col, where, name)
            if raw_id is None or (isinstance(raw_id, str) and not raw_id.strip()):
                raise DataError(f"{name}: {where}: empty id in column '{id_col}'")
            rid = str(raw_id)
        else:
            rid = str(pos)
        if rid in first_seen:
            raise DataError(f"{name}: duplicate id '{rid}' at {first_seen[rid]} and {where}; ids "
                            "must be unique")
        first_seen[rid] = where
        prompt, response = _pair(record, layout, mapping, where, name)
        if not response.strip():
            skipped.append(SkippedRow(pos, where, "empty response", record, rid))
            continue
        if not prompt.strip():
            skipped.append(SkippedRow(pos, where, "empty prompt", record, rid))
            continue
        kept_rows.append(record)
        ids.append(rid)
        prompts.append(prompt)
        responses.append(response)
        positions.append(pos)
    if not kept_rows:
        raise DataError(f"{name}: all {len(records)} rows were skipped (empty prompt or "
                        "response)")
    return Dataset(rows=kept_rows, ids=ids, prompts=prompts, responses=responses, layout=layout,
                   source=source, source_format=source_format, positions=positions,
                   skipped=skipped, file_sha256=file_sha256, mapping=mapping)


# ----------------------------------------------------------------------------------------------
# Public entry points


def load_dataset_bytes(data: bytes, filename: str, *, fmt: str | None = None,
                       mapping: ColumnMapping | None = None) -> Dataset:
    """Load an uploaded or in-memory file (JSONL, JSON, CSV or Parquet)."""
    fmt = fmt or detect_format(filename)
    records, where = read_records(data, filename, fmt)
    return normalise(records, source=filename, source_format=fmt, locations=where,
                     mapping=mapping, file_sha256=hashlib.sha256(data).hexdigest())


def _load_hf(records_source: Any, name: str, split: str | None) -> tuple[list[dict], str]:
    from datasets import DatasetDict

    ds = records_source
    if isinstance(ds, DatasetDict):
        splits = list(ds.keys())
        if split is None:
            split = "train" if "train" in splits else (splits[0] if len(splits) == 1 else None)
        if split not in ds:
            raise DataError(f"{name}: choose a split with --split (available: {splits})")
        ds = ds[split]
    return ds.to_list(), split or ""


def load_dataset(source: str | Path, *, mapping: ColumnMapping | None = None,
                 split: str | None = None, fmt: str | None = None) -> Dataset:
    """Load a file, a ``datasets.save_to_disk`` folder, or a Hugging Face hub dataset id.

    ``demo:pool``, ``demo:target`` and ``demo:existing`` name the shipped demo data.
    """
    src = str(source)
    if src.startswith("demo:"):
        from .demo import demo_path

        return load_dataset(demo_path(src.split(":", 1)[1]), mapping=mapping)
    path = Path(src).expanduser()
    if path.is_dir():
        if not ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()
                or (path / "state.json").exists()):
            raise DataError(f"{src}: a folder, but not one written by datasets.save_to_disk "
                            "(no dataset_info.json or dataset_dict.json)")
        from datasets import load_from_disk

        try:
            ds = load_from_disk(str(path))
        except Exception as e:
            raise DataError(f"{src}: could not read the saved dataset ({e})") from None
        records, used = _load_hf(ds, src, split)
        return normalise(records, source=src, source_format="disk", mapping=mapping)
    if path.is_file():
        try:
            data = path.read_bytes()
        except OSError as e:
            raise DataError(f"{src}: cannot read the file ({e.strerror})") from None
        ds = load_dataset_bytes(data, path.name, fmt=fmt, mapping=mapping)
        ds.source = src
        return ds
    if path.suffix.lower() in _EXTENSIONS or src.startswith((".", "/", "~")) or src.count("/") > 1:
        raise DataError(f"{src}: no such file")
    return load_hub_dataset(src, split=split, mapping=mapping)


def load_hub_dataset(repo_id: str, *, split: str | None = None,
                     mapping: ColumnMapping | None = None) -> Dataset:
    """Load a dataset from the Hugging Face hub (needs a network connection or a local hub cache)."""
    import datasets

    try:
        ds = datasets.load_dataset(repo_id, split=split)
    except Exception as e:
        raise DataError(f"{repo_id}: not a local file or folder, and loading it from the Hugging "
                        f"Face hub failed ({type(e).__name__}: {str(e)[:300]}). Check the path, or "
                        "the dataset id and the network connection") from None
    records, used = _load_hf(ds, repo_id, split)
    return normalise(records, source=f"{repo_id}" + (f" [{used}]" if used else ""),
                     source_format="hub", mapping=mapping)
