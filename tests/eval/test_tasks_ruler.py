"""RULER's offline tasks: exact token lengths, answers recoverable from the prompt, RULER's names and types."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from kvprism.errors import KvprismError
from kvprism.eval.tasks import (
    FWE_DOTS,
    RULER_EXTERNAL,
    RULER_TASKS,
    TASKS,
    expand_tasks,
    make_sample,
    word_list,
)

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"


def _list_section(text: str, question_start: str) -> str:
    return text[: text.index(question_start)]


@pytest.mark.parametrize("context", [1024, 3000])
def test_cwe_exact_length_and_the_answer_is_the_list_s_most_common_words(smollm2_tokenizer, context):
    s = make_sample("cwe", smollm2_tokenizer, context, 0.5, seed=3)
    assert len(s.input_ids) == context
    text = smollm2_tokenizer.decode(s.input_ids)
    words = re.findall(r"^\d+\. ([a-z]+)$", _list_section(text, "Question:"), flags=re.M)
    counts = Counter(words).most_common()
    top = [w for w, _ in counts[:10]]
    assert sorted(top) == sorted(s.answers) and len(s.answers) == 10
    assert counts[9][1] > counts[10][1]  # the 10 are unambiguous
    assert all(w in word_list() for w in words)
    assert "10 most common words" in text
    assert len(s.needle_spans) == sum(c for _, c in counts[:10])  # one span per occurrence of a common word
    for a, b in s.needle_spans[:20]:
        assert smollm2_tokenizer.decode(s.input_ids[a:b]).split(". ")[1].strip() in s.answers


@pytest.mark.parametrize("context", [1024, 3000])
def test_fwe_exact_length_and_the_answer_is_the_text_s_most_frequent_words(smollm2_tokenizer, context):
    s = make_sample("fwe", smollm2_tokenizer, context, 0.0, seed=5)
    assert len(s.input_ids) == context
    text = smollm2_tokenizer.decode(s.input_ids)
    body = _list_section(text, "Question:").split("coded words.", 1)[1]
    counts = Counter(w for w in body.split() if w != FWE_DOTS).most_common()
    assert [w for w, _ in counts[:3]] == s.answers
    assert counts[2][1] > counts[3][1]
    assert Counter(body.split()).most_common(1)[0][0] == FWE_DOTS  # rank 1 is the dots the question says to ignore


def test_word_tasks_are_seeded(smollm2_tokenizer):
    for task in ("cwe", "fwe"):
        a, b, c = (make_sample(task, smollm2_tokenizer, 1500, 0.5, seed=s) for s in (1, 1, 2))
        assert a.input_ids == b.input_ids and a.answers == b.answers and a.answers != c.answers


def test_word_tasks_reject_bad_input(smollm2_tokenizer):
    with pytest.raises(KvprismError, match="too short"):
        make_sample("cwe", smollm2_tokenizer, 200, 0.5, seed=0)
    with pytest.raises(KvprismError, match="generates its own word list"):
        make_sample("cwe", smollm2_tokenizer, 2000, 0.5, seed=0, haystack="noise")
    with pytest.raises(KvprismError, match="depth"):
        make_sample("fwe", smollm2_tokenizer, 2000, 1.5, seed=0)


@pytest.mark.parametrize(
    "task, haystack, value_re, n_needles",
    [
        ("niah_single_1", "noise", r"\d{7}", 1),
        ("niah_single_2", "text", r"\d{7}", 1),
        ("niah_single_3", "text", UUID, 1),
        ("niah_multikey_1", "text", r"\d{7}", 4),
        ("niah_multikey_2", "needles", r"\d{7}", 1),
        ("niah_multikey_3", "needles", UUID, 1),
        ("niah_multivalue", "text", r"\d{7}", 4),
        ("niah_multiquery", "text", r"\d{7}", 4),
        ("vt", "noise", r"[A-Z]{5}", 5),
    ],
)
def test_ruler_niah_variants_have_ruler_s_types(smollm2_tokenizer, task, haystack, value_re, n_needles):
    s = make_sample(task, smollm2_tokenizer, 2048, 0.5, seed=2)
    assert len(s.input_ids) == 2048
    assert s.meta["task"] == task and s.meta["haystack"] == haystack and len(s.needle_spans) == n_needles
    text = smollm2_tokenizer.decode(s.input_ids)
    for a in s.answers:
        assert re.fullmatch(value_re, a), a
    for (start, end), is_target in zip(s.needle_spans, s.meta["target"], strict=True):
        if is_target:
            assert any(a in smollm2_tokenizer.decode(s.input_ids[start:end]) for a in s.answers)
    if task == "niah_multikey_3":  # uuid keys, also on the distractor needles that make up the haystack
        key = s.meta["key"]
        assert re.fullmatch(UUID, key) and f"for {key} is: {s.answers[0]}" in text
        assert len(re.findall(rf"for {UUID} is: {UUID}", text)) > 10
    if haystack == "needles":
        assert text.count("One of the special magic") > 10


def test_ruler_set_and_its_names():
    assert set(expand_tasks(["ruler"])) == set(RULER_TASKS) and len(RULER_TASKS) == 11
    assert expand_tasks(["niah_single", "ruler", "cwe"])[0] == "niah_single"
    assert len(expand_tasks(["cwe", "ruler"])) == 11  # no duplicates
    assert all(t in TASKS for t in RULER_TASKS)
    assert set(RULER_EXTERNAL) == {"qa_1", "qa_2"} and not set(RULER_EXTERNAL) & set(TASKS)
    with pytest.raises(KvprismError, match="external data set"):
        make_sample("qa_1", None, 1024, 0.5, 0)
