"""``kvprism hw``: the feasibility verdict of a photonic configuration, untimed or timed by a model's decode."""

from __future__ import annotations

from typing import Annotated

import typer

from kvprism.cli import checks
from kvprism.cli.common import ArchitectureOpt, SuperblockOpt, console, err_console, print_json

__all__ = ["hw"]


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
    context: Annotated[
        int | None,
        typer.Option(
            help="Context length in tokens of the timed verdict (with --model-shape; default 4096): rows per bank, "
            "rounds and rewrites scale with it.",
            min=1,
        ),
    ] = None,
    block_size: Annotated[
        int | None, typer.Option(help="Tokens per block (one row) for the timing [default: SelectionConfig's].", min=1)
    ] = None,
    untimed: Annotated[
        bool,
        typer.Option(
            "--untimed",
            help="Run only the untimed checks (no model shape): never a feasibility verdict at decode speed.",
        ),
    ] = False,
    queries_per_head: Annotated[
        int, typer.Option(help="Chip queries per (layer, KV head) and decode step (1: GQA sum).", min=1)
    ] = 1,
    batch: Annotated[int, typer.Option(help="Sequences decoded together (one logical bank each).", min=1)] = 1,
    architecture: ArchitectureOpt = None,
    superblock: SuperblockOpt = None,
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

    with checks.checking():
        if list_presets:
            checks.not_with(
                {"--preset": preset is not None, "--config": config is not None, "--model-shape": model_shape is not None,
                 "--tokens-per-s": tokens_per_s is not None, "--write-timed": write_timed is not None,
                 "--strict": strict, "--json": as_json},
                "--list", "it lists the shipped presets and exits",
            )  # fmt: skip
        if preset is not None and config is not None:
            raise checks.BadOption("give either --preset or --config, not both")
        if write_timed is not None and model_shape is None:
            raise checks.BadOption("--write-timed needs --model-shape (the decode that times the config)")
        if model_shape is None and tokens_per_s is not None:
            raise checks.BadOption("--tokens-per-s needs --model-shape (the model whose decode times the detection)")
        if untimed and model_shape is not None:
            raise checks.BadOption("--untimed runs the checks without a decode timing; drop --model-shape or --untimed")
        if model_shape is None and (context is not None or block_size is not None):
            raise checks.BadOption("--context and --block-size need --model-shape (they time the chip)")
        if model_shape is None and (queries_per_head != 1 or batch != 1):
            raise checks.BadOption("--queries-per-head and --batch need --model-shape (they time the detection)")
        if model_shape is None and (architecture is not None or superblock is not None):
            raise checks.BadOption("--architecture and --superblock need --model-shape (the chip is sized for it)")
        arch = checks.architecture(architecture, superblock)
        if tokens_per_s is not None and not tokens_per_s > 0:
            raise checks.BadOption(f"--tokens-per-s = {tokens_per_s:g} is invalid; allowed range: (0, inf)")
        if config is not None:
            checks.input_file(config, "--config", suffix=".toml", what="PhotonicConfig TOML file")
            cfg, label = PhotonicConfig.from_toml(config), config
        elif not list_presets:
            label = checks.preset(preset or "seed-nominal")
            cfg = PhotonicConfig.preset(label)
        if write_timed is not None:
            checks.out_file(write_timed, "--write-timed", suffix=".toml")
        shape = None
        if model_shape is not None:
            from kvprism.energy.config import model_shape as get_shape

            shape = get_shape(model_shape)
    if list_presets:
        table = Table(title="photonic presets")
        for col in ("name", "description", "source"):
            table.add_column(col, overflow="fold")
        for name in PhotonicConfig.presets():
            meta = PhotonicConfig.preset_meta(name)
            table.add_row(name, meta.get("description", ""), meta.get("source", ""))
        console.print(table)
        return
    timing = None
    if shape is not None:
        rate = 20.0 if tokens_per_s is None else tokens_per_s
        timing = decode_timing(
            cfg, n_layers=shape.n_layers, kv_heads=shape.kv_heads, tokens_per_s=rate,
            context=4096 if context is None else context, block_size=block_size,
            queries_per_head=queries_per_head, batch=batch, model=shape.name, architecture=arch,
        )  # fmt: skip
        (err_console if as_json else console).print(
            f"timed by decode: {shape.name} ({shape.n_layers} layers × {shape.kv_heads} KV heads, batch "
            f"{batch}, {queries_per_head} quer{'y' if queries_per_head == 1 else 'ies'} per head), {timing.context:,} "
            f"tokens in blocks of {timing.block_size}, {rate:g} tokens/s, {cfg.selection_time_fraction:g} of the step "
            f"for selection; {timing.describe()}; T_int {timing.integration_time_s * 1e6:.3g} µs → "
            f"detection_bandwidth_hz {timing.noise_bandwidth_hz:.3g} (configured {cfg.detection_bandwidth_hz:.3g})",
            highlight=False,
        )
        if arch is not None and arch.resident:
            from kvprism.photonics.architecture import chip_plan

            plan = chip_plan(cfg, arch, n_layers=shape.n_layers, kv_heads=shape.kv_heads, context=timing.context,
                             block_size=timing.block_size, batch=batch)  # fmt: skip
            (err_console if as_json else console).print(
                f"architecture {arch.label}: {plan.physical_banks:,} banks × {plan.rows_per_physical_bank:,} rows "
                f"({plan.rows_per_logical_bank:,} per (layer, KV head)), {plan.rings:,} rings, "
                f"{plan.photonic_area_m2 * 1e6:,.0f} mm² photonic + {plan.electronic_area_m2 * 1e6:,.0f} mm² electronic "
                f"= {plan.dies} die stack(s) of {cfg.max_chip_area_m2 * 1e6:g} mm² (package: ≤ {arch.max_dies}); "
                f"held: heaters {plan.heater_power_w:,.3g} W ({plan.heater_power_per_die_w:,.3g} W per die), drivers "
                f"{plan.driver_power_w:,.3g} W; per step: {plan.appended_rows_per_step:.3g} rows appended "
                f"({plan.appended_ring_writes_per_step:.3g} ring writes), {timing.calibrations_per_step:.3g} bank "
                f"recalibrations (drift period {timing.drift_period_s:.3g} s)",
                highlight=False,
            )
        if write_timed is not None:
            from kvprism.photonics.design import timed_by_decode
            from kvprism.search.search import write_preset

            meta = {
                "description": f"{label} timed by decode for {shape.name} ({shape.n_layers} layers x "
                f"{shape.kv_heads} KV heads, batch {batch}) at {rate:g} tokens/s, {timing.context} tokens",
                "source": "kvprism hw --write-timed (kvprism.photonics.design.timed_by_decode)",
            }
            path = write_preset(timed_by_decode(cfg, timing), write_timed, meta)
            (err_console if as_json else console).print(f"wrote {path}", highlight=False)
    else:
        (err_console if as_json else console).print(
            "[bold yellow]untimed[/]: no --model-shape, so no decode timing — the checks below say nothing about "
            "decode speed and are not a feasibility verdict (give --model-shape, --tokens-per-s and --context)",
            highlight=False,
        )
    with console.status("evaluating feasibility ..."):
        rep = feasibility(cfg, seed=seed, timing=timing)
    if as_json:
        print_json({"config": label, "feasible": rep.feasible, "timed": rep.timed, "verdict": rep.verdict(),
                    "violations": rep.violations, "report": rep})  # fmt: skip
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
    console.print(
        f"[bold {'green' if rep.feasible else 'red' if rep.violations else 'yellow'}]{rep.verdict()}[/]",
        highlight=False,
    )
    if strict and rep.violations:
        raise typer.Exit(1)
