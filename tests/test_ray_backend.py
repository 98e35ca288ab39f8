"""The Ray backend on a local 2-CPU cluster (shared by these tests): values equal the
single-process engine, a worker killed mid-run loses nothing and nothing is written twice, and a
driver stopped half way resumes computing only what the pair store lacks."""

from __future__ import annotations

import sqlite3
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from delift_core.errors import MissingDependencyError
from delift_core.kernels.utility_settings import KernelCancelled, Texts, UtilitySettings
from delift_core.kernels.utility import UtilityKernel, store_path

sys.path.insert(0, str(Path(__file__).parent))
from test_engine_equivalence import tiny_lm  # noqa: E402

ray = pytest.importorskip("ray")
from delift_core.kernels import ray_backend

PROMPTS = [f"Question {k}: what is {k} plus {k + 1}?" for k in range(8)]
RESPS = [f"It is {2 * k + 1}." for k in range(8)]
POOL = Texts(PROMPTS, RESPS)
SETTINGS = UtilitySettings(batch_size=4, block_size=1, max_field_tokens=48, max_response_tokens=16)
N = len(PROMPTS)


@pytest.fixture(scope="module")
def cluster():
    """One local Ray cluster for the module (2 CPUs, as CI has), shut down at the end."""
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray_backend.shutdown_workers()
    ray.shutdown()


@pytest.fixture(scope="module")
def lm():
    return tiny_lm("llama")


@pytest.fixture(scope="module")
def reference(lm):
    return UtilityKernel(lm, SETTINGS, use_cache=False).compute(POOL, POOL).values


def ray_engine(lm, root: Path, workers: int = 2) -> UtilityKernel:
    return UtilityKernel(lm, SETTINGS, cache_root=root, backend="ray",
                         ray_options={"workers": workers, "threads": 1})


def stored_pairs(root: Path) -> int:
    with sqlite3.connect(store_path(root)) as db:
        return db.execute("SELECT COUNT(*) FROM pairs").fetchone()[0]


def test_ray_values_equal_the_single_process_engine(cluster, lm, reference, tmp_path):
    res = ray_engine(lm, tmp_path).compute(POOL, POOL)
    assert res.meta["backend"] == "ray" and res.meta["pairs_computed"] == N * N + N
    np.testing.assert_allclose(res.values, reference, atol=1e-6, rtol=0)
    rows, cols = np.array([0, 1, 5, 7, 7]), np.array([2, 2, 0, 6, 1])
    sparse = ray_engine(lm, tmp_path / "s").compute(POOL, POOL, pairs=(rows, cols))
    np.testing.assert_allclose(sparse.values.toarray()[rows, cols], reference[rows, cols],
                               atol=1e-6, rtol=0)
    again = ray_engine(lm, tmp_path).compute(POOL, POOL)  # all from the store, no worker needed
    assert again.meta["pairs_computed"] == 0
    np.testing.assert_array_equal(again.values, res.values)


def test_a_killed_worker_loses_nothing(cluster, lm, reference, tmp_path):
    killed = []

    def progress(done: int, total: int) -> None:
        if not killed and done < total:
            victim = ray_backend.current_actors()[0]
            ray.kill(victim, no_restart=True)
            killed.append(victim)

    res = ray_engine(lm, tmp_path).compute(POOL, POOL, progress=progress)
    assert killed
    assert res.meta["pairs_computed"] == N * N + N
    np.testing.assert_allclose(res.values, reference, atol=1e-6, rtol=0)
    assert stored_pairs(tmp_path) == N * N  # each pair written, once (primary key), none lost
    assert killed[0] not in ray_backend.current_actors()  # replaced by a fresh worker


