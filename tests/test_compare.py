"""Comparison of circuits with a reference: hand-counted sets and brute-force ROC AUC."""

from __future__ import annotations

import itertools

import pytest
import torch
from transformers import GPT2Config

from acd.comparison import compare
from acd.graph import ComputeGraph, GraphShape


@pytest.fixture(scope="module")
def graph():
    return ComputeGraph.from_config(GPT2Config(n_layer=2, n_head=2))


def test_precision_recall_f1_over_edges_and_nodes(graph):
    reference = graph.mask_from_edges(
        [("input", "a0.h0<q>"), ("a0.h0", "a1.h1<k>"), ("a1.h1", "logits")]
    )
    candidate = graph.mask_from_edges(
        [("input", "a0.h0<q>"), ("a1.h1", "logits"), ("m0", "logits")]
    )
    c = compare(graph, candidate, reference)
    assert (c.n_reference_edges, c.n_candidate_edges) == (3, 3)
    assert c.edge_precision == pytest.approx(2 / 3) and c.edge_recall == pytest.approx(2 / 3)
    assert c.edge_f1 == pytest.approx(2 / 3)
    # Nodes: reference {input, a0.h0, a1.h1, logits}; candidate {input, a0.h0, a1.h1, m0, logits}.
    assert c.node_precision == pytest.approx(4 / 5) and c.node_recall == pytest.approx(1.0)
    assert c.node_f1 == pytest.approx(2 * 0.8 / 1.8)
    assert c.edge_roc_auc is None and c.node_roc_auc is None


def _brute_force_auc(scores: list[float], truth: list[bool]) -> float:
    pairs = [
        1.0 if p > n else 0.5 if p == n else 0.0
        for (p, tp), (n, tn) in itertools.product(zip(scores, truth), repeat=2)
        if tp and not tn
    ]
    return sum(pairs) / len(pairs)


def test_roc_auc_equals_the_pairwise_count(graph):
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(graph.n_src, graph.n_dst, generator=generator).round(decimals=1)
    reference = (torch.rand(graph.n_src, graph.n_dst, generator=generator) < 0.2) & graph.valid
    c = compare(graph, scores, reference)
    expected = _brute_force_auc(scores.abs()[graph.valid].tolist(), reference[graph.valid].tolist())
    assert c.edge_roc_auc == pytest.approx(expected)
    assert c.edge_precision is None and c.n_candidate_edges is None


def test_roc_auc_of_perfect_and_reversed_rankings(graph):
    reference = graph.mask_from_edges([("input", "m1"), ("a1.h0", "logits")])
    perfect = reference.double() + 0.01 * graph.valid
    assert compare(graph, perfect, reference).edge_roc_auc == 1.0
    assert compare(graph, 1.0 - reference.double(), reference).edge_roc_auc == 0.0
    # Node scores are the largest |score| touching a node: the reference's nodes
    # (input, m1, a1.h0, logits) all carry a 1.01, every other node 0.01.
    assert compare(graph, perfect, reference).node_roc_auc == 1.0


def test_shapes_are_checked(graph):
    with pytest.raises(ValueError, match="graph's shape"):
        compare(graph, torch.zeros(2, 2, dtype=torch.bool), graph.valid)


def test_gqa_nodes_count_a_key_value_group_as_the_node_its_ports_are_named_after():
    """With grouped-query attention an edge into a{l}.g{g}<k> touches the group's node
    a{l}.g{g} (as in circuit.nodes), not the heads of the group."""
    gqa = ComputeGraph(GraphShape(n_layers=2, n_heads=4, n_kv_heads=2))
    reference = gqa.mask_from_edges([("input", "a1.g0<k>"), ("a0.h1", "logits")])
    candidate = gqa.mask_from_edges([("input", "a1.g0<v>"), ("a1.h0", "logits")])
    c = compare(gqa, candidate, reference)
    # Nodes: reference {input, a0.h1, a1.g0, logits}; candidate {input, a1.h0, a1.g0, logits}.
    assert c.edge_precision == 0.0
    assert c.node_precision == pytest.approx(3 / 4) and c.node_recall == pytest.approx(3 / 4)
    scores = reference.double() * 2 + candidate.double()
    # Node scores (the largest touching): 2 on the reference's nodes, 1 on a1.h0, 0 elsewhere.
    ranked = compare(gqa, scores, reference).node_roc_auc
    nodes = gqa.nodes
    on = {"input", "a0.h1", "a1.g0", "logits"}
    value = {"input": 2.0, "a0.h1": 2.0, "a1.g0": 2.0, "logits": 2.0, "a1.h0": 1.0}
    expected = _brute_force_auc([value.get(n, 0.0) for n in nodes], [n in on for n in nodes])
    assert ranked == pytest.approx(expected)
