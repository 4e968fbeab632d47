"""``kvprism`` command line.

Errors caused by input are printed as one line (``error: ...``) with exit code 1; ``--debug`` shows the traceback.
Usage errors (a bad option value) are one line too, with exit code 2. SIGINT / SIGTERM stop a command with exit code
130 / 143 (an evaluation grid first says how far it got; rerunning the same command resumes it). Every option is
validated before a model loads. Heavy imports (torch, transformers) happen inside the commands so ``kvprism --help``
stays fast.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

import kvprism
from kvprism.cli_common import AddressOpt, ExecutorOpt, GpusPerWorkerOpt, WorkersOpt, executor_of, model_factory

app = typer.Typer(
    name="kvprism",
    help="Photonic KV-cache block selection for long-context LLM inference.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# command-line options shared by several commands
_ModelOpt = Annotated[str, typer.Option(help="Model: 'smollm2', a .gguf file, a local directory or a cached hub id.")]
_DeviceOpt = Annotated[str, typer.Option(help="torch device.")]
_ThreadsOpt = Annotated[
    int | None,
    typer.Option("--threads", help="CPU threads for torch [default: $OMP_NUM_THREADS, else physical cores].", min=1),
]
_DTYPES = ("float32", "bfloat16", "float16")
_DtypeOpt = Annotated[str, typer.Option(help=f"Model weights dtype: {', '.join(_DTYPES)}.")]
_SelectionFileOpt = Annotated[
    str | None,
    typer.Option("--selection", help="SelectionConfig TOML file; options given explicitly override its fields."),
]
_PhotonicFileOpt = Annotated[
    str | None, typer.Option("--photonic", help="Photonic preset file (PhotonicConfig TOML), run as a configuration.")
]
console = Console()
err_console = Console(stderr=True)
_state: dict[str, Any] = {"debug": False, "argv": []}

#: SelectionConfig fields given as options: field -> (option type, help). Ranges and choices are checked by
#: SelectionConfig itself (kvprism.selection), which the CLI imports only when a command runs (``--help`` stays fast).
_SELECTION_OPTIONS: dict[str, tuple[type, str]] = {
    "block_size": (int, "Tokens per block."),
    "k": (int, "Blocks selected per (layer, KV head) and decode step."),
    "d_sig": (int, "Signature dimension (wavelength channels per bank row) [default: a preset's comb lines]."),
    "signature": (str, "Block signature: mean, minmax, centroids, reps."),
    "sig_rows": (int, "Bank rows per block of the multi-row signatures (centroids, reps)."),
    "budget": (str, "Blocks read out of the k best: topk (all k) or top_p (adaptive, k is the cap)."),
    "top_p": (float, "For --budget top_p: estimated attention mass to cover, in (0, 1]."),
    "projection": (str, "Projection of keys and query to d_sig dimensions: learned, pca, random, none."),
    "sign": (str, "signed (balanced photodetection) or relu (non-negative weights and inputs)."),
    "gqa_reduce": (str, "Combine the query heads of a KV head: sum (one evaluation) or max (one per query head)."),
    "rerank": (
        int,
        "Two-stage selection: the scorer proposes rerank×k blocks, exact rescoring keeps k (1 = one stage).",
    ),
    "sink_blocks": (int, "First blocks always read (attention sinks)."),
    "window": (int, "Most recent tokens always read."),
    "seed": (int, "Seed of random projections and of the photonic engine's noise and fabrication draws."),
}
#: option names that differ from the field name
_SELECTION_OPTION_NAMES = {"seed": "--selection-seed"}
#: fields of the evaluation commands (their own --k lists and --block-size; scorer / photonic: --configs; heads: --heads)
_EVAL_FIELDS = tuple(n for n in _SELECTION_OPTIONS if n not in ("k", "block_size"))


def _usage(option: str, message: str) -> typer.BadParameter:
    """A usage error (exit code 2) naming ``option``."""
    return typer.BadParameter(message, param_hint=f"'{option}'")


def selection_option(name: str) -> str:
    """The command-line option of SelectionConfig field ``name`` (e.g. ``--d-sig``)."""
    return _SELECTION_OPTION_NAMES.get(name, "--" + name.replace("_", "-"))


def _param_name(field: str) -> str:
    return selection_option(field).removeprefix("--").replace("-", "_")


def with_selection_options(*fields: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator of a command: adds one option per SelectionConfig field in ``fields`` (default None = not given)
    and passes the given ones, each checked by ``SelectionConfig`` (usage error naming the option and the allowed
    range), as ``selection_fields: dict`` to the command."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        sig = inspect.signature(fn, eval_str=True)
        extra = [
            inspect.Parameter(
                _param_name(f),
                inspect.Parameter.KEYWORD_ONLY,
                default=None,
                annotation=Annotated[
                    _SELECTION_OPTIONS[f][0] | None,
                    typer.Option(selection_option(f), help=f"{_SELECTION_OPTIONS[f][1]} [default: SelectionConfig's]"),
                ],
            )
            for f in fields
        ]
        params = [p for p in sig.parameters.values() if p.name != "selection_fields"]

        @functools.wraps(fn)
        def wrapper(**kwargs: Any) -> Any:
            given = {f: kwargs.pop(_param_name(f)) for f in fields}
            kwargs["selection_fields"] = check_selection_fields({f: v for f, v in given.items() if v is not None})
            return fn(**kwargs)

        wrapper.__signature__ = sig.replace(parameters=params + extra)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in params + extra}
        return wrapper

    return deco


def check_selection_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """Check each given SelectionConfig field on its own (its type, range or choices); returns ``fields``.

    Raises:
        typer.BadParameter: one line naming the option and what is allowed.
    """
    if not fields:
        return fields
    from kvprism.errors import ConfigError
    from kvprism.selection import SelectionConfig

    for name, value in fields.items():
        try:
            SelectionConfig(**{name: value})
        except ConfigError as exc:
            raise _usage(selection_option(name), str(exc)) from None
    return fields


def _selection_file(path: str | None) -> dict[str, Any]:
    """The SelectionConfig fields a ``--selection`` TOML file sets (checked by SelectionConfig)."""
    if path is None:
        return {}
    import tomllib

    from kvprism.errors import ConfigError
    from kvprism.migrate import migrate_backend
    from kvprism.selection import SelectionConfig

    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _usage("--selection", f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise _usage("--selection", f"{path} is not a readable TOML file ({exc})") from None
    data.pop("meta", None)
    try:
        SelectionConfig.from_dict(data, where=path)
    except ConfigError as exc:
        raise _usage("--selection", str(exc)) from None
    return migrate_backend(data, "scorer")


def _photonic_file(path: str | None) -> str | None:
    """Check a ``--photonic`` preset file (a PhotonicConfig TOML); returns its path."""
    if path is None:
        return None
    from kvprism.errors import ConfigError
    from kvprism.photonics.config import PhotonicConfig

    if not path.endswith(".toml"):
        raise _usage("--photonic", f"{path} must be a PhotonicConfig TOML file (*.toml)")
    try:
        PhotonicConfig.from_toml(path)
    except ConfigError as exc:
        raise _usage("--photonic", str(exc)) from None
    return path


def _check_dtype(dtype: str) -> str:
    if dtype not in _DTYPES:
        raise _usage("--dtype", f"{dtype!r} is invalid; allowed: {', '.join(_DTYPES)}")
    return dtype


@contextlib.contextmanager
def grid_progress(label: str) -> Iterator[Callable[[Any], None]]:
    """A rich progress bar on the console, driven by the :class:`kvprism.eval.runner.Progress` events of a run."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[cell]}"),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task(label, total=None, cell="")

        def on_progress(event: Any) -> None:
            p = event.point
            where = f"{p.context} tok, depth {p.depth:g}" if p is not None else ""
            if event.kind == "start":
                progress.update(bar, total=event.total, completed=0)
            elif event.kind == "prefill":
                progress.update(bar, cell=f"prefill {p.task} {where}")
            elif event.kind == "decode":
                progress.update(bar, cell=f"{event.config} @ {where}")
            else:
                progress.update(bar, completed=event.done)

        yield on_progress


