"""Compiled transformers (tracr) as acd models (acd.models.compiled).

On a random-weights directory in the compiled format (written here, so these tests need no
shipped program): the forward against one written out in numpy from the raw arrays, then the
engine's invariants as tests/test_patching.py and tests/test_attribution.py check them on the
tiny Hugging Face models, each against hand-written hooks. Shipped programs
(acd/models/compiled/<name>/), where present, must reproduce tracr's outputs on every example.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hand_hooks import destination_point
from safetensors.numpy import save_file

import acd
from acd.errors import AcdError, TaskError
from acd.graph import ComputeGraph
from acd.metrics import get_metric
from acd.models import InvalidModelDir, ModelError, load_model, model_config
from acd.models.compiled import CompiledAdapter, compiled_model_names, compiled_models_dir
from acd.patching import run_and_collect, run_patched
from acd.tasks import PromptBatch

TOL = 1e-9  # float64 throughout

# The random directory: 2 blocks, 2 heads, d_model 12, d_mlp 8, 5 input symbols (BOS and PAD
# among them), 4 output symbols (so that d_vocab, the output size, differs from the input's).
INPUT_TOKENS = ["BOS", "a", "b", "c", "compiler_pad"]
OUTPUT_TOKENS = ["p", "q", "r", "s"]
SIZES = dict(n_layers=2, n_heads=2, d_model=12, d_head=3, d_mlp=8, n_ctx=5)


# --------------------------------------------------------------------------------------------
# A random compiled-program directory


def random_weights(seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 weights in the compiled format's names and shapes (biases non-zero, so
    that a dropped or doubled bias shows)."""
    rng = np.random.default_rng(seed)
    L, H, d, e, m = (SIZES[k] for k in ("n_layers", "n_heads", "d_model", "d_head", "d_mlp"))

    def normal(*shape: int, scale: float = 0.5) -> np.ndarray:
        return (scale * rng.standard_normal(shape)).astype(np.float32)

    weights = {
        "embed.W_E": normal(len(INPUT_TOKENS), d, scale=1.0),
        "pos_embed.W_pos": normal(SIZES["n_ctx"], d, scale=1.0),
        "unembed.W_U": normal(d, len(OUTPUT_TOKENS)),
        "unembed.b_U": normal(len(OUTPUT_TOKENS), scale=0.1),
    }
    for layer in range(L):
        p = f"blocks.{layer}."
        for letter in "QKV":
            weights[p + f"attn.W_{letter}"] = normal(H, d, e)
            weights[p + f"attn.b_{letter}"] = normal(H, e, scale=0.1)
        weights[p + "attn.W_O"] = normal(H, e, d)
        weights[p + "attn.b_O"] = normal(d, scale=0.1)
        weights[p + "mlp.W_in"] = normal(d, m)
        weights[p + "mlp.b_in"] = normal(m, scale=0.1)
        weights[p + "mlp.W_out"] = normal(m, d)
        weights[p + "mlp.b_out"] = normal(d, scale=0.1)
    return weights


def write_compiled_dir(directory: Path, seed: int = 0, **config_overrides) -> Path:
    """Write a random-weights program directory in the compiled format; return it."""
    directory.mkdir(parents=True, exist_ok=True)
    save_file(random_weights(seed), str(directory / "model.safetensors"))
    config = {
        "format": "acd-compiled",
        "version": 1,
        "name": "random",
        **SIZES,
        "d_vocab": len(INPUT_TOKENS),
        "d_vocab_out": len(OUTPUT_TOKENS),
        "act_fn": "relu",
        "causal": False,
        "empty": {"attn": [], "mlp": []},
        **config_overrides,
    }
    encodings = {
        "input": INPUT_TOKENS,
        "output": OUTPUT_TOKENS,
        "bos": "BOS",
        "pad": "compiler_pad",
        "max_seq_len": SIZES["n_ctx"] - 1,
    }
    (directory / "config.json").write_text(json.dumps(config))
    (directory / "encodings.json").write_text(json.dumps(encodings))
    (directory / "program.json").write_text(json.dumps({"name": "random", "examples": []}))
    return directory


