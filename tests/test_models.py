"""Model loading: numerics against plain Hugging Face, the hook vocabulary, offline behaviour."""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

import acd.models.load as load_module
import acd.models.resolve as resolve_module
from acd.errors import AcdError
from acd.models import (
    InvalidModelDir,
    ModelNotAvailable,
    list_models,
    load_model,
)

# The embedded model, a random GPT-2, and a random Llama with grouped-query attention.
ARCHS = ["toy", "gpt2", "llama"]
TOY_DIR = Path(load_module.__file__).parent / "toy"


@pytest.fixture
def arch_dir(request, tiny_gpt2_dir, tiny_llama_dir) -> Path:
    return {"toy": TOY_DIR, "gpt2": tiny_gpt2_dir, "llama": tiny_llama_dir}[request.param]


def tokens(seed: int = 0, batch: int = 2, pos: int = 7, vocab: int = 50) -> torch.Tensor:
    """Random token ids [batch, pos], avoiding 0 (BOS) so nothing special happens."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, vocab, (batch, pos), generator=g)


def assert_close_scaled(got: torch.Tensor, expected: torch.Tensor, tol: float = 1e-5) -> None:
    """Equal to ``tol`` relative to the tensor's largest magnitude (at least 1): a trained model's
    logits run to tens, where float32 rounding alone differs by more than 1e-5 absolute."""
    scale = max(1.0, expected.abs().max().item())
    torch.testing.assert_close(got, expected, atol=tol * scale, rtol=0)


def hf_model(path: Path):
    """The plain Hugging Face model, eager attention (as the bridge forces), as reference."""
    return AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()


def run_and_cache(model, toks, names, fwd_hooks=()):
    """Run the bridge with ``fwd_hooks`` and return {name: activation} for ``names``."""
    cache = {}

    def saver(name):
        def save(act, hook):
            cache[name] = act.detach().clone()

        return save

    hooks = list(fwd_hooks) + [(name, saver(name)) for name in names]
    with torch.no_grad():
        model.bridge.run_with_hooks(toks, fwd_hooks=hooks)
    return cache


# ---------------------------------------------------------------------------------------------
# Numerics and hook semantics, GPT-2 and Llama with grouped-query attention


@pytest.mark.parametrize("arch_dir", ARCHS, indirect=True)
def test_logits_equal_plain_hf(arch_dir):
    model = load_model(arch_dir, device="cpu")
    toks = tokens()
    with torch.no_grad():
        expected = hf_model(arch_dir)(toks).logits
        got = model.bridge(toks)
    assert got.shape == expected.shape
    assert_close_scaled(got, expected)


@pytest.mark.parametrize("arch_dir", ARCHS, indirect=True)
def test_spec_matches_hf_config(arch_dir):
    model = load_model(arch_dir, device="cpu")
    config = hf_model(arch_dir).config
    spec = model.spec
    assert spec.n_layers == config.num_hidden_layers
    assert spec.n_heads == config.num_attention_heads
    assert spec.n_kv_heads == getattr(config, "num_key_value_heads", config.num_attention_heads)
    assert spec.d_model == config.hidden_size
    assert spec.d_head == config.hidden_size // config.num_attention_heads
    assert spec.d_vocab == config.vocab_size
    assert spec.has_mlp and not spec.attn_only and not spec.parallel_attn_mlp
    assert model.device == torch.device("cpu") and model.dtype == torch.float32
    assert model.n_params == sum(p.numel() for p in hf_model(arch_dir).parameters())


def test_parallel_attention_is_detected(make_tiny_model_dir):
    model = load_model(make_tiny_model_dir("neox"), device="cpu")
    assert model.spec.parallel_attn_mlp is True


@pytest.mark.parametrize("arch_dir", ARCHS, indirect=True)
def test_hooks_carry_the_residual_stream(arch_dir):
    """Every input hook holds the residual stream HF reports (before the block's norm)."""
    model = load_model(arch_dir, device="cpu")
    hf = hf_model(arch_dir)
    toks = tokens()
    with torch.no_grad():
        hidden = hf(toks, output_hidden_states=True).hidden_states  # [n_layers + 1] x [b, p, d]
    spec = model.spec
    names = [model.hook_embed_out(), model.hook_final_resid()]
    for layer in range(spec.n_layers):
        names += [model.hook_q_input(layer), model.hook_k_input(layer), model.hook_v_input(layer)]
        names += [model.hook_attn_out(layer), model.hook_mlp_in(layer)]
    cache = run_and_cache(model, toks, names)

    torch.testing.assert_close(cache[model.hook_embed_out()], hidden[0], atol=1e-6, rtol=0)
    for layer in range(spec.n_layers):
        q = cache[model.hook_q_input(layer)]
        k = cache[model.hook_k_input(layer)]
        v = cache[model.hook_v_input(layer)]
        assert q.shape == (*toks.shape, spec.n_heads, spec.d_model)
        assert k.shape == v.shape == (*toks.shape, spec.n_kv_heads, spec.d_model)
        for copies in (q, k, v):
            expected = hidden[layer].unsqueeze(2).expand_as(copies)
            torch.testing.assert_close(copies, expected, atol=1e-5, rtol=0)
        # Sequential blocks: the MLP reads the residual after attention.
        mlp_in = cache[model.hook_mlp_in(layer)]
        expected_mlp_in = hidden[layer] + cache[model.hook_attn_out(layer)]
        torch.testing.assert_close(mlp_in, expected_mlp_in, atol=1e-5, rtol=0)
    # HF's last hidden state is after the final norm: apply it to ours.
    final_norm = hf.base_model.ln_f if hasattr(hf.base_model, "ln_f") else hf.base_model.norm
    with torch.no_grad():
        normed = final_norm(cache[model.hook_final_resid()])
    assert_close_scaled(normed, hidden[-1])


@pytest.mark.parametrize("arch_dir", ARCHS, indirect=True)
def test_head_results_plus_bias_sum_to_attention_output(arch_dir):
    model = load_model(arch_dir, device="cpu")
    hf = hf_model(arch_dir)
    toks = tokens()
    for layer in range(model.spec.n_layers):
        result_name, out_name = model.hook_head_result(layer), model.hook_attn_out(layer)
        cache = run_and_cache(model, toks, [result_name, out_name])
        result = cache[result_name]
        assert result.shape == (*toks.shape, model.spec.n_heads, model.spec.d_model)
        total = result.sum(dim=2) + model.attn_output_bias(layer)
        torch.testing.assert_close(total, cache[out_name], atol=1e-5, rtol=0)
    # b_O is the HF output projection's bias (GPT-2's c_proj), or absent (Llama).
    if hasattr(hf, "transformer"):
        expected_bias = hf.transformer.h[0].attn.c_proj.bias
        assert expected_bias.abs().max() > 0
    else:
        expected_bias = torch.zeros(model.spec.d_model)
    torch.testing.assert_close(model.attn_output_bias(0), expected_bias.detach())


@pytest.mark.parametrize("arch_dir", ARCHS, indirect=True)
@pytest.mark.parametrize("port", ["q", "k", "v"])
def test_patching_one_input_changes_only_its_heads(arch_dir, port):
    """A change to one head's (or KV group's) input moves only the heads that read it."""
    model = load_model(arch_dir, device="cpu")
    spec, layer = model.spec, 1
    toks = tokens()
    input_name = {"q": model.hook_q_input, "k": model.hook_k_input, "v": model.hook_v_input}
    input_name = input_name[port](layer)
    result_name = model.hook_head_result(layer)
    index = 1  # a query head for q, a key-value group for k and v
    if port == "q":
        affected = {index}
    else:
        affected = {h for h in range(spec.n_heads) if spec.kv_group(h) == index}
    if spec.n_kv_heads < spec.n_heads and port != "q":
        assert len(affected) == spec.heads_per_kv_group > 1  # a true group, not one head

    direction = torch.randn(spec.d_model, generator=torch.Generator().manual_seed(1))

    def perturb(act, hook):
        act = act.clone()
        act[:, :, index] += direction
        return act

    clean = run_and_cache(model, toks, [result_name])[result_name]
    patched = run_and_cache(model, toks, [result_name], fwd_hooks=[(input_name, perturb)])
    change = (patched[result_name] - clean).abs().amax(dim=(0, 1, 3))  # [n_heads]
    for head in range(spec.n_heads):
        if head in affected:
            assert change[head] > 1e-3, f"head {head} did not react to {port} input {index}"
        else:
            assert change[head] < 1e-6, f"head {head} reacted to {port} input {index}"


@pytest.mark.parametrize("arch_dir", ARCHS, indirect=True)
def test_patching_mlp_input_leaves_the_residual_alone(arch_dir):
    model = load_model(arch_dir, device="cpu")
    toks, layer = tokens(), 0
    names = [
        model.hook_resid_pre(layer),
        model.hook_attn_out(layer),
        model.hook_mlp_out(layer),
        model.hook_resid_pre(layer + 1),
    ]
    direction = torch.randn(model.spec.d_model, generator=torch.Generator().manual_seed(2))
    clean = run_and_cache(model, toks, names)
    patched = run_and_cache(
        model,
        toks,
        names,
        fwd_hooks=[(model.hook_mlp_in(layer), lambda act, hook: act + direction)],
    )
    mlp_out = patched[model.hook_mlp_out(layer)]
    assert (mlp_out - clean[model.hook_mlp_out(layer)]).abs().max() > 1e-3
    # The residual passes by unchanged: next block's input = clean residual + attn + new MLP out.
    expected = clean[model.hook_resid_pre(layer)] + clean[model.hook_attn_out(layer)] + mlp_out
    torch.testing.assert_close(
        patched[model.hook_resid_pre(layer + 1)], expected, atol=1e-5, rtol=0
    )


def test_gradients_flow_through_hooks_but_not_parameters(tiny_gpt2_dir):
    """Backward through a hooked activation matches a finite difference; weights get no grad."""
    # float64 so that the finite difference is accurate (also exercises the dtype argument).
    model = load_model(tiny_gpt2_dir, device="cpu", dtype="float64")
    assert model.dtype == torch.float64
    toks = tokens()
    name = model.hook_embed_out()
    direction = torch.randn(
        *toks.shape,
        model.spec.d_model,
        generator=torch.Generator().manual_seed(3),
        dtype=torch.float64,
    )

    def metric(delta: torch.Tensor, keep: dict | None = None) -> torch.Tensor:
        def hook(act, hook):
            act = act + delta
            if keep is not None:
                act.retain_grad()
                keep["act"] = act
            return act

        logits = model.bridge.run_with_hooks(toks, fwd_hooks=[(name, hook)])
        return logits[:, -1, 3].sum()

    kept: dict = {}
    with torch.enable_grad():
        delta = torch.zeros_like(direction, requires_grad=True)
        metric(delta, kept).backward()
    grad = kept["act"].grad
    assert grad is not None and grad.abs().max() > 0
    eps = 1e-5
    with torch.no_grad():
        finite = (metric(eps * direction) - metric(-eps * direction)) / (2 * eps)
    torch.testing.assert_close((grad * direction).sum(), finite, rtol=1e-6, atol=1e-8)
    params = list(model.bridge.parameters()) + list(model.bridge.original_model.parameters())
    assert params and all(not p.requires_grad for p in params)
    assert not model.bridge.training


# ---------------------------------------------------------------------------------------------
# Embedded models


@pytest.fixture
def embedded_root(tmp_path, tiny_gpt2_dir, monkeypatch) -> Path:
    """A stand-in for acd/models/ holding one embedded model, ``tiny``."""
    root = tmp_path / "embedded"
    shutil.copytree(tiny_gpt2_dir, root / "tiny")
    (root / "not_a_model").mkdir()  # ignored: no config.json
    monkeypatch.setattr(resolve_module, "embedded_models_dir", lambda: root)
    return root


def test_embedded_name_loads_through_the_same_path(embedded_root, tiny_gpt2_dir):
    model = load_model("tiny", device="cpu")
    assert model.source == "embedded" and model.name == "tiny"
    assert Path(model.path) == embedded_root / "tiny"
    by_path = load_model(tiny_gpt2_dir, device="cpu")
    toks = tokens()
    with torch.no_grad():
        torch.testing.assert_close(model.bridge(toks), by_path.bridge(toks), atol=0, rtol=0)
    expected = hashlib.sha256((tiny_gpt2_dir / "model.safetensors").read_bytes()).hexdigest()
    assert model.weights_hash() == by_path.weights_hash() == expected


def test_list_models_finds_embedded(embedded_root, tmp_path, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "no-cache"))
    infos = list_models()
    assert [(i.name, i.source) for i in infos] == [("tiny", "embedded")]
    info = infos[0]
    assert (info.n_layers, info.n_heads, info.d_model) == (2, 4, 32)
    assert info.n_params == load_model("tiny", device="cpu").n_params


