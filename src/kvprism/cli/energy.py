"""``kvprism energy``: energy and latency per decode step of the photonic chip against GPU baselines."""

from __future__ import annotations

from typing import Annotated

import typer

from kvprism.cli import checks
from kvprism.cli.common import ArchitectureOpt, SuperblockOpt, console, err_console, given_on_command_line, print_json

__all__ = ["energy"]


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
        str | None, typer.Option(help="Chip static power over 'full-step' (the decode step, default) or 'attention'.")
    ] = None,
    laser_mode: Annotated[
        str | None,
        typer.Option(
            help="'comb' (CW comb pump all step, default: a CW comb cannot be gated), 'cw' (lasers always on) or "
            "'gated' (on only while probing and querying, best case)."
        ),
    ] = None,
    tokens_per_s: Annotated[
        float | None,
        typer.Option(
            "--tokens-per-s",
            help="Decode rate: the chip's time line at each context and every term held all step follow from it "
            "[default: 20].",
        ),
    ] = None,
    architecture: ArchitectureOpt = None,
    superblock: SuperblockOpt = None,
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

    with checks.checking():
        if config is not None:
            checks.not_with({"--preset": given_on_command_line("preset")}, "--config", "the file is the configuration")
            checks.input_file(config, "--config", suffix=".toml", what="PhotonicConfig TOML file")
            cfg, label = PhotonicConfig.from_toml(config), config
        else:
            cfg, label = PhotonicConfig.preset(checks.preset(preset)), preset
        arch = checks.architecture(architecture, superblock)
        given = {
            "batch": batch, "block_size": block_size, "k": k, "d_sig": d_sig, "gqa_reduce": gqa_reduce,
            "rerank": rerank, "scan_dims": scan_dims, "target_enob": target_enob,
            "static_accounting": static_accounting, "laser_mode": laser_mode, "tokens_per_s": tokens_per_s,
            "architecture": None if arch is None else arch.kind, "superblock": None if arch is None else arch.superblock,
            "hbm_energy_per_bit_j": None if hbm_pj_per_bit is None else hbm_pj_per_bit * 1e-12,
            "hbm_bandwidth_bytes_per_s": None if hbm_tb_per_s is None else hbm_tb_per_s * 1e12,
        }  # fmt: skip
        ecfg = EnergyConfig(**{name: value for name, value in given.items() if value is not None})
        shape = get_shape(model_shape)
        ctx = parse_contexts(contexts)
        checks.gpu_times(gpu_times, shape)
        if out is not None:
            checks.out_dir(out)
    with err_console.status("computing ..."):
        summary = build_summary(cfg, ecfg, shape, ctx, preset=label, rows=rows, gpu_times=gpu_times)
    if as_json:
        print_json(summary)
    else:
        print_summary(summary, console)
    if out is not None:
        with console.status("writing plots ..."):
            paths = write_outputs(summary, out)
        for p in paths:
            (err_console if as_json else console).print(f"wrote {p}", highlight=False)
