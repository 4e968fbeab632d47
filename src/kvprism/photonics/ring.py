"""Closed-form add-drop microring (PHYSICS.md §1–3): pure functions of wavelength and ring parameters, SI units.

Every function accepts floats or torch tensors (broadcasting); pass float64 tensors for float64 results.
Conventions: ``r1`` is the self-coupling of the input-bus coupler, ``r2`` of the drop-bus coupler (r² = 1 − κ²),
``a`` the single-pass amplitude transmission, ``phi`` the round-trip phase in rad.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

__all__ = [
    "Couplers",
    "add_drop",
    "add_drop_fields",
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
    "ring_fields",
    "ring_length_m",
    "round_trip_amplitude",
    "round_trip_phase",
    "sin2_half",
    "single_ring_weight",
    "single_ring_weight_inverse_cos",
    "single_ring_weight_inverse_sin2",
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


def sin2_half(phi: Num) -> Num:
    """sin²(φ/2) — the cancellation-free measure of the distance from resonance (1 − cos φ = 2 sin²(φ/2))."""
    if isinstance(phi, torch.Tensor):
        return torch.sin(0.5 * phi).square()
    return math.sin(0.5 * phi) ** 2


def add_drop(phi: Num, r1: Num, r2: Num, a: Num) -> tuple[Num, Num]:
    """Through and drop power transmission of an add-drop ring at round-trip phase ``phi`` (closed form, all
    FSR orders), in the cancellation-free form (PHYSICS.md §4) with s = sin²(φ/2) and p = r1 r2 a:
    D = (1 − p)² + 4 p s; T = ((r1 − r2 a)² + 4 p s) / D; Dr = (1 − r1²)(1 − r2²) a / D.
    (Algebraically equal to D = 1 − 2p cos φ + p², T = (r2² a² − 2p cos φ + r1²)/D, whose terms cancel
    catastrophically in float32 near resonance at Q ≳ 1e5.)"""
    s = sin2_half(phi)
    p = r1 * r2 * a
    den = (1.0 - p) ** 2 + 4.0 * p * s
    thru = ((r1 - r2 * a) ** 2 + 4.0 * p * s) / den
    drop = (1.0 - r1 * r1) * (1.0 - r2 * r2) * a / den
    return thru, drop


@dataclass(frozen=True)
class Couplers:
    """Constants of add-drop rings in the cancellation-free forms of :func:`ring_fields` (floats, or tensors of one
    value per ring that broadcast against the phase). Built in float64 from the power couplings κ1², κ2² and the
    single-pass amplitude a, then cast: 1 − r = κ²/(1 + r) and 1 − p = (1 − r1) + r1(1 − r2) + r1 r2(1 − a) have no
    cancellation, so the constants keep their relative precision in float32 even at Q = 1e6."""

    p: Num  # r1 r2 a
    one_minus_p: Num  # 1 − p
    r1_minus_r2a: Num  # r1 − r2 a (0 at critical coupling)
    r2_minus_r1a: Num  # r2 − r1 a
    r2a: Num  # r2 a
    r1a: Num  # r1 a
    drop_amp: Num  # κ1 κ2 √a

    @classmethod
    def from_kappa_sq(cls, kappa1_sq: Num, kappa2_sq: Num, a: float, dtype: torch.dtype | None = None) -> Couplers:
        """From the power couplings κ1², κ2² (floats or tensors) and a; tensors are evaluated in float64 and cast
        to ``dtype`` (default: their own dtype)."""
        if isinstance(kappa1_sq, torch.Tensor) or isinstance(kappa2_sq, torch.Tensor):
            out_dtype = dtype or (kappa1_sq.dtype if isinstance(kappa1_sq, torch.Tensor) else kappa2_sq.dtype)
            k1 = torch.as_tensor(kappa1_sq, dtype=torch.float64)
            k2 = torch.as_tensor(kappa2_sq, dtype=torch.float64)
            r1, r2 = (1.0 - k1).sqrt(), (1.0 - k2).sqrt()
            om1, om2 = k1 / (1.0 + r1), k2 / (1.0 + r2)
            drop_amp = (k1 * k2 * a).sqrt()
        else:
            r1, r2 = math.sqrt(1.0 - kappa1_sq), math.sqrt(1.0 - kappa2_sq)
            om1, om2 = kappa1_sq / (1.0 + r1), kappa2_sq / (1.0 + r2)
            drop_amp = math.sqrt(kappa1_sq * kappa2_sq * a)
            out_dtype = None
        oma = 1.0 - a
        vals = (
            r1 * r2 * a,
            om1 + r1 * om2 + r1 * r2 * oma,
            (om2 + r2 * oma) - om1,
            (om1 + r1 * oma) - om2,
            r2 * a,
            r1 * a,
            drop_amp,
        )
        if out_dtype is not None:
            vals = tuple(v.to(out_dtype) if isinstance(v, torch.Tensor) else v for v in vals)
        return cls(*vals)

    @classmethod
    def from_r(cls, r1: float, r2: float, a: float) -> Couplers:
        """From the self-couplings r1, r2 (floats) and a."""
        return cls.from_kappa_sq(1.0 - r1 * r1, 1.0 - r2 * r2, a)

    def per_ring(self, fn) -> Couplers:
        """A copy with ``fn`` applied to every tensor constant (e.g. ``lambda x: x.unsqueeze(-2)`` to broadcast one
        value per ring over the lines)."""
        return Couplers(*(fn(v) if isinstance(v, torch.Tensor) else v for v in dataclasses.astuple(self)))


def ring_fields(phi: torch.Tensor, c: Couplers) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Complex field transmissions of add-drop rings (2×2 couplers, Yariv/Bogaerts) at round-trip phase ``phi``:
    ``(t, k, t_drop_bus)`` with t = (r1 − r2 a e^{iφ}) / (1 − p e^{iφ}) (input bus → through),
    k = −κ1 κ2 √a e^{iφ/2} / (1 − p e^{iφ}) (input bus → drop bus) and t' = (r2 − r1 a e^{iφ}) / (1 − p e^{iφ})
    (light on the drop bus passing the ring). Real parts are written cancellation-free
    (1 − p cos φ = (1 − p) + 2 p sin²(φ/2)); |t|² and |k|² equal :func:`add_drop`."""
    half = 0.5 * phi
    sh, ch = torch.sin(half), torch.cos(half)
    s = sh * sh
    ps = c.p * s
    # 1/(1 − p e^{iφ}) = conj(den)/|den|² with |den|² = (1 − p)² + 4ps (real, cancellation-free)
    inv_d = (c.one_minus_p**2 + 4.0 * ps).reciprocal()
    den_re = (c.one_minus_p + 2.0 * ps) * inv_d
    den_im = (2.0 * c.p) * (sh * ch) * inv_d  # imag of conj(den)/|den|² = p sin φ / |den|²
    sin_phi = 2.0 * sh * ch

    def over_den(n_re: torch.Tensor, n_im: torch.Tensor) -> torch.Tensor:
        return torch.complex(n_re * den_re - n_im * den_im, n_re * den_im + n_im * den_re)

    t = over_den(c.r1_minus_r2a + 2.0 * c.r2a * s, -c.r2a * sin_phi)
    tb = over_den(c.r2_minus_r1a + 2.0 * c.r1a * s, -c.r1a * sin_phi)
    k = over_den(-c.drop_amp * ch, -c.drop_amp * sh)
    return t, k, tb


