"""Feasibility verdict of a photonic configuration (PHYSICS.md §9): numbers with units and violated constraints."""

from __future__ import annotations

import dataclasses
import math

import torch

from kvprism.photonics import encoding, link, noise, ring
from kvprism.photonics.config import PhotonicConfig

__all__ = ["FeasibilityReport", "feasibility"]


@dataclasses.dataclass
class FeasibilityReport:
    """Feasibility numbers of one configuration; ``violations`` holds one readable sentence per violated constraint."""

    d: int
    fsr_m: float
    fwhm_m: float
    q_loaded: float
    q_intrinsic: float
    comb_span_m: float
    eo_range_m: float
    required_swing_v: float
    v_max_v: float
    weight_range: float
    worst_leakage_db: float
    received_line_dbm: float
    received_pd_dbm: float
    link_loss_db: float
    electrical_snr_db: float
    score_snr_db: float
    score_enob_bits: float
    weight_bits: float
    calibration_residual: float
    mrr_count: int
    area_m2: float
    cascade_near_rings: int
    cascade_fit_error: float
    violations: list[str]
    drift_update_steps: int = 1  # simulation: decode steps between drift samples (PhotonicConfig.drift_update_steps)
    drift_hold_rms_m: float = 0.0  # simulation: RMS detuning error of holding the drift between samples

    @property
    def feasible(self) -> bool:
        return not self.violations

    def rows(self) -> list[tuple[str, str, str]]:
        """(quantity, value with unit, constraint) rows for a table."""
        nm, pm = 1e9, 1e12
        return [
            ("comb lines d", f"{self.d}", ""),
            ("ring FSR", f"{self.fsr_m * nm:.2f} nm", ""),
            ("comb span d·Δ", f"{self.comb_span_m * nm:.2f} nm", f"≤ FSR {self.fsr_m * nm:.2f} nm"),
            (
                "FWHM / Q_loaded / Q_intrinsic",
                f"{self.fwhm_m * pm:.1f} pm / {self.q_loaded:.3g} / {self.q_intrinsic:.3g}",
                "",
            ),
            ("EO range 2·tuning·V_max", f"{self.eo_range_m * pm:.1f} pm", ""),
            ("required drive swing", f"±{self.required_swing_v:.2f} V", f"≤ V_max {self.v_max_v:.2f} V"),
            ("usable weight range", f"±{self.weight_range:.3f}", ""),
            ("worst neighbour leakage", f"{self.worst_leakage_db:.1f} dB", ""),
            ("link loss per line", f"{self.link_loss_db:.1f} dB", ""),
            ("received power per line", f"{self.received_line_dbm:.1f} dBm", ""),
            ("received power per PD (mid bias)", f"{self.received_pd_dbm:.1f} dBm", ""),
            ("electrical SNR at full scale", f"{self.electrical_snr_db:.1f} dB", ""),
            ("score SNR / ENOB (Monte Carlo)", f"{self.score_snr_db:.1f} dB / {self.score_enob_bits:.2f} bit", ""),
            ("weight precision after calibration", f"{self.weight_bits:.2f} bit", ""),
            ("calibration residual (RMS)", f"{self.calibration_residual:.2e}", ""),
            (
                "cascade model: near rings per line / far-fit error",
                f"{self.cascade_near_rings} / {self.cascade_fit_error:.1e}",
                "",
            ),
            (
                "drift sampled every / hold error (RMS)",
                f"{self.drift_update_steps} decode steps / {self.drift_hold_rms_m * pm:.2f} pm",
                "",
            ),
            ("MRR count", f"{self.mrr_count:,}", ""),
            ("ring area", f"{self.area_m2 * 1e6:.1f} mm²", ""),
        ]


def _snr_to_enob(snr_db: float) -> float:
    return (snr_db - 1.76) / 6.02


def _worst_leakage_db(cfg: PhotonicConfig, d: int, r1: float, r2: float, a: float, lo_m: float, hi_m: float) -> float:
    """Largest drop transmission of any ring onto any other line over the ring's detuning range, all FSR orders."""
    from kvprism.photonics.wdm import RowOptics

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


def mid_bias_pd_power_w(cfg: PhotonicConfig, row_line_w: float, d: int) -> float:
    """Optical power [W] on each diode of a row's balanced pair at mid-bias query (half of the row's light on each
    diode) when each of the ``d`` comb lines reaches the row with ``row_line_w`` [W] (MZM fully open)."""
    tmin = encoding.t_min(cfg.mzm_extinction_db)
    return row_line_w * d * (tmin + (1.0 - tmin) * 0.5) * 0.5


