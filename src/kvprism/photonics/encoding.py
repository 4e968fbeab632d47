"""Query encoding on non-negative light (PHYSICS.md §5): DAC → MZM (cos² transfer, finite extinction) per comb line.

The encoder gets a normalised query u ∈ [−1, 1]^d (the query divided by its largest magnitude) and returns the MZM
power transmission per line, i.e. the fraction of the line's power that enters the weight bank.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "dac_codes",
    "drive_voltage",
    "encode",
    "level_transmission",
    "mzm_transmission",
    "quantize_uniform",
    "t_min",
]


def t_min(extinction_db: float) -> float:
    """Minimum MZM power transmission 10^(−ER/10) (0 for an infinite extinction ratio)."""
    return 0.0 if math.isinf(extinction_db) else 10.0 ** (-extinction_db / 10.0)


def mzm_transmission(voltage_v: torch.Tensor, v_pi_v: float, extinction_db: float) -> torch.Tensor:
    """MZM power transmission T_min + (1 − T_min)·sin²(π V / (2 V_π)), biased at null for V = 0 (cos² transfer with
    a quadrature-shifted bias)."""
    tm = t_min(extinction_db)
    return tm + (1.0 - tm) * torch.sin(math.pi * voltage_v / (2.0 * v_pi_v)) ** 2


def quantize_uniform(x: torch.Tensor, lo: float, hi: float, bits: int) -> torch.Tensor:
    """Clip to [lo, hi] and round to 2^bits uniform levels (``bits = 0``: clip only)."""
    x = x.clamp(lo, hi)
    if bits == 0:
        return x
    step = (hi - lo) / (2**bits - 1)
    return torch.round((x - lo) / step) * step + lo


def drive_voltage(fraction: torch.Tensor, v_pi_v: float, predistort: bool) -> torch.Tensor:
    """MZM drive [V] for a wanted modulation fraction f ∈ [0, 1]: V = (2 V_π/π)·arcsin(√f) with pre-distortion
    (linear in power), V = f·V_π without (the cos² transfer then distorts the query)."""
    if predistort:
        return (2.0 * v_pi_v / math.pi) * torch.arcsin(fraction.clamp(0.0, 1.0).sqrt())
    return fraction * v_pi_v


def encode(
    fraction: torch.Tensor, *, v_pi_v: float, extinction_db: float, dac_bits: int, predistort: bool
) -> torch.Tensor:
    """Power transmission per line for wanted fractions f ∈ [0, 1]: the drive voltage is quantised by a ``dac_bits``
    DAC over [0, V_π] before the MZM transfer. Ideal result: T_min + (1 − T_min)·f."""
    v = quantize_uniform(drive_voltage(fraction, v_pi_v, predistort), 0.0, v_pi_v, dac_bits)
    return mzm_transmission(v, v_pi_v, extinction_db)


def dac_codes(fraction: torch.Tensor, *, v_pi_v: float, dac_bits: int, predistort: bool) -> torch.Tensor:
    """DAC codes (int64 in [0, 2^bits − 1]) that :func:`encode` drives for wanted fractions f ∈ [0, 1] (``dac_bits``
    ≥ 1): the level index of ``quantize_uniform(drive_voltage(f), 0, V_π, dac_bits)``."""
    step = v_pi_v / (2**dac_bits - 1)
    return torch.round(drive_voltage(fraction, v_pi_v, predistort).clamp_(0.0, v_pi_v).div_(step)).long()


def level_transmission(
    *, v_pi_v: float, extinction_db: float, dac_bits: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """MZM power transmission [2^bits] of every DAC level (computed in float64): ``level_transmission(...)[codes]``
    with ``codes = dac_codes(f, ...)`` is :func:`encode` of f, one table look-up instead of the transfer per line."""
    step = v_pi_v / (2**dac_bits - 1)
    levels = torch.arange(2**dac_bits, dtype=torch.float64) * step
    return mzm_transmission(levels, v_pi_v, extinction_db).to(dtype)