def _set_threads(threads: int | None) -> None:
    from kvprism.runtime import set_threads

    set_threads(threads)


def _note(msg: str) -> None:
    err_console.print(f"note: {msg}", highlight=False, markup=False, soft_wrap=True)


def _peek_model_config(model: str) -> Any | None:
    """The model's transformers config without loading its weights (None when it cannot be read that way; the
    model load then reports the problem)."""
    try:
        from transformers import AutoConfig

        from kvprism.hf.models import resolve_model_path

        return AutoConfig.from_pretrained(resolve_model_path(model), local_files_only=True)
    except Exception:
        return None


def _check_window(cfg: Any, tokens: int, what: str) -> None:
    window = getattr(cfg, "max_position_embeddings", None)
    if window is not None and tokens > window:
        raise kvprism.KvprismError(f"{what} = {tokens} exceeds the model's window of {window} tokens")


def _check_preset(preset: str, option: str = "--preset") -> None:
    from kvprism.photonics.config import PhotonicConfig

    names = PhotonicConfig.presets()
    if preset not in names:
        raise kvprism.KvprismError(f"{option} = {preset!r} is unknown; presets: {', '.join(names)}")


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
) -> None:
    _state["debug"] = debug


@app.command()
def version() -> None:
    """Print the kvprism version."""
    console.print(f"kvprism {kvprism.__version__}")


@app.command()
@with_selection_options(*(n for n in _SELECTION_OPTIONS if n not in ("block_size", "k")))
def demo(
    model: _ModelOpt = "smollm2",
    context: Annotated[int, typer.Option(help="Prompt length in tokens.", min=64)] = 4096,
    depth: Annotated[float, typer.Option(help="Needle depth as a fraction of the haystack, in [0, 1].")] = 0.5,
    seed: Annotated[
        int, typer.Option(help="Seed of the needle key/value and haystack offset (and of selection, by default).")
    ] = 0,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate.", min=1)] = 24,
    k: Annotated[int, typer.Option(help="Blocks selected per (layer, KV head) and decode step.", min=0)] = 16,
    block_size: Annotated[int, typer.Option(help="Tokens per block.", min=1)] = 64,
    preset: Annotated[
        str, typer.Option(help="Photonic hardware preset(s), comma-separated (d_sig = each preset's comb lines).")
    ] = "seed-nominal,tfln-feasible",
    photonic: _PhotonicFileOpt = None,
    selection: _SelectionFileOpt = None,
    heads: Annotated[str | None, typer.Option(help="Head mask JSON from `kvprism heads`.")] = None,
    dtype: _DtypeOpt = "float32",
    device: _DeviceOpt = "cpu",
    threads: _ThreadsOpt = None,
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

    from kvprism.eval.decode import eos_ids, fork_dynamic_cache, greedy_decode, prefill
    from kvprism.eval.grid import load_preset
    from kvprism.eval.tasks import niah_single
    from kvprism.hf.cache import SparseCache
    from kvprism.hf.models import load_model
    from kvprism.selection import SelectionConfig

    if not 0.0 <= depth <= 1.0:
        raise kvprism.KvprismError(f"--depth = {depth} is invalid; allowed range: [0, 1]")
    _check_dtype(dtype)
    fields = {"seed": seed, **_selection_file(selection), "block_size": block_size, "k": k, **(selection_fields or {})}
    if heads is not None:
        fields["heads"] = heads
    fields.pop("photonic", None)  # the presets below set it
    sel = SelectionConfig(**{**fields, "scorer": "exact"})
    presets = [p.strip() for p in preset.split(",") if p.strip()]
    for p in presets:
        _check_preset(p)
    if _photonic_file(photonic) is not None:
        presets.append(photonic)
    peek = _peek_model_config(model)
    _check_window(peek, context + max_new_tokens, "--context + --max-new-tokens")
    _set_threads(threads)
    t0 = time.perf_counter()
    with console.status(f"loading {model} ..."):
        mdl, tok = load_model(model, dtype=dtype, device=device)
    t_load = time.perf_counter() - t0
    _check_window(mdl.config, context + max_new_tokens, "--context + --max-new-tokens")
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
        cache = fork_dynamic_cache(dense_cache) if cfg is None else SparseCache.from_prefilled(mdl, dense_cache, cfg)
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
            rates = _feasible_rates(pcfg, cfg, mdl)
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
    import math

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


def _feasible_rates(pcfg: Any, sel: Any, model: Any) -> list[tuple[float, list[str]]]:
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
                pcfg, n_layers=shape.n_layers, kv_heads=shape.kv_heads, tokens_per_s=rate, queries_per_head=qph
            )
            violations = [str(v) for v in feasibility(pcfg, timing=timing).violations]
        except kvprism.KvprismError as exc:
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
    except kvprism.KvprismError as exc:
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


