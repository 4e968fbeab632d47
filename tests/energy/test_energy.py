"""Energy/latency model of one chip query (kvprism.energy.chip): scaling laws, units, locality of parameters, the
seed's latency, consistency with the photonic engine's link budget, noise model and counters."""

from __future__ import annotations

import math

import pytest
import torch

from kvprism.energy.chip import (
    ENERGY_TERMS,
    LATENCY_STAGES,
    chip_query,
    enob_to_snr_db,
    mean_ring_drive_v2,
    required_laser,
    ring_settling_s,
    score_snr_db,
    seed_stage_latency_s,
    snr_to_enob,
)
from kvprism.errors import KvprismError
from kvprism.photonics import PhotonicConfig, PhotonicEngine, link
from kvprism.photonics.design import ChipDesign


@pytest.fixture(scope="module")
def seed() -> PhotonicConfig:
    return PhotonicConfig.preset("seed-nominal")


@pytest.fixture(scope="module")
def small() -> PhotonicConfig:
    """A bank small and slow enough (256 rows, 1 MHz noise bandwidth) that the laser meets the SNR target within
    the power caps."""
    cfg = PhotonicConfig.preset("seed-nominal").replace(rows_per_bank=256, detection_bandwidth_hz=1e6)
    assert required_laser(cfg, 32).feasible
    return cfg


def test_adc_tia_energy_proportional_to_rows_dac_not(seed):
    a, b = chip_query(seed, 1024, 32, 8), chip_query(seed, 4096, 32, 8)
    assert b.energy_j["adc"] == pytest.approx(4 * a.energy_j["adc"], rel=1e-12)
    assert b.energy_j["tia"] == pytest.approx(4 * a.energy_j["tia"], rel=1e-12)
    for term in ("dac", "modulator", "laser", "eo_programming"):
        assert b.energy_j[term] == a.energy_j[term]
    # latency does not grow with N while the rows fit one physical bank
    assert b.total_latency_s == a.total_latency_s


def test_component_formulas_in_si_units(seed):
    """Each term recomputed here from the preset's literal component values (J and s, not pJ and ns)."""
    q = chip_query(seed, 8192, 32, 8)
    assert q.energy_j["adc"] == pytest.approx(8192 * 25e-15 * 2**8, rel=1e-12)  # 52.4 nJ
    assert q.energy_j["adc"] == pytest.approx(52.4288e-9, rel=1e-9)
    # TIA model: 2.03 mW at 8 GHz scaled to the 5 GHz bandwidth (1.27 mW), powered for one 0.1 ns symbol
    assert q.energy_j["tia"] == pytest.approx(8192 * 2.03e-3 * 5e9 / 8e9 / 10e9, rel=1e-12)  # 1.04 nJ
    assert q.energy_j["dac"] == pytest.approx(32 * 3.6e-12, rel=1e-12)
    assert q.energy_j["modulator"] == pytest.approx(32 * (1.4**2 / 3) / 50 / 14e9, rel=1e-12)
    assert q.energy_j["topk"] == pytest.approx(8192 * (1 + 3) * 0.03e-12, rel=1e-12)
    assert q.energy_j["eo_programming"] == pytest.approx(32 * 20e-15 * 5.0**2 / 3 / 64, rel=1e-12)
    assert q.energy_j["laser"] == pytest.approx(q.laser.electrical_w * 1e-10, rel=1e-12)
    assert q.laser.electrical_w == pytest.approx(32 * q.laser.laser_line_w / 0.2, rel=1e-12)
    assert set(q.energy_j) == set(ENERGY_TERMS) and set(q.latency_s) == set(LATENCY_STAGES)
    assert 1e-9 < q.total_energy_j < 1e-6  # tens of nJ, i.e. not a pJ value stored as J or the reverse
    assert 1e-9 < q.total_latency_s < 1e-7


def test_seed_latency_reproduced_energy_recomputed(seed):
    """Stage values sum to the seed's ~9 ns; the ring stage is derived from Q (photon lifetime × ln 2^bits)."""
    assert seed_stage_latency_s(seed) == pytest.approx(8.9e-9, rel=1e-12)
    tau = 1e4 * 1.55e-6 / (2 * math.pi * 299_792_458.0)
    assert ring_settling_s(seed) == pytest.approx(tau * 8 * math.log(2), rel=1e-12)
    q = chip_query(seed, 8192, 32, 8)
    t_int = 1.0 / (2.0 * seed.detection_bandwidth_hz)  # one symbol of integrate-and-dump at 5 GHz: 0.1 ns
    assert q.latency_s["integration"] == pytest.approx(t_int, rel=1e-12)
    assert q.total_latency_s == pytest.approx(8.9e-9 - 0.1e-9 + ring_settling_s(seed) + t_int, rel=1e-12)
    assert abs(q.total_latency_s - 8.9e-9) < 0.1e-9
    # the energy is not the seed's quoted 796–2290 pJ: N ADC conversions at a cited FoM dominate (module docstring)
    assert q.total_energy_j > 20 * 2290e-12
    assert q.energy_j["adc"] > 0.9 * q.dynamic_energy_j


