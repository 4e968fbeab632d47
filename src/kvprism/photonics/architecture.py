"""Chip architectures: where the rows of a decode step live (PHYSICS.md §11, "resident signatures vs time-shared
banks is the central trade-off").

* ``time-shared`` (the default, the model of :func:`~kvprism.photonics.design.decode_timing` before architectures
  existed): the configured ``n_banks`` physical banks of ``rows_per_bank`` rows are rewritten every decode step with
  the rows of the (layer, KV head) banks they serve.
* ``resident``: append-only banks. Every (sequence, layer, KV head) keeps its rows on the chip: ⌈rows / rows_per_bank⌉
  physical banks of ⌈rows / slots⌉ rows each, rows = ⌊context / block_size⌋ (the chip is sized for the context;
  ``rows_per_bank`` is the largest bank, the 1×N splitter). Per decode step only the rows appended are written and
  calibrated: one row per bank every ``block_size`` tokens (all banks at the same token), amortised 1/block_size per
  token. Held rows drift: every bank is recalibrated in the chip's idle share of each step, as often as the drift
  budget needs (:func:`drift_recalibration_period_s`), with the probes broadcast to all banks at once (the banks
  calibrate in parallel, one bank's calibration time per sweep).
* ``two-level``: the resident chip holds one row per *super-block* of ``superblock`` = S blocks (its signature: the
  mean of its blocks' signatures); the chip ranks the super-blocks, the electronics rescores exactly the block
  signatures inside the chosen ones (read from memory, as ``rerank`` reads its candidates) and those of the open
  (incomplete) super-block. Rows and rings divide by S; one row is appended every S·block_size tokens.

Area, dies, heaters and held drives of a resident chip follow from its :class:`~kvprism.photonics.design.ChipDesign`
(the config with ``n_banks`` and ``rows_per_bank`` of the plan, :func:`chip_config`): dies = ⌈area / reticle⌉ with
the reticle of ``max_chip_area_m2`` (photonic die) and ``max_electronic_area_m2`` (the electronic die stacked under
it); the trim heaters of every resident ring are held all the time (:func:`kvprism.photonics.feasibility.trim_check`),
and so is one drive channel per ring.
"""

from __future__ import annotations

import dataclasses
import math

from kvprism.errors import KvprismError
from kvprism.photonics.config import PhotonicConfig

__all__ = [
    "ARCHITECTURES",
    "DEFAULT_MAX_DIES",
    "Architecture",
    "ChipPlan",
    "chip_config",
    "chip_plan",
    "drift_detuning_budget_m",
    "drift_recalibration_period_s",
    "hold_rms_m",
    "package_violations",
    "rows_per_logical_bank",
    "two_level_read_blocks",
]

ARCHITECTURES = ("time-shared", "resident", "two-level")

#: Reticle-size dies one package may hold (photonic dies, each with its electronic die stacked under it).
#: Assumption: TSMC CoWoS-L interposers carry ~3.3 reticles of silicon (2024) and 5.5 are announced; 4 dies is the
#: middle of that range (a resident chip that needs more is reported as not fitting a package).
DEFAULT_MAX_DIES = 4


