import json

import pytest
import torch

from kvprism.errors import KvprismError
from kvprism.eval import heads as H
from tests.conftest import tiny_model, tiny_tokenizer


def test_outside_mass_known_answer():
    # T = 6, sink 1, window 2: valid query rows t = 3, 4, 5; outside keys: 1..t-2
    attn = torch.zeros(1, 2, 6, 6)
    # head 0: every row puts all mass on key 1 (outside for t >= 3)
    attn[0, 0, :, 1] = 1.0
    # head 1: row 3 puts 0.5 on key 0 (sink) and 0.5 on key 3 (window); row 4: 1.0 on key 2 (outside);
    # row 5: 0.25 on key 3 (outside), 0.75 on key 5 (window)
    attn[0, 1, 3, 0] = attn[0, 1, 3, 3] = 0.5
    attn[0, 1, 4, 2] = 1.0
    attn[0, 1, 5, 3] = 0.25
    attn[0, 1, 5, 5] = 0.75
    r = H.outside_mass(attn, sink_tokens=1, window_tokens=2)
    assert r[0].item() == pytest.approx(1.0)
    assert r[1].item() == pytest.approx((0.0 + 1.0 + 0.25) / 3)
    with pytest.raises(KvprismError, match="too short"):
        H.outside_mass(attn, sink_tokens=4, window_tokens=2)


def test_retrieval_mask_top_fraction():
    scores = torch.tensor([[0.1, 0.9], [0.5, 0.3]])
    mask, thr = H.retrieval_mask(scores, 0.5)
    assert mask.tolist() == [[False, True], [True, False]] and thr == pytest.approx(0.5)
    mask, _ = H.retrieval_mask(scores, 0.01)  # at least one head
    assert mask.sum() == 1 and mask[0, 1]
    with pytest.raises(KvprismError, match="fraction"):
        H.retrieval_mask(scores, 0.0)


def test_profile_tiny_model_matches_manual_attention(tmp_path):
    model = tiny_model("llama")
    ids = torch.randint(3, 128, (1, 40), generator=torch.Generator().manual_seed(0))
    scores = H.profile_heads(model, ids, sink_tokens=4, window_tokens=8)
    assert scores.shape == (2, 2) and ((scores >= 0) & (scores <= 1)).all()
    # reference: full output_attentions from an eager forward
    model.set_attn_implementation("eager")
    with torch.inference_mode():
        out = model(input_ids=ids, output_attentions=True)
    ref = torch.stack([H.outside_mass(a, 4, 8) for a in out.attentions]).view(2, 2, 2).mean(-1)
    assert torch.allclose(scores, ref, atol=1e-5)


def test_profile_restores_attention_implementation():
    model = tiny_model("qwen2")
    before = model.config._attn_implementation
    H.profile_heads(model, torch.arange(3, 43).unsqueeze(0), sink_tokens=2, window_tokens=4)
    assert model.config._attn_implementation == before


def test_run_profile_saves_loadable_mask_and_heatmap(tmp_path):
    model, tok = tiny_model("mistral"), tiny_tokenizer()
    prof = H.run_profile(model, tok, text_tokens=64, sink_tokens=4, window_tokens=8, fraction=0.5, seed=1)
    path = H.save_mask(prof, tmp_path / "heads.json")
    data = json.loads(path.read_text())
    assert data["layers"] == 2 and data["kv_heads"] == 2 and sum(map(sum, data["mask"])) == 2
    assert H.load_mask(path) == prof.mask.tolist()
    png = H.plot_heatmap(prof, tmp_path / "heads.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"layers": 2, "kv_heads": 2, "mask": [[True]]}))
    with pytest.raises(KvprismError, match="2 lists of 2 booleans"):
        H.load_mask(bad)


def test_mask_loads_into_selection_config(tmp_path):
    sel_mod = pytest.importorskip("kvprism.selection")
    prof = H.run_profile(tiny_model(), tiny_tokenizer(), text_tokens=64, sink_tokens=4, window_tokens=8)
    path = H.save_mask(prof, tmp_path / "heads.json")
    cfg = sel_mod.SelectionConfig(heads=H.load_mask(path))
    assert cfg.heads is not None


@pytest.mark.slow
def test_smollm2_has_retrieval_and_streaming_heads(smollm2):
    model, tok = smollm2
    prof = H.run_profile(model, tok, text_tokens=1024, sink_tokens=64, window_tokens=256, seed=0)
    # natural text: heads differ strongly (some read the middle, some live on sink + window)
    assert prof.scores.shape == (30, 3)
    assert prof.scores.max() > 0.3 and prof.scores.min() < 0.1


def test_default_sink_and_window_follow_selection_config():
    sink, window = H.selection_sink_window()
    try:
        from kvprism.selection import SelectionConfig
    except ImportError:
        assert (sink, window) == (H.DEFAULT_SINK_TOKENS, H.DEFAULT_WINDOW_TOKENS)
        return
    sel = SelectionConfig()
    assert (sink, window) == (sel.sink_blocks * sel.block_size, sel.window)
