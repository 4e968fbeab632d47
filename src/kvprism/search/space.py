"""The design search space as a declarative table: one :class:`Dim` per searched parameter.

A row names the optuna parameter (in the unit people think in: µm, nm, pm/V, dBm), the :class:`PhotonicConfig`
field it sets, the range or choices, log or linear sampling, the factor to SI and the source of the range
(PHYSICS.md §10/§11 or a cited value; "assumption" where no source fixes it). ``d_sig`` is special: it is the
reference set's signature dimension and sets the comb lines ``n_lines`` (its choices are the widths captured).

Extending: add a row. A row whose field the installed :class:`PhotonicConfig` lacks is left out of the search
(:func:`active_space` reports it), so rows for fields that a newer chip model adds (drop bus, integration time,
power caps, calibration mode) can be written before that model lands.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

from kvprism.errors import KvprismError

__all__ = [
    "ARCHITECTURE",
    "D_SIG",
    "RADIUS_RULES",
    "RERANK",
    "SPACE",
    "Dim",
    "active_space",
    "config_fields",
    "leaf",
    "space_table",
]

#: name of the special row whose choices come from the reference set
D_SIG = "d_sig"
#: name of the row that sets two-stage selection (:attr:`kvprism.selection.SelectionConfig.rerank`): not a
#: PhotonicConfig field; the objectives take it beside the config
RERANK = "rerank"
#: name of the row that sets the chip architecture (:mod:`kvprism.photonics.architecture`): not a PhotonicConfig
#: field; its value is an ``Architecture`` label ('time-shared', 'resident', 'two-level:S') the objectives take
ARCHITECTURE = "architecture"


@dataclasses.dataclass(frozen=True)
class Dim:
    """One searched parameter.

    ``kind``: ``"float"``, ``"int"`` or ``"categorical"``; ``low``/``high`` bound float and int rows (in ``unit``),
    ``choices`` a categorical row; ``to_si`` multiplies a numeric value into the config field's SI unit."""

    name: str
    field: str
    kind: str
    source: str
    unit: str = ""
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] | None = None
    to_si: float = 1.0
    #: drawn only when the row named ``when[0]`` has the value ``when[1]`` (else the field is ``otherwise``, or the
    #: base's value when ``otherwise`` is None)
    when: tuple[str, Any] | None = None
    otherwise: Any = None
    #: the range is cut to what the drawn ring allows: ``"q"`` the loaded Q it reaches (:func:`reachable_q_max`),
    #: ``"comb"`` the line spacing whose comb (d lines) fits its FSR (:func:`comb_spacing_max_m`); the optuna
    #: parameter is the position in the allowed part of [low, high] (log), named ``<name>_in_reach``
    reach: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("float", "int", "categorical"):
            raise KvprismError(f"Dim {self.name}: kind = {self.kind!r} is invalid; allowed: float, int, categorical")
        if self.kind == "categorical" and not self.choices and self.name != D_SIG:
            raise KvprismError(f"Dim {self.name}: a categorical row needs choices")
        if self.kind != "categorical" and (self.low is None or self.high is None or not self.low <= self.high):
            raise KvprismError(f"Dim {self.name}: a numeric row needs low <= high (got {self.low}, {self.high})")

    @property
    def param_name(self) -> str:
        """The optuna parameter's name."""
        return f"{self.name}_in_reach" if self.reach else self.name

    def suggest(self, trial: Any, choices: Sequence[Any] | None = None) -> Any:
        """Draw this parameter from an optuna trial (``choices`` overrides the row's, e.g. for d_sig)."""
        if self.reach:
            return trial.suggest_float(self.param_name, 0.0, 1.0)
        if self.kind == "float":
            return trial.suggest_float(self.name, self.low, self.high, log=self.log)
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_categorical(self.name, list(choices if choices is not None else self.choices))

    def field_value(self, value: Any) -> Any:
        """The config field's value for a drawn ``value`` (unit conversion for floats)."""
        if self.kind == "float":
            return float(value) * self.to_si
        return value

    def range_text(self) -> str:
        if self.kind == "categorical":
            return ", ".join(map(str, self.choices or ("from the reference set",)))
        scale = "log" if self.log else "linear"
        return f"[{self.low:g}, {self.high:g}] {self.unit} ({scale})".replace("  ", " ")


