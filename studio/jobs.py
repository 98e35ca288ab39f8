"""Background jobs (kernel computations, selection verifications and evaluations) in threads,
one of each per session.

A job lives in a process-wide registry (``st.cache_resource``) keyed by the session's id and the
job's kind, so it keeps running across reruns and page switches, and no session can see another's
job. Pages poll it (``st.fragment(run_every=...)``); :func:`studio.state.init` adopts a finished
kernel job's kernels into the session, the Evaluate page a finished evaluation's report.

Model work (utility kernels and evaluations) of all sessions goes through one server-wide
:class:`ModelQueue`: ``DELIFT_MODEL_JOBS`` run at once (default 1: two model jobs side by side on
a small CPU each run many times slower), the rest wait in order, each session sees its place, and
a job whose browser tab has been gone for :data:`GONE_AFTER_S` leaves the queue. Embedding
kernels take no place in it: they are short and would otherwise wait behind an hour-long kernel.
A signed-in user has one model job at a time across all their tabs, and at most
``DELIFT_MAX_QUEUED`` jobs wait at once (:class:`QueueRefused` otherwise), so no one fills the
queue for everyone else.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Sequence, TypeVar

import streamlit as st

from delift_core.data.dataset import Dataset
from delift_core.errors import DeliftError
from delift_core.kernels.builder import Kernels
from delift_core.kernels.utility_settings import KernelCancelled
from delift_core.lm.models import load_causal_lm, load_embedder
from delift_core.evaluation.settings import EvalSettings, EvaluationCancelled
from delift_core.evaluation.subsets import Subset
from delift_core.evaluation.run import evaluate
from delift_core.kernels.request import kernels_from_settings, scores_from_settings
from delift_core.selection import objectives as registry
from delift_core.selection.plan import engine_kind
from delift_core.kernels.estimates import WorkEstimate


class QueueRefused(DeliftError):
    """A model job the server does not take now: its user already has one, or the queue is full."""


@dataclass(kw_only=True, eq=False)
class Job:
    """What every background job has: live progress, a cancel event, and the result or error.

    Subclasses say what the work is (:meth:`work`) and how far along it is (:meth:`fraction`).
    """

    KIND: ClassVar[str] = "job"
    cancel: threading.Event = field(default_factory=threading.Event)
    status: str = "starting"  # starting | queued | running | done | cancelled | error
    stage: str = "starting"
    done: int = 0
    total: int = 0
    created: float = field(default_factory=time.time)
    compute_started: float | None = None
    finished: float | None = None
    result: Any = None
    error: str | None = None
    adopted: bool = False  # its result was taken into the session
    thread: threading.Thread | None = None
    queue: "ModelQueue | None" = None
    """The server's model-work queue, for a job that loads a causal LM (None: runs at once)."""
    alive: Callable[[], bool] = lambda: True
    """Whether the session that started the job still has its browser tab open."""
    owner: str | None = None
    """The signed-in user who started it (None: no sign-in), for the one-model-job-a-user rule."""

    @property
    def running(self) -> bool:
        """Not ended: starting, waiting in the queue, or computing."""
        return self.status in ("starting", "queued", "running")

    def place(self) -> tuple[int, int] | None:
        """(place, jobs waiting) while the job waits in the model queue, else None."""
        return self.queue.place(self) if self.queue is not None else None

    def _progress(self, label: str, done: int, total: int) -> None:
        if self.compute_started is None:
            self.compute_started = time.time()
        self.status, self.stage, self.done, self.total = "running", label, done, total

    def fraction(self) -> float:
        """Overall share of the work done (0..1)."""
        raise NotImplementedError

    def needs_model(self) -> bool:
        """Whether the job loads a causal LM (then it waits its turn in the model queue)."""
        return True

    def work(self) -> Any:
        """The computation; returns the result (runs in the job's thread)."""
        raise NotImplementedError

    def seconds_left(self) -> float | None:
        """Seconds left, from the pace so far (None until there is some progress)."""
        f = self.fraction()
        if self.compute_started is None or f <= 0.01:
            return None
        spent = time.time() - self.compute_started
        return spent * (1 - f) / f

    def run(self) -> None:
        """The thread's body: a place in the model queue if it needs one, then the work; its
        outcome as a status, never an exception."""
        if self.queue is not None and not self.queue.acquire(self):
            self.status, self.finished = "cancelled", time.time()
            return
        try:
            self.result = self.work()
            self.status = "done"
        except (KernelCancelled, EvaluationCancelled):
            self.status = "cancelled"
        except DeliftError as e:
            self.status, self.error = "error", str(e)
        except Exception as e:  # shown to the user as one line, not a traceback
            self.status, self.error = "error", f"{type(e).__name__}: {e}"
        finally:
            if self.running:  # anything else that ended the thread: never "running" forever
                self.status, self.error = "error", self.error or "the job stopped unexpectedly"
            self.finished = time.time()
            if self.queue is not None:
                self.queue.release(self)


