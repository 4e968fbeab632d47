"""Decode-step comparison of the photonic system with the GPU baselines, crossovers, ring count/area and the
thermo-optic heater reference.

The photonic system replaces the signature scan: each decode step, every (sequence, layer, KV head) bank is queried
on the chip (``gqa_reduce='max'``: once per query head), the GPU then fetches the selected tokens. Its energy is the
chip's dynamic energy over all banks + the chip's static power over the whole step + the HBM fetch + (when the rows
exceed the chip) the HBM read of the ring drive codes that are reloaded every step + (two-stage selection,
``rerank > 1``) the HBM read of the ``rerank·k`` candidate signatures per bank the GPU rescores. Static power is
charged over the photonic attention step, plus — ``static_accounting='full-step'``, the default — the read of the model weights that
every decode step also does (the chip stays powered meanwhile; GPU power is the same in every system and cancels).
Laser: ``laser_mode='gated'`` (default, best case) charges one ADC period per pass and bank as in the per-query model;
``'cw'`` keeps the lasers of every physical bank in use on for the whole powered time. Its latency: per layer (layers
are sequential in decode; the banks of one layer run in parallel) the chip latency plus the fetch time, plus the
reload time when paging and the candidate read when rescoring.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from kvprism.energy.chip import LaserSolution, chip_query, mean_ring_drive_v2, required_laser, step_ledger
from kvprism.energy.config import EnergyConfig, ModelShape
from kvprism.energy.gpu import Baseline, GpuStep, electronic_baselines, gpu_step
from kvprism.errors import KvprismError
from kvprism.photonics.architecture import ChipPlan, chip_plan, two_level_read_blocks
from kvprism.photonics.config import PhotonicConfig
from kvprism.photonics.design import ChipDesign, DecodeTiming, decode_timing, timed_by_decode

__all__ = [
    "StepComparison",
    "bank_sharing",
    "crossover",
    "decode_step",
    "min_context",
    "rerank_read_bytes",
    "rescored_blocks",
    "ring_inventory",
    "thermo_optic_reference",
]

CHIP_TERMS = (
    "laser", "dac", "modulator", "tia", "adc", "topk", "eo_programming", "paging_programming", "calibration",
    "append_calibration", "ring_drivers", "trim_heaters",
)  # fmt: skip


def rerank_read_bytes(ecfg: EnergyConfig, banks: int, n_blocks: int) -> float:
    """HBM bytes the rescoring stage of two-stage selection reads per decode step: ``rerank·k`` candidate signatures
    (``d_sig`` elements each) per bank, read once for all of the bank's queries (0 with ``rerank = 1``). Two-level
    architecture: the block signatures inside the chosen super-blocks and the open super-block
    (:func:`~kvprism.photonics.architecture.two_level_read_blocks`)."""
    return float(banks * rescored_blocks(ecfg, n_blocks) * ecfg.d_sig * ecfg.kv_bytes_per_element)


def rescored_blocks(ecfg: EnergyConfig, n_blocks: int) -> int:
    """Block signatures the electronics rescores per bank and step: those of :func:`rerank_read_bytes`."""
    arch = ecfg.chip_architecture
    if arch.kind == "two-level":
        return two_level_read_blocks(arch, n_blocks * ecfg.block_size, ecfg.block_size, ecfg.k, ecfg.rerank)
    return min(ecfg.rerank * ecfg.k, n_blocks) if ecfg.rerank > 1 else 0


def min_context(ecfg: EnergyConfig) -> int:
    """Smallest context at which selection chooses among blocks: (k + sink + 1) complete blocks."""
    return (ecfg.k + ecfg.sink_blocks + 1) * ecfg.block_size


@dataclasses.dataclass(frozen=True)
class StepComparison:
    """One decode step of the whole model at ``context`` tokens per sequence (energies in J, latencies in s)."""

    context: int
    n_blocks: int
    banks: int
    pages: int
    gpu: GpuStep
    photonic_energy_j: dict[str, float]  # CHIP_TERMS (all banks) + static + kv_fetch + paging_reads + rerank_reads
    photonic_latency_s: dict[str, float]  # chip (all layers), kv_fetch, paging, rerank
    chip_per_bank_energy_j: float  # dynamic, one bank, one step
    chip_layer_latency_s: float
    timing: DecodeTiming | None = None  # the chip's time line at this context and decode rate
    baselines: dict[str, Baseline] = dataclasses.field(default_factory=dict)  # electronic selectors
    plan: ChipPlan | None = None  # the chip the architecture builds at this context (rings, area, dies, held power)

    @property
    def selection_energy_j(self) -> float:
        """The photonic system's energy for selecting: every term but the fetch of the selected tokens (which every
        selector pays) — the number to compare with each electronic baseline's ``energy_j``."""
        return sum(v for t, v in self.photonic_energy_j.items() if t != "kv_fetch")

    @property
    def best_baseline(self) -> Baseline | None:
        """The electronic selector with the least energy at this context."""
        return min(self.baselines.values(), key=lambda b: b.energy_j) if self.baselines else None

    @property
    def photonic_total_energy_j(self) -> float:
        return sum(self.photonic_energy_j.values())

    @property
    def photonic_total_latency_s(self) -> float:
        return sum(self.photonic_latency_s.values())

    @property
    def added_latency_s(self) -> float:
        """What selection adds to the step: every latency term but the fetch of the selected blocks (which every
        block-sparse method pays)."""
        return sum(v for t, v in self.photonic_latency_s.items() if t != "kv_fetch")

    def row(self) -> dict[str, float | int]:
        """Flat record for tables and JSON."""
        return {
            "context": self.context,
            "n_blocks": self.n_blocks,
            "pages": self.pages,
            "dense_energy_j": self.gpu.dense_energy_j,
            "gpu_sparse_energy_j": self.gpu.sparse_energy_j,
            "photonic_energy_j": self.photonic_total_energy_j,
            "chip_dynamic_energy_j": sum(self.photonic_energy_j[t] for t in CHIP_TERMS),
            "chip_static_energy_j": self.photonic_energy_j["static"],
            "dense_latency_s": self.gpu.dense_latency_s,
            "gpu_sparse_latency_s": self.gpu.sparse_latency_s,
            "gpu_scan_latency_s": self.gpu.time_s(self.gpu.scan_bytes),
            "photonic_latency_s": self.photonic_total_latency_s,
            "chip_latency_s": self.photonic_latency_s["chip"],
            "dense_bytes": self.gpu.dense_bytes,
            "scan_bytes": self.gpu.scan_bytes,
            "fetch_bytes": self.gpu.fetch_bytes,
            "chip_selection_energy_j": self.selection_energy_j,
            "timing_fits": None if self.timing is None else self.timing.fits,
            "chip_busy_s": None if self.timing is None else self.timing.needed_s,
            "selection_budget_s": None if self.timing is None else self.timing.budget_s,
            "background_s": None if self.timing is None else self.timing.background_s,
            "idle_s": None if self.timing is None else self.timing.idle_s,
            "architecture": None if self.plan is None else self.plan.architecture.label,
            "chip_rings": None if self.plan is None else self.plan.rings,
            "chip_photonic_area_m2": None if self.plan is None else self.plan.photonic_area_m2,
            "chip_dies": None if self.plan is None else self.plan.dies,
            **{f"baseline_{b.name}_energy_j": b.energy_j for b in self.baselines.values()},
        }


