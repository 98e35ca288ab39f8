"""Small silent changes made visible: Parquet's mixed-type columns said, CSV formula escaping,
CSV rows of only commas read as blank lines (issue: Reliability, item 8)."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from delift_core.kernels.builder import Kernels
from delift_core.data.dataset import load_dataset_bytes
from delift_core.selection.select import select
from delift_core.outputs.export import csv_safe, rows_to_bytes, selection_artifacts


def _pool():
    rows = [{"id": 1, "prompt": "=HYPERLINK(\"http://x\")", "response": "+1 and more"},
            {"id": "b", "prompt": "@SUM(A1)", "response": "-dash"},
            {"id": 3, "prompt": "plain", "response": "fine"}]
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    return load_dataset_bytes(data, "p.jsonl")


def test_csv_exports_escape_formula_cells_and_jsonl_keeps_the_original():
    pool = _pool()
    sel = select(pool, "fl", Kernels("embedding", pool=np.eye(3, dtype=np.float32)), 2)
    files = selection_artifacts(sel, "csv")
    annotated = pd.read_csv(io.BytesIO(files["annotated.csv"]), dtype=str)
    assert set(annotated["prompt"]) == {"'=HYPERLINK(\"http://x\")", "'@SUM(A1)", "plain"}
    assert set(annotated["response"]) == {"'+1 and more", "'-dash", "fine"}
    both = files["selected.csv"] + files["rejected.csv"]
    assert b'"=HYPERLINK' in both and b"'" not in both  # the data rows stay exact by default
    manifest = json.loads(files["manifest.json"])
    assert "single quote" in manifest["csv_escaping"] and "unescaped" in manifest["csv_escaping"]
    escaped = selection_artifacts(sel, "csv", escape_csv=True)
    both = escaped["selected.csv"] + escaped["rejected.csv"]
    assert b"'=HYPERLINK" in both and b"'-dash" in both and b",@SUM" not in both
    jl = selection_artifacts(sel, "jsonl")
    assert b'"=HYPERLINK' in jl["selected.jsonl"] + jl["rejected.jsonl"]
    assert csv_safe(-0.5) == -0.5 and csv_safe("a=b") == "a=b"


def test_parquet_mixed_id_types_are_said_in_the_manifest():
    pool = _pool()
    sel = select(pool, "fl", Kernels("embedding", pool=np.eye(3, dtype=np.float32)), 2)
    files = selection_artifacts(sel, "parquet")
    manifest = json.loads(files["manifest.json"])
    assert any("column 'id' holds mixed types (int, str)" in n for n in manifest["export_notes"])
    notes: list[str] = []
    table = pq.read_table(io.BytesIO(rows_to_bytes([{"a": 1}, {"a": 2}], "parquet", notes)))
    assert table.column("a").to_pylist() == [1, 2] and notes == []  # one type: kept


def test_csv_rows_of_only_commas_are_blank_lines():
    data = b"prompt,response\nq1,a1\n,\n ,  \nq2,a2\n"
    ds = load_dataset_bytes(data, "x.csv")
    assert ds.prompts == ["q1", "q2"] and not ds.skipped


def test_first_n_selection_writes_the_left_out_rows_and_counts_in_the_manifest():
    from delift_core.outputs.review import Decisions
    from delift_core.data.dataset import load_dataset

    full = load_dataset("demo:pool")
    pool = full.subset(range(12))
    sel = select(pool, "fl", Kernels("embedding", pool=np.eye(12, dtype=np.float32)),
                 12).at_budget(6)
    d = Decisions()
    d.pinned.append(pool.ids[0])
    files = selection_artifacts(sel, "jsonl", full_pool=full, decisions=d)
    manifest = json.loads(files["manifest.json"])
    assert manifest["budget"] == 6 and manifest["params"]["budget_requested"] == 6
    assert manifest["rows"] == {"selected": 6, "rejected": 6, "skipped": 0, "left_out": 228,
                                "input": 240}
    assert "first 12 of 240" in manifest["left_out"]
    assert set(manifest["files"]) == set(files)  # decisions.json listed like the rest
    ids = [json.loads(x)["id"] for name in ("selected.jsonl", "rejected.jsonl", "left_out.jsonl")
           for x in files[name].decode().splitlines()]
    assert sorted(ids) == sorted(full.ids)
    assert json.loads(files["decisions.json"])["pinned"] == [pool.ids[0]]
