"""The coherent drop bus (wdm.cascade_coherent) against an independent computation, and its limits."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kvprism.photonics import ring
from kvprism.photonics.wdm import RowOptics, cascade, cascade_coherent

WL, NG, NEFF, R = 1.55e-6, 2.22, 1.8, 20e-6


def optics(d=4, spacing=0.2e-9, q=1e5, loss=20.0, pitch=50e-6):
    r1, r2 = ring.design_couplings(q, WL, NG, R, loss)
    a = ring.round_trip_amplitude(loss, R)
    return RowOptics.build(d, spacing, WL, R, NEFF, NG, r1, r2, a, dtype=torch.float64, ring_spacing_m=pitch)


def solve_row(phi: torch.Tensor, psi: torch.Tensor, r1: float, r2: float, a: float) -> tuple[float, float]:
    """Through and drop power of ONE line through a row of rings, by a direct linear solve of every field: per ring
    j the input-bus field A_j arriving from the left, the drop-bus field B_j arriving from the right, the ring fields
    c1 (after the input coupler) and c2 (after the drop coupler); couplers [[r, iκ], [iκ, r]], half-ring propagation
    √a e^{iφ/2}; the segment before ring j adds the phase psi[j] on the input bus. ``phi``, ``psi``: [d]."""
    d = phi.shape[0]
    k1, k2 = math.sqrt(1 - r1 * r1), math.sqrt(1 - r2 * r2)
    n = 4 * d  # unknowns per ring: A, B, c1, c2
    m = torch.zeros(n, n, dtype=torch.complex128)
    rhs = torch.zeros(n, dtype=torch.complex128)

    def ix(j, q):
        return 4 * j + q

    for j in range(d):
        h = math.sqrt(a) * torch.exp(0.5j * phi[j])
        # c1 = iκ1 A + r1 h c2 ; c2 = iκ2 B + r2 h c1
        m[ix(j, 2), ix(j, 2)] = 1
        m[ix(j, 2), ix(j, 0)] = -1j * k1
        m[ix(j, 2), ix(j, 3)] = -r1 * h
        m[ix(j, 3), ix(j, 3)] = 1
        m[ix(j, 3), ix(j, 1)] = -1j * k2
        m[ix(j, 3), ix(j, 2)] = -r2 * h
        # A_j = e^{iψ_j} · out_{j-1}, out = r1 A + iκ1 h c2 ; A_0 = e^{iψ_0}
        e = torch.exp(1j * psi[j])
        m[ix(j, 0), ix(j, 0)] = 1
        if j == 0:
            rhs[ix(j, 0)] = e
        else:
            h0 = math.sqrt(a) * torch.exp(0.5j * phi[j - 1])
            m[ix(j, 0), ix(j - 1, 0)] = -e * r1
            m[ix(j, 0), ix(j - 1, 3)] = -e * 1j * k1 * h0
        # B_j = drop_out_{j+1} = r2 B_{j+1} + iκ2 h c1_{j+1}; B_last = 0
        m[ix(j, 1), ix(j, 1)] = 1
        if j < d - 1:
            h1 = math.sqrt(a) * torch.exp(0.5j * phi[j + 1])
            m[ix(j, 1), ix(j + 1, 1)] = -r2
            m[ix(j, 1), ix(j + 1, 2)] = -1j * k2 * h1
    x = torch.linalg.solve(m, rhs)
    hl = math.sqrt(a) * torch.exp(0.5j * phi[d - 1])
    thru = r1 * x[ix(d - 1, 0)] + 1j * k1 * hl * x[ix(d - 1, 3)]
    h0 = math.sqrt(a) * torch.exp(0.5j * phi[0])
    drop = r2 * x[ix(0, 1)] + 1j * k2 * h0 * x[ix(0, 2)]
    return float(thru.abs() ** 2), float(drop.abs() ** 2)


def test_coherent_row_equals_a_direct_solve_of_every_field():
    gen = torch.Generator().manual_seed(0)
    for q, spacing in ((1e5, 0.2e-9), (1e4, 1.6e-9), (3e4, 0.05e-9)):
        opt = optics(d=5, spacing=spacing, q=q)
        fwhm = float(ring.fwhm_m(WL, NG, R, opt.r1, opt.r2, opt.a))
        det = torch.rand(3, 5, generator=gen, dtype=torch.float64) * 3 * fwhm
        fab = torch.rand(3, 5, generator=gen, dtype=torch.float64) * 2 * math.pi
        thru, drop = cascade_coherent(det, opt, bus_phase_rad=fab)
        for r in range(3):
            for i in range(5):
                phi = opt.phase0[i] + det[r] * opt.phase_per_m[i]
                path = opt.bus_phase0[i] + fab[r]  # phase of the path to each ring → per-segment increments
                psi = torch.cat([path[:1], path[1:] - path[:-1]])
                t_ref, d_ref = solve_row(phi, psi, opt.r1, opt.r2, opt.a)
                assert abs(float(thru[r, i]) - t_ref) < 1e-9 and abs(float(drop[r, i]) - d_ref) < 1e-9


@settings(max_examples=25, deadline=None)
@given(st.floats(0.0, 1.0), st.integers(0, 2**31 - 1))
def test_lossless_row_conserves_power(frac, seed):
    opt = optics(d=4, loss=0.0, q=2e4)
    gen = torch.Generator().manual_seed(seed)
    det = torch.rand(2, 4, generator=gen, dtype=torch.float64) * frac * 400e-12
    thru, drop = cascade_coherent(det, opt, bus_phase_rad=torch.rand(2, 4, generator=gen, dtype=torch.float64) * 6)
    torch.testing.assert_close(thru + drop, torch.ones_like(thru), rtol=0, atol=1e-12)


def test_coherent_tends_to_incoherent_as_leakage_vanishes():
    """Rings far apart in wavelength (spacing ≫ linewidth, no aliasing): the field cross terms vanish."""
    errs = []
    for spacing in (0.05e-9, 0.2e-9, 0.8e-9):
        opt = optics(d=4, spacing=spacing, q=1e5)
        det = torch.rand(64, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 40e-12
        fab = torch.rand(64, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 6.3
        t0, d0 = cascade(det, opt)
        t1, d1 = cascade_coherent(det, opt, bus_phase_rad=fab)
        errs.append(float(((t1 - d1) - (t0 - d0)).abs().max()))  # field cross terms and re-coupled light
    assert errs[0] > errs[1] > errs[2] and errs[2] < errs[0] / 3 and errs[0] > 0.1


def test_fsr_periodicity():
    """Shifting every ring's resonance by one FSR (2π of round-trip phase) leaves the row's powers unchanged (each
    drop field flips sign, all together); one ring's own powers are 2π-periodic."""
    opt = optics(d=3, spacing=0.3e-9)
    gen = torch.Generator().manual_seed(3)
    det = torch.rand(8, 3, generator=gen, dtype=torch.float64) * 30e-12
    fab = torch.rand(8, 3, generator=gen, dtype=torch.float64) * 6.3
    fsr_shift = 2 * math.pi / opt.phase_per_m  # [i]: one FSR at each line, in metres of resonance shift
    own = torch.diagonal(opt.phase0)  # ring j on its own line: shift by one FSR of that line
    a = cascade_coherent(det, opt, bus_phase_rad=fab)
    b = cascade_coherent(det + fsr_shift, opt, bus_phase_rad=fab)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-3)  # ring j's FSR seen at line i differs by ~Δλ/λ
    t, d = ring.add_drop(own + 0.3, opt.r1, opt.r2, opt.a)
    t2, d2 = ring.add_drop(own + 0.3 + 2 * math.pi, opt.r1, opt.r2, opt.a)
    torch.testing.assert_close(t, t2) and torch.testing.assert_close(d, d2)


