"""Whole-model decode throughput, every side graph-captured: dense (transformers ``StaticCache`` + sdpa) vs kvprism
(``StaticSparseCache``, Triton kernels) vs kvprism's torch-gather path (``StaticSparseCache(impl="torch")``).

Model: the Qwen2.5-7B shape (hidden 3584, 28 query / 4 KV heads, head dim 128, MLP 18944, vocab 152064) with random
bf16 weights built from the config on the device (nothing is downloaded), all 28 layers or as many as fit next to
the largest cache (the number used is printed and stored). Selection: the default ``SelectionConfig`` -- the one the
accuracy evaluations run: exact scorer, learned projection to d_sig = 32 with its fitted temperature, mean
signatures, one sink block -- at B = 128, k = 32, window 256 (``--projection none`` for the earlier rows).

Context: each configuration's cache is filled with random keys/values for ``context`` tokens (no prefill: the decode
step's cost does not depend on the values, and a 128K prefill of 28 layers at batch 8 would not fit the time budget);
the kvprism caches then fit their projection on those keys and ``--fit-queries`` random prefill queries per layer
and sign their blocks (``StaticSparseCache.prepare``; not timed). Then one decode step is run eagerly on a
side stream (warm-up: Triton compilation, cuBLAS), captured into one CUDA graph (all layers: projections, selection,
sparse attention, lm_head) and replayed ``--steps`` times with teacher-forced random tokens, timed with CUDA events.
Reported: ms per step (median), decode tokens/s (batch / mean step), the read fraction (kvprism: the device counters
of the timed steps; dense reads everything).

``--old-dense`` (default on) also reruns the recipe behind the earlier 72 ms dense figure
(``benchmarks/gpu_model_decode.py``: 4 layers, batch 1, a real chunked 32K prefill into a ``DynamicCache``, eager
steps with the device synchronised around each) and profiles one such step (top CUDA kernels, CPU-side calls), to
check the hypothesis of ``benchmarks/NOTES-gpu.md``.

    python benchmarks/gpu_e2e.py --json benchmarks/measured/gpu_e2e.json --table benchmarks/measured/gpu_e2e.txt
    python benchmarks/gpu_e2e.py --tiny      # CPU smoke run: tiny model, eager steps, no CUDA graph, nothing measured
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, DynamicCache, Qwen2Config, StaticCache

from kvprism.hf.attention import keep_prefill_queries, record_prefill_queries, use_kvprism_attention
from kvprism.hf.cache import cache_kwargs, chunked_prefill
from kvprism.hf.static import StaticDecodeStep, StaticSparseCache
from kvprism.kernels import triton_available
from kvprism.selection import SelectionConfig

QWEN25_7B = dict(
    vocab_size=152064,
    hidden_size=3584,
    intermediate_size=18944,
    num_hidden_layers=28,
    num_attention_heads=28,
    num_key_value_heads=4,
    max_position_embeddings=131072 + 4096,
    rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
)
TINY = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=4096,
    tie_word_embeddings=False,
)
PATHS = ("dense", "kvprism", "torch-gather")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def layers_that_fit(cfg: dict, batch: int, cap: int, device: torch.device, margin_gb: float = 6.0) -> int:
    """Layers whose bf16 weights plus one cache of ``batch`` x ``cap`` tokens fit in the free device memory."""
    if device.type != "cuda":
        return cfg["num_hidden_layers"]
    free, _ = torch.cuda.mem_get_info(device)
    h, m, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd = h // cfg["num_attention_heads"]
    kv = cfg["num_key_value_heads"] * hd
    per_layer_w = 2 * (2 * h * h + 2 * h * kv + 3 * h * m + 2 * h + 2 * kv)
    per_layer_kv = 2 * batch * cap * kv * 2
    fixed = 2 * (2 * v * h) + int(margin_gb * 2**30)
    return max(1, min(cfg["num_hidden_layers"], (free - fixed) // (per_layer_w + per_layer_kv)))


def build_model(cfg: dict, layers: int, device: torch.device, dtype: torch.dtype, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = Qwen2Config(**{**cfg, "num_hidden_layers": layers})
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def random_kv(b: int, h: int, n: int, d: int, dtype, device, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    k = torch.randn(b, h, n, d, generator=gen, device=device, dtype=torch.float32).to(dtype)
    v = torch.randn(b, h, n, d, generator=gen, device=device, dtype=torch.float32).to(dtype)
    return k, v


def fill_dense(model, batch: int, context: int, cap: int, dtype, device, seed: int) -> StaticCache:
    cfg = model.config
    h, d = cfg.num_key_value_heads, cfg.hidden_size // cfg.num_attention_heads
    cache = StaticCache(config=cfg, max_cache_len=cap)
    cache.early_initialization(batch, h, d, dtype, device)
    gen = torch.Generator(device=device).manual_seed(seed)
    for layer in cache.layers:
        k, v = random_kv(batch, h, context, d, dtype, device, gen)
        layer.keys[:, :, :context] = k
        layer.values[:, :, :context] = v
        layer.cumulative_length.fill_(context)
        del k, v
    return cache


def fill_sparse(
    model, sel, impl: str, batch: int, context: int, cap: int, dtype, device, seed: int, fit_queries: int = 16
):
    """A prepared StaticSparseCache holding ``context`` random keys/values per layer; a selection that fits on the
    prefill's queries (learned projection, 'reps') gets ``fit_queries`` random ones per layer, at the last positions."""
    cfg = model.config
    hq = cfg.num_attention_heads
    h, d = cfg.num_key_value_heads, cfg.hidden_size // hq
    cache = StaticSparseCache(model, sel, max_cache_len=cap, impl=impl)
    keep_prefill_queries(cache, fit_queries)
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.inference_mode():
        for i, layer in enumerate(cache.layers):
            k, v = random_kv(batch, h, context, d, dtype, device, gen)
            layer.load(k, v)
            del k, v
            q = torch.randn(batch, hq, fit_queries, d, generator=gen, device=device, dtype=torch.float32).to(dtype)
            record_prefill_queries(cache, i, q, context)
    cache.prepare()
    return cache


