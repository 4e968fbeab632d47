"""Summary, tables and plots of the energy/latency comparison (``kvprism energy``).

``energy_summary.json`` (written atomically) holds: ``preset``, ``model_shape``, ``energy_config``, ``laser``,
``per_query`` (breakdown at ``rows`` rows), ``steps`` (one record per context, J and s), ``crossovers``
(lists of [context, regime]), ``rings``, ``bank_sharing`` (resident vs time-shared banks per context),
``thermo_optic``, ``measured`` (if a GPU times file was given) and ``plots``
(file names in the same folder).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from kvprism.energy.chip import LATENCY_STAGES, LEDGER_SOURCES, chip_query, required_laser, seed_stage_latency_s
from kvprism.energy.compare import (
    CHIP_TERMS,
    bank_sharing,
    crossover,
    decode_step,
    min_context,
    ring_inventory,
    thermo_optic_reference,
)
from kvprism.energy.config import EnergyConfig, ModelShape
from kvprism.energy.gpu import BASELINES, load_gpu_times
from kvprism.errors import KvprismError
from kvprism.photonics.config import PhotonicConfig

__all__ = ["build_summary", "parse_contexts", "print_summary", "write_outputs"]

SUMMARY_NAME = "energy_summary.json"
_SUFFIX = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_contexts(text: str) -> list[int]:
    """'4k,32k,128k,1m' → [4096, 32768, 131072, 1048576] (k = 1024, m = 1024², g = 1024³; plain integers too)."""
    out = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)\s*", part)
        if not m:
            raise KvprismError(f"--contexts: {part!r} is not a context length (examples: 4096, 4k, 128k, 1m)")
        out.append(round(float(m.group(1)) * _SUFFIX[m.group(2).lower()]))
    if not out:
        raise KvprismError("--contexts is empty")
    return sorted(set(out))


def _crossings(cfg, ecfg, shape, laser, lo: int, hi: int) -> dict[str, list[list[Any]]]:
    cache: dict[int, Any] = {}

    def step(c: int):
        if c not in cache:
            cache[c] = decode_step(cfg, ecfg, shape, c, laser)
        return cache[c]

    metrics = {
        "energy_vs_gpu_sparse": lambda c: step(c).photonic_total_energy_j - step(c).gpu.sparse_energy_j,
        "latency_vs_gpu_sparse": lambda c: step(c).photonic_total_latency_s - step(c).gpu.sparse_latency_s,
        "energy_vs_dense": lambda c: step(c).photonic_total_energy_j - step(c).gpu.dense_energy_j,
        "latency_vs_dense": lambda c: step(c).photonic_total_latency_s - step(c).gpu.dense_latency_s,
    }
    return {name: [list(x) for x in crossover(f, lo, hi)] for name, f in metrics.items()}


def build_summary(
    cfg: PhotonicConfig,
    ecfg: EnergyConfig,
    shape: ModelShape,
    contexts: list[int],
    *,
    preset: str = "",
    rows: int | None = None,
    gpu_times: str | Path | None = None,
    methods: dict[str, str] | None = None,
    search_range: tuple[int, int] | None = None,
    curve_points: int = 48,
) -> dict[str, Any]:
    """Everything ``kvprism energy`` prints and plots, as plain JSON-able data (SI units)."""
    lo_ok = min_context(ecfg)
    bad = [c for c in contexts if c < lo_ok]
    if bad:
        raise KvprismError(f"--contexts {bad} are invalid; allowed range: [{lo_ok}, inf) for k={ecfg.k}, "
                           f"sink_blocks={ecfg.sink_blocks}, block_size={ecfg.block_size}")  # fmt: skip
    laser = required_laser(cfg, ecfg.d_sig, ecfg.target_enob if ecfg.target_enob >= 0 else None)
    rows = rows or cfg.rows_per_bank
    pq = chip_query(cfg, rows, ecfg.d_sig, min(ecfg.k, rows), block_size=ecfg.block_size, laser=laser)
    steps = [decode_step(cfg, ecfg, shape, c, laser) for c in contexts]
    lo, hi = search_range or (lo_ok, max(1 << 24, max(contexts)))
    n = max(2, curve_points)
    b = ecfg.block_size  # curve points on whole blocks (the incomplete last block would add a sawtooth)
    grid = {max(lo, b * round(lo * (hi / lo) ** (i / (n - 1)) / b)) for i in range(n)}
    curve_ctx = sorted(grid | set(contexts))
    curve = [decode_step(cfg, ecfg, shape, c, laser) for c in curve_ctx]
    summary: dict[str, Any] = {
        "kind": "kvprism.energy",
        "preset": preset,
        "model_shape": dict(shape.__dict__),
        "energy_config": ecfg.to_dict(),
        "laser": {
            "target_snr_db": laser.target_snr_db,
            "snr_ceiling_db": laser.snr_ceiling_db,
            "limited_by": laser.limited_by,
            "row_line_dbm": 10 * math.log10(laser.row_line_w / 1e-3),
            "link_loss_db": laser.link_loss_db,
            "laser_line_dbm": laser.laser_line_dbm,
            "configured_laser_line_dbm": laser.configured_laser_line_dbm,
            "optical_w_per_bank": laser.optical_w,
            "electrical_w_per_bank": laser.electrical_w,
            "cap_laser_line_dbm": 10 * math.log10(laser.cap_laser_line_w / 1e-3),
            "achieved_snr_db": laser.achieved_snr_db,
            "feasible": laser.feasible,
            "reason": laser.reason,
        },
        "per_query": {
            "n_rows": pq.n_rows,
            "d": pq.d,
            "k": pq.k,
            "passes": pq.passes,
            "energy_j": pq.energy_j,
            "total_energy_j": pq.total_energy_j,
            "dynamic_energy_j": pq.dynamic_energy_j,
            "latency_s": pq.latency_s,
            "total_latency_s": pq.total_latency_s,
            "seed_stage_latency_s": seed_stage_latency_s(cfg),
            # references (not part of the total): the same N conversions at the cited converter's own measured
            # energy, and TIA + ADC at the seed's assumed 49 µW per diode over its TIA+ADC stage latency
            "adc_at_measured_converter_j": pq.queries * pq.passes * pq.n_rows * cfg.adc_energy_per_conversion_j,
            "tia_adc_at_seed_assumption_j": pq.queries
            * pq.passes
            * pq.n_rows
            * 2
            * cfg.tia_adc_power_seed_w
            * cfg.latency_tia_adc_s,
        },
        "steps": [
            s.row()
            | {
                "photonic_energy_terms_j": s.photonic_energy_j,
                "timing": None
                if s.timing is None
                else {
                    "describe": s.timing.describe(),
                    "fits": s.timing.fits,
                    "needed_s": s.timing.needed_s,
                    "budget_s": s.timing.budget_s,
                    "write_s": s.timing.write_s,
                    "calibration_s": s.timing.calibration_s,
                    "query_s": s.timing.query_s,
                    "integration_time_s": s.timing.integration_time_s,
                    "probe_sample_time_s": s.timing.probe_sample_time_s,
                    "rounds_per_layer": s.timing.rounds_per_layer,
                },
                "baselines": {
                    b.name: {"read_bytes": b.read_bytes, "flops": b.flops, "energy_j": b.energy_j, "time_s": b.time_s}
                    for b in s.baselines.values()
                },
            }
            for s in steps
        ],
        "ledger_sources": dict(LEDGER_SOURCES),
        "baseline_descriptions": dict(BASELINES),
        "curve": [s.row() for s in curve],
        "crossovers": _crossings(cfg, ecfg, shape, laser, lo, hi),
        "search_range": [lo, hi],
        "rings": [ring_inventory(cfg, ecfg, shape, c) | {"context": c} for c in contexts],
        "bank_sharing": [bank_sharing(cfg, ecfg, shape, s) | {"context": s.context} for s in steps],
        "thermo_optic": thermo_optic_reference(cfg, ecfg),
        "architecture": [_architecture_record(s) for s in steps],
        "plots": [],
    }
    if gpu_times is not None:
        summary["measured"] = _measured(gpu_times, shape, ecfg, steps, methods or {})
    return summary


def _architecture_record(step) -> dict[str, Any]:
    """The chip one architecture builds at a step's context and its per-step work (plan and timing)."""
    p, t = step.plan, step.timing
    return {
        "context": step.context,
        "architecture": p.architecture.label,
        "logical_banks": p.logical_banks,
        "physical_banks": p.physical_banks,
        "rows_per_physical_bank": p.rows_per_physical_bank,
        "rows": p.rows,
        "rings": p.rings,
        "photonic_area_m2": p.photonic_area_m2,
        "electronic_area_m2": p.electronic_area_m2,
        "photonic_dies": p.photonic_dies,
        "electronic_dies": p.electronic_dies,
        "dies": p.dies,
        "heaters": p.heaters,
        "heater_power_w": p.heater_power_w,
        "heater_power_per_die_w": p.heater_power_per_die_w,
        "driver_power_w": p.driver_power_w,
        "appended_rows_per_step": p.appended_rows_per_step,
        "appended_ring_writes_per_step": p.appended_ring_writes_per_step,
        "fits": t.fits,
        "query_s": t.query_s,
        "budget_s": t.budget_s,
        "needed_s": t.needed_s,
        "append_s": t.append_s,
        "recalibration_s": t.recalibration_s,
        "idle_s": t.idle_s,
        "drift_period_s": t.drift_period_s,
        "calibration_age_s": t.calibration_age_s,
        "calibrations_per_step": t.calibrations_per_step,
    }