#: The search space (ring radius → FSR, Q_loaded, comb spacing, d_sig, rows per bank, banks, detection
#: bandwidth, laser power per line, ADC/DAC bits, encoding, EO tuning, V_max, calibration mode, fabrication spread and
#: trim, architecture, rerank). Every optical range is the sourced range of the parameter (or an assumption, marked),
#: not a neighbourhood of one preset: the search is global over optics and architecture.
SPACE: tuple[Dim, ...] = (
    Dim("ring_radius_um", "ring_radius_m", "float", low=10.0, high=80.0, log=True, unit="µm", to_si=1e-6,
        source="seed 20 µm (FSR 8.3 nm); Luxtelligence lnoi400 PDK default bend 80 µm (PHYSICS §10); FSR follows, "
        "and so do the ring pitch (2.5·R) and electrode capacitance (0.3 fF/µm · π·R): RADIUS_RULES"),
    Dim("q_loaded", "q_loaded", "float", low=3e3, high=1e6, log=True, reach="q",
        source="seed 1e4 (FDTD 1.25e4); below the intrinsic Q ≈ 2e6 of 0.2 dB/cm (PHYSICS §10); cut to the Q the "
        "ring can reach at the drawn radius (its bend loss: Q_loaded < Q_intrinsic/2 in the critical regime)"),
    Dim(D_SIG, "n_lines", "categorical",
        source="reference set: the signature widths captured (one comb line per signature dimension)"),
    Dim("channel_spacing_nm", "channel_spacing_m", "float", low=0.1, high=1.6, log=True, unit="nm", to_si=1e-9,
        reach="comb", source="ITU-T G.694.1 grid 12.5–200 GHz (0.1–1.6 nm); seed 1.6 nm; cut to FSR / d (the comb of "
        "d lines within one FSR of the drawn ring)"),
    Dim("rows_per_bank", "rows_per_bank", "categorical", choices=(128, 256, 512, 1024, 2048, 4096, 8192),
        source="1×2^n splitter trees; seed N = 8192 (PHYSICS §6); 128 = the reference set's blocks at 8K"),
    Dim("n_banks", "n_banks", "int", low=1, high=112, log=True,
        source="1 … one bank per (layer, KV head) of Qwen2.5-7B (28 × 4), PHYSICS §11: shared banks"),
    Dim("detection_bandwidth_hz", "detection_bandwidth_hz", "float", low=1e3, high=5e9, log=True, unit="Hz",
        source="seed 5 GHz; PHYSICS §11: µs per selection are available (integrate-and-dump; `kvprism hw "
        "--model-shape qwen2.5-7b --tokens-per-s 20` gives ~90 µs per pass with 4 shared banks, ~5 kHz)"),
    Dim("laser_line_dbm", "laser_line_dbm", "float", low=-10.0, high=20.0, unit="dBm",
        source="comb sources give mW per line (PHYSICS §11); seed 13–20 dBm"),
    Dim("adc_bits", "adc_bits", "int", low=4, high=10,
        source="IEEE 9731625: 8 b at 10 GS/s; seed 4–6 bit claim"),
    Dim("query_bits", "query_bits", "int", low=4, high=10, source="IEEE 9162776: 8 b DAC"),
    Dim("program_bits", "program_bits", "int", low=4, high=10,
        source="seed 5-bit weights; Zhang et al., Optica 9, 579 (2022): 9-bit closed loop"),
    Dim("encoding", "encoding", "categorical", choices=("offset", "dual-rail"), source="PHYSICS §5"),
    Dim("tuning_pm_per_v", "tuning_m_per_v", "float", low=1.8, high=16.0, log=True, unit="pm/V", to_si=1e-12,
        source="measured TFLN 1.8–3 pm/V, photonic-crystal cavity ~16 pm/V (PHYSICS §3; the seed's 28.5 pm/V is computed)"),
    Dim("v_max_v", "v_max_v", "float", low=1.0, high=10.0, unit="V",
        source="assumption: CMOS-compatible drive up to the ±10 V of tfln-literature (PHYSICS §8: 10 V)"),
    Dim("feedback_calibration", "feedback_calibration", "categorical", choices=(False, True),
        source="open loop (seed) or closed loop (Zhang et al., Optica 9, 579, 2022)"),
    Dim("rewrite_calibration", "rewrite_calibration", "categorical", choices=("recalibrate", "replay"),
        when=("feedback_calibration", True), otherwise="recalibrate",
        source="PHYSICS §11: time-shared banks are rewritten every round; in-situ recalibration of each rewrite, "
        "or replay of stored codes recalibrated round-robin in idle time (needs feedback_calibration)"),
    Dim("calibration_iters", "calibration_iters", "int", low=0, high=8, when=("feedback_calibration", True),
        source="assumption: crosstalk-aware corrections of the closed loop (each costs 2·d probe readings)"),
    Dim("calibration_probe_averages", "calibration_probe_averages", "int", low=1, high=1024, log=True,
        when=("feedback_calibration", True),
        source="assumption: averaging of in-situ probe readings (dithering-style closed loop, Optica 9, 579)"),
    Dim("fab_sigma_nm", "fab_sigma_m", "float", low=0.5, high=2.0, unit="nm", to_si=1e-9,
        source="as-fabricated resonance spread 0.5–2 nm (PHYSICS §8): the best process in the range may be chosen"),
    Dim("trim_mechanism", "trim_mechanism", "categorical", choices=("heater", "one-time"),
        source="PHYSICS §8/§11: heaters (held power) or a one-time post-fabrication trim"),
    Dim(ARCHITECTURE, ARCHITECTURE, "categorical",
        choices=("time-shared", "resident", "two-level:4", "two-level:8", "two-level:16"),
        source="PHYSICS §11: resident signatures vs time-shared banks; two-level super-blocks of S blocks "
        "(assumption: S = 4–16, the chip ranks N/(B·S) rows); searched only when the search is timed"),
    Dim(RERANK, RERANK, "categorical", choices=(1, 2, 4),
        source="two-stage selection (SelectionConfig.rerank): the chip proposes rerank·k blocks, exact rescoring "
        "keeps k; 1 = one-stage. Assumption: 2–4 (rerank 2 made the untimed chip exact on the reference set, "
        "benchmarks/measured/design-evaluate-rerank-b32.md)"),
)  # fmt: skip