# parameter → the energy terms / latency stages that use it (everything else must stay bit-identical)
LOCALITY = {
    "adc_walden_fom_j_per_step": ({"adc"}, set()),
    "tia_min_power_w": ({"tia"}, set()),  # at 1 MHz the TIA model sits on its floor (2.03 mW × 1 MHz / 8 GHz < 10 µW)
    "dac_energy_per_sample_j": ({"dac"}, set()),
    "mzm_termination_ohm": ({"modulator"}, set()),
    "laser_wall_plug_efficiency": ({"laser"}, set()),
    "topk_energy_per_compare_j": ({"topk"}, set()),
    "ring_capacitance_f": ({"eo_programming"}, set()),
    "static_power_w": ({"static"}, set()),
    "splitter_excess_db_per_stage": ({"laser"}, set()),
    "tia_noise_a_per_rthz": ({"laser"}, set()),
    "latency_topk_s": (set(), {"topk"}),
    "latency_tia_adc_s": (set(), {"tia_adc"}),
    "q_loaded": ({"laser"}, {"ring"}),  # Q changes the weight range (→ laser) and the photon lifetime
}


@pytest.mark.parametrize("name", sorted(LOCALITY))
def test_one_parameter_changes_only_its_terms(small, name):
    base = chip_query(small, 256, 32, 8)
    cfg = small.replace(**{name: getattr(small, name) * 2.0})
    new = chip_query(cfg, 256, 32, 8)
    want_e, want_t = LOCALITY[name]
    changed_e = {t for t in ENERGY_TERMS if new.energy_j[t] != base.energy_j[t]}
    changed_t = {s for s in LATENCY_STAGES if new.latency_s[s] != base.latency_s[s]}
    assert changed_e == want_e
    assert changed_t == want_t


def test_laser_grows_with_splitting_loss_and_snr_target(small):
    a, b = small.replace(rows_per_bank=128), small
    la, lb = required_laser(a, 32), required_laser(b, 32)
    assert la.feasible and lb.feasible
    extra_db = lb.link_loss_db - la.link_loss_db
    routing_db = 128 * 50e-6 * small.waveguide_loss_db_per_m  # the bank is 128 rows taller
    assert extra_db == pytest.approx(10 * math.log10(2) + 0.2 + routing_db, rel=1e-9)
    for las in (la, lb):  # the row power is carried back through the link exactly
        assert las.laser_line_w == pytest.approx(las.row_line_w * 10 ** (las.link_loss_db / 10), rel=1e-12)
    assert lb.laser_line_w > la.laser_line_w * 10 ** (extra_db / 10) * 0.5
    lo, hi = required_laser(small, 32, target_enob=4.0), required_laser(small, 32, target_enob=6.0)
    assert hi.electrical_w > 2.0 * lo.electrical_w  # 12 dB more SNR needs > 2× the power even when shot-limited
    lossy = required_laser(small.replace(laser_wall_plug_efficiency=0.1), 32)
    assert lossy.electrical_w == pytest.approx(2 * lb.electrical_w, rel=1e-12)


def test_laser_operating_point_is_the_score_referred_snr(small):
    las = required_laser(small, 32)
    assert las.limited_by == "snr" and las.feasible
    assert score_snr_db(small, las.row_line_w, 32) == pytest.approx(enob_to_snr_db(4.0), abs=1e-6)
    assert las.achieved_snr_db == pytest.approx(enob_to_snr_db(4.0), abs=1e-6)
    assert snr_to_enob(las.target_snr_db) == pytest.approx(small.required_score_enob)
    # at the preset's own laser power it is the feasibility verdict's analytic score SNR
    des = ChipDesign.from_config(small, 32)
    from kvprism.photonics.design import score_snr_db as design_snr

    assert score_snr_db(small, des.link.row_line_w, 32) == design_snr(small, des)


