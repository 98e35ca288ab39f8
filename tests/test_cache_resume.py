"""Kernel runs resume from the pair store: a cancelled run keeps its finished work units, a
restart computes only the missing pairs, damaged entries and damaged store files are detected and
recomputed, an old block cache folder changes nothing, and every path gives the same values."""

from __future__ import annotations

import sqlite3
import threading

import numpy as np
import pytest

from delift_core.stores.cache import BlockStore, content_key
from delift_core.data.dataset import load_dataset
from delift_core.kernels.builder import compute_kernels
from delift_core.selection.select import select
from delift_core.kernels.utility_settings import KernelCancelled, Texts, UtilitySettings
from delift_core.kernels.utility import UtilityKernel, store_path

T = Texts(["What is 2+2?", "Name a colour.", "Sort: 3 1 2"], ["4", "Blue.", "1 2 3"])
E = Texts(["What is 3+5?", "Name a fruit.", "Spell cat.", "Sort: 9 8", "Say hi.", "Add 1 and 1."],
          ["8", "Apple.", "c-a-t", "8 9", "Hi!", "2"])
N_T, N_E, BLOCK = 3, 6, 1
SHORT = dict(plain_template="Q: {prompt}\nA: ",
             example_template="Ex: {example_prompt}\n{example_response}\nQ: {prompt}\nA: ")
SETTINGS = UtilitySettings(batch_size=2, block_size=BLOCK, **SHORT)


@pytest.fixture(scope="module")
def reference(tiny_llama):
    """The uninterrupted run, without any store."""
    return UtilityKernel(tiny_llama, SETTINGS, use_cache=False).compute(T, E).values


def count(root, table: str = "pairs") -> int:
    with sqlite3.connect(store_path(root)) as db:
        return db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


def test_cancelled_run_resumes_with_only_the_missing_pairs(tiny_llama, reference, tmp_path):
    cancel = threading.Event()

    def progress(done: int, total: int) -> None:
        if done >= total // 2:
            cancel.set()

    with pytest.raises(KernelCancelled):
        UtilityKernel(tiny_llama, SETTINGS, cache_root=tmp_path).compute(
            T, E, progress=progress, cancel=cancel)
    kept = count(tmp_path)
    assert 0 < kept < N_T * N_E and kept % N_T == 0  # whole work units (one example each)
    assert count(tmp_path, "plain") == N_T

    seen = []
    res = UtilityKernel(tiny_llama, SETTINGS, cache_root=tmp_path).compute(
        T, E, progress=lambda d, t: seen.append((d, t)))
    assert res.meta["pairs_computed"] == N_T * N_E - kept  # plain distances were stored
    assert res.meta["pairs_reused"] == kept + N_T
    assert res.meta["blocks_reused"] == kept // N_T and res.meta["blocks_total"] == N_E
    assert res.meta["entries_damaged_recomputed"] == 0
    assert seen[-1] == (N_T * N_E - kept, N_T * N_E - kept)  # progress counts what is computed
    np.testing.assert_allclose(res.values, reference, atol=1e-6, rtol=0)

    again = UtilityKernel(tiny_llama, UtilitySettings(batch_size=5, block_size=3, **SHORT),
                          cache_root=tmp_path).compute(T, E)
    assert again.meta["pairs_computed"] == 0  # batch and block sizes do not change values
    np.testing.assert_array_equal(again.values, res.values)


def test_a_run_stopped_among_its_plain_passes_keeps_the_finished_ones(tiny_llama, reference,
                                                                      tmp_path, monkeypatch):
    """Plain distances are stored a unit at a time, like pairs: a run cancelled after the first
    plain unit keeps it (they were once stored only after the last, so a long plain phase that was
    stopped was lost whole), and the next run computes only the rest, to the same values."""
    import delift_core.kernels.utility as utility

    monkeypatch.setattr(utility, "UNIT_PAIRS", 2)  # units of one batch (batch_size 2)
    cancel = threading.Event()

    def progress(done: int, total: int) -> None:
        if done >= 2:  # the first plain unit (2 of the 3 targets) is done
            cancel.set()

    with pytest.raises(KernelCancelled):
        UtilityKernel(tiny_llama, SETTINGS, cache_root=tmp_path).compute(
            T, E, progress=progress, cancel=cancel)
    assert count(tmp_path, "plain") == 2 and count(tmp_path) == 0
    res = UtilityKernel(tiny_llama, SETTINGS, cache_root=tmp_path).compute(T, E)
    assert res.meta["plain_computed"] == 1
    assert res.meta["pairs_computed"] == 1 + N_T * N_E
    np.testing.assert_allclose(res.values, reference, atol=1e-6, rtol=0)


