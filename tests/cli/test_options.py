"""Every SelectionConfig option of niah / recall / demo / heads reaches the SelectionConfig; bad values are one-line
usage errors (exit code 2) naming the option, before any model loads."""

import inspect

import pytest

import kvprism.cli.eval as cli
from kvprism.cli import main
from kvprism.photonics import PhotonicConfig
from kvprism.selection import SelectionConfig
from tests.conftest import tiny_model, tiny_tokenizer

#: option, value on the command line, field, expected value (a value other than SelectionConfig's default)
OPTIONS = [
    ("--d-sig", "5", "d_sig", 5),
    ("--signature", "minmax", "signature", "minmax"),
    ("--sig-rows", "3", "sig_rows", 3),
    ("--budget", "top_p", "budget", "top_p"),
    ("--top-p", "0.7", "top_p", 0.7),
    ("--projection", "pca", "projection", "pca"),
    ("--sign", "relu", "sign", "relu"),
    ("--gqa-reduce", "max", "gqa_reduce", "max"),
    ("--sink-blocks", "2", "sink_blocks", 2),
    ("--window", "16", "window", 16),
    ("--selection-seed", "7", "seed", 7),
]


@pytest.fixture
def captured_grid(monkeypatch):
    """Replaces the model load + run of niah / recall by a capture of what would run."""
    seen: dict = {}

    def fake_run_grid(**kwargs):
        seen.update(kwargs)

    monkeypatch.setattr(cli, "run_grid", fake_run_grid)
    return seen


def test_niah_k_default_is_the_selection_default():
    assert SelectionConfig().k == cli.DEFAULT_K
    assert inspect.signature(cli.niah).parameters["k"].default == str(SelectionConfig().k)


def test_defaults_differ_from_the_tested_values():
    default = SelectionConfig()
    for _, _, field, value in OPTIONS:
        assert getattr(default, field) != value, field  # else the test could not see the option arrive


@pytest.mark.parametrize("command", ["niah", "recall"])
@pytest.mark.parametrize(("option", "text", "field", "value"), OPTIONS)
def test_eval_option_reaches_every_selection_config(
    tmp_path, tiny_dir, captured_grid, command, option, text, field, value
):
    args = [command, "--model", str(tiny_dir), "--configs", "dense,exact,ideal", "--k", "2,3", "--contexts", "150"]
    budget = ["--budget", "top_p"] if option == "--top-p" else []  # --top-p alone selects nothing: refused
    assert main([*args, option, text, *budget, "--out", str(tmp_path / "run")]) == 0
    cfgs = captured_grid["configs"]
    sel = [c.selection for c in cfgs if c.method != "dense"]
    assert len(sel) == 4 and all(getattr(s, field) == value for s in sel)
    assert [c.method for c in cfgs] == ["dense", "exact", "exact", "photonic", "photonic"]


def test_carry_reaches_niah_and_recall_which_decodes_one_step_has_no_carry(tmp_path, tiny_dir, captured_grid):
    args = ["--model", str(tiny_dir), "--configs", "dense,exact", "--k", "2,3", "--contexts", "150"]
    assert main(["niah", *args, "--carry", "1", "--out", str(tmp_path / "run")]) == 0
    assert [c.selection.carry for c in captured_grid["configs"] if c.method != "dense"] == [1, 1]
    assert main(["recall", *args, "--carry", "1", "--out", str(tmp_path / "r2")]) == 2
    assert main(["niah", *args, "--carry", "-1", "--out", str(tmp_path / "r3")]) == 2  # carry below 0


def test_selection_file_photonic_file_and_explicit_options(tmp_path, tiny_dir, captured_grid):
    sel_file = tmp_path / "sel.toml"
    sel_file.write_text("block_size = 16\nwindow = 48\nprojection = 'random'\n")
    preset = tmp_path / "chip.toml"
    preset.write_text((PhotonicConfig._preset_dir / "ideal.toml").read_text())
    args = ["niah", "--model", str(tiny_dir), "--configs", "exact", "--k", "2", "--contexts", "150"]
    args += ["--selection", str(sel_file), "--photonic", str(preset), "--window", "8", "--dtype", "bfloat16"]
    assert main([*args, "--out", str(tmp_path / "run")]) == 0
    cfgs = captured_grid["configs"]
    assert [c.name for c in cfgs] == ["exact-k2", "chip-k2"]
    for c in cfgs:
        assert (c.selection.block_size, c.selection.window, c.selection.projection) == (16, 8, "random")
    assert cfgs[1].selection.photonic == PhotonicConfig.from_toml(preset)
    assert captured_grid["dtype"] == "bfloat16"


