"""Forked worker processes for independent pieces of pure work (the report's images, the
sample's frames).

Forked, so a worker starts with what this process has imported (nothing is imported again);
workers ignore Ctrl-C (the calling process handles it and stops them) and die with the calling
process, by kill -9 too. They compute and return; the calling process writes every file, so a
stopped worker leaves nothing behind.
"""

from __future__ import annotations

import importlib
import multiprocessing as mp
import os
import signal
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress

_INTERRUPTS = {signal.SIGINT, signal.SIGTERM}


def cores() -> int:
    """The cores this process may use (the default number of workers)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@contextmanager
def fork_pool(jobs: int, preload: Iterable[str] = ()) -> Iterator[mp.pool.Pool | None]:
    """A :class:`multiprocessing.pool.Pool` of ``jobs`` forked workers, or None (one job, or
    no ``fork`` on this platform: do the work in this process).

    ``preload``: modules to import before forking, once here rather than once per worker.
    Leaving the block normally waits for the workers; an exception stops them at once.
    """
    if jobs <= 1 or "fork" not in mp.get_all_start_methods():
        yield None
        return
    for module in preload:
        importlib.import_module(module)
    with _signals_held():  # a worker forked with them pending would take them
        pool = mp.get_context("fork").Pool(jobs, initializer=_init, initargs=(os.getpid(),))
    try:
        yield pool
    except BaseException:
        pool.terminate()
        raise
    else:
        pool.close()
    finally:
        pool.join()


@contextmanager
def _signals_held():
    """Ctrl-C and SIGTERM wait while the workers are forked (then are handled here)."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, _INTERRUPTS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _init(parent: int) -> None:
    """A worker: Ctrl-C is the calling process's to handle; SIGTERM ends it; it dies with
    ``parent`` (Linux: PR_SET_PDEATHSIG), which would otherwise leave it waiting forever."""
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