@app.command()
def hw(
    preset: Annotated[str | None, typer.Option(help="Photonic preset name (see --list).")] = None,
    config: Annotated[str | None, typer.Option("--config", help="Photonic config TOML file.")] = None,
    list_presets: Annotated[bool, typer.Option("--list", help="List the shipped presets and exit.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the feasibility Monte Carlo.")] = 0,
    model_shape: Annotated[
        str | None,
        typer.Option(
            "--model-shape",
            help="Time the detection by decode for this model (e.g. qwen2.5-7b, smollm2-135m, llama-3.1-8b): the "
            "integration time follows from the time per selection and replaces detection_bandwidth_hz.",
        ),
    ] = None,
    tokens_per_s: Annotated[
        float | None,
        typer.Option("--tokens-per-s", help="Target decode rate for --model-shape (default 20 tokens/s).", min=0.0),
    ] = None,
    queries_per_head: Annotated[
        int, typer.Option(help="Chip queries per (layer, KV head) and decode step (1: GQA sum).", min=1)
    ] = 1,
    batch: Annotated[int, typer.Option(help="Sequences decoded together (one logical bank each).", min=1)] = 1,
    strict: Annotated[bool, typer.Option("--strict", help="Exit with status 1 if a constraint is violated.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the verdict as JSON instead of a table.")] = False,
    write_timed: Annotated[
        str | None,
        typer.Option(
            "--write-timed",
            help="With --model-shape: write the config as timed by that decode (detection bandwidth, code age, code "
            "refresh) to this preset TOML, to run it in the loop (kvprism niah --configs FILE).",
        ),
    ] = None,
) -> None:
    """Feasibility verdict of a photonic weight-bank configuration (default: the seed-nominal preset)."""
    from rich.table import Table

    from kvprism.photonics.config import PhotonicConfig
    from kvprism.photonics.design import decode_timing
    from kvprism.photonics.feasibility import feasibility

    if list_presets:
        table = Table(title="photonic presets")
        for col in ("name", "description", "source"):
            table.add_column(col, overflow="fold")
        import tomllib

        for name in PhotonicConfig.presets():
            path = PhotonicConfig._preset_dir / f"{name}.toml"
            meta = tomllib.loads(path.read_text(encoding="utf-8")).get("meta", {})
            table.add_row(name, meta.get("description", ""), meta.get("source", ""))
        console.print(table)
        return
    if preset is not None and config is not None:
        raise kvprism.KvprismError("give either --preset or --config, not both")
    if config is not None:
        cfg, label = PhotonicConfig.from_toml(config), config
    else:
        label = preset or "seed-nominal"
        cfg = PhotonicConfig.preset(label)
    timing = None
    if write_timed is not None and model_shape is None:
        raise kvprism.KvprismError("--write-timed needs --model-shape (the decode that times the config)")
    if model_shape is None and tokens_per_s is not None:
        raise kvprism.KvprismError("--tokens-per-s needs --model-shape (the model whose decode times the detection)")
    if model_shape is not None:
        from kvprism.energy.config import model_shape as get_shape

        shape = get_shape(model_shape)
        rate = 20.0 if tokens_per_s is None else tokens_per_s
        timing = decode_timing(
            cfg, n_layers=shape.n_layers, kv_heads=shape.kv_heads, tokens_per_s=rate,
            queries_per_head=queries_per_head, batch=batch,
        )  # fmt: skip
        (err_console if as_json else console).print(
            f"detection timed by decode: {shape.name} ({shape.n_layers} layers × {shape.kv_heads} KV heads, batch "
            f"{batch}, {queries_per_head} quer{'y' if queries_per_head == 1 else 'ies'} per head) at {rate:g} tokens/s, "
            f"{cfg.selection_time_fraction:g} of the step for selection: {timing.time_per_selection_s * 1e6:.3g} µs "
            f"per selection, T_int {timing.integration_time_s * 1e6:.3g} µs → detection_bandwidth_hz "
            f"{timing.noise_bandwidth_hz:.3g} (configured {cfg.detection_bandwidth_hz:.3g})",
            highlight=False,
        )
        if write_timed is not None:
            from kvprism.photonics.design import timed_by_decode
            from kvprism.search.search import write_preset

            meta = {
                "description": f"{label} timed by decode for {shape.name} ({shape.n_layers} layers x "
                f"{shape.kv_heads} KV heads, batch {batch}) at {rate:g} tokens/s",
                "source": "kvprism hw --write-timed (kvprism.photonics.design.timed_by_decode)",
            }
            path = write_preset(timed_by_decode(cfg, timing), write_timed, meta)
            (err_console if as_json else console).print(f"wrote {path}", highlight=False)
    with console.status("evaluating feasibility ..."):
        rep = feasibility(cfg, seed=seed, timing=timing)
    if as_json:
        _print_json({"config": label, "feasible": not rep.violations, "violations": rep.violations, "report": rep})
        raise typer.Exit(1 if strict and rep.violations else 0)
    table = Table(title=f"feasibility: {label}")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    table.add_column("constraint")
    for name, value, limit in rep.rows():
        table.add_row(name, value, limit)
    console.print(table)
    if rep.violations:
        console.print(f"[bold red]{len(rep.violations)} violated constraint(s):[/]")
        for v in rep.violations:
            console.print(f"  [red]✗[/] {v}", highlight=False)
    else:
        console.print("[bold green]feasible: no constraint violated[/]")
    if strict and rep.violations:
        raise typer.Exit(1)