@pytest.fixture(scope="module")
def compiled_dir(tmp_path_factory) -> Path:
    return write_compiled_dir(tmp_path_factory.mktemp("compiled") / "random")


@pytest.fixture(scope="module")
def model(compiled_dir) -> CompiledAdapter:
    loaded = load_model(compiled_dir, device="cpu", dtype=torch.float64)
    assert isinstance(loaded, CompiledAdapter)
    return loaded


@pytest.fixture(scope="module")
def graph(model) -> ComputeGraph:
    return ComputeGraph.from_model(model)


def random_tokens(seed: int, batch: int = 3, pos: int = 5) -> torch.Tensor:
    """Token ids [batch, pos]: BOS, then random symbols a, b, c."""
    generator = torch.Generator().manual_seed(seed)
    body = torch.randint(1, 4, (batch, pos - 1), generator=generator)
    return torch.cat([torch.zeros(batch, 1, dtype=torch.long), body], dim=1)


def logit_diff_batch(seed: int, score_at: int | None = None, n: int = 4) -> PromptBatch:
    """Clean and corrupted prompts of full length with a correct and a wrong output id each,
    scored at the last position, or at ``score_at`` only."""
    clean, corrupted = random_tokens(seed, n), random_tokens(seed + 100, n)
    generator = torch.Generator().manual_seed(seed + 200)
    answers = torch.randperm(len(OUTPUT_TOKENS), generator=generator)[:2]
    score_mask = None
    if score_at is not None:
        score_mask = torch.zeros(clean.shape, dtype=torch.bool)
        score_mask[:, score_at] = True
    return PromptBatch.from_token_ids(
        clean,
        corrupted,
        correct=[[int(answers[0])]] * n,
        wrong=[[int(answers[1])]] * n,
        metric="logit_diff",
        score_mask=score_mask,
    )


# --------------------------------------------------------------------------------------------
# Independent reference: the forward in numpy, and hand-written hooks


def numpy_forward(weights: dict[str, np.ndarray], ids: np.ndarray) -> np.ndarray:
    """Logits [batch, pos, d_vocab_out] in float64: embeddings, then per block non-causal
    softmax attention and a ReLU MLP, each added to the residual; no LayerNorm."""
    w = {k: v.astype(np.float64) for k, v in weights.items()}
    x = w["embed.W_E"][ids] + w["pos_embed.W_pos"][: ids.shape[1]]
    for layer in range(SIZES["n_layers"]):
        p = f"blocks.{layer}."
        q = np.einsum("btd,hde->bhte", x, w[p + "attn.W_Q"]) + w[p + "attn.b_Q"][:, None]
        k = np.einsum("btd,hde->bhte", x, w[p + "attn.W_K"]) + w[p + "attn.b_K"][:, None]
        v = np.einsum("btd,hde->bhte", x, w[p + "attn.W_V"]) + w[p + "attn.b_V"][:, None]
        scores = np.einsum("bhqe,bhke->bhqk", q, k) / np.sqrt(SIZES["d_head"])
        pattern = np.exp(scores - scores.max(axis=-1, keepdims=True))
        pattern /= pattern.sum(axis=-1, keepdims=True)
        z = np.einsum("bhqk,bhke->bhqe", pattern, v)
        x = x + np.einsum("bhqe,hed->bqd", z, w[p + "attn.W_O"]) + w[p + "attn.b_O"]
        hidden = np.maximum(x @ w[p + "mlp.W_in"] + w[p + "mlp.b_in"], 0.0)
        x = x + hidden @ w[p + "mlp.W_out"] + w[p + "mlp.b_out"]
    return x @ w["unembed.W_U"] + w["unembed.b_U"]


