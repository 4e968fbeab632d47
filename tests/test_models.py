import time

import pytest
import torch

from kvprism.errors import ModelNotFoundError
from kvprism.hf import models
from kvprism.hf.models import load_model

from .conftest import tiny_model, tiny_tokenizer


def test_bogus_name_fails_clearly():
    with pytest.raises(ModelNotFoundError, match=r"model 'no-such-model' not found: .*Hugging Face cache"):
        load_model("no-such-model")


def test_missing_directory_fails_clearly(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load_model(str(tmp_path / "absent"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match=r"no config\.json"):
        load_model(str(tmp_path / "empty"))


def test_loads_local_directory(tmp_path):
    model = tiny_model("qwen2")
    model.save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    loaded, tok = load_model(str(tmp_path), dtype="float32")
    ids = torch.tensor([[1, 5, 6, 7]])
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, model(ids).logits, atol=1e-6)
    assert tok.pad_token is not None


def test_bad_dtype(tmp_path):
    with pytest.raises(ValueError, match="not a torch dtype"):
        load_model(str(tmp_path), dtype="float33")


def test_conversion_is_atomic(tmp_path, monkeypatch):
    """A conversion that fails while writing leaves neither the target nor a temporary folder behind."""
    monkeypatch.setenv("KVPRISM_CACHE", str(tmp_path))
    gguf = tmp_path / "fake" / models.SMOLLM2_GGUF
    gguf.parent.mkdir()
    gguf.write_bytes(b"")
    monkeypatch.setattr(models, "smollm2_gguf_path", lambda: gguf)
    import transformers

    cfg_with_quant = tiny_model().config
    cfg_with_quant.quantization_config = {"quant_method": "gguf"}
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: tiny_model())
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: tiny_tokenizer())
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", lambda *a, **k: cfg_with_quant)

    def boom(self, *args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(transformers.PreTrainedTokenizerFast, "save_pretrained", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        models.convert_smollm2()
    parent = models.converted_smollm2_dir().parent
    assert list(parent.iterdir()) == []
    monkeypatch.undo()
    monkeypatch.setenv("KVPRISM_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "smollm2_gguf_path", lambda: gguf)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: tiny_model())
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: tiny_tokenizer())
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", lambda *a, **k: cfg_with_quant)
    target = models.convert_smollm2()
    assert sorted(p.name for p in parent.iterdir()) == [target.name]
    assert (target / "model.safetensors").is_file() and (target / "tokenizer.json").is_file()
    assert "quantization_config" not in (target / "config.json").read_text()


@pytest.mark.slow
def test_conversion_cache_is_reused(smollm2_dir):
    before = (smollm2_dir / "model.safetensors").stat().st_mtime_ns
    t0 = time.perf_counter()
    assert models.convert_smollm2() == smollm2_dir
    assert time.perf_counter() - t0 < 5.0  # reading a cache hit touches no tensors
    assert (smollm2_dir / "model.safetensors").stat().st_mtime_ns == before


@pytest.mark.slow
def test_smollm2_knows_paris(smollm2):
    model, tok = smollm2
    assert model.config.num_hidden_layers == 30 and model.config.num_key_value_heads == 3
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    answer = tok.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer
