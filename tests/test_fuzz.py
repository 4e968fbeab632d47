"""Fuzzing: every invalid configuration field and CLI option value is one clear error naming it; a cell's key changes
if and only if a result-affecting setting changes."""

import dataclasses
import math
import tempfile
import typing

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from kvprism.cli import main
from kvprism.errors import ConfigError
from kvprism.photonics.config import PhotonicConfig
from kvprism.selection import SelectionConfig

CLASSES = (SelectionConfig, PhotonicConfig)


def _invalid_values(cls, f: dataclasses.Field) -> st.SearchStrategy:
    """Values that break the field's own declared type, range or choices (other fields stay at their defaults)."""
    hint = typing.get_type_hints(cls)[f.name]
    meta = f.metadata
    junk = st.one_of(
        st.none(), st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=2), st.integers())
    )
    if hint is bool:
        return st.one_of(junk, st.integers(), st.floats(allow_nan=True), st.text(max_size=4))
    if hint in (int, float):
        out = [junk, st.text(max_size=5), st.booleans()]
        if hint is int:
            out.append(st.floats(allow_nan=True).filter(lambda x: x != int(x) if math.isfinite(x) else True))
            num = st.integers
        else:
            out.append(st.sampled_from([math.nan, math.inf, -math.inf]))
            num = lambda **kw: st.floats(allow_nan=False, allow_infinity=False, **kw)  # noqa: E731
        if meta["ge"] is not None:
            out.append(num(max_value=meta["ge"] - (1 if hint is int else 0)).filter(lambda x: x < meta["ge"]))
        if meta["gt"] is not None:
            out.append(num(max_value=meta["gt"]))
        if meta["le"] is not None:
            out.append(num(min_value=meta["le"] + (1 if hint is int else 0)).filter(lambda x: x > meta["le"]))
        if meta["lt"] is not None:
            out.append(num(min_value=meta["lt"]))
        return st.one_of(out)
    if hint is str:
        out = [junk, st.integers()]
        if meta["choices"] is not None:
            out.append(st.text(max_size=8).filter(lambda x: x not in meta["choices"]))
        elif f.name == "scorer":
            out.append(st.text(max_size=8).filter(lambda x: x not in ("exact", "photonic")))
        return st.one_of(out)
    # object-typed fields of SelectionConfig
    if f.name == "photonic":
        return st.one_of(
            st.integers(), st.none(), st.text(max_size=8).filter(lambda x: x not in PhotonicConfig.presets())
        )
    if f.name == "heads":
        return st.one_of(
            st.integers(),
            st.none(),
            st.text(max_size=8).filter(lambda x: x != "all" and not x.endswith(".json")),
            st.lists(st.lists(st.integers(), min_size=1, max_size=2), min_size=1, max_size=2),
        )
    raise AssertionError(f"no strategy for {cls.__name__}.{f.name}: {hint}")


FIELDS = [(cls, f) for cls in CLASSES for f in dataclasses.fields(cls)]


@st.composite
def bad_field(draw):
    cls, f = draw(st.sampled_from(FIELDS))
    return cls, f.name, draw(_invalid_values(cls, f))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(bad_field())
def test_every_invalid_config_field_is_one_config_error_naming_it(case):
    cls, name, value = case
    with pytest.raises(ConfigError) as info:
        cls(**{name: value})
    msg = str(info.value)
    assert f"{cls.__name__}.{name}" in msg and "\n" not in msg


def test_the_defaults_are_valid():
    for cls in CLASSES:
        cls()


# ---------------------------------------------------------------------------------------------------------- CLI
# option -> (strategy of invalid values, text the one-line error must contain)
_BAD_INTS = st.integers(max_value=0).map(str)
_JUNK = st.text(alphabet="abcxyz!%", min_size=1, max_size=6)
CLI_CASES = {
    "--contexts": (st.one_of(_BAD_INTS, _JUNK), "--contexts"),
    "--depths": (st.one_of(st.floats(min_value=1.0001, max_value=1e6).map(repr), st.just("nan"), _JUNK), "--depths"),
    "--seeds": (_JUNK, "--seeds"),
    "--k": (st.one_of(_BAD_INTS, _JUNK), "--k"),
    "--block-size": (st.one_of(_BAD_INTS, _JUNK), "--block-size"),
    "--max-new-tokens": (st.one_of(_BAD_INTS, _JUNK), "--max-new-tokens"),
    "--threads": (st.one_of(_BAD_INTS, _JUNK), "--threads"),
    "--task": (_JUNK, "--task"),
    "--haystack": (_JUNK, "--haystack"),
    "--values": (_JUNK, "--values"),
    "--configs": (_JUNK, "is neither 'dense', 'oracle', 'exact' nor a photonic preset"),
}


