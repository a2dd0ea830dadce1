"""The schema of EAP-IG's graph JSON (hannamw/EAP-IG ``Graph.to_json``; MIB's circuit files).

    {"cfg": {"n_layers": int, "n_heads": int, "parallel_attn_mlp": bool, "d_model": int, ...},
     "nodes": {name: {"in_graph": bool, "score": float}} or {name: bool} (older EAP-IG, MIB),
     "edges": {"src->dst": {"score": float | null, "in_graph": bool}}}

``parse_eapig(document, source)`` checks a parsed document once and returns the graph, the
kept-edge mask, the scores and the node scores. The file is another project's, so ``cfg``
may hold more keys (EAP-IG copies TransformerLens's config into it; they are ignored), and a
node may carry neuron-level fields (``neurons``, ``neurons_scores``; ignored, acd's graphs are
edge level). Python's ``json`` writes NaN literally, and EAP-IG's "no score" of a node is NaN,
so a node's score may be NaN; an edge's score must be finite (or null: 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any

import torch
from pydantic import BaseModel, BeforeValidator, ConfigDict, PlainValidator

from acd.errors import AcdError
from acd.formats.common import Expected, FiniteFloat, Positive, Strict, finite_number, validate
from acd.graph import ComputeGraph, GraphShape

# The largest dense [n_src, n_dst] graph a file may ask for: 2^27 entries, beyond any model
# MIB or EAP-IG has scored (Llama-3-70B's EAP-IG graph has 8 x 10^7); a mistyped n_layers of
# 10^6 must be refused, not allocated.
MAX_GRAPH_ENTRIES = 2**27


def _node_score(value: Any) -> float | None:
    """A node's score: a finite number, NaN (EAP-IG's "no score") or null (none)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if value is None:
        return None
    try:
        return finite_number(value)
    except Expected:
        raise Expected("expected a finite number, NaN (no score) or null") from None


class Cfg(BaseModel):
    """The model facts the graph depends on; other keys of EAP-IG's cfg are ignored."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)

    n_layers: Positive
    n_heads: Positive
    parallel_attn_mlp: bool = False
    attn_only: bool = False  # TransformerLens's name; acd writes it for attention-only graphs
    d_model: Positive | None = None


class Node(Strict):
    in_graph: bool
    score: Annotated[float | None, PlainValidator(_node_score)] = None
    neurons: Any = None  # neuron-level circuits: acd reads them at edge level
    neurons_scores: Any = None


class Edge(Strict):
    score: FiniteFloat | None = None  # None (hand-written files): 0
    in_graph: bool = False


def _legacy_node(value: Any) -> Any:
    """Older EAP-IG and MIB write a node as its in_graph bool alone."""
    return {"in_graph": value} if isinstance(value, bool) else value


class EapigFile(BaseModel):
    """The whole file; other top-level keys are ignored (another project's format)."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)

    cfg: Cfg
    nodes: dict[str, Annotated[Node, BeforeValidator(_legacy_node)]]
    edges: dict[str, Edge]


@dataclass
class ParsedEapig:
    graph: ComputeGraph
    mask: torch.Tensor  # [n_src, n_dst] bool
    scores: torch.Tensor  # [n_src, n_dst] float32
    node_scores: dict[str, float]
    cfg: Cfg


def parse_eapig(data: Any, source: str = "EAP-IG JSON") -> ParsedEapig:
    """Check a parsed EAP-IG graph document (module docstring); AcdError in one line."""
    if not isinstance(data, dict):
        raise AcdError(f"{source}: not an EAP-IG graph (expected an object with cfg, nodes, edges)")
    document = validate(EapigFile, data, source)
    graph = _graph(document.cfg, source)
    mask = torch.zeros(graph.n_src, graph.n_dst, dtype=torch.bool)
    scores = torch.zeros(graph.n_src, graph.n_dst, dtype=torch.float32)
    rows, cols, values = [], [], []
    for name, edge in document.edges.items():
        src, _, dst = name.partition("->")
        try:
            i, j = graph.edge_index(src, dst)
        except KeyError:
            raise AcdError(
                f"{source}: edges: edge {name!r} is not in a {graph.n_layers}-layer, "
                f"{graph.n_heads}-head graph"
            ) from None
        rows.append(i)
        cols.append(j)
        values.append(0.0 if edge.score is None else edge.score)  # None (hand-written): 0
        mask[i, j] = edge.in_graph
    # Through float64: a score finite in JSON but beyond float32's range becomes inf here.
    as_float32 = torch.tensor(values, dtype=torch.float64).to(torch.float32)
    if not bool(as_float32.isfinite().all()):
        raise AcdError(f"{source}: edges: a score is beyond the range of a float32")
    scores[rows, cols] = as_float32
    known = set(graph.nodes)
    node_scores = {}
    for name, node in document.nodes.items():
        if name not in known:
            raise AcdError(f"{source}: nodes: node {name!r} is not in this graph")
        if node.score is not None:
            node_scores[name] = node.score
    return ParsedEapig(graph, mask, scores, node_scores, document.cfg)


def _graph(cfg: Cfg, source: str) -> ComputeGraph:
    """The graph of a cfg; EAP-IG's k/v inputs are per head, so n_kv_heads = n_heads."""
    shape = GraphShape(
        n_layers=cfg.n_layers,
        n_heads=cfg.n_heads,
        n_kv_heads=cfg.n_heads,
        has_mlp=not cfg.attn_only,
        parallel_attn_mlp=cfg.parallel_attn_mlp,
    )
    per_layer = cfg.n_heads + (0 if cfg.attn_only else 1)
    n_src, n_dst = 1 + cfg.n_layers * per_layer, cfg.n_layers * (2 * cfg.n_heads + per_layer) + 1
    if n_src * n_dst > MAX_GRAPH_ENTRIES:
        raise AcdError(
            f"{source}: cfg: a {cfg.n_layers}-layer, {cfg.n_heads}-head graph is larger than "
            f"acd reads ({n_src} x {n_dst} > {MAX_GRAPH_ENTRIES} entries)"
        )
    return ComputeGraph(shape)
