"""ChipDesign (kvprism.photonics.design): purity, agreement with the feasibility report and the engine, detection
timing (integrate-and-dump), optical power caps, trim, area, leakage threshold, shared banks."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kvprism.energy import EnergyConfig, bank_sharing, chip_query, decode_step, model_shape, required_laser
from kvprism.energy.compare import ring_inventory
from kvprism.errors import KvprismError
from kvprism.photonics import PhotonicConfig, PhotonicEngine, feasibility, link
from kvprism.photonics.design import (
    ChipDesign,
    decode_timing,
    expected_abs_max,
    leakage_limit_db,
    score_snr_db,
    timed_by_decode,
)
from kvprism.photonics.feasibility import trim_check
from tests.support.earlier_design import earlier_design

SEED = PhotonicConfig.preset("seed-nominal")
TFLN = earlier_design("tfln-literature")
QWEN = model_shape("qwen2.5-7b")


def test_design_is_pure_and_builds_no_engine(monkeypatch):
    state = torch.get_rng_state()

    def no_engine(*args, **kwargs):
        raise AssertionError("a design question built a PhotonicEngine")

    monkeypatch.setattr(PhotonicEngine, "__init__", no_engine)
    a, b = ChipDesign.from_config(TFLN, 32), ChipDesign.from_config(TFLN, 32)
    assert a == b
    # the energy model asks only the design
    required_laser(SEED, 32)
    chip_query(SEED, 4096, 32, 8)
    decode_step(SEED, EnergyConfig(), QWEN, 1 << 16)
    ring_inventory(SEED, EnergyConfig(), QWEN, 1 << 16)
    assert torch.equal(torch.get_rng_state(), state)  # nothing drawn from the global generator


@pytest.mark.parametrize("preset", ["seed-nominal", "tfln-literature"])
def test_design_equals_feasibility_and_engine(preset):
    cfg = PhotonicConfig.preset(preset)
    ds = ChipDesign.from_config(cfg, 32)
    rep = feasibility(cfg, mc_rows=32, mc_queries=4)
    assert rep.design == ds
    assert (rep.fsr_m, rep.fwhm_m, rep.weight_range, rep.worst_leakage_db) == (
        ds.fsr_m, ds.fwhm_m, ds.weight_range, ds.worst_leakage_db,
    )  # fmt: skip
    assert rep.link_loss_db == ds.link.total_loss_db and rep.received_line_dbm == ds.link.row_line_dbm
    assert rep.area_m2 == ds.photonic_area_m2 and rep.mrr_count == ds.mrr_count
    eng = PhotonicEngine(cfg, seed=0)
    assert ds.weight_range == pytest.approx(eng.weight_range(32), rel=1e-6)  # engine optics in float32
    assert ds.detuning_range_m == pytest.approx(eng.detuning_range_m(), rel=1e-12)


def test_ring_quantities():
    ds = ChipDesign.from_config(TFLN, 32)
    assert ds.photon_lifetime_s == pytest.approx(1e5 * 1.55e-6 / (2 * math.pi * 299_792_458.0), rel=1e-9)
    assert 82e-12 < ds.photon_lifetime_s < 83e-12  # PHYSICS §11: Q = 1e5 → ≈ 82 ps
    assert ds.finesse == pytest.approx(ds.fsr_m / ds.fwhm_m, rel=1e-9)
    assert ds.q_loaded == pytest.approx(1e5, rel=1e-9)


@settings(max_examples=25, deadline=None)
@given(q=st.floats(5e3, 2e5), loss=st.floats(0.0, 30.0))
def test_buildup_is_finesse_over_pi(q, loss):
    """Circulating power on resonance (1 − r1²)/(1 − r1 r2 a)² ≈ finesse/π for high finesse (PHYSICS §11)."""
    ds = ChipDesign.from_config(SEED.replace(q_loaded=q, loss_db_per_m=loss, crosstalk=False), 4)
    assert ds.buildup == pytest.approx(ds.finesse / math.pi, rel=3.0 / ds.finesse)  # ratio 1 + O(1/F)
    # and it is the field build-up of the 2×2 coupler recursion, summed directly
    r1, r2, a = ds.r1, ds.r2, ds.a
    n = torch.arange(200_000, dtype=torch.float64)
    field = math.sqrt(1 - r1 * r1) * ((r1 * r2 * a) ** n).sum()
    assert float(field**2) == pytest.approx(ds.buildup, rel=1e-6)


@settings(max_examples=20, deadline=None)
@given(t_int=st.floats(1e-10, 1e-4))
def test_integrate_and_dump_noise_bandwidth(t_int):
    """The equivalent noise bandwidth of integrate-and-dump over T (|H(f)|² = sinc²(fT)) is 1/(2T), integrated here
    numerically; the design and the decode timing use exactly that."""
    f = torch.linspace(0.0, 200.0 / t_int, 400_001, dtype=torch.float64)  # tail beyond: ≈ 1/(π² 200 T)
    h2 = torch.special.sinc(f * t_int) ** 2
    enbw = float(torch.trapezoid(h2, f))
    assert enbw == pytest.approx(1.0 / (2.0 * t_int), rel=2e-3)
    ds = ChipDesign.from_config(SEED.replace(detection_bandwidth_hz=1.0 / (2.0 * t_int)), 32)
    assert ds.integration_time_s == pytest.approx(t_int, rel=1e-12)
    assert ds.adc_rate_hz == pytest.approx(1.0 / t_int, rel=1e-12)


def test_decode_timing_from_model_shape():
    t = decode_timing(SEED, n_layers=QWEN.n_layers, kv_heads=QWEN.kv_heads, tokens_per_s=20.0, context=4096,
                      block_size=32)  # fmt: skip
    assert not t.shared and t.rounds_per_layer == 1 and t.reprogram_s == 0.0  # 28 × 4 = 112 banks resident
    assert t.budget_s == pytest.approx(0.1 * 0.05) and t.fits and t.rows_per_logical_bank == 128
    assert t.time_per_selection_s == pytest.approx(0.1 * 0.05 / 28, rel=1e-12)  # 179 µs
    assert t.integration_time_s == pytest.approx(0.5 * t.time_per_selection_s, rel=1e-12)
    assert t.noise_bandwidth_hz == pytest.approx(1.0 / (2.0 * t.integration_time_s), rel=1e-12)
    assert t.adc_rate_hz == pytest.approx(1.0 / t.integration_time_s, rel=1e-12)
    timed = timed_by_decode(SEED, t)
    assert timed.detection_bandwidth_hz == t.noise_bandwidth_hz
    # 5 GHz → 5.6 kHz: +59 dB of noise bandwidth; the score-referred SNR rises accordingly
    assert score_snr_db(timed, ChipDesign.from_config(timed)) > score_snr_db(SEED, ChipDesign.from_config(SEED)) + 40
    # two sequences: 224 logical banks on 112 physical ones → rewritten every step, less time per selection
    two = decode_timing(SEED, n_layers=28, kv_heads=4, tokens_per_s=20.0, context=4096, block_size=32, batch=2)
    settle = SEED.drive_settling_s + ChipDesign.from_config(SEED).ring_settling_s(8)
    assert two.shared and two.rounds_per_layer == 1
    assert two.write_s == pytest.approx(28 * (8 * 128 * 32 / SEED.program_rate_rings_per_s + settle), rel=1e-12)
    assert two.query_s == pytest.approx(two.budget_s - two.write_s, rel=1e-9)
    dual = decode_timing(SEED.replace(encoding="dual-rail"), n_layers=28, kv_heads=4, tokens_per_s=20.0, context=4096)
    assert dual.integration_time_s == pytest.approx(0.5 * t.integration_time_s, rel=1e-12)
    slow = decode_timing(SEED.replace(program_rate_rings_per_s=1e6), n_layers=28, kv_heads=4, tokens_per_s=20,
                         context=4096, block_size=32, batch=2)  # fmt: skip
    assert not slow.fits and slow.needed_s > slow.budget_s and "> the selection budget" in slow.describe()
    with pytest.raises(KvprismError, match="tokens_per_s"):
        decode_timing(SEED, n_layers=28, kv_heads=4, tokens_per_s=0.0, context=4096)
    with pytest.raises(KvprismError, match="context"):
        decode_timing(SEED, n_layers=28, kv_heads=4, tokens_per_s=20.0, context=0)


TS = earlier_design("tfln-timeshared")


def test_rounds_and_work_scale_with_context():
    """Rows per bank = context / block size; a logical bank spans ⌈rows / rows_per_bank⌉ physical banks, so rounds,
    rewrites and calibrations per step grow with the context (×8 from 4K to 32K) while the budget does not."""
    kw = dict(n_layers=28, kv_heads=4, tokens_per_s=20.0, block_size=32)
    t4, t32, t128 = (decode_timing(TS, context=c, **kw) for c in (4096, 32768, 131072))
    assert (t4.rows_per_logical_bank, t32.rows_per_logical_bank, t128.rows_per_logical_bank) == (128, 1024, 4096)
    assert (t4.slots, t32.slots, t128.slots) == (1, 8, 32)
    assert (t4.rounds_per_layer, t32.rounds_per_layer, t128.rounds_per_layer) == (1, 8, 32)  # 4 heads on 4 banks
    assert t32.calibration_s == pytest.approx(8 * t4.calibration_s, rel=1e-12)
    assert t128.write_s > t32.write_s > t4.write_s > 0
    assert t4.budget_s == t32.budget_s == t128.budget_s
    assert t32.integration_time_s < t4.integration_time_s  # less of the budget is left for the queries


def test_probe_time_is_noise_limited_and_independent_of_the_query_rate():
    """A calibration probe gets the SNR of one weight reading (noise-limited, floored by the ring's settling and one
    ADC conversion), not the query's symbol: the same at 20 and 200 tokens/s and at any detection bandwidth."""
    ds = ChipDesign.from_config(TS)
    kw = dict(n_layers=28, kv_heads=4, context=32768, block_size=32)
    a, b = decode_timing(TS, tokens_per_s=20.0, **kw), decode_timing(TS, tokens_per_s=200.0, **kw)
    assert a.probe_sample_time_s == b.probe_sample_time_s == ds.probe_sample_time_s
    assert a.calibration_time_s == b.calibration_time_s and a.integration_time_s != b.integration_time_s
    other = ChipDesign.from_config(TS.replace(detection_bandwidth_hz=1e9))
    assert other.probe_sample_time_s == ds.probe_sample_time_s
    # hand count of the noise-limited time: σ_w² per sample = S·Δf, Δf = 1/(2T), mean of n samples = target²
    c = TS
    p = ds.link.row_line_w
    n_det = 2 * 1.602176634e-19 * (p + 2 * c.dark_current_a) + c.tia_noise_a_per_rthz**2 + 2 * c.nep_w_per_rthz**2
    per_hz = n_det / p**2 + 10 ** (c.rin_db_per_hz / 10) * ds.weight_range**2  # R = 1 A/W
    target = 2 * ds.weight_range / 2 ** (c.required_weight_bits + 1) / 12**0.5
    assert ds.probe_noise_time_s == pytest.approx(per_hz / (2 * c.calibration_probe_averages * target**2), rel=1e-9)
    assert ds.probe_floor_s == pytest.approx(ds.photon_lifetime_s * 10 * math.log(2), rel=1e-12)  # 10-bit ADC
    readings = 2 * c.calibration_iters + 1
    assert ds.calibration_time_s == pytest.approx(
        readings * c.drive_settling_s + readings * 16 * c.calibration_probe_averages * ds.probe_sample_time_s
    )
    # a weaker row needs longer probes (noise-limited), a stronger one hits the floor
    dim = ChipDesign.from_config(TS.replace(laser_line_dbm=-30.0))
    assert dim.probe_noise_time_s > dim.probe_floor_s and dim.probe_sample_time_s == dim.probe_noise_time_s


