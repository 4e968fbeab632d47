"""Evaluation configurations and grid files (kvprism.eval.grid)."""

import pytest

from kvprism.errors import KvprismError
from kvprism.eval.grid import EvalConfig, Grid, build_configs
from kvprism.photonics import PhotonicConfig
from kvprism.selection import SelectionConfig

GRID = """
tasks = ["niah_single"]
contexts = [150, 200]
depths = [0, 0.5]
seeds = [0, 1]
configs = ["dense", "exact", "ideal"]
k = [4, 8]
haystack = "noise"
max_new_tokens = 3

[selection]
block_size = 16
window = 32

[[config]]
method = "exact"
k = 2
d_sig = 4
projection = "pca"
name = "exact-pca"
"""


def test_eval_config_holds_a_typed_selection_config():
    c = EvalConfig("x", "photonic", 4, "ideal", {"block_size": 16})
    assert c.selection == SelectionConfig(block_size=16, k=4, scorer="photonic", photonic="ideal")
    assert c.selection_config() is c.selection and c.describe()["method"] == "photonic"
    built = EvalConfig("y", "exact", None, None, SelectionConfig(k=5, d_sig=8))
    assert built.k == 5 and built.selection.scorer == "exact" and built.selection.d_sig == 8
    assert EvalConfig("dense", "dense", 3, None, {"block_size": 16}).selection is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("x", "magic", 4), "method = 'magic' is invalid; allowed: dense, oracle, exact, photonic"),
        (("x", "photonic", 4, "no-such"), "'no-such' is neither 'dense', 'oracle', 'exact' nor a photonic preset"),
        (("x", "exact", 4, None, {"window": -1}), r"SelectionConfig.window = -1 is invalid; allowed range: \[0, inf\)"),
    ],
)
def test_eval_config_errors_name_what_is_wrong(args, message):
    with pytest.raises(KvprismError, match=message):
        EvalConfig(*args)


def test_build_configs_with_a_preset_file(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text((PhotonicConfig._preset_dir / "ideal.toml").read_text())
    cfgs = build_configs(["dense", str(path)], [4])
    assert [c.name for c in cfgs] == ["dense", "mine-k4"]
    assert cfgs[1].selection.photonic == PhotonicConfig.from_toml(path)
    assert cfgs[1].selection.d_sig == PhotonicConfig.from_toml(path).n_lines


def test_grid_file_loads_every_axis_and_configuration(tmp_path):
    path = tmp_path / "grid.toml"
    path.write_text(GRID)
    g = Grid.from_toml(path)
    assert (g.tasks, g.contexts, g.depths, g.seeds) == (("niah_single",), (150, 200), (0.0, 0.5), (0, 1))
    assert (g.haystack, g.max_new_tokens) == ("noise", 3)
    names = [c.name for c in g.configs]
    assert names == ["dense", "exact-k4", "exact-k8", "ideal-k4", "ideal-k8", "exact-pca-k2"]
    pca = g.configs[-1].selection
    assert (pca.k, pca.d_sig, pca.projection, pca.block_size, pca.window) == (2, 4, "pca", 16, 32)
    ideal = g.configs[3].selection
    assert ideal.scorer == "photonic" and ideal.d_sig == PhotonicConfig.preset("ideal").n_lines
    assert len(g.points) == 8
    # fields given outside the file (the command line) sit under the file's [selection]
    assert Grid.from_toml(path, selection={"window": 8, "sign": "relu"}).configs[1].selection.sign == "relu"
    assert Grid.from_toml(path, selection={"window": 8}).configs[1].selection.window == 32


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("depths = [0, 0.5]", "depths = [0, 1.5]"), r"depths: 1.5 is invalid; allowed range: \[0, 1\]"),
        (("contexts = [150, 200]", "contexts = [150, 150]"), "contexts holds a value twice"),
        (("seeds = [0, 1]", "seeds = [0, 1]\nsteps = 3"), "unknown key steps"),
        (("window = 32", "window = -2"), r"SelectionConfig.window = -2 is invalid; allowed range: \[0, inf\)"),
        (("window = 32", "windows = 32"), "SelectionConfig has no field windows"),
        (('configs = ["dense", "exact", "ideal"]', 'configs = ["dense", "nope"]'), "'nope' is neither"),
        (("k = 2\n", "k = 0\n"), r"config\[0\]: k = 0 is invalid; allowed range: k >= 1"),
        (('method = "exact"', 'method = "magic"'), "method = 'magic' is invalid"),
        (
            ('k = 2\nd_sig = 4\nprojection = "pca"\nname = "exact-pca"', 'k = 4\nname = "exact"'),
            "'exact-k4' is given twice",
        ),
        (('tasks = ["niah_single"]', 'tasks = ["nope"]'), "tasks: 'nope' is unknown"),
        (('haystack = "noise"', 'haystack = "sand"'), "haystack = 'sand' is invalid"),
    ],
)
def test_grid_file_errors_name_the_key_and_the_allowed_range(tmp_path, change, message):
    path = tmp_path / "grid.toml"
    old, new = change
    assert old in GRID
    path.write_text(GRID.replace(old, new, 1))
    with pytest.raises(KvprismError, match=message) as exc:
        Grid.from_toml(path)
    assert len(str(exc.value).splitlines()) == 1


def test_grid_file_missing_or_broken(tmp_path):
    with pytest.raises(KvprismError, match="does not exist"):
        Grid.from_toml(tmp_path / "none.toml")
    (tmp_path / "bad.toml").write_text("tasks = [")
    with pytest.raises(KvprismError, match="is not valid TOML"):
        Grid.from_toml(tmp_path / "bad.toml")
