"""Reading data files into raw records: JSONL, JSON, CSV and Parquet, from bytes.

Each reader returns the records and, for each, a human location ("line 3", "row 2 (line 3)") so
that :mod:`delift_core.data.dataset` can name where a bad row is. Bad files raise :class:`DataError`.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Callable

from delift_core.errors import DataError

__all__ = ["EXTENSIONS", "FORMATS", "SUFFIXES", "detect_format", "read_records"]

#: Records read from a file, and a human location ("line 3") for each.
Records = tuple[list[dict], list[str]]


def _decode(data: bytes, name: str) -> str:
    """UTF-8 text without a byte-order mark; a bad byte is named by line and offset."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataError(f"{name}: line {line} is not valid UTF-8 (byte offset {e.start}); "
                        "save the file as UTF-8") from None
    return text.lstrip("\ufeff")


def _read_jsonl(data: bytes, name: str) -> Records:
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


def _read_json(data: bytes, name: str) -> Records:
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


def _read_csv(data: bytes, name: str) -> Records:
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
            if not row or all(not c.strip() for c in row):
                continue  # a blank line, or one of only commas (spreadsheets write those)
            if len(row) != len(header):
                raise DataError(f"{name}: row {len(records) + 1} (line {line}) has {len(row)} "
                                f"fields, the header has {len(header)}")
            records.append(dict(zip(header, row)))
            where.append(f"row {len(records)} (line {line})")
    except csv.Error as e:
        raise DataError(f"{name}: line {reader.line_num}: {e}") from None
    return records, where


PARQUET_EXPANSION, PARQUET_MIN_CAP = 64, 256 * 2**20
"""A Parquet file decodes to at most 64 times its own size or 256 MiB, whichever is larger:
text compresses a few times, while a crafted file of a few KB can decode to hundreds of GB."""


def _read_parquet(data: bytes, name: str) -> Records:
    import pyarrow as pa
    import pyarrow.parquet as pq

    cap = max(PARQUET_EXPANSION * len(data), PARQUET_MIN_CAP)
    too_big = DataError(f"{name}: decodes to more than {cap / 2**20:,.0f} MiB from "
                        f"{len(data) / 2**20:,.1f} MiB, more than text data does; refused")
    try:
        f = pq.ParquetFile(io.BytesIO(data))
        meta = f.metadata
        if sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups)) > cap:
            raise too_big
        batches, size = [], 0
        for batch in f.iter_batches(batch_size=256):  # decoded a little at a time, counted
            size += batch.nbytes
            if size > cap:
                raise too_big
            batches.append(batch)
        table = pa.Table.from_batches(batches, schema=f.schema_arrow)
    except DataError:
        raise
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise DataError(f"{name}: not a readable Parquet file ({e})") from None
    records = table.to_pylist()
    return records, [f"row {k + 1}" for k in range(len(records))]


_READERS: dict[str, tuple[Callable[[bytes, str], Records], tuple[str, ...]]] = {
    "jsonl": (_read_jsonl, (".jsonl", ".ndjson")), "json": (_read_json, (".json",)),
    "csv": (_read_csv, (".csv",)), "parquet": (_read_parquet, (".parquet", ".pq"))}
"""Every input format: its reader and the file extensions it is read from (the one place a new
format goes; the names, extensions, messages, the studio's uploader and the CLI help follow)."""

FORMATS = tuple(_READERS)
EXTENSIONS = {ext: fmt for fmt, (_, exts) in _READERS.items() for ext in exts}
SUFFIXES = " ".join(exts[0] for _, exts in _READERS.values())
"""The main extension of each format, for help texts: '.jsonl .json .csv .parquet'."""


def detect_format(filename: str) -> str:
    """The file format from a file name's extension."""
    suffix = Path(filename).suffix.lower()
    if suffix not in EXTENSIONS:
        raise DataError(f"{filename}: unknown file type '{suffix or '(none)'}'; use one of "
                        f"{', '.join(SUFFIXES.split())}, a datasets.save_to_disk folder or a "
                        "Hugging Face dataset id")
    return EXTENSIONS[suffix]


def read_records(data: bytes, filename: str, fmt: str | None = None) -> Records:
    """Parse file bytes into records and a human location ("line 3") for each."""
    fmt = fmt or detect_format(filename)
    if fmt not in _READERS:
        raise DataError(f"{filename}: unknown format '{fmt}'; use one of {', '.join(FORMATS)}")
    return _READERS[fmt][0](data, filename)
