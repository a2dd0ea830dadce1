"""EAP-IG's graph JSON: hannamw/EAP-IG's ``Graph.to_json`` / ``Graph.from_json`` (also MIB's);
the reader's schema is ``acd.formats.eapig``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from acd.atomic import atomic_write
from acd.circuit import Circuit
from acd.errors import AcdError
from acd.export._json import read_json
from acd.formats.eapig import parse_eapig


def eapig_dict(
    circuit: Circuit, *, d_model: int | None = None, legacy_nodes: bool = False
) -> dict[str, Any]:
    """hannamw/EAP-IG's ``Graph.to_json`` document for ``circuit``.

    ``{"cfg": {n_layers, n_heads, parallel_attn_mlp[, d_model][, attn_only]},
    "nodes": {name: {"in_graph": bool[, "score": float]}},
    "edges": {"src->dst": {"score": float, "in_graph": bool}}}``. Nodes are in the graph when a
    kept edge touches them. ``legacy_nodes`` writes nodes as ``{name: bool}``, the form of older
    EAP-IG versions and of MIB's ``load_graph_from_json``. Current EAP-IG's ``from_json`` needs
    ``d_model`` (default: ``circuit.params["d_model"]`` when recorded; otherwise left out).

    EAP-IG has one key and one value input per query head, so grouped-query circuits (whose
    k/v ports belong to a group of heads) are refused.
    """
    graph = circuit.graph
    if graph.n_kv_heads != graph.n_heads:
        raise AcdError(
            f"EAP-IG's graph format has no grouped-query ports; this circuit's graph has "
            f"{graph.n_kv_heads} key/value heads for {graph.n_heads} query heads"
        )
    cfg: dict[str, Any] = {
        "n_layers": graph.n_layers,
        "n_heads": graph.n_heads,
        "parallel_attn_mlp": graph.shape.parallel_attn_mlp,
    }
    d_model = d_model if d_model is not None else circuit.params.get("d_model")
    if d_model is not None:
        cfg["d_model"] = int(d_model)
    if not graph.shape.has_mlp:
        cfg["attn_only"] = True  # TransformerLens's name; EAP-IG ignores it (see docs)
    used = set(circuit.nodes)
    nodes: dict[str, Any] = {}
    for name in graph.nodes:
        entry: dict[str, Any] = {"in_graph": name in used}
        if name in circuit.node_scores:
            entry["score"] = float(circuit.node_scores[name])
        nodes[name] = entry["in_graph"] if legacy_nodes else entry
    valid = graph.valid
    names = graph.edge_names(valid)
    kept = circuit.mask[valid].tolist()
    values = circuit.scores[valid].tolist()
    edges = {
        f"{src}->{dst}": {"score": score, "in_graph": bool(k)}
        for (src, dst), score, k in zip(names, values, kept)
    }
    return {"cfg": cfg, "nodes": nodes, "edges": edges}


def write_eapig_json(
    circuit: Circuit,
    path: str | Path,
    *,
    d_model: int | None = None,
    legacy_nodes: bool = False,
) -> Path:
    """Write ``circuit`` in EAP-IG's graph JSON (``eapig_dict``), atomically."""
    document = eapig_dict(circuit, d_model=d_model, legacy_nodes=legacy_nodes)
    return atomic_write(path, json.dumps(document))  # EAP-IG writes NaN as Python's json does


def read_eapig_json(
    path: str | Path, *, task: str = "", model: str = "", method: str = ""
) -> Circuit:
    """A Circuit from an EAP-IG (or MIB) graph JSON: graph from ``cfg``, mask from the edges'
    ``in_graph``, scores from their ``score`` (None -> 0), node scores from the nodes' ``score``
    where present and not NaN (EAP-IG's "no score"). Both node forms are read."""
    return eapig_from_dict(read_json(path), source=str(path), task=task, model=model, method=method)


def eapig_from_dict(
    document: Any, *, source: str = "EAP-IG JSON", task: str = "", model: str = "", method: str = ""
) -> Circuit:
    """The Circuit an EAP-IG graph document describes (``read_eapig_json``); ``source`` names
    it in errors."""
    parsed = parse_eapig(document, source)  # the schema: acd.formats.eapig
    return Circuit(
        graph=parsed.graph,
        mask=parsed.mask,
        scores=parsed.scores,
        task=task,
        model=model,
        method=method,
        node_scores=parsed.node_scores,
    )