def test_grid_file_on_the_command_line(tmp_path, tiny_dir, captured_grid):
    grid = tmp_path / "grid.toml"
    grid.write_text(
        'tasks = ["niah_single"]\ncontexts = [150, 200]\ndepths = [0, 1]\nseeds = [0, 1]\nconfigs = ["dense", "exact"]\n'
        'k = [2]\nhaystack = "noise"\n[selection]\nblock_size = 16\n[[config]]\nmethod = "photonic"\npreset = "ideal"\nk = 3\n'
    )
    assert (
        main(["niah", "--model", str(tiny_dir), "--grid", str(grid), "--sign", "relu", "--out", str(tmp_path / "r")])
        == 0
    )
    g = captured_grid
    assert (g["contexts"], g["depths"], g["seeds"], g["haystack"]) == ([150, 200], [0.0, 1.0], [0, 1], "noise")
    assert [c.name for c in g["configs"]] == ["dense", "exact-k2", "ideal-k3"]
    assert all(c.selection.sign == "relu" and c.selection.block_size == 16 for c in g["configs"][1:])
    # the file gives the grid: the options it replaces are refused
    assert main(["niah", "--grid", str(grid), "--contexts", "100", "--out", str(tmp_path / "r")]) == 2


@pytest.mark.parametrize(
    ("args", "option", "allowed"),
    [
        (["niah", "--d-sig", "0"], "--d-sig", "allowed range: [1, inf)"),
        (["recall", "--top-p", "1.5"], "--top-p", "allowed range: (0, 1]"),
        (["niah", "--signature", "best"], "--signature", "allowed: 'mean'"),
        (["recall", "--gqa-reduce", "min"], "--gqa-reduce", "allowed: 'sum', 'max'"),
        (["niah", "--window", "-1"], "--window", "allowed range: [0, inf)"),
        (["demo", "--projection", "magic"], "--projection", "allowed: "),
        (["demo", "--sink-blocks", "-1"], "--sink-blocks", "allowed range: [0, inf)"),
        (["heads", "--block-size", "0"], "--block-size", "allowed range: [1, inf)"),
        (["niah", "--dtype", "int8"], "--dtype", "allowed: float32, bfloat16, float16"),
        (["demo", "--dtype", "half"], "--dtype", "allowed: float32"),
        (["niah", "--photonic", "chip.json"], "--photonic", "must be a PhotonicConfig TOML file"),
        (["niah", "--selection", "nothing.toml"], "--selection", "does not exist"),
    ],
)
def test_bad_option_is_one_usage_line_before_any_model_loads(tmp_path, capsys, monkeypatch, args, option, allowed):
    def no_load(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("kvprism.hf.models.load_model", no_load)
    out = tmp_path / "run"
    extra = {"demo": [], "heads": ["--out", str(tmp_path / "h.json")]}.get(args[0], ["--out", str(out)])
    assert main([*args, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and option in err and allowed in err
    assert not out.exists()


def test_bad_selection_file_names_the_field(tmp_path, capsys):
    path = tmp_path / "sel.toml"
    path.write_text("window = -3\n")
    assert main(["niah", "--selection", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--selection" in err and "SelectionConfig.window = -3 is invalid; allowed range: [0, inf)" in err


def test_demo_options_reach_its_selection_configs(monkeypatch, capsys):
    from kvprism.hf.cache import SparseCache

    seen = []
    real = SparseCache.from_prefilled

    def fake_from_prefilled(model, prefilled, sel, **kw):
        seen.append(sel)
        return real(model, prefilled, sel, **kw)

    model = tiny_model("llama")
    monkeypatch.setattr("kvprism.hf.models.load_model", lambda *a, **k: (model, tiny_tokenizer()))
    monkeypatch.setattr("kvprism.hf.cache.SparseCache.from_prefilled", staticmethod(fake_from_prefilled))
    args = ["demo", "--context", "200", "--max-new-tokens", "1", "--k", "3", "--block-size", "16"]
    args += ["--preset", "ideal,seed-nominal", "--model", "tiny"]
    for option, text, _, _ in OPTIONS:
        args += [option, text]
    assert main(args) == 0
    assert "photonic ideal " in capsys.readouterr().out  # its verdict line
    assert len(seen) == 2
    for sel in seen:
        assert (sel.k, sel.block_size, sel.scorer) == (3, 16, "photonic")
        for _, _, field, value in OPTIONS:
            assert getattr(sel, field) == value, field
    assert [s.photonic for s in seen] == ["ideal", "seed-nominal"]


def test_heads_sink_and_window_follow_the_selection(tmp_path, tiny_dir):
    import json

    sel_file = tmp_path / "sel.toml"
    sel_file.write_text("window = 12\nblock_size = 8\n")
    out = tmp_path / "heads.json"
    args = ["heads", "--model", str(tiny_dir), "--text-tokens", "64", "--selection", str(sel_file)]
    assert main([*args, "--block-size", "4", "--sink-blocks", "3", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert (data["sink_tokens"], data["window_tokens"]) == (12, 12)  # 3 sink blocks of 4 tokens; the file's window
