"""Validated configuration dataclasses.

Every knob of kvprism lives in a frozen dataclass derived from :class:`ConfigBase`. Fields are declared with
:func:`param`, which records the unit, the allowed range or choices, a docstring and the source of the default.
Validation runs at construction; an error names the class, the field, the offending value and what is allowed.

    cfg = SomeConfig.from_toml("my.toml").replace(k=8)

Concrete configurations (``SelectionConfig``, ``PhotonicConfig``) live beside the code that uses them and derive
from :class:`ConfigBase`.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Self

from kvprism.errors import ConfigError

__all__ = ["ConfigBase", "ConfigError", "param"]


def param(
    default: Any = dataclasses.MISSING,
    *,
    doc: str,
    unit: str = "",
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: tuple[Any, ...] | None = None,
    source: str = "",
    section: str = "",
    default_factory: Any = dataclasses.MISSING,
) -> Any:
    """Declare a config field with its unit, allowed range (``ge``/``gt``/``le``/``lt``) or ``choices``,
    a docstring, the source of its default value and the ``section`` (TOML table) it belongs to ("" = top level)."""
    meta = {
        "doc": doc,
        "unit": unit,
        "ge": ge,
        "gt": gt,
        "le": le,
        "lt": lt,
        "choices": choices,
        "source": source,
        "section": section,
    }
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _range_text(meta: Mapping[str, Any]) -> str:
    lo = f"[{meta['ge']:g}" if meta["ge"] is not None else (f"({meta['gt']:g}" if meta["gt"] is not None else "(-inf")
    hi = f"{meta['le']:g}]" if meta["le"] is not None else (f"{meta['lt']:g})" if meta["lt"] is not None else "inf)")
    unit = f" {meta['unit']}" if meta["unit"] else ""
    return f"{lo}, {hi}{unit}"


def _base_types(annotation: Any) -> tuple[type, ...]:
    """The runtime types admitted by a (possibly optional/union) annotation."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        out: tuple[type, ...] = ()
        for arg in typing.get_args(annotation):
            out += _base_types(arg)
        return out
    if origin is typing.Literal:
        return tuple({type(a) for a in typing.get_args(annotation)})
    if origin is not None:
        return (origin,)
    if annotation is type(None) or annotation is None:
        return (type(None),)
    if isinstance(annotation, type):
        return (annotation,)
    return (object,)


