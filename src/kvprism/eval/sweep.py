"""Selection-quality sweep: every method × d_sig × k on the same prompts, one prefill per prompt.

For each prompt (task × context × depth × seed) the model prefills all prompt tokens but the last once (dense), then
runs the first decode step once through a :class:`kvprism.hf.cache.SparseCache` whose ``k`` covers every block, so it
reads every token (checked) and its trace holds each layer's dense-path decode query. Every method is then evaluated
offline on that step, layer by layer, with the same code the decode path runs (:class:`kvprism.selection.BlockSelector`
fit / signatures / select and :meth:`kvprism.layout.BlockLayout.gather_plan`): the query at layer ``l`` is the one dense
attention produced, so methods are compared on identical inputs (teacher-forced; answers are scored by
``kvprism niah``, not here).

A *method* is ``signature/projection[/budget]`` (e.g. ``mean/learned``, ``centroids/pca``, ``mean/learned/top_p``).
Per (prompt, method, d_sig, k) the sweep records, over layers × KV heads: block recall@k against the true per-block
attention mass, the dense attention mass captured by the tokens read, the read fraction per (layer, KV head)
(tokens gathered / tokens cached: counted from the gather plan, so an adaptive budget reports what it reads), blocks
read, needle hit and the fitting time. Results: ``sweep.jsonl`` (one durable line per cell; a rerun skips finished
prompts), ``sweep.md`` / ``sweep.csv`` (means over prompts) and ``sweep.png`` (mass captured vs read fraction, one
panel per d_sig, one curve per method over k).
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kvprism.atomic import atomic_write
from kvprism.errors import KvprismError
from kvprism.eval import metrics as M
from kvprism.eval.store import append_result, check_out_dir, read_results, repair_results

__all__ = [
    "DEFAULT_METHODS",
    "Method",
    "StepCapture",
    "capture_step",
    "evaluate_step",
    "parse_methods",
    "parse_overrides",
    "run_sweep",
    "summarize_cells",
    "write_outputs",
]

SWEEP_FILE = "sweep.jsonl"
#: methods swept by default (``signature/projection[/budget]``)
DEFAULT_METHODS = "mean/learned,minmax/learned,centroids/learned,reps/learned,mean/pca,mean/learned/top_p"


@dataclass(frozen=True)
class Method:
    """One selection method of the sweep: signature, projection and budget (a ``SelectionConfig`` subset)."""

    signature: str
    projection: str
    budget: str = "topk"

    @property
    def name(self) -> str:
        return f"{self.signature}/{self.projection}" + (f"/{self.budget}" if self.budget != "topk" else "")


def parse_methods(text: str) -> list[Method]:
    """``"mean/learned,centroids/pca/top_p"`` -> methods; one-line errors name ``--methods`` and the choices."""
    from kvprism.budgets import BUDGETS
    from kvprism.signatures import PROJECTIONS, SIGNATURES

    out = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        parts = item.split("/")
        if len(parts) not in (2, 3):
            raise KvprismError(
                f"--methods: {item!r} is invalid; write signature/projection or signature/projection/budget"
            )
        sig, proj, budget = parts[0], parts[1], parts[2] if len(parts) == 3 else "topk"
        for value, allowed, what in ((sig, SIGNATURES, "signature"), (proj, PROJECTIONS, "projection")):
            if value not in allowed:
                raise KvprismError(f"--methods: {what} {value!r} is invalid; allowed: {', '.join(allowed)}")
        if budget not in BUDGETS:
            raise KvprismError(f"--methods: budget {budget!r} is invalid; allowed: {', '.join(BUDGETS)}")
        out.append(Method(sig, proj, budget))
    if not out:
        raise KvprismError("--methods is empty; give at least one signature/projection or signature/projection/budget")
    return out


#: SelectionConfig fields ``--select`` cannot set: the configurations (``--configs``, ``--k``) and ``--heads`` do
_NOT_SELECTABLE = ("k", "scorer", "photonic", "heads")


def parse_overrides(text: str | None) -> dict[str, Any]:
    """``"d_sig=8,signature=minmax,top_p=0.95"`` -> SelectionConfig overrides (ints / floats parsed; validated by
    SelectionConfig itself). Empty or None -> ``{}``."""
    from kvprism.selection import SelectionConfig

    out: dict[str, Any] = {}
    if not text:
        return out
    fields = set(SelectionConfig.field_names())
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in fields or key in _NOT_SELECTABLE:
            raise KvprismError(
                f"--select: {item!r} is invalid; write field=value with a SelectionConfig field other than "
                f"{'/'.join(_NOT_SELECTABLE)} ({', '.join(sorted(fields - set(_NOT_SELECTABLE)))})"
            )
        value = value.strip()
        for kind in (int, float):
            try:
                out[key] = kind(value)
                break
            except ValueError:
                continue
        else:
            out[key] = value
    SelectionConfig(**out)  # ConfigError names the field and its range
    return out


def expand_selection_sets(
    names: Sequence[str], ks: Sequence[int], selection: dict[str, Any], select: str | None
) -> list[Any]:
    """The evaluation configs of ``--configs`` × ``--k`` for each ';'-separated ``--select`` set (``selection``
    holds fields common to all). Dense once; the configs of the first set keep their plain names (so a results
    directory resumes), later sets are named ``<config>@<field>=<value>,...`` with the fields differing from the
    first set."""
    from dataclasses import replace

    from kvprism.eval.grid import build_configs

    sets = [parse_overrides(t) for t in (select or "").split(";")] or [{}]
    first = sets[0]
    out = build_configs(names, ks, {**selection, **first})
    seen = {c.name for c in out}
    for extra in sets[1:]:
        diff = {k: v for k, v in extra.items() if first.get(k) != v}
        diff.update({k: "default" for k in first if k not in extra})
        tag = ",".join(f"{k}={v}" for k, v in sorted(diff.items())) or "same"
        for c in build_configs(names, ks, {**selection, **extra}):
            if c.method == "dense":
                continue
            c = replace(c, name=f"{c.name}@{tag}")
            if c.name not in seen:
                seen.add(c.name)
                out.append(c)
    return out


# ------------------------------------------------------------------------------------------------- one decode step
@dataclass
class StepCapture:
    """The first decode step of one prompt, per layer: ``keys [1, H, T, D]`` (the cache at that step, the new
    token included), ``query [1, Hq, D]`` (dense path), the prefill query sample ``queries [1, H, n, G, D]`` and
    ``query_pos [n]`` (None when the model did not record them), the softmax ``scaling``."""

    keys: list[torch.Tensor]
    query: list[torch.Tensor]
    queries: list[torch.Tensor | None]
    query_pos: list[torch.Tensor | None]
    scaling: float


def capture_step(model: Any, prefilled: Any, last_ids: torch.Tensor) -> StepCapture:
    """Run the first decode step reading every token (a SparseCache with ``k`` = all blocks) and keep what the
    methods need. Raises ``KvprismError`` if that step did not read every cached token."""
    from kvprism.eval.decode import greedy_decode
    from kvprism.hf import attention as A
    from kvprism.hf.cache import SparseCache
    from kvprism.selection import SelectionConfig

    n_tok = prefilled.get_seq_length() + 1
    bs = 64
    sel = SelectionConfig(block_size=bs, k=-(-n_tok // bs) + 1, projection="none", signature="mean")
    queries, qpos = [], []
    for i, layer in enumerate(prefilled.layers):
        found = A.prefill_queries(prefilled, i)
        if found is None:
            queries.append(None)
            qpos.append(None)
            continue
        queries.append(found.grouped(layer.keys.shape[1]).float().cpu())
        qpos.append(found.positions.cpu())
    cache = SparseCache.from_prefilled(model, prefilled, sel, trace=True, impl="torch")
    greedy_decode(model, cache, last_ids, 1, frozenset())
    summary = cache.stats.summary()
    if summary["read_fraction_mean"] != 1.0:
        raise KvprismError(
            f"the reference decode step read {summary['read_fraction_mean']} of the cache, not all of it"
        )
    step = cache.trace[0]
    keys = [cache.layers[i].keys.float().cpu() for i in range(len(cache.layers))]
    query = [step[i]["query"].float().cpu() for i in range(len(cache.layers))]
    attn = next((m for m in model.modules() if hasattr(m, "scaling") and hasattr(m, "layer_idx")), None)
    scaling = float(getattr(attn, "scaling", keys[0].shape[-1] ** -0.5))
    return StepCapture(keys, query, queries, qpos, scaling)


def evaluate_step(
    cap: StepCapture,
    methods: Sequence[Method],
    d_sigs: Sequence[int],
    ks: Sequence[int],
    spans: Sequence[tuple[int, int]],
    base: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """All cells (method × d_sig × k) of one captured step; each cell averages over layers × KV heads.

    Returns:
        one dict per cell: ``method, d_sig, k, block_recall, mass_captured, read_fraction_mean / _max`` (over
        (layer, KV head)), ``read_fraction_head`` (``[L][H]``), ``blocks_read_mean``, ``needle_hit``, ``projection_fit_s`` (fitting
        the projection, all layers), ``signature_s`` (signatures of all blocks, all layers),
        ``bank_rows_per_block``, ``row_width``.
    """
    from kvprism.layout import BlockGeometry, BlockLayout
    from kvprism.selection import BlockSelector, SelectionConfig, block_signatures, needs_queries

    base = dict(base or {})
    n_layers = len(cap.keys)
    _, h, t, _ = cap.keys[0].shape
    cells = []
    fitted: dict[tuple[str, int | None, int], tuple] = {}  # (projection, d_sig, layer) -> projection
    fit_cost: dict[tuple[str, int | None], float] = {}
    for m in methods:
        dims = [None] if m.projection == "none" else list(d_sigs)
        for d in dims:
            kw = {**base, "signature": m.signature, "projection": m.projection, "budget": m.budget, "k": max(ks)}
            if d is not None:
                kw["d_sig"] = d
            sel = SelectionConfig(**kw)
            if sel.projection == "learned" and cap.queries[0] is None:
                raise KvprismError("projection 'learned' needs the prefill queries, which this prefill did not record")
            valid = torch.ones(1, t, dtype=torch.bool)
            layout = BlockLayout.from_valid(valid, BlockGeometry.of(sel))
            eligible = M.eligible_blocks(t, sel.block_size, sel.sink_blocks, sel.window)
            nb = t // sel.block_size
            acc: dict[int, dict[str, list[torch.Tensor]]] = {k: {} for k in ks}
            fit_s = 0.0
            width = rows = 0
            for layer in range(n_layers):
                keys, query = cap.keys[layer], cap.query[layer]
                selector = BlockSelector(sel, layer, h, torch.ones(h, dtype=torch.bool))
                t0 = time.perf_counter()
                pkey = (sel.projection, d, layer)
                selector.fit(
                    keys,
                    valid,
                    scaling=cap.scaling,
                    queries=cap.queries[layer] if needs_queries(sel) else None,
                    query_pos=cap.query_pos[layer] if needs_queries(sel) else None,
                    fitted=fitted.get(pkey),
                )
                t1 = time.perf_counter()
                if pkey not in fitted:
                    fitted[pkey] = selector.fit_result
                    fit_cost[(sel.projection, d)] = fit_cost.get((sel.projection, d), 0.0) + t1 - t0
                rows_sig = block_signatures(
                    sel,
                    selector.proj,
                    keys[:, :, : nb * sel.block_size],
                    valid[:, : nb * sel.block_size],
                    layer_idx=layer,
                    probe=selector.probe,
                )
                fit_s += time.perf_counter() - t1
                selector.program(rows_sig)
                width, rows = rows_sig.shape[-1], selector.rows_per_block
                probs = M.attention_probs(query, keys, cap.scaling)
                mass = M.block_sums(M.group_mean(probs, h), sel.block_size)
                q = query.reshape(1, h, -1, query.shape[-1])
                cand = layout.candidate_mask(torch.ones(h, dtype=torch.bool), nb)
                for k in ks:
                    blocks = selector.select(q, cand, k)
                    plan = layout.gather_plan(blocks)
                    mask = plan.token_mask(t)
                    rec = M.recall_at_k(blocks, mass, k, eligible)[0] if eligible.any() else torch.full((h,), torch.nan)
                    hits = [M.needle_hit(mask, s)[0].float() for s in spans]
                    vals = {
                        "recall": rec,
                        "mass": M.mass_captured(probs, mask)[0],
                        "read": (plan.n_attended.float() / plan.n_cached.float()[:, None])[0],
                        "blocks": (blocks >= 0).sum(-1)[0].float(),
                        "hit": torch.stack(hits).mean(0) if hits else torch.full((h,), torch.nan),
                    }
                    for name, v in vals.items():
                        acc[k].setdefault(name, []).append(v)
            for k in ks:
                a = {name: torch.stack(v) for name, v in acc[k].items()}  # [L, H]
                cells.append(
                    {
                        "method": m.name,
                        "signature": m.signature,
                        "projection": m.projection,
                        "budget": m.budget,
                        "d_sig": d,
                        "k": k,
                        "block_recall": _mean(a["recall"]),
                        "mass_captured": _mean(a["mass"]),
                        "read_fraction_mean": _mean(a["read"]),
                        "read_fraction_max": float(a["read"].max()),
                        "read_fraction_head": [[round(float(x), 5) for x in row] for row in a["read"]],
                        "blocks_read_mean": _mean(a["blocks"]),
                        "needle_hit": _mean(a["hit"]),
                        "projection_fit_s": round(fit_cost.get((sel.projection, d), 0.0), 4),
                        "signature_s": round(fit_s, 4),
                        "bank_rows_per_block": rows,
                        "row_width": width,
                    }
                )
    return cells


def _mean(t: torch.Tensor) -> float | None:
    t = t.float()
    t = t[torch.isfinite(t)]
    return float(t.mean()) if t.numel() else None


# ----------------------------------------------------------------------------------------------------------- driver
def _check_axes(d_sigs: Sequence[int], ks: Sequence[int]) -> None:
    """Signature dimensions and k values must be ≥ 1 (checked before any model loads and again by the API)."""
    for d in d_sigs:
        if d < 1:
            raise KvprismError(f"--d-sigs: {d} is invalid; allowed range: >= 1")
    for k in ks:
        if k < 1:
            raise KvprismError(f"--k: {k} is invalid; allowed range: k >= 1")


def run_sweep(
    model: Any,
    tokenizer: Any,
    *,
    out_dir: str | Path,
    tasks: Sequence[str],
    contexts: Sequence[int],
    depths: Sequence[float],
    seeds: Sequence[int],
    methods: Sequence[Method],
    d_sigs: Sequence[int],
    ks: Sequence[int],
    base: dict[str, Any] | None = None,
    haystack: str | None = None,
    values: str | None = None,
    on_progress: Any = None,
) -> dict[str, Path]:
    """Run (or resume) the sweep into ``out_dir``; returns the written files (see module docstring).
    ``on_progress`` receives :class:`kvprism.eval.runner.Progress` events counted in prompts: ``"start"``, then per
    prompt ``"prefill"`` (unless stored) and ``"cell"`` once its cells are stored."""
    from kvprism.eval.grid import Point
    from kvprism.eval.runner import Progress, Runner
    from kvprism.eval.tasks import make_sample

    def report(kind: str, done: int, point: Point | None = None) -> None:
        if on_progress is not None:
            on_progress(Progress(kind, done, len(prompts), point))

    _check_axes(d_sigs, ks)
    out = check_out_dir(out_dir)
    path = out / SWEEP_FILE
    repair_results(path)
    grid = {
        "methods": [m.name for m in methods],
        "d_sigs": list(d_sigs),
        "ks": list(ks),
        "base": dict(base or {}),
    }
    done = {r["prompt"] for r in read_results(path) if r.get("grid") == grid}
    prompts = [(t, c, d, s) for t in tasks for c in contexts for d in depths for s in seeds]
    runner = Runner(
        model,
        tokenizer,
        out_dir=out,
        tasks=tasks,
        contexts=contexts,
        depths=depths,
        seeds=seeds,
        configs=[],
        mode="recall",
        haystack=haystack,
        values=values,
    )
    report("start", 0)
    for i, (task, ctx, depth, seed) in enumerate(prompts):
        hay, val = runner.task_defaults(task)
        key = f"{task}|{hay}|{val}|{ctx}|{depth:.4f}|{seed}"
        point = Point(task, ctx, depth, seed)
        if key in done:
            report("cell", i + 1, point)
            continue
        report("prefill", i, point)
        sample = make_sample(task, tokenizer, ctx, depth, seed, haystack=hay, values=val)
        prefilled, prefill_s = runner.prefill(sample)
        cap = capture_step(model, prefilled, torch.tensor([[sample.input_ids[-1]]]))
        del prefilled
        cells = evaluate_step(cap, methods, d_sigs, ks, sample.target_spans, base)
        for c in cells:
            rec = {"prompt": key, "task": task, "context": ctx, "depth": depth, "seed": seed, "grid": grid, **c}
            rec["prefill_s"] = round(prefill_s, 3)
            append_result(path, rec)
        report("cell", i + 1, point)
    records = [r for r in read_results(path) if r.get("grid") == grid]
    return write_outputs(records, out)


def summarize_cells(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Means over prompts per (method, d_sig, k); ``read_fraction_max`` is the max over prompts, layers, heads."""
    import pandas as pd

    if not records:
        return []
    means = ("block_recall", "mass_captured", "read_fraction_mean", "blocks_read_mean", "needle_hit",
             "projection_fit_s", "signature_s")  # fmt: skip
    df = pd.DataFrame(list(records), dtype=object)  # keys and counts keep their types (None stays None)
    for name in means:  # a metric no record carries is a column of missing values
        if name not in df:
            df[name] = None
    df[list(means)] = df[list(means)].astype("float64")  # None -> NaN, skipped by the means
    # group ids, then the keys as given from each group's first record (a grouped key column with None in it would
    # turn its ints into floats)
    df["group"] = df.groupby(["method", "d_sig", "k"], dropna=False, sort=False).ngroup()
    first = df.groupby("group").head(1).set_index("group")
    agg = df.groupby("group").agg(
        prompts=("method", "size"),
        read_fraction_max=("read_fraction_max", "max"),
        **{name: (name, "mean") for name in means},
    )
    agg = agg.join(first[["method", "d_sig", "k", "row_width", "bank_rows_per_block"]])
    agg = agg.rename(columns={"row_width": "channels", "bank_rows_per_block": "rows_per_block"})
    order = ["method", "d_sig", "k", "channels", "rows_per_block", "prompts", "block_recall", "mass_captured",
             "read_fraction_mean", "read_fraction_max", "blocks_read_mean", "needle_hit", "projection_fit_s",
             "signature_s"]  # fmt: skip
    rows = [{c: _plain(r[c]) for c in order} for r in agg.astype(object).to_dict("records")]
    rows.sort(key=lambda r: (r["method"], r["d_sig"] or 0, r["k"]))
    return rows


