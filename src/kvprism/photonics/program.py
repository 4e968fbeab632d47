"""Programming a weight bank's rows: model-based and in-situ calibration of the ring detunings (PHYSICS.md §4).

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
from collections.abc import Callable
from dataclasses import dataclass

import torch

from kvprism.photonics.wdm import CascadePlan, RowOptics, cascade

__all__ = [
    "CalibrationResult",
    "InSituResult",
    "ProbeNoise",
    "calibrate",
    "calibrate_in_situ",
    "calibrate_model",
    "model_mismatch_rms",
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
