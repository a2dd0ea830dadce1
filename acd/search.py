"""Selecting a circuit from edge scores.

This module turns scores into a kept-edge mask: top-n, threshold and greedy selection (each a
named entry of ``SELECTIONS``), and ``prune_dangling``, which drops the kept edges that lie on no
input -> logits path.

Greedy selection and pruning work on nodes, not ports: a port a{l}.h{h}<q> belongs to head
a{l}.h{h}, and a grouped-query key/value port a{l}.g{g}<k> belongs to every query head of group g
(patching it changes all of them); ``graph.port_nodes`` and ``graph.node_ports`` hold that
relation. Node ids below are ``graph.nodes`` indices, in which a source's id is its source index;
sources are in forward order, so every valid edge goes from a smaller id to larger ones.
"""

from __future__ import annotations

import heapq
import math

import torch

from acd.errors import AcdError
from acd.graph import ComputeGraph


def select_topn(
    scores: torch.Tensor, valid: torch.Tensor, n: int, *, absolute: bool = True
) -> torch.Tensor:
    """The ``n`` valid edges with the largest scores (by |score| when ``absolute``).

    Ties are broken by edge index (source-major), so the selection is deterministic.

    Args: scores [n_src, n_dst], valid [n_src, n_dst] bool. Returns [n_src, n_dst] bool.
    """
    n_valid = int(valid.sum())
    if not 0 <= n <= n_valid:
        raise AcdError(f"cannot keep {n} edges: the graph has {n_valid} (choose 0..{n_valid})")
    key = _ranking_key(scores, absolute).flatten()
    key = torch.where(valid.cpu().flatten(), key, torch.tensor(float("-inf"), dtype=key.dtype))
    # A stable sort keeps index order among equal scores.
    order = torch.sort(key, descending=True, stable=True).indices[:n]
    mask = torch.zeros(valid.numel(), dtype=torch.bool)
    mask[order] = True
    return mask.view_as(valid)


def select_threshold(
    scores: torch.Tensor, valid: torch.Tensor, threshold: float, *, absolute: bool = True
) -> torch.Tensor:
    """The valid edges whose score (|score| when ``absolute``) is at least ``threshold``.

    Args: scores [n_src, n_dst], valid [n_src, n_dst] bool. Returns [n_src, n_dst] bool (CPU).
    """
    threshold = float(threshold)
    if math.isnan(threshold):
        raise AcdError("the threshold is NaN: give a number")
    if absolute and threshold < 0:
        raise AcdError(
            f"threshold {threshold} is negative but scores are compared by |score|: "
            "every edge would pass; give a threshold >= 0 (or compare signed scores)"
        )
    if scores.shape != valid.shape:
        raise AcdError(f"scores have shape {tuple(scores.shape)}, the graph {tuple(valid.shape)}")
    key = _ranking_key(scores, absolute)
    return valid.cpu() & (key >= threshold)


def select_greedy(
    scores: torch.Tensor, graph: ComputeGraph, n: int, *, absolute: bool = True
) -> torch.Tensor:
    """``n`` edges grown backwards from the logits, best score first.

    The reachable nodes start as {logits}. Each step adds the best-scoring valid edge (by |score|
    when ``absolute``; ties by edge index, NaN scores last) whose destination port belongs to a
    reachable node (for a key/value group port: to any reachable head of the group); adding
    u -> v makes u reachable. Stops after ``n`` edges or when no candidate is left.

    Args: scores [n_src, n_dst]. Returns [n_src, n_dst] bool (CPU).
    """
    valid = graph.valid
    n_valid = int(valid.sum())
    if not 0 <= n <= n_valid:
        raise AcdError(f"cannot keep {n} edges: the graph has {n_valid} (choose 0..{n_valid})")
    if scores.shape != valid.shape:
        raise AcdError(f"scores have shape {tuple(scores.shape)}, the graph {tuple(valid.shape)}")
    key = _ranking_key(scores, absolute)
    key = torch.nan_to_num(key, nan=float("-inf")).tolist()
    n_before = graph.dst_n_before.tolist()  # port j's valid sources are 0 .. n_before[j] - 1
    node_ports = graph.node_ports
    n_dst = graph.n_dst

    mask = torch.zeros(graph.n_src, n_dst, dtype=torch.bool)
    port_open = [False] * n_dst
    reachable = [False] * graph.n_nodes
    heap: list[tuple[float, int, int, int]] = []  # (-key, edge index, source, port)

    def reach(node: int) -> None:
        reachable[node] = True
        for j in node_ports[node]:
            if not port_open[j]:
                port_open[j] = True
                for i in range(n_before[j]):
                    heap.append((-key[i][j], i * n_dst + j, i, j))
        heapq.heapify(heap)  # linear; called at most once per node

    reach(graph.node_index["logits"])
    kept = 0
    while kept < n and heap:
        _, _, i, j = heapq.heappop(heap)
        mask[i, j] = True
        kept += 1
        if not reachable[i]:
            reach(i)
    return mask


def prune_dangling(mask: torch.Tensor, graph: ComputeGraph) -> torch.Tensor:
    """``mask`` without the kept edges that lie on no input -> logits path of kept edges.

    A kept edge u -> v survives when u is reachable from ``input`` through kept edges and v's
    node reaches ``logits`` through kept edges (a key/value group port counts as an input of
    every head of its group). Computed with one forward and one backward pass in index order;
    pruning twice changes nothing.

    Args: mask [n_src, n_dst] bool. Returns [n_src, n_dst] bool, on ``mask``'s device.
    """
    if mask.shape != (graph.n_src, graph.n_dst):
        raise AcdError(
            f"mask has shape {tuple(mask.shape)}, expected ({graph.n_src}, {graph.n_dst})"
        )
    kept = mask.detach().bool().cpu() & graph.valid
    node_ports = graph.node_ports

    # Forward: a node is reachable when a kept edge from a reachable source feeds one of its
    # ports. Its sources all have smaller indices, so they are final when it is visited.
    from_input = torch.zeros(graph.n_src, dtype=torch.bool)
    from_input[graph.src_input()] = True
    for u in range(1, graph.n_src):
        ports = list(node_ports[u])  # a list: a tuple would index several dimensions
        if ports:
            from_input[u] = bool(kept[:, ports][from_input].any())

    # Backward: a port is live when one of its nodes reaches logits; a source reaches logits
    # when a kept edge leaves it for a live port. Its consumers all have larger indices.
    live = torch.zeros(graph.n_dst, dtype=torch.bool)
    live[graph.dst_logits()] = True
    for u in range(graph.n_src - 1, -1, -1):
        if bool((kept[u] & live).any()):
            live[list(node_ports[u])] = True

    pruned = kept & from_input[:, None] & live[None, :]
    return pruned.to(mask.device)


def _ranking_key(scores: torch.Tensor, absolute: bool) -> torch.Tensor:
    """What selections rank: |scores| (``absolute``) or scores, on the CPU, in the scores' own
    dtype when float32 or float64 (half precision is upcast to float32). Never downcast: a
    float64 score of 5e-83 is 0 in float32 and would lose its rank to the zero scores."""
    key = (scores.abs() if absolute else scores).detach().cpu()
    return key if key.dtype in (torch.float32, torch.float64) else key.to(torch.float32)


SELECTIONS = {"topn": select_topn, "threshold": select_threshold, "greedy": select_greedy}
