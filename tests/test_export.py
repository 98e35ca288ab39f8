"""The selection pipeline's output: selected + rejected (+ skipped) is exactly the input, exports
round-trip in every format, and the annotated table, selection.json and manifest say what happened."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from delift_core.data.dataset import load_dataset, load_dataset_bytes
from delift_core.errors import SelectionError
from delift_core.outputs.export import (default_format, export_selection, rows_to_bytes,
                                        selection_artifacts)
from delift_core.kernels.builder import row_hashes
from delift_core.kernels.builder import Kernels
from delift_core.kernels.files import load_kernels
from delift_core.selection.select import parse_budget, resolve_budget, select

FORMATS = ["jsonl", "json", "csv", "parquet"]


def random_kernels(n: int, m: int = 0, p: int = 0, seed: int = 0, kind: str = "utility") -> Kernels:
    rng = np.random.default_rng(seed)
    return Kernels(kind, pool=rng.normal(size=(n, n)).astype(np.float32),
                   target=rng.normal(size=(m, n)).astype(np.float32) if m else None,
                   existing=rng.normal(size=(n, p)).astype(np.float32) if p else None)


@pytest.fixture(scope="module")
def demo_selection():
    pool = load_dataset("demo:pool")
    return select(pool, "fl", random_kernels(len(pool)), "0.3")


# ----------------------------------------------------------------------------------------------
# Budgets


def test_budgets():
    assert resolve_budget("0.3", 240) == 72
    assert resolve_budget(0.3, 240) == 72
    assert resolve_budget("30%", 240) == 72
    assert resolve_budget("10", 240) == 10
    assert resolve_budget(1.0, 240) == 240
    assert resolve_budget("0.001", 240) == 1  # a fraction selects at least one row
    assert parse_budget("1e-1") == pytest.approx(0.1)
    for bad in ("0", 0, "0.0", "1.5", "-3", "abc", "", True):
        with pytest.raises(SelectionError):
            resolve_budget(bad, 240)
    with pytest.raises(SelectionError, match="larger than the pool"):
        resolve_budget("241", 240)


# ----------------------------------------------------------------------------------------------
# Round trips and the partition of the input


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_round_trip_gives_the_original_rows(demo_selection, fmt, tmp_path):
    pool = demo_selection.pool
    paths = export_selection(demo_selection, tmp_path, fmt)
    assert set(paths) == {f"selected.{fmt}", f"rejected.{fmt}", "annotated.csv", "selection.json",
                          "manifest.json"}
    selected = load_dataset(paths[f"selected.{fmt}"])
    rejected = load_dataset(paths[f"rejected.{fmt}"])
    assert len(selected) == 72 and len(rejected) == 240 - 72
    assert selected.rows == [pool.rows[k] for k in demo_selection.selected_indices]
    chosen = set(demo_selection.selected_indices.tolist())
    assert rejected.rows == [r for k, r in enumerate(pool.rows) if k not in chosen]
    assert sorted(selected.ids + rejected.ids) == sorted(pool.ids)
    assert selected.layout == rejected.layout == pool.layout


def _mixed_pool_file(tmp_path: Path) -> tuple[Path, list[dict]]:
    rows = []
    for k in range(30):
        row = {"id": f"r{k:02d}", "instruction": f"Task {k}: say {k % 7}", "input": "",
               "output": f"{k % 7}"}
        if k % 9 == 4:
            row["output"] = ""  # skipped: empty response
        if k % 5 == 0:
            row["source"] = "web"  # a field only some rows have
        if k == 11:
            row["tags"] = ["a", "b"]
        rows.append(row)
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, rows


@pytest.mark.parametrize("fmt", FORMATS)
def test_selected_rejected_skipped_partition_the_input(fmt, tmp_path):
    path, raw = _mixed_pool_file(tmp_path)
    pool = load_dataset(path)
    assert len(pool.skipped) == 3
    sel = select(pool, "fl", random_kernels(len(pool), seed=1), 8)
    files = selection_artifacts(sel, fmt)
    assert f"skipped.{fmt}" in files

    def read(name: str) -> list[dict]:
        if fmt == "jsonl":
            return [json.loads(line) for line in files[name].decode().splitlines()]
        if fmt == "json":
            return json.loads(files[name])
        if fmt == "csv":
            return pd.read_csv(io.BytesIO(files[name]), dtype=str,
                               keep_default_na=False).to_dict("records")
        import pyarrow.parquet as pq

        return pq.read_table(io.BytesIO(files[name])).to_pylist()

    out = read(f"selected.{fmt}") + read(f"rejected.{fmt}") + read(f"skipped.{fmt}")
    assert len(out) == len(raw)
    by_id = {r["id"]: r for r in out}
    assert len(by_id) == len(raw), "a row was duplicated"
    for original in raw:
        got = by_id[original["id"]]
        for key, value in original.items():
            if fmt == "csv" and isinstance(value, list):
                value = json.dumps(value)
            assert got[key] == value, (original["id"], key)
        extra = {k: v for k, v in got.items() if k not in original}
        assert all(v in (None, "") for v in extra.values()), (original["id"], extra)
    assert [r["id"] for r in read(f"selected.{fmt}")] == sel.selected_ids


def test_heterogeneous_rows_keep_every_field_in_parquet():
    rows = [{"id": "a", "prompt": "p", "response": "r"},
            {"id": "b", "prompt": "p", "response": "r", "source": "web"},
            {"id": 3, "prompt": "p", "response": "r"}]
    back = load_dataset_bytes(rows_to_bytes(rows, "parquet"), "x.parquet")
    assert back.rows[1]["source"] == "web"
    assert back.ids == ["a", "b", "3"]
    with pytest.raises(SelectionError, match="unknown output format"):
        rows_to_bytes(rows, "xlsx")


# ----------------------------------------------------------------------------------------------
# The annotated table, selection.json and the manifest


def test_annotated_csv(tmp_path):
    path, raw = _mixed_pool_file(tmp_path)
    pool = load_dataset(path)
    kernels = random_kernels(len(pool), seed=2)
    sel = select(pool, "fl", kernels, 8)
    files = export_selection(sel, tmp_path / "out", "jsonl")
    table = pd.read_csv(files["annotated.csv"], dtype={"id": str, "covered_by": str},
                        keep_default_na=False, na_values=[""])
    assert len(table) == len(raw)  # one row per input row, skipped ones included
    kept = table[table["skipped"].isna()]
    skipped = table[table["skipped"].notna()]
    assert list(kept["id"]) == pool.ids
    assert sorted(skipped["position"]) == [s.position for s in pool.skipped]
    assert set(skipped["skipped"]) == {"empty response"}

    chosen = kept[kept["selected"]]
    assert list(chosen.sort_values("rank")["id"]) == sel.selected_ids
    assert sorted(chosen["rank"].astype(int)) == list(range(1, 9))
    np.testing.assert_allclose(chosen.sort_values("rank")["gain"], sel.gains[:8], rtol=1e-6)
    assert chosen["covered_by"].isna().all()

    rejected = kept[~kept["selected"]]
    assert rejected["rank"].isna().all() and rejected["gain"].isna().all()
    scaled = kernels.scaled("pool")
    sel_idx = sel.selected_indices
    for _, row in rejected.iterrows():
        i = pool.index_of(row["id"])
        best = sel_idx[int(np.argmax(scaled[i, sel_idx]))]
        assert row["covered_by"] == pool.ids[best]
        assert row["coverage"] == pytest.approx(float(scaled[i, best]), abs=1e-5)


def test_selection_json_and_manifest(demo_selection, tmp_path):
    files = export_selection(demo_selection, tmp_path, target=load_dataset("demo:target"))
    assert default_format(demo_selection.pool) == "jsonl"
    data = json.loads(files["selection.json"].read_text())
    assert data["objective"] == "fl" and data["budget"] == 72 and data["pool_size"] == 240
    assert data["selected_ids"] == demo_selection.selected_ids
    assert len(data["greedy_order_ids"]) == 240
    assert data["greedy_order_ids"][:72] == data["selected_ids"]
    assert data["objective_value"] == pytest.approx(sum(data["gains"]), rel=1e-5)
    manifest = json.loads(files["manifest.json"].read_text())
    assert manifest["selected"] == 72 and manifest["objective"] == "fl"
    assert manifest["inputs"]["pool"]["rows"] == 240
    assert manifest["inputs"]["pool"]["text_sha256"] == demo_selection.pool.text_sha256
    assert manifest["inputs"]["target"]["rows"] == 40
    assert manifest["inputs"]["existing"] is None
    assert set(manifest["files"]) == {p.name for p in files.values()}
    assert "numpy" in manifest["versions"]


# ----------------------------------------------------------------------------------------------
# select(): budgets as prefixes, pins and bans, checks


def test_at_budget_is_a_prefix(demo_selection):
    small = demo_selection.at_budget(10)
    assert small.selected_ids == demo_selection.selected_ids[:10]
    assert demo_selection.at_budget("0.5").budget == 120
    assert select(demo_selection.pool, "fl", demo_selection.kernels, 10).selected_ids == \
        small.selected_ids
    assert small.objective_value == pytest.approx(float(demo_selection.values[9]))


def test_select_every_objective_with_pins_and_bans():
    pool = load_dataset("demo:pool")
    k = random_kernels(len(pool), m=40, p=60, seed=3)
    for objective in ("fl", "flmi", "flqmi", "flcg", "random"):
        sel = select(pool, objective, k, 20, pinned=["pool-0100", "pool-0007"],
                     banned=["pool-0001", "pool-0002"])
        assert len(sel.selected_ids) == 20 and len(set(sel.selected_ids)) == 20
        assert sel.selected_ids[:2] == ["pool-0100", "pool-0007"], objective
        assert not {"pool-0001", "pool-0002"} & set(sel.selected_ids), objective
        assert np.isfinite(sel.gains[:20]).all(), objective
    with pytest.raises(SelectionError, match="not in the pool"):
        select(pool, "fl", k, 5, pinned=["nope"])
    with pytest.raises(SelectionError, match="both pinned and banned"):
        select(pool, "fl", k, 5, pinned=["pool-0003"], banned=["pool-0003"])
    with pytest.raises(SelectionError, match="needs a target"):
        select(pool, "flmi", random_kernels(len(pool)), 5)
    with pytest.raises(SelectionError, match="needs a existing|needs an existing"):
        select(pool, "flcg", random_kernels(len(pool)), 5)
    with pytest.raises(SelectionError, match="unknown objective"):
        select(pool, "best", k, 5)
    rnd = select(pool, "random", None, 5, seed=1)
    assert len(rnd.selected_ids) == 5 and np.isnan(rnd.gains).all()
    assert rnd.selected_ids == select(pool, "random", None, 5, seed=1).selected_ids


def test_load_kernels_checks_shapes_and_ids(tmp_path):
    pool = load_dataset("demo:pool")
    target = load_dataset("demo:target")
    n = len(pool)
    np.save(tmp_path / "wrong.npy", np.zeros((n, n - 1), np.float32))
    with pytest.raises(SelectionError, match=r"shape \(240, 239\), expected \(240, 240\)"):
        load_kernels(tmp_path / "wrong.npy", pool, trust=True)
    with pytest.raises(SelectionError, match="no such kernel file"):
        load_kernels(tmp_path / "absent.npy", pool)
    (tmp_path / "junk.npy").write_bytes(b"junk")
    with pytest.raises(SelectionError, match="not a readable"):
        load_kernels(tmp_path / "junk.npy", pool, trust=True)

    folder = tmp_path / "k"
    folder.mkdir()
    np.save(folder / "kernel_pool.npy", np.eye(n, dtype=np.float32))
    np.save(folder / "kernel_target.npy", np.zeros((len(target) + 1, n), np.float32))
    (folder / "kernel_meta.json").write_text(json.dumps({
        "kind": "embedding", "pool_ids": pool.ids, "pool_hashes": row_hashes(pool),
        "target_ids": target.ids, "target_hashes": row_hashes(target)}))
    k = load_kernels(folder, pool)
    assert k.kind == "embedding" and k.pool.shape == (n, n)
    with pytest.raises(SelectionError, match="target kernel has shape"):
        load_kernels(folder, pool, target=target)
    (folder / "kernel_meta.json").write_text(json.dumps({
        "kind": "embedding", "pool_ids": pool.ids[::-1], "pool_hashes": row_hashes(pool)[::-1]}))
    with pytest.raises(SelectionError, match="240 of 240 pool rows differ"):
        load_kernels(folder, pool)


def test_save_kernels_round_trips_dense_and_sparse_through_load_kernels(tmp_path):
    import scipy.sparse as sp

    from delift_core.kernels.files import save_kernels

    pool = load_dataset("demo:pool").subset(range(10))
    target = load_dataset("demo:target").subset(range(3))
    rng = np.random.default_rng(2)
    dense = Kernels("utility", pool=rng.random((10, 10)).astype(np.float32),
                    target=rng.random((3, 10)).astype(np.float32),
                    meta={"kind": "utility", "pool_ids": pool.ids,
                          "pool_hashes": row_hashes(pool), "target_ids": target.ids,
                          "target_hashes": row_hashes(target)})
    sparse = Kernels("utility", pool=sp.random(10, 10, 0.4, format="csr", dtype=np.float32,
                                               random_state=1),
                     target=sp.random(3, 10, 0.5, format="csr", dtype=np.float32, random_state=2),
                     meta=dense.meta)
    for name, k in (("dense", dense), ("sparse", sparse)):
        paths = save_kernels(k, tmp_path / name)
        ext = ".npz" if name == "sparse" else ".npy"
        assert {w: p.suffix for w, p in paths.items()} == {"pool": ext, "target": ext,
                                                          "meta": ".json"}
        back = load_kernels(tmp_path / name, pool, target=target)
        for w in ("pool", "target"):
            a, b = getattr(k, w), getattr(back, w)
            a = a.toarray() if hasattr(a, "toarray") else a
            b = b.toarray() if hasattr(b, "toarray") else b
            assert np.array_equal(a, b)
        assert back.meta["pool_ids"] == pool.ids and back.meta.ids["pool"] == pool.ids
