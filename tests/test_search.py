"""Selection of circuits from scores."""

from __future__ import annotations

import networkx as nx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import GPT2Config, LlamaConfig

from acd.errors import AcdError
from acd.graph import ComputeGraph
from acd.search import (
    prune_dangling,
    select_greedy,
    select_threshold,
    select_topn,
)


def test_topn_keeps_the_largest_valid_scores():
    scores = torch.tensor([[0.5, -3.0, 9.0], [1.0, 2.0, -0.1]])
    valid = torch.tensor([[True, True, False], [True, True, True]])  # 9.0 is not an edge
    by_abs = select_topn(scores, valid, 2)
    assert by_abs.nonzero().tolist() == [[0, 1], [1, 1]]  # |-3| and 2
    signed = select_topn(scores, valid, 2, absolute=False)
    assert signed.nonzero().tolist() == [[1, 0], [1, 1]]  # 2 and 1
    assert select_topn(scores, valid, 0).sum() == 0
    assert torch.equal(select_topn(scores, valid, 5), valid)


def test_topn_breaks_ties_by_edge_index():
    scores = torch.ones(3, 3)
    valid = torch.ones(3, 3, dtype=torch.bool)
    assert select_topn(scores, valid, 4).flatten().nonzero().flatten().tolist() == [0, 1, 2, 3]


def test_topn_refuses_impossible_sizes():
    with pytest.raises(AcdError, match="cannot keep 7 edges: the graph has 6"):
        select_topn(torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool), 7)


@pytest.mark.parametrize("absolute", [True, False])
def test_float64_scores_are_ranked_in_float64(absolute):
    """A float64 score too small for float32 (5e-83 rounds to 0 there) still ranks above the
    zero scores, in every selection."""
    graph = _gpt2(1, 1)
    tiny = ("m0", "logits")  # the last edge into logits: a tie at 0 would keep an earlier one
    scores = torch.zeros(graph.n_src, graph.n_dst, dtype=torch.float64)
    scores[graph.edge_index(*tiny)] = 5e-83
    assert float(scores.float().max()) == 0.0  # what float32 would rank
    assert graph.edge_names(select_topn(scores, graph.valid, 1, absolute=absolute)) == [tiny]
    assert graph.edge_names(select_greedy(scores, graph, 1, absolute=absolute)) == [tiny]
    kept = select_threshold(scores, graph.valid, 1e-90, absolute=absolute)
    assert graph.edge_names(kept) == [tiny]


# --- threshold ------------------------------------------------------------------------------


def test_threshold_keeps_valid_edges_at_or_above_it():
    scores = torch.tensor([[0.5, -3.0, 9.0], [1.0, 2.0, -0.1]])
    valid = torch.tensor([[True, True, False], [True, True, True]])
    by_abs = select_threshold(scores, valid, 1.0)
    assert by_abs.nonzero().tolist() == [[0, 1], [1, 0], [1, 1]]  # |-3|, 1 (>=), 2; not 9
    signed = select_threshold(scores, valid, -0.2, absolute=False)
    assert signed.nonzero().tolist() == [[0, 0], [1, 0], [1, 1], [1, 2]]
    assert torch.equal(select_threshold(scores, valid, 0.0), valid)
    assert select_threshold(scores, valid, 100.0).sum() == 0


def test_threshold_refuses_nan_and_negative_absolute_thresholds():
    scores, valid = torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(AcdError, match="NaN"):
        select_threshold(scores, valid, float("nan"))
    with pytest.raises(AcdError, match="NaN"):
        select_threshold(scores, valid, float("nan"), absolute=False)
    with pytest.raises(AcdError, match="negative"):
        select_threshold(scores, valid, -1.0)
    with pytest.raises(AcdError, match="shape"):
        select_threshold(torch.zeros(3, 2), valid, 1.0)


# --- greedy ---------------------------------------------------------------------------------


def _gpt2(n_layer: int, n_head: int) -> ComputeGraph:
    return ComputeGraph.from_config(GPT2Config(n_layer=n_layer, n_head=n_head))


def _llama(n_layer: int, n_head: int, n_kv: int) -> ComputeGraph:
    config = LlamaConfig(
        num_hidden_layers=n_layer,
        num_attention_heads=n_head,
        num_key_value_heads=n_kv,
        hidden_size=8 * n_head,
    )
    return ComputeGraph.from_config(config)


def _scores(graph: ComputeGraph, named: dict[tuple[str, str], float]) -> torch.Tensor:
    scores = torch.zeros(graph.n_src, graph.n_dst)
    for edge, value in named.items():
        scores[graph.edge_index(*edge)] = value
    return scores


