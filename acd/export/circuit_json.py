"""circuit.json: the whole Circuit as JSON (format ``acd-circuit``, version 1); its reader
gives the circuit back bit for bit (schema: ``acd.formats.circuit``, docs/formats.md)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from acd.atomic import atomic_write
from acd.circuit import Circuit
from acd.errors import AcdError
from acd.export._json import read_json
from acd.export.eapig import eapig_from_dict
from acd.formats.circuit import FORMAT, FORMAT_VERSION, parse_circuit
from acd.graph import ComputeGraph
from acd.heldout import PromptSplit, TaskSource


def circuit_to_dict(circuit: Circuit) -> dict[str, Any]:
    """The circuit.json document (format ``acd-circuit``, version 1) as plain JSON data.

    ``scores`` holds every valid edge's score, a flat list of ``graph.n_edges`` floats in
    row-major order of ``graph.valid`` ([n_src, n_dst]: source by source, and within a source
    destination by destination), the order of ``circuit.edge_scores``.
    """
    graph = circuit.graph
    _check_finite_scores(circuit)
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "task": circuit.task,
        "model": {"name": circuit.model, "sha256": circuit.model_sha256},
        "method": circuit.method,
        # Optional: "node" for a node-level circuit (acd.nodes); absent means "edge".
        **({"level": circuit.level} if circuit.level != "edge" else {}),
        "params": _encode(circuit.params),
        "seed": circuit.seed,
        "metrics": _encode(circuit.metrics),
        "versions": dict(circuit.versions),
        "created": circuit.created,
        "graph": _shape_dict(graph),
        "edges": [list(edge) for edge in circuit.edges],
        # float(x) of a float32 is exact, and its repr reads back to the same float32 bits.
        "scores": _encode(circuit.scores[graph.valid].tolist()),
        "node_scores": _encode({k: float(v) for k, v in circuit.node_scores.items()}),
        # Optional: role scores of the heads (acd.roles), head name -> {role: score}.
        **(
            {
                "node_roles": {
                    name: {role: float(v) for role, v in roles.items()}
                    for name, roles in circuit.node_roles.items()
                }
            }
            if circuit.node_roles
            else {}
        ),
        # Optional (absent when unknown): where the task came from, how prompts were split.
        **({"task_source": circuit.task_source.to_dict()} if circuit.task_source else {}),
        **({"prompt_split": circuit.prompt_split.to_dict()} if circuit.prompt_split else {}),
        # Optional: the trust report's per-edge inclusion frequency, one per kept edge.
        **(
            {"edge_inclusion": circuit.edge_inclusion[circuit.mask].tolist()}
            if circuit.edge_inclusion is not None
            else {}
        ),
        # Optional: a positional circuit's spans, positional edges and scores.
        **({"positions": _positions_dict(circuit)} if circuit.positional is not None else {}),
    }


def _positions_dict(circuit: Circuit) -> dict[str, Any]:
    """circuit.json's ``positions``: the spans, the positional graph's edge rules, the kept
    positional edges and every valid positional edge's score (row-major over
    [n_src, P, n_dst, P])."""
    positional = circuit.positional
    assert positional is not None  # asked only for positional circuits
    pgraph = positional.graph
    bad = pgraph.valid & ~positional.scores.isfinite()
    if bool(bad.any()):
        raise AcdError(
            f"cannot write the circuit: {int(bad.sum())} positional edge scores are not finite"
        )
    return {
        "spans": list(pgraph.spans),
        "present": pgraph.present.tolist(),
        "order": pgraph.order.tolist(),
        "scored": pgraph.scored.tolist(),
        "edges": [list(edge) for edge in positional.edges],
        "scores": positional.scores[pgraph.valid].tolist(),
    }


def circuit_json(circuit: Circuit) -> str:
    """circuit.json's text: indented for reading, with the (long) scores list on one line."""
    document = circuit_to_dict(circuit)
    edges, scores = document.pop("edges"), document.pop("scores")
    positions = document.pop("positions", None)
    text = json.dumps(document, indent=1, allow_nan=False)
    if positions is not None:  # its lists on one line each (thousands of scores)
        inner = ",\n  ".join(
            f"{json.dumps(key)}: {json.dumps(value, separators=(',', ':'), allow_nan=False)}"
            for key, value in positions.items()
        )
        text = text[: text.rindex("}")].rstrip() + f',\n "positions": {{\n  {inner}\n }}\n}}'

    # Append the edges (one pair per line) and the scores (one line) before the closing brace:
    # json.dumps(indent=1) would give each of the ~32k scores a line of its own.
    pairs = ",\n  ".join(json.dumps(edge) for edge in edges)
    edges_text = f"[\n  {pairs}\n ]" if edges else "[]"
    scores_text = json.dumps(scores, separators=(",", ":"), allow_nan=False)
    head = text[: text.rindex("}")].rstrip()
    return f'{head},\n "edges": {edges_text},\n "scores": {scores_text}\n}}\n'