def test_embedded_toy_loads():
    model = load_model("toy", device="cpu")
    assert model.source == "embedded"
    assert model.spec.architecture == "GPT2LMHeadModel"
    assert any(i.name == "toy" and i.source == "embedded" for i in list_models())
    with torch.no_grad():
        logits = model.bridge(tokens(vocab=model.spec.d_vocab, pos=5))
    assert logits.shape == (2, 5, model.spec.d_vocab) and torch.isfinite(logits).all()


# ---------------------------------------------------------------------------------------------
# Offline behaviour and bad specs


def assert_one_line(err: Exception) -> str:
    message = str(err)
    assert message and "\n" not in message
    return message


def test_offline_hub_name_fails_fast_with_a_hint(tmp_path, monkeypatch):
    """Simulated offline (whatever this machine's network): a clear, immediate error."""
    monkeypatch.setattr(resolve_module, "_hub_reachable", lambda: False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "no-cache"))
    start = time.monotonic()
    with pytest.raises(ModelNotAvailable) as info:
        load_model("gpt2", device="cpu")
    assert time.monotonic() - start < 30
    message = assert_one_line(info.value)
    assert "Hugging Face hub" in message and "--model" in message and "acd models" in message
    assert isinstance(info.value, AcdError)


def test_unknown_hub_name_fails_fast_for_real(tmp_path, monkeypatch):
    """The real probe: offline it fails before any download retry, online the hub says 404."""
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "no-cache"))
    start = time.monotonic()
    with pytest.raises(ModelNotAvailable) as info:
        load_model("acd-tests/no-such-model-4f1c2e", device="cpu")
    assert time.monotonic() - start < 30
    assert "acd models" in assert_one_line(info.value)


