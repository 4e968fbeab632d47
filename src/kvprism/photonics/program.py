"""Programming a weight bank's rows: model-based and in-situ calibration of the ring detunings (PHYSICS.md §4), and
the stage that makes a :class:`~kvprism.photonics.state.BankState` from signatures (:func:`init`), appends rows to it
(:func:`append`) and (re)programs rows of it (:func:`rows`).

Both modes start from the single-ring inverse and iterate the fixed point aim ← aim + (target − W), detuning ←
single-ring inverse(aim), vectorised over rows; they differ in where W comes from:

- **model-based** (:func:`calibrate_model`): W is the controller's own model of the row (design couplings, designed
  bus phases, no trim residual or drift). The chip differs from that model (fabrication phases of the drop bus,
  coupling spread, trim residual); :func:`model_mismatch_rms` reports by how much.
- **in-situ** (:func:`calibrate_in_situ`, ``feedback_calibration``): W is *measured* on the chip as closed-loop MRR
  weight control does (Zhang et al., Optica 9, 579 (2022)): the controller applies the quantised drive voltages,
  lights one comb line at a time and reads every row's balanced detector (all rows of a bank in parallel) with
  detection noise and ADC quantisation, averages, and corrects. Whatever is static on the chip — bus phases,
  coupling spread, trim residual, the drift present while it calibrates — is absorbed up to the measurement noise;
  what changes afterwards (drift, DC relaxation) is not. Probe count and time are returned.
"""

from __future__ import annotations

import math
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import torch

from kvprism.photonics import drift, encoding, noise, weights
from kvprism.photonics.design import ChipDesign
from kvprism.photonics.state import BankState
from kvprism.photonics.wdm import CascadePlan, RowOptics, cascade

__all__ = [
    "CalibrationResult",
    "InSituResult",
    "ProbeNoise",
    "append",
    "bank_scale",
    "calibrate",
    "calibrate_in_situ",
    "calibrate_model",
    "fabricate",
    "init",
    "model_mismatch_rms",
    "probe_noise",
    "quantize_detuning",
    "rows",
]

Model = Callable[[torch.Tensor], torch.Tensor]  # detunings [R, d] (m) -> weights W_eff [R, d]


class _Best:
    """Each row's best iterate so far (smallest mean squared error over the row), so a row where an iteration
    oscillates never gets worse; ``history`` holds the RMS over rows of the best errors after each step."""

    def __init__(self) -> None:
        self.det = self.w = self.err = None
        self.history: list[float] = []

    def update(self, det: torch.Tensor, w: torch.Tensor, err: torch.Tensor) -> None:
        row_err = err.pow(2).mean(dim=-1, keepdim=True)
        if self.err is None:
            self.det, self.w, self.err = det, w, row_err
        else:
            better = row_err < self.err
            self.det = torch.where(better, det, self.det)
            self.w = torch.where(better, w, self.w)
            self.err = torch.minimum(row_err, self.err)
        self.history.append(float(self.err.mean().sqrt()) if err.numel() else 0.0)


@dataclass
class CalibrationResult:
    """Detunings [..., d] (m) found by :func:`calibrate`, the weights they realise in the model [..., d] and the RMS
    residual ``|W_eff − target|`` after the single-ring inverse (entry 0) and after each correction (entries 1..)."""

    detuning_m: torch.Tensor
    weights: torch.Tensor
    residual_rms: list[float]

    @property
    def residual(self) -> float:
        return self.residual_rms[-1]


def calibrate_model(
    target: torch.Tensor, optics: RowOptics, det_min_m: float, det_max_m: float, iters: int, model: Model
) -> CalibrationResult:
    """Detunings [R, d] (m, in [det_min_m, det_max_m]) whose weights under ``model`` match ``target`` [R, d].
    Each row keeps its best iterate; ``residual_rms`` is the model's RMS residual after each step."""
    aim = target.clone()
    det = optics.single_ring_inverse(aim, det_min_m, det_max_m)
    best = _Best()
    for it in range(iters + 1):
        w = model(det)
        err = target - w
        best.update(det, w, err)
        if it == iters:
            break
        aim = aim + err
        det = optics.single_ring_inverse(aim, det_min_m, det_max_m)
    return CalibrationResult(best.det, best.w, best.history)