def test_drop_field_half_phase_at_fixed_bus_phases_against_a_solve_from_the_ring_phases():
    """Ring/line pairs more than half an FSR apart: the drop field carries e^{iφ/2}, so the round-trip phase of ring j
    at line i must not be reduced modulo 2π before it is halved. Phases here come straight from
    ``ring.round_trip_phase`` (the rings share one resonance order: φ_ij = φ(λ_i) − φ(λ_j) + shift, unreduced), the
    bus phases are FIXED (designed path only, and a fixed per-ring pattern), and every field is solved directly."""
    d, spacing, radius = 16, 0.4e-9, 20e-6  # 6.4 nm comb span in an 8.3 nm FSR: pairs ≥ 11 lines apart are > FSR/2
    r1, r2 = ring.design_couplings(1e5, WL, NG, radius, 20.0)
    a = ring.round_trip_amplitude(20.0, radius)
    opt = RowOptics.build(d, spacing, WL, radius, NEFF, NG, r1, r2, a, dtype=torch.float64, ring_spacing_m=50e-6)
    lines = WL + (torch.arange(d, dtype=torch.float64) - (d - 1) / 2.0) * spacing
    phi_line = ring.round_trip_phase(lines, radius, NEFF, NG, WL)  # [d] absolute phase of the nominal ring
    fsr = float(ring.fsr_m(WL, NG, radius))
    far = ((lines[:, None] - lines[None, :]).abs() > fsr / 2).sum().item()
    assert far >= 20  # the configuration exercises the pairs a 2π reduction got wrong
    fwhm = float(ring.fwhm_m(WL, NG, radius, r1, r2, a))
    gen = torch.Generator().manual_seed(7)
    det = (torch.rand(2, d, generator=gen, dtype=torch.float64) - 0.5) * 6 * fwhm
    fixed = torch.stack([torch.zeros(d, dtype=torch.float64), torch.linspace(0.0, 5.0, d, dtype=torch.float64)])
    beta = 2 * math.pi * ring.n_eff_at(lines, NEFF, NG, WL) / lines
    thru, drop = cascade_coherent(det, opt, bus_phase_rad=fixed)
    for r in range(2):
        for i in range(d):
            shift = 2 * math.pi * NG * ring.ring_length_m(radius) * det[r] / lines[i] ** 2
            phi = phi_line[i] - phi_line + shift  # [j], continuous in i: no reduction at all
            path = 2 * beta[i] * torch.arange(d, dtype=torch.float64) * 50e-6 + fixed[r]
            psi = torch.cat([path[:1], path[1:] - path[:-1]])
            t_ref, d_ref = solve_row(phi, psi, r1, r2, a)
            assert abs(float(thru[r, i]) - t_ref) <= 1e-9 and abs(float(drop[r, i]) - d_ref) <= 1e-9, (r, i)
