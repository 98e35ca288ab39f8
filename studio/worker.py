"""The studio's utility kernels run in a model-holding child process, not in the server's.

Measured (``benchmarks/bench_studio.py``): in a thread of the Streamlit server the same utility
kernel computed 2.4x slower than the CLI while a browser watched it (1.4x with the browser
closed), with the server process near one core busy and the other idle: the engine's Python
between torch calls waits for the GIL that the server's event loop and page reruns hold. A child
process has a GIL of its own. Like a Ray actor, the worker keeps its models loaded between jobs
(so a second kernel does not load the model again), takes one job at a time, and sends progress
and the kernels back; the server's job thread relays them and a Cancel.

No streamlit import here: the child imports only this module and ``delift_core``.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue
import threading
from typing import Any, Callable

from delift_core import (Dataset, DeliftError, Kernels, KernelCancelled, compute_kernels,
                         load_causal_lm)
from delift_core.kernels import DEFAULT_TARGET_DIRECTION
from delift_core.plan import engine_kind

__all__ = ["KernelWorker", "WorkerDied", "shared_worker", "worker_env"]

logger = logging.getLogger(__name__)

ENV_PREFIXES = ("DELIFT_", "HF_", "TRANSFORMERS_", "OMP_", "MKL_", "CUDA_", "RAY_")
"""Environment variables a job depends on: a worker started under other values is replaced."""


class WorkerDied(DeliftError):
    """The worker process ended in the middle of a job (killed, or out of memory)."""


def worker_env() -> dict[str, str]:
    """The part of this process's environment that the worker's results depend on."""
    return {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIXES)}


def _compute(cfg: dict, pool: Dataset, target: Dataset | None, existing: Dataset | None,
             reply: Callable[..., None], cancel: Any) -> Kernels:
    """One job in the worker: load (or reuse) the model, compute the kernels, report progress."""
    reply("stage", "loading the causal LM")
    lm = load_causal_lm(cfg.get("model") or None, dtype=cfg.get("dtype") or "float32",
                        progress=lambda msg: reply("stage", msg))
    return compute_kernels(pool, target=target, existing=existing, kind=engine_kind(cfg["kind"]),
                           lm=lm, progress=lambda label, done, total: reply("progress", label,
                                                                           done, total),
                           cancel=cancel, neighbours=cfg.get("neighbours"),
                           backend=cfg.get("backend") or "local",
                           target_direction=cfg.get("target_direction")
                           or DEFAULT_TARGET_DIRECTION)


def _serve(requests: Any, replies: Any, cancel: Any, parent: int) -> None:
    """The worker's loop: one job at a time until told to stop or the server process is gone."""
    while True:
        try:
            request = requests.get(timeout=1.0)
        except queue.Empty:
            if os.getppid() != parent:  # the server was killed: do not outlive it
                return
            continue
        if request is None:
            return
        job_id, cfg, pool, target, existing = request

        def reply(*msg: Any) -> None:
            replies.put((job_id, *msg))

        try:
            reply("done", _compute(cfg, pool, target, existing, reply, cancel))
        except KernelCancelled:
            reply("cancelled")
        except DeliftError as e:
            reply("error", str(e))
        except Exception as e:  # noqa: BLE001 - sent back as one line, the worker lives on
            reply("error", f"{type(e).__name__}: {e}")


class KernelWorker:
    """A child process that holds the models and computes utility kernels, one job at a time.

    :meth:`run` blocks its caller (a job thread of the server) until the job ends; jobs of other
    sessions wait their turn (two model jobs on the same cores run slower than one after the
    other). A worker that died is started again by the next job.
    """

    def __init__(self) -> None:
        self._ctx = mp.get_context("spawn")  # never fork a process that has threads
        self._lock = threading.Lock()
        self._proc: Any = None
        self._env: dict[str, str] | None = None
        self._jobs = 0

    def _ensure(self) -> None:
        """Start the worker, or start it again if it died or the environment changed."""
        env = worker_env()
        if self._proc is not None and self._proc.is_alive() and env == self._env:
            return
        self.stop()
        self._requests, self._replies = self._ctx.Queue(), self._ctx.Queue()
        self._cancel = self._ctx.Event()
        self._proc = self._ctx.Process(target=_serve, name="delift-kernel-worker", daemon=True,
                                       args=(self._requests, self._replies, self._cancel,
                                             os.getpid()))
        self._proc.start()
        self._env = env
        logger.info("started the kernel worker process (pid %s)", self._proc.pid)

    def stop(self) -> None:
        """Ask the worker to end (and make sure it has)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.is_alive():
            try:
                self._requests.put(None)
            except (OSError, ValueError):
                pass
            proc.join(5)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)

    @property
    def pid(self) -> int | None:
        """The worker process's id (None when none is running)."""
        return self._proc.pid if self._proc is not None and self._proc.is_alive() else None

    def run(self, cfg: dict, pool: Dataset, target: Dataset | None, existing: Dataset | None, *,
            cancel: threading.Event, stage: Callable[[str], None],
            progress: Callable[[str, int, int], None], poll: float = 0.2) -> Kernels:
        """Compute one job's kernels in the worker; raises KernelCancelled, DeliftError (the
        job's own error, as the engine raised it) or WorkerDied."""
        while not self._lock.acquire(timeout=poll):  # another session's kernel is computing
            stage("waiting for another session's kernel to finish")
            if cancel.is_set():
                raise KernelCancelled("cancelled while waiting for another kernel")
        try:
            self._ensure()
            self._jobs += 1
            job_id = self._jobs
            self._cancel.clear()
            self._requests.put((job_id, cfg, pool, target, existing))
            while True:
                if cancel.is_set():
                    self._cancel.set()
                try:
                    msg = self._replies.get(timeout=poll)
                except queue.Empty:
                    if not self._proc.is_alive():
                        code = self._proc.exitcode
                        self._proc = None
                        raise WorkerDied(
                            f"the kernel worker process ended during the computation (exit "
                            f"code {code}{': killed, perhaps out of memory' if code == -9 else ''}"
                            "); finished pairs are in the pair store, so computing again "
                            "resumes where it stopped") from None
                    continue
                if msg[0] != job_id:  # left over from a job that ended before its reply was read
                    continue
                kind, *rest = msg[1:]
                if kind == "stage":
                    stage(rest[0])
                elif kind == "progress":
                    progress(*rest)
                elif kind == "done":
                    return rest[0]
                elif kind == "cancelled":
                    raise KernelCancelled("cancelled")
                else:
                    raise DeliftError(rest[0])
        finally:
            self._lock.release()

    def __del__(self) -> None:  # pragma: no cover - best effort at interpreter exit
        try:
            self.stop()
        except Exception:  # noqa: BLE001
            pass


_shared: KernelWorker | None = None
_shared_lock = threading.Lock()


def shared_worker() -> KernelWorker:
    """The process's one worker (started on its first job)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = KernelWorker()
        return _shared
