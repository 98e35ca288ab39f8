"""A kernel is used only for the rows it was computed for: content hashes in kernel_meta.json,
bare files only when trusted, shapes and values checked at the API boundary (issue: Reliability)."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from delift_core.kernels.builder import Kernels
from delift_core.data.dataset import load_dataset
from delift_core.selection.select import select
from delift_core.cli import main
from delift_core.errors import DataError, KernelError, SelectionError
from delift_core.kernels.files import load_kernels, save_kernels
from delift_core.kernels.builder import row_hashes


def _pool(tmp_path, n=20, edit=()):
    pool = load_dataset("demo:pool").subset(range(n))
    path = tmp_path / ("edited.jsonl" if edit else "pool.jsonl")
    with path.open("w") as f:
        for k, (rid, p, r) in enumerate(zip(pool.ids, pool.prompts, pool.responses)):
            f.write(json.dumps({"id": rid, "prompt": p,
                                "response": r + (" (fixed)" if k in edit else "")}) + "\n")
    return path


def test_kernel_folder_of_edited_rows_is_refused_naming_the_rows(tmp_path, capsys):
    a = _pool(tmp_path)
    assert main(["kernel", "--pool", str(a), "--kernel", "embedding", "--out",
                 str(tmp_path / "K")]) == 0
    meta = json.loads((tmp_path / "K" / "kernel_meta.json").read_text())
    assert len(meta["pool_hashes"]) == 20
    edited = _pool(tmp_path, edit=(3, 11))
    capsys.readouterr()
    code = main(["select", "--pool", str(edited), "--kernel", str(tmp_path / "K"), "--budget", "5",
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "2 of 20 pool rows differ" in err and "rows 3 (id" in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()
    # the unedited pool still selects with that kernel
    assert main(["select", "--pool", str(a), "--kernel", str(tmp_path / "K"), "--budget", "5",
                 "--out", str(tmp_path / "ok")]) == 0


def test_bare_npy_needs_trust(tmp_path, capsys):
    a = _pool(tmp_path)
    np.save(tmp_path / "bare.npy", np.random.default_rng(0).random((20, 20)).astype(np.float32))
    code = main(["select", "--pool", str(a), "--kernel", str(tmp_path / "bare.npy"),
                 "--budget", "5", "--out", str(tmp_path / "o1")])
    assert code == 2 and "--trust-kernel" in capsys.readouterr().err
    assert main(["select", "--pool", str(a), "--kernel", str(tmp_path / "bare.npy"),
                 "--trust-kernel", "--budget", "5", "--out", str(tmp_path / "o2")]) == 0


def test_old_folder_without_hashes_is_refused_unless_trusted(tmp_path):
    pool = load_dataset("demo:pool").subset(range(8))
    save_kernels(Kernels("utility", pool=np.eye(8, dtype=np.float32),
                         meta={"kind": "utility", "pool_ids": pool.ids}), tmp_path / "old")
    with pytest.raises(KernelError, match="older kernel folder"):
        load_kernels(tmp_path / "old", pool)
    assert load_kernels(tmp_path / "old", pool, trust=True).pool.shape == (8, 8)


def test_select_checks_kernel_shape_and_values():
    pool = load_dataset("demo:pool").subset(range(30))
    rng = np.random.default_rng(1)
    for n in (40, 29):
        with pytest.raises(KernelError, match=rf"pool kernel has shape \({n}, {n}\), expected "
                                               r"\(30, 30\)"):
            select(pool, "fl", Kernels("utility", pool=rng.random((n, n)).astype(np.float32)), 5)
    bad = rng.random((30, 30)).astype(np.float32)
    bad[4, 7] = np.nan
    with pytest.raises(KernelError, match="NaN at row 4, column 7"):
        select(pool, "fl", Kernels("utility", pool=bad), 5)
    with pytest.raises(KernelError, match="target kernel has shape"):
        select(pool, "flmi", Kernels("utility", pool=rng.random((30, 30)),
                                     target=rng.random((5, 31))), 5)
    with pytest.raises(SelectionError, match="budget must be"):
        select(pool, "fl", Kernels("utility", pool=rng.random((30, 30))), None)


def test_bad_kernel_files_name_the_file_and_problem(tmp_path):
    pool = load_dataset("demo:pool").subset(range(6))
    m = np.random.default_rng(0).random((6, 6)).astype(np.float32)
    m[2, 5] = np.inf
    np.save(tmp_path / "inf.npy", m)
    with pytest.raises(KernelError, match=r"inf\.npy: the pool kernel holds an infinite value at "
                                          r"row 2, column 5"):
        load_kernels(tmp_path / "inf.npy", pool, trust=True)
    np.save(tmp_path / "str.npy", np.array([["a"] * 6] * 6))
    with pytest.raises(KernelError, match=r"str\.npy: the pool kernel holds non-numeric"):
        load_kernels(tmp_path / "str.npy", pool, trust=True)
    with (tmp_path / "pickled.npy").open("wb") as f:
        pickle.dump({"a": 1}, f)
    with pytest.raises(KernelError, match=r"pickled\.npy: not a readable \.npy"):
        load_kernels(tmp_path / "pickled.npy", pool, trust=True)
    np.save(tmp_path / "obj.npy", np.array([[object()] * 6] * 6, dtype=object), allow_pickle=True)
    with pytest.raises(KernelError, match=r"obj\.npy: not a readable"):
        load_kernels(tmp_path / "obj.npy", pool, trust=True)


def test_row_hashes_follow_content_not_ids():
    pool = load_dataset("demo:pool").subset(range(3))
    h = row_hashes(pool)
    assert len(set(h)) == 3 and all(len(x) == 16 for x in h)
    assert row_hashes(pool.subset([2, 0])) == [h[2], h[0]]


def test_load_dataset_bytes_rejects_text():
    from delift_core.data.dataset import load_dataset_bytes

    with pytest.raises(DataError, match="takes the file's bytes, got str"):
        load_dataset_bytes('{"prompt": "a", "response": "b"}\n', "x.jsonl")