def selection(args: argparse.Namespace) -> SelectionConfig:
    """The benchmarked selection: the default SelectionConfig at the block size, k and window of the run."""
    return SelectionConfig(block_size=args.block_size, k=args.k, window=args.window, projection=args.projection)


def time_steps(step: StaticDecodeStep, tokens: torch.Tensor, start: int, graph: bool) -> dict[str, Any]:
    """Run the teacher-forced ``tokens [B, S + 1]``: step 0 warms up (and captures when ``graph``), steps 1..S are
    timed (CUDA events per step on CUDA, wall clock elsewhere)."""
    dev = tokens.device
    b = tokens.shape[0]
    pos0 = torch.full((b, 1), start, dtype=torch.long, device=dev)
    t0 = time.perf_counter()
    if graph:
        step.capture(tokens[:, :1], pos0)
    else:
        step(tokens[:, :1], pos0)
    sync(dev)
    warm_s = time.perf_counter() - t0
    times = []
    if dev.type == "cuda":
        ev = [torch.cuda.Event(enable_timing=True) for _ in range(tokens.shape[1])]
        ev[0].record()
        for s in range(1, tokens.shape[1]):
            step(tokens[:, s : s + 1], pos0 + s)
            ev[s].record()
        sync(dev)
        times = [ev[s - 1].elapsed_time(ev[s]) / 1e3 for s in range(1, tokens.shape[1])]
    else:
        for s in range(1, tokens.shape[1]):
            t = time.perf_counter()
            step(tokens[:, s : s + 1], pos0 + s)
            times.append(time.perf_counter() - t)
    mean = sum(times) / len(times)
    return {
        "warmup_s": warm_s,
        "ms_median": statistics.median(times) * 1e3,
        "ms_mean": mean * 1e3,
        "tokens_per_s": b / mean,
        "steps_timed": len(times),
    }


