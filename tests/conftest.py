"""Shared fixtures: tiny random models/tokenizers (fast) and the real default model (slow)."""

from __future__ import annotations

import pytest
import torch


def tiny_config(family: str = "llama", **overrides):
    """A tiny random-weight config of a supported family (Llama, Qwen2, Mistral)."""
    from transformers import LlamaConfig, MistralConfig, Qwen2Config

    base = dict(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    base.update(overrides)
    cls = {"llama": LlamaConfig, "qwen2": Qwen2Config, "mistral": MistralConfig}[family]
    return cls(**base)


def tiny_model(family: str = "llama", seed: int = 0, **overrides):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, **overrides), dtype=torch.float32)
    return model.eval()


def tiny_tokenizer():
    """A word-level fast tokenizer over a small vocabulary (ids 0-2 are pad/bos/eos)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<s>", "</s>", "[UNK]"] + [f"w{i}" for i in range(124)]
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="[UNK]"
    )


@pytest.fixture(scope="session")
def smollm2_dir():
    """The converted default model folder (converts once per machine; reused from the cache afterwards)."""
    from kvprism.hf.models import convert_smollm2

    return convert_smollm2()


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir, local_files_only=True)


@pytest.fixture(scope="session")
def smollm2(smollm2_dir):
    from kvprism.hf.models import load_model

    return load_model("smollm2")


# Without CUDA, Triton kernels (kvprism.kernels) are tested on CPU under Triton's interpreter, which must be chosen
# before triton is first imported.
if not torch.cuda.is_available():
    import os

    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray instance of 2 CPUs for one test module; the process's signal handlers are restored after it."""
    import signal

    ray = pytest.importorskip("ray")
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=150 * 2**20)
    yield ray
    ray.shutdown()
    for sig, handler in handlers.items():
        signal.signal(sig, handler)