@dataclasses.dataclass(frozen=True)
class Architecture:
    """How the chip holds the rows (see the module docstring). ``superblock``: blocks per chip row (S, two-level
    only; 1 otherwise); ``max_dies``: reticle-size dies allowed in one package (:data:`DEFAULT_MAX_DIES`)."""

    kind: str = "time-shared"
    superblock: int = 1
    max_dies: int = DEFAULT_MAX_DIES

    def __post_init__(self) -> None:
        if self.kind not in ARCHITECTURES:
            raise KvprismError(f"architecture = {self.kind!r} is invalid; allowed: {', '.join(ARCHITECTURES)}")
        s = self.superblock
        if not isinstance(s, int) or isinstance(s, bool) or s < 1:
            raise KvprismError(f"superblock = {s!r} is invalid; allowed range: [1, inf) blocks")
        if self.kind == "two-level" and s < 2:
            raise KvprismError(f"superblock = {s} is invalid for two-level; allowed range: [2, inf) blocks")
        if self.kind != "two-level" and s != 1:
            raise KvprismError(f"superblock = {s} needs architecture 'two-level' (got {self.kind!r})")
        if not isinstance(self.max_dies, int) or self.max_dies < 1:
            raise KvprismError(f"max_dies = {self.max_dies!r} is invalid; allowed range: [1, inf)")

    @classmethod
    def parse(cls, text: str | Architecture | None, superblock: int | None = None) -> Architecture:
        """``'time-shared'``, ``'resident'``, ``'two-level'`` (with ``superblock``) or ``'two-level:S'``; an
        :class:`Architecture` is returned as is; None is the default, or two-level when only ``superblock`` is
        given."""
        if text is None:
            return cls() if superblock is None else cls("two-level", superblock)
        if isinstance(text, Architecture):
            return text
        kind, _, s = str(text).partition(":")
        if s:
            try:
                sb = int(s)
            except ValueError:
                raise KvprismError(
                    f"architecture {text!r}: the super-block size after ':' must be an integer"
                ) from None
            if superblock is not None and superblock != sb:
                raise KvprismError(f"architecture {text!r} and superblock = {superblock} disagree")
            return cls(kind, sb)
        return cls(kind, superblock if superblock is not None else 1)

    @property
    def label(self) -> str:
        """``'time-shared'``, ``'resident'`` or ``'two-level:S'`` (what :meth:`parse` reads back)."""
        return f"two-level:{self.superblock}" if self.kind == "two-level" else self.kind

    @property
    def resident(self) -> bool:
        """Every row of the step stays on the chip (resident or two-level)."""
        return self.kind != "time-shared"


