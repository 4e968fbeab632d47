import time
from pathlib import Path

import pytest
import torch

from kvprism.errors import KvprismError, ModelNotFoundError
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
    monkeypatch.setattr(models, "gguf_architecture", lambda path: "llama")
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
    monkeypatch.setattr(models, "gguf_architecture", lambda path: "llama")
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: tiny_model())
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: tiny_tokenizer())
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", lambda *a, **k: cfg_with_quant)
    target = models.convert_smollm2()
    assert sorted(p.name for p in parent.iterdir()) == [target.name]
    assert (target / "model.safetensors").is_file() and (target / "tokenizer.json").is_file()
    assert "quantization_config" not in (target / "config.json").read_text()


def _fake_gguf(folder, content: bytes):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.gguf"
    path.write_bytes(content)
    return path


def test_gguf_cache_key_is_content_and_size(tmp_path):
    a = _fake_gguf(tmp_path / "a", b"x" * 10)
    b = _fake_gguf(tmp_path / "b", b"y" * 10)  # same name and size, other content
    c = _fake_gguf(tmp_path / "c", b"x" * 10)  # a copy of a
    d = _fake_gguf(tmp_path / "d", b"x" * 11)
    keys = [models.gguf_cache_key(p) for p in (a, b, c, d)]
    assert keys[0] == keys[2] and len(set(keys)) == 3
    assert keys[0].startswith("model-10-") and keys[3].startswith("model-11-")


def test_gguf_files_convert_once_and_never_share_an_entry(tmp_path, monkeypatch):
    monkeypatch.setenv("KVPRISM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(models, "gguf_architecture", lambda path: "qwen2")
    converted = []

    def fake_convert(gguf, folder):
        converted.append(gguf)
        for name in models._CONVERTED_FILES:
            (folder / name).write_bytes(gguf.read_bytes())

    monkeypatch.setattr(models, "_convert_gguf_into", fake_convert)
    a = _fake_gguf(tmp_path / "a", b"weights of a")
    b = _fake_gguf(tmp_path / "b", b"weights of b")
    first = models.resolve_model_path(str(a))
    assert models.resolve_model_path(str(a)) == first and len(converted) == 1  # reused
    other = models.resolve_model_path(str(b))
    assert other != first and len(converted) == 2
    assert (Path(other) / "config.json").read_bytes() == b"weights of b"
    assert (Path(first) / "config.json").read_bytes() == b"weights of a"
    assert models.resolve_model_path(str(_fake_gguf(tmp_path / "copy", b"weights of a"))) == first
    assert len(converted) == 2


def test_gguf_of_an_unsupported_architecture_is_one_clear_error(tmp_path, monkeypatch):
    import gguf

    monkeypatch.setenv("KVPRISM_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "bert.gguf"
    writer = gguf.GGUFWriter(str(path), "bert")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert models.gguf_architecture(path) == "bert"
    with pytest.raises(KvprismError, match=r"architecture 'bert'.*allowed: llama, qwen2, mistral"):
        load_model(str(path))
    assert not (tmp_path / "cache").exists()  # nothing converted
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load_model(str(tmp_path / "absent.gguf"))
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf")
    with pytest.raises(KvprismError, match="not a readable GGUF"):
        load_model(str(tmp_path / "junk.gguf"))


@pytest.mark.slow
def test_smollm2_gguf_by_path_equals_the_default_model(smollm2, tmp_path, monkeypatch):
    """The SmolLM2 GGUF loaded by its path (converted afresh into an empty cache) gives the logits of
    load_model("smollm2"); loading it again reuses the conversion."""
    model, tok = smollm2
    monkeypatch.setenv("KVPRISM_CACHE", str(tmp_path))
    path = models.smollm2_gguf_path()
    by_path, tok2 = load_model(str(path))
    folder = models.gguf_cache_dir(path)
    assert folder.is_relative_to(tmp_path)
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    assert ids.tolist() == tok2("The capital of France is", return_tensors="pt").input_ids.tolist()
    with torch.no_grad():
        assert torch.equal(by_path(ids).logits, model(ids).logits)
    before = (folder / "model.safetensors").stat().st_mtime_ns
    assert models.resolve_model_path(str(path)) == str(folder)
    assert (folder / "model.safetensors").stat().st_mtime_ns == before


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