def source_outputs(model, graph, tokens) -> dict[int, torch.Tensor]:
    """Every source's output in a plain forward, by hand: {source index: [b, pos, d_model]}."""
    record = {}

    def keep(index, head=None):
        def hook(x, hook):
            record[index] = (x if head is None else x[:, :, head]).detach().clone()

        return hook

    hooks = [(model.hook_embed_out(), keep(0))]
    for layer in range(graph.n_layers):
        for h in range(graph.n_heads):
            hooks.append((model.hook_head_result(layer), keep(graph.src_head(layer, h), h)))
        hooks.append((model.hook_mlp_out(layer), keep(graph.src_mlp(layer))))
    with torch.no_grad():
        model.bridge.run_with_hooks(tokens, fwd_hooks=hooks)
    return record


def run_adding(model, graph, tokens, dst: int, delta: torch.Tensor) -> torch.Tensor:
    """Logits of a full forward where destination ``dst``'s input gets ``delta`` added."""
    name, index = destination_point(model, graph.destinations[dst])

    def hook(x, hook):
        x = x.clone()
        if index is None:
            return x + delta
        x[:, :, index] = x[:, :, index] + delta
        return x

    return model.bridge.run_with_hooks(tokens, fwd_hooks=[(name, hook)])


def mean_metric(model, batch, logits) -> torch.Tensor:
    return get_metric(batch.metric)(logits, batch).mean()


def patched_effect(model, graph, batch, u: int, v: int, diffs) -> torch.Tensor:
    """Mean metric with edge u -> v patched by hand, minus the clean mean metric."""
    with torch.no_grad():
        patched = run_adding(model, graph, batch.clean, v, diffs[u])
        return mean_metric(model, batch, patched) - mean_metric(
            model, batch, model.bridge(batch.clean)
        )


def edge_differences(model, graph, batch) -> dict[int, torch.Tensor]:
    clean = source_outputs(model, graph, batch.clean)
    corrupt = source_outputs(model, graph, batch.corrupted)
    return {u: corrupt[u] - clean[u] for u in clean}


def some_edges(graph, seed: int) -> list[tuple[int, int]]:
    """Valid edges into every kind of port (q, k, v, mlp, logits), plus a few random ones."""
    generator = torch.Generator().manual_seed(seed)
    valid = graph.valid.nonzero().tolist()
    picks = [tuple(valid[i]) for i in torch.randperm(len(valid), generator=generator)[:6]]
    for kind in ("q", "k", "v", "mlp", "logits"):
        into = [tuple(e) for e in valid if graph.destinations[e[1]].kind == kind]
        picks += [into[0], into[-1]]
    return list(dict.fromkeys(picks))


# --------------------------------------------------------------------------------------------
# Loading and the forward


def test_load_model_gives_a_compiled_adapter(model, compiled_dir, graph):
    assert model.source == "local" and model.path == str(compiled_dir)
    assert model.causal is False
    assert model.spec.d_vocab == len(OUTPUT_TOKENS)  # the output vocabulary
    assert model.spec.n_kv_heads == model.spec.n_heads == 2
    assert model.spec.has_mlp and not model.spec.parallel_attn_mlp
    assert model.spec.normalization_type is None
    expected = hashlib.sha256((compiled_dir / "model.safetensors").read_bytes()).hexdigest()
    assert model.weights_hash() == expected
    assert model.n_params == sum(w.size for w in random_weights().values())
    assert len(acd.models.weights_sha256(model)) == 64
    assert all(name in model.bridge.hook_dict for name in model.vocabulary_hooks())
    assert model.hook_final_resid() == "unembed.hook_in"
    assert graph.n_layers == 2 and graph.n_heads == 2
    assert torch.equal(model.attn_output_bias(1), model.module.blocks[1].attn.b_O)
    assert model_config(compiled_dir)["format"] == "acd-compiled"
    assert all(not p.requires_grad for p in model.module.parameters())


