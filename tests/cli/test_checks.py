"""Issue 30 (config / CLI reliability): every option is checked before a model loads or a capture starts, every bad
value exits 2 with one line, a corrupt store has a way on, file errors name the file. One test per finding, and a
table over every command's options."""

import json
import os

import pytest

from kvprism.cli import main
from kvprism.errors import ConfigError
from kvprism.eval.store import RESULTS_FILE


@pytest.fixture
def no_work(monkeypatch):
    """The model loader, the reference capture and the energy computation fail the test if they are called."""

    def refuse(*a, **k):
        raise AssertionError("work started before the options were checked")

    monkeypatch.setattr("kvprism.hf.models.load_model", refuse)
    monkeypatch.setattr("kvprism.search.capture.reference_set", refuse)
    monkeypatch.setattr("kvprism.energy.report.build_summary", refuse)


def _one_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


# ---------------------------------------------------------------------------------- 2: config objects = the CLI
def test_selection_k_zero_is_invalid_as_on_the_command_line():
    from kvprism.selection import SelectionConfig

    with pytest.raises(ConfigError, match=r"SelectionConfig.k = 0 is invalid; allowed range: \[1, inf\)"):
        SelectionConfig(k=0)


def test_unknown_field_is_a_config_error_naming_the_closest_field_and_no_private_one():
    from kvprism.selection import SelectionConfig

    with pytest.raises(ConfigError, match=r"no field 'scorr' \(did you mean 'scorer'\?\)") as info:
        SelectionConfig(scorr="exact")
    with pytest.raises(ConfigError, match="no field 'nosuchfield'"):
        SelectionConfig(nosuchfield=1)
    with pytest.raises(ConfigError, match="did you mean 'window'"):
        SelectionConfig().replace(windw=3)
    assert "_preset_dir" not in str(info.value) and "_sections" not in str(info.value)


def test_select_lists_no_private_field(capsys, no_work, tmp_path):
    assert main(["niah", "--select", "bogus=1", "--out", str(tmp_path / "r")]) == 2
    err = _one_line(capsys.readouterr().err)
    assert "_preset_dir" not in err and "_sections" not in err and "_renamed" not in err and "d_sig" in err


# ------------------------------------------------------------------- 3, 4, 5: every bad value exits 2 before work
def _args(tmp, tiny_dir, text):
    out = []
    for a in text.split():
        out.append(a.replace("{tmp}", str(tmp)).replace("{model}", str(tiny_dir)))
    return out


#: command line -> a fragment of its one-line error. {tmp}: a folder holding `file` (text) and `bad.json`.
BAD = [
    ("niah --device cuda:7 --model {model}", "--device"),
    ("niah --device nonsense --model {model}", "--device"),
    ("niah --model {tmp}/file", "is a file, not a model"),
    ("niah --model {tmp}/none.gguf", "does not exist"),
    ("niah --k 4,,8 --model {model}", "empty item"),
    ("niah --k 0 --model {model}", "--k: 0 is invalid"),
    ("niah --depths 1.5 --model {model}", "--depths: 1.5 is invalid"),
    ("niah --contexts , --model {model}", "--contexts"),
    ("niah --budget topk --top-p 0.5 --configs exact --model {model}", "--top-p needs --budget top_p"),
    ("niah --configs dense --select d_sig=8 --model {model}", "every configuration is dense"),
    ("niah --configs dense --d-sig 8 --model {model}", "every configuration is dense"),
    ("niah --configs dense,nope --model {model}", "'nope' is neither"),
    ("niah --grid {tmp}/file --model {model}", "--grid"),
    ("niah --heads {tmp}/nomask.json --model {model}", "--heads"),
    ("niah --selection {tmp} --model {model}", "is a directory"),
    ("niah --photonic {tmp}/nochip.toml --model {model}", "does not exist"),
    ("niah --out {tmp}/file --model {model}", "is a file"),
    ("recall --sweep --configs exact --model {model}", "--configs cannot be combined with --sweep"),
    ("recall --d-sigs 4,8 --model {model}", "--d-sigs cannot be combined"),
    ("recall --sweep --d-sigs 0 --model {model}", "--d-sigs: 0 is invalid"),
    ("demo --preset nope --model {model}", "--preset = 'nope' is unknown"),
    ("demo --depth 2 --model {model}", "--depth = 2.0 is invalid"),
    ("demo --device cuda:7 --model {model}", "--device"),
    ("heads --fraction 0 --model {model}", "--fraction"),
    ("heads --out {tmp}/x.txt --model {model}", "must end in .json"),
    ("hw --list --preset ideal", "--preset cannot be combined with --list"),
    ("hw --preset nope", "--preset = 'nope' is unknown"),
    ("hw --config {tmp}/file", "must be a PhotonicConfig TOML file"),
    ("hw --tokens-per-s 5", "--tokens-per-s needs --model-shape"),
    ("hw --batch 4", "need --model-shape"),
    ("energy --gpu-times {tmp}/bad.json", "GPU times file"),
    ("energy --gpu-times {tmp}/missing.json", "does not exist"),
    ("energy --model-shape nope", "unknown model shape"),
    ("energy --contexts 4q", "--contexts"),
    ("energy --preset nope", "--preset = 'nope' is unknown"),
    ("energy --config {tmp}/file --preset ideal", "--preset cannot be combined with --config"),
    ("design capture --projection bogus --model {model}", "--projection = 'bogus' is invalid"),
    ("design capture --d-sig 8,,16 --model {model}", "empty item"),
    ("design capture --device cuda:7 --model {model}", "--device"),
    ("design search --fix bogus --model {model} --out {tmp}/s", "--fix: bogus is no search parameter"),
    ("design search --base nope --model {model} --out {tmp}/s", "--base = 'nope' is unknown"),
    ("design search --shape nope --model {model} --out {tmp}/s", "unknown model shape"),
    ("design search --reference {tmp}/none.safetensors --out {tmp}/s", "does not exist"),
    ("design evaluate --configs nope --model {model}", "'nope' is neither"),
    ("design evaluate --configs ideal --k 4,,8 --model {model}", "empty item"),
    ("claims --depths 1.5 --model {model} --out {tmp}/c", "--depths: 1.5 is invalid"),
    ("claims --device cuda:7 --model {model} --out {tmp}/c", "--device"),
    ("report {tmp}/nope", "does not exist"),
    ("store repair {tmp}/nope", "does not exist"),
]


