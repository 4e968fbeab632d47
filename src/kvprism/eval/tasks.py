"""Long-context retrieval prompts (NIAH and RULER-style) with exact token counts, generated offline and seeded.

Tasks (after NVIDIA RULER's synthetic set): ``niah_single``, ``niah_multikey`` (distractor keys),
``niah_multivalue`` (one key, several values; all must be answered), ``niah_multiquery`` (several keys asked at once),
``vt`` (variable tracking: a chain ``VAR B = VAR A`` ... rooted at a value), ``cwe`` (common words extraction: the 10
words repeated most often in a numbered word list) and ``fwe`` (frequent words extraction: the 3 most frequent words
of a Zipf-distributed "coded" text). Needles read "One of the special magic {kind} for {key} is: {value}."; keys are
word pairs or ``uuids``; values are 7-digit ``numbers``, ``uuids`` (drawn from the seeded generator, not ``uuid4``) or
``words`` (word pairs).

RULER's own task names (:data:`RULER_TASKS`; ``ruler`` in :func:`expand_tasks` is all of them) map onto these with
RULER's haystack and value types: ``niah_single_1`` (noise, numbers), ``niah_single_2`` (essay, numbers),
``niah_single_3`` (essay, uuids), ``niah_multikey_1`` (essay, 4 keys), ``niah_multikey_2`` (needle haystack, numbers),
``niah_multikey_3`` (needle haystack, uuid keys and values), ``niah_multivalue``, ``niah_multiquery`` (essay, numbers),
``vt`` (noise), ``cwe``, ``fwe``. RULER's essay haystack (Paul Graham's essays) is not shipped; ``text`` stands in for
it. ``qa_1`` (SQuAD) and ``qa_2`` (HotpotQA) need those external data sets and are not included
(:data:`RULER_EXTERNAL`). The word lists of ``cwe`` come from the ``wonderwords`` package (nouns, adjectives and
verbs, as RULER draws them).

Haystacks: ``text`` is natural English (the documentation topics CPython ships in ``pydoc_data.topics``, ~110K
SmolLM2 tokens, present on every Python); ``noise`` repeats a few fixed sentences; ``needles`` is made of distractor
needles with other keys. Prompts are assembled at the token level (template prefix + haystack tokens with the needles
spliced in at line boundaries + question + template suffix), so the context length is exactly the requested number of
tokens and every needle's token span is known. Instruct models get their chat template.
"""

from __future__ import annotations

import functools
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kvprism.errors import KvprismError

NEEDLE_TEMPLATE = "One of the special magic {kind} for {key} is: {value}."
INTRO_TEMPLATE = (
    "Some special magic {kind} are hidden within the following text. Make sure to memorize it. "
    "I will quiz you about the {kind} afterwards."
)
QUESTION_TEMPLATE = "What is the special magic {one} for {key} mentioned in the provided text?"
ANSWER_PREFIX_TEMPLATE = "The special magic {one} for {key} mentioned in the provided text is"
QUESTION_ALL_TEMPLATE = "What are all the special magic {kind} for {key} mentioned in the provided text?"
ANSWER_PREFIX_ALL_TEMPLATE = "The special magic {kind} for {key} mentioned in the provided text are"
VT_INTRO = "Memorize and track the chain(s) of variable assignment hidden in the following text."
VT_NEEDLE_TEMPLATE = "VAR {name} = {source}."
VT_QUESTION_TEMPLATE = "Find all variables that are assigned the value {value} in the text above."
VT_ANSWER_PREFIX_TEMPLATE = (
    "According to the chain of variable assignment in the text above, {n} variables are assigned the value "
    "{value}, they are:"
)
#: The ``noise`` haystack repeats these sentences (RULER's noise haystack).
NOISE_TEXT = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.\n"

#: value kind -> (plural used in templates, singular used in questions)
VALUE_KINDS: dict[str, tuple[str, str]] = {
    "numbers": ("numbers", "number"),
    "uuids": ("uuids", "uuid"),
    "words": ("words", "word"),
}
HAYSTACKS = ("noise", "text", "needles")

# kept for callers of the single-needle task (the templates above with kind = numbers)
INTRO = INTRO_TEMPLATE.format(kind="numbers")

