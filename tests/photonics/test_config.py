import dataclasses

import pytest

import kvprism
from kvprism import PhotonicConfig
from kvprism.errors import ConfigError

PRESETS = [
    "ideal", "seed-nominal", "seed-optimistic", "seed-pessimistic", "tfln-timeshared", "tfln-timeshared-32",
    "tfln-literature",
]  # fmt: skip


def test_presets_ship_and_load():
    assert PhotonicConfig.presets() == sorted(PRESETS)
    cfgs = {p: PhotonicConfig.preset(p) for p in PRESETS}
    assert cfgs["ideal"].is_ideal and not cfgs["seed-nominal"].is_ideal
    nominal = cfgs["seed-nominal"]
    assert (nominal.q_loaded, nominal.tuning_m_per_v, nominal.program_bits) == (1e4, 28.5e-12, 5)
    assert nominal.drift_ring_sigma_m == 20e-12
    assert (cfgs["seed-pessimistic"].program_bits, cfgs["seed-pessimistic"].drift_ring_sigma_m) == (4, 30e-12)
    assert (cfgs["seed-optimistic"].program_bits, cfgs["seed-optimistic"].drift_ring_sigma_m) == (5, 10e-12)
    lit = cfgs["tfln-literature"]
    assert lit.tuning_m_per_v == 3e-12 and lit.q_loaded > nominal.q_loaded and lit.feedback_calibration
    assert lit.program_bits == 9


def test_public_exports():
    from kvprism.photonics import PhotonicEngine

    assert kvprism.PhotonicConfig is PhotonicConfig and kvprism.PhotonicEngine is PhotonicEngine


def test_every_field_documented_with_unit_and_source():
    for row in PhotonicConfig.describe():
        assert row["doc"] and row["source"], row["name"]
        f = next(f for f in dataclasses.fields(PhotonicConfig) if f.name == row["name"])
        if f.type in ("float", float) and not row["name"].startswith(("n_", "q_")):
            assert row["unit"] or row["name"] in {
                "weight_range_target",
                "adc_headroom",
                "laser_wall_plug_efficiency",
                "dc_relax_fraction",
            }


def test_custom_toml(tmp_path):
    path = tmp_path / "chip.toml"
    path.write_text('q_loaded = 2e4\nencoding = "dual-rail"\n\n[meta]\ndescription = "mine"\n', encoding="utf-8")
    cfg = PhotonicConfig.from_toml(path)
    assert cfg.q_loaded == 2e4 and cfg.encoding == "dual-rail" and cfg.program_bits == 5


@pytest.mark.parametrize(
    "changes, pattern",
    [
        ({"program_bits": -1}, r"PhotonicConfig\.program_bits = -1 is invalid; allowed range: \[0, 24\] bit"),
        ({"tuning_m_per_v": 0.0}, r"PhotonicConfig\.tuning_m_per_v = 0\.0 .*m/V"),
        ({"encoding": "single"}, r"PhotonicConfig\.encoding = 'single' .*'offset', 'dual-rail'"),
        ({"q_loaded": 5e6}, r"PhotonicConfig\.q_loaded = 5000000\.0 .*not reachable"),
        ({"rows_per_bank": 2.5}, r"PhotonicConfig\.rows_per_bank = 2\.5 .*type int"),
    ],
)
def test_bad_values_name_the_field(changes, pattern):
    with pytest.raises(ConfigError, match=pattern):
        PhotonicConfig.preset("seed-nominal").replace(**changes)


def test_bad_toml_names_the_field(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("q_loded = 1e4\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"no field 'q_loded' in .*bad\.toml \(did you mean 'q_loaded'\?\)"):
        PhotonicConfig.from_toml(path)
    path.write_text("adc_bits = 99\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"adc_bits = 99"):
        PhotonicConfig.from_toml(path)


def test_drift_update_steps_default_and_range():
    assert PhotonicConfig().drift_update_steps == 1 and PhotonicConfig.preset("seed-nominal").drift_update_steps == 1
    with pytest.raises(ConfigError, match="drift_update_steps"):
        PhotonicConfig(drift_update_steps=0)