def test_forward_equals_a_numpy_forward_from_the_raw_arrays(model):
    weights = random_weights()
    for pos in (5, 3):
        tokens = random_tokens(1, batch=4, pos=pos)
        expected = torch.from_numpy(numpy_forward(weights, tokens.numpy()))
        assert (model.logits(tokens) - expected).abs().max() <= 1e-6  # float32 weights
        assert torch.equal(model.run_with_hooks(tokens, []), model.logits(tokens))


def test_float32_forward_matches_too(compiled_dir):
    model32 = load_model(compiled_dir, device="cpu")
    assert model32.dtype == torch.float32
    tokens = random_tokens(2)
    expected = torch.from_numpy(numpy_forward(random_weights(), tokens.numpy())).float()
    # float32 rounding, relative to logits of size ~100
    assert (model32.logits(tokens) - expected).abs().max() <= 1e-5 * (1 + expected.abs().max())


def test_attention_is_not_causal(model):
    """Changing the last token changes the logits at every position."""
    tokens = random_tokens(3, batch=1)
    changed = tokens.clone()
    changed[0, -1] = 1 + (changed[0, -1] % 3)
    difference = (model.logits(tokens) - model.logits(changed)).abs().amax(dim=-1)
    assert bool((difference[0, :-1] > 1e-6).all())


def test_per_head_input_copies_change_one_head_only(model, graph):
    """Adding to head 0's copy of the q input changes head 0's result only."""
    tokens = random_tokens(4)
    clean = source_outputs(model, graph, tokens)

    def bump(x, hook):
        x = x.clone()
        x[:, :, 0] += 1.0
        return x

    changed = {}

    def keep(x, hook):
        changed["result"] = x.detach().clone()

    model.bridge.run_with_hooks(
        tokens, fwd_hooks=[(model.hook_q_input(1), bump), (model.hook_head_result(1), keep)]
    )
    head0, head1 = graph.src_head(1, 0), graph.src_head(1, 1)
    assert (changed["result"][:, :, 0] - clean[head0]).abs().max() > 1e-3
    assert torch.equal(changed["result"][:, :, 1], clean[head1])


def test_run_from_block_reproduces_the_forward(model):
    tokens = random_tokens(5)
    residuals = {}

    def keep(x, hook):
        residuals[hook.name] = x.detach().clone()

    names = [model.hook_resid_pre(layer) for layer in range(2)] + [model.hook_final_resid()]
    full = model.bridge.run_with_hooks(tokens, fwd_hooks=[(n, keep) for n in names])
    positions = torch.tensor([1, 3])
    for layer, name in enumerate(names):
        out = model.run_from_block(residuals[name], layer, [(name, lambda x, hook: None)])
        assert (out - full).abs().max() <= TOL
        kept = model.run_from_block(residuals[name], layer, [], positions)
        assert (kept - full[:, positions]).abs().max() <= TOL


# --------------------------------------------------------------------------------------------
# The engine's invariants


def test_patching_nothing_and_everything(model, graph):
    clean, corrupted = random_tokens(6), random_tokens(7)
    clean_logits = model.logits(clean)
    corrupted_logits, corrupted_sources = run_and_collect(model, graph, corrupted)
    nothing = torch.zeros(graph.n_src, graph.n_dst, dtype=torch.bool)
    assert (
        run_patched(model, graph, clean, nothing, corrupted_sources) - clean_logits
    ).abs().max() <= TOL
    everything = torch.ones(graph.n_src, graph.n_dst, dtype=torch.bool)
    logits = run_patched(model, graph, clean, everything, corrupted_sources)
    assert (logits - corrupted_logits).abs().max() <= TOL


def test_one_patched_edge_matches_a_hand_written_hook(model, graph):
    clean, corrupted = random_tokens(8), random_tokens(9)
    _, patch = run_and_collect(model, graph, corrupted)
    clean_z, corrupted_z = (
        source_outputs(model, graph, clean),
        source_outputs(model, graph, corrupted),
    )
    for u, v in some_edges(graph, seed=1):
        mask = torch.zeros(graph.n_src, graph.n_dst)
        mask[u, v] = 1.0
        with torch.no_grad():
            expected = run_adding(model, graph, clean, v, corrupted_z[u] - clean_z[u])
        logits = run_patched(model, graph, clean, mask, patch)
        assert (logits - expected).abs().max() <= TOL, (u, v)