def test_symbol_shorter_than_photon_lifetime_is_flagged():
    fast = feasibility(TFLN.replace(detection_bandwidth_hz=1e10), mc_rows=32, mc_queries=4)  # 50 ps < 82 ps
    assert any("photon lifetime" in v for v in fast.violations)
    ok = feasibility(TFLN.replace(detection_bandwidth_hz=1e9), mc_rows=32, mc_queries=4)
    assert not any("photon lifetime" in v for v in ok.violations)
    assert any("ADC conversion" in v for v in fast.violations)  # 2·10 GHz symbols > 10 GS/s


@settings(max_examples=30, deadline=None)
@given(dbm=st.floats(-30.0, 30.0), rows=st.sampled_from([1, 16, 1024, 8192]))
def test_each_power_cap_is_reached_at_its_laser_limit(dbm, rows):
    cfg = TFLN.replace(laser_line_dbm=dbm, rows_per_bank=rows)
    ds = ChipDesign.from_config(cfg, 32)
    for lim in ds.power_limits:
        if link.w_to_dbm(lim.max_laser_line_w) > 40.0:  # beyond laser_line_dbm's allowed range
            continue
        at_limit = ChipDesign.from_config(cfg.replace(laser_line_dbm=link.w_to_dbm(lim.max_laser_line_w)), 32)
        same = next(x for x in at_limit.power_limits if x.name == lim.name)
        assert same.value == pytest.approx(lim.cap, rel=1e-9)
        assert lim.exceeded == (link.dbm_to_w(dbm) > lim.max_laser_line_w * (1 + 1e-12))
    assert ds.laser_cap_w == min(x.max_laser_line_w for x in ds.power_limits)


