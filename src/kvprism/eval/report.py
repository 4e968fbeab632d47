"""Summaries, plots and a Markdown report from a results directory (``results.jsonl`` written by the runner).

``write_report(dir)`` writes, atomically and together (every file is staged first and renamed only once all were
written, so a failure part-way -- a full disk -- leaves the previous report files as they were):

- ``summary.json``: per mode and configuration the cell count, accuracy (``accuracy``: right / scored cells with
  the 95 % Wilson score interval; ``paired``: answers paired by prompt with dense and, for chips and the seed's
  scorer, with exact selection at the same k -- both right / only one right / neither, McNemar's exact p), read
  fraction (mean / max), needle hit, block recall@k, signature recall@k, attention mass captured and KL at the first
  answer token (each as mean/min/max/n, NaN = not applicable skipped), the cells where selection could not restrict
  attention, the context × depth grids and the time split (prefill, counted once per prefilled prompt, vs decode);
- ``heatmap_<mode>_<config>.png``: accuracy (``niah``) or block recall (``recall``) over context × depth;
- ``ksweep_<mode>.png``: accuracy / block recall and read fraction against k per method;
- ``report.md``: the tables above plus the feasibility verdict of every photonic preset used.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kvprism.atomic import AtomicBatch
from kvprism.errors import KvprismError
from kvprism.eval import metrics as M
from kvprism.eval.plots import heatmap, pyplot
from kvprism.eval.store import REQUIRED_FIELDS, RESULTS_FILE, dedupe, read_cells

METRICS = (
    "correct",
    "match_fraction",
    "read_fraction_mean",
    "read_fraction_max",
    "needle_hit",
    "block_recall",
    "signature_recall",
    "signature_recall_steps",
    "mass_captured",
    "kl_first_token",
)


def _vals(rows: list[dict[str, Any]], key: str) -> list[float]:
    return [float("nan") if r.get(key) is None else float(r[key]) for r in rows]


def _per_layer_means(cells: list[dict[str, Any]]) -> dict[str, list[list[float | None]]]:
    """Mean over cells of each first-step ``per_layer`` table (``[L][Hkv]``; None entries skipped)."""
    import torch

    out: dict[str, list[list[float | None]]] = {}
    names = sorted({n for c in cells for n in (c.get("per_layer") or {})})
    for name in names:
        tables = [c["per_layer"][name] for c in cells if name in (c.get("per_layer") or {})]
        t = torch.tensor([[[float("nan") if v is None else v for v in row] for row in tab] for tab in tables])
        finite = torch.isfinite(t)
        mean = torch.where(finite, t, torch.zeros_like(t)).sum(0) / finite.sum(0).clamp(min=1)
        mean = torch.where(finite.any(0), mean, torch.full_like(mean, float("nan")))
        out[name] = [[None if v != v else round(float(v), 4) for v in row] for row in mean]
    return out


def feasibility_verdicts(presets: list[str]) -> dict[str, dict[str, Any]]:
    """``preset -> {"feasible": bool | None, "violations": [str]}`` from ``kvprism.photonics.feasibility(cfg)``
    (``feasible`` is None with a ``note`` when ``kvprism.photonics`` is unavailable)."""
    out: dict[str, dict[str, Any]] = {}
    if not presets:
        return out
    from kvprism.photonics import PhotonicConfig, feasibility

    for p in presets:
        try:
            rep = feasibility(PhotonicConfig.preset(p), seed=0)
            violations = [str(v) for v in getattr(rep, "violations", [])]
            out[p] = {"feasible": not violations, "violations": violations}
        except Exception as exc:  # a broken preset must not hide the rest of the report
            out[p] = {"feasible": None, "violations": [], "note": f"feasibility failed: {exc}"}
    return out


def _config_labels(rows: list[dict[str, Any]]) -> dict[tuple[str, str, str | None], str]:
    """(mode, config, settings_hash) -> the name a configuration is reported under: its config name, with
    ``@<hash>`` appended when one store holds the same name under several settings (never averaged together)."""
    hashes: dict[tuple[str, str], set[str | None]] = defaultdict(set)
    for r in rows:
        hashes[(r["mode"], r["config"])].add(r.get("settings_hash"))
    out = {}
    for (mode, config), hs in hashes.items():
        for h in hs:
            out[(mode, config, h)] = config if len(hs) == 1 else f"{config}@{(h or 'unrecorded')[:8]}"
    return out


def _by_task(cells: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Accuracy with n and the 95 % interval per ``"<task> @ <context>"``."""
    groups: dict[str, list[Any]] = defaultdict(list)
    for c in sorted(cells, key=lambda c: (str(c.get("task")), c["context"])):
        groups[f"{c.get('task')} @ {c['context']}"].append(c.get("correct"))
    return {key: M.count_true(vals) for key, vals in groups.items()}


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``summary.json`` content of a list of cells (see module docstring)."""
    labels = _config_labels(rows)
    rows = [{**r, "config": labels[(r["mode"], r["config"], r.get("settings_hash"))]} for r in rows]
    by_mode: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        by_mode[r["mode"]][r["config"]].append(r)
    import pandas as pd

    df = pd.DataFrame(
        {
            "prefill_id": [r["prefill_id"] for r in rows],
            "prefill_s": [float(r["prefill_s"]) for r in rows],
            "config": [r["config"] for r in rows],
            "decode_s": [float(r["decode_s"]) for r in rows],
            "decode_steps": [int(r["decode_steps"]) for r in rows],
            "reference_s": [float(r.get("reference_s") or 0.0) for r in rows],
        }
    )
    prefill_per_prompt = df.drop_duplicates("prefill_id")["prefill_s"]  # each prompt is prefilled once
    per_config = df.groupby("config", sort=False)[["decode_s", "decode_steps"]].sum()
    decode_by_config = {str(c): float(v) for c, v in per_config["decode_s"].items()}
    tokens_by_config = {str(c): int(v) for c, v in per_config["decode_steps"].items()}
    reference_s = float(df["reference_s"].sum())
    prefill_s = float(prefill_per_prompt.sum())
    decode_s = sum(decode_by_config.values()) + reference_s
    total = prefill_s + decode_s
    summary: dict[str, Any] = {
        "cells": len(rows),
        "time": {
            "prefill_s": round(prefill_s, 3),
            "prefills": len(prefill_per_prompt),
            "decode_s": round(decode_s, 3),
            "decode_reference_steps_s": round(reference_s, 3),
            "prefill_share": round(prefill_s / total, 4) if total else None,
            "decode_s_per_config": {k: round(v, 3) for k, v in decode_by_config.items()},
            "decode_s_per_token": {
                k: round(v / tokens_by_config[k], 4) if tokens_by_config[k] else None
                for k, v in decode_by_config.items()
            },
        },
        "modes": {},
    }
    presets = sorted({r["preset"] for r in rows if r.get("preset")})
    summary["presets"] = feasibility_verdicts(presets)
    for mode, configs in by_mode.items():
        mode_out: dict[str, Any] = {}
        for name, cells in configs.items():
            first = cells[0]
            entry: dict[str, Any] = {
                "method": first["method"],
                "k": first.get("k"),
                "preset": first.get("preset"),
                "cells": len(cells),
                "not_restricted": sum(1 for c in cells if c["method"] != "dense" and not c.get("restricted")),
                "cannot_restrict": sum(1 for c in cells if c["method"] != "dense" and not c.get("can_restrict")),
            }
            for m in METRICS:
                entry[m] = M.summarize(_vals(cells, m))
            entry["accuracy"] = M.count_true([c.get("correct") for c in cells])
            entry["by_task"] = _by_task(cells)
            entry["per_layer_head"] = _per_layer_means(cells)
            grid: dict[str, dict[str, Any]] = defaultdict(dict)
            metric = "correct" if mode == "niah" else "block_recall"
            for ctx in sorted({c["context"] for c in cells}):
                for depth in sorted({c["depth"] for c in cells}):
                    sel = [c for c in cells if c["context"] == ctx and c["depth"] == depth]
                    grid[str(ctx)][f"{depth:g}"] = M.summarize(_vals(sel, metric))["mean"] if sel else None
            entry["grid_metric"] = metric
            entry["grid"] = dict(grid)
            mode_out[name] = entry
        for name, entry in mode_out.items():
            entry["paired"] = _paired(name, configs, mode_out)
            entry["drift"] = answer_drift(name, configs, mode_out)
        summary["modes"][mode] = mode_out
    return summary


def point_key(row: dict[str, Any]) -> tuple:
    """The prompt a cell answered: (task, haystack, values, context, depth, seed)."""
    return (
        row.get("task"),
        row.get("haystack"),
        row.get("values"),
        row["context"],
        float(row["depth"]),
        row.get("seed"),
    )


def paired_outcomes(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> dict[str, Any] | None:
    """:func:`kvprism.eval.metrics.paired_counts` of two configurations' scored cells on the prompts both answered
    (None when they share none)."""
    right_b = {point_key(r): bool(r["correct"]) for r in b if r.get("correct") is not None}
    pairs = [
        (bool(r["correct"]), right_b[point_key(r)])
        for r in a
        if r.get("correct") is not None and point_key(r) in right_b
    ]
    if not pairs:
        return None
    return M.paired_counts([x for x, _ in pairs], [y for _, y in pairs])


def comparison_references(name: str, entries: dict[str, dict[str, Any]]) -> list[str]:
    """The configurations a configuration is compared with: dense (for every selection), and the first exact
    configuration of the same k (for photonic and seed-as-published selection)."""
    e = entries[name]
    if e["method"] == "dense":
        return []
    refs = [n for n, x in entries.items() if x["method"] == "dense"][:1]
    if e["method"] not in ("exact", "oracle"):
        refs += [n for n, x in entries.items() if x["method"] == "exact" and x.get("k") == e.get("k")][:1]
    if e["method"] == "exact":  # does the budget hold where the signature does not?
        refs += [n for n, x in entries.items() if x["method"] == "oracle" and x.get("k") == e.get("k")][:1]
    return refs


def answer_drift(
    name: str, cells: dict[str, list[dict[str, Any]]], entries: dict[str, dict[str, Any]]
) -> dict[str, Any] | None:
    """Where a configuration's answers leave dense's, over the prompts where dense answered right and it did not:
    the answer token where the two first differ, the needle hit and mass captured at that decode step, and whether
    the oracle at the same k answered those prompts right (the budget holds: the signature is at fault) or not.
    None for dense, or without a dense configuration with answer ids."""
    e = entries[name]
    dense = [n for n, x in entries.items() if x["method"] == "dense"][:1]
    if e["method"] == "dense" or not dense:
        return None
    ref = {point_key(r): r for r in cells[dense[0]] if r.get("answer_ids") is not None}
    oracle = [
        n
        for n, x in entries.items()
        if x["method"] == "oracle" and x.get("k") == e.get("k") and e["method"] != "oracle"
    ][:1]
    oracle_right = {point_key(r): bool(r["correct"]) for r in cells[oracle[0]]} if oracle else {}
    lost = [r for r in cells[name] if point_key(r) in ref and ref[point_key(r)].get("correct") and not r.get("correct")]
    at, hits, masses, oracle_holds = [], [], [], []
    for r in lost:
        i = M.first_answer_divergence(r.get("answer_ids"), ref[point_key(r)]["answer_ids"])
        if i is None:
            continue
        at.append(i)
        steps = r.get("steps") or {}
        for key, out in (("needle_hit", hits), ("mass_captured", masses)):
            vals = steps.get(key) or []
            if i < len(vals) and vals[i] is not None:
                out.append(vals[i])
        if point_key(r) in oracle_right:
            oracle_holds.append(oracle_right[point_key(r)])
    return {
        "lost": len(lost),
        "diverge_at": M.summarize(at),
        "needle_hit_at_divergence": M.summarize(hits),
        "mass_captured_at_divergence": M.summarize(masses),
        "oracle": oracle[0] if oracle else None,
        "oracle_right_where_lost": M.count_true(oracle_holds) if oracle else None,
    }


def _paired(name: str, cells: dict[str, list[dict[str, Any]]], entries: dict[str, dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for ref in comparison_references(name, entries):
        counts = paired_outcomes(cells[name], cells[ref])
        if counts is not None:
            out[ref] = counts
    return out


def accuracy_lines(summary: dict[str, Any]) -> list[str]:
    """One line per answered configuration: accuracy with n and the 95 % interval, then its paired comparisons."""
    lines = []
    for mode, configs in summary["modes"].items():
        for name, e in configs.items():
            acc = e.get("accuracy")
            if not acc or not acc["n"]:
                continue
            pairs = "; ".join(
                f"vs {ref}: " + M.format_paired(c, name, ref) for ref, c in (e.get("paired") or {}).items()
            )
            lines.append(f"{mode} {name}: {M.format_proportion(acc)}" + (f"; {pairs}" if pairs else ""))
    return lines


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _save(fig: Any, path: Path, batch: AtomicBatch | None) -> None:
    def write(p: Path) -> None:
        fig.savefig(p, dpi=110, format="png")

    if batch is None:
        with AtomicBatch() as own:
            own.write(path, write)
    else:
        batch.write(path, write)


def plot_heatmap(entry: dict[str, Any], title: str, path: Path, batch: AtomicBatch | None = None) -> Path:
    """Context × depth heatmap of ``entry["grid"]`` (values in [0, 1]; empty cells blank); staged in ``batch``
    when given, else written atomically at once."""
    grid = entry["grid"]
    ctxs = sorted(grid, key=int)
    depths = sorted({d for row in grid.values() for d in row}, key=float)
    data = [[float("nan") if grid[c].get(d) is None else grid[c][d] for d in depths] for c in ctxs]
    return heatmap(
        data, path, xticks=depths, yticks=ctxs, xlabel="needle depth", ylabel="context (tokens)", title=title,
        colorbar=entry["grid_metric"], cmap="RdYlGn", vmin=0.0, vmax=1.0, annotate=True, batch=batch,
    )  # fmt: skip


def plot_ksweep(mode: str, configs: dict[str, Any], path: Path, batch: AtomicBatch | None = None) -> Path | None:
    """Accuracy (or block recall) and read fraction against k, one line per method/preset; dense as a line."""
    plt = pyplot()
    series: dict[str, list[tuple[int, Any, Any]]] = defaultdict(list)
    metric = "correct" if mode == "niah" else "block_recall"
    for entry in configs.values():
        if entry["method"] == "dense":
            continue
        label = entry["preset"] or entry["method"]
        series[label].append((entry["k"], entry[metric]["mean"], entry["read_fraction_mean"]["mean"]))
    if not series:
        return None
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.4))
    for label, pts in sorted(series.items()):
        pts.sort(key=lambda p: p[0])
        ks = [p[0] for p in pts]
        a1.plot(ks, [p[1] for p in pts], marker="o", label=label)
        a2.plot(ks, [p[2] for p in pts], marker="o", label=label)
    dense = configs.get("dense")
    if dense and dense[metric]["mean"] is not None:
        a1.axhline(dense[metric]["mean"], color="k", ls="--", lw=1, label="dense")
    a1.set_xlabel("k (blocks)")
    a1.set_ylabel("accuracy" if metric == "correct" else "block recall@k")
    a1.set_ylim(-0.02, 1.02)
    a2.set_xlabel("k (blocks)")
    a2.set_ylabel("read fraction (mean)")
    a2.set_ylim(0, 1.02)
    for ax in (a1, a2):
        ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
    a1.legend(fontsize=7)
    fig.suptitle(f"k sweep ({mode})", fontsize=10)
    fig.tight_layout()
    try:
        _save(fig, path, batch)
    finally:
        plt.close(fig)
    return path


def _fmt(s: dict[str, Any] | None, digits: int = 3) -> str:
    if not s or s.get("mean") is None:
        return "–"
    return f"{s['mean']:.{digits}f}"


def _paired_markdown(configs: dict[str, Any]) -> list[str]:
    rows = [
        f"| {name} | {ref} | {c['n']} | {c['both']} | {c['only_a']} | {c['only_b']} | {c['neither']} | "
        f"{c['mcnemar_p']:.2g} |"
        for name, e in configs.items()
        for ref, c in (e.get("paired") or {}).items()
    ]
    if not rows:
        return []
    return [
        "Paired answers (same prompts): how often a configuration and its reference were right together or alone; "
        "McNemar's exact test on the discordant pairs (a small p: the difference is unlikely to be chance).",
        "",
        "| config | vs | n | both right | only config | only reference | neither | McNemar p |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]


def _task_markdown(configs: dict[str, Any]) -> list[str]:
    """Accuracy per task and context (rows) and configuration (columns), each with n and the 95 % interval."""
    keys = list(dict.fromkeys(k for e in configs.values() for k in (e.get("by_task") or {})))
    if len(keys) < 2 or all(not (e.get("by_task") or {}).get(k, {}).get("n") for e in configs.values() for k in keys):
        return []
    names = list(configs)
    return [
        "Accuracy per task and context (n, 95 % Wilson interval):",
        "",
        "| task @ context | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
        *(
            f"| {k} | " + " | ".join(M.format_proportion(configs[n].get("by_task", {}).get(k)) for n in names) + " |"
            for k in keys
        ),
        "",
    ]


def _drift_markdown(configs: dict[str, Any]) -> list[str]:
    rows = []
    for name, e in configs.items():
        d = e.get("drift")
        if not d or not d["lost"]:
            continue
        oracle = "–" if d["oracle"] is None else f"{M.format_proportion(d['oracle_right_where_lost'])} ({d['oracle']})"
        rows.append(
            f"| {name} | {d['lost']} | {_fmt(d['diverge_at'], 1)} ({_fmt({'mean': d['diverge_at']['min']}, 0)}–"
            f"{_fmt({'mean': d['diverge_at']['max']}, 0)}) | {_fmt(d['needle_hit_at_divergence'], 2)} | "
            f"{_fmt(d['mass_captured_at_divergence'])} | {oracle} |"
        )
    if not rows:
        return []
    return [
        "Where answers leave dense's (prompts dense answered right and the configuration did not): the answer token "
        "where the two first differ (mean, range), the needle hit and attention mass captured at that step, and the "
        "oracle at the same k on those prompts (right: the budget suffices, the signature missed; wrong: the budget "
        "itself is short).",
        "",
        "| config | lost | first differing token | needle hit there | mass captured there | oracle right |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
    ]


def render_markdown(summary: dict[str, Any], images: list[str]) -> str:
    t = summary["time"]
    lines = ["# kvprism evaluation report", ""]
    lines += [
        f"{summary['cells']} cells. Time split: prefill {t['prefill_s']:.1f} s over {t['prefills']} prompts "
        f"(once per prompt, shared by all configurations), decode {t['decode_s']:.1f} s "
        f"(prefill share {t['prefill_share']:.0%})."
        if t["prefill_share"] is not None
        else f"{summary['cells']} cells.",
        "",
    ]
    for mode, configs in summary["modes"].items():
        lines += [f"## {mode}", ""]
        lines += [
            "| config | cells | accuracy (n, 95 % CI) | read frac (mean / max) | needle hit | block recall@k | signature recall@k "
            "| mass captured | KL first token | not restricted | cannot restrict | decode s/token |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, e in configs.items():
            lines.append(
                f"| {name} | {e['cells']} | {M.format_proportion(e.get('accuracy'))} | "
                f"{_fmt(e['read_fraction_mean'])} / "
                f"{_fmt({'mean': e['read_fraction_max']['max']})} | {_fmt(e['needle_hit'], 2)} | "
                f"{_fmt(e['block_recall'])} | {_fmt(e['signature_recall'])} | {_fmt(e['mass_captured'])} | "
                f"{_fmt(e['kl_first_token'], 4)} | {e['not_restricted']} | {e['cannot_restrict']} | "
                f"{t['decode_s_per_token'].get(name) or '–'} |"
            )
        lines.append("")
        lines += _paired_markdown(configs)
        lines += _task_markdown(configs)
        lines += _drift_markdown(configs)
        flagged = [n for n, e in configs.items() if e["not_restricted"] or e["cannot_restrict"]]
        if flagged:
            lines += [
                "Cells counted under *not restricted* read every cached token (read fraction 1): selection could not "
                "restrict attention there and they are no evidence for sparsity; *cannot restrict* cells had at most "
                f"k eligible blocks outside sink and window. Affected configurations: {', '.join(flagged)}.",
                "",
            ]
    if summary["presets"]:
        lines += ["## Photonic presets: feasibility", "", "| preset | verdict | violations |", "|---|---|---|"]
        for p, v in summary["presets"].items():
            verdict = {True: "feasible", False: "NOT feasible", None: "unknown"}[v["feasible"]]
            detail = "; ".join(v["violations"]) or v.get("note", "none")
            lines.append(f"| {p} | {verdict} | {detail} |")
        lines.append("")
    if images:
        lines += ["## Plots", ""] + [f"![{Path(i).stem}]({i})" for i in images] + [""]
    return "\n".join(lines)


def load_cells(
    results_dir: str | Path, *, skip_corrupt: bool = False, on_note: Callable[[str], None] | None = None
) -> list[dict[str, Any]]:
    """The cells of a results directory, checked and deduplicated by key.

    Raises:
        KvprismError: the directory does not exist, or holds no ``results.jsonl``.
        CorruptStoreError: a corrupt or misshapen line (without ``skip_corrupt``), naming file, line and field.
    """
    d = Path(results_dir)
    if not d.is_dir():
        what = "is not a directory" if d.exists() else "does not exist"
        raise KvprismError(f"results directory {d} {what}")
    path = d / RESULTS_FILE
    if not path.exists():
        raise KvprismError(f"{path} does not exist; run `kvprism niah` or `kvprism recall` with --out {d} first")
    note = on_note or (lambda _msg: None)
    read = read_cells(path, skip_corrupt=skip_corrupt, required=REQUIRED_FIELDS)
    if read.skipped:
        where = ", ".join(str(line) for line, _ in read.skipped[:5]) + (" ..." if len(read.skipped) > 5 else "")
        note(f"skipped {len(read.skipped)} corrupt line(s) of {path} (line {where}; first: {read.skipped[0][1]})")
    if read.torn_tail:
        note(f"ignored an incomplete last line of {path} (a run in progress or interrupted mid-write)")
    rows, dropped = dedupe(read.rows)
    if dropped:
        note(f"{path}: {dropped} duplicate cell(s) (same key) ignored; the first of each was kept")
    return rows


def write_report(
    results_dir: str | Path, *, skip_corrupt: bool = False, on_note: Callable[[str], None] | None = None
) -> dict[str, Path]:
    """Write ``summary.json``, heatmaps, k-sweep plots and ``report.md`` into ``results_dir``; returns their paths.

    All files are staged and renamed together at the end (see module docstring).

    Args:
        results_dir: a directory written by the runner.
        skip_corrupt: skip corrupt / misshapen lines of ``results.jsonl`` (counted in a note) instead of failing.
        on_note: receives one-line notes (skipped lines, duplicate cells dropped).

    Raises:
        KvprismError: the directory or its ``results.jsonl`` is missing or holds no finished cell, or (without
            ``skip_corrupt``) a corrupt line; nothing is written then.
    """
    d = Path(results_dir)
    rows = load_cells(d, skip_corrupt=skip_corrupt, on_note=on_note)
    if not rows:
        raise KvprismError(f"{d / RESULTS_FILE} holds no finished cell; run `kvprism niah` or `kvprism recall` first")
    summary = summarize(rows)
    written: dict[str, Path] = {}
    with AtomicBatch() as batch:
        path = d / "summary.json"
        batch.write(path, json.dumps(summary, indent=1) + "\n")
        written["summary"] = path
        images: list[str] = []
        for mode, configs in summary["modes"].items():
            for name, entry in configs.items():
                title = f"{name} ({mode}): {'accuracy' if entry['grid_metric'] == 'correct' else 'block recall@k'}"
                p = plot_heatmap(entry, title, d / f"heatmap_{_safe(mode)}_{_safe(name)}.png", batch)
                written[p.stem] = p
                images.append(p.name)
            ks = plot_ksweep(mode, configs, d / f"ksweep_{_safe(mode)}.png", batch)
            if ks is not None:
                written[ks.stem] = ks
                images.append(ks.name)
        md = d / "report.md"
        batch.write(md, render_markdown(summary, images))
        written["report"] = md
    return written
