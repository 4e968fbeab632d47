"""Energy and latency of one query on the photonic chip, derived from the component parameters of a
:class:`~kvprism.photonics.config.PhotonicConfig` (SI units inside; J, s, W).

A *query* is one query vector scored against the N rows of one logical weight bank (the engine's ``queries``
counter); with dual-rail encoding it takes two optical *passes* (the engine's ``evaluations``).

Laser: the optical power per comb line that must reach a row so that the electrical SNR of a full-scale score
reaches the target (``required_score_enob`` by default) is found from the detection-noise model
(:mod:`kvprism.photonics.noise`: shot, dark, TIA, NEP, RIN), floored at the photodiode sensitivity, and carried back
to the chip input through the link budget (:mod:`kvprism.photonics.link`), then to the wall through the wall-plug
efficiency. The laser is on for one ADC sample period per pass and physical bank lit (gated laser, pipelined chip).
"""

from __future__ import annotations

import dataclasses
import math

from kvprism.errors import KvprismError
from kvprism.photonics import link, noise
from kvprism.photonics.config import PhotonicConfig
from kvprism.photonics.feasibility import electrical_snr_db as score_snr_db
from kvprism.photonics.feasibility import mid_bias_pd_power_w

__all__ = [
    "SPEED_OF_LIGHT_M_PER_S",
    "ChipQuery",
    "LaserSolution",
    "chip_query",
    "energy_adc_bits",
    "enob_to_snr_db",
    "mean_ring_drive_v2",
    "modulator_energy_per_sample_j",
    "required_laser",
    "ring_settling_s",
    "score_snr_db",
    "seed_stage_latency_s",
    "snr_to_enob",
]

#: Speed of light in vacuum [m/s] (SI exact value).
SPEED_OF_LIGHT_M_PER_S = 299_792_458.0

ENERGY_TERMS = ("laser", "dac", "modulator", "tia", "adc", "topk", "eo_programming", "paging_programming", "static")
LATENCY_STAGES = ("dac", "mzm", "propagation", "ring", "pd", "tia_adc", "topk", "extra_passes", "paging")


def snr_to_enob(snr_db: float) -> float:
    """Effective bits of a signal with SNR ``snr_db`` [dB]: (SNR − 1.76)/6.02."""
    return (snr_db - 1.76) / 6.02


def enob_to_snr_db(enob_bits: float) -> float:
    """SNR [dB] of ``enob_bits`` effective bits: 6.02·ENOB + 1.76."""
    return 6.02 * enob_bits + 1.76


def _engine(cfg: PhotonicConfig):
    from kvprism.photonics.engine import PhotonicEngine

    return PhotonicEngine(cfg, seed=0)  # no random draw happens before program(): the seed is irrelevant here


@dataclasses.dataclass(frozen=True)
class LaserSolution:
    """Laser operating point of one weight bank (all ``d`` lines) for a score-SNR target."""

    target_snr_db: float
    snr_ceiling_db: float  # RIN limit: the SNR that no laser power exceeds
    limited_by: str  # "snr" or "pd sensitivity"
    row_line_w: float  # per line at a row's photodiodes (MZM open)
    link_loss_db: float  # laser line → row, incl. the 1×rows_per_bank splitter
    laser_line_w: float  # optical, per line at the chip input
    configured_laser_line_dbm: float  # the preset's laser_line_dbm, for comparison
    d: int
    wall_plug_efficiency: float

    @property
    def laser_line_dbm(self) -> float:
        return link.w_to_dbm(self.laser_line_w)

    @property
    def optical_w(self) -> float:
        """Optical power of all ``d`` lines of one bank at the chip input [W]."""
        return self.d * self.laser_line_w

    @property
    def electrical_w(self) -> float:
        """Wall-plug power of the ``d`` lines of one bank [W]."""
        return self.optical_w / self.wall_plug_efficiency


