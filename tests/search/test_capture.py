"""kvprism.search.capture: the reference set of the design search."""

from __future__ import annotations

import pytest
import torch

from kvprism.errors import KvprismError
from kvprism.search import capture as cap
from tests.conftest import tiny_model
from tests.support.design_fixtures import capture_params, one_thread, text_tokenizer, tiny_reference

pytestmark = pytest.mark.usefixtures(one_thread.__name__)


def test_shapes_candidates_and_exact_topk():
    ref = tiny_reference()
    p = ref.params
    layers, heads, n, nq = ref.shape
    assert (layers, heads, n, nq) == (2, 2, p.context // p.block_size, p.n_queries)
    lo, hi = ref.candidate_range
    # queries at 504..511, window 16 -> the tail starts at 488: blocks 1..30 are candidates
    assert (lo, hi) == (1, 31)
    assert ref.query_pos.tolist() == list(range(504, 512))
    for d in p.d_sigs:
        assert ref.signatures[d].shape == (2, 2, n, d) and ref.queries[d].shape == (2, 2, nq, d)
        top = ref.topk[d]
        assert top.shape == (2, 2, nq, p.k_max) and bool(((top >= lo) & (top < hi)).all())
        scores = ref.queries[d] @ ref.signatures[d].transpose(-1, -2)
        picked = torch.gather(scores, -1, top)
        assert bool((picked[..., :-1] >= picked[..., 1:]).all())  # best first
        masked = scores.clone()
        masked[..., :lo] = -torch.inf
        masked[..., hi:] = -torch.inf
        kth = torch.topk(masked, p.k_max, dim=-1).values[..., -1:]
        assert bool((picked[..., -1:] == kth).all())  # nothing better left out
    att = ref.attn_topk
    assert att.shape == (2, 2, nq, p.k_max) and bool(((att >= lo) & (att < hi)).all())


def test_exact_topk_ties_go_to_the_lower_index():
    s = torch.tensor([[5.0, 1.0, 3.0, 3.0, 3.0, 9.0]])
    assert cap.exact_topk(s, 1, 5, 2).tolist() == [[2, 3]]


def test_capture_is_deterministic_for_a_seed():
    a, b = tiny_reference(0), cap.capture(tiny_model(), text_tokenizer(), capture_params(seed=0))
    for d in a.d_sigs:
        assert torch.equal(a.signatures[d], b.signatures[d])
        assert torch.equal(a.queries[d], b.queries[d])
        assert torch.equal(a.topk[d], b.topk[d])
    assert torch.equal(a.attn_topk, b.attn_topk)
    c = tiny_reference(1)  # another seed: another window of the text
    assert not torch.equal(a.signatures[8], c.signatures[8])


def test_save_load_roundtrip_and_atomic_write(tmp_path):
    ref = tiny_reference()
    path = ref.save(tmp_path / "ref.safetensors")
    back = cap.ReferenceSet.load(path)
    assert back.params == ref.params and back.info == ref.info
    for d in ref.d_sigs:
        assert torch.equal(back.signatures[d], ref.signatures[d]) and torch.equal(back.topk[d], ref.topk[d])
    assert [p.name for p in tmp_path.iterdir()] == ["ref.safetensors"]  # no temp file left
    with pytest.raises(KvprismError, match="does not exist"):
        cap.ReferenceSet.load(tmp_path / "nope.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"not a file")
    with pytest.raises(KvprismError, match="not a safetensors file"):
        cap.ReferenceSet.load(tmp_path / "bad.safetensors")


def test_cached_by_parameters_built_on_first_use(tmp_path, monkeypatch):
    monkeypatch.setenv("KVPRISM_CACHE", str(tmp_path))
    p = capture_params()
    path = cap.default_path(p)
    assert path.parent == tmp_path / "design" and p.key() in path.name
    assert cap.default_path(capture_params(seed=3)) != path
    ref = cap.reference_set(p, model=tiny_model(), tokenizer=text_tokenizer())
    assert path.is_file()

    def boom(*a, **k):
        raise AssertionError("captured again")

    monkeypatch.setattr(cap, "capture", boom)
    again = cap.reference_set(p)  # from the cache: no model needed
    assert torch.equal(again.signatures[8], ref.signatures[8])


def test_bad_parameters_name_the_option():
    with pytest.raises(KvprismError, match="k_max = 64 needs at least as many"):
        capture_params(k_max=64)
    with pytest.raises(KvprismError, match="d_sigs"):
        capture_params(d_sigs=())
    with pytest.raises(KvprismError, match="exceeds the model's window"):
        cap.capture(tiny_model(), text_tokenizer(), capture_params(context=4096))
    with pytest.raises(KvprismError, match="d_sig = 32 is not in the reference set"):
        tiny_reference().width(32)


def test_cli_capture_writes_the_file(tmp_path, capsys):
    from kvprism.cli import main

    model_dir = tmp_path / "tiny"
    tiny_model().save_pretrained(model_dir)
    text_tokenizer().save_pretrained(model_dir)
    out = tmp_path / "ref.safetensors"
    args = ["design", "capture", "--model", str(model_dir), "--context", "512", "--out", str(out), "--d-sig", "8",
            "--block-size", "16", "--queries", "8", "--k-max", "8"]  # fmt: skip
    assert main(args) == 0
    ref = cap.ReferenceSet.load(out)
    assert ref.d_sigs == (8,) and ref.shape == (2, 2, 32, 8) and ref.params.model == str(model_dir)
    assert "written" in capsys.readouterr().out
    assert main([*args[:-2], "--k-max", "64"]) == 2  # too few candidate blocks: a bad value, one line
    assert "k_max = 64 needs at least as many" in capsys.readouterr().err
