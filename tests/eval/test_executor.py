"""Executors: in-process by default with no Ray import; on a local Ray cluster (started by the test) every unit
returns its cells exactly once, also when a worker process is killed mid-task; the design search on Ray equals the
in-process search for a seed and a batch size."""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from kvprism.errors import ConfigError, KvprismError
from kvprism.eval.executor import LocalExecutor, RayExecutor, make_executor, require_ray
from tests.support import ray_workers
from tests.support.design_fixtures import one_thread

ray = pytest.importorskip("ray")


def test_local_executor_needs_no_ray(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # any import of ray would fail
    got = []
    make_executor("local").run(ray_workers.make_square_worker, [1, 2, 3], lambda u, cells: got.append(cells))
    assert [c[0]["value"] for c in got] == [1, 4, 9]
    with pytest.raises(KvprismError, match=r"kvprism\[ray\]"):
        require_ray()
    with pytest.raises(KvprismError, match=r"kvprism\[ray\]"):
        make_executor("ray")


def test_executor_options_are_checked():
    with pytest.raises(ConfigError, match="--executor"):
        make_executor("dask")
    with pytest.raises(ConfigError, match="--workers, --gpus-per-worker only apply to --executor ray"):
        make_executor("local", workers=2, gpus_per_worker=1.0)
    with pytest.raises(ConfigError, match="--workers = 0"):
        RayExecutor(workers=0)
    assert isinstance(make_executor("local"), LocalExecutor)


def test_ray_runs_every_unit_once_even_when_a_worker_is_killed(ray_cluster, tmp_path):
    marker = str(tmp_path / "victim.pid")
    killed = []

    def kill_when_ready():
        deadline = time.time() + 120
        while not Path(marker).exists() and time.time() < deadline:
            time.sleep(0.05)
        pid = int(Path(marker).read_text())
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    threading.Thread(target=kill_when_ready, daemon=True).start()
    ex = RayExecutor(workers=2, max_restarts=2)
    got: list[tuple[int, list[dict]]] = []
    ex.run(functools.partial(ray_workers.make_square_worker, marker), range(6), lambda u, c: got.append((u, c)))
    assert killed, "the test never killed a worker"
    assert sorted(u for u, _ in got) == list(range(6))  # every unit exactly once
    assert all(c == [{"unit": u, "value": u * u, "pid": c[0]["pid"]}] for u, c in got)
    assert dict(got)[2][0]["pid"] != killed[0]  # unit 2 came from the restarted actor, not the killed process


def test_a_session_keeps_the_workers_across_runs(ray_cluster):
    """Inside ``session()`` the runs that pass the same ``make_worker`` object reuse its actors (and a local
    executor its worker); another ``make_worker`` gets new ones; leaving the session kills them."""
    make = ray_workers.make_square_worker
    ex = RayExecutor(workers=2)
    pids: list[set[int]] = []
    with ex.session():
        for units in ([1, 2], [3, 4], [5, 6, 7]):
            got: list[dict] = []
            ex.run(make, units, lambda u, c, got=got: got.extend(c))
            assert sorted(c["value"] for c in got) == [u * u for u in units]
            pids.append({c["pid"] for c in got})
        first = list(ex.worker_pids)
        assert pids[0] | pids[1] | pids[2] <= set(first) and len(first) == 2
        other = functools.partial(ray_workers.make_square_worker, None)
        ex.run(other, [8], lambda u, c: None)
        assert set(ex.worker_pids).isdisjoint(first)
    assert ex._actors == [] and ray.is_initialized()  # the test's cluster stays up: this executor did not start it
    builds = []

    def counting():
        builds.append(1)
        return make()

    local = LocalExecutor()
    with local.session():
        for units in ([1], [2, 3]):
            local.run(counting, units, lambda u, c: None)
    local.run(counting, [4], lambda u, c: None)
    assert len(builds) == 2  # once in the session, once outside it


@pytest.mark.slow
@pytest.mark.usefixtures(one_thread.__name__)
def test_design_search_on_ray_equals_the_local_search(ray_cluster):
    from kvprism.photonics import PhotonicConfig
    from kvprism.search.objectives import ObjectiveSettings
    from kvprism.search.search import run_search
    from tests.search.test_search import FEASIBLE_BASE, SMALL_SPACE
    from tests.support.design_fixtures import tiny_reference

    ref = tiny_reference()
    base = PhotonicConfig.preset("ideal").replace(**FEASIBLE_BASE)
    kw = dict(seed=3, base=base, space=SMALL_SPACE, settings=ObjectiveSettings(k=4), population_size=3, batch=2)
    local = run_search(ref, 5, **kw)
    remote = run_search(ref, 5, executor=RayExecutor(workers=2), **kw)
    for a, b in zip(local.study.trials, remote.study.trials, strict=True):
        assert (a.number, a.params, a.state, a.values) == (b.number, b.params, b.state, b.values)
        ra, rb = (dict(t.user_attrs.get("result") or {}) for t in (a, b))
        ra.pop("seconds", None), rb.pop("seconds", None)  # wall times differ; everything else is the same
        assert ra == rb


def test_cli_rejects_ray_options_without_ray_before_any_work(tmp_path, capsys):
    from kvprism.cli import main

    args = ["design", "search", "--reference", str(tmp_path / "missing.safetensors"), "--out", str(tmp_path / "o")]
    assert main([*args, "--executor", "local", "--workers", "2"]) == 2
    assert "--workers only apply to --executor ray" in capsys.readouterr().err
    assert main([*args, "--executor", "spark"]) == 2
    assert not (tmp_path / "o").exists()