GONE_AFTER_S = 30.0
"""A queued job whose session has had no open browser tab for this long leaves the queue (a
short reconnect, a reload, keeps its place)."""


class ModelQueue:
    """One server-wide, first-come first-served queue of model jobs with ``slots`` running at
    once. A job waiting in it can be cancelled (it leaves at once) and leaves by itself when its
    session's tab has been closed for :data:`GONE_AFTER_S`."""

    def __init__(self, slots: int = 1) -> None:
        self.slots = slots
        self.cond = threading.Condition()
        self.waiting: list[Job] = []
        self.active: set[int] = set()
        self._gone_since: dict[int, float] = {}

    def place(self, job: Job) -> tuple[int, int] | None:
        with self.cond:
            if job not in self.waiting:
                return None
            return self.waiting.index(job) + 1, len(self.waiting)

    def _drop_gone(self) -> None:
        now = time.time()
        for job in list(self.waiting):
            if job.alive():
                self._gone_since.pop(id(job), None)
            elif now - self._gone_since.setdefault(id(job), now) >= GONE_AFTER_S:
                job.cancel.set()

    def acquire(self, job: Job, poll: float = 0.5) -> bool:
        """Wait for a free slot in order; False when the job was cancelled (or its tab closed)
        while it waited."""
        with self.cond:
            self.waiting.append(job)
            job.status, job.stage = "queued", "waiting for the model"
            try:
                while True:
                    self._drop_gone()
                    if job.cancel.is_set():
                        return False
                    if self.waiting[0] is job and len(self.active) < self.slots:
                        self.active.add(id(job))
                        job.status, job.stage = "starting", "starting"
                        return True
                    self.cond.wait(poll)
            finally:
                self.waiting.remove(job)
                self._gone_since.pop(id(job), None)
                self.cond.notify_all()

    def release(self, job: Job) -> None:
        with self.cond:
            self.active.discard(id(job))
            self.cond.notify_all()


def config_values(cfg: dict) -> dict[str, Any]:
    """The engine setting values of a Kernel page configuration (what its kernels were made
    with): the page's advanced settings and its model, precision and kernel choices."""
    return {**cfg.get("engine", {}), "kernel": engine_kind(cfg["kind"]),
            **{k: cfg[k] for k in ("model", "embedder", "dtype", "neighbours",
                                   "target_direction", "backend") if cfg.get(k)}}


@dataclass(kw_only=True, eq=False)
class KernelJob(Job):
    """One kernel computation: its inputs and work estimate; the result is :class:`Kernels`."""

    KIND: ClassVar[str] = "kernel"
    config: dict
    pool: Dataset
    target: Dataset | None
    existing: Dataset | None
    estimate: WorkEstimate
    result: Kernels | None = None

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

    scores: Any = None
    """The per-row scores the chosen objective ranks by (ifd, longest), computed after the
    kernels; None when it ranks by none."""

    def scores_kind(self) -> str | None:
        objective = self.config.get("objective")
        return registry.get(objective).scores if objective in registry.OBJECTIVES else None

    def needs_model(self) -> bool:
        return engine_kind(self.config["kind"]) == "utility" or self.scores_kind() is not None

    def work(self) -> Kernels:
        """Load the model and compute the kernels the page's settings describe."""
        cfg = self.config
        kind = engine_kind(cfg["kind"])
        self.stage = ("loading the causal LM" if kind == "utility" else
                      "loading the sentence embedder")
        values = config_values(cfg)
        kernels = kernels_from_settings(self.pool, values, target=self.target,
                                        existing=self.existing, progress=self._progress,
                                        cancel=self.cancel,
                                        model_progress=lambda msg: setattr(self, "stage", msg))
        if self.scores_kind() is not None:
            self.stage = "loading the causal LM for the row scores"
            self.scores = scores_from_settings(
                self.pool, self.scores_kind(), {**values, "kernel": "utility"},
                progress=self._progress, cancel=self.cancel,
                model_progress=lambda msg: setattr(self, "stage", msg))
        return kernels


