"""The kept edges as a networkx MultiDiGraph, and its files: circuit.graphml (GraphML) and
circuit.nodelink.json (node-link JSON)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import networkx as nx

from acd.atomic import atomic_paths, atomic_write
from acd.circuit import Circuit
from acd.errors import AcdError
from acd.export._json import finite_or_none, read_json
from acd.graph import ComputeGraph


def to_networkx(circuit: Circuit) -> nx.MultiDiGraph:
    """The kept edges as a networkx MultiDiGraph, one networkx edge per circuit edge.

    Nodes are ``circuit.nodes`` (GQA key/value groups such as ``a3.g0`` included) with
    attributes ``kind`` ("input" | "head" | "mlp" | "logits" | "kv_group"), ``layer`` (input -1,
    logits ``n_layers``), ``head`` and ``group`` (-1 where none) and ``score`` (the node's score
    from ``circuit.node_scores`` when present, else the sum of |score| of its kept outgoing
    edges; always a float, since GraphML cannot store None).

    An edge goes from the source node to the node that reads it (``Port.node``) and is keyed by
    the destination port's name, e.g. ``"a2.h3<q>"``: one source feeding a head's query, key and
    value inputs gives three parallel edges, which a DiGraph would merge into one. Edge
    attributes: ``score`` (float), ``port`` ("q" | "k" | "v" | "none") and, when the trust report
    measured stability, ``inclusion`` (the share of prompt resamples keeping the edge). Heads
    with role scores (``circuit.node_roles``) also carry ``role_<role>`` floats and ``roles``,
    their badges (``acd.roles.role_badges``) as one string. The graph
    attribute ``level`` is ``edge`` or ``node`` (acd.nodes).
    """
    graph = circuit.graph
    G = nx.MultiDiGraph()
    G.graph.update(_graph_attributes(circuit))
    out_weight = _kept_out_weight(circuit)
    for name in circuit.nodes:
        attrs = _node_attributes(graph, name)
        score = circuit.node_scores.get(name, out_weight.get(name, 0.0))
        G.add_node(name, **attrs, score=float(score), **_role_attributes(circuit, name))
    inclusion = circuit.edge_inclusion
    for i, j in circuit.mask.nonzero().tolist():
        port = graph.destinations[j]
        G.add_edge(
            graph.sources[i].name,
            port.node,
            key=port.name,
            score=float(circuit.scores[i, j]),
            port=port.kind if port.kind in ("q", "k", "v") else "none",
            **({} if inclusion is None else {"inclusion": float(inclusion[i, j])}),
        )
    return G


def nodelink_json(G: nx.MultiDiGraph) -> str:
    """``G`` as node-link JSON text (``nx.node_link_data(G, edges="edges")``); non-finite
    floats are written as null, so the text is strict JSON."""
    data = finite_or_none(nx.node_link_data(G, edges="edges"))
    return json.dumps(data, indent=1, allow_nan=False) + "\n"


def write_graphml(circuit: Circuit, path: str | Path) -> Path:
    """Write ``to_networkx(circuit)`` as GraphML, atomically (int, float and str types kept)."""
    with atomic_paths([path]) as (tmp,):
        nx.write_graphml(to_networkx(circuit), tmp)
    return Path(path)


def write_nodelink(circuit: Circuit, path: str | Path) -> Path:
    """Write ``to_networkx(circuit)`` as node-link JSON (``nodelink_json``), atomically."""
    return atomic_write(path, nodelink_json(to_networkx(circuit)))


def read_networkx(path: str | Path) -> nx.MultiDiGraph:
    """Read circuit.graphml or circuit.nodelink.json back into a MultiDiGraph (by suffix:
    ``.graphml`` is GraphML, anything else node-link JSON)."""
    path = Path(path)
    if not path.is_file():
        raise AcdError(f"{path}: no such file")
    if path.suffix.lower() == ".graphml":
        # edge_key_type=str: the keys are port names; the default int would try to convert them.
        G = nx.read_graphml(path, force_multigraph=True, edge_key_type=str)
        # networkx's GraphML reader adds these bookkeeping entries; they are not ours.
        for key in ("node_default", "edge_default"):
            if not G.graph.get(key):
                G.graph.pop(key, None)
        return G
    data = read_json(path)
    return nx.node_link_graph(data, directed=True, multigraph=True, edges="edges")


def _graph_attributes(circuit: Circuit) -> dict[str, Any]:
    """Graph-level attributes; None values are left out (GraphML cannot store None)."""
    attrs: dict[str, Any] = {
        "task": circuit.task,
        "model": circuit.model,
        "method": circuit.method,
        "level": circuit.level,
        "n_edges": circuit.n_edges,
        "seed": int(circuit.seed),
    }
    if circuit.model_sha256:
        attrs["model_sha256"] = circuit.model_sha256
    faithfulness = circuit.metrics.get("faithfulness")
    if isinstance(faithfulness, int | float) and not isinstance(faithfulness, bool):
        attrs["faithfulness"] = float(faithfulness)
    return attrs


def _role_attributes(circuit: Circuit, name: str) -> dict[str, Any]:
    """A head's role scores (``circuit.node_roles``, acd.roles) as ``role_<name>`` floats and
    its badges as one space-separated string ``roles``; nothing for a head without scores."""
    from acd.roles import role_badges

    scores = circuit.node_roles.get(name)
    if not scores:
        return {}
    attrs: dict[str, Any] = {f"role_{role}": float(v) for role, v in scores.items()}
    attrs["roles"] = " ".join(role_badges(scores))
    return attrs


def _node_attributes(graph: ComputeGraph, name: str) -> dict[str, Any]:
    """kind, layer, head and group of a node (a source, logits or a GQA kv group); -1 where
    the node has none, since GraphML cannot store None."""
    node = graph.node(name)
    return {
        "kind": node.kind,
        "layer": int(graph.node_layers[graph.node_index[name]]),  # input -1, logits n_layers
        "head": -1 if node.head is None else node.head,
        "group": -1 if node.group is None else node.group,
    }


def _kept_out_weight(circuit: Circuit) -> dict[str, float]:
    """Sum of |score| over each source's kept outgoing edges, by source name."""
    weights = (circuit.scores.abs() * circuit.mask).sum(dim=1).tolist()  # [n_src]
    return {node.name: w for node, w in zip(circuit.graph.sources, weights)}
