"""``ChipDesign``: every design quantity of a photonic configuration that follows from its parameters alone.

Pure: ``ChipDesign.from_config(cfg, d)`` draws nothing and builds no engine; the feasibility verdict
(:mod:`kvprism.photonics.feasibility`) and the energy model (:mod:`kvprism.energy.chip`) read their numbers from it.
SI units; equations and sources in PHYSICS.md (§1 ring, §2 weight range, §6 link, §7 noise, §11 time, power, area).

* couplers r1, r2 (from ``q_loaded``), a; FSR, FWHM, finesse, Q_loaded, Q_intrinsic; photon lifetime τ = Q λ / (2π c); circulating-power
  build-up on resonance (1 − r1²)/(1 − r1 r2 a)² ≈ finesse/π;
* the rest (0 V) detuning set by the trim, the closed loop's compensation margin, and the drive's detuning range, the realisable single-ring weight range and the symmetric range w_r used for a bank;
* the drift's correlation time in decode steps, its zero-order-hold error and the spatial field's neighbour
  correlation;
* the worst neighbour leakage (drop power of a ring onto another line over the drive range, all FSR orders);
* the bank geometry (height = rows_per_bank × ring_pitch, width = d × ring_pitch) → routing length → link budget
  (coupler, demux, MZM, mux, 1×N splitter, routing, crossings, ring insertion, PD coupling);
* detection timing: integrate-and-dump over T_int with noise bandwidth 1/(2·T_int) = ``detection_bandwidth_hz``, one
  ADC conversion per row and T_int (the ADC rate follows); :func:`decode_timing` derives T_int from a model shape and
  a decode rate, :func:`timed_by_decode` applies it;
* optical power limits (comb line, input waveguide, MZM, ring circulating power, photodiode saturation) as the
  largest laser power per line each allows;
* areas: rings, each row's balanced photodiode pair, the query MZMs (photonic die); each row's TIA and ADC
  (electronic die);
* the query encoding's MZM floor t_min and DAC level table, the RIN σ at the detection bandwidth;
* the row optics (:class:`~kvprism.photonics.wdm.RowOptics`, float32, with its near/far :class:`CascadePlan`) the
  chip model evaluates;
* the score-referred SNR of the detection noise on a reference score distribution (:func:`score_snr_db`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from statistics import NormalDist

import torch

from kvprism.errors import KvprismError
from kvprism.layout import DEFAULT_BLOCK_SIZE
from kvprism.photonics import encoding, link, noise, ring
from kvprism.photonics.config import PhotonicConfig
from kvprism.photonics.wdm import CascadePlan, RowOptics

__all__ = [
    "SPEED_OF_LIGHT_M_PER_S",
    "ChipDesign",
    "DecodeTiming",
    "PowerLimit",
    "calibration_probes",
    "compensation_margin_m",
    "decode_timing",
    "expected_abs_max",
    "leakage_limit_db",
    "mid_bias_pd_power_w",
    "rest_detuning_m",
    "rin_ceiling_db",
    "score_snr_db",
    "timed_by_decode",
    "weight_detuning_interval_m",
    "zero_order_hold_rms_m",
]

#: Speed of light in vacuum [m/s] (SI exact value).
SPEED_OF_LIGHT_M_PER_S = 299_792_458.0


def expected_abs_max(n: int) -> float:
    """Median of max |z| over ``n`` independent standard normal draws: Φ⁻¹((1 + 2^(−1/n))/2) (the scale the engine
    maps to w_r for a bank of Gaussian signatures, or to 1 for a Gaussian query)."""
    if n < 1:
        raise KvprismError(f"n = {n} is invalid; allowed range: [1, inf)")
    return NormalDist().inv_cdf(0.5 * (1.0 + 2.0 ** (-1.0 / n)))


def leakage_limit_db(weight_range: float, weight_bits: float, max_drop_field: float) -> float:
    """Largest neighbour drop leakage (power, dB) compatible with ``weight_bits`` of weight precision, from the field
    formula: a leak of power L onto a line meets that line's own drop field κ on the drop bus and adds the cross term
    2·√L·|κ|·cos θ to its weight; requiring 2·√L·|κ| ≤ ½ LSB = w_r / 2^bits (LSB = 2 w_r / 2^bits over [−w_r, w_r])
    gives L_max = (w_r / (2^(bits+1) · |κ|))²."""
    if weight_bits <= 0 or max_drop_field <= 0:
        return 0.0
    half_lsb = weight_range / 2.0**weight_bits
    return 20.0 * math.log10(min(1.0, half_lsb / (2.0 * max_drop_field)))


@dataclasses.dataclass(frozen=True)
class PowerLimit:
    """One optical power cap: the quantity at the configured laser power, its cap, and the largest laser power per
    comb line (at the chip input, W) that respects the cap."""

    name: str
    value: float
    cap: float
    unit: str  # "W" or "A"
    max_laser_line_w: float
    source_field: str  # the PhotonicConfig field that sets the cap

    @property
    def exceeded(self) -> bool:
        return self.value > self.cap * (1.0 + 1e-12)


@dataclasses.dataclass(frozen=True)
class ChipDesign:
    """Design quantities of one configuration for ``d`` comb lines (see the module docstring). Build with
    :meth:`from_config`; every field is a plain number (SI units) or a :class:`~kvprism.photonics.link.LinkBudget`."""

    config: dataclasses.InitVar[PhotonicConfig]  # the values every number is derived from (kept as .config)
    d: int
    r1: float
    r2: float
    a: float
    fsr_m: float
    fwhm_m: float
    finesse: float
    q_loaded: float
    q_intrinsic: float
    photon_lifetime_s: float  # τ of the stored energy: Q λ / (2π c)
    buildup: float  # circulating / input power on resonance
    comb_span_m: float
    eo_range_m: float  # 2 · tuning · V_max
    detuning_lo_m: float  # detunings the calibration may aim for (the drive range around the rest point)
    detuning_hi_m: float
    w_min: float  # single-ring weight on resonance (any drive)
    w_max: float  # single-ring weight half an FSR off (any drive)
    w_lo: float  # single-ring weight at detuning_lo_m (weakest ring)
    w_hi: float  # single-ring weight at detuning_hi_m (weakest ring)
    weight_range: float  # w_r: half-width of the symmetric interval every bank is mapped into
    max_drop_field: float  # |κ|: largest drop field amplitude of a ring on its own line
    worst_leakage_db: float  # largest drop power of a ring onto another line over the drive range (−inf: none)
    bank_height_m: float
    bank_width_m: float
    link: link.LinkBudget
    passes: int  # optical passes per query (2 for dual-rail)
    noise_bandwidth_hz: float  # Δf of integrate-and-dump (= detection_bandwidth_hz)
    integration_time_s: float  # T_int = 1/(2 Δf): one query symbol
    adc_rate_hz: float  # conversions per second and row: one per symbol, 1/T_int
    pd_sensitivity_dbm: float  # sensitivity floor at the noise bandwidth: configured + 5·log10(Δf / Δf_spec)
    rows: int  # physical rows: rows_per_bank × n_banks
    mrr_count: int
    ring_area_m2: float
    pd_area_m2: float
    mzm_area_m2: float
    tia_area_m2: float
    adc_area_m2: float
    driver_area_m2: float  # one ring-drive channel per ring (EO tuning is held by a DC voltage)
    power_limits: tuple[PowerLimit, ...]

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, cfg: PhotonicConfig, d: int | None = None) -> ChipDesign:
        """The design of ``cfg`` for ``d`` comb lines (default ``cfg.n_lines``)."""
        if not isinstance(cfg, PhotonicConfig):
            raise KvprismError(f"ChipDesign.from_config needs a PhotonicConfig, got {type(cfg).__name__}")
        d = cfg.n_lines if d is None else d
        if not isinstance(d, int) or isinstance(d, bool) or d < 1:
            raise KvprismError(f"d = {d!r} is invalid; allowed range: [1, inf) comb lines")
        r1, r2 = ring.design_couplings(
            cfg.q_loaded, cfg.wavelength_center_m, cfg.n_g, cfg.ring_radius_m, cfg.loss_db_per_m, cfg.coupling_regime
        )
        a = float(ring.round_trip_amplitude(cfg.loss_db_per_m, cfg.ring_radius_m))
        lam, n_g, rad = cfg.wavelength_center_m, cfg.n_g, cfg.ring_radius_m
        fsr = float(ring.fsr_m(lam, n_g, rad))
        fwhm = float(ring.fwhm_m(lam, n_g, rad, r1, r2, a))
        q_l = lam / fwhm
        p = r1 * r2 * a
        buildup = (1.0 - r1 * r1) / (1.0 - p) ** 2
        # detuning range: the drive's reach around the rest point, less the closed loop's compensation margin
        margin = compensation_margin_m(cfg)
        rest = rest_detuning_m(cfg, r1, r2, a, margin)
        reach = cfg.tuning_m_per_v * cfg.v_max_v - margin
        lo_m = max(0.0, rest - reach)
        hi_m = rest + reach
        lines = cfg.wavelength_center_m + (torch.arange(d, dtype=torch.float64) - (d - 1) / 2.0) * cfg.channel_spacing_m
        per_m = 2.0 * math.pi * n_g * ring.ring_length_m(rad) / lines**2  # [d] rad per metre of shift at each line
        w_lo = float(ring.single_ring_weight(lo_m * per_m, r1, r2, a).max())
        w_hi = float(ring.single_ring_weight(hi_m * per_m, r1, r2, a).min())
        wr = max(1e-3, min(cfg.weight_range_target, -w_lo, w_hi))
        _, drop0 = ring.add_drop(0.0, r1, r2, a)
        leak = _worst_leakage_db(cfg, d, r1, r2, a, lo_m, hi_m) if cfg.crosstalk else -math.inf
        height = cfg.rows_per_bank * cfg.ring_pitch_m
        routing = cfg.waveguide_length_m + cfg.bank_routing_fraction * height
        budget = link.link_budget(
            laser_line_dbm=cfg.laser_line_dbm, coupling_loss_db=cfg.coupling_loss_db,
            mzm_insertion_loss_db=cfg.mzm_insertion_loss_db, rows_per_bank=cfg.rows_per_bank,
            splitter_excess_db_per_stage=cfg.splitter_excess_db_per_stage,
            waveguide_loss_db_per_m=cfg.waveguide_loss_db_per_m, waveguide_length_m=routing,
            ring_insertion_db=cfg.ring_insertion_db, n_rings_passed=d, pd_coupling_loss_db=cfg.pd_coupling_loss_db,
            demux_loss_db=cfg.demux_loss_db, mux_loss_db=cfg.mux_loss_db, crossings=cfg.crossings_per_row,
            crossing_loss_db=cfg.crossing_loss_db,
        )  # fmt: skip
        t_int = 1.0 / (2.0 * cfg.detection_bandwidth_hz)
        rows = cfg.rows_per_bank * cfg.n_banks
        mrr = rows * d
        return cls(
            config=cfg, d=d, r1=r1, r2=r2, a=a, fsr_m=fsr, fwhm_m=fwhm, finesse=float(ring.finesse(r1, r2, a)), q_loaded=q_l,
            q_intrinsic=float(ring.q_intrinsic(lam, n_g, cfg.loss_db_per_m)),
            photon_lifetime_s=q_l * lam / (2.0 * math.pi * SPEED_OF_LIGHT_M_PER_S), buildup=buildup,
            comb_span_m=d * cfg.channel_spacing_m, eo_range_m=2.0 * cfg.tuning_m_per_v * cfg.v_max_v,
            detuning_lo_m=lo_m, detuning_hi_m=hi_m,
            w_min=float(ring.single_ring_weight(0.0, r1, r2, a)),
            w_max=float(ring.single_ring_weight(math.pi, r1, r2, a)), w_lo=w_lo, w_hi=w_hi, weight_range=wr,
            max_drop_field=math.sqrt(float(drop0)), worst_leakage_db=leak, bank_height_m=height,
            bank_width_m=d * cfg.ring_pitch_m, link=budget, passes=2 if cfg.encoding == "dual-rail" else 1,
            noise_bandwidth_hz=cfg.detection_bandwidth_hz, integration_time_s=t_int, adc_rate_hz=1.0 / t_int,
            pd_sensitivity_dbm=cfg.pd_sensitivity_dbm
            + 5.0 * math.log10(cfg.detection_bandwidth_hz / cfg.pd_sensitivity_bandwidth_hz),
            rows=rows, mrr_count=mrr, ring_area_m2=mrr * cfg.ring_pitch_m**2, pd_area_m2=rows * cfg.pd_pair_area_m2,
            mzm_area_m2=cfg.n_banks * d * cfg.mzm_area_m2, tia_area_m2=rows * cfg.tia_area_m2,
            adc_area_m2=rows * cfg.adc_area_m2, driver_area_m2=mrr * cfg.ring_driver_area_m2,
            power_limits=_power_limits(cfg, d, budget, buildup),
        )  # fmt: skip

    def __post_init__(self, config: PhotonicConfig) -> None:
        object.__setattr__(self, "config", config)

    # ------------------------------------------------------------------ derived numbers of the config alone
    # (not fields: the dataclass fields are the recorded design table; these are computed once, on first use)
    @functools.cached_property
    def compensation_margin_m(self) -> float:
        """Swing [m] kept at both ends of the EO range for the closed loop (0 open loop): :func:`compensation_margin_m`."""
        return compensation_margin_m(self.config)

    @functools.cached_property
    def rest_detuning_m(self) -> float:
        """0 V detuning [m] of every ring from its line, set by the trim: :func:`rest_detuning_m`."""
        return rest_detuning_m(self.config, self.r1, self.r2, self.a, self.compensation_margin_m)

    @property
    def drift_corr_steps(self) -> float:
        """Correlation time of the drift in decode steps: drift_corr_time_s / decode_step_time_s."""
        return self.config.drift_corr_time_s / self.config.decode_step_time_s

    @property
    def drift_var_m2(self) -> float:
        """Variance [m²] of the total drift (per ring + global + spatial field, independent)."""
        c = self.config
        return c.drift_ring_sigma_m**2 + c.drift_global_sigma_m**2 + c.drift_field_sigma_m**2

    @property
    def drift_hold_rms_m(self) -> float:
        """RMS detuning error [m] of the zero-order hold of ``drift_update_steps``: :func:`zero_order_hold_rms_m`."""
        return zero_order_hold_rms_m(self.drift_var_m2, self.drift_corr_steps, self.config.drift_update_steps)

    @property
    def field_rho(self) -> float:
        """Correlation of the spatial drift field between neighbouring rows: exp(−ring pitch / correlation length)."""
        return math.exp(-self.config.ring_pitch_m / self.config.drift_corr_length_m)

    @property
    def coherent(self) -> bool:
        """The drop bus sums fields (crosstalk on and ``drop_bus = "coherent"``)."""
        return self.config.crosstalk and self.config.drop_bus == "coherent"

    @property
    def refreshes_codes(self) -> bool:
        """Rows are rewritten every decode step with fresh in-situ codes (``code_refresh = "every-step"``)."""
        return self.config.code_refresh == "every-step" and self.config.feedback_calibration

    @property
    def time_varying(self) -> bool:
        """The rings move between decode steps relative to their codes (drift or DC relaxation); codes refreshed
        every step with no age compensate the drift at every step (nothing moves)."""
        c = self.config
        drifts = c.drift_ring_sigma_m != 0.0 or c.drift_global_sigma_m != 0.0 or c.drift_field_sigma_m != 0.0
        if self.refreshes_codes:
            return drifts and c.calibration_age_s > 0.0
        return drifts or c.dc_relax_fraction != 0.0

    @property
    def mzm_t_min(self) -> float:
        """MZM transmission floor from its extinction ratio."""
        return encoding.t_min(self.config.mzm_extinction_db)

    @functools.cached_property
    def rin_sigma(self) -> float:
        """Relative σ of each comb line's power at the detection bandwidth (0 without noise)."""
        c = self.config
        return noise.rin_sigma(c.rin_db_per_hz, c.detection_bandwidth_hz) if c.noise else 0.0

    # ------------------------------------------------------------------ derived
    @property
    def detuning_range_m(self) -> tuple[float, float]:
        return self.detuning_lo_m, self.detuning_hi_m

    @property
    def photonic_area_m2(self) -> float:
        """Rings + photodiode pairs + query MZMs [m²]."""
        return self.ring_area_m2 + self.pd_area_m2 + self.mzm_area_m2

    @property
    def electronic_area_m2(self) -> float:
        """TIAs + ADCs of every row and the ring-drive channels of every ring [m²]."""
        return self.tia_area_m2 + self.adc_area_m2 + self.driver_area_m2

    def tia_power_w(self, bandwidth_hz: float) -> float:
        """Power [W] of one row's TIA at detection bandwidth ``bandwidth_hz``: the TIA model
        max(tia_min_power_w, tia_power_w · Δf / tia_reference_bandwidth_hz) (``PhotonicConfig`` sources)."""
        c = self.config
        return max(c.tia_min_power_w, c.tia_power_w * bandwidth_hz / c.tia_reference_bandwidth_hz)

    # ------------------------------------------------------------------ in-situ calibration probes (PHYSICS §12)
    @functools.cached_property
    def probe_target_sigma_w(self) -> float:
        """Noise σ [weight units] an averaged probe reading must reach: LSB/√12 of required_weight_bits +
        calibration_probe_margin_bits over ±w_r."""
        c = self.config
        bits = c.required_weight_bits + c.calibration_probe_margin_bits
        return 2.0 * self.weight_range / 2.0**bits / math.sqrt(12.0)

    @functools.cached_property
    def probe_noise_time_s(self) -> float:
        """Integration time [s] one probe *sample* needs so that the mean of ``calibration_probe_averages`` samples
        reaches :attr:`probe_target_sigma_w`, from the detection noise of one weight reading (one comb line lit at
        the configured power, MZM open): σ_w² = (N_det / (R·P)² + RIN · w_r²) · Δf with Δf = 1/(2T), N_det the
        detector noise per hertz (shot of R·P and dark current, TIA, NEP), RIN on the line's power. Independent of the
        query's detection bandwidth (0 without noise)."""
        c = self.config
        if not c.noise:
            return 0.0
        p_w = self.link.row_line_w
        resp = c.pd_responsivity_a_per_w
        n_det = noise.detector_variance_a2(
            resp * p_w, 0.0, i_dark_a=c.dark_current_a, tia_noise_a_per_rthz=c.tia_noise_a_per_rthz,
            nep_w_per_rthz=c.nep_w_per_rthz, responsivity_a_per_w=resp, bandwidth_hz=1.0,
        )  # fmt: skip
        per_hz = n_det / (resp * p_w) ** 2 + 10.0 ** (c.rin_db_per_hz / 10.0) * self.weight_range**2
        return per_hz / (2.0 * c.calibration_probe_averages * self.probe_target_sigma_w**2)

    @functools.cached_property
    def probe_floor_s(self) -> float:
        """Shortest probe sample [s]: the ring's settling to 1 LSB of the ADC after the probe line switches on
        (photon lifetime τ · ln 2^adc_bits, at least τ) and one ADC conversion (1/adc_sample_rate_hz)."""
        c = self.config
        return max(self.ring_settling_s(c.adc_bits), 1.0 / c.adc_sample_rate_hz)

    @property
    def probe_sample_time_s(self) -> float:
        """Integration time [s] of one probe sample: the noise-limited time, floored by :attr:`probe_floor_s`."""
        return max(self.probe_noise_time_s, self.probe_floor_s)

    @property
    def calibration_time_s(self) -> float:
        """Wall time [s] of one in-situ calibration of a bank (all its rows in parallel): 2·iters + 1 readings, each
        after a drive change (``drive_settling_s``) and of d lines × ``calibration_probe_averages`` probe samples
        (:func:`calibration_probes`); 0 for model-based programming."""
        c = self.config
        if not c.feedback_calibration:
            return 0.0
        readings = 2 * c.calibration_iters + 1
        return readings * c.drive_settling_s + calibration_probes(c, self.d) * self.probe_sample_time_s

    @property
    def laser_cap_w(self) -> float:
        """Largest laser power per comb line [W] at the chip input that respects every power limit."""
        return min(lim.max_laser_line_w for lim in self.power_limits)

    @property
    def binding_power_limit(self) -> PowerLimit:
        return min(self.power_limits, key=lambda lim: lim.max_laser_line_w)

    @property
    def symbol_shorter_than_lifetime(self) -> bool:
        """True when a query symbol (T_int) is shorter than the ring photon lifetime: the ring has not reached its
        steady state within the symbol and the previous query leaks into the score (inter-symbol error)."""
        return self.integration_time_s < self.photon_lifetime_s

    def ring_settling_s(self, bits: int) -> float:
        """Time for a ring's output power to settle to 1 LSB of ``bits`` bits after a step [s]: τ · ln 2^bits (the
        stored energy decays as exp(−t/τ)); at least τ."""
        return self.photon_lifetime_s * max(1.0, bits * math.log(2.0))

    def row_line_w_at(self, laser_line_w: float) -> float:
        """Power per comb line at a row's photodiodes [W] for ``laser_line_w`` per line at the chip input."""
        return laser_line_w * 10.0 ** (-self.link.total_loss_db / 10.0)

    def laser_line_w_for(self, row_line_w: float) -> float:
        """Laser power per line at the chip input [W] that delivers ``row_line_w`` at a row."""
        return row_line_w * 10.0 ** (self.link.total_loss_db / 10.0)

    def drift_update_steps_within(self, hold_rms_m: float, max_steps: int = 100_000) -> int:
        """The largest ``drift_update_steps`` (≤ ``max_steps``) whose hold error (:func:`zero_order_hold_rms_m`) is at
        most ``hold_rms_m`` [m]; e.g. ``trim_sigma_m`` keeps the added error at the size of the static trim residual."""
        c = self.config
        if c.drift_ring_sigma_m == 0.0 and c.drift_global_sigma_m == 0.0 and c.drift_field_sigma_m == 0.0:
            return max_steps
        var = self.drift_var_m2
        m = 1
        while m < max_steps and zero_order_hold_rms_m(var, self.drift_corr_steps, m + 1) <= hold_rms_m:
            m += 1
        return m

    # ------------------------------------------------------------------ the chip model's optics
    @functools.cached_property
    def optics(self) -> RowOptics:
        """The row optics [d lines] the chip model evaluates (float32; design couplings)."""
        c = self.config
        return RowOptics.build(
            self.d, c.channel_spacing_m, c.wavelength_center_m, c.ring_radius_m, c.n_eff, c.n_g,
            self.r1, self.r2, self.a, c.bus_order, torch.float32, c.ring_pitch_m,
        )  # fmt: skip

    @functools.cached_property
    def cascade_plan(self) -> CascadePlan | None:
        """The near/far cascade approximation of :attr:`optics` (None: closed form for every ring), over every
        detuning the rings can physically take: the drive range around the rest point ± 6σ of trim residual and
        drift."""
        c = self.config
        if not (c.crosstalk and c.cascade_near_fwhm > 0 and not self.coherent):
            return None
        sigma = math.sqrt(
            c.trim_sigma_m**2 + c.drift_ring_sigma_m**2 + c.drift_global_sigma_m**2 + c.drift_field_sigma_m**2
        )
        reach = c.tuning_m_per_v * c.v_max_v + 6.0 * sigma
        lo, hi = self.rest_detuning_m - reach, self.rest_detuning_m + reach
        return CascadePlan.build(self.optics, lo, hi, c.cascade_near_fwhm)

    @functools.cached_property
    def mzm_levels(self) -> torch.Tensor | None:
        """MZM transmission of each query DAC level [2^query_bits] (None without a query DAC)."""
        c = self.config
        if not c.query_bits:
            return None
        return encoding.level_transmission(
            v_pi_v=c.mzm_v_pi_v, extinction_db=c.mzm_extinction_db, dac_bits=c.query_bits
        )


