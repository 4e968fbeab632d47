"""Query encoding on non-negative light (PHYSICS.md §5): DAC → MZM (cos² transfer, finite extinction) per comb line.

The encoder gets a normalised query u ∈ [−1, 1]^d (the query divided by its largest magnitude) and returns the MZM
power transmission per line, i.e. the fraction of the line's power that enters the weight bank.
"""

from __future__ import annotations

import math

import torch

__all__ = ["drive_voltage", "encode", "mzm_transmission", "quantize_uniform", "t_min"]


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
