"""Loading and normalising instruction data into (prompt, response) pairs.

Every row keeps a stable id and all of its original fields, so that a selection can be written
back in the user's own layout. Bad input raises :class:`DataError` with a message that names the
file, the line or row and the problem; rows skipped on purpose (empty responses) are reported.
Reading file formats lives in :mod:`delift_core.data.formats`, recognising layouts in
:mod:`delift_core.data.layouts`; their public names are re-exported here.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from delift_core.data.demo import demo_path
from delift_core.errors import DataError
from delift_core.data.formats import EXTENSIONS, detect_format, read_records
from delift_core.data.layouts import ColumnMapping, column_value, detect_layout, record_pair

__all__ = ["Dataset", "SkippedRow", "load_dataset", "load_dataset_bytes", "load_hub_dataset",
           "normalise"]

logger = logging.getLogger(__name__)


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
        """Every column of the kept rows, in order of first appearance."""
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
        """The position of the row with this id (KeyError if there is none)."""
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
        """One line for people: source, row count, layout, format and skipped rows by reason."""
        text = (f"{self.source}: {len(self)} rows, layout '{self.layout}', format "
                f"'{self.source_format}'")
        if self.skipped:
            reasons: dict[str, int] = {}
            for s in self.skipped:
                reasons[s.reason] = reasons.get(s.reason, 0) + 1
            text += "; skipped " + ", ".join(f"{n} ({r})" for r, n in reasons.items())
        return text


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
            raw_id = column_value(record, id_col, where, name)
            if raw_id is None or (isinstance(raw_id, str) and not raw_id.strip()):
                raise DataError(f"{name}: {where}: empty id in column '{id_col}'")
            rid = str(raw_id)
        else:
            rid = str(pos)
        if rid in first_seen:
            raise DataError(f"{name}: duplicate id '{rid}' at {first_seen[rid]} and {where}; ids "
                            "must be unique")
        first_seen[rid] = where
        prompt, response = record_pair(record, layout, mapping, where, name)
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
    logger.debug("%s: %d of %d rows kept, layout '%s'", name, len(kept_rows), len(records), layout)
    return Dataset(rows=kept_rows, ids=ids, prompts=prompts, responses=responses, layout=layout,
                   source=source, source_format=source_format, positions=positions,
                   skipped=skipped, file_sha256=file_sha256, mapping=mapping)


# ----------------------------------------------------------------------------------------------
# Public entry points


def load_dataset_bytes(data: bytes, filename: str, *, fmt: str | None = None,
                       mapping: ColumnMapping | None = None) -> Dataset:
    """Load an uploaded or in-memory file (JSONL, JSON, CSV or Parquet)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DataError(f"{filename}: load_dataset_bytes takes the file's bytes, got "
                        f"{type(data).__name__}; for a path use load_dataset"
                        + (" (or pass text.encode('utf-8'))" if isinstance(data, str) else ""))
    data = bytes(data)
    fmt = fmt or detect_format(filename)
    records, where = read_records(data, filename, fmt)
    return normalise(records, source=filename, source_format=fmt, locations=where,
                     mapping=mapping, file_sha256=hashlib.sha256(data).hexdigest())


def _load_hf(records_source: Any, name: str, split: str | None) -> tuple[list[dict], str]:
    """The records of a Hugging Face dataset (of one split of a DatasetDict) and the split used."""
    import datasets as hf_datasets

    ds = records_source
    if isinstance(ds, hf_datasets.DatasetDict):
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
        return load_dataset(demo_path(src.split(":", 1)[1]), mapping=mapping)
    path = Path(src).expanduser()
    if path.is_dir():
        if not ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()
                or (path / "state.json").exists()):
            raise DataError(f"{src}: a folder, but not one written by datasets.save_to_disk "
                            "(no dataset_info.json or dataset_dict.json)")
        import datasets as hf_datasets

        try:
            ds = hf_datasets.load_from_disk(str(path))
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
    if path.suffix.lower() in EXTENSIONS or src.startswith((".", "/", "~")) or src.count("/") > 1:
        raise DataError(f"{src}: no such file")
    return load_hub_dataset(src, split=split, mapping=mapping)


def load_hub_dataset(repo_id: str, *, split: str | None = None,
                     mapping: ColumnMapping | None = None) -> Dataset:
    """Load a dataset from the Hugging Face hub (needs a network connection or a local hub cache)."""
    import datasets as hf_datasets

    try:
        ds = hf_datasets.load_dataset(repo_id, split=split)
    except Exception as e:
        raise DataError(f"{repo_id}: not a local file or folder, and loading it from the Hugging "
                        f"Face hub failed ({type(e).__name__}: {str(e)[:300]}). Check the path, or "
                        "the dataset id and the network connection") from None
    records, used = _load_hf(ds, repo_id, split)
    return normalise(records, source=f"{repo_id}" + (f" [{used}]" if used else ""),
                     source_format="hub", mapping=mapping)
