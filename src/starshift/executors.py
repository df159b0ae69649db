"""Where a night's frames run: this process, worker processes forked from it, or a dask cluster.

:func:`ordered_map` is how the night loop (:func:`starshift.night.align_night`) runs its
per-frame task over a night's frames, whatever runs them. It yields the results in the order of
the frames, keeps at most ``2 x workers`` frames in flight (memory does not grow with the night's
length), and gives the same results for any executor and any number of workers: the task is a
pure function of the frame's name.

``local`` (the default) forks ``jobs`` worker processes from this one (``jobs=1``: this process
alone). Forked workers start with everything the parent has imported and prepared (the reference
included, whose preparation imports what the per-frame code imports lazily), so a worker costs
no start-up of its own. Ctrl-C and SIGTERM are handled by the run's
process: the workers ignore Ctrl-C, finish the frames in flight, and die with the run's process
even when it is killed with ``kill -9``.

``dask`` runs the frames on a ``dask.distributed`` cluster: a ``LocalCluster`` of ``jobs``
single-threaded worker processes started for the run (``address`` None), or the existing
scheduler at ``address`` (``tcp://host:8786``; ``dask scheduler`` + ``dask worker``, or
dask-jobqueue on SLURM). The task is sent to every worker once. Workers read the frames and write
the shifted frames (the task's ``sink``) themselves, so they must see the same filesystem, at the
same paths, as the run's process (docs/cluster.md).
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from typing import Any

from .errors import StarshiftError

log = logging.getLogger(__name__)

#: the executors, by the name ``executor=`` takes
EXECUTORS = ("local", "dask")
#: what to do when ``executor=dask`` but dask.distributed is not installed
DASK_MISSING = "executor=dask needs dask.distributed: pip install 'starshift[dask]'"
#: how long to keep trying to reach the scheduler at ``dask.address`` (dask's own default is
#: 30 s): long enough for a scheduler starting beside the run, short enough that a wrong
#: address is said soon
CONNECT_TIMEOUT = "20s"


@dataclass(frozen=True)
class Executor:
    """Where frames run: ``kind`` one of :data:`EXECUTORS`; ``address`` the dask scheduler
    (None: a LocalCluster of ``jobs`` workers started for the run). Defaults written here once
    (:class:`starshift.config.AlignConfig` takes them)."""

    kind: str = "local"
    address: str | None = None


def dask_installed() -> bool:
    """Whether ``executor=dask`` can run (dask.distributed importable)."""
    import importlib.util

    return importlib.util.find_spec("distributed") is not None


def ordered_map(task: Callable[[Any], Any], items: Iterable, jobs: int = 1,
                executor: Executor | None = None) -> Iterator:
    """``task(item)`` for every item, yielded in the order of ``items``.

    Parameters
    ----------
    task : callable
        Runs one item. Picklable for ``executor.kind == "dask"`` (it is sent to each worker
        once); for ``local`` it reaches the workers by the fork, unpickled.
    items : iterable
        The items (frame names), in order.
    jobs : int
        Workers: ``local`` forks this many (1: this process alone); ``dask`` starts a
        LocalCluster of this many when ``executor.address`` is None, and otherwise uses every
        worker thread of the cluster at the address.
    executor : Executor, optional
        Where the items run (default: local).

    At most ``2 x workers`` items are in flight. An exception raised by ``task`` is raised here,
    at its item; closing the iterator early (an interruption) waits for the items in flight, so
    nothing is still writing once it returns.
    """
    executor = executor or Executor()
    items = list(items)
    if executor.kind == "dask":
        yield from _dask_map(task, items, jobs, executor.address)
    elif jobs <= 1 or len(items) < 2:
        yield from map(task, items)
    else:
        yield from _fork_map(task, items, jobs)


# --------------------------------------------------------------------------- local (fork)
def cores() -> int:
    """The cores this process may use (the default number of workers)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@contextmanager
def fork_pool(jobs: int, preload: Iterable[str] = ()) -> Iterator[Any]:
    """A :class:`multiprocessing.pool.Pool` of ``jobs`` forked workers for independent pieces
    of pure work of different kinds (the report's images), or None (one job, or no ``fork``
    on this platform: do the work in this process). Workers start like the night loop's
    (:func:`_worker_init`); they compute and return, the caller writes.

    ``preload``: modules to import before forking, once here rather than once per worker.
    Leaving the block normally waits for the workers; an exception stops them at once.
    """
    import multiprocessing as mp

    if jobs <= 1 or "fork" not in mp.get_all_start_methods():
        yield None
        return
    for module in preload:
        importlib.import_module(module)
    with _signals_held():  # a worker forked with them pending would take them
        pool = mp.get_context("fork").Pool(jobs, initializer=_worker_init,
                                           initargs=(os.getpid(),))
    try:
        yield pool
    except BaseException:
        pool.terminate()
        raise
    else:
        pool.close()
    finally:
        pool.join()


