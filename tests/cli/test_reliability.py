"""Reliability of the command line: cell identity on resume, one writer per --out, interrupts, corrupt stores,
grid inputs, validation before heavy work, exit codes and JSON output (issue: every stored result belongs to the
settings that produced it)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import kvprism.eval.runner as R
from kvprism.cli import main
from kvprism.eval.grid import build_configs
from kvprism.eval.store import RESULTS_FILE, ResultStore, append_result, read_results
from tests.conftest import tiny_model, tiny_tokenizer

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _grid(tiny_dir, out, *extra):
    args = ["niah", "--model", str(tiny_dir), "--contexts", "150", "--depths", "0.5", "--haystack", "noise"]
    return [*args, "--max-new-tokens", "2", "--threads", "1", *extra, "--out", str(out)]


def _one_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


def _no_model_load(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr("kvprism.hf.models.load_model", refuse)


# -------------------------------------------------------------------------------------------------- cell identity
def test_resume_with_other_block_size_is_refused_not_reused(tmp_path, capsys, tiny_dir):
    """Finding: rerunning with --block-size 32 printed "ran 0 cells (1 already done)" (block size not in the key)."""
    out = tmp_path / "run"
    assert main(_grid(tiny_dir, out, "--configs", "dense,exact", "--k", "2", "--block-size", "16")) == 0
    rows = read_results(out / RESULTS_FILE)
    assert len(rows) == 2
    capsys.readouterr()
    assert main(_grid(tiny_dir, out, "--configs", "dense,exact", "--k", "2", "--block-size", "32")) == 1
    err = _one_line(capsys.readouterr().err)
    assert "exact-k2 (niah) cells computed under other settings" in err and "selection.block_size 16 -> 32" in err
    assert read_results(out / RESULTS_FILE) == rows  # nothing reused, nothing added
    # other answer length: dense cells are refused too (decode settings are in the key)
    assert main(_grid(tiny_dir, out, "--configs", "dense", "--max-new-tokens", "3")) == 1
    assert "decode.max_new_tokens 2 -> 3" in capsys.readouterr().err
    # the same settings resume (nothing to do); a new context is computed beside the old cells
    assert main(_grid(tiny_dir, out, "--configs", "dense,exact", "--k", "2", "--block-size", "16")) == 0
    assert "ran 0 cells (2 already done)" in capsys.readouterr().out
    args = _grid(tiny_dir, out, "--configs", "dense,exact", "--k", "2", "--block-size", "16")
    args[args.index("150")] = "150,200"
    assert main(args) == 0
    assert "ran 2 cells (2 already done)" in capsys.readouterr().out


def test_run_json_records_versions_command_and_settings(tmp_path, tiny_dir):
    """Finding: run.json recorded no versions or arguments."""
    out = tmp_path / "run"
    args = _grid(tiny_dir, out, "--configs", "dense,exact", "--k", "2", "--block-size", "16")
    assert main(args) == 0
    meta = json.loads((out / "run.json").read_text())
    inv = meta["invocations"][-1]
    assert inv["argv"] == ["kvprism", *args]
    assert set(inv["versions"]) >= {"kvprism", "torch", "transformers", "python", "result_version"}
    exact = meta["settings"]["niah/exact-k2"]["settings"]
    assert exact["selection"]["block_size"] == 16 and exact["selection"]["k"] == 2
    assert exact["decode"]["max_new_tokens"] == 2 and exact["model"]["weights_sha256"]
    assert meta["model_identity"]["source"] == "files"
    row = read_results(out / RESULTS_FILE)[1]
    assert row["settings_hash"] == meta["settings"]["niah/exact-k2"]["hash"] and row["key"].endswith(
        row["settings_hash"]
    )


# ----------------------------------------------------------------------------------------------------- one writer
def test_second_run_into_the_same_out_fails_at_once(tmp_path, capsys, tiny_dir):
    """Finding: two resumes of the same --out at once computed every cell twice."""
    out = tmp_path / "run"
    with ResultStore(out).lock():
        assert main(_grid(tiny_dir, out, "--configs", "dense")) == 1
    err = _one_line(capsys.readouterr().err)
    assert f"is being written by process {os.getpid()}" in err
    assert read_results(out / RESULTS_FILE) == []


def test_report_deduplicates_and_says_so(tmp_path, capsys, tiny_dir):
    """Finding: report averaged over duplicate rows."""
    out = tmp_path / "run"
    assert main(_grid(tiny_dir, out, "--configs", "dense")) == 0
    row = read_results(out / RESULTS_FILE)[0]
    append_result(out / RESULTS_FILE, {**row, "correct": not row["correct"]})  # a duplicate with another answer
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    assert "1 duplicate cell(s) (same key) ignored" in capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cells"] == 1 and summary["modes"]["niah"]["dense"]["correct"]["mean"] == float(row["correct"])


# ----------------------------------------------------------------------------------------------------- interrupts
def test_sigint_in_process_exit_130_and_complete_store(tmp_path, capsys, tiny_dir, monkeypatch):
    """Finding: Ctrl-C exited with status 0 and printed nothing."""
    calls = []
    real = R.make_sample

    def sample_then_interrupt(*a, **k):
        calls.append(1)
        if len(calls) == 3:  # the third prompt: two cells finished, the third in flight
            os.kill(os.getpid(), signal.SIGINT)
        return real(*a, **k)

    monkeypatch.setattr(R, "make_sample", sample_then_interrupt)
    out = tmp_path / "run"
    args = _grid(tiny_dir, out, "--configs", "dense")
    args[args.index("0.5")] = "0,0.25,0.5,0.75,1"
    assert main(args) == 130
    err = capsys.readouterr().err
    assert "aborted after 2 of 5 cells; rerun the same command to resume" in err
    text = (out / RESULTS_FILE).read_text()
    assert text.endswith("\n") and len(read_results(out / RESULTS_FILE)) == 2
    monkeypatch.setattr(R, "make_sample", real)
    assert main(args) == 0
    assert "ran 3 cells (2 already done)" in capsys.readouterr().out
    keys = [r["key"] for r in read_results(out / RESULTS_FILE)]
    assert len(keys) == len(set(keys)) == 5


@pytest.mark.slow
def test_sigint_and_sigterm_in_a_subprocess(tmp_path, tiny_dir):
    """A real signal to a real process: exit 130 (SIGINT) / 143 (SIGTERM), the message, every stored line whole."""
    out = tmp_path / "run"
    args = _grid(tiny_dir, out, "--configs", "dense", "--seeds", ",".join(map(str, range(150))))
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    results = out / RESULTS_FILE
    seen = 0
    for sig, code in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
        proc = subprocess.Popen(
            [sys.executable, "-m", "kvprism.cli", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if results.exists() and results.read_text().count("\n") >= seen + 3:
                break
            time.sleep(0.02)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == code, err
        rows = read_results(results)
        assert results.read_text().endswith("\n") and len(rows) > seen
        assert f"aborted after {len(rows)} of 150 cells; rerun the same command to resume" in err.decode()
        keys = [r["key"] for r in rows]
        assert len(keys) == len(set(keys))
        seen = len(rows)


# ------------------------------------------------------------------------------------------------- corrupt stores
def _store_with_cells(tmp_path, tiny_dir, n_depths=4):
    out = tmp_path / "run"
    args = _grid(tiny_dir, out, "--configs", "dense")
    args[args.index("0.5")] = ",".join(str(i / (n_depths - 1)) for i in range(n_depths))
    assert main(args) == 0
    return out


def test_report_refuses_corrupt_middle_line_or_skips_it(tmp_path, capsys, tiny_dir):
    """Finding: report stopped at a corrupt middle line and reported 2 of 8 cells with status 0."""
    out = _store_with_cells(tmp_path, tiny_dir)
    lines = (out / RESULTS_FILE).read_text().splitlines()
    lines[2] = lines[2][: len(lines[2]) // 2]
    (out / RESULTS_FILE).write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    assert main(["report", str(out)]) == 1
    assert "results.jsonl line 3 is corrupt" in _one_line(capsys.readouterr().err)
    assert main(["report", str(out), "--skip-corrupt"]) == 0
    assert "skipped 1 corrupt line(s)" in capsys.readouterr().err
    assert json.loads((out / "summary.json").read_text())["cells"] == 3


def test_report_names_line_and_field_of_a_misshapen_row(tmp_path, capsys, tiny_dir):
    out = _store_with_cells(tmp_path, tiny_dir, n_depths=2)
    rows = read_results(out / RESULTS_FILE)
    rows[1]["decode_steps"] = "two"
    (out / RESULTS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
    capsys.readouterr()
    assert main(["report", str(out)]) == 1
    assert "line 2: field 'decode_steps' = 'two' has type str" in _one_line(capsys.readouterr().err)


def test_report_on_a_missing_directory(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert f"results directory {tmp_path / 'nope'} does not exist" in _one_line(capsys.readouterr().err)


def test_disk_full_mid_report_keeps_previous_report_files(tmp_path, tiny_dir, monkeypatch):
    """Fault injection: an OSError (disk full) while writing the report leaves every previous report file intact."""
    import kvprism.atomic as atomic_mod

    out = _store_with_cells(tmp_path, tiny_dir, n_depths=2)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert {"summary.json", "report.md", "heatmap_niah_dense.png"} <= set(before)
    append_result(out / RESULTS_FILE, {**read_results(out / RESULTS_FILE)[0], "key": "another", "context": 999})
    before[RESULTS_FILE] = (out / RESULTS_FILE).read_bytes()
    real_stage, staged = atomic_mod._stage, []

    def stage_then_fail(path, content):
        staged.append(path.name)
        if len(staged) == 3:
            raise OSError(28, "No space left on device")
        return real_stage(path, content)

    monkeypatch.setattr(atomic_mod, "_stage", stage_then_fail)
    assert main(["report", str(out)]) == 1
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert after == before  # same files, same bytes, no temporary files left
    assert len(staged) == 3


# ---------------------------------------------------------------------------------------------------- grid inputs
def test_close_depths_are_two_cells_and_duplicates_are_removed(tmp_path, capsys, tiny_dir):
    """Finding: --depths 0.3,0.30001 wrote two cells under one key (depth keyed to 4 decimals)."""
    out = tmp_path / "run"
    args = _grid(tiny_dir, out, "--configs", "dense")
    args[args.index("0.5")] = "0.3,0.30001,0.3"
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "note: --depths: duplicate value 0.3 removed" in captured.err
    rows = read_results(out / RESULTS_FILE)
    assert len(rows) == 2 and len({r["key"] for r in rows}) == 2 and {r["depth"] for r in rows} == {0.3, 0.30001}


def test_runner_rejects_duplicate_axis_values(tmp_path):
    from kvprism.errors import KvprismError

    with pytest.raises(KvprismError, match="contexts: 120 is given twice"):
        R.Runner(
            tiny_model(),
            tiny_tokenizer(),
            out_dir=tmp_path,
            tasks=["niah_single"],
            contexts=[120, 120],
            depths=[0.5],
            seeds=[0],
            configs=build_configs(["dense"], []),
        )


# --------------------------------------------------------------------------------------- validate before heavy work
def test_bare_list_head_mask_is_accepted(tmp_path, capsys, tiny_dir):
    """Finding: a bare-list heads mask (documented) failed with AttributeError."""
    mask = tmp_path / "mask.json"
    mask.write_text(json.dumps([[True, False], [False, True]]))
    from kvprism.eval.heads import load_mask

    assert load_mask(mask) == [[True, False], [False, True]]
    out = tmp_path / "run"
    assert main(_grid(tiny_dir, out, "--configs", "exact", "--k", "2", "--block-size", "16", "--heads", str(mask))) == 0
    assert len(read_results(out / RESULTS_FILE)) == 1


def test_wrong_shape_mask_fails_before_the_model_loads(tmp_path, capsys, tiny_dir, monkeypatch):
    """Finding: a wrong-shape mask failed only after minutes of work."""
    mask = tmp_path / "mask.json"
    mask.write_text(json.dumps([[True, False]] * 3))
    _no_model_load(monkeypatch)
    out = tmp_path / "run"
    assert main(_grid(tiny_dir, out, "--configs", "exact", "--k", "2", "--heads", str(mask))) == 2
    err = _one_line(capsys.readouterr().err)
    assert "the mask is 3 layers x 2 KV heads" in err and "has 2 x 2" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["demo", "--preset", "nope"], "--preset = 'nope' is unknown; presets:"),
        (["heads", "--out", "{tmp}"], "is a directory; give the mask file's path"),
        (["energy", "--out", "{tmp}/file"], "--out {tmp}/file is a file"),
        (
            ["niah", "--configs", "dense", "--contexts", "4096", "--out", "{tmp}/r"],
            "exceeds the model's window of 1024",
        ),
    ],
)
def test_options_checked_before_the_model_loads(tmp_path, capsys, tiny_dir, monkeypatch, args, message):
    """Findings: `demo --preset nope`, `heads --out <existing dir>`, `energy --out <file>` failed only after work."""
    (tmp_path / "file").write_text("x")
    _no_model_load(monkeypatch)

    def no_compute(*a, **k):
        raise AssertionError("computed before the options were checked")

    monkeypatch.setattr("kvprism.energy.report.build_summary", no_compute)
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if args[0] != "energy":
        args += ["--model", str(tiny_dir)]
    assert main(args) == 2
    assert message.replace("{tmp}", str(tmp_path)) in _one_line(capsys.readouterr().err)


def test_energy_rows_zero_is_rejected(capsys):
    """Finding: `energy --rows 0` silently used 8192 rows."""
    assert main(["energy", "--rows", "0"]) == 2
    err = _one_line(capsys.readouterr().err)
    assert "'--rows'" in err and "greater than or equal to 1" in err


# ----------------------------------------------------------------------------------------- exit codes, JSON, threads
def test_hw_strict_exits_1_for_an_infeasible_design_and_json(capsys):
    """``kvprism hw --strict`` exits 1 for an infeasible design (the shipped seed-nominal preset violates constraints,
    see `kvprism hw`); the exit code reaches the caller (typer.Exit used to be dropped by cli.main)."""
    assert main(["hw", "--preset", "seed-nominal", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["config"] == "seed-nominal" and data["feasible"] is (not data["violations"])
    assert isinstance(data["report"]["score_enob_bits"], float)
    expected = 1 if data["violations"] else 0
    assert main(["hw", "--preset", "seed-nominal", "--strict"]) == expected
    assert main(["hw", "--preset", "seed-nominal", "--strict", "--json"]) == expected


def test_energy_json(capsys):
    assert main(["energy", "--json", "--contexts", "4k"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert "per_query" in data and "steps" in data


def test_threads_option(tmp_path, capsys, tiny_dir):
    import torch

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert main(_grid(tiny_dir, tmp_path / "run", "--configs", "dense")) == 0  # --threads 1 in _grid
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert main(["niah", "--threads", "0"]) == 2
    assert "'--threads'" in _one_line(capsys.readouterr().err)
    for cmd in ("demo", "niah", "recall", "heads"):
        assert main([cmd, "--help"]) == 0
        assert "--threads" in capsys.readouterr().out
