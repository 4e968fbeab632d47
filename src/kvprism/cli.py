"""``kvprism`` command line.

Errors caused by input are printed as one line (``error: ...``) with exit code 1; ``--debug`` shows the traceback.
Heavy imports (torch, transformers) happen inside the commands so ``kvprism --help`` stays fast.
"""

from __future__ import annotations

import importlib
import sys
import time
from typing import Annotated

import typer
from rich.console import Console

import kvprism

app = typer.Typer(
    name="kvprism",
    help="Photonic KV-cache block selection for long-context LLM inference.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)
_state = {"debug": False}


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
def demo(
    model: Annotated[str, typer.Option(help="Model: 'smollm2', a local directory or a cached hub id.")] = "smollm2",
    context: Annotated[int, typer.Option(help="Prompt length in tokens.", min=64)] = 4096,
    depth: Annotated[float, typer.Option(help="Needle depth as a fraction of the haystack, in [0, 1].")] = 0.5,
    seed: Annotated[int, typer.Option(help="Seed of the needle key/value and haystack offset.")] = 0,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate.", min=1)] = 24,
    k: Annotated[int, typer.Option(help="Blocks selected per (layer, KV head) and decode step.", min=0)] = 8,
    block_size: Annotated[int, typer.Option(help="Tokens per block.", min=1)] = 64,
    preset: Annotated[str, typer.Option(help="Photonic hardware preset.")] = "seed-nominal",
    device: Annotated[str, typer.Option(help="torch device.")] = "cpu",
) -> None:
    """PRISM demonstration: one needle in a natural-text haystack, answered with dense attention and with
    photonic block selection (the photonic engine picks the blocks each decode step reads)."""
    import torch
    from transformers import DynamicCache

    from kvprism.eval.tasks import niah_single
    from kvprism.hf.cache import SparseCache, chunked_prefill
    from kvprism.hf.models import load_model
    from kvprism.selection import SelectionConfig

    if not 0.0 <= depth <= 1.0:
        raise kvprism.KvprismError(f"--depth = {depth} is invalid; allowed range: [0, 1]")
    t0 = time.perf_counter()
    with console.status(f"loading {model} ..."):
        mdl, tok = load_model(model, device=device)
    t_load = time.perf_counter() - t0
    window = getattr(mdl.config, "max_position_embeddings", None)
    if window is not None and context + max_new_tokens > window:
        raise kvprism.KvprismError(
            f"--context + --max-new-tokens = {context + max_new_tokens} exceeds the model's window of {window} tokens"
        )
    sample = niah_single(tok, context, depth, seed)
    sel = SelectionConfig(block_size=block_size, k=k, backend="exact", seed=seed)
    try:
        importlib.import_module("kvprism.photonics")
        photonic_ok, why = True, ""
    except ImportError as exc:
        photonic_ok, why = False, str(exc)

    console.print(f"[bold]model[/]          {model}  (loaded in {t_load:.1f} s)")
    console.print(f"[bold]context[/]        {sample.context_tokens} tokens, needle at depth {sample.depth:.2f}")
    console.print(f"[bold]question[/]       {sample.question}")
    console.print(f"[bold]expected[/]       {', '.join(sample.answers)}")

    SparseCache(mdl, sel)  # switches the model to the "kvprism" dispatcher (sdpa for dense caches)
    ids = torch.tensor([sample.input_ids], device=device)
    dense_cache = DynamicCache()
    t0 = time.perf_counter()
    with console.status(f"prefill of {ids.shape[1]} tokens (dense, once) ..."):
        logits = chunked_prefill(mdl, ids, dense_cache, chunk_tokens=2048)
    console.print(f"[bold]prefill[/]        {time.perf_counter() - t0:.1f} s (dense, shared by every run below)")

    runs: list[tuple[str, SelectionConfig | None]] = [("dense", None)]
    if photonic_ok:
        runs.append((f"photonic {preset}", sel.replace(backend="photonic", photonic=preset)))
    else:
        console.print(
            "[bold red]photonic engine unavailable[/]: kvprism.photonics cannot be imported "
            f"({why}); no photonic answer. Showing exact (fp32, ideal) block selection instead, labelled as such."
        )
        runs.append(("exact selection (no hardware model)", sel))
    for label, cfg in runs:
        if cfg is None:
            cache = DynamicCache()
            for i, layer in enumerate(dense_cache.layers):
                cache.update(layer.keys.clone(), layer.values.clone(), i)
        else:
            cache = SparseCache.from_prefilled(mdl, dense_cache, cfg)
        t0 = time.perf_counter()
        with console.status(f"decoding: {label} ..."):
            answer = _decode_greedy(mdl, tok, cache, logits, ids.shape[1], max_new_tokens, device)
        elapsed = time.perf_counter() - t0
        mark = "[green]correct[/]" if sample.score(answer) else "[red]wrong[/]"
        console.print(f"[bold]{label} answer[/]  {answer.strip()!r}  {mark}  ({elapsed:.1f} s)")
        if cfg is None:
            continue
        s = cache.stats.summary()
        restricted = "yes" if s["restricted"] else "[red]NO: k·B + sink + window covers the whole context[/]"
        console.print(
            f"  read fraction  mean {s['read_fraction_mean']:.3f}, max {s['read_fraction_max']:.3f} of the cached "
            f"tokens (restricted: {restricted})"
        )
        console.print(
            f"  programming    {s['programming_events']} signature rows written "
            f"({s['decode_steps']} decode steps, {s['selection_calls']} selection calls)"
        )
        if s["engine_counters"]:
            counters = ", ".join(f"{name} {val}" for name, val in sorted(s["engine_counters"].items()))
            console.print(f"  engine         {counters}")
        feas = cache.selectors[0].backend.feasibility()
        if feas is not None:
            verdict = (
                "[green]feasible[/]"
                if not feas.violations
                else "[red]infeasible[/]: " + "; ".join(map(str, feas.violations))
            )
            console.print(f"  feasibility    preset {preset}: {verdict}")


def _decode_greedy(model, tokenizer, cache, logits, start: int, max_new_tokens: int, device: str) -> str:
    """Greedy decoding from prefill ``logits [1, V]`` with ``cache`` holding ``start`` tokens."""
    import torch

    eos = tokenizer.eos_token_id
    out: list[int] = []
    nxt = int(logits[0].argmax())
    with torch.inference_mode():
        for step in range(max_new_tokens):
            out.append(nxt)
            if nxt == eos or step == max_new_tokens - 1:
                break
            res = model(
                input_ids=torch.tensor([[nxt]], device=device),
                attention_mask=torch.ones(1, start + step + 1, dtype=torch.long, device=device),
                position_ids=torch.tensor([[start + step]], device=device),
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            nxt = int(res.logits[0, -1].argmax())
    return tokenizer.decode(out, skip_special_tokens=True)


@app.command()
def hw(
    preset: Annotated[str | None, typer.Option(help="Photonic preset name (see --list).")] = None,
    config: Annotated[str | None, typer.Option("--config", help="Photonic config TOML file.")] = None,
    list_presets: Annotated[bool, typer.Option("--list", help="List the shipped presets and exit.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the feasibility Monte Carlo.")] = 0,
) -> None:
    """Feasibility verdict of a photonic weight-bank configuration (default: the seed-nominal preset)."""
    from rich.table import Table

    from kvprism.photonics.config import PhotonicConfig
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
    with console.status("evaluating feasibility ..."):
        rep = feasibility(cfg, seed=seed)
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
        int | None, typer.Option(help="Rows N of the per-query breakdown (default: rows_per_bank).")
    ] = None,
    batch: Annotated[int, typer.Option(help="Sequences decoded together.")] = 1,
    block_size: Annotated[int, typer.Option(help="Tokens per block.")] = 64,
    k: Annotated[int, typer.Option(help="Blocks selected per (layer, KV head).")] = 8,
    d_sig: Annotated[int, typer.Option(help="Signature dimension = comb lines.")] = 32,
    gqa_reduce: Annotated[str, typer.Option(help="'sum' (one chip query per KV head) or 'max' (per q head).")] = "sum",
    scan_dims: Annotated[str, typer.Option(help="GPU scan over 'd_sig' or 'd_head' dimensions.")] = "d_sig",
    hbm_pj_per_bit: Annotated[float, typer.Option(help="HBM energy [pJ/bit].")] = 3.9,
    hbm_tb_per_s: Annotated[float, typer.Option(help="HBM bandwidth [TB/s].")] = 3.35,
    target_enob: Annotated[float | None, typer.Option(help="Score ENOB the laser is sized for.")] = None,
    static_accounting: Annotated[
        str, typer.Option(help="Chip static power over 'full-step' (incl. weight read) or 'attention' only.")
    ] = "full-step",
    laser_mode: Annotated[str, typer.Option(help="'gated' (on only while evaluating) or 'cw' (always on).")] = "gated",
    gpu_times: Annotated[
        str | None, typer.Option(help="Measured GPU times JSON (benchmarks/gpu_decode.py output or records).")
    ] = None,
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
    ecfg = EnergyConfig(
        batch=batch, block_size=block_size, k=k, d_sig=d_sig, gqa_reduce=gqa_reduce, scan_dims=scan_dims,
        hbm_energy_per_bit_j=hbm_pj_per_bit * 1e-12, hbm_bandwidth_bytes_per_s=hbm_tb_per_s * 1e12,
        target_enob=-1.0 if target_enob is None else target_enob, static_accounting=static_accounting,
        laser_mode=laser_mode,
    )  # fmt: skip
    shape = get_shape(model_shape)
    with console.status("computing ..."):
        summary = build_summary(
            cfg, ecfg, shape, parse_contexts(contexts), preset=label, rows=rows, gpu_times=gpu_times
        )
    print_summary(summary, console)
    if out is not None:
        with console.status("writing plots ..."):
            paths = write_outputs(summary, out)
        for p in paths:
            console.print(f"wrote {p}", highlight=False)


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point: one-line errors, tracebacks with ``--debug``."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        app(args=args, prog_name="kvprism", standalone_mode=False)
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        err_console.print("aborted")
        return 130
    except Exception as exc:
        # usage errors (typer vendors its own click; plain click's have the same interface)
        if hasattr(exc, "show") and isinstance(getattr(exc, "exit_code", None), int):
            exc.show()
            return exc.exit_code
        if debug:
            raise
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        prefix = "error" if isinstance(exc, kvprism.KvprismError) else f"error ({type(exc).__name__})"
        err_console.print(f"{prefix}: {msg}  [dim](--debug for the traceback)[/]", highlight=False, soft_wrap=True)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