def test_hub_name_offline_loads_from_the_hf_cache(tiny_gpt2_dir, tmp_path, monkeypatch):
    """A hub model already in the local HF cache loads (and is listed) without network."""
    cache = tmp_path / "hub"
    repo = cache / "models--acd-tests--tiny-gpt2"
    commit = "0" * 40
    shutil.copytree(tiny_gpt2_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(resolve_module, "_hub_reachable", lambda: False)

    model = load_model("acd-tests/tiny-gpt2", device="cpu")
    assert model.source == "hf-cache" and model.name == "acd-tests/tiny-gpt2"
    assert model.spec.n_layers == 2
    listed = [(i.name, i.source) for i in list_models()]
    assert ("acd-tests/tiny-gpt2", "hf-cache") in listed


def test_bad_paths_give_one_line_errors(tmp_path, tiny_gpt2_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    a_file = tmp_path / "weights.txt"
    a_file.write_text("not a model")
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    shutil.copy(tiny_gpt2_dir / "config.json", no_weights / "config.json")
    no_tokenizer = tmp_path / "no_tokenizer"
    shutil.copytree(tiny_gpt2_dir, no_tokenizer)
    (no_tokenizer / "tokenizer.json").unlink()
    corrupt = tmp_path / "corrupt"
    shutil.copytree(tiny_gpt2_dir, corrupt)
    (corrupt / "model.safetensors").write_bytes(b"not safetensors")
    cases = {
        empty: "no config.json",
        a_file: "not a Hugging Face model directory",
        no_weights: "no *.safetensors",
        no_tokenizer: "no tokenizer",
        corrupt: "could not load model",
        tmp_path / "missing": "no such model directory",
        "./missing-relative": "no such model directory",
    }
    for spec, expected in cases.items():
        with pytest.raises(InvalidModelDir) as info:
            load_model(spec, device="cpu")
        assert expected in assert_one_line(info.value)


# ---------------------------------------------------------------------------------------------
# Running part of the model: blocks_from and logits_to_keep


def hf_block_list(model) -> torch.nn.ModuleList:
    """The list of blocks the wrapped Hugging Face model's forward loops over, found by name."""
    hf = model.bridge.original_model
    return hf.transformer.h if hasattr(hf, "transformer") else hf.model.layers


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_blocks_from_keeps_only_the_late_blocks_and_restores_them(tiny_models, kind):
    model, _ = tiny_models[kind]
    full = hf_block_list(model)
    blocks = list(full)
    n_layers = model.spec.n_layers
    for layer in range(n_layers + 1):
        with model.blocks_from(layer):
            inside = hf_block_list(model)
            assert len(inside) == n_layers - layer
            assert all(a is b for a, b in zip(inside, blocks[layer:]))
        assert hf_block_list(model) is full and list(full) == blocks


def test_blocks_from_restores_the_blocks_when_the_body_raises(tiny_models):
    model, _ = tiny_models["gpt2"]
    full = hf_block_list(model)
    with pytest.raises(ZeroDivisionError), model.blocks_from(1):
        assert len(hf_block_list(model)) == model.spec.n_layers - 1
        _ = 1 / 0
    assert hf_block_list(model) is full and len(full) == model.spec.n_layers


def test_blocks_from_refuses_a_layer_out_of_range(tiny_models):
    model, _ = tiny_models["gpt2"]
    full = hf_block_list(model)
    for layer in (-1, model.spec.n_layers + 1):
        with pytest.raises(IndexError), model.blocks_from(layer):
            pass
    assert hf_block_list(model) is full


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_a_run_from_a_late_layer_gives_the_full_logits(tiny_models, kind):
    """With the residual swapped in at block ``layer``, the late blocks alone give the logits."""
    model, _ = tiny_models[kind]
    toks = tokens(vocab=model.spec.d_vocab)
    layer = model.spec.n_layers - 1
    name = model.hook_resid_pre(layer)
    clean = run_and_cache(model, toks, [name])[name]
    with torch.no_grad():
        expected = model.bridge(toks)
        with model.blocks_from(layer):
            got = model.bridge.run_with_hooks(toks, fwd_hooks=[(name, lambda x, hook: clean)])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_gpt2_accepts_logits_to_keep(tiny_models):
    model, _ = tiny_models["gpt2"]
    assert model.accepts_logits_to_keep is True


def test_weights_sha256_is_kept_until_a_weight_changes(tiny_gpt2_dir):
    """The digest of an unchanged model is reused; an in-place change or a replaced tensor
    gives the digest of a fresh hash of the changed bytes."""
    import hashlib

    from acd.models import weights_sha256
    from acd.models.weights import _raw_bytes

    model = load_model(tiny_gpt2_dir, device="cpu")  # its own copy: the test changes it

    def fresh() -> str:
        state = model.bridge.original_model.state_dict()
        digest = hashlib.sha256()
        for name in sorted(state):
            tensor = state[name].detach()
            digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
            digest.update(_raw_bytes(tensor))
        return digest.hexdigest()

    before = weights_sha256(model)
    assert before == fresh() and weights_sha256(model) == before
    weight = next(model.bridge.original_model.parameters())
    with torch.no_grad():
        weight.add_(1.0)  # in place: the version counter moves
    changed = weights_sha256(model)
    assert changed != before and changed == fresh()
    weight.data = weight.data.clone()  # a replaced tensor, same bytes: the same digest
    assert weights_sha256(model) == changed
