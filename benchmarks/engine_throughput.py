"""Throughput of ``PhotonicEngine.select`` with the full seed-nominal physics vs an exact fp32 scan + top-k.

One run on the same data (N blocks × d per bank, B banks), both measured here side by side; prints the ratio.
Also prints the programming cost per block completion (``append`` of one row per bank) and the cost of one decode
step of drift (``advance`` + the lazy W_eff refresh it triggers), which are not part of ``select``.

    PYTHONPATH=src python benchmarks/engine_throughput.py [--n 8192 --d 32 --banks 112 --k 16 --preset seed-nominal]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from kvprism import PhotonicConfig, PhotonicEngine


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _time_pair(a, b, repeats: int) -> tuple[float, float]:
    """Median times of ``a`` and ``b``, run alternately so both see the same machine load."""
    a(), b()  # warm-up
    ta, tb = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a()
        t1 = time.perf_counter()
        b()
        t2 = time.perf_counter()
        ta.append(t1 - t0)
        tb.append(t2 - t1)
    return statistics.median(ta), statistics.median(tb)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=8192, help="blocks (rows) per bank")
    ap.add_argument("--d", type=int, default=32, help="signature dimension = comb lines")
    ap.add_argument("--banks", type=int, default=112, help="weight banks (28 layers × 4 KV heads)")
    ap.add_argument("--k", type=int, default=16, help="blocks selected per query")
    ap.add_argument("--preset", default="seed-nominal")
    ap.add_argument("--repeats", type=int, default=21)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for both sides (0 = torch default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    gen = torch.Generator().manual_seed(0)
    sig = torch.randn(args.banks, args.n, args.d, generator=gen)
    query = torch.randn(args.banks, args.d, generator=gen)
    cfg = PhotonicConfig.preset(args.preset)
    eng = PhotonicEngine(cfg, seed=0)
    print(f"config: preset={args.preset}  N={args.n}  d={args.d}  banks={args.banks}  k={args.k}  "
          f"threads={torch.get_num_threads()}")  # fmt: skip

    t0 = time.perf_counter()
    eng.program(sig)
    t_program = time.perf_counter() - t0

    def exact() -> torch.Tensor:
        return torch.topk((sig @ query.unsqueeze(-1)).squeeze(-1), args.k, dim=-1).indices

    def photonic() -> torch.Tensor:
        return eng.select(query, args.k)

    t_exact, t_phot = _time_pair(exact, photonic, args.repeats)
    print(f"exact fp32 scan + top-k : {t_exact * 1e3:8.2f} ms per query batch (median of {args.repeats})")
    print(f"photonic select         : {t_phot * 1e3:8.2f} ms per query batch (median of {args.repeats})")
    print(f"ratio photonic / exact  : {t_phot / t_exact:8.2f}x   (goal <= 1.5x)")

    new_row = torch.randn(args.banks, 1, args.d, generator=gen) * 0.5  # fits the bank scale: no rescale
    t_append = _time(lambda: eng.append(new_row), 5)
    t_step = _time(lambda: (eng.advance(1), eng.refresh()), 1)
    print(f"programming, full cache : {t_program:8.2f} s  ({args.banks * args.n:,} rows, once at prefill)")
    print(f"programming per block   : {t_append * 1e3:8.2f} ms  (append 1 row in each of {args.banks} banks)")
    print(f"drift step + W refresh  : {t_step * 1e3:8.2f} ms  (advance(1) + cascade recompute of all rows)")
    print(f"counters: {eng.counters}")


if __name__ == "__main__":
    main()