@pytest.mark.parametrize(("line", "fragment"), BAD, ids=[b[0] for b in BAD])
def test_every_bad_value_exits_2_with_one_line_before_any_work(tmp_path, tiny_dir, capsys, no_work, line, fragment):
    (tmp_path / "file").write_text("x")
    (tmp_path / "bad.json").write_text('[{"batch": 1}]')
    args = _args(tmp_path, tiny_dir, line)
    if args[0] in ("niah", "recall") and "--out" not in args:
        args += ["--out", str(tmp_path / "run")]
    if args[0] in ("niah", "recall") and "--contexts" not in args:
        args += ["--contexts", "150"]
    if args[0] == "heads" and "--out" not in args:
        args += ["--out", str(tmp_path / "h.json")]
    assert main(args) == 2
    err = _one_line(capsys.readouterr().err)
    assert err.startswith("error") and fragment in err, err
    assert "Traceback" not in err


def test_help_imports_no_torch():
    import subprocess
    import sys

    code = "import sys; from kvprism.cli import main; main(['--help']); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False"


# ---------------------------------------------------------------------------------- 6: stores and files
def _run(tiny_dir, out, *extra):
    args = ["niah", "--model", str(tiny_dir), "--contexts", "150", "--depths", "0.5", "--haystack", "noise"]
    return main([*args, "--max-new-tokens", "2", "--threads", "1", "--configs", "dense", *extra, "--out", str(out)])


def test_corrupt_middle_line_names_store_repair_and_skip_corrupt_resumes(tmp_path, tiny_dir, capsys):
    out = tmp_path / "run"
    assert _run(tiny_dir, out, "--seeds", "0,1") == 0
    lines = (out / RESULTS_FILE).read_text().splitlines()
    (out / RESULTS_FILE).write_text(lines[0] + "\n{not json\n" + lines[1] + "\n")
    capsys.readouterr()
    assert _run(tiny_dir, out, "--seeds", "0,1") == 2
    err = _one_line(capsys.readouterr().err)
    assert "line 2" in err and f"kvprism store repair {out}" in err and "--skip-corrupt" in err
    assert _run(tiny_dir, out, "--seeds", "0,1", "--skip-corrupt") == 0
    assert "ran 0 cells (2 already done)" in capsys.readouterr().out
    assert (out / (RESULTS_FILE + ".corrupt")).read_text() == "{not json\n"


def test_store_repair_moves_bad_lines_aside(tmp_path, tiny_dir, capsys):
    out = tmp_path / "run"
    assert _run(tiny_dir, out) == 0
    good = (out / RESULTS_FILE).read_text()
    row = json.loads(good)
    row["decode_steps"] = "two"
    (out / RESULTS_FILE).write_text(json.dumps(row) + "\n" + good)
    capsys.readouterr()
    assert main(["store", "repair", str(out)]) == 0
    assert "moved 1 line(s)" in capsys.readouterr().out
    assert (out / RESULTS_FILE).read_text() == good
    assert main(["report", str(out)]) == 0


def test_wrong_type_field_is_named_with_file_line_and_field_before_the_model_loads(
    tmp_path, tiny_dir, capsys, monkeypatch
):
    out = tmp_path / "run"
    assert _run(tiny_dir, out) == 0
    row = json.loads((out / RESULTS_FILE).read_text())
    row["context"] = "150"
    (out / RESULTS_FILE).write_text(json.dumps(row) + "\n")
    capsys.readouterr()
    monkeypatch.setattr("kvprism.hf.models.load_model", lambda *a, **k: pytest.fail("loaded"))
    assert _run(tiny_dir, out) == 2
    err = _one_line(capsys.readouterr().err)
    assert f"{out / RESULTS_FILE} line 1: field 'context'" in err


def test_os_error_is_one_line_naming_the_file(tmp_path, capsys, monkeypatch):
    import errno

    def full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("kvprism.atomic.os.write", full)
    out = tmp_path / "e"
    assert main(["energy", "--contexts", "4k", "--out", str(out)]) == 1
    err = _one_line(capsys.readouterr().err)
    assert "No space left on device" in err and str(out) in err


def test_leftover_tmp_files_are_removed_on_the_next_write(tmp_path):
    from kvprism.atomic import atomic_write

    dead = tmp_path / ".summary.json.999999999.abcd1234.tmp"  # no such pid
    live = tmp_path / f".summary.json.{os.getpid()}.abcd1234.tmp"  # this process: kept
    dead.write_text("half")
    live.write_text("mine")
    atomic_write(tmp_path / "other.txt", "x")
    assert not dead.exists() and live.exists()