@pytest.mark.parametrize("score_at", [None, 2])
def test_exact_equals_a_single_edge_patch(model, graph, score_at):
    """Scored at the last position, and (``score_at=2``) at a middle position only: with
    non-causal attention the later positions still matter, which ``causal=False`` keeps."""
    batch = logit_diff_batch(10, score_at=score_at)
    edges = some_edges(graph, seed=2)
    keep = torch.zeros(graph.n_src, graph.n_dst, dtype=torch.bool)
    for u, v in edges:
        keep[u, v] = True
    scores = acd.attribute(model, graph, batch, "exact", edge_mask=keep, progress=False)
    diffs = edge_differences(model, graph, batch)
    for u, v in edges:
        expected = patched_effect(model, graph, batch, u, v, diffs)
        torch.testing.assert_close(scores[u, v], expected, rtol=1e-6, atol=1e-9)
    assert not bool(scores[~keep].any())


def test_a_causal_restart_would_be_wrong_here(model, graph):
    """The counter-check: treating the model as causal (runs cut after the scored position)
    changes exact scores at a middle position, so ``causal=False`` is what keeps them right."""
    batch = logit_diff_batch(11, score_at=2)
    keep = torch.zeros(graph.n_src, graph.n_dst, dtype=torch.bool)
    keep[0, graph.dst_logits()] = True
    keep[0, graph.dst_q(1, 0)] = True
    right = acd.attribute(model, graph, batch, "exact", edge_mask=keep, progress=False)
    model.causal = True
    try:
        wrong = acd.attribute(model, graph, batch, "exact", edge_mask=keep, progress=False)
    finally:
        model.causal = False
    assert (right - wrong).abs().max() > 1e-6


def test_eap_equals_the_derivative_along_each_edge(model, graph):
    batch = logit_diff_batch(12)
    scores = acd.attribute(model, graph, batch, "eap", progress=False)
    diffs = edge_differences(model, graph, batch)
    for u, v in some_edges(graph, seed=3):
        alpha = torch.zeros((), dtype=torch.float64, requires_grad=True)
        with torch.enable_grad():
            logits = run_adding(model, graph, batch.clean, v, alpha * diffs[u])
            (expected,) = torch.autograd.grad(mean_metric(model, batch, logits), alpha)
        torch.testing.assert_close(scores[u, v], expected, rtol=1e-6, atol=1e-10)
    assert not bool(scores[~graph.valid].any())
    eap_ig = acd.attribute(model, graph, batch, "eap-ig", ig_steps=3, progress=False)
    assert eap_ig.shape == scores.shape and bool(torch.isfinite(eap_ig).all())


def test_acdc_runs_and_keeps_valid_edges(model, graph):
    batch = logit_diff_batch(13)
    result = acd.acdc(model, graph, batch, tau=0.01, progress=False)
    assert result.mask.shape == (graph.n_src, graph.n_dst)
    assert not bool((result.mask & ~graph.valid).any())
    assert result.visited > 0


def test_full_circuit_is_faithful_and_empty_is_not(model, graph):
    batch = logit_diff_batch(14)
    full = acd.evaluate_circuit(model, graph, batch, graph.valid)
    assert full.summary()["faithfulness"] == pytest.approx(1.0)
    none = torch.zeros_like(graph.valid)
    assert acd.evaluate_circuit(model, graph, batch, none).summary()[
        "faithfulness"
    ] == pytest.approx(0.0, abs=1e-9)


# --------------------------------------------------------------------------------------------
# The tokenizer


