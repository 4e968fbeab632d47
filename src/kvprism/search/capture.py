"""Reference set for design evaluation: block signatures, decode-time queries and their exact top-k, captured from
one real prefill on natural text.

One dense prefill of ``context`` tokens of the ``text`` haystack (:func:`kvprism.eval.heads.natural_text_ids`, a
seeded window of ``pydoc_data.topics``) through the model. Per layer the selection machinery of the loop is used
as is: a :class:`kvprism.selection.BlockSelector` fits the projection (``learned`` by default, on the ``fit_queries``
prefill queries that precede the reference queries — as the loop fits on the last prefill queries) and computes the
signatures of all ``N = context // block_size`` complete blocks. The reference queries are the last
``n_queries`` prompt positions (post-RoPE, held out of the fit), encoded the way the selector encodes a decode query
and reduced over the GQA group (``gqa_reduce = "sum"``: one summed encoded query per KV head).

Candidates are the blocks the loop would let top-k choose at the first reference query: ``[lo, hi)`` with
``lo = sink_blocks`` and ``hi`` the first block touching the recent ``window`` (:class:`kvprism.layout.BlockLayout`
at ``context − n_queries`` tokens); every reference query sees all of them causally. Stored per query:

- ``topk``: the exact top-``k_max`` candidate rows by signature score (best first; ties to the lower index) — what
  *signature recall* is measured against;
- ``attn_topk``: the top-``k_max`` candidate blocks by true attention mass of the query group (dense softmax over
  the keys up to the query's position, summed per block) — *block recall*, independent of the signature.

Several signature widths ``d_sigs`` come from the same prefill (one projection fit each). The file is a safetensors
archive whose metadata holds the JSON header of parameters (``kvprism_reference``); :func:`reference_set` caches
it under ``<kvprism cache dir>/design/`` keyed by its parameters (atomic write) and builds it on first use.

Shapes: ``L`` layers, ``H`` KV heads, ``N`` blocks, ``w`` signature width, ``n`` reference queries.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from kvprism.atomic import atomic_write
from kvprism.errors import KvprismError

__all__ = [
    "FORMAT_VERSION",
    "CaptureParams",
    "ReferenceSet",
    "capture",
    "default_path",
    "describe",
    "exact_topk",
    "reference_set",
]

#: bumped whenever the content of a reference set changes meaning (old cache files are then rebuilt)
FORMAT_VERSION = 1
_META_KEY = "kvprism_reference"


@dataclasses.dataclass(frozen=True)
class CaptureParams:
    """Parameters of a reference set (its cache key). Selection fields as in :class:`kvprism.selection.SelectionConfig`."""

    model: str = "smollm2"
    context: int = 8192
    block_size: int = 64
    d_sigs: tuple[int, ...] = (16, 32, 64)
    projection: str = "learned"
    signature: str = "mean"
    sign: str = "signed"
    sink_blocks: int = 1
    window: int = 64
    n_queries: int = 32
    fit_queries: int = 64
    k_max: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "d_sigs", tuple(int(d) for d in self.d_sigs))
        if not self.d_sigs or any(d < 1 for d in self.d_sigs):
            raise KvprismError(f"d_sigs = {self.d_sigs} is invalid; give at least one width >= 1")
        for name in ("context", "block_size", "n_queries", "k_max"):
            if getattr(self, name) < 1:
                raise KvprismError(f"{name} = {getattr(self, name)} is invalid; allowed range: [1, inf)")
        if self.fit_queries < 0 or self.sink_blocks < 0 or self.window < 0:
            raise KvprismError("fit_queries, sink_blocks and window must be >= 0")
        lo, hi = self.candidate_range
        if hi - lo < self.k_max:
            raise KvprismError(
                f"context = {self.context} gives {hi - lo} candidate blocks of {self.block_size} tokens (after "
                f"{self.sink_blocks} sink blocks, the {self.window}-token window and {self.n_queries} reference "
                f"queries); k_max = {self.k_max} needs at least as many: use a longer context or a smaller k_max"
            )

    @property
    def n_blocks(self) -> int:
        return self.context // self.block_size

    @property
    def candidate_range(self) -> tuple[int, int]:
        """``(lo, hi)`` candidate rows (see the module docstring)."""
        from kvprism.layout import BlockGeometry

        lay = BlockGeometry(self.block_size, self.sink_blocks, self.window).at(self.context - self.n_queries)
        nb, end = int(lay.n_blocks[0]), int(lay.candidate_end[0])
        lo = min(self.sink_blocks, nb)
        return lo, max(lo, end)

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "d_sigs": list(self.d_sigs), "format": FORMAT_VERSION}

    def key(self) -> str:
        """Short stable hash of the parameters (and the format version)."""
        blob = json.dumps(self.to_json(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


@dataclasses.dataclass
class ReferenceSet:
    """A captured reference set (see the module docstring).

    ``signatures[d]``: ``[L, H, N, w]`` float32; ``queries[d]``: ``[L, H, n, w]`` float32 (encoded, GQA-summed);
    ``topk[d]``: ``[L, H, n, k_max]`` int64 exact top-k rows; ``attn_topk``: ``[L, H, n, k_max]`` int64;
    ``query_pos``: ``[n]`` int64 positions of the reference queries.
    """

    params: CaptureParams
    signatures: dict[int, torch.Tensor]
    queries: dict[int, torch.Tensor]
    topk: dict[int, torch.Tensor]
    attn_topk: torch.Tensor
    query_pos: torch.Tensor
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def d_sigs(self) -> tuple[int, ...]:
        return tuple(sorted(self.signatures))

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(L, H, N, n)``."""
        sig = self.signatures[self.d_sigs[0]]
        return int(sig.shape[0]), int(sig.shape[1]), int(sig.shape[2]), int(self.query_pos.numel())

    @property
    def candidate_range(self) -> tuple[int, int]:
        return self.params.candidate_range

    def check_d(self, d_sig: int) -> None:
        if d_sig not in self.signatures:
            raise KvprismError(f"d_sig = {d_sig} is not in the reference set; available: {list(self.d_sigs)}")

    def width(self, d_sig: int) -> int:
        """Signature width w (= comb lines) for ``d_sig`` (``2·d_sig`` for minmax signatures)."""
        self.check_d(d_sig)
        return int(self.signatures[d_sig].shape[-1])

    # ---------------------------------------------------------------- file format
    def save(self, path: str | Path) -> Path:
        """Write atomically (temp file + rename) as safetensors with the JSON header in the metadata."""
        from safetensors.torch import save_file

        tensors = {"attn_topk": self.attn_topk.contiguous(), "query_pos": self.query_pos.contiguous()}
        for d in self.d_sigs:
            tensors[f"sig.d{d}"] = self.signatures[d].contiguous()
            tensors[f"qry.d{d}"] = self.queries[d].contiguous()
            tensors[f"topk.d{d}"] = self.topk[d].contiguous()
        meta = {_META_KEY: json.dumps({"params": self.params.to_json(), "info": self.info})}
        path = Path(path)
        atomic_write(path, lambda p: save_file(tensors, str(p), metadata=meta))
        return path

    @classmethod
    def load(cls, path: str | Path) -> ReferenceSet:
        """Read a file written by :meth:`save`; :class:`KvprismError` for a missing or foreign file."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise KvprismError(f"reference set {path} does not exist")
        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata() or {}
                tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (safe_open has no __iter__)
        except Exception as exc:  # safetensors raises its own error types
            raise KvprismError(f"reference set {path} is not a safetensors file ({exc})") from None
        if _META_KEY not in meta:
            raise KvprismError(f"{path} is not a kvprism reference set (no '{_META_KEY}' header)")
        head = json.loads(meta[_META_KEY])
        p = dict(head["params"])
        if p.pop("format", None) != FORMAT_VERSION:
            raise KvprismError(f"reference set {path} has another format version; capture it again")
        params = CaptureParams(**{**p, "d_sigs": tuple(p["d_sigs"])})
        return cls(
            params=params,
            signatures={d: tensors[f"sig.d{d}"] for d in params.d_sigs},
            queries={d: tensors[f"qry.d{d}"] for d in params.d_sigs},
            topk={d: tensors[f"topk.d{d}"] for d in params.d_sigs},
            attn_topk=tensors["attn_topk"],
            query_pos=tensors["query_pos"],
            info=head.get("info", {}),
        )


# -------------------------------------------------------------------------------------------------------- capture
def exact_topk(scores: torch.Tensor, lo: int, hi: int, k: int) -> torch.Tensor:
    """Top-``k`` rows of ``scores [..., N]`` among the candidates ``lo <= j < hi``: ``[..., k]`` int64, best first,
    ties to the lower index (a stable descending sort)."""
    cand = scores[..., lo:hi]
    order = torch.sort(cand, dim=-1, descending=True, stable=True).indices[..., :k]
    return order + lo


def _decoder_dims(model: Any) -> tuple[int, int, int, int]:
    cfg = model.config.get_text_config(decoder=True)
    hq = cfg.num_attention_heads
    hkv = getattr(cfg, "num_key_value_heads", None) or hq
    d = getattr(cfg, "head_dim", None) or cfg.hidden_size // hq
    return cfg.num_hidden_layers, hq, hkv, d


def capture(
    model: Any,
    tokenizer: Any,
    params: CaptureParams | None = None,
    *,
    show_progress: bool = False,
    chunk_tokens: int = 2048,
) -> ReferenceSet:
    """Capture a reference set from one prefill of ``model`` (see the module docstring). Deterministic for
    ``params.seed`` (text window, random projections); the model runs densely and is left as it was."""
    from transformers import DynamicCache

    from kvprism.eval.heads import natural_text_ids
    from kvprism.hf.attention import ATTN_NAME, keep_prefill_queries, prefill_queries, use_kvprism_attention
    from kvprism.hf.cache import chunked_prefill
    from kvprism.selection import BlockSelector, SelectionConfig, block_signatures

    p = params or CaptureParams()
    n_layers, hq, hkv, head_dim = _decoder_dims(model)
    g = hq // hkv
    window = getattr(model.config, "max_position_embeddings", None)
    if window is not None and p.context > window:
        raise KvprismError(f"context = {p.context} exceeds the model's window of {window} tokens")
    ids = natural_text_ids(tokenizer, p.context, p.seed)
    previous = model.config._attn_implementation
    cache = DynamicCache(config=model.config)
    keep_prefill_queries(cache, p.n_queries + p.fit_queries)
    try:
        use_kvprism_attention(model)  # dense sdpa on a DynamicCache, recording the prefill queries
        chunked_prefill(model, ids.to(model.device), cache, chunk_tokens=chunk_tokens)
    finally:
        if previous != ATTN_NAME:
            model.set_attn_implementation(previous)
    t = p.context
    bs = p.block_size
    nb = p.n_blocks
    lo, hi = p.candidate_range
    qpos = torch.arange(t - p.n_queries, t)
    fit_pos = torch.arange(t - p.n_queries - p.fit_queries, t - p.n_queries)
    scaling = head_dim**-0.5
    sig_out: dict[int, list[torch.Tensor]] = {d: [] for d in p.d_sigs}
    qry_out: dict[int, list[torch.Tensor]] = {d: [] for d in p.d_sigs}
    attn_out: list[torch.Tensor] = []
    from rich.progress import Progress

    with Progress(disable=not show_progress, transient=True) as progress:
        bar = progress.add_task("signatures per layer", total=n_layers)
        for layer in range(n_layers):
            keys = cache.layers[layer].keys.float().cpu()  # [1, H, T, D] post-RoPE
            valid = torch.ones(1, t, dtype=torch.bool)
            q_all = prefill_queries(cache, layer).queries.float().cpu()  # [1, Hq, n + f, D]
            q_ref = q_all[:, :, -p.n_queries :].reshape(1, hkv, g, p.n_queries, head_dim).transpose(2, 3)
            q_fit = q_all[:, :, : -p.n_queries].reshape(1, hkv, g, -1, head_dim).transpose(2, 3)
            attn_out.append(_attention_topk(q_ref[0], keys[0], qpos, bs, lo, hi, p.k_max, scaling))
            for d in p.d_sigs:
                sel = SelectionConfig(
                    block_size=bs, d_sig=d, projection=p.projection, signature=p.signature, sign=p.sign,
                    sink_blocks=p.sink_blocks, window=p.window, seed=p.seed, gqa_reduce="sum",
                )  # fmt: skip
                selector = BlockSelector(sel, layer, hkv, torch.ones(hkv, dtype=torch.bool))
                fit_q = q_fit if p.fit_queries > 0 else None
                selector.fit(
                    keys, valid, scaling=scaling, queries=fit_q, query_pos=fit_pos if fit_q is not None else None
                )
                sig = block_signatures(
                    sel,
                    selector.proj,
                    keys[:, :, : nb * bs],
                    valid[:, : nb * bs],
                    layer_idx=layer,
                    probe=selector.probe,
                )[0]  # [H, N, w]
                enc = selector.encode_query(q_ref).sum(3)[0]  # [H, n, w] (GQA sum)
                sig_out[d].append(sig)
                qry_out[d].append(enc)
            progress.advance(bar)
    signatures = {d: torch.stack(v).contiguous() for d, v in sig_out.items()}
    queries = {d: torch.stack(v).contiguous() for d, v in qry_out.items()}
    topk = {d: exact_topk(queries[d] @ signatures[d].transpose(-1, -2), lo, hi, p.k_max) for d in p.d_sigs}
    info = {"layers": n_layers, "kv_heads": hkv, "q_heads": hq, "head_dim": head_dim, "candidates": [lo, hi]}
    return ReferenceSet(p, signatures, queries, topk, torch.stack(attn_out), qpos, info)


def _attention_topk(
    q: torch.Tensor, keys: torch.Tensor, qpos: torch.Tensor, bs: int, lo: int, hi: int, k: int, scaling: float
) -> torch.Tensor:
    """``q [H, n, G, D]``, ``keys [H, T, D]`` -> ``[H, n, k]``: top-k candidate blocks by the query group's dense
    attention mass (softmax over keys ``<= qpos``, summed over the group and the block)."""
    t = keys.shape[1]
    logits = torch.einsum("hngd,htd->hngt", q.float(), keys.float()) * scaling
    causal = torch.arange(t)[None, :] <= qpos[:, None]  # [n, T]
    probs = torch.softmax(logits.masked_fill(~causal[None, :, None, :], -math.inf), dim=-1).sum(2)  # [H, n, T]
    nb = t // bs
    mass = probs[..., : nb * bs].reshape(*probs.shape[:2], nb, bs).sum(-1)
    return exact_topk(mass, lo, hi, k)


# --------------------------------------------------------------------------------------------------------- cache
def default_path(params: CaptureParams) -> Path:
    """Cache file of a reference set: ``<cache dir>/design/ref-<model>-<context>-<key>.safetensors``."""
    from kvprism.hf.models import cache_dir

    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in params.model)
    return cache_dir() / "design" / f"ref-{safe}-{params.context}-{params.key()}.safetensors"


def reference_set(
    params: CaptureParams | None = None,
    *,
    model: Any = None,
    tokenizer: Any = None,
    path: str | Path | None = None,
    rebuild: bool = False,
    show_progress: bool = False,
) -> ReferenceSet:
    """The reference set for ``params`` from the cache (``path`` or :func:`default_path`), captured and cached on
    first use. ``model``/``tokenizer`` default to ``load_model(params.model)``."""
    p = params or CaptureParams()
    path = Path(path) if path is not None else default_path(p)
    if path.is_file() and not rebuild:
        ref = ReferenceSet.load(path)
        if ref.params != p:
            raise KvprismError(f"{path} holds a reference set with other parameters; pass rebuild=True or another path")
        return ref
    if model is None:
        from kvprism.hf.models import load_model

        model, tokenizer = load_model(p.model)
    elif tokenizer is None:
        raise KvprismError("reference_set: a model needs its tokenizer")
    ref = capture(model, tokenizer, p, show_progress=show_progress)
    ref.save(path)
    return ref


def describe(ref: ReferenceSet) -> list[tuple[str, str]]:
    """(quantity, value) rows summarising a reference set."""
    layers, heads, n, nq = ref.shape
    lo, hi = ref.candidate_range
    size = sum(t.numel() * t.element_size() for t in _all_tensors(ref))
    return [
        ("model / context", f"{ref.params.model} / {ref.params.context} tokens"),
        ("layers × KV heads", f"{layers} × {heads}"),
        ("blocks N (block size)", f"{n} ({ref.params.block_size} tokens)"),
        ("candidate rows", f"[{lo}, {hi}) = {hi - lo}"),
        ("reference queries", f"{nq} (positions {int(ref.query_pos[0])}…{int(ref.query_pos[-1])})"),
        ("d_sig (width)", ", ".join(f"{d} ({ref.width(d)})" for d in ref.d_sigs)),
        ("projection / signature", f"{ref.params.projection} / {ref.params.signature}"),
        ("exact top-k stored", f"k ≤ {ref.params.k_max}"),
        ("tensor bytes", f"{size / 1e6:.2f} MB"),
    ]


def _all_tensors(ref: ReferenceSet) -> Sequence[torch.Tensor]:
    return [*ref.signatures.values(), *ref.queries.values(), *ref.topk.values(), ref.attn_topk, ref.query_pos]
