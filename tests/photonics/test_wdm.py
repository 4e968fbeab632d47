import dataclasses
import itertools
import math

import torch

from kvprism.photonics import ring
from kvprism.photonics.program import calibrate
from kvprism.photonics.wdm import CascadePlan, RowOptics, cascade, comb_grid_m

WL, NG, NEFF, R = 1.55e-6, 2.30, 2.138, 20e-6


def optics(d=8, spacing=1.6e-9, q=1e4, order="ascending", loss=20.0):
    r1, r2 = ring.design_couplings(q, WL, NG, R, loss)
    a = ring.round_trip_amplitude(loss, R)
    return RowOptics.build(d, spacing, WL, R, NEFF, NG, r1, r2, a, order)


def test_comb_grid():
    g = comb_grid_m(4, 1e-9, WL)
    assert torch.allclose(g.diff(), torch.full((3,), 1e-9, dtype=torch.float64))
    assert float(g.mean()) == WL


def test_single_ring_and_no_crosstalk_limits():
    opt = optics(d=1)
    det = torch.tensor([[30e-12], [100e-12]], dtype=torch.float64)
    t, d = cascade(det, opt)
    t1, d1 = ring.add_drop(det * opt.phase_per_m, opt.r1, opt.r2, opt.a)
    assert torch.allclose(t, t1) and torch.allclose(d, d1)
    opt8 = optics(d=8)
    det8 = torch.rand(3, 8, dtype=torch.float64) * 200e-12
    t, d = cascade(det8, opt8, crosstalk=False)
    t1, d1 = ring.add_drop(det8 * opt8.phase_per_m, opt8.r1, opt8.r2, opt8.a)
    assert torch.allclose(t, t1) and torch.allclose(d, d1)
    tc, dc = cascade(det8, opt8, crosstalk=True)
    assert not torch.allclose(tc - dc, t1 - d1, atol=1e-4)  # crosstalk changes the weights