def electrical_snr_db(cfg: PhotonicConfig, row_line_w: float, d: int, weight_range: float) -> float:
    """Electrical SNR [dB] of a full-scale score of one row (the feasibility verdict's operating point): ADC
    full-scale current of a typical bank (Σ|w| ≈ d·w_r/2, doubled for dual-rail) against shot + dark + TIA + NEP
    noise at mid bias (:func:`noise.detector_variance_a2`) plus RIN on the signal (:func:`noise.rin_sigma`).
    ``inf`` for a noise-free configuration."""
    if not cfg.noise:
        return math.inf
    tmin = encoding.t_min(cfg.mzm_extinction_db)
    resp, bw = cfg.pd_responsivity_a_per_w, cfg.detection_bandwidth_hz
    p_pd_w = mid_bias_pd_power_w(cfg, row_line_w, d)
    i_fs = 0.5 * (1.0 - tmin) * row_line_w * resp * d * weight_range * 0.5
    if cfg.encoding == "dual-rail":
        i_fs *= 2.0
    var = noise.detector_variance_a2(
        resp * p_pd_w, resp * p_pd_w, i_dark_a=cfg.dark_current_a, tia_noise_a_per_rthz=cfg.tia_noise_a_per_rthz,
        nep_w_per_rthz=cfg.nep_w_per_rthz, responsivity_a_per_w=resp, bandwidth_hz=bw,
    )  # fmt: skip
    var += (noise.rin_sigma(cfg.rin_db_per_hz, bw) * i_fs) ** 2
    return 10.0 * math.log10(i_fs**2 / var) if var > 0 else math.inf


