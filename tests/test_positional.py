"""Positional edges (acd.positional): runs, gradients, scores and evaluation per span, each
checked against an expectation computed independently — plain runs, hand-written hooks that
patch one span's positions, two-stage hand runs for edges into keys and values, finite
differences."""

from __future__ import annotations

import pytest
import torch
from hand_hooks import destination_point

from acd.attribution import attribute
from acd.evaluate import evaluate_circuit
from acd.graph import ComputeGraph
from acd.metrics import get_metric
from acd.models import load_model
from acd.patching import collect_sources, run_patched, run_with_gradients
from acd.positional.evaluate import evaluate_positional_with
from acd.positional.graph import PositionalGraph
from acd.positional.prune import prune_positional
from acd.positional.runs import (
    position_masks,
    run_positional_gradients,
    run_positional_patched,
)
from acd.positional.scores import positional_runner, positional_scores
from acd.tasks import PromptBatch

TOL = 1e-5
# Three spans over six positions: 0-1, 2-3, 4-5 (the last position is scored).
SPANS = ("start", "middle", "END")


def span_layout(n: int, pos: int = 6) -> torch.Tensor:
    """[n, pos] span index: the first third, the second, the rest (the last position END)."""
    index = torch.zeros(n, pos, dtype=torch.long)
    index[:, pos // 3 : 2 * pos // 3] = 1
    index[:, 2 * pos // 3 :] = 2
    return index


def positional_graph(graph: ComputeGraph, n: int, pos: int = 6) -> PositionalGraph:
    score = torch.zeros(n, pos, dtype=torch.bool)
    score[:, -1] = True
    return PositionalGraph.from_layout(graph, SPANS, span_layout(n, pos), score)


def random_tokens(seed: int, batch: int = 3, pos: int = 6) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(1, 50, (batch, pos), generator=generator)


def plain_logits(model, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.bridge(tokens)


@pytest.fixture(scope="module")
def tiny64(make_tiny_model_dir):
    models = {}
    for kind in ("gpt2", "llama", "neox"):
        model = load_model(make_tiny_model_dir(kind), device="cpu", dtype=torch.float64)
        models[kind] = (model, ComputeGraph.from_model(model))
    return models


# --------------------------------------------------------------------------------------------
# The graph


def test_positional_edges_follow_the_positions(tiny_models):
    _, graph = tiny_models["gpt2"]
    pgraph = positional_graph(graph, 2)
    valid = pgraph.valid
    for u in range(graph.n_src):
        for v, port in enumerate(graph.destinations):
            for p in range(3):
                for q in range(3):
                    if not graph.valid[u, v]:
                        expected = False
                    elif port.kind in ("k", "v"):
                        expected = p <= q  # spans in position order: keys at or before
                    elif port.kind == "logits":
                        expected = p == q == 2  # only the scored span
                    else:
                        expected = p == q
                    assert bool(valid[u, p, v, q]) == expected, (u, p, v, q)
    assert torch.equal(pgraph.plain_mask(valid), graph.valid)
    name = pgraph.edge_name(1, 0, graph.dst_k(1, 0), 2)
    assert name == ("a0.h0@start", "a1.h0<k>@END")
    assert pgraph.edge_index(*name) == (1, 0, graph.dst_k(1, 0), 2)


def test_spans_in_varying_order_allow_both_directions(tiny_models):
    """IOI's ABBA and BABA put IO and S1 in both orders: keys may come from either."""
    _, graph = tiny_models["gpt2"]
    index = torch.tensor([[0, 1, 2, 3], [0, 2, 1, 3]])
    score = torch.zeros(2, 4, dtype=torch.bool)
    score[:, 3] = True
    pgraph = PositionalGraph.from_layout(graph, ("start", "IO", "S1", "END"), index, score)
    assert pgraph.order[1, 2] and pgraph.order[2, 1]
    assert not pgraph.order[3, 1] and pgraph.order[1, 3]


# --------------------------------------------------------------------------------------------
# Runs


@pytest.mark.parametrize("kind", ["gpt2", "llama", "neox"])
def test_the_same_mask_at_every_span_is_the_plain_patched_run(tiny_models, kind):
    model, graph = tiny_models[kind]
    tokens, corrupted = random_tokens(1), random_tokens(2)
    pgraph = positional_graph(graph, len(tokens))
    plain = torch.rand(graph.n_src, graph.n_dst, generator=torch.Generator().manual_seed(3)) < 0.3
    patch = collect_sources(model, graph, corrupted)
    everywhere = plain[:, None, :, None].expand(pgraph.shape)
    got = run_positional_patched(model, pgraph, tokens, span_layout(3), everywhere, patch)
    expected = run_patched(model, graph, tokens, plain, patch)
    assert (got - expected).abs().max() <= TOL


@pytest.mark.parametrize("kind", ["gpt2", "llama", "neox"])
def test_nothing_patched_is_the_model_and_everything_the_corrupted_run(tiny_models, kind):
    model, graph = tiny_models[kind]
    tokens, corrupted = random_tokens(4), random_tokens(5)
    pgraph = positional_graph(graph, len(tokens))
    patch = collect_sources(model, graph, corrupted)
    nothing = torch.zeros(pgraph.shape, dtype=torch.bool)
    got = run_positional_patched(model, pgraph, tokens, span_layout(3), nothing, patch)
    assert (got - plain_logits(model, tokens)).abs().max() <= TOL
    everything = graph.valid[:, None, :, None].expand(pgraph.shape)
    got = run_positional_patched(model, pgraph, tokens, span_layout(3), everything, patch)
    assert (got - plain_logits(model, corrupted)).abs().max() <= TOL


def hand_patched_logits(model, graph, pgraph, tokens, edge, clean, patch):
    """One positional edge (u, p, v, q) patched by hand-written hooks.

    Into a destination that reads its own position: add patch_u - clean_u at span p's
    positions of v's input. Into a key or value input: first a run that adds it at span p's
    positions of the key (value) input for every query, keeping the layer's head outputs;
    then a clean run whose head outputs at span q's positions are replaced by those.
    """
    u, p, v, q = edge
    index = torch.as_tensor(span_layout(len(tokens), tokens.shape[1]))
    at_p, at_q = index == p, index == q
    delta = (patch[:, :, u] - clean[:, :, u]) * at_p[:, :, None]
    port = graph.destinations[v]
    name, slot = destination_point(model, port)

    def add(x, hook):
        x = x.clone()
        if slot is None:
            x += delta
        else:
            x[:, :, slot] += delta
        return x

    with torch.no_grad():
        if port.kind not in ("k", "v"):
            return model.bridge.run_with_hooks(tokens, fwd_hooks=[(name, add)])
        kept = {}
        head_name = model.hook_head_result(port.layer)

        def keep(x, hook):
            kept["heads"] = x.clone()

        model.bridge.run_with_hooks(tokens, fwd_hooks=[(name, add), (head_name, keep)])

        def splice(x, hook):
            x = x.clone()
            x[at_q] = kept["heads"][at_q]
            return x

        return model.bridge.run_with_hooks(tokens, fwd_hooks=[(head_name, splice)])


@pytest.mark.parametrize("kind", ["gpt2", "llama", "neox"])
def test_one_positional_edge_equals_hand_written_hooks(tiny_models, kind):
    model, graph = tiny_models[kind]
    tokens, corrupted = random_tokens(6), random_tokens(7)
    pgraph = positional_graph(graph, len(tokens))
    clean = collect_sources(model, graph, tokens)
    patch = collect_sources(model, graph, corrupted)
    last = graph.n_layers - 1
    edges = [
        (0, 1, graph.dst_k(last, graph.n_kv_heads - 1), 2),  # input@middle -> keys of END
        (graph.src_head(0, 1), 0, graph.dst_v(1, 0), 1),  # a0.h1@start -> values of middle
        (graph.src_head(0, 2), 2, graph.dst_k(1, 0), 2),  # within one span
        (graph.src_head(0, 0), 1, graph.dst_q(1, 1), 1),
        (0, 2, graph.dst_logits(), 2),
    ]
    if graph.shape.has_mlp:
        edges.append((graph.src_head(0, 3), 1, graph.dst_mlp(last), 1))
    for edge in edges:
        assert pgraph.valid[edge], edge
        one = torch.zeros(pgraph.shape, dtype=torch.bool)
        one[edge] = True
        got = run_positional_patched(model, pgraph, tokens, span_layout(3), one, patch)
        expected = hand_patched_logits(model, graph, pgraph, tokens, edge, clean, patch)
        assert (got - expected).abs().max() <= TOL, pgraph.edge_name(*edge)
        # and the patch does something (the check is not vacuous)
        assert (got - plain_logits(model, tokens)).abs().max() > 1e-4, pgraph.edge_name(*edge)


def test_position_masks_read_the_query_span_for_keys(tiny_models):
    _, graph = tiny_models["gpt2"]
    pgraph = positional_graph(graph, 1)
    patch = torch.zeros(pgraph.shape, dtype=torch.bool)
    k = graph.dst_k(1, 0)
    patch[0, 0, k, 2] = True  # input@start -> keys seen by END's queries
    masks = position_masks(pgraph, patch, span_layout(1))  # [3 copies, 6, n_src, n_dst]
    assert masks.shape == (3, 6, graph.n_src, graph.n_dst)
    set_at = masks[:, :, 0, k].nonzero().tolist()
    assert set_at == [[2, 0], [2, 1]]  # copy END, the two positions of span start
    assert masks.sum() == 2


# --------------------------------------------------------------------------------------------
# Gradients


def answer_metric(logits: torch.Tensor) -> torch.Tensor:
    logp = torch.log_softmax(logits[:, -1], dim=-1)
    return logp[:, 3] - logp[:, 7] + logits[:, 2, 5] ** 2


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_copies_gradients_sum_to_the_plain_gradient(tiny64, kind):
    model, graph = tiny64[kind]
    tokens = random_tokens(8)
    pgraph = positional_graph(graph, len(tokens))
    metric, sources, grads = run_positional_gradients(
        model, pgraph, tokens, span_layout(3), answer_metric
    )
    plain_metric, plain_sources, plain_grads = run_with_gradients(
        model, graph, tokens, answer_metric
    )
    assert torch.allclose(metric, plain_metric, atol=1e-10)
    assert torch.allclose(sources, plain_sources, atol=1e-10)
    # Llama's RMSNorm and rotary embeddings compute in float32 even in a float64 model.
    tol = 1e-9 if kind == "gpt2" else 1e-6
    assert (grads.sum(dim=0) - plain_grads).abs().max() <= tol * plain_grads.abs().max()


def test_key_gradient_per_query_span_matches_finite_differences(tiny64):
    """Copy q's key-input gradient is the derivative of M with the key changed only for span
    q's queries: checked by central differences of hand-spliced runs (a float positional mask
    scales the patch)."""
    model, graph = tiny64["gpt2"]
    tokens, corrupted = random_tokens(9), random_tokens(10)
    pgraph = positional_graph(graph, len(tokens))
    _, clean, grads = run_positional_gradients(model, pgraph, tokens, span_layout(3), answer_metric)
    patch = collect_sources(model, graph, corrupted)
    eps = 1e-6
    u, v = graph.src_head(0, 2), graph.dst_k(1, 1)
    for p, q in ((0, 2), (1, 1), (0, 1)):
        at_p = (span_layout(3) == p).double()[:, :, None]
        analytic = ((patch[:, :, u] - clean[:, :, u]) * at_p * grads[q, :, :, v]).sum()
        values = []
        for sign in (1, -1):
            scaled = torch.zeros(pgraph.shape, dtype=torch.float64)
            scaled[u, p, v, q] = sign * eps
            logits = run_positional_patched(model, pgraph, tokens, span_layout(3), scaled, patch)
            values.append(answer_metric(logits).sum())
        numeric = (values[0] - values[1]) / (2 * eps)
        assert torch.isclose(analytic, numeric, rtol=1e-6, atol=1e-8), (p, q)


# --------------------------------------------------------------------------------------------
# Scores and evaluation on prompt batches with spans


def spanned_batch(n: int, pos: int = 6, seed: int = 0):
    """Random prompt pairs with the three test spans, scored at the last position."""
    from random_batches import random_batch

    batch = random_batch(n, pos, seed=seed)
    return PromptBatch.from_token_ids(
        batch.clean,
        batch.corrupted,
        correct=batch.correct,
        wrong=batch.wrong,
        metric="logit_diff",
        span_names=SPANS,
        span_index=span_layout(n, pos),
    )


@pytest.mark.parametrize("method", ["eap", "eap-ig"])
@pytest.mark.parametrize("kind", ["gpt2", "llama", "neox"])
def test_span_summed_scores_are_the_plain_scores(tiny64, tiny_models, method, kind):
    model, graph = (tiny64 if kind in tiny64 else tiny_models)[kind]
    batch = spanned_batch(5, seed=11)
    pgraph = PositionalGraph.from_batch(graph, batch)
    scores = positional_scores(
        model, pgraph, batch, method, ig_steps=3, batch_size=2, progress=False
    )
    plain = attribute(model, graph, batch, method, ig_steps=3, batch_size=5, progress=False)
    assert scores.shape == pgraph.shape
    assert not scores[~pgraph.valid].any()
    tol = 1e-9 if model.dtype == torch.float64 and kind == "gpt2" else 1e-5
    assert (pgraph.aggregate(scores) - plain).abs().max() <= tol * plain.abs().max()
    assert scores.abs().max() > 0


@pytest.mark.parametrize("kind", ["gpt2", "llama", "neox"])
def test_exact_positional_scores_equal_hand_patched_metrics(tiny_models, kind):
    model, graph = tiny_models[kind]
    batch = spanned_batch(3, seed=12)
    pgraph = PositionalGraph.from_batch(graph, batch)
    last = graph.n_layers - 1
    edges = [
        (0, 1, graph.dst_k(last, 0), 2),
        (graph.src_head(0, 1), 0, graph.dst_v(1, graph.n_kv_heads - 1), 2),
        (graph.src_head(0, 2), 2, graph.dst_q(1, 0), 2),
        (0, 2, graph.dst_logits(), 2),
    ]
    mask = torch.zeros(pgraph.shape, dtype=torch.bool)
    for edge in edges:
        mask[edge] = True
    scores = positional_scores(
        model, pgraph, batch, "exact", edge_mask=mask, batch_size=2, progress=False
    )
    assert not scores[~mask].any()
    clean = collect_sources(model, graph, batch.clean)
    patch = collect_sources(model, graph, batch.corrupted)
    metric = get_metric("logit_diff")
    base = metric(plain_logits(model, batch.clean)[:, -1:], at_last(batch))
    for edge in edges:
        logits = hand_patched_logits(model, graph, pgraph, batch.clean, edge, clean, patch)
        expected = (metric(logits[:, -1:], at_last(batch)) - base).mean()
        assert abs(float(scores[edge]) - float(expected)) <= 1e-5, pgraph.edge_name(*edge)
        assert abs(float(expected)) > 1e-5


def at_last(batch):
    from acd.runner import at_positions

    return at_positions(batch, torch.tensor([batch.clean.shape[1] - 1]))


@pytest.mark.parametrize("kind", ["gpt2", "neox"])
def test_positional_evaluation_ends_and_a_circuit_by_hand(tiny_models, kind):
    model, graph = tiny_models[kind]
    batch = spanned_batch(4, seed=13)
    pgraph = PositionalGraph.from_batch(graph, batch)
    runner = positional_runner(model, pgraph, batch, batch_size=3)
    full, empty = pgraph.valid, torch.zeros(pgraph.shape, dtype=torch.bool)
    circuit = torch.rand(pgraph.shape, generator=torch.Generator().manual_seed(14)) < 0.5
    circuit &= pgraph.valid
    results = evaluate_positional_with(runner, pgraph, torch.stack([full, empty, circuit]))
    assert results[0].faithfulness == 1.0 and results[1].faithfulness == 0.0
    # The circuit by hand: everything not kept patched, plain masks per position and copy.
    everything = graph.valid[:, None, :, None].expand(pgraph.shape)
    patch = collect_sources(model, graph, batch.corrupted)
    logits = run_positional_patched(
        model, pgraph, batch.clean, batch.span_index, everything & ~circuit, patch
    )
    metric = get_metric("logit_diff")
    expected = metric(logits[:, -1:], at_last(batch))
    assert torch.allclose(results[2].circuit, expected.double(), atol=1e-5)
    # and the same circuit at every span is the plain circuit
    plain = torch.rand(graph.n_src, graph.n_dst, generator=torch.Generator().manual_seed(15))
    plain = (plain < 0.5) & graph.valid
    everywhere = plain[:, None, :, None].expand(pgraph.shape) & pgraph.valid
    positional = evaluate_positional_with(runner, pgraph, everywhere.unsqueeze(0))[0]
    reference = evaluate_circuit(model, graph, batch, plain)
    assert torch.allclose(positional.circuit, reference.circuit, atol=1e-5)


def test_pruning_keeps_only_paths_from_input_to_logits(tiny_models):
    model, graph = tiny_models["gpt2"]
    pgraph = positional_graph(graph, 2)
    mask = torch.zeros(pgraph.shape, dtype=torch.bool)
    h = graph.src_head(0, 1)
    k1 = graph.dst_k(1, 0)
    a1 = graph.src_head(1, 0)
    mask[0, 0, graph.dst_q(0, 1), 0] = True  # input@start -> a0.h1<q>@start
    mask[h, 0, k1, 2] = True  # a0.h1@start -> a1.h0<k>@END
    mask[a1, 2, graph.dst_logits(), 2] = True  # a1.h0@END -> logits@END
    mask[h, 1, k1, 2] = True  # a0.h1@middle: nothing feeds it there -> pruned
    mask[0, 1, graph.dst_q(1, 2), 1] = True  # a1.h2@middle feeds nothing -> pruned
    pruned = prune_positional(mask, pgraph)
    expected = mask.clone()
    expected[h, 1, k1, 2] = False
    expected[0, 1, graph.dst_q(1, 2), 1] = False
    assert torch.equal(pruned, expected)
    assert torch.equal(prune_positional(pruned, pgraph), pruned)
