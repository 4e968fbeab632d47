"""Detection noise of a balanced photodiode pair and ADC quantisation (PHYSICS.md §7), in amperes and SI units."""

from __future__ import annotations

import math

import torch

__all__ = [
    "ELEMENTARY_CHARGE_C",
    "adc_quantize",
    "detector_variance_a2",
    "nep_variance_a2",
    "rin_sigma",
    "shot_variance_a2",
    "tia_variance_a2",
]

#: Elementary charge q [C] (SI exact value).
ELEMENTARY_CHARGE_C = 1.602176634e-19

Num = float | torch.Tensor


def shot_variance_a2(i_thru_a: Num, i_drop_a: Num, i_dark_a: float, bandwidth_hz: float) -> Num:
    """Shot-noise variance [A²] of a balanced pair: 2 q (I_thru + I_drop + 2 I_dark) Δf (both arms add)."""
    return 2.0 * ELEMENTARY_CHARGE_C * (i_thru_a + i_drop_a + 2.0 * i_dark_a) * bandwidth_hz


def tia_variance_a2(tia_noise_a_per_rthz: float, bandwidth_hz: float) -> float:
    """TIA input-referred noise variance i_n² Δf [A²] (i_n in A/√Hz)."""
    return tia_noise_a_per_rthz**2 * bandwidth_hz


def nep_variance_a2(
    nep_w_per_rthz: float, responsivity_a_per_w: float, bandwidth_hz: float, n_diodes: int = 2
) -> float:
    """Detector noise-equivalent-power variance n·(R·NEP)² Δf [A²] for ``n_diodes`` diodes."""
    return n_diodes * (responsivity_a_per_w * nep_w_per_rthz) ** 2 * bandwidth_hz


def detector_variance_a2(
    i_thru_a: Num,
    i_drop_a: Num,
    *,
    i_dark_a: float,
    tia_noise_a_per_rthz: float,
    nep_w_per_rthz: float,
    responsivity_a_per_w: float,
    bandwidth_hz: float,
) -> Num:
    """Total row-independent noise variance [A²] of one balanced pair: shot (both arms, dark current) + TIA + NEP."""
    return (
        shot_variance_a2(i_thru_a, i_drop_a, i_dark_a, bandwidth_hz)
        + tia_variance_a2(tia_noise_a_per_rthz, bandwidth_hz)
        + nep_variance_a2(nep_w_per_rthz, responsivity_a_per_w, bandwidth_hz)
    )


def rin_sigma(rin_db_per_hz: float, bandwidth_hz: float) -> float:
    """Relative standard deviation of a comb line's power from its RIN [dB/Hz] over Δf: √(10^(RIN/10) Δf)."""
    return math.sqrt(10.0 ** (rin_db_per_hz / 10.0) * bandwidth_hz)


def adc_quantize(x: torch.Tensor, full_scale: torch.Tensor | float, bits: int) -> tuple[torch.Tensor, int]:
    """Clip ``x`` to [−FS, +FS] and quantise to 2^bits uniform levels (step 2 FS / (2^bits − 1)); ``bits = 0`` means
    no quantisation. ``full_scale`` broadcasts against ``x``. Returns (quantised values, number of clipped samples)."""
    if bits == 0:
        return x, 0
    fs = full_scale if isinstance(full_scale, torch.Tensor) else torch.tensor(full_scale, dtype=x.dtype)
    clipped = int((x.abs() > fs).sum())
    step = 2.0 * fs / (2**bits - 1)
    y = torch.maximum(torch.minimum(x, fs), -fs)
    y = torch.round((y + fs) / step) * step - fs
    return y, clipped
