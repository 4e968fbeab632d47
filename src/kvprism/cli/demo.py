"""``kvprism demo``: one needle, answered densely and with photonic block selection; one verdict line per chip.

The decode is the evaluation's (:mod:`kvprism.eval.decode`: one dense prefill, then a fresh cache per configuration
and the same greedy loop), so the demo's answer of a configuration is the one a grid cell would store.
"""

from __future__ import annotations

import functools
import math
import time
from typing import Annotated, Any

import typer

from kvprism.cli import checks
from kvprism.cli.common import (
    SELECTION_OPTIONS,
    DeviceOpt,
    DtypeOpt,
    ModelOpt,
    PhotonicFileOpt,
    SelectionFileOpt,
    ThreadsOpt,
    console,
    set_threads,
    with_selection_options,
)
from kvprism.errors import KvprismError

__all__ = ["DEMO_RATES", "demo"]


@with_selection_options(*(n for n in SELECTION_OPTIONS if n not in ("block_size", "k")))
def demo(
    model: ModelOpt = "smollm2",
    context: Annotated[int, typer.Option(help="Prompt length in tokens.", min=64)] = 4096,
    depth: Annotated[float, typer.Option(help="Needle depth as a fraction of the haystack, in [0, 1].")] = 0.5,
    seed: Annotated[
        int, typer.Option(help="Seed of the needle key/value and haystack offset (and of selection, by default).")
    ] = 0,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate.", min=1)] = 24,
    k: Annotated[int, typer.Option(help="Blocks selected per (layer, KV head) and decode step.", min=1)] = 16,
    block_size: Annotated[int, typer.Option(help="Tokens per block.", min=1)] = 64,
    preset: Annotated[
        str, typer.Option(help="Photonic hardware preset(s), comma-separated (d_sig = each preset's comb lines).")
    ] = "seed-nominal,tfln-timeshared",
    photonic: PhotonicFileOpt = None,
    selection: SelectionFileOpt = None,
    heads: Annotated[str | None, typer.Option(help="Head mask JSON from `kvprism heads`.")] = None,
    dtype: DtypeOpt = "float32",
    device: DeviceOpt = "cpu",
    threads: ThreadsOpt = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Also print each run's chip counters, energy ledger and violations.")
    ] = False,
    selection_fields: dict[str, Any] | None = None,
) -> None:
    """PRISM demonstration: one needle in a natural-text haystack, answered with dense attention and with
    photonic block selection (the photonic engine picks the blocks each decode step reads). One verdict line per
    configuration: answer, share of the cache read, energy per token against a GPU doing sparse attention, and the
    decode rates at which the chip meets its constraints."""
    import torch

    from kvprism.eval.decode import eos_ids, fresh_cache, greedy_decode, prefill
    from kvprism.eval.grid import load_preset
    from kvprism.eval.tasks import niah_single
    from kvprism.hf.models import load_model
    from kvprism.selection import SelectionConfig

    with checks.checking():
        if not 0.0 <= depth <= 1.0:
            raise checks.BadOption(f"--depth = {depth} is invalid; allowed range: [0, 1]")
        checks.dtype(dtype)
        checks.model(model)
        checks.device(device)
        fields = {"seed": seed, **checks.selection_file(selection), "block_size": block_size, "k": k,
                  **checks.selection_fields(dict(selection_fields or {}))}  # fmt: skip
        if heads is not None:
            checks.input_file(heads, "--heads", suffix=".json", what="head mask JSON file")
            fields["heads"] = heads
        fields.pop("photonic", None)  # the presets below set it
        if "top_p" in (selection_fields or {}) and fields.get("budget", "topk") != "top_p":
            raise checks.BadOption("--top-p needs --budget top_p (with budget topk it would select nothing)")
        sel = SelectionConfig(**{**fields, "scorer": "exact"})
        presets = [checks.preset(p) for p in checks.listed(preset, str, "--preset")]
        if checks.photonic_file(photonic) is not None:
            presets.append(photonic)
        checks.window(checks.model_config(model), context + max_new_tokens, "--context + --max-new-tokens")
    set_threads(threads)
    t0 = time.perf_counter()
    with console.status(f"loading {model} ..."):
        mdl, tok = load_model(model, dtype=dtype, device=device)
    t_load = time.perf_counter() - t0
    with checks.checking():
        checks.window(mdl.config, context + max_new_tokens, "--context + --max-new-tokens")
    sample = niah_single(tok, context, depth, seed)

    console.print(f"[bold]model[/]          {model}  (loaded in {t_load:.1f} s)")
    console.print(f"[bold]context[/]        {sample.context_tokens} tokens, needle at depth {sample.depth:.2f}")
    console.print(f"[bold]question[/]       {sample.question}")
    console.print(f"[bold]expected[/]       {', '.join(sample.answers)}")

    ids = torch.tensor([sample.input_ids[:-1]], device=device)
    last = torch.tensor([[sample.input_ids[-1]]])
    t0 = time.perf_counter()
    with console.status(f"prefill of {ids.shape[1]} tokens (dense, once) ..."):
        dense_cache = prefill(mdl, ids, chunk_tokens=2048)
    console.print(f"[bold]prefill[/]        {time.perf_counter() - t0:.1f} s (dense, shared by every run below)")

    stop = eos_ids(mdl, tok)
    runs: list[tuple[str, SelectionConfig | None]] = [("dense", None)]
    for p in presets:
        cfg = load_preset(p)
        # one comb line per signature dimension unless d_sig was given
        d_sig = fields.get("d_sig", cfg.n_lines)
        runs.append(
            (f"photonic {p}", sel.replace(scorer="photonic", photonic=cfg if p == photonic else p, d_sig=d_sig))
        )
    width = max(len(label) for label, _ in runs)
    console.print("[bold]verdicts[/]       (energy model: one decode step = one token at batch 1; --verbose: details)")
    for label, cfg in runs:
        cache = fresh_cache(mdl, dense_cache, cfg)
        with console.status(f"decoding: {label} ..."):
            tokens, _, elapsed = greedy_decode(mdl, cache, last, max_new_tokens, stop)
        answer = tok.decode(tokens, skip_special_tokens=True)
        mark = "[green]correct[/]" if sample.score(answer) else "[red]wrong[/]"
        head = f"  {label:<{width}}  {_clip(answer.strip(), 32)!r} {mark} ({elapsed:.1f} s)"
        if cfg is None:
            console.print(f"{head} · reads every cached token (the reference)", highlight=False)
            continue
        s = cache.stats.summary()
        scorer = cache.selectors[0].scorer
        pcfg = scorer.engine.config
        name = cfg.photonic if isinstance(cfg.photonic, str) else (photonic or "custom")
        read = (
            f"reads {_pct(s['read_fraction_mean'])} of the cache (max {_pct(s['read_fraction_max'])})"
            if s["restricted"]
            else "[red]reads everything[/]: k·B + sink + window cover the whole context"
        )
        step, energy_note = _step_energy(pcfg, cfg, mdl, sample.context_tokens)
        energy = (
            f"{_si(step['photonic_energy_j'], 'J')}/token vs GPU sparse {_si(step['gpu_sparse_energy_j'], 'J')} "
            f"({_ratio(step['gpu_sparse_energy_j'], step['photonic_energy_j'])})"
            if step is not None
            else f"energy not modelled ({_clip(energy_note or '', 60)})"
        )
        with console.status(f"feasibility of {name} at decode rates ..."):
            rates = _feasible_rates(pcfg, cfg, mdl, sample.context_tokens)
        console.print(f"{head} · {read} · {energy} · {_rates_verdict(rates, name, verbose)}", highlight=False)
        if verbose:
            _print_demo_details(s, scorer, step, energy_note, rates, sample.context_tokens)