# Keys are drawn from this list (RULER draws random English words).
KEY_WORDS = (
    "amber",
    "apple",
    "arrow",
    "autumn",
    "badge",
    "bamboo",
    "banjo",
    "beacon",
    "birch",
    "blossom",
    "bramble",
    "breeze",
    "cactus",
    "canyon",
    "carbon",
    "cedar",
    "cherry",
    "cobalt",
    "comet",
    "copper",
    "coral",
    "cotton",
    "crystal",
    "dagger",
    "dawn",
    "delta",
    "desert",
    "ember",
    "falcon",
    "fern",
    "fig",
    "flint",
    "forest",
    "fossil",
    "garnet",
    "glacier",
    "granite",
    "harbor",
    "hazel",
    "heron",
    "indigo",
    "iris",
    "ivory",
    "jasmine",
    "juniper",
    "kettle",
    "lagoon",
    "lantern",
    "lemon",
    "lilac",
    "linen",
    "lotus",
    "maple",
    "marble",
    "meadow",
    "mercury",
    "mint",
    "moss",
    "nectar",
    "nickel",
    "oak",
    "obsidian",
    "olive",
    "onyx",
    "orchid",
    "otter",
    "pebble",
    "pepper",
    "pine",
    "plum",
    "quartz",
    "quill",
    "raven",
    "reef",
    "river",
    "saffron",
    "sage",
    "sapphire",
    "silver",
    "slate",
    "sparrow",
    "spruce",
    "summit",
    "thistle",
    "thunder",
    "tiger",
    "topaz",
    "tulip",
    "tundra",
    "velvet",
    "violet",
    "walnut",
    "willow",
    "winter",
    "zephyr",
)


@dataclass(frozen=True)
class Sample:
    """One generated prompt.

    ``input_ids`` has exactly ``context_tokens`` tokens; ``needle_spans`` are ``[start, end)`` token indices of each
    needle inside ``input_ids`` (in prompt order); ``answers`` must all appear in the model's answer for it to count as
    correct; ``depth`` is the start of the needle placed at the requested depth (always a target) as a fraction of
    the context. ``meta`` holds the task
    name, haystack, value kind, requested depth, which needles are targets (``target``: list of bool aligned with
    ``needle_spans``) and a suggested answer length (``max_new_tokens``).
    """

    input_ids: list[int]
    answers: list[str]
    needle_spans: list[tuple[int, int]]
    context_tokens: int
    depth: float
    seed: int
    question: str
    meta: dict[str, Any] = field(default_factory=dict)

    def score(self, answer: str) -> bool:
        """string_match_all: every expected value appears in the answer (case-insensitive)."""
        return string_match_all(answer, self.answers)

    @property
    def target_spans(self) -> list[tuple[int, int]]:
        """Token spans of the needles that hold an answer (distractors excluded)."""
        flags = self.meta.get("target", [True] * len(self.needle_spans))
        return [s for s, t in zip(self.needle_spans, flags, strict=True) if t]


def string_match_all(answer: str, expected: list[str]) -> bool:
    """RULER's string_match_all, per sample: True iff every expected string occurs in ``answer`` (case-insensitive)."""
    low = answer.lower()
    return all(e.lower() in low for e in expected)


def string_match_fraction(answer: str, expected: list[str]) -> float:
    """Fraction of the expected strings that occur in ``answer`` (case-insensitive); partial credit for multi-answer
    tasks."""
    if not expected:
        return 1.0
    low = answer.lower()
    return sum(e.lower() in low for e in expected) / len(expected)


