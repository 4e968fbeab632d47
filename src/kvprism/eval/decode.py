"""The one greedy decode path: prefill, then a greedy loop one token at a time.

:func:`prefill` fills a cache with the prompt (densely, in chunks); :func:`greedy_decode` continues from a cache that
holds every prompt token but the last. The evaluation runner, ``kvprism demo`` and the benchmarks decode through
these two functions, so "the answer of a configuration" means the same thing everywhere. :func:`default_decode` is
the runner's per-configuration decoder: a fork of the prefilled ``DynamicCache`` for ``dense``, a
``kvprism.hf.cache.SparseCache`` built from that fork otherwise.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from kvprism.eval.grid import EvalConfig

__all__ = [
    "DecodeFn",
    "DecodeOutput",
    "default_decode",
    "eos_ids",
    "fork_dynamic_cache",
    "fresh_cache",
    "greedy_decode",
    "prefill",
]


def eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    """Token ids that end an answer: the tokenizer's EOS and the model's generation-config EOS id(s)."""
    eos = {getattr(tokenizer, "eos_token_id", None)}
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    eos |= set(gen_eos) if isinstance(gen_eos, (list, tuple)) else {gen_eos}
    return frozenset(e for e in eos if e is not None)


def fork_dynamic_cache(cache: Any) -> Any:
    """A fork of a ``DynamicCache`` that shares the prefilled tensors without copying them. Safe because dynamic
    layers append with ``torch.cat`` (new tensors, assigned to the fork only); the original is never written."""
    fork = copy.copy(cache)
    fork.layers = [copy.copy(layer) for layer in cache.layers]
    return fork


def prefill(model: Any, input_ids: torch.Tensor, cache: Any | None = None, *, chunk_tokens: int | None = None) -> Any:
    """Dense prefill of ``input_ids [1, T]`` into ``cache`` (a fresh ``DynamicCache`` when None); returns the cache.

    ``chunk_tokens``: None runs the prompt in one forward pass (what the evaluation runner does); a number runs it
    in chunks of that many tokens (bounds activation memory on long prompts). Switches the model to the ``kvprism``
    attention function (dense on a ``DynamicCache``), which records the prefill queries that selection caches
    forked from it need."""
    from transformers import DynamicCache

    from kvprism.hf.attention import use_kvprism_attention
    from kvprism.hf.cache import cache_kwargs, chunked_prefill

    use_kvprism_attention(model)
    cache = DynamicCache(config=model.config) if cache is None else cache
    ids = input_ids.to(model.device)
    if chunk_tokens is not None:
        chunked_prefill(model, ids, cache, chunk_tokens=chunk_tokens)
        return cache
    with torch.inference_mode():
        model(input_ids=ids, use_cache=True, logits_to_keep=1, **cache_kwargs(model, cache))
    return cache


def greedy_decode(
    model: Any, cache: Any, last_ids: torch.Tensor, max_new_tokens: int, eos_ids: frozenset[int] = frozenset()
) -> tuple[list[int], torch.Tensor, float]:
    """Greedy decode from ``cache`` (which holds all prompt tokens but ``last_ids [1, 1]``): at most
    ``max_new_tokens`` tokens, stopping after the first one in ``eos_ids`` (kept in the output).

    Returns:
        ``(tokens, first-step logits [V] float32 on the CPU, seconds)``; the first token is the one the prompt's last
        token produces.
    """
    from kvprism.hf.cache import cache_kwargs

    pos = cache.get_seq_length()
    tok = last_ids.to(model.device)
    tokens: list[int] = []
    first_logits = None
    t0 = time.perf_counter()
    with torch.inference_mode():
        for step in range(max_new_tokens):
            position_ids = torch.tensor([[pos + step]], device=model.device)
            out = model(
                input_ids=tok, position_ids=position_ids, use_cache=True, logits_to_keep=1, **cache_kwargs(model, cache)
            )
            logits = out.logits[0, -1].float()
            if first_logits is None:
                first_logits = logits.cpu()
            nxt = int(logits.argmax())
            tokens.append(nxt)
            if nxt in eos_ids:
                break
            tok = torch.tensor([[nxt]], device=model.device)
    return tokens, first_logits, time.perf_counter() - t0


@dataclass
class DecodeOutput:
    """What one configuration's decode returns.

    ``tokens``: generated ids (the first one produced by the prompt's last token); ``first_logits``: ``[V]`` logits of
    the first answer token; ``stats``: ``SparseCache.stats.summary()`` (``None`` for dense); ``trace``: per decode step
    ``{layer: {"query": [B, Hq, D], "blocks": Long[B, Hkv, k], "token_mask": Bool[B, Hkv, T]}}`` (``None`` for dense);
    ``decode_s``: wall time of the decode in seconds.
    """

    tokens: list[int]
    first_logits: torch.Tensor
    stats: dict[str, Any] | None
    trace: list[dict[int, dict[str, torch.Tensor]]] | None
    decode_s: float


#: ``(model, prefilled_cache, last_ids [1, 1], config, max_new_tokens, eos_ids) -> DecodeOutput``; must not mutate
#: ``prefilled_cache``.
DecodeFn = Callable[[Any, Any, torch.Tensor, "EvalConfig", int, frozenset[int]], DecodeOutput]


def fresh_cache(model: Any, prefilled: Any, selection: Any | None, *, trace: bool = False, oracle: bool = False) -> Any:
    """The cache one configuration decodes from, built from ``prefilled`` without changing it: a fork of the
    ``DynamicCache`` for dense (``selection`` None), else ``SparseCache.from_prefilled(model, prefilled, selection)``
    (``oracle``: the attention-mass reference selects)."""
    if selection is None:
        return fork_dynamic_cache(prefilled)
    from kvprism.hf.cache import SparseCache

    return SparseCache.from_prefilled(model, prefilled, selection, trace=trace, oracle=oracle)


def default_decode(
    model: Any,
    prefilled: Any,
    last_ids: torch.Tensor,
    config: EvalConfig,
    max_new_tokens: int,
    eos_ids: frozenset[int],
) -> DecodeOutput:
    """Dense: greedy decode from a forked ``DynamicCache``. Selection configs (and the oracle, ``oracle=True``): from
    ``SparseCache.from_prefilled(model, prefilled, sel, trace=True)`` (a fork by contract)."""
    if config.method == "dense":
        tokens, logits, secs = greedy_decode(
            model, fresh_cache(model, prefilled, None), last_ids, max_new_tokens, eos_ids
        )
        return DecodeOutput(tokens, logits, None, None, secs)
    sel = config.selection_config()
    cache = fresh_cache(model, prefilled, sel, trace=True, oracle=config.method == "oracle")
    tokens, logits, secs = greedy_decode(model, cache, last_ids, max_new_tokens, eos_ids)
    return DecodeOutput(tokens, logits, cache.stats.summary(), list(cache.trace), secs)
