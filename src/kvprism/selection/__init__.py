"""Query-aware block selection: which cached tokens each (layer, KV head) reads at a decode step.

:class:`SelectionConfig` (:mod:`.config`) carries every knob. One :class:`BlockSelector` (:mod:`.selector`) per layer
owns the projection, the signatures' scorer (one weight bank per (batch row, KV head)) and does GQA reduction and
top-k. What fitting a layer on its prefill produces -- projection, probe, block signatures -- are functions of the
config (:mod:`.fit`). The scorers (what ranks the blocks: ``exact``, ``photonic``, ``seed-as-published``) live in
:mod:`kvprism.scorers`.

What a decode step reads, per (batch row, KV head), is defined once in :mod:`kvprism.layout` (:class:`BlockLayout`):
the ``sink_blocks`` first blocks holding real (non-padding) tokens, the top-``k`` candidate blocks by score, and the
*tail*: the ``window`` most recent tokens together with the incomplete last block. Padding tokens are never read.
"Streaming" heads (masked out in ``heads``) read sink + tail only. Top-k is :func:`kvprism.layout.topk_blocks`
(ties: the lower block id).
"""

from kvprism.selection.config import SelectionConfig, resolve_heads
from kvprism.selection.fit import (
    block_signatures,
    derive_seed,
    fit_layer_projection,
    fit_uses_queries,
    layer_probe,
    needs_queries,
    signature_settings,
)
from kvprism.selection.selector import BlockSelector

__all__ = [
    "BlockSelector",
    "SelectionConfig",
    "block_signatures",
    "derive_seed",
    "fit_layer_projection",
    "fit_uses_queries",
    "layer_probe",
    "needs_queries",
    "resolve_heads",
    "signature_settings",
]
