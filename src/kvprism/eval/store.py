"""The result store of an evaluation directory: one JSON line per finished cell, crash-safe, resumable, one writer.

Layout of a results directory (``--out``)::

    results.jsonl   one JSON object per finished cell, appended + flushed + fsynced (never rewritten in place)
    run.json        versions, command lines and the resolved settings of every (mode, configuration) stored
    .lock           fcntl.flock target; holds the pid of the process writing the store

Guarantees:

- **Identity.** A cell's ``key`` (:func:`cell_key`) holds its grid coordinates (task, haystack, values, context,
  depth exactly, seed, configuration name, mode) and :func:`stable_hash` of everything else that can change its
  result (:func:`settings_digest`): the resolved selection settings (a photonic preset by content, not by name),
  decode settings, the model's content hash (:func:`model_identity`) and :data:`RESULT_VERSION`. A cell is reused
  only when its key matches exactly.
- **One writer.** :meth:`ResultStore.lock` takes an exclusive, non-blocking ``flock``; a second writer fails at once
  with :class:`StoreLockedError` naming the holder's pid. Readers need no lock (lines are appended whole).
- **Durability.** :meth:`ResultStore.append` writes one whole line with SIGINT/SIGTERM deferred and fsyncs it;
  :meth:`ResultStore.repair` cuts a torn last line left by a crash (kill -9, power loss) before appends resume.
- **Corruption is loud.** :func:`read_cells` raises :class:`CorruptStoreError` naming file and line for an unreadable
  line that is not the torn tail, or a row missing / mistyping a required field; ``skip_corrupt=True`` skips and counts
  those lines instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import errno
import fcntl
import hashlib
import json
import os
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvprism.atomic import atomic_write
from kvprism.errors import KvprismError
from kvprism.migrate import migrate_backend
from kvprism.runtime import deferred_signals

__all__ = [
    "CORRUPT_SUFFIX",
    "LOCK_FILE",
    "REQUIRED_FIELDS",
    "RESULTS_FILE",
    "RESULT_VERSION",
    "RUN_FILE",
    "CorruptStoreError",
    "ResultStore",
    "SettingsMismatchError",
    "StoreLockedError",
    "StoreRead",
    "append_result",
    "cell_key",
    "check_out_dir",
    "check_store",
    "dedupe",
    "diff_settings",
    "jsonable",
    "model_identity",
    "read_cells",
    "read_results",
    "repair_results",
    "repair_store",
    "settings_digest",
    "stable_hash",
    "versions",
]

RESULTS_FILE = "results.jsonl"
RUN_FILE = "run.json"
LOCK_FILE = ".lock"

#: Version of what a cell's numbers mean. Bump it when a change to kvprism changes the results of unchanged settings
#: (metric definitions, task construction, decode loop); every stored cell then gets a new key and is recomputed.
RESULT_VERSION = 2

#: Fields every stored cell has, with their JSON types (checked by :func:`read_cells` with ``required=...``).
#: Cells written before the evaluation vocabulary settled carry the method as ``backend``; :func:`read_cells` reads
#: it as ``method`` (:func:`kvprism.migrate.migrate_backend`).
REQUIRED_FIELDS: dict[str, tuple[type, ...]] = {
    "key": (str,),
    "mode": (str,),
    "config": (str,),
    "method": (str,),
    "context": (int,),
    "depth": (int, float),
    "prefill_id": (str,),
    "prefill_s": (int, float),
    "decode_s": (int, float),
    "decode_steps": (int,),
}


class StoreLockedError(KvprismError):
    """Another process holds the store's write lock."""


class CorruptStoreError(KvprismError):
    """A line of ``results.jsonl`` is unreadable or has the wrong shape (message names file, line and field)."""


class SettingsMismatchError(KvprismError):
    """The store holds cells of a configuration computed under other settings."""


# ------------------------------------------------------------------------------------------------------ hashing
def jsonable(x: Any) -> Any:
    """Tensors / numpy values / tuples / dataclasses / paths -> JSON types; NaN and inf -> None."""
    if isinstance(x, Mapping):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return jsonable(dataclasses.asdict(x))
    if isinstance(x, Path):
        return str(x)
    if hasattr(x, "tolist"):  # torch tensor, numpy array or scalar
        return jsonable(x.tolist())
    if isinstance(x, float) and (x != x or x in (float("inf"), float("-inf"))):
        return None
    return x


