"""Fabrication spread, trimming and thermal drift of ring resonances (PHYSICS.md §8), in metres of resonance shift.

Thermal drift is a time-correlated process over decode steps: a stationary AR(1) (discretised Ornstein–Uhlenbeck)
process x_{t+1} = ρ x_t + σ √(1 − ρ²) ε, ρ = exp(−1/τ) with τ the correlation time in decode steps. Advancing by k
steps at once is exact in distribution: x_{t+k} = ρ^k x_t + σ √(1 − ρ^{2k}) ε.

The pure draws come first; then the stage on a :class:`~kvprism.photonics.state.BankState`: :func:`advance` samples
every drift process of a state (per ring, spatial field along the rows, global) and ages the held EO shifts;
:func:`now` and :func:`at_calibration` give the drift detuning of rows now and when their codes were calibrated.
"""

from __future__ import annotations

import math

import torch

from kvprism.photonics.design import ChipDesign
from kvprism.photonics.state import BankState

__all__ = [
    "advance",
    "ar1_advance",
    "ar1_advance_",
    "ar1_coefficients",
    "ar1_rho",
    "at_calibration",
    "coupling_deviation",
    "dc_relaxation",
    "draw_field",
    "draw_global",
    "due",
    "now",
    "relax",
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


# ---------------------------------------------------------------------------------------------- the stage
def due(design: ChipDesign, state: BankState) -> bool:
    """True when ``drift_update_steps`` or more decode steps are pending: the rings stop holding the last sample."""
    k = state.pending_steps
    return k != 0 and k >= design.config.drift_update_steps


def advance(design: ChipDesign, state: BankState, steps: int, generator: torch.Generator) -> BankState:
    """``state`` with its drift processes moved forward by ``steps`` decode steps and its held EO shifts aged: the
    per-ring AR(1) draws first, then the global drift, the spatial field and the DC relaxation (this order is the
    generator's). W_eff is not recomputed: the new state is ``stale``. Row buffers are updated in place."""
    c = design.config
    if c.drift_ring_sigma_m != 0.0:
        ar1_advance_(state.ring_drift, steps, design.drift_corr_steps, c.drift_ring_sigma_m, generator)
    state = draw_global(design, state, steps, generator)
    draw_field(design, state, steps, generator)
    relax(design, state, steps)
    return state.replace(stale=True)


def draw_global(design: ChipDesign, state: BankState, steps: int, generator: torch.Generator) -> BankState:
    """``state`` with its global drift advanced by ``steps`` decode steps (after the ring draws of the same sample)."""
    c = design.config
    if c.drift_global_sigma_m == 0.0:
        return state
    g = torch.tensor([state.global_drift_m], dtype=torch.float64)
    g = ar1_advance(g, steps, design.drift_corr_steps, c.drift_global_sigma_m, generator)
    return state.replace(global_drift_m=float(g[0]))


def draw_field(design: ChipDesign, state: BankState, steps: int, generator: torch.Generator) -> None:
    """Advance the spatially correlated drift field [B, N] of ``state`` by ``steps`` decode steps (AR(1) in time,
    spatially correlated innovations), in place."""
    c = design.config
    if c.drift_field_sigma_m != 0.0:
        field = state.field_drift
        rho_k, noise_m = ar1_coefficients(steps, design.drift_corr_steps, 1.0)
        innov = spatial_field(tuple(field.shape), c.drift_field_sigma_m, design.field_rho, generator, field.dtype)
        field.mul_(rho_k).add_(innov, alpha=noise_m)


def relax(design: ChipDesign, state: BankState, steps: int) -> None:
    """Age the rows of ``state`` by ``steps`` decode steps and let their held Pockels shifts relax (TFLN DC drift):
    static = rest + eo · relaxation(age) + trim, in place. Codes refreshed every step are at most a step old."""
    c = design.config
    if c.dc_relax_fraction != 0.0 and not design.refreshes_codes:
        state.age.add_(steps)
        factor = dc_relaxation(state.age * c.decode_step_time_s, c.dc_relax_fraction, c.dc_relax_time_s)
        torch.addcmul(state.trim, state.eo, factor.unsqueeze(-1), out=state.static).add_(design.rest_detuning_m)


def now(
    state: BankState, banks: torch.Tensor | None, r0: int, r1: int | None, static: torch.Tensor | None = None
) -> torch.Tensor:
    """Drift detuning [nb, nr, d] (m) of rows [r0, r1) of ``banks`` (None: all) now: per ring + spatial field +
    global; with ``static`` (the rows' static detuning) the total detuning, summed in the order of a group sample
    (same bits)."""
    sl = slice(r0, r1)
    ring_d = state.ring_drift[:, sl] if banks is None else state.ring_drift[banks, sl]
    out = ring_d.clone() if static is None else torch.add(static, ring_d)
    if state.has("field_drift"):
        f = state.field_drift[:, sl] if banks is None else state.field_drift[banks, sl]
        out += f.unsqueeze(-1)
    if state.global_drift_m != 0.0:
        out += state.global_drift_m
    return out


def at_calibration(
    design: ChipDesign, state: BankState, banks: torch.Tensor, r0: int, r1: int, generator: torch.Generator
) -> torch.Tensor:
    """Drift detuning [nb, nr, d] (m) of rows [r0, r1) of ``banks`` when the in-situ calibration whose codes are
    applied now measured them: the drift now, or with ``calibration_age_s`` > 0 the state of each drift process
    that long before now. A stationary AR(1) process is time-reversible, so the past state given the present is
    ρ^k·x_now + σ√(1 − ρ^{2k})·ε (k = age in decode steps), drawn per ring, per row of the field and once for
    the global drift. No draw when the age is 0 (in-situ calibration just before use)."""
    c = design.config
    if not (c.feedback_calibration and c.calibration_age_s > 0.0):
        return now(state, banks, r0, r1)
    steps = c.calibration_age_s / c.decode_step_time_s
    sl = slice(r0, r1)
    out = ar1_advance(state.ring_drift[banks, sl], steps, design.drift_corr_steps, c.drift_ring_sigma_m, generator)
    if state.has("field_drift"):
        f = state.field_drift[banks, sl]
        rho_k, noise_m = ar1_coefficients(steps, design.drift_corr_steps, 1.0)
        innov = spatial_field(tuple(f.shape), c.drift_field_sigma_m, design.field_rho, generator, f.dtype)
        out = out + (f * rho_k + innov * noise_m).unsqueeze(-1)
    if c.drift_global_sigma_m != 0.0:
        g = torch.tensor([state.global_drift_m], dtype=torch.float64)
        out = out + float(ar1_advance(g, steps, design.drift_corr_steps, c.drift_global_sigma_m, generator)[0])
    return out
