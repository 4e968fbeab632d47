"""benchmarks/gpu_e2e.py must keep running: its --tiny CPU mode (tiny model, eager steps) end to end."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def _load():
    spec = importlib.util.spec_from_file_location("gpu_e2e", ROOT / "benchmarks" / "gpu_e2e.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.skipif(torch.cuda.is_available(), reason="the tiny mode is the CPU smoke run")
def test_tiny_mode_runs_every_path_and_writes_json_and_table(tmp_path):
    mod = _load()
    out, table = tmp_path / "e2e.json", tmp_path / "e2e.txt"
    assert mod.main(["--tiny", "--json", str(out), "--table", str(table)]) == 0
    res = json.loads(out.read_text())
    assert res["complete"] and res["tiny"] and not res["cuda_graph"] and res["layers"] == 2
    rows = {(r["path"], r["batch"]): r for r in res["rows"]}
    assert set(rows) == {(p, b) for p in ("dense", "kvprism", "torch-gather") for b in (1, 2)}
    for b in (1, 2):
        assert rows[("kvprism", b)]["skipped"] == "needs CUDA and triton"
        dense, gather = rows[("dense", b)], rows[("torch-gather", b)]
        assert dense["read_fraction"] == 1.0 and dense["tokens_per_s"] > 0
        # sink 16 + k=2 blocks of 16 + tail 16..24 of ~200 tokens
        assert 0.2 < gather["read_fraction"] < 0.45
        assert gather["decode_steps_counted"] == res["steps"] + 1  # warm-up + timed steps
    assert res["old_dense"]["ms_median"] > 0
    text = table.read_text()
    assert "| 2 | 200 | torch-gather |" in text and "old dense recipe" in text
