from kvprism.cli import main


def test_hw_list(capsys):
    assert main(["hw", "--list"]) == 0
    out = capsys.readouterr().out
    for name in ("ideal", "seed-nominal", "seed-pessimistic", "seed-optimistic", "tfln-literature"):
        assert name in out


def test_hw_preset_prints_verdict(capsys):
    assert main(["hw", "--preset", "seed-nominal"]) == 0
    out = capsys.readouterr().out
    assert "ring FSR" in out and "8.31 nm" in out and "violated constraint" in out and "comb span" in out


def test_hw_config_file(tmp_path, capsys):
    path = tmp_path / "chip.toml"
    path.write_text("channel_spacing_m = 0.2e-9\nrows_per_bank = 64\nn_banks = 4\n", encoding="utf-8")
    assert main(["hw", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "6.40 nm" in out


def test_hw_errors_are_one_line(capsys):
    assert main(["hw", "--preset", "nope"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown PhotonicConfig preset 'nope'") and len(err.splitlines()) == 1
    assert main(["hw", "--preset", "ideal", "--config", "x.toml"]) == 1
