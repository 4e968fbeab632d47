"""Energy and latency of one query on the photonic chip, derived from the component parameters of a
:class:`~kvprism.photonics.config.PhotonicConfig` (SI units inside; J, s, W).

A *query* is one query vector scored against the N rows of one logical weight bank (the engine's ``queries``
counter); with dual-rail encoding it takes two optical *passes* (the engine's ``evaluations``).

Every design quantity (weight range, link budget, photon lifetime, integration time, power caps) comes from
:class:`~kvprism.photonics.design.ChipDesign`; nothing here builds an engine.

Laser: the optical power per comb line that must reach a row so that the *score-referred* SNR of the detection noise
(:func:`~kvprism.photonics.design.score_snr_db`: the spread of the scores between rows on the reference score
distribution against shot, dark, TIA, NEP and RIN noise) reaches the target (``required_score_enob`` by default),
floored at the photodiode sensitivity, carried back to the chip input through the link budget, then to the wall
through the wall-plug efficiency. It never exceeds the optical power caps (comb line, input waveguide, MZM, ring
circulating power, photodiode saturation: ``ChipDesign.laser_cap_w``); when the target needs more, the solution is
capped there and marked infeasible. The laser is on for one integration time T_int = 1/(2·detection_bandwidth_hz)
per pass and physical bank lit (gated laser, pipelined chip); TIAs are powered for the same symbol.
"""

from __future__ import annotations

import dataclasses
import math

from kvprism.errors import KvprismError
from kvprism.photonics import link
from kvprism.photonics.config import PhotonicConfig
from kvprism.photonics.design import (
    SPEED_OF_LIGHT_M_PER_S,
    ChipDesign,
    calibration_probes,
    mid_bias_pd_power_w,
    rin_ceiling_db,
)
from kvprism.photonics.design import score_snr_db as _design_score_snr_db

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
    "step_ledger",
]

ENERGY_TERMS = ("laser", "dac", "modulator", "tia", "adc", "topk", "eo_programming", "paging_programming", "static")
LATENCY_STAGES = (
    "dac", "mzm", "propagation", "ring", "integration", "pd", "tia_adc", "topk", "extra_passes", "paging",
)  # fmt: skip


def snr_to_enob(snr_db: float) -> float:
    """Effective bits of a signal with SNR ``snr_db`` [dB]: (SNR − 1.76)/6.02."""
    return (snr_db - 1.76) / 6.02


def enob_to_snr_db(enob_bits: float) -> float:
    """SNR [dB] of ``enob_bits`` effective bits: 6.02·ENOB + 1.76."""
    return 6.02 * enob_bits + 1.76


def score_snr_db(cfg: PhotonicConfig, row_line_w: float, d: int | None = None) -> float:
    """Score-referred SNR [dB] of the detection noise at ``row_line_w`` [W] per line at a row
    (:func:`kvprism.photonics.design.score_snr_db` of ``ChipDesign.from_config(cfg, d)``)."""
    return _design_score_snr_db(cfg, ChipDesign.from_config(cfg, d), row_line_w)


