"""``kvprism niah``, ``recall`` (and ``recall --sweep``), ``heads`` and ``report``: the evaluation commands.

Each checks every option (:mod:`kvprism.cli.checks`, the grid's own checks of :mod:`kvprism.eval.grid`) before the
model loads, then runs through :mod:`kvprism.eval`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from kvprism.cli import checks
from kvprism.cli.common import (
    SELECTION_OPTIONS,
    AddressOpt,
    DeviceOpt,
    DtypeOpt,
    ExecutorOpt,
    GpusPerWorkerOpt,
    ModelOpt,
    PhotonicFileOpt,
    SelectionFileOpt,
    ThreadsOpt,
    WorkersOpt,
    console,
    err_console,
    executor_of,
    given_on_command_line,
    grid_progress,
    model_factory,
    note,
    set_threads,
    state,
    with_selection_options,
)

__all__ = ["DEFAULT_K", "heads", "niah", "recall", "report", "run_grid"]

# grid defaults: finish on SmolLM2 on a CPU in about 15 minutes (see the evaluation notes)
_DEFAULT_CONTEXTS = "2048,4096"
_DEFAULT_DEPTHS = "0,0.5,1"
_DEFAULT_CONFIGS = "dense,exact,seed-nominal"
DEFAULT_K = 6  # SelectionConfig.k, kept literal (importing kvprism.selection here would load torch); a test pins it
#: fields of the evaluation commands (their own --k lists and --block-size; scorer / photonic: --configs; heads: --heads)
_EVAL_FIELDS = tuple(n for n in SELECTION_OPTIONS if n not in ("k", "block_size"))
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
_SkipCorruptOpt = Annotated[
    bool,
    typer.Option(
        "--skip-corrupt",
        help="Resume past corrupt lines of results.jsonl (moved to results.jsonl.corrupt, counted) instead of failing.",
    ),
]
_SelectOpt = Annotated[
    str | None,
    typer.Option(
        help="SelectionConfig fields of the selection configs, e.g. 'd_sig=8,signature=minmax'; several sets "
        "separated by ';' each give their own configs (named with the fields differing from the first set)."
    ),
]
_GridOpt = Annotated[
    str | None,
    typer.Option(
        "--grid",
        help="Grid TOML file: tasks × contexts × depths × seeds × configurations in one file (see kvprism.eval.grid); "
        "replaces --task, --contexts, --depths, --seeds, --configs, --k and --select.",
    ),
]
#: options that a grid file (--grid) gives instead
_GRID_GIVES = ("task", "contexts", "depths", "seeds", "configs", "k", "select", "haystack", "values", "max_new_tokens")
_GRID_GIVES += ("samples",)


def _selection_settings(fields: dict[str, Any], configs: list[Any], where: str) -> None:
    """Refuse selection settings that select nothing: fields with only dense configurations, ``top_p`` without
    the top_p budget (an unused value would enter the cell key)."""
    selecting = [c for c in configs if c.method != "dense"]
    if fields and not selecting:
        raise checks.BadOption(
            f"{where} set(s) {', '.join(sorted(fields))} but every configuration is dense (nothing selects); "
            "add a selection configuration to --configs or drop them"
        )
    for c in selecting:
        sel = c.selection_config()
        if "top_p" in fields and sel.budget != "top_p":
            raise checks.BadOption("--top-p needs --budget top_p (with budget topk it would select nothing)")


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
    skip_corrupt: bool = False,
) -> None:
    """Shared body of ``niah`` and ``recall``: check everything (the grid's own checks, :mod:`kvprism.eval.grid`),
    then load the model and run the grid."""
    from kvprism.eval import grid as G
    from kvprism.eval.sweep import expand_selection_sets, parse_overrides

    with checks.checking():
        checks.dtype(dtype)
        checks.model(model)
        checks.device(device)
        ex = executor_of(executor, address, workers, gpus_per_worker)
        given = dict(selection_fields or {})
        shared: dict[str, Any] = checks.selection_file(selection)
        if block_size is not None:
            given["block_size"] = block_size
        shared.update(checks.selection_fields(given))
        for name in ("k", "scorer", "photonic"):  # the configurations set these
            if name in shared:
                note(f"--selection {selection}: {name} is set by --configs / --k; the file's {name} is not used")
                del shared[name]
        if heads is not None:
            from kvprism.eval.heads import load_mask

            checks.input_file(heads, "--heads", suffix=".json", what="head mask JSON file")
            shared["heads"] = load_mask(heads)
        preset_file = checks.photonic_file(photonic)
        if grid is not None:
            clash = [f"--{n.replace('_', '-')}" for n in _GRID_GIVES if given_on_command_line(n)]
            if clash:
                raise checks.BadOption(f"--grid: the grid file gives the grid; remove {', '.join(clash)}")
            checks.input_file(grid, "--grid", suffix=".toml", what="grid TOML file")
            g = G.Grid.from_toml(grid, selection=shared)
            if g.mode is not None and g.mode != mode:
                raise checks.BadOption(
                    f"--grid: {grid} is a {g.mode} grid; run it with `kvprism {g.mode} --grid {grid}`"
                )
            tasks, ctx_list, depth_list, seed_list = list(g.tasks), list(g.contexts), list(g.depths), list(g.seeds)
            haystack, values = g.haystack, g.values
            if mode == "niah":
                max_new_tokens = g.max_new_tokens
            cfgs = list(g.configs)
            if preset_file is not None:
                ks = sorted({c.k for c in cfgs if c.k is not None}) or [DEFAULT_K]
                cfgs += [c for c in G.build_configs([preset_file], ks, shared) if c.name not in {x.name for x in cfgs}]
            if g.heads is not None:
                shared["heads"] = g.heads
        else:
            tasks, ctx_list, depth_list, seed_list = G.check_axes(
                checks.listed(task, str, "--task"),
                checks.listed(contexts, int, "--contexts"),
                checks.listed(depths, float, "--depths"),
                checks.listed(seeds, int, "--seeds"),
                samples=samples, haystack=haystack, values=values, max_new_tokens=max_new_tokens,
                name=lambda key: "--" + {"tasks": "task"}.get(key, key).replace("_", "-"),
            )  # fmt: skip
            k_list = checks.listed(k, int, "--k")
            for kk in k_list:
                if kk < 1:
                    raise checks.BadOption(f"--k: {kk} is invalid; allowed range: k >= 1")
            names = checks.listed(configs, str, "--configs")
            if preset_file is not None and preset_file not in names:
                names.append(preset_file)
            cfgs = expand_selection_sets(names, k_list, shared, select)
            if select:
                given.update(parse_overrides(select.split(";")[0]))
        G.validate_configs(cfgs)
        _selection_settings({n: v for n, v in given.items() if n != "block_size" or block_size is not None}, cfgs,
                            "--select / selection options")  # fmt: skip
        peek = checks.model_config(model)
        if peek is not None:
            checks.window(peek, max(ctx_list), "--contexts")
            mask = shared.get("heads")
            if mask is not None:
                layers = peek.num_hidden_layers
                kv = getattr(peek, "num_key_value_heads", None) or peek.num_attention_heads
                if (len(mask), len(mask[0])) != (layers, kv):
                    raise checks.BadOption(
                        f"--heads {heads or grid}: the mask is {len(mask)} layers x {len(mask[0])} KV heads; model "
                        f"{model} has {layers} x {kv}"
                    )
        checks.out_dir(out)
        _store_readable(out, skip_corrupt)
    run_grid(
        mode=mode, model=model, device=device, dtype=dtype, threads=threads, out=out, tasks=tasks, contexts=ctx_list,
        depths=depth_list, seeds=seed_list, configs=cfgs, haystack=haystack, values=values,
        max_new_tokens=max_new_tokens, executor=ex, skip_corrupt=skip_corrupt,
    )  # fmt: skip


def _store_readable(out: str, skip_corrupt: bool) -> None:
    """A results directory to resume must read (each bad line named with file, line and field) unless
    ``--skip-corrupt`` moves the bad lines aside."""
    from kvprism.eval.store import check_store

    check_store(out, skip_corrupt=skip_corrupt)


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
    skip_corrupt: bool = False,
) -> None:
    """Load the model, run (or resume) the checked grid with a progress bar, write the report. ``executor``: where
    the prompts run (:mod:`kvprism.eval.executor`; default in this process); remote workers load the same model."""
    from kvprism.eval.report import accuracy_lines, write_report
    from kvprism.eval.runner import Runner
    from kvprism.eval.tasks import make_sample
    from kvprism.hf.models import load_model
    from kvprism.runtime import Interrupted

    set_threads(threads)
    with console.status(f"loading {model} ..."):
        mdl, tok = load_model(model, dtype=dtype, device=device)
    with checks.checking():
        checks.window(mdl.config, max(contexts), "--contexts")
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
        command_line=state["argv"],
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
    written = write_report(out, skip_corrupt=skip_corrupt, on_note=note)
    for line in accuracy_lines(json.loads(Path(written["summary"]).read_text())):
        console.print(line, highlight=False)
    console.print(f"report: {written['report']}  summary: {written['summary']}")


@with_selection_options(*_EVAL_FIELDS)
def niah(
    task: _TaskOpt = "niah_single",
    contexts: _ContextsOpt = _DEFAULT_CONTEXTS,
    depths: _DepthsOpt = _DEFAULT_DEPTHS,
    seeds: _SeedsOpt = "0",
    samples: _SamplesOpt = 1,
    configs: _ConfigsOpt = _DEFAULT_CONFIGS,
    k: _KOpt = str(DEFAULT_K),
    block_size: _BlockSizeOpt = None,
    heads: _HeadsOpt = None,
    haystack: _HaystackOpt = None,
    values: _ValuesOpt = None,
    model: ModelOpt = "smollm2",
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = "float32",
    out: _OutOpt = "runs/niah",
    max_new_tokens: Annotated[int | None, typer.Option(help="Answer tokens (default: task's).", min=1)] = None,
    select: _SelectOpt = None,
    selection: SelectionFileOpt = None,
    photonic: PhotonicFileOpt = None,
    grid: _GridOpt = None,
    threads: ThreadsOpt = None,
    executor: ExecutorOpt = "local",
    address: AddressOpt = None,
    workers: WorkersOpt = None,
    gpus_per_worker: GpusPerWorkerOpt = 0.0,
    skip_corrupt: _SkipCorruptOpt = False,
    selection_fields: dict[str, Any] | None = None,
) -> None:
    """Needle-in-a-haystack grid: prefill once per prompt, decode every configuration, score answers (resumable;
    on Ray workers with --executor ray)."""
    _eval_grid(**locals(), mode="niah")


@with_selection_options(*(f for f in _EVAL_FIELDS if f != "carry"))  # one decode step: nothing to carry
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
    model: ModelOpt = "smollm2",
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = "float32",
    out: _OutOpt = "runs/recall",
    select: _SelectOpt = None,
    selection: SelectionFileOpt = None,
    photonic: PhotonicFileOpt = None,
    grid: _GridOpt = None,
    threads: ThreadsOpt = None,
    executor: ExecutorOpt = "local",
    address: AddressOpt = None,
    workers: WorkersOpt = None,
    gpus_per_worker: GpusPerWorkerOpt = 0.0,
    skip_corrupt: _SkipCorruptOpt = False,
    sweep: Annotated[
        bool, typer.Option("--sweep", help="Sweep methods × --d-sigs × --k instead of --configs (one prefill/prompt).")
    ] = False,
    methods: Annotated[
        str | None,
        typer.Option(
            help="--sweep: signature/projection or signature/projection/budget, comma-separated "
            "[default: mean/learned,minmax/learned,centroids/learned,reps/learned,mean/pca,mean/learned/top_p]."
        ),
    ] = None,
    d_sigs: Annotated[
        str | None, typer.Option(help="--sweep: signature dimensions, comma-separated [default: 4,8,16,32].")
    ] = None,
    selection_fields: dict[str, Any] | None = None,
) -> None:
    """Selection metrics only (block/signature recall@k, mass captured, needle hit, KL, read fraction): one decode
    step per configuration, no answer generation. With --sweep: every method × d_sig × k (kvprism.eval.sweep)."""
    if sweep:
        with checks.checking():
            checks.not_with(
                {"--configs": given_on_command_line("configs"), "--heads": heads is not None,
                 "--photonic": photonic is not None, "--grid": grid is not None, "--address": address is not None,
                 "--workers": workers is not None, "--executor": executor != "local" or bool(gpus_per_worker),
                 "--skip-corrupt": skip_corrupt},
                "--sweep", "it sweeps methods × --d-sigs × --k in this process into a fresh table",
            )  # fmt: skip
        _sweep(
            task=task, contexts=contexts, depths=depths, seeds=seeds, k=k, block_size=block_size, haystack=haystack,
            values=values, model=model, device=device, dtype=dtype, out=out, select=select, selection=selection,
            threads=threads, methods=methods or _SWEEP_METHODS, d_sigs=d_sigs or "4,8,16,32",
            selection_fields=selection_fields,
        )  # fmt: skip
        return
    with checks.checking():
        checks.not_with({"--methods": methods is not None, "--d-sigs": d_sigs is not None}, "recall without --sweep",
                        "they choose what --sweep sweeps")  # fmt: skip
    del sweep, methods, d_sigs
    _eval_grid(**locals(), mode="recall", max_new_tokens=1)


_SWEEP_METHODS = "mean/learned,minmax/learned,centroids/learned,reps/learned,mean/pca,mean/learned/top_p"


def _sweep(
    *,
    task: str,
    contexts: str,
    depths: str,
    seeds: str,
    k: str,
    block_size: int | None,
    haystack: str | None,
    values: str | None,
    model: str,
    device: str,
    dtype: str,
    out: str,
    select: str | None,
    selection: str | None,
    threads: int | None,
    methods: str,
    d_sigs: str,
    selection_fields: dict[str, Any] | None,
) -> None:
    """``kvprism recall --sweep``: check every option before loading the model, run, print the table."""
    from kvprism.eval.grid import check_axes
    from kvprism.eval.sweep import parse_methods, parse_overrides, run_sweep
    from kvprism.eval.tasks import make_sample
    from kvprism.hf.models import load_model

    with checks.checking():
        checks.dtype(dtype)
        checks.model(model)
        checks.device(device)
        tasks, ctx, dep, sds = check_axes(
            checks.listed(task, str, "--task"), checks.listed(contexts, int, "--contexts"),
            checks.listed(depths, float, "--depths"), checks.listed(seeds, int, "--seeds"),
            haystack=haystack, values=values, name=lambda key: "--" + {"tasks": "task"}.get(key, key),
        )  # fmt: skip
        ks = checks.listed(k, int, "--k")
        dims = checks.listed(d_sigs, int, "--d-sigs")
        for option, vals in (("--k", ks), ("--d-sigs", dims)):
            for v in vals:
                if v < 1:
                    raise checks.BadOption(f"{option}: {v} is invalid; allowed range: >= 1")
        meths = parse_methods(methods)
        base = {**checks.selection_file(selection), **checks.selection_fields(dict(selection_fields or {}))}
        base.update(parse_overrides(select))
        if block_size is not None:
            base["block_size"] = block_size
        checks.window(checks.model_config(model), max(ctx), "--contexts")
        checks.out_dir(out)
    set_threads(threads)
    with console.status(f"loading {model} ..."):
        mdl, tok = load_model(model, dtype=dtype, device=device)
    with checks.checking():
        for t in tasks:
            for c in (min(ctx), max(ctx)):
                make_sample(t, tok, c, dep[0], sds[0], haystack=haystack, values=values)
    n = len(tasks) * len(ctx) * len(dep) * len(sds)
    console.print(f"[bold]sweep[/]: {n} prompts × {len(meths)} methods × {len(dims)} d_sig × {len(ks)} k -> {out}")
    with grid_progress("sweep (prompts)") as on_progress:
        files = run_sweep(
            mdl, tok, out_dir=out, tasks=tasks, contexts=ctx, depths=dep, seeds=sds, methods=meths, d_sigs=dims,
            ks=ks, base=base, haystack=haystack, values=values, on_progress=on_progress,
        )  # fmt: skip
    console.print(files["table"].read_text())
    console.print(f"table: {files['table']}  plot: {files.get('plot', '(matplotlib not installed)')}")


@with_selection_options("block_size", "sink_blocks")
def heads(
    model: ModelOpt = "smollm2",
    device: DeviceOpt = "cpu",
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
    dtype: DtypeOpt = "float32",
    threads: ThreadsOpt = None,
    selection_fields: dict[str, Any] | None = None,
) -> None:
    """Retrieval-head profiling: R_h per (layer, KV head) on natural text, heatmap PNG and a SelectionConfig mask."""
    from kvprism.eval import heads as H
    from kvprism.hf.models import load_model
    from kvprism.selection import SelectionConfig

    with checks.checking():
        checks.dtype(dtype)
        checks.model(model)
        checks.device(device)
        text_tokens = H.DEFAULT_TEXT_TOKENS if text_tokens is None else text_tokens
        fields = checks.selection_fields(dict(selection_fields or {}))
        sel = SelectionConfig(**{**checks.selection_file(selection), **fields})
        d_sink, d_window = H.selection_sink_window(sel)
        sink = d_sink if sink is None else sink
        window = d_window if window is None else window
        fraction = H.DEFAULT_FRACTION if fraction is None else fraction
        if not 0.0 < fraction <= 1.0:
            raise checks.BadOption(f"--fraction = {fraction} is invalid; allowed range: (0, 1]")
        if sink + window >= text_tokens:
            raise checks.BadOption(f"--text-tokens = {text_tokens} must exceed --sink + --window = {sink + window}")
        if Path(out).is_dir():
            raise checks.BadOption(
                f"--out {out} is a directory; give the mask file's path, e.g. {Path(out) / 'heads.json'}"
            )
        if Path(out).suffix != ".json":
            raise checks.BadOption(f"--out {out} must end in .json (SelectionConfig.heads loads *.json masks)")
        checks.out_file(out, "--out", suffix=".json")
        checks.window(checks.model_config(model), text_tokens, "--text-tokens")
    set_threads(threads)
    with console.status(f"loading {model} ..."):
        mdl, tok = load_model(model, dtype=dtype, device=device)
    with checks.checking():
        checks.window(mdl.config, text_tokens, "--text-tokens")
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


def report(
    results_dir: Annotated[str, typer.Argument(help="Directory holding results.jsonl.")],
    skip_corrupt: Annotated[
        bool, typer.Option("--skip-corrupt", help="Skip corrupt lines of results.jsonl (counted) instead of failing.")
    ] = False,
) -> None:
    """Write summary.json, heatmaps (context × depth per configuration), k-sweep plots and report.md."""
    from kvprism.eval.report import write_report
    from kvprism.eval.store import RESULTS_FILE

    with checks.checking():
        p = Path(results_dir)
        if not p.is_dir():
            raise checks.BadOption(f"results directory {results_dir} {'is a file' if p.exists() else 'does not exist'}")
        checks.input_file(str(p / RESULTS_FILE), "results directory", what="results.jsonl file")
    written = write_report(results_dir, skip_corrupt=skip_corrupt, on_note=note)
    for name, path in written.items():
        console.print(f"{name:>24}  {path}")
