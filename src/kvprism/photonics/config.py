"""``PhotonicConfig``: every parameter of the simulated TFLN microring weight-bank chip, with unit and source.

Shipped presets live in ``kvprism/presets/*.toml`` (``PhotonicConfig.presets()`` lists them). Conventions: SI units,
the unit is in the field name; a bit count of 0 means "not quantised"; losses are positive dB.
Sources are the rows of PHYSICS.md §10 unless stated; "assumption" marks a value chosen here that no cited source fixes.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import ClassVar

from kvprism.config import ConfigBase, param

__all__ = ["PhotonicConfig"]

#: Fields a model derives: field → (model field, value of the model field that derives it). Under that model the
#: field is computed (PhotonicConfig._derived); a value given for it must equal the computed one.
_DERIVED: dict[str, tuple[str, str]] = {
    "loss_db_per_m": ("loss_model", "bend"),
    "drift_ring_sigma_m": ("drift_model", "thermal"),
    "drift_global_sigma_m": ("drift_model", "thermal"),
}

_PRESETS = Path(__file__).resolve().parent.parent / "presets"


#: Section (TOML table) of every field declared without ``section=`` (the rest declare theirs).
_SECTIONS: dict[str, str] = {
    **dict.fromkeys(
        [
            "wavelength_center_m",
            "ring_radius_m",
            "n_eff",
            "n_g",
            "loss_db_per_m",
            "loss_model",
            "straight_loss_db_per_m",
            "bend_loss_c1_db_per_m",
            "bend_loss_c2_per_m",
            "bend_loss_min_sourced_radius_m",
            "q_loaded",
            "coupling_regime",
            "bus_order",
            "drop_bus",
            "rest_point",
            "ring_pitch_m",
        ],
        "ring",
    ),
    **dict.fromkeys(["n_lines", "channel_spacing_m"], "comb"),
    **dict.fromkeys(["crosstalk", "cascade_near_fwhm", "drift_update_steps"], "numerics"),
    **dict.fromkeys(
        [
            "tuning_m_per_v",
            "v_max_v",
            "program_bits",
            "weight_range_target",
            "ring_capacitance_f",
            "encoding",
            "query_bits",
            "mzm_v_pi_v",
            "mzm_extinction_db",
            "mzm_predistortion",
            "mzm_insertion_loss_db",
        ],
        "modulator",
    ),
    **dict.fromkeys(
        [
            "calibration_iters",
            "feedback_calibration",
            "calibration_probe_averages",
            "rewrite_calibration",
            "calibration_age_s",
            "code_refresh",
        ],
        "calibration",
    ),
    **dict.fromkeys(
        [
            "laser_line_dbm",
            "coupling_loss_db",
            "splitter_excess_db_per_stage",
            "waveguide_loss_db_per_m",
            "waveguide_length_m",
            "ring_insertion_db",
            "pd_coupling_loss_db",
        ],
        "link",
    ),
    **dict.fromkeys(["rows_per_bank", "n_banks", "max_chip_area_m2"], "layout"),
    **dict.fromkeys(
        [
            "pd_responsivity_a_per_w",
            "pd_sensitivity_dbm",
            "dark_current_a",
            "tia_noise_a_per_rthz",
            "nep_w_per_rthz",
            "rin_db_per_hz",
            "detection_bandwidth_hz",
            "noise",
            "adc_bits",
            "adc_headroom",
        ],
        "detector",
    ),
    **dict.fromkeys(
        [
            "laser_wall_plug_efficiency",
            "adc_sample_rate_hz",
            "adc_energy_per_conversion_j",
            "adc_walden_fom_j_per_step",
            "dac_sample_rate_hz",
            "dac_energy_per_sample_j",
            "tia_power_w",
            "tia_adc_power_seed_w",
            "static_power_w",
            "mzm_termination_ohm",
            "topk_energy_per_compare_j",
            "program_rate_rings_per_s",
            "latency_dac_s",
            "latency_mzm_s",
            "latency_propagation_s",
            "latency_ring_s",
            "latency_pd_s",
            "latency_tia_adc_s",
            "latency_topk_s",
        ],
        "energy",
    ),
    **dict.fromkeys(
        ["fab_sigma_m", "trim_sigma_m", "bus_phase_random", "coupler_gap_sigma_m", "coupler_gap_decay_m"], "fabrication"
    ),
    **dict.fromkeys(
        [
            "drift_ring_sigma_m",
            "drift_global_sigma_m",
            "drift_model",
            "thermal_tuning_m_per_k",
            "temperature_stability_k",
            "ring_temperature_sigma_k",
            "drift_corr_time_s",
            "decode_step_time_s",
            "drift_field_sigma_m",
            "drift_corr_length_m",
            "dc_relax_fraction",
            "dc_relax_time_s",
        ],
        "drift",
    ),
    **dict.fromkeys(["leakage_limit_db", "required_weight_bits", "required_score_enob"], "criteria"),
}


@dataclasses.dataclass(frozen=True)
class PhotonicConfig(ConfigBase):
    """The photonic weight-bank chip. Defaults are the seed design point (``seed-nominal``)."""

    _preset_dir: ClassVar[Path | None] = _PRESETS
    _sections: ClassVar[dict[str, str]] = _SECTIONS

    # ---------------------------------------------------------------- ring geometry and material
    wavelength_center_m: float = param(
        1.55e-6, doc="comb centre wavelength λ0", unit="m", gt=1e-7, lt=1e-5, source="seed (C band)"
    )
    ring_radius_m: float = param(20e-6, doc="ring radius R", unit="m", gt=1e-6, le=1e-3, source="seed; PHYSICS §10")
    n_eff: float = param(2.138, doc="effective index at λ0", unit="", gt=1.0, lt=4.0, source="seed")
    n_g: float = param(2.30, doc="group index", unit="", gt=1.0, lt=5.0, source="seed")
    loss_db_per_m: float = param(
        20.0,
        doc="ring intrinsic propagation loss (0 = lossless). loss_model 'fixed': this value as given; 'bend': derived "
        "from ring_radius_m (straight_loss_db_per_m + bend radiation), and a value given here must equal the model's",
        unit="dB/m",
        ge=0.0,
        le=1e7,
        source="seed design point: the lnoi400 straight-waveguide loss 0.2 dB/cm (Luxtelligence PDK, PHYSICS §10) "
        "taken for the seed's own 20 µm ring, whose cross-section (n_eff 2.138) the lnoi400 bend model does not "
        "describe (assumption)",
    )
    loss_model: str = param(
        "fixed",
        doc="where loss_db_per_m comes from: 'fixed' = loss_db_per_m as given (a measured or assumed loss, independent "
        "of the radius); 'bend' = loss.intrinsic_loss_db_per_m(ring_radius_m): straight_loss_db_per_m + "
        "bend_loss_c1_db_per_m·exp(−bend_loss_c2_per_m·R), so the radius sets the loss",
        choices=("fixed", "bend"),
        source="design choice: 'fixed' keeps the seed's numbers (class defaults); the TFLN presets use 'bend'",
    )
    straight_loss_db_per_m: float = param(
        20.0,
        doc="bend model: loss of the straight rib waveguide (scattering and absorption, no radiation)",
        unit="dB/m",
        ge=0.0,
        le=1e4,
        source="Luxtelligence lnoi400 PDK, xs_rwg1000 straight model: 2e-5 dB/µm = 0.2 dB/cm (lnoi400/models.py)",
    )
    bend_loss_c1_db_per_m: float = param(
        1.09e7,
        doc="bend model: prefactor c1 of the radiation loss c1·exp(−c2·R)",
        unit="dB/m",
        ge=0.0,
        source="derived (model estimate, not a measurement): loss.marcuse_bend_constants(loss.LNOI400, 1550 nm) = "
        "1.09e7 dB/m; Marcuse, Bell Syst. Tech. J. 50, 2551 (1971), by the effective-index method on the lnoi400 "
        "xs_rwg1000 cross-section (400 nm X-cut film, 200 nm etch, 1.0 µm top, SiO2 clad). No published "
        "loss-vs-radius data of this cross-section was found; a factor 10 in c1 moves a radius by ln(10)/c2 = 8 µm",
    )
    bend_loss_c2_per_m: float = param(
        2.89e5,
        doc="bend model: exponent c2 of the radiation loss c1·exp(−c2·R) (1/c2 = radius per factor e)",
        unit="1/m",
        gt=0.0,
        source="derived: loss.marcuse_bend_constants(loss.LNOI400, 1550 nm) = 2.89e5 1/m (1/c2 = 3.46 µm): "
        "2γ³/(3β²) of the lateral slab (rib n_eff 1.803 over the 200 nm slab's 1.660)",
    )
    bend_loss_min_sourced_radius_m: float = param(
        75e-6,
        doc="bend model: smallest radius at which the cross-section's loss is sourced; below it the bend term is the "
        "model's extrapolation (the feasibility report says so)",
        unit="m",
        gt=0.0,
        source="Luxtelligence lnoi400 PDK: xs_rwg1000 default bend radius 75 µm (tech.py; Euler L-bends 80 µm), "
        "at which the PDK quotes 0.2 dB/cm",
    )
    q_loaded: float = param(
        1e4,
        doc="loaded quality factor of each ring (sets r1, r2)",
        unit="",
        gt=10.0,
        lt=1e8,
        source="seed Q≈1e4 (FDTD 1.25e4)",
    )
    coupling_regime: str = param(
        "critical",
        doc="coupler design: drop-port critical (r1 = r2·a) or symmetric (r1 = r2)",
        choices=("critical", "symmetric"),
        source="assumption: critical coupling maximises the weight range",
    )
    bus_order: str = param(
        "ascending",
        doc="physical order of the rings on the bus (ring of line 0 first or last)",
        choices=("ascending", "descending"),
        source="assumption",
    )
    drop_bus: str = param(
        "coherent",
        doc="how light of one comb line dropped by several rings of a row combines on the drop bus: 'coherent' (adds "
        "in field, with the bus phases; exact 2×2 scattering chain) or 'incoherent' (drop powers summed: the earlier "
        "model, kept for comparison)",
        choices=("coherent", "incoherent"),
        source="PHYSICS §4 (corrected): same-line light on one bus adds in field",
    )
    rest_point: str = param(
        "centred",
        doc="where the trim puts each ring at 0 V: 'centred' in the detuning interval the weights ±weight_range_target "
        "need (smallest drive swing), or 'eo-centre' at tuning·V_max (the earlier model)",
        choices=("centred", "eo-centre"),
        source="design review (kvprism hw): a centred rest point needs 6.34 V instead of 7.76 V for seed-nominal",
    )
    # ---------------------------------------------------------------- comb
    n_lines: int = param(
        32,
        doc="comb lines d (= signature dimension) used for feasibility before programming",
        unit="",
        ge=1,
        le=4096,
        source="seed d=32",
    )
    channel_spacing_m: float = param(
        1.6e-9, doc="comb line spacing Δ", unit="m", gt=0.0, lt=1e-6, source="seed 1.6 nm (200 GHz)"
    )
    crosstalk: bool = param(
        True,
        doc="full cascade model (every ring on every line at every FSR order); False: each line sees only its own ring",
        source="physics; False only for the ideal preset",
    )
    cascade_near_fwhm: float = param(
        10.0,
        doc="cascade model: rings whose resonance (any order) comes within this many linewidths of a line are "
        "evaluated in closed form, the others by a fitted quadratic in log T (error reported); 0 = closed form for all",
        unit="FWHM",
        ge=0.0,
        le=1e6,
        source="numerics: at 10 FWHM the fit error in log T is ~1e-5 (tests/test_wdm.py)",
    )
    # ---------------------------------------------------------------- EO programming
    tuning_m_per_v: float = param(
        28.5e-12,
        doc="Pockels resonance shift per volt",
        unit="m/V",
        gt=0.0,
        lt=1e-9,
        source="seed 28.5 pm/V (computed); measured TFLN 1.8–3 pm/V",
    )
    v_max_v: float = param(
        5.0,
        doc="ring drive range ±V_max (see rest_detuning_m for the rest point)",
        unit="V",
        gt=0.0,
        le=100.0,
        source="assumption: CMOS-compatible drive (seed gives none)",
    )
    program_bits: int = param(
        5,
        doc="ring-drive DAC bits over [−V_max, V_max] (0 = unquantised)",
        unit="bit",
        ge=0,
        le=24,
        source="seed 5-bit weights. No programming precision of TFLN EO ring weights was found: the 9 bit of "
        "Zhang et al., Optica 9, 579 (2022) are measured on silicon thermo-optic MRR weights, so a TFLN preset's "
        "program_bits is an assumption (its [meta] says so)",
    )
    weight_range_target: float = param(
        0.9,
        doc="wanted symmetric weight interval ±w_r (w = T_thru − T_drop); the "
        "engine uses the largest reachable value up to this",
        unit="",
        gt=0.0,
        lt=1.0,
        source="assumption",
    )
    calibration_iters: int = param(
        4,
        doc="crosstalk-aware calibration corrections after the single-ring inverse",
        unit="",
        ge=0,
        le=100,
        source="assumption",
    )
    feedback_calibration: bool = param(
        False,
        doc="closed-loop programming: the controller measures each ring and "
        "compensates trim residual and the drift present at programming time",
        source="seed: open loop; literature: feedback (Zhang et al., Optica 9, 579)",
    )
    calibration_probe_averages: int = param(
        16,
        doc="in-situ calibration (feedback_calibration): probe measurements averaged per line and iteration (each "
        "probe lights one comb line and reads every row's balanced detector, with detection noise)",
        unit="",
        ge=1,
        le=1_000_000,
        source="assumption: dithering-style averaging as in closed-loop MRR weight control (Zhang et al., Optica 9, "
        "579 (2022))",
    )
    rewrite_calibration: str = param(
        "recalibrate",
        doc="how a rewrite of a time-shared bank gets its drive codes (feedback_calibration): 'recalibrate' = in-situ "
        "calibration of every rewrite (probes at every round); 'replay' = the codes the last in-situ calibration found "
        "for that content on that physical slot are stored and replayed, and every content is recalibrated round-robin "
        "in the chip's idle time, so the codes age (calibration_age_s, set from the decode timing)",
        choices=("recalibrate", "replay"),
        source="PHYSICS §11 (time-shared banks must be rewritten every round); replay = a stored drive-code table, "
        "assumption",
    )
    calibration_age_s: float = param(
        0.0,
        doc="age of the drive codes at use: time since the in-situ calibration that found them, during which the "
        "thermal drift moved on (feedback_calibration; the calibration saw the drift of that time, drawn backwards "
        "from the drift now along its AR(1) process). design.timed_by_decode sets it from the decode timing; "
        "0 = calibrated just before use",
        unit="s",
        ge=0.0,
        le=1e6,
        source="derived: design.decode_timing (half the round-robin recalibration period)",
    )
    code_refresh: str = param(
        "hold",
        doc="when the rows get drive codes during decode: 'hold' = the codes written at programming stay applied "
        "and the drift since their calibration grows step by step (resident banks); 'every-step' = every decode step "
        "rewrites the rows (time-shared banks rewrite each physical bank every round) with codes calibrated "
        "calibration_age_s before use, so the drift since calibration is stationary (none at age 0). Needs "
        "feedback_calibration; the rows keep the residual (trim, quantisation, probe noise) of their first "
        "calibration, and a held voltage is never older than one step (no DC relaxation)",
        choices=("hold", "every-step"),
        source="PHYSICS §11 (time-shared banks are rewritten every round); the feasibility report's weight precision "
        "assumes the same steady state (codes calibration_age_s old at use)",
    )
    ring_capacitance_f: float = param(
        20e-15,
        doc="EO electrode capacitance per ring (programming energy C·V²)",
        unit="F",
        ge=0.0,
        lt=1e-9,
        source="assumption: lumped TFLN electrode ~0.3 fF/µm over ~63 µm",
    )
    # ---------------------------------------------------------------- query encoding
    encoding: str = param(
        "offset",
        doc="signed query encoding: 'offset' (one evaluation, bias light, row constant "
        "subtracted from believed weights) or 'dual-rail' (two evaluations q⁺, q⁻)",
        choices=("offset", "dual-rail"),
        source="PHYSICS §5",
    )
    query_bits: int = param(
        8,
        doc="query DAC bits on the MZM drive over [0, V_π] (0 = unquantised)",
        unit="bit",
        ge=0,
        le=24,
        source="IEEE 9162776 (8 b DAC)",
    )
    mzm_v_pi_v: float = param(
        1.4,
        doc="MZM half-wave voltage",
        unit="V",
        gt=0.0,
        le=100.0,
        source="Wang et al., Nature 562, 101 (2018): 1.4 V",
    )
    mzm_extinction_db: float = param(
        25.0,
        doc="MZM extinction ratio (power floor 10^(−ER/10))",
        unit="dB",
        gt=0.0,
        le=200.0,
        source="assumption: TFLN MZMs 20–30 dB",
    )
    mzm_predistortion: bool = param(
        True, doc="arcsin pre-distortion of the drive (linear in power)", source="PHYSICS §5"
    )
    mzm_insertion_loss_db: float = param(
        1.0,
        doc="MZM insertion loss",
        unit="dB",
        ge=0.0,
        le=60.0,
        source="assumption: TFLN MZM ~0.5–1 dB (Wang et al. 2018)",
    )
    # ---------------------------------------------------------------- link
    laser_line_dbm: float = param(
        13.0,
        doc="optical power per comb line at the chip input",
        unit="dBm",
        ge=-60.0,
        le=40.0,
        source="seed 13–20 dBm",
    )
    laser_wall_plug_efficiency: float = param(
        0.2, doc="laser wall-plug efficiency (energy model)", unit="", gt=0.0, le=1.0, source="Lightening-Transformer"
    )
    coupling_loss_db: float = param(
        1.5,
        doc="fibre-to-chip coupling loss",
        unit="dB",
        ge=0.0,
        le=60.0,
        source="assumption: TFLN edge couplers 1–3 dB",
    )
    splitter_excess_db_per_stage: float = param(
        0.2, doc="excess loss per 1×2 stage of the row splitter", unit="dB", ge=0.0, le=10.0, source="seed 0.2 dB/stage"
    )
    waveguide_loss_db_per_m: float = param(
        20.0, doc="routing waveguide loss", unit="dB/m", ge=0.0, le=1e4, source="Luxtelligence lnoi400 PDK 0.2 dB/cm"
    )
    waveguide_length_m: float = param(
        0.01,
        doc="routing length chip input → bank (ChipDesign adds the route inside the bank from its height)",
        unit="m",
        ge=0.0,
        le=1.0,
        source="assumption: 1 cm",
    )
    ring_insertion_db: float = param(
        0.01,
        doc="excess insertion loss per ring passed (on top of the ring model)",
        unit="dB",
        ge=0.0,
        le=10.0,
        source="assumption",
    )
    pd_coupling_loss_db: float = param(
        0.5, doc="waveguide-to-photodiode coupling loss", unit="dB", ge=0.0, le=60.0, source="assumption"
    )
    rows_per_bank: int = param(
        8192,
        doc="physical rows per weight bank (1×N splitter size)",
        unit="",
        ge=1,
        le=1 << 24,
        source="seed design point N=8192 blocks",
    )
    n_banks: int = param(
        112,
        doc="physical weight banks on the chip (rows beyond rows_per_bank·n_banks are time-multiplexed in pages)",
        unit="",
        ge=1,
        le=1 << 20,
        source="seed: 28 layers × 4 KV heads",
    )
    ring_pitch_m: float = param(
        50e-6,
        doc="row pitch of one ring cell (area = rings · pitch²)",
        unit="m",
        gt=0.0,
        le=1e-2,
        source="assumption: 2.5·R",
    )
    max_chip_area_m2: float = param(
        858e-6,
        doc="largest chip area (reticle limit 26 mm × 33 mm)",
        unit="m²",
        gt=0.0,
        source="lithography reticle field",
    )
    # ---------------------------------------------------------------- detection
    pd_responsivity_a_per_w: float = param(
        1.0, doc="photodiode responsivity R", unit="A/W", gt=0.0, le=2.0, source="SimPhony device yml 1.0–1.1 A/W"
    )
    pd_sensitivity_dbm: float = param(
        -26.0,
        doc="photodiode sensitivity (feasibility floor)",
        unit="dBm",
        ge=-100.0,
        le=20.0,
        source="SimPhony −25…−27 dBm",
    )
    dark_current_a: float = param(
        10e-9, doc="dark current per photodiode", unit="A", ge=0.0, le=1e-3, source="assumption: Ge/III-V PDs 1–50 nA"
    )
    tia_noise_a_per_rthz: float = param(
        3e-12,
        doc="TIA input-referred current noise density",
        unit="A/√Hz",
        ge=0.0,
        le=1e-6,
        source="PHYSICS §7: pA/√Hz scale",
    )
    nep_w_per_rthz: float = param(
        1e-12,
        doc="photodiode noise-equivalent power",
        unit="W/√Hz",
        ge=0.0,
        le=1e-6,
        source="seed 1–20 pW/√Hz (low end: the TIA noise is modelled separately)",
    )
    rin_db_per_hz: float = param(
        -140.0,
        doc="relative intensity noise of each comb line",
        unit="dB/Hz",
        ge=-250.0,
        le=-60.0,
        source="assumption: comb lines −130…−150 dB/Hz",
    )
    detection_bandwidth_hz: float = param(
        5e9,
        doc="electrical bandwidth Δf of detection",
        unit="Hz",
        gt=0.0,
        le=1e12,
        source="assumption: Nyquist of a 10 GS/s ADC",
    )
    noise: bool = param(True, doc="draw detection noise and RIN (False only for the ideal preset)", source="physics")
    adc_bits: int = param(
        8, doc="ADC bits over ±full scale (0 = unquantised)", unit="bit", ge=0, le=24, source="IEEE 9731625 (8 b)"
    )
    adc_headroom: float = param(
        1.0,
        doc="ADC full scale as a fraction of the worst-case |score| of the programmed "
        "bank (1 = never clips with believed weights)",
        unit="",
        gt=0.0,
        le=10.0,
        source="assumption",
    )
    adc_sample_rate_hz: float = param(
        10e9, doc="ADC sample rate (energy/latency model)", unit="S/s", gt=0.0, source="IEEE 9731625"
    )
    adc_energy_per_conversion_j: float = param(
        1.48e-12, doc="ADC energy per conversion", unit="J", ge=0.0, source="IEEE 9731625: 14.8 mW at 10 GS/s"
    )
    adc_walden_fom_j_per_step: float = param(
        25e-15, doc="ADC Walden figure of merit", unit="J/step", ge=0.0, source="IEEE 9731625 (~25 fJ/step)"
    )
    dac_sample_rate_hz: float = param(14e9, doc="query DAC sample rate", unit="S/s", gt=0.0, source="IEEE 9162776")
    dac_energy_per_sample_j: float = param(
        3.6e-12, doc="query DAC energy per sample", unit="J", ge=0.0, source="IEEE 9162776: 50 mW at 14 GS/s"
    )
    tia_power_w: float = param(
        2.03e-3,
        doc="TIA power per balanced pair at tia_reference_bandwidth_hz; the TIA model scales it with the detection "
        "bandwidth: P(Δf) = max(tia_min_power_w, tia_power_w · Δf / tia_reference_bandwidth_hz) (a TIA's bias "
        "current, hence its power, grows with the gain-bandwidth it must provide)",
        unit="W",
        ge=0.0,
        source="Analog Integr. Circ. Sig. Process. (2013), doi 10.1007/s10470-013-0117-8: inverter-based TIA in 40 nm "
        "CMOS, 2.03 mW at 8 GHz bandwidth (0.0002 mm²)",
    )
    tia_adc_power_seed_w: float = param(
        49e-6,
        doc="seed's assumed TIA+ADC power per diode (for comparison with the seed's energy claims)",
        unit="W",
        ge=0.0,
        source="seed (assumed)",
    )
    static_power_w: float = param(
        1.0, doc="static chip power: temperature control (TEC) and bias", unit="W", ge=0.0, source="assumption"
    )
    tia_reference_bandwidth_hz: float = param(
        8e9,
        doc="bandwidth at which tia_power_w is specified (TIA model: power ∝ bandwidth above tia_min_power_w)",
        unit="Hz",
        gt=0.0,
        source="Analog Integr. Circ. Sig. Process. (2013), doi 10.1007/s10470-013-0117-8: 8 GHz",
        section="energy",
    )
    tia_min_power_w: float = param(
        10e-6,
        doc="power floor of a TIA at low bandwidth (bias of its input stage and references)",
        unit="W",
        ge=0.0,
        source="assumption: a kHz–MHz CMOS TIA with pA/√Hz input noise biased at ~5 µA from 1.8 V",
        section="energy",
    )
    comb_conversion_efficiency: float = param(
        0.1,
        doc="share of the comb's pump power that arrives in the comb lines used (laser_mode 'comb' of the energy "
        "model: a CW comb cannot be gated, so its pump runs for the whole decode step)",
        unit="1",
        gt=0.0,
        le=1.0,
        source="assumption inside the reported range: Kerr microcombs convert a few % (bright solitons) to ~30 % "
        "(dark pulses; Xue et al., Laser Photonics Rev. 11, 1600276 (2017)) of the pump into comb lines",
        section="energy",
    )
    ring_driver_power_w: float = param(
        0.5e-3,
        doc="power of one ring-drive channel holding a voltage in ±V_max (one channel per ring: EO tuning is held by "
        "a DC voltage), charged for the whole decode step",
        unit="W",
        ge=0.0,
        source="seed's DAC figure 0.5 mW per channel (PHYSICS §10), taken for a held ±V_max channel (assumption: "
        "a high-voltage output stage draws at least as much as a low-voltage DAC channel)",
        section="energy",
    )
    ring_driver_area_m2: float = param(
        50e-6 * 50e-6,
        doc="area of one ring-drive channel (DAC or sample-and-hold plus ±V_max output stage) on the electronic die",
        unit="m²",
        ge=0.0,
        source="assumption: 50 µm × 50 µm of thick-oxide (high-voltage) devices per channel, as the TIA",
        section="layout",
    )
    drive_settling_s: float = param(
        10e-9,
        doc="time for a ring drive to settle to 1 LSB of program_bits after a code change (every rewrite and every "
        "iteration of an in-situ calibration waits for it)",
        unit="s",
        ge=0.0,
        source="assumption: a ±10 V output stage slewing ~V/ns and settling over a few time constants (the seed's "
        "1 ns DAC stage is a low-voltage query DAC)",
        section="energy",
    )
    calibration_probe_margin_bits: float = param(
        1.0,
        doc="in-situ calibration: an averaged probe reading resolves required_weight_bits + this many bits (its "
        "noise σ = LSB/√12 at that resolution over ±w_r), which sets the probe time from the detection noise",
        unit="bit",
        ge=0.0,
        le=16.0,
        source="assumption: one bit of margin keeps the probe noise at a quarter of the weight error budget "
        "(in variance)",
        section="calibration",
    )
    trim_max_chip_power_w: float = param(
        5.0,
        doc="largest total heater power of the die's trim heaters (the heat the package removes while holding the "
        "rings' temperature; heater_count = MRR count)",
        unit="W",
        gt=0.0,
        source="assumption: a TEC-stabilised photonic package removes a few W while holding the die to the 0.05 K "
        "(σ) of temperature_stability_k, which the thermal drift model assumes (bare LN rings drift tens of pm/K, "
        "PHYSICS §10)",
        section="layout",
    )
    # ---------------------------------------------------------------- energy model (kvprism.energy)
    mzm_termination_ohm: float = param(
        50.0,
        doc="load of the travelling-wave MZM electrode (drive energy per sample = mean V²/Z / DAC rate)",
        unit="Ω",
        gt=0.0,
        source="Wang et al., Nature 562, 101 (2018): 50 Ω-terminated travelling-wave electrodes",
    )
    topk_energy_per_compare_j: float = param(
        0.03e-12,
        doc="energy of one comparison of two ADC words in the electronic top-k",
        unit="J",
        ge=0.0,
        source="Horowitz, ISSCC 2014: 8-bit integer add 0.03 pJ (45 nm)",
    )
    program_rate_rings_per_s: float = param(
        1e12,
        doc="aggregate ring-drive write rate when rows are reloaded (paging latency = ring writes / rate)",
        unit="rings/s",
        gt=0.0,
        source="assumption: 1000 parallel drive channels at 1 GS/s",
    )
    # ---------------------------------------------------------------- latency stages (seed Table III)
    latency_dac_s: float = param(1e-9, doc="DAC stage latency", unit="s", ge=0.0, source="seed Table III")
    latency_mzm_s: float = param(0.1e-9, doc="MZM stage latency", unit="s", ge=0.0, source="seed Table III")
    latency_propagation_s: float = param(
        0.5e-9, doc="optical propagation latency", unit="s", ge=0.0, source="seed Table III"
    )
    latency_ring_s: float = param(0.1e-9, doc="ring response latency", unit="s", ge=0.0, source="seed Table III")
    latency_pd_s: float = param(0.2e-9, doc="photodiode latency", unit="s", ge=0.0, source="seed Table III")
    latency_tia_adc_s: float = param(2e-9, doc="TIA + ADC latency", unit="s", ge=0.0, source="seed Table III")
    latency_topk_s: float = param(5e-9, doc="electronic top-k latency", unit="s", ge=0.0, source="seed Table III")
    # ---------------------------------------------------------------- fabrication and drift
    fab_sigma_m: float = param(
        1e-9,
        doc="as-fabricated resonance spread (must be trimmed)",
        unit="m",
        ge=0.0,
        le=1e-7,
        source="PHYSICS §8: 0.5–2 nm",
    )
    trim_sigma_m: float = param(
        5e-12,
        doc="resonance error left after trimming (static per ring)",
        unit="m",
        ge=0.0,
        le=1e-8,
        source="assumption",
    )
    bus_phase_random: bool = param(
        True,
        doc="coherent drop bus: each ring's path (input bus → ring → drop bus) carries a static fabrication phase "
        "uniform in [0, 2π) (drawn per ring with the engine's generator); False: only the designed path phase "
        "from ring pitch and n_eff",
        source="physics: path lengths of hundreds of µm are not controlled to a fraction of a wavelength",
    )
    coupler_gap_sigma_m: float = param(
        2e-9,
        doc="fabrication spread σ of each coupler gap (per ring, input and drop coupler independently); the power "
        "coupling scales as κ² = κ0²·exp(−Δgap/coupler_gap_decay_m)",
        unit="m",
        ge=0.0,
        le=1e-7,
        source="assumption: e-beam / DUV gap control of a few nm (1σ)",
    )
    coupler_gap_decay_m: float = param(
        150e-9,
        doc="gap change that changes the power coupling by a factor e (evanescent coupling decay length)",
        unit="m",
        gt=0.0,
        le=1e-5,
        source="assumption: 0.1–0.2 µm for TFLN ridge waveguide couplers",
    )
    drift_ring_sigma_m: float = param(
        20e-12,
        doc="stationary σ of the per-ring thermal drift. drift_model 'fixed': as given; 'thermal': "
        "thermal_tuning_m_per_k × ring_temperature_sigma_k (a value given here must equal it)",
        unit="m",
        ge=0.0,
        le=1e-8,
        source="seed 20 pm (applied per weight)",
    )
    drift_global_sigma_m: float = param(
        0.0,
        doc="stationary σ of the chip-global drift (all rings vs the comb); one process per engine, i.e. per model "
        "layer in a SparseCache: each layer's banks are modelled as a thermally independent chip (a die shared by all "
        "layers would make this component common to them, which is not modelled). drift_model 'thermal': "
        "thermal_tuning_m_per_k × temperature_stability_k",
        unit="m",
        ge=0.0,
        le=1e-8,
        source="seed: none (per-weight only)",
    )
    drift_model: str = param(
        "fixed",
        doc="where the drift σ come from: 'fixed' = drift_ring_sigma_m and drift_global_sigma_m as given (e.g. a "
        "measured drift); 'thermal' = resonance shift per kelvin × temperature σ (global: the package's "
        "temperature stability; per ring: ring-to-ring temperature spread)",
        choices=("fixed", "thermal"),
        source="design choice: 'fixed' keeps the seed's numbers (class defaults); the TFLN presets use 'thermal'",
    )
    thermal_tuning_m_per_k: float = param(
        55e-12,
        doc="thermal drift model: resonance shift of a ring per kelvin (bare LN ring, no athermal cladding)",
        unit="m/K",
        ge=0.0,
        le=1e-9,
        source="Ling et al., Opt. Express 28, 21682 (2020): an athermal (TiO2-clad) X-cut LN ring moves ≤ 0.33 nm "
        "over −10…50 °C, 'one order of magnitude smaller than a bare LN microring' → bare ≈ 3.3 nm / 60 K ≈ 55 pm/K "
        "(PHYSICS §10: tens of pm/K; an athermal cladding ~10× less)",
    )
    temperature_stability_k: float = param(
        0.05,
        doc="thermal drift model: σ of the die temperature relative to the comb reference under the package's "
        "temperature control (sets drift_global_sigma_m)",
        unit="K",
        ge=0.0,
        le=100.0,
        source="assumption: a TEC-stabilised package holding the die to 0.05 K (σ) with watts of trim-heater power "
        "on it (trim_max_chip_power_w); commercial TEC loops hold their sensor to mK–10 mK, the die's heaters add "
        "gradients",
    )
    ring_temperature_sigma_k: float = param(
        0.02,
        doc="thermal drift model: σ of each ring's temperature about the die's (heater crosstalk, local gradients; "
        "sets drift_ring_sigma_m)",
        unit="K",
        ge=0.0,
        le=100.0,
        source="assumption: ring-to-ring temperature spread below the die's stability (no measurement found)",
    )
    drift_corr_time_s: float = param(
        2.0,
        doc="correlation time of the thermal drift processes (converted to decode steps with decode_step_time_s)",
        unit="s",
        gt=0.0,
        le=1e6,
        source="assumption: thermal time constants of a temperature-controlled die, 0.1–10 s",
    )
    decode_step_time_s: float = param(
        0.02,
        doc="wall-clock time of one decode step (drift and DC relaxation advance by this per step)",
        unit="s",
        gt=0.0,
        le=1e3,
        source="assumption: a 7B model decoding at 50 tokens/s",
    )
    drift_field_sigma_m: float = param(
        0.0,
        doc="stationary σ of the spatially correlated drift: a smooth temperature field along each bank's rows (one "
        "value per row, shared by its rings), exponential correlation drift_corr_length_m",
        unit="m",
        ge=0.0,
        le=1e-8,
        source="assumption (PHYSICS §8: per-ring drift spatially correlated besides global)",
    )
    drift_corr_length_m: float = param(
        1e-3,
        doc="correlation length of drift_field_sigma_m along the chip",
        unit="m",
        gt=0.0,
        le=1.0,
        source="assumption: heat spreads over ~mm in a LN-on-insulator die",
    )
    dc_relax_fraction: float = param(
        0.0,
        doc="TFLN DC drift: fraction of a held Pockels shift lost with time since programming, "
        "shift·(1 − f·(1 − exp(−t/dc_relax_time_s))), not compensated by the controller",
        unit="",
        ge=0.0,
        le=1.0,
        source="PHYSICS §11: fractions up to tens of % (0 = not modelled)",
    )
    dc_relax_time_s: float = param(
        1.0,
        doc="time constant of the TFLN DC relaxation",
        unit="s",
        gt=0.0,
        le=1e6,
        source="PHYSICS §11: ms–s",
    )
    drift_update_steps: int = param(
        1,
        doc="decode steps between samples of the drift processes: every this many steps the drift is advanced (exactly "
        "in distribution, by all steps since the last sample) and W_eff recomputed; in between the rings hold the last "
        "sample (zero-order hold), which adds the RMS detuning error drift_hold_rms_m. 1 = the process at every step",
        unit="decode steps",
        ge=1,
        le=1_000_000,
        source="numerics (a simulation time step, not a chip property): 1 = no hold error",
    )
    # ---------------------------------------------------------------- feasibility thresholds
    leakage_limit_db: float = param(
        -20.0,
        doc="largest acceptable drop leakage (power) of a ring onto another line; feasibility applies the stricter of this and the limit derived from required_weight_bits (field formula)",
        unit="dB",
        le=0.0,
        source="assumption",
    )
    required_weight_bits: float = param(
        4.0, doc="weight precision the selection needs", unit="bit", ge=0.0, le=24.0, source="seed: 4–5 bit weights"
    )
    required_score_enob: float = param(
        4.0, doc="effective bits of the scores the selection needs", unit="bit", ge=0.0, le=24.0, source="assumption"
    )

    # ---------------------------------------------------------------- feasibility, link, detection timing, power,
    # layout and energy (kvprism.photonics.design / feasibility, kvprism.energy); ChipDesign derives from these
    selection_time_fraction: float = param(
        0.1,
        doc="share of one decode step that the chip's selections may take (the rest is the GPU's attention on the "
        "selected blocks and the MLPs); bounds the time per selection of design.decode_timing",
        unit="1",
        gt=0.0,
        le=1.0,
        source="assumption: selection must stay a small part of the step (PHYSICS §11)",
        section="detector",
    )
    integration_fraction: float = param(
        0.5,
        doc="share of the time per selection (per optical pass) spent integrating the photocurrent when detection "
        "is timed by decode (the rest: query DAC/MZM settling, ADC conversion, top-k); with it design.decode_timing "
        "sets detection_bandwidth_hz = 1/(2·T_int). Without a decode timing detection_bandwidth_hz is the design "
        "choice and T_int = 1/(2·detection_bandwidth_hz)",
        unit="1",
        gt=0.0,
        le=1.0,
        source="assumption",
        section="detector",
    )
    pd_sensitivity_bandwidth_hz: float = param(
        5e9,
        doc="detection bandwidth at which pd_sensitivity_dbm is specified; the sensitivity floor scales as "
        "√(Δf / this) (TIA-noise-limited receiver: the smallest detectable power ∝ i_n·√Δf / R)",
        unit="Hz",
        gt=0.0,
        le=1e12,
        source="assumption: the seed's 5 GHz detection bandwidth (the −26 dBm of SimPhony is a high-speed receiver "
        "figure)",
        section="detector",
    )
    demux_loss_db: float = param(
        3.0,
        doc="insertion loss of the comb demultiplexer before the per-line MZMs",
        unit="dB",
        ge=0.0,
        le=30.0,
        source="PHYSICS §11: 2–4 dB per demux/mux (AWG)",
        section="link",
    )
    mux_loss_db: float = param(
        3.0,
        doc="insertion loss of the multiplexer that recombines the modulated lines onto the bank's bus",
        unit="dB",
        ge=0.0,
        le=30.0,
        source="PHYSICS §11: 2–4 dB per demux/mux (AWG)",
        section="link",
    )
    bank_routing_fraction: float = param(
        1.0,
        doc="routing length inside a bank to its farthest row as a fraction of the bank height rows_per_bank · "
        "ring_pitch_m (added to waveguide_length_m, the route chip input → bank)",
        unit="1",
        ge=0.0,
        le=4.0,
        source="assumption: the splitter trunk runs along the full height of the bank",
        section="link",
    )
    crossings_per_row: int = param(
        0,
        doc="waveguide crossings on the path of the light to a row (0: the drop photodiode sits inside the row's "
        "cell and nothing crosses the feed; 1: the counter-propagating drop bus crosses the feed trunk)",
        unit="1",
        ge=0,
        le=1000,
        source="assumption: layout with the drop PD inside the row cell",
        section="link",
    )
    crossing_loss_db: float = param(
        0.2,
        doc="insertion loss per waveguide crossing",
        unit="dB",
        ge=0.0,
        le=10.0,
        source="assumption: integrated waveguide crossings 0.02–0.3 dB",
        section="link",
    )
    comb_line_max_w: float = param(
        10e-3,
        doc="largest optical power per comb line the source delivers at the chip input",
        unit="W",
        gt=0.0,
        source="PHYSICS §11: comb sources give mW per line; 10 mW as the upper end (assumption)",
        section="power",
    )
    waveguide_max_power_w: float = param(
        100e-3,
        doc="largest total optical power (all lines) in one LN waveguide, at the input after the coupler",
        unit="W",
        gt=0.0,
        source="assumption: photorefraction and pyroelectric drift of TFLN grow with power (Ren et al., arXiv "
        "2409.12354; Xu et al., arXiv 2012.10775); 100 mW keeps the input guide below the levels of nonlinear "
        "TFLN experiments",
        section="power",
    )
    mzm_max_power_w: float = param(
        50e-3,
        doc="largest optical power through one MZM (one comb line after the demux)",
        unit="W",
        gt=0.0,
        source="assumption: photorefractive bias drift of TFLN MZMs at tens of mW",
        section="power",
    )
    ring_max_circulating_w: float = param(
        10e-3,
        doc="largest circulating power in one ring (input on resonance × build-up ≈ finesse/π)",
        unit="W",
        gt=0.0,
        source="assumption: photorefractive/thermal resonance shifts of TFLN rings appear at mW-level intracavity "
        "power (Xu et al., arXiv 2012.10775; Ren et al., arXiv 2409.12354)",
        section="power",
    )
    pd_saturation_current_a: float = param(
        1e-3,
        doc="photocurrent per photodiode above which the response is no longer linear",
        unit="A",
        gt=0.0,
        source="PHYSICS §11: photodiodes saturate at mA-scale photocurrent (assumption: 1 mA)",
        section="power",
    )
    trim_mechanism: str = param(
        "heater",
        doc="how the as-fabricated resonance spread fab_sigma_m is trimmed: 'heater' (a micro-heater per ring, held "
        "power) or 'one-time' (post-fabrication trim, e.g. photorefractive optical trimming; no held power)",
        choices=("heater", "one-time"),
        source="PHYSICS §8, §11; one-time optical trimming of TFLN rings: Ren et al., arXiv 2409.12354",
        section="layout",
    )
    trim_power_per_fsr_w: float = param(
        14.9e-3,
        doc="heater trim: heater power that shifts a ring by one FSR. Independent of the ring size to first order: "
        "the shift per kelvin is λ (dn_eff/dT) / n_g for any ring while the heated length, hence the power per kelvin, "
        "and the FSR both scale with the circumference (so a fixed pm/mW would penalise small rings)",
        unit="W",
        gt=0.0,
        source="Liu et al., Opt. Lett. 45, 6318 (2020): one FSR with 14.9 mW (53.7 pm/mW, thermal-isolation trenches)",
        section="layout",
    )
    trim_max_power_w: float = param(
        15e-3,
        doc="heater trim: largest heater power per ring (trim range = FSR × this / trim_power_per_fsr_w)",
        unit="W",
        gt=0.0,
        source="Liu et al., Opt. Lett. 45, 6318 (2020): one FSR with 14.9 mW",
        section="layout",
    )
    one_time_trim_range_m: float = param(
        2e-9,
        doc="one-time trim: largest resonance shift the post-fabrication trim reaches",
        unit="m",
        gt=0.0,
        source="assumption (optical trimming of TFLN rings: Ren et al., arXiv 2409.12354)",
        section="layout",
    )
    pd_pair_area_m2: float = param(
        2 * 20e-6 * 20e-6,
        doc="area of one row's balanced photodiode pair on the photonic die",
        unit="m²",
        ge=0.0,
        source="assumption: two 20 µm × 20 µm waveguide photodiodes with contacts",
        section="layout",
    )
    mzm_area_m2: float = param(
        5e-3 * 100e-6,
        doc="area of one query MZM (d per physical bank) on the photonic die",
        unit="m²",
        ge=0.0,
        source="assumption: 5 mm travelling-wave electrode × 100 µm (Wang et al., Nature 562, 101 (2018): 5–20 mm)",
        section="layout",
    )
    tia_area_m2: float = param(
        50e-6 * 50e-6,
        doc="area of one row's TIA (on the electronic die)",
        unit="m²",
        ge=0.0,
        source="assumption: 50 µm × 50 µm CMOS TIA",
        section="layout",
    )
    adc_area_m2: float = param(
        100e-6 * 100e-6,
        doc="area of one row's ADC (on the electronic die)",
        unit="m²",
        ge=0.0,
        source="assumption: 0.01 mm² for an 8-bit CMOS ADC",
        section="layout",
    )
    max_electronic_area_m2: float = param(
        858e-6,
        doc="largest area of the electronic die that holds the rows' TIAs and ADCs (3D-stacked under the photonics)",
        unit="m²",
        gt=0.0,
        source="lithography reticle field 26 mm × 33 mm",
        section="layout",
    )
    required_recall: float = param(
        0.9,
        doc="signature recall@k the selection needs on the reference score distribution (Gaussian signatures and "
        "queries, k/N = 1/8): fraction of the exact top-k rows the chip's top-k contains",
        unit="1",
        ge=0.0,
        le=1.0,
        source="assumption",
        section="criteria",
    )

    def __new__(cls, *args, **kwargs):
        obj = super().__new__(cls, *args, **kwargs)
        object.__setattr__(obj, "_given", frozenset(kwargs))  # which derived fields the caller set (see _resolve)
        return obj

    def __post_init__(self) -> None:
        self._resolve()
        super().__post_init__()

    def _derived(self) -> dict[str, float]:
        """Values of the fields derived by the active models (loss_model 'bend', drift_model 'thermal')."""
        from kvprism.photonics import loss

        out: dict[str, float] = {}
        if self.loss_model == "bend":
            out["loss_db_per_m"] = loss.intrinsic_loss_db_per_m(
                self.ring_radius_m, self.straight_loss_db_per_m, self.bend_loss_c1_db_per_m, self.bend_loss_c2_per_m
            )
        if self.drift_model == "thermal":
            out["drift_ring_sigma_m"] = self.thermal_tuning_m_per_k * self.ring_temperature_sigma_k
            out["drift_global_sigma_m"] = self.thermal_tuning_m_per_k * self.temperature_stability_k
        return out

    def _resolve(self) -> None:
        """Set the derived fields; a value the caller gave for one must equal the model's (else: set the model to
        'fixed' to give a measured value)."""
        given = getattr(self, "_given", frozenset())
        for name, value in self._derived().items():
            have = getattr(self, name)
            if name in given and not math.isclose(float(have), value, rel_tol=1e-9, abs_tol=1e-30):
                model, on = _DERIVED[name]
                self._fail(
                    name,
                    have,
                    f"with {model} = {on!r} it is derived ({value:.6g}); set {model} = 'fixed' to give a measured value",
                )
            object.__setattr__(self, name, value)

    def replace(self, **changes):
        """A copy with ``changes`` applied; fields derived by an active model are derived again (unless given)."""
        self._check_names(changes)
        kw = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}
        kw.update(changes)
        for name, (model, on) in _DERIVED.items():
            if kw[model] == on and name not in changes:
                del kw[name]
        return type(self)(**kw)

    @property
    def loss_origin(self) -> str:
        """Where loss_db_per_m comes from, in words (the feasibility report prints it)."""
        if self.loss_model == "fixed":
            return "fixed (loss_db_per_m as given)"
        from kvprism.photonics import loss

        bend = loss.bend_loss_db_per_m(self.ring_radius_m, self.bend_loss_c1_db_per_m, self.bend_loss_c2_per_m)
        where = (
            f"below the {self.bend_loss_min_sourced_radius_m * 1e6:g} µm of sourced data: model extrapolation"
            if self.ring_radius_m < self.bend_loss_min_sourced_radius_m
            else f"inside the sourced radii ≥ {self.bend_loss_min_sourced_radius_m * 1e6:g} µm"
        )
        return (
            f"bend model at R = {self.ring_radius_m * 1e6:g} µm: {self.straight_loss_db_per_m:g} straight + "
            f"{bend:.3g} bend dB/m ({where})"
        )

    @property
    def drift_origin(self) -> str:
        """Where the drift σ come from, in words (the feasibility report prints it)."""
        pm = 1e12
        if self.drift_model == "fixed":
            return (
                f"fixed: per ring {self.drift_ring_sigma_m * pm:.3g} pm, global {self.drift_global_sigma_m * pm:.3g} pm"
            )
        t = self.thermal_tuning_m_per_k * pm
        return (
            f"drift = {t:g} pm/K × {self.ring_temperature_sigma_k:g} K = {self.drift_ring_sigma_m * pm:.3g} pm per "
            f"ring; {t:g} pm/K × {self.temperature_stability_k:g} K = {self.drift_global_sigma_m * pm:.3g} pm global"
        )

    def _check(self) -> None:
        from kvprism.photonics import ring

        if self.code_refresh == "every-step" and not self.feedback_calibration:
            self._fail(
                "code_refresh",
                self.code_refresh,
                "codes refreshed every step compensate the drift they measured; set feedback_calibration = true "
                "(model-based calibration does not see the drift: use 'hold')",
            )
        if self.rewrite_calibration == "replay" and not self.feedback_calibration:
            self._fail(
                "rewrite_calibration",
                self.rewrite_calibration,
                "replayed codes come from in-situ calibration; set feedback_calibration = true (open-loop rewrites "
                "need no codes: use 'recalibrate')",
            )

        try:
            ring.design_couplings(
                self.q_loaded,
                self.wavelength_center_m,
                self.n_g,
                self.ring_radius_m,
                self.loss_db_per_m,
                self.coupling_regime,
            )
        except ValueError as exc:
            self._fail("q_loaded", self.q_loaded, str(exc))

    # ------------------------------------------------- predicates on the values (every derived number: ChipDesign)
    @property
    def is_ideal(self) -> bool:
        """True when every impairment is off: the chip then computes an exact dot product."""
        return (
            not self.crosstalk
            and not self.noise
            and self.program_bits == 0
            and self.query_bits == 0
            and self.adc_bits == 0
            and self.trim_sigma_m == 0.0
            and self.drift_ring_sigma_m == 0.0
            and self.drift_global_sigma_m == 0.0
            and self.drift_field_sigma_m == 0.0
            and self.dc_relax_fraction == 0.0
            and self.coupler_gap_sigma_m == 0.0
        )

    @property
    def physical_rows(self) -> int:
        """Rows of the chip: rows_per_bank × n_banks (the same count as ``ChipDesign.rows``)."""
        return self.rows_per_bank * self.n_banks