def test_greedy_grows_backwards_from_the_logits():
    graph = _gpt2(2, 1)
    scores = _scores(
        graph,
        {
            ("a0.h0", "m0"): -10.0,  # the best score, but m0 is not reachable at first
            ("a1.h0", "logits"): 5.0,
            ("m0", "a1.h0<v>"): 4.0,
            ("input", "m0"): 3.0,
            ("input", "a1.h0<q>"): 2.0,
            ("input", "logits"): 1.0,
        },
    )
    order = [
        ("a1.h0", "logits"),
        ("m0", "a1.h0<v>"),
        ("a0.h0", "m0"),
        ("input", "m0"),
        ("input", "a1.h0<q>"),
    ]
    for n in range(len(order) + 1):
        assert graph.edge_names(select_greedy(scores, graph, n)) == sorted(
            order[:n], key=lambda e: graph.edge_index(*e)
        )
    # Signed, a0.h0 -> m0 (-10) ranks below every zero-scored edge.
    signed = graph.edge_names(select_greedy(scores, graph, 5, absolute=False))
    assert ("a0.h0", "m0") not in signed
    assert ("input", "a1.h0<q>") in signed


def test_greedy_opens_a_kv_group_port_through_any_head_of_the_group():
    graph = _llama(1, 2, 1)
    scores = _scores(
        graph,
        {
            ("input", "a0.h0<q>"): 9.0,  # a0.h0 never becomes reachable
            ("a0.h1", "logits"): 5.0,
            ("input", "a0.g0<k>"): 4.0,  # open: a0.h1 reads group 0's keys
            ("m0", "logits"): -1.0,
        },
    )
    scores[graph.edge_index("input", "logits")] = -0.5
    kept = graph.edge_names(select_greedy(scores, graph, 4))
    assert kept == [
        ("input", "a0.g0<k>"),
        ("input", "logits"),
        ("a0.h1", "logits"),
        ("m0", "logits"),
    ]


def test_greedy_keeps_every_edge_when_asked_and_refuses_impossible_sizes():
    graph = _llama(2, 4, 2)
    scores = torch.randn(graph.n_src, graph.n_dst, generator=torch.Generator().manual_seed(0))
    assert torch.equal(select_greedy(scores, graph, graph.n_edges), graph.valid)
    with pytest.raises(AcdError, match="cannot keep"):
        select_greedy(scores, graph, graph.n_edges + 1)
    with pytest.raises(AcdError, match="shape"):
        select_greedy(scores[:, :-1], graph, 1)


@pytest.mark.parametrize("graph", [_gpt2(3, 2), _llama(3, 4, 2)], ids=["gpt2", "gqa"])
@pytest.mark.parametrize("absolute", [True, False])
def test_greedy_adds_the_best_edge_into_a_reachable_node_each_step(graph, absolute):
    scores = torch.randn(graph.n_src, graph.n_dst, generator=torch.Generator().manual_seed(1))
    key = scores.abs() if absolute else scores
    nodes_of_port = _port_nodes(graph)
    best_into_logits = torch.where(graph.valid[:, -1], key[:, -1], float("-inf")).argmax()
    first = select_greedy(scores, graph, 1, absolute=absolute)
    assert first.nonzero().tolist() == [[int(best_into_logits), graph.dst_logits()]]

    previous = torch.zeros_like(graph.valid)
    for n in range(1, 60):
        mask = select_greedy(scores, graph, n, absolute=absolute)
        assert (previous & ~mask).sum() == 0 and mask.sum() == n  # one edge more
        reachable = {"logits"} | {graph.sources[i].name for i in previous.nonzero()[:, 0]}
        candidate = graph.valid & ~previous
        for j, port_nodes in enumerate(nodes_of_port):
            if not reachable & port_nodes:
                candidate[:, j] = False
        (added,) = (mask & ~previous).nonzero().tolist()
        assert candidate[added[0], added[1]]
        assert key[added[0], added[1]] == key[candidate].max()
        previous = mask


# --- prune_dangling -------------------------------------------------------------------------


def test_prune_removes_dangling_heads_and_keeps_a_chain():
    graph = _gpt2(2, 2)
    chain = [("input", "a0.h0<q>"), ("a0.h0", "a1.h0<k>"), ("a1.h0", "logits")]
    feeds_nothing = [("input", "a1.h1<q>"), ("input", "m0"), ("m0", "a1.h1<v>")]
    fed_by_nothing = [("a0.h1", "logits"), ("a0.h1", "m1"), ("m1", "logits")]
    mask = graph.mask_from_edges(chain + feeds_nothing + fed_by_nothing)
    pruned = prune_dangling(mask, graph)
    assert graph.edge_names(pruned) == sorted(chain, key=lambda e: graph.edge_index(*e))
    assert torch.equal(prune_dangling(pruned, graph), pruned)
    # m1 fed from the chain makes m1 -> logits a path; a0.h1 still has no input.
    fed = mask | graph.mask_from_edges([("a0.h0", "m1")])
    assert set(graph.edge_names(prune_dangling(fed, graph))) == {
        *chain,
        ("a0.h0", "m1"),
        ("m1", "logits"),
    }
    assert prune_dangling(torch.zeros_like(mask), graph).sum() == 0
    assert torch.equal(prune_dangling(graph.valid, graph), graph.valid)
    with pytest.raises(AcdError, match="shape"):
        prune_dangling(mask[:, 1:], graph)


