import math

import pytest

from kvprism import PhotonicConfig, PhotonicEngine
from kvprism.photonics import feasibility
from kvprism.photonics.design import ChipDesign
from kvprism.photonics.feasibility import report
from tests.support.earlier_design import earlier_design


def test_seed_nominal_flags_comb_span_vs_fsr():
    rep = report(PhotonicEngine(PhotonicConfig.preset("seed-nominal")), mc_rows=64, mc_queries=16)
    assert rep.d == 32 and abs(rep.comb_span_m - 51.2e-9) < 1e-15
    assert 8.2e-9 < rep.fsr_m < 8.4e-9
    span = [v for v in rep.violations if "comb span" in v]
    assert len(span) == 1 and "51.20 nm" in span[0] and "FSR 8.31 nm" in span[0]
    # the aliasing is physics in the cascade model: a ring's other order sits on a foreign line
    assert rep.worst_leakage_db > -3.0 and any("leakage" in v for v in rep.violations)
    assert not rep.feasible


def test_dense_grid_fits_one_fsr():
    rep = feasibility(earlier_design("tfln-literature"), mc_rows=64, mc_queries=16)
    assert rep.comb_span_m < rep.fsr_m and not any("comb span" in v for v in rep.violations)
    assert rep.worst_leakage_db < -20.0
    # probes have their own, noise-limited time (not the 5 GHz query symbol): behind the 1×8192 splitter each probe
    # sample integrates for µs, and the weights still calibrate to the required precision
    assert rep.design.probe_sample_time_s > 1e-6 and rep.weight_bits > 4.0
    small = earlier_design("tfln-literature").replace(
        detection_bandwidth_hz=1e6, rows_per_bank=256, n_banks=1, laser_line_dbm=6.0
    )
    near = feasibility(small, mc_rows=64, mc_queries=16)
    assert near.weight_bits > 4.0 and near.design.probe_sample_time_s < rep.design.probe_sample_time_s / 100


def test_report_numbers_respond_to_the_configuration():
    base = earlier_design("tfln-literature")
    a = feasibility(base.replace(rows_per_bank=256), mc_rows=64, mc_queries=16)
    b = feasibility(base.replace(rows_per_bank=65536), mc_rows=64, mc_queries=16)
    assert b.received_line_dbm < a.received_line_dbm - 20  # 1×N splitter: 10·log10(256) dB more loss
    assert b.score_snr_db < a.score_snr_db
    low_v = feasibility(base.replace(v_max_v=2.0), mc_rows=64, mc_queries=16)
    assert any("V_max is 2 V" in v for v in low_v.violations)
    assert low_v.weight_range < a.weight_range
    small = feasibility(base.replace(rows_per_bank=16, n_banks=2), mc_rows=64, mc_queries=16)
    assert small.mrr_count == 16 * 2 * 32 and not any("chip limit" in v for v in small.violations)


def test_ideal_has_perfect_scores():
    rep = feasibility(PhotonicConfig.preset("ideal"), mc_rows=32, mc_queries=8)
    assert math.isinf(rep.score_snr_db) and math.isinf(rep.weight_bits)


def test_report_states_the_drift_sampling():
    base = earlier_design("tfln-literature").replace(drift_model="fixed", drift_ring_sigma_m=20e-12)
    every = feasibility(base, mc_rows=32, mc_queries=8)
    held = feasibility(base.replace(drift_update_steps=7), mc_rows=32, mc_queries=8)
    assert every.drift_update_steps == 1 and every.drift_hold_rms_m == 0.0
    assert held.drift_hold_rms_m == ChipDesign.from_config(base.replace(drift_update_steps=7)).drift_hold_rms_m > 1e-12
    row = next(v for q, v, _ in held.rows() if q.startswith("drift sampled"))
    assert row.startswith("7 decode steps") and f"{held.drift_hold_rms_m * 1e12:.2f} pm" in row


QWEN = dict(n_layers=28, kv_heads=4, model="qwen2.5-7b")


def test_a_preset_that_passes_untimed_but_fails_timed_is_never_reported_feasible():
    """Untimed, a report is never feasible (it only 'passes the untimed checks'); timed at 128K tokens and 200
    tokens/s the time-shared bank's rewrites and calibrations overrun the selection budget."""
    from kvprism.photonics.design import decode_timing

    cfg = earlier_design("tfln-timeshared").replace(trim_max_chip_power_w=30.0)  # the heater cap aside
    untimed = feasibility(cfg, mc_rows=64, mc_queries=16)
    assert untimed.passes_untimed, untimed.violations
    assert not untimed.feasible and not untimed.timed and "not a feasibility verdict" in untimed.verdict()
    slow = decode_timing(cfg, tokens_per_s=20.0, context=4096, **QWEN)
    ok = feasibility(cfg, timing=slow, mc_rows=64, mc_queries=16)
    assert ok.feasible and ok.verdict().startswith("feasible at qwen2.5-7b, 4,096 tokens"), ok.violations
    fast = decode_timing(cfg, tokens_per_s=200.0, context=131072, **QWEN)
    assert not fast.fits and fast.needed_s > fast.budget_s
    bad = feasibility(cfg, timing=fast, mc_rows=64, mc_queries=16)
    assert not bad.feasible and bad.verdict().startswith("NOT feasible")
    assert any("time line does not fit decode" in v for v in bad.violations)