def _field_types(config_cls: type) -> dict[str, Any]:
    """Field name -> annotation/type of a config class: dataclass fields, or pydantic ``model_fields``."""
    if dataclasses.is_dataclass(config_cls):
        import typing

        hints = typing.get_type_hints(config_cls)
        return {f.name: hints.get(f.name) for f in dataclasses.fields(config_cls)}
    fields = getattr(config_cls, "model_fields", None)
    if fields is not None:
        return {name: f.annotation for name, f in fields.items()}
    raise KvprismError(f"{config_cls.__name__} is neither a dataclass nor a pydantic model")


def _is_config_type(t: Any) -> bool:
    return isinstance(t, type) and (dataclasses.is_dataclass(t) or hasattr(t, "model_fields"))


def config_fields(config_cls: type | None = None) -> set[str]:
    """Leaf field names of the installed :class:`PhotonicConfig` (or ``config_cls``); fields of nested sections
    count by their own (unique) names, as ``PhotonicConfig.replace(name=value)`` takes them."""
    if config_cls is None:
        from kvprism.photonics import PhotonicConfig

        config_cls = PhotonicConfig
    out: set[str] = set()
    for name, t in _field_types(config_cls).items():
        out |= config_fields(t) if _is_config_type(t) else {name}
    return out


def leaf(cfg: Any, name: str) -> Any:
    """The value of leaf field ``name`` of a config, looked up in nested sections too; AttributeError if absent."""
    if hasattr(cfg, name):
        return getattr(cfg, name)
    subs = [getattr(cfg, n) for n in _field_types(type(cfg))] if _is_config_type(type(cfg)) else []
    for sub in subs:
        if _is_config_type(type(sub)):
            try:
                return leaf(sub, name)
            except AttributeError:
                pass
    raise AttributeError(f"{type(cfg).__name__} has no field {name!r}")


def active_space(
    space: Iterable[Dim] = SPACE, config_cls: type | None = None, fixed: Iterable[str] = ()
) -> tuple[list[Dim], list[Dim]]:
    """``(searched, left_out)``: rows whose field exists in the config (and is not ``fixed``), and the others."""
    names = config_fields(config_cls) | {ARCHITECTURE, RERANK}  # these rows set no config field
    fixed = set(fixed)
    rows = list(space)
    seen: set[str] = set()
    for d in rows:
        if d.name in seen:
            raise KvprismError(f"the search space has two rows named {d.name!r}")
        seen.add(d.name)
    unknown = fixed - seen
    if unknown:
        raise KvprismError(f"--fix names no search parameter: {', '.join(sorted(unknown))}; known: {', '.join(seen)}")
    keep = [d for d in rows if d.field in names and d.name not in fixed]
    return keep, [d for d in rows if d not in keep]


def space_table(space: Iterable[Dim] = SPACE) -> list[dict[str, str]]:
    """The table for display/JSON: parameter, field, range, source."""
    return [{"parameter": d.name, "field": d.field, "range": d.range_text(), "source": d.source} for d in space]