@dataclass(kw_only=True, eq=False)
class VerifyJob(Job):
    """A learned kernel's selection verified (:func:`delift_core.selection.verify.verify_selection`):
    its predicted covers scored exactly, round by round; the result is the verified
    :class:`~delift_core.selection.select.Selection`, whose ``kernels`` hold the exact values."""

    KIND: ClassVar[str] = "verify"
    pool: Dataset
    kernels: Kernels
    target: Dataset | None
    config: dict
    objective: str
    budget: int
    rounds: int
    options: dict
    existing: Dataset | None = None
    explore: float = 0.0
    round_index: int = 0

    def fraction(self) -> float:
        """Rounds finished plus the share of the current one (a round can end early)."""
        if self.status == "done":
            return 1.0
        cur = self.done / self.total if self.total else 0.0
        return min(1.0, (self.round_index + cur) / max(1, self.rounds))

    def work(self) -> Any:
        """Load the kernel's causal LM and verify the selection."""
        from delift_core.selection.verify import verify_from_settings

        self.stage = "loading the causal LM"
        return verify_from_settings(self.pool, self.objective, self.kernels, self.budget,
                                    config_values(self.config), rounds=self.rounds,
                                    explore=self.explore, target=self.target,
                                    existing=self.existing, progress=self._progress,
                                    cancel=self.cancel,
                                    model_progress=lambda msg: setattr(self, "stage", msg),
                                    on_round=lambda k, _: setattr(self, "round_index", k),
                                    **self.options)


@dataclass(kw_only=True, eq=False)
class EvalJob(Job):
    """One evaluation: subsets scored on a test set; the result is an ``EvalReport``.

    Progress is per run (a subset in a mode) and, within it, per scored batch or LoRA step.
    """

    KIND: ClassVar[str] = "evaluation"
    subsets: Sequence[Subset]
    test: Dataset
    settings: EvalSettings
    modes: Sequence[str]
    model: str | None = None
    embedder: str | None = None
    run_index: int = -1
    _run_label: str | None = None
    _trained: bool = False  # the current LoRA run has reported a training step

    @property
    def runs(self) -> int:
        return len(self.subsets) * len(self.modes)

    def _progress(self, label: str, done: int, total: int) -> None:
        run = label.removesuffix(": LoRA training")
        if label != "embedding the test set" and run != self._run_label:
            self._run_label, self.run_index, self._trained = run, self.run_index + 1, False
        if label.endswith(": LoRA training"):
            self._trained = True
        super()._progress(label, done, total)

    def fraction(self) -> float:
        """Runs finished plus the share of the current one (a LoRA run: training is its first
        half, scoring the second; it never moves back)."""
        if self.status == "done":
            return 1.0
        if self.run_index < 0 or not self.runs:
            return 0.0
        cur = self.done / self.total if self.total else 0.0
        if self._run_label and self._run_label.startswith("lora "):
            if self.stage.endswith("LoRA training"):
                cur = cur / 2
            else:  # scoring: after training, or at once for an empty subset / cached adapter
                cur = 0.5 + cur / 2 if self._trained or self.done else 0.0
        return min(1.0, (self.run_index + cur) / self.runs)

    def work(self) -> Any:
        """Load the models and evaluate every subset."""
        self.stage = "loading the causal LM"
        lm = load_causal_lm(self.model or None)
        self.stage = "loading the sentence embedder"
        embedder = load_embedder(self.embedder or None)
        return evaluate(self.subsets, self.test, lm=lm, embedder=embedder,
                        settings=self.settings, modes=self.modes, progress=self._progress,
                        cancel=self.cancel)


