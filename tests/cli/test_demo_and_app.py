import subprocess
import sys

import pytest

import kvprism
from kvprism.cli import main


def test_help(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "demo" in out and "version" in out


def test_version(capsys):
    assert main(["version"]) == 0
    assert kvprism.__version__ in capsys.readouterr().out


def test_usage_error_exit_code(capsys):
    assert main(["no-such-command"]) == 2
    assert main(["demo", "--context", "3"]) == 2


def test_error_is_one_line(capsys):
    assert main(["demo", "--depth", "1.5"]) == 2  # a bad value: exit 2 (README, exit codes)
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --depth = 1.5 is invalid; allowed range: [0, 1]")
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_model_error_is_one_line_and_debug_shows_traceback():
    cmd = [sys.executable, "-m", "kvprism.cli", "demo", "--model", "./no/such/dir"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 2  # a bad --model value (README, exit codes)
    assert len(res.stderr.strip().splitlines()) == 1 and "does not exist" in res.stderr
    res = subprocess.run([*cmd[:3], "--debug", *cmd[3:]], capture_output=True, text=True)
    assert res.returncode != 0 and "Traceback" in res.stderr


@pytest.mark.slow
def test_demo_finds_needle(capsys, smollm2_dir):
    assert main(["demo", "--context", "1024", "--max-new-tokens", "16", "--verbose"]) == 0
    out = capsys.readouterr().out
    assert "correct" in out and "1024 tokens" in out
    assert "conversions clipped" in out  # the photonic run reports its ADC clipping (--verbose)


def test_demo_prints_the_energy_model_step_of_each_photonic_run(capsys, tmp_path):
    """Each photonic run ends with the energy model's decode step of the loaded model at the prompt's context,
    against the GPU baselines, with numbers that add up."""
    import re

    from tests.conftest import tiny_model, tiny_tokenizer

    tiny_model("llama").save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    args = ["demo", "--model", str(tmp_path), "--context", "700", "--max-new-tokens", "2", "--preset",
            "tfln-timeshared", "--block-size", "16", "--k", "4", "--threads", "1", "--verbose"]  # fmt: skip
    assert main(args) == 0
    out = " ".join(capsys.readouterr().out.split())
    q = r"([\d.]+ [pnµm]?J)"
    m = re.search(rf"energy per token: photonic {q} \(chip {q} \+ static {q}, rest KV fetch\) vs "
                  rf"GPU dense {q}, GPU sparse {q}", out)  # fmt: skip
    assert m, out
    scale = {"p": 1e-12, "n": 1e-9, "µ": 1e-6, "m": 1e-3, "": 1.0}
    total, chip, static, dense, sparse = (float(v.split()[0]) * scale[v.split()[1][:-1]] for v in m.groups())
    assert total >= chip + static - 0.01 * total and dense > sparse > 0
    # the verdict line: energy per token against GPU sparse, with units and 3 significant figures
    assert re.search(
        r"photonic tfln-timeshared .* · [\d.]+ [pnµm]?J/token vs GPU sparse [\d.]+ [pnµm]?J \([\d.,]+× (less|more)\)",
        out,
    )
    assert "e-0" not in out and "{" not in out  # no raw floats, no dict dump