_INTERRUPTS = {signal.SIGINT, signal.SIGTERM}


@contextmanager
def _signals_held():
    """Ctrl-C and SIGTERM wait while workers are forked: their handler, run inside the fork's
    hooks, would have its exception ignored (the interruption lost, a traceback printed);
    they are handled right after."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, _INTERRUPTS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _worker_init(parent: int) -> None:
    """A forked worker: Ctrl-C and SIGTERM are the run's process's to handle (it stops the
    workers, then cleans up), SIGTERM ends the worker, and the worker dies with the run's
    process ``parent``, by kill -9 too: an orphaned worker would wait forever, and could write
    a frame into a later run's staging. Linux (prctl PR_SET_PDEATHSIG); elsewhere a worker
    ends when its queue closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _INTERRUPTS)
    if sys.platform.startswith("linux"):
        import ctypes

        with suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died before that
        os._exit(1)


def _fork_map(task, items: list, jobs: int) -> Iterator:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    context = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_set_task,
                             initargs=(task, os.getpid())) as pool:
        pending: deque = deque()
        for item in items:
            with _signals_held():  # the pool forks its workers in submit
                pending.append(pool.submit(_run_task, item))
            if len(pending) >= 2 * jobs:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


_TASK = None  # the worker's task, set once per worker process


def _set_task(task, parent: int) -> None:
    global _TASK
    _TASK = task
    _worker_init(parent)


def _run_task(item):
    return _TASK(item)


# --------------------------------------------------------------------------- dask
def _call(task, item):
    """Runs on a dask worker: the task (sent once, scattered) on one item."""
    return task(item)


def _dask_map(task, items: list, jobs: int, address: str | None) -> Iterator:
    if not dask_installed():
        raise StarshiftError(DASK_MISSING)
    from distributed import Client, KilledWorker, LocalCluster, wait

    with ExitStack() as stack:
        stack.enter_context(_quiet("distributed", logging.ERROR))  # not the run's news
        if address is None:
            with _workers_starting():
                cluster = stack.enter_context(LocalCluster(
                    n_workers=max(1, jobs), threads_per_worker=1, processes=True,
                    dashboard_address=None, memory_limit=0, silence_logs=logging.CRITICAL))
                client = stack.enter_context(Client(cluster))
        else:
            try:
                client = stack.enter_context(Client(address, timeout=CONNECT_TIMEOUT))
            except (OSError, TimeoutError, ValueError) as exc:
                raise StarshiftError(
                    f"dask.address={address}: cannot reach the scheduler ({exc}); start one "
                    "('dask scheduler', then 'dask worker ADDRESS') or fix the address") from exc
        workers = client.scheduler_info().get("workers", {})
        slots = max(1, sum(int(w.get("nthreads", 1)) for w in workers.values()))
        shared = client.scatter(task, broadcast=True, hash=False)
        pending: deque = deque()
        try:
            for item in items:
                pending.append((item, client.submit(_call, shared, item, pure=False)))
                if len(pending) >= 2 * slots:
                    yield _result(*pending.popleft(), KilledWorker)
            while pending:
                yield _result(*pending.popleft(), KilledWorker)
        finally:
            if pending and address is not None:  # a LocalCluster's workers stop with it
                with suppress(Exception):
                    wait([f for _, f in pending])
            for _, future in pending:
                future.cancel()


@contextmanager
def _workers_starting():
    """Around the start of a LocalCluster. Its worker processes start with Ctrl-C ignored (they
    inherit it): a terminal's Ctrl-C reaches the whole process group, and the run's process
    stops the workers itself, so they print no traceback of their own. A SIGTERM arriving
    meanwhile is raised when it ends, by its own handler: dask cannot close a cluster cut short
    while its workers start (it asserts, at exit). A Ctrl-C meanwhile (a few seconds) is
    ignored, like the workers do. Only in the main thread, where signal handlers live."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[int] = []
    before = {signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN),
              signal.SIGTERM: signal.signal(signal.SIGTERM,
                                            lambda signum, frame: arrived.append(signum))}
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
        for sig in dict.fromkeys(arrived):
            signal.raise_signal(sig)


@contextmanager
def _quiet(name: str, level: int = logging.WARNING):
    """Log records of logger ``name`` below ``level`` are dropped while this lasts."""
    logger = logging.getLogger(name)
    before = logger.level
    logger.setLevel(max(level, before))
    try:
        yield
    finally:
        logger.setLevel(before)


def _result(item, future, killed: type[BaseException]):
    try:
        return future.result()
    except killed as exc:
        raise StarshiftError(f"{item}: the dask worker running it died ({exc}); check the "
                             "workers' memory and logs") from exc