def test_an_interrupted_driver_resumes_with_only_the_missing_pairs(cluster, lm, reference,
                                                                   tmp_path):
    cancel = threading.Event()

    def progress(done: int, total: int) -> None:
        if done >= total // 3:
            cancel.set()

    with pytest.raises(KernelCancelled):
        ray_engine(lm, tmp_path).compute(POOL, POOL, progress=progress, cancel=cancel)
    kept = stored_pairs(tmp_path)
    assert 0 < kept < N * N
    seen = []
    res = ray_engine(lm, tmp_path).compute(POOL, POOL, progress=lambda d, t: seen.append((d, t)))
    assert res.meta["pairs_computed"] == N * N - kept  # plain distances were stored first
    assert res.meta["pairs_reused"] == kept + N
    assert seen[-1] == (N * N - kept, N * N - kept)  # progress counts only what is computed
    np.testing.assert_allclose(res.values, reference, atol=1e-6, rtol=0)


def test_compute_kernels_on_ray(cluster, lm, tmp_path, monkeypatch):
    from delift_core.data.dataset import Dataset
    from delift_core.kernels.builder import compute_kernels, kernel_report

    monkeypatch.setenv("DELIFT_CACHE_DIR", str(tmp_path))
    pool = Dataset(rows=[{"prompt": p, "response": r} for p, r in zip(PROMPTS[:5], RESPS[:5])],
                   ids=[f"r{k}" for k in range(5)], prompts=PROMPTS[:5], responses=RESPS[:5],
                   layout="prompt-response", source="test", source_format="list")
    local = compute_kernels(pool, kind="utility", lm=lm, settings=SETTINGS, use_cache=False)
    k = compute_kernels(pool, kind="utility", lm=lm, settings=SETTINGS, backend="ray", workers=2)
    np.testing.assert_allclose(k.pool, local.pool, atol=1e-6, rtol=0)
    assert kernel_report(k) == ["utility pool: 30 of 30 passes computed, 0 reused from the pair "
                                "store (computed on Ray)"]


def test_without_ray_the_backend_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(MissingDependencyError, match=r'pip install "delift-studio\[ray\]"'):
        ray_backend.ensure_ray()


def test_a_learned_kernels_selection_is_verified_on_ray(cluster, lm, tmp_path, monkeypatch):
    """Verification scores its pairs where the kernel's were (it once ran them in the driver
    whatever the backend), with the same values as in one process."""
    from delift_core.data.dataset import Dataset
    from delift_core.kernels.builder import compute_kernels
    from delift_core.kernels.ray_backend import engine_options
    from delift_core.selection.verify import verify_selection

    monkeypatch.setenv("DELIFT_CACHE_DIR", str(tmp_path))
    prompts = [f"Question {k}: what is {k} times {k % 5 + 2}?" for k in range(24)]
    resps = [f"It is {k * (k % 5 + 2)}." for k in range(24)]
    pool = Dataset(rows=[{"prompt": p, "response": r} for p, r in zip(prompts, resps)],
                   ids=[f"r{k}" for k in range(24)], prompts=prompts, responses=resps,
                   layout="prompt-response", source="test", source_format="list")
    k = compute_kernels(pool, kind="utility", lm=lm, settings=SETTINGS, learned=True,
                        exact_passes=200, use_cache=False)
    local = verify_selection(pool, "fl", k, 0.25, rounds=1, lm=lm, settings=SETTINGS,
                             use_cache=False)
    on_ray = verify_selection(pool, "fl", k, 0.25, rounds=1, lm=lm, settings=SETTINGS,
                              use_cache=False, engine_options=engine_options(None, 2))
    v, w = (s.kernels.meta.learned["pool"]["verification"] for s in (local, on_ray))
    assert v["backend"] == "local" and w["backend"] == "ray" and w["pairs_verified"] > 0
    assert (on_ray.kernels.exact["pool"] != local.kernels.exact["pool"]).nnz == 0
    np.testing.assert_allclose(on_ray.kernels.pool, local.kernels.pool, atol=1e-6, rtol=0)
    assert on_ray.selected_ids == local.selected_ids
