"""EAP-IG-activations and clean-corrupted, each checked against a brute-force expectation.

The expectations use hand-written hooks on the bridge's hook vocabulary, never acd.patching:
an edge u -> v's gradient is d/dbeta of the metric with beta (p_u - z_u^clean) added at v's
input, at beta = 0, by autograd, in a run prepared as the method says (u's layer slot held at
p + alpha (z^clean - p); or the corrupted prompt). Everything in float64.
"""

from __future__ import annotations

import random

import pytest
import torch
from hand_hooks import destination_point

import acd
from acd.attribution import attribute
from acd.graph import ComputeGraph
from acd.methods import (
    METHODS,
    CleanCorrupted,
    EAPIGActivations,
    checked_method,
    method_from_name,
    method_from_params,
)
from acd.metrics import get_metric
from acd.tasks import PromptPair, encode_pairs

# Clean/corrupted pairs in the tiny models' vocabulary (tests/conftest.py), of different
# lengths so that padding is exercised.
PAIRS = [
    PromptPair(
        "when Mary and John went to the store John gave a 3 to",
        "when Alice and Bob went to the store Tom gave a 3 to",
        (" Mary",),
        (" John",),
    ),
    PromptPair(
        "then Anna and Paul went to the park Paul said",
        "then Sara and Tom went to the park Bob said",
        (" Anna",),
        (" Paul",),
    ),
]

STEPS = 3


@pytest.fixture(scope="module")
def gpt2(tiny_gpt2_dir):
    return acd.load_model(tiny_gpt2_dir, device="cpu", dtype=torch.float64)


@pytest.fixture(scope="module")
def neox(make_tiny_model_dir):
    return acd.load_model(make_tiny_model_dir("neox"), device="cpu", dtype=torch.float64)


def tiny_batch(model):
    return encode_pairs(PAIRS, model.tokenizer, "logit_diff")


# --------------------------------------------------------------------------------------------
# Independent reference: hand-written hooks


def slot_point(model, graph, u) -> tuple[str, slice]:
    """(hook name, source indices it writes) of the layer slot holding source ``u``: the input,
    a layer's heads (one hook, all heads), or a layer's MLP."""
    node = graph.sources[u]
    if node.kind == "input":
        return model.hook_embed_out(), slice(0, 1)
    if node.kind == "head":
        first = graph.src_head(node.layer, 0)
        return model.hook_head_result(node.layer), slice(first, first + graph.n_heads)
    return model.hook_mlp_out(node.layer), slice(u, u + 1)


def hand_sources(model, graph, tokens) -> torch.Tensor:
    """Every source's output in a plain forward, by hand: [b, pos, n_src, d_model]."""
    out = {}

    def keep(name):
        def hook(x, hook):
            out[name] = x.detach().clone()

        return hook

    names = [model.hook_embed_out()]
    for layer in range(graph.n_layers):
        names += [model.hook_head_result(layer), model.hook_mlp_out(layer)]
    with torch.no_grad():
        model.bridge.run_with_hooks(tokens, fwd_hooks=[(n, keep(n)) for n in names])
    parts = [out[n] if out[n].dim() == 4 else out[n].unsqueeze(2) for n in names]
    return torch.cat(parts, dim=2)


def edge_gradient(model, batch, tokens, v_point, diff, held=None) -> torch.Tensor:
    """d/dbeta of the mean metric on ``tokens`` with beta * diff added at ``v_point``, at
    beta = 0; ``held`` (hook name, value) replaces that hook's output with a constant."""
    beta = torch.zeros((), dtype=diff.dtype, requires_grad=True)
    name, index = v_point

    def add(x, hook):
        x = x.clone()
        if index is None:
            return x + beta * diff
        x[:, :, index] = x[:, :, index] + beta * diff
        return x

    hooks = [(name, add)]
    if held is not None:
        held_name, value = held
        hooks.insert(0, (held_name, lambda x, hook: value.reshape(x.shape).clone()))
    with torch.enable_grad():
        logits = model.bridge.run_with_hooks(tokens, fwd_hooks=hooks)
        value = get_metric(batch.metric)(logits, batch).mean()
        return torch.autograd.grad(value, beta)[0]


def expected_activations(model, graph, batch, u, v, steps, patch) -> torch.Tensor:
    """EAP-IG-activations of u -> v by brute force: the Riemann sum over a_k = k/m of the edge's
    gradient with u's slot held at p + a_k (z^clean - p)."""
    clean = hand_sources(model, graph, batch.clean)
    name, rows = slot_point(model, graph, u)
    diff = patch[:, :, u] - clean[:, :, u]
    point = destination_point(model, graph.destinations[v])
    total = torch.zeros((), dtype=torch.float64)
    for k in range(1, steps + 1):
        value = patch[:, :, rows] + (k / steps) * (clean[:, :, rows] - patch[:, :, rows])
        total = total + edge_gradient(model, batch, batch.clean, point, diff, (name, value))
    return total / steps


def expected_clean_corrupted(model, graph, batch, u, v) -> torch.Tensor:
    """clean-corrupted of u -> v by brute force: the edge's gradient on the clean and on the
    corrupted prompt, averaged."""
    clean = hand_sources(model, graph, batch.clean)
    diff = hand_sources(model, graph, batch.corrupted)[:, :, u] - clean[:, :, u]
    point = destination_point(model, graph.destinations[v])
    at_clean = edge_gradient(model, batch, batch.clean, point, diff)
    at_corrupted = edge_gradient(model, batch, batch.corrupted, point, diff)
    return (at_clean + at_corrupted) / 2


