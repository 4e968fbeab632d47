"""Hugging Face integration: model loading, sparse KV cache, the ``"kvprism"`` attention function."""