def _print_json(obj: Any) -> None:
    from kvprism.eval.store import jsonable

    sys.stdout.write(json.dumps(jsonable(obj), indent=1, allow_nan=False) + "\n")
    sys.stdout.flush()


@app.command()
def energy(
    preset: Annotated[str, typer.Option(help="Photonic preset name (kvprism hw --list).")] = "seed-nominal",
    config: Annotated[str | None, typer.Option("--config", help="Photonic config TOML (instead of --preset).")] = None,
    model_shape: Annotated[
        str, typer.Option("--model-shape", help="qwen2.5-7b, smollm2-135m or llama-3.1-8b.")
    ] = "qwen2.5-7b",
    contexts: Annotated[str, typer.Option(help="Context lengths, k = 1024, m = 1024².")] = "4k,32k,128k,1m",
    out: Annotated[str | None, typer.Option(help="Folder for the plots and energy_summary.json.")] = None,
    rows: Annotated[
        int | None, typer.Option(help="Rows N of the per-query breakdown (default: rows_per_bank).", min=1)
    ] = None,
    # workload / GPU options: None = not given, EnergyConfig's default applies (kvprism.energy.config)
    batch: Annotated[int | None, typer.Option(help="Sequences decoded together.")] = None,
    block_size: Annotated[int | None, typer.Option(help="Tokens per block [default: SelectionConfig's].")] = None,
    k: Annotated[
        int | None, typer.Option(help="Blocks selected per (layer, KV head) [default: SelectionConfig's].")
    ] = None,
    d_sig: Annotated[
        int | None, typer.Option(help="Signature dimension = comb lines [default: SelectionConfig's].")
    ] = None,
    gqa_reduce: Annotated[
        str | None, typer.Option(help="'sum' (one chip query per KV head) or 'max' (per q head).")
    ] = None,
    rerank: Annotated[
        int | None,
        typer.Option(help="Two-stage selection: chip proposes rerank×k blocks, the GPU rescores them (1 = one stage)."),
    ] = None,
    scan_dims: Annotated[str | None, typer.Option(help="GPU scan over 'd_sig' or 'd_head' dimensions.")] = None,
    hbm_pj_per_bit: Annotated[float | None, typer.Option(help="HBM energy [pJ/bit].")] = None,
    hbm_tb_per_s: Annotated[float | None, typer.Option(help="HBM bandwidth [TB/s].")] = None,
    target_enob: Annotated[float | None, typer.Option(help="Score ENOB the laser is sized for.")] = None,
    static_accounting: Annotated[
        str | None, typer.Option(help="Chip static power over 'full-step' (incl. weight read, default) or 'attention'.")
    ] = None,
    laser_mode: Annotated[
        str | None, typer.Option(help="'gated' (on only while evaluating, default) or 'cw' (always on).")
    ] = None,
    gpu_times: Annotated[
        str | None, typer.Option(help="Measured GPU times JSON (benchmarks/gpu_decode.py output or records).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON instead of tables.")] = False,
) -> None:
    """Energy and latency per decode step of the photonic chip vs GPU baselines, derived from components."""
    from kvprism.energy.config import EnergyConfig
    from kvprism.energy.config import model_shape as get_shape
    from kvprism.energy.report import build_summary, parse_contexts, print_summary, write_outputs
    from kvprism.photonics.config import PhotonicConfig

    if config is not None:
        cfg, label = PhotonicConfig.from_toml(config), config
    else:
        cfg, label = PhotonicConfig.preset(preset), preset
    given = {
        "batch": batch, "block_size": block_size, "k": k, "d_sig": d_sig, "gqa_reduce": gqa_reduce, "rerank": rerank,
        "scan_dims": scan_dims, "target_enob": target_enob, "static_accounting": static_accounting,
        "laser_mode": laser_mode,
        "hbm_energy_per_bit_j": None if hbm_pj_per_bit is None else hbm_pj_per_bit * 1e-12,
        "hbm_bandwidth_bytes_per_s": None if hbm_tb_per_s is None else hbm_tb_per_s * 1e12,
    }  # fmt: skip
    ecfg = EnergyConfig(**{name: value for name, value in given.items() if value is not None})
    shape = get_shape(model_shape)
    if out is not None:
        from kvprism.eval.store import check_out_dir

        if Path(out).exists() and not Path(out).is_dir():
            raise kvprism.KvprismError(f"--out {out} is a file; give a folder for the plots and energy_summary.json")
        check_out_dir(out)
    with err_console.status("computing ..."):
        summary = build_summary(
            cfg, ecfg, shape, parse_contexts(contexts), preset=label, rows=rows, gpu_times=gpu_times
        )
    if as_json:
        _print_json(summary)
    else:
        print_summary(summary, console)
    if out is not None:
        with console.status("writing plots ..."):
            paths = write_outputs(summary, out)
        for p in paths:
            (err_console if as_json else console).print(f"wrote {p}", highlight=False)