def _canonical(x: Any) -> Any:
    """Like :func:`jsonable` but floats keep their exact value (``repr``), so 0.3 and 0.30001 hash differently."""
    if isinstance(x, Mapping):
        return {str(k): _canonical(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_canonical(v) for v in x]
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return _canonical(dataclasses.asdict(x))
    if isinstance(x, Path):
        return str(x)
    if hasattr(x, "tolist"):
        return _canonical(x.tolist())
    if isinstance(x, float):
        return {"float": repr(x)}
    if x is None or isinstance(x, (bool, int, str)):
        return x
    raise TypeError(f"cannot hash a value of type {type(x).__name__} ({x!r}) into a cell key")


def stable_hash(obj: Any, length: int = 16) -> str:
    """Hex SHA-256 (first ``length`` digits) of a canonical JSON form of ``obj``: independent of dict order,
    process, platform and Python version; floats by exact value."""
    text = json.dumps(_canonical(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:length]


def settings_digest(settings: Mapping[str, Any]) -> str:
    """The hash that goes into a cell key: :func:`stable_hash` of the settings with :data:`RESULT_VERSION`."""
    return stable_hash({"result_version": RESULT_VERSION, **settings})


def cell_key(point: Any, haystack: str, values: str, config: str, mode: str, settings_hash: str = "") -> str:
    """The key of one cell: ``task|haystack|values|context|depth|seed|config|mode|settings_hash``.

    ``point`` needs ``task``, ``context``, ``depth`` and ``seed`` attributes; the depth is written exactly
    (``repr``), so distinct depths never share a key.
    """
    depth = repr(float(point.depth))
    key = f"{point.task}|{haystack}|{values}|{point.context}|{depth}|{point.seed}|{config}|{mode}"
    return f"{key}|{settings_hash}" if settings_hash else key


def _flatten(x: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(x, Mapping):
        out: dict[str, Any] = {}
        for k, v in x.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: x}


def diff_settings(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Readable differences of two settings mappings, one per flattened field: ``"selection.block_size 64 -> 32"``
    (long values are shown as ``differs``)."""
    a, b = _flatten(jsonable(old)), _flatten(jsonable(new))
    out = []
    for name in sorted(set(a) | set(b)):
        va, vb = a.get(name, "<absent>"), b.get(name, "<absent>")
        if va != vb:
            sa, sb = json.dumps(va), json.dumps(vb)
            out.append(f"{name} {sa} -> {sb}" if len(sa) + len(sb) <= 60 else f"{name} differs")
    return out


# ------------------------------------------------------------------------------------------------ model identity
_DIGESTS: dict[tuple[str, int, int, int], str] = {}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")


def _digest_cache_path() -> Path:
    env = os.environ.get("KVPRISM_CACHE")
    return (Path(env).expanduser() if env else Path.home() / ".cache" / "kvprism") / "file-digests.json"


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's content, cached by (path, size, mtime, inode) in memory and in
    ``$KVPRISM_CACHE/file-digests.json`` (a model's weights are hashed once, not on every run)."""
    path = Path(path).resolve()
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
    if key in _DIGESTS:
        return _DIGESTS[key]
    cache_path = _digest_cache_path()
    text_key = "|".join(map(str, key))
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cache = {}
    if not isinstance(cache, dict):
        cache = {}
    digest = cache.get(text_key)
    if not isinstance(digest, str):
        with path.open("rb") as fh:
            digest = hashlib.file_digest(fh, "sha256").hexdigest()
        cache[text_key] = digest
        with contextlib.suppress(OSError):  # the cache is an optimisation only
            atomic_write(cache_path, json.dumps(cache, indent=0) + "\n")
    _DIGESTS[key] = digest
    return digest


def model_identity(model: Any) -> dict[str, Any]:
    """What identifies a loaded model's results: ``{"path", "source", "config_sha256", "weights_sha256"}``.

    For a model loaded from a local folder (``config.name_or_path``), the SHA-256 of ``config.json`` and of every
    weight file (safetensors / bin / gguf) in it; otherwise the hash of the config's content and of every parameter
    and buffer (``source = "parameters"``, e.g. a model built with ``from_config``). ``path`` is informative only: it
    is not part of :meth:`ResultStore` keys (the same weights elsewhere give the same results).
    """
    cfg = getattr(model, "config", None)
    where = str(getattr(cfg, "_name_or_path", "") or getattr(model, "name_or_path", "") or "")
    folder = Path(where) if where else None
    if folder is not None and folder.is_dir() and (folder / "config.json").is_file():
        weights = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(_WEIGHT_SUFFIXES))
        if weights:
            return {
                "path": str(folder.resolve()),
                "source": "files",
                "config_sha256": file_digest(folder / "config.json"),
                "weights_sha256": stable_hash({p.name: file_digest(p) for p in weights}, length=64),
            }
    import torch

    conf = cfg.to_dict() if hasattr(cfg, "to_dict") else {}
    conf = {k: v for k, v in conf.items() if not k.startswith("_") and k != "transformers_version"}
    h = hashlib.sha256()
    state = model.state_dict() if hasattr(model, "state_dict") else {}
    for name in sorted(state):
        t = state[name].detach()
        h.update(name.encode())
        h.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
        t = t.cpu().contiguous()
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return {
        "path": where,
        "source": "parameters",
        "config_sha256": stable_hash(jsonable(conf), length=64),
        "weights_sha256": h.hexdigest(),
    }


def versions() -> dict[str, str]:
    """Versions of kvprism, Python, torch and transformers (recorded in ``run.json``)."""
    from importlib.metadata import PackageNotFoundError, version

    import kvprism

    out = {"kvprism": kvprism.__version__, "result_version": str(RESULT_VERSION), "python": sys.version.split()[0]}
    for pkg in ("torch", "transformers"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


# ------------------------------------------------------------------------------------------------------ reading
@dataclass
class StoreRead:
    """What :func:`read_cells` found: ``rows`` (in file order, with ``line``: their 1-based line numbers),
    ``skipped`` (``(line, reason)`` of corrupt lines skipped with ``skip_corrupt``) and ``torn_tail`` (an incomplete
    last line was ignored: a crash or a concurrent writer mid-append)."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    skipped: list[tuple[int, str]] = field(default_factory=list)
    torn_tail: bool = False


def _shape_error(row: Any, required: Mapping[str, tuple[type, ...]]) -> str | None:
    if not isinstance(row, dict):
        return f"is a JSON {type(row).__name__}, not an object"
    for name, types in required.items():
        if name not in row:
            return f"field {name!r} is missing"
        v = row[name]
        if isinstance(v, bool) or not isinstance(v, types):
            allowed = " or ".join(t.__name__ for t in types)
            return f"field {name!r} = {v!r} has type {type(v).__name__}; expected {allowed}"
    return None


def read_cells(
    path: str | Path,
    *,
    skip_corrupt: bool = False,
    required: Mapping[str, tuple[type, ...]] | None = None,
) -> StoreRead:
    """Read a ``results.jsonl``.

    Args:
        path: the file; a missing file reads as empty.
        skip_corrupt: skip (and list in ``skipped``) unreadable or misshapen lines instead of raising.
        required: field -> allowed JSON types every row must have (e.g. :data:`REQUIRED_FIELDS`); ``None``: only
            require JSON objects.

    Raises:
        CorruptStoreError: (without ``skip_corrupt``) a line that is not valid JSON and is not the torn last line, or
            a row of the wrong shape; the message names the file, the line and the field.
    """
    path = Path(path)
    out = StoreRead()
    if not path.exists():
        return out
    data = path.read_bytes()
    lines = data.split(b"\n")
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        lineno = i + 1
        is_tail = i == len(lines) - 1  # not followed by a newline: an append in progress or a crash mid-write
        try:
            row = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            rest_empty = not any(x.strip() for x in lines[i + 1 :])
            if is_tail or rest_empty:
                out.torn_tail = True
                break
            if skip_corrupt:
                out.skipped.append((lineno, f"not valid JSON ({exc})"))
                continue
            raise CorruptStoreError(
                f"{path} line {lineno} is corrupt (not valid JSON: {exc}); fix or delete that line, run "
                f"`kvprism store repair {path.parent}` or pass --skip-corrupt"
            ) from None
        if is_tail:  # complete JSON but no newline yet: treat as in flight
            out.torn_tail = True
            break
        if isinstance(row, dict):
            row = migrate_backend(row, "method")  # a cell stored under the older field name
        problem = _shape_error(row, required or {})
        if problem is not None:
            if skip_corrupt:
                out.skipped.append((lineno, problem))
                continue
            raise CorruptStoreError(
                f"{path} line {lineno}: {problem}; fix or delete that line, run `kvprism store repair {path.parent}` "
                "or pass --skip-corrupt"
            )
        out.rows.append(row)
        out.lines.append(lineno)
    return out


def read_results(path: str | Path) -> list[dict[str, Any]]:
    """All complete cells of a ``results.jsonl`` (an incomplete last line is ignored; a corrupt middle line raises
    :class:`CorruptStoreError`)."""
    return read_cells(path).rows


def dedupe(rows: Iterable[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """Keep the first row of every ``key``; returns (rows, number of duplicates dropped)."""
    seen: set[str] = set()
    out, dropped = [], 0
    for r in rows:
        k = r.get("key")
        if k in seen:
            dropped += 1
            continue
        seen.add(k)
        out.append(r)
    return out, dropped


def repair_results(path: str | Path) -> bool:
    """Cut a partial last line (a crash during a write) so appends stay line-aligned; atomic rewrite.

    Returns:
        True if the file was changed.

    Raises:
        CorruptStoreError: a corrupt line that is not the last one (naming file and line).
    """
    path = Path(path)
    if not path.exists():
        return False
    data = path.read_bytes()
    if not data:
        return False
    lines = data.split(b"\n")
    good: list[bytes] = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        complete = i < len(lines) - 1  # followed by a newline
        try:
            json.loads(line)
        except (ValueError, UnicodeDecodeError):
            complete = False
        if not complete:
            if i < len(lines) - 1 and any(x.strip() for x in lines[i + 1 :]):
                raise CorruptStoreError(
                    f"{path} line {i + 1} is corrupt (not the last line); run `kvprism store repair {path.parent}` "
                    "(moves bad lines to a side file) or pass --skip-corrupt"
                )
            break
        good.append(line)
    fixed = b"".join(line + b"\n" for line in good)
    if fixed == data:
        return False
    atomic_write(path, fixed)
    return True


#: where :func:`repair_store` moves the lines it takes out of ``results.jsonl`` (appended, never overwritten)
CORRUPT_SUFFIX = ".corrupt"


def repair_store(out_dir: str | Path) -> list[tuple[int, str]]:
    """Move every corrupt or misshapen line of ``<out_dir>/results.jsonl`` (not valid JSON, a required field missing
    or of the wrong type, :data:`REQUIRED_FIELDS`) to ``results.jsonl.corrupt`` and keep the rest; a torn last line
    is cut. Both files are written atomically; run it with no writer on the store.

    Returns:
        ``(line, reason)`` of each line moved.
    """
    path = Path(out_dir) / RESULTS_FILE
    read = read_cells(path, skip_corrupt=True, required=REQUIRED_FIELDS)
    if not read.skipped and not read.torn_tail:
        return []
    raw = path.read_bytes().split(b"\n")
    keep = set(read.lines)
    bad = {line for line, _ in read.skipped}
    side = path.with_name(path.name + CORRUPT_SUFFIX)
    if bad:
        old = side.read_bytes() if side.exists() else b""
        atomic_write(side, old + b"".join(raw[n - 1] + b"\n" for n in sorted(bad)))
    atomic_write(path, b"".join(raw[n - 1] + b"\n" for n in sorted(keep)))
    return read.skipped


def check_store(out_dir: str | Path, *, skip_corrupt: bool = False) -> list[tuple[int, str]]:
    """Before a run resumes ``out_dir``: every stored line must read with the fields a report needs
    (:class:`CorruptStoreError` naming file, line and field, and the way on), or, with ``skip_corrupt``, the bad
    lines are moved aside (:func:`repair_store`; returns them)."""
    path = Path(out_dir) / RESULTS_FILE
    if not path.exists():
        return []
    if skip_corrupt:
        return repair_store(out_dir)
    read_cells(path, required=REQUIRED_FIELDS)
    return []


def append_result(path: str | Path, record: Mapping[str, Any]) -> None:
    """Append one JSON line and make it durable (flush + fsync) before returning; SIGINT / SIGTERM arriving during
    the write are delivered after it, so an interrupt never leaves half a line."""
    line = json.dumps(jsonable(record), separators=(",", ":"), allow_nan=False) + "\n"
    data = line.encode("utf-8")
    with deferred_signals():
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            if exc.filename is None:  # os.write / os.fsync name no file: say which one
                exc.filename = str(path)
            raise


def check_out_dir(out_dir: str | Path, option: str = "--out") -> Path:
    """Create ``out_dir`` and prove it is writable (raises ``KvprismError`` naming ``option`` otherwise)."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-probe-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise KvprismError(f"{option} {out} is not a writable directory ({exc.strerror or exc})") from exc
    return out


# -------------------------------------------------------------------------------------------------------- store
class ResultStore:
    """One results directory (see the module docstring).

    Typical writer::

        store = ResultStore(out_dir)
        with store.lock():
            store.repair()
            store.check_settings({"niah/exact-k8": settings})
            store.record_invocation(argv, {"niah/exact-k8": settings}, model=...)
            done = store.done_keys()
            ...
            store.append(record)
    """

    def __init__(self, out_dir: str | Path, *, create: bool = True) -> None:
        self.dir = check_out_dir(out_dir) if create else Path(out_dir)
        self.results = self.dir / RESULTS_FILE
        self.run_file = self.dir / RUN_FILE
        self.lock_file = self.dir / LOCK_FILE
        self._lock_fd: int | None = None

    # -- locking
    def holder_pid(self) -> int | None:
        """The pid recorded in the lock file (the last process that locked the store), if any."""
        try:
            text = self.lock_file.read_text().strip()
        except OSError:
            return None
        return int(text) if text.isdigit() else None

    @contextlib.contextmanager
    def lock(self) -> Iterator[ResultStore]:
        """Hold the exclusive write lock for the block.

        Raises:
            StoreLockedError: another process (or another open of this store) holds it; names the holder's pid.
        """
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise KvprismError(f"cannot lock {self.lock_file} ({exc.strerror or exc})") from exc
            pid = self.holder_pid()
            who = f"process {pid}" if pid is not None else "another process"
            raise StoreLockedError(
                f"{self.dir} is being written by {who} (lock {self.lock_file}); wait for it to finish or use another "
                "--out"
            ) from None
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            self._lock_fd = fd
            yield self
        finally:
            self._lock_fd = None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    @property
    def locked(self) -> bool:
        """Whether this object currently holds the write lock."""
        return self._lock_fd is not None

    # -- cells
    def repair(self) -> bool:
        """:func:`repair_results` of this store (call with the lock held)."""
        return repair_results(self.results)

    def read(self, *, skip_corrupt: bool = False, required: Mapping[str, tuple[type, ...]] | None = None) -> StoreRead:
        """:func:`read_cells` of this store."""
        return read_cells(self.results, skip_corrupt=skip_corrupt, required=required)

    def done_keys(self) -> set[str]:
        """Keys of all finished cells."""
        return {r["key"] for r in self.read().rows if "key" in r}

    def append(self, record: Mapping[str, Any]) -> None:
        """:func:`append_result` (requires the lock)."""
        if not self.locked:
            raise KvprismError(f"{self.results}: append without holding the store lock")
        append_result(self.results, record)

    # -- run.json
    def run_meta(self) -> dict[str, Any]:
        """Contents of ``run.json`` (empty if there is none).

        Raises:
            CorruptStoreError: ``run.json`` is not valid JSON.
        """
        if not self.run_file.exists():
            return {}
        try:
            meta = json.loads(self.run_file.read_text())
        except ValueError as exc:
            raise CorruptStoreError(f"{self.run_file} is not valid JSON ({exc}); fix or delete it") from None
        if not isinstance(meta, dict):
            raise CorruptStoreError(f"{self.run_file} must hold a JSON object")
        return meta

    def check_settings(self, settings: Mapping[str, Mapping[str, Any]]) -> None:
        """Refuse to resume when a (mode, configuration) already in the store was computed under other settings.

        Args:
            settings: ``"<mode>/<config name>" -> settings`` of the cells about to be run.

        Raises:
            SettingsMismatchError: one line naming the configuration and the differing fields.
        """
        stored = self.run_meta().get("settings", {})
        rows = self.read().rows
        for name, new in settings.items():
            mode, _, config = name.partition("/")
            new_hash = settings_digest(new)
            old = stored.get(name)
            if old is not None and old.get("hash") != new_hash:
                diff = diff_settings(old.get("settings", {}), new) or ["result_version"]
                raise SettingsMismatchError(
                    f"{self.dir} holds {config} ({mode}) cells computed under other settings ({'; '.join(diff)}); "
                    "use another --out, or the settings they were computed with"
                )
            legacy = [
                r for r in rows if r.get("config") == config and r.get("mode") == mode and not r.get("settings_hash")
            ]
            if legacy and old is None:
                raise SettingsMismatchError(
                    f"{self.dir} holds {len(legacy)} {config} ({mode}) cells without a record of their settings "
                    "(written by an older kvprism); use another --out"
                )

    def record_invocation(
        self,
        argv: Sequence[str],
        settings: Mapping[str, Mapping[str, Any]],
        **info: Any,
    ) -> None:
        """Add this invocation (time, command line, versions, ``info``) and the settings of its configurations to
        ``run.json`` (atomic rewrite; call with the lock held)."""
        meta = self.run_meta()
        now = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
        meta.setdefault("created", now)
        meta.setdefault("kvprism_result_version", RESULT_VERSION)
        for k, v in info.items():
            meta.setdefault(k, jsonable(v))
        stored = meta.setdefault("settings", {})
        for name, s in settings.items():
            stored.setdefault(name, {"hash": settings_digest(s), "settings": jsonable(s)})
        meta.setdefault("invocations", []).append(
            {"time": now, "argv": list(argv), "versions": versions(), "pid": os.getpid(), **jsonable(info)}
        )
        atomic_write(self.run_file, json.dumps(meta, indent=1) + "\n")
