"""Where the prefill units of an evaluation grid run: in this process, or on a Ray cluster.

A grid is cut into *units* -- one prompt (one prefill) with the configurations still missing for it; a unit returns
its cells. The driver (the process that owns the result store) receives each unit's cells as they arrive and writes
them through the one resumable store (:mod:`kvprism.eval.store`), so the executor never writes anything itself:

- :class:`LocalExecutor` (default): the units run one after another in this process, with the model already loaded;
  nothing imports Ray.
- :class:`RayExecutor`: ``workers`` Ray actors, each building its worker once (``make_worker()``: load the model,
  set up the evaluator) and then taking units one at a time; at most one unit in flight per worker. An actor that
  dies mid-unit is restarted by Ray and the unit retried there (``max_restarts`` / ``max_task_retries``), so a unit
  returns its cells exactly once to the driver; a unit whose cells were already stored is skipped by the driver's
  store key, so even a retry after a driver restart cannot duplicate a cell.

Both take ``make_worker`` and call it once per worker and :meth:`run` call; inside ``with executor.session():`` the
workers (and Ray) stay up across the calls that pass the same ``make_worker`` object, as the ask/tell batches of a
design search do. Cells are identical to the in-process run at the same torch
thread count: a unit's result depends only on the unit (its seeds are part of it), not on the worker that computed
it.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from kvprism.errors import ConfigError, KvprismError

__all__ = ["EXECUTORS", "LocalExecutor", "RayExecutor", "make_executor", "require_ray"]

U = TypeVar("U")
#: a worker: one unit in, its cells out (a list, or an iterator yielding each cell as soon as it is computed)
Worker = Callable[[Any], Iterable[dict[str, Any]]]

EXECUTORS = ("local", "ray")


def require_ray() -> Any:
    """Import Ray, or raise one clear error naming the extra that installs it."""
    try:
        import ray
    except ImportError:
        raise KvprismError(
            "--executor ray needs the 'ray' package: pip install 'kvprism[ray]' (make setup installs it)"
        ) from None
    return ray


class LocalExecutor:
    """Runs every unit in this process with one worker (``make_worker()``, called once per run, or once per
    :meth:`session` for the same ``make_worker``), handing each cell to
    ``on_result`` as soon as the worker yields it (an interrupt loses at most the cell in flight)."""

    name = "local"

    def __init__(self) -> None:
        self._session: list[Any] | None = None  # [make_worker, worker] kept inside session()

    @contextlib.contextmanager
    def session(self) -> Iterator[LocalExecutor]:
        """Build the worker once for every :meth:`run` call that passes the same ``make_worker`` object."""
        self._session = [None, None]
        try:
            yield self
        finally:
            self._session = None

    def run(
        self,
        make_worker: Callable[[], Worker],
        units: Sequence[U],
        on_result: Callable[[U, list[dict[str, Any]]], None],
    ) -> None:
        if self._session is None:
            worker = make_worker()
        else:
            if self._session[0] is not make_worker:
                self._session[:] = [make_worker, make_worker()]
            worker = self._session[1]
        for unit in units:
            for cell in worker(unit):
                on_result(unit, [cell])


class _RayWorker:
    """The Ray actor: sets its torch threads, builds its worker once, then computes units."""

    def __init__(self, make_worker: Callable[[], Worker], threads: int) -> None:
        from kvprism.runtime import set_threads

        set_threads(threads)  # not whatever $OMP_NUM_THREADS the node happens to have
        self._worker = make_worker()

    def pid(self) -> int:
        return os.getpid()

    def run(self, unit: Any) -> tuple[list[dict[str, Any]], float]:
        """The unit's cells and the seconds this worker spent computing them."""
        t0 = time.perf_counter()
        cells = list(self._worker(unit))
        return cells, time.perf_counter() - t0


