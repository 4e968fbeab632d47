"""Fabrication spread, trimming and thermal drift of ring resonances (PHYSICS.md §8), in metres of resonance shift.

Thermal drift is a time-correlated process over decode steps: a stationary AR(1) (discretised Ornstein–Uhlenbeck)
process x_{t+1} = ρ x_t + σ √(1 − ρ²) ε, ρ = exp(−1/τ) with τ the correlation time in decode steps. Advancing by k
steps at once is exact in distribution: x_{t+k} = ρ^k x_t + σ √(1 − ρ^{2k}) ε.
"""

from __future__ import annotations

import math

import torch

__all__ = ["ar1_advance", "ar1_advance_", "ar1_coefficients", "ar1_rho", "stationary_draw", "trim_residual"]


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
