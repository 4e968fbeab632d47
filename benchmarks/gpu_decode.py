"""Decode-step benchmark on one CUDA GPU: dense SDPA vs a plain PyTorch sparse pipeline vs the kvprism kernels.

Layer: Qwen2.5-7B attention (28 query heads, 4 KV heads, head dim 128, bf16); blocks of 128 tokens, k = 32 selected
blocks, a 256-token window (no sink blocks unless --sink), block signatures = mean key of the block (scored with the query).
Shapes: batch 1 x {4K, 32K, 128K, 512K} and batch 8 x {4K, 32K, 128K} tokens of context.

For every shape, in one run:
1. fresh random inputs; every kernel output is poisoned with NaN before the call that must overwrite it;
2. correctness against float64 references (``kvprism.kernels.reference``): attention output of each method (relative
   L2 error), and the kernel's block selection (its scores must equal the exact top-k scores);
3. timings (median of ``triton.testing.do_bench``, which flushes L2 between repetitions) of
   - ``dense``: ``F.scaled_dot_product_attention`` over the whole cache (``enable_gqa``);
   - ``torch``: the plain PyTorch pipeline (signature scan + ``topk`` + ``gather`` + SDPA), eager and as a CUDA graph;
   - ``kvprism``: selection (score + top-k kernels) and attention kernels alone, the whole step eager and as a graph;
4. the bandwidth floor: bytes the sparse step must read (signatures scanned + attended K/V tokens) divided by the
   measured device-to-device copy bandwidth (bytes read + written per second).

Prints a table (µs, speed-up over dense, ratio to the floor) and writes JSON. Exits with a message without CUDA.

    python benchmarks/gpu_decode.py                      # all shapes
    python benchmarks/gpu_decode.py --quick              # batch 1 x 4K and 32K only (smoke test)
    python benchmarks/gpu_decode.py --json out.json --num-splits 16 --block-n 64
    python benchmarks/gpu_decode.py --sweep               # then a launch-geometry sweep at 128K (after the main table)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

HQ, HKV, HEAD_DIM = 28, 4, 128  # Qwen2.5-7B attention layer
SHAPES = [(1, 4096), (1, 32768), (1, 131072), (1, 524288), (8, 4096), (8, 32768), (8, 131072)]
QUICK_SHAPES = [(1, 4096), (1, 32768)]
GOALS = {(8, 131072): 15.0, (1, 131072): 5.0}  # speed-up over dense SDPA that the kvprism graph step must reach
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
TOL_OUT = 2e-2  # bf16 outputs vs float64: relative L2 error


@dataclass(frozen=True)
class Config:
    block_size: int = 128
    k: int = 32
    window: int = 256
    sink: int = 0
    num_splits: int | None = None
    block_n: int | None = None
    score_tile: int | None = None
    num_warps: int = 4
    num_stages: int = 2
    warmup_ms: int = 25

    @property
    def sink_tokens(self) -> int:
        return self.sink * self.block_size

    @property
    def geometry(self):
        from kvprism.layout import BlockGeometry

        return BlockGeometry(self.block_size, self.sink, self.window)

    def layout(self, seq_lens: torch.Tensor, t_cap: int):
        from kvprism.layout import BlockLayout

        return BlockLayout.from_lengths(seq_lens, self.geometry, t_cap)

    rep_ms: int = 100
    dtype: str = "bf16"


@dataclass
class Inputs:
    q: torch.Tensor  # [B, HQ, D] bf16
    k_cache: torch.Tensor  # [B, HKV, T, D] bf16
    v_cache: torch.Tensor
    signatures: torch.Tensor  # [B, HKV, N, D] bf16, mean key per block
    seq_lens: torch.Tensor  # [B] int32, all = T


def make_inputs(batch: int, ctx: int, cfg: Config, seed: int, device: torch.device) -> Inputs:
    """Fresh random inputs (never zeros: they hide unwritten outputs and can run faster)."""
    g = torch.Generator(device=device).manual_seed(seed)
    dtype = DTYPES[cfg.dtype]
    kw = dict(generator=g, device=device, dtype=dtype)
    q = torch.randn(batch, HQ, HEAD_DIM, **kw)
    k_cache = torch.randn(batch, HKV, ctx, HEAD_DIM, **kw)
    v_cache = torch.randn(batch, HKV, ctx, HEAD_DIM, **kw)
    n = ctx // cfg.block_size
    sig = torch.empty(batch, HKV, n, HEAD_DIM, device=device, dtype=dtype)
    for b in range(batch):  # per batch row keeps the fp32 temporary small
        sig[b] = k_cache[b].view(HKV, n, cfg.block_size, HEAD_DIM).float().mean(2).to(dtype)
    seq_lens = torch.full((batch,), ctx, dtype=torch.int32, device=device)
    return Inputs(q, k_cache, v_cache, sig, seq_lens)


def n_candidates(ctx: int, cfg: Config) -> int:
    """Complete blocks not entirely inside the window (same rule as ``kvprism.kernels.candidate_blocks``)."""
    return min(-(-max(ctx - cfg.window, 0) // cfg.block_size), ctx // cfg.block_size)


class TorchPipeline:
    """The plain PyTorch sparse decode: signature scan, ``topk``, ``gather`` of the blocks, masked SDPA.

    Assumes every row has the full length ``T`` (a multiple of the block size), as in this benchmark; static shapes, so
    it can be captured in a CUDA graph. Overlap of a selected block with the sink / window is masked out, so each
    token counts once (the same attended set as the reference for the returned indices).
    """

    def __init__(self, inp: Inputs, cfg: Config) -> None:
        self.inp, self.cfg = inp, cfg
        b, _, t_cap, _ = inp.k_cache.shape
        self.n_cand = n_candidates(t_cap, cfg)
        self.tail_start = t_cap - cfg.window
        dev = inp.q.device
        self.block_tok = torch.arange(cfg.block_size, device=dev)
        self.cand_mask = torch.arange(inp.signatures.shape[2], device=dev) >= self.n_cand
        self.extra_mask = torch.ones(b, HKV, cfg.sink_tokens + cfg.window, dtype=torch.bool, device=dev)

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
        inp, cfg = self.inp, self.cfg
        b, g = inp.q.shape[0], HQ // HKV
        scores = torch.matmul(inp.signatures, inp.q.view(b, HKV, g, HEAD_DIM).transpose(-1, -2)).float().sum(-1)
        scores = scores.masked_fill(self.cand_mask, float("-inf"))
        top = torch.topk(scores, min(cfg.k, scores.shape[-1]), dim=-1)
        ok = top.values > float("-inf")
        idx = torch.where(ok, top.indices, -1)
        tok = (top.indices[..., None] * cfg.block_size + self.block_tok).flatten(2)  # [B, HKV, k*bs]
        tok_ok = ok.repeat_interleave(cfg.block_size, dim=-1) & (tok >= cfg.sink_tokens) & (tok < self.tail_start)
        gidx = tok[..., None].expand(-1, -1, -1, HEAD_DIM)
        t_cap = inp.k_cache.shape[2]
        parts_k = [torch.gather(inp.k_cache, 2, gidx), inp.k_cache[:, :, self.tail_start : t_cap]]
        parts_v = [torch.gather(inp.v_cache, 2, gidx), inp.v_cache[:, :, self.tail_start : t_cap]]
        if cfg.sink:
            parts_k.append(inp.k_cache[:, :, : cfg.sink_tokens])
            parts_v.append(inp.v_cache[:, :, : cfg.sink_tokens])
        k_all, v_all = torch.cat(parts_k, dim=2), torch.cat(parts_v, dim=2)
        mask = torch.cat([tok_ok, self.extra_mask], dim=-1).repeat_interleave(g, dim=1)[:, :, None, :]
        out = F.scaled_dot_product_attention(inp.q[:, :, None], k_all, v_all, attn_mask=mask, enable_gqa=True)
        return out[:, :, 0], idx


def dense_sdpa(inp: Inputs) -> torch.Tensor:
    return F.scaled_dot_product_attention(inp.q[:, :, None], inp.k_cache, inp.v_cache, enable_gqa=True)[:, :, 0]


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    if torch.isnan(out).any():
        return float("nan")  # unwritten (poisoned) or non-finite output
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def check_selection(idx: torch.Tensor, inp: Inputs, n_cand: torch.Tensor, k: int) -> tuple[bool, bool]:
    """(the selected blocks' float64 scores equal the exact top-k scores and are distinct, indices identical)."""
    from kvprism.kernels.reference import score_blocks_ref, score_topk_ref

    b = idx.shape[0]
    q64, s64_in = inp.q.double(), inp.signatures.double()
    s64 = score_blocks_ref(q64, s64_in, "sum")
    ref_idx = score_topk_ref(q64, s64_in, n_cand, k, "sum")
    ok = (idx >= 0) & (idx < n_cand.view(b, 1, 1))
    valid_ref = ref_idx >= 0
    if not torch.equal(ok, valid_ref):
        return False, False
    got = torch.gather(s64, 2, idx.clamp(min=0)).masked_fill(~ok, 0).sort(-1).values
    want = torch.gather(s64, 2, ref_idx.clamp(min=0)).masked_fill(~valid_ref, 0).sort(-1).values
    tol = 1e-4 * s64.abs().max().item()
    same = bool(((got - want).abs() <= tol).all())
    sorted_idx = idx.masked_fill(~ok, -1).sort(-1).values
    same &= bool(((sorted_idx.diff(dim=-1) != 0) | (sorted_idx[..., 1:] < 0)).all())  # no duplicates
    return same, bool(torch.equal(idx, ref_idx))


def check_shape(inp: Inputs, cfg: Config, step, pipeline: TorchPipeline) -> dict:
    """Correctness of every method on these inputs against float64 references; returns errors and counts."""
    from kvprism.kernels.reference import sparse_decode_attention_ref
    from kvprism.layout import BlockGeometry, BlockLayout

    b, _, t_cap, _ = inp.k_cache.shape
    q64 = inp.q.double()
    args = (cfg.layout(inp.seq_lens, t_cap),)
    res: dict = {}

    # kvprism step, eager
    step.q.copy_(inp.q)
    step.q_sig.copy_(inp.q)
    step.seq_lens.copy_(inp.seq_lens)
    step.out.fill_(float("nan"))
    step.block_idx.fill_(-7)
    step.launch()
    torch.cuda.synchronize()
    idx = step.block_idx.clone()
    eager_out = step.out.clone()
    res["err_kvprism"] = rel_err(eager_out, sparse_decode_attention_ref(q64, inp.k_cache, inp.v_cache, idx, *args))

    # selection: the chosen blocks' exact scores must be the exact top-k scores
    n_cand = torch.full((b,), n_candidates(t_cap, cfg), device=inp.q.device)
    res["selection_ok"], res["selection_same_indices"] = check_selection(idx, inp, n_cand, cfg.k)
    sel_ok = res["selection_ok"]

    # kvprism step, CUDA graph replay: must reproduce the eager result exactly
    step.out.fill_(float("nan"))
    step.graph.replay()
    torch.cuda.synchronize()
    res["graph_equals_eager"] = bool(torch.equal(step.out, eager_out))

    # plain PyTorch pipeline
    out_t, idx_t = pipeline()
    res["err_torch"] = rel_err(out_t, sparse_decode_attention_ref(q64, inp.k_cache, inp.v_cache, idx_t, *args))

    # dense SDPA vs the float64 reference with every block selected
    all_blocks = torch.arange(t_cap // cfg.block_size, device=inp.q.device).expand(b, HKV, -1)
    dense_layout = BlockLayout.from_lengths(inp.seq_lens, BlockGeometry(cfg.block_size), t_cap)
    dense_ref = sparse_decode_attention_ref(q64, inp.k_cache, inp.v_cache, all_blocks, dense_layout)
    res["err_dense"] = rel_err(dense_sdpa(inp), dense_ref)

    # tokens the sparse step attends (for the byte count)
    from kvprism.kernels.reference import attended_mask

    res["attended_tokens"] = int(attended_mask(idx, cfg.layout(inp.seq_lens, t_cap)).sum())
    res["ok"] = (
        all(res[f"err_{m}"] < TOL_OUT for m in ("kvprism", "torch", "dense")) and sel_ok and res["graph_equals_eager"]
    )
    return res


def copy_bandwidth(device: torch.device, bench) -> float:
    """Device-to-device copy bandwidth, bytes read + written per second, on a 1 GiB buffer."""
    src = torch.randn(2**29, device=device, dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    ms = bench(lambda: dst.copy_(src))
    return 2 * src.numel() * src.element_size() / (ms * 1e-3)


def capture_graph(fn) -> torch.cuda.CUDAGraph:
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph


def graph_us(fn, bench) -> float:
    """Median µs of ``fn`` replayed from a CUDA graph (eager Triton launches cost more CPU time than these kernels
    take on the GPU, so eager timings of them measure the launcher, not the kernel)."""
    if not torch.cuda.is_available():  # interpreter runs of the sweep logic
        return bench(fn) * 1e3
    return bench(capture_graph(fn).replay) * 1e3


def graph_node_us(bench) -> float:
    """µs of a graph holding one trivial kernel: the fixed cost of a replayed graph node on this machine."""
    x = torch.zeros(1, device="cuda")
    return graph_us(lambda: x.add_(1), bench)


def run_shape(batch: int, ctx: int, cfg: Config, seed: int, bw: float, bench, dev: torch.device | None = None) -> dict:
    from kvprism.kernels.triton_decode import SparseDecodeStep

    dev = dev or torch.device("cuda")
    inp = make_inputs(batch, ctx, cfg, seed, dev)
    steps = []
    for merge_in_attention in (False, True):
        step = SparseDecodeStep(
            inp.k_cache,
            inp.v_cache,
            inp.signatures,
            q_heads=HQ,
            k=cfg.k,
            geometry=cfg.geometry,
            num_splits=cfg.num_splits,
            block_n=cfg.block_n,
            score_tile=cfg.score_tile,
            num_warps=cfg.num_warps,
            num_stages=cfg.num_stages,
            merge_in_attention=merge_in_attention,
        )
        step.q.copy_(inp.q)
        step.q_sig.copy_(inp.q)
        step.seq_lens.copy_(inp.seq_lens)
        step.capture()
        steps.append(step)
    step, step3 = steps
    pipeline = TorchPipeline(inp, cfg)
    res = {"batch": batch, "context": ctx, **check_shape(inp, cfg, step, pipeline)}
    # 3 launches (top-k merged inside the attention kernel): same selection and arithmetic -> identical output
    step3.out.fill_(float("nan"))
    step3.block_idx.fill_(-7)
    step3.graph.replay()
    torch.cuda.synchronize()
    res["merged_equals_unmerged"] = bool(
        torch.equal(step3.out, step.out) and torch.equal(step3.block_idx, step.block_idx)
    )
    res["ok"] = res["ok"] and res["merged_equals_unmerged"]
    torch_graph = capture_graph(pipeline)
    idx = step.block_idx.clone()

    select, attend = step.select, (lambda: step.attend(idx))  # the two stages of the 4-launch step

    select_graph, attend_graph = capture_graph(select), capture_graph(attend)
    # the attention stage with the selected blocks' attention masses (what SelectionConfig.carry needs)
    from kvprism.kernels.reference import block_mass_ref
    from kvprism.kernels.triton_decode import block_mass_workspace, sparse_decode_attention_triton

    mass = torch.empty(batch, HKV, cfg.k, dtype=torch.float32, device=dev)
    mass_ws = block_mass_workspace(batch, HKV, HQ // HKV, cfg.k, step.plan, dev)
    mass_out = torch.empty_like(step.out)

    def attend_mass():
        return sparse_decode_attention_triton(
            step.q,
            inp.k_cache,
            inp.v_cache,
            idx,
            step.layout(),
            step.scale,
            out=mass_out,
            plan=step.plan,
            workspace=step._workspace,
            num_warps=cfg.num_warps,
            num_stages=cfg.num_stages,
            block_mass=mass,
            mass_workspace=mass_ws,
        )

    attend_mass()
    torch.cuda.synchronize()
    want = block_mass_ref(step.q.float(), inp.k_cache.float(), inp.v_cache.float(), idx, step.layout(), step.scale)
    res["block_mass_max_abs_err"] = float((mass - want).abs().max())
    res["block_mass_ok"] = res["block_mass_max_abs_err"] < 2e-2 and torch.equal(mass_out, attend())
    res["ok"] = res["ok"] and res["block_mass_ok"]
    attend_mass_graph = capture_graph(attend_mass)
    t = {
        "dense": bench(lambda: dense_sdpa(inp)),
        "torch": bench(pipeline),
        "torch_graph": bench(torch_graph.replay),
        "kvprism_select": bench(select),
        "kvprism_attend": bench(attend),
        "kvprism_select_graph": bench(select_graph.replay),  # score + top-k kernel, merge kernel
        "kvprism_attend_graph": bench(attend_graph.replay),  # split-K attention kernel, combine kernel
        "kvprism_attend_mass_graph": bench(attend_mass_graph.replay),  # + the selected blocks' masses (carry)
        "kvprism": bench(step.launch),
        "kvprism_graph": bench(step.graph.replay),  # the whole step: 4 kernels
        "kvprism_graph3": bench(step3.graph.replay),  # the whole step: 3 kernels (merge inside attention)
    }
    res["us"] = {name: ms * 1e3 for name, ms in t.items()}
    elt = DTYPES[cfg.dtype].itemsize
    n_cand = n_candidates(ctx, cfg)
    io = 2 * batch * HQ * HEAD_DIM * elt  # q read, out written
    res["bytes_dense"] = 2 * batch * HKV * ctx * HEAD_DIM * elt + io
    res["bytes_sparse"] = batch * HKV * n_cand * HEAD_DIM * elt + 2 * res["attended_tokens"] * HEAD_DIM * elt + io
    res["floor_us_dense"] = res["bytes_dense"] / bw * 1e6
    res["floor_us_sparse"] = res["bytes_sparse"] / bw * 1e6
    res["best_variant"] = min(("kvprism_graph", "kvprism_graph3"), key=lambda m: res["us"][m])
    res["speedup_vs_dense"] = res["us"]["dense"] / res["us"][res["best_variant"]]
    res["speedup_4_vs_dense"] = res["us"]["dense"] / res["us"]["kvprism_graph"]
    res["speedup_3_vs_dense"] = res["us"]["dense"] / res["us"]["kvprism_graph3"]
    res["speedup_torch_graph_vs_dense"] = res["us"]["dense"] / res["us"]["torch_graph"]
    res["x_floor"] = res["us"][res["best_variant"]] / res["floor_us_sparse"]
    res["geometry"] = {
        "num_splits": step.plan.n_splits,
        "block_n": step.plan.block_n,
        "score_tile": cfg.score_tile,
        "num_warps": cfg.num_warps,
        "num_stages": cfg.num_stages,
    }
    res["plan"] = asdict(step.plan)
    return res  # the inputs, graphs and buffers are freed with this frame


SWEEP_SHAPES = [(1, 131072), (8, 131072)]


def best_of_sweep(rows: list[dict], b: int, ctx: int) -> dict:
    """The fastest attention geometry and scoring tile the sweep measured at (b, ctx) (checked rows only)."""
    out: dict = {}
    for kind, keys in (("attend", ("block_n", "num_splits", "num_warps", "num_stages")), ("select", ("score_tile",))):
        good = [
            r
            for r in rows
            if r["kind"] == kind and r["batch"] == b and r["context"] == ctx and not math.isnan(r.get("us", math.nan))
        ]
        if good:
            best = min(good, key=lambda r: r["us"])
            out.update({k: best[k] for k in keys})
    return out


def run_sweep(cfg: Config, seed: int, bench, device: torch.device | None = None, shapes=None) -> list[dict]:
    """Launch-geometry sweep at 128K: attention kernels alone (tile, splits, warps, stages) and scoring (tile).

    Every configuration is checked (poisoned output vs float64 reference, or the exact top-k scores) before timing;
    one that fails to compile or launch is recorded with its error.
    """
    rows: list[dict] = []
    for i, (b, ctx) in enumerate(shapes or SWEEP_SHAPES):
        rows += _sweep_shape(b, ctx, cfg, seed + 100 + i, bench, device or torch.device("cuda"))
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return rows


def _sweep_shape(b: int, ctx: int, cfg: Config, seed: int, bench, dev: torch.device) -> list[dict]:
    from kvprism.kernels.reference import score_topk_ref, sparse_decode_attention_ref
    from kvprism.kernels.triton_decode import (
        decode_plan,
        decode_workspace,
        score_topk_triton,
        sparse_decode_attention_triton,
    )

    rows: list[dict] = []
    inp = make_inputs(b, ctx, cfg, seed, dev)
    n_cand = torch.full((b,), n_candidates(ctx, cfg), device=dev)
    idx = score_topk_ref(inp.q.float(), inp.signatures.float(), n_cand, cfg.k)
    layout = cfg.layout(inp.seq_lens, inp.k_cache.shape[2])
    ref = sparse_decode_attention_ref(inp.q.double(), inp.k_cache, inp.v_cache, idx, layout)
    auto = decode_plan(b, HQ, HKV, HEAD_DIM, cfg.k, cfg.geometry, dev).n_splits
    for block_n in (64, 128):
        for splits in sorted({max(1, auto // 2), auto, 2 * auto}):
            for warps in (4, 8):
                for stages in (2, 3):
                    row = dict(kind="attend", batch=b, context=ctx, block_n=block_n, num_splits=splits)
                    row.update(num_warps=warps, num_stages=stages)
                    plan = decode_plan(b, HQ, HKV, HEAD_DIM, cfg.k, cfg.geometry, dev, splits, block_n)
                    ws = decode_workspace(b, HKV, HQ // HKV, HEAD_DIM, plan, dev)
                    out = torch.full_like(inp.q, float("nan"))

                    def fn(plan=plan, ws=ws, out=out, warps=warps, stages=stages):
                        return sparse_decode_attention_triton(
                            inp.q,
                            inp.k_cache,
                            inp.v_cache,
                            idx,
                            layout,
                            out=out,
                            plan=plan,
                            workspace=ws,
                            num_warps=warps,
                            num_stages=stages,
                        )

                    try:
                        fn()
                        _sync(dev)
                        row["err"] = rel_err(out, ref)
                        row["us"] = graph_us(fn, bench) if row["err"] < TOL_OUT else float("nan")
                    except Exception as e:  # out of shared memory / registers: record and go on
                        row["error"] = f"{type(e).__name__}: {str(e)[:200]}"
                    rows.append(row)
    for tile in (64, 128, 256, 512):
        row = dict(kind="select", batch=b, context=ctx, score_tile=tile)
        sel = torch.full((b, HKV, cfg.k), -7, dtype=torch.int64, device=dev)

        def sfn(sel=sel, tile=tile):
            return score_topk_triton(
                inp.q,
                inp.signatures,
                inp.seq_lens,
                cfg.k,
                n_valid_div=cfg.block_size,
                n_valid_window=cfg.window,
                out=sel,
                tile=tile,
            )

        try:
            sfn()
            _sync(dev)
            row["selection_ok"] = check_selection(sel, inp, n_cand, cfg.k)[0]
            row["us"] = graph_us(sfn, bench) if row["selection_ok"] else float("nan")
        except Exception as e:
            row["error"] = f"{type(e).__name__}: {str(e)[:200]}"
        rows.append(row)
    return rows


def print_sweep(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=200)  # piped output (tee) would otherwise wrap at 80 columns
    for kind, keys in (
        ("attend", ("block_n", "num_splits", "num_warps", "num_stages")),
        ("select", ("score_tile",)),
    ):
        for b, ctx in SWEEP_SHAPES:
            sub = [r for r in rows if r["kind"] == kind and r["batch"] == b and r["context"] == ctx]
            good = sorted((r for r in sub if not math.isnan(r.get("us", float("nan")))), key=lambda r: r["us"])
            table = Table(title=f"sweep {kind}, batch {b} / {ctx // 1024}K: best 6 of {len(sub)} ({len(good)} ran)")
            for col in (*keys, "µs"):
                table.add_column(col, justify="right")
            for r in good[:6]:
                table.add_row(*(str(r[k]) for k in keys), f"{r['us']:.1f}")
            console.print(table)


def write_json_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)


def print_table(rows: list[dict], bw: float, device_name: str, dtype: str, node_us: float, title: str = "") -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"decode step{title}, Qwen2.5-7B layer, {dtype} — {device_name}, copy {bw / 1e12:.2f} TB/s (µs, median)"
    )
    cols = (
        "B",
        "ctx",
        "dense",
        "torch",
        "torch graph",
        "select g",
        "attend g",
        "attend+mass g",
        "kvprism",
        "graph 4",
        "graph 3",
    )
    for col in (*cols, "floor", "× dense", "× floor", "err", "ok"):
        table.add_column(col, justify="right")
    for r in rows:
        us = r["us"]
        err = max(r["err_kvprism"], r["err_torch"], r["err_dense"])
        table.add_row(
            str(r["batch"]),
            f"{r['context'] // 1024}K",
            *(
                f"{us[m]:.1f}"
                for m in (
                    "dense",
                    "torch",
                    "torch_graph",
                    "kvprism_select_graph",
                    "kvprism_attend_graph",
                    "kvprism_attend_mass_graph",
                    "kvprism",
                    "kvprism_graph",
                    "kvprism_graph3",
                )
            ),
            f"{r['floor_us_sparse']:.1f}",
            f"{r['speedup_vs_dense']:.1f}",
            f"{r['x_floor']:.2f}",
            f"{err:.1e}",
            "yes" if r["ok"] else "NO",
        )
    console = Console(width=200)  # piped output (tee) would otherwise wrap at 80 columns
    console.print(table)
    console.print(
        "select g / attend g / attend+mass g / graph 4 / graph 3: CUDA-graph replays of 2 / 2 / 3 / 4 / 3 kernels "
        "(attend+mass: the attention with the selected blocks' masses that carried blocks need; graph 3 merges the "
        "top-k inside the attention kernel); kvprism: 4 launched eagerly; a one-kernel graph takes "
        f"{node_us:.1f} µs here. × dense and × floor use the faster whole-step graph."
    )
    for (b, ctx), goal in GOALS.items():
        hit = [r for r in rows if r["batch"] == b and r["context"] == ctx]
        if hit:
            got = hit[0]["speedup_vs_dense"]
            verdict = "met" if got >= goal else "MISSED"
            console.print(
                f"goal batch {b} / {ctx // 1024}K: >= {goal:.0f}x dense; measured {got:.1f}x "
                f"({hit[0]['us'][hit[0]['best_variant']]:.1f} vs {hit[0]['us']['dense']:.1f} µs) -> {verdict}"
            )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="batch 1 x 4K and 32K only")
    p.add_argument("--json", type=Path, default=Path("benchmarks/results/gpu_decode.json"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sink", type=int, default=0, help="sink blocks (default 0)")
    p.add_argument("--num-splits", type=int, default=None, help="split-K programs per (batch, KV head)")
    p.add_argument("--block-n", type=int, default=None, help="tokens per attention tile (default 64)")
    p.add_argument("--score-tile", type=int, default=None, help="signatures per scoring program (default 256)")
    p.add_argument("--num-warps", type=int, default=4, help="warps per attention program")
    p.add_argument("--num-stages", type=int, default=2, help="software-pipelining depth of the attention kernel")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--sweep", action="store_true", help="then sweep the launch geometry at 128K (about 2 min)")
    a = p.parse_args(argv)

    if not torch.cuda.is_available():
        print("gpu_decode.py needs a CUDA GPU: none is visible to torch here. Nothing measured.", file=sys.stderr)
        return 1
    try:
        import triton.testing
    except ImportError:
        print(
            "gpu_decode.py needs the 'triton' package (pip install 'kvprism[gpu]'). Nothing measured.", file=sys.stderr
        )
        return 1

    cfg = Config(
        sink=a.sink,
        num_splits=a.num_splits,
        block_n=a.block_n,
        score_tile=a.score_tile,
        num_warps=a.num_warps,
        num_stages=a.num_stages,
        dtype=a.dtype,
    )

    def bench(fn) -> float:
        return triton.testing.do_bench(fn, warmup=cfg.warmup_ms, rep=cfg.rep_ms, return_mode="median")

    dev = torch.device("cuda")
    name = torch.cuda.get_device_name(dev)
    bw = copy_bandwidth(dev, bench)
    node_us = graph_node_us(bench)
    shapes = QUICK_SHAPES if a.quick else SHAPES
    rows = []
    t0 = time.time()
    for i, (b, ctx) in enumerate(shapes):
        print(f"[{i + 1}/{len(shapes)}] batch {b}, context {ctx} ({time.time() - t0:.0f} s)", flush=True)
        rows.append(run_shape(b, ctx, cfg, a.seed + i, bw, bench))
        torch.cuda.empty_cache()
    print_table(rows, bw, name, cfg.dtype, node_us)
    result = {
        "device": name,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "copy_bandwidth_bytes_per_s": bw,
        "graph_node_us": node_us,
        "layer": {"q_heads": HQ, "kv_heads": HKV, "head_dim": HEAD_DIM, "dtype": cfg.dtype},
        "config": asdict(cfg),
        "rows": rows,
        "sweep": [],
        "tuned": [],
    }
    write_json_atomic(a.json, result)  # the main table is on disk before the (longer) sweep starts
    print(f"wrote {a.json}")
    if a.sweep:
        result["sweep"] = run_sweep(cfg, a.seed, bench)
        print_sweep(result["sweep"])
        write_json_atomic(a.json, result)
        # the whole step again with the fastest geometry the sweep found, same shapes, checked like the main run
        for i, (b, ctx) in enumerate(SWEEP_SHAPES):
            best = best_of_sweep(result["sweep"], b, ctx)
            tuned = replace(cfg, **best)
            result["tuned"].append(run_shape(b, ctx, tuned, a.seed + 300 + i, bw, bench))
            torch.cuda.empty_cache()
        print_table(result["tuned"], bw, name, cfg.dtype, node_us, title=" with the sweep's best geometry")
        rows = rows + result["tuned"]
        write_json_atomic(a.json, result)
        print(f"wrote {a.json} (with the sweep and the tuned runs)")
    bad = [r for r in rows if not r["ok"] or any(math.isnan(r[f"err_{m}"]) for m in ("kvprism", "torch", "dense"))]
    if bad:
        print(f"CORRECTNESS FAILED for {[(r['batch'], r['context']) for r in bad]}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