def reachable_q_max(cfg: Any, radius_m: float) -> float:
    """The largest loaded Q a ring of ``radius_m`` reaches with the loss of ``cfg``'s loss model at that radius
    (:func:`kvprism.photonics.ring.design_couplings` in ``cfg.coupling_regime``), less 0.1 %: bisection on log Q."""
    import math

    from kvprism.photonics import loss, ring

    if getattr(cfg, "loss_model", "fixed") == "bend":
        loss_db = loss.intrinsic_loss_db_per_m(
            radius_m, cfg.straight_loss_db_per_m, cfg.bend_loss_c1_db_per_m, cfg.bend_loss_c2_per_m
        )
    else:
        loss_db = cfg.loss_db_per_m

    def ok(q: float) -> bool:
        try:
            ring.design_couplings(q, cfg.wavelength_center_m, cfg.n_g, radius_m, loss_db, cfg.coupling_regime)
        except ValueError:
            return False
        return True

    lo, hi = 0.0, 12.0  # log10 Q
    if not ok(10.0**lo):
        return 0.0
    if ok(10.0**hi):
        return math.inf
    for _ in range(50):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if ok(10.0**mid) else (lo, mid)
    return 0.999 * 10.0**lo


def comb_spacing_max_m(cfg: Any, radius_m: float, n_lines: int) -> float:
    """The largest line spacing [m] whose comb of ``n_lines`` lines spans at most one FSR of a ring of ``radius_m``
    (the feasibility check: span d·Δ ≤ FSR), less 0.1 %."""
    from kvprism.photonics import ring

    return 0.999 * float(ring.fsr_m(cfg.wavelength_center_m, cfg.n_g, radius_m)) / n_lines


def q_in_reach(d: Dim, position: float, q_max: float) -> float | None:
    """The value at ``position`` ∈ [0, 1] of the allowed part of ``d``'s range (log; ``q_max`` in ``d``'s unit), or
    None when none is."""
    import math

    hi = min(float(d.high), q_max)
    if hi < float(d.low):
        return None
    return math.exp(math.log(d.low) + position * (math.log(hi) - math.log(d.low)))


def buildable_space(space: Iterable[Dim], cfg: Any) -> list[Dim]:
    """``space`` with the ring radius row's lower bound raised to the smallest radius at which a loaded Q of the Q
    row's lower bound is reachable with ``cfg``'s loss model (:func:`reachable_q_max`; a smaller ring's bend loss
    leaves no Q in the sourced range: every draw there would be rejected). Unchanged without both rows."""
    import math

    rows = list(space)
    radius = next((d for d in rows if d.field == "ring_radius_m" and d.kind == "float"), None)
    q = next((d for d in rows if d.field == "q_loaded" and d.kind == "float"), None)
    if radius is None or q is None:
        return rows
    lo, hi = math.log(radius.low), math.log(radius.high)
    if reachable_q_max(cfg, math.exp(lo) * radius.to_si) >= q.low:
        return rows
    if reachable_q_max(cfg, math.exp(hi) * radius.to_si) < q.low:
        return rows  # nothing buildable: every draw is rejected with its reason
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if reachable_q_max(cfg, math.exp(mid) * radius.to_si) >= q.low else (mid, hi)
    new_low = float(f"{math.exp(hi):.3g}")
    new_low = new_low if reachable_q_max(cfg, new_low * radius.to_si) >= q.low else math.exp(hi)
    cut = dataclasses.replace(
        radius, low=new_low,
        source=f"{radius.source}; below {new_low:g} µm the bend loss leaves no loaded Q ≥ {q.low:g} (searched from there)",
    )  # fmt: skip
    return [cut if d is radius else d for d in rows]


#: Fields that follow the drawn ring radius R (SI), each with the rule its PhotonicConfig default states: the ring
#: cell pitch 2.5·R ("assumption: 2.5·R") and the EO electrode capacitance 0.3 fF/µm over the ring's half
#: circumference π·R ("lumped TFLN electrode ~0.3 fF/µm over ~63 µm", the default's 20 fF at R = 20 µm). A search over
#: the radius sets them with it, so that area and programming energy scale with the ring drawn.
RADIUS_RULES: dict[str, Any] = {
    "ring_pitch_m": lambda r: 2.5 * r,
    "ring_capacitance_f": lambda r: 0.3e-15 / 1e-6 * 3.141592653589793 * r,
}


def radius_fields(radius_m: float, config_cls: type | None = None) -> dict[str, float]:
    """The :data:`RADIUS_RULES` fields for ``radius_m`` (those the installed config has)."""
    have = config_fields(config_cls)
    return {name: float(rule(radius_m)) for name, rule in RADIUS_RULES.items() if name in have}