def test_ring_order_on_the_bus():
    det = torch.rand(4, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 100e-12
    # identical rings: D_j = κ(1 − T_j) with κ independent of φ, so Σ_j D_j Π_{m<j} T_m telescopes to
    # κ(1 − Π_j T_j) and the order cannot matter (lossless or lossy)
    for loss in (0.0, 500.0):
        up = cascade(det, optics(spacing=0.2e-9, order="ascending", loss=loss))
        down = cascade(det, optics(spacing=0.2e-9, order="descending", loss=loss))
        assert torch.allclose(up[0], down[0]) and torch.allclose(up[1], down[1], atol=1e-12)
    # rings with different couplings (e.g. fabrication spread of the gaps): the order matters
    base = optics(spacing=0.2e-9, loss=500.0)
    r2 = torch.linspace(0.95, 0.99, 8, dtype=torch.float64)
    up = dataclasses.replace(base, r2=r2)
    down = dataclasses.replace(base, r2=r2, order=torch.arange(7, -1, -1))
    t_up, d_up = cascade(det, up)
    t_down, d_down = cascade(det, down)
    assert torch.allclose(t_up, t_down)  # the through product does not depend on the order
    assert (d_up - d_down).abs().max() > 1e-3  # the drop sum does


def test_fsr_aliasing_emerges():
    fsr = ring.fsr_m(WL, NG, R)
    det = torch.full((1, 2), 150e-12, dtype=torch.float64)  # both rings detuned ~1 FWHM off their own lines
    _, drop_alias = cascade(det, optics(d=2, spacing=fsr))  # ring 1's previous order sits near line 0
    _, drop_half = cascade(det, optics(d=2, spacing=fsr / 2))
    _, drop_alone = cascade(det[:, :1], optics(d=1))
    assert float(drop_alias[0, 0]) > 1.5 * float(drop_alone[0, 0])
    assert float(drop_half[0, 0]) < 1.1 * float(drop_alone[0, 0])


def test_calibration_exact_without_crosstalk():
    opt = optics()
    target = (torch.rand(64, 8, dtype=torch.float64) * 2 - 1) * 0.8
    res = calibrate(target, opt, 0.0, 285e-12, iters=0, crosstalk=False)
    assert res.residual < 1e-9
    t, d = cascade(res.detuning_m, opt, crosstalk=False)
    assert torch.allclose(t - d, target, atol=1e-9)


def test_calibration_residual_shrinks_with_iterations():
    opt = optics(d=8, spacing=0.6e-9)  # neighbours ~4 FWHM apart: visible but correctable crosstalk
    target = (torch.rand(64, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2 - 1) * 0.7
    res = calibrate(target, opt, 0.0, 285e-12, iters=6, crosstalk=True)
    h = res.residual_rms
    assert h[0] > 1e-2  # the single-ring inverse alone is visibly off
    assert all(b <= a + 1e-15 for a, b in itertools.pairwise(h))
    assert h[-1] < 1e-3 * h[0]
    t, d = cascade(res.detuning_m, opt)
    assert math.isclose(float((t - d - target).pow(2).mean().sqrt()), h[-1], rel_tol=1e-6)


def test_cascade_plan_matches_closed_form():
    """The near/far plan (closed form near a line, fitted quadratic in log T far from it) vs every ring in closed
    form, on the seed geometry where the comb aliases (many near rings) and a dense grid (few)."""
    for spacing, q in ((1.6e-9, 1e4), (0.2e-9, 1e5)):
        opt = optics(d=32, spacing=spacing, q=q)
        plan = CascadePlan.build(opt, -50e-12, 350e-12, near_fwhm=10.0)
        assert plan.max_fit_error < 1e-4 and 1 <= plan.k < 32
        det = torch.rand(256, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 300e-12
        t_fast, d_fast = cascade(det, opt, plan=plan)
        t_ref, d_ref = cascade(det, opt)
        assert (t_fast - t_ref).abs().max() < 2e-4 and (d_fast - d_ref).abs().max() < 2e-4
    exact = CascadePlan.build(optics(d=8, spacing=0.6e-9), 0.0, 300e-12, near_fwhm=1e6)
    assert exact.k == 8  # every ring near: the plan is the closed form


def test_cascade_plan_thru_equals_its_log_form():
    """``CascadePlan.thru`` (near rings multiplied, rows contiguous) is the model of ``log_thru(...).exp()``, for any
    leading dims; it neither changes its input nor carries state between calls (reused work buffer)."""
    gen = torch.Generator().manual_seed(4)
    for spacing, q in ((1.6e-9, 1e4), (0.2e-9, 1e5)):
        opt = optics(d=32, spacing=spacing, q=q)
        plan = CascadePlan.build(opt, -50e-12, 350e-12, near_fwhm=10.0)
        det = torch.rand(3, 70, 32, dtype=torch.float64, generator=gen) * 400e-12 - 50e-12
        fast = plan.thru(det)
        assert fast.shape == det.shape
        # atol: T = 1 − K0/(1 + p² − 2p cos φ) cancels near a critically coupled resonance (T → 0), so either form is
        # good to a few 1e-16/(1 − p)² absolute in float64 (3e-14 at Q = 1e4, 3e-12 at Q = 1e5)
        p = opt.r1 * opt.r2 * opt.a
        assert torch.allclose(fast, plan.log_thru(det).exp(), rtol=1e-10, atol=1e-14 / (1 - p) ** 2)
        one = det[:1, :1].clone()  # a single row: its transpose is a view of the input
        assert torch.allclose(plan.thru(one), plan.log_thru(one).exp(), rtol=1e-10) and torch.equal(one, det[:1, :1])
    r1, r2 = ring.design_couplings(1e4, WL, NG, R, 20.0)
    opt32 = RowOptics.build(
        32, 1.6e-9, WL, R, NEFF, NG, r1, r2, ring.round_trip_amplitude(20.0, R), dtype=torch.float32
    )
    plan32 = CascadePlan.build(opt32, -50e-12, 350e-12, near_fwhm=10.0)
    a = torch.rand(375, 32, generator=gen) * 300e-12
    b = torch.rand(375, 32, generator=gen) * 300e-12
    ta = plan32.thru(a).clone()
    tb = plan32.thru(b)
    assert torch.equal(plan32.thru(a), ta) and not torch.equal(ta, tb)
    plan64 = CascadePlan.build(optics(d=32), -50e-12, 350e-12, near_fwhm=10.0)
    assert (ta - plan64.thru(a.double())).abs().max() < 1e-4  # float32 rounding of the phases only
