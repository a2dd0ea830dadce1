"""``acd render`` and ``acd compare``: commands on saved circuit files that run no model."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from acd.circuit_files import check_comparable, load_circuit_file
from acd.cli.common import diagram_formats, figure, table
from acd.errors import AcdError
from acd.outputs import render_stem
from acd.preflight import check_out_file, check_out_stem

# The attention patterns a page shows, looked for beside the circuit file (acd discover
# writes them there).
ATTENTION_FILE = "attention.json"


def cmd_render(args: argparse.Namespace) -> int:
    """Draw the circuit with Graphviz and/or as the interactive page (``--format html``) and
    print the files written."""
    from acd.diagram import write_diagram
    from acd.export.html_page import read_curve_json, write_circuit_html

    formats = diagram_formats(args.format)
    if args.curve and "html" not in formats:
        raise AcdError("--curve is for the interactive page: add --format html")
    circuit = load_circuit_file(args.circuit)
    stem = render_stem(args.out, args.circuit)
    check_out_stem(stem)
    curve = read_curve_json(args.curve, circuit.method) if args.curve else None
    paths, message = [], None
    graphviz = [f for f in formats if f != "html"]
    if graphviz:
        result = write_diagram(circuit, stem, graphviz, max_edges=args.max_edges)
        paths, message = result.paths, result.message
    if "html" in formats:
        page = stem.with_name(stem.name + ".html")
        attention = attention_beside(args.circuit, circuit.graph)
        paths.append(write_circuit_html(circuit, page, attention=attention, curve=curve))
    print("wrote " + ", ".join(str(p) for p in paths))
    if message:
        print(message)
    return 0


def attention_beside(circuit_file: str | Path, graph) -> dict | None:
    """The attention patterns of attention.json in the circuit file's folder, checked against
    the circuit's graph, or None when there is none there."""
    from acd.export.html_page import check_attention, read_attention_json

    path = Path(circuit_file).with_name(ATTENTION_FILE)
    if not path.is_file():
        return None
    try:
        return check_attention(read_attention_json(path), graph)
    except AcdError as err:
        message = str(err)
        raise AcdError(message if message.startswith(str(path)) else f"{path}: {message}") from None


def cmd_compare(args: argparse.Namespace) -> int:
    """Print the overlap figures of circuits A and B, then the edges only one of them has."""
    from acd.comparison import compare

    if args.html:
        check_out_file(args.html, "--html")
    a, b = load_circuit_file(args.a), load_circuit_file(args.b)
    check_comparable(a, b, args.a, args.b)
    attention = attention_beside(args.a, a.graph) if args.html else None  # refused before output
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
    if args.html:
        from acd.export.html_page import write_circuit_html

        # The overlay compares plain edges (as the figures above do): a positional A is drawn
        # by its plain view, each plain edge kept when any of its positional parts is.
        shown = a if a.positional is None else dataclasses.replace(a, positional=None)
        page = write_circuit_html(
            shown,
            args.html,
            attention=attention,
            reference=b.mask,
            reference_name=f"B ({Path(args.b).name})",
        )
        view = "" if a.positional is None else ", A's plain edges"
        print(f"\nwrote {page} (A's page with B overlaid{view})")
    return 0


def _print_edges(label: str, edges: list, limit: int) -> None:
    """``edges`` under ``label``, the first ``limit`` of them one a line."""
    print(f"\n{label}: {len(edges):,} edges")
    for src, dst in edges[:limit]:
        print(f"  {src} -> {dst}")
    if len(edges) > limit:
        print(f"  ... and {len(edges) - limit:,} more (--list N shows more)")
