"""PhotonicConfig in sections: TOML tables map one to one, both layouts load, leaf names stay the API."""

from __future__ import annotations

import pytest

from kvprism.config import ConfigError
from kvprism.photonics import PhotonicConfig


def test_every_field_has_a_section_and_both_layouts_load(tmp_path):
    cfg = PhotonicConfig.preset("tfln-literature")
    sections = PhotonicConfig.sections()
    assert "" not in sections and {"ring", "comb", "detector", "drift", "fabrication", "criteria"} <= set(sections)
    assert PhotonicConfig.from_dict(cfg.to_nested_dict()) == cfg
    assert PhotonicConfig.from_dict(cfg.to_dict()) == cfg
    flat = tmp_path / "flat.toml"
    flat.write_text("q_loaded = 2e5\nn_lines = 8\n")
    nested = tmp_path / "nested.toml"
    nested.write_text("[ring]\nq_loaded = 2e5\n[comb]\nn_lines = 8\n")
    assert PhotonicConfig.from_toml(flat) == PhotonicConfig.from_toml(nested) == PhotonicConfig(q_loaded=2e5, n_lines=8)
    assert cfg.replace(q_loaded=2e5).q_loaded == 2e5  # leaf names, no section needed


def test_wrong_table_and_duplicates_are_named(tmp_path):
    with pytest.raises(ConfigError, match=r"q_loaded belongs to \[ring\], not \[comb\]"):
        PhotonicConfig.from_dict({"comb": {"q_loaded": 1e5}})
    with pytest.raises(ConfigError, match="q_loaded is given twice"):
        PhotonicConfig.from_dict({"q_loaded": 1e5, "ring": {"q_loaded": 2e5}})
    with pytest.raises(ConfigError, match="no field 'nope'"):
        PhotonicConfig.from_dict({"ring": {"nope": 1}})


@pytest.mark.parametrize("name", PhotonicConfig.presets())
def test_shipped_presets_are_written_in_sections(name):
    import tomllib

    data = tomllib.loads((PhotonicConfig._preset_dir / f"{name}.toml").read_text())
    assert all(isinstance(v, dict) for v in data.values()), "every key lives in its section's table"
    PhotonicConfig.preset(name)