def run_config(model, path: str, batch: int, context: int, args, device, dtype) -> dict[str, Any]:
    cap = context + args.steps + 8
    row: dict[str, Any] = {"path": path, "batch": batch, "context": context, "max_cache_len": cap}
    graph = device.type == "cuda"
    g = torch.Generator().manual_seed(args.seed + batch + context)
    tokens = torch.randint(0, model.config.vocab_size, (batch, args.steps + 1), generator=g).to(device)
    if path == "dense":
        model.set_attn_implementation("sdpa")
        cache = fill_dense(model, batch, context, cap, dtype, device, args.seed)
        row["attention"] = "sdpa, transformers StaticCache"
    else:
        if path == "kvprism" and not (device.type == "cuda" and triton_available()):
            row["skipped"] = "needs CUDA and triton"
            return row
        use_kvprism_attention(model)
        sel = selection(args)
        impl = "triton" if path == "kvprism" else "torch"
        cache = fill_sparse(model, sel, impl, batch, context, cap, dtype, device, args.seed, args.fit_queries)
        row["attention"] = f"StaticSparseCache(impl={impl!r})"
        row["projection"] = sel.projection
    step = StaticDecodeStep(model, cache)
    row.update(time_steps(step, tokens, context, graph))
    row["cuda_graph"] = graph
    if path != "dense":
        s = cache.stats_summary()
        row["read_fraction"] = s["read_fraction_mean"]
        row["impl"] = s["impl"]
        row["decode_steps_counted"] = s["decode_steps"]
    else:
        row["read_fraction"] = 1.0
    del step, cache
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def old_dense_probe(model, args, device) -> dict[str, Any]:
    """The recipe of gpu_model_decode.py's dense row (4 layers, batch 1, chunked prefill of ``--old-context``
    tokens into a DynamicCache through the "kvprism" attention, eager steps, device synchronised per step), timed
    and profiled. Uses the first 4 layers of the model (``config.num_hidden_layers`` is lowered meanwhile)."""
    from kvprism.eval.decode import fork_dynamic_cache

    n_layers = model.config.num_hidden_layers
    used = min(4, n_layers)
    model.config.num_hidden_layers = used
    out: dict[str, Any] = {"layers": used, "context": args.old_context, "batch": 1}
    try:
        use_kvprism_attention(model)
        g = torch.Generator().manual_seed(args.seed)
        ids = torch.randint(0, model.config.vocab_size, (1, args.old_context), generator=g).to(device)
        forced = torch.randint(0, model.config.vocab_size, (1, 9), generator=g).to(device)
        dense = DynamicCache()
        t0 = time.perf_counter()
        chunked_prefill(model, ids, dense, chunk_tokens=4096)
        sync(device)
        out["prefill_s"] = time.perf_counter() - t0
        cache = fork_dynamic_cache(dense)
        times = []
        with torch.inference_mode():
            for s in range(forced.shape[1]):
                sync(device)
                t = time.perf_counter()
                model(
                    input_ids=forced[:, s : s + 1],
                    position_ids=torch.tensor([[args.old_context + s]], device=device),
                    use_cache=True,
                    logits_to_keep=1,
                    **cache_kwargs(model, cache),
                )
                sync(device)
                times.append(time.perf_counter() - t)
            out["first_step_ms"] = times[0] * 1e3
            out["ms_median"] = statistics.median(times[1:]) * 1e3
            if device.type == "cuda":
                out["profile"] = profile_step(model, cache, args.old_context + forced.shape[1], device)
    finally:
        model.config.num_hidden_layers = n_layers
    return out


