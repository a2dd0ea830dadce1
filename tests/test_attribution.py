"""Edge and node scores, each checked against an expectation computed independently.

The expectations use their own hooks, written here on the bridge's hook vocabulary, never
acd.patching: EAP against d/dalpha M(in_v + alpha (z_u^corr - z_u^clean)) at alpha = 0 by
autograd; exact against a single-edge patch; EAP = exact where M is linear in the patched input.
"""

from __future__ import annotations

import random

import pytest
import torch
from hand_hooks import destination_point

import acd
from acd.attribution import AttributionError, attribute, node_scores
from acd.errors import AcdError
from acd.graph import ComputeGraph
from acd.metrics import get_metric
from acd.tasks import PromptPair, encode_pairs

# Clean/corrupted pairs in the tiny models' vocabulary (tests/conftest.py), of different
# lengths so that padding is exercised.
TINY_PAIRS = [
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
    PromptPair(
        "when Bob and Sara went to school Bob gave 7 to",
        "when John and Anna went to school Mary gave 7 to",
        (" Sara",),
        (" Bob",),
    ),
]


# --------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def gpt2(tiny_gpt2_dir):
    return acd.load_model(tiny_gpt2_dir, device="cpu", dtype=torch.float64)


@pytest.fixture(scope="module")
def llama(tiny_llama_dir):
    return acd.load_model(tiny_llama_dir, device="cpu", dtype=torch.float64)


@pytest.fixture(scope="module")
def neox(make_tiny_model_dir):
    return acd.load_model(make_tiny_model_dir("neox"), device="cpu", dtype=torch.float64)


@pytest.fixture(scope="module")
def toy():
    return acd.load_model("toy", device="cpu")


@pytest.fixture(scope="module")
def toy_batch(toy):
    return acd.load_task("ioi").make_batch(toy.tokenizer, 6, seed=0)


def tiny_batch(model):
    """TINY_PAIRS as a PromptBatch, through the task encoder (the tiny tokenizer's unknown token
    is a token of its own, so the encoder's vocabulary check passes every TINY_PAIRS word)."""
    return encode_pairs(TINY_PAIRS, model.tokenizer, "logit_diff")


# --------------------------------------------------------------------------------------------
# Independent reference: hand-written hooks on the bridge


def source_outputs(model, graph, tokens):
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


def source_point(model, graph, u):
    """(hook name, head index or None) where source ``u``'s output is written."""
    node = graph.sources[u]
    if node.kind == "input":
        return model.hook_embed_out(), None
    if node.kind == "head":
        return model.hook_head_result(node.layer), node.head
    return model.hook_mlp_out(node.layer), None


def add_hook(index, delta):
    """A hook adding ``delta`` [b, pos, d_model] at head ``index`` (or to the whole tensor)."""

    def hook(x, hook):
        x = x.clone()
        if index is None:
            return x + delta
        x[:, :, index] = x[:, :, index] + delta
        return x

    return hook


def metric_with(model, batch, point, delta):
    """Mean over prompts of the task metric with ``delta`` added at ``point``."""
    logits = model.bridge.run_with_hooks(
        batch.clean, fwd_hooks=[(point[0], add_hook(point[1], delta))]
    )
    return get_metric(batch.metric)(logits, batch).mean()


def clean_metric(model, batch):
    with torch.no_grad():
        return get_metric(batch.metric)(model.bridge(batch.clean), batch).mean()


def first_order(model, batch, point, diff):
    """d/dalpha of the mean metric with alpha * diff added at ``point``, at alpha = 0."""
    alpha = torch.zeros((), dtype=diff.dtype, requires_grad=True)
    with torch.enable_grad():
        value = metric_with(model, batch, point, alpha * diff)
        return torch.autograd.grad(value, alpha)[0]


def patched_effect(model, batch, point, diff):
    """Mean metric with diff added at ``point``, minus the clean mean metric."""
    with torch.no_grad():
        return metric_with(model, batch, point, diff) - clean_metric(model, batch)


