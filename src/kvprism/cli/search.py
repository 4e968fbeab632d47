"""``kvprism design`` (capture, space, evaluate, search: the design-space search of :mod:`kvprism.search`) and
``kvprism claims`` (typer sub-apps).

Heavy imports happen inside the commands; every option is checked (:mod:`kvprism.cli.checks`) before a model loads
or a reference set is captured.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from kvprism.cli import checks
from kvprism.cli.common import (
    AddressOpt,
    ExecutorOpt,
    GpusPerWorkerOpt,
    WorkersOpt,
    executor_of,
    grid_progress,
    model_factory,
)
from kvprism.errors import KvprismError

design_app = typer.Typer(
    name="design",
    help="Design-space search for the photonic selector: reference set, search space, optuna search.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
claims_app = typer.Typer(
    name="claims",
    help="Reproduction report of the PRISM abstract's claims next to what kvprism measures.",
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()

_ModelOpt = Annotated[str, typer.Option(help="Model: 'smollm2', a local directory or a cached hub id.")]
_ContextOpt = Annotated[int, typer.Option(help="Prefill length of the reference set in tokens.", min=64)]


def _ints(text: str, name: str) -> tuple[int, ...]:
    return tuple(checks.listed(text, int, f"--{name}"))


def _capture_params(model: str, context: int, d_sig: str, block_size: int, projection: str, queries: int,
                    k_max: int, seed: int, window: int):  # fmt: skip
    from kvprism.search.capture import CaptureParams
    from kvprism.signatures import PROJECTIONS

    if projection not in PROJECTIONS:
        raise checks.BadOption(f"--projection = {projection!r} is invalid; allowed: {', '.join(PROJECTIONS)}")
    return CaptureParams(
        model=model, context=context, block_size=block_size, d_sigs=_ints(d_sig, "d-sig"), projection=projection,
        n_queries=queries, k_max=k_max, seed=seed, window=window,
    )  # fmt: skip


def _rows_table(title: str, rows) -> Table:
    t = Table(title=title)
    t.add_column("quantity")
    t.add_column("value", justify="right")
    for a, b in rows:
        t.add_row(a, b)
    return t


_DSigOpt = Annotated[str, typer.Option("--d-sig", help="Signature dimensions to capture (comma-separated).")]
_BlockOpt = Annotated[int, typer.Option(help="Tokens per block.", min=1)]
_ProjOpt = Annotated[str, typer.Option(help="Projection: none, random, pca, learned.")]
_QueriesOpt = Annotated[int, typer.Option(help="Reference queries (the last prompt positions).", min=1)]
_KMaxOpt = Annotated[int, typer.Option(help="Exact top-k stored per query (k of the search <= this).", min=1)]
_SeedOpt = Annotated[int, typer.Option(help="Seed (text window, random projections; search sampler).")]
_ReferenceOpt = Annotated[
    str | None,
    typer.Option(help="Reference set file (default: the cached one of --model/--context, built on first use)."),
]


def _reference_source(reference: str | None, model: str) -> None:
    """``--reference`` must be an existing file; without it ``--model`` is captured (checked here, before)."""
    if reference:
        checks.input_file(reference, "--reference", what="reference set file (.safetensors)")
    else:
        checks.model(model)


def _load_reference(reference: str | None, model: str, context: int):
    """The reference set of ``--reference`` or, by default, the cached one of ``--model`` / ``--context``."""
    from kvprism.search.capture import CaptureParams, ReferenceSet, reference_set

    if reference:
        return ReferenceSet.load(reference)
    with console.status(f"reference set of {model} at {context} tokens (captured on first use) ..."):
        return reference_set(CaptureParams(model=model, context=context))


@design_app.command()
def capture(
    model: _ModelOpt = "smollm2",
    context: _ContextOpt = 8192,
    out: Annotated[
        str | None, typer.Option(help="Output file (default: the kvprism cache, keyed by parameters).")
    ] = None,
    d_sig: _DSigOpt = "16,32,64",
    block_size: _BlockOpt = 64,
    projection: _ProjOpt = "learned",
    queries: _QueriesOpt = 32,
    k_max: _KMaxOpt = 32,
    seed: _SeedOpt = 0,
    window: Annotated[int, typer.Option(help="Most recent tokens always read (not candidates).", min=0)] = 64,
    device: Annotated[str, typer.Option(help="torch device.")] = "cpu",
) -> None:
    """Capture a reference set from one real prefill on natural text: per (layer, KV head) block signatures,
    decode-time queries and their exact top-k."""
    from kvprism.hf.models import load_model
    from kvprism.search.capture import default_path, describe, reference_set

    with checks.checking():
        checks.model(model)
        checks.device(device)
        params = _capture_params(model, context, d_sig, block_size, projection, queries, k_max, seed, window)
        path = Path(out) if out else default_path(params)
        checks.out_file(str(path), "--out")
    t0 = time.perf_counter()
    with console.status(f"loading {model} ..."):
        mdl, tok = load_model(model, device=device)
    ref = reference_set(params, model=mdl, tokenizer=tok, path=path, rebuild=True, show_progress=True)
    console.print(_rows_table("reference set", describe(ref)))
    console.print(f"written {path} in {time.perf_counter() - t0:.1f} s")


@design_app.command()
def space() -> None:
    """Print the search space: parameter, config field, range, source (rows whose field the chip model lacks are
    marked)."""
    from kvprism.search.space import SPACE, active_space

    keep, _ = active_space(SPACE)
    t = Table(title="design search space")
    for c in ("parameter", "field", "range", "source"):
        t.add_column(c)
    for d in SPACE:
        mark = "" if d in keep else " [dim](not in this chip model)[/]"
        t.add_row(d.name + mark, d.field, d.range_text(), d.source)
    console.print(t)


@design_app.command()
def evaluate(
    configs: Annotated[
        str, typer.Option(help="Photonic presets and/or preset TOML files, comma-separated.")
    ] = "tfln-timeshared",
    k: Annotated[str, typer.Option(help="Blocks selected (recall@k), comma-separated.")] = "8,16",
    rerank: Annotated[
        str,
        typer.Option(
            help="Two-stage selection factors, comma-separated: the chip proposes rerank×k candidates, exact "
            "rescoring of their signatures keeps k (1 = the chip's top-k)."
        ),
    ] = "1,2,4",
    reference: _ReferenceOpt = None,
    model: _ModelOpt = "smollm2",
    context: _ContextOpt = 8192,
    shape: Annotated[str, typer.Option(help="Model shape of the energy/latency columns.")] = "qwen2.5-7b",
    energy_context: Annotated[int, typer.Option(help="Context of the energy/latency columns.", min=1)] = 32768,
    tokens_per_s: Annotated[
        float,
        typer.Option(
            "--tokens-per-s",
            help="Decode rate of --shape that times each chip (as design search); 0 = untimed (as configured).",
            min=0.0,
        ),
    ] = 0.0,
    seed: Annotated[int, typer.Option(help="Seed of the engine's draws (the same for every row).")] = 0,
    d_sig: Annotated[
        int | None,
        typer.Option("--d-sig", help="Reference signatures to use [default: the width of each chip's comb lines]."),
    ] = None,
    out: Annotated[str | None, typer.Option(help="Write the rows as JSON to this file.")] = None,
) -> None:
    """Score design points on the reference set as a search trial does (signature and block recall@k with every
    impairment on, energy and added latency per decode step, violated constraints), for each k and rerank factor."""
    from kvprism.atomic import atomic_write
    from kvprism.energy.config import model_shape
    from kvprism.eval.grid import load_preset
    from kvprism.search.objectives import ObjectiveSettings
    from kvprism.search.objectives import evaluate as evaluate_point

    with checks.checking():
        names = checks.listed(configs, str, "--configs")
        cfgs = {n: load_preset(n) for n in names}
        ks, reranks = _ints(k, "k"), _ints(rerank, "rerank")
        for kk in ks:
            for r in reranks:
                ObjectiveSettings(k=kk, shape=shape, contexts=(energy_context,), tokens_per_s=tokens_per_s or None,
                                  rerank=r)  # fmt: skip
        model_shape(shape)
        if out:
            checks.out_file(out, "--out", suffix=".json")
        _reference_source(reference, model)
    ref = _load_reference(reference, model, context)
    lo, hi = ref.candidate_range
    t = Table(title=f"design points on the reference set ({ref.params.model}, {ref.params.context} tokens, blocks "
                    f"of {ref.params.block_size}, {hi - lo} candidate blocks per bank)")  # fmt: skip
    for col in ("config", "k", "rerank", "rescored", "signature recall", "block recall", "exact's", "energy / step",
                "selection", "added latency", "violated"):  # fmt: skip
        t.add_column(col, justify="left" if col == "config" else "right")
    rows = []
    for name, cfg in cfgs.items():
        for kk in ks:
            for r in reranks:
                st = ObjectiveSettings(k=kk, shape=shape, contexts=(energy_context,), engine_seed=seed,
                                       tokens_per_s=tokens_per_s or None, rerank=r)  # fmt: skip
                with console.status(f"{name}, k {kk}, rerank {r} ..."):
                    res = evaluate_point(cfg, ref, d_sig, settings=st)
                frac = min(r * kk, hi - lo) / (hi - lo) if r > 1 else 0.0
                exact_blk = _exact_block_recall(ref, res.d_sig, kk)
                rows.append({"config": name, "k": kk, "rerank": r, "rescored_fraction": frac,
                             "exact_block_recall": exact_blk, **res.to_json()})  # fmt: skip
                t.add_row(
                    name, str(kk), str(r), f"{frac:.3f}", f"{res.recall:.3f}", f"{res.block_recall:.3f}",
                    f"{exact_blk:.3f}",
                    f"{res.energy_j * 1e3:.4g} mJ", f"{res.selection_energy_j * 1e3:.4g} mJ",
                    f"{res.added_latency_s * 1e6:.4g} µs", str(len(res.violations)),
                )  # fmt: skip
    console.print(t)
    console.print(f"[dim]rescored: candidates rescored per bank as a share of the {hi - lo} candidate blocks; exact's: "
                  f"block recall of exact selection; energy and latency for {shape} at {energy_context} tokens "
                  "(candidate signature reads charged)[/]")  # fmt: skip
    if out:
        import json

        atomic_write(Path(out), json.dumps({"reference": ref.params.to_json(), "rows": rows}, indent=2,
                                           default=float))  # fmt: skip
        console.print(f"wrote {out}")


def _exact_block_recall(ref, d_sig: int, k: int) -> float:
    """Block recall@k (against the true attention top-k) of exact selection at ``d_sig`` on the reference set."""
    from kvprism.search.objectives import recall_at_k

    return recall_at_k(ref.topk[d_sig].flatten(0, 1)[..., :k], ref.attn_topk.flatten(0, 1)[..., :k])


def _context(text: str, option: str) -> int:
    """One context length ('32768', '32k', '128k')."""
    from kvprism.energy.report import parse_contexts

    try:
        vals = parse_contexts(text)
    except KvprismError as exc:
        raise checks.BadOption(str(exc).replace("--contexts", option)) from None
    if len(vals) != 1:
        raise checks.BadOption(f"{option} = {text!r} is invalid; give one context length")
    return vals[0]


@design_app.command()
def search(
    trials: Annotated[
        int, typer.Option(help="Finished trials the study should hold (a resumed study continues).", min=1)
    ] = 200,
    seed: _SeedOpt = 0,
    storage: Annotated[str | None, typer.Option(help="optuna storage URL [default: sqlite:///<out>/study.db].")] = None,
    study: Annotated[str, typer.Option(help="Study name inside the storage.")] = "kvprism-design",
    out: Annotated[
        str, typer.Option(help="Output directory (pareto.json, summary.md, pareto.png, presets).")
    ] = "runs/design",
    reference: _ReferenceOpt = None,
    model: _ModelOpt = "smollm2",
    reference_context: Annotated[
        int, typer.Option(help="Prefill length of the reference set in tokens (recall is measured on it).", min=64)
    ] = 8192,
    base: Annotated[
        str, typer.Option(help="Base preset (name or TOML file): values not searched.")
    ] = "tfln-literature",
    k: Annotated[int, typer.Option(help="Blocks selected (recall@k).", min=1)] = 16,
    shape: Annotated[
        str, typer.Option("--model-shape", "--shape", help="Model shape decoded (timing, energy, latency).")
    ] = "qwen2.5-7b",
    context: Annotated[
        str,
        typer.Option(
            help="Context of the decode step every point is timed, checked and scored at (e.g. 4k, 32k, 128k)."
        ),
    ] = "32k",
    contexts: Annotated[
        str, typer.Option(help="Further contexts whose energy per step is recorded beside (comma-separated).")
    ] = "",
    latency_budget_s: Annotated[
        float | None,
        typer.Option(
            help="Untimed searches only (--tokens-per-s 0): added latency allowed per step [s] (default: 10 % of "
            "the modelled dense step). Timed, the budget is the selection share of the step."
        ),
    ] = None,
    max_banks: Annotated[
        int, typer.Option(help="Evaluate only the first this many (layer, KV head) banks (0 = all).", min=0)
    ] = 0,
    tokens_per_s: Annotated[
        float,
        typer.Option(
            "--tokens-per-s",
            help="Decode rate of --model-shape that times every point (detection bandwidth, rewrite calibration, "
            "code age; the selection share selection_time_fraction / R is the latency budget), as kvprism hw "
            "--model-shape does; 0 = untimed (the searched detection bandwidth; no feasibility verdict).",
            min=0.0,
        ),
    ] = 20.0,
    rerank: Annotated[
        str,
        typer.Option(
            help="Two-stage selection factors searched (comma-separated): the chip proposes rerank×k candidates, "
            "exact rescoring of their signatures (read from HBM, charged) keeps k; 1 = the chip's top-k. One value "
            "fixes it.",
        ),
    ] = "1,2,4",
    population: Annotated[int, typer.Option(help="NSGA-II population size.", min=2)] = 24,
    presets: Annotated[int, typer.Option(help="TOML presets written (Pareto points, best recall first).", min=0)] = 3,
    fix: Annotated[str, typer.Option(help="Search parameters kept at the base value (comma-separated).")] = "",
    executor: ExecutorOpt = "local",
    address: AddressOpt = None,
    workers: WorkersOpt = None,
    gpus_per_worker: GpusPerWorkerOpt = 0.0,
    batch: Annotated[
        int | None,
        typer.Option(
            help="Trials asked before their results are told (default: 1 locally, --workers on Ray); the search "
            "is reproducible for a --seed and a --batch.",
            min=1,
        ),
    ] = None,
) -> None:
    """Global multi-objective design search (optuna NSGA-II) over the optics, the architecture and two-stage
    selection, every point timed at (--model-shape, --tokens-per-s, --context): recall@k ↑, energy per decode step ↓,
    chip area ↓, added latency ↓, every feasibility constraint a constraint. One-stage and two-stage points are
    reported apart with their criteria; without a feasible point, the closest point of each architecture and its
    violated constraints (value, limit, margin). Resumable (SQLite); trials in parallel with --executor ray."""
    from kvprism.energy.config import model_shape
    from kvprism.search.objectives import ObjectiveSettings
    from kvprism.search.search import base_config, pareto_table, run_search, write_outputs
    from kvprism.search.space import SPACE

    with checks.checking():
        ex = executor_of(executor, address, workers, gpus_per_worker)
        ctx = _context(context, "--context")
        extra = [_context(c, "--contexts") for c in checks.listed(contexts, str, "--contexts")] if contexts else []
        reranks = _ints(rerank, "rerank")
        if min(reranks) < 1:
            raise checks.BadOption(f"--rerank = {rerank!r} is invalid; allowed: factors in [1, inf)")
        settings = ObjectiveSettings(
            k=k, shape=shape, contexts=(ctx, *[c for c in extra if c != ctx]), latency_budget_s=latency_budget_s,
            engine_seed=seed, max_banks=max_banks, tokens_per_s=tokens_per_s or None, rerank=min(reranks),
        )  # fmt: skip
        model_shape(shape)
        if base.endswith(".toml"):
            checks.input_file(base, "--base", suffix=".toml", what="PhotonicConfig TOML file")
        else:
            checks.preset(base, "--base")
        base_config(base)
        fixed = checks.fix_names(fix, [d.name for d in SPACE])
        out_dir = checks.out_dir(out)
        _reference_source(reference, model)
    url = storage or f"sqlite:///{(out_dir / 'study.db').resolve()}"
    ref = _load_reference(reference, model, reference_context)
    t0 = time.perf_counter()
    res = run_search(ref, trials, seed=seed, storage=url, study_name=study, base=base, settings=settings,
                     fixed=fixed, population_size=population, show_progress=True, executor=ex,
                     batch=batch, reranks=reranks)  # fmt: skip
    written = write_outputs(res, out_dir, presets)
    console.print(pareto_table(res))
    if res.left_out:
        console.print(
            f"[dim]not searched (fixed, or absent from this chip model): {', '.join(d.name for d in res.left_out)}[/]"
        )
    errors = [t for t in res.study.trials if t.user_attrs.get("error")]
    if errors:
        console.print(f"[yellow]{len(errors)} trials failed in the chip model (not scored); first: "
                      f"trial {errors[0].number}: {errors[0].user_attrs['error']}[/]")  # fmt: skip
    if not res.pareto:
        console.print("[bold]no feasible design point[/] in this search: the closest point of each architecture and "
                      "the constraints it violates are listed above and in summary.md")  # fmt: skip
    console.print(f"{len(res.study.trials)} trials in {url} ({time.perf_counter() - t0:.1f} s this run)")
    for name, path in written.items():
        console.print(f"{name:>10}  {path}")


@claims_app.callback(invoke_without_command=True)
def claims(
    model: _ModelOpt = "smollm2",
    out: Annotated[str, typer.Option(help="Output directory (claims.md, claims.json, plots).")] = "runs/claims",
    device: Annotated[str, typer.Option(help="torch device.")] = "cpu",
    contexts: Annotated[
        str | None, typer.Option(help="NIAH contexts (default: 4K up to the model's window, capped at 64K).")
    ] = None,
    depths: Annotated[str, typer.Option(help="NIAH depths.")] = "0.5",
    k: Annotated[int, typer.Option(help="Blocks selected (the paper: 32).", min=1)] = 32,
    seed: _SeedOpt = 0,
    samples: Annotated[
        int,
        typer.Option(
            help="NIAH prompts per (context, depth), each with its own needle (distinct seeds derived from --seed); "
            "accuracies carry n and a 95 % Wilson interval.",
            min=1,
        ),
    ] = 1,
    executor: ExecutorOpt = "local",
    address: AddressOpt = None,
    workers: WorkersOpt = None,
    gpus_per_worker: GpusPerWorkerOpt = 0.0,
) -> None:
    """Each quantitative claim of the PRISM abstract next to what kvprism measures: (a) the seed's own impairment
    model (seed-as-published), (b) seed-nominal with the physical model, (c) a feasible preset where one ships.
    The NIAH grid runs on Ray workers with --executor ray."""
    from kvprism.hf.models import load_model
    from kvprism.search.claims import ClaimsSettings, run_claims

    with checks.checking():
        ex = executor_of(executor, address, workers, gpus_per_worker)
        checks.model(model)
        checks.device(device)
        ctx = _ints(contexts, "contexts") if contexts is not None else None
        dep = tuple(checks.listed(depths, float, "--depths"))
        for d in dep:
            if not 0.0 <= d <= 1.0:
                raise checks.BadOption(f"--depths: {d} is invalid; allowed range: [0, 1]")
        settings = ClaimsSettings(model_name=model, contexts=ctx, depths=dep, k=k, seed=seed, samples=samples)
        checks.out_dir(out)
    with console.status(f"loading {model} ..."):
        mdl, tok = load_model(model, device=device)
    factory = model_factory(model, device=device)

    with grid_progress("claims: niah") as on_progress:
        written = run_claims(mdl, tok, out, settings, show_progress=True, on_progress=on_progress, console=console,
                             executor=ex, model_factory=factory)  # fmt: skip
    for name, path in written.items():
        console.print(f"{name:>10}  {path}")
