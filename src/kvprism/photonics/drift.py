"""Fabrication spread, trimming and thermal drift of ring resonances (PHYSICS.md §8), in metres of resonance shift.

Thermal drift is a time-correlated process over decode steps: a stationary AR(1) (discretised Ornstein–Uhlenbeck)
process x_{t+1} = ρ x_t + σ √(1 − ρ²) ε, ρ = exp(−1/τ) with τ the correlation time in decode steps. Advancing by k
steps at once is exact in distribution: x_{t+k} = ρ^k x_t + σ √(1 − ρ^{2k}) ε.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "ar1_advance",
    "ar1_advance_",
    "ar1_coefficients",
    "ar1_rho",
    "coupling_deviation",
    "dc_relaxation",
    "spatial_field",
    "stationary_draw",
    "trim_residual",
]


def ar1_rho(corr_steps: float) -> float:
    """One-step correlation ρ = exp(−1/τ) of an AR(1) process with correlation time τ [decode steps]."""
    return math.exp(-1.0 / corr_steps)


def stationary_draw(
    shape: tuple[int, ...], sigma_m: float, generator: torch.Generator, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """A draw from the stationary distribution N(0, σ²) [m], shape ``shape``."""
    if sigma_m == 0.0:
        return torch.zeros(shape, dtype=dtype)
    return torch.randn(shape, generator=generator, dtype=dtype) * sigma_m


def ar1_advance(
    x: torch.Tensor, steps: int, corr_steps: float, sigma_m: float, generator: torch.Generator
) -> torch.Tensor:
    """Advance the stationary AR(1) state ``x`` [m] by ``steps`` decode steps (exact in distribution)."""
    if steps <= 0 or sigma_m == 0.0:
        return x
    return ar1_advance_(x.clone(), steps, corr_steps, sigma_m, generator)


def ar1_advance_(
    x: torch.Tensor, steps: int, corr_steps: float, sigma_m: float, generator: torch.Generator
) -> torch.Tensor:
    """:func:`ar1_advance` in place on ``x`` (same draws); returns ``x``."""
    if steps <= 0 or sigma_m == 0.0:
        return x
    rho_k, noise_m = ar1_coefficients(steps, corr_steps, sigma_m)
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype)
    return x.mul_(rho_k).add_(noise, alpha=noise_m)


def ar1_coefficients(steps: int, corr_steps: float, sigma_m: float) -> tuple[float, float]:
    """``(ρ^k, σ √(1 − ρ^{2k}))`` [1, m] of a ``steps``-step advance: x_{t+k} = ρ^k x_t + σ √(1 − ρ^{2k}) ε."""
    rho_k = math.exp(-steps / corr_steps)
    return rho_k, sigma_m * math.sqrt(max(0.0, 1.0 - rho_k * rho_k))


def trim_residual(
    shape: tuple[int, ...], trim_sigma_m: float, generator: torch.Generator, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Static resonance error [m] left after trimming the fabrication offsets (σ_fab ≫ FWHM) back to the design
    point: N(0, σ_trim²) per ring, drawn once when a ring is first programmed."""
    return stationary_draw(shape, trim_sigma_m, generator, dtype)


def spatial_field(
    shape: tuple[int, ...], sigma_m: float, rho: float, generator: torch.Generator, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """A stationary Gaussian field [m] along the last dim with exponential correlation: neighbours correlate by
    ``rho`` (= exp(−pitch / correlation length)), i.e. a spatial AR(1) y_n = ρ y_{n−1} + σ√(1 − ρ²) ε_n with
    y_0 ~ N(0, σ²). Computed in blocks (closed form of the recursion within a block, carried across blocks)."""
    if sigma_m == 0.0:
        return torch.zeros(shape, dtype=dtype)
    eps = torch.randn(shape, generator=generator, dtype=torch.float64)
    n = shape[-1]
    if rho <= 0.0 or n == 0:
        return (eps * sigma_m).to(dtype)
    scale = math.sqrt(max(0.0, 1.0 - rho * rho))
    eps[..., 1:] *= scale
    block = max(1, min(n, int(30.0 / max(-math.log(rho), 1e-12))))  # ρ^-block stays ≤ e^30
    out = torch.empty_like(eps)
    carry = torch.zeros(shape[:-1], dtype=torch.float64)
    for b0 in range(0, n, block):
        e = eps[..., b0 : b0 + block]
        m = e.shape[-1]
        pw = rho ** torch.arange(m, dtype=torch.float64)  # ρ^i
        # y_i = ρ^i (ρ·carry) + Σ_{k≤i} ρ^{i−k} e_k = ρ^i (ρ·carry + Σ_{k≤i} e_k ρ^{−k})
        y = pw * (torch.cumsum(e / pw, dim=-1) + (rho * carry).unsqueeze(-1))
        if b0 == 0:
            y = pw * torch.cumsum(e / pw, dim=-1)
        out[..., b0 : b0 + m] = y
        carry = y[..., -1]
    return (out * sigma_m).to(dtype)


def coupling_deviation(
    shape: tuple[int, ...], gap_sigma_m: float, decay_m: float, generator: torch.Generator
) -> torch.Tensor:
    """Relative deviation κ²/κ0² − 1 of a coupler's power coupling from a gap error Δg ~ N(0, σ²): κ² ∝
    exp(−Δg / decay), so the deviation is exp(−Δg / decay) − 1 (float32)."""
    if gap_sigma_m == 0.0:
        return torch.zeros(shape, dtype=torch.float32)
    gap = torch.randn(shape, generator=generator, dtype=torch.float64) * gap_sigma_m
    return torch.expm1(-gap / decay_m).to(torch.float32)


def dc_relaxation(age_s: torch.Tensor, fraction: float, time_s: float) -> torch.Tensor:
    """Factor [same shape] that multiplies a Pockels shift held for ``age_s`` seconds (TFLN DC drift):
    1 − f·(1 − exp(−t/τ))."""
    return 1.0 - fraction * (-torch.expm1(-age_s / time_s))