# ------------------------------------------------------------------------------------------------- evaluation
# grid defaults: finish on SmolLM2 on a CPU in about 15 minutes (see the evaluation notes)
_DEFAULT_CONTEXTS = "2048,4096"
_DEFAULT_DEPTHS = "0,0.5,1"
_DEFAULT_CONFIGS = "dense,exact,seed-nominal"
_DEFAULT_K = 6  # SelectionConfig.k, kept literal (importing kvprism.selection here would load torch); a test pins it
_TASK_HELP = (
    "Task(s), comma-separated: niah_single, niah_multikey, niah_multivalue, niah_multiquery, vt, cwe, fwe, RULER's "
    "names (niah_single_1 ... niah_multikey_3), or 'ruler' for every offline RULER task."
)
_CONFIG_HELP = (
    "Configurations, comma-separated: dense, exact, photonic preset names or preset files (each × every --k), and oracle "
    "(a reference: the top-k blocks by the dense attention mass of each query; reads everything to decide)."
)
_TaskOpt = Annotated[str, typer.Option(help=_TASK_HELP)]
_ContextsOpt = Annotated[str, typer.Option(help="Context lengths in tokens, comma-separated.")]
_DepthsOpt = Annotated[str, typer.Option(help="Needle depths in [0, 1], comma-separated.")]
_SeedsOpt = Annotated[str, typer.Option(help="Sample seeds, comma-separated.")]
_SamplesOpt = Annotated[
    int,
    typer.Option(
        help="Prompts per (task, context, depth, seed): distinct, deterministic seeds derived from each --seeds value "
        "(kvprism.eval.grid.sample_seeds); accuracies are reported with n and a 95 % Wilson interval.",
        min=1,
    ),
]
_ConfigsOpt = Annotated[str, typer.Option(help=_CONFIG_HELP)]
_KOpt = Annotated[str, typer.Option("--k", help="Selected blocks per step (k >= 1), comma-separated.")]
_BlockSizeOpt = Annotated[int | None, typer.Option(help="Block size in tokens (default: SelectionConfig's).", min=1)]
_HeadsOpt = Annotated[str | None, typer.Option(help="Head mask JSON from `kvprism heads`.")]
_HaystackOpt = Annotated[str | None, typer.Option(help="noise, text or needles (default: the task's).")]
_ValuesOpt = Annotated[str | None, typer.Option(help="numbers, uuids or words (default: the task's).")]
_OutOpt = Annotated[str, typer.Option(help="Results directory (resumed if it exists).")]
_SelectOpt = Annotated[
    str | None,
    typer.Option(
        help="SelectionConfig fields of the selection configs, e.g. 'd_sig=8,signature=minmax'; several sets "
        "separated by ';' each give their own configs (named with the fields differing from the first set)."
    ),
]


#: options that a grid file (--grid) gives instead
_GRID_GIVES = ("task", "contexts", "depths", "seeds", "configs", "k", "select", "haystack", "values", "max_new_tokens")
_GRID_GIVES += ("samples",)


def _given_on_command_line(name: str) -> bool:
    """Whether option ``--<name>`` was written on this invocation's command line."""
    opt = "--" + name.replace("_", "-")
    return any(a == opt or a.startswith(opt + "=") for a in _state["argv"])