def calibrate(
    target: torch.Tensor,
    optics: RowOptics,
    det_min_m: float,
    det_max_m: float,
    iters: int = 4,
    crosstalk: bool = True,
    plan: CascadePlan | None = None,
) -> CalibrationResult:
    """Ring detunings [..., d] that make the cascade weights match ``target`` [..., d], vectorised over rows.

    Step 0 is the single-ring inverse; each of ``iters`` corrections moves the per-ring aim by the residual
    (aim ← aim + target − W_eff(detuning), detuning ← single-ring inverse(aim)), a fixed-point iteration that converges
    while crosstalk is a perturbation of each ring's own response. Detunings stay in [det_min_m, det_max_m]. Each
    row keeps its best iterate. ``plan``: optional :class:`CascadePlan` for the cascade evaluations."""

    def model(det: torch.Tensor) -> torch.Tensor:
        thru, drop = cascade(det, optics, crosstalk, plan)
        return thru - drop

    return calibrate_model(target, optics, det_min_m, det_max_m, iters, model)


def model_mismatch_rms(det: torch.Tensor, model: Model, chip: Model) -> float:
    """RMS of chip − model weights at the same detunings (what model-based calibration cannot see)."""
    if det.numel() == 0:
        return 0.0
    return float((chip(det) - model(det)).double().pow(2).mean().sqrt())


