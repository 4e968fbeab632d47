"""Cost of the boundary check (:mod:`kvprism.boundary`) on the CPU: a selection step and a decode step, each
timed with and without the check, interleaved in one run (load on a shared machine hits both alike).

1. Selection step: ``BlockSelector.select`` of one layer (``exact`` scorer) for a SmolLM2-135M-shaped layer (3 KV
   heads, query group 3, head dim 64) at ``--context`` tokens (default 2048, blocks of 32: 64 blocks; ``d_sig``
   32, PCA projection): the query group (shape and finiteness), the candidates and ``k``, checked once by the
   selector (the exact scorer's own check of the encoded query is skipped under the selector). Also the check
   calls alone: the cost in absolute terms, less noisy than a difference of two step times.
2. Decode step (``--decode``, default on): one teacher-forced step of a random-weight model of SmolLM2-135M's shape
   (30 layers, hidden 576, 9 query / 3 KV heads, vocab 49152) through ``kvprism.SparseCache`` after a prefill of
   ``--context`` tokens: 30 layer-selections per step.

"Without the check" replaces the check functions by no-ops (the code path is otherwise the same). Printed: the median
time of each, the difference and the ratio (goal: the check under 1 % of a decode step).

    PYTHONPATH=src .venv/bin/python benchmarks/boundary_check.py --threads 1
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable, Iterator

import torch

import kvprism.scorers.exact as exact_mod
import kvprism.selection.selector as selector_mod
from kvprism.selection import BlockSelector, SelectionConfig
from kvprism.selection.fit import block_signatures


@contextlib.contextmanager
def unchecked() -> Iterator[None]:
    """Every check of the selection path replaced by a no-op (the selector's and the exact scorer's)."""
    saved = (
        exact_mod.check_query,
        exact_mod.check_rows,
        selector_mod.BlockSelector._check_query,
        selector_mod.BlockSelector._check_candidates,
        selector_mod.BlockSelector._check_rows,
    )
    exact_mod.check_query = lambda *a, **k: None
    exact_mod.check_rows = lambda x, **k: x
    selector_mod.BlockSelector._check_query = lambda *a, **k: None
    selector_mod.BlockSelector._check_candidates = lambda *a, **k: None
    selector_mod.BlockSelector._check_rows = lambda *a, **k: None
    try:
        yield
    finally:
        (
            exact_mod.check_query,
            exact_mod.check_rows,
            selector_mod.BlockSelector._check_query,
            selector_mod.BlockSelector._check_candidates,
            selector_mod.BlockSelector._check_rows,
        ) = saved


def interleaved(fns: dict[str, tuple[Callable[[], None], bool]], reps: int, inner: int) -> dict[str, float]:
    """Median seconds per call of each function (with its flag: run :func:`unchecked`), the functions taking turns
    ``reps`` times (``inner`` calls each)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, (fn, off) in fns.items():
            with unchecked() if off else contextlib.nullcontext():
                t0 = time.perf_counter()
                for _ in range(inner):
                    fn()
                times[name].append((time.perf_counter() - t0) / inner)
    return {name: statistics.median(v) for name, v in times.items()}


def selection_step(context: int, reps: int) -> float:
    h, g, d, bs = 3, 3, 64, 32
    sel = SelectionConfig(block_size=bs, k=8, d_sig=32, projection="pca")
    gen = torch.Generator().manual_seed(0)
    keys = torch.randn(1, h, context, d, generator=gen)
    valid = torch.ones(1, context, dtype=torch.bool)
    selector = BlockSelector(sel, 0, h, torch.ones(h, dtype=torch.bool))
    selector.fit(keys, valid, scaling=d**-0.5)
    selector.program(block_signatures(sel, selector.proj, keys, valid, layer_idx=0))
    query = torch.randn(1, h, g, d, generator=gen)
    cand = torch.ones(1, h, selector.n_blocks, dtype=torch.bool)

    def step() -> None:
        selector.select(query, cand)

    def checks_only() -> None:  # what select checks (the exact scorer's own check is skipped under the selector)
        selector._check_query(query, "select", 8)
        selector._check_candidates(cand, 1, h)

    fns = {"with check": (step, False), "without": (step, True), "checks alone": (checks_only, False)}
    med = interleaved(fns, reps, 50)
    on, off, alone = med["with check"], med["without"], med["checks alone"]
    print(
        f"selection step (SmolLM2-135M layer, {context} tokens, {selector.n_blocks} blocks): "
        f"with check {on * 1e6:.1f} us, without {off * 1e6:.1f} us, difference {(on - off) * 1e6:+.1f} us "
        f"({(on - off) / off:+.2%}); the check calls alone {alone * 1e6:.1f} us ({alone / off:.2%} of the step)"
    )
    return alone


def decode_step(context: int, steps: int, alone: float) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from kvprism.hf.cache import SparseCache, cache_kwargs

    cfg = LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    sel = SelectionConfig(block_size=32, k=8, d_sig=32, projection="pca")
    ids = torch.randint(3, cfg.vocab_size, (1, context + steps))
    results: dict[str, list[float]] = {"with check": [], "without": []}
    with torch.inference_mode():
        for rep in range(2):
            for name in ("with check", "without") if rep % 2 == 0 else ("without", "with check"):
                cache = SparseCache(model, sel)
                mask = torch.ones(1, context, dtype=torch.long)
                model(input_ids=ids[:, :context], attention_mask=mask, **cache_kwargs(model, cache))
                with contextlib.ExitStack() as stack:
                    if name == "without":
                        stack.enter_context(unchecked())
                    for s in range(steps):
                        pos = context + s
                        mask = torch.ones(1, pos + 1, dtype=torch.long)
                        t0 = time.perf_counter()
                        model(
                            input_ids=ids[:, pos : pos + 1],
                            attention_mask=mask,
                            position_ids=torch.tensor([[pos]]),
                            **cache_kwargs(model, cache),
                        )
                        if s:  # the first step programs the prefill's blocks
                            results[name].append(time.perf_counter() - t0)
    on, off = (statistics.median(results[n]) for n in ("with check", "without"))
    per_step = alone * cfg.num_hidden_layers
    print(
        f"decode step (SmolLM2-135M shape, random weights, {context} tokens, SparseCache exact): with check "
        f"{on * 1e3:.2f} ms, without {off * 1e3:.2f} ms ({(on - off) / off:+.2%}, within noise); the check calls "
        f"of its {cfg.num_hidden_layers} layer-selections {per_step * 1e6:.0f} us = {per_step / off:.2%} of the step"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--context", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=30, help="interleaved repetitions of the selection step (50 each)")
    ap.add_argument("--steps", type=int, default=12, help="decode steps per configuration and repetition")
    ap.add_argument("--no-decode", dest="decode", action="store_false", help="time the selection step only")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s)")
    alone = selection_step(args.context, args.reps)
    if args.decode:
        decode_step(args.context, args.steps, alone)


if __name__ == "__main__":
    main()
