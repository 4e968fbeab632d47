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
    assert main(["hw", "--preset", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --preset = 'nope' is unknown") and len(err.splitlines()) == 1
    assert main(["hw", "--preset", "ideal", "--config", "x.toml"]) == 2


def test_hw_timed_by_decode(capsys):
    assert main(["hw", "--preset", "tfln-literature", "--model-shape", "qwen2.5-7b", "--tokens-per-s", "20",
                 "--context", "4096"]) == 0  # fmt: skip
    out = " ".join(capsys.readouterr().out.split())
    assert "timed by decode: qwen2.5-7b" in out and "4,096 tokens" in out and "≤ the selection budget 5 ms" in out
    assert "5.6e+03" in out and "score-referred" in out and "recall@32" in out
    assert "NOT feasible at qwen2.5-7b, 4,096 tokens" in out


def test_hw_without_a_model_shape_says_it_is_untimed(tmp_path, capsys):
    """No preset is called feasible without a timing: untimed, even a chip that violates nothing only passes the
    untimed checks."""
    small = tmp_path / "small-ideal.toml"  # the ideal chip, small enough for one die
    small.write_text(
        "crosstalk = false\nprogram_bits = 0\nquery_bits = 0\nnoise = false\nadc_bits = 0\ntrim_sigma_m = 0.0\n"
        "coupler_gap_sigma_m = 0.0\ndrift_ring_sigma_m = 0.0\ndrift_global_sigma_m = 0.0\nrows_per_bank = 128\n"
        "n_banks = 4\nn_lines = 16\nchannel_spacing_m = 0.4e-9\ntrim_mechanism = 'one-time'\n"
        "one_time_trim_range_m = 8e-9\nlaser_line_dbm = 6.0\nv_max_v = 10.0\n",
        encoding="utf-8",
    )
    assert main(["hw", "--config", str(small)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "untimed" in out and "passes the untimed checks — not a feasibility verdict" in out, out[-400:]
    assert "feasible: no constraint violated" not in out
    assert main(["hw", "--config", str(small), "--untimed"]) == 0
    assert "not a feasibility verdict" in " ".join(capsys.readouterr().out.split())
    assert main(["hw", "--config", str(small), "--untimed", "--model-shape", "qwen2.5-7b"]) == 2
    assert "--untimed" in capsys.readouterr().err
    assert main(["hw", "--config", str(small), "--model-shape", "qwen2.5-7b", "--context", "4096"]) == 0
    assert "feasible at qwen2.5-7b, 4,096 tokens" in " ".join(capsys.readouterr().out.split())


def test_hw_timing_errors(capsys):
    assert main(["hw", "--tokens-per-s", "20"]) == 2
    assert "--model-shape" in capsys.readouterr().err
    assert main(["hw", "--model-shape", "nope"]) == 2
    assert "unknown model shape" in capsys.readouterr().err


def test_hw_write_timed_writes_the_config_the_decode_times(tmp_path, capsys):
    """--write-timed: the preset as timed by --model-shape / --tokens-per-s, loadable, with the timed fields."""
    from kvprism.photonics import PhotonicConfig
    from kvprism.photonics.design import decode_timing, timed_by_decode

    path = tmp_path / "timed.toml"
    args = ["hw", "--preset", "tfln-timeshared", "--model-shape", "smollm2-135m", "--tokens-per-s", "200"]
    assert main([*args, "--write-timed", str(path)]) == 0
    assert f"wrote {path}" in capsys.readouterr().out.replace("\n", "")
    cfg = PhotonicConfig.preset("tfln-timeshared")
    want = timed_by_decode(cfg, decode_timing(cfg, n_layers=30, kv_heads=3, tokens_per_s=200.0, context=4096))
    got = PhotonicConfig.from_toml(path)
    assert got == want and got.detection_bandwidth_hz != cfg.detection_bandwidth_hz
    assert main(["hw", "--preset", "tfln-timeshared", "--write-timed", str(path)]) == 2  # needs --model-shape
    assert "--write-timed needs --model-shape" in capsys.readouterr().err