@dataclass(frozen=True)
class ProbeNoise:
    """Noise of one probe measurement of a weight, in weight units: ``sigma_w`` (detection noise of one sample:
    σ_I / (R·P_probe)) and ``adc_step_w`` (ADC step over ±1 weight unit; 0 = no ADC); ``averages`` samples per
    reading; ``probe_time_s`` per sample (integrate-and-dump: 1/(2Δf))."""

    sigma_w: float
    adc_step_w: float
    averages: int
    probe_time_s: float

    def read(self, w: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """A measured copy of ``w``: the mean of ``averages`` noisy, ADC-quantised samples. With σ ≥ half an ADC
        step the noise dithers the quantiser, and the mean is drawn as one Gaussian of variance
        (σ² + step²/12)/averages (exact mean and variance); below that the samples do not dither and the reading is
        one quantised noisy sample (averaging gains nothing)."""
        sigma, step = self.sigma_w, self.adc_step_w
        if step > 0.0 and sigma < 0.5 * step:
            x = w + sigma * torch.randn(w.shape, generator=gen, dtype=w.dtype) if sigma > 0 else w
            return torch.round(x / step) * step
        var = (sigma * sigma + step * step / 12.0) / self.averages
        if var == 0.0:
            return w.clone()
        return w + math.sqrt(var) * torch.randn(w.shape, generator=gen, dtype=w.dtype)


@dataclass
class InSituResult:
    """Commanded detunings [R, d] (m, before quantisation), the chip's true weights at the applied (quantised)
    drive, the *measured* RMS residual after each iteration, and the probes taken per bank (every row of a bank is
    read in parallel, so a probe is one comb line lit once)."""

    detuning_m: torch.Tensor
    weights: torch.Tensor
    residual_rms: list[float]
    probes: int

    @property
    def residual(self) -> float:
        return self.residual_rms[-1]


def calibrate_in_situ(
    target: torch.Tensor,
    optics: RowOptics,
    det_min_m: float,
    det_max_m: float,
    iters: int,
    apply: Callable[[torch.Tensor], torch.Tensor],
    chip: Model,
    noise: ProbeNoise,
    gen: torch.Generator,
    dither_m: float = 0.0,
) -> InSituResult:
    """Closed-loop calibration on measurements: ``apply`` maps commanded detunings to the detunings the rings really
    take (voltage quantisation, trim residual, drift now); ``chip`` gives the true weights there; each reading is
    ``noise.read``. The loop works on ring *positions*: from each reading it estimates where the ring sits with the
    single-ring inverse and moves the command by the difference to where the target weight lies,
    cmd ← cmd + inv(target) − inv(measured) (one step for a pure position error; crosstalk and the coherent drop bus
    enter as an apparent position error and are iterated out; coupling spread is absorbed because the loop closes on
    the measured weight). The weight only tells the distance from resonance, not the side: with ``dither_m`` > 0
    each reading is paired with one at the command + dither, and the sign of the change says which side the ring
    sits on (twice the probes). Commands stay in [det_min_m, det_max_m] (they may be negative: the drive can pull
    a ring across its line). Each row keeps the iterate with the smallest *measured* error (the controller never
    sees the truth)."""
    per_m = optics.phase_per_m.double()
    half_fsr_m = float(math.pi / per_m.max())  # the single-ring inverse is unique up to half an FSR

    def where(w: torch.Tensor) -> torch.Tensor:
        return optics.single_ring_inverse(w, 0.0, half_fsr_m)

    goal = where(target)
    det = goal.clamp(det_min_m, det_max_m)
    best = _Best()
    d = target.shape[-1]
    for it in range(iters + 1):
        w_true = chip(apply(det))
        meas = noise.read(w_true, gen)
        best.update(det, w_true, target - meas)  # the controller ranks iterates by what it measured
        if it == iters:
            break
        pos = where(meas)
        if dither_m > 0.0:
            up = noise.read(chip(apply(det + dither_m)), gen)
            pos = torch.where(up >= meas, pos, -pos)
        det = (det + goal - pos).clamp(det_min_m, det_max_m)
    readings = iters + 1 + (iters if dither_m > 0.0 else 0)
    return InSituResult(best.det, best.w, best.history, readings * d * noise.averages)


# ---------------------------------------------------------------------------------------------- the stage
def init(
    design: ChipDesign, signatures: torch.Tensor, generator: torch.Generator, counters: MutableMapping[str, Any]
) -> BankState:
    """A new state with ``signatures`` [*L, N, d] programmed (float, on the CPU; ``design`` for d lines).

    Maps each bank into [−w_r, w_r] with one scale per bank, draws each ring's trim residual, its drift's
    stationary start and the static fabrication effects (in this order from ``generator``), calibrates the ring
    detunings (:func:`rows`), quantises the drive voltages and computes W_eff. The ideal chip keeps the signatures
    only."""
    c = design.config
    lead = tuple(signatures.shape[:-2])
    n, d = signatures.shape[-2:]
    b = math.prod(lead)
    sig = signatures.reshape(b, n, d)
    counters["row_programs"] += b * n
    counters["ring_updates"] += b * n * d
    state = BankState(lead=lead, rows=n, buffers={"sig": sig})
    if c.is_ideal:
        return state
    shape = (b, n, d)
    f32 = torch.float32
    bufs = {
        "sig": sig,
        "static": torch.zeros(shape, dtype=f32),
        "trim": drift.trim_residual(shape, c.trim_sigma_m, generator, f32),
        "ring_drift": drift.stationary_draw(shape, c.drift_ring_sigma_m, generator, f32),
    }
    global_m = float(drift.stationary_draw((1,), c.drift_global_sigma_m, generator)[0])
    bufs["w"] = torch.zeros(shape, dtype=f32)
    bufs["transmit"] = torch.zeros((b, n), dtype=f32)  # 1 − row-mean ring absorption
    bufs["const"] = torch.zeros((b, n), dtype=f32)
    bufs["abs_sum"] = torch.zeros((b, n), dtype=f32)
    bufs.update(fabricate(design, shape, generator))
    if design.refreshes_codes:
        bufs["cal_drift"] = torch.zeros(shape, dtype=f32)
    state = BankState(
        lead=lead, rows=n, buffers=bufs, scale=bank_scale(design.weight_range, sig), global_drift_m=global_m
    )
    return rows(design, state, torch.arange(b), 0, n, generator, counters)


def fabricate(design: ChipDesign, shape: tuple[int, int, int], generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Row fields of ``shape`` = (banks, new rows, d) drawn when rows first exist, after the trim and drift draws
    (only the models that are on draw, so switching one off leaves the other draws unchanged): the drop path's
    fabrication phases, the couplers' gap spread, the spatially correlated drift along the rows (drawn for the new
    rows alone: not continued from the rows before), and the held EO shift / row age for DC relaxation."""
    c, out = design.config, {}
    b, n, _ = shape
    if design.coherent and c.bus_phase_random:
        out["bus_phase"] = torch.rand(shape, generator=generator, dtype=torch.float32) * (2.0 * math.pi)
    if c.coupler_gap_sigma_m > 0.0:
        out["k1dev"] = drift.coupling_deviation(shape, c.coupler_gap_sigma_m, c.coupler_gap_decay_m, generator)
        out["k2dev"] = drift.coupling_deviation(shape, c.coupler_gap_sigma_m, c.coupler_gap_decay_m, generator)
    if c.drift_field_sigma_m > 0.0:
        out["field_drift"] = drift.spatial_field((b, n), c.drift_field_sigma_m, design.field_rho, generator)
    if c.dc_relax_fraction > 0.0:
        out["eo"] = torch.zeros(shape, dtype=torch.float32)
        out["age"] = torch.zeros((b, n), dtype=torch.float32)
    return out


def append(
    design: ChipDesign, state: BankState, new: torch.Tensor, generator: torch.Generator,
    counters: MutableMapping[str, Any],
) -> BankState:  # fmt: skip
    """``state`` with ``new`` [B, m, d] rows programmed after its N rows in every bank (any pending drift sample
    taken before: new rows start from the stationary distribution). A bank whose new rows do not fit its current
    scale is rescaled: all its rows are reprogrammed (counted in ``bank_rescales`` and ``rescale_row_programs``)."""
    c = design.config
    b, n0, d = state.sig.shape
    m = new.shape[1]
    state = state.grown(n0 + m)
    state.sig[:, n0:] = new
    counters["row_programs"] += b * m
    counters["ring_updates"] += b * m * d
    if c.is_ideal:
        return state
    extra = (b, m, d)
    state.trim[:, n0:] = drift.trim_residual(extra, c.trim_sigma_m, generator, torch.float32)
    state.ring_drift[:, n0:] = drift.stationary_draw(extra, c.drift_ring_sigma_m, generator, torch.float32)
    for name, value in fabricate(design, extra, generator).items():
        getattr(state, name)[:, n0:] = value
    new_max = new.abs().amax(dim=(1, 2)).to(torch.float32) * state.scale
    rescale = new_max > design.weight_range * (1.0 + 1e-6)
    resc = rescale.nonzero().squeeze(-1)
    keep = (~rescale).nonzero().squeeze(-1)
    if keep.numel():
        state = rows(design, state, keep, n0, n0 + m, generator, counters)
    if resc.numel():
        state.scale[resc] = bank_scale(design.weight_range, state.sig[resc])
        counters["bank_rescales"] += int(resc.numel())
        counters["rescale_row_programs"] += int(resc.numel()) * n0
        counters["row_programs"] += int(resc.numel()) * n0
        counters["ring_updates"] += int(resc.numel()) * n0 * d
        state = rows(design, state, resc, 0, n0 + m, generator, counters)
    return state


def bank_scale(weight_range: float, sig: torch.Tensor) -> torch.Tensor:
    """One scale per bank [B] (float32) for signatures [B, N, d]: w_r / max|signature| (1/unit for an all-zero
    bank)."""
    mx = sig.abs().amax(dim=(1, 2)).to(torch.float64)
    return (weight_range / torch.where(mx > 0, mx, torch.ones_like(mx))).to(torch.float32)


def quantize_detuning(design: ChipDesign, det: torch.Tensor) -> torch.Tensor:
    """The detuning [m] the drive really sets for a commanded ``det`` [m]: the voltage quantised by the ring DAC."""
    c = design.config
    v = encoding.quantize_uniform((det - design.rest_detuning_m) / c.tuning_m_per_v, -c.v_max_v, c.v_max_v,
                                  c.program_bits)  # fmt: skip
    return design.rest_detuning_m + c.tuning_m_per_v * v


def probe_noise(design: ChipDesign) -> ProbeNoise:
    """Noise of one in-situ probe reading of a weight (one comb line lit at full MZM transmission, every row's
    balanced detector read): σ_w = σ_I / (R·P) with σ_I² = 2q(R·P + 2 I_dark)Δf + i_n²Δf + 2(R·NEP)²Δf, at the
    probe's own bandwidth Δf = 1/(2·``design.probe_sample_time_s``) (noise-limited, not the query's symbol)."""
    c = design.config
    p_w = design.link.row_line_w
    resp, bw = c.pd_responsivity_a_per_w, 0.5 / design.probe_sample_time_s
    sigma = 0.0
    if c.noise:
        var = noise.detector_variance_a2(
            resp * p_w, 0.0, i_dark_a=c.dark_current_a, tia_noise_a_per_rthz=c.tia_noise_a_per_rthz,
            nep_w_per_rthz=c.nep_w_per_rthz, responsivity_a_per_w=resp, bandwidth_hz=bw,
        )  # fmt: skip
        sigma = math.sqrt(var) / (resp * p_w)
    step = 2.0 / (2**c.adc_bits - 1) if c.adc_bits else 0.0
    return ProbeNoise(sigma, step, c.calibration_probe_averages, 0.5 / bw)


def rows(
    design: ChipDesign, state: BankState, banks: torch.Tensor, r0: int, r1: int, generator: torch.Generator,
    counters: MutableMapping[str, Any],
) -> BankState:  # fmt: skip
    """``state`` with rows [r0, r1) of ``banks`` (1-D index tensor) calibrated, quantised and written: model-based
    (the controller inverts its own model; ``calibration_mismatch``) or in-situ (``feedback_calibration``:
    iterated on noisy measurements of the chip, :func:`calibrate_in_situ`). Drops the detection constants (they
    depend on the rows' constants and the ADC full scale)."""
    c = design.config
    d = design.d
    opt = design.optics
    lo_m, hi_m = design.detuning_range_m
    rest = design.rest_detuning_m
    target = state.sig[banks, r0:r1].to(torch.float32) * state.scale[banks, None, None]
    nb, nr, _ = target.shape
    flat = target.reshape(-1, d)
    if state.has("age"):  # rows start their DC relaxation now
        state.age[banks, r0:r1] = 0.0
    # what the rings add to the drive while being calibrated: trim residual and the drift of that time (now, or
    # calibration_age_s ago for replayed codes)
    cal_drift = drift.at_calibration(design, state, banks, r0, r1, generator)
    if design.refreshes_codes:
        state.cal_drift[banks, r0:r1] = cal_drift
    offset = (state.trim[banks, r0:r1] + cal_drift).reshape(-1, d)
    ex_all = weights.extras(state, banks, r0, r1)
    det = torch.empty_like(flat)
    step = weights.chunk_rows(design)
    sq_err, count, probes = 0.0, 0, 0
    noise_ = probe_noise(design) if c.feedback_calibration else None
    # the closed loop may command the whole drive range, margin included (that is what the margin is kept for)
    full = c.tuning_m_per_v * c.v_max_v
    drive_m = (rest - full, rest + full)
    # dither for the side of resonance: a tenth of a linewidth, at least two DAC steps
    dac_step_m = 2.0 * full / (2**c.program_bits - 1) if c.program_bits else 0.0
    dither_m = max(0.1 * design.fwhm_m, 2.0 * dac_step_m)

    def controller(x: torch.Tensor) -> torch.Tensor:
        return weights.controller_weights(design, x)

    for s0 in range(0, flat.shape[0], step):
        sl = slice(s0, s0 + step)
        ex = {k: v[sl] for k, v in ex_all.items()}
        if noise_ is not None:
            off = offset[sl]
            res = calibrate_in_situ(
                flat[sl], opt, *drive_m, c.calibration_iters,
                apply=lambda x, off=off: quantize_detuning(design, x) + off,
                chip=lambda x, ex=ex: weights.chip_weights(design, x, ex), noise=noise_, gen=generator,
                dither_m=dither_m,
            )  # fmt: skip
            probes = res.probes
        else:
            res = calibrate_model(flat[sl], opt, lo_m, hi_m, c.calibration_iters, controller)
        det[sl] = res.detuning_m
        sq_err += res.residual**2 * res.detuning_m.numel()
        count += res.detuning_m.numel()
    if noise_ is not None:
        counters["calibration_probes"] += probes * nb
        counters["calibration_time_s"] += probes * nb * noise_.probe_time_s
    det = det.reshape(nb, nr, d)
    volts = encoding.quantize_uniform((det - rest) / c.tuning_m_per_v, -c.v_max_v, c.v_max_v, c.program_bits)
    counters["program_energy_j"] += c.ring_capacitance_f * float(volts.double().pow(2).sum())
    eo = c.tuning_m_per_v * volts
    if state.has("eo"):
        state.eo[banks, r0:r1] = eo
    state.static[banks, r0:r1] = rest + eo + state.trim[banks, r0:r1]
    state.const[banks, r0:r1] = target.sum(-1)  # the controller's belief: the target weights
    state.abs_sum[banks, r0:r1] = target.abs().sum(-1)
    fs = state.abs_sum.amax(dim=1)  # [B] in weight units (|Σ w u| ≤ Σ|w|)
    # an all-zero bank has no score range of its own: its ADC spans the largest possible one, d·w_r
    full_scale = torch.where(fs > 0, fs, torch.full_like(fs, d * design.weight_range)) * c.adc_headroom
    state = state.replace(detection=None, full_scale=full_scale, calibration_residual=math.sqrt(sq_err / max(count, 1)))
    state = weights.refresh(design, state, banks, r0, r1, generator)
    if noise_ is None:  # what the controller's model does not know, at the drive it applied
        applied = (rest + eo).reshape(-1, d)
        model = torch.cat([controller(applied[s : s + step]) for s in range(0, applied.shape[0], step)])
        true = state.w[banks, r0:r1].reshape(-1, d)
        mismatch = float((true - model).double().pow(2).mean().sqrt()) if true.numel() else 0.0
        state = state.replace(calibration_mismatch=mismatch)
    return state
