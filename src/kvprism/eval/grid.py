"""The evaluation grid: what a run covers (tasks × contexts × depths × seeds × configurations) and how each
configuration decodes.

A configuration is an :class:`EvalConfig`: a name, a *method* (``dense``: no selection; ``oracle``: the reference
that selects the top-k blocks by the dense attention mass of each step's query; otherwise the scorer of its
:class:`kvprism.selection.SelectionConfig`: ``exact``, ``photonic``, ``seed-as-published``) and the typed
``SelectionConfig`` it runs (None for dense; for the oracle, the budget: k, block size, sink and window). :func:`build_configs` expands configuration names × k the way
``--configs`` / ``--k`` do; :class:`Grid` holds a whole grid and loads it from a TOML file (``kvprism niah --grid``)::

    tasks = ["niah_single"]          # or "ruler"
    contexts = [2048, 4096]
    depths = [0.0, 0.5, 1.0]
    seeds = [0]
    # samples = 4                     # prompts per (task, context, depth, seed): distinct seeds, see sample_seeds
    configs = ["dense", "exact", "seed-nominal"]   # as --configs: dense, oracle, exact, photonic presets, preset files
    k = [8]
    # haystack = "text", values = "numbers", max_new_tokens = 16, heads = "runs/heads.json"   (optional)

    [selection]                       # SelectionConfig fields shared by every selection configuration
    block_size = 64

    [[config]]                        # further configurations, one table each
    method = "exact"                  # oracle | exact | photonic | seed-as-published
    k = [4, 16]                       # one configuration per k
    d_sig = 16                        # any SelectionConfig field; overrides [selection]
    name = "exact-d16"                # optional; default <method or preset>-k<k>, with -k<k> appended per k
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvprism.errors import KvprismError

__all__ = [
    "MODES",
    "REFERENCE_METHODS",
    "EvalConfig",
    "Grid",
    "Point",
    "build_configs",
    "check_axes",
    "is_preset_file",
    "load_preset",
    "parse_list",
    "sample_seeds",
    "validate_configs",
]

MODES = ("niah", "recall")


@dataclass(frozen=True)
class Point:
    """One prompt of the grid."""

    task: str
    context: int
    depth: float
    seed: int


#: evaluation methods that are references, not selection methods: ``oracle`` picks the top-k blocks by the dense
#: attention mass of each step's query (:mod:`kvprism.oracle`); it reads every key to decide, so it saves no traffic
REFERENCE_METHODS = ("oracle",)


def is_preset_file(name: str) -> bool:
    """Whether a configuration / preset name is a ``PhotonicConfig`` TOML file rather than a shipped preset name."""
    return name.endswith(".toml")


def load_preset(name: str) -> Any:
    """The ``PhotonicConfig`` of a shipped preset name or of a preset TOML file.

    Raises:
        KvprismError: neither a shipped preset nor a readable preset file (names the presets).
    """
    from kvprism.photonics.config import PhotonicConfig

    if is_preset_file(name):
        return PhotonicConfig.from_toml(name)
    known = PhotonicConfig.presets()
    if name not in known:
        raise KvprismError(
            f"configuration {name!r} is neither 'dense', 'oracle', 'exact' nor a photonic preset; presets: {', '.join(known)} "
            "(or a preset file *.toml)"
        )
    return PhotonicConfig.preset(name)


@dataclass(frozen=True)
class EvalConfig:
    """One decode configuration of the grid.

    ``method`` is ``dense`` (no selection) or the scorer of the selection (``exact``, ``photonic``,
    ``seed-as-published``). ``preset``: for ``photonic``, a shipped preset name or a preset TOML file. ``selection``:
    the configuration's ``SelectionConfig``, or a mapping of ``SelectionConfig`` fields it is built from (with ``k``,
    ``scorer = method`` and the preset); None for dense. After construction ``selection`` is always a
    ``SelectionConfig`` (None for dense) and ``k`` its ``k``.

    Raises:
        KvprismError: unknown method or preset; ConfigError naming the ``SelectionConfig`` field otherwise.
    """

    name: str
    method: str
    k: int | None = None
    preset: str | None = None
    selection: Any = None

    def __post_init__(self) -> None:
        from kvprism.migrate import migrate_backend
        from kvprism.scorers import SCORERS
        from kvprism.selection import SelectionConfig

        if self.method == "dense":
            object.__setattr__(self, "selection", None)
            object.__setattr__(self, "k", None)
            return
        if self.method not in SCORERS and self.method not in REFERENCE_METHODS:
            raise KvprismError(
                f"configuration {self.name!r}: method = {self.method!r} is invalid; allowed: dense, oracle, "
                f"{', '.join(SCORERS)}"
            )
        sel = self.selection
        # the oracle selects by dense attention mass; its SelectionConfig carries the budget (k, blocks, sink,
        # window) and is scored exactly only for the trace's bookkeeping
        fields: dict[str, Any] = {"scorer": "exact" if self.method == "oracle" else self.method}
        if self.k is not None:
            fields["k"] = self.k
        if self.method == "photonic":
            if self.preset is None:
                raise KvprismError(f"configuration {self.name!r}: method 'photonic' needs a preset")
            fields["photonic"] = load_preset(self.preset) if is_preset_file(self.preset) else self.preset
            if self.preset not in _preset_names() and not is_preset_file(self.preset):
                load_preset(self.preset)  # the one-line error naming the presets
        if isinstance(sel, SelectionConfig):
            sel = sel.replace(**fields)
        else:
            sel = SelectionConfig(**{**migrate_backend(sel or {}, "scorer"), **fields})
        object.__setattr__(self, "selection", sel)
        object.__setattr__(self, "k", sel.k)

    def selection_config(self) -> Any:
        """The ``kvprism.selection.SelectionConfig`` of this configuration (``None`` for dense)."""
        return self.selection

    def describe(self) -> dict[str, Any]:
        """The fields every stored cell carries about its configuration."""
        return {"config": self.name, "method": self.method, "k": self.k, "preset": self.preset}


def _preset_names() -> list[str]:
    from kvprism.photonics.config import PhotonicConfig

    return PhotonicConfig.presets()


def _preset_lines(preset: str) -> int:
    """Comb lines of a preset (the default signature dimension of its configurations)."""
    return load_preset(preset).n_lines


def build_configs(
    names: Sequence[str], ks: Sequence[int], selection: Mapping[str, Any] | None = None
) -> list[EvalConfig]:
    """Expand configuration names × k: ``dense`` once; ``exact`` and every photonic preset (name or preset file)
    once per k. Dense comes first (its step-0 logits are the KL reference). ``selection``: ``SelectionConfig`` fields
    shared by every selection configuration; a photonic configuration without ``d_sig`` there gets one signature
    dimension per comb line of its preset."""
    if not names:
        raise KvprismError("configs is empty; give at least one of: dense, oracle, exact, <photonic preset>")
    for k in ks:
        if k < 1:
            raise KvprismError(f"k = {k} is invalid; allowed range: k >= 1")
    selection = dict(selection or {})
    out: list[EvalConfig] = []
    seen: set[str] = set()
    for name in ["dense"] * ("dense" in names) + [n for n in names if n != "dense"]:
        if name == "dense":
            cfgs = [EvalConfig("dense", "dense")]
        else:
            if not ks:
                raise KvprismError("k is empty; give at least one k >= 1 for selection configurations")
            method = name if name in ("exact", "oracle") else "photonic"
            preset = name if method == "photonic" else None
            sel = selection
            if preset is not None and "d_sig" not in selection:  # one comb line per signature dimension
                sel = {**selection, "d_sig": _preset_lines(preset)}
            label = Path(name).stem if preset is not None and is_preset_file(name) else name
            cfgs = [EvalConfig(f"{label}-k{k}", method, k, preset, sel) for k in ks]
        for c in cfgs:
            if c.name not in seen:
                seen.add(c.name)
                out.append(c)
    return out


def validate_configs(configs: Sequence[EvalConfig]) -> None:
    """Fail early, before any work: every preset must be known and every selection configuration valid (both are
    checked when an :class:`EvalConfig` is built; this re-checks configurations built elsewhere).

    Raises:
        KvprismError: one line naming the configuration and what is missing or allowed.
    """
    for c in configs:
        if c.method == "photonic" and c.preset is not None:
            load_preset(c.preset)


def parse_list(text: str, kind: Callable[[str], Any], name: str) -> list[Any]:
    """``"1,2,3"`` -> ``[kind("1"), ...]`` with a one-line error naming the option."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    try:
        return [kind(t) for t in items]
    except ValueError as exc:
        raise KvprismError(f"--{name} = {text!r} is invalid ({exc})") from exc


