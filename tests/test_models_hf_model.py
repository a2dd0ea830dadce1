"""``load_model(spec, hf_model=...)``: wrapping a Hugging Face model that is already in memory.

The spec then only supplies the tokenizer (a directory needs no weights); the adapter must run
the in-memory weights on their own device and dtype, with the same logits as the plain HF forward
and the same EAP scores as the same weights loaded from a saved directory.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from random_batches import random_batch

import acd
from acd.attribution import attribute
from acd.graph import ComputeGraph
from acd.models.load import InvalidModelDir, ModelError

KINDS = ["gpt2", "llama"]  # tiny Llama: grouped-query attention, 4 query heads, 2 kv heads


def tokenizer_only_dir(model_dir: Path, directory: Path) -> Path:
    """A copy of ``model_dir`` without its weights: config.json and the tokenizer files."""
    directory.mkdir()
    for path in model_dir.iterdir():
        if path.suffix != ".safetensors":
            shutil.copy(path, directory / path.name)
    return directory


def in_memory_model(model_dir: Path, dtype: torch.dtype = torch.float64):
    """The saved model's weights, loaded into a fresh HF model object (training mode, as
    ``from_config`` would leave it: load_model must switch it to eval)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    return model.train()


@pytest.fixture(scope="module", params=KINDS)
def kind_dirs(request, make_tiny_model_dir, tmp_path_factory):
    """(kind, full model dir, tokenizer-only dir) for each tiny architecture."""
    model_dir = make_tiny_model_dir(request.param)
    tok_dir = tokenizer_only_dir(model_dir, tmp_path_factory.mktemp("tok") / request.param)
    return request.param, model_dir, tok_dir


def test_wraps_in_memory_model(kind_dirs):
    _, model_dir, tok_dir = kind_dirs
    hf = in_memory_model(model_dir)
    model = acd.load_model(tok_dir, hf_model=hf)
    assert model.bridge.original_model is hf
    assert model.source == "memory" and model.path == str(tok_dir)
    assert model.device == torch.device("cpu") and model.dtype == torch.float64
    assert not hf.training and not any(p.requires_grad for p in hf.parameters())
    assert model.tokenizer("the store", add_special_tokens=False)["input_ids"]


def test_logits_equal_plain_hf_forward(kind_dirs):
    _, model_dir, tok_dir = kind_dirs
    hf = in_memory_model(model_dir)
    model = acd.load_model(tok_dir, hf_model=hf)
    tokens = random_batch(4, 8, d_vocab=model.spec.d_vocab).clean
    with torch.no_grad():
        expected = hf(tokens).logits
        got = model.bridge(tokens)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_eap_equals_saved_dir(kind_dirs):
    _, model_dir, tok_dir = kind_dirs
    wrapped = acd.load_model(tok_dir, hf_model=in_memory_model(model_dir))
    saved = acd.load_model(model_dir, device="cpu", dtype=torch.float64)
    assert wrapped.spec == saved.spec
    graph = ComputeGraph.from_model(saved)
    batch = random_batch(4, 8, d_vocab=saved.spec.d_vocab)
    expected = attribute(saved, graph, batch, "eap", progress=False)
    got = attribute(wrapped, ComputeGraph.from_model(wrapped), batch, "eap", progress=False)
    assert expected.abs().max() > 0
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5 * float(expected.abs().max()))


def test_random_bf16_model_built_from_config(tiny_llama_dir, tmp_path):
    """The benchmark's path: random weights built in bfloat16, never saved."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(tiny_llama_dir)
    hf = AutoModelForCausalLM.from_config(config).to(torch.bfloat16)
    tok_dir = tokenizer_only_dir(tiny_llama_dir, tmp_path / "tok")
    model = acd.load_model(tok_dir, hf_model=hf)
    assert model.dtype == torch.bfloat16 and model.device == torch.device("cpu")
    assert model.weights_hash() == model.weights_hash()  # from the state dict: no files
    with torch.no_grad():
        logits = model.bridge(random_batch(4, 8, d_vocab=model.spec.d_vocab).clean)
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"device_map": "auto"}, "device_map"),
        ({"n_devices": 2}, "device_map"),
        ({"dtype": torch.float32}, "float64"),
        ({"device": "meta"}, "cpu"),
    ],
)
def test_refusals(tiny_gpt2_dir, kwargs, message):
    hf = in_memory_model(tiny_gpt2_dir)
    with pytest.raises(ModelError, match=message) as info:
        acd.load_model(tiny_gpt2_dir, hf_model=hf, **kwargs)
    assert "\n" not in str(info.value)


def test_matching_device_and_dtype_accepted(tiny_gpt2_dir):
    hf = in_memory_model(tiny_gpt2_dir)
    model = acd.load_model(tiny_gpt2_dir, device="cpu", dtype="float64", hf_model=hf)
    assert model.dtype == torch.float64


def test_tokenizer_still_required(tiny_gpt2_dir, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(tiny_gpt2_dir / "config.json", bare / "config.json")
    with pytest.raises(InvalidModelDir, match="no tokenizer"):
        acd.load_model(bare, hf_model=in_memory_model(tiny_gpt2_dir))


def test_weights_still_required_without_hf_model(tiny_gpt2_dir, tmp_path):
    tok_dir = tokenizer_only_dir(tiny_gpt2_dir, tmp_path / "tok")
    with pytest.raises(InvalidModelDir, match="safetensors"):
        acd.load_model(tok_dir, device="cpu")
