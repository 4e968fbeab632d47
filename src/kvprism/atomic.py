"""Crash-safe file output (kvprism.atomic): every file kvprism writes appears complete or not at all.

:func:`atomic_write` writes into a temporary file beside the target (created with mode ``0o666`` so the process
umask applies exactly as for a plain ``open``; an existing target's permission bits are kept), fsyncs it and renames
it over the target. :class:`AtomicBatch` stages several files the same way and renames them only once all of them
were written, so a failure while writing (``OSError``: disk full, I/O error) leaves every previous file untouched.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = ["AtomicBatch", "atomic_write", "fsync_dir", "remove_leftovers"]

#: what :func:`atomic_write` accepts as content: text, bytes, or a function writing the file at the path it is given
Content = str | bytes | Callable[[Path], object]


def fsync_dir(directory: str | Path) -> None:
    """fsync a directory so a rename inside it survives a power loss (no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def remove_leftovers(directory: str | Path) -> list[Path]:
    """Delete the temporary files (``.<name>.<pid>.<hex>.tmp``) that a writer killed mid-write left in
    ``directory``: those whose pid no longer runs (a live writer's files are kept). Runs before every write into a
    directory; returns what it removed."""
    removed = []
    with contextlib.suppress(OSError):
        for tmp in Path(directory).glob(".*.tmp"):
            parts = tmp.name.rsplit(".", 3)  # [".<name>", "<pid>", "<hex>", "tmp"]
            if len(parts) != 4 or not parts[1].isdigit() or int(parts[1]) == os.getpid() or _alive(int(parts[1])):
                continue
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
                removed.append(tmp)
    return removed


def _named(exc: OSError, path: Path) -> OSError:
    """``exc`` naming ``path`` when the failing call named no file (``os.write``, ``os.fsync``)."""
    if exc.filename is None:
        exc.filename = str(path)
    return exc


def _stage(path: Path, content: Content) -> Path:
    """Write ``content`` into a new temporary file beside ``path`` (fsynced); returns the temporary path."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _named(exc, path.parent) from None
    remove_leftovers(path.parent)
    tmp = _temp_path(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for open(path, "w")
    except OSError as exc:
        exc.filename = str(path)  # the target, not the temporary name
        raise
    try:
        with contextlib.suppress(FileNotFoundError):
            os.chmod(fd, stat.S_IMODE(os.stat(path).st_mode))  # keep an existing file's permissions
        if callable(content):
            os.close(fd)
            fd = -1
            content(tmp)
        else:
            data = content.encode("utf-8") if isinstance(content, str) else content
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
        if fd < 0:
            fd = os.open(tmp, os.O_RDONLY)
        os.fsync(fd)
    except BaseException as exc:
        if fd >= 0:
            os.close(fd)
            fd = -1
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            _named(exc, path)
        raise
    finally:
        if fd >= 0:
            os.close(fd)
    return tmp


def atomic_write(path: str | Path, content: Content) -> Path:
    """Write ``path`` atomically: temp file beside it (umask respected), fsync, rename, fsync of the directory.

    Args:
        path: the target file; its folder is created if missing.
        content: ``str`` (written as UTF-8), ``bytes``, or a callable ``write(tmp_path)`` that writes the file itself
            (e.g. ``lambda p: fig.savefig(p, format="png")``; give the format explicitly, the temp name ends in .tmp).

    Returns:
        ``path`` as a ``Path``. On any exception the target is unchanged and no temporary file is left.
    """
    path = Path(path)
    tmp = _stage(path, content)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


class AtomicBatch:
    """Stage several files, then replace all targets together: all new files or (on an error) all old ones.

    ::

        with AtomicBatch() as batch:
            batch.write(d / "summary.json", text)
            batch.write(d / "plot.png", lambda p: fig.savefig(p, format="png"))
        # renamed here, only if the block finished without an exception

    Renames do not allocate space, so once every file is staged the commit cannot fail for a full disk.
    """

    def __init__(self) -> None:
        self._staged: list[tuple[Path, Path]] = []  # (tmp, target)

    def write(self, path: str | Path, content: Content) -> Path:
        """Stage ``content`` for ``path`` (see :func:`atomic_write` for ``content``); returns ``path``."""
        path = Path(path)
        self._staged.append((_stage(path, content), path))
        return path

    def commit(self) -> list[Path]:
        """Rename every staged file over its target; returns the targets in staging order."""
        done = []
        for tmp, path in self._staged:
            os.replace(tmp, path)
            done.append(path)
        for parent in {p.parent for p in done}:
            fsync_dir(parent)
        self._staged = []
        return done

    def discard(self) -> None:
        """Delete the staged temporary files (targets untouched)."""
        for tmp, _ in self._staged:
            tmp.unlink(missing_ok=True)
        self._staged = []

    def __enter__(self) -> AtomicBatch:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()

    def __iter__(self) -> Iterator[Path]:
        return iter(p for _, p in self._staged)
