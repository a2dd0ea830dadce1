"""Pruning a positional circuit: keep the positional edges on an input -> logits path.

Nodes are (node, span) pairs: a positional edge (u@p) -> (v@q) feeds the node(s) that compute
from port v at span q (for a key/value port with grouped-query attention, every head of its
group). The input node is reachable at every span; logits are reached at every span.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from acd.errors import AcdError

if TYPE_CHECKING:
    from acd.positional.graph import PositionalGraph


def prune_positional(mask: torch.Tensor, pgraph: PositionalGraph) -> torch.Tensor:
    """``mask`` [n_src, P, n_dst, P] without the kept positional edges on no input -> logits
    path of kept positional edges (acd.search.prune_dangling at span resolution; pruning twice
    changes nothing). Returns [n_src, P, n_dst, P] bool on the CPU."""
    if tuple(mask.shape) != pgraph.shape:
        raise AcdError(f"mask has shape {tuple(mask.shape)}, expected {pgraph.shape}")
    graph = pgraph.graph
    kept = mask.detach().bool().cpu() & pgraph.valid
    node_ports = graph.node_ports
    n_spans = pgraph.n_spans

    # Forward, in source order: (u, q) is reachable when a kept edge from a reachable (s, p)
    # feeds one of u's ports at span q.
    from_input = torch.zeros(graph.n_src, n_spans, dtype=torch.bool)
    from_input[graph.src_input()] = True
    for u in range(1, graph.n_src):
        ports = list(node_ports[u])
        if ports:
            into = kept[:, :, ports, :]  # [n_src, P, ports, P]
            from_input[u] = (into & from_input[:, :, None, None]).any(dim=(0, 1, 2))

    # Backward: port (w, q) is live when a node it feeds reaches logits at span q; (u, p)
    # reaches logits when a kept edge leaves it for a live port.
    live = torch.zeros(graph.n_dst, n_spans, dtype=torch.bool)
    live[graph.dst_logits()] = True
    for u in range(graph.n_src - 1, -1, -1):
        reaches = (kept[u] & live[None]).any(dim=(1, 2))  # [P]
        if bool(reaches.any()):
            for w in node_ports[u]:
                live[w] |= reaches
    return kept & from_input[:, :, None, None] & live[None, None]