def zero_order_hold_rms_m(drift_var_m2: float, corr_steps: float, m: int) -> float:
    """RMS detuning error [m] of a zero-order hold of the drift for ``m`` decode steps, averaged over the m steps of a
    hold: the AR(1) state x moves by x_{t+k} − x_t with variance 2σ²(1 − ρ^k), ρ = exp(−1/τ), so the mean over
    k = 0…m−1 is 2σ²(1 − (1 − ρ^m) / (m(1 − ρ))), σ² = ``drift_var_m2`` (the sum of the per-ring, global and field
    drift variances), τ = ``corr_steps`` (≈ σ √((m − 1)/τ) for m ≪ τ; 0 for m = 1)."""
    if m == 1 or drift_var_m2 == 0.0:
        return 0.0
    rho = math.exp(-1.0 / corr_steps)
    return math.sqrt(max(0.0, 2.0 * drift_var_m2 * (1.0 - (1.0 - rho**m) / (m * (1.0 - rho)))))


def compensation_margin_m(cfg: PhotonicConfig) -> float:
    """Swing [m] kept free at both ends of the EO range for the closed loop to compensate trim residual and drift
    at programming time: 3σ of their sum (0 for open-loop programming), at most 0.45·tuning·V_max."""
    if not cfg.feedback_calibration:
        return 0.0
    sigma = math.sqrt(
        cfg.trim_sigma_m**2 + cfg.drift_ring_sigma_m**2 + cfg.drift_global_sigma_m**2 + cfg.drift_field_sigma_m**2
    )
    return min(3.0 * sigma, 0.45 * cfg.tuning_m_per_v * cfg.v_max_v)


