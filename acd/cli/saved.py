"""``acd render`` and ``acd compare``: commands on saved circuit files that run no model."""

from __future__ import annotations

import argparse

from acd.circuit_files import check_comparable, load_circuit_file
from acd.cli.common import diagram_formats, figure, table
from acd.outputs import render_stem
from acd.preflight import check_out_stem


def cmd_render(args: argparse.Namespace) -> int:
    """Draw the circuit with Graphviz and print the files written."""
    from acd.diagram import write_diagram

    circuit = load_circuit_file(args.circuit)
    stem = render_stem(args.out, args.circuit)
    check_out_stem(stem)
    formats = diagram_formats(args.format)
    result = write_diagram(circuit, stem, formats, max_edges=args.max_edges)
    print("wrote " + ", ".join(str(p) for p in result.paths))
    if result.message:
        print(result.message)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Print the overlap figures of circuits A and B, then the edges only one of them has."""
    from acd.comparison import compare

    a, b = load_circuit_file(args.a), load_circuit_file(args.b)
    check_comparable(a, b, args.a, args.b)
    c = compare(a.graph, a.mask, b.mask)
    both = int((a.mask & b.mask).sum())
    union = int((a.mask | b.mask).sum())
    print(f"A: {args.a} ({a.n_edges:,} edges)\nB: {args.b} ({b.n_edges:,} edges)\n")
    rows = [("figure", "edges", "nodes")]
    rows += [
        ("precision (of A against B)", figure(c.edge_precision), figure(c.node_precision)),
        ("recall (of B by A)", figure(c.edge_recall), figure(c.node_recall)),
        ("F1", figure(c.edge_f1), figure(c.node_f1)),
        ("Jaccard |A & B| / |A | B|", figure(both / union if union else 1.0), ""),
        ("in both", f"{both:,}", ""),
    ]
    if a.mask.any() and a.scores.abs().sum() > 0:
        ranked = compare(a.graph, a.scores, b.mask)
        rows.append(
            (
                "ROC AUC of A's scores for B",
                figure(ranked.edge_roc_auc),
                figure(ranked.node_roc_auc),
            )
        )
    print(table(rows))
    only_a = a.graph.edge_names(a.mask & ~b.mask)
    only_b = a.graph.edge_names(b.mask & ~a.mask)
    for label, edges in [("only in A", only_a), ("only in B", only_b)]:
        _print_edges(label, edges, args.list)
    return 0


def _print_edges(label: str, edges: list, limit: int) -> None:
    """``edges`` under ``label``, the first ``limit`` of them one a line."""
    print(f"\n{label}: {len(edges):,} edges")
    for src, dst in edges[:limit]:
        print(f"  {src} -> {dst}")
    if len(edges) > limit:
        print(f"  ... and {len(edges) - limit:,} more (--list N shows more)")