def sample_seeds(seeds: Sequence[int], samples: int) -> list[int]:
    """``samples`` prompt seeds per given seed, all distinct and the same on every run: the seed itself first (so a
    grid of one sample is unchanged), then seeds derived from it by SHA-256 (``seed, i``), skipping any already in
    the list. Each seed draws its own needle key, value and haystack offset (the task generators are seeded).

    Raises:
        KvprismError: ``samples < 1``.
    """
    import hashlib

    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise KvprismError(f"samples = {samples!r} is invalid; allowed range: >= 1 prompt per grid cell")
    out: list[int] = []
    taken = set(seeds)
    for s in seeds:
        mine = [s]
        i = 0
        while len(mine) < samples:
            i += 1
            digest = hashlib.sha256(f"kvprism-sample|{s}|{i}".encode()).digest()
            derived = int.from_bytes(digest[:4], "big") & 0x7FFFFFFF
            if derived not in taken:
                taken.add(derived)
                mine.append(derived)
        out += mine
    return out


def check_axes(
    tasks: Sequence[str],
    contexts: Sequence[int],
    depths: Sequence[float],
    seeds: Sequence[int],
    *,
    samples: Any = 1,
    haystack: str | None = None,
    values: str | None = None,
    max_new_tokens: Any = None,
    name: Callable[[str], str] = lambda key: key,
) -> tuple[list[str], list[int], list[float], list[int]]:
    """The prompt axes of a grid, checked the one way a grid file and the command line share: tasks known (``ruler``
    expanded), contexts >= 1, depths in [0, 1], every axis non-empty and without repeats, ``samples`` >= 1, the task
    overrides known. ``name(key)`` is how an error names the key (``<file>: depths``, ``--depths``).

    Returns:
        ``(tasks, contexts, depths, seeds)``; ``seeds`` holds ``samples`` prompt seeds per given seed.

    Raises:
        KvprismError: one line naming the key and what is allowed.
    """
    from kvprism.eval.tasks import HAYSTACKS, TASKS, VALUE_KINDS, expand_tasks

    tasks = expand_tasks(list(tasks))
    for t in tasks:
        if t not in TASKS:
            raise KvprismError(f"{name('tasks')}: {t!r} is unknown; allowed: {', '.join(TASKS)}")
    for c in contexts:
        if c < 1:
            raise KvprismError(f"{name('contexts')}: {c} is invalid; allowed range: >= 1 token")
    for d in depths:
        if not 0.0 <= d <= 1.0:
            raise KvprismError(f"{name('depths')}: {d} is invalid; allowed range: [0, 1]")
    for key, axis in (("tasks", tasks), ("contexts", contexts), ("depths", depths), ("seeds", seeds)):
        if not axis:
            raise KvprismError(f"{name(key)} is empty; give at least one value")
        if len(set(axis)) != len(axis):
            raise KvprismError(f"{name(key)} holds a value twice; give every value once")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise KvprismError(f"{name('samples')} = {samples!r} is invalid; allowed range: >= 1 prompt per cell")
    if haystack is not None and haystack not in HAYSTACKS:
        raise KvprismError(f"{name('haystack')} = {haystack!r} is invalid; allowed: {', '.join(HAYSTACKS)}")
    if values is not None and values not in VALUE_KINDS:
        raise KvprismError(f"{name('values')} = {values!r} is invalid; allowed: {', '.join(VALUE_KINDS)}")
    n = max_new_tokens
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise KvprismError(f"{name('max_new_tokens')} = {n!r} is invalid; allowed range: >= 1")
    return list(tasks), list(contexts), list(depths), sample_seeds(list(seeds), samples)


