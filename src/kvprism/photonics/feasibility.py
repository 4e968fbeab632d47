"""Feasibility verdict of a photonic configuration (PHYSICS.md §9, §11): numbers with units and violated constraints.

The analytic rows come from :class:`~kvprism.photonics.design.ChipDesign` (pure); the score SNR, recall@k and the
weight precision from a seeded Monte Carlo on a :class:`~kvprism.photonics.engine.PhotonicEngine` through its public
API (``program``, ``scores``, ``select``, ``weights_as_programmed``, ``last_calibration_residual``,
``cascade_plan``). Thresholds and their sources:

* drive swing ≤ V_max; comb span ≤ FSR (physics);
* neighbour leakage ≤ the stricter of ``leakage_limit_db`` and the field-formula limit for ``required_weight_bits``
  (:func:`~kvprism.photonics.design.leakage_limit_db`);
* 3σ of ``fab_sigma_m`` on either side within the trim range (heater: efficiency × max power; one-time: its range);
  the held heater power of every ring (heater count = MRR count) ≤ ``trim_max_chip_power_w``;
* each optical power cap (``comb_line_max_w``, ``waveguide_max_power_w``, ``mzm_max_power_w``,
  ``ring_max_circulating_w``, ``pd_saturation_current_a``) at the configured laser power;
* a query symbol (T_int) at least the ring photon lifetime; the ADC converts one sample per symbol and row;
* received power ≥ PD sensitivity; score ENOB ≥ ``required_score_enob``; recall@k ≥ ``required_recall``; weight
  precision ≥ ``required_weight_bits`` (all from the config, each with its source);
* photonic area (rings + PD pairs + MZMs) ≤ ``max_chip_area_m2``; electronic area (TIAs + ADCs + ring-drive
  channels) ≤ ``max_electronic_area_m2``;
* timed (``timing`` from :func:`~kvprism.photonics.design.decode_timing` at a model shape, decode rate and context):
  rewrites + in-situ calibrations + query symbols of one decode step ≤ the selection budget
  (``selection_time_fraction`` of the step).

A report is *feasible* only when it is timed and no constraint is violated; an untimed report that violates nothing
only "passes the untimed checks" (:attr:`FeasibilityReport.verdict`).
"""

from __future__ import annotations

import dataclasses
import math

import torch

from kvprism.photonics import link, ring
from kvprism.photonics.architecture import package_violations
from kvprism.photonics.config import PhotonicConfig
from kvprism.photonics.design import (
    ChipDesign,
    DecodeTiming,
    PowerLimit,
    calibration_probes,
    leakage_limit_db,
    mid_bias_pd_power_w,
    score_snr_db,
    timed_by_decode,
)
from kvprism.photonics.engine import PhotonicEngine

__all__ = ["FeasibilityReport", "TrimCheck", "feasibility", "mid_bias_pd_power_w", "report", "trim_check"]


@dataclasses.dataclass(frozen=True)
class TrimCheck:
    """Trim of the as-fabricated resonance spread: the shift needed (±3σ of ``fab_sigma_m``, at most one FSR: a ring
    may lock onto its line through any resonance order), the mechanism's range, and the held power."""

    mechanism: str
    needed_m: float
    range_m: float
    mean_power_w: float  # per ring (heater); 0 for a one-time trim
    chip_power_w: float  # every ring of the chip
    heaters: int = 0  # one per ring with heater trim, 0 for a one-time trim

    @property
    def fits(self) -> bool:
        return self.needed_m <= self.range_m


def trim_check(cfg: PhotonicConfig, design: ChipDesign) -> TrimCheck:
    """:class:`TrimCheck` of ``cfg``: a heater only red-shifts, so rings are designed 3σ blue of their line and the
    heater spans 6σ (mean shift 3σ → mean power 3σ / efficiency); a one-time trim needs the same span."""
    needed = min(6.0 * cfg.fab_sigma_m, design.fsr_m)
    if cfg.trim_mechanism == "heater":
        efficiency_m_per_w = design.fsr_m / cfg.trim_power_per_fsr_w
        rng = efficiency_m_per_w * cfg.trim_max_power_w
        mean_p = min(3.0 * cfg.fab_sigma_m, 0.5 * design.fsr_m) / efficiency_m_per_w
    else:
        rng, mean_p = cfg.one_time_trim_range_m, 0.0
    heaters = design.mrr_count if cfg.trim_mechanism == "heater" else 0
    return TrimCheck(cfg.trim_mechanism, needed, rng, mean_p, mean_p * design.mrr_count, heaters)


