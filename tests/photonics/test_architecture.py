"""Chip architectures (kvprism.photonics.architecture): resident and two-level banks against hand counts."""

from __future__ import annotations

import dataclasses
import math

import pytest

from kvprism.errors import KvprismError
from kvprism.photonics.architecture import (
    Architecture,
    chip_config,
    chip_plan,
    drift_recalibration_period_s,
    hold_rms_m,
    two_level_read_blocks,
)
from kvprism.photonics.config import PhotonicConfig
from kvprism.photonics.design import ChipDesign, decode_timing, timed_by_decode
from kvprism.photonics.feasibility import trim_check

# a small shape: 2 layers × 2 KV heads, 1,024 tokens in blocks of 32 → 32 rows per (layer, KV head)
SHAPE = {"n_layers": 2, "kv_heads": 2, "context": 1024, "block_size": 32}


@pytest.fixture(scope="module")
def cfg() -> PhotonicConfig:
    return PhotonicConfig.preset("tfln-timeshared").replace(n_lines=16, rows_per_bank=128, n_banks=4)


def test_architecture_labels_and_errors():
    assert Architecture.parse(None) == Architecture()
    assert Architecture.parse("two-level:8") == Architecture("two-level", 8)
    assert Architecture.parse("two-level", 4).label == "two-level:4"
    assert Architecture.parse("resident").resident and not Architecture().resident
    for bad in (("two-level", 1), ("resident", 4), ("banks", 1)):
        with pytest.raises(KvprismError):
            Architecture(*bad)


def test_resident_rings_area_dies_and_heaters_against_hand_counts(cfg):
    arch = Architecture("resident")
    plan = chip_plan(cfg, arch, **SHAPE)
    d = 16
    # one bank of ⌊1024/32⌋ = 32 rows per (layer, KV head): 4 banks × 32 rows × 16 lines
    assert (plan.logical_banks, plan.slots, plan.physical_banks, plan.rows_per_physical_bank) == (4, 1, 4, 32)
    assert plan.rows == 128 and plan.rings == 128 * d == 2048
    ring_area = 2048 * cfg.ring_pitch_m**2
    photonic = ring_area + 128 * cfg.pd_pair_area_m2 + 4 * d * cfg.mzm_area_m2
    assert plan.photonic_area_m2 == pytest.approx(photonic, rel=1e-12)
    electronic = 128 * (cfg.tia_area_m2 + cfg.adc_area_m2) + 2048 * cfg.ring_driver_area_m2
    assert plan.electronic_area_m2 == pytest.approx(electronic, rel=1e-12)
    assert plan.photonic_dies == math.ceil(photonic / cfg.max_chip_area_m2)
    # heaters: one per resident ring, each holding the mean shift min(3σ, FSR/2) at trim_power_per_fsr_w per FSR
    fsr = ChipDesign.from_config(chip_config(cfg, arch, **SHAPE)).fsr_m
    per_ring = min(3.0 * cfg.fab_sigma_m, 0.5 * fsr) / fsr * cfg.trim_power_per_fsr_w
    assert plan.heaters == 2048
    assert plan.heater_power_w == pytest.approx(2048 * per_ring, rel=1e-12)
    assert plan.driver_power_w == pytest.approx(2048 * cfg.ring_driver_power_w, rel=1e-12)
    # a reticle a tenth of the area: the photonic die count follows, heater power per die divides by it
    small = cfg.replace(max_chip_area_m2=photonic / 9.5)
    p2 = chip_plan(small, arch, **SHAPE)
    assert p2.photonic_dies == 10 and p2.heater_power_per_die_w == pytest.approx(p2.heater_power_w / 10, rel=1e-12)


def test_resident_banks_split_into_slots_above_the_largest_bank(cfg):
    # 32 rows per (layer, KV head) with banks of at most 12 rows: 3 slots of ⌈32/3⌉ = 11 rows
    chip = chip_config(cfg.replace(rows_per_bank=12), Architecture("resident"), **SHAPE)
    assert (chip.n_banks, chip.rows_per_bank) == (4 * 3, 11)
    plan = chip_plan(cfg.replace(rows_per_bank=12), Architecture("resident"), **SHAPE)
    assert plan.slots == 3 and plan.rings == 12 * 11 * 16


def test_two_level_divides_rows_and_rings_by_the_superblock(cfg):
    res = chip_plan(cfg, Architecture("resident"), **SHAPE)
    two = chip_plan(cfg, Architecture("two-level", 4), **SHAPE)
    assert two.rows_per_logical_bank == 32 // 4 == 8
    assert two.rings * 4 == res.rings and two.rows * 4 == res.rows
    assert two.appended_rows_per_step == pytest.approx(4 / (32 * 4), rel=1e-12)