def test_power_caps_are_flagged():
    rep = feasibility(SEED, mc_rows=32, mc_queries=4)  # 13 dBm × 32 lines: 20 mW per line, 452 mW in one guide
    assert any("comb power per line is 20 mW" in v for v in rep.violations)
    assert any("input waveguide power" in v and "452 mW" in v for v in rep.violations)
    low = feasibility(SEED.replace(laser_line_dbm=0.0), mc_rows=32, mc_queries=4)
    assert not any("above the cap" in v for v in low.violations)
    pd = feasibility(SEED.replace(laser_line_dbm=0.0, pd_saturation_current_a=1e-9), mc_rows=32, mc_queries=4)
    assert any("photocurrent per photodiode" in v for v in pd.violations)
    ring = feasibility(SEED.replace(laser_line_dbm=0.0, rows_per_bank=1, ring_max_circulating_w=1e-6), mc_rows=8,
                       mc_queries=4)  # fmt: skip
    assert any("ring circulating power" in v for v in ring.violations)


@settings(max_examples=20, deadline=None)
@given(
    rows=st.sampled_from([16, 256, 4096, 65536]),
    bw=st.floats(1e3, 1e10),
    enob=st.floats(0.0, 5.0),
    wg_cap=st.floats(1e-4, 1.0),
    dual=st.booleans(),
)
def test_required_laser_never_above_the_caps(rows, bw, enob, wg_cap, dual):
    cfg = SEED.replace(rows_per_bank=rows, detection_bandwidth_hz=bw, waveguide_max_power_w=wg_cap,
                       encoding="dual-rail" if dual else "offset")  # fmt: skip
    try:
        las = required_laser(cfg, 32, target_enob=enob)
    except KvprismError as exc:  # only when RIN caps the SNR below the target
        assert "RIN ceiling" in str(exc)
        return
    cap = ChipDesign.from_config(cfg, 32).laser_cap_w
    assert las.laser_line_w <= cap * (1 + 1e-12) and las.cap_laser_line_w == cap
    assert las.feasible == (las.achieved_snr_db >= las.target_snr_db - 1e-6 and not las.reason)