@dataclasses.dataclass
class FeasibilityReport:
    """Feasibility numbers of one configuration; ``violations`` holds one readable sentence per violated constraint.
    ``design`` is the :class:`ChipDesign` every analytic number comes from."""

    d: int
    design: ChipDesign
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
    leakage_limit_db: float
    received_line_dbm: float
    received_pd_dbm: float
    link_loss_db: float
    score_snr_analytic_db: float  # detection noise only, score-referred (design.score_snr_db)
    score_snr_db: float  # Monte Carlo, all impairments
    score_enob_bits: float
    recall_at_k: float
    recall_k: int
    weight_bits: float
    calibration_residual: float
    mrr_count: int
    area_m2: float  # photonic die: rings + PD pairs + MZMs
    electronic_area_m2: float
    trim: TrimCheck
    cascade_near_rings: int
    cascade_fit_error: float
    violations: list[str]
    timing: DecodeTiming | None = None
    drift_update_steps: int = 1  # simulation: decode steps between drift samples (PhotonicConfig.drift_update_steps)
    drift_hold_rms_m: float = 0.0  # simulation: RMS detuning error of holding the drift between samples
    code_refresh: str = "hold"  # simulation: drive codes in a decode loop (PhotonicConfig.code_refresh)
    loss_db_per_m: float = 0.0  # ring intrinsic loss used (PhotonicConfig.loss_db_per_m)
    loss_origin: str = ""  # where it comes from (PhotonicConfig.loss_origin: bend model at the radius, or fixed)
    loss_extrapolated: bool = False  # bend model below its sourced radii
    drift_origin: str = ""  # drift σ: pm/K × K (PhotonicConfig.drift_origin), or fixed

    @property
    def timed(self) -> bool:
        """The report was made at a decode timing (model shape, decode rate, context)."""
        return self.timing is not None

    @property
    def passes_untimed(self) -> bool:
        """No constraint that was checked is violated (says nothing about decode speed when untimed)."""
        return not self.violations

    @property
    def feasible(self) -> bool:
        """Timed and no constraint violated: the only sense in which kvprism calls a chip feasible."""
        return self.timed and not self.violations

    def verdict(self) -> str:
        """One line: feasible (timed, with where), infeasible (with the count), or untimed."""
        if self.violations:
            where = f" at {self.timing.describe()}" if self.timing is not None else " (untimed checks)"
            return f"NOT feasible{where}: {len(self.violations)} violated constraint(s)"
        if self.timing is None:
            return (
                "passes the untimed checks — not a feasibility verdict: time it at a model shape, decode rate and "
                "context (kvprism hw --model-shape M --tokens-per-s R --context N)"
            )
        return f"feasible at {self.timing.describe()}"

    @property
    def power_limits(self) -> tuple[PowerLimit, ...]:
        return self.design.power_limits

    def _drift_value(self) -> str:
        c = self.design.config
        return f"{c.drift_ring_sigma_m * 1e12:.3g} pm / {c.drift_global_sigma_m * 1e12:.3g} pm"

    def rows(self) -> list[tuple[str, str, str]]:
        """(quantity, value with unit, constraint) rows for a table."""
        nm, pm, ds = 1e9, 1e12, self.design
        out = [
            ("comb lines d", f"{self.d}", ""),
            ("ring FSR", f"{self.fsr_m * nm:.2f} nm", ""),
            ("comb span d·Δ", f"{self.comb_span_m * nm:.2f} nm", f"≤ FSR {self.fsr_m * nm:.2f} nm"),
            (
                "FWHM / Q_loaded / Q_intrinsic",
                f"{self.fwhm_m * pm:.1f} pm / {self.q_loaded:.3g} / {self.q_intrinsic:.3g}",
                "",
            ),
            (
                "finesse / power build-up / photon lifetime",
                f"{ds.finesse:.1f} / {ds.buildup:.1f}× / {ds.photon_lifetime_s * pm:.1f} ps",
                "",
            ),
            ("ring intrinsic loss", f"{self.loss_db_per_m:.4g} dB/m", self.loss_origin),
            ("thermal drift σ (per ring / global)", self._drift_value(), self.drift_origin),
            ("EO range 2·tuning·V_max", f"{self.eo_range_m * pm:.1f} pm", ""),
            ("required drive swing", f"±{self.required_swing_v:.2f} V", f"≤ V_max {self.v_max_v:.2f} V"),
            ("usable weight range", f"±{self.weight_range:.3f}", ""),
            ("worst neighbour leakage", f"{self.worst_leakage_db:.1f} dB", f"≤ {self.leakage_limit_db:.1f} dB"),
            (
                f"trim ({self.trim.mechanism}): needed / range",
                f"{self.trim.needed_m * nm:.2f} nm / {self.trim.range_m * nm:.2f} nm",
                "needed ≤ range (±3σ fab, ≤ 1 FSR)",
            ),
            (
                "trim power per ring / chip (heaters: one per ring)",
                f"{self.trim.mean_power_w * 1e3:.3g} mW / {self.trim.chip_power_w:.3g} W ({self.trim.heaters:,} heaters)"
                if self.trim.mechanism == "heater"
                else f"0 (one-time trim, residual σ {ds.config.trim_sigma_m * pm:.1f} pm)",
                f"≤ {ds.config.trim_max_chip_power_w:g} W" if self.trim.mechanism == "heater" else "",
            ),
            (
                "bank height / routing length",
                f"{ds.bank_height_m * 1e2:.2f} cm / {ds.link.routing_length_m * 1e2:.2f} cm",
                "",
            ),
            ("link loss per line", f"{self.link_loss_db:.1f} dB", ""),
            ("received power per line", f"{self.received_line_dbm:.1f} dBm", ""),
            (
                "received power per PD (mid bias)",
                f"{self.received_pd_dbm:.1f} dBm",
                f"≥ sensitivity {ds.pd_sensitivity_dbm:.1f} dBm",
            ),
        ]
        for lim in ds.power_limits:
            unit = "mW" if lim.unit == "W" else "mA"  # both shown ×1e3
            out.append((lim.name, f"{lim.value * 1e3:.3g} {unit}", f"≤ {lim.cap * 1e3:.3g} {unit}"))
        out.append(("largest laser power per line (all caps)", f"{link.w_to_dbm(ds.laser_cap_w):.1f} dBm", ""))
        if self.timing is not None:
            t = self.timing
            out.append(
                (
                    "decode timing: model, context, rate",
                    f"{t.model or 'model'}: {t.context:,} tokens at {t.tokens_per_s:g} tok/s",
                    f"{t.rows_per_logical_bank:,} rows per (layer, KV head), {t.slots} bank(s) each, "
                    f"{t.rounds_per_layer} round(s)/layer, " + ("time-shared" if t.shared else "banks resident"),
                )
            )
            if t.chip_banks:  # resident / two-level: the chip as built for the context, its background work
                out.append(
                    (
                        f"architecture {t.architecture}: banks × rows, background per step",
                        f"{t.chip_banks:,} × {t.chip_rows_per_bank:,}; appends {t.append_s * 1e6:.3g} µs + "
                        f"recalibration {t.recalibration_s * 1e6:.3g} µs",
                        f"≤ idle {t.idle_s * 1e3:.3g} ms; drift period {t.drift_period_s:.3g} s; "
                        f"{t.appended_rows_per_step:.3g} rows appended per step",
                    )
                )
            out.append(
                (
                    "time line per step: rewrites + calibration + queries",
                    f"{t.write_s * 1e3:.3g} + {t.calibration_s * 1e3:.3g} + {t.query_s * 1e3:.3g} = "
                    f"{t.needed_s * 1e3:.3g} ms",
                    f"≤ selection budget {t.budget_s * 1e3:.3g} ms ({ds.config.selection_time_fraction:g} of "
                    f"{t.step_s * 1e3:.3g} ms)",
                )
            )
            out.append(
                (
                    "probe sample / one in-situ calibration of a bank",
                    f"{t.probe_sample_time_s * 1e9:.3g} ns / {t.calibration_time_s * 1e6:.3g} µs",
                    f"noise-limited ({ds.probe_noise_time_s * 1e9:.3g} ns), floor {ds.probe_floor_s * 1e9:.3g} ns",
                )
            )
            out.append(("decode timing: time per selection", f"{t.time_per_selection_s * 1e6:.3g} µs", ""))
            if t.recalibration_period_s > 0:
                out.append(
                    (
                        "round-robin recalibration period / code age at use",
                        f"{t.recalibration_period_s:.3g} s / {t.calibration_age_s:.3g} s",
                        "in the chip's idle share of each step",
                    )
                )
        out += [
            (
                "noise bandwidth / integration time (symbol)",
                f"{ds.noise_bandwidth_hz:.3g} Hz / {ds.integration_time_s * 1e9:.3g} ns",
                f"symbol ≥ photon lifetime {ds.photon_lifetime_s * pm:.1f} ps",
            ),
            ("ADC rate needed per row", f"{ds.adc_rate_hz:.3g} S/s", ""),
            ("score SNR, detection noise (score-referred)", f"{self.score_snr_analytic_db:.1f} dB", ""),
            ("score SNR / ENOB (Monte Carlo)", f"{self.score_snr_db:.1f} dB / {self.score_enob_bits:.2f} bit", ""),
            (f"recall@{self.recall_k} (Monte Carlo, k/N = 1/8)", f"{self.recall_at_k:.3f}", ""),
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
            (
                "drive codes during decode (simulation)",
                "rewritten every step" if self.code_refresh == "every-step" else "held since programming",
                "time-shared rows are rewritten every round"
                if self.timing is not None and self.timing.shared and self.code_refresh == "hold"
                else "",
            ),
            ("MRR count", f"{self.mrr_count:,}", ""),
            (
                "photonic area: rings + PD pairs + MZMs",
                f"{self.area_m2 * 1e6:,.1f} mm² ({ds.ring_area_m2 * 1e6:,.0f} + {ds.pd_area_m2 * 1e6:,.0f} + "
                f"{ds.mzm_area_m2 * 1e6:,.0f})",
                "",
            ),
            (
                "electronic area: TIAs + ADCs + ring drivers",
                f"{self.electronic_area_m2 * 1e6:,.1f} mm² ({ds.tia_area_m2 * 1e6:,.0f} + {ds.adc_area_m2 * 1e6:,.0f} + "
                f"{ds.driver_area_m2 * 1e6:,.0f})",
                "",
            ),
        ]
        return out