def profile_step(model, cache, pos: int, device) -> dict[str, Any]:
    from torch.profiler import ProfilerActivity, profile

    tok = torch.zeros(1, 1, dtype=torch.long, device=device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        sync(device)
        t = time.perf_counter()
        model(
            input_ids=tok,
            position_ids=torch.tensor([[pos]], device=device),
            use_cache=True,
            logits_to_keep=1,
            **cache_kwargs(model, cache),
        )
        sync(device)
        wall = time.perf_counter() - t
    ev = prof.key_averages()
    cuda_total = sum(e.self_device_time_total for e in ev) / 1e3
    rows = sorted(ev, key=lambda e: e.self_device_time_total, reverse=True)[:12]
    cpu_rows = sorted(ev, key=lambda e: e.self_cpu_time_total, reverse=True)[:12]
    calls = {
        name: sum(e.count for e in ev if e.key == name)
        for name in ("cudaMalloc", "cudaFree", "cudaDeviceSynchronize", "cudaStreamSynchronize", "cudaMemcpyAsync")
    }
    return {
        "wall_ms_profiled": wall * 1e3,
        "cuda_ms_total": cuda_total,
        "top_cuda_kernels": [(e.key, e.count, e.self_device_time_total / 1e3) for e in rows],
        "top_cpu_ops": [(e.key, e.count, e.self_cpu_time_total / 1e3) for e in cpu_rows],
        "runtime_calls": calls,
    }


def render(result: dict[str, Any]) -> str:
    shape = "tiny Qwen2-family" if result["tiny"] else "Qwen2.5-7B-shaped"
    lines = [
        f"gpu_e2e: {result['layers']} {shape} layers (random {result['dtype']} weights), "
        f"B={result['block_size']} k={result['k']} window={result['window']} projection {result['projection']}, "
        f"{result['device_name']}; "
        f"{'CUDA graph per step' if result['cuda_graph'] else 'eager steps (no CUDA graph)'}, "
        f"median of {result['steps']} steps; context filled with {result['context_fill']}",
        "",
        "| batch | context | path | ms / step | tokens / s | × dense | read fraction | warm-up s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    dense = {(r["batch"], r["context"]): r for r in result["rows"] if r["path"] == "dense" and "ms_median" in r}
    for r in result["rows"]:
        if "skipped" in r:
            lines.append(f"| {r['batch']} | {r['context']} | {r['path']} | skipped: {r['skipped']} | | | | |")
            continue
        d = dense.get((r["batch"], r["context"]))
        x = f"{r['tokens_per_s'] / d['tokens_per_s']:.2f}" if d else "-"
        lines.append(
            f"| {r['batch']} | {r['context']} | {r['path']} | {r['ms_median']:.3f} | {r['tokens_per_s']:.1f} | {x} | "
            f"{r['read_fraction']:.4f} | {r['warmup_s']:.1f} |"
        )
    old = result.get("old_dense")
    if old and "error" in old:
        lines += ["", f"old dense recipe: failed ({old['error']})"]
    elif old:
        lines += [
            "",
            f"old dense recipe (gpu_model_decode.py: {old['layers']} layers, batch 1, {old['context']} prefilled, "
            f"DynamicCache, eager, synchronised): {old['ms_median']:.2f} ms / step (first {old['first_step_ms']:.1f} "
            f"ms), prefill {old['prefill_s']:.1f} s",
        ]
        prof = old.get("profile")
        if prof:
            lines.append(
                f"  profiled step: wall {prof['wall_ms_profiled']:.2f} ms, CUDA kernels {prof['cuda_ms_total']:.2f} "
                f"ms; runtime calls {prof['runtime_calls']}"
            )
            for name, count, ms in prof["top_cuda_kernels"][:6]:
                lines.append(f"  cuda  {ms:8.3f} ms  x{count:<4d} {name[:100]}")
            for name, count, ms in prof["top_cpu_ops"][:6]:
                lines.append(f"  cpu   {ms:8.3f} ms  x{count:<4d} {name[:100]}")
    return "\n".join(lines)


def write_json(path: Path | None, data: dict[str, Any]) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="CPU smoke run with a tiny model (nothing measured)")
    ap.add_argument("--device", default=None, help="default: cuda (cpu with --tiny)")
    ap.add_argument("--layers", type=int, default=None, help="default: 28, or as many as fit")
    ap.add_argument("--batches", type=int, nargs="+", default=None)
    ap.add_argument("--contexts", type=int, nargs="+", default=None)
    ap.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--k", type=int, default=None)
    ap.add_argument("--block-size", type=int, default=None)
    ap.add_argument("--window", type=int, default=None)
    ap.add_argument(
        "--projection",
        default=SelectionConfig().projection,
        choices=("none", "random", "pca", "learned"),
        help="signature projection (default: the SelectionConfig default, learned)",
    )
    ap.add_argument("--fit-queries", type=int, default=16, help="random prefill queries per layer for the fit")
    ap.add_argument("--old-dense", action=argparse.BooleanOptionalAction, default=None)
    ap.add_argument("--old-context", type=int, default=32768)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--table", type=Path, default=None)
    args = ap.parse_args(argv)
    tiny = args.tiny
    defaults = (
        dict(batches=[1, 2], contexts=[200], steps=4, k=2, block_size=16, window=16, old_dense=True, old_context=96)
        if tiny
        else dict(batches=[1, 8], contexts=[32768, 131072], steps=24, k=32, block_size=128, window=256, old_dense=True)
    )
    for key, val in defaults.items():
        if key == "old_context":
            if tiny:
                args.old_context = val
            continue
        if getattr(args, key) is None:
            setattr(args, key, val)
    device = torch.device(args.device or ("cpu" if tiny else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_e2e.py: no CUDA device visible (use --tiny for a CPU smoke run). Nothing measured.")
        return 1
    cfg = TINY if tiny else QWEN25_7B
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    cap_max = max(args.contexts) + args.steps + 8
    layers = args.layers or layers_that_fit(cfg, max(args.batches), cap_max, device)
    t_all = time.perf_counter()
    model = build_model(cfg, layers, device, dtype, args.seed)
    result: dict[str, Any] = {
        "script": "benchmarks/gpu_e2e.py",
        "tiny": tiny,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "layers": layers,
        "layers_of_model": cfg["num_hidden_layers"],
        "dtype": str(dtype).replace("torch.", ""),
        "block_size": args.block_size,
        "k": args.k,
        "window": args.window,
        "projection": args.projection,
        "selection": selection(args).to_dict(),
        "steps": args.steps,
        "cuda_graph": device.type == "cuda",
        "context_fill": "random keys/values (no prefill)",
        "rows": [],
    }
    if device.type == "cuda":
        result["sdpa_backends_enabled"] = {
            "flash": torch.backends.cuda.flash_sdp_enabled(),
            "mem_efficient": torch.backends.cuda.mem_efficient_sdp_enabled(),
            "cudnn": torch.backends.cuda.cudnn_sdp_enabled(),
            "math": torch.backends.cuda.math_sdp_enabled(),
        }
    for batch in args.batches:
        for context in args.contexts:
            for path in args.paths:
                row = run_config(model, path, batch, context, args, device, dtype)
                result["rows"].append(row)
                print(json.dumps(row), flush=True)
                write_json(args.json, {**result, "complete": False})  # a timeout still leaves the rows so far
    if args.old_dense:
        try:
            result["old_dense"] = old_dense_probe(model, args, device)
        except Exception as exc:  # the probe is a side measurement: keep the table
            result["old_dense"] = {"error": f"{type(exc).__name__}: {exc}"}
    result["total_s"] = time.perf_counter() - t_all
    text = render(result)
    print(text)
    write_json(args.json, {**result, "complete": True})
    if args.table:
        args.table.parent.mkdir(parents=True, exist_ok=True)
        args.table.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
