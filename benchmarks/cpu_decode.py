"""Time per decode step on CPU: dense vs ``exact`` block selection vs photonic selection in the loop.

A needle prompt of each ``--context`` is prefilled ONCE (dense, chunked); every configuration then decodes the same
teacher-forced tokens from its own copy of that prefill, at each ``--threads`` setting. Configurations are
interleaved over repetitions so that load on a shared machine hits them alike; the median step time is reported.
Right after the prefill, ``prepare_prefill`` fits every layer's projection and signs every complete block ONCE for all
configurations (they share the signature settings; its time is printed); the first sparse step of each fork then
only programs those signatures into its scorer. That first step (and the time to the first sparse token: fork + first
step) is reported separately, as a ratio to a dense step, and excluded from the steady state.

Printed in one run, per context and thread count: ms per decode step and its ratio to dense, the first sparse step
over a dense step, the selection machinery's share of a dense step (signatures + scoring + top-k + gather plan, summed
over layers), and the read fraction. The share uses the MEAN selection time over the steady steps (the amortised
cost: steps that refresh the photonic weights or program a completed block count with their weight); the median is
printed beside it.

Photonic rows (``--photonic``, repeatable: preset names or TOML files; default ``tfln-timeshared``): each as shipped
and, with ``--tokens-per-s R`` (default 20), timed by the loaded model's own decode at R tokens/s
(:func:`kvprism.photonics.design.timed_by_decode`: detection bandwidth of that rate, codes as old as that timing makes
them, drift drawn every step), which is what a chip in the loop of this model would face.

Goals (issue "evaluate on a model that can do the task"): at 16K and 32K on the Qwen model, exact steady step < dense
step, first sparse step <= 1.5x a dense step, photonic (timed) step <= 3x a dense step.

    PYTHONPATH=src python benchmarks/cpu_decode.py --model qwen2.5-coder-0.5b --context 16384,32768 --threads 1,2
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from rich.console import Console
from rich.table import Table
from transformers import DynamicCache

from kvprism.eval.decode import fork_dynamic_cache, greedy_decode
from kvprism.eval.tasks import niah_single
from kvprism.hf.cache import SparseCache, cache_kwargs, chunked_prefill, prepare_prefill
from kvprism.hf.models import load_model
from kvprism.selection import SelectionConfig

console = Console(width=190)
GOALS = {"exact step / dense": 1.0, "first / dense": 1.5, "photonic (timed) / dense": 3.0}


def run_steps(model, cache, tokens: torch.Tensor, start_pos: int) -> tuple[list[float], list[float]]:
    """Decode ``tokens [1, S]`` one per step; wall seconds per step and (SparseCache) selection seconds per step."""
    times, sel = [], []
    prev = 0.0
    with torch.inference_mode():
        for s in range(tokens.shape[1]):
            mask = torch.ones(1, start_pos + s + 1, dtype=torch.long)
            t0 = time.perf_counter()
            model(
                input_ids=tokens[:, s : s + 1],
                attention_mask=mask,
                position_ids=torch.tensor([[start_pos + s]]),
                use_cache=True,
                **cache_kwargs(model, cache),
                logits_to_keep=1,
            )
            times.append(time.perf_counter() - t0)
            timings = getattr(cache, "timings", None)
            if timings is not None:
                sel.append(timings["select_s"] - prev)
                prev = timings["select_s"]
    return times, sel


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def photonic_configs(
    sel: SelectionConfig, model, names: list[str], tokens_per_s: float, context: int
) -> dict[str, SelectionConfig]:
    """Each photonic preset as shipped and timed by this model's decode at ``tokens_per_s`` and ``context`` tokens."""
    from pathlib import Path

    from kvprism.photonics import PhotonicConfig
    from kvprism.photonics.design import decode_timing, timed_by_decode

    text = model.config.get_text_config(decoder=True)
    out = {}
    for name in names:
        cfg = PhotonicConfig.from_toml(name) if Path(name).suffix == ".toml" else PhotonicConfig.preset(name)
        label = Path(name).stem
        width = sel.replace(d_sig=cfg.n_lines) if cfg.n_lines < sel.d_sig else sel
        out[f"{label}"] = width.replace(scorer="photonic", photonic=cfg)
        if tokens_per_s > 0:
            timing = decode_timing(
                cfg,
                n_layers=text.num_hidden_layers,
                kv_heads=text.num_key_value_heads,
                tokens_per_s=tokens_per_s,
                context=context,
                block_size=sel.block_size,
            )
            timed = timed_by_decode(cfg, timing)
            out[f"{label} timed {tokens_per_s:g} tok/s"] = width.replace(scorer="photonic", photonic=timed)
    return out


