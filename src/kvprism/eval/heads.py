"""Retrieval-head profiling.

For each (layer, KV head), ``R_h`` is the mean over query positions of the dense attention mass that falls outside
the first ``sink_tokens`` tokens and outside the recent ``window_tokens`` tokens, averaged over the head's query group,
measured on natural text (the ``pydoc_data.topics`` haystack, not random token ids). Heads with high ``R_h`` read the
middle of the context (retrieval heads, which get block selection); heads with low ``R_h`` live on the sink and the
recent window (streaming heads, which read sink + window only).

The mask is saved as JSON that ``SelectionConfig(heads=...)`` loads::

    {"layers": L, "kv_heads": H, "mask": [[bool] * H] * L, "scores": [[float] * H] * L, ...}

with ``True`` = retrieval head. The model runs densely with eager attention; forward hooks reduce each layer's
attention weights to ``[Hkv]`` as soon as they are computed, so only one layer's ``[Hq, T, T]`` weights exist at once.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kvprism.atomic import atomic_write
from kvprism.errors import KvprismError

#: Profiling defaults: tokens of natural text, sink tokens and recent-window tokens excluded from R_h, and the
#: fraction of heads marked as retrieval heads.
DEFAULT_TEXT_TOKENS = 2048
DEFAULT_SINK_TOKENS = 64
DEFAULT_WINDOW_TOKENS = 256
DEFAULT_FRACTION = 0.5


@dataclass(frozen=True)
class HeadProfile:
    """``scores``: ``[L, Hkv]`` R_h in [0, 1]; ``mask``: ``Bool[L, Hkv]`` (True = retrieval head)."""

    scores: torch.Tensor
    mask: torch.Tensor
    sink_tokens: int
    window_tokens: int
    fraction: float
    threshold: float
    text_tokens: int
    seed: int
    model: str = ""

    def to_json(self) -> dict[str, Any]:
        layers, kv_heads = self.scores.shape
        return {
            "layers": layers,
            "kv_heads": kv_heads,
            "mask": self.mask.tolist(),
            "scores": [[round(float(v), 6) for v in row] for row in self.scores],
            "sink_tokens": self.sink_tokens,
            "window_tokens": self.window_tokens,
            "fraction": self.fraction,
            "threshold": self.threshold,
            "text_tokens": self.text_tokens,
            "seed": self.seed,
            "model": self.model,
        }


def outside_mass(attn: torch.Tensor, sink_tokens: int, window_tokens: int) -> torch.Tensor:
    """Mean over query positions of the attention mass outside the sink and the recent window.

    Args:
        attn: ``[B, Hq, T, T]`` causal attention weights (rows sum to 1).
        sink_tokens: keys ``j < sink_tokens`` are the sink.
        window_tokens: keys ``j > t - window_tokens`` are the recent window of query ``t`` (the query itself
            included).

    Returns:
        ``[Hq]``: the mean over batch and over the query positions ``t >= sink_tokens + window_tokens`` (the ones that
        have any key outside sink and window).

    Raises:
        KvprismError: no query position has a key outside sink and window (text too short).
    """
    t = attn.shape[-1]
    first = sink_tokens + window_tokens
    if first >= t:
        raise KvprismError(
            f"text of {t} tokens is too short for sink {sink_tokens} + window {window_tokens}; "
            f"need more than {first} tokens"
        )
    q = torch.arange(first, t).unsqueeze(1)
    k = torch.arange(t).unsqueeze(0)
    mask = (k >= sink_tokens) & (k <= q - window_tokens)  # [T - first, T]
    rows = attn[:, :, first:, :].float()
    return (rows * mask).sum(-1).mean(dim=(0, 2))


def selection_sink_window(sel: Any = None) -> tuple[int, int]:
    """(sink tokens, window tokens) that block selection under ``sel`` (default ``SelectionConfig()``) always reads:
    ``sink_blocks · block_size`` and ``window``, so R_h measures exactly what a streaming head would miss."""
    from kvprism.selection import SelectionConfig

    sel = SelectionConfig() if sel is None else sel
    return sel.sink_blocks * sel.block_size, sel.window


def _decoder_layers(model: Any) -> list[Any]:
    inner = getattr(model, "model", model)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise KvprismError(f"cannot find decoder layers in {type(model).__name__}")
    return list(layers)


def profile_heads(
    model: Any,
    input_ids: torch.Tensor,
    *,
    sink_tokens: int,
    window_tokens: int,
) -> torch.Tensor:
    """R_h per (layer, KV head) of ``model`` on ``input_ids`` (``Long[B, T]``) -> ``[L, Hkv]`` float32.

    Runs one dense forward pass with eager attention (restored afterwards) and forward hooks on each layer's
    ``self_attn``.
    """
    cfg = model.config
    hq = cfg.num_attention_heads
    hkv = getattr(cfg, "num_key_value_heads", None) or hq
    layers = _decoder_layers(model)
    per_layer: dict[int, torch.Tensor] = {}

    def hook(idx: int):
        def fn(_module, _args, output):
            weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
            if weights is None:
                raise RuntimeError("attention weights unavailable; eager attention is required for head profiling")
            per_layer[idx] = outside_mass(weights, sink_tokens, window_tokens)
            return (output[0], None, *output[2:])  # drop the [B, Hq, T, T] weights right away

        return fn

    previous = cfg._attn_implementation
    handles = [layer.self_attn.register_forward_hook(hook(i)) for i, layer in enumerate(layers)]
    try:
        model.set_attn_implementation("eager")
        with torch.inference_mode():
            model(input_ids=input_ids.to(model.device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
        model.set_attn_implementation(previous)
    scores = torch.stack([per_layer[i] for i in range(len(layers))])  # [L, Hq]
    return scores.view(len(layers), hkv, hq // hkv).mean(-1)


def retrieval_mask(scores: torch.Tensor, fraction: float) -> tuple[torch.Tensor, float]:
    """Mark the top ``fraction`` of heads by R_h as retrieval heads (at least one). Returns (``Bool[L, Hkv]``,
    the score threshold: heads with ``R_h >= threshold`` are retrieval heads)."""
    if not 0.0 < fraction <= 1.0:
        raise KvprismError(f"fraction = {fraction} is invalid; allowed range: (0, 1]")
    flat = scores.flatten()
    n = max(1, round(fraction * flat.numel()))
    threshold = float(torch.sort(flat, descending=True).values[n - 1])
    order = torch.sort(flat, descending=True, stable=True).indices[:n]
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[order] = True
    return mask.view_as(scores), threshold


def natural_text_ids(tokenizer: Any, n_tokens: int, seed: int) -> torch.Tensor:
    """``Long[1, n_tokens]``: a seeded window of the natural-English haystack (BOS first when the tokenizer has one)."""
    from kvprism.eval.tasks import haystack_ids

    hay, _ = haystack_ids(tokenizer)
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    n = n_tokens - len(bos)
    if n < 1 or n > len(hay):
        raise KvprismError(f"text_tokens = {n_tokens} is invalid; allowed range: [{len(bos) + 1}, {len(hay)}]")
    start = random.Random(seed).randrange(0, len(hay) - n + 1)
    return torch.tensor([bos + list(hay[start : start + n])])


def run_profile(
    model: Any,
    tokenizer: Any,
    *,
    text_tokens: int = DEFAULT_TEXT_TOKENS,
    sink_tokens: int = DEFAULT_SINK_TOKENS,
    window_tokens: int = DEFAULT_WINDOW_TOKENS,
    fraction: float = DEFAULT_FRACTION,
    seed: int = 0,
    model_name: str = "",
) -> HeadProfile:
    """Profile all heads on ``text_tokens`` tokens of natural text and build the retrieval mask."""
    ids = natural_text_ids(tokenizer, text_tokens, seed)
    scores = profile_heads(model, ids, sink_tokens=sink_tokens, window_tokens=window_tokens)
    mask, threshold = retrieval_mask(scores, fraction)
    return HeadProfile(scores, mask, sink_tokens, window_tokens, fraction, threshold, text_tokens, seed, model_name)


def save_mask(profile: HeadProfile, path: str | Path) -> Path:
    """Write the mask JSON atomically (temp file + rename)."""
    path = Path(path)
    atomic_write(path, json.dumps(profile.to_json(), indent=1) + "\n")
    return path


def load_mask(path: str | Path) -> list[list[bool]]:
    """Read and validate a head mask JSON -> ``mask`` as ``L`` lists of ``Hkv`` bools.

    The file holds either the object written by :func:`save_mask` (``{"mask": ..., "layers": L, "kv_heads": H}``) or
    a bare list of lists of bools.

    Raises:
        KvprismError: missing file, malformed JSON, or a mask that is not a rectangular list of lists of bools (or
            whose shape does not match the file's ``layers`` × ``kv_heads``).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise KvprismError(f"head mask {path}: {exc}") from exc
    if isinstance(data, list):
        mask, layers, kv_heads = data, len(data), len(data[0]) if data and isinstance(data[0], list) else None
    elif isinstance(data, dict):
        mask = data.get("mask")
        layers, kv_heads = data.get("layers"), data.get("kv_heads")
        if isinstance(mask, list) and layers is None and kv_heads is None:
            layers, kv_heads = len(mask), len(mask[0]) if mask and isinstance(mask[0], list) else None
    else:
        raise KvprismError(f"head mask {path}: expected a JSON object with 'mask' or a list of lists of booleans")
    ok = (
        isinstance(mask, list)
        and len(mask) == layers
        and layers > 0
        and all(isinstance(r, list) and len(r) == kv_heads and all(isinstance(v, bool) for v in r) for r in mask)
    )
    if not ok:
        raise KvprismError(f"head mask {path}: 'mask' must be {layers} lists of {kv_heads} booleans")
    return mask


def plot_heatmap(profile: HeadProfile, path: str | Path, title: str = "") -> Path:
    """Heatmap PNG of R_h (layers × KV heads); retrieval heads are marked with a dot."""
    from kvprism.eval.plots import heatmap

    scores = profile.scores.numpy()
    layers, kv_heads = scores.shape
    ys, xs = torch.nonzero(profile.mask, as_tuple=True)
    return heatmap(
        scores, path, xticks=range(kv_heads), yticks=range(layers), xlabel="KV head", ylabel="layer",
        title=title or f"R_h (mass outside sink {profile.sink_tokens} + window {profile.window_tokens})",
        colorbar="R_h", marks=(ys.tolist(), xs.tolist()), marks_label="retrieval head",
        figsize=(2.0 + 0.6 * kv_heads, 1.5 + 0.22 * layers), dpi=120,
    )  # fmt: skip
