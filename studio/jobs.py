"""Kernel computations in background threads, one job per browser session.

A job lives in a process-wide registry (``st.cache_resource``) keyed by the session's id, so it
keeps running across reruns and page switches, and no session can see another's job. Pages poll
it (``st.fragment(run_every=...)``); :func:`studio.state.init` adopts a finished job's kernels
into the session.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import streamlit as st

from delift_core import (Dataset, DeliftError, Kernels, KernelCancelled, compute_kernels,
                         load_causal_lm, load_embedder)
from delift_core.kernels import DEFAULT_TARGET_DIRECTION
from delift_core.plan import engine_kind
from delift_core.views import WorkEstimate


@dataclass
class KernelJob:
    """One kernel computation: inputs, live progress, and the result or error."""

    config: dict
    pool: Dataset
    target: Dataset | None
    existing: Dataset | None
    estimate: WorkEstimate
    cancel: threading.Event = field(default_factory=threading.Event)
    status: str = "starting"  # starting | running | done | cancelled | error
    stage: str = "starting"
    done: int = 0
    total: int = 0
    created: float = field(default_factory=time.time)
    compute_started: float | None = None
    finished: float | None = None
    result: Kernels | None = None
    error: str | None = None
    adopted: bool = False
    thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self.status in ("starting", "running")

    def _progress(self, label: str, done: int, total: int) -> None:
        if self.compute_started is None:
            self.compute_started = time.time()
        self.status, self.stage, self.done, self.total = "running", label, done, total

    def fraction(self) -> float:
        """Overall share of the work done, weighting stages by their units."""
        plan = self.estimate.stages
        units = sum(u for _, u, _ in plan) or 1
        before = 0
        for label, u, _ in plan:
            if label == self.stage:
                cur = self.done / self.total * u if self.total else 0
                return min(1.0, (before + cur) / units)
            before += u
        return 0.0 if self.status != "done" else 1.0

    def seconds_left(self) -> float | None:
        """Seconds left, from the pace so far (None until there is some progress)."""
        f = self.fraction()
        if self.compute_started is None or f <= 0.01:
            return None
        spent = time.time() - self.compute_started
        return spent * (1 - f) / f

    def run(self) -> None:
        """Load the model and compute the kernels (the thread's body)."""
        cfg = self.config
        try:
            lm = embedder = None
            if cfg["kind"] == "utility":
                self.stage = "loading the causal LM"
                lm = load_causal_lm(cfg.get("model") or None, dtype=cfg.get("dtype") or "float32",
                                    progress=lambda msg: setattr(self, "stage", msg))
            else:
                self.stage = "loading the sentence embedder"
                embedder = load_embedder(cfg.get("embedder") or None)
            kernels = compute_kernels(self.pool, target=self.target, existing=self.existing,
                                      kind=engine_kind(cfg["kind"]),
                                      lm=lm, embedder=embedder, progress=self._progress,
                                      cancel=self.cancel, neighbours=cfg.get("neighbours"),
                                      backend=cfg.get("backend") or "local",
                                      target_direction=cfg.get("target_direction")
                                      or DEFAULT_TARGET_DIRECTION)
            self.result, self.status = kernels, "done"
        except KernelCancelled:
            self.status = "cancelled"
        except DeliftError as e:
            self.status, self.error = "error", str(e)
        except Exception as e:  # shown to the user as one line, not a traceback
            self.status, self.error = "error", f"{type(e).__name__}: {e}"
        finally:
            self.finished = time.time()


class JobRegistry:
    """Jobs by session id, and measured speeds (tokens per second) by kernel kind."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.jobs: dict[str, KernelJob] = {}
        self.rates: dict[str, float] = {}

    def get(self, session: str) -> KernelJob | None:
        with self.lock:
            return self.jobs.get(session)

    def start(self, session: str, job: KernelJob) -> KernelJob:
        """Start ``job`` for ``session``, cancelling the session's previous job if it runs."""
        with self.lock:
            old = self.jobs.get(session)
            if old is not None and old.running:
                old.cancel.set()
            self.jobs[session] = job
            self._prune()
        job.thread = threading.Thread(target=job.run, name=f"delift-kernel-{session[:8]}",
                                      daemon=True)
        job.thread.start()
        return job

    def _prune(self, max_age: float = 6 * 3600) -> None:
        now = time.time()
        for sid in [s for s, j in self.jobs.items()
                    if not j.running and j.finished and now - j.finished > max_age]:
            del self.jobs[sid]

    def record_rate(self, job: KernelJob) -> None:
        """Remember how fast this machine computed a fresh kernel, for later estimates."""
        meta = job.result.meta if job.result is not None else {}
        pool = meta.get("pool") if isinstance(meta.get("pool"), dict) else None
        if job.config["kind"] != "utility" or not pool or pool.get("pairs_reused") \
                or pool.get("backend") == "ray":  # a rate of fresh, single-process work only
            return
        secs = float(meta.get("seconds") or 0)
        if secs > 0.5:
            self.rates[rate_key(job.config)] = job.estimate.tokens / secs


def rate_key(config: dict) -> str:
    """Measured speeds are kept per kernel kind, model precision and full/sparse kernel."""
    return (f"{config['kind']}-{config.get('dtype') or 'float32'}-"
            f"{'sparse' if config.get('neighbours') else 'full'}")


@st.cache_resource
def job_registry() -> JobRegistry:
    """The process-wide registry (one per server process, shared by sessions by id only)."""
    return JobRegistry()


def wait(job: KernelJob, timeout: float = 600.0) -> None:
    """Block until a job ends (tests and scripts)."""
    if job.thread is not None:
        job.thread.join(timeout)


def describe(job: KernelJob) -> dict[str, Any]:
    """A plain summary of a job for display."""
    return {"status": job.status, "stage": job.stage, "done": job.done, "total": job.total,
            "fraction": job.fraction(), "seconds_left": job.seconds_left(),
            "error": job.error}
