"""float32 weights without cancellation at high Q (PHYSICS.md §4 numerics)."""

from __future__ import annotations

import pytest
import torch

from kvprism.photonics import PhotonicConfig, PhotonicEngine, ring
from kvprism.photonics.program import calibrate
from kvprism.photonics.wdm import RowOptics, cascade, cascade_coherent

WL, NG, NEFF, R = 1.55e-6, 2.22, 1.8, 20e-6


def _optics(q, dtype):
    r1, r2 = ring.design_couplings(q, WL, NG, R, 2.7)
    a = ring.round_trip_amplitude(2.7, R)
    return RowOptics.build(32, 0.2e-9, WL, R, NEFF, NG, r1, r2, a, dtype=dtype, ring_spacing_m=50e-6)


@pytest.mark.parametrize("q", [1e4, 1e5, 1e6])
def test_float32_weights_match_float64(q):
    o64, o32 = _optics(q, torch.float64), _optics(q, torch.float32)
    fwhm = float(ring.fwhm_m(WL, NG, R, o64.r1, o64.r2, o64.a))
    gen = torch.Generator().manual_seed(0)
    det = torch.rand(256, 32, dtype=torch.float64, generator=gen) * 3 * fwhm
    t64, d64 = cascade(det, o64)
    t32, d32 = cascade(det.float(), o32)
    assert float(((t32 - d32).double() - (t64 - d64)).abs().max()) < 1e-6
    # coherent: complex products of 32 rings accumulate float32 rounding (~1e-6 RMS), independent of Q
    ph = torch.rand(256, 32, dtype=torch.float64, generator=gen) * 6.28
    c64 = cascade_coherent(det, o64, bus_phase_rad=ph)
    c32 = cascade_coherent(det.float(), o32, bus_phase_rad=ph.float())
    err = ((c32[0] - c32[1]).double() - (c64[0] - c64[1])).abs()
    assert float(err.pow(2).mean().sqrt()) < 3e-6 and float(err.max()) < 5e-5


@pytest.mark.parametrize("q", [1e5, 1e6])
def test_calibration_converges_to_the_float64_level(q):
    o64, o32 = _optics(q, torch.float64), _optics(q, torch.float32)
    fwhm = float(ring.fwhm_m(WL, NG, R, o64.r1, o64.r2, o64.a))
    tgt = (torch.rand(128, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 2 - 1) * 0.8
    c64 = calibrate(tgt, o64, 0.0, 3 * fwhm, iters=6)
    c32 = calibrate(tgt.float(), o32, 0.0, 3 * fwhm, iters=6)
    assert c64.residual < 1e-9 and c32.residual < 1e-6  # float32 stalls at its own rounding, not at 2e-3


def test_high_q_no_longer_destroys_the_ranking():
    """Noise, drift, trim and quantisation off: the chip's scores follow the dot products at any Q."""
    gen = torch.Generator().manual_seed(2)
    sig, q = torch.randn(1, 256, 32, generator=gen), torch.randn(1, 32, generator=gen)
    exact = (sig @ q.unsqueeze(-1)).squeeze(-1)
    for qf in (1e5, 1e6):
        cfg = PhotonicConfig.preset("tfln-literature").replace(
            loss_model="fixed", drift_model="fixed", ring_radius_m=20e-6,
            rows_per_bank=256, noise=False, drift_ring_sigma_m=0.0, drift_global_sigma_m=0.0, trim_sigma_m=0.0,
            program_bits=0, query_bits=0, adc_bits=0, loss_db_per_m=2.7, q_loaded=qf, feedback_calibration=False,
            drop_bus="incoherent", coupler_gap_sigma_m=0.0, calibration_iters=8, channel_spacing_m=0.8e-9,
        )  # fmt: skip
        eng = PhotonicEngine(cfg, seed=0)
        eng.program(sig)
        corr = torch.corrcoef(torch.stack([eng.scores(q)[0], exact[0]]))[0, 1]
        assert corr > 0.99, (qf, float(corr))
