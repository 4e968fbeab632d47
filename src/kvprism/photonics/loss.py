"""Intrinsic loss of a TFLN rib-waveguide ring vs its radius (PHYSICS.md §10, §12): α(R) = α_straight + α_bend(R).

The bend term is Marcuse's radiation loss of a curved slab, α_bend = c1·exp(−c2·R) (power, dB/m), applied to the rib
by the effective-index method: the etched rib of a film of thickness t (etch depth e, top width w) is a lateral slab
of width w whose core index is the TE0 index of the full film and whose cladding index is the TE0 index of the
remaining slab (t − e). With β = k0·n_eff of that lateral slab, κ = k0·√(n1² − n_eff²), γ = k0·√(n_eff² − n2²):

    c2 = 2γ³ / (3β²)                                        (tunnelling through the caustic)
    c1 = γ² κ² exp(γ w) / (β (1 + γ w/2) k0² (n1² − n2²))   (Marcuse, Bell Syst. Tech. J. 50, 2551 (1971))

This is a model estimate, not a measurement: no published loss-vs-radius data of the lnoi400 cross-section was
found. The exponent c2 is the robust part (a factor 10 in c1 moves the radius at a given loss by only ln(10)/c2).
:data:`LNOI400` is the cross-section whose effective and group index (1.8, 2.22) and straight loss (0.2 dB/cm) the
TFLN presets use; its sourced radii start at the PDK's bend radius (:data:`LNOI400_MIN_SOURCED_RADIUS_M`).
SI units; losses are positive dB per metre.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = [
    "LNOI400",
    "LNOI400_MIN_SOURCED_RADIUS_M",
    "RibCrossSection",
    "bend_loss_db_per_m",
    "intrinsic_loss_db_per_m",
    "marcuse_bend_constants",
    "slab_te0_index",
]

_DB_PER_NEPER = 10.0 / math.log(10.0)  # power attenuation: dB/m = 4.343 · (1/m)


@dataclass(frozen=True)
class RibCrossSection:
    """A rib waveguide etched into a thin film, clad symmetrically (SiO2 box and cladding)."""

    film_thickness_m: float
    etch_depth_m: float
    top_width_m: float
    n_film: float  # film index for the mode's polarisation
    n_clad: float
    source: str = ""


#: Luxtelligence lnoi400 PDK, cross-section xs_rwg1000 (lnoi400/tech.py: 400 nm X-cut LN film, 200 nm ridge on a
#: 200 nm slab, 1.0 µm top width, SiO2 box and cladding). n_film: extraordinary index of congruent LN at 1550 nm from
#: the Sellmeier fit of Zelmon et al., JOSA B 14, 3319 (1997) (2.1376; TE of an X-cut guide along y sees n_e, the
#: lower of the two indices, so the estimate is the conservative one); n_clad: fused silica at 1550 nm (Malitson,
#: JOSA 55, 1205 (1965): 1.444).
LNOI400 = RibCrossSection(
    film_thickness_m=400e-9,
    etch_depth_m=200e-9,
    top_width_m=1.0e-6,
    n_film=2.1376,
    n_clad=1.444,
    source="Luxtelligence lnoi400 PDK xs_rwg1000 (tech.py); Zelmon et al. JOSA B 14, 3319 (1997); Malitson 1965",
)

#: Smallest radius at which the lnoi400 loss is sourced: the default bend radius of xs_rwg1000 (lnoi400/tech.py:
#: 75 µm; the PDK's Euler L-bends use 80 µm), at which the PDK quotes its 0.2 dB/cm. Below it the bend term is the
#: model's extrapolation.
LNOI400_MIN_SOURCED_RADIUS_M = 75e-6


def slab_te0_index(n_core: float, n_clad: float, thickness_m: float, wl_m: float) -> float:
    """Effective index of the TE0 mode of a symmetric slab (core ``n_core``, thickness ``thickness_m``) in
    ``n_clad``: the root of u·tan(u) = √(V² − u²), u = k0·(t/2)·√(n_core² − n_eff²), V = k0·(t/2)·NA (bisection,
    float64; the TE0 mode has no cutoff)."""
    if not n_core > n_clad > 0.0 or not thickness_m > 0.0 or not wl_m > 0.0:
        raise ValueError(f"need n_core > n_clad > 0 and positive sizes (got {n_core}, {n_clad}, {thickness_m})")
    half = math.pi / wl_m * thickness_m  # k0 · t/2
    v = half * math.sqrt(n_core * n_core - n_clad * n_clad)
    lo, hi = 0.0, min(v, 0.5 * math.pi) * (1.0 - 1e-15)
    for _ in range(200):
        u = 0.5 * (lo + hi)
        if u * math.tan(u) < math.sqrt(max(v * v - u * u, 0.0)):
            lo = u
        else:
            hi = u
    u = 0.5 * (lo + hi)
    return math.sqrt(n_core * n_core - (u / half) ** 2)


def marcuse_bend_constants(xs: RibCrossSection, wl_m: float) -> tuple[float, float]:
    """``(c1_db_per_m, c2_per_m)`` of α_bend = c1·exp(−c2·R) for the rib ``xs`` at ``wl_m`` (module docstring)."""
    k0 = 2.0 * math.pi / wl_m
    n1 = slab_te0_index(xs.n_film, xs.n_clad, xs.film_thickness_m, wl_m)
    slab = xs.film_thickness_m - xs.etch_depth_m
    n2 = slab_te0_index(xs.n_film, xs.n_clad, slab, wl_m) if slab > 0.0 else xs.n_clad
    n_eff = slab_te0_index(n1, n2, xs.top_width_m, wl_m)
    beta = k0 * n_eff
    kappa = k0 * math.sqrt(n1 * n1 - n_eff * n_eff)
    gamma = k0 * math.sqrt(n_eff * n_eff - n2 * n2)
    w = xs.top_width_m
    c1 = gamma**2 * kappa**2 * math.exp(gamma * w) / (beta * (1.0 + 0.5 * gamma * w) * k0**2 * (n1 * n1 - n2 * n2))
    c2 = 2.0 * gamma**3 / (3.0 * beta**2)
    return c1 * _DB_PER_NEPER, c2


def bend_loss_db_per_m(radius_m: float, c1_db_per_m: float, c2_per_m: float) -> float:
    """Radiation loss of the bend, c1·exp(−c2·R) [dB/m]."""
    return c1_db_per_m * math.exp(-c2_per_m * radius_m)


def intrinsic_loss_db_per_m(radius_m: float, straight_db_per_m: float, c1_db_per_m: float, c2_per_m: float) -> float:
    """Total intrinsic loss of a ring of radius ``radius_m``: straight-waveguide loss + bend radiation [dB/m]."""
    return straight_db_per_m + bend_loss_db_per_m(radius_m, c1_db_per_m, c2_per_m)