def test_tokenizer(model):
    tok = model.tokenizer
    assert tok.bos_token_id == 0 and tok.pad_token_id == 4 and tok.unk_token_id is None
    assert len(tok) == tok.vocab_size == len(INPUT_TOKENS)
    assert tok.output_vocab_size == model.spec.d_vocab
    assert tok("a b c")["input_ids"] == [0, 1, 2, 3]
    assert tok(["c a"], add_special_tokens=False)["input_ids"] == [[3, 1]]
    assert tok.encode("b", add_special_tokens=False) == [2]
    assert tok.convert_tokens_to_ids(["a", "BOS"]) == [1, 0]
    assert tok.convert_ids_to_tokens([3, 1]) == ["c", "a"]
    assert tok.decode([0, 1, 2], skip_special_tokens=True) == "a b"
    assert tok.convert_output_tokens_to_ids(["s", "p"]) == [3, 0]
    assert tok.convert_output_ids_to_tokens(2) == "r"
    assert tok.all_special_ids == [0, 4]
    with pytest.raises(TaskError, match="'z' is not an input symbol"):
        tok("a z")
    with pytest.raises(TaskError, match="not an output symbol"):
        tok.convert_output_tokens_to_ids("a")


# --------------------------------------------------------------------------------------------
# What does not apply says so in one line


def test_what_does_not_apply_is_a_one_line_error(model, compiled_dir):
    tokens = random_tokens(15)
    with pytest.raises(AcdError, match="no hook 'ln_final.hook_scale'"):
        model.bridge.run_with_hooks(tokens, fwd_hooks=[("ln_final.hook_scale", lambda x, hook: x)])
    with pytest.raises(AcdError, match="blocks_from does not apply"), model.blocks_from(1):
        pass
    with pytest.raises(AcdError, match="at most 5 positions"):
        model.logits(torch.zeros(1, 6, dtype=torch.long))
    with pytest.raises(AcdError, match="token ids"):
        model.logits(torch.full((1, 3), 7))
    with pytest.raises(ModelError, match="device_map"):
        load_model(compiled_dir, device_map="auto")
    # The failed hook registration left no hook behind.
    assert not any(site.fns for site in model.bridge.hook_dict.values())


def test_broken_directories_are_refused_in_one_line(tmp_path):
    bad_version = write_compiled_dir(tmp_path / "v2", version=2)
    with pytest.raises(InvalidModelDir, match="version 2"):
        load_model(bad_version, device="cpu")
    wrong_size = write_compiled_dir(tmp_path / "size", d_mlp=9)
    with pytest.raises(InvalidModelDir, match="mlp.W_in"):
        load_model(wrong_size, device="cpu")
    gelu = write_compiled_dir(tmp_path / "gelu", act_fn="gelu")
    with pytest.raises(AcdError, match="relu"):
        load_model(gelu, device="cpu")


# --------------------------------------------------------------------------------------------
# Shipped programs reproduce tracr


def shipped_programs() -> list[str]:
    return compiled_model_names()


def examples_by_length(examples: list[dict]) -> dict[int, list[int]]:
    """Indices of the examples, grouped by input length (one forward per group)."""
    groups: dict[int, list[int]] = {}
    for i, example in enumerate(examples):
        groups.setdefault(len(example["input"]), []).append(i)
    return groups


@pytest.mark.parametrize("name", shipped_programs() or ["(none shipped)"])
def test_shipped_program_reproduces_tracr(name):
    """Every stored example: the token ids tracr read, and at every position but BOS the
    argmax (categorical) or the value (numerical) tracr decoded."""
    if name not in shipped_programs():
        pytest.skip("no compiled programs in acd/models/compiled/")
    model = load_model(name, device="cpu")
    directory = compiled_models_dir() / name.removeprefix("compiled/")
    examples = json.loads((directory / "program.json").read_text())["examples"]
    assert examples, "a shipped program must store examples"
    numerical = model.config.output_kind == "numerical"
    for indices in examples_by_length(examples).values():
        texts = [" ".join(str(t) for t in examples[i]["input"]) for i in indices]
        ids = model.tokenizer(texts)["input_ids"]
        logits = model.logits(torch.tensor(ids))
        for row, i in enumerate(indices):
            example, text = examples[i], texts[row]
            if "input_ids" in example:
                assert ids[row] == example["input_ids"], text
            if numerical:
                want = torch.tensor(example["output"][1:], dtype=logits.dtype)
                assert (logits[row, 1:, 0] - want).abs().max() <= 1e-4, text
                continue
            got = logits[row, 1:].argmax(dim=-1).tolist()
            if "output_ids" in example:
                assert got == example["output_ids"][1:], text
            want = [str(v) for v in example["output"][1:]]
            assert model.tokenizer.convert_output_ids_to_tokens(got) == want, text