def _plain(v: Any) -> Any:
    """A pandas / numpy scalar as the plain Python value (NaN -> None)."""
    if v is None:
        return None
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and v != v:
        return None
    return v


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def write_outputs(records: Sequence[dict[str, Any]], out_dir: str | Path) -> dict[str, Path]:
    """``sweep.md``, ``sweep.csv`` and ``sweep.png`` (if matplotlib is installed) from the cell records."""
    out = Path(out_dir)
    rows = summarize_cells(records)
    cols = list(rows[0]) if rows else ["method"]
    prompts = sorted({r["prompt"] for r in records})
    md = [
        f"# Selection sweep ({len(prompts)} prompts: {', '.join(prompts)})",
        "",
        "Means over prompts of the per-(layer, KV head) means; read_fraction_max is the largest over prompts, layers "
        "and KV heads. channels: bank row width (wavelength channels); rows_per_block: bank rows per block.",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    md += ["| " + " | ".join(_fmt(r[c]) for c in cols) + " |" for r in rows]
    files = {"table": out / "sweep.md", "csv": out / "sweep.csv", "results": out / SWEEP_FILE}
    atomic_write(files["table"], ("\n".join(md) + "\n").encode())
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    w.writerows(rows)
    atomic_write(files["csv"], buf.getvalue().encode())
    png = _plot(rows, out / "sweep.png")
    if png is not None:
        files["plot"] = png
    files["summary"] = atomic_write(out / "sweep-summary.json", json.dumps(rows, indent=1))
    return files


def _plot(rows: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """Mass captured vs read fraction: one panel per d_sig, one curve per method (points over k), with the
    Pareto frontier of each method (no other point of the method reads less and captures more)."""
    from kvprism.eval.plots import pyplot

    plt = pyplot()
    dims = sorted({r["d_sig"] for r in rows if r["d_sig"] is not None}) or [None]
    fig, axes = plt.subplots(1, len(dims), figsize=(4.2 * len(dims), 3.8), squeeze=False, sharey=True)
    methods = sorted({r["method"] for r in rows})
    for ax, d in zip(axes[0], dims, strict=True):
        for m in methods:
            pts = sorted(
                (r["read_fraction_mean"], r["mass_captured"])
                for r in rows
                if r["method"] == m and (r["d_sig"] == d or r["d_sig"] is None) and r["mass_captured"] is not None
            )
            if not pts:
                continue
            front, best = [], -1.0
            for x, y in pts:
                if y > best:
                    front.append((x, y))
                    best = y
            style = "--" if m.count("/") == 2 else "-"  # adaptive budgets dashed (they may overlay their top-k)
            line = ax.plot(*zip(*front, strict=True), marker="o", linestyle=style, label=m)[0]
            ax.scatter(*zip(*pts, strict=True), s=10, color=line.get_color())
        ax.axvline(1 / 16, color="grey", linestyle=":", linewidth=1)
        ax.set_title(f"d_sig = {d}" if d is not None else "no projection")
        ax.set_xlabel("read fraction")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("attention mass captured")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    try:
        atomic_write(path, lambda p: fig.savefig(p, dpi=120, format="png"))
    finally:
        plt.close(fig)
    return path
