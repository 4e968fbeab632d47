"""Process-level runtime settings: CPU threads for torch, and interrupts (SIGINT / SIGTERM) as exceptions.

``set_threads(n)`` is what every model-running ``kvprism`` command calls for ``--threads`` (default:
``$OMP_NUM_THREADS`` if set, else the number of physical cores available to the process). :func:`interrupts_as_exceptions` turns SIGINT and SIGTERM into
:class:`Interrupted` (so ``finally`` blocks, locks and the "aborted after N of M cells" message run on both), and
:func:`deferred_signals` holds them back during a short critical section such as appending one result line.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "Interrupted",
    "default_threads",
    "deferred_signals",
    "interrupts_as_exceptions",
    "physical_cores",
    "set_threads",
]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived (under :func:`interrupts_as_exceptions`). ``exit_code`` = 128 + signal number."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def physical_cores() -> int:
    """Physical CPU cores this process may run on (hyper-threads counted once; falls back to the logical count)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1
    cores = set()
    for cpu in cpus:
        topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add((topo.joinpath("physical_package_id").read_text().strip(), topo.joinpath("core_id").read_text()))
        except OSError:
            return max(1, len(cpus))
    return max(1, len(cores))


def default_threads() -> int:
    """``$OMP_NUM_THREADS`` when it is set to an int >= 1, else :func:`physical_cores`."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(env) if env.isdigit() and int(env) >= 1 else physical_cores()


def set_threads(n: int | None = None) -> int:
    """Set torch's intra-op CPU threads to ``n`` (default: :func:`default_threads`, i.e. ``$OMP_NUM_THREADS`` or the
    physical cores); returns the number set. On a machine whose cores are busy with other work, fewer threads can be
    much faster (see ``benchmarks/threads_decode.py``).

    Raises:
        ConfigError: ``n`` is not an int >= 1.
    """
    from kvprism.errors import ConfigError

    if n is None:
        n = default_threads()
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"threads = {n!r} is invalid; allowed range: an int >= 1")
    import torch

    torch.set_num_threads(n)
    return n


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def interrupts_as_exceptions() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise :class:`Interrupted` (previous handlers restored after it).
    A no-op outside the main thread."""
    if not _in_main_thread():
        yield
        return

    def _raise(signum: int, frame: object) -> None:
        raise Interrupted(signum)

    old = {s: signal.getsignal(s) for s in _SIGNALS}
    for s in _SIGNALS:
        signal.signal(s, _raise)
    try:
        yield
    finally:
        for s, h in old.items():
            if h is not None:
                signal.signal(s, h)


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold SIGINT / SIGTERM back for the block and deliver the first one that arrived to the previous handler
    right after it (so the block is never cut in half). A no-op outside the main thread."""
    if not _in_main_thread():
        yield
        return
    pending: list[int] = []
    old = {s: signal.getsignal(s) for s in _SIGNALS}
    for s in _SIGNALS:
        signal.signal(s, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
        if pending:
            s = pending[0]
            h = old[s]
            if callable(h):
                h(s, None)
            elif h in (signal.SIG_DFL, None):
                os.kill(os.getpid(), s)