def test_laser_never_above_the_power_caps(seed):
    """5 GHz and the 59 dB link of an 8192-row bank: the 4-bit target is out of reach within the caps; the laser is
    capped, not sized up to 1 kW, and reported infeasible with the binding cap."""
    las = required_laser(seed, 32)
    des = ChipDesign.from_config(seed, 32)
    assert not las.feasible and las.limited_by.startswith("power cap")
    assert las.laser_line_w == pytest.approx(des.laser_cap_w, rel=1e-12) and las.cap_laser_line_w == des.laser_cap_w
    assert "caps allow" in las.reason and las.achieved_snr_db < las.target_snr_db
    # the cap is the tightest of the limits: comb line, input waveguide (d lines after the coupler), MZM, ring, PD
    assert des.laser_cap_w == pytest.approx(min(10e-3, 0.1 / (32 * 10 ** (-1.5 / 10))), rel=1e-12)


def test_laser_limits_rin_ceiling_and_sensitivity(small):
    with pytest.raises(KvprismError, match="RIN ceiling"):
        required_laser(small.replace(detection_bandwidth_hz=5e9), 32, target_enob=8.0)
    quiet = required_laser(small.replace(noise=False), 32)
    assert quiet.limited_by == "pd sensitivity" and quiet.feasible
    assert math.isinf(quiet.snr_ceiling_db)
    # the sensitivity floor scales as √Δf around the bandwidth it is specified at
    des = ChipDesign.from_config(small.replace(noise=False), 32)
    assert des.pd_sensitivity_dbm == pytest.approx(-26.0 + 5 * math.log10(1e6 / 5e9), rel=1e-12)
    assert link.w_to_dbm(quiet.row_line_w * 32 * 0.5 * 0.5 * (1 + 10**-2.5)) == pytest.approx(
        des.pd_sensitivity_dbm, abs=1e-9
    )


def test_dual_rail_doubles_pass_terms(seed):
    one = chip_query(seed, 2048, 32, 8)
    two = chip_query(seed.replace(encoding="dual-rail"), 2048, 32, 8)
    for term in ("dac", "modulator", "tia", "adc"):
        assert two.energy_j[term] == pytest.approx(2 * one.energy_j[term], rel=1e-12)
    assert two.energy_j["topk"] == one.energy_j["topk"]
    assert two.latency_s["extra_passes"] == pytest.approx(1 / seed.adc_sample_rate_hz)


def test_paging_counts_match_engine_counters():
    cfg = PhotonicConfig.preset("seed-nominal").replace(rows_per_bank=8, n_banks=2, n_lines=4, channel_spacing_m=1.6e-9)
    eng = PhotonicEngine(cfg, seed=0)
    eng.program(torch.randn(3, 8, 4, generator=torch.Generator().manual_seed(0)))  # 24 rows on 16 physical rows
    eng.scores(torch.randn(3, 4, generator=torch.Generator().manual_seed(1)))
    q = chip_query(cfg, 8, 4, 2, banks=3)
    assert q.pages == eng.counters["pages"] == 2
    assert 3 * q.ring_writes_paging == eng.counters["page_row_programs"] * 4
    assert eng.counters["adc_conversions"] == 3 * q.passes * q.n_rows
    assert eng.counters["dac_samples"] == 3 * q.passes * q.d
    assert q.latency_s["paging"] > 0 and q.energy_j["paging_programming"] > 0
    fits = chip_query(cfg, 8, 4, 2, banks=2)
    assert fits.pages == 1 and fits.latency_s["paging"] == 0 and fits.energy_j["paging_programming"] == 0


def test_rows_beyond_one_bank_light_more_banks(seed):
    one = chip_query(seed, seed.rows_per_bank, 32, 8)
    two = chip_query(seed, seed.rows_per_bank + 1, 32, 8)
    assert two.bank_slots == 2
    assert two.energy_j["laser"] == pytest.approx(2 * one.energy_j["laser"], rel=1e-12)


def test_mean_drive_v2_same_order_as_engine(seed):
    """The model's mean V² per ring update (V_max²/3) against what the engine actually programs for Gaussian
    signatures (within a factor 2: the drive distribution is not uniform)."""
    eng = PhotonicEngine(seed, seed=0)
    eng.program(torch.randn(64, 32, generator=torch.Generator().manual_seed(0)))
    v2 = eng.counters["program_energy_j"] / eng.counters["ring_updates"] / seed.ring_capacitance_f
    assert 0.5 < v2 / mean_ring_drive_v2(seed) < 2.0


