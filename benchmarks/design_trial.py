"""Cost of one design-search trial vs one exact scan + top-k over the same reference set (goal: ≤ 20×).

A trial (:func:`kvprism.search.objectives.evaluate`) programs one engine with every (layer, KV head) bank of the
reference set, selects top-k for every reference query with all impairments on, runs the feasibility verdict and the
energy model. The baseline scores the same queries against the same signatures exactly (fp32) and takes the same
candidate top-k. Both are timed alternately in one run (medians); the ratio and the trial's breakdown are printed.

    PYTHONPATH=src python benchmarks/design_trial.py [--preset tfln-literature --d-sig 32 --k 16 --repeats 5]

The default reference set (SmolLM2, 8192 tokens) is captured on first use (about a minute on two cores).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from kvprism.photonics import PhotonicConfig
from kvprism.search.capture import CaptureParams, reference_set
from kvprism.search.objectives import ObjectiveSettings, evaluate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tfln-literature")
    ap.add_argument("--d-sig", type=int, default=32)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ref = reference_set(CaptureParams(), show_progress=True)
    cfg = PhotonicConfig.preset(args.preset)
    settings = ObjectiveSettings(k=args.k)
    sig = ref.signatures[args.d_sig].flatten(0, 1)
    qry = ref.queries[args.d_sig].flatten(0, 1)
    lo, hi = ref.candidate_range

    def exact() -> torch.Tensor:  # the fastest exact path: fp32 scores, torch.topk over the candidate slice
        return torch.topk((qry @ sig.transpose(-1, -2))[..., lo:hi], args.k, dim=-1).indices + lo

    def trial():
        return evaluate(cfg, ref, args.d_sig, settings)

    exact(), trial()  # warm-up
    te, tt, parts = [], [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        exact()
        t1 = time.perf_counter()
        res = trial()
        t2 = time.perf_counter()
        te.append(t1 - t0)
        tt.append(t2 - t1)
        parts.append(res.seconds)
    e, t = statistics.median(te), statistics.median(tt)
    layers, heads, n, nq = ref.shape
    print(f"reference set: {layers}×{heads} banks, N = {n} rows, d_sig = {args.d_sig}, {nq} queries, k = {args.k}")
    print(f"preset {args.preset}: recall@{args.k} = {res.recall:.3f}, feasible = {res.feasible}")
    print(f"exact scan + top-k : {e * 1e3:8.2f} ms")
    print(f"one trial          : {t * 1e3:8.2f} ms")
    for key in parts[0]:
        print(f"  {key:<16} : {statistics.median(p[key] for p in parts) * 1e3:8.2f} ms")
    ratio = t / e
    print(f"ratio trial / exact: {ratio:8.1f}×  (goal ≤ 20×: {'met' if ratio <= 20 else 'NOT met'})")


if __name__ == "__main__":
    main()