def test_area_counts_pd_pairs_mzms_tias_and_adcs():
    ds = ChipDesign.from_config(SEED, 32)
    rows = SEED.rows_per_bank * SEED.n_banks
    assert ds.ring_area_m2 == pytest.approx(rows * 32 * 50e-6**2, rel=1e-12)
    assert ds.photonic_area_m2 == pytest.approx(
        ds.ring_area_m2 + rows * SEED.pd_pair_area_m2 + SEED.n_banks * 32 * SEED.mzm_area_m2, rel=1e-12
    )
    drivers = rows * 32 * SEED.ring_driver_area_m2  # one ±V_max drive channel per ring
    assert ds.electronic_area_m2 == pytest.approx(rows * (SEED.tia_area_m2 + SEED.adc_area_m2) + drivers, rel=1e-12)
    bigger = ChipDesign.from_config(SEED.replace(pd_pair_area_m2=2 * SEED.pd_pair_area_m2), 32)
    assert bigger.photonic_area_m2 - ds.photonic_area_m2 == pytest.approx(rows * SEED.pd_pair_area_m2, rel=1e-9)
    small = feasibility(SEED.replace(rows_per_bank=16, n_banks=2, tia_area_m2=1e-3), mc_rows=16, mc_queries=4)
    assert any("TIAs and ADCs" in v for v in small.violations)  # 32 TIAs of 1000 mm² each
    inv = ring_inventory(SEED, EnergyConfig(), QWEN, 1 << 17)
    assert inv["electronic_area_needed_m2"] == pytest.approx(
        inv["rows_needed"] * 1.25e-8 + inv["mrr_needed"] * SEED.ring_driver_area_m2, rel=1e-12
    )
    # query MZMs: one set of d per KV head (layers run in turn and share them), not one per (layer, KV head)
    assert inv["mzm_area_needed_m2"] == pytest.approx(QWEN.kv_heads * 32 * SEED.mzm_area_m2, rel=1e-12)
    assert inv["photonic_area_needed_m2"] > inv["area_needed_m2"]