def test_bad_input_is_named(seed):
    with pytest.raises(KvprismError, match="k = 9"):
        chip_query(seed, 8, 32, 9)
    with pytest.raises(KvprismError, match="n_rows"):
        chip_query(seed, 0, 32, 1)
    with pytest.raises(KvprismError, match="query_rate_hz"):
        chip_query(seed, 64, 32, 8, query_rate_hz=0.0)


def test_unquantised_adc_is_charged_at_the_target_enob():
    ideal = PhotonicConfig.preset("ideal").replace(rows_per_bank=256, detection_bandwidth_hz=1e6)
    q = chip_query(ideal, 1024, 32, 8)
    assert q.laser.limited_by == "pd sensitivity"  # noise-free: only the photodiode floor sets the laser
    assert q.energy_j["adc"] == pytest.approx(1024 * ideal.adc_walden_fom_j_per_step * 2**4, rel=1e-12)
    assert q.latency_s["ring"] == pytest.approx(ring_settling_s(ideal, 4), rel=1e-12)


def test_tia_power_scales_with_bandwidth_above_its_floor(seed):
    """TIA model (a 40 nm TIA: 2.03 mW at 8 GHz): power ∝ bandwidth, never below tia_min_power_w."""
    from kvprism.photonics.design import ChipDesign

    ds = ChipDesign.from_config(seed)
    assert ds.tia_power_w(8e9) == pytest.approx(2.03e-3, rel=1e-12)
    assert ds.tia_power_w(4e9) == pytest.approx(2.03e-3 / 2, rel=1e-12)
    assert ds.tia_power_w(20e3) == seed.tia_min_power_w == 10e-6  # a kHz TIA is not charged a multi-GHz TIA's power


def test_step_ledger_terms_against_a_hand_count():
    """tfln-timeshared for Qwen2.5-7B at 32K tokens and 20 tokens/s: each term of the step's ledger recomputed by
    hand from the preset's values and the timing."""
    from kvprism.energy import EnergyConfig, decode_step, model_shape
    from kvprism.photonics.design import ChipDesign

    cfg = PhotonicConfig.preset("tfln-timeshared")
    shape = model_shape("qwen2.5-7b")
    step = decode_step(cfg, EnergyConfig(d_sig=16, block_size=32, tokens_per_s=20.0), shape, 32768)
    t, e = step.timing, step.photonic_energy_j
    ds = ChipDesign.from_config(cfg)
    assert t.step_s == 0.05 and t.rounds_per_layer == 8 and t.calibrations_per_step == 28 * 8 * 4
    # comb pump: 4 banks × 16 lines × 6 dBm, through 10 % comb conversion and 20 % wall plug, all step
    assert e["laser"] == pytest.approx(4 * 16 * 10**0.6 * 1e-3 / (0.1 * 0.2) * 0.05, rel=1e-12)  # 0.64 J
    # heaters: 8,192 rings × mean shift 3σ = 1.5 nm (at most half an FSR) at 14.9 mW per FSR, all step
    shift = min(1.5e-9, 0.5 * ds.fsr_m)
    assert e["trim_heaters"] == pytest.approx(8192 * shift / ds.fsr_m * 14.9e-3 * 0.05, rel=1e-12)
    # drive channels: one per ring at 0.5 mW, all step
    assert e["ring_drivers"] == pytest.approx(8192 * 0.5e-3 * 0.05, rel=1e-12)  # 0.2 J
    # probes: per bank calibration 9 readings × 16 lines × 16 averages samples on 128 rows (10-bit ADC conversions),
    # the rows' TIAs at the probe bandwidth for the calibration time, 9 × 128 × 16 drive updates at C·V² (70.7 fF:
    # the 75 µm ring's electrode)
    probe_bw = 0.5 / ds.probe_sample_time_s
    per_cal = (9 * 16 * 16 * 128 * 25e-15 * 2**10 + 128 * ds.tia_power_w(probe_bw) * ds.calibration_time_s
               + 9 * 128 * 16 * 70.7e-15 * 10.0**2 / 3)  # fmt: skip
    assert e["calibration"] == pytest.approx(896 * per_cal, rel=1e-12)
    # TIAs of the 512 physical rows while querying (query bandwidth) and probing (probe bandwidth)
    tia = 512 * (ds.tia_power_w(t.noise_bandwidth_hz) * t.query_s + ds.tia_power_w(probe_bw) * t.calibration_s)
    assert e["tia"] == pytest.approx(tia, rel=1e-12)
    # the static TEC/bias power over the whole step
    assert e["static"] == pytest.approx(1.0 * 0.05, rel=1e-12)
    gated = decode_step(cfg, EnergyConfig(d_sig=16, block_size=32, laser_mode="gated"), shape, 32768)
    assert gated.photonic_energy_j["laser"] == pytest.approx(
        4 * 16 * 10**0.6 * 1e-3 / 0.2 * (t.query_s + t.calibration_s), rel=1e-12
    )
    assert step.selection_energy_j == pytest.approx(sum(v for k, v in e.items() if k != "kv_fetch"))


