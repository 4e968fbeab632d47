"""The evaluation grid on a local Ray cluster (started by the test): the same cells as the in-process run; a worker
killed mid-unit and a driver killed with SIGKILL mid-grid both end with every cell stored exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from kvprism.eval import runner as R
from kvprism.eval.executor import RayExecutor
from kvprism.eval.grid import build_configs
from kvprism.eval.store import RESULTS_FILE
from tests.conftest import tiny_model, tiny_tokenizer
from tests.support import ray_workers
from tests.support.design_fixtures import one_thread

ray = pytest.importorskip("ray")
# Ray's workers compute on one torch thread each; the in-process runs do too, so both sum in the same order and the
# cells agree to the last bit (with other thread counts floats such as the KL differ in the 4th digit)
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures(one_thread.__name__)]

GRID = dict(tasks=["niah_single"], contexts=[120, 160], depths=[0.0, 1.0], seeds=[0], haystack="noise")
#: what may differ between two runs of one cell: wall times, when, and the prefill's identity
TIMING = {"decode_s", "prefill_s", "reference_s", "time", "prefill_id"}


def _configs():
    return build_configs(["dense", "exact"], [2], {"block_size": 8, "window": 16, "d_sig": 8})


def _runner(out, **kw):
    return R.Runner(tiny_model("llama"), tiny_tokenizer(), out_dir=out, configs=_configs(), max_new_tokens=3,
                    model_name="tiny", model_factory=ray_workers.tiny_llama_and_tokenizer, **{**GRID, **kw})  # fmt: skip


def _cells(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / RESULTS_FILE).read_text().splitlines()]


def _comparable(rows):
    return {r["key"]: {k: v for k, v in r.items() if k not in TIMING} for r in rows}


def test_ray_grid_equals_the_in_process_grid_cell_by_cell(ray_cluster, tmp_path):
    local = _runner(tmp_path / "local").run()
    ex = RayExecutor(workers=2)
    remote = _runner(tmp_path / "ray", executor=ex).run()
    assert local.cells_run == remote.cells_run == 8 and remote.prefills == 4
    a, b = _comparable(_cells(tmp_path / "local")), _comparable(_cells(tmp_path / "ray"))
    assert a == b
    assert len(set(ex.worker_pids)) == 2 and all(r[1] <= r[0] for r in ex.unit_times)
    again = _runner(tmp_path / "ray", executor=RayExecutor(workers=2)).run()  # resume: nothing left to do
    assert again.cells_run == 0 and len(_cells(tmp_path / "ray")) == 8


def test_a_worker_killed_mid_unit_leaves_every_cell_exactly_once(ray_cluster, tmp_path):
    marker = str(tmp_path / "victim.pid")
    killed: list[int] = []

    def kill_when_ready():
        deadline = time.time() + 600  # a loaded machine starts Ray workers slowly
        while not Path(marker).exists() and time.time() < deadline:
            time.sleep(0.05)
        if not Path(marker).exists():
            return  # the grid ended without a victim: the assertion below says so
        killed.append(int(Path(marker).read_text()))
        os.kill(killed[0], signal.SIGKILL)

    threading.Thread(target=kill_when_ready, daemon=True).start()
    decode = ray_workers.KillOnceDecode(marker, "exact-k2")
    summary = _runner(tmp_path / "out", executor=RayExecutor(workers=2), decode_fn=decode).run()
    assert killed, "the test never killed a worker"
    rows = _cells(tmp_path / "out")
    assert summary.cells_run == len(rows) == 8 and len({r["key"] for r in rows}) == 8


DRIVER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {root!r})
    from kvprism.eval.executor import RayExecutor
    from tests.eval.test_executor_grid import _runner
    _runner({out!r}, executor=RayExecutor(workers=2, init_kwargs={{"num_cpus": 2, "include_dashboard": False,
            "object_store_memory": 150 * 2**20}}), decode_fn=__import__("tests.support.ray_workers").support.ray_workers.SlowDecode()).run()
    """
)


def test_a_driver_killed_with_sigkill_mid_grid_resumes_without_duplicates(tmp_path):
    out = tmp_path / "out"
    root = str(Path(__file__).resolve().parents[2])
    proc = subprocess.Popen([sys.executable, "-c", DRIVER.format(root=root, out=str(out))], cwd=root,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    results = out / RESULTS_FILE
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if results.exists() and results.read_text().count("\n") >= 2:
            break
        time.sleep(0.1)
    assert proc.poll() is None, "the driver finished (or died) before the test could kill it"
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray instance it started
    proc.wait()
    before = _cells(out)
    assert 2 <= len(before) < 8
    summary = _runner(out, decode_fn=ray_workers.SlowDecode()).run()  # resume in process
    rows = _cells(out)
    assert len(rows) == 8 and len({r["key"] for r in rows}) == 8
    assert summary.cells_run == 8 - len(before)


def test_cli_niah_on_ray_equals_the_in_process_command(tmp_path):
    """`kvprism niah --executor ray` with a model directory every worker loads itself: the same cells."""
    from kvprism.cli import main

    model_dir = tmp_path / "tiny-model"
    tiny_model("llama").save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    args = ["niah", "--model", str(model_dir), "--configs", "dense,exact", "--k", "2", "--block-size", "8",
            "--window", "16", "--d-sig", "8", "--contexts", "120,160", "--depths", "0", "--haystack", "noise",
            "--max-new-tokens", "3", "--threads", "1"]  # fmt: skip
    assert main([*args, "--out", str(tmp_path / "local")]) == 0
    assert main([*args, "--out", str(tmp_path / "ray"), "--executor", "ray", "--workers", "2"]) == 0
    a, b = _comparable(_cells(tmp_path / "local")), _comparable(_cells(tmp_path / "ray"))
    assert len(a) == 4 and a == b