# ---------------------------------------------------------------------------------------------------- grid files
_GRID_KEYS = ("tasks", "contexts", "depths", "seeds", "configs", "k", "selection", "config", "haystack", "values")
_GRID_KEYS += ("max_new_tokens", "heads", "mode", "samples")


def _as_list(value: Any, kind: type, where: str) -> list[Any]:
    items = value if isinstance(value, list) else [value]
    out = []
    for v in items:
        if kind is float and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if isinstance(v, bool) or not isinstance(v, kind):
            raise KvprismError(f"{where} = {value!r} is invalid; give a {kind.__name__} or a list of them")
        out.append(v)
    return out


@dataclass(frozen=True)
class Grid:
    """A whole evaluation grid: the prompt axes, the configurations and the task overrides (see module docstring).
    Axis values appear once each."""

    tasks: tuple[str, ...]
    contexts: tuple[int, ...]
    depths: tuple[float, ...]
    seeds: tuple[int, ...]
    configs: tuple[EvalConfig, ...]
    haystack: str | None = None
    values: str | None = None
    max_new_tokens: int | None = None
    mode: str | None = None
    source: str = ""
    heads: Any = field(default=None, compare=False)

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], *, where: str = "grid", selection: Mapping[str, Any] | None = None
    ) -> Grid:
        """Build from parsed TOML. ``selection``: ``SelectionConfig`` fields under the file's ``[selection]`` (e.g.
        given on the command line; the file's tables override them).

        Raises:
            KvprismError: one line naming the key (``<file>: contexts``) and what is allowed.
        """

        unknown = sorted(set(data) - set(_GRID_KEYS))
        if unknown:
            raise KvprismError(f"{where}: unknown key {', '.join(unknown)}; keys: {', '.join(sorted(_GRID_KEYS))}")
        for key in ("tasks", "contexts", "depths", "seeds"):
            if key not in data:
                raise KvprismError(f"{where}: {key} is missing")
        tasks, contexts, depths, seeds = check_axes(
            _as_list(data["tasks"], str, f"{where}: tasks"),
            _as_list(data["contexts"], int, f"{where}: contexts"),
            _as_list(data["depths"], float, f"{where}: depths"),
            _as_list(data["seeds"], int, f"{where}: seeds"),
            samples=data.get("samples", 1),
            haystack=data.get("haystack"),
            values=data.get("values"),
            max_new_tokens=data.get("max_new_tokens"),
            name=lambda key: f"{where}: {key}",
        )
        haystack, values, n_new = data.get("haystack"), data.get("values"), data.get("max_new_tokens")
        mode = data.get("mode")
        if mode is not None and mode not in MODES:
            raise KvprismError(f"{where}: mode = {mode!r} is invalid; allowed: {', '.join(MODES)}")
        shared = dict(selection or {})
        table = data.get("selection", {})
        if not isinstance(table, Mapping):
            raise KvprismError(f"{where}: selection must be a table of SelectionConfig fields")
        shared.update(table)
        heads = data.get("heads")
        if heads is not None:
            from kvprism.eval.heads import load_mask

            shared["heads"] = load_mask(heads)
        _check_selection_keys(shared, f"{where}: [selection]")
        ks = _as_list(data.get("k", []), int, f"{where}: k")
        configs = (
            build_configs(_as_list(data["configs"], str, f"{where}: configs"), ks, shared) if "configs" in data else []
        )
        tables = data.get("config", [])
        if not isinstance(tables, list) or not all(isinstance(t, Mapping) for t in tables):
            raise KvprismError(f"{where}: config must be an array of tables ([[config]])")
        for i, t in enumerate(tables):
            configs += _config_tables(t, shared, ks, f"{where}: config[{i}]")
        if not configs:
            raise KvprismError(f"{where}: no configuration; give configs = [...] and/or [[config]] tables")
        names = [c.name for c in configs]
        dup = next((n for n in names if names.count(n) > 1), None)
        if dup is not None:
            raise KvprismError(f"{where}: configuration {dup!r} is given twice; give every name once")
        return cls(
            tuple(tasks), tuple(contexts), tuple(depths), tuple(seeds), tuple(configs), haystack, values, n_new, mode,
            where, shared.get("heads"),
        )  # fmt: skip

    @classmethod
    def from_toml(cls, path: str | Path, *, selection: Mapping[str, Any] | None = None) -> Grid:
        """Load a grid file (see module docstring)."""
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise KvprismError(f"grid file {path} does not exist") from None
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise KvprismError(f"grid file {path} is not valid TOML: {exc}") from None
        return cls.from_dict(data, where=str(path), selection=selection)

    @property
    def points(self) -> list[Point]:
        return [Point(t, c, d, s) for t in self.tasks for c in self.contexts for d in self.depths for s in self.seeds]


