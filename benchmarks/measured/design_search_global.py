"""Assemble the six global design searches (Qwen2.5-7B shape; 4K, 32K, 128K tokens; 20 and 200 tokens/s) into
design-search-global-qwen2.5-7b.{md,json,png}.

Run after the searches (each `kvprism design search ... --out runs/design-global/qwen2.5-7b-<N>-<R>tps`):

    .venv/bin/python benchmarks/measured/design_search_global.py runs/design-global
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
STEM = "design-search-global-qwen2.5-7b"
CONTEXTS = ("4k", "32k", "128k")
RATES = (20, 200)
TRIALS, POPULATION, MAX_BANKS = 150, 30, 16
COMMAND = (
    "OMP_NUM_THREADS=1 nice -n 10 kvprism design search --model-shape qwen2.5-7b --tokens-per-s {R} --context {N} "
    f"--trials {TRIALS} --population {POPULATION} --base benchmarks/measured/design-search-global-base.toml "
    f"--max-banks {MAX_BANKS} --seed 0 --out runs/design-global/qwen2.5-7b-{{N}}-{{R}}tps"
)


OVERVIEW_COLS = ("context", "tokens/s", "scored/trials", "feasible one-stage", "feasible two-stage",
                 "best electronic selector (selection energy/step)", "result")  # fmt: skip
CLOSEST_COLS = ("context", "tokens/s", "architecture", "closest trial", "violated", "violated constraints (margin)",
                "binding (best margin)")  # fmt: skip


def _study(run: Path):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name="kvprism-design", storage=f"sqlite:///{run / 'study.db'}")


def _fmt(m: dict) -> str:
    unit = f" {m['unit']}" if m.get("unit") else ""
    rel = ">" if m["sense"] == "≤" else "<"
    return f"{m['constraint']} {m['value']:.3g} {rel} {m['limit']:.3g}{unit} ({m['margin']:.2g})"


def _compact(t: dict) -> dict:
    obj = t.get("objectives") or {}
    return {
        "number": t["number"], "state": t["state"], "architecture": t.get("architecture"), "rerank": t.get("rerank"),
        "section": t.get("section"), "feasible": t.get("feasible"), "recall": obj.get("recall"),
        "selection_energy_j": t.get("selection_energy_j"), "area_m2": obj.get("area_m2"),
        "added_latency_s": obj.get("added_latency_s"), "fields": t.get("fields"), "timed_fields": t.get("timed_fields"),
        "violated": sorted((k for k, m in (t.get("margins") or {}).items() if m.get("margin", 0) > 0)),
        "invalid": t.get("invalid"), "error": t.get("error"),
    }  # fmt: skip


def main(root: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kvprism.search.search import plot_trials

    runs, overview, closest_rows = {}, [], []
    fig, axes = plt.subplots(2, 3, figsize=(16, 9.5), squeeze=False)
    for j, n in enumerate(CONTEXTS):
        for i, r in enumerate(RATES):
            run = Path(root) / f"qwen2.5-7b-{n}-{r}tps"
            data = json.loads((run / "pareto.json").read_text())
            key = f"{n}-{r}tps"
            runs[key] = {
                "command": COMMAND.format(N=n, R=r),
                "settings": data["settings"], "n_trials": data["n_trials"], "n_feasible": data["n_feasible"],
                "n_invalid": data["n_invalid"], "n_errors": data["n_errors"], "sections": data["sections"],
                "best_baseline": data["best_baseline"], "closest": data["closest"], "binding": data["binding"],
                "pareto": [_compact(t) for t in data["trials"] if t["pareto"]],
                "closest_trials": [_compact(t) for t in data["trials"]
                                   if t["number"] in {c["trial"] for c in data["closest"].values()}],
                "trials": [{k: v for k, v in _compact(t).items() if k not in ("fields", "timed_fields")}
                           for t in data["trials"]],
                "summary_md": (run / "summary.md").read_text(),
            }  # fmt: skip
            scored = [t for t in data["trials"] if t.get("objectives")]
            best = data["best_baseline"]
            sec = data["sections"]
            if data["pareto"]:
                p = [t for t in data["trials"] if t["pareto"]]
                top = max(p, key=lambda t: t["objectives"]["recall"])
                ratio = top["selection_energy_j"] / best["energy_j"] if best else math.nan
                result = (f"{len(p)} Pareto points; best recall {top['objectives']['recall']:.3f} "
                          f"({top['architecture']}, rerank {top['rerank']}) at {top['selection_energy_j']:.3g} J = "
                          f"{ratio:.2g}× {best['name']}")  # fmt: skip
            else:
                result = "no feasible point"
            overview.append([n, str(r), f"{len(scored)}/{data['n_trials']}",
                             f"{sec['one-stage']['feasible']}/{sec['one-stage']['scored']}",
                             f"{sec['two-stage']['feasible']}/{sec['two-stage']['scored']}",
                             f"{best['name']} {best['energy_j']:.3g} J" if best else "–", result])  # fmt: skip
            for arch, c in data["closest"].items():
                binds = [b for b in data["binding"].get(arch, []) if b["binds"]]
                closest_rows.append([
                    n, str(r), arch, f"#{c['trial']} ({c['section']})", str(len(c["violated"])),
                    "; ".join(_fmt(v) for v in c["violated"]),
                    "; ".join(f"{b['constraint']} ({b['best_margin']:.2g})" for b in binds) or "–",
                ])  # fmt: skip
            ax = axes[i][j]
            plot_trials(ax, _study(run))
            ax.set_title(f"{n} tokens, {r} tokens/s: {data['n_feasible']} feasible of {len(scored)} scored",
                         fontsize=9)  # fmt: skip
    fig.suptitle("Global timed design search, Qwen2.5-7B shape: selection energy per decode step vs recall@16 "
                 "(filled: feasible; ×: infeasible; dashed: best electronic selector)", fontsize=10)  # fmt: skip
    fig.tight_layout()
    fig.savefig(HERE / f"{STEM}.png", dpi=110)
    plt.close(fig)

    def table(cols, rows):
        return ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols), *("| " + " | ".join(x) + " |" for x in rows)]

    lines = [
        "# Global timed design search, Qwen2.5-7B shape (4K / 32K / 128K tokens, 20 / 200 tokens/s)",
        "",
        "Commands (CPU, one torch thread, the SmolLM2 8K reference set from `kvprism design capture --model smollm2 "
        "--context 8192`, its first 16 (layer, KV head) banks):",
        "",
        "```",
        *(COMMAND.format(N=n, R=r) for n in CONTEXTS for r in RATES),
        f".venv/bin/python benchmarks/measured/design_search_global.py runs/design-global   # this file, "
        f"{STEM}.json, {STEM}.png",
        "```",
        "",
        "Wall time: 181–211 s per run (19 min for the six) on 2 CPU cores shared with other runs (2026-12-06).",
        "",
        "Searched (global: the sourced range of each parameter, `kvprism design space`; not a neighbourhood of a "
        "preset): ring radius (from where the bend loss still allows the sourced Q; pitch and electrode capacitance "
        "follow it), loaded Q (cut to what the drawn ring reaches), comb spacing, signature width d (16/32/64), rows "
        "per bank, banks, laser power per line, ADC/DAC/programming bits, encoding, EO tuning, V_max, open- or "
        "closed-loop calibration (rewrite mode, iterations and probe averages only when closed-loop), fabrication "
        "spread, trim mechanism, architecture (time-shared, resident, two-level:4/8/16) and rerank (1, 2, 4). The "
        "detection bandwidth is set by the decode timing. Every other value comes from the pinned base "
        "`design-search-global-base.toml` (tfln-literature at commit 7bf8707). NSGA-II, seed 0, "
        f"{TRIALS} trials per run (population {POPULATION}); recall@16 on the reference set, energy and latency per "
        "decode step of the Qwen2.5-7B shape at the searched context.",
        "",
        "Every constraint is timed at (shape, rate, context): the timed `feasibility()` and the latency budget, "
        "which is one number: the selection share of the decode step, selection_time_fraction / R (5 ms at 20 "
        "tokens/s, 0.5 ms at 200). The chip is timed on that share less the selection's HBM reads, so its time "
        "line and the reads fit the share together. One-stage and two-stage points are judged apart, by the "
        "criteria stated in each run's section below; rescoring relaxes no chip requirement.",
        "",
        "## Overview",
        "",
        *table(OVERVIEW_COLS, overview),
        "",
        "## Closest point of each architecture (where it has no feasible point)",
        "",
        "Violated constraints of the closest point (fewest violations, then least total margin): value against "
        "limit (margin: value/limit − 1 for an upper bound, 1 − value/limit for a lower bound, difference/10 for "
        "dB). Binding: constraints that every scored trial of the architecture violates, with the smallest margin "
        "any trial reached.",
        "",
        *table(CLOSEST_COLS, closest_rows),
        "",
        f"![selection energy vs recall]({STEM}.png)",
        "",
        "Limits of this measurement: recall is measured on the SmolLM2 8K reference set (128 blocks of 64 per bank, "
        "16 banks), not at the searched context; two-level chips with rerank·k ≥ the reference set's super-blocks "
        "choose every super-block there, so their recall is that of exact rescoring (each run's note says how many). "
        f"{TRIALS} trials per run sample a 20-dimensional space sparsely: an infeasible verdict is the best point "
        "found, not a proof that none exists; the binding constraints say which limits the sampled points never met.",
        "",
    ]
    for n in CONTEXTS:
        for r in RATES:
            md = runs[f"{n}-{r}tps"]["summary_md"]
            lines += [md, ""]
    (HERE / f"{STEM}.md").write_text("\n".join(lines))
    for v in runs.values():
        v.pop("summary_md")
    (HERE / f"{STEM}.json").write_text(json.dumps(runs, indent=1, default=float) + "\n")
    print(f"wrote {HERE / STEM}.md, .json, .png")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/design-global")
