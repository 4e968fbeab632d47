"""Fixtures shared by the command-line tests."""

from __future__ import annotations

import pytest

from tests.conftest import tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A tiny random Llama and its tokenizer saved as a model directory (``--model DIR``)."""
    d = tmp_path_factory.mktemp("tiny-model")
    tiny_model("llama").save_pretrained(d)
    tiny_tokenizer().save_pretrained(d)
    return d