J = TypeVar("J", bound=Job)


class JobRegistry:
    """Jobs by session id and kind (measured speeds are kept on disk: delift_core.kernels.estimates)."""

    def __init__(self, model_jobs: int = 1, max_queued: int = 8) -> None:
        self.lock = threading.Lock()
        self.jobs: dict[tuple[str, str], Job] = {}
        self.queue = ModelQueue(model_jobs)
        self.max_queued = max_queued

    def get(self, session: str, kind: str = KernelJob.KIND) -> Any:
        """The session's job of ``kind`` ("kernel" or "evaluation"), running or finished."""
        with self.lock:
            return self.jobs.get((session, kind))

    def start(self, session: str, job: J, alive: Callable[[], bool] | None = None,
              owner: str | None = None) -> J:
        """Start ``job`` for ``session``, cancelling the session's previous job of its kind; a
        job that loads a causal LM waits its turn in the model queue (``alive``: whether the
        session's tab is still open, so a closed tab's queued job is dropped). A model job is
        refused (:class:`QueueRefused`, nothing started or cancelled) while its ``owner`` (the
        signed-in user) has another model job, or when ``max_queued`` jobs already wait."""
        key = (session, job.KIND)
        if job.needs_model():
            job.queue = self.queue
        if alive is not None:
            job.alive = alive
        job.owner = owner
        with self.lock:
            if job.needs_model():
                self._check_room(key, owner)
            old = self.jobs.get(key)
            if old is not None and old.running:
                old.cancel.set()
            self.jobs[key] = job
            self._prune()
        job.thread = threading.Thread(target=job.run, name=f"delift-{job.KIND}-{session[:8]}",
                                      daemon=True)
        job.thread.start()
        return job

    def _check_room(self, key: tuple[str, str], owner: str | None) -> None:
        """Refuse a new model job for ``key`` (see :meth:`start`); the job it replaces (the
        same session and kind, cancelled when this one starts) counts for neither rule, nor
        does one of the owner's that is cancelled already, or whose session has no tab left (a
        reload or a closed tab: no page can show it or cancel it any more, so it is cancelled
        here). Jobs holding a slot do not count as waiting."""
        others = [j for k, j in self.jobs.items()
                  if k != key and j.running and j.queue is not None]
        mine = []
        for j in others:
            if owner is None or (j.owner or "").lower() != owner.lower() or j.cancel.is_set():
                continue
            if j.alive():
                mine.append(j)
            else:
                j.cancel.set()  # its owner's own job, out of every page's reach
        if mine:
            raise QueueRefused(
                f"{owner} already has a model job ({mine[0].KIND}, "
                f"{'waiting' if mine[0].status == 'queued' else 'running'}) on this "
                "server, in another tab or on another page: one at a time per person on a "
                "shared studio. Cancel it there or wait until it ends.")
        waiting = sum(1 for j in others
                      if id(j) not in self.queue.active and not j.cancel.is_set())
        if waiting >= self.max_queued:
            raise QueueRefused(
                f"The server's model queue is full ({waiting} jobs waiting, "
                f"DELIFT_MAX_QUEUED = {self.max_queued}): try again when one has ended.")

    def _prune(self, max_age: float = 6 * 3600) -> None:
        now = time.time()
        for sid in [s for s, j in self.jobs.items()
                    if not j.running and j.finished and now - j.finished > max_age]:
            del self.jobs[sid]


@st.cache_resource
def job_registry() -> JobRegistry:
    """The process-wide registry (one per server process, shared by sessions by id only), with
    the model queue sized by ``DELIFT_MODEL_JOBS`` (:mod:`studio.served`)."""
    from studio.served import served_settings

    settings = served_settings()
    return JobRegistry(settings.model_jobs, settings.max_queued)


def wait(job: Job, timeout: float = 600.0) -> None:
    """Block until a job ends (tests and scripts)."""
    if job.thread is not None:
        job.thread.join(timeout)


def describe(job: Job) -> dict[str, Any]:
    """A plain summary of a job for display."""
    return {"status": job.status, "stage": job.stage, "done": job.done, "total": job.total,
            "fraction": job.fraction(), "seconds_left": job.seconds_left(),
            "error": job.error}