def _eval_grid(
    *,
    mode: str,
    task: str,
    contexts: str,
    depths: str,
    seeds: str,
    configs: str,
    k: str,
    block_size: int | None,
    heads: str | None,
    haystack: str | None,
    values: str | None,
    model: str,
    device: str,
    out: str,
    max_new_tokens: int | None,
    threads: int | None,
    select: str | None = None,
    selection: str | None = None,
    photonic: str | None = None,
    dtype: str = "float32",
    grid: str | None = None,
    selection_fields: dict[str, Any] | None = None,
    executor: str = "local",
    address: str | None = None,
    workers: int | None = None,
    gpus_per_worker: float = 0.0,
    samples: int = 1,
) -> None:
    """Shared body of ``niah`` and ``recall``: validate everything, then load the model and run the grid."""
    from kvprism.eval import grid as G
    from kvprism.eval.store import check_out_dir
    from kvprism.eval.tasks import HAYSTACKS, TASKS, VALUE_KINDS, expand_tasks

    def unique(values: list[Any], option: str) -> list[Any]:
        out_values: list[Any] = []
        for v in values:
            if v in out_values:
                _note(f"{option}: duplicate value {v!r} removed")
            else:
                out_values.append(v)
        return out_values

    _check_dtype(dtype)
    ex = executor_of(executor, address, workers, gpus_per_worker)
    shared: dict[str, Any] = _selection_file(selection)
    if block_size is not None:
        shared["block_size"] = check_selection_fields({"block_size": block_size})["block_size"]
    shared.update(selection_fields or {})
    for name in ("k", "scorer", "photonic"):  # the configurations set these
        if name in shared:
            _note(f"--selection {selection}: {name} is set by --configs / --k; the file's {name} is not used")
            del shared[name]
    if heads is not None:
        from kvprism.eval.heads import load_mask

        shared["heads"] = load_mask(heads)
    preset_file = _photonic_file(photonic)
    if grid is not None:
        given = [f"--{n.replace('_', '-')}" for n in _GRID_GIVES if _given_on_command_line(n)]
        if given:
            raise _usage("--grid", f"the grid file gives the grid; remove {', '.join(given)}")
        g = G.Grid.from_toml(grid, selection=shared)
        if g.mode is not None and g.mode != mode:
            raise _usage("--grid", f"{grid} is a {g.mode} grid; run it with `kvprism {g.mode} --grid {grid}`")
        tasks, ctx_list, depth_list, seed_list = list(g.tasks), list(g.contexts), list(g.depths), list(g.seeds)
        haystack, values = g.haystack, g.values
        if mode == "niah":
            max_new_tokens = g.max_new_tokens
        cfgs = list(g.configs)
        if preset_file is not None:
            ks = sorted({c.k for c in cfgs if c.k is not None}) or [_DEFAULT_K]
            cfgs += [c for c in G.build_configs([preset_file], ks, shared) if c.name not in {x.name for x in cfgs}]
        if g.heads is not None:
            shared["heads"] = g.heads
    else:
        tasks = unique(expand_tasks(G.parse_list(task, str, "task")), "--task")
        for t in tasks:
            if t not in TASKS:
                raise kvprism.KvprismError(f"--task = {t!r} is unknown; allowed: {', '.join(TASKS)}")
        if haystack is not None and haystack not in HAYSTACKS:
            raise kvprism.KvprismError(f"--haystack = {haystack!r} is invalid; allowed: {', '.join(HAYSTACKS)}")
        if values is not None and values not in VALUE_KINDS:
            raise kvprism.KvprismError(f"--values = {values!r} is invalid; allowed: {', '.join(VALUE_KINDS)}")
        ctx_list = unique(G.parse_list(contexts, int, "contexts"), "--contexts")
        depth_list = unique(G.parse_list(depths, float, "depths"), "--depths")
        seed_list = G.sample_seeds(unique(G.parse_list(seeds, int, "seeds"), "--seeds"), samples)
        k_list = unique(G.parse_list(k, int, "k"), "--k")
        for c in ctx_list:
            if c < 1:
                raise kvprism.KvprismError(f"--contexts: {c} is invalid; allowed range: >= 1 token")
        for d in depth_list:
            if not 0.0 <= d <= 1.0:
                raise kvprism.KvprismError(f"--depths: {d} is invalid; allowed range: [0, 1]")
        for kk in k_list:
            if kk < 1:
                raise kvprism.KvprismError(f"--k: {kk} is invalid; allowed range: k >= 1")
        if not (ctx_list and depth_list and seed_list):
            raise kvprism.KvprismError("--contexts, --depths and --seeds each need at least one value")
        from kvprism.eval.sweep import expand_selection_sets

        names = unique(G.parse_list(configs, str, "configs"), "--configs")
        if preset_file is not None and preset_file not in names:
            names.append(preset_file)
        cfgs = expand_selection_sets(names, k_list, shared, select)
    G.validate_configs(cfgs)
    peek = _peek_model_config(model)
    if peek is not None:
        _check_window(peek, max(ctx_list), "--contexts")
        mask = shared.get("heads")
        if mask is not None:
            layers = peek.num_hidden_layers
            kv = getattr(peek, "num_key_value_heads", None) or peek.num_attention_heads
            if (len(mask), len(mask[0])) != (layers, kv):
                raise kvprism.KvprismError(
                    f"--heads {heads or grid}: the mask is {len(mask)} layers x {len(mask[0])} KV heads; model {model} "
                    f"has {layers} x {kv}"
                )
    check_out_dir(out)
    run_grid(
        mode=mode, model=model, device=device, dtype=dtype, threads=threads, out=out, tasks=tasks, contexts=ctx_list,
        depths=depth_list, seeds=seed_list, configs=cfgs, haystack=haystack, values=values,
        max_new_tokens=max_new_tokens, executor=ex,
    )  # fmt: skip


def run_grid(
    *,
    mode: str,
    model: str,
    device: str,
    dtype: str,
    threads: int | None,
    out: str,
    tasks: list[str],
    contexts: list[int],
    depths: list[float],
    seeds: list[int],
    configs: list[Any],
    haystack: str | None,
    values: str | None,
    max_new_tokens: int | None,
    executor: Any = None,
) -> None:
    """Load the model, run (or resume) the checked grid with a progress bar, write the report. ``executor``: where
    the prompts run (:mod:`kvprism.eval.executor`; default in this process); remote workers load the same model."""
    from kvprism.eval.report import write_report
    from kvprism.eval.runner import Runner
    from kvprism.eval.tasks import make_sample
    from kvprism.hf.models import load_model
    from kvprism.runtime import Interrupted

    _set_threads(threads)
    with console.status(f"loading {model} ..."):
        mdl, tok = load_model(model, dtype=dtype, device=device)
    _check_window(mdl.config, max(contexts), "--contexts")
    for t in tasks:  # too-short / too-long contexts fail here, before any prefill
        for c in (min(contexts), max(contexts)):
            make_sample(t, tok, c, depths[0], seeds[0], haystack=haystack, values=values)
    runner = Runner(
        mdl,
        tok,
        out_dir=out,
        tasks=tasks,
        contexts=contexts,
        depths=depths,
        seeds=seeds,
        configs=configs,
        mode=mode,
        haystack=haystack,
        values=values,
        max_new_tokens=max_new_tokens,
        model_name=model,
        command_line=_state["argv"],
        executor=executor,
        model_factory=model_factory(model, dtype=dtype, device=device),
    )
    n_cells = len(runner.points) * len(configs)
    console.print(
        f"[bold]{mode}[/]: {len(runner.points)} prompts × {len(configs)} configurations = {n_cells} cells -> {out}"
    )
    try:
        with grid_progress(mode) as on_progress:
            runner.on_progress = on_progress
            summary = runner.run()
    except (Interrupted, KeyboardInterrupt) as exc:
        done = runner.summary.cells_done if runner.summary else 0
        err_console.print(f"aborted after {done} of {n_cells} cells; rerun the same command to resume", highlight=False)
        exc.reported = True  # type: ignore[attr-defined]
        raise
    console.print(
        f"ran {summary.cells_run} cells ({summary.cells_done_before} already done); "
        f"prefill {summary.prefill_s:.1f} s over {summary.prefills} prompts, decode {summary.decode_s:.1f} s"
    )
    written = write_report(out, on_note=_note)
    from kvprism.eval.report import accuracy_lines

    for line in accuracy_lines(json.loads(Path(written["summary"]).read_text())):
        console.print(line, highlight=False)
    console.print(f"report: {written['report']}  summary: {written['summary']}")


