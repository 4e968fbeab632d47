"""Long-context retrieval prompts (NIAH and RULER-style) with exact token counts, generated offline and seeded.

Tasks (after NVIDIA RULER's synthetic set): ``niah_single``, ``niah_multikey`` (distractor keys),
``niah_multivalue`` (one key, several values; all must be answered), ``niah_multiquery`` (several keys asked at once)
and ``vt`` (variable tracking: a chain ``VAR B = VAR A`` ... rooted at a value). Needles read
"One of the special magic {kind} for {key} is: {value}."; values are 7-digit ``numbers``, ``uuids`` (drawn from the
seeded generator, not ``uuid4``) or ``words`` (word pairs).

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
def _haystack_ids(tokenizer: Any) -> tuple[tuple[int, ...], tuple[bool, ...]]:
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
def _draw_key(rng: random.Random, used: set[str]) -> str:
    while True:
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


def _check_common(task: str, depth: float, haystack: str, values: str) -> None:
    if not 0.0 <= depth <= 1.0:
        raise KvprismError(f"depth = {depth} is invalid; allowed range: [0, 1]")
    if haystack not in HAYSTACKS:
        raise KvprismError(f"haystack = {haystack!r} is invalid; allowed: {', '.join(HAYSTACKS)}")
    if values not in VALUE_KINDS:
        raise KvprismError(f"values = {values!r} is invalid; allowed: {', '.join(VALUE_KINDS)}")


# --------------------------------------------------------------------------------------------------- haystacks
def _haystack_chunk(
    tokenizer: Any, haystack: str, n_tokens: int, rng: random.Random, context_tokens: int, kind: str, used: set[str]
) -> tuple[list[int], tuple[bool, ...]]:
    """``n_tokens`` haystack token ids and their line-end flags."""
    if haystack == "text":
        hay, ends_line = _haystack_ids(tokenizer)
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
            NEEDLE_TEMPLATE.format(kind=plural, key=_draw_key(rng, used), value=_draw_value(rng, kind, used)) + "\n"
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
    chunk, lines = _haystack_chunk(tokenizer, haystack, n_hay, rng, context_tokens, values, used)
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
) -> Sample:
    """Single needle (key → value) at ``depth`` ∈ [0, 1] of the haystack.

    Raises:
        KvprismError: depth outside [0, 1], unknown haystack / value kind, or a context too short to hold the
            template, needle and question (or longer than the ``text`` haystack).
    """
    _check_common("niah_single", depth, haystack, values)
    rng = random.Random(seed)
    used: set[str] = set()
    plural, one = VALUE_KINDS[values]
    key = _draw_key(rng, used)
    value = _draw_value(rng, values, used)
    sample = _build(
        tokenizer,
        task="niah_single",
        context_tokens=context_tokens,
        depth=depth,
        seed=seed,
        rng=rng,
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
) -> Sample:
    """One target needle at ``depth`` plus ``num_keys - 1`` distractor needles with other keys at random positions;
    the question asks for the target key's value."""
    _check_common("niah_multikey", depth, haystack, values)
    rng = random.Random(seed)
    used: set[str] = set()
    plural, one = VALUE_KINDS[values]
    keys = [_draw_key(rng, used) for _ in range(num_keys)]
    vals = [_draw_value(rng, values, used) for _ in range(num_keys)]
    sample = _build(
        tokenizer,
        task="niah_multikey",
        context_tokens=context_tokens,
        depth=depth,
        seed=seed,
        rng=rng,
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


#: task name -> generator ``(tokenizer, context_tokens, depth, seed, *, haystack, values, chat) -> Sample``
TASKS: dict[str, Callable[..., Sample]] = {
    "niah_single": niah_single,
    "niah_multikey": niah_multikey,
    "niah_multivalue": niah_multivalue,
    "niah_multiquery": niah_multiquery,
    "vt": variable_tracking,
}


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
        raise KvprismError(f"task = {task!r} is unknown; allowed: {', '.join(TASKS)}")
    kw: dict[str, Any] = {"chat": chat}
    if haystack is not None:
        kw["haystack"] = haystack
    if values is not None:
        kw["values"] = values
    return fn(tokenizer, context_tokens, depth, seed, **kw)