def bench_context(model, tok, context: int, threads: list[int], args, configs: dict) -> None:
    sample = niah_single(tok, context, 0.5, 0)
    ids = torch.tensor([sample.input_ids])
    sel = configs["exact"]
    torch.set_num_threads(max(threads))
    SparseCache(model, sel)  # the attention dispatcher must be "kvprism"; a DynamicCache then runs transformers' sdpa
    dense = DynamicCache()
    t0 = time.perf_counter()
    logits = chunked_prefill(model, ids, dense, chunk_tokens=2048)
    console.print(f"context {ids.shape[1]} tokens: prefill (dense, chunks of 2048, {max(threads)} threads) "
                  f"{time.perf_counter() - t0:.1f} s")  # fmt: skip
    first = int(logits.argmax(-1))
    rest, _, _ = greedy_decode(model, fork_dynamic_cache(dense), torch.tensor([[first]]), args.steps - 1)
    tok_t = torch.tensor([[first, *rest]])
    prep = ""
    for n_threads in threads:
        torch.set_num_threads(n_threads)
        if not prep:  # once per prefill (cached for every later fork and thread count)
            t0 = time.perf_counter()
            prepare_prefill(model, dense, sel)  # every configuration here shares sel's signature settings
            prep = (
                f"projection fit + signatures once per prefill {time.perf_counter() - t0:.2f} s ({n_threads} threads)"
            )
        step_times: dict[str, list[float]] = {name: [] for name in configs}
        first_step: dict[str, list[float]] = {name: [] for name in configs}
        fork_s: dict[str, list[float]] = {name: [] for name in configs}
        select_s: dict[str, list[float]] = {name: [] for name in configs}
        summaries: dict[str, dict] = {}
        for _ in range(args.reps):
            for name, cfg in configs.items():
                t0 = time.perf_counter()
                cache = fork_dynamic_cache(dense) if cfg is None else SparseCache.from_prefilled(
                    model, dense, cfg, profile=True)  # fmt: skip
                fork_s[name].append(time.perf_counter() - t0)
                times, sel_times = run_steps(model, cache, tok_t, ids.shape[1])
                first_step[name].append(times[0])
                step_times[name].extend(times[1:])
                if cfg is not None:
                    select_s[name].extend(sel_times[1:])
                    summaries[name] = cache.stats.summary()
                del cache
        dense_ms = 1e3 * statistics.median(step_times["dense"])
        table = Table(
            title=f"{args.model}, context {ids.shape[1]}, torch threads {n_threads}: decode step, median over "
            f"{args.steps - 1} steps x {args.reps} repetitions (ms); {prep}"
        )
        cols = ("config", "step ms", "step / dense", "first step ms", "first / dense", "fork + first ms",
                "selection ms median", "selection ms mean", "selection / dense step", "read fraction", "restricted")  # fmt: skip
        for col in cols:
            table.add_column(col, justify="right")
        for name in configs:
            ms = 1e3 * statistics.median(step_times[name])
            fst = 1e3 * statistics.median(first_step[name])
            to_first = fst + 1e3 * statistics.median(fork_s[name])
            if name == "dense":
                table.add_row(name, f"{ms:.1f}", "1.00", f"{fst:.1f}", f"{fst / dense_ms:.2f}", f"{to_first:.1f}",
                              "-", "-", "-", "1.000", "-")  # fmt: skip
                continue
            sel_med = 1e3 * statistics.median(select_s[name])
            sel_mean = 1e3 * statistics.mean(select_s[name])
            s = summaries[name]
            table.add_row(name, f"{ms:.1f}", f"{ms / dense_ms:.2f}", f"{fst:.1f}", f"{fst / dense_ms:.2f}",
                          f"{to_first:.1f}", f"{sel_med:.2f}", f"{sel_mean:.2f}", f"{100 * sel_mean / dense_ms:.1f}%",
                          f"{s['read_fraction_mean']:.3f}", str(s["restricted"]))  # fmt: skip
        console.print(table)
    del dense


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2", help="model name for kvprism.load_model (default smollm2)")
    ap.add_argument("--context", type=_ints, default=[8000], help="prompt tokens, comma-separated (default 8000)")
    ap.add_argument("--steps", type=int, default=8, help="decode steps per repetition")
    ap.add_argument("--reps", type=int, default=2, help="repetitions (configurations interleaved)")
    ap.add_argument("--k", type=int, default=None, help="blocks per step (default: SelectionConfig's)")
    ap.add_argument("--block-size", type=int, default=None, help="tokens per block (default: SelectionConfig's)")
    ap.add_argument("--threads", type=_ints, default=[1], help="torch thread counts, comma-separated (default 1)")
    ap.add_argument(
        "--photonic",
        action="append",
        default=None,
        help="photonic preset name or TOML file (repeatable; default tfln-timeshared; 'none' for no photonic row)",
    )
    ap.add_argument("--tokens-per-s", type=float, default=20.0, help="decode rate that times the photonic rows (0: no)")
    args = ap.parse_args()
    if args.steps < 2 or args.reps < 1 or any(t < 1 for t in args.threads):
        ap.error("--steps must be >= 2, --reps >= 1 and every --threads >= 1")

    model, tok = load_model(args.model)
    given = {"block_size": args.block_size, "k": args.k}
    sel = SelectionConfig(scorer="exact", **{n: v for n, v in given.items() if v is not None})
    console.print(
        f"{args.model}: selection block_size {sel.block_size}, k {sel.k}, window {sel.window}, d_sig {sel.d_sig}, "
        f"projection {sel.projection}, carry {sel.carry}; {args.steps} decode steps x {args.reps} repetitions"
    )
    configs: dict[str, SelectionConfig | None] = {"dense": None, "exact": sel}
    names = [n for n in (args.photonic or ["tfln-timeshared"]) if n != "none"]
    configs |= photonic_configs(sel, model, names, args.tokens_per_s, max(args.context))  # timed at the longest
    for context in args.context:
        bench_context(model, tok, context, args.threads, args, configs)
    console.print("goals: " + "; ".join(f"{k} <= {v:g}" for k, v in GOALS.items()) + " (exact step strictly below)")


if __name__ == "__main__":
    main()
