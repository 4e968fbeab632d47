"""CLI of the evaluation harness: niah / recall / heads / report."""

import json

import pytest

from kvprism.cli import main
from kvprism.eval.store import read_results
from tests.conftest import tiny_tokenizer


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["niah", "--depths", "0,1.5"], "--depths: 1.5 is invalid; allowed range: [0, 1]"),
        (["niah", "--k", "4,0"], "--k: 0 is invalid; allowed range: k >= 1"),
        (["niah", "--task", "nope"], "--task: 'nope' is unknown"),
        (["recall", "--contexts", "2k"], "--contexts = '2k' is invalid"),
        (["niah", "--haystack", "sand"], "--haystack = 'sand' is invalid"),
        (["heads", "--fraction", "1.5"], "--fraction = 1.5 is invalid"),
    ],
)
def test_bad_input_one_line_error_before_work(tmp_path, capsys, args, message):
    out = tmp_path / "run"
    assert main([*args, "--out", str(out)] if args[0] != "heads" else args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_unwritable_out_dir(tmp_path, capsys, tiny_dir):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    args = ["niah", "--model", str(tiny_dir), "--configs", "dense", "--contexts", "150"]
    assert main([*args, "--out", str(blocker / "sub")]) == 2
    assert "is not a writable directory" in capsys.readouterr().err


def test_context_beyond_model_window(tmp_path, capsys, tiny_dir):
    args = ["niah", "--model", str(tiny_dir), "--configs", "dense", "--contexts", "4096", "--out", str(tmp_path)]
    assert main(args) == 2
    assert "exceeds the model's window of 1024 tokens" in capsys.readouterr().err
    assert read_results(tmp_path / "results.jsonl") == []


def test_unknown_preset(tmp_path, capsys):
    pytest.importorskip("kvprism.hf.cache")
    pytest.importorskip("kvprism.photonics")
    assert main(["niah", "--configs", "dense,no-such-preset", "--out", str(tmp_path)]) == 2
    assert "'no-such-preset' is neither" in capsys.readouterr().err


def test_niah_grid_and_report_on_tiny_model(tmp_path, capsys, tiny_dir):
    out = tmp_path / "run"
    args = ["niah", "--model", str(tiny_dir), "--configs", "dense", "--contexts", "150,200", "--depths", "0,1"]
    args += ["--haystack", "noise", "--max-new-tokens", "3", "--out", str(out)]
    assert main(args) == 0
    rows = read_results(out / "results.jsonl")
    assert len(rows) == 4 and {r["context"] for r in rows} == {150, 200}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["time"]["prefills"] == 4 and summary["time"]["prefill_s"] > 0 and summary["time"]["decode_s"] > 0
    assert (out / "report.md").exists() and (out / "heatmap_niah_dense.png").exists()
    # rerun: nothing left to do
    assert main(args) == 0
    assert "ran 0 cells (4 already done)" in capsys.readouterr().out
    assert len(read_results(out / "results.jsonl")) == 4
    assert main(["report", str(out)]) == 0


def test_heads_on_tiny_model(tmp_path, tiny_dir):
    out = tmp_path / "heads.json"
    args = ["heads", "--model", str(tiny_dir), "--text-tokens", "64", "--sink", "4", "--window", "8"]
    assert main([*args, "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["layers"] == 2 and data["kv_heads"] == 2 and len(data["mask"]) == 2
    assert out.with_suffix(".png").exists()


@pytest.mark.slow
def test_smollm2_niah_smoke(tmp_path, smollm2_dir):
    """End-to-end on the default model: dense (and exact selection where sparse decode is installed)."""
    try:
        import kvprism.hf.cache  # noqa: F401

        configs = "dense,exact"
    except ImportError:
        configs = "dense"
    out = tmp_path / "smoke"
    args = ["niah", "--contexts", "1024", "--depths", "0.5", "--configs", configs, "--k", "4", "--out", str(out)]
    assert main(args) == 0
    rows = read_results(out / "results.jsonl")
    dense = next(r for r in rows if r["config"] == "dense")
    assert dense["correct"] is True  # the model finds this needle densely (same prompt as the demo test)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["time"]["prefill_s"] > 0 and summary["time"]["decode_s"] > 0
    for r in rows:
        if r["config"] != "dense":
            assert r["read_fraction_mean"] < 1.0 and r["restricted"] and r["block_recall"] is not None


def test_sample_seeds_are_distinct_reproducible_and_draw_distinct_needles():
    from kvprism.eval.grid import sample_seeds
    from kvprism.eval.tasks import make_sample

    seeds = sample_seeds([0, 1], 6)
    assert seeds == sample_seeds([0, 1], 6)  # the same on every run
    assert len(set(seeds)) == 12 and seeds[0] == 0 and seeds[6] == 1  # each given seed first, then derived ones
    assert sample_seeds([0], 1) == [0] and sample_seeds([0], 3) == seeds[:3]  # more samples only extend the list
    assert all(0 <= s < 2**31 for s in seeds)
    tok = tiny_tokenizer()
    answers = [tuple(make_sample("niah_single", tok, 200, 0.5, s, haystack="noise").answers) for s in seeds[:6]]
    assert len(set(answers)) == 6  # every sample hides its own needle value
    with pytest.raises(Exception, match="samples = 0 is invalid"):
        sample_seeds([0], 0)


def test_niah_samples_and_the_accuracy_summary(tmp_path, capsys, tiny_dir):
    from kvprism.eval.grid import Grid, sample_seeds

    out = tmp_path / "run"
    args = ["niah", "--model", str(tiny_dir), "--configs", "dense,exact", "--k", "2", "--block-size", "16"]
    args += ["--contexts", "200", "--depths", "0.5", "--samples", "3", "--haystack", "noise", "--max-new-tokens", "2"]
    assert main([*args, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    rows = read_results(out / "results.jsonl")
    assert sorted({r["seed"] for r in rows}) == sorted(sample_seeds([0], 3)) and len(rows) == 6
    assert "niah dense: " in printed and "/3, 95 % CI " in printed and "vs dense: 3 paired: both " in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["modes"]["niah"]["dense"]["accuracy"]["n"] == 3
    assert "95 % CI" in (out / "report.md").read_text()
    # a grid file sets samples too; --samples then belongs to the file
    grid = tmp_path / "grid.toml"
    grid.write_text(
        'tasks = "niah_single"\ncontexts = [200]\ndepths = [0.5]\nseeds = [0]\nsamples = 3\nconfigs = ["dense"]\n'
    )
    assert Grid.from_toml(grid).seeds == tuple(sample_seeds([0], 3))
    assert main(["niah", "--grid", str(grid), "--samples", "2", "--out", str(tmp_path / "g")]) == 2
    assert "remove --samples" in capsys.readouterr().err
    grid.write_text(grid.read_text().replace("samples = 3", "samples = 0"))
    with pytest.raises(Exception, match="samples = 0 is invalid"):
        Grid.from_toml(grid)


def test_demo_numbers_have_units_and_significant_figures():
    from kvprism.cli import demo as cli

    assert cli._si(1.3728786701081282e-08, "J") == "13.7 nJ"
    assert cli._si(5.1744682711620955e-08, "J") == "51.7 nJ"
    assert cli._si(999.96e-6, "s") == "1 ms" and cli._si(2.5, "J") == "2.5 J" and cli._si(0.0, "J") == "0 J"
    assert cli._counter("program_energy_j", 3.1879642691724455e-09) == "program energy 3.19 nJ"
    assert cli._counter("calibration_time_s", 10.367999999999997) == "calibration time 10.4 s"
    assert cli._counter("adc_conversions", 28800) == "adc conversions 28,800"
    assert cli._pct(0.0937) == "9.4 %" and cli._pct(1.0) == "100 %"
    assert cli._ratio(440e-6, 522e-6) == "1.2× more" and cli._ratio(3e-6, 0.5e-6) == "6× less"
    assert cli._ratio(1.07e-6, 127e-6) == "119× more" and cli._ratio(2e-2, 1e-6) == "20,000× less"
    verdict = cli._rates_verdict([(1.0, []), (10.0, []), (100.0, ["ADC too slow: 3 GS/s needed", "x"])], "p", False)
    assert "feasible[/] up to 10 tokens/s, not at 100: ADC too slow (+1 more; kvprism hw --preset p)" in verdict
    assert "infeasible[/] even at 1 token/s" in cli._rates_verdict([(1.0, ["drive: 7 V"])], "p", False)
    assert "up to 100 tokens/s" in cli._rates_verdict([(r, []) for r in cli.DEMO_RATES], "p", False)