def pick_edges(graph, per_kind, n_random, seed=0):
    """Random valid edges: ``per_kind`` into each destination kind, plus ``n_random`` more."""
    rng = random.Random(seed)
    valid = [tuple(e) for e in graph.valid.nonzero().tolist()]
    edges = []
    for kind in ("q", "k", "v", "mlp", "logits"):
        of_kind = [e for e in valid if graph.destinations[e[1]].kind == kind]
        edges += rng.sample(of_kind, min(per_kind, len(of_kind)))
    rest = [e for e in valid if e not in edges]
    return edges + rng.sample(rest, n_random)


def edge_differences(model, graph, batch):
    """z^corrupt - z^clean per source, by hand: {source index: [b, pos, d_model]}."""
    clean = source_outputs(model, graph, batch.clean)
    corrupt = source_outputs(model, graph, batch.corrupted)
    return {u: corrupt[u] - clean[u] for u in clean}


# --------------------------------------------------------------------------------------------
# EAP: the gradient, edge by edge


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_eap_equals_the_derivative_along_each_edge(name, request):
    model = request.getfixturevalue(name)
    graph = ComputeGraph.from_model(model)
    batch = tiny_batch(model)
    scores = attribute(model, graph, batch, "eap", progress=False)
    diffs = edge_differences(model, graph, batch)
    edges = pick_edges(graph, per_kind=4, n_random=6, seed=1)
    for u, v in edges:
        point = destination_point(model, graph.destinations[v])
        expected = first_order(model, batch, point, diffs[u])
        torch.testing.assert_close(scores[u, v], expected, rtol=1e-4, atol=1e-10)
    assert (scores[~graph.valid] == 0).all()


def test_eap_into_gqa_key_value_groups(llama):
    """On the tiny Llama (4 query heads, 2 key-value groups) a k/v port is one group: the
    derivative is taken at the group's slot of hook_k_input / hook_v_input."""
    graph = ComputeGraph.from_model(llama)
    assert graph.n_kv_heads == 2 and graph.n_heads == 4
    batch = tiny_batch(llama)
    scores = attribute(llama, graph, batch, "eap", progress=False)
    diffs = edge_differences(llama, graph, batch)
    for u, port in [("input", "a1.g1<k>"), ("a0.h2", "a1.g0<v>"), ("m0", "a1.g1<v>")]:
        i, j = graph.edge_index(u, port)
        expected = first_order(
            llama, batch, destination_point(llama, graph.destinations[j]), diffs[i]
        )
        torch.testing.assert_close(scores[i, j], expected, rtol=1e-4, atol=1e-10)


# --------------------------------------------------------------------------------------------
# Exact: a real single-edge patch


@pytest.mark.parametrize("name", ["gpt2", "llama", "neox"])
def test_exact_equals_a_single_edge_patch(name, request):
    model = request.getfixturevalue(name)
    graph = ComputeGraph.from_model(model)
    batch = tiny_batch(model)
    edges = pick_edges(graph, per_kind=4, n_random=4, seed=2)
    keep = graph.mask_from_edges(
        [(graph.sources[u].name, graph.destinations[v].name) for u, v in edges]
    )
    scores = attribute(model, graph, batch, "exact", edge_mask=keep, progress=False)
    diffs = edge_differences(model, graph, batch)
    for u, v in edges:
        point = destination_point(model, graph.destinations[v])
        expected = patched_effect(model, batch, point, diffs[u])
        torch.testing.assert_close(scores[u, v], expected, rtol=1e-5, atol=1e-9)
    assert int((scores != 0).sum()) <= len(edges)  # nothing outside edge_mask is scored


def test_exact_on_the_toy_model_in_float32(toy, toy_batch):
    """IOI prompts of several lengths, logits kept only at the scored positions, variants of
    several prompts and layers sharing forwards."""
    graph = ComputeGraph.from_model(toy)
    edges = pick_edges(graph, per_kind=2, n_random=10, seed=3)
    keep = graph.mask_from_edges(
        [(graph.sources[u].name, graph.destinations[v].name) for u, v in edges]
    )
    scores = attribute(
        toy, graph, toy_batch, "exact", edge_mask=keep, progress=False, variants_per_forward=7
    )
    diffs = edge_differences(toy, graph, toy_batch)
    for u, v in edges:
        point = destination_point(toy, graph.destinations[v])
        expected = patched_effect(toy, toy_batch, point, diffs[u])
        torch.testing.assert_close(scores[u, v], expected, rtol=1e-5, atol=1e-5)


