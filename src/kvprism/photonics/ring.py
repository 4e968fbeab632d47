"""Closed-form add-drop microring (PHYSICS.md §1–3): pure functions of wavelength and ring parameters, SI units.

Every function accepts floats or torch tensors (broadcasting); pass float64 tensors for float64 results.
Conventions: ``r1`` is the self-coupling of the input-bus coupler, ``r2`` of the drop-bus coupler (r² = 1 − κ²),
``a`` the single-pass amplitude transmission, ``phi`` the round-trip phase in rad.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "add_drop",
    "design_couplings",
    "eo_shift_m",
    "extinction_ratio_db",
    "finesse",
    "fsr_m",
    "fwhm_m",
    "loss_per_m",
    "n_eff_at",
    "q_intrinsic",
    "q_loaded",
    "ring_length_m",
    "round_trip_amplitude",
    "round_trip_phase",
    "single_ring_weight",
    "single_ring_weight_inverse_cos",
]

Num = float | torch.Tensor


def ring_length_m(radius_m: Num) -> Num:
    """Circumference L = 2πR [m]."""
    return 2.0 * math.pi * radius_m


def loss_per_m(loss_db_per_m: Num) -> Num:
    """Power attenuation coefficient α [1/m] from a loss in dB/m: α = ln(10)/10 · loss_db_per_m."""
    return math.log(10.0) / 10.0 * loss_db_per_m


def round_trip_amplitude(loss_db_per_m: Num, radius_m: Num) -> Num:
    """Single-pass amplitude transmission a = exp(−α L / 2) (dimensionless)."""
    x = -loss_per_m(loss_db_per_m) * ring_length_m(radius_m) / 2.0
    return torch.exp(x) if isinstance(x, torch.Tensor) else math.exp(x)


def n_eff_at(wl_m: Num, n_eff0: float, n_g: float, wl0_m: float) -> Num:
    """First-order dispersion: n_eff(λ) = n_eff0 − (n_g − n_eff0)(λ − λ0)/λ0."""
    return n_eff0 - (n_g - n_eff0) * (wl_m - wl0_m) / wl0_m


def round_trip_phase(wl_m: Num, radius_m: float, n_eff0: float, n_g: float, wl0_m: float, shift_m: Num = 0.0) -> Num:
    """Round-trip phase φ = 2π n_eff(λ) L / λ [rad], plus the phase of a resonance shift ``shift_m`` [m]:
    a shift Δλ_res adds 2π n_g L Δλ_res / λ² (the resonance moves to longer wavelength for Δλ_res > 0)."""
    length = ring_length_m(radius_m)
    phi = 2.0 * math.pi * n_eff_at(wl_m, n_eff0, n_g, wl0_m) * length / wl_m
    return phi + 2.0 * math.pi * n_g * length * shift_m / (wl_m * wl_m)


def add_drop(phi: Num, r1: Num, r2: Num, a: Num) -> tuple[Num, Num]:
    """Through and drop power transmission of an add-drop ring at round-trip phase ``phi`` (closed form, all
    FSR orders): D = 1 − 2 r1 r2 a cos φ + (r1 r2 a)²; T = (r2² a² − 2 r1 r2 a cos φ + r1²)/D;
    Dr = (1 − r1²)(1 − r2²) a / D."""
    c = torch.cos(phi) if isinstance(phi, torch.Tensor) else math.cos(phi)
    p = r1 * r2 * a
    den = 1.0 - 2.0 * p * c + p * p
    thru = (r2 * r2 * a * a - 2.0 * p * c + r1 * r1) / den
    drop = (1.0 - r1 * r1) * (1.0 - r2 * r2) * a / den
    return thru, drop


def fsr_m(wl_m: Num, n_g: Num, radius_m: Num) -> Num:
    """Free spectral range λ² / (n_g L) [m]."""
    return wl_m * wl_m / (n_g * ring_length_m(radius_m))


def fwhm_m(wl_m: Num, n_g: Num, radius_m: Num, r1: Num, r2: Num, a: Num) -> Num:
    """Resonance full width at half maximum (1 − r1 r2 a) λ² / (π n_g L √(r1 r2 a)) [m]."""
    p = r1 * r2 * a
    root = torch.sqrt(p) if isinstance(p, torch.Tensor) else math.sqrt(p)
    return (1.0 - p) * wl_m * wl_m / (math.pi * n_g * ring_length_m(radius_m) * root)


def q_loaded(wl_m: Num, n_g: Num, radius_m: Num, r1: Num, r2: Num, a: Num) -> Num:
    """Loaded quality factor λ / FWHM (dimensionless)."""
    return wl_m / fwhm_m(wl_m, n_g, radius_m, r1, r2, a)


def q_intrinsic(wl_m: Num, n_g: Num, loss_db_per_m: Num) -> Num:
    """Intrinsic quality factor 2π n_g / (λ α) (dimensionless; infinite for a lossless ring)."""
    alpha = loss_per_m(loss_db_per_m)
    if isinstance(alpha, torch.Tensor):
        return 2.0 * math.pi * n_g / (wl_m * alpha)
    return math.inf if alpha == 0 else 2.0 * math.pi * n_g / (wl_m * alpha)


def finesse(r1: Num, r2: Num, a: Num) -> Num:
    """Finesse FSR / FWHM = π √(r1 r2 a) / (1 − r1 r2 a)."""
    p = r1 * r2 * a
    root = torch.sqrt(p) if isinstance(p, torch.Tensor) else math.sqrt(p)
    return math.pi * root / (1.0 - p)


def extinction_ratio_db(r1: Num, r2: Num, a: Num) -> Num:
    """Through-port extinction ratio T(off resonance)/T(on resonance) in dB (infinite at critical coupling)."""
    off_t, _ = add_drop(math.pi, r1, r2, a)
    on_t, _ = add_drop(0.0, r1, r2, a)
    if isinstance(on_t, torch.Tensor):
        return 10.0 * torch.log10(off_t / on_t)
    return math.inf if on_t <= 0 else 10.0 * math.log10(off_t / on_t)


def design_couplings(
    q_loaded_target: float, wl_m: float, n_g: float, radius_m: float, loss_db_per_m: float, regime: str = "critical"
) -> tuple[float, float]:
    """Self-couplings (r1, r2) that give the loaded Q ``q_loaded_target``.

    ``regime``: ``"critical"`` sets r1 = r2·a (drop-port critical coupling: the through port vanishes on resonance),
    ``"symmetric"`` sets r1 = r2. Raises ``ValueError`` if the target Q is not reachable with the given loss
    (needs Q_loaded < Q_intrinsic/2 for critical coupling)."""
    length = ring_length_m(radius_m)
    a = round_trip_amplitude(loss_db_per_m, radius_m)
    # FWHM·π n_g L / λ² = (1 − p)/√p with p = r1 r2 a; solve for p in (0, 1): with s = √p, s² + c s − 1 = 0.
    c = math.pi * n_g * length / (wl_m * q_loaded_target)
    s = (-c + math.sqrt(c * c + 4.0)) / 2.0
    p = s * s
    if regime == "critical":
        r2 = math.sqrt(p) / a
        r1 = r2 * a
    elif regime == "symmetric":
        r1 = r2 = math.sqrt(p / a)
    else:
        raise ValueError(f"regime = {regime!r} is invalid; allowed: 'critical', 'symmetric'")
    if not (0.0 < r1 < 1.0 and 0.0 < r2 < 1.0):
        qi = q_intrinsic(wl_m, n_g, loss_db_per_m)
        raise ValueError(
            f"loaded Q {q_loaded_target:g} is not reachable with {loss_db_per_m:g} dB/m (Q_intrinsic {qi:.3g}) "
            f"in the {regime} regime"
        )
    return r1, r2


def eo_shift_m(voltage_v: Num, tuning_m_per_v: float) -> Num:
    """Pockels resonance shift Δλ_res = tuning_m_per_v · V [m]."""
    return tuning_m_per_v * voltage_v


def single_ring_weight(phi: Num, r1: Num, r2: Num, a: Num) -> Num:
    """Balanced weight w = T_thru − T_drop of one ring at round-trip phase ``phi``."""
    t, d = add_drop(phi, r1, r2, a)
    return t - d


def single_ring_weight_inverse_cos(w: Num, r1: float, r2: float, a: float) -> Num:
    """cos φ at which one ring has balanced weight ``w`` (inverse of :func:`single_ring_weight`, not clipped):
    with p = r1 r2 a and K = r2² a² + r1² − (1 − r1²)(1 − r2²) a, cos φ = (K − w(1 + p²)) / (2 p (1 − w))."""
    p = r1 * r2 * a
    k = r2 * r2 * a * a + r1 * r1 - (1.0 - r1 * r1) * (1.0 - r2 * r2) * a
    return (k - w * (1.0 + p * p)) / (2.0 * p * (1.0 - w))