def _clip(text: str, n: int) -> str:
    """``text`` cut to ``n`` characters (``…`` marks the cut)."""
    return text if len(text) <= n else text[: n - 1] + "…"


def _pct(x: float | None) -> str:
    """A fraction as a percentage with 2 significant figures (``0.0937 -> 9.4 %``)."""
    if x is None:
        return "–"
    return f"{x * 100:.2g} %" if x < 0.995 else "100 %"


def _ratio(reference: float, value: float) -> str:
    """``5.9× less`` / ``1.3× more`` of ``value`` against ``reference``."""
    if value <= 0 or reference <= 0:
        return "–"
    r = reference / value
    x = r if r >= 1 else 1 / r
    return (f"{x:,.0f}" if x >= 10 else f"{x:.2g}") + ("× less" if r >= 1 else "× more")


_SI_PREFIXES = {12: "T", 9: "G", 6: "M", 3: "k", 0: "", -3: "m", -6: "µ", -9: "n", -12: "p", -15: "f"}


def _si(value: float, unit: str, digits: int = 3) -> str:
    """``value`` with an SI prefix and ``digits`` significant figures: ``1.3728e-08, "J" -> "13.7 nJ"``."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g} {unit}"
    exp = max(-15, min(12, 3 * math.floor(math.log10(abs(value)) / 3)))
    scaled = float(f"{value / 10**exp:.{digits}g}")
    if abs(scaled) >= 1000 and exp < 12:  # 999.96 rounds up to the next prefix
        exp += 3
        scaled = float(f"{value / 10**exp:.{digits}g}")
    return f"{scaled:.{digits}g} {_SI_PREFIXES[exp]}{unit}"


def _counter(name: str, value: float) -> str:
    """One engine counter with its unit: ``program_energy_j`` in J, ``*_s`` in s, counts with thousands separators."""
    if name.endswith("_j"):
        return f"{name[:-2].replace('_', ' ')} {_si(float(value), 'J')}"
    if name.endswith("_s"):
        return f"{name[:-2].replace('_', ' ')} {_si(float(value), 's')}"
    return f"{name.replace('_', ' ')} {int(value):,}"


#: decode rates (tokens/s) at which the demo times each chip's feasibility, slowest first
DEMO_RATES = (1.0, 10.0, 100.0)


def _feasible_rates(pcfg: Any, sel: Any, model: Any, context: int) -> list[tuple[float, list[str]]]:
    """``[(tokens/s, violations)]`` of the chip timed by this model's decode at :data:`DEMO_RATES`, slowest first,
    stopping at the first rate it fails (faster decode leaves less time per selection)."""
    from kvprism.energy.config import ModelShape
    from kvprism.photonics.design import decode_timing
    from kvprism.photonics.feasibility import feasibility

    shape = ModelShape.of_model(model)
    qph = 1 if sel.gqa_reduce == "sum" else shape.q_heads // shape.kv_heads
    out: list[tuple[float, list[str]]] = []
    for rate in DEMO_RATES:
        try:
            timing = decode_timing(
                pcfg,
                n_layers=shape.n_layers,
                kv_heads=shape.kv_heads,
                tokens_per_s=rate,
                queries_per_head=qph,
                context=context,
                block_size=sel.block_size,
                model=shape.name,
            )
            violations = [str(v) for v in feasibility(pcfg, timing=timing).violations]
        except KvprismError as exc:
            violations = [str(exc).splitlines()[0]]
        out.append((rate, violations))
        if violations:
            break
    return out


def _rates_verdict(rates: list[tuple[float, list[str]]], name: str, verbose: bool) -> str:
    """``feasible at 1–10 tokens/s, not at 100: <why>`` (the reason clipped unless ``verbose``)."""
    ok = [r for r, v in rates if not v]
    fail = next(((r, v) for r, v in rates if v), None)
    hint = f"kvprism hw --{'config' if name.endswith('.toml') else 'preset'} {name}"
    if fail is None:
        return f"[green]feasible[/] up to {ok[-1]:g} tokens/s (the fastest rate tried)"
    rate, violations = fail
    why = violations[0] if verbose else _clip(violations[0].split(": ")[0], 90)
    more = f" (+{len(violations) - 1} more; {hint})" if len(violations) > 1 else f" ({hint})"
    if not ok:
        return f"[red]infeasible[/] even at {rate:g} token/s: {why}{more}"
    return f"[yellow]feasible[/] up to {ok[-1]:g} tokens/s, not at {rate:g}: {why}{more}"


def _step_energy(pcfg: Any, sel: Any, model: Any, context: int) -> tuple[dict[str, float] | None, str | None]:
    """The energy model's decode step of this model at this context (photonic selection + fetching the selected
    blocks vs the GPU reading the whole cache or scanning signatures and fetching): ``(row, None)``, or ``(None,
    why not)`` when the energy model does not apply."""
    from kvprism.energy import EnergyConfig, decode_step
    from kvprism.energy.config import ModelShape

    ecfg = EnergyConfig(block_size=sel.block_size, k=max(sel.k, 1), d_sig=pcfg.n_lines, sink_blocks=sel.sink_blocks,
                        window=sel.window, gqa_reduce=sel.gqa_reduce)  # fmt: skip
    try:
        return decode_step(pcfg, ecfg, ModelShape.of_model(model), context).row(), None
    except KvprismError as exc:
        return None, str(exc).splitlines()[0]


def _print_demo_details(
    s: dict[str, Any],
    scorer: Any,
    step: dict[str, float] | None,
    energy_note: str | None,
    rates: list[tuple[float, list[str]]],
    context: int,
) -> None:
    """``kvprism demo --verbose``: the counters, the energy ledger and every violated constraint of one run."""
    say = functools.partial(console.print, highlight=False)
    say(
        f"      selection  {s['decode_steps']} decode steps, {s['selection_calls']:,} selection calls, "
        f"{s['programming_events']:,} signature rows written"
    )
    counters = s.get("engine_counters") or {}
    if counters:
        say("      chip       " + ", ".join(_counter(n, v) for n, v in sorted(counters.items())))
        conv = counters.get("adc_conversions", 0)
        if conv:
            say(
                f"      ADC        {_pct(counters.get('adc_clips', 0) / conv)} of {int(conv):,} conversions clipped "
                "(full scale fixed at programming from the target weights; noise or drift beyond it clips)"
            )
    feas = scorer.feasibility()
    if feas is not None:
        untimed = "no constraint violated" if not feas.violations else "; ".join(map(str, feas.violations))
        say(f"      untimed    feasibility without decode timing: {untimed}")
    for rate, violations in rates:
        say(
            f"      timed      at {rate:g} tokens/s: "
            + ("no constraint violated" if not violations else "; ".join(violations))
        )
    if step is None:
        say(f"      energy     not modelled: {energy_note}")
        return
    r = step
    say(
        f"      energy     per token: photonic {_si(r['photonic_energy_j'], 'J')} (chip "
        f"{_si(r['chip_dynamic_energy_j'], 'J')} + static {_si(r['chip_static_energy_j'], 'J')}, rest KV fetch) vs "
        f"GPU dense {_si(r['dense_energy_j'], 'J')}, GPU sparse {_si(r['gpu_sparse_energy_j'], 'J')}; latency "
        f"{_si(r['photonic_latency_s'], 's')} vs {_si(r['dense_latency_s'], 's')} / "
        f"{_si(r['gpu_sparse_latency_s'], 's')} (this model's shape, {context:,} tokens; kvprism energy)"
    )