def _measured(path, shape, ecfg, steps, methods: dict[str, str]) -> list[dict[str, Any]]:
    times = load_gpu_times(path, shape)
    m_dense = methods.get("dense", "dense")
    m_sparse = methods.get("sparse", "kvprism_graph")
    m_attend = methods.get("attend", "kvprism_attend")
    known = {m for (_, _, m) in times}
    missing = [m for m in (m_dense, m_sparse, m_attend) if m not in known]
    if missing:
        raise KvprismError(f"GPU times file {path} has no method {missing}; it has: {', '.join(sorted(known))}")
    out = []
    for s in steps:
        key = (ecfg.batch, s.context)
        rec = {"context": s.context, "batch": ecfg.batch}
        rec["dense_s"] = times.get((*key, m_dense))
        rec["gpu_sparse_s"] = times.get((*key, m_sparse))
        attend = times.get((*key, m_attend))
        # photonic system with the measured GPU attention on the selected tokens instead of the modelled fetch
        rec["photonic_s"] = None if attend is None else attend + s.added_latency_s
        out.append(rec)
    return out


# ---------------------------------------------------------------------------------------------------- printing
def _fmt_j(x: float) -> str:
    for unit, f in (("J", 1.0), ("mJ", 1e-3), ("µJ", 1e-6), ("nJ", 1e-9), ("pJ", 1e-12)):
        if abs(x) >= f:
            return f"{x / f:.3g} {unit}"
    return f"{x / 1e-15:.3g} fJ"


