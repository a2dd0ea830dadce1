"""Reading saved circuits back for the commands that take circuit files, and checking that
two circuits (or a circuit and a model) are of one graph before they are compared."""

from __future__ import annotations

from pathlib import Path

from acd.errors import AcdError


def load_circuit_file(path: str):
    """A circuit.json of acd, or an EAP-IG / MIB graph JSON, checked against its schema;
    a missing file is one AcdError line."""
    from acd.export import load_any_circuit

    if not Path(path).is_file():
        raise AcdError(f"no circuit file at {path}")
    return load_any_circuit(path)


def same_graph(a, b) -> bool:
    """Whether the ComputeGraphs ``a`` and ``b`` have the same sources, destinations and valid
    edges, so that masks and scores of one apply to the other."""
    return (a.n_src, a.n_dst) == (b.n_src, b.n_dst) and bool((a.valid == b.valid).all())


def check_comparable(a, b, name_a: str, name_b: str) -> None:
    """Refuse (AcdError) to compare circuits ``a`` and ``b`` (read from ``name_a`` and
    ``name_b``) of different graphs."""
    if not same_graph(a.graph, b.graph):
        raise AcdError(
            f"{name_a} and {name_b} are circuits of different graphs "
            f"({a.graph.n_src} x {a.graph.n_dst} vs {b.graph.n_src} x {b.graph.n_dst})"
        )