def required_laser(cfg: PhotonicConfig, d: int | None = None, target_enob: float | None = None) -> LaserSolution:
    """Smallest laser power per line that gives a full-scale score SNR of ``target_enob`` effective bits (default
    ``cfg.required_score_enob``) and at least ``cfg.pd_sensitivity_dbm`` per photodiode; raises
    :class:`KvprismError` when RIN caps the SNR below the target. Solved by bisection on log power with the noise
    functions (SNR rises monotonically with power)."""
    d = d or cfg.n_lines
    enob = cfg.required_score_enob if target_enob is None else target_enob
    target = enob_to_snr_db(enob)
    eng = _engine(cfg)
    wr = eng.weight_range(d)
    budget = eng.link_budget(d)
    rin = noise.rin_sigma(cfg.rin_db_per_hz, cfg.detection_bandwidth_hz) if cfg.noise else 0.0
    ceiling = -20.0 * math.log10(rin) if rin > 0 else math.inf
    if target >= ceiling:
        raise KvprismError(
            f"score SNR target {target:.1f} dB (ENOB {enob:g} bit) is above the RIN ceiling {ceiling:.1f} dB "
            f"(rin_db_per_hz = {cfg.rin_db_per_hz:g}, detection_bandwidth_hz = {cfg.detection_bandwidth_hz:g}): "
            "no laser power reaches it"
        )
    # row line power at which each photodiode just reaches its sensitivity (the PD power is linear in it)
    p_sens = link.dbm_to_w(cfg.pd_sensitivity_dbm) / mid_bias_pd_power_w(cfg, 1.0, d)
    p_snr = 0.0
    if math.isfinite(target) and cfg.noise:
        lo, hi = math.log(1e-18), math.log(1e3)
        if score_snr_db(cfg, math.exp(hi), d, wr) < target:
            raise KvprismError(f"score SNR target {target:.1f} dB is not reached below 1 kW per line")
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            if score_snr_db(cfg, math.exp(mid), d, wr) >= target:
                hi = mid
            else:
                lo = mid
        p_snr = math.exp(hi)
    row_w = max(p_snr, p_sens)
    return LaserSolution(
        target_snr_db=target, snr_ceiling_db=ceiling, limited_by="snr" if p_snr >= p_sens else "pd sensitivity",
        row_line_w=row_w, link_loss_db=budget.total_loss_db,
        laser_line_w=row_w * 10.0 ** (budget.total_loss_db / 10.0), configured_laser_line_dbm=cfg.laser_line_dbm,
        d=d, wall_plug_efficiency=cfg.laser_wall_plug_efficiency,
    )  # fmt: skip


def ring_settling_s(cfg: PhotonicConfig, bits: int | None = None) -> float:
    """Time for a ring's output power to settle to 1 LSB of a ``bits``-bit ADC (default ``cfg.adc_bits``) after a
    step of the input [s]: photon lifetime τ = Q λ / (2π c) times ln(2^bits) (power decays as exp(−t/τ)); at
    least τ."""
    bits = cfg.adc_bits if bits is None else bits
    tau = cfg.q_loaded * cfg.wavelength_center_m / (2.0 * math.pi * SPEED_OF_LIGHT_M_PER_S)
    return tau * max(1.0, bits * math.log(2.0))


def energy_adc_bits(cfg: PhotonicConfig, laser: LaserSolution) -> int:
    """ADC resolution the energy model charges: ``adc_bits``, or — for an unquantised ADC (``adc_bits = 0``, the
    ideal preset) — the score ENOB the laser is sized for, rounded up."""
    return cfg.adc_bits if cfg.adc_bits > 0 else max(1, math.ceil(snr_to_enob(laser.target_snr_db) - 1e-9))


def mean_ring_drive_v2(cfg: PhotonicConfig) -> float:
    """Mean square ring drive voltage per update [V²]: V_max²/3 (drives spread uniformly over ±V_max)."""
    return cfg.v_max_v**2 / 3.0


def modulator_energy_per_sample_j(cfg: PhotonicConfig) -> float:
    """Drive energy of one MZM sample [J]: mean V² / Z over one DAC period, mean V² = V_π²/3 (drive spread over
    [0, V_π])."""
    return (cfg.mzm_v_pi_v**2 / 3.0) / cfg.mzm_termination_ohm / cfg.dac_sample_rate_hz


@dataclasses.dataclass(frozen=True)
class ChipQuery:
    """Energy [J] by term and latency [s] by stage of ``queries`` queries of one logical bank (N rows, d lines)
    per decode step, plus the bank's share of programming, paging and static energy.

    ``energy_j`` keys: laser, dac, modulator, tia, adc, topk, eo_programming (new rows: one row every block_size
    tokens), paging_programming (rows reloaded when the chip pages), static. ``latency_s`` keys: dac, mzm,
    propagation, ring (settling from Q), pd, tia_adc, topk, extra_passes (further pipelined passes), paging."""

    n_rows: int
    d: int
    k: int
    queries: int
    passes: int
    bank_slots: int  # physical banks one logical bank occupies (ceil(N / rows_per_bank))
    pages: int  # chip page loads per evaluation of all banks
    ring_writes_paging: int  # ring writes for paging, this bank's share
    laser: LaserSolution
    energy_j: dict[str, float]
    latency_s: dict[str, float]

    @property
    def total_energy_j(self) -> float:
        return sum(self.energy_j.values())

    @property
    def dynamic_energy_j(self) -> float:
        return self.total_energy_j - self.energy_j["static"]

    @property
    def total_latency_s(self) -> float:
        return sum(self.latency_s.values())


