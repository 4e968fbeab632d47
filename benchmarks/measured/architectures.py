"""Time-shared vs resident vs two-level chips for the Qwen2.5-7B shape: binding constraint and margin, area/dies,
selection energy per step against the best electronic selector. Run from the repository root:

    nice .venv/bin/python benchmarks/measured/architectures.py tfln-timeshared-32 > benchmarks/measured/architectures-qwen2.5-7b.md
"""

from __future__ import annotations

import sys

from kvprism.energy.compare import decode_step
from kvprism.energy.config import EnergyConfig, model_shape
from kvprism.photonics.config import PhotonicConfig
from kvprism.photonics.design import timed_by_decode
from kvprism.photonics.feasibility import feasibility, trim_check

PRESET = sys.argv[1] if len(sys.argv) > 1 else "tfln-timeshared-32"
ARCHS = ("time-shared", "resident", "two-level:8")
CONTEXTS = (4096, 32768, 131072)
RATES = (20.0, 200.0)


def margins(cfg, step) -> dict[str, float]:
    """Each checked quantity over its limit (> 1: violated)."""
    t, p = step.timing, step.plan
    tc = timed_by_decode(cfg, t)
    out = {"selection time (busy / budget)": t.needed_s / t.budget_s}
    if t.chip_banks:
        out["background (appends + recal / idle)"] = t.background_s / t.idle_s
        out[f"die stacks (/ {t.max_dies})"] = p.dies / t.max_dies
        out["heaters per die (/ cap)"] = p.heater_power_per_die_w / cfg.trim_max_chip_power_w
    else:
        from kvprism.photonics.design import ChipDesign

        des = ChipDesign.from_config(tc, step.plan.rings // step.plan.rows)
        out["photonic area (/ reticle)"] = des.photonic_area_m2 / cfg.max_chip_area_m2
        out["heaters (/ cap)"] = trim_check(tc, des).chip_power_w / cfg.trim_max_chip_power_w
    return out


def main() -> None:
    cfg = PhotonicConfig.preset(PRESET)
    shape = model_shape("qwen2.5-7b")
    print(f"# {' '.join(['nice .venv/bin/python', *sys.argv])}")
    print(f"# preset {PRESET} (n_lines {cfg.n_lines}), qwen2.5-7b (28 layers x 4 KV heads), B 32, k 6, d_sig "
          f"{cfg.n_lines}, laser comb, static over the full step; feasibility Monte Carlo seed 0")  # fmt: skip
    print("# binding = the checked quantity with the largest ratio to its limit (> 1: violated); violations = "
          "feasibility() count (all checks, Monte Carlo included)\n")  # fmt: skip
    print("| arch | ctx | tok/s | violations | binding (ratio) | banks x rows | rings | photonic mm² | dies | "
          "heaters W | chip selection J/step | best electronic J/step | ratio |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for arch in ARCHS:
        kind, _, s = arch.partition(":")
        for rate in RATES:
            ecfg = EnergyConfig(d_sig=cfg.n_lines, tokens_per_s=rate, architecture=kind, superblock=int(s or 1))
            for ctx in CONTEXTS:
                step = decode_step(cfg, ecfg, shape, ctx)
                t, p = step.timing, step.plan
                rep = feasibility(cfg, timing=t)
                m = margins(cfg, step)
                name = max(m, key=m.__getitem__)
                best = step.best_baseline
                print(f"| {arch} | {ctx >> 10}K | {rate:g} | {len(rep.violations)} | {name} {m[name]:.3g} | "
                      f"{p.physical_banks:,} x {p.rows_per_physical_bank:,} | {p.rings:,} | "
                      f"{p.photonic_area_m2 * 1e6:,.0f} | {p.dies} | {p.heater_power_w:,.3g} | "
                      f"{step.selection_energy_j:.3g} | {best.energy_j:.3g} ({best.name}) | "
                      f"{step.selection_energy_j / best.energy_j:,.3g} |", flush=True)  # fmt: skip
                for v in rep.violations:
                    print(f"|  |  |  |  | ✗ {v.replace('|', '/')} |  |  |  |  |  |  |  |  |")


if __name__ == "__main__":
    main()
