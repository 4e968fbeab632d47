"""Effect of torch CPU threads (``--threads``) on one decode step of the default model.

Prefills a ``--context``-token natural-text prompt once (dense), then times consecutive decode steps on a fork of
that cache -- dense (forked ``DynamicCache``) and exact block selection (``SparseCache``, PCA projection so the
one-time fit at the first step stays short; that first step is not timed) -- switching the thread count every step so
load changes on a shared machine hit every setting alike. Prints the median per setting and the ratio to the first
thread count.

    PYTHONPATH=src python benchmarks/threads_decode.py --threads 1,2 --context 2048 --reps 15
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2", help="thread counts, comma-separated")
    ap.add_argument("--context", type=int, default=2048)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--model", default="smollm2")
    args = ap.parse_args()
    counts = [int(t) for t in args.threads.split(",")]

    from transformers import DynamicCache

    from kvprism.eval.decode import fork_dynamic_cache
    from kvprism.eval.tasks import niah_single
    from kvprism.hf.attention import use_kvprism_attention
    from kvprism.hf.cache import SparseCache, cache_kwargs
    from kvprism.hf.models import load_model
    from kvprism.runtime import physical_cores, set_threads
    from kvprism.selection import SelectionConfig

    set_threads(max(counts))
    model, tok = load_model(args.model)
    use_kvprism_attention(model)
    sample = niah_single(tok, args.context, 0.5, 0)
    ids = torch.tensor([sample.input_ids[:-1]])
    dense = DynamicCache(config=model.config)
    with torch.inference_mode():
        model(input_ids=ids, use_cache=True, logits_to_keep=1, **cache_kwargs(model, dense))
    sel = SelectionConfig(k=8, block_size=64, scorer="exact", projection="pca")
    last = torch.tensor([[sample.input_ids[-1]]])

    def step(cache) -> float:
        pos = torch.tensor([[cache.get_seq_length()]])
        t0 = time.perf_counter()
        with torch.inference_mode():
            model(input_ids=last, position_ids=pos, use_cache=True, logits_to_keep=1, **cache_kwargs(model, cache))
        return time.perf_counter() - t0

    times: dict[tuple[str, int], list[float]] = {(k, n): [] for k in ("dense", "exact") for n in counts}
    for kind in ("dense", "exact"):
        cache = fork_dynamic_cache(dense) if kind == "dense" else SparseCache.from_prefilled(model, dense, sel)
        for n in counts:  # warm-up (and the selector's fit at the first step)
            set_threads(n)
            step(cache)
        for _ in range(args.reps):
            for n in counts:
                set_threads(n)
                times[(kind, n)].append(step(cache))
    print(f"model {args.model}, context {ids.shape[1]} tokens, {args.reps} steps per setting, "
          f"physical cores available: {physical_cores()}")  # fmt: skip
    for kind in ("dense", "exact"):
        base = statistics.median(times[(kind, counts[0])])
        for n in counts:
            med = statistics.median(times[(kind, n)])
            lo, hi = min(times[(kind, n)]), max(times[(kind, n)])
            print(f"{kind:>5} threads={n}: median {med * 1e3:7.1f} ms (min {lo * 1e3:.1f}, max {hi * 1e3:.1f}); "
                  f"ratio to threads={counts[0]}: {med / base:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
