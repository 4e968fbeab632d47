import dataclasses

import pytest

from kvprism.config import ConfigBase, param
from kvprism.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Demo(ConfigBase):
    block_size: int = param(64, doc="tokens per block", ge=1, le=4096)
    wavelength_m: float = param(1.55e-6, doc="centre wavelength", unit="m", gt=0.0)
    mode: str = param("offset", doc="encoding", choices=("offset", "dual-rail"))
    label: str | None = param(None, doc="free text")

    def _check(self) -> None:
        if self.mode == "dual-rail" and self.block_size > 1024:
            self._fail("block_size", self.block_size, "must be <= 1024 with mode='dual-rail'")


def test_defaults_and_replace():
    cfg = Demo()
    new = cfg.replace(block_size=128)
    assert new.block_size == 128 and cfg.block_size == 64
    assert new.wavelength_m == 1.55e-6


def test_int_accepted_for_float():
    assert Demo(wavelength_m=2).wavelength_m == 2.0
    assert isinstance(Demo(wavelength_m=2).wavelength_m, float)


@pytest.mark.parametrize(
    "changes, pattern",
    [
        ({"block_size": 0}, r"Demo\.block_size = 0 is invalid; allowed range: \[1, 4096\]"),
        ({"wavelength_m": -1.0}, r"Demo\.wavelength_m = -1\.0 .*\(0, inf\) m"),
        ({"wavelength_m": float("nan")}, r"wavelength_m = nan"),
        ({"mode": "single"}, r"Demo\.mode = 'single' .*allowed: 'offset', 'dual-rail'"),
        ({"block_size": 2.5}, r"Demo\.block_size = 2\.5 .*type int"),
        ({"block_size": True}, r"Demo\.block_size = True"),
        ({"mode": "dual-rail", "block_size": 2048}, r"block_size = 2048 .*dual-rail"),
    ],
)
def test_invalid_values_name_the_field(changes, pattern):
    with pytest.raises(ConfigError, match=pattern):
        Demo().replace(**changes)


def test_replace_unknown_field():
    with pytest.raises(ConfigError, match="has no field 'blocksize'"):
        Demo().replace(blocksize=3)


def test_from_toml(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[meta]\nnote = "free text"\n', encoding="utf-8")
    path.write_text('block_size = 32\nmode = "dual-rail"\n[meta]\nnote = "x"\n', encoding="utf-8")
    cfg = Demo.from_toml(path)
    assert (cfg.block_size, cfg.mode) == (32, "dual-rail")


def test_from_toml_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("block_sise = 32\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"no field 'block_sise' in .*bad\.toml"):
        Demo.from_toml(bad)
    bad.write_text("block_size = 99999\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"block_size = 99999"):
        Demo.from_toml(bad)
    bad.write_text("block_size = \n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid TOML"):
        Demo.from_toml(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        Demo.from_toml(tmp_path / "missing.toml")


def test_presets_without_dir():
    assert Demo.presets() == []
    with pytest.raises(ConfigError, match="unknown Demo preset 'x'"):
        Demo.preset("x")


def test_describe_lists_units_and_ranges():
    rows = {r["name"]: r for r in Demo.describe()}
    assert rows["wavelength_m"]["unit"] == "m"
    assert rows["block_size"]["allowed"] == "[1, 4096]"
    assert rows["mode"]["allowed"] == "offset, dual-rail"
