"""The diagonal policy (reference / max / rowmax) on small kernels checked by hand, dense and
sparse, a target kernel with a row shared with the pool, the manifest record, and the target
direction of compute_kernels (reference = the transpose of the pool-rows x target-columns
utility)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp

from delift_core.data.dataset import load_dataset_bytes
from delift_core.kernels.diagonal import scale_with_diagonal, self_pairs
from delift_core.errors import SelectionError
from delift_core.outputs.export import build_manifest
from delift_core.kernels.builder import Kernels, compute_kernels
from delift_core.selection.select import select
from delift_core.kernels.utility_settings import Texts, UtilitySettings
from delift_core.kernels.utility import UtilityKernel

RAW = np.array([[0.9, 0.2, 0.0],
                [0.4, 0.8, 0.1],
                [0.0, 0.3, 0.7]], np.float32)
# non-self entries 0.2, 0.0, 0.4, 0.1, 0.0, 0.3: min 0, max 0.4 -> scaled by / 0.4
OFF = np.array([[0, 0.5, 0.0], [1.0, 0, 0.25], [0.0, 0.75, 0]], np.float32)


def _ds(n: int, prefix: str = "r"):
    data = "".join(json.dumps({"id": f"{prefix}{k}", "prompt": f"q{prefix}{k}",
                               "response": f"a{k}"}) + "\n" for k in range(n))
    return load_dataset_bytes(data.encode(), "x.jsonl")


def test_dense_policies_by_hand():
    diag = self_pairs("pool", {}, (3, 3))
    ref = scale_with_diagonal(RAW, "reference", diag)
    assert np.allclose(ref, RAW / 0.9)
    mx = scale_with_diagonal(RAW, "max", diag)
    assert np.allclose(mx, OFF + np.eye(3))
    rm = scale_with_diagonal(RAW, "rowmax", diag)
    assert np.allclose(rm, OFF + np.diag([0.5, 1.0, 0.75]))


def test_sparse_policies_set_and_insert_the_diagonal():
    # (2, 2) not stored: inserted; non-self stored 0.2, 0.4, 0.1, 0.3 -> (v - 0.1) / 0.3
    r, c = np.array([0, 0, 1, 1, 1, 2]), np.array([0, 1, 0, 1, 2, 1])
    v = np.array([0.9, 0.2, 0.4, 0.8, 0.1, 0.3], np.float32)
    m = sp.csr_matrix((v, (r, c)), shape=(3, 3))
    off = np.array([[0, 1 / 3, 0], [1.0, 0, 0.0], [0, 2 / 3, 0]])
    mx = scale_with_diagonal(m, "max", self_pairs("pool", {}, (3, 3)))
    assert sp.isspmatrix_csr(mx) and mx.dtype == np.float32 and mx.nnz == 7
    assert np.allclose(mx.toarray(), off + np.eye(3), atol=1e-6)
    rm = scale_with_diagonal(m, "rowmax", self_pairs("pool", {}, (3, 3)))
    assert np.allclose(rm.toarray(), off + np.diag([1 / 3, 1.0, 2 / 3]), atol=1e-6)
    ref = scale_with_diagonal(m, "reference", self_pairs("pool", {}, (3, 3)))
    assert ref.nnz == 6 and np.isclose(ref[0, 0], 1.0) and np.isclose(ref[1, 2], 0.0)


def test_target_kernel_row_shared_with_the_pool():
    meta = {"pool_hashes": ["a", "b", "c"], "target_hashes": ["b", "z"]}
    raw = np.array([[0.1, 0.5, 0.3], [0.2, 0.0, 0.4]], np.float32)
    pairs = self_pairs("target", meta, raw.shape)
    assert pairs[0].tolist() == [0] and pairs[1].tolist() == [1]
    base = np.array([[0.25, 0, 0.75], [0.5, 0.0, 1.0]])  # non-self: (v - 0) / 0.4
    mx = scale_with_diagonal(raw, "max", pairs)
    assert np.allclose(mx, base + np.array([[0, 1, 0], [0, 0, 0]]))
    rm = scale_with_diagonal(raw, "rowmax", pairs)
    assert np.allclose(rm, base + np.array([[0, 0.75, 0], [0, 0, 0]]))
    # no hashes recorded: no self pair can be known, the kernel is scaled as in reference
    assert self_pairs("target", {}, raw.shape)[0].size == 0
    k = Kernels("utility", pool=RAW, target=raw, meta=meta, diagonal="max")
    assert np.allclose(k.scaled("target"), mx)
    assert np.allclose(k.scaled("pool"), OFF + np.eye(3))


def test_exact_duplicates_in_the_pool_are_self_pairs():
    meta = {"pool_hashes": ["a", "b", "a"]}
    r, c = self_pairs("pool", meta, (3, 3))
    assert sorted(zip(r.tolist(), c.tolist())) == [(0, 0), (0, 2), (1, 1), (2, 0), (2, 2)]


def test_scaled_follows_the_policy_and_embedding_is_untouched():
    assert Kernels("utility", pool=RAW).diagonal == "max"  # the default (docs/quality)
    k = Kernels("utility", pool=RAW, diagonal="reference")
    assert np.allclose(k.scaled("pool"), RAW / 0.9)
    km = k.with_diagonal("rowmax")
    assert np.allclose(km.scaled("pool"), OFF + np.diag([0.5, 1.0, 0.75]))
    assert np.allclose(k.scaled("pool"), RAW / 0.9)  # the original is unchanged
    assert km.meta["diagonal"]["policy"] == "rowmax" and km.meta["diagonal"]["self_pairs"] == {
        "pool": 3}
    e = Kernels("embedding", pool=RAW).with_diagonal("max")
    assert np.allclose(e.scaled("pool"), RAW) and e.diagonal_record()["applied"] is False
    with pytest.raises(SelectionError, match=r"diagonal \(--diagonal\): unknown value 'diag'"):
        k.with_diagonal("diag")


def test_select_and_manifest_record_the_policy():
    pool = _ds(3)
    raw = RAW.copy()
    raw[np.diag_indices(3)] = [0.95, 0.5, 0.6]  # the same non-self entries as RAW
    k = Kernels("utility", pool=raw, meta={"pool_hashes": ["a", "b", "c"]}, diagonal="reference")
    sel = select(pool, "fl", k, 1, diagonal="max")
    assert sel.params["diagonal"] == "max" and sel.kernels.diagonal == "max"
    man = build_manifest(sel)
    assert man["diagonal"]["policy"] == "max" and man["diagonal"]["applied"] is True
    # under max, column gains: col0 = 1 + 1 + 0 = 2, col1 = 0.5 + 1 + 0.75 = 2.25, col2 = 1.25
    assert sel.selected_indices.tolist() == [1]
    assert select(pool, "fl", k.with_diagonal("max"), 1).selected_indices.tolist() == [1]
    ref = select(pool, "fl", k, 1, diagonal="reference")
    # reference, first gain = column sum / 0.95: col0 = 1.35, col1 = 1.0, col2 = 0.7 (x 1/0.95)
    assert ref.selected_indices.tolist() == [0] and ref.params["diagonal"] == "reference"
    assert build_manifest(ref)["diagonal"]["applied"] is False


@pytest.fixture(scope="module")
def tiny(char_tokenizer):
    from conftest import make_tiny_lm

    return make_tiny_lm("llama", char_tokenizer)


def test_target_direction_reference_is_the_transpose(tiny):
    pool = _ds(3, "p")
    target = _ds(2, "t")
    s = UtilitySettings(plain_template="Q: {prompt}\nA:", example_template=(
        "E: {example_prompt}\n{example_response}\nQ: {prompt}\nA:"), batch_size=2)
    ours = compute_kernels(pool, target=target, lm=tiny, settings=s, use_cache=False)
    theirs = compute_kernels(pool, target=target, lm=tiny, settings=s, use_cache=False,
                             target_direction="reference")
    flipped = UtilityKernel(tiny, s, use_cache=False).compute(
        Texts(pool.prompts, pool.responses), Texts(target.prompts, target.responses)).values
    direct = UtilityKernel(tiny, s, use_cache=False).compute(
        Texts(target.prompts, target.responses), Texts(pool.prompts, pool.responses)).values
    assert theirs.target.shape == (2, 3) and ours.target.shape == (2, 3)
    assert np.allclose(theirs.target, np.asarray(flipped).T, atol=1e-5)
    assert np.allclose(ours.target, np.asarray(direct), atol=1e-5)
    assert not np.allclose(ours.target, theirs.target, atol=1e-3)
    assert theirs.meta["target_direction"] == "reference"
    assert ours.meta["target_direction"] == "helps-target"
    assert np.allclose(ours.pool, theirs.pool)
    with pytest.raises(SelectionError, match=r"target_direction \(--target-direction\): unknown value"):
        compute_kernels(pool, target=target, lm=tiny, settings=s, target_direction="up")


def _kernel_folder(tmp_path, pool, direction=None):
    from delift_core.kernels.files import save_kernels
    from delift_core.kernels.builder import row_hashes

    raw = RAW.copy()
    raw[np.diag_indices(3)] = [0.95, 0.5, 0.6]
    meta = {"kind": "utility", "pool_ids": pool.ids, "pool_hashes": row_hashes(pool)}
    if direction:
        meta["target_direction"] = direction
    save_kernels(Kernels("utility", pool=raw, meta=meta), tmp_path / "k")
    return tmp_path / "k"


def test_cli_select_diagonal_is_recorded(tmp_path):
    from delift_core.cli import main

    pool = _ds(3)
    (tmp_path / "pool.jsonl").write_text("".join(
        json.dumps({"id": i, "prompt": p, "response": r}) + "\n"
        for i, p, r in zip(pool.ids, pool.prompts, pool.responses)))
    folder = _kernel_folder(tmp_path, pool)
    for policy, picked in (("max", "r1"), ("reference", "r0")):
        out = tmp_path / f"out-{policy}"
        assert main(["select", "--pool", str(tmp_path / "pool.jsonl"), "--kernel", str(folder),
                     "--budget", "1", "--diagonal", policy, "--out", str(out)]) == 0
        man = json.loads((out / "manifest.json").read_text())
        sel = json.loads((out / "selection.json").read_text())
        assert man["diagonal"]["policy"] == policy and sel["params"]["diagonal"] == policy
        assert sel["selected_ids"] == [picked]


def test_cli_refuses_a_bad_diagonal_and_a_direction_the_folder_lacks(tmp_path, capsys):
    from delift_core.cli import main

    # checked by the core (the settings spec), before any kernel is computed
    assert main(["select", "--pool", "demo:pool", "--diagonal", "diag",
                 "--out", str(tmp_path / "o")]) == 2
    assert "diagonal (--diagonal): unknown value 'diag'" in capsys.readouterr().err
    from delift_core.errors import KernelError
    from delift_core.kernels.files import check_target_direction

    k = Kernels("utility", pool=RAW, target=RAW[:2],
                meta={"kind": "utility", "target_direction": "helps-target",
                      "source": {"file": "k", "trusted": False}})
    check_target_direction(k, None)
    check_target_direction(k, "helps-target")
    with pytest.raises(KernelError, match="computed with helps-target"):
        check_target_direction(k, "reference")
    check_target_direction(Kernels("utility", pool=RAW, meta={}), "reference")  # no target


def test_with_the_same_policy_keeps_the_scaled_kernels():
    """select(..., diagonal=p) on kernels already under p reuses their scaled copy (no n x n
    rescale on every studio selection)."""
    import numpy as np

    from delift_core.kernels.builder import Kernels

    k = Kernels("utility", pool=np.random.default_rng(0).random((6, 6)).astype(np.float32))
    a = k.with_diagonal("max")
    scaled = a.scaled("pool")
    b = a.with_diagonal("max")
    assert b is a and b.scaled("pool") is scaled
    assert a.with_diagonal("reference") is not a