def test_prune_treats_a_kv_group_port_as_an_input_of_every_head_of_the_group():
    graph = _llama(2, 4, 2)  # group 0: heads 0 and 1; group 1: heads 2 and 3
    edges = [
        ("input", "a0.g0<k>"),  # feeds a0.h0 and a0.h1
        ("a0.h1", "logits"),
        ("a0.h0", "a1.g0<v>"),  # live: a1.h1, of group 0, reaches logits
        ("a1.h1", "logits"),
    ]
    dangling = [
        ("input", "a1.g1<k>"),  # a1.h2 and a1.h3 feed nothing
        ("a0.h0", "m1"),  # m1 feeds nothing
        ("a0.h2", "logits"),  # a0.h2 reads nothing (group 1's ports are not fed)
    ]
    pruned = prune_dangling(graph.mask_from_edges(edges + dangling), graph)
    assert set(graph.edge_names(pruned)) == set(edges)
    assert torch.equal(prune_dangling(pruned, graph), pruned)


def _port_nodes(graph: ComputeGraph) -> list[set[str]]:
    """The node names each destination port is an input of (a kv group port: all its heads)."""
    per_group = graph.n_heads // graph.n_kv_heads
    nodes = []
    for port in graph.destinations:
        if port.kind in ("k", "v"):
            heads = range(port.index * per_group, (port.index + 1) * per_group)
            nodes.append({f"a{port.layer}.h{h}" for h in heads})
        else:
            nodes.append({port.node})
    return nodes


def _on_path_edges(mask: torch.Tensor, graph: ComputeGraph) -> set[tuple[int, int]]:
    """Edges of ``mask`` on an input -> logits path, by networkx reachability over nodes."""
    port_nodes = _port_nodes(graph)
    dig = nx.DiGraph()
    dig.add_nodes_from(["input", "logits"])
    edges = (mask & graph.valid).nonzero().tolist()
    for i, j in edges:
        dig.add_edges_from((graph.sources[i].name, v) for v in port_nodes[j])
    from_input = nx.descendants(dig, "input") | {"input"}
    to_logits = nx.ancestors(dig, "logits") | {"logits"}
    return {
        (i, j)
        for i, j in edges
        if graph.sources[i].name in from_input and port_nodes[j] & to_logits
    }


_PROPERTY_GRAPHS = {"gpt2": _gpt2(3, 2), "gqa": _llama(3, 4, 2)}


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(sorted(_PROPERTY_GRAPHS)),
    seed=st.integers(0, 2**31 - 1),
    density=st.floats(0.0, 0.6),
)
def test_prune_keeps_exactly_the_edges_on_input_logits_paths(name, seed, density):
    graph = _PROPERTY_GRAPHS[name]
    noise = torch.rand(graph.n_src, graph.n_dst, generator=torch.Generator().manual_seed(seed))
    mask = (noise < density) & graph.valid
    pruned = prune_dangling(mask, graph)
    assert (pruned & ~mask).sum() == 0
    kept = {tuple(e) for e in pruned.nonzero().tolist()}
    assert kept == _on_path_edges(mask, graph)
    assert _on_path_edges(pruned, graph) == kept  # every kept edge lies on a kept path
    assert torch.equal(prune_dangling(pruned, graph), pruned)


def test_greedy_and_prune_on_gpt2_small():
    """The full-size graph (their speed: bench/bench_select.py)."""
    graph = ComputeGraph.from_config(GPT2Config())
    assert graph.n_edges == 32491
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(graph.n_src, graph.n_dst, generator=generator)
    mask = torch.rand(graph.n_src, graph.n_dst, generator=generator) < 0.05

    selected = select_greedy(scores, graph, 3000)
    assert selected.sum() == 3000 and not (selected & ~graph.valid).any()
    for kept in (mask & graph.valid, selected):
        pruned = prune_dangling(kept, graph)
        assert not (pruned & ~kept).any()
        assert torch.equal(prune_dangling(pruned, graph), pruned)


def test_the_graphs_port_nodes_are_the_relation_the_tests_expect():
    """graph.port_nodes (what greedy selection and pruning use) is the brute-force relation
    of ``_port_nodes``: a kv group port belongs to every head of its group."""
    for graph in (_llama(2, 4, 2), _llama(2, 4, 4), _llama(1, 4, 1)):
        assert [{graph.nodes[n] for n in nodes} for nodes in graph.port_nodes] == _port_nodes(graph)