def _own_phase_per_m(cfg: PhotonicConfig) -> float:
    """Round-trip phase per metre of resonance shift at the centre line, 2π n_g L / λ0² [rad/m]."""
    return 2.0 * math.pi * cfg.n_g * 2.0 * math.pi * cfg.ring_radius_m / cfg.wavelength_center_m**2


def weight_detuning_interval_m(cfg: PhotonicConfig, r1: float, r2: float, a: float, w: float) -> tuple[float, float]:
    """Detunings [m] at which one ring (couplings r1, r2, amplitude a) on the centre line has the weights −w and +w,
    each clamped to the ring's reach (on resonance / half an FSR away)."""
    per_m = _own_phase_per_m(cfg)
    out = []
    for x in (-w, w):
        s2 = min(1.0, max(0.0, ring.single_ring_weight_inverse_sin2(x, r1, r2, a)))
        out.append(2.0 * math.asin(math.sqrt(s2)) / per_m)
    return out[0], out[1]


def rest_detuning_m(cfg: PhotonicConfig, r1: float, r2: float, a: float, margin_m: float) -> float:
    """Rest (0 V) detuning [m] of every ring from its line, set by the trim. ``rest_point = "centred"``: the middle
    of the detunings at which one ring on its own line has the weights ∓weight_range_target (clamped to what
    the ring reaches), so the drive swing is half that interval; ``"eo-centre"``: tuning·V_max − margin (the
    calibration then aims inside [0, 2·tuning·V_max − 2·margin])."""
    reach = cfg.tuning_m_per_v * cfg.v_max_v - margin_m
    if cfg.rest_point == "eo-centre":
        return reach
    lo, hi = weight_detuning_interval_m(cfg, r1, r2, a, cfg.weight_range_target)
    if hi - lo <= 2.0 * reach:
        return 0.5 * (lo + hi)
    # the drive cannot span the wanted interval: centre it where the reachable weights are symmetric,
    # w(rest − reach) = −w(rest + reach) (w increases with the detuning; bisection)
    per_m = _own_phase_per_m(cfg)

    def excess(rest: float) -> float:
        w_hi = ring.single_ring_weight(min(rest + reach, math.pi / per_m) * per_m, r1, r2, a)
        w_lo = ring.single_ring_weight(max(rest - reach, 0.0) * per_m, r1, r2, a)
        return w_hi + w_lo

    a_m, b_m = lo, hi
    for _ in range(60):
        mid = 0.5 * (a_m + b_m)
        a_m, b_m = (mid, b_m) if excess(mid) < 0.0 else (a_m, mid)
    return 0.5 * (a_m + b_m)