# ---------------------------------------------------------------------------------------------- architectures
def test_resident_ledger_charges_every_ring_and_the_appended_rows():
    from kvprism.energy.compare import decode_step
    from kvprism.energy.config import EnergyConfig, ModelShape
    from kvprism.photonics.architecture import chip_config
    from kvprism.photonics.config import PhotonicConfig
    from kvprism.photonics.design import ChipDesign

    cfg = PhotonicConfig.preset("tfln-timeshared").replace(n_lines=16)
    shape = ModelShape("small", 2, 4, 2, 64, 1e8, "test")
    ecfg = EnergyConfig(d_sig=16, block_size=32, k=2, tokens_per_s=20.0, architecture="resident")
    step = decode_step(cfg, ecfg, shape, 1024)
    e, t, p = step.photonic_energy_j, step.timing, step.plan
    chip = chip_config(cfg, ecfg.chip_architecture, n_layers=2, kv_heads=2, context=1024, block_size=32)
    des = ChipDesign.from_config(chip, 16)
    assert p.rings == 4 * 32 * 16 == des.mrr_count
    assert e["ring_drivers"] == pytest.approx(p.rings * cfg.ring_driver_power_w * 0.05, rel=1e-12)
    assert e["trim_heaters"] == pytest.approx(p.heater_power_w * 0.05, rel=1e-12)
    assert e["static"] == pytest.approx(cfg.static_power_w * 0.05 * p.dies, rel=1e-12)
    # the appended rows: 4/32 rows per step, each a row's share of one bank calibration
    bits = cfg.adc_bits
    per_cal = (
        (2 * cfg.calibration_iters + 1) * 16 * cfg.calibration_probe_averages * 32 * cfg.adc_walden_fom_j_per_step
        * 2.0**bits
        + 32 * des.tia_power_w(0.5 / des.probe_sample_time_s) * des.calibration_time_s
        + (2 * cfg.calibration_iters + 1) * 32 * 16 * cfg.ring_capacitance_f * cfg.v_max_v**2 / 3.0
    )  # fmt: skip
    assert e["append_calibration"] == pytest.approx(4 / 32 * per_cal / 32, rel=1e-9)
    assert e["calibration"] == pytest.approx(t.calibrations_per_step * per_cal, rel=1e-9)
    # C·V² of the appended rows (chip_query's eo_programming: d rings per bank every B tokens)
    assert e["eo_programming"] == pytest.approx(4 * 16 * cfg.ring_capacitance_f * cfg.v_max_v**2 / 3.0 / 32, rel=1e-12)
    assert e["paging_programming"] == 0.0 and e["paging_reads"] == 0.0


def test_two_level_charges_the_rescoring_reads():
    from kvprism.energy.compare import decode_step
    from kvprism.energy.config import EnergyConfig, ModelShape
    from kvprism.photonics.config import PhotonicConfig

    cfg = PhotonicConfig.preset("tfln-timeshared").replace(n_lines=16)
    shape = ModelShape("small", 2, 4, 2, 64, 1e8, "test")
    ecfg = EnergyConfig(d_sig=16, block_size=32, k=2, tokens_per_s=20.0, architecture="two-level", superblock=4)
    step = decode_step(cfg, ecfg, shape, 34 * 32)  # 8 super-blocks + 2 blocks of the open one
    blocks = 2 * 4 + 2  # k super-blocks × S + the open super-block's blocks
    nbytes = 4 * blocks * 16 * 2  # banks × blocks × d_sig × bf16
    flops = 4 * blocks * 2 * 16  # banks × blocks × 2·d (one query per KV head)
    want = nbytes * 8 * ecfg.hbm_energy_per_bit_j + flops * ecfg.gpu_energy_per_flop_j
    assert step.photonic_energy_j["rerank_reads"] == pytest.approx(want, rel=1e-12)
    assert step.plan.rows_per_logical_bank == 8 and step.plan.rings == 4 * 8 * 16