def test_zero_ablation_patches_in_zeros(gpt2):
    graph = ComputeGraph.from_model(gpt2)
    batch = tiny_batch(gpt2)
    clean = source_outputs(gpt2, graph, batch.clean)
    edges = pick_edges(graph, per_kind=1, n_random=0, seed=4)
    keep = graph.mask_from_edges(
        [(graph.sources[u].name, graph.destinations[v].name) for u, v in edges]
    )
    exact = attribute(gpt2, graph, batch, "exact", ablation="zero", edge_mask=keep, progress=False)
    eap = attribute(gpt2, graph, batch, "eap", ablation="zero", progress=False)
    for u, v in edges:
        point = destination_point(gpt2, graph.destinations[v])
        torch.testing.assert_close(exact[u, v], patched_effect(gpt2, batch, point, -clean[u]))
        torch.testing.assert_close(eap[u, v], first_order(gpt2, batch, point, -clean[u]))


def test_kl_scores(gpt2):
    """KL to the clean model: exact effects are KLs (>= 0); EAP's gradient vanishes at the
    clean run, KL's minimum."""
    graph = ComputeGraph.from_model(gpt2)
    batch = tiny_batch(gpt2)
    exact = attribute(gpt2, graph, batch, "exact", metric="kl", progress=False)
    eap = attribute(gpt2, graph, batch, "eap", metric="kl", progress=False)
    assert (exact[graph.valid] > -1e-12).all() and exact.max() > 1e-4
    assert eap.abs().max() < 1e-4 * exact.max()


# --------------------------------------------------------------------------------------------
# A linear case: EAP, EAP-IG and exact agree