@dataclasses.dataclass(frozen=True)
class LaserSolution:
    """Laser operating point of one weight bank (all ``d`` lines) for a score-SNR target, within the power caps."""

    target_snr_db: float
    snr_ceiling_db: float  # RIN limit: the score-referred SNR that no laser power exceeds
    limited_by: str  # "snr", "pd sensitivity", or "power cap: <limit>" (infeasible)
    row_line_w: float  # per line at a row's photodiodes (MZM open)
    link_loss_db: float  # laser line → row, incl. demux, mux, the 1×rows_per_bank splitter and the routing
    laser_line_w: float  # optical, per line at the chip input (≤ cap_laser_line_w)
    configured_laser_line_dbm: float  # the preset's laser_line_dbm, for comparison
    d: int
    wall_plug_efficiency: float
    cap_laser_line_w: float  # largest laser power per line that every power cap allows
    achieved_snr_db: float  # score-referred SNR at row_line_w
    feasible: bool  # the target is reached within the caps
    reason: str = ""  # why not, when infeasible

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
    """Smallest laser power per line that gives a score-referred SNR of ``target_enob`` effective bits (default
    ``cfg.required_score_enob``) and at least the photodiode sensitivity (``ChipDesign.pd_sensitivity_dbm``) per photodiode, never above the power caps
    (``ChipDesign.laser_cap_w``): when the target or the sensitivity needs more, the laser is set to the cap and the
    solution is ``feasible = False`` with the reason. Raises :class:`KvprismError` when RIN caps the SNR below the
    target at any power. Solved by bisection on log power (the SNR rises monotonically with power)."""
    des = ChipDesign.from_config(cfg, d)
    d = des.d
    enob = cfg.required_score_enob if target_enob is None else target_enob
    target = enob_to_snr_db(enob)
    ceiling = rin_ceiling_db(cfg, des) if cfg.noise else math.inf
    if target >= ceiling:
        raise KvprismError(
            f"score SNR target {target:.1f} dB (ENOB {enob:g} bit) is above the RIN ceiling {ceiling:.1f} dB "
            f"(rin_db_per_hz = {cfg.rin_db_per_hz:g}, detection_bandwidth_hz = {cfg.detection_bandwidth_hz:g}): "
            "no laser power reaches it"
        )

    def snr(row_w: float) -> float:
        return _design_score_snr_db(cfg, des, row_w)

    cap_laser = des.laser_cap_w
    row_cap = des.row_line_w_at(cap_laser)
    # row line power at which each photodiode just reaches its sensitivity (the PD power is linear in it)
    p_sens = link.dbm_to_w(des.pd_sensitivity_dbm) / mid_bias_pd_power_w(cfg, 1.0, d)
    p_snr = 0.0
    reasons = []
    if math.isfinite(target) and cfg.noise:
        if snr(row_cap) < target:
            reasons.append(
                f"score SNR target {target:.1f} dB needs more than the caps allow ({link.w_to_dbm(cap_laser):.1f} dBm "
                f"per line, {des.binding_power_limit.name}): {snr(row_cap):.1f} dB there"
            )
            p_snr = row_cap
        else:
            lo, hi = math.log(1e-18), math.log(row_cap)
            for _ in range(200):
                mid = 0.5 * (lo + hi)
                if snr(math.exp(mid)) >= target:
                    hi = mid
                else:
                    lo = mid
            p_snr = math.exp(hi)
    if p_sens > row_cap:
        reasons.append(
            f"the photodiode sensitivity {des.pd_sensitivity_dbm:.1f} dBm needs {link.w_to_dbm(des.laser_line_w_for(p_sens)):.1f} "
            f"dBm per line, above the caps' {link.w_to_dbm(cap_laser):.1f} dBm ({des.binding_power_limit.name})"
        )
    row_w = min(max(p_snr, p_sens), row_cap)
    if reasons:
        limited = f"power cap: {des.binding_power_limit.name}"
    else:
        limited = "snr" if p_snr >= p_sens else "pd sensitivity"
    laser_w = min(des.laser_line_w_for(row_w), cap_laser)
    return LaserSolution(
        target_snr_db=target, snr_ceiling_db=ceiling, limited_by=limited, row_line_w=row_w,
        link_loss_db=des.link.total_loss_db, laser_line_w=laser_w, configured_laser_line_dbm=cfg.laser_line_dbm,
        d=d, wall_plug_efficiency=cfg.laser_wall_plug_efficiency, cap_laser_line_w=cap_laser,
        achieved_snr_db=snr(row_w), feasible=not reasons, reason="; ".join(reasons),
    )  # fmt: skip