def add_drop_fields(phi: torch.Tensor, r1: float, r2: float, a: float) -> tuple[torch.Tensor, ...]:
    """:func:`ring_fields` of rings with self-couplings ``r1``, ``r2`` and single-pass amplitude ``a``."""
    return ring_fields(phi, Couplers.from_r(r1, r2, a))


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
    with p = r1 r2 a and K = r2² a² + r1² − (1 − r1²)(1 − r2²) a, cos φ = (K − w(1 + p²)) / (2 p (1 − w)).
    Cancels in float32 at high Q: use :func:`single_ring_weight_inverse_sin2` there."""
    p = r1 * r2 * a
    k = r2 * r2 * a * a + r1 * r1 - (1.0 - r1 * r1) * (1.0 - r2 * r2) * a
    return (k - w * (1.0 + p * p)) / (2.0 * p * (1.0 - w))


def single_ring_weight_inverse_sin2(w: Num, r1: float, r2: float, a: float) -> Num:
    """sin²(φ/2) at which one ring has balanced weight ``w`` (inverse of :func:`single_ring_weight`, not clipped),
    cancellation-free: from w·D = N_thru − N_drop with D = (1 − p)² + 4ps, N_thru = (r1 − r2 a)² + 4ps,
    s = (w (1 − p)² + (1 − r1²)(1 − r2²) a − (r1 − r2 a)²) / (4 p (1 − w)). The constants are Python floats
    (float64)."""
    p = r1 * r2 * a
    c_w = (1.0 - p) ** 2
    c_0 = (1.0 - r1 * r1) * (1.0 - r2 * r2) * a - (r1 - r2 * a) ** 2
    return (w * c_w + c_0) / (4.0 * p * (1.0 - w))