def rows_per_logical_bank(arch: Architecture, context: int, block_size: int) -> int:
    """Chip rows of one (sequence, layer, KV head): complete blocks ⌊context / B⌋, or complete super-blocks
    ⌊context / (B·S)⌋ for two-level (the open super-block's blocks are rescored electronically); at least 1."""
    return max(1, context // (block_size * arch.superblock))


def two_level_read_blocks(arch: Architecture, context: int, block_size: int, k: int, rerank: int = 1) -> int:
    """Block signatures the electronics reads per (sequence, layer, KV head) and step to rescore a two-level
    selection: the blocks of the ``min(rerank·k, super-blocks)`` chosen super-blocks (S each: the k best blocks may
    lie in k different super-blocks) and the complete blocks of the open super-block (≤ S − 1), at most every
    complete block; 0 for the other architectures."""
    if arch.kind != "two-level":
        return 0
    n_blocks = context // block_size
    s = arch.superblock
    n_super = n_blocks // s
    return min(n_blocks, min(rerank * k, n_super) * s + n_blocks - n_super * s)


def chip_config(
    cfg: PhotonicConfig,
    arch: Architecture,
    *,
    n_layers: int,
    kv_heads: int,
    context: int,
    block_size: int,
    batch: int = 1,
) -> PhotonicConfig:
    """The configuration of the physical chip of ``arch``: ``cfg`` itself when time-shared; otherwise ``n_banks`` =
    batch × layers × KV heads × slots physical banks of ``rows_per_bank`` = ⌈rows / slots⌉ rows, slots =
    ⌈rows / cfg.rows_per_bank⌉ (``cfg.rows_per_bank`` is the largest bank the splitter allows)."""
    if not arch.resident:
        return cfg
    rows = rows_per_logical_bank(arch, context, block_size)
    slots = math.ceil(rows / cfg.rows_per_bank)
    return cfg.replace(rows_per_bank=math.ceil(rows / slots), n_banks=batch * n_layers * kv_heads * slots)


# ---------------------------------------------------------------------------------------------- drift budget
def hold_rms_m(drift_var_m2: float, corr_time_s: float, period_s: float) -> float:
    """RMS detuning error [m] of codes recalibrated every ``period_s``, averaged over the period, for an AR(1)
    (Ornstein–Uhlenbeck) drift of variance ``drift_var_m2`` and correlation time ``corr_time_s``: the drift moves by
    x(t) − x(0) with variance 2σ²(1 − e^(−t/τ)); its mean over [0, P] is 2σ²(1 − (τ/P)(1 − e^(−P/τ))) (the
    continuous-time form of :func:`kvprism.photonics.design.zero_order_hold_rms_m`)."""
    if drift_var_m2 == 0.0 or period_s <= 0.0:
        return 0.0
    if math.isinf(period_s):
        return math.sqrt(2.0 * drift_var_m2)
    x = period_s / corr_time_s
    frac = 1.0 - (-math.expm1(-x)) / x if x > 1e-8 else 0.5 * x
    return math.sqrt(max(0.0, 2.0 * drift_var_m2 * frac))


def drift_detuning_budget_m(design) -> float:
    """Detuning error [m] worth one weight LSB/√12 of ``required_weight_bits`` over ±w_r at the steepest point of
    the single-ring weight curve w(δ) inside the drive range [detuning_lo_m, detuning_hi_m] (centre line; 257
    samples): the drift a held row may accumulate before its worst weights lose that precision."""
    import torch

    from kvprism.photonics import ring

    c = design.config
    per_m = 2.0 * math.pi * c.n_g * ring.ring_length_m(c.ring_radius_m) / c.wavelength_center_m**2
    det = torch.linspace(design.detuning_lo_m, design.detuning_hi_m, 257, dtype=torch.float64)
    w = ring.single_ring_weight(det * per_m, design.r1, design.r2, design.a)
    slope = float((w.diff() / det.diff()).abs().max())
    lsb = 2.0 * design.weight_range / 2.0**c.required_weight_bits
    return lsb / math.sqrt(12.0) / max(slope, 1e-30)


def drift_recalibration_period_s(design) -> float:
    """Longest recalibration period [s] that keeps the held rows' drift (:func:`hold_rms_m` of the per-ring, global
    and field drift of the config, correlation time ``drift_corr_time_s``) within :func:`drift_detuning_budget_m`;
    ``inf`` when the drift never exceeds the budget (or there is none). The TFLN DC relaxation
    (``dc_relax_fraction``) is not part of it (0 in the shipped presets)."""
    var = design.drift_var_m2
    budget = drift_detuning_budget_m(design)
    tau = design.config.drift_corr_time_s
    if var == 0.0 or hold_rms_m(var, tau, math.inf) <= budget:
        return math.inf
    lo, hi = 0.0, tau
    while hold_rms_m(var, tau, hi) <= budget:
        lo, hi = hi, 2.0 * hi
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if hold_rms_m(var, tau, mid) <= budget else (lo, mid)
    return lo


# ---------------------------------------------------------------------------------------------- the plan
@dataclasses.dataclass(frozen=True)
class ChipPlan:
    """What one architecture builds for a workload: banks, rows, rings, areas [m²], dies, held powers [W] and the
    per-step work of keeping the rows (appended rows and ring writes per decode step, amortised)."""

    architecture: Architecture
    logical_banks: int  # batch × layers × KV heads
    rows_per_logical_bank: int  # blocks (super-blocks for two-level) on the chip per logical bank
    slots: int  # physical banks per logical bank
    physical_banks: int
    rows_per_physical_bank: int
    rows: int  # physical rows
    rings: int  # rows × d
    photonic_area_m2: float  # rings + PD pairs + MZMs (ChipDesign)
    electronic_area_m2: float  # TIAs + ADCs + ring drivers (ChipDesign)
    photonic_dies: int
    electronic_dies: int
    heaters: int
    heater_power_w: float  # all heaters, held
    driver_power_w: float  # one drive channel per ring, held
    appended_rows_per_step: float  # rows written and calibrated per decode step (amortised)
    appended_ring_writes_per_step: float

    @property
    def dies(self) -> int:
        """Reticle-size die stacks: photonic dies, each with its electronic die under it."""
        return max(self.photonic_dies, self.electronic_dies)

    @property
    def heater_power_per_die_w(self) -> float:
        """Held heater power of one photonic die [W] (the rings spread evenly over the dies)."""
        return self.heater_power_w / self.photonic_dies


def chip_plan(
    cfg: PhotonicConfig,
    arch: Architecture,
    *,
    n_layers: int,
    kv_heads: int,
    context: int,
    block_size: int,
    batch: int = 1,
    d: int | None = None,
) -> ChipPlan:
    """The :class:`ChipPlan` of ``arch`` for a model of ``n_layers`` × ``kv_heads`` at ``context`` tokens (blocks of
    ``block_size``), ``batch`` sequences, ``d`` lines (default ``cfg.n_lines``). A time-shared plan is the configured
    chip (its rows are rewritten, not appended: ``appended_rows_per_step`` counts the new rows of the logical banks
    all the same, as :func:`kvprism.energy.chip.chip_query` charges their C·V²)."""
    from kvprism.photonics.design import ChipDesign
    from kvprism.photonics.feasibility import trim_check

    chip = chip_config(cfg, arch, n_layers=n_layers, kv_heads=kv_heads, context=context, block_size=block_size,
                       batch=batch)  # fmt: skip
    des = ChipDesign.from_config(chip, d)
    logical = batch * n_layers * kv_heads
    rows_logical = rows_per_logical_bank(arch, context, block_size)
    slots = chip.n_banks // logical if arch.resident else math.ceil(rows_logical / cfg.rows_per_bank)
    trim = trim_check(chip, des)
    appended = logical / (block_size * arch.superblock)
    return ChipPlan(
        architecture=arch, logical_banks=logical, rows_per_logical_bank=rows_logical, slots=slots,
        physical_banks=chip.n_banks, rows_per_physical_bank=chip.rows_per_bank, rows=des.rows, rings=des.mrr_count,
        photonic_area_m2=des.photonic_area_m2, electronic_area_m2=des.electronic_area_m2,
        photonic_dies=max(1, math.ceil(des.photonic_area_m2 / chip.max_chip_area_m2 - 1e-12)),
        electronic_dies=max(1, math.ceil(des.electronic_area_m2 / chip.max_electronic_area_m2 - 1e-12)),
        heaters=trim.heaters, heater_power_w=trim.chip_power_w, driver_power_w=des.mrr_count * chip.ring_driver_power_w,
        appended_rows_per_step=appended, appended_ring_writes_per_step=appended * des.d,
    )  # fmt: skip


def package_violations(cfg: PhotonicConfig, design, trim, timing) -> list[str] | None:
    """The area and heater checks of a resident or two-level chip (``timing`` from
    :func:`~kvprism.photonics.design.decode_timing` with that architecture; ``cfg`` timed by it): the die stacks
    needed (photonic dies of ``max_chip_area_m2``, each with an electronic die of ``max_electronic_area_m2`` under
    it) at most ``timing.max_dies``, and the held heater power of one photonic die at most ``trim_max_chip_power_w``
    (the package removes that much per die). None for a time-shared timing (or none): the single-die checks of
    :func:`~kvprism.photonics.feasibility.feasibility` apply."""
    if timing is None or not timing.chip_banks:
        return None
    out = []
    p_dies = max(1, math.ceil(design.photonic_area_m2 / cfg.max_chip_area_m2 - 1e-12))
    e_dies = max(1, math.ceil(design.electronic_area_m2 / cfg.max_electronic_area_m2 - 1e-12))
    dies = max(p_dies, e_dies)
    if dies > timing.max_dies:
        out.append(
            f"{timing.architecture} banks of {design.mrr_count:,} rings ({design.rows:,} rows × {design.d} lines) need "
            f"{design.photonic_area_m2 * 1e6:,.0f} mm² of photonics and {design.electronic_area_m2 * 1e6:,.0f} mm² of "
            f"electronics: {dies} die stacks of {cfg.max_chip_area_m2 * 1e6:g} mm², above the {timing.max_dies} a "
            "package holds (DEFAULT_MAX_DIES)"
        )
    if trim.mechanism == "heater" and trim.chip_power_w / p_dies > cfg.trim_max_chip_power_w:
        out.append(
            f"{trim.heaters:,} trim heaters hold {trim.chip_power_w:.3g} W in all ({trim.mean_power_w * 1e3:.3g} mW "
            f"each), {trim.chip_power_w / p_dies:.3g} W on each of {p_dies} photonic dies, above the "
            f"{cfg.trim_max_chip_power_w:g} W a die's package removes (trim_max_chip_power_w); a one-time trim holds "
            "no power"
        )
    return out