def _worst_leakage_db(cfg: PhotonicConfig, d: int, r1: float, r2: float, a: float, lo_m: float, hi_m: float) -> float:
    """Largest drop power of any ring onto any other line over the ring's detuning range, all FSR orders [dB]."""
    if d < 2:
        return -math.inf
    opt = RowOptics.build(d, cfg.channel_spacing_m, cfg.wavelength_center_m, cfg.ring_radius_m, cfg.n_eff, cfg.n_g,
                          r1, r2, a, cfg.bus_order, torch.float64)  # fmt: skip
    det = torch.linspace(lo_m, hi_m, 33, dtype=torch.float64)
    phi = opt.phase0.unsqueeze(0) + det.view(-1, 1, 1) * opt.phase_per_m.view(1, -1, 1)
    _, drop = ring.add_drop(phi, r1, r2, a)
    off = ~torch.eye(d, dtype=torch.bool)
    worst = float(drop[:, off].max())
    return 10.0 * math.log10(max(worst, 1e-300))


def _power_limits(cfg: PhotonicConfig, d: int, budget: link.LinkBudget, buildup: float) -> tuple[PowerLimit, ...]:
    """Each optical power cap as the largest laser power per line it allows, and its value at ``laser_line_dbm``."""
    p = link.dbm_to_w(cfg.laser_line_dbm)

    def frac(loss_db: float) -> float:
        return 10.0 ** (-loss_db / 10.0)

    to_wg = frac(budget.coupling_db)  # per line, in the input waveguide after the coupler (all d lines share it)
    to_mzm = frac(budget.to_mzm_db)
    # light entering a row's first ring (MZM fully open): everything but the rings' excess insertion and PD coupling
    to_ring = frac(budget.total_loss_db - budget.ring_insertion_db - budget.pd_coupling_db)
    to_pd = frac(budget.total_loss_db)
    resp = cfg.pd_responsivity_a_per_w
    rows = (
        # (name, value per W of laser line, cap, unit, field)
        ("comb power per line", 1.0, cfg.comb_line_max_w, "W", "comb_line_max_w"),
        ("input waveguide power (all lines)", d * to_wg, cfg.waveguide_max_power_w, "W", "waveguide_max_power_w"),
        ("MZM optical power (one line)", to_mzm, cfg.mzm_max_power_w, "W", "mzm_max_power_w"),
        ("ring circulating power (on resonance)", to_ring * buildup, cfg.ring_max_circulating_w, "W",
         "ring_max_circulating_w"),
        # worst case for one diode: every line fully on and all of the row's light on that diode
        ("photocurrent per photodiode (worst case)", resp * d * to_pd, cfg.pd_saturation_current_a, "A",
         "pd_saturation_current_a"),
    )  # fmt: skip
    return tuple(PowerLimit(name, per_w * p, cap, unit, cap / per_w, field) for name, per_w, cap, unit, field in rows)