@dataclasses.dataclass(frozen=True)
class ConfigBase:
    """Frozen, validated configuration. Subclasses are ``@dataclasses.dataclass(frozen=True)`` with fields from
    :func:`param`; they may override :meth:`_check` for cross-field constraints (raise via :meth:`_fail`)."""

    #: Directory of shipped TOML presets for :meth:`preset` (set by subclasses that have presets).
    _preset_dir: ClassVar[Path | None] = None

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            allowed = _base_types(hints.get(f.name, object))
            # ints are accepted where floats are expected (TOML writes 10 for 10.0); bools are not numbers here.
            if float in allowed and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
                object.__setattr__(self, f.name, value)
            if object not in allowed and not isinstance(value, allowed):
                names = " or ".join(sorted({t.__name__ for t in allowed}))
                self._fail(f.name, value, f"must be of type {names}")
            if isinstance(value, bool) and bool not in allowed and object not in allowed:
                self._fail(f.name, value, "must be a number, not a bool")
            meta = f.metadata
            if not meta:
                continue
            if meta["choices"] is not None and value not in meta["choices"]:
                self._fail(f.name, value, f"allowed: {', '.join(map(repr, meta['choices']))}")
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                if isinstance(value, float) and not math.isfinite(value):
                    self._fail(f.name, value, "must be a finite number")
                bad = (
                    (meta["ge"] is not None and not value >= meta["ge"])
                    or (meta["gt"] is not None and not value > meta["gt"])
                    or (meta["le"] is not None and not value <= meta["le"])
                    or (meta["lt"] is not None and not value < meta["lt"])
                )
                if bad:
                    self._fail(f.name, value, f"allowed range: {_range_text(meta)}")
        self._check()

    def _check(self) -> None:
        """Cross-field validation hook for subclasses."""

    @classmethod
    def _fail(cls, field: str, value: Any, allowed: str) -> typing.NoReturn:
        raise ConfigError(f"{cls.__name__}.{field} = {value!r} is invalid; {allowed}")

    # ------------------------------------------------------------------ construction helpers
    def __new__(cls, *args: Any, **kwargs: Any) -> Self:
        # an unknown keyword is a ConfigError naming the closest field, not the TypeError of the generated __init__
        cls._check_names(kwargs)
        return super().__new__(cls)

    @classmethod
    def field_names(cls) -> list[str]:
        """The public field names (what a TOML file, ``replace`` or a keyword may set), in declaration order."""
        return [f.name for f in dataclasses.fields(cls) if not f.name.startswith("_")]

    @classmethod
    def _check_names(cls, given: Mapping[str, Any], where: str = "") -> None:
        """Raise :class:`ConfigError` for a name in ``given`` that is no field: it names the field, the closest valid
        name (difflib) and the valid names."""
        import difflib

        names = cls.field_names()
        unknown = sorted(set(given) - set(names))
        if not unknown:
            return
        close = difflib.get_close_matches(unknown[0], names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        at = f" in {where}" if where else ""
        raise ConfigError(
            f"{cls.__name__} has no field {', '.join(map(repr, unknown))}{at}{hint}; fields: {', '.join(sorted(names))}"
        )

    def replace(self, **changes: Any) -> Self:
        """A copy with ``changes`` applied, validated again. Unknown field names are an error."""
        self._check_names(changes)
        return dataclasses.replace(self, **changes)

    #: Section (TOML table) of fields declared without ``section=``; subclasses may fill it.
    _sections: ClassVar[Mapping[str, str]] = {}

    @classmethod
    def section_of(cls, name: str) -> str:
        """The section (TOML table) field ``name`` belongs to ("" = top level)."""
        meta = {f.name: f.metadata for f in dataclasses.fields(cls)}.get(name) or {}
        return meta.get("section") or cls._sections.get(name, "")

    @classmethod
    def sections(cls) -> dict[str, list[str]]:
        """Section name → its field names, in declaration order ("" = top level)."""
        out: dict[str, list[str]] = {}
        for f in dataclasses.fields(cls):
            out.setdefault(cls.section_of(f.name), []).append(f.name)
        return out

    @classmethod
    def _flatten(cls, data: Mapping[str, Any], where: str) -> dict[str, Any]:
        """Flat field → value mapping from either layout: leaf fields at the top level, or tables named by their
        section (``[ring]`` ``q_loaded = 1e5``), or both. A field in the wrong table, or given twice, is an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        sections = cls.sections()
        at = f" in {where}" if where else ""
        flat: dict[str, Any] = {}
        for key, value in data.items():
            if key not in names and isinstance(value, Mapping) and key in sections and key:
                for sub, v in value.items():
                    if sub in names and cls.section_of(sub) != key:
                        raise ConfigError(
                            f"{cls.__name__}.{sub} belongs to [{cls.section_of(sub) or 'top level'}], not [{key}]{at}"
                        )
                    if sub in flat:
                        raise ConfigError(f"{cls.__name__}.{sub} is given twice{at}")
                    flat[sub] = v
            else:
                if key in flat:
                    raise ConfigError(f"{cls.__name__}.{key} is given twice{at}")
                flat[key] = value
        return flat

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "") -> Self:
        """Build from a mapping (e.g. parsed TOML), flat or with one table per section. Unknown keys are an error
        naming the key."""
        data = cls._flatten(data, where)
        cls._check_names(data, where)
        return cls(**dict(data))

    @classmethod
    def from_toml(cls, path: str | Path) -> Self:
        """Load from a TOML file: keys are field names, at the top level or in their section's table (both layouts
        load); the table ``[meta]`` is ignored (free text)."""
        path = Path(path)
        try:
            with path.open("rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        data.pop("meta", None)
        return cls.from_dict(data, where=str(path))

    @classmethod
    def presets(cls) -> list[str]:
        """Names of the presets shipped with the package for this config class."""
        if cls._preset_dir is None or not cls._preset_dir.is_dir():
            return []
        return sorted(p.stem for p in cls._preset_dir.glob("*.toml"))

    @classmethod
    def preset(cls, name: str) -> Self:
        """Load a shipped preset by name."""
        names = cls.presets()
        if name not in names:
            raise ConfigError(f"unknown {cls.__name__} preset {name!r}; available: {', '.join(names) or 'none'}")
        return cls.from_toml(cls._preset_dir / f"{name}.toml")  # type: ignore[operator]  (presets() found it)

    @classmethod
    def preset_meta(cls, name: str) -> dict[str, Any]:
        """The free-text ``[meta]`` table of a shipped preset (``description``, ``source``; empty if none)."""
        cls.preset(name)  # the error naming the presets
        with (cls._preset_dir / f"{name}.toml").open("rb") as fh:  # type: ignore[operator]
            meta = tomllib.load(fh).get("meta", {})
        return dict(meta) if isinstance(meta, Mapping) else {}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_nested_dict(self) -> dict[str, Any]:
        """Field values grouped by section: top-level fields first, then one mapping per section."""
        out: dict[str, Any] = {}
        for section, names in self.sections().items():
            vals = {n: getattr(self, n) for n in names}
            if section:
                out[section] = vals
            else:
                out.update(vals)
        return out

    @classmethod
    def describe(cls) -> list[dict[str, Any]]:
        """One record per field: name, default, unit, allowed range/choices, doc and source."""
        rows = []
        for f in dataclasses.fields(cls):
            meta = f.metadata or {}
            default = f.default if f.default is not dataclasses.MISSING else None
            allowed = ""
            if meta.get("choices") is not None:
                allowed = ", ".join(map(str, meta["choices"]))
            elif any(meta.get(k) is not None for k in ("ge", "gt", "le", "lt")):
                allowed = _range_text(meta)
            rows.append(
                {
                    "name": f.name,
                    "default": default,
                    "unit": meta.get("unit", ""),
                    "allowed": allowed,
                    "doc": meta.get("doc", ""),
                    "source": meta.get("source", ""),
                    "section": cls.section_of(f.name),
                }
            )
        return rows
