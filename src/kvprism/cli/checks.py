"""The option checks every command runs before it loads a model or starts a capture (one module, no copies).

A command checks its options inside ``with checking():``; any :class:`kvprism.KvprismError` raised there (by these
functions or by the config classes they call) is a bad value: one line, exit status 2 (:class:`BadOption`). What fails
after that block is the work itself (exit status 1). Typer's own checks (types, ``min=``) exit 2 as well.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from kvprism.cli.common import DTYPES, note, selection_option
from kvprism.errors import KvprismError

__all__ = [
    "BadOption",
    "checking",
    "device",
    "dtype",
    "fix_names",
    "gpu_times",
    "input_file",
    "listed",
    "model",
    "model_config",
    "not_with",
    "out_dir",
    "out_file",
    "photonic_file",
    "preset",
    "selection_fields",
    "selection_file",
    "window",
]


class BadOption(KvprismError):
    """A bad option value or combination, found before any work: printed as one line, exit status 2."""

    exit_code = 2


@contextlib.contextmanager
def checking() -> Iterator[None]:
    """Every :class:`KvprismError` raised inside is a bad value (:class:`BadOption`, exit status 2)."""
    try:
        yield
    except BadOption:
        raise
    except KvprismError as exc:
        raise BadOption(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from exc


def listed(text: str, kind: Callable[[str], Any], option: str, *, unique: bool = True) -> list[Any]:
    """``"1,2,3"`` -> ``[kind("1"), ...]``. An empty item (``4,,8``), an empty list or a value ``kind`` refuses is
    a bad value naming ``option``; a repeated value is dropped with a note (``unique``)."""
    items = [t.strip() for t in text.split(",")]
    if not text.strip():
        raise BadOption(f"{option} is empty; give at least one value")
    if any(not t for t in items):
        raise BadOption(f"{option} = {text!r} has an empty item; separate values by single commas")
    try:
        values = [kind(t) for t in items]
    except ValueError as exc:
        raise BadOption(f"{option} = {text!r} is invalid ({exc})") from None
    if not unique:
        return values
    out: list[Any] = []
    for v in values:
        if v in out:
            note(f"{option}: duplicate value {v!r} removed")
        else:
            out.append(v)
    return out


def not_with(given: dict[str, bool], option: str, why: str) -> None:
    """Refuse ``option`` together with any of ``given`` (option name -> whether it was given): ``why`` says what
    ``option`` does instead."""
    clash = [name for name, on in given.items() if on]
    if clash:
        raise BadOption(f"{', '.join(clash)} cannot be combined with {option} ({why})")


def architecture(text: str | None, superblock: int | None) -> Any:
    """The :class:`~kvprism.photonics.architecture.Architecture` of ``--architecture`` / ``--superblock`` (None when
    neither is given); a bad value is a :class:`kvprism.KvprismError` (a usage error inside :func:`checking`)."""
    if text is None and superblock is None:
        return None
    from kvprism.photonics.architecture import Architecture

    return Architecture.parse(text, superblock)


def dtype(value: str) -> str:
    if value not in DTYPES:
        raise BadOption(f"--dtype = {value!r} is invalid; allowed: {', '.join(DTYPES)}")
    return value


def device(value: str, option: str = "--device") -> str:
    """A torch device that exists on this machine (checked before the model loads)."""
    import torch

    try:
        dev = torch.device(value)
    except (RuntimeError, ValueError):
        raise BadOption(f"{option} = {value!r} is not a torch device (examples: cpu, cuda, cuda:1, mps)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "torch was built without CUDA" if torch.version.cuda is None else "no CUDA device is visible"
            raise BadOption(f"{option} = {value!r}: {why}; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise BadOption(f"{option} = {value!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise BadOption(f"{option} = {value!r}: MPS is not available on this machine; use --device cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise BadOption(f"{option} = {value!r}: kvprism runs on cpu, cuda or mps")
    return value


def preset(name: str, option: str = "--preset") -> str:
    """A shipped photonic preset name."""
    from kvprism.photonics.config import PhotonicConfig

    names = PhotonicConfig.presets()
    if name not in names:
        raise BadOption(f"{option} = {name!r} is unknown; presets: {', '.join(names)}")
    return name


def input_file(path: str, option: str, *, suffix: str | None = None, what: str = "file") -> Path:
    """A file that must exist (and end in ``suffix``)."""
    p = Path(path).expanduser()
    if suffix is not None and p.suffix.lower() != suffix and not p.is_dir():
        raise BadOption(f"{option} {path} must be a {what} (*{suffix})")
    if not p.exists():
        raise BadOption(f"{option} {path} does not exist")
    if p.is_dir():
        raise BadOption(f"{option} {path} is a directory; give a {what}")
    if not os.access(p, os.R_OK):
        raise BadOption(f"{option} {path} is not readable")
    return p


def out_dir(path: str, option: str = "--out") -> Path:
    """A directory that can be written (created when missing); a file there is refused."""
    from kvprism.eval.store import check_out_dir

    if Path(path).exists() and not Path(path).is_dir():
        raise BadOption(f"{option} {path} is a file; give a directory")
    return check_out_dir(path, option)


def out_file(path: str, option: str = "--out", *, suffix: str | None = None) -> Path:
    """A file path whose directory can be written (created when missing); a directory there is refused."""
    p = Path(path)
    if p.is_dir():
        raise BadOption(f"{option} {path} is a directory; give a file path, e.g. {p / ('out' + (suffix or ''))}")
    if suffix is not None and p.suffix != suffix:
        raise BadOption(f"{option} {path} must end in {suffix}")
    out_dir(str(p.parent), option)
    return p


def model(name: str, option: str = "--model") -> str:
    """What ``--model`` names, checked without loading it: an existing directory, a ``.gguf`` file, a shipped
    model name or a hub id (a hub id missing from the local cache fails when it loads)."""
    from kvprism.hf.models import QWEN_ALIASES, SMOLLM2_ALIASES

    if name.lower() in SMOLLM2_ALIASES or name.lower() in QWEN_ALIASES:
        return name
    p = Path(name).expanduser()
    if p.is_file() and p.suffix.lower() != ".gguf":
        raise BadOption(f"{option} {name} is a file, not a model; give a model directory or a .gguf file")
    if p.suffix.lower() == ".gguf" and not p.is_file():
        raise BadOption(f"{option} {name} does not exist" + (" (a directory, not a .gguf file)" if p.is_dir() else ""))
    if p.is_dir() and not (p / "config.json").is_file():
        raise BadOption(f"{option} {name} is a directory without config.json; give a folder written by save_pretrained")
    looks_like_path = os.sep in name or name.startswith((".", "~"))
    hub_id = len(name.split("/")) == 2 and all(name.split("/")) and not name.startswith((".", "/", "~"))
    if not p.exists() and looks_like_path and not hub_id:
        raise BadOption(f"{option} {name}: model directory {p.resolve()} does not exist")
    return name


def model_config(name: str) -> Any | None:
    """The model's transformers config without loading its weights (None when it cannot be read that way; the
    model load then reports the problem)."""
    try:
        from transformers import AutoConfig

        from kvprism.hf.models import resolve_model_path

        return AutoConfig.from_pretrained(resolve_model_path(name), local_files_only=True)
    except Exception:
        return None


def window(cfg: Any, tokens: int, what: str) -> None:
    """``tokens`` must fit the model's position window (``cfg`` None: not known yet)."""
    limit = getattr(cfg, "max_position_embeddings", None)
    if limit is not None and tokens > limit:
        raise BadOption(f"{what} = {tokens} exceeds the model's window of {limit} tokens")


