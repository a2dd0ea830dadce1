"""Comparing a circuit (or a score matrix) with a reference circuit of the same graph:
edge- and node-level precision, recall, F1 and ROC AUC (``acd compare``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from acd.graph import ComputeGraph


@dataclass
class Comparison:
    """How a found circuit (or a score matrix) matches a reference circuit.

    Over valid edges, and over nodes (a circuit's nodes: the sources of its edges and the
    nodes its edges read into). Precision, recall and F1 need a circuit (a mask); ROC AUC needs
    scores: it is the probability that a random reference edge (node) scores higher in |score|
    than a random non-reference one, ties counting one half (the Mann-Whitney U statistic
    divided by n_ref * n_other). Fields a given input cannot provide are None.
    """

    n_reference_edges: int
    n_candidate_edges: int | None
    edge_precision: float | None
    edge_recall: float | None
    edge_f1: float | None
    edge_roc_auc: float | None
    node_precision: float | None
    node_recall: float | None
    node_f1: float | None
    node_roc_auc: float | None


def compare(graph: ComputeGraph, candidate: torch.Tensor, reference: torch.Tensor) -> Comparison:
    """Compare ``candidate`` with the ``reference`` circuit of the same graph.

    Args:
        candidate: [n_src, n_dst] bool (a circuit's kept edges) or float (edge scores; ranked
            by |score|; a node scores the largest |score| of the valid edges touching it).
        reference: [n_src, n_dst] bool, the reference circuit's edges.
    """
    shape = (graph.n_src, graph.n_dst)
    if tuple(candidate.shape) != shape or tuple(reference.shape) != shape:
        raise ValueError(f"candidate and reference must both have the graph's shape {shape}")
    valid = graph.valid
    ref = reference.detach().bool().cpu() & valid
    ref_nodes = _node_mask(graph, ref)
    if candidate.dtype == torch.bool:
        cand = candidate.detach().cpu() & valid
        edge = _precision_recall_f1(cand[valid], ref[valid])
        node = _precision_recall_f1(_node_mask(graph, cand), ref_nodes)
        edge_auc = node_auc = None
        n_cand: int | None = int(cand.sum())
    else:
        scores = candidate.detach().double().cpu().abs() * valid
        edge = node = (None, None, None)
        edge_auc = _roc_auc(scores[valid], ref[valid])
        node_auc = _roc_auc(_node_scores(graph, scores), ref_nodes)
        n_cand = None
    return Comparison(int(ref.sum()), n_cand, *edge, edge_auc, *node, node_auc)


def source_node_auc(
    graph: ComputeGraph, node_scores: torch.Tensor, reference: torch.Tensor
) -> float | None:
    """ROC AUC of |node_scores| [n_src] (a node-level circuit's scores, acd.nodes) against the
    source nodes of the ``reference`` circuit [n_src, n_dst] bool (those with a reference
    edge out), over every source node; ties count one half, None without both classes."""
    if tuple(node_scores.shape) != (graph.n_src,):
        raise ValueError(f"node scores must have shape ({graph.n_src},)")
    truth = (reference.detach().bool().cpu() & graph.valid).any(dim=1)
    return _roc_auc(node_scores.detach().double().cpu().abs(), truth)


def _node_mask(graph: ComputeGraph, edges: torch.Tensor) -> torch.Tensor:
    """[n_nodes] bool: the nodes an edge of ``edges`` [n_src, n_dst] starts or ends at (the
    node a port is named after: a GQA k/v port's kv group)."""
    nodes = torch.zeros(graph.n_nodes, dtype=torch.bool)
    nodes[graph.src_node_ids[edges.any(dim=1)]] = True
    nodes[graph.dst_node_ids[edges.any(dim=0)]] = True
    return nodes


def _node_scores(graph: ComputeGraph, scores: torch.Tensor) -> torch.Tensor:
    """[n_nodes]: the largest |score| of the edges touching each node (scores [n_src, n_dst])."""
    out = torch.zeros(graph.n_nodes, dtype=scores.dtype)
    out.scatter_reduce_(0, graph.src_node_ids, scores.amax(dim=1), reduce="amax")
    out.scatter_reduce_(0, graph.dst_node_ids, scores.amax(dim=0), reduce="amax")
    return out


def _precision_recall_f1(found: torch.Tensor, truth: torch.Tensor) -> tuple[float, float, float]:
    hits = int((found & truth).sum())
    precision = hits / int(found.sum()) if bool(found.any()) else math.nan
    recall = hits / int(truth.sum()) if bool(truth.any()) else math.nan
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return precision, recall, f1


def _roc_auc(scores: torch.Tensor, truth: torch.Tensor) -> float | None:
    """P(score of a positive > score of a negative), ties one half (None without both)."""
    from scipy.stats import mannwhitneyu

    pos, neg = scores[truth].numpy(), scores[~truth].numpy()
    if len(pos) == 0 or len(neg) == 0:
        return None
    return float(mannwhitneyu(pos, neg).statistic) / (len(pos) * len(neg))