def mid_bias_pd_power_w(cfg: PhotonicConfig, row_line_w: float, d: int) -> float:
    """Optical power [W] on each diode of a row's balanced pair at mid-bias query (half of the row's light on each
    diode) when each of the ``d`` comb lines reaches the row with ``row_line_w`` [W] (MZM fully open)."""
    tmin = encoding.t_min(cfg.mzm_extinction_db)
    return row_line_w * d * (tmin + (1.0 - tmin) * 0.5) * 0.5


# ---------------------------------------------------------------------------------------------- score-referred SNR
def _score_terms(cfg: PhotonicConfig, design: ChipDesign, row_line_w: float, bandwidth_hz: float) -> tuple:
    """(signal variance, detector-noise variance, RIN variance) [A²] of the score photocurrent of one row on the
    reference score distribution (see :func:`score_snr_db`)."""
    d = design.d
    tmin = design.mzm_t_min
    resp = cfg.pd_responsivity_a_per_w
    m_w = expected_abs_max(cfg.rows_per_bank * d)  # bank maximum → w_r
    m_q = expected_abs_max(d)  # query maximum → 1
    sigma_w = design.weight_range / m_w  # RMS weight
    eu2 = 1.0 / m_q**2  # E u² of the normalised query
    sig_var_w = d * sigma_w**2 * eu2  # Var over rows of Σ_j w_j u_j (weight units)
    if cfg.encoding == "offset":
        unit = 0.5 * (1.0 - tmin) * resp * row_line_w  # A per unit of Σ w u
        mean_frac = tmin + 0.5 * (1.0 - tmin)  # mean MZM transmission (u = 0 on average)
        e_frac2 = mean_frac**2 + (0.5 * (1.0 - tmin)) ** 2 * eu2
        evals = 1
    else:  # dual-rail: score = I(u⁺) − I(u⁻), each pass with its own noise
        unit = (1.0 - tmin) * resp * row_line_w
        e_abs = math.sqrt(2.0 / math.pi) / m_q
        mean_frac = tmin + (1.0 - tmin) * 0.5 * e_abs
        e_frac2 = tmin**2 + 2.0 * tmin * (1.0 - tmin) * 0.5 * e_abs + (1.0 - tmin) ** 2 * 0.5 * eu2
        evals = 2
    i_total = resp * row_line_w * d * mean_frac  # I_thru + I_drop at the mean query (ring absorption neglected)
    det_var = evals * noise.detector_variance_a2(
        i_total, 0.0, i_dark_a=cfg.dark_current_a, tia_noise_a_per_rthz=cfg.tia_noise_a_per_rthz,
        nep_w_per_rthz=cfg.nep_w_per_rthz, responsivity_a_per_w=resp, bandwidth_hz=bandwidth_hz,
    )  # fmt: skip
    rin = noise.rin_sigma(cfg.rin_db_per_hz, bandwidth_hz)
    rin_var = evals * (rin * resp * row_line_w) ** 2 * d * sigma_w**2 * e_frac2
    if not cfg.noise:
        det_var, rin_var = 0.0, 0.0
    return unit**2 * sig_var_w, det_var, rin_var


