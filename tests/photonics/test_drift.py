import math

import torch

from kvprism import PhotonicConfig, PhotonicEngine
from kvprism.photonics import drift, weights
from kvprism.photonics.design import ChipDesign


def test_ar1_is_stationary_and_correlated():
    """Seeded: 200k independent chains; variance stays σ² (tolerance 2 %), lag-k correlation = ρ^k (±0.01)."""
    gen = torch.Generator().manual_seed(0)
    sigma, tau = 20e-12, 50.0
    x0 = drift.stationary_draw((200_000,), sigma, gen, torch.float64)
    x1 = drift.ar1_advance(x0, 1, tau, sigma, gen)
    x10 = drift.ar1_advance(x0, 10, tau, sigma, gen)
    for x in (x1, x10):
        assert abs(float(x.std()) / sigma - 1) < 0.02
    rho = drift.ar1_rho(tau)
    assert abs(float(torch.corrcoef(torch.stack([x0, x1]))[0, 1]) - rho) < 0.01
    assert abs(float(torch.corrcoef(torch.stack([x0, x10]))[0, 1]) - rho**10) < 0.01


def test_k_steps_at_once_equal_k_single_steps_in_distribution():
    gen = torch.Generator().manual_seed(1)
    sigma, tau, k = 1.0, 20.0, 7
    x0 = torch.zeros(200_000, dtype=torch.float64)
    once = drift.ar1_advance(x0, k, tau, sigma, gen)
    step = x0
    for _ in range(k):
        step = drift.ar1_advance(step, 1, tau, sigma, gen)
    expected = sigma * math.sqrt(1 - math.exp(-2 * k / tau))
    assert abs(float(once.std()) / expected - 1) < 0.02
    assert abs(float(step.std()) / expected - 1) < 0.02


def _cfg(**kw):
    base = dict(noise=False, crosstalk=False, program_bits=0, query_bits=0, adc_bits=0, trim_sigma_m=0.0,
                rows_per_bank=256, drift_ring_sigma_m=20e-12, drift_global_sigma_m=0.0, drift_corr_time_s=0.4)  # fmt: skip
    base.update(kw)
    return PhotonicConfig.preset("seed-nominal").replace(**base)


def test_drift_moves_scores_over_decode_steps_smoothly():
    gen = torch.Generator().manual_seed(2)
    sig, q = torch.randn(1, 200, 8, generator=gen), torch.randn(1, 8, generator=gen)
    eng = PhotonicEngine(_cfg(), seed=0)
    eng.program(sig)
    s0 = eng.scores(q)
    assert torch.equal(s0, eng.scores(q))  # without advance the rings do not move
    eng.advance(1)
    s1 = eng.scores(q)
    eng.advance(200)
    s200 = eng.scores(q)
    one_step = float((s1 - s0).pow(2).mean())
    long = float((s200 - s0).pow(2).mean())
    assert 0 < one_step < 0.3 * long  # time-correlated: one step moves much less than many
    assert eng.counters["drift_steps"] == 201 and eng.counters["weight_refreshes"] == 2


def test_global_drift_is_shared_by_all_rings():
    eng = PhotonicEngine(_cfg(drift_ring_sigma_m=0.0, drift_global_sigma_m=20e-12), seed=0)
    eng.program(torch.randn(2, 30, 8))
    eng.advance(50)
    eng.scores(torch.randn(2, 8))
    assert eng.state.ring_drift.abs().max() == 0 and eng.state.global_drift_m != 0.0


def test_no_drift_means_advance_changes_nothing():
    eng = PhotonicEngine(_cfg(drift_ring_sigma_m=0.0), seed=0)
    eng.program(torch.randn(1, 30, 8))
    q = torch.randn(1, 8)
    s0 = eng.scores(q)
    eng.advance(100)
    assert torch.equal(s0, eng.scores(q))


def test_feedback_compensates_drift_present_at_programming():
    gen = torch.Generator().manual_seed(3)
    sig, q = torch.randn(1, 300, 8, generator=gen), torch.randn(1, 8, generator=gen)
    exact = (sig @ q.unsqueeze(-1)).squeeze(-1)
    err = {}
    for fb in (False, True):
        eng = PhotonicEngine(_cfg(feedback_calibration=fb, trim_sigma_m=5e-12), seed=0)
        eng.program(sig)
        err[fb] = float((eng.scores(q) - exact).pow(2).mean())
    assert err[True] < 0.01 * err[False]


