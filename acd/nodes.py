"""Node-level circuits: keep whole heads and MLPs instead of single edges.

A node-level circuit is a set of kept *source nodes* (input, heads, MLPs). A removed node is
patched on every outgoing edge at once (its output replaced by what the ablation puts there),
which is what MIB's node track and most head-level work (Wang et al. 2022's IOI circuit, Conmy
et al. 2023's node ACDC) mean by removing a head. Everything downstream stays edge-level:

    node scores [n_src]      M(clean with u patched on all outgoing edges) - M(clean), averaged
                             over prompts (``acd.attribution.node_scores``): measured by
                             ``exact``, estimated by the gradient methods as the sum of u's edge
                             scores (exactly their first-order estimate of the node patch)
    kept [n_src] bool        a selection of the node scores among the heads and MLPs
                             (``TopN``/``Threshold`` on nodes), plus ``input``, always kept
    induced edges            ``induced_edges(kept)``: every valid edge from a kept node into a
                             port read by a kept node (or into logits) — the [n_src, n_dst] mask
                             the circuit is evaluated, pruned, exported and drawn with

The induced mask patches exactly the outgoing edges of the removed nodes, so evaluating it *is*
the node patch: the edges into a removed node are dropped too, but a node whose output is
patched on every outgoing edge no longer matters downstream, whatever it reads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from acd.errors import AcdError

if TYPE_CHECKING:
    from acd.graph import ComputeGraph

LEVELS = ("edge", "node")


def check_level(level: str) -> str:
    """``level`` if it is ``edge`` or ``node``; AcdError otherwise."""
    if level not in LEVELS:
        raise AcdError(f"unknown level {level!r}; choose edge or node")
    return level


def selectable_nodes(graph: ComputeGraph) -> torch.Tensor:
    """[n_src] bool: the nodes a node-level selection chooses among, every head and MLP.

    ``input`` is always kept (as ``logits`` is): a circuit of components reads the prompt, and
    without it every kept node would lie on no input -> logits path and pruning would empty
    the circuit (Wang et al.'s and MIB's node circuits are sets of heads and MLPs too)."""
    out = torch.ones(graph.n_src, dtype=torch.bool)
    out[graph.src_input()] = False
    return out


def with_input(kept: torch.Tensor, graph: ComputeGraph) -> torch.Tensor:
    """``kept`` [n_src] bool with ``input`` added."""
    kept = _checked_nodes(kept, graph).clone()
    kept[graph.src_input()] = True
    return kept


def n_selectable(graph: ComputeGraph) -> int:
    """How many heads and MLPs a node-level circuit can keep."""
    return graph.n_src - 1


def top_nodes(scores: torch.Tensor, graph: ComputeGraph, n: int, absolute: bool) -> torch.Tensor:
    """The ``n`` heads and MLPs of largest score (|score| when ``absolute``; ties by index),
    and ``input``: scores [n_src] -> [n_src] bool (what ``TopN.select_nodes`` keeps)."""
    from acd.search import select_topn

    among = selectable_nodes(graph)[:, None]
    kept = select_topn(scores.reshape(-1, 1), among, n, absolute=absolute)[:, 0]
    return with_input(kept, graph)


def nodes_at_least(
    scores: torch.Tensor, graph: ComputeGraph, threshold: float, absolute: bool
) -> torch.Tensor:
    """Every head and MLP scoring at least ``threshold`` (|score| when ``absolute``), and
    ``input``: scores [n_src] -> [n_src] bool (what ``Threshold.select_nodes`` keeps)."""
    from acd.search import select_threshold

    among = selectable_nodes(graph)[:, None]
    kept = select_threshold(scores.reshape(-1, 1), among, threshold, absolute=absolute)[:, 0]
    return with_input(kept, graph)


def default_nodes(graph: ComputeGraph) -> int:
    """The node-level circuit size ``discover`` keeps when given none: a quarter of the heads
    and MLPs, at most 50 (the embedded model: 5 of its 20; GPT-2 small: 39 of 156, about the
    size of Wang et al.'s 26-head IOI circuit with its MLPs)."""
    return min(50, max(1, n_selectable(graph) // 4))


def port_read_by(kept: torch.Tensor, graph: ComputeGraph) -> torch.Tensor:
    """[n_dst] bool: the ports that a kept node computes from, and logits (always read).

    A grouped-query key/value port counts as read when any head of its group is kept."""
    kept = _checked_nodes(kept, graph)
    read = torch.zeros(graph.n_dst, dtype=torch.bool)
    for j, readers in enumerate(graph.port_nodes):
        read[j] = any(bool(kept[r]) if r < graph.n_src else True for r in readers)
    return read


def induced_edges(kept: torch.Tensor, graph: ComputeGraph) -> torch.Tensor:
    """The edge mask of a node set: kept [n_src] bool -> [n_src, n_dst] bool, every valid edge
    from a kept source into a port of a kept node or into logits."""
    kept = _checked_nodes(kept, graph)
    return graph.valid & kept[:, None] & port_read_by(kept, graph)[None, :]


def kept_components(mask: torch.Tensor, graph: ComputeGraph) -> torch.Tensor:
    """``kept_nodes`` without ``input``: the heads and MLPs a circuit keeps, [n_src] bool."""
    return kept_nodes(mask, graph) & selectable_nodes(graph)


def kept_nodes(mask: torch.Tensor, graph: ComputeGraph) -> torch.Tensor:
    """The source nodes a circuit keeps: [n_src, n_dst] bool -> [n_src] bool, the sources with
    at least one kept outgoing edge (for an induced mask after pruning: the kept nodes that
    lie on an input -> logits path)."""
    if tuple(mask.shape) != (graph.n_src, graph.n_dst):
        raise AcdError(
            f"mask has shape {tuple(mask.shape)}, expected ({graph.n_src}, {graph.n_dst})"
        )
    return (mask.bool().cpu() & graph.valid).any(dim=1)


def node_names(kept: torch.Tensor, graph: ComputeGraph) -> list[str]:
    """Names of the kept source nodes, in source order."""
    kept = _checked_nodes(kept, graph)
    return [node.name for node, keep in zip(graph.sources, kept.tolist()) if keep]


def node_scores_by_name(scores: torch.Tensor, graph: ComputeGraph) -> dict[str, float]:
    """scores [n_src] -> {source name: score} (``Circuit.node_scores``)."""
    if tuple(scores.shape) != (graph.n_src,):
        raise AcdError(f"node scores have shape {tuple(scores.shape)}, expected ({graph.n_src},)")
    return {node.name: float(s) for node, s in zip(graph.sources, scores.tolist())}


def node_scores_tensor(scores: dict[str, float], graph: ComputeGraph) -> torch.Tensor:
    """{source name: score} -> [n_src] float64 (0 for a node without a score)."""
    out = torch.zeros(graph.n_src, dtype=torch.float64)
    for name, value in scores.items():
        if name in graph.src_index:
            out[graph.src_index[name]] = float(value)
    return out


def _checked_nodes(kept: torch.Tensor, graph: ComputeGraph) -> torch.Tensor:
    if tuple(kept.shape) != (graph.n_src,):
        raise AcdError(f"node mask has shape {tuple(kept.shape)}, expected ({graph.n_src},)")
    return kept.detach().bool().cpu()