def chip_query(
    cfg: PhotonicConfig,
    n_rows: int,
    d: int | None = None,
    k: int = 8,
    *,
    queries: int = 1,
    block_size: int = 64,
    banks: int = 1,
    query_rate_hz: float | None = None,
    target_enob: float | None = None,
    laser: LaserSolution | None = None,
) -> ChipQuery:
    """Energy and latency of ``queries`` queries against one logical bank of ``n_rows`` rows and ``d`` lines (default
    ``cfg.n_lines``), selecting ``k`` rows, while ``banks`` logical banks of the same size share the chip (for
    paging: pages = ⌈banks·N / physical rows⌉, the engine's rule; when pages > 1 every row is reloaded per step).

    Static power is charged as ``static_power_w / query_rate_hz`` per query; the default rate is the chip's full
    throughput for this bank size (⌊physical rows / N⌋ banks every ``passes`` ADC periods) — a lower bound on the
    static share. ``laser`` reuses a :func:`required_laser` result (it depends on cfg, d and the target only)."""
    if n_rows < 1:
        raise KvprismError(f"n_rows = {n_rows} is invalid; allowed range: [1, inf)")
    if not 1 <= k <= n_rows:
        raise KvprismError(f"k = {k} is invalid; allowed range: [1, {n_rows}] (n_rows)")
    if queries < 1 or banks < 1 or block_size < 1:
        raise KvprismError(f"queries, banks and block_size must be ≥ 1 (got {queries}, {banks}, {block_size})")
    d = d or cfg.n_lines
    las = laser or required_laser(cfg, d, target_enob)
    passes = 2 if cfg.encoding == "dual-rail" else 1
    n_pass = queries * passes
    t_slot = 1.0 / cfg.adc_sample_rate_hz
    slots = math.ceil(n_rows / cfg.rows_per_bank)
    pages = math.ceil(banks * n_rows / cfg.physical_rows)
    writes_paging = n_rows * d if pages > 1 else 0
    cv2 = cfg.ring_capacitance_f * mean_ring_drive_v2(cfg)
    adc_bits = energy_adc_bits(cfg, las)
    if query_rate_hz is None:
        query_rate_hz = max(1, cfg.physical_rows // n_rows) / (passes * t_slot)
    if query_rate_hz <= 0:
        raise KvprismError(f"query_rate_hz = {query_rate_hz} is invalid; allowed range: (0, inf)")
    energy = {
        "laser": las.electrical_w * t_slot * n_pass * slots,
        "dac": n_pass * d * cfg.dac_energy_per_sample_j,
        "modulator": n_pass * d * modulator_energy_per_sample_j(cfg),
        "tia": n_pass * n_rows * cfg.tia_power_w * t_slot,
        "adc": n_pass * n_rows * cfg.adc_walden_fom_j_per_step * 2.0**adc_bits,
        "topk": queries * n_rows * (1 + math.ceil(math.log2(k))) * cfg.topk_energy_per_compare_j,
        "eo_programming": d * cv2 / block_size,
        "paging_programming": writes_paging * cv2,
        "static": cfg.static_power_w * queries / query_rate_hz,
    }
    stage_sum = (
        cfg.latency_dac_s + cfg.latency_mzm_s + cfg.latency_propagation_s + ring_settling_s(cfg, adc_bits)
        + cfg.latency_pd_s + cfg.latency_tia_adc_s
    )  # fmt: skip
    latency = {
        "dac": cfg.latency_dac_s,
        "mzm": cfg.latency_mzm_s,
        "propagation": cfg.latency_propagation_s,
        "ring": ring_settling_s(cfg, adc_bits),
        "pd": cfg.latency_pd_s,
        "tia_adc": cfg.latency_tia_adc_s,
        "topk": cfg.latency_topk_s,
        "extra_passes": (n_pass - 1) * t_slot,
        # all rows of all banks rewritten, plus one more optical evaluation per extra page
        "paging": (banks * n_rows * d / cfg.program_rate_rings_per_s + (pages - 1) * stage_sum) if pages > 1 else 0.0,
    }
    return ChipQuery(
        n_rows=n_rows, d=d, k=k, queries=queries, passes=passes, bank_slots=slots, pages=pages,
        ring_writes_paging=writes_paging, laser=las, energy_j=energy, latency_s=latency,
    )  # fmt: skip


def seed_stage_latency_s(cfg: PhotonicConfig) -> float:
    """Sum of the seed's quoted stage latencies (Table III values as stored in ``cfg``), ring stage included as
    quoted rather than derived from Q [s]."""
    return (
        cfg.latency_dac_s + cfg.latency_mzm_s + cfg.latency_propagation_s + cfg.latency_ring_s + cfg.latency_pd_s
        + cfg.latency_tia_adc_s + cfg.latency_topk_s
    )  # fmt: skip
