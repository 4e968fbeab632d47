"""Whole-model decode step through Hugging Face on one GPU: dense sdpa vs ``SparseCache`` (torch gather path) vs
``SparseCache`` with the Triton kernels (fused score + top-k, split-K sparse attention).

The model has the Qwen2.5-7B layer shape (hidden 3584, 28 query / 4 KV heads, head dim 128, MLP 18944) with random
bf16 weights, ``--layers`` layers and a 32K vocabulary (the weights never leave the GPU: nothing is downloaded). One
random prompt of ``--context`` tokens is prefilled once (dense, through the ``"kvprism"`` attention, which records the
queries the learned projection needs); every configuration decodes the same teacher-forced tokens from its own copy.
Per step: wall time with the device synchronised (median over ``--steps`` steady steps; the first sparse step, which
programs every block, is reported apart). Printed: ms per step, ratio to dense, read fraction, which paths ran.

This measures the library as a user runs it: Hugging Face's per-layer Python, kvprism's selection bookkeeping and the
kernels together (for the kernels alone see ``gpu_decode.py``).

    python benchmarks/gpu_model_decode.py [--layers 4] [--context 32768] [--steps 16] [--k 32] [--block-size 128]
    python benchmarks/gpu_model_decode.py --device cpu --layers 2 --context 1024 --hidden 256   # smoke run, no GPU
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from rich.console import Console
from rich.table import Table
from transformers import DynamicCache, Qwen2Config

from kvprism.eval.decode import fork_dynamic_cache
from kvprism.hf.attention import use_kvprism_attention
from kvprism.hf.cache import SparseCache, cache_kwargs, chunked_prefill
from kvprism.kernels import triton_available
from kvprism.selection import SelectionConfig


def build_model(args: argparse.Namespace, device: torch.device) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    heads = max(1, args.hidden // 128)
    cfg = Qwen2Config(
        vocab_size=32000,
        hidden_size=args.hidden,
        intermediate_size=int(args.hidden * 18944 / 3584),
        num_hidden_layers=args.layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 7),
        max_position_embeddings=args.context + args.steps + 8,
    )
    torch.manual_seed(args.seed)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    return model.eval()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def decode(model, cache, tokens: torch.Tensor, start: int, device: torch.device) -> list[float]:
    """Seconds per decode step of the teacher-forced ``tokens [1, S]``."""
    times = []
    with torch.inference_mode():
        for s in range(tokens.shape[1]):
            sync(device)
            t0 = time.perf_counter()
            model(
                input_ids=tokens[:, s : s + 1],
                position_ids=torch.tensor([[start + s]], device=device),
                use_cache=True,
                logits_to_keep=1,
                **cache_kwargs(model, cache),
            )
            sync(device)
            times.append(time.perf_counter() - t0)
    return times


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=3584)
    ap.add_argument("--context", type=int, default=32768)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--block-size", type=int, default=128)
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_model_decode.py: no CUDA device visible (use --device cpu for a smoke run). Nothing measured.")
        return 1
    console = Console(width=160)
    model = build_model(args, device)
    g = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(0, 32000, (1, args.context), generator=g).to(device)
    forced = torch.randint(0, 32000, (1, args.steps + 1), generator=g).to(device)
    use_kvprism_attention(model)
    dense = DynamicCache()
    t0 = time.perf_counter()
    chunked_prefill(model, ids, dense, chunk_tokens=4096)
    sync(device)
    console.print(f"prefill {args.context} tokens, {args.layers} layers: {time.perf_counter() - t0:.1f} s")

    # PCA projection: fitted in milliseconds on the prefill keys (the timing is about the decode step, not the fit)
    sel = SelectionConfig(
        block_size=args.block_size, k=args.k, window=args.window, sink_blocks=1, scorer="exact", projection="pca"
    )
    runs: list[tuple[str, str | None]] = [("dense sdpa", None), ("sparse, torch gather", "torch")]
    if device.type == "cuda" and triton_available():
        runs.append(("sparse, triton kernels", "triton"))
    rows = []
    for label, attend in runs:
        if attend is None:
            cache = fork_dynamic_cache(dense)
        else:
            cache = SparseCache.from_prefilled(model, dense, sel, impl=attend)
        times = decode(model, cache, forced, args.context, device)
        first, steady = times[0], times[1:]
        row = {"label": label, "first_ms": first * 1e3, "ms": statistics.median(steady) * 1e3}
        if attend is not None:
            s = cache.stats.summary()
            row.update(read=s["read_fraction_mean"], attend=s["attend_calls"], select=s["select_calls"])
        rows.append(row)
        del cache
        if device.type == "cuda":
            torch.cuda.empty_cache()

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    table = Table(
        title=f"decode step, {args.layers} Qwen2.5-7B-shaped layers (random weights), context {args.context}, "
        f"B={args.block_size} k={args.k} window={args.window} — {name} (ms, median of {args.steps} steps)"
    )
    for col in (
        "run",
        "ms / step",
        "× dense",
        "first step ms",
        "read fraction",
        "attention / top-k path (layer-steps)",
    ):
        table.add_column(col, justify="right")
    dense_ms = rows[0]["ms"]
    for r in rows:
        paths = f"attend {r['attend']}, top-k {r['select']}" if "attend" in r else "-"
        read = f"{r['read']:.3f}" if "read" in r else "1.000"
        table.add_row(r["label"], f"{r['ms']:.2f}", f"{dense_ms / r['ms']:.2f}", f"{r['first_ms']:.1f}", read, paths)
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
