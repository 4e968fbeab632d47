"""The TFLN presets as designed before ring loss followed the radius: the fixture of mechanics tests."""

from __future__ import annotations

from kvprism.photonics import PhotonicConfig


def earlier_design(name: str) -> PhotonicConfig:
    """A TFLN preset as designed before ring loss followed the radius (20 µm ring, 12 µm for tfln-timeshared-32, at a
    fixed 20 dB/m; drift 1 pm per ring / 2 pm global; Q 1e5, weights ±0.85, 0.2 nm comb grid (0.4 nm time-shared),
    50 µm ring pitch, 20 fF electrodes): the fixture of the mechanics tests that use it. The bend model says this ring
    cannot be built in the lnoi400 cross-section (tests/photonics/test_loss.py)."""
    return PhotonicConfig.preset(name).replace(
        loss_model="fixed", loss_db_per_m=20.0, ring_radius_m=12e-6 if name.endswith("-32") else 20e-6,
        drift_model="fixed", drift_ring_sigma_m=1e-12, drift_global_sigma_m=2e-12, q_loaded=1e5,
        weight_range_target=0.85, channel_spacing_m=0.2e-9 if name == "tfln-literature" else 0.4e-9,
        ring_pitch_m=50e-6, ring_capacitance_f=20e-15,
    )  # fmt: skip