def _fmt_s(x: float) -> str:
    for unit, f in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6), ("ns", 1e-9)):
        if abs(x) >= f:
            return f"{x / f:.3g} {unit}"
    return f"{x / 1e-12:.3g} ps"


def _ctx(c: int) -> str:
    if c % (1 << 20) == 0:
        return f"{c >> 20}m"
    if c % (1 << 10) == 0:
        return f"{c >> 10}k"
    return str(c)


def print_summary(summary: dict[str, Any], console) -> None:
    """Rich tables of a :func:`build_summary` result."""
    from rich.table import Table

    las, pq = summary["laser"], summary["per_query"]
    shape = summary["model_shape"]
    t = Table(title=f"laser per bank ({summary['preset']}, d = {pq['d']})")
    t.add_column("quantity")
    t.add_column("value", justify="right")
    t.add_row("score SNR target / RIN ceiling", f"{las['target_snr_db']:.1f} dB / {las['snr_ceiling_db']:.1f} dB")
    t.add_row("needed at the row, per line", f"{las['row_line_dbm']:.1f} dBm ({las['limited_by']})")
    t.add_row("link loss laser → row", f"{las['link_loss_db']:.1f} dB")
    t.add_row(
        "needed at the chip input, per line",
        f"{las['laser_line_dbm']:.1f} dBm (preset: {las['configured_laser_line_dbm']:.1f} dBm)",
    )
    t.add_row("optical / wall-plug, all lines", f"{las['optical_w_per_bank'] * 1e3:.1f} mW / "
              f"{las['electrical_w_per_bank'] * 1e3:.1f} mW")  # fmt: skip
    t.add_row("largest laser per line (power caps)", f"{las['cap_laser_line_dbm']:.1f} dBm")
    t.add_row("score SNR reached", f"{las['achieved_snr_db']:.1f} dB")
    console.print(t)
    if not las["feasible"]:
        console.print(f"[bold red]laser infeasible within the power caps:[/] {las['reason']}", highlight=False)

    t = Table(title=f"one query: N = {pq['n_rows']:,} rows, d = {pq['d']}, k = {pq['k']}, passes = {pq['passes']}")
    t.add_column("energy term")
    t.add_column("pJ", justify="right")
    t.add_column("share", justify="right")
    tot = pq["total_energy_j"]
    for name, v in pq["energy_j"].items():
        t.add_row(name, f"{v * 1e12:,.2f}", f"{100 * v / tot:.1f} %")
    t.add_row("[bold]total[/]", f"[bold]{tot * 1e12:,.1f}[/]", "")
    t.add_row(
        "[dim]ref: ADC at the cited converter's measured pJ per conversion[/]",
        f"[dim]{pq['adc_at_measured_converter_j'] * 1e12:,.1f}[/]",
        "",
    )
    t.add_row(
        "[dim]ref: TIA+ADC at the seed's per-diode power[/]",
        f"[dim]{pq['tia_adc_at_seed_assumption_j'] * 1e12:,.1f}[/]",
        "",
    )
    console.print(t)
    t = Table(title="one query: latency by stage")
    t.add_column("stage")
    t.add_column("ns", justify="right")
    for name in LATENCY_STAGES:
        t.add_row(name, f"{pq['latency_s'][name] * 1e9:.3f}")
    t.add_row("[bold]total[/]", f"[bold]{pq['total_latency_s'] * 1e9:.3f}[/]")
    t.add_row("seed stage values (ring as quoted)", f"{pq['seed_stage_latency_s'] * 1e9:.3f}")
    console.print(t)

    e = summary["energy_config"]
    console.print(
        f"[bold]decode step[/], {shape['name']} ({shape['n_layers']} layers × {shape['kv_heads']} KV heads × d_head "
        f"{shape['head_dim']}), batch {e['batch']}, B = {e['block_size']}, k = {e['k']}, d_sig = {e['d_sig']}, "
        f"rerank ×{e['rerank']}, architecture {e.get('architecture', 'time-shared')}"
        + (f" (S = {e['superblock']})" if e.get("architecture") == "two-level" else "")
        + f", gqa_reduce {e['gqa_reduce']}, GPU scan over {e['scan_dims']}; HBM {e['hbm_energy_per_bit_j'] * 1e12:g} "
        f"pJ/bit, {e['hbm_bandwidth_bytes_per_s'] / 1e12:g} TB/s; chip static power charged over: "
        f"{e['static_accounting']}, laser {e['laser_mode']}",
        highlight=False,
    )
    t = Table(title="energy per decode step (attention: KV / signature traffic + chip)")
    for col in ("context", "dense KV read", "GPU selection", "photonic", "chip w/o static", "chip static", "kv fetch"):
        t.add_column(col, justify="right")
    for s in summary["steps"]:
        terms = s["photonic_energy_terms_j"]
        t.add_row(
            _ctx(s["context"]), _fmt_j(s["dense_energy_j"]), _fmt_j(s["gpu_sparse_energy_j"]),
            _fmt_j(s["photonic_energy_j"]), _fmt_j(s["chip_dynamic_energy_j"]), _fmt_j(s["chip_static_energy_j"]),
            _fmt_j(terms["kv_fetch"]),
        )  # fmt: skip
    console.print(t)
    steps = summary["steps"]
    t = Table(
        title=f"chip ledger per decode step at {e['tokens_per_s']:g} tokens/s (J; every term, largest first at "
        f"{_ctx(steps[-1]['context'])}; light source: {e['laser_mode']})"
    )
    t.add_column("term")
    for s in steps:
        t.add_column(_ctx(s["context"]), justify="right")
    t.add_column(f"share at {_ctx(steps[-1]['context'])}", justify="right")
    t.add_column("source / assumption", overflow="fold")
    last = steps[-1]["photonic_energy_terms_j"]
    sel_last = steps[-1]["chip_selection_energy_j"]
    for term in sorted((k for k in last if k != "kv_fetch"), key=lambda k: -last[k]):
        src = summary.get("ledger_sources", {}).get(term, {
            "static": "static_power_w (TEC and bias, assumption) over the step, per die stack when resident",
            "paging_reads": "HBM read of the drive codes of every rewrite (O'Connor et al., MICRO'17)",
            "rerank_reads": "HBM read of the rescored candidates' signatures (two-level: the blocks inside the chosen "
            "super-blocks and the open one) + 2·d FLOPs each per query at gpu_energy_per_flop_j",
        }.get(term, ""))  # fmt: skip
        t.add_row(term, *(_fmt_j(s["photonic_energy_terms_j"][term]) for s in steps),
                  f"{100 * last[term] / sel_last:.1f} %" if sel_last else "", src)  # fmt: skip
    t.add_row("[bold]selection total[/]", *(f"[bold]{_fmt_j(s['chip_selection_energy_j'])}[/]" for s in steps), "", "")
    console.print(t)

    t = Table(title="selection energy per decode step: photonic chip (timed) vs electronic selectors (J)")
    t.add_column("context")
    t.add_column("chip time line vs budget")
    t.add_column("chip", justify="right")
    names = list(steps[0]["baselines"])
    for n in names:
        t.add_column(n, justify="right")
    t.add_column("chip / best electronic", justify="right")
    for s in steps:
        tm = s["timing"]
        line = "–" if tm is None else (f"{'[green]fits[/]' if tm['fits'] else '[red]over[/]'} "
                                        f"{_fmt_s(tm['needed_s'])} / {_fmt_s(tm['budget_s'])}")  # fmt: skip
        best = min(b["energy_j"] for b in s["baselines"].values())
        t.add_row(_ctx(s["context"]), line, _fmt_j(s["chip_selection_energy_j"]),
                  *(_fmt_j(s["baselines"][n]["energy_j"]) for n in names),
                  f"{s['chip_selection_energy_j'] / best:,.3g}×")  # fmt: skip
    console.print(t)
    for n, desc in summary.get("baseline_descriptions", {}).items():
        console.print(f"[dim]{n}: {desc}[/]", highlight=False)
    console.print(
        "[dim]every selector also fetches the selected tokens (kv fetch column above); electronic energy = HBM bytes × "
        f"{e['hbm_energy_per_bit_j'] * 1e12:g} pJ/bit + FLOPs × {e['gpu_energy_per_flop_j'] * 1e12:g} pJ (H100 FP8)[/]",
        highlight=False,
    )

    t = Table(title="latency per decode step and ring inventory")
    for col in ("context", "dense", "GPU selection", "photonic", "chip (all layers)", "pages", "MRR needed",
                "ring area"):  # fmt: skip
        t.add_column(col, justify="right")
    for s, r in zip(summary["steps"], summary["rings"], strict=True):
        area_bad = r["area_needed_m2"] > r["max_chip_area_m2"]
        t.add_row(
            _ctx(s["context"]), _fmt_s(s["dense_latency_s"]), _fmt_s(s["gpu_sparse_latency_s"]),
            _fmt_s(s["photonic_latency_s"]), _fmt_s(s["chip_latency_s"]), str(s["pages"]),
            f"{r['mrr_needed']:.3g}", ("[red]" if area_bad else "") + f"{r['area_needed_m2'] * 1e6:.3g} mm²",
        )  # fmt: skip
    console.print(t)
    console.print(
        f"[dim]ring area in red: above the {summary['rings'][0]['max_chip_area_m2'] * 1e6:g} mm² reticle; the "
        f"preset's chip has {summary['rings'][0]['mrr_chip']:,} rings "
        f"({summary['rings'][0]['area_chip_m2'] * 1e6:,.0f} mm²) and pages beyond them[/]"
    )

    arch = summary.get("architecture") or []
    if arch:
        t = Table(title=f"architecture {arch[0]['architecture']}: the chip built and its work per decode step")
        for col in ("context", "banks × rows", "rings", "photonic area", "dies", "heaters (held)", "drivers (held)",
                    "rows appended / step", "time line", "background / idle", "drift period"):  # fmt: skip
            t.add_column(col, justify="right")
        for a in arch:
            resident = a["architecture"] != "time-shared"
            t.add_row(
                _ctx(a["context"]), f"{a['physical_banks']:,} × {a['rows_per_physical_bank']:,}", f"{a['rings']:,}",
                f"{a['photonic_area_m2'] * 1e6:,.0f} mm²", str(a["dies"]),
                f"{a['heater_power_w']:,.3g} W ({a['heater_power_per_die_w']:,.3g} W/die)",
                f"{a['driver_power_w']:,.3g} W", f"{a['appended_rows_per_step']:.3g}",
                f"{'[green]fits[/]' if a['fits'] else '[red]over[/]'} {_fmt_s(a['needed_s'])} / {_fmt_s(a['budget_s'])}",
                f"{_fmt_s(a['append_s'] + a['recalibration_s'])} / {_fmt_s(a['idle_s'])}" if resident else "–",
                f"{a['drift_period_s']:.3g} s" if resident else "–",
            )  # fmt: skip
        console.print(t)

    t = Table(title="resident signatures vs time-shared physical banks (per decode step)")
    for col in ("context", "logical / physical banks", "rewrites per bank", "reprogram bytes", "vs GPU scan bytes",
                "reprogram energy", "reprogram time", "resident photonic area"):  # fmt: skip
        t.add_column(col, justify="right")
    for b in summary["bank_sharing"]:
        t.add_row(
            _ctx(b["context"]), f"{b['logical_banks']} / {b['physical_banks']}", f"{b['rewrites_per_physical_bank']:.3g}",
            f"{b['reprogram_bytes']:.3g} B", f"{100 * b['reprogram_vs_scan_bytes']:.1f} %",
            _fmt_j(b["reprogram_energy_j"]) if b["reprogram_energy_j"] else "0", _fmt_s(b["reprogram_time_s"])
            if b["reprogram_time_s"] else "0", f"{b['resident_photonic_area_m2'] * 1e6:,.0f} mm²",
        )  # fmt: skip
    console.print(t)
    console.print(
        "[dim]trade-off: resident signatures need the photonic area of every row (the column above, against a "
        f"{summary['rings'][0]['max_chip_area_m2'] * 1e6:g} mm² reticle); time-shared banks fit the chip but rewrite "
        "every row each step, reading drive codes from memory — the same kind of traffic as the electronic signature "
        "scan they replace (the 'vs GPU scan bytes' column) — plus C·V² and the write time[/]"
    )

    t = Table(title=f"crossovers, contexts {_ctx(summary['search_range'][0])}–{_ctx(summary['search_range'][1])}")
    t.add_column("comparison")
    t.add_column("regime changes (first context of the new regime)")
    for name, xs in summary["crossovers"].items():
        text = ", ".join(f"{r} from {c:,}" for c, r in xs) or "photonic worse over the whole range"
        t.add_row(name.replace("_", " "), text)
    console.print(t)

    th = summary["thermo_optic"]
    console.print(
        f"thermo-optic SOI reference (P_π = {th['p_pi_w'] * 1e3:.2f} mW): {th['heater_w_per_ring_fwhm'] * 1e3:.3f} mW "
        f"per ring per FWHM ({th['fwhm_m'] * 1e12:.1f} pm of FSR {th['fsr_m'] * 1e9:.2f} nm), "
        f"{th['heater_w_chip_fwhm']:,.0f} W for every ring of the chip held one FWHM off; EO: "
        f"{th['eo_energy_per_update_j'] * 1e15:.0f} fJ per update and ~0 W to hold",
        highlight=False,
    )
    if "measured" in summary:
        t = Table(title="measured GPU times (per step, all layers)")
        for col in ("context", "dense", "GPU selection", "photonic (measured attend + chip)"):
            t.add_column(col, justify="right")
        for r in summary["measured"]:
            t.add_row(_ctx(r["context"]), *("–" if r[k] is None else _fmt_s(r[k])
                                            for k in ("dense_s", "gpu_sparse_s", "photonic_s")))  # fmt: skip
        console.print(t)


