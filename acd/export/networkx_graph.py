"""The kept edges as a networkx MultiDiGraph, and its files: circuit.graphml (GraphML) and
circuit.nodelink.json (node-link JSON).

A positional circuit (``circuit.positional``, acd.positional) gives the positional graph: one
node per (node, span), named ``name@span``, and one edge per kept positional edge;
``to_networkx(circuit, aggregate=True)`` gives its plain-graph view instead."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import networkx as nx

from acd.atomic import atomic_paths, atomic_write
from acd.circuit import Circuit
from acd.errors import AcdError
from acd.export._json import finite_or_none, read_json
from acd.graph import ComputeGraph

if TYPE_CHECKING:
    from acd.positional.graph import PositionalCircuit

# GraphML has no list type: the graph attribute ``spans`` is the span names joined by this.
SPAN_SEPARATOR = ","


def to_networkx(circuit: Circuit, *, aggregate: bool = False) -> nx.MultiDiGraph:
    """The kept edges as a networkx MultiDiGraph, one networkx edge per circuit edge.

    A positional circuit gives its positional graph (``positional_networkx``) unless
    ``aggregate`` is True: then, as for any plain circuit, the graph of its plain ``mask`` and
    ``scores`` (each plain edge with a kept positional part, scores summed over the spans).

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
    if circuit.positional is not None and not aggregate:
        return positional_networkx(circuit, circuit.positional)
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


def positional_networkx(circuit: Circuit, positional: PositionalCircuit) -> nx.MultiDiGraph:
    """The kept positional edges as a MultiDiGraph: one networkx edge per positional edge.

    Nodes are ``name@span`` (``a0.h1@S1``, ``logits@END``), one for each (node, span) that a
    kept positional edge touches, in graph order and, within a node, span order. They carry
    ``node`` (the plain name) and ``span`` besides the plain graph's attributes (``kind``,
    ``layer``, ``head``, ``group``, role scores); ``score`` is the sum of |score| of the
    node's kept outgoing positional edges. An edge goes from ``u@p`` to ``v@q`` (v the node
    reading the port), keyed by its destination's positional name (``a1.h2<k>@END``), with
    ``score``, ``port``, ``span_src``, ``span_dst`` and, when the trust report measured it,
    ``inclusion``: the share of prompt resamples keeping its *plain* edge (stability is
    measured per plain edge). Graph attributes: the plain ones, with ``n_edges`` counting
    positional edges, ``n_plain_edges`` the plain ones and ``spans`` the span names in order,
    joined by "," (GraphML has no lists).
    """
    graph, pgraph = circuit.graph, positional.graph
    spans = pgraph.spans
    G = nx.MultiDiGraph()
    G.graph.update(_graph_attributes(circuit))
    G.graph["n_edges"] = positional.n_edges
    G.graph["n_plain_edges"] = circuit.n_edges
    G.graph["spans"] = SPAN_SEPARATOR.join(spans)
    # sum of |score| of each source's kept positional edges at each of its spans: [n_src, P]
    out_weight = (positional.scores.abs() * positional.mask).sum(dim=(2, 3))
    for node_id, p in _touched_nodes_at_spans(positional):
        name = graph.nodes[node_id]
        source = graph.src_index.get(name)  # None for logits and kv groups: no outputs
        G.add_node(
            f"{name}@{spans[p]}",
            node=name,
            span=spans[p],
            **_node_attributes(graph, name),
            score=0.0 if source is None else float(out_weight[source, p]),
            **_role_attributes(circuit, name),
        )
    inclusion = circuit.edge_inclusion
    for u, p, v, q in positional.kept_index():
        port = graph.destinations[v]
        src_name, dst_name = pgraph.edge_name(u, p, v, q)
        G.add_edge(
            src_name,
            f"{port.node}@{spans[q]}",
            key=dst_name,
            score=float(positional.scores[u, p, v, q]),
            port=port.kind if port.kind in ("q", "k", "v") else "none",
            span_src=spans[p],
            span_dst=spans[q],
            **({} if inclusion is None else {"inclusion": float(inclusion[u, v])}),
        )
    return G


def _touched_nodes_at_spans(positional: PositionalCircuit) -> list[tuple[int, int]]:
    """(node id, span index) of each end of a kept positional edge (a port's end is the node
    reading it: with GQA a k/v port's kv group), sorted: graph order, then span order."""
    graph = positional.graph.graph
    touched = set()
    for u, p, v, q in positional.kept_index():
        touched.add((int(graph.src_node_ids[u]), p))
        touched.add((int(graph.dst_node_ids[v]), q))
    return sorted(touched)


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