def haystack_text() -> str:
    """Natural-English haystack: all ``pydoc_data.topics`` entries in sorted key order."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k].strip() for k in sorted(topics))


def _line_ends(tokenizer: Any, ids: list[int]) -> tuple[bool, ...]:
    pieces = tokenizer.convert_ids_to_tokens(ids)
    # byte-level BPE spells newline as "Ċ", sentencepiece as "<0x0A>"; decoded text covers any other tokenizer
    return tuple(("Ċ" in p) or ("<0x0A>" in p) or p.endswith("\n") for p in pieces)


@functools.lru_cache(maxsize=4)
def haystack_ids(tokenizer: Any) -> tuple[tuple[int, ...], tuple[bool, ...]]:
    """Token ids of the ``text`` haystack and, per token, whether a line ends in it (splice points for needles)."""
    ids = tokenizer(haystack_text(), add_special_tokens=False)["input_ids"]
    return tuple(ids), _line_ends(tokenizer, ids)


@functools.lru_cache(maxsize=4)
def _noise_unit(tokenizer: Any) -> tuple[tuple[int, ...], tuple[bool, ...]]:
    ids = tokenizer(NOISE_TEXT, add_special_tokens=False)["input_ids"]
    ends = [False] * len(ids)
    ends[-1] = True  # splice only between whole repetitions
    return tuple(ids), tuple(ends)


def chat_wrap(tokenizer: Any, user_text_marker: str, chat: bool) -> tuple[str, str]:
    """Split the rendered chat template around ``user_text_marker``: (text before, text after, generation prompt
    included). Without a chat template (or ``chat=False``) the prompt is the user text alone."""
    if not chat or getattr(tokenizer, "chat_template", None) is None:
        return "", ""
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": user_text_marker}], add_generation_prompt=True, tokenize=False
    )
    before, _, after = rendered.partition(user_text_marker)
    return before, after


# ---------------------------------------------------------------------------------------------------------- draws
KEY_KINDS = ("words", "uuids")


def _draw_key(rng: random.Random, used: set[str], kind: str = "words") -> str:
    while True:
        if kind == "uuids":
            key = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        else:
            key = f"{rng.choice(KEY_WORDS)}-{rng.choice(KEY_WORDS)}"
        if key not in used:
            used.add(key)
            return key


def _draw_value(rng: random.Random, kind: str, used: set[str]) -> str:
    while True:
        if kind == "numbers":
            value = str(rng.randrange(1_000_000, 10_000_000))
        elif kind == "uuids":
            value = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        else:  # words
            value = f"{rng.choice(KEY_WORDS)}-{rng.choice(KEY_WORDS)}"
        if value not in used:
            used.add(value)
            return value


def _draw_var_name(rng: random.Random, used: set[str]) -> str:
    while True:
        name = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(5))
        if name not in used:
            used.add(name)
            return name


def _check_common(task: str, depth: float, haystack: str, values: str, keys: str = "words") -> None:
    if keys not in KEY_KINDS:
        raise KvprismError(f"keys = {keys!r} is invalid; allowed: {', '.join(KEY_KINDS)}")
    if not 0.0 <= depth <= 1.0:
        raise KvprismError(f"depth = {depth} is invalid; allowed range: [0, 1]")
    if haystack not in HAYSTACKS:
        raise KvprismError(f"haystack = {haystack!r} is invalid; allowed: {', '.join(HAYSTACKS)}")
    if values not in VALUE_KINDS:
        raise KvprismError(f"values = {values!r} is invalid; allowed: {', '.join(VALUE_KINDS)}")


# --------------------------------------------------------------------------------------------------- haystacks
def _haystack_chunk(
    tokenizer: Any,
    haystack: str,
    n_tokens: int,
    rng: random.Random,
    context_tokens: int,
    kind: str,
    used: set[str],
    key_kind: str = "words",
) -> tuple[list[int], tuple[bool, ...]]:
    """``n_tokens`` haystack token ids and their line-end flags."""
    if haystack == "text":
        hay, ends_line = haystack_ids(tokenizer)
        if n_tokens > len(hay):
            raise KvprismError(
                f"context_tokens = {context_tokens} exceeds the haystack ({len(hay)} tokens) of this tokenizer"
            )
        start = rng.randrange(0, len(hay) - n_tokens + 1)
        return list(hay[start : start + n_tokens]), ends_line[start : start + n_tokens]
    if haystack == "noise":
        unit, unit_ends = _noise_unit(tokenizer)
        reps = n_tokens // len(unit) + 1
        return list(unit * reps)[:n_tokens], (unit_ends * reps)[:n_tokens]
    # needles: distractor needles with fresh keys and values, one per line
    plural = VALUE_KINDS[kind][0]
    ids: list[int] = []
    while len(ids) < n_tokens:
        lines = [
            NEEDLE_TEMPLATE.format(kind=plural, key=_draw_key(rng, used, key_kind), value=_draw_value(rng, kind, used))
            + "\n"
            for _ in range(32)
        ]
        for line_ids in tokenizer(lines, add_special_tokens=False)["input_ids"]:
            ids.extend(line_ids)
    ids = ids[:n_tokens]
    return ids, _line_ends(tokenizer, ids)


def _build(
    tokenizer: Any,
    *,
    task: str,
    context_tokens: int,
    depth: float,
    seed: int,
    rng: random.Random,
    needles: list[str],
    target: list[bool],
    placement: str,
    intro: str,
    question: str,
    answer_prefix: str,
    answers: list[str],
    haystack: str,
    values: str,
    chat: bool,
    used: set[str],
    key_kind: str = "words",
) -> Sample:
    """Assemble a prompt of exactly ``context_tokens`` tokens: the first needle sits at the line end closest to
    ``depth`` of the haystack; the others at seeded random line ends (``placement="random"``) or, in order, evenly
    spaced between ``depth`` and the end of the haystack (``placement="chain"``)."""
    marker = "\x00KVPRISM_CONTEXT\x00"
    before, after = chat_wrap(tokenizer, marker, chat)
    prefix = tokenizer(before + intro + "\n\n", add_special_tokens=False)["input_ids"]
    suffix_text = "\n\n" + question + after + answer_prefix
    suffix = tokenizer(suffix_text, add_special_tokens=False)["input_ids"]
    needle_ids = [tokenizer(" " + n + "\n", add_special_tokens=False)["input_ids"] for n in needles]
    bos = [tokenizer.bos_token_id] if (not before and tokenizer.bos_token_id is not None) else []
    n_hay = context_tokens - len(bos) - len(prefix) - len(suffix) - sum(map(len, needle_ids))
    if n_hay < 1:
        need = context_tokens - n_hay + 1
        raise KvprismError(f"context_tokens = {context_tokens} is too short; this task needs at least {need}")
    chunk, lines = _haystack_chunk(tokenizer, haystack, n_hay, rng, context_tokens, values, used, key_kind)
    candidates = sorted({i + 1 for i, e in enumerate(lines) if e} | {0, n_hay})

    def nearest(frac: float) -> int:
        target_pos = round(frac * n_hay)
        return min(candidates, key=lambda c: (abs(c - target_pos), c))

    cuts = [nearest(depth)]
    for i in range(1, len(needles)):
        if placement == "chain":
            cuts.append(nearest(depth + (1.0 - depth) * i / len(needles)))
        else:
            cuts.append(rng.choice(candidates))
    # splice in cut order; needles sharing a cut keep their list order
    order = sorted(range(len(needles)), key=lambda i: (cuts[i], i))
    ids = bos + prefix
    spans: dict[int, tuple[int, int]] = {}
    pos = 0
    for i in order:
        ids += chunk[pos : cuts[i]]
        pos = cuts[i]
        spans[i] = (len(ids), len(ids) + len(needle_ids[i]))
        ids += needle_ids[i]
    ids += chunk[pos:] + suffix
    assert len(ids) == context_tokens
    in_order = [spans[i] for i in order]
    target_in_order = [target[i] for i in order]
    answer_len = len(tokenizer(" " + ", ".join(answers), add_special_tokens=False)["input_ids"])
    return Sample(
        input_ids=ids,
        answers=answers,
        needle_spans=in_order,
        context_tokens=context_tokens,
        depth=spans[0][0] / context_tokens,
        seed=seed,
        question=question,
        meta={
            "task": task,
            "haystack": haystack,
            "values": values,
            "requested_depth": depth,
            "target": target_in_order,
            "max_new_tokens": answer_len + 8,
        },
    )


# ------------------------------------------------------------------------------------------------------- tasks
def niah_single(
    tokenizer: Any,
    context_tokens: int,
    depth: float,
    seed: int,
    *,
    haystack: str = "text",
    values: str = "numbers",
    chat: bool = True,
    keys: str = "words",
) -> Sample:
    """Single needle (key → value) at ``depth`` ∈ [0, 1] of the haystack; ``keys``: ``words`` or ``uuids``.

    Raises:
        KvprismError: depth outside [0, 1], unknown haystack / value kind, or a context too short to hold the
            template, needle and question (or longer than the ``text`` haystack).
    """
    _check_common("niah_single", depth, haystack, values, keys)
    rng = random.Random(seed)
    used: set[str] = set()
    plural, one = VALUE_KINDS[values]
    key = _draw_key(rng, used, keys)
    value = _draw_value(rng, values, used)
    sample = _build(
        tokenizer,
        task="niah_single",
        context_tokens=context_tokens,
        depth=depth,
        seed=seed,
        rng=rng,
        key_kind=keys,
        needles=[NEEDLE_TEMPLATE.format(kind=plural, key=key, value=value)],
        target=[True],
        placement="random",
        intro=INTRO_TEMPLATE.format(kind=plural),
        question=QUESTION_TEMPLATE.format(one=one, key=key),
        answer_prefix=ANSWER_PREFIX_TEMPLATE.format(one=one, key=key),
        answers=[value],
        haystack=haystack,
        values=values,
        chat=chat,
        used=used,
    )
    sample.meta["key"] = key
    return sample


def niah_multikey(
    tokenizer: Any,
    context_tokens: int,
    depth: float,
    seed: int,
    *,
    haystack: str = "text",
    values: str = "numbers",
    chat: bool = True,
    num_keys: int = 4,
    keys: str = "words",
) -> Sample:
    """One target needle at ``depth`` plus ``num_keys - 1`` distractor needles with other keys at random positions;
    the question asks for the target key's value. ``keys``: ``words`` or ``uuids`` (also those of the distractor
    needles of the ``needles`` haystack)."""
    _check_common("niah_multikey", depth, haystack, values, keys)
    key_kind = keys
    rng = random.Random(seed)
    used: set[str] = set()
    plural, one = VALUE_KINDS[values]
    keys = [_draw_key(rng, used, key_kind) for _ in range(num_keys)]
    vals = [_draw_value(rng, values, used) for _ in range(num_keys)]
    sample = _build(
        tokenizer,
        task="niah_multikey",
        context_tokens=context_tokens,
        depth=depth,
        seed=seed,
        rng=rng,
        key_kind=key_kind,
        needles=[NEEDLE_TEMPLATE.format(kind=plural, key=k, value=v) for k, v in zip(keys, vals, strict=True)],
        target=[True] + [False] * (num_keys - 1),
        placement="random",
        intro=INTRO_TEMPLATE.format(kind=plural),
        question=QUESTION_TEMPLATE.format(one=one, key=keys[0]),
        answer_prefix=ANSWER_PREFIX_TEMPLATE.format(one=one, key=keys[0]),
        answers=[vals[0]],
        haystack=haystack,
        values=values,
        chat=chat,
        used=used,
    )
    sample.meta["key"] = keys[0]
    return sample


def niah_multivalue(
    tokenizer: Any,
    context_tokens: int,
    depth: float,
    seed: int,
    *,
    haystack: str = "text",
    values: str = "numbers",
    chat: bool = True,
    num_values: int = 4,
) -> Sample:
    """One key with ``num_values`` values in separate needles (the first at ``depth``); all values must be
    answered."""
    _check_common("niah_multivalue", depth, haystack, values)
    rng = random.Random(seed)
    used: set[str] = set()
    plural, _ = VALUE_KINDS[values]
    key = _draw_key(rng, used)
    vals = [_draw_value(rng, values, used) for _ in range(num_values)]
    sample = _build(
        tokenizer,
        task="niah_multivalue",
        context_tokens=context_tokens,
        depth=depth,
        seed=seed,
        rng=rng,
        needles=[NEEDLE_TEMPLATE.format(kind=plural, key=key, value=v) for v in vals],
        target=[True] * num_values,
        placement="random",
        intro=INTRO_TEMPLATE.format(kind=plural),
        question=QUESTION_ALL_TEMPLATE.format(kind=plural, key=key),
        answer_prefix=ANSWER_PREFIX_ALL_TEMPLATE.format(kind=plural, key=key),
        answers=vals,
        haystack=haystack,
        values=values,
        chat=chat,
        used=used,
    )
    sample.meta["key"] = key
    return sample


def _join_keys(keys: list[str]) -> str:
    return keys[0] if len(keys) == 1 else ", ".join(keys[:-1]) + ", and " + keys[-1]


def niah_multiquery(
    tokenizer: Any,
    context_tokens: int,
    depth: float,
    seed: int,
    *,
    haystack: str = "text",
    values: str = "numbers",
    chat: bool = True,
    num_queries: int = 4,
) -> Sample:
    """``num_queries`` keys with one value each (the first needle at ``depth``); the question asks for all of them."""
    _check_common("niah_multiquery", depth, haystack, values)
    rng = random.Random(seed)
    used: set[str] = set()
    plural, _ = VALUE_KINDS[values]
    keys = [_draw_key(rng, used) for _ in range(num_queries)]
    vals = [_draw_value(rng, values, used) for _ in range(num_queries)]
    joined = _join_keys(keys)
    sample = _build(
        tokenizer,
        task="niah_multiquery",
        context_tokens=context_tokens,
        depth=depth,
        seed=seed,
        rng=rng,
        needles=[NEEDLE_TEMPLATE.format(kind=plural, key=k, value=v) for k, v in zip(keys, vals, strict=True)],
        target=[True] * num_queries,
        placement="random",
        intro=INTRO_TEMPLATE.format(kind=plural),
        question=QUESTION_ALL_TEMPLATE.format(kind=plural, key=joined),
        answer_prefix=ANSWER_PREFIX_ALL_TEMPLATE.format(kind=plural, key=joined),
        answers=vals,
        haystack=haystack,
        values=values,
        chat=chat,
        used=used,
    )
    sample.meta["keys"] = keys
    return sample


def variable_tracking(
    tokenizer: Any,
    context_tokens: int,
    depth: float,
    seed: int,
    *,
    haystack: str = "noise",
    values: str = "numbers",
    chat: bool = True,
    num_hops: int = 4,
) -> Sample:
    """Variable tracking: ``VAR A = value``, then ``num_hops`` statements ``VAR B = VAR A`` ..., in order from
    ``depth`` to the end of the haystack; the answer is every variable name in the chain."""
    _check_common("vt", depth, haystack, values)
    rng = random.Random(seed)
    used: set[str] = set()
    value = _draw_value(rng, values, used)
    names = [_draw_var_name(rng, used) for _ in range(num_hops + 1)]
    statements = [VT_NEEDLE_TEMPLATE.format(name=names[0], source=value)] + [
        VT_NEEDLE_TEMPLATE.format(name=names[i], source=f"VAR {names[i - 1]}") for i in range(1, num_hops + 1)
    ]
    return _build(
        tokenizer,
        task="vt",
        context_tokens=context_tokens,
        depth=depth,
        seed=seed,
        rng=rng,
        needles=statements,
        target=[True] * len(statements),
        placement="chain",
        intro=VT_INTRO,
        question=VT_QUESTION_TEMPLATE.format(value=value),
        answer_prefix=VT_ANSWER_PREFIX_TEMPLATE.format(n=len(names), value=value),
        answers=names,
        haystack=haystack,
        values=values,
        chat=chat,
        used=used,
    )


# ------------------------------------------------------------------------------------------------ word tasks
CWE_INTRO = (
    "Below is a numbered list of words. In these words, some appear more often than others. Memorize the ones that "
    "appear most often."
)
CWE_QUESTION_TEMPLATE = "Question: What are the {n} most common words in the above list?"
CWE_ANSWER_PREFIX_TEMPLATE = "Answer: The top {n} words that appear most often in the list are:"
FWE_INTRO = (
    "Read the following coded text and track the frequency of each coded word. Find the three most frequently "
    "appeared coded words."
)
FWE_QUESTION = (
    "Question: Do not provide any explanation. Please ignore the dots '....'. What are the three most frequently "
    "appeared words in the above coded text?"
)
FWE_ANSWER_PREFIX = "Answer: According to the coded text above, the three most frequently appeared words are:"
FWE_DOTS = "...."
#: the only haystack / value kind of the word tasks (named so that a grid can record them)
WORD_HAYSTACK, WORD_VALUES = "wordlist", "words"


@functools.cache
def word_list() -> tuple[str, ...]:
    """English nouns, adjectives and verbs of the ``wonderwords`` package (RULER's cwe vocabulary), lower-case
    letters only, profanity excluded, sorted and deduplicated."""
    from importlib import resources

    assets = resources.files("wonderwords") / "assets"

    def read(name: str) -> set[str]:
        return {w.strip().lower() for w in (assets / name).read_text(encoding="utf-8").splitlines() if w.strip()}

    bad = read("profanitylist.txt")
    words = read("nounlist.txt") | read("adjectivelist.txt") | read("verblist.txt")
    return tuple(sorted(w for w in words - bad if w.isascii() and w.isalpha()))


def _word_task_prompt(tokenizer: Any, intro: str, question: str, answer_prefix: str, chat: bool) -> tuple[list, list]:
    """Token ids before and after the generated list (chat template, intro / question and answer prefix)."""
    marker = "\x00KVPRISM_CONTEXT\x00"
    before, after = chat_wrap(tokenizer, marker, chat)
    bos = [tokenizer.bos_token_id] if (not before and tokenizer.bos_token_id is not None) else []
    prefix = bos + tokenizer(before + intro + "\n\n", add_special_tokens=False)["input_ids"]
    suffix = tokenizer("\n\n" + question + after + answer_prefix, add_special_tokens=False)["input_ids"]
    return prefix, suffix


def _fill_to(
    tokenizer: Any, items: list[list[int]], budget: int, context_tokens: int, task: str
) -> tuple[list[int], int]:
    """Whole items (token id lists) up to ``budget`` tokens, the rest filled with newline tokens; returns the ids and
    how many items fit."""
    out: list[int] = []
    n = 0
    for it in items:
        if len(out) + len(it) > budget:
            break
        out.extend(it)
        n += 1
    newline = tokenizer("\n", add_special_tokens=False)["input_ids"][-1:]
    if not newline:
        raise KvprismError(f"task {task}: the tokenizer has no newline token")
    out.extend(newline * (budget - len(out)))
    return out, n


def _word_spans(prefix_len: int, items: list[list[int]], n: int, hit: Callable[[int], bool]) -> list[tuple[int, int]]:
    spans, pos = [], prefix_len
    for i in range(n):
        if hit(i):
            spans.append((pos, pos + len(items[i])))
        pos += len(items[i])
    return spans


def _check_word_task(task: str, depth: float, haystack: str, values: str) -> None:
    if not 0.0 <= depth <= 1.0:
        raise KvprismError(f"depth = {depth} is invalid; allowed range: [0, 1]")
    if haystack != WORD_HAYSTACK or values != WORD_VALUES:
        raise KvprismError(
            f"task {task} generates its own word list: haystack must be {WORD_HAYSTACK!r} and values "
            f"{WORD_VALUES!r} (got {haystack!r}, {values!r}); leave --haystack / --values unset"
        )


def common_words(
    tokenizer: Any,
    context_tokens: int,
    depth: float,
    seed: int,
    *,
    haystack: str = WORD_HAYSTACK,
    values: str = WORD_VALUES,
    chat: bool = True,
    num_cw: int = 10,
    freq_cw: int = 30,
    freq_ucw: int = 3,
) -> Sample:
    """RULER ``cwe``: a shuffled, numbered list in which ``num_cw`` words occur ``freq_cw`` times each and as many
    other words as the context holds occur ``freq_ucw`` times each; the answer is the ``num_cw`` common words.
    Short contexts lower both frequencies (at least 2 and 1) so that the common words fit in half the list; the
    effective values are in ``meta``. ``depth`` is not used (the words are spread over the whole list).
    ``needle_spans`` are the occurrences of the common words.
    """
    _check_word_task("cwe", depth, haystack, values)
    rng = random.Random(seed)
    vocab = list(word_list())
    rng.shuffle(vocab)
    common, pool = vocab[:num_cw], vocab[num_cw:]
    n = num_cw
    prefix, suffix = _word_task_prompt(
        tokenizer, CWE_INTRO, CWE_QUESTION_TEMPLATE.format(n=n), CWE_ANSWER_PREFIX_TEMPLATE.format(n=n), chat
    )
    budget = context_tokens - len(prefix) - len(suffix)
    probe = tokenizer([f"{100 + i}. {w}\n" for i, w in enumerate(pool[:200])], add_special_tokens=False)
    per_item = max(1.0, sum(map(len, probe["input_ids"])) / max(1, len(probe["input_ids"])))
    fcw = min(freq_cw, int(0.5 * budget / (num_cw * per_item)))
    fucw = min(freq_ucw, fcw - 1)
    if fcw < 2 or fucw < 1:
        need = int(4 * num_cw * per_item) + len(prefix) + len(suffix)
        raise KvprismError(f"context_tokens = {context_tokens} is too short; task cwe needs at least {need}")
    n_unc = max(0, int((budget / per_item - num_cw * fcw) / fucw))
    state = rng.getstate()
    for _attempt in range(8):  # grow the list until whole items fill the budget (the last one is cut to fit)
        if n_unc > len(pool):
            raise KvprismError(
                f"context_tokens = {context_tokens} is too long for task cwe: the word list ({len(vocab)} words) "
                f"fills about {int((num_cw * fcw + len(pool) * fucw) * per_item)} tokens"
            )
        rng.setstate(state)
        words = common * fcw + pool[:n_unc] * fucw
        rng.shuffle(words)
        items = tokenizer([f"{i + 1}. {w}\n" for i, w in enumerate(words)], add_special_tokens=False)["input_ids"]
        total = sum(map(len, items))
        if total >= budget:
            break
        n_unc += int((budget - total) / (per_item * fucw)) + 1
    body, n_fit = _fill_to(tokenizer, items, budget, context_tokens, "cwe")
    counts: dict[str, int] = {}
    for w in words[:n_fit]:
        counts[w] = counts.get(w, 0) + 1
    if min(counts.get(w, 0) for w in common) <= max([c for w, c in counts.items() if w not in common] or [0]):
        raise KvprismError(f"context_tokens = {context_tokens} is too short for task cwe (common words not distinct)")
    ids = prefix + body + suffix
    assert len(ids) == context_tokens
    common_set = set(common)
    spans = _word_spans(len(prefix), items, n_fit, lambda i: words[i] in common_set)
    answer_len = len(tokenizer(" " + ", ".join(common), add_special_tokens=False)["input_ids"])
    return Sample(
        input_ids=ids,
        answers=list(common),
        needle_spans=spans,
        context_tokens=context_tokens,
        depth=spans[0][0] / context_tokens if spans else 0.0,
        seed=seed,
        question=CWE_QUESTION_TEMPLATE.format(n=n),
        meta={
            "task": "cwe",
            "haystack": haystack,
            "values": values,
            "requested_depth": depth,
            "target": [True] * len(spans),
            "max_new_tokens": answer_len + 8,
            "freq_cw": fcw,
            "freq_ucw": fucw,
            "list_words": n_fit,
        },
    )


def _zipf_sampler(rng: random.Random, n_ranks: int, alpha: float) -> Callable[[], int]:
    """Draw ranks ``1..n_ranks`` with probability proportional to ``rank ** -alpha`` (a truncated Zipf law)."""
    import bisect
    import itertools

    cum = list(itertools.accumulate(r**-alpha for r in range(1, n_ranks + 1)))
    total = cum[-1]
    return lambda: bisect.bisect_left(cum, rng.random() * total) + 1


def frequent_words(
    tokenizer: Any,
    context_tokens: int,
    depth: float,
    seed: int,
    *,
    haystack: str = WORD_HAYSTACK,
    values: str = WORD_VALUES,
    chat: bool = True,
    alpha: float = 2.0,
    vocab_size: int = 2000,
) -> Sample:
    """RULER ``fwe``: "coded" words (random 5-letter strings; rank 1 is the dots ``....``) drawn from a Zipf law of
    exponent ``alpha`` fill the context; the answer is the three most frequent words other than the dots (counted on
    the prompt as generated; a draw whose third and fourth counts tie is redrawn). ``depth`` is not used.
    ``needle_spans`` are the occurrences of the three answer words.
    """
    _check_word_task("fwe", depth, haystack, values)
    rng = random.Random(seed)
    used: set[str] = {FWE_DOTS}
    vocab = [FWE_DOTS]
    while len(vocab) < vocab_size:
        w = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(5))
        if w not in used:
            used.add(w)
            vocab.append(w)
    prefix, suffix = _word_task_prompt(tokenizer, FWE_INTRO, FWE_QUESTION, FWE_ANSWER_PREFIX, chat)
    budget = context_tokens - len(prefix) - len(suffix)
    item_ids = {w: tokenizer(" " + w, add_special_tokens=False)["input_ids"] for w in vocab}
    draw = _zipf_sampler(rng, vocab_size, alpha)
    for _attempt in range(20):
        words: list[str] = []
        total = 0
        while total < budget:
            w = vocab[draw() - 1]
            words.append(w)
            total += len(item_ids[w])
        items = [item_ids[w] for w in words]
        body, n_fit = _fill_to(tokenizer, items, budget, context_tokens, "fwe")
        counts: dict[str, int] = {}
        for w in words[:n_fit]:
            if w != FWE_DOTS:
                counts[w] = counts.get(w, 0) + 1
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        if len(ranked) >= 3 and (len(ranked) == 3 or ranked[2][1] > ranked[3][1]):
            break
    else:
        raise KvprismError(f"context_tokens = {context_tokens} is too short for task fwe (no distinct top 3)")
    answers = [w for w, _ in ranked[:3]]
    ids = prefix + body + suffix
    assert len(ids) == context_tokens
    spans = _word_spans(len(prefix), items, n_fit, lambda i: words[i] in answers)
    answer_len = len(tokenizer(" " + ", ".join(answers), add_special_tokens=False)["input_ids"])
    return Sample(
        input_ids=ids,
        answers=answers,
        needle_spans=spans,
        context_tokens=context_tokens,
        depth=spans[0][0] / context_tokens if spans else 0.0,
        seed=seed,
        question=FWE_QUESTION,
        meta={
            "task": "fwe",
            "haystack": haystack,
            "values": values,
            "requested_depth": depth,
            "target": [True] * len(spans),
            "max_new_tokens": answer_len + 8,
            "coded_words": n_fit,
        },
    )


#: task name -> generator ``(tokenizer, context_tokens, depth, seed, *, haystack, values, chat) -> Sample``
TASKS: dict[str, Callable[..., Sample]] = {
    "niah_single": niah_single,
    "niah_multikey": niah_multikey,
    "niah_multivalue": niah_multivalue,
    "niah_multiquery": niah_multiquery,
    "vt": variable_tracking,
    "cwe": common_words,
    "fwe": frequent_words,
}

#: RULER's offline tasks under RULER's names, with its haystack / key / value types (``essay`` -> ``text``)
RULER_TASKS: dict[str, Callable[..., Sample]] = {
    "niah_single_1": functools.partial(niah_single, haystack="noise", values="numbers"),
    "niah_single_2": functools.partial(niah_single, haystack="text", values="numbers"),
    "niah_single_3": functools.partial(niah_single, haystack="text", values="uuids"),
    "niah_multikey_1": functools.partial(niah_multikey, haystack="text", values="numbers", num_keys=4),
    "niah_multikey_2": functools.partial(niah_multikey, haystack="needles", values="numbers", num_keys=1),
    "niah_multikey_3": functools.partial(niah_multikey, haystack="needles", values="uuids", num_keys=1, keys="uuids"),
    "niah_multivalue": functools.partial(niah_multivalue, haystack="text", values="numbers", num_values=4),
    "niah_multiquery": functools.partial(niah_multiquery, haystack="text", values="numbers", num_queries=4),
    "vt": functools.partial(variable_tracking, haystack="noise", values="numbers", num_hops=4),
    "cwe": common_words,
    "fwe": frequent_words,
}
#: RULER tasks that need external data sets (SQuAD, HotpotQA) and are not shipped
RULER_EXTERNAL = ("qa_1", "qa_2")
TASKS.update({name: fn for name, fn in RULER_TASKS.items() if name not in TASKS})


def expand_tasks(names: list[str]) -> list[str]:
    """Task names with ``ruler`` replaced by every offline RULER task (:data:`RULER_TASKS`), duplicates dropped."""
    out: list[str] = []
    for name in names:
        for t in RULER_TASKS if name == "ruler" else [name]:
            if t not in out:
                out.append(t)
    return out


def make_sample(
    task: str,
    tokenizer: Any,
    context_tokens: int,
    depth: float,
    seed: int,
    *,
    haystack: str | None = None,
    values: str | None = None,
    chat: bool = True,
) -> Sample:
    """Generate one sample of a registered task; ``haystack`` / ``values`` default to the task's own defaults.

    Raises:
        KvprismError: unknown task, haystack or value kind; depth outside [0, 1]; context too short or too long.
    """
    fn = TASKS.get(task)
    if fn is None:
        if task in RULER_EXTERNAL:
            raise KvprismError(f"task = {task!r} is a RULER task that needs an external data set; not shipped")
        raise KvprismError(f"task = {task!r} is unknown; allowed: {', '.join(TASKS)} (or 'ruler' for all of RULER's)")
    kw: dict[str, Any] = {"chat": chat}
    if haystack is not None:
        kw["haystack"] = haystack
    if values is not None:
        kw["values"] = values
    sample = fn(tokenizer, context_tokens, depth, seed, **kw)
    sample.meta["task"] = task
    return sample