def report(
    source: PhotonicConfig | PhotonicEngine,
    *,
    mc_rows: int = 256,
    mc_queries: int = 64,
    timing: DecodeTiming | None = None,
) -> FeasibilityReport:
    """:func:`feasibility` of an engine (its config at its programmed width, else ``n_lines``, with its seed) or of
    a config (``n_lines``, seed 0); timed by ``timing`` when given (untimed reports are never feasible)."""
    if isinstance(source, PhotonicEngine):
        cfg, d, seed = source.config, source.n_dims, source.seed
    else:
        cfg, d, seed = source, None, 0
    return feasibility(cfg, d=d, seed=seed, mc_rows=mc_rows, mc_queries=mc_queries, timing=timing)


def _snr_to_enob(snr_db: float) -> float:
    return (snr_db - 1.76) / 6.02


def feasibility(
    cfg: PhotonicConfig,
    d: int | None = None,
    seed: int = 0,
    mc_rows: int = 256,
    mc_queries: int = 64,
    timing: DecodeTiming | None = None,
) -> FeasibilityReport:
    """Evaluate ``cfg`` for ``d`` comb lines (default ``cfg.n_lines``); with ``timing``
    (:func:`~kvprism.photonics.design.decode_timing`) the detection is timed by decode first
    (:func:`~kvprism.photonics.design.timed_by_decode`). The score SNR/ENOB, recall@k (k = mc_rows/8) and the
    achieved weight precision come from a seeded Monte Carlo: a bank of ``mc_rows`` Gaussian signatures programmed on
    a fresh engine (all impairments of ``cfg``), ``mc_queries`` Gaussian queries, estimates compared with the exact
    dot products after the best linear fit; weight bits = log2(2 w_r / (√12 · RMS(W_eff − target)))."""
    if timing is not None:
        cfg = timed_by_decode(cfg, timing)
    d = d or cfg.n_lines
    ds = ChipDesign.from_config(cfg, d)
    r1, r2, a = ds.r1, ds.r2, ds.a
    wr = ds.weight_range
    violations: list[str] = []

    # drive swing needed for ±weight_range_target with one ring (if the ring can reach it at all), plus 3σ of
    # the static trim residual that the bias must absorb
    w_req = min(cfg.weight_range_target, -ds.w_min, ds.w_max)
    if w_req < cfg.weight_range_target:
        violations.append(
            f"weights ±{cfg.weight_range_target:g} are out of the ring's reach at any drive: its extinction limits "
            f"them to [{ds.w_min:.3f}, {ds.w_max:.3f}]"
        )
    lines = cfg.wavelength_center_m + (torch.arange(d, dtype=torch.float64) - (d - 1) / 2.0) * cfg.channel_spacing_m
    per_m = float((2.0 * math.pi * cfg.n_g * ring.ring_length_m(cfg.ring_radius_m) / lines**2).min())
    c = ring.single_ring_weight_inverse_cos(torch.tensor([-w_req, w_req], dtype=torch.float64), r1, r2, a)
    det_needed = torch.arccos(c.clamp(-1.0, 1.0)) / per_m
    reserve = 3.0 * cfg.trim_sigma_m
    lo_need, hi_need = float(det_needed[0]) - reserve, float(det_needed[1]) + reserve
    swing = max(abs(lo_need - ds.rest_detuning_m), abs(hi_need - ds.rest_detuning_m)) / cfg.tuning_m_per_v
    if swing > cfg.v_max_v:
        violations.append(
            f"weights ±{w_req:.3g} (+3σ trim) need a drive of ±{swing:.2f} V but V_max is {cfg.v_max_v:g} V: "
            f"usable weights shrink to ±{wr:.3f}"
        )
    if ds.comb_span_m > ds.fsr_m:
        violations.append(
            f"comb span {ds.comb_span_m * 1e9:.2f} nm ({d} lines × {cfg.channel_spacing_m * 1e9:g} nm) exceeds the "
            f"ring FSR {ds.fsr_m * 1e9:.2f} nm: lines alias onto other resonance orders of the rings"
        )
    derived = leakage_limit_db(wr, cfg.required_weight_bits, ds.max_drop_field)
    leak_limit = min(cfg.leakage_limit_db, derived)
    if ds.worst_leakage_db > leak_limit:
        violations.append(
            f"worst leakage of a ring onto another line is {ds.worst_leakage_db:.1f} dB, above the "
            f"{leak_limit:.1f} dB limit (field formula for {cfg.required_weight_bits:g}-bit weights: "
            f"2·√L·|κ| ≤ ½ LSB gives {derived:.1f} dB; configured {cfg.leakage_limit_db:g} dB)"
        )
    eo_range = ds.eo_range_m
    if cfg.feedback_calibration and 3.0 * cfg.trim_sigma_m > 0.5 * eo_range:
        violations.append(
            f"trim residual 3σ = {3e12 * cfg.trim_sigma_m:.1f} pm exceeds half the EO range "
            f"({0.5e12 * eo_range:.1f} pm): the closed loop cannot absorb it"
        )
    if not cfg.feedback_calibration and cfg.trim_sigma_m > 0.25 * ds.fwhm_m:
        violations.append(
            f"open-loop programming with a trim residual σ = {1e12 * cfg.trim_sigma_m:.1f} pm > FWHM/4 "
            f"({0.25e12 * ds.fwhm_m:.1f} pm): weights are dominated by fabrication error"
        )
    trim = trim_check(cfg, ds)
    if not trim.fits:
        how = (
            f"{cfg.trim_max_power_w * 1e3:g} mW × {ds.fsr_m / cfg.trim_power_per_fsr_w * 1e9:.3g} pm/mW"
            if trim.mechanism == "heater"
            else "one_time_trim_range_m"
        )
        violations.append(
            f"fabrication spread ±3σ = ±{3e9 * cfg.fab_sigma_m:.2f} nm needs a trim span of {trim.needed_m * 1e9:.2f} "
            f"nm, but the {trim.mechanism} trim reaches {trim.range_m * 1e9:.2f} nm ({how})"
        )

    budget = ds.link
    p_pd_w = mid_bias_pd_power_w(cfg, budget.row_line_w, d)
    if link.w_to_dbm(p_pd_w) < ds.pd_sensitivity_dbm:
        violations.append(
            f"received power per photodiode {link.w_to_dbm(p_pd_w):.1f} dBm is below the sensitivity "
            f"{ds.pd_sensitivity_dbm:.1f} dBm at {ds.noise_bandwidth_hz:.3g} Hz (link loss {budget.total_loss_db:.1f} dB incl. the 1×"
            f"{cfg.rows_per_bank} splitter)"
        )
    for lim in ds.power_limits:
        if lim.exceeded:
            unit = "mW" if lim.unit == "W" else "mA"
            violations.append(
                f"{lim.name} is {lim.value * 1e3:.3g} {unit} at {cfg.laser_line_dbm:g} dBm per line, above the cap "
                f"{lim.cap * 1e3:.3g} {unit} ({lim.source_field}); the caps allow at most "
                f"{link.w_to_dbm(ds.laser_cap_w):.1f} dBm per line"
            )
    if ds.symbol_shorter_than_lifetime:
        violations.append(
            f"a query symbol (integration time {ds.integration_time_s * 1e12:.1f} ps = 1/(2·{cfg.detection_bandwidth_hz:g}"
            f" Hz)) is shorter than the ring photon lifetime {ds.photon_lifetime_s * 1e12:.1f} ps: the previous "
            "query leaks into the score (inter-symbol error, not modelled)"
        )
    if ds.adc_rate_hz > cfg.adc_sample_rate_hz * (1.0 + 1e-12):
        violations.append(
            f"one ADC conversion per row and symbol needs {ds.adc_rate_hz:.3g} S/s, above adc_sample_rate_hz "
            f"{cfg.adc_sample_rate_hz:.3g} S/s"
        )
    snr_analytic = score_snr_db(cfg, ds)

    # Monte Carlo on a fresh engine (public API only)
    eng = PhotonicEngine(cfg, seed=seed)
    gen = torch.Generator().manual_seed(seed + 7919)
    sig = torch.randn(mc_rows, d, generator=gen)
    qs = torch.randn(mc_queries, d, generator=gen)
    eng.program(sig.unsqueeze(0))
    k = max(1, mc_rows // 8)
    if cfg.is_ideal:
        weight_bits, resid, snr_db = math.inf, 0.0, math.inf
    else:
        tgt = sig * (wr / float(sig.abs().max()))  # one scale per bank: max |signature| → w_r (PHYSICS §2)
        w_prog = eng.weights_as_programmed()[0]
        err = (w_prog.double() - tgt.double()).pow(2).mean().sqrt().item()
        weight_bits = math.log2(2.0 * wr / (math.sqrt(12.0) * err)) if err > 0 else math.inf
        resid = eng.last_calibration_residual or 0.0
        est = eng.scores(qs.unsqueeze(0)).squeeze(0)  # [Q, N]
        exact = qs @ sig.T
        alpha = float((est * exact).sum() / (exact * exact).sum())
        e = est - alpha * exact
        signal = float((alpha * exact).pow(2).mean())
        # scores uncorrelated with the exact ones (fitted gain 0): no signal, SNR -inf dB
        snr_db = 10.0 * math.log10(signal / max(float(e.pow(2).mean()), 1e-300)) if signal > 0 else -math.inf
    chosen = eng.select(qs.unsqueeze(0), k).squeeze(0)  # [Q, k]
    truth = (qs @ sig.T).topk(k, dim=-1).indices
    hits = (chosen.unsqueeze(-1) == truth.unsqueeze(-2)).any(-1).sum(-1).double()
    recall = float(hits.mean()) / k
    enob = _snr_to_enob(snr_db)
    if enob < cfg.required_score_enob:
        violations.append(
            f"score ENOB {enob:.2f} bit (SNR {snr_db:.1f} dB, Monte Carlo) is below the required "
            f"{cfg.required_score_enob:g} bit"
        )
    if recall < cfg.required_recall:
        violations.append(
            f"recall@{k} of the chip's top-k on Gaussian signatures is {recall:.3f}, below the required "
            f"{cfg.required_recall:g}"
        )
    if weight_bits < cfg.required_weight_bits:
        violations.append(
            f"weight precision after calibration is {weight_bits:.2f} bit, below the required "
            f"{cfg.required_weight_bits:g} bit"
            + (
                f" (codes {cfg.calibration_age_s:.3g} s old at use: the drift moved on since they were calibrated)"
                if cfg.feedback_calibration and cfg.calibration_age_s > 0
                else ""
            )
        )
    if timing is not None and not timing.fits:
        violations.append(
            f"the chip's time line does not fit decode: {timing.describe()} (rewrites of {timing.physical_banks} "
            f"physical banks, {timing.rounds_per_layer} round(s) per layer; in-situ calibrations of "
            f"{calibration_probes(cfg, d):,} probe samples × {timing.probe_sample_time_s * 1e9:.3g} ns; queries at "
            "the shortest symbol)"
        )
    plan = eng.cascade_plan
    packaged = package_violations(cfg, ds, trim, timing)  # resident / two-level: dies per package, heaters per die
    violations += packaged or []
    if packaged is None and trim.mechanism == "heater" and trim.chip_power_w > cfg.trim_max_chip_power_w:
        violations.append(
            f"{trim.heaters:,} trim heaters hold {trim.chip_power_w:.3g} W ({trim.mean_power_w * 1e3:.3g} mW each for "
            f"±3σ = ±{3e9 * cfg.fab_sigma_m:.2f} nm of fabrication spread), above the {cfg.trim_max_chip_power_w:g} W "
            "the package removes at the drift presets' temperature stability (trim_max_chip_power_w); a one-time "
            "trim holds no power"
        )
    if packaged is None and ds.photonic_area_m2 > cfg.max_chip_area_m2:
        violations.append(
            f"{ds.mrr_count:,} rings at {cfg.ring_pitch_m * 1e6:g} µm pitch, {ds.rows:,} PD pairs and "
            f"{cfg.n_banks * d:,} MZMs need {ds.photonic_area_m2 * 1e6:,.0f} mm², above the "
            f"{cfg.max_chip_area_m2 * 1e6:g} mm² chip limit"
        )
    if packaged is None and ds.electronic_area_m2 > cfg.max_electronic_area_m2:
        violations.append(
            f"{ds.rows:,} TIAs and ADCs and {ds.mrr_count:,} ring-drive channels need "
            f"{ds.electronic_area_m2 * 1e6:,.0f} mm² of electronics, above the "
            f"{cfg.max_electronic_area_m2 * 1e6:g} mm² die limit"
        )
    return FeasibilityReport(
        d=d, design=ds, fsr_m=ds.fsr_m, fwhm_m=ds.fwhm_m, q_loaded=ds.q_loaded, q_intrinsic=ds.q_intrinsic,
        comb_span_m=ds.comb_span_m, eo_range_m=eo_range, required_swing_v=swing, v_max_v=cfg.v_max_v,
        weight_range=wr, worst_leakage_db=ds.worst_leakage_db, leakage_limit_db=leak_limit,
        received_line_dbm=budget.row_line_dbm, received_pd_dbm=link.w_to_dbm(p_pd_w),
        link_loss_db=budget.total_loss_db, score_snr_analytic_db=snr_analytic, score_snr_db=snr_db,
        score_enob_bits=enob, recall_at_k=recall, recall_k=k, weight_bits=weight_bits, calibration_residual=resid,
        mrr_count=ds.mrr_count, area_m2=ds.photonic_area_m2, electronic_area_m2=ds.electronic_area_m2, trim=trim,
        cascade_near_rings=plan.k if plan is not None else (d if cfg.crosstalk else 1),
        cascade_fit_error=plan.max_fit_error if plan is not None else 0.0, violations=violations, timing=timing,
        drift_update_steps=cfg.drift_update_steps, drift_hold_rms_m=ds.drift_hold_rms_m,
        code_refresh=cfg.code_refresh, loss_db_per_m=cfg.loss_db_per_m, loss_origin=cfg.loss_origin,
        loss_extrapolated=cfg.loss_model == "bend" and cfg.ring_radius_m < cfg.bend_loss_min_sourced_radius_m,
        drift_origin=cfg.drift_origin,
    )  # fmt: skip