def test_two_level_rescoring_reads_the_chosen_and_the_open_superblocks():
    arch = Architecture("two-level", 4)
    # 32 complete blocks = 8 super-blocks: k = 2 super-blocks × 4 blocks
    assert two_level_read_blocks(arch, 1024, 32, k=2) == 8
    # 34 blocks: 8 super-blocks + 2 blocks of the open one
    assert two_level_read_blocks(arch, 34 * 32, 32, k=2) == 10
    # rerank × k super-blocks, never more than every block
    assert two_level_read_blocks(arch, 1024, 32, k=2, rerank=3) == 24
    assert two_level_read_blocks(arch, 1024, 32, k=6, rerank=3) == 32
    assert two_level_read_blocks(Architecture("resident"), 1024, 32, k=2) == 0


def test_per_token_work_of_resident_banks(cfg):
    t = decode_timing(cfg, **SHAPE, tokens_per_s=20.0, architecture="resident")
    des = ChipDesign.from_config(chip_config(cfg, Architecture("resident"), **SHAPE))
    step = 0.05
    assert t.step_s == step and not t.shared and t.write_s == 0.0 and t.calibration_s == 0.0
    assert (t.chip_banks, t.chip_rows_per_bank, t.architecture) == (4, 32, "resident")
    # appended rows: one per bank every 32 tokens → 4/32 per step
    assert t.appended_rows_per_step == pytest.approx(4 / 32, rel=1e-12)
    # one append event (all banks at the same token): ring writes + settling + one calibration, amortised over B
    settle = cfg.drive_settling_s + des.ring_settling_s(cfg.adc_bits)
    event = 4 * 16 / cfg.program_rate_rings_per_s + settle + des.calibration_time_s
    assert t.append_s == pytest.approx(event / 32, rel=1e-12)
    # background recalibration: every bank once per drift period, probes broadcast (banks in parallel)
    period = drift_recalibration_period_s(des)
    assert t.drift_period_s == pytest.approx(period, rel=1e-12)
    assert t.recalibration_s == pytest.approx(des.calibration_time_s * step / period, rel=1e-12)
    assert t.calibrations_per_step == pytest.approx(4 * step / period, rel=1e-12)
    assert t.calibration_age_s == pytest.approx(0.5 * period, rel=1e-12)
    assert t.idle_s == pytest.approx((1 - cfg.selection_time_fraction) * step, rel=1e-12)
    # the queries get the whole budget: one round per layer
    assert t.query_s == pytest.approx(t.budget_s, rel=1e-9)
    # the timed config is the chip as built
    tc = timed_by_decode(cfg, t)
    assert (tc.n_banks, tc.rows_per_bank) == (4, 32)


def test_drift_period_holds_the_budget():
    # small-period limit of the hold error: σ √(P/τ)
    assert hold_rms_m(4e-24, 2.0, 1e-6) == pytest.approx(2e-12 * math.sqrt(1e-6 / 2.0), rel=1e-5)
    assert hold_rms_m(4e-24, 2.0, math.inf) == pytest.approx(2e-12 * math.sqrt(2.0), rel=1e-12)
    cfg = PhotonicConfig.preset("tfln-timeshared")
    des = ChipDesign.from_config(cfg)
    from kvprism.photonics.architecture import drift_detuning_budget_m

    p = drift_recalibration_period_s(des)
    budget = drift_detuning_budget_m(des)
    tau = cfg.drift_corr_time_s
    assert hold_rms_m(des.drift_var_m2, tau, p) == pytest.approx(budget, rel=1e-6)
    assert hold_rms_m(des.drift_var_m2, tau, 1.01 * p) > budget


def test_time_shared_default_is_unchanged(cfg):
    a = decode_timing(cfg, **SHAPE, tokens_per_s=20.0)
    b = decode_timing(cfg, **SHAPE, tokens_per_s=20.0, architecture="time-shared")
    assert dataclasses.asdict(a) == dataclasses.asdict(b)
    assert a.architecture == "time-shared" and a.chip_banks == 0
    assert timed_by_decode(cfg, a).n_banks == cfg.n_banks


def test_trim_check_of_the_resident_chip_counts_every_ring(cfg):
    chip = chip_config(cfg, Architecture("two-level", 2), **SHAPE)
    des = ChipDesign.from_config(chip)
    assert trim_check(chip, des).heaters == 4 * 16 * 16