@st.composite
def bad_option(draw):
    opt = draw(st.sampled_from(sorted(CLI_CASES)))
    strategy, expected = CLI_CASES[opt]
    return opt, draw(strategy), expected


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bad_option())
def test_every_invalid_cli_value_is_one_line_naming_the_option(capsys, monkeypatch, case):
    """Each bad value fails before any model loads (loading fails the test) with exactly one line naming the
    option."""
    monkeypatch.setattr("kvprism.hf.models.load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    opt, value, expected = case
    out = f"{tempfile.gettempdir()}/kvprism-fuzz-never-written"
    rc = main(["niah", "--model", "smollm2", "--out", out, f"{opt}={value}"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert rc in (1, 2) and len(err) == 1, (opt, value, err)
    assert expected in err[0], (opt, value, err)


# ------------------------------------------------------------------------------------------------- cell identity
_MODELS: dict[int, object] = {}


def _model(seed: int):
    from tests.conftest import tiny_model

    if seed not in _MODELS:
        _MODELS[seed] = tiny_model("llama", seed=seed)
    return _MODELS[seed]


#: result-affecting settings and the values drawn for them
AFFECTING = {
    "block_size": st.sampled_from([16, 32]),
    "k": st.sampled_from([2, 4]),
    "d_sig": st.sampled_from([8, 16]),
    "projection": st.sampled_from(["learned", "pca"]),
    "window": st.sampled_from([16, 64]),
    "heads": st.sampled_from(["all", ((True, False), (True, True))]),
    "backend": st.sampled_from(["exact", "photonic:seed-nominal", "photonic:ideal"]),
    "max_new_tokens": st.sampled_from([None, 3, 5]),
    "chat": st.booleans(),
    "model_seed": st.sampled_from([0, 1]),
    "mode": st.sampled_from(["niah", "recall"]),
}
#: settings that must not change a key
NEUTRAL = {
    "model_name": st.sampled_from(["tiny", "same weights, other name"]),
    "on_progress": st.sampled_from([None, print]),
}


def _key(s: dict, out_dir: str) -> str:
    from kvprism.eval import runner as R
    from kvprism.eval.grid import EvalConfig

    backend, _, preset = s["backend"].partition(":")
    selection = {n: s[n] for n in ("block_size", "d_sig", "projection", "window", "heads")}
    cfg = EvalConfig("cfg", backend, s["k"], preset or None, selection)
    runner = R.Runner(
        _model(s["model_seed"]),
        _tokenizer(),
        out_dir=out_dir,
        tasks=["niah_single"],
        contexts=[120],
        depths=[0.5],
        seeds=[0],
        configs=[cfg],
        mode=s["mode"],
        haystack="noise",
        max_new_tokens=s["max_new_tokens"],
        chat=s["chat"],
        model_name=s["model_name"],
        on_progress=s["on_progress"],
    )
    return runner.key(runner.points[0], "noise", "numbers", cfg)


_TOK = []


def _tokenizer():
    from tests.conftest import tiny_tokenizer

    if not _TOK:
        _TOK.append(tiny_tokenizer())
    return _TOK[0]


def _affecting(s: dict) -> tuple:
    a = {n: s[n] for n in AFFECTING}
    if a["mode"] == "recall":  # recall decodes exactly one step: the answer length does not apply
        a["max_new_tokens"] = None
    return tuple(sorted(a.items(), key=lambda kv: kv[0]))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.fixed_dictionaries({**AFFECTING, **NEUTRAL}), st.fixed_dictionaries({**AFFECTING, **NEUTRAL}))
def test_cell_key_changes_iff_a_result_affecting_setting_changes(a, b):
    with tempfile.TemporaryDirectory() as d1, tempfile.TemporaryDirectory() as d2:
        ka, kb = _key(a, d1), _key(b, d2)
        assert (ka == kb) == (_affecting(a) == _affecting(b)), (a, b)
        b_neutral = {**a, **{n: b[n] for n in NEUTRAL}}  # only neutral settings changed
        assert _key(b_neutral, d2) == ka


# ------------------------------------------------------------------------------------------------- library API
# ExactScorer, BlockSelector and PhotonicEngine with random shapes (empty ones included), NaN / inf / zero values and
# half-precision dtypes: every call returns a valid result or raises a KvprismError, nothing else (issue 30, 7).
_DTYPES = st.sampled_from([torch.float16, torch.bfloat16, torch.float32])
_FILL = st.sampled_from(["randn", "randn", "randn", "zero", "nan", "inf", "-inf"])  # valid ones more often


@st.composite
def _tensor(draw, shape: tuple[int, ...]):
    """A tensor of ``shape``: normal values (or zeros), one NaN / inf at a drawn position for the special fills."""
    fill, dtype, seed = draw(_FILL), draw(_DTYPES), draw(st.integers(0, 2**16))
    x = torch.zeros(shape) if fill == "zero" else torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    if fill in ("nan", "inf", "-inf") and x.numel():
        x.view(-1)[draw(st.integers(0, x.numel() - 1))] = float(fill)
    return x.to(dtype), fill


def _dims(lo: int = 0, hi: int = 3) -> st.SearchStrategy:
    """Sizes in ``[lo, hi]``, non-empty ones more often."""
    return st.sampled_from([*range(max(lo, 1), hi + 1)] * 3 + ([0] if lo == 0 else []))


def _only_kvprism_errors(call):
    """``call()``'s result, or None where it raised a KvprismError (any other exception fails the test)."""
    from kvprism.errors import KvprismError

    try:
        out = call()
    except KvprismError as e:
        assert str(e) and "\n" not in str(e)
        event("KvprismError")
        return None
    event("valid result")
    return out


_LIB = settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


@_LIB
@given(st.data())
def test_exact_scorer_returns_valid_scores_or_a_kvprism_error(data):
    from kvprism.scorers import ExactScorer

    lead = tuple(data.draw(st.lists(_dims(), max_size=2)))
    n, w = data.draw(_dims(0, 4)), data.draw(_dims(0, 3))
    rows, rows_fill = data.draw(_tensor((*lead, n, w)))
    sc = ExactScorer(SelectionConfig())
    programmed = _only_kvprism_errors(lambda: sc.program(rows) or True)
    assert bool(programmed) == (rows_fill in ("randn", "zero") and n > 0 and w > 0 and all(lead)), (
        "program accepts exactly the valid rows"
    )
    if data.draw(st.booleans()):
        extra, _ = data.draw(_tensor((*lead, data.draw(_dims(0, 2)), data.draw(_dims(0, 3)))))
        _only_kvprism_errors(lambda: sc.append(extra))
    group = data.draw(st.one_of(st.none(), _dims(0, 2)))
    qw = data.draw(st.sampled_from([w, w, w, w + 1]))
    qshape = (*lead, qw) if group is None else (*lead, group, qw)
    query, q_fill = data.draw(_tensor(qshape))
    got = _only_kvprism_errors(lambda: sc.scores(query))
    if got is not None:
        assert programmed and q_fill in ("randn", "zero") and qw == w
        assert got.dtype == torch.float32 and got.shape == (*qshape[:-1], sc.n_rows)
        assert torch.isfinite(got).all()


@_LIB
@given(st.data())
def test_block_selector_returns_valid_blocks_or_a_kvprism_error(data):
    from kvprism.selection import BlockSelector

    b, h, g, d = data.draw(_dims(0, 2)), data.draw(_dims(1, 3)), data.draw(_dims(0, 3)), data.draw(_dims(1, 4))
    nb, k = data.draw(_dims(0, 5)), data.draw(st.integers(-1, 6))
    sel = SelectionConfig(
        block_size=4, k=2, d_sig=4, projection="none", gqa_reduce=data.draw(st.sampled_from(["sum", "max"]))
    )
    s = BlockSelector(sel, 0, h, torch.ones(h, dtype=torch.bool))
    s.fitted = True
    rows, _ = data.draw(_tensor((b, data.draw(st.sampled_from([h, h, h, h + 1])), nb, d)))
    _only_kvprism_errors(lambda: s.program(rows))
    query, _ = data.draw(_tensor((b, h, g, data.draw(st.sampled_from([d, d, d, d + 1])))))
    cand = torch.rand(b, h, s.n_blocks, generator=torch.Generator().manual_seed(data.draw(st.integers(0, 99)))) > 0.3
    got = _only_kvprism_errors(lambda: s.select(query, cand, k))
    if got is not None:
        assert got.dtype == torch.long and got.shape == (b, h, k)
        assert ((got >= -1) & (got < max(s.n_blocks, 1))).all()
        if s.n_blocks:  # every chosen block is a candidate
            assert torch.gather(cand.expand(b, h, -1), -1, got.clamp_min(0))[got >= 0].all()
    scores = _only_kvprism_errors(lambda: s.scores(query))
    if scores is not None:
        assert scores.shape == (b, h, s.n_blocks) and torch.isfinite(scores).all()


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_photonic_engine_returns_valid_results_or_a_kvprism_error(data):
    from kvprism.photonics import PhotonicEngine

    preset = data.draw(st.sampled_from(["ideal", "seed-nominal"]))
    eng = PhotonicEngine(PhotonicConfig.preset(preset), seed=0)
    lead = tuple(data.draw(st.lists(_dims(), max_size=2)))
    n, w = data.draw(_dims(0, 4)), data.draw(_dims(0, 4))
    rows, _ = data.draw(_tensor((*lead, n, w)))
    _only_kvprism_errors(lambda: eng.program(rows))
    if data.draw(st.booleans()):
        extra, _ = data.draw(_tensor((*lead, data.draw(_dims(0, 2)), w)))
        _only_kvprism_errors(lambda: eng.append(extra))
    group = data.draw(st.one_of(st.none(), _dims(0, 2)))
    qshape = (*lead, w) if group is None else (*lead, group, w)
    query, _ = data.draw(_tensor(qshape))
    got = _only_kvprism_errors(lambda: eng.scores(query))
    if got is not None:
        assert got.shape == (*qshape[:-1], eng.n_rows) and torch.isfinite(got).all()
    k = data.draw(st.integers(0, 5))
    idx = _only_kvprism_errors(lambda: eng.select(query, k))
    if idx is not None:
        assert idx.shape == (*qshape[:-1], k) and ((idx >= 0) & (idx < eng.n_rows)).all()