def save_circuit_json(circuit: Circuit, path: str | Path) -> Path:
    """Write ``circuit`` to ``path`` as circuit.json, atomically."""
    return atomic_write(path, circuit_json(circuit))


def load_circuit(path: str | Path) -> Circuit:
    """Read a circuit.json written by ``save_circuit_json`` (or ``Circuit.save``).

    The file is checked against its schema (``acd.formats.circuit``, docs/formats.md) once:
    any problem (a missing or unreadable file, text that is not JSON, another format or
    version, a field of the wrong type, a non-finite score, a name the graph does not have,
    the wrong number of scores) is one AcdError line naming the file and the field.
    """
    return circuit_from_dict(read_json(path), source=str(path))


def load_any_circuit(path: str | Path) -> Circuit:
    """A circuit.json of acd, or an EAP-IG / MIB graph JSON (recognised by its "cfg" key),
    read once and checked against its schema; every problem is one AcdError line."""
    document = read_json(path)
    if isinstance(document, dict) and "cfg" in document and "edges" in document:
        return eapig_from_dict(document, source=str(path))
    return circuit_from_dict(document, source=str(path))


def circuit_from_dict(document: Any, *, source: str = "circuit.json") -> Circuit:
    """The Circuit a circuit.json document describes (checked by
    ``acd.formats.circuit.parse_circuit``); ``source`` names it in errors."""
    parsed = parse_circuit(document, source)
    doc = parsed.document
    return Circuit(
        graph=parsed.graph,
        mask=parsed.mask,
        scores=parsed.scores,
        task=doc.task,
        model=doc.model.name,
        method=doc.method,
        params=parsed.params,
        seed=doc.seed,
        metrics=parsed.metrics,
        node_scores=dict(doc.node_scores),
        level=doc.level,
        node_roles={name: dict(roles) for name, roles in doc.node_roles.items()},
        model_sha256=doc.model.sha256,
        versions=dict(doc.versions),
        created=doc.created,
        task_source=TaskSource(**doc.task_source.model_dump()) if doc.task_source else None,
        prompt_split=PromptSplit(**doc.prompt_split.model_dump()) if doc.prompt_split else None,
        edge_inclusion=parsed.edge_inclusion,
        positional=parsed.positional,
    )


def _check_finite_scores(circuit: Circuit) -> None:
    """circuit.json holds finite scores only (its reader refuses NaN and infinities, which
    would draw as grey, zero-width edges): refuse to write a circuit that has others."""
    graph = circuit.graph
    bad = graph.valid & ~circuit.scores.isfinite()
    if bool(bad.any()):
        i, j = (int(x) for x in bad.nonzero()[0])
        raise AcdError(
            f"cannot write the circuit: {int(bad.sum())} edge scores are not finite (e.g. "
            f"{graph.sources[i].name} -> {graph.destinations[j].name}: "
            f"{float(circuit.scores[i, j])}); the scoring produced NaN or infinity"
        )
    for name, value in circuit.node_scores.items():
        if not math.isfinite(float(value)):
            raise AcdError(f"cannot write the circuit: node {name}'s score is {float(value)}")


def _shape_dict(graph: ComputeGraph) -> dict[str, Any]:
    shape = graph.shape
    return {
        "n_layers": shape.n_layers,
        "n_heads": shape.n_heads,
        "n_kv_heads": shape.n_kv_heads,
        "has_mlp": shape.has_mlp,
        "parallel_attn_mlp": shape.parallel_attn_mlp,
        "n_src": graph.n_src,
        "n_dst": graph.n_dst,
        "n_edges": graph.n_edges,
    }


def _encode(value: Any) -> Any:
    """JSON-ready copy: non-finite floats become "NaN" / "Infinity" / "-Infinity"; tuples
    become lists; anything else unknown becomes its str."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_encode(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return _encode(value.item())
    return str(value)