def test_eap_eap_ig_and_exact_agree_where_the_metric_is_linear(gpt2):
    """With the final norm's scale fixed at 1 (a hook on ``ln_final.hook_scale``) the final norm
    is affine, so logit_diff is linear in the final residual: for edges into ``logits`` the
    first-order estimate is exact and the gradient is the same all along the IG path."""
    graph = ComputeGraph.from_model(gpt2)
    batch = tiny_batch(gpt2)
    keep = torch.zeros(graph.n_src, graph.n_dst, dtype=torch.bool)
    keep[:, graph.dst_logits()] = True

    def unit_scale(x, hook):
        return torch.ones_like(x)

    with gpt2.bridge.hooks(fwd_hooks=[("ln_final.hook_scale", unit_scale)]):
        eap = attribute(gpt2, graph, batch, "eap", edge_mask=keep, progress=False)
        eap_ig = attribute(gpt2, graph, batch, "eap-ig", ig_steps=3, edge_mask=keep, progress=False)
        exact = attribute(gpt2, graph, batch, "exact", edge_mask=keep, progress=False)
    column = eap[:, graph.dst_logits()]
    assert column.abs().max() > 1e-3  # not trivially zero
    torch.testing.assert_close(exact, eap, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(eap_ig, eap, rtol=1e-5, atol=1e-9)


def test_eap_ig_with_one_step_is_eap(gpt2):
    graph = ComputeGraph.from_model(gpt2)
    batch = tiny_batch(gpt2)
    eap = attribute(gpt2, graph, batch, "eap", progress=False)
    one = attribute(gpt2, graph, batch, "eap-ig", ig_steps=1, progress=False)
    torch.testing.assert_close(one, eap, rtol=0, atol=0)


def test_eap_ig_averages_gradients_along_the_input_path(gpt2):
    """The IG gradient at an edge is the mean over k = 1..m of the gradient with the input
    embedding at corrupted + (k/m)(clean - corrupted), by hand."""
    graph = ComputeGraph.from_model(gpt2)
    batch = tiny_batch(gpt2)
    steps = 3
    scores = attribute(gpt2, graph, batch, "eap-ig", ig_steps=steps, progress=False)
    diffs = edge_differences(gpt2, graph, batch)
    clean = source_outputs(gpt2, graph, batch.clean)[0]
    corrupt = clean + diffs[0]
    for u, port in [("a0.h1", "a1.h2<q>"), ("input", "m1"), ("m0", "logits")]:
        i, j = graph.edge_index(u, port)
        point = destination_point(gpt2, graph.destinations[j])
        total = 0
        for k in range(1, steps + 1):
            embed = corrupt + (k / steps) * (clean - corrupt)
            replace = (gpt2.hook_embed_out(), lambda x, hook, e=embed: e)
            with gpt2.bridge.hooks(fwd_hooks=[replace]):
                total = total + first_order(gpt2, batch, point, diffs[i])
        torch.testing.assert_close(scores[i, j], total / steps, rtol=1e-6, atol=1e-10)


# --------------------------------------------------------------------------------------------
# Batch size never changes a score


@pytest.mark.parametrize(
    "method,ablation",
    [("eap", "corrupted"), ("eap", "mean"), ("eap-ig", "corrupted"), ("exact", "corrupted")],
)
def test_batch_size_does_not_change_scores(toy, toy_batch, method, ablation):
    graph = ComputeGraph.from_model(toy)
    keep = None
    if method == "exact":  # a random third of the edges keeps this test fast
        keep = graph.valid & (
            torch.rand(graph.valid.shape, generator=torch.Generator().manual_seed(0)) < 0.3
        )
    results = [
        attribute(
            toy,
            graph,
            toy_batch,
            method,
            ablation=ablation,
            batch_size=size,
            ig_steps=2,
            edge_mask=keep,
            progress=False,
        )
        for size in (1, 3, None)
    ]
    assert results[-1].abs().max() > 1e-3
    for other in results[:-1]:
        torch.testing.assert_close(other, results[-1], rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Node scores


def test_node_scores(gpt2):
    """EAP: d/dalpha M(z_u + alpha (z_u^corr - z_u^clean)) at the source's own output, which is
    the sum of u's edge scores; exact: u's output replaced by the corrupted one."""
    graph = ComputeGraph.from_model(gpt2)
    batch = tiny_batch(gpt2)
    eap = node_scores(gpt2, graph, batch, "eap", progress=False)
    exact = node_scores(gpt2, graph, batch, "exact", progress=False, variants_per_forward=5)
    edges = attribute(gpt2, graph, batch, "eap", progress=False)
    diffs = edge_differences(gpt2, graph, batch)
    assert eap.shape == exact.shape == (graph.n_src,)
    torch.testing.assert_close(eap, edges.sum(dim=1))
    for u in range(graph.n_src):
        point = source_point(gpt2, graph, u)
        torch.testing.assert_close(
            eap[u], first_order(gpt2, batch, point, diffs[u]), rtol=1e-4, atol=1e-10
        )
        torch.testing.assert_close(
            exact[u], patched_effect(gpt2, batch, point, diffs[u]), rtol=1e-5, atol=1e-9
        )


# --------------------------------------------------------------------------------------------
# Arguments and side effects


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"method": "acdc"}, "unknown method"),
        ({"batch_size": 0}, "batch_size must be at least 1"),
        ({"ig_steps": 0}, "ig_steps must be at least 1"),
        ({"metric": "accuracy"}, "unknown metric"),
        ({"ablation": "resample"}, "unknown ablation"),
        ({"edge_mask": torch.ones(2, 2, dtype=torch.bool)}, "edge_mask has shape"),
        ({"variants_per_forward": 0}, "variants_per_forward must be at least 1"),
    ],
)
def test_bad_arguments_are_clear_errors(gpt2, kwargs, message):
    graph = ComputeGraph.from_model(gpt2)
    with pytest.raises(AttributionError, match=message) as info:
        attribute(gpt2, graph, tiny_batch(gpt2), **{"method": "eap", **kwargs})
    assert isinstance(info.value, AcdError) and isinstance(info.value, ValueError)


def test_scoring_leaves_the_model_as_it_was(gpt2):
    batch = tiny_batch(gpt2)
    before = gpt2.bridge(batch.clean)
    n_blocks = len(gpt2.bridge.original_model.transformer.h)
    attribute(gpt2, ComputeGraph.from_model(gpt2), batch, "exact", progress=False)
    assert len(gpt2.bridge.original_model.transformer.h) == n_blocks
    torch.testing.assert_close(gpt2.bridge(batch.clean), before, rtol=0, atol=0)
