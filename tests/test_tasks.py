import pytest

from kvprism.errors import KvprismError
from kvprism.eval.tasks import haystack_text, niah_single


def test_haystack_is_natural_text():
    text = haystack_text()
    assert len(text) > 300_000 and "the" in text


@pytest.mark.parametrize("context", [256, 1000, 2048])
@pytest.mark.parametrize("depth", [0.0, 0.5, 1.0])
def test_exact_length_and_needle_depth(smollm2_tokenizer, context, depth):
    s = niah_single(smollm2_tokenizer, context, depth, seed=1)
    assert len(s.input_ids) == context
    (start, end), value = s.needle_spans[0], s.answers[0]
    needle = smollm2_tokenizer.decode(s.input_ids[start:end])
    assert value in needle and "special magic number" in needle
    assert s.question in smollm2_tokenizer.decode(s.input_ids)
    # the needle sits at the requested fraction of the context, up to one text line (pydoc lines are short)
    assert abs(start / context - depth) < 0.25 if context < 1000 else abs(start / context - depth) < 0.12


def test_seeds_differ_and_repeat(smollm2_tokenizer):
    a, b, c = (niah_single(smollm2_tokenizer, 512, 0.5, seed=s) for s in (1, 1, 2))
    assert a == b and a.answers != c.answers


def test_scoring():
    from kvprism.eval.tasks import Sample

    s = Sample([1], ["1234567"], [(0, 1)], 1, 0.0, 0, "q")
    assert s.score("It is 1234567.") and not s.score("It is 1234568.")


def test_bad_inputs(smollm2_tokenizer):
    with pytest.raises(KvprismError, match=r"depth = 1.5 is invalid"):
        niah_single(smollm2_tokenizer, 512, 1.5, seed=0)
    with pytest.raises(KvprismError, match="too short"):
        niah_single(smollm2_tokenizer, 40, 0.5, seed=0)
    with pytest.raises(KvprismError, match="exceeds the haystack"):
        niah_single(smollm2_tokenizer, 10_000_000, 0.5, seed=0)