def test_cancel_before_anything_is_computed(tiny_llama, tmp_path):
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(KernelCancelled):
        UtilityKernel(tiny_llama, SETTINGS, cache_root=tmp_path).compute(T, E, cancel=cancel)
    assert count(tmp_path) == 0 and count(tmp_path, "plain") == 0


@pytest.mark.parametrize("damage", ["value", "checksum", "null"])
def test_a_damaged_entry_is_detected_and_recomputed(tiny_llama, reference, tmp_path, damage):
    first = UtilityKernel(tiny_llama, SETTINGS, cache_root=tmp_path).compute(T, E)
    assert first.meta["pairs_computed"] == N_T * N_E + N_T
    change = {"value": "value = value + 0.25", "checksum": "crc = crc + 1",
              "null": "value = NULL"}[damage]
    with sqlite3.connect(store_path(tmp_path)) as db:
        db.execute(f"UPDATE pairs SET {change} WHERE (target, example) IN "
                   "(SELECT target, example FROM pairs ORDER BY target, example LIMIT 1)")
    res = UtilityKernel(tiny_llama, SETTINGS, cache_root=tmp_path).compute(T, E)
    assert res.meta["entries_damaged_recomputed"] == 1
    assert res.meta["pairs_computed"] == 1
    np.testing.assert_allclose(res.values, first.values, atol=1e-6, rtol=0)
    np.testing.assert_allclose(res.values, reference, atol=1e-6, rtol=0)
    healed = UtilityKernel(tiny_llama, SETTINGS, cache_root=tmp_path).compute(T, E)
    assert healed.meta["entries_damaged_recomputed"] == 0 and healed.meta["pairs_computed"] == 0


def test_damaged_plain_distances_are_recomputed(tiny_llama, reference, tmp_path):
    first = UtilityKernel(tiny_llama, SETTINGS, cache_root=tmp_path).compute(T, E)
    with sqlite3.connect(store_path(tmp_path)) as db:
        db.execute("UPDATE plain SET value = value * 2 WHERE target IN "
                   "(SELECT target FROM plain ORDER BY target LIMIT 1)")
    res = UtilityKernel(tiny_llama, SETTINGS, cache_root=tmp_path).compute(T, E)
    assert res.meta["entries_damaged_recomputed"] == 1
    assert res.meta["pairs_computed"] == res.meta["plain_computed"] == 1
    # recomputed in a batch of its own: equal up to the rounding of another batch composition
    np.testing.assert_allclose(res.values, first.values, atol=1e-6, rtol=0)


def test_a_damaged_store_file_is_set_aside_and_everything_recomputed(tiny_llama, reference,
                                                                    tmp_path):
    UtilityKernel(tiny_llama, SETTINGS, cache_root=tmp_path).compute(T, E)
    db = store_path(tmp_path)
    for suffix in ("-wal", "-shm"):
        (tmp_path / f"{db.name}{suffix}").unlink(missing_ok=True)
    data = bytearray(db.read_bytes())
    data[:16] = b"not a database!!"
    db.write_bytes(bytes(data))
    res = UtilityKernel(tiny_llama, SETTINGS, cache_root=tmp_path).compute(T, E)
    assert res.meta["store_file_damaged"]
    assert res.meta["pairs_computed"] == N_T * N_E + N_T
    np.testing.assert_allclose(res.values, reference, atol=1e-6, rtol=0)
    assert list(tmp_path.glob("pairs.sqlite.damaged-*"))  # kept, never deleted
    again = UtilityKernel(tiny_llama, SETTINGS, cache_root=tmp_path).compute(T, E)
    assert again.meta["pairs_computed"] == 0 and not again.meta["store_file_damaged"]


def test_store_key_follows_what_changes_values(tiny_llama, tmp_path):
    UtilityKernel(tiny_llama, SETTINGS, cache_root=tmp_path).compute(T, E)
    no_eos = UtilityKernel(tiny_llama, UtilitySettings(batch_size=2, block_size=BLOCK,
                                                       score_eos=False, **SHORT),
                           cache_root=tmp_path)
    assert no_eos.compute(T, E).meta["pairs_computed"] == N_T * N_E + N_T
    changed = Texts(T.prompts, [T.responses[0], "Red.", T.responses[2]])
    res = UtilityKernel(tiny_llama, SETTINGS, cache_root=tmp_path).compute(changed, E)
    assert res.meta["pairs_computed"] == N_E + 1  # only the edited target's row


