"""Shared fixtures: tiny random Hugging Face model directories, built once per test session.

Each directory is an ordinary HF model dir (config.json, model.safetensors, tokenizer.json,
tokenizer_config.json), the same shape as the embedded model, so ``acd.load_model(path)`` loads it
through the real code path. Weights are random but seeded, so every session builds the same ones.
Tests that modify a directory must copy it first (``shutil.copytree``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

# A small whitespace-split vocabulary; id 0 is BOS = EOS = PAD, as in GPT-2. The unknown token
# is a token of its own (the last id), so an unknown word is never mistaken for the BOS. It
# takes the place of a last filler word "w31": the size (the tiny models' vocab_size) and every
# other id stay as they were, and with them the seeded random weights.
TINY_VOCAB = (
    ["<|endoftext|>"]
    + ["the", "a", "of", "and", "to", "in", "is", "was", "when", "then", "went", "gave", "said"]
    + ["store", "garden", "park", "school"]
    + ["Mary", "John", "Alice", "Bob", "Tom", "Anna", "Paul", "Sara"]
    + [str(i) for i in range(10)]
    + [f"w{i}" for i in range(31)]
    + ["<unk>"]
)


def _save_word_tokenizer(directory: Path) -> None:
    """A word-level tokenizer over TINY_VOCAB, saved as tokenizer.json + tokenizer_config.json."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    special, unk = TINY_VOCAB[0], TINY_VOCAB[-1]
    tokenizer = Tokenizer(
        models.WordLevel({word: i for i, word in enumerate(TINY_VOCAB)}, unk_token=unk)
    )
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=special,
        eos_token=special,
        unk_token=unk,
        pad_token=special,
    )
    fast.save_pretrained(directory)


def _hf_config(kind: str, **overrides):
    """A tiny config: 2 layers, 4 query heads, d_model 32 (Llama: 2 key-value heads)."""
    from transformers import GPT2Config, GPTNeoXConfig, LlamaConfig

    # A larger init than HF's 0.02 so that perturbations in tests have visible effects.
    common = dict(vocab_size=len(TINY_VOCAB), bos_token_id=0, eos_token_id=0, initializer_range=0.1)
    if kind == "gpt2":
        config = GPT2Config(n_layer=2, n_head=4, n_embd=32, n_positions=64, **common)
    elif kind == "llama":
        config = LlamaConfig(
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            hidden_size=32,
            intermediate_size=64,
            max_position_embeddings=64,
            pad_token_id=0,
            **common,
        )
    elif kind == "neox":  # parallel attention + MLP, as Pythia
        config = GPTNeoXConfig(
            num_hidden_layers=2,
            num_attention_heads=4,
            hidden_size=32,
            intermediate_size=64,
            max_position_embeddings=64,
            use_parallel_residual=True,
            rotary_pct=0.25,
            **common,
        )
    else:
        raise ValueError(f"unknown tiny model kind {kind!r}")
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def build_tiny_model_dir(directory: Path, kind: str = "gpt2", seed: int = 0, **overrides) -> Path:
    """Write a tiny random ``kind`` ("gpt2" | "llama" | "neox") model directory and return it."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_hf_config(kind, **overrides))
    # HF initialises biases to 0 and norm weights to 1, which would hide bugs that drop or
    # double a bias; perturb every 1-d parameter.
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 1:
                param.add_(0.1 * torch.randn_like(param))
    model.save_pretrained(directory)
    _save_word_tokenizer(directory)
    return directory


@pytest.fixture(scope="session")
def make_tiny_model_dir(tmp_path_factory) -> Callable[..., Path]:
    """Factory: ``make_tiny_model_dir(kind="gpt2", seed=0, **config_overrides) -> Path``."""

    def make(kind: str = "gpt2", seed: int = 0, **overrides) -> Path:
        directory = tmp_path_factory.mktemp(f"tiny-{kind}")
        return build_tiny_model_dir(directory, kind, seed, **overrides)

    return make


@pytest.fixture(scope="session")
def tiny_gpt2_dir(make_tiny_model_dir) -> Path:
    """A tiny random GPT-2 (2 layers, 4 heads, d_model 32, learned positions, LayerNorm)."""
    return make_tiny_model_dir("gpt2")


@pytest.fixture(scope="session")
def tiny_llama_dir(make_tiny_model_dir) -> Path:
    """A tiny random Llama with grouped-query attention (4 query heads, 2 key-value heads)."""
    return make_tiny_model_dir("llama")


class _TinyModels(dict):
    """kind -> (model, graph), each tiny random model loaded on first use."""

    def __init__(self, make_dir: Callable[..., Path]):
        super().__init__()
        self._make_dir = make_dir

    def __missing__(self, kind: str):
        from acd.graph import ComputeGraph
        from acd.models import load_model

        model = load_model(self._make_dir(kind), device="cpu")
        self[kind] = (model, ComputeGraph.from_model(model))
        return self[kind]


@pytest.fixture(scope="session")
def tiny_models(make_tiny_model_dir) -> dict:
    """kind -> (model, graph) for the tiny random GPT-2, Llama (GQA) and NeoX (parallel) models,
    loaded once per session. The models are frozen; tests must not change their weights."""
    return _TinyModels(make_tiny_model_dir)


@pytest.fixture
def cached_toy(toy, monkeypatch):
    """The CLI in this process, answering every model load with the requesting module's
    ``toy`` fixture (loaded once per module), so CLI tests skip the 20 s load."""
    import acd.cli

    monkeypatch.setattr(acd.cli, "_load_model_verbose", lambda *args, **kwargs: toy)
    return toy


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` are skipped where torch sees no CUDA device (every CI run)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (marker gpu)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
