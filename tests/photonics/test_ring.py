import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kvprism.photonics import ring

WL, NG, NEFF, R = 1.55e-6, 2.30, 2.138, 20e-6


@settings(max_examples=60, deadline=None)
@given(
    phi=st.floats(-20.0, 20.0),
    r1=st.floats(0.5, 0.999),
    r2=st.floats(0.5, 0.999),
    loss=st.floats(1.0, 2000.0),
)
def test_power_conservation(phi, r1, r2, loss):
    t, d = ring.add_drop(phi, r1, r2, 1.0)
    assert t + d == pytest.approx(1.0, abs=1e-9)
    a = ring.round_trip_amplitude(loss, R)
    t, d = ring.add_drop(phi, r1, r2, a)
    assert t + d < 1.0 and t >= 0.0 and d >= 0.0


def test_fsr_periodicity():
    r1, r2 = ring.design_couplings(1e4, WL, NG, R, 20.0)
    a = ring.round_trip_amplitude(20.0, R)
    phi = torch.linspace(-3, 3, 101, dtype=torch.float64)
    t0, d0 = ring.add_drop(phi, r1, r2, a)
    t1, d1 = ring.add_drop(phi + 2 * math.pi, r1, r2, a)
    assert torch.allclose(t0, t1, atol=1e-12) and torch.allclose(d0, d1, atol=1e-12)
    # in wavelength, with first-order dispersion φ(λ) = 2πL(n_g/λ − const): resonances are spaced by λ1·λ2/(n_g L),
    # which is the FSR formula λ²/(n_g L) up to O(FSR/λ)
    fsr = ring.fsr_m(WL, NG, R)
    dphi = ring.round_trip_phase(WL, R, NEFF, NG, WL) - ring.round_trip_phase(WL + fsr, R, NEFF, NG, WL)
    assert dphi == pytest.approx(2 * math.pi * WL / (WL + fsr), rel=1e-9)
    assert dphi == pytest.approx(2 * math.pi, rel=fsr / WL * 1.01)


def test_fwhm_and_q_against_closed_form():
    r1, r2 = ring.design_couplings(1e4, WL, NG, R, 20.0)
    a = ring.round_trip_amplitude(20.0, R)
    assert ring.q_loaded(WL, NG, R, r1, r2, a) == pytest.approx(1e4, rel=1e-9)
    # measure the drop-port FWHM by dense sampling around the resonance
    fsr = ring.fsr_m(WL, NG, R)
    dl = torch.linspace(-fsr / 20, fsr / 20, 400001, dtype=torch.float64)
    phi = 2 * math.pi * NG * ring.ring_length_m(R) * dl / WL**2
    _, d = ring.add_drop(phi, r1, r2, a)
    above = dl[d >= d.max() / 2]
    measured = float(above.max() - above.min())
    assert measured == pytest.approx(ring.fwhm_m(WL, NG, R, r1, r2, a), rel=1e-3)
    assert ring.finesse(r1, r2, a) == pytest.approx(fsr / ring.fwhm_m(WL, NG, R, r1, r2, a), rel=1e-9)


def test_q_intrinsic_is_the_weak_coupling_limit():
    a = ring.round_trip_amplitude(20.0, R)
    qi = ring.q_intrinsic(WL, NG, 20.0)
    assert qi == pytest.approx(2 * math.pi * NG / (WL * ring.loss_per_m(20.0)))
    assert ring.q_loaded(WL, NG, R, 1 - 1e-12, 1 - 1e-12, a) == pytest.approx(qi, rel=1e-3)
    assert math.isinf(ring.q_intrinsic(WL, NG, 0.0))


def test_critical_coupling():
    a = ring.round_trip_amplitude(20.0, R)
    r1, r2 = ring.design_couplings(1e4, WL, NG, R, 20.0, "critical")
    assert r1 == pytest.approx(r2 * a)
    t, _ = ring.add_drop(0.0, r1, r2, a)
    assert t == pytest.approx(0.0, abs=1e-12)
    assert math.isinf(ring.extinction_ratio_db(r1, r2, a))
    s1, s2 = ring.design_couplings(1e4, WL, NG, R, 20.0, "symmetric")
    assert s1 == s2 and ring.extinction_ratio_db(s1, s2, a) < 100
    with pytest.raises(ValueError, match="not reachable"):
        ring.design_couplings(1e7, WL, NG, R, 20.0)


def test_eo_tuning_and_weight_inverse():
    assert ring.eo_shift_m(2.0, 28.5e-12) == pytest.approx(57e-12)
    r1, r2 = ring.design_couplings(1e4, WL, NG, R, 20.0)
    a = ring.round_trip_amplitude(20.0, R)
    phi = torch.linspace(0.0, math.pi, 50, dtype=torch.float64)
    w = ring.single_ring_weight(phi, r1, r2, a)
    c = ring.single_ring_weight_inverse_cos(w, r1, r2, a)
    assert torch.allclose(torch.arccos(c.clamp(-1, 1)), phi, atol=1e-6)
    # shifting the resonance by Δλ moves the phase so that the resonance sits at λ + Δλ
    shift = 50e-12
    p = ring.round_trip_phase(WL + shift, R, NEFF, NG, WL, shift_m=shift) - ring.round_trip_phase(WL, R, NEFF, NG, WL)
    assert abs(p) < 1e-3