def score_snr_db(
    cfg: PhotonicConfig, design: ChipDesign, row_line_w: float | None = None, bandwidth_hz: float | None = None
) -> float:
    """Score-referred SNR [dB] of the detection noise: the variance over rows of the noise-free score photocurrent
    (what ranking compares: differences between rows) on the reference score distribution — a bank of
    ``rows_per_bank`` Gaussian signatures mapped with one scale to ±w_r, a Gaussian query normalised to max |u| = 1,
    as the engine and the feasibility Monte Carlo do — against the per-row detection noise (shot at the mean query,
    dark, TIA, NEP; both passes for dual-rail) plus RIN (each line's power fluctuation δ_j enters as Σ_j w_j P_j δ_j).
    ``row_line_w`` [W]: power per line at a row (default: the configured laser through the link budget);
    ``bandwidth_hz``: default ``design.noise_bandwidth_hz``. ``inf`` without noise."""
    p = design.link.row_line_w if row_line_w is None else row_line_w
    bw = design.noise_bandwidth_hz if bandwidth_hz is None else bandwidth_hz
    sig, det, rin = _score_terms(cfg, design, p, bw)
    var = det + rin
    return 10.0 * math.log10(sig / var) if var > 0 else math.inf


def rin_ceiling_db(cfg: PhotonicConfig, design: ChipDesign, bandwidth_hz: float | None = None) -> float:
    """Score-referred SNR [dB] that no laser power exceeds: signal and RIN both grow as P², so their ratio is the
    ceiling (``inf`` without noise or RIN)."""
    bw = design.noise_bandwidth_hz if bandwidth_hz is None else bandwidth_hz
    sig, _, rin = _score_terms(cfg, design, 1.0, bw)
    return 10.0 * math.log10(sig / rin) if rin > 0 else math.inf


# ---------------------------------------------------------------------------------------------- decode timing
@dataclasses.dataclass(frozen=True)
class DecodeTiming:
    """The chip's time line for one decode step of a model at ``tokens_per_s`` and ``context`` tokens (times in s).

    Per decode step (1/tokens_per_s) the chip's selections may take ``budget_s`` = ``selection_time_fraction`` of it
    (layers are sequential: the query of a layer exists only after the layer before it). Each sequence's
    (layer, KV head) is one logical bank of ``rows_per_bank_logical`` = ⌊context / block_size⌋ rows, which occupies
    ``slots`` = ⌈rows / rows_per_bank⌉ physical banks; a layer's ``batch × kv_heads × slots`` bank loads are served
    by the ``n_banks`` physical banks in ``rounds_per_layer`` rounds. When the loads of the step do not all fit the
    chip (``shared``), every round first rewrites its banks (``write_s``: ring writes at ``program_rate_rings_per_s``,
    then the drive and ring settle) and — ``rewrite_calibration = 'recalibrate'`` with in-situ calibration —
    calibrates them (``calibration_s``: probes with their own, noise-limited symbol,
    :attr:`ChipDesign.calibration_time_s`). Rewrites, calibrations and queries share the banks' time line; what is
    left of the budget goes to the queries (``queries_per_head`` per logical bank, ``passes`` optical passes each):
    one symbol per pass, ``integration_fraction`` of it integrating (T_int, noise bandwidth 1/(2·T_int), one ADC
    conversion per row and symbol). When writes and calibrations leave nothing (``fits`` is False) the queries are
    timed at the shortest symbol (ring settling, one ADC conversion) and ``needed_s`` says how far the time line
    overruns the budget. Contents not recalibrated inside the budget (resident banks, or replayed codes) are
    recalibrated round-robin in the chip's idle share of each step (``recalibration_period_s``; the codes are on
    average half that period old when used)."""

    tokens_per_s: float
    step_s: float
    context: int
    block_size: int
    n_layers: int
    banks_per_layer: int  # logical banks per layer: batch × kv_heads
    total_logical_banks: int
    rows_per_logical_bank: int
    slots: int  # physical banks one logical bank occupies
    physical_banks: int
    queries_per_head: int
    passes: int
    shared: bool
    rounds_per_layer: int
    budget_s: float  # selection_time_fraction × step
    write_s: float  # rewrites of time-shared banks, per step (all layers)
    calibration_s: float  # in-situ calibration inside the budget (recalibrated rewrites), per step
    query_s: float  # query symbols, per step
    fits: bool
    probe_sample_time_s: float
    calibration_time_s: float  # one in-situ calibration of a bank
    time_per_selection_s: float  # per query of one logical bank slot (all its passes)
    integration_time_s: float
    noise_bandwidth_hz: float
    adc_rate_hz: float
    recalibration_period_s: float = 0.0
    calibration_age_s: float = 0.0
    calibrations_per_step: float = 0.0  # in-situ calibrations of a physical bank per step (in budget or idle time)
    model: str = ""
    # architecture (kvprism.photonics.architecture): resident and two-level chips are sized for the context
    architecture: str = "time-shared"  # Architecture.label
    chip_rows_per_bank: int = 0  # rows per physical bank of the chip as built (0: the config's)
    chip_banks: int = 0  # physical banks of the chip as built (0: the config's)
    append_s: float = 0.0  # background: writes + calibration of the appended rows, per step (amortised)
    recalibration_s: float = 0.0  # background: recalibration sweeps the drift budget needs, per step
    idle_s: float = 0.0  # the chip's idle share of the step, (1 − selection_time_fraction) · step
    appended_rows_per_step: float = 0.0  # rows appended (written and calibrated) per step, all banks (amortised)
    drift_period_s: float = 0.0  # longest recalibration period the drift budget allows (inf: no drift to track)
    max_dies: int = 1  # reticle-size die stacks one package may hold (Architecture.max_dies)

    @property
    def background_s(self) -> float:
        """Work in the chip's idle share of each step (resident and two-level): appends + recalibration sweeps."""
        return self.append_s + self.recalibration_s

    @property
    def background_fits(self) -> bool:
        """The background work fits the idle share of the step (always True when time-shared)."""
        return self.background_s <= self.idle_s * (1.0 + 1e-12) or self.architecture == "time-shared"

    @property
    def needed_s(self) -> float:
        """The chip's busy time per decode step: rewrites + calibrations + queries."""
        return self.write_s + self.calibration_s + self.query_s

    @property
    def reprogram_s(self) -> float:
        """Rewrite time per round (0 when resident)."""
        return self.write_s / (self.n_layers * self.rounds_per_layer)

    @property
    def rewrite_calibration_s(self) -> float:
        """In-situ calibration of the rewrites per decode step (0 unless time-shared and recalibrated)."""
        return self.calibration_s

    def describe(self) -> str:
        """One line: where the timing applies and how the time line compares with the budget."""
        head = f"{self.model + ', ' if self.model else ''}{self.context:,} tokens ({self.rows_per_logical_bank:,} rows "
        if self.architecture != "time-shared":
            queries_fit = self.query_s <= self.budget_s * (1.0 + 1e-12)
            return (
                f"{head}per bank, {self.architecture} banks), {self.tokens_per_s:g} tokens/s: queries "
                f"{self.query_s * 1e3:.3g} ms {'≤' if queries_fit else '>'} the selection budget "
                f"{self.budget_s * 1e3:.3g} ms; background appends {self.append_s * 1e3:.3g} ms + recalibration "
                f"{self.recalibration_s * 1e3:.3g} ms {'≤' if self.background_fits else '>'} the idle "
                f"{self.idle_s * 1e3:.3g} ms per step"
            )
        return (
            f"{head}per bank), {self.tokens_per_s:g} tokens/s: rewrites {self.write_s * 1e3:.3g} ms + calibration "
            f"{self.calibration_s * 1e3:.3g} ms + queries {self.query_s * 1e3:.3g} ms = {self.needed_s * 1e3:.3g} ms "
            f"{'≤' if self.fits else '>'} the selection budget {self.budget_s * 1e3:.3g} ms per step"
        )


