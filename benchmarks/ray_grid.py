"""An evaluation grid of 8 prompts on SmolLM2, in this process vs on Ray with 2 workers, side by side in one run.

Both runs compute the same cells (niah_single, 2 contexts × 2 depths × 2 seeds = 8 prompts, dense + exact k 8 each)
into fresh result directories. Printed: wall time of each run and their ratio, Ray's start-up (``ray.init`` + the
workers loading their model), and Ray's overhead per cell: per unit, the seconds from submission to its cells
arriving in the driver minus the seconds the worker computed them, divided by the unit's cells, next to the mean
cell time (goal: overhead <= 5 % of a cell). On a 2-core machine expect little speed-up: two workers share the cores.

    PYTHONPATH=src python benchmarks/ray_grid.py [--contexts 1024,2048] [--threads 1] [--out runs/ray-bench]
"""

from __future__ import annotations

import argparse
import functools
import shutil
import statistics
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from kvprism.eval import runner as R
from kvprism.eval.executor import RayExecutor
from kvprism.eval.grid import build_configs
from kvprism.eval.store import RESULTS_FILE
from kvprism.hf.models import load_model
from kvprism.runtime import set_threads

console = Console(width=140)


def _load(threads: int):
    """What each Ray worker runs once: its thread count, then the model (picklable: module-level)."""
    set_threads(threads)
    return load_model("smollm2")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--contexts", default="1024,2048")
    ap.add_argument("--depths", default="0.25,0.75")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process (driver and each worker)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default="runs/ray-bench")
    args = ap.parse_args()
    set_threads(args.threads)
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    model, tok = load_model("smollm2")
    grid = dict(
        tasks=["niah_single"],
        contexts=[int(c) for c in args.contexts.split(",")],
        depths=[float(d) for d in args.depths.split(",")],
        seeds=[int(s) for s in args.seeds.split(",")],
        configs=build_configs(["dense", "exact"], [8]),
        max_new_tokens=8,
        model_name="smollm2",
    )
    t0 = time.perf_counter()
    local = R.Runner(model, tok, out_dir=out / "local", **grid).run()
    local_s = time.perf_counter() - t0
    ex = RayExecutor(workers=args.workers, init_kwargs={"num_cpus": args.workers, "include_dashboard": False})
    t0 = time.perf_counter()
    remote = R.Runner(
        model, tok, out_dir=out / "ray", executor=ex, model_factory=functools.partial(_load, args.threads), **grid
    ).run()
    ray_s = time.perf_counter() - t0
    cells_per_unit = len(grid["configs"])
    overhead = [(rt - comp) / cells_per_unit for rt, comp in ex.unit_times]
    cell_s = [comp / cells_per_unit for _, comp in ex.unit_times]
    t = Table(title=f"evaluation grid: {local.cells_run} cells ({local.prefills} prompts), SmolLM2, this machine")
    for col in ("run", "wall s", "ratio to in-process", "cells", "notes"):
        t.add_column(col)
    t.add_row("in-process", f"{local_s:.1f}", "1.00", str(local.cells_run), "")
    t.add_row(
        f"Ray, {args.workers} workers",
        f"{ray_s:.1f}",
        f"{ray_s / local_s:.2f}",
        str(remote.cells_run),
        f"start-up {ex.startup_s:.1f} s (ray.init + workers loading the model)",
    )
    console.print(t)
    mean_over, mean_cell = statistics.mean(overhead), statistics.mean(cell_s)
    console.print(
        f"Ray overhead per cell: mean {mean_over * 1e3:.1f} ms, max {max(overhead) * 1e3:.1f} ms; mean cell "
        f"{mean_cell:.2f} s on a worker -> overhead {100 * mean_over / mean_cell:.2f} % of a cell (goal <= 5 %); "
        f"ray wall without start-up / in-process: {(ray_s - ex.startup_s) / local_s:.2f}"
    )
    same = _same_cells(out / "local", out / "ray")
    console.print(f"cells identical to the in-process run (timings aside): {same}")


def _same_cells(a: Path, b: Path) -> bool:
    import json

    skip = {"decode_s", "prefill_s", "reference_s", "time", "prefill_id"}

    def rows(p: Path) -> dict:
        out = {}
        for line in (p / RESULTS_FILE).read_text().splitlines():
            r = json.loads(line)
            out[r["key"]] = {k: v for k, v in r.items() if k not in skip}
        return out

    return rows(a) == rows(b)


if __name__ == "__main__":
    main()
