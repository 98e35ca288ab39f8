"""Hugging Face ``datasets`` output: a selection as ``save_to_disk`` folders, and on the hub.

``--format hf`` writes ``selected.hf/``, ``rejected.hf/`` (and ``skipped.hf/``, ``left_out.hf/``
when there are such rows) as folders that ``datasets.load_from_disk`` reads back with the original
columns and types: the rows go through the same Arrow conversion as the Parquet export (so a column
of mixed types is written as text and said in the manifest's ``export_notes``), and every folder
shares one schema. :func:`check_push` refuses ``--push-to-hub`` before any work when the machine is
offline or no token is set; :func:`push_selection` uploads the selected rows as the ``train`` split.
"""

from __future__ import annotations

import io
import json
import logging
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

from delift_core.errors import DeliftError, SelectionError

if TYPE_CHECKING:
    from delift_core.selection.select import Selection

__all__ = ["HF_FORMAT", "check_push", "export_hf", "push_selection", "rows_table"]

logger = logging.getLogger(__name__)

HF_FORMAT = "hf"
_HUB_HOST = ("huggingface.co", 443)
_TRUE = {"1", "true", "yes", "on"}


def rows_table(rows: list[dict], notes: list[str] | None = None) -> Any:
    """Rows as a pyarrow Table, converted exactly as the Parquet export converts them."""
    import pyarrow.parquet as pq

    from delift_core.outputs.export import rows_to_bytes

    return pq.read_table(io.BytesIO(rows_to_bytes(rows, "parquet", notes)))


def _shared_schema(tables: dict[str, Any]) -> dict[str, Any]:
    """The tables with one schema: every column in each (absent ones as nulls), types unified
    (a column that is null in one table takes the type it has in the others)."""
    import pyarrow as pa

    schema = pa.unify_schemas([t.schema for t in tables.values()])
    out = {}
    for name, t in tables.items():
        out[name] = pa.table({f.name: (t.column(f.name).cast(f.type) if f.name in t.column_names
                                       else pa.nulls(len(t), f.type)) for f in schema})
    return out


def export_hf(selection: Selection, out_dir: str | Path, **kwargs: Any) -> dict[str, Path]:
    """Write a selection with its row sets as ``datasets.save_to_disk`` folders into ``out_dir``.

    The other files (annotated.csv, selection.json, manifest.json) are those of every export; the
    manifest lists the folders and says ``"format": "hf"``."""
    import datasets as hf_datasets
    from datasets.table import InMemoryTable

    from delift_core.outputs.export import selection_artifacts

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = selection_artifacts(selection, "parquet", **kwargs)
    stems = [name[: -len(".parquet")] for name in files if name.endswith(".parquet")]
    tables = _shared_schema({stem: _read(files.pop(f"{stem}.parquet")) for stem in stems})
    paths: dict[str, Path] = {}
    quiet = not hf_datasets.is_progress_bar_enabled()
    hf_datasets.disable_progress_bars()  # a few rows: no bar per folder on stderr
    try:
        for stem, table in tables.items():
            folder = out / f"{stem}.{HF_FORMAT}"
            hf_datasets.Dataset(InMemoryTable(table)).save_to_disk(str(folder))
            paths[folder.name] = folder
    finally:
        if not quiet:
            hf_datasets.enable_progress_bars()
    manifest = json.loads(files["manifest.json"])
    manifest["format"] = HF_FORMAT
    manifest["files"] = sorted([n for n in manifest.get("files", [])
                                if not n.endswith(".parquet")]
                               + [f"{stem}.{HF_FORMAT}/" for stem in stems])
    manifest["hf_folders"] = ("datasets.save_to_disk folders: datasets.load_from_disk(path) reads "
                              "each back with the pool's columns and types")
    files["manifest.json"] = json.dumps(manifest, indent=1, default=str).encode("utf-8")
    for name, data in files.items():
        (out / name).write_bytes(data)
        paths[name] = out / name
    return paths


def _read(data: bytes) -> Any:
    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(data))


def _offline_reason() -> str | None:
    """Why the hub cannot be reached now (an offline setting, no network), or None."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _TRUE:
            return f"{var} is set"
    try:
        with socket.create_connection(_HUB_HOST, timeout=3):
            pass
    except OSError as e:
        return f"{_HUB_HOST[0]} cannot be reached ({e.strerror or type(e).__name__})"
    return None


def check_push(repo_id: str) -> None:
    """Refuse ``--push-to-hub`` before any work: a bad repo id, offline, or no token."""
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(p and p.strip() == p for p in parts):
        raise DeliftError(f"--push-to-hub {repo_id!r}: give a dataset repository as OWNER/NAME")
    reason = _offline_reason()
    if reason:
        raise DeliftError(f"--push-to-hub {repo_id}: the Hugging Face hub is not reachable "
                          f"({reason}); nothing was computed. Run without --push-to-hub and "
                          "upload the selected.* file or folder later, or run where the hub is "
                          "reachable")
    from huggingface_hub import get_token

    if not get_token():
        raise DeliftError(f"--push-to-hub {repo_id}: no Hugging Face token; log in with "
                          "`hf auth login` or set HF_TOKEN; nothing was computed")


def push_selection(selection: Selection, repo_id: str, *, private: bool = True) -> str:
    """Upload the selected rows as the ``train`` split of the dataset repository ``repo_id``."""
    import datasets as hf_datasets
    from datasets.table import InMemoryTable

    rows = [selection.pool.rows[k] for k in selection.selected_indices]
    if not rows:
        raise SelectionError("nothing selected to push")
    ds = hf_datasets.Dataset(InMemoryTable(rows_table(rows)))
    try:
        hf_datasets.DatasetDict({"train": ds}).push_to_hub(repo_id, private=private)
    except Exception as e:
        raise DeliftError(f"--push-to-hub {repo_id}: the upload failed ({type(e).__name__}: "
                          f"{str(e)[:300]}); the output folder is written") from None
    logger.info("pushed %d selected rows to https://huggingface.co/datasets/%s", len(rows),
                repo_id)
    return f"https://huggingface.co/datasets/{repo_id}"
