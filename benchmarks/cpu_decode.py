"""Time per decode step on CPU: dense vs ``exact`` block selection vs ``seed-nominal`` photonic selection.

SmolLM2 with an ~8K-token needle prompt is prefilled ONCE (dense, chunked); every configuration then decodes the same
teacher-forced tokens from its own copy of that prefill. Configurations are interleaved over repetitions so that
load on a shared machine hits them alike; the median step time is reported. Right after the prefill,
``prepare_prefill`` fits every layer's projection and signs every complete block ONCE for all configurations (they
share the signature settings; its time is printed); the first sparse step of each fork then only programs those
signatures into its scorer. That first step (and the time to the first sparse token: fork + first step) is reported
separately, as a ratio to a dense step (goal <= 2x), and excluded from the steady state.

Printed in one run: ms per decode step and its ratio to dense, the selection machinery's share of a dense step
(signatures + scoring + top-k + gather plan, summed over layers; goal <= 10%), and the read fraction. The share uses
the MEAN selection time over the steady steps (the amortised cost: steps that refresh the photonic weights or program
a completed block count with their weight); the median is printed beside it.

Photonic rows: ``seed-nominal`` as shipped (drift sampled at every decode step), and the same preset with the drift
sampled every M decode steps (``PhotonicConfig.drift_update_steps``; by default the largest M whose zero-order-hold
error stays within the preset's static trim residual; the hold error and the weight refreshes per layer are printed).

    PYTHONPATH=src python benchmarks/cpu_decode.py [--context 8000] [--steps 12] [--reps 3] [--k 8]
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

console = Console(width=170)


def photonic_available() -> tuple[bool, str]:
    try:
        import kvprism.photonics  # noqa: F401
    except ImportError as exc:
        return False, str(exc)
    return True, ""


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--context", type=int, default=8000, help="prompt tokens")
    ap.add_argument("--steps", type=int, default=12, help="decode steps per repetition")
    ap.add_argument("--reps", type=int, default=3, help="repetitions (configurations interleaved)")
    ap.add_argument("--k", type=int, default=None, help="blocks per step (default: SelectionConfig's)")
    ap.add_argument("--block-size", type=int, default=None, help="tokens per block (default: SelectionConfig's)")
    ap.add_argument(
        "--threads", type=int, default=1, help="torch threads (0 = torch default; 1 avoids OpenMP oversubscription)"
    )
    ap.add_argument(
        "--drift-update-steps",
        type=int,
        default=0,
        help="M of the extra photonic row (drift sampled every M steps); 0 = the largest M whose hold error is within "
        "the preset's trim residual; -1 = no extra row",
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model, tok = load_model("smollm2")
    sample = niah_single(tok, args.context, 0.5, 0)
    ids = torch.tensor([sample.input_ids])
    console.print(
        f"SmolLM2, context {ids.shape[1]} tokens, {args.steps} decode steps x {args.reps} repetitions, "
        f"torch threads {torch.get_num_threads()}"
    )

    given = {"block_size": args.block_size, "k": args.k}
    sel = SelectionConfig(scorer="exact", **{n: v for n, v in given.items() if v is not None})
    console.print(f"selection: block_size {sel.block_size}, k {sel.k}, window {sel.window}, d_sig {sel.d_sig}")
    configs: dict[str, SelectionConfig | None] = {"dense": None, "exact": sel}
    ok, why = photonic_available()
    if ok:
        from kvprism.photonics import PhotonicConfig

        configs["photonic seed-nominal"] = sel.replace(scorer="photonic", photonic="seed-nominal")
        nominal = PhotonicConfig.preset("seed-nominal")
        m = args.drift_update_steps or nominal.drift_update_steps_within(nominal.trim_sigma_m)
        if m > 1:
            held = nominal.replace(drift_update_steps=m)
            configs[f"photonic seed-nominal, drift every {m}"] = sel.replace(scorer="photonic", photonic=held)
            console.print(
                f"drift every {m} steps: hold error {held.drift_hold_rms_m * 1e12:.2f} pm RMS (trim residual "
                f"{nominal.trim_sigma_m * 1e12:.1f} pm, drift sigma {nominal.drift_ring_sigma_m * 1e12:.0f} pm, "
                f"correlation {nominal.drift_corr_steps:g} steps)"
            )
    else:
        console.print(
            f"[yellow]photonic: skipped -- the photonic engine (kvprism.photonics) is not importable: {why}[/]"
        )

    # the attention dispatcher must be "kvprism" for SparseCache; with a DynamicCache it runs transformers' sdpa
    SparseCache(model, sel)
    dense = DynamicCache()
    t0 = time.perf_counter()
    logits = chunked_prefill(model, ids, dense, chunk_tokens=2048)
    console.print(f"prefill (dense, chunks of 2048): {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    prepare_prefill(model, dense, sel)  # every configuration here shares sel's signature settings
    console.print(
        f"projection fit + block signatures, once per prefill for all configurations: {time.perf_counter() - t0:.2f} s"
    )
    # teacher-forced tokens: the dense greedy continuation
    first = int(logits.argmax(-1))
    rest, _, _ = greedy_decode(model, fork_dynamic_cache(dense), torch.tensor([[first]]), args.steps - 1)
    tok_t = torch.tensor([[first, *rest]])

    step_times: dict[str, list[float]] = {name: [] for name in configs}
    first_step: dict[str, list[float]] = {name: [] for name in configs}
    fork_s: dict[str, list[float]] = {name: [] for name in configs}
    select_s: dict[str, list[float]] = {name: [] for name in configs}
    attend_s: dict[str, list[float]] = {name: [] for name in configs}
    summaries: dict[str, dict] = {}
    for rep in range(args.reps):
        console.print(f"repetition {rep + 1}/{args.reps}")
        for name, cfg in configs.items():
            t0 = time.perf_counter()
            cache = (
                fork_dynamic_cache(dense)
                if cfg is None
                else SparseCache.from_prefilled(model, dense, cfg, profile=True)
            )
            fork_s[name].append(time.perf_counter() - t0)
            times, sel_times = run_steps(model, cache, tok_t, ids.shape[1])
            first_step[name].append(times[0])
            step_times[name].extend(times[1:])
            if cfg is not None:
                select_s[name].extend(sel_times[1:])  # steady state: the first step fits and programs all blocks
                attend_s[name].append(cache.timings["attend_s"] / args.steps)
                summaries[name] = cache.stats.summary()
            del cache

    dense_ms = 1e3 * statistics.median(step_times["dense"])
    table = Table(title="decode step, median over steps x repetitions (ms)")
    for col in (
        "config",
        "step ms",
        "vs dense",
        "first step ms",
        "first / dense step",
        "fork + first ms",
        "selection ms median",
        "selection ms mean",
        "selection / dense step",
        "W refreshes / layer",
        "sparse attend ms",
        "read fraction",
        "restricted",
    ):
        table.add_column(col, justify="right")
    for name in configs:
        ms = 1e3 * statistics.median(step_times[name])
        first = 1e3 * statistics.median(first_step[name])
        to_first = first + 1e3 * statistics.median(fork_s[name])
        ratio = f"{first / dense_ms:.2f}"
        if name == "dense":
            row = (f"{ms:.1f}", "1.00", f"{first:.1f}", ratio, f"{to_first:.1f}", "-", "-", "-", "-", "-", "1.000", "-")
            table.add_row(name, *row)
            continue
        sel_med = 1e3 * statistics.median(select_s[name])
        sel_ms = 1e3 * statistics.mean(select_s[name])
        att_ms = 1e3 * statistics.median(attend_s[name])
        s = summaries[name]
        refreshes = s.get("engine_counters", {}).get("weight_refreshes")
        table.add_row(
            name,
            f"{ms:.1f}",
            f"{ms / dense_ms:.2f}",
            f"{first:.1f}",
            ratio,
            f"{to_first:.1f}",
            f"{sel_med:.2f}",
            f"{sel_ms:.2f}",
            f"{100 * sel_ms / dense_ms:.1f}%",
            "-" if refreshes is None else f"{refreshes / model.config.num_hidden_layers:g}",
            f"{att_ms:.2f}",
            f"{s['read_fraction_mean']:.3f}",
            str(s["restricted"]),
        )
    console.print(table)
    console.print("goal: selection machinery <= 10% of a dense decode step (mean selection ms / median dense step)")
    console.print("goal: first sparse step <= 2x a dense step (first / dense step)")


if __name__ == "__main__":
    main()