# ---------------------------------------------------------------------------------------------------- files
def write_outputs(summary: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Write the three plots and ``energy_summary.json`` into ``out_dir`` (each file atomically); returns paths."""
    import matplotlib

    from kvprism.atomic import atomic_write

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    paths = []
    curve = summary["curve"]
    cx = [r["context"] for r in curve]
    title = f"{summary['preset']} · {summary['model_shape']['name']} · batch {summary['energy_config']['batch']}"
    asked = [s["context"] for s in summary["steps"]]

    def save(fig, name: str) -> None:
        p = out / name
        atomic_write(p, lambda tmp: fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png"))
        plt.close(fig)
        paths.append(p)

    series = (("dense", "dense KV read", "C3"), ("gpu_sparse", "GPU selection (scan + fetch)", "C0"),
              ("photonic", "photonic (chip + fetch)", "C2"))  # fmt: skip
    for kind, unit, scale in (("energy", "J", 1.0), ("latency", "µs", 1e6)):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for key, label, color in series:
            ax.loglog(cx, [r[f"{key}_{kind}_j" if kind == "energy" else f"{key}_{kind}_s"] * scale for r in curve],
                      label=label, color=color)  # fmt: skip
        if kind == "energy":
            ax.loglog(cx, [r["chip_dynamic_energy_j"] for r in curve], "--", color="C2", alpha=0.6,
                      label="chip, static excluded")  # fmt: skip
        else:
            ax.loglog(cx, [r["gpu_scan_latency_s"] * scale for r in curve], ":", color="C0", alpha=0.7,
                      label="GPU signature scan only")  # fmt: skip
            ax.loglog(cx, [r["chip_latency_s"] * scale for r in curve], "--", color="C2", alpha=0.6,
                      label="chip only (all layers)")  # fmt: skip
        for c, regime in summary["crossovers"][f"{kind}_vs_gpu_sparse"]:
            ax.axvline(c, color="k", ls="--", lw=0.8)
            ax.annotate(f"{regime}\nfrom {_ctx(c) if c % 1024 == 0 else f'{c:,}'}", (c, 0.02),
                        xycoords=("data", "axes fraction"), fontsize=7, rotation=90, ha="right", va="bottom")  # fmt: skip
        for c in asked:
            ax.axvline(c, color="0.85", lw=0.6, zorder=0)
        ax.set_xlabel("context [tokens]")
        ax.set_ylabel(f"{kind} per decode step [{unit}]")
        ax.set_title(f"{kind} per decode step — {title}", fontsize=9)
        ax.grid(True, which="both", alpha=0.2)
        ax.legend(fontsize=8)
        save(fig, f"{kind}_vs_context.png")

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5))
    pq = summary["per_query"]
    names = [n for n in pq["energy_j"] if pq["energy_j"][n] > 0]
    a1.barh(names, [pq["energy_j"][n] * 1e12 for n in names], color="C2")
    a1.set_xscale("log")
    a1.set_xlabel("pJ per query")
    a1.set_title(f"one query: N = {pq['n_rows']:,}, d = {pq['d']} (total {pq['total_energy_j'] * 1e9:.3g} nJ)",
                 fontsize=9)  # fmt: skip
    terms = [*CHIP_TERMS, "static", "kv_fetch", "paging_reads", "rerank_reads"]
    steps = summary["steps"]
    bottom = [0.0] * len(steps)
    labels = [_ctx(s["context"]) for s in steps]
    for i, term in enumerate(terms):
        share = [100 * s["photonic_energy_terms_j"][term] / s["photonic_energy_j"] for s in steps]
        if max(share) < 0.05:
            continue
        a2.bar(labels, share, bottom=bottom, label=term, color=plt.get_cmap("tab20")(i))
        bottom = [b + v for b, v in zip(bottom, share, strict=True)]
    a2.set_ylabel("% of photonic-system energy per step")
    a2.set_xlabel("context")
    a2.set_title("photonic decode step: components (terms < 0.05 % omitted)", fontsize=9)
    a2.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    save(fig, "energy_breakdown.png")

    summary = dict(summary, plots=[p.name for p in paths])
    js = out / SUMMARY_NAME
    atomic_write(js, json.dumps(summary, indent=2))
    paths.append(js)
    return paths