def test_shared_bank_reprogramming_scales_with_logical_banks():
    ecfg = EnergyConfig()
    ctx = 1 << 17  # 2048 blocks: 112 logical banks × 2048 rows fit the 112 × 8192 physical rows (resident)
    one = decode_step(SEED, ecfg, QWEN, ctx)
    resident = bank_sharing(SEED, ecfg, QWEN, one)
    assert not resident["shared"] and resident["reprogram_bytes"] == 0 and resident["reprogram_energy_j"] == 0
    out = {}
    for batch in (5, 10):  # 560 and 1120 logical banks of 2048 rows on 917 504 physical rows
        e = ecfg.replace(batch=batch)
        step = decode_step(SEED, e, QWEN, ctx)
        out[batch] = bank_sharing(SEED, e, QWEN, step)
        b = out[batch]
        assert b["shared"] and b["logical_banks"] == batch * 112
        n = ctx // ecfg.block_size
        assert b["ring_writes"] == batch * 112 * n * 32
        assert b["reprogram_bytes"] == pytest.approx(b["ring_writes"] * SEED.program_bits / 8)
        assert b["rewrites_per_physical_bank"] == pytest.approx(batch * 112 * n / (8192 * 112), rel=1e-12)
        assert b["reprogram_vs_scan_bytes"] == pytest.approx(b["reprogram_bytes"] / step.gpu.scan_bytes)
    assert out[10]["reprogram_bytes"] == pytest.approx(2 * out[5]["reprogram_bytes"], rel=1e-12)
    assert out[10]["reprogram_energy_j"] == pytest.approx(2 * out[5]["reprogram_energy_j"], rel=1e-9)
    assert out[10]["rewrites_per_physical_bank"] == pytest.approx(2 * out[5]["rewrites_per_physical_bank"])


@settings(max_examples=50, deadline=None)
@given(wr=st.floats(0.05, 0.99), bits=st.floats(1.0, 12.0), kappa=st.floats(0.05, 1.0))
def test_leakage_threshold_is_the_field_formula(wr, bits, kappa):
    limit = leakage_limit_db(wr, bits, kappa)
    leak_field = math.sqrt(10 ** (limit / 10))
    assert 2 * leak_field * kappa == pytest.approx(min(wr / 2**bits, 2 * kappa), rel=1e-9)  # = ½ LSB of ±w_r
    if wr / 2 ** (bits + 1) < 2 * kappa:  # below the 0 dB ceiling one more bit is 6.02 dB stricter
        assert (
            leakage_limit_db(wr, bits + 1, kappa)
            == pytest.approx(
                10 * math.log10(min(1.0, (wr / 2**bits / (2 * kappa)) ** 2)) - 20 * math.log10(2), abs=1e-9
            )
            or limit == 0.0
        )