_GridOpt = Annotated[
    str | None,
    typer.Option(
        "--grid",
        help="Grid TOML file: tasks × contexts × depths × seeds × configurations in one file (see kvprism.eval.grid); "
        "replaces --task, --contexts, --depths, --seeds, --configs, --k and --select.",
    ),
]


@app.command()
@with_selection_options(*_EVAL_FIELDS)
def niah(
    task: _TaskOpt = "niah_single",
    contexts: _ContextsOpt = _DEFAULT_CONTEXTS,
    depths: _DepthsOpt = _DEFAULT_DEPTHS,
    seeds: _SeedsOpt = "0",
    samples: _SamplesOpt = 1,
    configs: _ConfigsOpt = _DEFAULT_CONFIGS,
    k: _KOpt = str(_DEFAULT_K),
    block_size: _BlockSizeOpt = None,
    heads: _HeadsOpt = None,
    haystack: _HaystackOpt = None,
    values: _ValuesOpt = None,
    model: _ModelOpt = "smollm2",
    device: _DeviceOpt = "cpu",
    dtype: _DtypeOpt = "float32",
    out: _OutOpt = "runs/niah",
    max_new_tokens: Annotated[int | None, typer.Option(help="Answer tokens (default: task's).", min=1)] = None,
    select: _SelectOpt = None,
    selection: _SelectionFileOpt = None,
    photonic: _PhotonicFileOpt = None,
    grid: _GridOpt = None,
    threads: _ThreadsOpt = None,
    executor: ExecutorOpt = "local",
    address: AddressOpt = None,
    workers: WorkersOpt = None,
    gpus_per_worker: GpusPerWorkerOpt = 0.0,
    selection_fields: dict[str, Any] | None = None,
) -> None:
    """Needle-in-a-haystack grid: prefill once per prompt, decode every configuration, score answers (resumable;
    on Ray workers with --executor ray)."""
    _eval_grid(**locals(), mode="niah")


@app.command()
@with_selection_options(*_EVAL_FIELDS)
def recall(
    task: _TaskOpt = "niah_single",
    contexts: _ContextsOpt = _DEFAULT_CONTEXTS,
    depths: _DepthsOpt = _DEFAULT_DEPTHS,
    seeds: _SeedsOpt = "0",
    configs: _ConfigsOpt = _DEFAULT_CONFIGS,
    k: _KOpt = "4,8,16",
    block_size: _BlockSizeOpt = None,
    heads: _HeadsOpt = None,
    haystack: _HaystackOpt = None,
    values: _ValuesOpt = None,
    model: _ModelOpt = "smollm2",
    device: _DeviceOpt = "cpu",
    dtype: _DtypeOpt = "float32",
    out: _OutOpt = "runs/recall",
    select: _SelectOpt = None,
    selection: _SelectionFileOpt = None,
    photonic: _PhotonicFileOpt = None,
    grid: _GridOpt = None,
    threads: _ThreadsOpt = None,
    executor: ExecutorOpt = "local",
    address: AddressOpt = None,
    workers: WorkersOpt = None,
    gpus_per_worker: GpusPerWorkerOpt = 0.0,
    sweep: Annotated[
        bool, typer.Option("--sweep", help="Sweep methods × --d-sigs × --k instead of --configs (one prefill/prompt).")
    ] = False,
    methods: Annotated[
        str, typer.Option(help="--sweep: signature/projection or signature/projection/budget, comma-separated.")
    ] = ("mean/learned,minmax/learned,centroids/learned,reps/learned,mean/pca,mean/learned/top_p"),
    d_sigs: Annotated[str, typer.Option(help="--sweep: signature dimensions, comma-separated.")] = "4,8,16,32",
    selection_fields: dict[str, Any] | None = None,
) -> None:
    """Selection metrics only (block/signature recall@k, mass captured, needle hit, KL, read fraction): one decode
    step per configuration, no answer generation. With --sweep: every method × d_sig × k (kvprism.eval.sweep)."""
    if sweep:
        for name in ("heads", "photonic", "grid", "address", "workers"):
            if locals()[name] is not None:
                raise _usage(f"--{name.replace('_', '-')}", "does not apply to --sweep")
        if executor != "local" or gpus_per_worker:
            raise _usage("--executor", "--sweep runs in this process")
        _check_dtype(dtype)
        base = {**_selection_file(selection), **(selection_fields or {})}
        opts = {
            n: v
            for n, v in locals().items()
            if n
            not in (
                "sweep",
                "configs",
                "heads",
                "photonic",
                "grid",
                "selection",
                "selection_fields",
                "name",
                "base",
                "executor",
                "address",
                "workers",
                "gpus_per_worker",
            )
        }
        from kvprism.eval.sweep import run_cli

        run_cli(**opts, base=base, console=console)
        return
    del sweep, methods, d_sigs
    _eval_grid(**locals(), mode="recall", max_new_tokens=1)