def decode_step(
    cfg: PhotonicConfig,
    ecfg: EnergyConfig,
    shape: ModelShape,
    context: int,
    laser: LaserSolution | None = None,
) -> StepComparison:
    """Compare one decode step at ``context`` tokens (≥ :func:`min_context`)."""
    if context < min_context(ecfg):
        raise KvprismError(
            f"context = {context} is invalid; allowed range: [{min_context(ecfg)}, inf) — below (k + sink + 1) "
            f"blocks of {ecfg.block_size} tokens every block is read and nothing is selected"
        )
    d = ecfg.d_sig
    arch = ecfg.chip_architecture
    gpu = gpu_step(shape, context, ecfg)
    n = context // ecfg.block_size
    n_chip = max(1, context // (ecfg.block_size * arch.superblock))  # chip rows per bank (super-blocks: two-level)
    banks = ecfg.batch * shape.n_layers * shape.kv_heads
    queries = shape.group if ecfg.gqa_reduce == "max" else 1
    # the chip's time line at this context and rate; the chip is evaluated as timed by it
    timing = decode_timing(
        cfg, n_layers=shape.n_layers, kv_heads=shape.kv_heads, tokens_per_s=ecfg.tokens_per_s, context=context,
        block_size=ecfg.block_size, queries_per_head=queries, batch=ecfg.batch, d=d, model=shape.name,
        architecture=arch,
    )  # fmt: skip
    plan = chip_plan(cfg, arch, n_layers=shape.n_layers, kv_heads=shape.kv_heads, context=context,
                     block_size=ecfg.block_size, batch=ecfg.batch, d=d)  # fmt: skip
    tcfg = timed_by_decode(cfg, timing)
    if laser is None:
        laser = required_laser(tcfg, d, ecfg.target_enob if ecfg.target_enob >= 0 else None)
    q = chip_query(tcfg, n_chip, d, min(ecfg.k, n_chip), queries=queries, block_size=ecfg.block_size * arch.superblock,
                   banks=banks, laser=laser)  # fmt: skip
    energy = {t: q.energy_j.get(t, 0.0) * banks for t in CHIP_TERMS}
    # terms of the chip's time line: light source, TIAs, calibration probes, held drives and heaters
    energy.update(step_ledger(tcfg, timing, d=d, laser_mode=ecfg.laser_mode))
    layer_lat = q.total_latency_s - q.latency_s["paging"]
    latency = {
        "chip": timing.needed_s,  # rewrites + calibrations + queries of every layer (the banks' time line)
        "kv_fetch": gpu.time_s(gpu.fetch_bytes),
        "paging": 0.0,
    }
    code_bits = cfg.program_bits if cfg.program_bits > 0 else 8 * ecfg.kv_bytes_per_element
    paging_bytes = banks * q.ring_writes_paging * code_bits / 8.0
    latency["paging"] += gpu.time_s(paging_bytes)
    energy["kv_fetch"] = gpu.energy_j(gpu.fetch_bytes)
    energy["paging_reads"] = gpu.energy_j(paging_bytes)
    rerank_bytes = rerank_read_bytes(ecfg, banks, n)
    # exact rescoring of the read signatures: 2·d FLOPs per block and query (charged like the electronic baselines)
    rerank_flops = 2.0 * d * banks * queries * rescored_blocks(ecfg, n)
    energy["rerank_reads"] = gpu.energy_j(rerank_bytes) + rerank_flops * ecfg.gpu_energy_per_flop_j
    latency["rerank"] = max(gpu.time_s(rerank_bytes), rerank_flops / ecfg.gpu_flops_per_s)
    powered_s = timing.step_s if ecfg.static_accounting == "full-step" else sum(latency.values())
    # static power (TEC and bias) of every die stack of a resident chip; one chip when time-shared
    energy["static"] = cfg.static_power_w * powered_s * (plan.dies if arch.resident else 1)
    return StepComparison(
        context=context, n_blocks=n, banks=banks, pages=q.pages, gpu=gpu, photonic_energy_j=energy,
        photonic_latency_s=latency, chip_per_bank_energy_j=q.dynamic_energy_j, chip_layer_latency_s=layer_lat,
        timing=timing, baselines=electronic_baselines(shape, context, ecfg), plan=plan,
    )  # fmt: skip


def crossover(diff: Callable[[int], float], lo: int, hi: int, points: int = 96) -> list[tuple[int, str]]:
    """Contexts in [lo, hi] where the sign of ``diff(context)`` (photonic − baseline) changes, found on a log grid of
    ``points`` contexts and refined by integer bisection: a list of (context, "photonic better" | "photonic worse"),
    each context being the first one of the new regime. ``lo`` itself starts the list when the photonic system is
    better there already. Empty: the photonic system is worse over the whole range."""
    grid = sorted({round(lo * (hi / lo) ** (i / (points - 1))) for i in range(points)})
    out: list[tuple[int, str]] = []
    prev, prev_better = grid[0], diff(grid[0]) < 0
    if prev_better:
        out.append((grid[0], "photonic better"))
    for c in grid[1:]:
        better = diff(c) < 0
        if better != prev_better:
            a, b = prev, c  # regime of a = prev_better, of b = better
            while b - a > 1:
                m = (a + b) // 2
                if (diff(m) < 0) == prev_better:
                    a = m
                else:
                    b = m
            out.append((b, "photonic better" if better else "photonic worse"))
        prev, prev_better = c, better
    return out


def ring_inventory(cfg: PhotonicConfig, ecfg: EnergyConfig, shape: ModelShape, context: int) -> dict[str, float]:
    """Rings (MRRs) and areas [m²] needed to hold every row of the step without paging (resident signatures), and
    the chip's own: rings, each row's balanced photodiode pair and d query MZMs per bank queried at once (layers run
    in turn and share them) on the photonic die;
    each row's TIA and ADC on the electronic die (``ChipDesign`` areas)."""
    rows = ecfg.batch * shape.n_layers * shape.kv_heads * (context // ecfg.block_size)
    d = ecfg.d_sig
    need = rows * d
    chip = ChipDesign.from_config(cfg, d)
    ring_area = need * cfg.ring_pitch_m**2
    pd_area = rows * cfg.pd_pair_area_m2
    # query MZMs: layers run in turn, so one set of d per bank queried at once (batch × KV heads), not per layer
    mzm_area = ecfg.batch * shape.kv_heads * d * cfg.mzm_area_m2
    return {
        "rows_needed": rows,
        "mrr_needed": need,
        "area_needed_m2": ring_area,
        "pd_area_needed_m2": pd_area,
        "mzm_area_needed_m2": mzm_area,
        "photonic_area_needed_m2": ring_area + pd_area + mzm_area,
        "electronic_area_needed_m2": rows * (cfg.tia_area_m2 + cfg.adc_area_m2) + need * cfg.ring_driver_area_m2,
        "mrr_chip": chip.mrr_count,
        "area_chip_m2": chip.ring_area_m2,
        "photonic_area_chip_m2": chip.photonic_area_m2,
        "electronic_area_chip_m2": chip.electronic_area_m2,
        "max_chip_area_m2": cfg.max_chip_area_m2,
        "max_electronic_area_m2": cfg.max_electronic_area_m2,
    }


def bank_sharing(
    cfg: PhotonicConfig, ecfg: EnergyConfig, shape: ModelShape, step: StepComparison
) -> dict[str, float | int | bool]:
    """Resident signatures vs time-shared physical banks for one decode step (``step`` from :func:`decode_step`).

    The chip has ``n_banks`` physical banks of ``rows_per_bank`` rows; the step needs one logical bank per (sequence,
    layer, KV head). When they do not all fit (``pages > 1``, the engine's rule) every row is rewritten each step:
    ``ring_writes`` drive codes of ``program_bits`` read from memory (``reprogram_bytes``; the signatures the
    electronic scan reads are ``scan_bytes``), C·V² per write, and the write time (``ring_writes`` /
    ``program_rate_rings_per_s`` + ring settling per extra page). Resident banks avoid all of it but need the area of
    every row (:func:`ring_inventory`)."""
    d = ecfg.d_sig
    writes = step.banks * step.n_blocks * d if step.pages > 1 else 0
    code_bits = cfg.program_bits if cfg.program_bits > 0 else 8 * ecfg.kv_bytes_per_element
    reprogram_bytes = writes * code_bits / 8.0
    scan = step.gpu.scan_bytes
    inv = ring_inventory(cfg, ecfg, shape, step.context)
    return {
        "logical_banks": step.banks,
        "physical_banks": cfg.n_banks,
        "shared": step.pages > 1,
        "rewrites_per_physical_bank": (writes / d / cfg.rows_per_bank / cfg.n_banks) if writes else 0.0,
        "ring_writes": writes,
        "reprogram_bytes": reprogram_bytes,
        "scan_bytes": scan,
        "reprogram_vs_scan_bytes": reprogram_bytes / scan if scan else 0.0,
        "reprogram_energy_j": step.photonic_energy_j["paging_programming"] + step.photonic_energy_j["paging_reads"],
        "reprogram_time_s": step.photonic_latency_s["paging"],
        "resident_photonic_area_m2": inv["photonic_area_needed_m2"],
        "resident_electronic_area_m2": inv["electronic_area_needed_m2"],
        "chip_photonic_area_m2": inv["photonic_area_chip_m2"],
    }


def thermo_optic_reference(cfg: PhotonicConfig, ecfg: EnergyConfig) -> dict[str, float]:
    """Static heater power an SOI thermo-optic weight bank of the same ring geometry would need: a resonance shift
    Δλ needs a round-trip phase 2π·Δλ/FSR, i.e. P = P_π · 2Δλ/FSR per ring (P_π roughly length-independent for
    thermo-optic shifters). Reported per ring for one FWHM and for the EO range 2·tuning·V_max, and for every ring
    of the chip held one FWHM off (EO holds a weight at ~0 W: the electrodes are capacitive)."""
    des = ChipDesign.from_config(cfg, ecfg.d_sig)
    fsr, fwhm = des.fsr_m, des.fwhm_m
    per_fwhm = ecfg.thermo_optic_p_pi_w * 2.0 * fwhm / fsr
    eo_range = 2.0 * cfg.tuning_m_per_v * cfg.v_max_v
    return {
        "p_pi_w": ecfg.thermo_optic_p_pi_w,
        "fsr_m": fsr,
        "fwhm_m": fwhm,
        "heater_w_per_ring_fwhm": per_fwhm,
        "heater_w_per_ring_eo_range": ecfg.thermo_optic_p_pi_w * 2.0 * eo_range / fsr,
        "heater_w_chip_fwhm": per_fwhm * cfg.physical_rows * ecfg.d_sig,
        "eo_energy_per_update_j": cfg.ring_capacitance_f * mean_ring_drive_v2(cfg),
    }