def test_leakage_verdict_uses_the_stricter_limit():
    ds = ChipDesign.from_config(TFLN, 32)
    derived = leakage_limit_db(ds.weight_range, 4.0, ds.max_drop_field)
    assert -32 < derived < -30  # 4-bit weights: ≈ −31 dB in power (−15.5 dB in field)
    rep = feasibility(TFLN, mc_rows=32, mc_queries=4)
    assert rep.leakage_limit_db == pytest.approx(derived) and any("leakage" in v for v in rep.violations)
    loose = feasibility(TFLN.replace(required_weight_bits=2.0), mc_rows=32, mc_queries=4)
    assert loose.leakage_limit_db == -20.0 and not any("leakage" in v for v in loose.violations)


def test_trim_range_and_power():
    ds = ChipDesign.from_config(SEED, 32)
    eff = ds.fsr_m / SEED.trim_power_per_fsr_w  # one FSR per 14.9 mW, whatever the ring size
    heater = trim_check(SEED, ds)  # ±3 nm of spread vs 15 mW → 15/14.9 FSR = 8.35 nm: one FSR suffices
    assert heater.fits and heater.needed_m == pytest.approx(6e-9) and heater.range_m == pytest.approx(15e-3 * eff)
    assert heater.chip_power_w == pytest.approx(ds.mrr_count * 3e-9 / eff, rel=1e-9)
    weak = trim_check(SEED.replace(trim_max_power_w=5e-3), ds)  # a third of an FSR
    assert not weak.fits
    rep = feasibility(SEED.replace(trim_max_power_w=5e-3), mc_rows=16, mc_queries=4)
    assert any("trim span" in v for v in rep.violations) and rep.trim == weak
    fine = trim_check(SEED.replace(fab_sigma_m=0.1e-9), ds)
    assert fine.fits and fine.mean_power_w == pytest.approx(0.3e-9 / eff, rel=1e-9)
    once = trim_check(SEED.replace(trim_mechanism="one-time", one_time_trim_range_m=7e-9), ds)
    assert once.fits and once.chip_power_w == 0.0
    wide = trim_check(SEED.replace(fab_sigma_m=5e-9), ds)  # 6σ = 30 nm > FSR: one FSR always suffices
    assert wide.needed_m == pytest.approx(ds.fsr_m)
    big = ChipDesign.from_config(SEED.replace(ring_radius_m=80e-6), 32)  # 4× the circumference: same power per FSR
    assert trim_check(SEED.replace(ring_radius_m=80e-6), big).range_m == pytest.approx(heater.range_m / 4, rel=1e-6)


def test_ideal_selection_has_full_recall():
    rep = feasibility(PhotonicConfig.preset("ideal"), mc_rows=64, mc_queries=8)
    assert rep.recall_k == 8 and rep.recall_at_k == 1.0


def test_analytic_score_snr_matches_the_monte_carlo():
    """Detection-noise-limited regime (5 GHz, unquantised ADC, 6.6-bit weights, a 256-row bank = the Monte Carlo's
    reference bank) with the link of the engine's budget (no demux/mux, no bank routing): the score-referred SNR of
    the design is the Monte Carlo's within 1 dB (measured: 17.7 vs 17.6 dB)."""
    cfg = TFLN.replace(rows_per_bank=256, adc_bits=0, demux_loss_db=0.0, mux_loss_db=0.0, bank_routing_fraction=0.0)
    rep = feasibility(cfg, mc_rows=256, mc_queries=64)
    assert rep.score_snr_analytic_db == pytest.approx(rep.score_snr_db, abs=1.0)
    assert expected_abs_max(1) == pytest.approx(0.6745, abs=1e-4)  # median |z|
