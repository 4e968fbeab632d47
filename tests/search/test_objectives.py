"""kvprism.search.objectives: one design point judged on the reference set."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from kvprism.errors import KvprismError
from kvprism.photonics import PhotonicConfig
from kvprism.search.objectives import (
    ObjectiveSettings,
    constraint_values,
    evaluate,
    exact_recall,
    recall_at_k,
    select_candidates,
)
from tests.support.design_fixtures import one_thread, tiny_reference

pytestmark = pytest.mark.usefixtures(one_thread.__name__)
SETTINGS = ObjectiveSettings(k=4, contexts=(32768, 131072))


def test_select_candidates_and_recall_on_hand_made_inputs():
    idx = torch.tensor([[0, 5, 2, 9, 3]])  # rows 0 and 9 are outside the candidates [1, 9)
    assert select_candidates(idx, 1, 9, 3).tolist() == [[5, 2, 3]]
    with pytest.raises(KvprismError, match="fewer than k"):
        select_candidates(idx, 1, 3, 2)
    sel = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    ref = torch.tensor([[4, 3, 9, 9], [5, 0, 0, 0]])
    assert recall_at_k(sel, ref) == pytest.approx((2 / 4 + 1 / 4) / 2)


def test_ideal_chip_recalls_everything_and_exact_agrees_with_the_reference():
    ref = tiny_reference()
    for d in ref.d_sigs:
        assert exact_recall(ref, d, 4) == 1.0
    r = evaluate(PhotonicConfig.preset("ideal"), ref, 8, SETTINGS)
    assert r.recall == 1.0 and r.d_sig == 8 and r.k == 4
    assert 0.0 <= r.block_recall <= 1.0
    assert r.counters["queries"] == 4 * ref.shape[3]  # every (bank, reference query) evaluated once


def test_physical_chip_objectives_constraints_and_determinism():
    ref = tiny_reference()
    cfg = PhotonicConfig.preset("seed-nominal")
    a = evaluate(cfg, ref, 16, SETTINGS)
    b = evaluate(cfg, ref, 16, SETTINGS)
    assert a.recall == b.recall and a.block_recall == b.block_recall  # seeded engine
    assert 0.0 <= a.recall < 1.0
    assert a.violations and a.constraints["violations"] == len(a.violations) and not a.feasible
    assert all(math.isfinite(v) for v in a.constraints.values())
    assert a.energy_j > a.selection_energy_j > 0 and set(a.energy_by_context_j) == {32768, 131072}
    assert a.energy_by_context_j[131072] > a.energy_by_context_j[32768]
    from kvprism.photonics.design import ChipDesign

    ds = ChipDesign.from_config(cfg, 16)
    assert a.area_m2 == pytest.approx(ds.photonic_area_m2 + ds.electronic_area_m2)
    assert a.area_m2 > cfg.rows_per_bank * cfg.n_banks * 16 * cfg.ring_pitch_m**2  # rings and more
    # the chip's time line fills its selection budget at the energy model's decode rate (0.1 of a 20 tokens/s step),
    # ten times the 10 %-of-a-dense-step budget of the search: untimed points are judged at 20 tokens/s
    assert a.added_latency_s >= 0.1 / 20.0 > a.latency_budget_s
    # more laser power costs more energy (the energy model charges the laser the recall saw)
    hot = evaluate(cfg.replace(laser_line_dbm=20.0), ref, 16, SETTINGS)
    assert hot.energy_j > a.energy_j


def test_constraints_feasible_exactly_when_feasibility_passes():
    cfg = PhotonicConfig.preset("ideal")
    ok = SimpleNamespace(violations=[], required_swing_v=6.0, v_max_v=5.0, comb_span_m=1.0, fsr_m=2.0)
    c = constraint_values(ok, cfg, added_latency_s=1e-6, budget_s=1e-3)
    assert all(v <= 0 for v in c.values())  # the graded swing margin (0.2) is clipped: feasibility() decides
    bad = SimpleNamespace(violations=["x"], required_swing_v=6.0, v_max_v=5.0)
    c = constraint_values(bad, cfg, added_latency_s=1e-6, budget_s=1e-3)
    assert c["violations"] == 1 and c["drive_swing"] == pytest.approx(0.2)
    late = constraint_values(ok, cfg, added_latency_s=2e-3, budget_s=1e-3)
    assert late["latency_budget"] == pytest.approx(1.0)


def test_bad_input():
    ref = tiny_reference()
    with pytest.raises(KvprismError, match="k = 9 exceeds"):
        evaluate(PhotonicConfig.preset("ideal"), ref, 8, ObjectiveSettings(k=9))
    with pytest.raises(KvprismError, match="n_lines = 32 matches no signature width"):
        evaluate(PhotonicConfig.preset("ideal"), ref, None, SETTINGS)
    with pytest.raises(KvprismError, match="latency_budget_s"):
        ObjectiveSettings(latency_budget_s=0.0)


def test_a_timed_search_point_is_judged_by_the_decode_timing():
    """With ``tokens_per_s`` the point is timed as ``kvprism hw --model-shape`` times it: the detection bandwidth
    and code age come from the timing (at the first context), and its constraints (here: the time line of 4
    time-shared banks at 128K and 200 tokens/s) are constraints of the search."""
    from kvprism.photonics.design import decode_timing, timed_by_decode

    ref = tiny_reference()
    cfg = PhotonicConfig.preset("tfln-timeshared").replace(n_lines=16)
    timed = ObjectiveSettings(k=4, contexts=(32768,), tokens_per_s=20.0)
    a = evaluate(cfg, ref, 16, timed, with_energy=False)
    kw = dict(n_layers=28, kv_heads=4, tokens_per_s=20.0, context=32768, block_size=ref.params.block_size, d=16)
    # one latency budget: the selection share (0.1 of the 50 ms step); the chip is timed on it less the selection's
    # HBM reads (here the drive codes paged in every step), so the time line and the reads fill it together
    assert a.selection_share_s == pytest.approx(0.1 / 20.0) and a.latency_budget_s == a.selection_share_s
    assert 0 < a.hbm_reads_s < 1e-3 * a.selection_share_s
    chip_share = 0.1 - a.hbm_reads_s * 20.0
    timing = decode_timing(cfg.replace(selection_time_fraction=chip_share), **kw)
    assert a.timed_fields == {"detection_bandwidth_hz": pytest.approx(timing.noise_bandwidth_hz),
                              "selection_time_fraction": pytest.approx(chip_share)}  # fmt: skip
    assert timing.fits and a.added_latency_s == pytest.approx(a.selection_share_s)
    assert a.constraints["latency_budget"] <= 0 and a.constraints["time_line"] <= 0
    assert any("trim heaters" in v for v in a.violations) and not a.feasible
    replay = cfg.replace(rewrite_calibration="replay")
    b = evaluate(replay, ref, 16, timed, with_energy=False)
    age = timed_by_decode(replay, decode_timing(replay.replace(selection_time_fraction=chip_share), **kw))
    assert age.calibration_age_s > 0
    assert b.timed_fields["calibration_age_s"] == pytest.approx(age.calibration_age_s)
    fast = evaluate(cfg, ref, 16, ObjectiveSettings(k=4, contexts=(131072,), tokens_per_s=200.0), with_energy=False)
    assert any("time line does not fit decode" in v for v in fast.violations)
    assert fast.margins["time_line"]["margin"] > 0 and fast.constraints["latency_budget"] > 0  # one budget, both
    untimed = evaluate(cfg, ref, 16, ObjectiveSettings(k=4, contexts=(32768,)), with_energy=False)
    assert untimed.timed_fields == {} and not any("rewrite" in v for v in untimed.violations)
    with pytest.raises(KvprismError, match="tokens_per_s"):
        ObjectiveSettings(tokens_per_s=0.0)


def test_every_point_carries_the_electronic_selectors_it_competes_with():
    """Each trial records the selection energy of every electronic baseline at the first context (the same numbers
    `kvprism energy` prints), and names the cheapest."""
    from kvprism.energy import EnergyConfig, model_shape
    from kvprism.energy.gpu import BASELINES, electronic_baselines

    ref = tiny_reference()
    r = evaluate(PhotonicConfig.preset("seed-nominal"), ref, 16, SETTINGS)
    assert set(r.baseline_energy_j) == {name for name, _ in BASELINES}
    ecfg = EnergyConfig().replace(block_size=ref.params.block_size, k=SETTINGS.k, d_sig=16)
    want = electronic_baselines(model_shape(SETTINGS.shape), 32768, ecfg)
    assert r.baseline_energy_j == pytest.approx({n: b.energy_j for n, b in want.items()})
    name, joules = r.best_baseline
    assert joules == min(r.baseline_energy_j.values()) and r.baseline_energy_j[name] == joules
    assert r.to_json()["baseline_energy_j"] == r.baseline_energy_j