@app.command()
@with_selection_options("block_size", "sink_blocks")
def heads(
    model: _ModelOpt = "smollm2",
    device: _DeviceOpt = "cpu",
    text_tokens: Annotated[
        int | None, typer.Option(help="Tokens of natural text to profile on [default: 2048].", min=2)
    ] = None,
    sink: Annotated[
        int | None, typer.Option(help="Sink tokens excluded from R_h [default: SelectionConfig's sink].", min=0)
    ] = None,
    window: Annotated[
        int | None,
        typer.Option(help="Recent-window tokens excluded from R_h [default: SelectionConfig's window].", min=1),
    ] = None,
    fraction: Annotated[
        float | None, typer.Option(help="Fraction of heads marked as retrieval heads, in (0, 1] [default: 0.5].")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the text offset.")] = 0,
    out: Annotated[str, typer.Option(help="Mask JSON path (the heatmap PNG goes beside it).")] = "runs/heads.json",
    selection: Annotated[
        str | None,
        typer.Option(
            "--selection",
            help="SelectionConfig TOML whose sink (sink_blocks · block_size) and window are the defaults of --sink "
            "and --window.",
        ),
    ] = None,
    dtype: _DtypeOpt = "float32",
    threads: _ThreadsOpt = None,
    selection_fields: dict[str, Any] | None = None,
) -> None:
    """Retrieval-head profiling: R_h per (layer, KV head) on natural text, heatmap PNG and a SelectionConfig mask."""
    from kvprism.eval import heads as H
    from kvprism.eval.store import check_out_dir
    from kvprism.hf.models import load_model
    from kvprism.selection import SelectionConfig

    _check_dtype(dtype)
    text_tokens = H.DEFAULT_TEXT_TOKENS if text_tokens is None else text_tokens
    sel = SelectionConfig(**{**_selection_file(selection), **(selection_fields or {})})
    d_sink, d_window = H.selection_sink_window(sel)
    sink = d_sink if sink is None else sink
    window = d_window if window is None else window
    fraction = H.DEFAULT_FRACTION if fraction is None else fraction
    if not 0.0 < fraction <= 1.0:
        raise kvprism.KvprismError(f"--fraction = {fraction} is invalid; allowed range: (0, 1]")
    if sink + window >= text_tokens:
        raise kvprism.KvprismError(f"--text-tokens = {text_tokens} must exceed --sink + --window = {sink + window}")
    if Path(out).is_dir():
        raise kvprism.KvprismError(
            f"--out {out} is a directory; give the mask file's path, e.g. {Path(out) / 'heads.json'}"
        )
    if Path(out).suffix != ".json":
        raise kvprism.KvprismError(f"--out {out} must end in .json (SelectionConfig.heads loads *.json masks)")
    check_out_dir(Path(out).parent)
    _check_window(_peek_model_config(model), text_tokens, "--text-tokens")
    _set_threads(threads)
    with console.status(f"loading {model} ..."):
        mdl, tok = load_model(model, dtype=dtype, device=device)
    _check_window(mdl.config, text_tokens, "--text-tokens")
    t0 = time.perf_counter()
    with console.status(f"profiling {text_tokens} tokens ..."):
        prof = H.run_profile(
            mdl,
            tok,
            text_tokens=text_tokens,
            sink_tokens=sink,
            window_tokens=window,
            fraction=fraction,
            seed=seed,
            model_name=model,
        )
    path = H.save_mask(prof, out)
    png = H.plot_heatmap(prof, Path(out).with_suffix(".png"), title=f"{model}: R_h (sink {sink}, window {window})")
    n_ret = int(prof.mask.sum())
    console.print(
        f"{prof.scores.shape[0]} layers × {prof.scores.shape[1]} KV heads profiled in {time.perf_counter() - t0:.1f} s; "
        f"R_h min {float(prof.scores.min()):.3f} / median {float(prof.scores.median()):.3f} / max "
        f"{float(prof.scores.max()):.3f}; {n_ret} retrieval heads (R_h >= {prof.threshold:.3f})"
    )
    console.print(f"mask: {path}  heatmap: {png}")


@app.command()
def report(
    results_dir: Annotated[str, typer.Argument(help="Directory holding results.jsonl.")],
    skip_corrupt: Annotated[
        bool, typer.Option("--skip-corrupt", help="Skip corrupt lines of results.jsonl (counted) instead of failing.")
    ] = False,
) -> None:
    """Write summary.json, heatmaps (context × depth per configuration), k-sweep plots and report.md."""
    from kvprism.eval.report import write_report

    written = write_report(results_dir, skip_corrupt=skip_corrupt, on_note=_note)
    for name, path in written.items():
        console.print(f"{name:>24}  {path}")


def _usage_line(exc: Any) -> str | None:
    """A click usage error as one line (None for the no-arguments help screen, shown as is)."""
    if type(exc).__name__ == "NoArgsIsHelpError" or not hasattr(exc, "format_message"):
        return None
    ctx = getattr(exc, "ctx", None)
    hint = f" (see: {ctx.command_path} --help)" if ctx is not None else ""
    return f"error: {exc.format_message()}{hint}"


from kvprism.search.cli import claims_app, design_app  # noqa: E402  (light: typer + rich only)

app.add_typer(design_app, name="design")
app.add_typer(claims_app, name="claims")


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point: one-line errors, tracebacks with ``--debug``; returns the exit status (0 ok,
    1 error, 2 usage error, 130 / 143 interrupted by SIGINT / SIGTERM, or what a command exits with)."""
    from kvprism.runtime import Interrupted, interrupts_as_exceptions

    args = sys.argv[1:] if argv is None else argv
    _state["argv"] = ["kvprism", *args]
    debug = "--debug" in args
    with interrupts_as_exceptions():
        try:
            rv = app(args=args, prog_name="kvprism", standalone_mode=False)
        except Interrupted as exc:
            if not getattr(exc, "reported", False):
                err_console.print(f"aborted ({exc})", highlight=False)
            return exc.exit_code
        except typer.Exit as exc:
            return exc.exit_code
        except typer.Abort:
            err_console.print("aborted")
            return 130
        except Exception as exc:
            # usage errors (typer vendors its own click; plain click's have the same interface)
            if hasattr(exc, "show") and isinstance(getattr(exc, "exit_code", None), int):
                line = _usage_line(exc)
                if line is None:
                    exc.show()
                else:
                    err_console.print(line, highlight=False, markup=False, soft_wrap=True)
                return exc.exit_code
            if debug:
                raise
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            prefix = "error" if isinstance(exc, kvprism.KvprismError) else f"error ({type(exc).__name__})"
            from rich.markup import escape

            err_console.print(
                f"{escape(prefix)}: {escape(msg)}  [dim](--debug for the traceback)[/]", highlight=False, soft_wrap=True
            )
            return 1
    return rv if isinstance(rv, int) and not isinstance(rv, bool) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
