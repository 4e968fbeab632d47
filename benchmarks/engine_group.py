"""Photonic engine cost per decode step for a model's layers: an ``EngineGroup`` (one batched drift sample and W_eff
refresh per step, as ``SparseCache`` uses) vs the same engines sampling alone, interleaved step by step in one run.

Per layer and step: a sweep over a 16 MiB buffer (stands in for the attention and MLP work that evicts the CPU caches
between two layers' selections; not timed), then ``scores()`` of one query per bank (timed), then ``advance(1)``.
Defaults are SmolLM2 at an 8K context: 30 layers, 3 KV heads, 125 blocks, d = 32, ``seed-nominal``. The scores of
both sides are checked to be identical (same draws per engine).

    PYTHONPATH=src python benchmarks/engine_group.py [--layers 30 --banks 3 --rows 125 --d 32 --steps 60 --m 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from kvprism import PhotonicConfig, PhotonicEngine
from kvprism.photonics import EngineGroup


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--banks", type=int, default=3, help="banks per layer (batch × KV heads)")
    ap.add_argument("--rows", type=int, default=125, help="blocks per bank")
    ap.add_argument("--d", type=int, default=32)
    ap.add_argument("--steps", type=int, default=60, help="decode steps (the first is not timed)")
    ap.add_argument("--m", type=int, default=1, help="drift_update_steps")
    ap.add_argument("--preset", default="seed-nominal")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = PhotonicConfig.preset(args.preset).replace(drift_update_steps=args.m)
    gen = torch.Generator().manual_seed(0)
    sigs = [torch.randn(args.banks, args.rows, args.d, generator=gen) for _ in range(args.layers)]
    queries = [torch.randn(args.banks, args.d, generator=gen) for _ in range(args.layers)]
    sides: dict[str, list[PhotonicEngine]] = {}
    for name in ("alone", "grouped"):
        engines = [PhotonicEngine(cfg, seed=i) for i in range(args.layers)]
        for e, s in zip(engines, sigs, strict=True):
            e.program(s)
        if name == "grouped":
            EngineGroup(engines)
        sides[name] = engines
    sweep = torch.empty(4 << 20)
    times: dict[str, list[float]] = {name: [] for name in sides}
    for step in range(args.steps):
        outs = {}
        for name, engines in sides.items():
            total, outs[name] = 0.0, []
            for e, q in zip(engines, queries, strict=True):
                sweep.fill_(1.0)
                t0 = time.perf_counter()
                outs[name].append(e.scores(q))
                total += time.perf_counter() - t0
                e.advance(1)
            if step:
                times[name].append(total)
        if not all(torch.equal(a, b) for a, b in zip(outs["alone"], outs["grouped"], strict=True)):
            raise SystemExit(f"step {step}: grouped scores differ from per-engine scores")
    print(f"preset={args.preset} drift_update_steps={args.m} layers={args.layers} banks={args.banks} "
          f"rows={args.rows} d={args.d} threads={torch.get_num_threads()} steps={args.steps - 1}")  # fmt: skip
    for name, t in times.items():
        print(f"{name:8s}: engine ms per decode step  median {statistics.median(t) * 1e3:7.2f}  "
              f"mean {statistics.mean(t) * 1e3:7.2f}  min {min(t) * 1e3:7.2f}")  # fmt: skip
    ratio = statistics.median(times["grouped"]) / statistics.median(times["alone"])
    print(f"grouped / alone (median): {ratio:.2f}  (scores identical)")


if __name__ == "__main__":
    main()