def _check_selection_keys(fields: Mapping[str, Any], where: str) -> None:
    from kvprism.migrate import migrate_backend
    from kvprism.selection import SelectionConfig

    names = set(SelectionConfig.field_names())
    unknown = sorted(set(migrate_backend(fields, "scorer")) - names)
    if unknown:
        raise KvprismError(
            f"{where}: SelectionConfig has no field {', '.join(unknown)}; fields: {', '.join(sorted(names))}"
        )


def _config_tables(
    table: Mapping[str, Any], shared: Mapping[str, Any], ks: Sequence[int], where: str
) -> list[EvalConfig]:
    """The configurations of one ``[[config]]`` table (one per k)."""
    t = dict(table)
    method = t.pop("method", None)
    if not isinstance(method, str):
        raise KvprismError(f"{where}: method is missing; give dense, oracle, exact, photonic or seed-as-published")
    name = t.pop("name", None)
    preset = t.pop("preset", None)
    k_given = t.pop("k", None)
    if method == "dense":
        if t or preset is not None or k_given is not None:
            raise KvprismError(f"{where}: a dense configuration takes only method and name")
        return [EvalConfig(name or "dense", "dense")]
    if preset is not None and (not isinstance(preset, str) or method != "photonic"):
        raise KvprismError(f"{where}: preset = {preset!r} is invalid; a preset name or file, for method 'photonic'")
    _check_selection_keys(t, where)
    for bad in ("scorer", "backend", "photonic"):
        if bad in t:
            raise KvprismError(f"{where}: {bad} is set by method / preset; remove it")
    sel = {**shared, **t}
    if method == "photonic" and preset is not None and "d_sig" not in sel:
        sel["d_sig"] = _preset_lines(preset)
    k_list = ks if k_given is None else _as_list(k_given, int, f"{where}: k")
    if not k_list:
        raise KvprismError(f"{where}: k is missing; give k (or a top-level k) >= 1")
    for k in k_list:
        if k < 1:
            raise KvprismError(f"{where}: k = {k} is invalid; allowed range: k >= 1")
    base = name or (Path(preset).stem if preset and is_preset_file(preset) else preset) or method
    return [EvalConfig(f"{base}-k{k}", method, k, preset, sel) for k in k_list]
