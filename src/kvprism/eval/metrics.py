"""Selection-quality metrics as pure tensor functions.

Shapes: ``B`` batch, ``Hq`` query heads, ``Hkv`` KV heads (``Hq = G·Hkv``; query head ``h`` reads KV head
``h // G`` as in Hugging Face GQA), ``T`` cached tokens, ``D`` head dim, ``nb = ceil(T / block_size)`` blocks, ``V``
vocabulary. Keys are post-RoPE, as stored in the KV cache.

The recall metrics count only the blocks selection decides about: the candidate blocks of the step's
:class:`kvprism.layout.BlockLayout` (:func:`eligible_blocks`; the same set selection chooses from -- sink blocks,
blocks starting in the tail and the incomplete last block are not candidates, a block that the window covers only
partly is). The reference score of a candidate is the attention mass of its tokens before the tail
(:func:`selectable_block_mass`: what selecting it adds). When no block is eligible, the recall metrics are NaN: the
cell cannot restrict attention and must be reported as such, not as a perfect score.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from kvprism.layout import BlockGeometry, BlockLayout, ids_to_mask, topk_blocks, topk_mask
from kvprism.oracle import block_mass
from kvprism.selection.carry import merge_carried, without_carried


def attention_probs(query: torch.Tensor, keys: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """Dense softmax attention weights of one decode step.

    Args:
        query: ``[B, Hq, D]`` post-RoPE query of the step.
        keys: ``[B, Hkv, T, D]`` post-RoPE cached keys.
        scale: logit scale; default ``1/sqrt(D)``.

    Returns:
        ``[B, Hq, T]`` float32 probabilities (each row sums to 1).
    """
    b, hq, d = query.shape
    hkv = keys.shape[1]
    if hq % hkv:
        raise ValueError(f"query heads ({hq}) must be a multiple of KV heads ({hkv})")
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    q = query.float().view(b, hkv, hq // hkv, d)
    logits = torch.einsum("bhgd,bhtd->bhgt", q, keys.float()) * scale
    return logits.softmax(dim=-1).reshape(b, hq, -1)


def group_mean(x: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """Average ``[B, Hq, ...]`` over each KV head's query group -> ``[B, Hkv, ...]``."""
    b, hq = x.shape[:2]
    return x.reshape(b, kv_heads, hq // kv_heads, *x.shape[2:]).mean(dim=2)


def block_sums(x: torch.Tensor, block_size: int) -> torch.Tensor:
    """Sum ``[..., T]`` over consecutive blocks of ``block_size`` tokens -> ``[..., ceil(T / block_size)]`` (the last
    block may be partial)."""
    t = x.shape[-1]
    nb = -(-t // block_size)
    pad = nb * block_size - t
    if pad:
        x = torch.nn.functional.pad(x, (0, pad))
    return x.reshape(*x.shape[:-1], nb, block_size).sum(dim=-1)


def true_block_mass(
    query: torch.Tensor, keys: torch.Tensor, block_size: int, scale: float | None = None
) -> torch.Tensor:
    """True attention mass per block: dense softmax of the query group (mean over the group's query heads) summed
    per block. ``query`` ``[B, Hq, D]``, ``keys`` ``[B, Hkv, T, D]`` -> ``[B, Hkv, nb]`` (sums to 1 over blocks)."""
    probs = attention_probs(query, keys, scale)
    return block_sums(group_mean(probs, keys.shape[1]), block_size)


def eligible_blocks(n_tokens: int, block_size: int, sink_blocks: int, window: int) -> torch.Tensor:
    """The candidate blocks of a cache of ``n_tokens`` real tokens (no padding): ``Bool[ceil(n_tokens / block_size)]``
    (:attr:`kvprism.layout.BlockLayout.candidates`)."""
    return BlockLayout.from_lengths(n_tokens, BlockGeometry(block_size, sink_blocks, window)).candidates[0]


def selectable_block_mass(token_mass: torch.Tensor, layout: BlockLayout) -> torch.Tensor:
    """Per-block attention mass of the tokens selecting a block adds: ``token_mass [B, H, T']`` (``T' <=
    layout.capacity``; later positions count as zero) summed per block over candidate-role tokens only ->
    ``[B, H, ceil(T' / B)]``. Sink and tail tokens (read anyway) count zero."""
    return block_mass(token_mass, layout, -(-token_mass.shape[-1] // layout.block_size))


def top_k_mask(scores: torch.Tensor, k: int, eligible: torch.Tensor) -> torch.Tensor:
    """``Bool[..., nb]``: the ``min(k, #eligible)`` eligible blocks with the highest ``scores`` (ties: lower id;
    :func:`kvprism.layout.topk_blocks`)."""
    return topk_mask(scores, eligible, k)


def recall_at_k(selected: torch.Tensor, scores: torch.Tensor, k: int, eligible: torch.Tensor) -> torch.Tensor:
    """|selected ∩ top-k(scores)| / k over eligible blocks only.

    Args:
        selected: ``Long[B, H, k']`` selected block ids (-1 = none; ids outside ``[0, nb)`` ignored).
        scores: ``[B, H, nb]`` reference scores (true attention mass for block recall, ideal signature scores for
            signature recall).
        k: number of blocks selection may choose (must be >= 1).
        eligible: ``Bool[nb]`` from :func:`eligible_blocks`, or any shape broadcasting to ``scores`` (e.g. a
            layout's ``candidate_mask``).

    Returns:
        ``[B, H]`` float in [0, 1]; NaN where no block is eligible (selection could not restrict anything).
    """
    if k < 1:
        raise ValueError(f"k = {k} is invalid; allowed range: k >= 1")
    nb = scores.shape[-1]
    eligible = eligible.to(scores.device).expand_as(scores)
    k_eff = eligible.sum(-1).clamp(max=k).float()
    top = top_k_mask(scores, k, eligible)
    sel = ids_to_mask(selected, nb) & eligible
    out = (sel & top).sum(-1).float() / k_eff.clamp(min=1)
    return torch.where(k_eff > 0, out, torch.full_like(out, float("nan")))


def selection_recall(selected: torch.Tensor, reference: torch.Tensor, eligible: torch.Tensor) -> torch.Tensor:
    """|selected ∩ reference| / |reference| over eligible blocks; both ``Long[B, H, k]`` (-1 = none). Used for
    signature recall when the reference is the exact (ideal-signature) selection of the same step. NaN where the
    reference holds no eligible block. Returns ``[B, H]``."""
    nb = eligible.shape[-1]
    ref = ids_to_mask(reference, nb) & eligible
    sel = ids_to_mask(selected, nb) & eligible
    n_ref = ref.sum(-1).float()
    out = (sel & ref).sum(-1).float() / n_ref.clamp(min=1)
    return torch.where(n_ref > 0, out, torch.full_like(out, float("nan")))


def mass_captured(probs: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
    """Dense attention mass on the tokens actually read: Σ softmax weights over attended tokens, averaged over each
    KV head's query group. ``probs`` ``[B, Hq, T]``, ``token_mask`` ``Bool[B, Hkv, T]`` -> ``[B, Hkv]`` in [0, 1]."""
    hkv = token_mask.shape[1]
    return group_mean(probs.float(), hkv).mul(token_mask.float()).sum(-1)


def read_fraction(token_mask: torch.Tensor) -> torch.Tensor:
    """Fraction of cached tokens attended: ``Bool[..., T]`` -> ``[...]``."""
    return token_mask.float().mean(-1)


def needle_hit(token_mask: torch.Tensor, span: tuple[int, int]) -> torch.Tensor:
    """Whether every token of the needle span ``[start, end)`` was attended: ``Bool[..., T]`` -> ``Bool[...]``
    (equivalently: all of the needle's blocks were selected or lie in the sink/window)."""
    start, end = span
    return token_mask[..., start:end].all(dim=-1)


def kl_divergence(dense_logits: torch.Tensor, sparse_logits: torch.Tensor) -> torch.Tensor:
    """KL(dense ‖ sparse) in nats of the next-token distributions: ``[..., V]`` each -> ``[...]`` (>= 0)."""
    p_log = dense_logits.float().log_softmax(-1)
    q_log = sparse_logits.float().log_softmax(-1)
    return (p_log.exp() * (p_log - q_log)).sum(-1).clamp(min=0.0)


def summarize(values: list[float] | torch.Tensor) -> dict[str, float | int | None]:
    """mean / min / max / count of the finite values (NaN = not applicable is skipped; ``n_nan`` counts them)."""
    t = torch.as_tensor(values, dtype=torch.float64).flatten()
    finite = t[torch.isfinite(t)]
    if finite.numel() == 0:
        return {"mean": None, "min": None, "max": None, "n": 0, "n_nan": int(t.numel())}
    return {
        "mean": float(finite.mean()),
        "min": float(finite.min()),
        "max": float(finite.max()),
        "n": int(finite.numel()),
        "n_nan": int(t.numel() - finite.numel()),
    }


# ------------------------------------------------------------------------------------------------ counts of answers
#: two-sided 95 % standard normal quantile (Φ⁻¹(0.975))
Z95 = 1.959963984540054


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion ``k / n`` (default: 95 %).

    ``(p̂ + z²/2n ∓ z·sqrt(p̂(1−p̂)/n + z²/4n²)) / (1 + z²/n)``: unlike the normal ("Wald") interval it stays in
    [0, 1] and is not empty at 0/n or n/n (0/10 -> [0, 0.278]). ``n = 0`` carries no information: ``(0, 1)``.

    Raises:
        ValueError: ``n < 0`` or ``k`` outside ``[0, n]``.
    """
    if n < 0 or not 0 <= k <= n:
        raise ValueError(f"wilson_interval: need 0 <= k <= n, got k = {k}, n = {n}")
    if n == 0:
        return 0.0, 1.0
    p = k / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z2 / (4 * n * n)) / denom
    lo, hi = max(0.0, centre - half), min(1.0, centre + half)
    # exact at the edges (rounding would otherwise leave 1e-17 instead of 0 / 1)
    return (0.0 if k == 0 else lo), (1.0 if k == n else hi)


def proportion(k: int, n: int) -> dict[str, Any]:
    """``{"k", "n", "rate", "ci95": [lo, hi]}`` of ``k`` successes out of ``n`` (rate None for ``n = 0``)."""
    lo, hi = wilson_interval(k, n)
    return {"k": int(k), "n": int(n), "rate": (k / n) if n else None, "ci95": [lo, hi]}


def count_true(values: list[Any]) -> dict[str, Any]:
    """:func:`proportion` of the truthy entries among the non-None ones (None = not scored)."""
    scored = [bool(v) for v in values if v is not None]
    return proportion(sum(scored), len(scored))


def format_proportion(p: dict[str, Any] | None, digits: int = 2) -> str:
    """``0.60 (6/10, 95 % CI 0.31–0.83)``; ``–`` for nothing scored."""
    if not p or not p.get("n"):
        return "–"
    lo, hi = p["ci95"]
    return f"{p['rate']:.{digits}f} ({p['k']}/{p['n']}, 95 % CI {lo:.{digits}f}–{hi:.{digits}f})"


def paired_counts(a: list[bool], b: list[bool]) -> dict[str, Any]:
    """Paired outcomes of two methods on the same prompts: ``both`` right, ``only_a``, ``only_b``, ``neither``, ``n``
    and the exact two-sided McNemar p-value (binomial test of ``only_a`` vs ``only_b``; 1.0 when they never
    disagree)."""
    if len(a) != len(b):
        raise ValueError(f"paired_counts: {len(a)} outcomes of A but {len(b)} of B")
    both = sum(1 for x, y in zip(a, b, strict=True) if x and y)
    only_a = sum(1 for x, y in zip(a, b, strict=True) if x and not y)
    only_b = sum(1 for x, y in zip(a, b, strict=True) if y and not x)
    return {
        "n": len(a),
        "both": both,
        "only_a": only_a,
        "only_b": only_b,
        "neither": len(a) - both - only_a - only_b,
        "mcnemar_p": mcnemar_exact(only_a, only_b),
    }


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Exact two-sided McNemar p-value: ``min(1, 2·P[X <= min(b, c)])`` for ``X ~ Binomial(b + c, 1/2)``."""
    m = only_a + only_b
    if m == 0:
        return 1.0
    tail = sum(math.comb(m, i) for i in range(min(only_a, only_b) + 1)) / 2.0**m
    return min(1.0, 2.0 * tail)


def format_paired(c: dict[str, Any] | None, a: str = "A", b: str = "B") -> str:
    """``20 paired: both 15, only A 1, only dense 3, neither 1 (McNemar p = 0.62)``."""
    if not c or not c.get("n"):
        return "–"
    return (
        f"{c['n']} paired: both {c['both']}, only {a} {c['only_a']}, only {b} {c['only_b']}, neither {c['neither']} "
        f"(McNemar p = {c['mcnemar_p']:.2g})"
    )


# ------------------------------------------------------------------------------------------------ per-cell metrics
def finite_mean(t: torch.Tensor) -> float | None:
    """Mean of the finite entries of ``t`` (None when there is none)."""
    t = t.float()
    t = t[torch.isfinite(t)]
    return float(t.mean()) if t.numel() else None


def table_4(t: torch.Tensor) -> list[list[float | None]]:
    """``[L, H]`` -> nested lists with NaN as None, 4 decimals."""
    return [[None if v != v else round(float(v), 4) for v in row] for row in t]


def trace_metrics(
    trace: list[dict[int, dict[str, torch.Tensor]]],
    prefilled: Any,
    sel: Any,
    sample: Any,
    reference_blocks: dict[int, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Selection metrics of one cell from its decode trace and the dense prefilled keys.

    Block recall@k and attention mass captured use the dense softmax of each step's traced (post-RoPE) query over the
    ``T`` prefilled keys (tokens generated during decode always lie in the recent window and are left out); they are
    averaged over decode steps. Recall is taken over the step's candidate blocks (:class:`kvprism.layout.BlockLayout`)
    with each block's mass over its tokens before the tail (:func:`kvprism.eval.metrics.selectable_block_mass`).
    Needle hit and signature recall are taken at the first decode step (the one that produces the first answer
    token); ``signature_recall_steps`` averages, over every decode step, a noisy scorer's recall of the exact
    selection of that step's own query (from the trace's ``exact_scores``; with carried blocks, exact scoring's pick
    beside the same carried blocks). Heads that select no block at all
    (streaming heads of a head mask) count as not applicable (NaN) for the recall metrics.

    Returns:
        scalar means, ``steps``: per decode step (one per answer token) the needle hit (fraction of layers × KV
        heads × target needles whose every token was read at that step), block recall and mass captured, and
        ``per_layer`` ``[L][Hkv]`` tables of the first-step values.
    """
    n_tok = prefilled.get_seq_length()
    geometry = BlockGeometry.of(sel)
    n_slots = -(-n_tok // sel.block_size)
    # the candidate set of the first decode step (its cache holds the prefill and the step's own token)
    eligible = BlockLayout.from_lengths(n_tok + 1, geometry).candidates[0, :n_slots]
    spans = sample.target_spans
    recall_steps, mass_steps, sig_steps = [], [], []
    first: dict[str, list[torch.Tensor]] = {"block_recall": [], "mass_captured": [], "needle_hit": [], "sig": []}
    layers = sorted(trace[0]) if trace else []
    hit_steps: list[float | None] = []
    for step, per_layer in enumerate(trace):
        step_recall, step_mass, step_hits = [], [], []
        for layer in layers:
            rec = per_layer[layer]
            keys = prefilled.layers[layer].keys
            probs = attention_probs(rec["query"].float().cpu(), keys.float().cpu())
            # the step's own layout: the candidates selection chose from, the tokens read anyway
            layout = BlockLayout.from_lengths(rec["token_mask"].shape[-1], geometry)
            mask = rec["token_mask"][..., :n_tok].cpu()
            blocks = rec["blocks"].cpu()
            mass = selectable_block_mass(group_mean(probs, keys.shape[1]), layout)
            step_eligible = layout.candidates[0, :n_slots]
            recall = recall_at_k(blocks, mass, sel.k, step_eligible)
            recall = torch.where((blocks >= 0).any(-1), recall, torch.full_like(recall, float("nan")))
            captured = mass_captured(probs, mask)
            step_recall.append(recall[0])
            step_mass.append(captured[0])
            if spans:
                step_hits.append(torch.stack([needle_hit(mask, s)[0] for s in spans]).float())  # [n_spans, Hkv]
            if "exact_scores" in rec:  # the exact selection of this step's own query (noisy scorers)
                n_sig = rec["exact_scores"].shape[-1]
                cand = layout.candidate_mask(n=n_sig).expand_as(rec["exact_scores"]).cpu()
                carried = rec["carried"].cpu() if "carried" in rec else None
                if carried is not None:  # exact scoring picks the rest beside the same carried blocks
                    cand = without_carried(cand, carried)
                ref = topk_blocks(rec["exact_scores"].float().cpu(), cand, sel.k)
                if carried is not None:
                    ref = merge_carried(carried, ref, sel.k)
                sr = selection_recall(blocks, ref, layout.candidates[0, :n_sig].cpu())[0]
                sig_steps.append(torch.where((blocks[0] >= 0).any(-1), sr, torch.full_like(sr, float("nan"))))
            if step == 0:
                first["block_recall"].append(recall[0])
                first["mass_captured"].append(captured[0])
                if spans:
                    first["needle_hit"].append(step_hits[-1].mean(0))
                if reference_blocks is not None and layer in reference_blocks:
                    first["sig"].append(selection_recall(blocks, reference_blocks[layer], eligible)[0])
        recall_steps.append(torch.stack(step_recall))
        mass_steps.append(torch.stack(step_mass))
        hit_steps.append(finite_mean(torch.stack(step_hits)) if step_hits else None)
    out: dict[str, Any] = {
        "eligible_blocks": int(eligible.sum()),
        "block_recall": finite_mean(torch.stack(recall_steps)) if recall_steps else None,
        "mass_captured": finite_mean(torch.stack(mass_steps)) if mass_steps else None,
        "block_recall_first": finite_mean(torch.stack(first["block_recall"])) if layers else None,
        "mass_captured_first": finite_mean(torch.stack(first["mass_captured"])) if layers else None,
        "needle_hit": finite_mean(torch.stack(first["needle_hit"])) if first["needle_hit"] else None,
        "signature_recall": finite_mean(torch.stack(first["sig"])) if first["sig"] else None,
        "signature_recall_layer0": finite_mean(first["sig"][0]) if first["sig"] else None,
        "signature_recall_steps": finite_mean(torch.stack(sig_steps)) if sig_steps else None,
        # per decode step (answer token): the diagnosis of where an answer drifts
        "steps": {
            "needle_hit": [None if v is None else round(v, 4) for v in hit_steps],
            "block_recall": [_round4(finite_mean(t)) for t in recall_steps],
            "mass_captured": [_round4(finite_mean(t)) for t in mass_steps],
        },
        "per_layer": {
            name: table_4(torch.stack(first[key]))
            for name, key in (
                ("block_recall", "block_recall"),
                ("mass_captured", "mass_captured"),
                ("needle_hit", "needle_hit"),
                ("signature_recall", "sig"),
            )
            if first[key]
        },
    }
    return out


def _round4(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def first_answer_divergence(tokens: list[int] | None, reference: list[int] | None) -> int | None:
    """Index of the first answer token where ``tokens`` leave ``reference`` (dense's answer): ``None`` when either is
    missing or they agree over the shorter length and have the same length; ``min(len)`` when one stops early."""
    if tokens is None or reference is None:
        return None
    for i, (a, b) in enumerate(zip(tokens, reference, strict=False)):
        if a != b:
            return i
    return None if len(tokens) == len(reference) else min(len(tokens), len(reference))


def first_step_blocks(trace: list[dict[int, dict[str, torch.Tensor]]] | None) -> dict[int, torch.Tensor] | None:
    """``layer -> blocks [B, Hkv, k]`` selected at the first decode step of a trace (None without a trace)."""
    if not trace:
        return None
    return {layer: rec["blocks"].cpu() for layer, rec in trace[0].items()}
