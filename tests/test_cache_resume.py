"""Kernel runs resume: a cancelled run keeps its finished blocks, a restart computes only what is
missing, damaged block files are detected and recomputed, and every path gives the same values."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from delift_core.cache import BlockStore, content_key
from delift_core.data import load_dataset
from delift_core.selection import compute_kernels, select
from delift_core.utility import KernelCancelled, Texts, UtilityKernel, UtilitySettings

T = Texts(["What is 2+2?", "Name a colour.", "Sort: 3 1 2"], ["4", "Blue.", "1 2 3"])
E = Texts(["What is 3+5?", "Name a fruit.", "Spell cat.", "Sort: 9 8", "Say hi.", "Add 1 and 1."],
          ["8", "Apple.", "c-a-t", "8 9", "Hi!", "2"])
N_T, N_E, BLOCK = 3, 6, 2
N_BLOCKS = N_E // BLOCK
SHORT = dict(plain_template="Q: {prompt}\nA: ",
             example_template="Ex: {example_prompt}\n{example_response}\nQ: {prompt}\nA: ")
SETTINGS = UtilitySettings(batch_size=2, block_size=BLOCK, **SHORT)


@pytest.fixture(scope="module")
def reference(tiny_llama):
    """The uninterrupted run, without any cache."""
    return UtilityKernel(tiny_llama, SETTINGS, use_cache=False).compute(T, E).values


def block_files(root):
    return sorted(p.name for p in root.rglob("examples_*.npy"))


def test_cancelled_run_resumes_with_only_the_missing_blocks(tiny_llama, reference, tmp_path):
    cancel = threading.Event()

    def progress(done: int, total: int) -> None:
        if done >= total // 2:
            cancel.set()

    engine = UtilityKernel(tiny_llama, SETTINGS, cache_root=tmp_path)
    with pytest.raises(KernelCancelled):
        engine.compute(T, E, progress=progress, cancel=cancel)
    finished = block_files(tmp_path)
    k = len(finished)
    assert 1 <= k < N_BLOCKS, finished
    assert finished == [f"examples_{b:06d}.npy" for b in range(k)]

    seen = []
    res = UtilityKernel(tiny_llama, SETTINGS, cache_root=tmp_path).compute(
        T, E, progress=lambda d, t: seen.append((d, t)))
    assert res.meta["blocks_reused"] == k
    assert res.meta["pairs_computed"] == N_T * (N_E - k * BLOCK)  # plain distances were cached
    assert res.meta["blocks_damaged_recomputed"] == []
    assert seen[-1][0] == seen[-1][1] == N_T * N_E + N_T
    np.testing.assert_allclose(res.values, reference, atol=1e-6, rtol=0)
    assert len(block_files(tmp_path)) == N_BLOCKS

    again = UtilityKernel(tiny_llama, UtilitySettings(batch_size=5, block_size=BLOCK, **SHORT),
                          cache_root=tmp_path).compute(T, E)
    assert again.meta["pairs_computed"] == 0  # batch size does not change values or the key
    assert again.meta["blocks_reused"] == N_BLOCKS
    np.testing.assert_array_equal(again.values, res.values)


def test_cancel_before_anything_is_computed(tiny_llama, tmp_path):
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(KernelCancelled):
        UtilityKernel(tiny_llama, SETTINGS, cache_root=tmp_path).compute(T, E, cancel=cancel)
    assert block_files(tmp_path) == []


@pytest.mark.parametrize("damage", ["flip_bytes", "truncate", "bad_checksum", "no_checksum"])
def test_damaged_block_is_detected_and_recomputed(tiny_llama, reference, tmp_path, damage):
    first = UtilityKernel(tiny_llama, SETTINGS, cache_root=tmp_path).compute(T, E)
    assert first.meta["pairs_computed"] == N_T * N_E + N_T
    folder = next(tmp_path.rglob("examples_000001.npy")).parent
    npy, sidecar = folder / "examples_000001.npy", folder / "examples_000001.sha256"
    data = bytearray(npy.read_bytes())
    if damage == "flip_bytes":
        for k in range(len(data) - 8, len(data)):  # inside the float payload
            data[k] ^= 0xFF
        npy.write_bytes(bytes(data))
    elif damage == "truncate":
        npy.write_bytes(bytes(data[: len(data) // 2]))
    elif damage == "bad_checksum":
        sidecar.write_text("0" * 64)
    else:
        sidecar.unlink()

    res = UtilityKernel(tiny_llama, SETTINGS, cache_root=tmp_path).compute(T, E)
    assert res.meta["blocks_damaged_recomputed"] == ["examples_000001"]
    assert res.meta["pairs_computed"] == N_T * BLOCK
    assert res.meta["blocks_reused"] == N_BLOCKS - 1
    np.testing.assert_allclose(res.values, reference, atol=1e-6, rtol=0)

    healed = UtilityKernel(tiny_llama, SETTINGS, cache_root=tmp_path).compute(T, E)
    assert healed.meta["blocks_damaged_recomputed"] == []
    assert healed.meta["pairs_computed"] == 0


def test_damaged_plain_distances_are_recomputed(tiny_llama, reference, tmp_path):
    UtilityKernel(tiny_llama, SETTINGS, cache_root=tmp_path).compute(T, E)
    plain = next(tmp_path.rglob("plain.npy"))
    plain.write_bytes(plain.read_bytes()[:-4] + b"\x00\x00\x00\x00")
    res = UtilityKernel(tiny_llama, SETTINGS, cache_root=tmp_path).compute(T, E)
    assert res.meta["blocks_damaged_recomputed"] == ["plain"]
    assert res.meta["pairs_computed"] == N_T
    np.testing.assert_allclose(res.values, reference, atol=1e-6, rtol=0)


def test_cache_key_follows_what_changes_values(tiny_llama, tmp_path):
    UtilityKernel(tiny_llama, SETTINGS, cache_root=tmp_path).compute(T, E)
    no_eos = UtilityKernel(tiny_llama, UtilitySettings(batch_size=2, block_size=BLOCK,
                                                       score_eos=False, **SHORT),
                           cache_root=tmp_path)
    assert no_eos.compute(T, E).meta["pairs_computed"] == N_T * N_E + N_T
    other_text = UtilityKernel(tiny_llama, SETTINGS, cache_root=tmp_path)
    changed = Texts(T.prompts, [T.responses[0], "Red.", T.responses[2]])
    assert other_text.compute(changed, E).meta["pairs_computed"] == N_T * N_E + N_T


def test_no_cache_writes_nothing_and_default_root_follows_env(tiny_llama, tmp_path, monkeypatch):
    UtilityKernel(tiny_llama, SETTINGS, cache_root=tmp_path / "off", use_cache=False) \
        .compute(T, E)
    assert not (tmp_path / "off").exists() or block_files(tmp_path / "off") == []
    monkeypatch.setenv("DELIFT_CACHE_DIR", str(tmp_path / "env"))
    res = UtilityKernel(tiny_llama, SETTINGS).compute(T, E)
    assert res.meta["cache_dir"].startswith(str(tmp_path / "env" / "kernels"))
    assert len(block_files(tmp_path / "env")) == N_BLOCKS


def test_given_pairs_resume_and_recompute_a_damaged_block(tiny_llama, reference, tmp_path):
    """The pairs path shares the block loop: blocks of examples, cached, reused and healed."""
    rows, cols = np.array([0, 1, 2, 0, 2]), np.array([0, 1, 1, 4, 5])
    first = UtilityKernel(tiny_llama, SETTINGS, cache_root=tmp_path).compute(T, E,
                                                                             pairs=(rows, cols))
    assert first.meta["pairs_computed"] == len(rows) + N_T and first.meta["blocks_total"] == 3
    np.testing.assert_allclose(first.values.toarray()[rows, cols], reference[rows, cols],
                               atol=1e-6, rtol=0)
    assert sorted(p.name for p in tmp_path.rglob("pairs_*.npy")) == [
        "pairs_000000.npy", "pairs_000002.npy"]  # block 1 holds no pair
    again = UtilityKernel(tiny_llama, SETTINGS, cache_root=tmp_path).compute(T, E,
                                                                             pairs=(rows, cols))
    assert again.meta["pairs_computed"] == 0 and again.meta["blocks_reused"] == 2
    npy = next(tmp_path.rglob("pairs_000002.npy"))
    npy.write_bytes(npy.read_bytes()[:-4] + b"\x00\x00\x00\x00")
    healed = UtilityKernel(tiny_llama, SETTINGS, cache_root=tmp_path).compute(T, E,
                                                                              pairs=(rows, cols))
    assert healed.meta["blocks_damaged_recomputed"] == ["pairs_000002"]
    assert healed.meta["pairs_computed"] == 2
    np.testing.assert_array_equal(healed.values.toarray(), first.values.toarray())
    other = UtilityKernel(tiny_llama, SETTINGS, cache_root=tmp_path).compute(
        T, E, pairs=(rows[:3], cols[:3]))
    assert other.meta["pairs_computed"] == 3 + N_T  # other pairs: another cache entry


def test_block_store(tmp_path):
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
