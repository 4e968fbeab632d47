"""A tiny reference set for the design tests: a tiny random Llama and a word-level tokenizer over the most frequent
words of the natural-text haystack (so that different text windows give different token ids)."""

from __future__ import annotations

import collections
import functools
import re

import pytest
import torch

from tests.conftest import tiny_model

TINY_CAPTURE = dict(
    model="tiny", context=512, block_size=16, d_sigs=(8, 16), n_queries=8, fit_queries=16, k_max=8, window=16
)


@functools.lru_cache(maxsize=1)
def text_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from kvprism.eval.tasks import haystack_text

    counts = collections.Counter(re.findall(r"\w+|[^\w\s]", haystack_text()))
    words = ["<pad>", "<s>", "</s>", "[UNK]"] + [w for w, _ in counts.most_common(124)]
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="[UNK]"
    )


def capture_params(**overrides):
    from kvprism.search.capture import CaptureParams

    return CaptureParams(**{**TINY_CAPTURE, **overrides})


@functools.lru_cache(maxsize=4)
def tiny_reference(seed: int = 0):
    """The tiny reference set (captured once per process and seed; do not modify it)."""
    from kvprism.search.capture import capture

    return capture(tiny_model(), text_tokenizer(), capture_params(seed=seed))


@pytest.fixture(autouse=False)
def one_thread():
    """Run a test on one torch thread (the machines running the suite are shared: more threads thrash)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