def test_heater_power_cap_is_enforced_and_one_time_trim_holds_none():
    cfg = earlier_design("tfln-timeshared")
    rep = feasibility(cfg, mc_rows=64, mc_queries=8)
    ds = rep.design
    per_ring = min(3 * cfg.fab_sigma_m, ds.fsr_m / 2) / (ds.fsr_m / cfg.trim_power_per_fsr_w)  # hand count
    assert rep.trim.heaters == ds.mrr_count == 8192
    assert rep.trim.chip_power_w == pytest.approx(8192 * per_ring, rel=1e-12)  # 21.3 W
    (msg,) = [v for v in rep.violations if "trim heaters" in v]
    assert "8,192 trim heaters hold 21.3 W" in msg and "5 W" in msg
    assert not any("trim heaters" in v for v in feasibility(cfg.replace(trim_max_chip_power_w=22.0), mc_rows=64,
                                                             mc_queries=8).violations)  # fmt: skip
    one = feasibility(cfg.replace(trim_mechanism="one-time", one_time_trim_range_m=4e-9), mc_rows=64, mc_queries=8)
    assert one.trim.heaters == 0 and one.trim.chip_power_w == 0.0 and not any("heater" in v for v in one.violations)


def test_the_32_line_bank_fits_its_comb_in_one_fsr():
    """tfln-timeshared-32: 32 lines at 0.4 nm on 12 µm rings (FSR 14.35 nm > the 12.8 nm span), leakage below the
    limit; with 16 lines' 20 µm rings the span would alias."""
    cfg = earlier_design("tfln-timeshared-32")
    rep = feasibility(cfg, mc_rows=64, mc_queries=8)
    assert cfg.n_lines == 32 and not rep.feasible
    assert rep.comb_span_m < rep.fsr_m and rep.worst_leakage_db < rep.leakage_limit_db
    wide = feasibility(earlier_design("tfln-timeshared").replace(n_lines=32), mc_rows=64, mc_queries=8)
    assert any("FSR" in v for v in wide.violations)
    lit = feasibility(earlier_design("tfln-literature"), mc_rows=64, mc_queries=16)
    assert any("leakage" in v for v in lit.violations) and any("chip limit" in v for v in lit.violations)


def test_in_situ_calibration_of_time_shared_rewrites_shares_the_selection_budget():
    """Rewrites and in-situ calibrations of the 4 time-shared banks take their place on the banks' time line before
    the queries; their sum is compared with the selection budget (selection_time_fraction of the step)."""
    from kvprism.photonics.design import decode_timing

    cfg = earlier_design("tfln-timeshared")
    t = decode_timing(cfg, tokens_per_s=20.0, context=32768, **QWEN)
    ds = ChipDesign.from_config(cfg)
    assert t.shared and t.rounds_per_layer == 8  # 4 KV heads × 8 slots of 128 rows on 4 banks
    assert t.calibration_s == pytest.approx(28 * 8 * ds.calibration_time_s, rel=1e-12)
    assert t.needed_s == pytest.approx(t.budget_s, rel=1e-9) and t.budget_s == pytest.approx(0.1 / 20.0)
    rep = feasibility(cfg, timing=t, mc_rows=64, mc_queries=8)
    row = next(v for q, v, _ in rep.rows() if q.startswith("time line per step"))
    assert row.endswith(f"= {t.needed_s * 1e3:.3g} ms")
    open_loop = decode_timing(cfg.replace(feedback_calibration=False, code_refresh="hold"), tokens_per_s=20.0,
                              context=32768, **QWEN)  # fmt: skip
    assert open_loop.calibration_s == 0.0 and open_loop.query_s > t.query_s


def test_scores_uncorrelated_with_the_exact_ones_give_minus_infinite_snr_not_a_crash(monkeypatch):
    """A chip whose scores carry no signal (fitted gain 0) is reported with SNR -inf dB and fails its ENOB."""
    import torch

    monkeypatch.setattr(PhotonicEngine, "scores", lambda self, q: torch.zeros(*q.shape[:-1], self.n_rows))
    rep = feasibility(PhotonicConfig.preset("seed-nominal"), mc_rows=32, mc_queries=8)
    assert rep.score_snr_db == -math.inf and rep.score_enob_bits == -math.inf
    assert any("score ENOB" in v for v in rep.violations)