def calibration_probes(cfg: PhotonicConfig, d: int) -> int:
    """Probe samples of one in-situ calibration of a bank (all its rows in parallel): every line lit for
    2·iters + 1 readings (the side-of-resonance dither doubles the corrections), each averaged
    ``calibration_probe_averages`` times; 0 for model-based programming."""
    if not cfg.feedback_calibration:
        return 0
    return (2 * cfg.calibration_iters + 1) * d * cfg.calibration_probe_averages


def decode_timing(
    cfg: PhotonicConfig,
    *,
    n_layers: int,
    kv_heads: int,
    tokens_per_s: float,
    context: int,
    block_size: int | None = None,
    queries_per_head: int = 1,
    batch: int = 1,
    d: int | None = None,
    model: str = "",
    architecture=None,
) -> DecodeTiming:
    """:class:`DecodeTiming` of ``cfg`` for a model of ``n_layers`` × ``kv_heads`` decoding ``batch`` sequences of
    ``context`` tokens at ``tokens_per_s``, blocks of ``block_size`` tokens (default: ``SelectionConfig``'s, :data:`kvprism.layout.DEFAULT_BLOCK_SIZE`), each
    (layer, KV head) asking ``queries_per_head`` queries per step (1 for ``gqa_reduce='sum'``), ``d`` lines
    (default ``cfg.n_lines``). ``model`` names the shape in the verdict. ``architecture``
    (:class:`~kvprism.photonics.architecture.Architecture` or its label; default time-shared): resident and
    two-level chips are timed by :func:`_resident_timing`."""
    if block_size is None:
        block_size = DEFAULT_BLOCK_SIZE
    for name, v in (("n_layers", n_layers), ("kv_heads", kv_heads), ("queries_per_head", queries_per_head),
                    ("batch", batch), ("block_size", block_size), ("context", context)):  # fmt: skip
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise KvprismError(f"{name} = {v!r} is invalid; allowed range: [1, inf)")
    if not tokens_per_s > 0 or not math.isfinite(tokens_per_s):
        raise KvprismError(f"tokens_per_s = {tokens_per_s!r} is invalid; allowed range: (0, inf)")
    from kvprism.photonics.architecture import Architecture

    arch = Architecture.parse(architecture)
    if arch.resident:
        return _resident_timing(cfg, arch, n_layers=n_layers, kv_heads=kv_heads, tokens_per_s=tokens_per_s,
                                context=context, block_size=block_size, queries_per_head=queries_per_head,
                                batch=batch, d=d, model=model)  # fmt: skip
    des = ChipDesign.from_config(cfg, d)
    step = 1.0 / tokens_per_s
    budget = cfg.selection_time_fraction * step
    n_rows = max(1, context // block_size)
    slots = math.ceil(n_rows / cfg.rows_per_bank)
    per_layer = batch * kv_heads
    loads_layer = per_layer * slots
    total = per_layer * n_layers
    shared = loads_layer * n_layers > cfg.n_banks
    rounds = math.ceil(loads_layer / cfg.n_banks)
    settle = cfg.drive_settling_s + des.ring_settling_s(cfg.adc_bits)
    write = n_layers * (per_layer * n_rows * des.d / cfg.program_rate_rings_per_s + rounds * settle) if shared else 0.0
    cal_one = des.calibration_time_s
    cal = n_layers * rounds * cal_one if shared and cal_one > 0 and cfg.rewrite_calibration == "recalibrate" else 0.0
    symbols = n_layers * rounds * queries_per_head * des.passes
    t_int_floor = max(des.ring_settling_s(cfg.adc_bits), 1.0 / cfg.adc_sample_rate_hz)
    left = budget - write - cal
    symbol = left / symbols if left > 0 else 0.0
    fits = symbol * cfg.integration_fraction >= t_int_floor
    if not fits:
        symbol = t_int_floor / cfg.integration_fraction
    t_int = cfg.integration_fraction * symbol
    # contents not recalibrated inside the budget: round-robin in the idle (1 − fraction) of every step; a
    # time-shared bank must also be written with the content it recalibrates
    recal_period = age = 0.0
    cals = float(loads_layer * n_layers) if cal > 0 else 0.0
    if cal_one > 0 and cal == 0.0:
        contents_per_bank = math.ceil(loads_layer * n_layers / cfg.n_banks)
        per_content = cal_one + (n_rows / slots * des.d / cfg.program_rate_rings_per_s + settle if shared else 0.0)
        idle = 1.0 - cfg.selection_time_fraction
        recal_period = contents_per_bank * per_content / idle if idle > 0 else math.inf
        age = 0.5 * recal_period
        cals = cfg.n_banks * idle * step / per_content
    return DecodeTiming(
        tokens_per_s=tokens_per_s, step_s=step, context=context, block_size=block_size, n_layers=n_layers,
        banks_per_layer=per_layer, total_logical_banks=total, rows_per_logical_bank=n_rows, slots=slots,
        physical_banks=cfg.n_banks, queries_per_head=queries_per_head, passes=des.passes, shared=shared,
        rounds_per_layer=rounds, budget_s=budget, write_s=write, calibration_s=cal, query_s=symbols * symbol,
        fits=fits, probe_sample_time_s=des.probe_sample_time_s, calibration_time_s=cal_one,
        time_per_selection_s=symbol * des.passes, integration_time_s=t_int, noise_bandwidth_hz=1.0 / (2.0 * t_int),
        adc_rate_hz=1.0 / t_int, recalibration_period_s=recal_period, calibration_age_s=age,
        calibrations_per_step=cals, model=model,
    )  # fmt: skip


def _resident_timing(
    cfg: PhotonicConfig,
    arch,
    *,
    n_layers: int,
    kv_heads: int,
    tokens_per_s: float,
    context: int,
    block_size: int,
    queries_per_head: int,
    batch: int,
    d: int | None,
    model: str,
) -> DecodeTiming:
    """:class:`DecodeTiming` of a resident (or two-level) chip (:mod:`kvprism.photonics.architecture`): the chip of
    :func:`~kvprism.photonics.architecture.chip_config` holds every row, so nothing is rewritten inside the budget,
    which goes to the queries (one round per layer). In the idle share of each step the chip (a) appends: one row per
    logical bank every B·S tokens, all banks at the same token — ring writes at ``program_rate_rings_per_s``, the
    drive and ring settling, one in-situ calibration (the banks calibrate their new row in parallel) — amortised over
    the B·S steps between appends; (b) recalibrates every bank once per drift period
    (:func:`~kvprism.photonics.architecture.drift_recalibration_period_s`), probes broadcast to all banks at once:
    one bank's calibration time per sweep. Codes are on average half a drift period old at use. ``fits`` requires
    both the queries within the budget and the background within the idle share."""
    from kvprism.photonics.architecture import chip_config, drift_recalibration_period_s, rows_per_logical_bank

    chip = chip_config(cfg, arch, n_layers=n_layers, kv_heads=kv_heads, context=context, block_size=block_size,
                       batch=batch)  # fmt: skip
    des = ChipDesign.from_config(chip, d)
    step = 1.0 / tokens_per_s
    budget = chip.selection_time_fraction * step
    idle = (1.0 - chip.selection_time_fraction) * step
    n_rows = rows_per_logical_bank(arch, context, block_size)
    per_layer = batch * kv_heads
    slots = chip.n_banks // (per_layer * n_layers)
    symbols = n_layers * queries_per_head * des.passes
    t_int_floor = max(des.ring_settling_s(chip.adc_bits), 1.0 / chip.adc_sample_rate_hz)
    symbol = budget / symbols
    queries_fit = symbol * chip.integration_fraction >= t_int_floor
    if not queries_fit:
        symbol = t_int_floor / chip.integration_fraction
    t_int = chip.integration_fraction * symbol
    settle = chip.drive_settling_s + des.ring_settling_s(chip.adc_bits)
    cal_one = des.calibration_time_s
    tokens_per_row = block_size * arch.superblock
    logical = per_layer * n_layers
    append_event = logical * des.d / chip.program_rate_rings_per_s + settle + cal_one
    append = append_event / tokens_per_row
    period = drift_recalibration_period_s(des) if cal_one > 0 else math.inf
    recal = cal_one * step / period if math.isfinite(period) else 0.0
    cals = chip.n_banks * step / period if math.isfinite(period) else 0.0
    age = 0.5 * period if cal_one > 0 else 0.0
    fits = queries_fit and append + recal <= idle * (1.0 + 1e-12)
    return DecodeTiming(
        tokens_per_s=tokens_per_s, step_s=step, context=context, block_size=block_size, n_layers=n_layers,
        banks_per_layer=per_layer, total_logical_banks=logical, rows_per_logical_bank=n_rows, slots=slots,
        physical_banks=chip.n_banks, queries_per_head=queries_per_head, passes=des.passes, shared=False,
        rounds_per_layer=1, budget_s=budget, write_s=0.0, calibration_s=0.0, query_s=symbols * symbol, fits=fits,
        probe_sample_time_s=des.probe_sample_time_s, calibration_time_s=cal_one,
        time_per_selection_s=symbol * des.passes, integration_time_s=t_int, noise_bandwidth_hz=1.0 / (2.0 * t_int),
        adc_rate_hz=1.0 / t_int, recalibration_period_s=period if cal_one > 0 else 0.0, calibration_age_s=age,
        calibrations_per_step=cals, model=model, architecture=arch.label, chip_rows_per_bank=chip.rows_per_bank,
        chip_banks=chip.n_banks, append_s=append, recalibration_s=recal, idle_s=idle,
        appended_rows_per_step=logical / tokens_per_row, drift_period_s=period, max_dies=arch.max_dies,
    )  # fmt: skip


def timed_by_decode(cfg: PhotonicConfig, timing: DecodeTiming) -> PhotonicConfig:
    """``cfg`` with its detection timed by ``timing``: ``detection_bandwidth_hz`` (the noise bandwidth the engine and
    the energy model use) set to 1/(2·T_int). This is the precedence rule: a decode timing, when given, replaces the
    configured bandwidth; otherwise ``detection_bandwidth_hz`` is the design choice and T_int = 1/(2·Δf). With
    in-situ calibration the codes' age (``calibration_age_s``) is the timing's too: 0 for recalibrated rewrites,
    half the round-robin recalibration period otherwise; and time-shared rows, rewritten every round, refresh their
    codes every decode step (``code_refresh = 'every-step'``). A resident or two-level timing also sets the chip it
    was made for (``n_banks``, ``rows_per_bank``)."""
    out = cfg.replace(detection_bandwidth_hz=min(timing.noise_bandwidth_hz, 1e12))
    if timing.chip_banks:  # resident or two-level: the chip as built for the context
        out = out.replace(rows_per_bank=timing.chip_rows_per_bank, n_banks=timing.chip_banks)
    if cfg.feedback_calibration:
        out = out.replace(calibration_age_s=min(timing.calibration_age_s, 1e6))  # the field's bound (inf: never)
        if timing.shared:
            out = out.replace(code_refresh="every-step")
    return out