def ring_settling_s(cfg: PhotonicConfig, bits: int | None = None) -> float:
    """Time for a ring's output power to settle to 1 LSB of a ``bits``-bit ADC (default ``cfg.adc_bits``) after a
    step of the input [s]: photon lifetime τ = Q λ / (2π c) times ln(2^bits) (power decays as exp(−t/τ)); at
    least τ."""
    bits = cfg.adc_bits if bits is None else bits
    return ChipDesign.from_config(cfg).ring_settling_s(bits)


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
    propagation, ring (settling from Q), integration (one symbol T_int), pd, tia_adc, topk, extra_passes (further
    pipelined passes), paging."""

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
    throughput for this bank size (⌊physical rows / N⌋ banks every ``passes`` symbols T_int) — a lower bound on the
    static share. ``laser`` reuses a :func:`required_laser` result (it depends on cfg, d and the target only)."""
    if n_rows < 1:
        raise KvprismError(f"n_rows = {n_rows} is invalid; allowed range: [1, inf)")
    if not 1 <= k <= n_rows:
        raise KvprismError(f"k = {k} is invalid; allowed range: [1, {n_rows}] (n_rows)")
    if queries < 1 or banks < 1 or block_size < 1:
        raise KvprismError(f"queries, banks and block_size must be ≥ 1 (got {queries}, {banks}, {block_size})")
    des = ChipDesign.from_config(cfg, d)
    d = des.d
    las = laser or required_laser(cfg, d, target_enob)
    passes = des.passes
    n_pass = queries * passes
    t_slot = des.integration_time_s  # one query symbol: integrate-and-dump over T_int = 1/(2 Δf)
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
        "tia": n_pass * n_rows * des.tia_power_w(des.noise_bandwidth_hz) * t_slot,
        "adc": n_pass * n_rows * cfg.adc_walden_fom_j_per_step * 2.0**adc_bits,
        "topk": queries * n_rows * (1 + math.ceil(math.log2(k))) * cfg.topk_energy_per_compare_j,
        "eo_programming": d * cv2 / block_size,
        "paging_programming": writes_paging * cv2,
        "static": cfg.static_power_w * queries / query_rate_hz,
    }
    settle = des.ring_settling_s(adc_bits)
    stage_sum = (
        cfg.latency_dac_s + cfg.latency_mzm_s + cfg.latency_propagation_s + settle + t_slot
        + cfg.latency_pd_s + cfg.latency_tia_adc_s
    )  # fmt: skip
    latency = {
        "dac": cfg.latency_dac_s,
        "mzm": cfg.latency_mzm_s,
        "propagation": cfg.latency_propagation_s,
        "ring": settle,
        "integration": t_slot,
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


# ---------------------------------------------------------------------------------------------- the step's ledger
#: Where each term of :func:`step_ledger` comes from (printed beside the numbers).
LEDGER_SOURCES = {
    "laser": "light at the wall plug: laser_mode 'comb' = the comb pump, CW for the whole step (a CW comb cannot be "
    "gated): n_banks × d × laser_line_dbm / (comb_conversion_efficiency × laser_wall_plug_efficiency); 'cw' = "
    "lasers without comb conversion, on all step; 'gated' = on only while the banks probe or query (best case)",
    "dac": "query DACs: d samples per pass and query (IEEE 9162776: 3.6 pJ/sample)",
    "modulator": "query MZM drive: V_π²/3 / 50 Ω per DAC period; one set of d MZMs per physical bank, shared by the "
    "layers (they run in turn)",
    "tia": "TIA of every physical row, powered while the banks query (at the query bandwidth) and probe (at the probe "
    "bandwidth): max(tia_min_power_w, tia_power_w · Δf / tia_reference_bandwidth_hz) (40 nm TIA, 2.03 mW at 8 GHz)",
    "adc": "one conversion per row, pass and query: Walden FoM 25 fJ/step × 2^adc_bits (IEEE 9731625)",
    "topk": "comparisons of the electronic top-k (Horowitz ISSCC 2014: 0.03 pJ)",
    "eo_programming": "C·V² of new rows (one per bank every block_size tokens)",
    "paging_programming": "C·V² of the rewrites of time-shared banks",
    "calibration": "in-situ calibration probes: per bank calibration, probe samples × rows ADC conversions, the rows' "
    "TIAs for the calibration time at the probe bandwidth, and C·V² of the (2·iters + 1) drive updates",
    "append_calibration": "resident and two-level banks: in-situ calibration of the rows appended per step (one row "
    "per bank every block_size·superblock tokens, amortised): the calibration term's cost per row",
    "ring_drivers": "one ±V_max drive channel per ring holding its voltage all step (ring_driver_power_w, assumption "
    "from the seed's 0.5 mW per DAC channel)",
    "trim_heaters": "held heater power of every ring for ±3σ of fab_sigma_m (Liu et al., Opt. Lett. 45, 6318 (2020): "
    "14.9 mW per FSR); 0 for a one-time trim (residual trim_sigma_m)",
}


def step_ledger(
    cfg: PhotonicConfig,
    timing,
    *,
    d: int | None = None,
    laser_mode: str = "comb",
) -> dict[str, float]:
    """Energy [J] per decode step of the chip's terms that follow from its time line (``timing``: a
    :class:`~kvprism.photonics.design.DecodeTiming`, ``cfg`` timed by it): ``laser`` (light source, see
    :data:`LEDGER_SOURCES`), ``tia`` (every physical row's TIA while querying and probing), ``calibration`` (probes),
    ``ring_drivers`` and ``trim_heaters`` (held all step), ``append_calibration`` (resident and two-level: the rows
    appended per step). A resident or two-level chip (``timing.chip_banks``) queries one layer's banks at a time:
    only their rows' TIAs are powered while querying, and a gated laser lights only them (the comb feeds every bank
    through a passive split: its CW pump serves all banks, as the broadcast probes need). The per-query terms (DACs,
    MZMs, ADC, top-k, C·V²) come from :func:`chip_query`."""
    from kvprism.photonics.feasibility import trim_check

    if laser_mode not in ("comb", "cw", "gated"):
        raise KvprismError(f"laser_mode = {laser_mode!r} is invalid; allowed: 'comb', 'cw', 'gated'")
    des = ChipDesign.from_config(cfg, d)
    step = timing.step_s
    probe_bw = 0.5 / des.probe_sample_time_s
    cal_one = des.calibration_time_s
    probe_busy = timing.calibrations_per_step * cal_one / cfg.n_banks  # wall time the banks probe, per step
    lines_w = cfg.n_banks * des.d * link.dbm_to_w(cfg.laser_line_dbm)
    # share of the banks (and rows) lit by a query: all of them when time-shared, one layer's when resident
    query_share = 1.0 / timing.n_layers if getattr(timing, "chip_banks", 0) else 1.0
    if laser_mode == "comb":
        light = lines_w / (cfg.comb_conversion_efficiency * cfg.laser_wall_plug_efficiency) * step
    elif laser_mode == "cw":
        light = lines_w / cfg.laser_wall_plug_efficiency * step
    else:
        light = lines_w / cfg.laser_wall_plug_efficiency * (query_share * timing.query_s + probe_busy)
    rows = des.rows
    tia = rows * (
        des.tia_power_w(timing.noise_bandwidth_hz) * query_share * timing.query_s
        + des.tia_power_w(probe_bw) * probe_busy
    )
    per_cal = 0.0
    if cal_one > 0:
        bits = cfg.adc_bits if cfg.adc_bits > 0 else 8
        conversions = calibration_probes(cfg, des.d) * cfg.rows_per_bank
        writes = (2 * cfg.calibration_iters + 1) * cfg.rows_per_bank * des.d
        per_cal = (
            conversions * cfg.adc_walden_fom_j_per_step * 2.0**bits
            + cfg.rows_per_bank * des.tia_power_w(probe_bw) * cal_one
            + writes * cfg.ring_capacitance_f * mean_ring_drive_v2(cfg)
        )
    trim = trim_check(cfg, des)
    appended = getattr(timing, "appended_rows_per_step", 0.0) if getattr(timing, "chip_banks", 0) else 0.0
    return {
        "laser": light,
        "tia": tia,
        "calibration": timing.calibrations_per_step * per_cal,
        "append_calibration": appended * per_cal / cfg.rows_per_bank,
        "ring_drivers": des.mrr_count * cfg.ring_driver_power_w * step,
        "trim_heaters": trim.chip_power_w * step,
    }
