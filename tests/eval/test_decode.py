"""The one greedy decode path (kvprism.eval.decode): the same tokens as ``model.generate`` for dense attention."""

import pytest
import torch

from kvprism.eval.decode import eos_ids, fork_dynamic_cache, greedy_decode, prefill
from tests.conftest import tiny_model, tiny_tokenizer


@pytest.mark.parametrize(("family", "chunk_tokens"), [("llama", None), ("qwen2", None), ("llama", 7)])
def test_greedy_decode_matches_generate_for_dense(family, chunk_tokens):
    model = tiny_model(family, seed=3)
    ids = torch.randint(3, 128, (1, 40), generator=torch.Generator().manual_seed(1))
    n_new = 12
    ref = model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=n_new, do_sample=False, eos_token_id=None
    )
    expected = ref[0, ids.shape[1] :].tolist()
    cache = prefill(model, ids[:, :-1], chunk_tokens=chunk_tokens)
    tokens, first_logits, secs = greedy_decode(model, cache, ids[:, -1:], n_new)
    assert tokens == expected
    assert first_logits.shape == (model.config.vocab_size,) and int(first_logits.argmax()) == expected[0]
    assert secs > 0


def test_greedy_decode_stops_at_eos_and_leaves_the_prefill_alone():
    model = tiny_model("llama", seed=3)
    ids = torch.randint(3, 128, (1, 30), generator=torch.Generator().manual_seed(2))
    cache = prefill(model, ids[:, :-1])
    n_cached = cache.get_seq_length()
    free, _, _ = greedy_decode(model, fork_dynamic_cache(cache), ids[:, -1:], 6)
    stop_at = free[2]
    stopped, _, _ = greedy_decode(model, fork_dynamic_cache(cache), ids[:, -1:], 6, frozenset({stop_at}))
    assert stopped == free[: free.index(stop_at) + 1]
    assert cache.get_seq_length() == n_cached  # forks never write the prefilled cache


def test_eos_ids_join_tokenizer_and_generation_config():
    model = tiny_model("llama")
    model.generation_config.eos_token_id = [2, 7]
    assert eos_ids(model, tiny_tokenizer()) == frozenset({2, 7})