def test_drift_update_steps_holds_then_samples_the_same_process():
    """With drift_update_steps = M the rings hold the last drift sample for M − 1 steps: scores and W_eff are those a
    full recompute gives for the unchanged drift state; at the M-th step the drift is advanced by all M steps at once,
    which is exactly (same draws) what the every-step engine does when it is next evaluated M steps later."""
    gen = torch.Generator().manual_seed(5)
    sig, q = torch.randn(2, 60, 16, generator=gen), torch.randn(2, 16, generator=gen)
    cfg = _cfg(crosstalk=True, drift_update_steps=4)
    held, every = PhotonicEngine(cfg, seed=0), PhotonicEngine(cfg.replace(drift_update_steps=1), seed=0)
    held.program(sig)
    every.program(sig)
    s0, w0 = held.scores(q), held.state.w.clone()
    for _ in range(3):
        held.advance(1)
        assert torch.equal(held.scores(q), s0)
    assert held.counters["weight_refreshes"] == 0 and held.counters["drift_steps"] == 3
    held.state = weights.refresh(held.design(), held.state, None, 0, None, held.generator)
    assert torch.equal(held.state.w, w0)  # recomputed from the held drift state: identical weights
    held.advance(1)
    s4 = held.scores(q)
    assert held.counters["weight_refreshes"] == 1 and not torch.equal(s4, s0)
    every.advance(4)
    assert torch.equal(every.scores(q), s4)
    # the every-step engine refreshes at every evaluated step
    for _ in range(3):
        every.advance(1)
        every.scores(q)
    assert every.counters["weight_refreshes"] == 4


def test_drift_hold_rms_matches_simulated_process():
    """``drift_hold_rms_m``: RMS of x_{t+m} − x_t over m = 0…M−1 of the AR(1) drift (Monte Carlo, 2 %); 0 for M = 1."""
    cfg = _cfg(drift_ring_sigma_m=20e-12, drift_global_sigma_m=10e-12, drift_corr_time_s=2.0)
    assert ChipDesign.from_config(cfg).drift_hold_rms_m == 0.0
    m = 10
    gen = torch.Generator().manual_seed(6)
    sigma = math.hypot(20e-12, 10e-12)  # ring and global drift add in the detuning
    x0 = drift.stationary_draw((100_000,), sigma, gen, torch.float64)
    x, sq = x0, torch.zeros_like(x0)
    for _ in range(m - 1):
        x = drift.ar1_advance(x, 1, 100.0, sigma, gen)
        sq += (x - x0) ** 2
    mc = math.sqrt(float(sq.mean()) / m)
    expected = ChipDesign.from_config(cfg.replace(drift_update_steps=m)).drift_hold_rms_m
    assert abs(mc / expected - 1) < 0.02
    assert 0.28 * sigma < expected < 0.31 * sigma  # ≈ σ √((M − 1)/τ) = 0.3 σ for M ≪ τ


def test_drift_update_steps_within_a_hold_error():
    cfg = PhotonicConfig.preset("seed-nominal")
    m = ChipDesign.from_config(cfg).drift_update_steps_within(cfg.trim_sigma_m)
    assert m > 1
    assert ChipDesign.from_config(cfg.replace(drift_update_steps=m)).drift_hold_rms_m <= cfg.trim_sigma_m
    assert ChipDesign.from_config(cfg.replace(drift_update_steps=m + 1)).drift_hold_rms_m > cfg.trim_sigma_m
    assert ChipDesign.from_config(cfg).drift_update_steps_within(0.0) == 1
    still = ChipDesign.from_config(_cfg(drift_ring_sigma_m=0.0))
    assert still.drift_update_steps_within(0.0, max_steps=50) == 50  # no drift: no hold error


def test_refresh_after_append_equals_cascade_of_current_detunings():
    """W_eff after a drift refresh is the cascade of static + drift detunings for every row, also when the row buffers
    have spare capacity after an append (several banks: the state is not one contiguous block)."""
    gen = torch.Generator().manual_seed(7)
    eng = PhotonicEngine(_cfg(crosstalk=True), seed=0)
    eng.program(torch.randn(3, 40, 16, generator=gen))
    eng.append(torch.randn(3, 5, 16, generator=gen) * 0.1)
    assert eng.state.buffers["w"].shape[1] > eng.n_rows  # spare capacity
    eng.advance(3)
    eng.scores(torch.randn(3, 16, generator=gen))
    assert eng.counters["weight_refreshes"] == 1
    s = eng.state
    det = (s.static + s.ring_drift + s.global_drift_m).reshape(-1, 16)
    thru, drop = (x.view(s.w.shape) for x in weights.chip_fields(eng.design(), det, weights.extras(s, None, 0, None)))
    torch.testing.assert_close(s.w, thru - drop, rtol=0, atol=1e-6)
    assert torch.allclose(s.transmit, (thru + drop).mean(-1))
