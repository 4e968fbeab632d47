"""Needle-in-a-haystack prompts with exact token counts, generated offline.

The haystack is natural English: the documentation topics CPython ships in ``pydoc_data.topics`` (~110K SmolLM2
tokens, present on every Python). Prompts are assembled at the token level (template prefix + haystack tokens with
the needle spliced in at a line boundary + question + template suffix) so the context length is exactly the
requested number of tokens and the needle's token span is known.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass, field
from typing import Any

from kvprism.errors import KvprismError

NEEDLE_TEMPLATE = "One of the special magic numbers for {key} is: {value}."
INTRO = (
    "Some special magic numbers are hidden within the following text. Make sure to memorize it. "
    "I will quiz you about the numbers afterwards."
)
QUESTION_TEMPLATE = "What is the special magic number for {key} mentioned in the provided text?"
ANSWER_PREFIX_TEMPLATE = "The special magic number for {key} mentioned in the provided text is"

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
    needle inside ``input_ids``; ``answers`` must all appear in the model's answer for it to count as correct.
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
        """string_match_all: every expected value appears in the answer."""
        return all(a.lower() in answer.lower() for a in self.answers)


def haystack_text() -> str:
    """Natural-English haystack: all ``pydoc_data.topics`` entries in sorted key order."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k].strip() for k in sorted(topics))


@functools.lru_cache(maxsize=4)
def _haystack_ids(tokenizer: Any) -> tuple[tuple[int, ...], tuple[bool, ...]]:
    """Token ids of the haystack and, per token, whether a line ends in it (splice points for needles)."""
    ids = tokenizer(haystack_text(), add_special_tokens=False)["input_ids"]
    pieces = tokenizer.convert_ids_to_tokens(ids)
    # byte-level BPE spells newline as "Ċ", sentencepiece as "<0x0A>"; decoded text covers any other tokenizer
    ends_line = tuple(("Ċ" in p) or ("<0x0A>" in p) or p.endswith("\n") for p in pieces)
    return tuple(ids), ends_line


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


def niah_single(
    tokenizer: Any,
    context_tokens: int,
    depth: float,
    seed: int,
    *,
    chat: bool = True,
) -> Sample:
    """Single needle (key → 7-digit number) in the natural-text haystack at ``depth`` ∈ [0, 1] of the haystack.

    Raises:
        KvprismError: depth outside [0, 1], or a context too short to hold the template, needle and question.
    """
    if not 0.0 <= depth <= 1.0:
        raise KvprismError(f"depth = {depth} is invalid; allowed range: [0, 1]")
    rng = random.Random(seed)
    key = f"{rng.choice(KEY_WORDS)}-{rng.choice(KEY_WORDS)}"
    value = str(rng.randrange(1_000_000, 10_000_000))
    needle = NEEDLE_TEMPLATE.format(key=key, value=value)
    question = QUESTION_TEMPLATE.format(key=key)
    marker = "\x00KVPRISM_CONTEXT\x00"
    before, after = chat_wrap(tokenizer, marker, chat)
    prefix = tokenizer(before + INTRO + "\n\n", add_special_tokens=False)["input_ids"]
    suffix_text = "\n\n" + question + after + ANSWER_PREFIX_TEMPLATE.format(key=key)
    suffix = tokenizer(suffix_text, add_special_tokens=False)["input_ids"]
    needle_ids = tokenizer(" " + needle + "\n", add_special_tokens=False)["input_ids"]
    bos = [tokenizer.bos_token_id] if (not before and tokenizer.bos_token_id is not None) else []
    n_hay = context_tokens - len(bos) - len(prefix) - len(suffix) - len(needle_ids)
    if n_hay < 1:
        need = context_tokens - n_hay + 1
        raise KvprismError(f"context_tokens = {context_tokens} is too short; this task needs at least {need}")
    hay, ends_line = _haystack_ids(tokenizer)
    if n_hay > len(hay):
        raise KvprismError(
            f"context_tokens = {context_tokens} exceeds the haystack ({len(hay)} tokens) of this tokenizer"
        )
    start = rng.randrange(0, len(hay) - n_hay + 1)
    chunk = list(hay[start : start + n_hay])
    lines = ends_line[start : start + n_hay]
    # splice right after the line end closest to the requested depth (or at the exact point if no line ends)
    target = round(depth * n_hay)
    candidates = [i + 1 for i, e in enumerate(lines) if e] + [0, n_hay]
    cut = min(candidates, key=lambda c: (abs(c - target), c))
    ids = bos + prefix + chunk[:cut] + needle_ids + chunk[cut:] + suffix
    needle_start = len(bos) + len(prefix) + cut
    assert len(ids) == context_tokens
    return Sample(
        input_ids=ids,
        answers=[value],
        needle_spans=[(needle_start, needle_start + len(needle_ids))],
        context_tokens=context_tokens,
        depth=needle_start / context_tokens,
        seed=seed,
        question=question,
        meta={"task": "niah_single", "haystack": "text", "key": key, "requested_depth": depth},
    )
