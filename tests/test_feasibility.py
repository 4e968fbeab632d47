import math

from kvprism import PhotonicConfig, PhotonicEngine
from kvprism.photonics import feasibility
from kvprism.photonics.design import ChipDesign
from kvprism.photonics.feasibility import report


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
    rep = feasibility(PhotonicConfig.preset("tfln-literature"), mc_rows=64, mc_queries=16)
    assert rep.comb_span_m < rep.fsr_m and not any("comb span" in v for v in rep.violations)
    assert rep.worst_leakage_db < -20.0
    # 9-bit closed-loop programming reaches > 5 bit once the probes can see the rows: at 5 GHz behind a 1×8192
    # splitter the in-situ readings are noise (the weights are not calibrated at all)
    assert rep.weight_bits < 2.0
    small = PhotonicConfig.preset("tfln-literature").replace(
        detection_bandwidth_hz=1e6, rows_per_bank=256, n_banks=1, laser_line_dbm=6.0
    )
    assert feasibility(small, mc_rows=64, mc_queries=16).weight_bits > 5.0


def test_report_numbers_respond_to_the_configuration():
    base = PhotonicConfig.preset("tfln-literature")
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
    base = PhotonicConfig.preset("tfln-literature").replace(drift_ring_sigma_m=20e-12)
    every = feasibility(base, mc_rows=32, mc_queries=8)
    held = feasibility(base.replace(drift_update_steps=7), mc_rows=32, mc_queries=8)
    assert every.drift_update_steps == 1 and every.drift_hold_rms_m == 0.0
    assert held.drift_hold_rms_m == ChipDesign.from_config(base.replace(drift_update_steps=7)).drift_hold_rms_m > 1e-12
    row = next(v for q, v, _ in held.rows() if q.startswith("drift sampled"))
    assert row.startswith("7 decode steps") and f"{held.drift_hold_rms_m * 1e12:.2f} pm" in row


def test_tfln_feasible_passes_every_check_and_says_why_the_others_fail():
    rep = feasibility(PhotonicConfig.preset("tfln-feasible"))
    assert rep.feasible, rep.violations
    assert rep.recall_at_k >= 0.9 and rep.weight_bits >= 4.0 and rep.score_enob_bits >= 4.0
    lit = feasibility(PhotonicConfig.preset("tfln-literature"), mc_rows=64, mc_queries=16)
    assert any("leakage" in v for v in lit.violations) and any("chip limit" in v for v in lit.violations)


def test_the_32_line_bank_passes_every_check_at_the_default_signature_width():
    """tfln-feasible-32: 32 lines at 0.4 nm on 12 µm rings (FSR 14.35 nm > the 12.8 nm span), leakage below the
    limit, every other check as tfln-feasible; with 16 lines on its 20 µm rings the span would alias."""
    cfg = PhotonicConfig.preset("tfln-feasible-32")
    rep = feasibility(cfg, mc_rows=128, mc_queries=32)
    assert cfg.n_lines == 32 and rep.feasible, rep.violations
    assert rep.comb_span_m < rep.fsr_m and rep.worst_leakage_db < rep.leakage_limit_db
    wide = feasibility(PhotonicConfig.preset("tfln-feasible").replace(n_lines=32), mc_rows=64, mc_queries=8)
    assert any("FSR" in v for v in wide.violations)


def test_in_situ_calibration_of_time_shared_rewrites_must_fit_the_decode_step():
    """tfln-feasible time-shares 4 banks: timed by a 7B model at 20 tokens/s every round rewrites them, and
    recalibrating each rewrite in situ (2·iters + 1 probe readings per line, averaged) takes seconds per step."""
    from kvprism.photonics.design import decode_timing

    cfg = PhotonicConfig.preset("tfln-feasible")
    timing = decode_timing(cfg, n_layers=28, kv_heads=4, tokens_per_s=20.0)
    assert timing.shared
    rep = feasibility(cfg, timing=timing, mc_rows=64, mc_queries=8)
    (msg,) = [v for v in rep.violations if "in-situ calibration of every rewrite" in v]
    probes = (2 * cfg.calibration_iters + 1) * cfg.n_lines * cfg.calibration_probe_averages
    assert f"{probes:,} probes" in msg
    open_loop = feasibility(cfg.replace(feedback_calibration=False, code_refresh="hold"), timing=timing, mc_rows=64,
                            mc_queries=8)  # fmt: skip
    assert not any("in-situ calibration" in v for v in open_loop.violations)
