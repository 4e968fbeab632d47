"""Hugging Face integration: model loading (:mod:`~kvprism.hf.models`), the ``"kvprism"`` attention function
(:mod:`~kvprism.hf.attention`), the sparse KV cache (:mod:`~kvprism.hf.cache`) and its decode step
(:mod:`~kvprism.hf.pipeline`), and the fixed-shape cache for CUDA graphs (:mod:`~kvprism.hf.static`)."""
