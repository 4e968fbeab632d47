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


# ------------------------------------------------------------------------------------------- task registry
from kvprism.eval.tasks import make_sample, string_match_all, string_match_fraction  # noqa: E402

# the tasks with a choice of haystack (RULER's names fix theirs: tests/eval/test_tasks_ruler.py; cwe / fwe have none)
HAYSTACK_TASKS = ["niah_multikey", "niah_multiquery", "niah_multivalue", "niah_single", "vt"]


@pytest.mark.parametrize("task", HAYSTACK_TASKS)
@pytest.mark.parametrize("haystack", ["noise", "text", "needles"])
def test_every_task_and_haystack_exact_length(smollm2_tokenizer, task, haystack):
    tok = smollm2_tokenizer
    s = make_sample(task, tok, 1500, 0.4, seed=3, haystack=haystack)
    assert len(s.input_ids) == 1500 and s.meta["task"] == task and s.meta["haystack"] == haystack
    text = tok.decode(s.input_ids)
    assert s.question in text
    # every answer is in some needle span; spans are disjoint and in prompt order
    needles = [tok.decode(s.input_ids[a:b]) for a, b in s.needle_spans]
    for ans in s.answers:
        assert any(ans in n for n in needles), (ans, needles)
    assert all(b1 <= a2 for (_, b1), (a2, _) in zip(s.needle_spans, s.needle_spans[1:], strict=False))
    # the first target needle sits at the requested depth (one text line of slack)
    assert abs(s.depth - 0.4) < 0.12
    assert len(s.target_spans) == sum(s.meta["target"]) >= 1


def test_task_shapes(smollm2_tokenizer):
    tok = smollm2_tokenizer
    mk = make_sample("niah_multikey", tok, 1200, 0.5, 0)
    assert len(mk.answers) == 1 and len(mk.needle_spans) == 4 and sum(mk.meta["target"]) == 1
    distractor_needles = [
        tok.decode(mk.input_ids[a:b]) for (a, b), t in zip(mk.needle_spans, mk.meta["target"], strict=True) if not t
    ]
    assert all(mk.meta["key"] not in n for n in distractor_needles)
    mv = make_sample("niah_multivalue", tok, 1200, 0.5, 0)
    assert len(mv.answers) == 4 and len(set(mv.answers)) == 4 and "What are all" in mv.question
    mq = make_sample("niah_multiquery", tok, 1200, 0.5, 0)
    assert len(mq.answers) == 4 and all(k in mq.question for k in mq.meta["keys"])
    vt = make_sample("vt", tok, 1200, 0.2, 0)
    chain = [tok.decode(vt.input_ids[a:b]).strip() for a, b in vt.needle_spans]
    # chain statements appear in order: VAR A = value, VAR B = VAR A, ...
    names = vt.answers
    assert chain[0].startswith(f"VAR {names[0]} = ") and chain[1] == f"VAR {names[1]} = VAR {names[0]}."
    assert [a for a, _ in vt.needle_spans] == sorted(a for a, _ in vt.needle_spans)


def test_value_kinds(smollm2_tokenizer):
    import re
    import uuid

    tok = smollm2_tokenizer
    num = make_sample("niah_single", tok, 600, 0.5, 4, values="numbers").answers[0]
    assert re.fullmatch(r"[1-9]\d{6}", num)
    u1 = make_sample("niah_single", tok, 600, 0.5, 4, values="uuids").answers[0]
    u2 = make_sample("niah_single", tok, 600, 0.5, 4, values="uuids").answers[0]
    assert u1 == u2 and uuid.UUID(u1).version == 4  # seeded, reproducible
    w = make_sample("niah_single", tok, 600, 0.5, 4, values="words").answers[0]
    assert re.fullmatch(r"[a-z]+-[a-z]+", w)


def test_noise_haystack_is_repeated_sentences(smollm2_tokenizer):
    s = make_sample("niah_single", smollm2_tokenizer, 800, 0.0, 0, haystack="noise", chat=False)
    text = smollm2_tokenizer.decode(s.input_ids)
    assert text.count("The grass is green.") > 20


def test_depth_extremes_multi(smollm2_tokenizer):
    for depth in (0.0, 1.0):
        s = make_sample("niah_multivalue", smollm2_tokenizer, 1000, depth, 1)
        assert len(s.input_ids) == 1000 and abs(s.depth - depth) < 0.15


def test_string_match():
    assert string_match_all("Values: 111, 222 and 333", ["111", "333"])
    assert not string_match_all("Values: 111", ["111", "333"])
    assert string_match_all("ABC-def", ["abc-DEF"])  # case-insensitive
    assert string_match_fraction("111 and 444", ["111", "222", "333", "444"]) == 0.5


def test_registry_errors(smollm2_tokenizer):
    with pytest.raises(KvprismError, match="task = 'nope' is unknown"):
        make_sample("nope", smollm2_tokenizer, 500, 0.5, 0)
    with pytest.raises(KvprismError, match="haystack = 'x' is invalid"):
        make_sample("niah_single", smollm2_tokenizer, 500, 0.5, 0, haystack="x")
    with pytest.raises(KvprismError, match="values = 'x' is invalid"):
        make_sample("vt", smollm2_tokenizer, 500, 0.5, 0, values="x")
    with pytest.raises(KvprismError, match=r"depth = -0.1 is invalid"):
        make_sample("niah_multiquery", smollm2_tokenizer, 500, -0.1, 0)


def test_tiny_tokenizer_exact_length():
    from tests.conftest import tiny_tokenizer

    s = make_sample("niah_multikey", tiny_tokenizer(), 300, 0.5, 0, haystack="noise")
    assert len(s.input_ids) == 300