def selection_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """Each given SelectionConfig field checked on its own (type, range or choices) by SelectionConfig."""
    if not fields:
        return fields
    from kvprism.errors import ConfigError
    from kvprism.selection import SelectionConfig

    for name, value in fields.items():
        try:
            SelectionConfig(**{name: value})
        except ConfigError as exc:
            raise BadOption(f"{selection_option(name)}: {exc}") from None
    return fields


def selection_file(path: str | None) -> dict[str, Any]:
    """The SelectionConfig fields a ``--selection`` TOML file sets (checked by SelectionConfig)."""
    if path is None:
        return {}
    import tomllib

    from kvprism.migrate import migrate_backend
    from kvprism.selection import SelectionConfig

    p = input_file(path, "--selection", suffix=".toml", what="SelectionConfig TOML file")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise BadOption(f"--selection {path} is not a readable TOML file ({exc})") from None
    data.pop("meta", None)
    try:
        SelectionConfig.from_dict(data, where=path)
    except KvprismError as exc:
        raise BadOption(f"--selection {path}: {exc}") from None
    return migrate_backend(data, "scorer")


def photonic_file(path: str | None, option: str = "--photonic") -> str | None:
    """A PhotonicConfig TOML file (checked by loading it); returns its path."""
    if path is None:
        return None
    from kvprism.photonics.config import PhotonicConfig

    input_file(path, option, suffix=".toml", what="PhotonicConfig TOML file")
    PhotonicConfig.from_toml(path)
    return path


def gpu_times(path: str | None, shape: Any) -> str | None:
    """A ``--gpu-times`` JSON file read and checked against ``shape`` (a ModelShape) before anything is computed."""
    if path is None:
        return None
    from kvprism.energy.gpu import load_gpu_times

    input_file(path, "--gpu-times", suffix=".json", what="GPU times JSON file")
    if not load_gpu_times(path, shape):
        raise BadOption(f"--gpu-times {path} holds no usable measurement (no record with a positive time)")
    return path


def fix_names(text: str, known: Sequence[str], option: str = "--fix") -> list[str]:
    """Search parameter names (comma-separated, may be empty), each one of ``known``."""
    if not text.strip():
        return []
    names = listed(text, str, option)
    unknown = [n for n in names if n not in known]
    if unknown:
        import difflib

        close = difflib.get_close_matches(unknown[0], known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise BadOption(f"{option}: {', '.join(unknown)} is no search parameter{hint}; known: {', '.join(known)}")
    return names