def test_no_cache_writes_nothing_and_default_root_follows_env(tiny_llama, tmp_path, monkeypatch):
    UtilityKernel(tiny_llama, SETTINGS, cache_root=tmp_path / "off", use_cache=False) \
        .compute(T, E)
    assert not (tmp_path / "off").exists()
    monkeypatch.setenv("DELIFT_CACHE_DIR", str(tmp_path / "env"))
    res = UtilityKernel(tiny_llama, SETTINGS).compute(T, E)
    assert res.meta["cache_dir"] == str(tmp_path / "env" / "utility" / "pairs.sqlite")
    assert count(tmp_path / "env" / "utility") == N_T * N_E


def test_an_old_block_cache_folder_is_ignored(tiny_llama, reference, tmp_path, monkeypatch):
    monkeypatch.setenv("DELIFT_CACHE_DIR", str(tmp_path))
    old = tmp_path / "kernels" / ("ab" * 32)
    old.mkdir(parents=True)
    (old / "examples_000000.npy").write_bytes(b"garbage")
    (old / "examples_000000.sha256").write_text("0" * 64)
    (old / "info.json").write_text("{not json")
    res = UtilityKernel(tiny_llama, SETTINGS).compute(T, E)
    assert res.meta["pairs_computed"] == N_T * N_E + N_T
    np.testing.assert_allclose(res.values, reference, atol=1e-6, rtol=0)
    assert (old / "examples_000000.npy").read_bytes() == b"garbage"  # untouched


def test_given_pairs_share_the_store_with_dense_kernels(tiny_llama, reference, tmp_path):
    """The pairs path is assembled from the same entries: any subset of stored pairs is free."""
    rows, cols = np.array([0, 1, 2, 0, 2]), np.array([0, 1, 1, 4, 5])
    first = UtilityKernel(tiny_llama, SETTINGS, cache_root=tmp_path).compute(T, E,
                                                                             pairs=(rows, cols))
    assert first.meta["pairs_computed"] == len(rows) + N_T and first.meta["blocks_total"] == 4
    np.testing.assert_allclose(first.values.toarray()[rows, cols], reference[rows, cols],
                               atol=1e-6, rtol=0)
    other = UtilityKernel(tiny_llama, SETTINGS, cache_root=tmp_path).compute(
        T, E, pairs=(rows[:3], cols[:3]))
    assert other.meta["pairs_computed"] == 0
    dense = UtilityKernel(tiny_llama, SETTINGS, cache_root=tmp_path).compute(T, E)
    assert dense.meta["pairs_computed"] == N_T * N_E - len(rows)
    np.testing.assert_array_equal(dense.values[rows, cols], first.values.toarray()[rows, cols])


def test_block_store(tmp_path):
    """The evaluation's block store (kernels no longer use it)."""
    store = BlockStore(tmp_path, content_key({"a": 1}), {"a": 1})
    assert (store.path / "info.json").exists()
    assert store.get("x") is None and not store.has("x")
    arr = np.arange(6, dtype=np.float64).reshape(2, 3)
    store.put("x", arr)
    np.testing.assert_array_equal(store.get("x"), arr)
    (store.path / "x.npy").write_bytes(b"garbage")
    assert store.get("x") is None and store.damaged == ["x"]
    assert content_key({"b": 2, "a": 1}) == content_key({"a": 1, "b": 2})


def test_compute_kernels_utility_resumes_through_the_pipeline(tiny_llama, monkeypatch, tmp_path):
    monkeypatch.setenv("DELIFT_CACHE_DIR", str(tmp_path))
    pool = load_dataset("demo:pool").subset(range(5))
    target = load_dataset("demo:target").subset(range(2))
    settings = UtilitySettings(batch_size=4, block_size=2, max_field_tokens=64,
                               max_response_tokens=32, **SHORT)
    cancel = threading.Event()
    labels = []

    def progress(label: str, done: int, total: int) -> None:
        labels.append(label)
        if label == "utility target":
            cancel.set()

    with pytest.raises(KernelCancelled):
        compute_kernels(pool, target=target, kind="utility", lm=tiny_llama, settings=settings,
                        progress=progress, cancel=cancel)
    assert labels[0] == "utility pool"
    k = compute_kernels(pool, target=target, kind="utility", lm=tiny_llama, settings=settings)
    assert k.pool.shape == (5, 5) and k.target.shape == (2, 5)
    assert k.meta["pool"]["pairs_computed"] == 0  # the pool kernel finished before the cancel
    assert k.meta["pool"]["blocks_reused"] == 3
    assert k.meta["pool"]["row_ids"] == pool.ids and k.meta["target"]["row_ids"] == target.ids
    assert np.isfinite(k.pool).all() and np.isfinite(k.target).all()
    scaled = k.scaled("pool")
    assert scaled.min() == 0 and scaled.max() == pytest.approx(1)
    sel = select(pool, "flmi", k, 2)
    assert len(sel.selected_ids) == 2
