"""The studio's kernel worker process (studio/worker.py) with the real default model: its kernels
equal the engine's in this process, it keeps the model between jobs, relays progress and Cancel,
survives a job's error, and reports (then replaces) a worker that was killed."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from delift_core import DeliftError, KernelCancelled, compute_kernels, load_causal_lm, load_dataset
from studio.worker import KernelWorker, WorkerDied

CFG = {"kind": "utility", "model": None, "dtype": "float32", "neighbours": None,
       "backend": "local", "target_direction": None}


@pytest.fixture
def fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty pair store with the user's dequantised model linked in."""
    from delift_core.models import cache_dir

    (cache_dir() / "models").mkdir(parents=True, exist_ok=True)
    (tmp_path / "models").symlink_to(cache_dir() / "models")
    monkeypatch.setenv("DELIFT_CACHE_DIR", str(tmp_path))
    return tmp_path


@pytest.mark.slow
@pytest.mark.real_cache
def test_worker_kernels_equal_the_engines_and_it_keeps_the_model(
        fresh_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pool = load_dataset("demo:pool").subset(list(range(4)))
    worker = KernelWorker()
    try:
        stages: list[str] = []
        ticks: list[tuple[str, int, int]] = []
        k = worker.run(CFG, pool, None, None, cancel=threading.Event(), stage=stages.append,
                       progress=lambda *a: ticks.append(a))
        assert stages[0] == "loading the causal LM"
        assert ticks[-1] == ("utility pool", 20, 20)  # 4 x 4 pairs + 4 plain passes
        assert [d for _, d, _ in ticks] == sorted(d for _, d, _ in ticks)
        assert k.meta["pool"]["pairs_computed"] == 20
        # the same values as the engine in this process (from its own empty pair store)
        here = fresh_cache / "here"
        here.mkdir()
        (here / "models").symlink_to((fresh_cache / "models").resolve())
        monkeypatch.setenv("DELIFT_CACHE_DIR", str(here))
        mine = compute_kernels(pool, kind="utility", lm=load_causal_lm(None))
        assert mine.meta["pool"]["pairs_computed"] == 20
        np.testing.assert_allclose(k.pool, mine.pool, rtol=0, atol=1e-6)
        monkeypatch.setenv("DELIFT_CACHE_DIR", str(fresh_cache))
        # a second job: the same process, its model already loaded, the pairs from the store
        pid = worker.pid
        t = time.time()
        again = worker.run(CFG, pool, None, None, cancel=threading.Event(),
                           stage=stages.append, progress=lambda *a: None)
        assert worker.pid == pid and time.time() - t < 20
        assert again.meta["pool"]["pairs_computed"] == 0
        np.testing.assert_array_equal(again.pool, k.pool)
    finally:
        worker.stop()
    assert worker.pid is None


@pytest.mark.slow
@pytest.mark.real_cache
def test_worker_cancel_error_and_a_killed_worker(fresh_cache: Path) -> None:
    pool = load_dataset("demo:pool").subset(list(range(12)))
    worker = KernelWorker()
    try:
        # Cancel: set by the page, relayed to the worker; it stops at the next batch
        cancel = threading.Event()
        ticks: list[int] = []

        def progress(label: str, done: int, total: int) -> None:
            ticks.append(done)
            cancel.set()

        with pytest.raises(KernelCancelled):
            worker.run(CFG, pool, None, None, cancel=cancel, stage=lambda m: None,
                       progress=progress)
        assert 0 < ticks[-1] < 12 * 12 + 12
        # a job's own error comes back as the engine's message; the worker lives on
        pid = worker.pid
        with pytest.raises(DeliftError, match="no-such-model"):
            worker.run({**CFG, "model": str(fresh_cache / "no-such-model")}, pool, None, None,
                       cancel=threading.Event(), stage=lambda m: None, progress=lambda *a: None)
        assert worker.pid == pid
        # a worker killed in the middle of a job: a clear error, then a new worker for the next
        started = threading.Event()

        def kill_at_first_tick(label: str, done: int, total: int) -> None:
            if not started.is_set():
                started.set()
                os.kill(pid, signal.SIGKILL)

        with pytest.raises(WorkerDied, match="exit code -9: killed"):
            worker.run(CFG, load_dataset("demo:pool").subset(list(range(12, 24))), None, None,
                       cancel=threading.Event(), stage=lambda m: None,
                       progress=kill_at_first_tick)
        k = worker.run(CFG, pool.subset(list(range(3))), None, None, cancel=threading.Event(),
                       stage=lambda m: None, progress=lambda *a: None)
        assert worker.pid not in (None, pid) and k.pool.shape == (3, 3)
    finally:
        worker.stop()