def feasibility(
    cfg: PhotonicConfig, d: int | None = None, seed: int = 0, mc_rows: int = 256, mc_queries: int = 64
) -> FeasibilityReport:
    """Evaluate ``cfg`` for ``d`` comb lines (default ``cfg.n_lines``). The score SNR/ENOB and the achieved weight
    precision come from a seeded Monte Carlo: a bank of ``mc_rows`` Gaussian signatures programmed on a fresh engine
    (all impairments of ``cfg``), ``mc_queries`` Gaussian queries, estimates compared with the exact dot products
    after the best linear fit; weight bits = log2(2 w_r / (√12 · RMS(W_eff − target)))."""
    from kvprism.photonics.engine import PhotonicEngine

    d = d or cfg.n_lines
    r1, r2 = cfg.couplings
    a = float(ring.round_trip_amplitude(cfg.loss_db_per_m, cfg.ring_radius_m))
    lam = cfg.wavelength_center_m
    fsr = float(ring.fsr_m(lam, cfg.n_g, cfg.ring_radius_m))
    fwhm = float(ring.fwhm_m(lam, cfg.n_g, cfg.ring_radius_m, r1, r2, a))
    qi = float(ring.q_intrinsic(lam, cfg.n_g, cfg.loss_db_per_m))
    span = d * cfg.channel_spacing_m
    eng = PhotonicEngine(cfg, seed=seed)
    lo_m, hi_m = eng.detuning_range_m()
    opt = eng.optics(d)
    eo_range = 2.0 * cfg.tuning_m_per_v * cfg.v_max_v
    wr = eng.weight_range(d)
    violations: list[str] = []

    # drive swing needed for ±weight_range_target with one ring (if the ring can reach it at all), plus 3σ of
    # the static trim residual that the bias must absorb
    w_min = float(ring.single_ring_weight(0.0, r1, r2, a))
    w_max = float(ring.single_ring_weight(math.pi, r1, r2, a))
    w_req = min(cfg.weight_range_target, -w_min, w_max)
    if w_req < cfg.weight_range_target:
        violations.append(
            f"weights ±{cfg.weight_range_target:g} are out of the ring's reach at any drive: its extinction limits "
            f"them to [{w_min:.3f}, {w_max:.3f}]"
        )
    per_m = float(opt.phase_per_m.min())
    c = ring.single_ring_weight_inverse_cos(torch.tensor([-w_req, w_req], dtype=torch.float64), r1, r2, a)
    det_needed = torch.arccos(c.clamp(-1.0, 1.0)) / per_m
    reserve = 3.0 * cfg.trim_sigma_m
    lo_need, hi_need = float(det_needed[0]) - reserve, float(det_needed[1]) + reserve
    swing = max(abs(lo_need - cfg.rest_detuning_m), abs(hi_need - cfg.rest_detuning_m)) / cfg.tuning_m_per_v
    if swing > cfg.v_max_v:
        violations.append(
            f"weights ±{w_req:.3g} (+3σ trim) need a drive of ±{swing:.2f} V but V_max is {cfg.v_max_v:g} V: "
            f"usable weights shrink to ±{wr:.3f}"
        )
    if span > fsr:
        violations.append(
            f"comb span {span * 1e9:.2f} nm ({d} lines × {cfg.channel_spacing_m * 1e9:g} nm) exceeds the ring FSR "
            f"{fsr * 1e9:.2f} nm: lines alias onto other resonance orders of the rings"
        )
    leak_db = _worst_leakage_db(cfg, d, r1, r2, a, lo_m, hi_m) if cfg.crosstalk else -math.inf
    if leak_db > cfg.leakage_limit_db:
        violations.append(
            f"worst leakage of a ring onto another line is {leak_db:.1f} dB, above the {cfg.leakage_limit_db:g} dB limit"
        )
    if cfg.feedback_calibration and 3.0 * cfg.trim_sigma_m > 0.5 * eo_range:
        violations.append(
            f"trim residual 3σ = {3e12 * cfg.trim_sigma_m:.1f} pm exceeds half the EO range "
            f"({0.5e12 * eo_range:.1f} pm): the closed loop cannot absorb it"
        )
    if not cfg.feedback_calibration and cfg.trim_sigma_m > 0.25 * fwhm:
        violations.append(
            f"open-loop programming with a trim residual σ = {1e12 * cfg.trim_sigma_m:.1f} pm > FWHM/4 "
            f"({0.25e12 * fwhm:.1f} pm): weights are dominated by fabrication error"
        )

    budget = eng.link_budget(d)
    p_pd_w = mid_bias_pd_power_w(cfg, budget.row_line_w, d)
    if link.w_to_dbm(p_pd_w) < cfg.pd_sensitivity_dbm:
        violations.append(
            f"received power per photodiode {link.w_to_dbm(p_pd_w):.1f} dBm is below the sensitivity "
            f"{cfg.pd_sensitivity_dbm:g} dBm (link loss {budget.total_loss_db:.1f} dB incl. the 1×"
            f"{cfg.rows_per_bank} splitter)"
        )
    el_snr_db = electrical_snr_db(cfg, budget.row_line_w, d, wr)

    # Monte Carlo on a fresh engine
    gen = torch.Generator().manual_seed(seed + 7919)
    sig = torch.randn(mc_rows, d, generator=gen)
    qs = torch.randn(mc_queries, d, generator=gen)
    eng.program(sig.unsqueeze(0))
    if cfg.is_ideal:
        weight_bits, resid, snr_db = math.inf, 0.0, math.inf
    else:
        tgt = sig * eng._scale[0]
        w_nodrift = _weights_without_drift(eng)
        err = (w_nodrift - tgt).pow(2).mean().sqrt().item()
        weight_bits = math.log2(2.0 * wr / (math.sqrt(12.0) * err)) if err > 0 else math.inf
        resid = eng.last_calibration_residual or 0.0
        est = eng.scores(qs.unsqueeze(0)).squeeze(0)  # [Q, N]
        exact = qs @ sig.T
        alpha = float((est * exact).sum() / (exact * exact).sum())
        e = est - alpha * exact
        snr_db = 10.0 * math.log10(float((alpha * exact).pow(2).mean()) / max(float(e.pow(2).mean()), 1e-300))
    enob = _snr_to_enob(snr_db)
    if enob < cfg.required_score_enob:
        violations.append(
            f"score ENOB {enob:.2f} bit (SNR {snr_db:.1f} dB, Monte Carlo) is below the required "
            f"{cfg.required_score_enob:g} bit"
        )
    if weight_bits < cfg.required_weight_bits:
        violations.append(
            f"weight precision after calibration is {weight_bits:.2f} bit, below the required "
            f"{cfg.required_weight_bits:g} bit"
        )
    plan = eng.cascade_plan
    mrr = cfg.rows_per_bank * cfg.n_banks * d
    area = mrr * cfg.ring_pitch_m**2
    if area > cfg.max_chip_area_m2:
        violations.append(
            f"{mrr:,} rings at {cfg.ring_pitch_m * 1e6:g} µm pitch need {area * 1e6:,.0f} mm², above the "
            f"{cfg.max_chip_area_m2 * 1e6:g} mm² chip limit"
        )
    return FeasibilityReport(
        d=d, fsr_m=fsr, fwhm_m=fwhm, q_loaded=lam / fwhm, q_intrinsic=qi, comb_span_m=span, eo_range_m=eo_range,
        required_swing_v=swing, v_max_v=cfg.v_max_v, weight_range=wr, worst_leakage_db=leak_db,
        received_line_dbm=budget.row_line_dbm, received_pd_dbm=link.w_to_dbm(p_pd_w),
        link_loss_db=budget.total_loss_db, electrical_snr_db=el_snr_db, score_snr_db=snr_db, score_enob_bits=enob,
        weight_bits=weight_bits, calibration_residual=resid, mrr_count=mrr, area_m2=area,
        cascade_near_rings=plan.k if plan is not None else (d if cfg.crosstalk else 1),
        cascade_fit_error=plan.max_fit_error if plan is not None else 0.0, violations=violations,
        drift_update_steps=cfg.drift_update_steps, drift_hold_rms_m=cfg.drift_hold_rms_m,
    )  # fmt: skip


def _weights_without_drift(eng) -> torch.Tensor:
    """W_eff [N, d] of bank 0 as programmed: calibration + voltage quantisation + trim residual, plus — for the closed
    loop, which compensated it — the drift present at programming time; drift after programming is excluded."""
    from kvprism.photonics.wdm import cascade

    det = eng._static[0]
    if eng.config.feedback_calibration:
        det = det + eng._ring_drift[0] + eng._global_drift
    thru, drop = cascade(det, eng.optics(eng.n_dims), eng.config.crosstalk, eng.cascade_plan)
    return thru - drop
