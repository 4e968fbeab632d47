"""The TFLN presets follow their stated design rules (the preset headers): each value is re-derived here, so a preset
cannot drift from its rule, and the rule is not tuned to a verdict.

* radius: the smallest radius at which the lnoi400 loss is sourced (75 µm);
* comb spacing: FSR / n_lines rounded down to 1 pm (the lines fit one FSR);
* loaded Q: the smallest Q on a two-significant-digit grid at which the worst neighbour leakage over the drive range
  meets the field-formula limit for ``required_weight_bits``;
* weight_range_target: the ring's on-resonance reach at that Q, rounded down to 0.01;
* ring pitch 2.5·R, electrode capacitance 0.3 fF/µm over π·R (the rules of the class defaults)."""

from __future__ import annotations

import math

import pytest

from kvprism.photonics import PhotonicConfig, ring
from kvprism.photonics.design import ChipDesign, leakage_limit_db
from kvprism.photonics.loss import LNOI400_MIN_SOURCED_RADIUS_M

TFLN = ("tfln-literature", "tfln-timeshared", "tfln-timeshared-32")


def _reach(cfg: PhotonicConfig) -> float:
    """The weight a ring of ``cfg`` reaches on resonance, rounded down to 0.01 (the weight_range_target rule)."""
    ds = ChipDesign.from_config(cfg)
    return math.floor(min(-ds.w_min, ds.w_max) * 100.0 + 1e-9) / 100.0


def _meets_leakage(cfg: PhotonicConfig, q: float) -> bool:
    """Whether the worst leakage at loaded Q ``q`` (weights at the ring's reach there) meets the 4-bit limit."""
    c = cfg.replace(q_loaded=q)
    c = c.replace(weight_range_target=_reach(c))
    ds = ChipDesign.from_config(c)
    limit = min(c.leakage_limit_db, leakage_limit_db(ds.weight_range, c.required_weight_bits, ds.max_drop_field))
    return ds.worst_leakage_db <= limit


def _grid_below(q: float) -> float:
    """The next lower value of the two-significant-digit grid."""
    e = 10.0 ** (math.floor(math.log10(q)) - 1)
    m = round(q / e)
    return (m - 1) * e if m > 10 else 9.9 * e


@pytest.mark.parametrize("name", TFLN)
def test_tfln_preset_follows_its_design_rules(name):
    cfg = PhotonicConfig.preset(name)
    assert cfg.ring_radius_m == LNOI400_MIN_SOURCED_RADIUS_M == cfg.bend_loss_min_sourced_radius_m
    assert cfg.loss_model == "bend" and cfg.drift_model == "thermal"
    fsr = float(ring.fsr_m(cfg.wavelength_center_m, cfg.n_g, cfg.ring_radius_m))
    assert fsr == pytest.approx(2.2965e-9, rel=1e-4)
    assert cfg.channel_spacing_m == pytest.approx(math.floor(fsr / cfg.n_lines * 1e12) * 1e-12, abs=1e-18)
    assert cfg.n_lines * cfg.channel_spacing_m <= fsr
    assert cfg.ring_pitch_m == pytest.approx(2.5 * cfg.ring_radius_m)
    assert cfg.ring_capacitance_f == pytest.approx(0.3e-15 / 1e-6 * math.pi * cfg.ring_radius_m, rel=1e-3)
    assert cfg.weight_range_target == pytest.approx(_reach(cfg))
    # Q: the smallest grid value that meets the leakage limit
    assert _meets_leakage(cfg, cfg.q_loaded)
    assert not _meets_leakage(cfg, _grid_below(cfg.q_loaded))


def test_tfln_preset_values():
    """The numbers the preset headers quote."""
    q = {n: PhotonicConfig.preset(n).q_loaded for n in TFLN}
    assert q == {"tfln-literature": 5e5, "tfln-timeshared": 2.2e5, "tfln-timeshared-32": 5e5}
    ts = PhotonicConfig.preset("tfln-timeshared")
    assert (ts.n_lines, ts.channel_spacing_m, ts.weight_range_target) == (16, 0.143e-9, 0.77)
    ts32 = PhotonicConfig.preset("tfln-timeshared-32")
    assert (ts32.n_lines, ts32.channel_spacing_m, ts32.weight_range_target) == (32, 0.071e-9, 0.48)
    assert _grid_below(2.2e5) == pytest.approx(2.1e5) and _grid_below(5e5) == pytest.approx(4.9e5)
    assert _grid_below(1e5) == pytest.approx(9.9e4)
