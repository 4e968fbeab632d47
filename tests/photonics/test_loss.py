"""Ring loss from the radius (kvprism.photonics.loss) and drift from pm/K × K (PhotonicConfig drift_model)."""

from __future__ import annotations

import itertools
import math

import pytest

from kvprism.config import ConfigError
from kvprism.photonics import PhotonicConfig, loss
from kvprism.photonics.feasibility import feasibility

C1, C2 = 1.09e7, 2.89e5  # the config's lnoi400 constants


def test_bend_loss_hand_values_at_two_radii():
    # 20 + 1.09e7 · exp(−2.89e5 · R): R = 75 µm → exp(−21.675) = 3.864e-10 → 4.21e-3 dB/m
    assert loss.intrinsic_loss_db_per_m(75e-6, 20.0, C1, C2) == pytest.approx(20.0 + 1.09e7 * 3.8642e-10, rel=1e-4)
    # R = 20 µm → exp(−5.78) = 3.0887e-3 → 3.3667e4 dB/m
    assert loss.intrinsic_loss_db_per_m(20e-6, 20.0, C1, C2) == pytest.approx(20.0 + 1.09e7 * 3.0887e-3, rel=1e-4)


def test_bend_loss_falls_with_radius_to_the_straight_loss():
    radii = [5e-6 * k for k in range(1, 40)]
    bend = [loss.bend_loss_db_per_m(r, C1, C2) for r in radii]
    vals = [loss.intrinsic_loss_db_per_m(r, 20.0, C1, C2) for r in radii]
    assert all(a > b for a, b in itertools.pairwise(bend))
    assert all(a >= b for a, b in itertools.pairwise(vals))
    assert vals[-1] == pytest.approx(20.0, abs=1e-6)


def test_config_constants_are_the_marcuse_derivation_of_lnoi400():
    c1, c2 = loss.marcuse_bend_constants(loss.LNOI400, 1.55e-6)
    cfg = PhotonicConfig()
    assert cfg.bend_loss_c1_db_per_m == pytest.approx(c1, rel=5e-3)
    assert cfg.bend_loss_c2_per_m == pytest.approx(c2, rel=5e-3)
    assert cfg.bend_loss_min_sourced_radius_m == loss.LNOI400_MIN_SOURCED_RADIUS_M


def test_slab_index_between_cladding_and_core_and_grows_with_thickness():
    thin = loss.slab_te0_index(2.1376, 1.444, 200e-9, 1.55e-6)
    thick = loss.slab_te0_index(2.1376, 1.444, 400e-9, 1.55e-6)
    assert 1.444 < thin < thick < 2.1376


def test_preset_loss_comes_from_its_radius():
    cfg = PhotonicConfig.preset("tfln-timeshared")
    assert cfg.loss_model == "bend"
    want = loss.intrinsic_loss_db_per_m(
        cfg.ring_radius_m, cfg.straight_loss_db_per_m, cfg.bend_loss_c1_db_per_m, cfg.bend_loss_c2_per_m
    )
    assert cfg.loss_db_per_m == want
    smaller = cfg.replace(ring_radius_m=60e-6)  # the radius changes the loss
    assert smaller.loss_db_per_m == pytest.approx(20.0 + C1 * math.exp(-C2 * 60e-6), rel=1e-9)
    with pytest.raises(ConfigError, match="loss_model = 'fixed'"):
        cfg.replace(loss_db_per_m=30.0)
    measured = cfg.replace(loss_model="fixed", loss_db_per_m=30.0)  # an explicit measured loss
    assert measured.loss_db_per_m == 30.0 and measured.replace(ring_radius_m=60e-6).loss_db_per_m == 30.0
    assert PhotonicConfig.from_dict(cfg.to_nested_dict()) == cfg


def test_unbuildable_small_ring_is_a_config_error():
    with pytest.raises(ConfigError, match="not reachable"):
        PhotonicConfig.preset("tfln-timeshared").replace(ring_radius_m=20e-6)


def test_thermal_drift_is_pm_per_k_times_k():
    cfg = PhotonicConfig.preset("tfln-timeshared")
    assert cfg.drift_model == "thermal"
    assert cfg.drift_global_sigma_m == pytest.approx(55e-12 * 0.05)  # 2.75 pm
    assert cfg.drift_ring_sigma_m == pytest.approx(55e-12 * 0.02)  # 1.1 pm
    assert "55 pm/K × 0.05 K = 2.75 pm global" in cfg.drift_origin
    hot = cfg.replace(temperature_stability_k=0.2)
    assert hot.drift_global_sigma_m == pytest.approx(11e-12)
    with pytest.raises(ConfigError, match="drift_model = 'fixed'"):
        cfg.replace(drift_ring_sigma_m=5e-12)
    assert cfg.replace(drift_model="fixed", drift_ring_sigma_m=5e-12).drift_ring_sigma_m == 5e-12


def test_feasibility_prints_the_loss_and_drift_origin():
    cfg = PhotonicConfig.preset("tfln-timeshared").replace(rows_per_bank=16, n_lines=4, n_banks=1)
    rows = {name: (value, limit) for name, value, limit in feasibility(cfg, mc_rows=16, mc_queries=4).rows()}
    value, origin = rows["ring intrinsic loss"]
    assert value == "20 dB/m" and "bend model at R = 75 µm" in origin and "inside the sourced radii" in origin
    assert "55 pm/K × 0.02 K" in rows["thermal drift σ (per ring / global)"][1]
    near = cfg.replace(ring_radius_m=50e-6)
    rep = feasibility(near, mc_rows=16, mc_queries=4)
    assert rep.loss_extrapolated and "model extrapolation" in rep.loss_origin
    assert "fixed" in feasibility(PhotonicConfig().replace(n_lines=4, rows_per_bank=16), mc_rows=16).loss_origin