def pick_edges(graph, n, seed=0):
    """``n`` random valid edges, one out of the input and into the logits among them."""
    rng = random.Random(seed)
    valid = [tuple(e) for e in graph.valid.nonzero().tolist()]
    first = [rng.choice([e for e in valid if e[0] == 0])]
    first.append(rng.choice([e for e in valid if graph.destinations[e[1]].kind == "logits"]))
    return first + rng.sample([e for e in valid if e not in first], n - len(first))


# --------------------------------------------------------------------------------------------
# EAP-IG-activations


@pytest.mark.parametrize("name", ["gpt2", "neox"])
def test_eap_ig_activations_equals_the_riemann_sum_edge_by_edge(name, request):
    model = request.getfixturevalue(name)
    graph = ComputeGraph.from_model(model)
    batch = tiny_batch(model)
    scores = attribute(model, graph, batch, "eap-ig-activations", ig_steps=STEPS, progress=False)
    patch = hand_sources(model, graph, batch.corrupted)
    for u, v in pick_edges(graph, 8, seed=2):
        expected = expected_activations(model, graph, batch, u, v, STEPS, patch)
        torch.testing.assert_close(scores[u, v], expected, rtol=1e-6, atol=1e-12)
    assert (scores[~graph.valid] == 0).all()


def test_eap_ig_activations_with_zero_ablation_interpolates_towards_zero(gpt2):
    graph = ComputeGraph.from_model(gpt2)
    batch = tiny_batch(gpt2)
    scores = attribute(
        gpt2, graph, batch, "eap-ig-activations", ig_steps=2, ablation="zero", progress=False
    )
    zeros = torch.zeros_like(hand_sources(gpt2, graph, batch.clean))
    for u, v in pick_edges(graph, 4, seed=3):
        expected = expected_activations(gpt2, graph, batch, u, v, 2, zeros)
        torch.testing.assert_close(scores[u, v], expected, rtol=1e-6, atol=1e-12)


def test_eap_ig_activations_with_one_step_is_eap(gpt2):
    """k = 1 = m is the clean end: every slot is held at its clean output, which leaves the
    gradient at every later destination as EAP's."""
    graph = ComputeGraph.from_model(gpt2)
    batch = tiny_batch(gpt2)
    eap = attribute(gpt2, graph, batch, "eap", progress=False)
    one = attribute(gpt2, graph, batch, "eap-ig-activations", ig_steps=1, progress=False)
    torch.testing.assert_close(one, eap, rtol=1e-10, atol=1e-14)


# --------------------------------------------------------------------------------------------
# clean-corrupted


@pytest.mark.parametrize("name", ["gpt2", "neox"])
def test_clean_corrupted_averages_the_clean_and_corrupted_gradients(name, request):
    model = request.getfixturevalue(name)
    graph = ComputeGraph.from_model(model)
    batch = tiny_batch(model)
    scores = attribute(model, graph, batch, "clean-corrupted", progress=False)
    for u, v in pick_edges(graph, 8, seed=4):
        expected = expected_clean_corrupted(model, graph, batch, u, v)
        torch.testing.assert_close(scores[u, v], expected, rtol=1e-6, atol=1e-12)
    assert (scores[~graph.valid] == 0).all()


# --------------------------------------------------------------------------------------------
# The registry, every model shape, the command line


def test_the_registry_builds_and_rebuilds_the_new_methods():
    assert {"eap-ig-activations", "clean-corrupted"} <= set(METHODS)
    method = method_from_name("eap-ig-activations", ig_steps=3)
    assert method == EAPIGActivations(steps=3)
    assert method_from_params(method.name, method.params()) == method
    assert method_from_name("clean-corrupted", ig_steps=7) == CleanCorrupted()
    assert checked_method(CleanCorrupted()) == CleanCorrupted()
    with pytest.raises(acd.AcdError):
        EAPIGActivations(steps=0)


@pytest.mark.parametrize("kind", ["gpt2", "llama", "neox"])
@pytest.mark.parametrize("method", ["eap-ig-activations", "clean-corrupted"])
def test_the_new_methods_run_on_every_tiny_model_shape(kind, method, tiny_models):
    model, graph = tiny_models[kind]
    scores = attribute(model, graph, tiny_batch(model), method, ig_steps=2, progress=False)
    assert scores.shape == (graph.n_src, graph.n_dst)
    assert torch.isfinite(scores).all() and scores[graph.valid].abs().sum() > 0
    assert (scores[~graph.valid] == 0).all()


@pytest.mark.slow  # a whole discover of 100 prompts (37 gradient passes per chunk)
def test_acd_discover_runs_eap_ig_activations(cached_toy, tmp_path):
    from acd.cli import main

    out = tmp_path / "x"
    code = main(
        ["discover", "ioi", "--method", "eap-ig-activations", "--prompts", "8", "--quiet"]
        + ["--out", str(out)]
    )
    assert code == 0
    circuit = acd.load_circuit(out / "circuit.json")
    assert circuit.method == "eap-ig-activations" and circuit.params["ig_steps"] == 5


@pytest.fixture(scope="module")
def toy():
    return acd.load_model("toy", device="cpu")