@dataclass
class RayExecutor(Generic[U]):
    """Fans units out over Ray actors (see module doc).

    Args:
        address: ``None`` starts a local Ray instance for this run (shut down after it); ``"auto"`` joins the cluster
            this node belongs to (``ray start --head`` / ``ray start --address``); ``"HOST:PORT"`` joins that one.
        workers: actors (each holds one loaded model). Default: the cluster's CPUs divided by ``cpus_per_worker``,
            at most the number of units.
        cpus_per_worker, gpus_per_worker: resources each actor reserves (``gpus_per_worker`` may be fractional);
            each actor computes on ``max(1, int(cpus_per_worker))`` torch threads, so a unit's floats do not depend
            on the node it ran on.
        max_restarts: restarts of a dead actor (``-1``: unlimited); its unit in flight is retried on the restarted
            actor.
        init_kwargs: extra ``ray.init`` arguments when this executor starts Ray (e.g. ``num_cpus`` in tests).
    """

    address: str | None = None
    workers: int | None = None
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    max_restarts: int = 3
    init_kwargs: dict[str, Any] | None = None
    name: str = "ray"

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"--workers = {self.workers} is invalid; allowed range: [1, inf)")
        if self.cpus_per_worker <= 0:
            raise ConfigError(f"cpus_per_worker = {self.cpus_per_worker} is invalid; allowed range: (0, inf)")
        if self.gpus_per_worker < 0:
            raise ConfigError(f"--gpus-per-worker = {self.gpus_per_worker} is invalid; allowed range: [0, inf)")
        if self.max_restarts < -1:
            raise ConfigError(f"max_restarts = {self.max_restarts} is invalid; allowed: -1 (unlimited) or >= 0")
        #: pids of the actors of the current run (for diagnostics and tests)
        self.worker_pids: list[int] = []
        self._actors: list[Any] = []
        self._made: Callable[[], Worker] | None = None  # the make_worker the actors were built with
        self._started = False  # this executor called ray.init
        self._handlers: dict[int, Any] = {}
        self._in_session = False
        #: seconds from ``ray.init`` (or the first actor's creation) until every actor built its worker
        self.startup_s = 0.0
        #: per unit of the last run, in completion order: (seconds from submission to its cells arriving here,
        #: seconds the worker computed); their difference is what Ray adds per unit
        self.unit_times: list[tuple[float, float]] = []

    @contextlib.contextmanager
    def session(self) -> Iterator[RayExecutor[U]]:
        """Keep Ray and the actors up across :meth:`run` calls that pass the same ``make_worker`` object (the
        ask/tell batches of a design search): each actor builds its worker once for the session, not once per call.
        Everything is torn down on exit (or when a call fails)."""
        self._in_session = True
        try:
            yield self
        finally:
            self._in_session = False
            self._close()

    def _kill_actors(self, ray: Any) -> None:
        for actor in self._actors:
            ray.kill(actor)
        self._actors, self._made = [], None

    def _close(self) -> None:
        """Kill the actors; shut Ray down if this executor started it (the caller's signal handlers come back)."""
        if self._actors or self._started:
            ray = require_ray()
            self._kill_actors(ray)
            if self._started:
                ray.shutdown()
                self._started = False
                for sig, handler in self._handlers.items():  # ray.init installs its own
                    signal.signal(sig, handler)

    def _start(self, make_worker: Callable[[], Worker], n_units: int) -> None:
        """Start Ray if needed and the actors for ``make_worker`` (replacing actors built for another one)."""
        ray = require_ray()
        if self._actors and self._made is make_worker:
            return
        self._kill_actors(ray)
        t_start = time.perf_counter()
        if not ray.is_initialized():
            self._handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
            kwargs = {"include_dashboard": False, "log_to_driver": False, **(self.init_kwargs or {})}
            ray.init(address=self.address, **kwargs)
            self._started = True
        cls = ray.remote(
            num_cpus=self.cpus_per_worker,
            num_gpus=self.gpus_per_worker,
            max_restarts=self.max_restarts,
            max_task_retries=self.max_restarts,
        )(_RayWorker)
        n = self.workers or max(1, int(ray.cluster_resources().get("CPU", 1) // self.cpus_per_worker))
        if not self._in_session:  # a session's later calls may bring more units
            n = min(n, n_units)
        threads = max(1, int(self.cpus_per_worker))
        self._actors = [cls.remote(make_worker, threads) for _ in range(n)]
        self._made = make_worker
        self.worker_pids = ray.get([a.pid.remote() for a in self._actors])
        self.startup_s = time.perf_counter() - t_start

    def run(
        self,
        make_worker: Callable[[], Worker],
        units: Sequence[U],
        on_result: Callable[[U, list[dict[str, Any]]], None],
    ) -> None:
        """Compute every unit on the actors; ``on_result(unit, cells)`` runs in this process as each unit finishes
        (in completion order). ``make_worker`` must be picklable (a module-level function or a
        ``functools.partial`` of one): every actor calls it once (once per session inside :meth:`session`)."""
        ray = require_ray()
        units = list(units)
        if not units:
            return
        self.unit_times = []
        ok = False
        try:
            self._start(make_worker, len(units))
            queue = collections.deque(units)
            in_flight: dict[Any, tuple[Any, U, float]] = {}

            def submit(actor: Any) -> None:
                if queue:
                    unit = queue.popleft()
                    in_flight[actor.run.remote(unit)] = (actor, unit, time.perf_counter())

            for actor in self._actors:
                submit(actor)
            while in_flight:
                done, _ = ray.wait(list(in_flight), num_returns=1)
                actor, unit, t_sub = in_flight.pop(done[0])
                cells, compute_s = ray.get(done[0])
                self.unit_times.append((time.perf_counter() - t_sub, compute_s))
                on_result(unit, cells)
                submit(actor)
            ok = True
        finally:
            if not (ok and self._in_session):
                self._close()


def make_executor(
    executor: str,
    *,
    address: str | None = None,
    workers: int | None = None,
    gpus_per_worker: float = 0.0,
) -> LocalExecutor | RayExecutor:
    """The executor a CLI ``--executor`` names (``local`` or ``ray``); Ray's options are an error with ``local``."""
    if executor not in EXECUTORS:
        raise ConfigError(f"--executor = {executor!r} is invalid; allowed: {', '.join(EXECUTORS)}")
    if executor == "local":
        given = [n for n, v in (("--address", address), ("--workers", workers)) if v is not None]
        if gpus_per_worker:
            given.append("--gpus-per-worker")
        if given:
            raise ConfigError(f"{', '.join(given)} only apply to --executor ray")
        return LocalExecutor()
    require_ray()
    return RayExecutor(address=address, workers=workers, gpus_per_worker=gpus_per_worker)