@pytest.mark.parametrize("name", shipped_programs() or ["(none shipped)"])
def test_shipped_program_logits_equal_tracr_s(name):
    """tracr's own final residual and logits, stored for the first examples, to float32
    rounding (not only their argmax)."""
    from safetensors.torch import load_file

    if name not in shipped_programs():
        pytest.skip("no compiled programs in acd/models/compiled/")
    directory = compiled_models_dir() / name.removeprefix("compiled/")
    if not (directory / "examples_logits.safetensors").is_file():
        pytest.skip(f"{name} stores no tracr logits")
    model = load_model(name, device="cpu")
    stored = load_file(str(directory / "examples_logits.safetensors"))
    examples = json.loads((directory / "program.json").read_text())["examples"]
    final = {}

    def keep(x, hook):
        final["residual"] = x.detach().clone()

    n_checked = 0
    for i, example in enumerate(examples):
        if f"logits.{i}" not in stored:
            continue
        tokens = torch.tensor([example["input_ids"]])
        logits = model.run_with_hooks(tokens, [(model.hook_final_resid(), keep)])[0]
        for got, want in (
            (final["residual"][0], stored[f"residual.{i}"]),
            (logits, stored[f"logits.{i}"]),
        ):
            assert (got - want).abs().max() <= 1e-4 * (1 + want.abs().max()), (name, i)
        n_checked += 1
    assert n_checked > 0


# --------------------------------------------------------------------------------------------
# Names, discovery and what comes after it


def test_compiled_name_loads_a_shipped_program(tmp_path, monkeypatch):
    """``compiled/<name>`` names ``acd/models/compiled/<name>/`` (here a stand-in root)."""
    from acd.models import resolve

    write_compiled_dir(tmp_path / "compiled" / "random")
    monkeypatch.setattr(resolve, "embedded_models_dir", lambda: tmp_path)
    assert compiled_model_names() == ["compiled/random"]
    loaded = load_model("compiled/random", device="cpu")
    assert isinstance(loaded, CompiledAdapter) and loaded.source == "embedded"
    assert model_config("compiled/random")["name"] == "random"


class RandomProgramTask(acd.Task):
    """A task of token ids for the random program (compiled programs' tasks give ids)."""

    def prompt_pairs(self, n: int, seed: int = 0) -> list:
        return []

    def make_batch(self, tokenizer, n: int, seed: int = 0) -> PromptBatch:
        return logit_diff_batch(seed, n=n)


def test_discover_export_and_diagram(model):
    from acd.diagram import circuit_dot
    from acd.export.circuit_json import circuit_json

    run = acd.RunConfig(progress=False, force=True)
    task = RandomProgramTask("random-program", "ids", "logit_diff", "", "")
    circuit = acd.discover(
        task, model, method="eap", select=acd.TopN(10), prompts=4, seed=0, run=run
    )
    assert int(circuit.mask.sum()) <= 10
    assert circuit.model_sha256 == acd.models.weights_sha256(model)
    assert json.loads(circuit_json(circuit))["model"]["name"] == model.name
    assert "digraph" in circuit_dot(circuit)
    searched = acd.discover(task, model, method=acd.ACDC(tau=0.05), prompts=4, seed=0, run=run)
    assert "faithfulness" in searched.metrics
