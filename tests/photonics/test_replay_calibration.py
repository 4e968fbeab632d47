"""Replayed drive codes (``rewrite_calibration = "replay"``): rewrites of time-shared banks take no probes, the
codes are recalibrated round-robin in the chip's idle time, and the drift since their calibration is programming
error (``calibration_age_s``)."""

import math

import pytest
import torch

from kvprism import PhotonicConfig, PhotonicEngine
from kvprism.config import ConfigError
from kvprism.photonics import drift, feasibility
from kvprism.photonics.design import calibration_probes, decode_timing, timed_by_decode

FEAS = PhotonicConfig.preset("tfln-timeshared")
REPLAY = FEAS.replace(rewrite_calibration="replay")


def _sig(rows: int = 32, d: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(2, rows, d, generator=torch.Generator().manual_seed(seed))


def _programming_error(cfg: PhotonicConfig, sig: torch.Tensor) -> float:
    eng = PhotonicEngine(cfg, seed=3)
    eng.program(sig)
    wr = eng.weight_range(sig.shape[-1])
    target = sig * (wr / sig.abs().amax(dim=(1, 2), keepdim=True))
    return float((eng.weights_as_programmed() - target).pow(2).mean().sqrt())


def test_replay_needs_in_situ_calibration():
    with pytest.raises(ConfigError, match="rewrite_calibration"):
        FEAS.replace(feedback_calibration=False, code_refresh="hold", rewrite_calibration="replay")


def test_fresh_codes_program_exactly_as_a_recalibrated_rewrite():
    """At age 0 the engine draws nothing more: the same weights, bit for bit."""
    sig = _sig()
    a, b = PhotonicEngine(FEAS, seed=1), PhotonicEngine(REPLAY, seed=1)
    a.program(sig)
    b.program(sig)
    assert torch.equal(a.weights_as_programmed(), b.weights_as_programmed())


def test_old_codes_carry_the_drift_since_their_calibration():
    """The drift the calibration compensated is the AR(1) state ``age`` before now: its difference from the drift
    now has variance 2σ²(1 − ρ^k) per component (ring, global); the programming error grows with the age and
    vanishes without drift."""
    cfg = REPLAY.replace(drift_model="fixed", drift_global_sigma_m=0.0, drift_ring_sigma_m=2e-12)
    eng = PhotonicEngine(cfg.replace(calibration_age_s=cfg.drift_corr_time_s), seed=0)
    eng.program(torch.randn(1, 512, 16, generator=torch.Generator().manual_seed(0)))
    banks = torch.arange(1)
    diff = drift.at_calibration(eng.design(), eng.state, banks, 0, 512, eng.generator) - drift.now(
        eng.state, banks, 0, 512
    )
    expect = cfg.drift_ring_sigma_m * math.sqrt(2.0 * (1.0 - math.exp(-1.0)))
    assert float(diff.std()) == pytest.approx(expect, rel=0.05)

    sig = _sig()
    errs = [_programming_error(REPLAY.replace(calibration_age_s=age), sig) for age in (0.0, 0.2, 20.0)]
    assert errs[0] < errs[1] < errs[2]
    still = REPLAY.replace(drift_model="fixed", drift_ring_sigma_m=0.0, drift_global_sigma_m=0.0)
    assert _programming_error(still.replace(calibration_age_s=20.0), sig) == pytest.approx(
        _programming_error(still, sig), rel=1e-6
    )


def test_replayed_rewrites_take_no_probes_but_their_codes_age():
    """tfln-timeshared time-shares 4 banks among a 7B model's 112 (layer, KV head) banks: recalibrating every
    rewrite puts the probes on the selection's time line; replaying stored codes puts none there, and each physical
    bank recalibrates its 28 contents round-robin (write + probes) in the idle 90 % of the steps."""
    from kvprism.photonics.design import ChipDesign

    kw = dict(n_layers=28, kv_heads=4, tokens_per_s=20.0, context=4096, block_size=32)
    t_re = decode_timing(FEAS, **kw)
    t_rp = decode_timing(REPLAY, **kw)
    ds = ChipDesign.from_config(FEAS)
    cal = ds.calibration_time_s  # noise-limited probes: their own symbol, not the query's
    assert cal == pytest.approx(calibration_probes(FEAS, 16) * ds.probe_sample_time_s + 9 * FEAS.drive_settling_s)
    assert t_re.rewrite_calibration_s == pytest.approx(cal * 28) and t_re.calibration_age_s == 0.0
    assert t_rp.rewrite_calibration_s == 0.0 and t_rp.query_s > t_re.query_s
    write = 128 * 16 / FEAS.program_rate_rings_per_s + FEAS.drive_settling_s + ds.ring_settling_s(FEAS.adc_bits)
    period = 28 * (cal + write) / (1.0 - FEAS.selection_time_fraction)
    assert t_rp.recalibration_period_s == pytest.approx(period, rel=1e-12)
    assert t_rp.calibration_age_s == pytest.approx(period / 2)
    assert timed_by_decode(REPLAY, t_rp).calibration_age_s == pytest.approx(period / 2)
    assert timed_by_decode(FEAS, t_re).calibration_age_s == 0.0
    # resident banks (one content each) recalibrate in one pass, without rewrites
    resident = REPLAY.replace(n_banks=112)
    t_res = decode_timing(resident, **kw)
    assert not t_res.shared and t_res.recalibration_period_s == pytest.approx(cal / 0.9, rel=1e-12)

    rep = feasibility(REPLAY, timing=t_rp, mc_rows=64, mc_queries=8)
    assert not any("time line" in v for v in rep.violations)
    row = next(v for q, v, _ in rep.rows() if q.startswith("round-robin recalibration"))
    assert row == f"{period:.3g} s / {period / 2:.3g} s"
    # codes much older than that (a slow background) lose precision to the drift
    old = feasibility(REPLAY.replace(calibration_age_s=20.0), mc_rows=64, mc_queries=8)
    assert old.weight_bits < rep.weight_bits
