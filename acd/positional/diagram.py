"""The Graphviz diagram of a positional circuit (``acd.diagram.circuit_dot`` draws it when
``circuit.positional`` is set): where each edge acts.

A grid: the prompt's spans are **columns**, left to right in the spans' order, headed by the
span's name and parted by faint vertical lines; the layers are **rows**, bottom to top as in the
plain diagram (``input``, per layer a row of heads and a row for the MLP, ``logits``; rows
without a drawn node are left out; grey row labels at the left). A kept positional node
``name@span`` sits in the cell of its span and row, drawn as the plain diagram draws ``name``
(a head is a table with ``q``, ``k``, ``v`` cells its edges enter). An edge runs from its
source's cell to its destination's: up its column for MLP, query and logits inputs, and for a
key or value input from the column of the key positions to the column of the queries that
read them.

Colour, width, labels and the ``max_edges`` cap are the plain diagram's (acd.diagram), applied
to positional edges; dashes and the tooltips' inclusion are the plain edge's (the trust report
measures stability per plain edge).

The grid is computed here and every node pinned to its place (``pos="x,y!"``, in points, with
Graphviz's ``neato`` engine routing the edges around the nodes: ``layout=neato`` in the DOT, so
``dot -Tsvg`` renders it too). dot's own layout cannot be held to a grid: neither span clusters
nor chains of invisible flat edges kept the columns in order (its crossing minimisation moved
nodes past them). A column is as wide as its widest cell; node widths are estimated from their
labels, generously, since Graphviz sizes the nodes itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from acd import diagram as plain
from acd.roles import role_badges
from acd.trust import trust_line

if TYPE_CHECKING:
    from acd.circuit import Circuit
    from acd.graph import ComputeGraph
    from acd.positional.graph import PositionalCircuit

# The grid, in points (1/72 inch).
ROW_GAP = 96.0  # between the centres of neighbouring rows
COLUMN_GAP = 40.0  # between neighbouring columns
NODE_GAP = 14.0  # between neighbouring nodes of one cell
LABEL_X = 40.0  # the centre of the row labels
FIRST_COLUMN = 100.0  # where the first column begins
HEADER_RISE = 70.0  # from the top row's centre to the span headers'
# Label width estimates: Helvetica at 11 pt is about 6 pt a character, bold a little more.
CHAR_WIDTH = 7.0
MIN_NODE_WIDTH = 54.0  # Graphviz's default node width, 0.75 inch

_HEADER_FILL = "#eeeeee"
_SEPARATOR = "#dddddd"  # the faint lines between the columns


@dataclass(frozen=True)
class _PositionalEdge:
    src: int  # source index
    p: int  # the source's span
    dst: int  # destination index
    q: int  # the destination's span
    score: float
    inclusion: float | None = None  # the plain edge's share of the resamples keeping it

    @property
    def index(self) -> tuple[int, int, int, int]:
        return (self.src, self.p, self.dst, self.q)


@dataclass
class _Row:
    """One row of the grid: its title and, per span, the names of its cell's nodes."""

    title: str
    cells: list[list[str]] = field(default_factory=list)


def positional_circuit_dot(circuit: Circuit, *, max_edges: int = 300) -> str:
    """The DOT source of a positional circuit (module docstring). Deterministic."""
    positional = circuit.positional
    assert positional is not None  # acd.diagram dispatches positional circuits only
    graph = circuit.graph
    spans = positional.spans
    kept = _kept_edges(circuit, positional)
    drawn = _largest_edges(kept, max_edges)
    largest = max((plain._magnitude(e.score) for e in drawn), default=0.0)
    needed = plain.needed_sign(circuit)
    rows = _rows(graph, spans, drawn)

    lines = [
        "digraph circuit {",
        "  graph ["
        + plain._attrs(
            layout="neato",
            inputscale="72",  # pos in points
            splines="true",
            overlap="true",  # the nodes are pinned where they do not overlap
            outputorder="edgesfirst",
            labelloc="t",
            fontname=plain._FONT,
            bgcolor="white",
            pad="0.3",
        )
        + ", label="
        + _title_label(circuit, positional, n_kept=len(kept), drawn=drawn)
        + "];",
        "  node [" + plain._attrs(fontname=plain._FONT, fontsize="11") + "];",
        "  edge [" + plain._attrs(arrowsize="0.5") + "];",
        *_grid_statements(circuit, spans, rows, drawn),
    ]
    labelled = {e.index for e in _largest_edges(drawn, plain.LABELLED_EDGES)} if largest else set()
    for edge in sorted(drawn, key=lambda e: (plain._magnitude(e.score), e.index)):
        label = edge.index in labelled
        lines.append("  " + _edge_statement(graph, spans, edge, largest, needed, label))
    lines.append("}")
    return "\n".join(lines) + "\n"


def node_id(name: str, span: str) -> str:
    """The DOT node name of ``name`` at ``span``: ``a0.h1@S1`` (acd.positional's names)."""
    return f"{name}@{span}"


def header_id(span: str) -> str:
    """The DOT node name of a span's column header."""
    return f"span: {span}"


def separator_ids(p: int) -> tuple[str, str]:
    """The DOT names of the two invisible points the line on the left of column ``p`` joins."""
    return (f"column {p}: bottom", f"column {p}: top")


def _kept_edges(circuit: Circuit, positional: PositionalCircuit) -> list[_PositionalEdge]:
    """The kept positional edges in index order, with their scores and plain inclusion."""
    inclusion = circuit.edge_inclusion
    edges = []
    for u, p, v, q in positional.kept_index():
        share = None if inclusion is None else float(inclusion[u, v])
        edges.append(_PositionalEdge(u, p, v, q, float(positional.scores[u, p, v, q]), share))
    return edges


def _largest_edges(edges: list[_PositionalEdge], limit: int) -> list[_PositionalEdge]:
    """The ``limit`` edges of largest |score| (ties by index), in index order; or all."""
    if len(edges) <= limit:
        return edges
    ranked = sorted(edges, key=lambda e: (-plain._magnitude(e.score), e.index))
    return sorted(ranked[:limit], key=lambda e: e.index)


def _rows(graph: ComputeGraph, spans: tuple[str, ...], drawn: list[_PositionalEdge]) -> list[_Row]:
    """The rows with a drawn node, bottom to top, each node in its span's cell (graph order):
    the nodes (a port's node: a GQA k/v port's kv group) at the spans the drawn edges touch."""
    touched: set[tuple[int, int]] = set()  # (node id, span index)
    for edge in drawn:
        touched.add((int(graph.src_node_ids[edge.src]), edge.p))
        touched.add((int(graph.dst_node_ids[edge.dst]), edge.q))
    by_position: dict[int, _Row] = {}
    for node, p in sorted(touched):
        name = graph.nodes[node]
        position = plain._row_position(graph, name)
        if position not in by_position:
            by_position[position] = _Row(plain._row_title(graph, position), [[] for _ in spans])
        by_position[position].cells[p].append(name)
    return [by_position[position] for position in sorted(by_position)]


def _grid_statements(
    circuit: Circuit, spans: tuple[str, ...], rows: list[_Row], drawn: list[_PositionalEdge]
) -> list[str]:
    """Every node pinned to its place in the grid: the row labels, the drawn nodes, the span
    headers and the lines between the columns."""
    graph = circuit.graph
    ports = graph.destinations
    used_ports: dict[tuple[str, int], set[tuple[str, str]]] = {}  # (node, span) -> its ports
    for edge in drawn:
        port = ports[edge.dst]
        used_ports.setdefault((port.node, edge.q), set()).add((port.node, port.kind))

    widths = [_column_width(circuit, rows, p, span) for p, span in enumerate(spans)]
    lefts = [FIRST_COLUMN]
    for width in widths[:-1]:
        lefts.append(lefts[-1] + width + COLUMN_GAP)
    top = ROW_GAP * (len(rows) - 1)
    header_y = top + HEADER_RISE

    lines = []
    for r, row in enumerate(rows):
        y = r * ROW_GAP
        attrs = _axis_attrs(row.title)
        lines.append(f"  {plain._id('row: ' + row.title)} [{attrs}, {_pos(LABEL_X, y)}];")
        for p, cell in enumerate(row.cells):
            sizes = [_node_width(circuit, name) for name in cell]
            x = lefts[p] + (widths[p] - _cell_width(sizes)) / 2
            for name, size in zip(cell, sizes):
                used = used_ports.get((name, p), set())
                attrs = _node_attrs(circuit, name, spans[p], used)
                position = _pos(x + size / 2, y)
                lines.append(f"  {plain._id(node_id(name, spans[p]))} [{attrs}, {position}];")
                x += size + NODE_GAP
    lines.append(f"  {plain._id('row: span')} [{_axis_attrs('span')}, {_pos(LABEL_X, header_y)}];")
    for p, span in enumerate(spans):
        attrs = plain._attrs(
            shape="box",
            style="rounded,filled",
            color=_HEADER_FILL,
            fillcolor=_HEADER_FILL,
            label=span,
            fontsize="13",
            tooltip=f"span {span}",
        )
        x = lefts[p] + widths[p] / 2
        lines.append(f"  {plain._id(header_id(span))} [{attrs}, {_pos(x, header_y)}];")
    for p in range(1, len(spans)):
        lines += _separator(p, lefts[p] - COLUMN_GAP / 2, -ROW_GAP / 2, header_y, spans)
    return lines


def _separator(p: int, x: float, bottom: float, top: float, spans: tuple[str, ...]) -> list[str]:
    """The faint line on the left of column ``p``: an edge between two invisible points."""
    point = plain._attrs(shape="point", style="invis", width="0.01", label="")
    low, high = separator_ids(p)
    line = plain._attrs(color=_SEPARATOR, arrowhead="none", tooltip=f"{spans[p - 1]} | {spans[p]}")
    return [
        f"  {plain._id(low)} [{point}, {_pos(x, bottom)}];",
        f"  {plain._id(high)} [{point}, {_pos(x, top)}];",
        f"  {plain._id(low)} -> {plain._id(high)} [{line}];",
    ]


def _column_width(circuit: Circuit, rows: list[_Row], p: int, span: str) -> float:
    """The widest of span ``p``'s cells, and of its header."""
    cells = [_cell_width([_node_width(circuit, n) for n in row.cells[p]]) for row in rows]
    return max([_header_width(span), *cells])


def _cell_width(sizes: list[float]) -> float:
    return sum(sizes) + NODE_GAP * max(0, len(sizes) - 1)


def _node_width(circuit: Circuit, name: str) -> float:
    """A generous estimate of how wide Graphviz draws ``name`` (``acd.diagram._node_attrs``):
    a head's or kv group's title with its role badges, or its row of port cells."""
    graph = circuit.graph
    node = graph.node(name)
    if node.kind == "kv_group":
        title = f"{name} · h{node.heads[0]}-h{node.heads[-1]}"
    elif node.kind == "head":
        badges = role_badges(circuit.node_roles[name]) if name in circuit.node_roles else []
        title = " · ".join([name, " ".join(badges)]) if badges else name
    else:
        return max(MIN_NODE_WIDTH, CHAR_WIDTH * len(name) + 24)
    return max(MIN_NODE_WIDTH, CHAR_WIDTH * len(title) + 12)


def _header_width(span: str) -> float:
    return max(MIN_NODE_WIDTH, 8.5 * len(span) + 24)


def _pos(x: float, y: float) -> str:
    """A pinned position (points: the graph's ``inputscale`` is 72)."""
    return plain._attrs(pos=f"{x:.1f},{y:.1f}!")


def _axis_attrs(title: str) -> str:
    """A grey row label (the column of them stands at the left of the grid)."""
    return plain._attrs(shape="plaintext", label=title, fontcolor=plain._AXIS_TEXT, fontsize="10")


def _node_attrs(circuit: Circuit, name: str, span: str, used: set[tuple[str, str]]) -> str:
    """The plain diagram's look of ``name`` (its port cells greyed where no drawn edge enters
    them at this span), with a tooltip naming the span."""
    graph = circuit.graph
    badges = role_badges(circuit.node_roles[name]) if name in circuit.node_roles else []
    attrs = plain._node_attrs(graph, name, used, None, badges)
    return attrs + ", " + plain._attrs(tooltip=f"{name} at span {span}")


def _edge_statement(
    graph: ComputeGraph,
    spans: tuple[str, ...],
    edge: _PositionalEdge,
    largest: float,
    needed: int,
    label: bool,
) -> str:
    """One ``tail -> head [...]`` line, from the source's cell to the port of the destination's
    cell: colour by the effect of removal, width by |score|, as in the plain diagram."""
    source = graph.sources[edge.src]
    port = graph.destinations[edge.dst]
    src_span, dst_span = spans[edge.p], spans[edge.q]
    tail = plain._id(node_id(source.name, src_span))
    tail += ":out:n" if source.kind == "head" else ":n"
    head = plain._id(node_id(port.node, dst_span))
    head += f":{port.kind}:s" if port.kind in ("q", "k", "v") else ":s"
    tooltip = f"{source.name}@{src_span} → {port.name}@{dst_span}: {edge.score:+.4g}"
    if edge.inclusion is not None:
        tooltip += f" · its plain edge kept in {100 * edge.inclusion:.0f} % of the prompt resamples"
    style: dict[str, str] = {}
    if edge.inclusion is not None and edge.inclusion < plain.UNSTABLE_INCLUSION:
        style["style"] = "dashed"
    if label:
        style.update(label=f" {edge.score:+.3g}", fontsize="9", fontcolor="#444444")
    width = plain._pen_width(edge.score, largest)
    attrs = plain._attrs(
        color=plain._effect_colour(edge.score, needed) + plain._EDGE_ALPHA,
        penwidth=f"{width:.2f}",
        tooltip=tooltip,
        **style,
    )
    return f"{tail} -> {head} [{attrs}];"


def _title_label(
    circuit: Circuit,
    positional: PositionalCircuit,
    *,
    n_kept: int,
    drawn: list[_PositionalEdge],
) -> str:
    """The graph label: task, model, method; the positional and plain sizes; the legend and
    what the columns mean."""
    graph = circuit.graph
    largest = max((plain._magnitude(e.score) for e in drawn), default=0.0)
    name = " · ".join(plain._html(s) for s in (circuit.task, circuit.model, circuit.method))
    counts = (
        f"{n_kept:,} of {positional.graph.n_edges:,} positional edges kept "
        f"({circuit.n_edges:,} of {graph.n_edges:,} plain edges) · faithfulness "
        f"{plain._faithfulness_text(circuit.metrics)}"
    )
    rows = [
        f'<TR><TD><FONT POINT-SIZE="18"><B>{name}</B></FONT></TD></TR>',
        f'<TR><TD><FONT POINT-SIZE="13">{plain._html(counts)}</FONT></TD></TR>',
    ]
    n_drawn = len(drawn)
    if n_drawn < n_kept:
        rows.append(
            f'<TR><TD><FONT POINT-SIZE="13">showing {n_drawn:,} of {n_kept:,} positional '
            "edges, the largest |score|</FONT></TD></TR>"
        )
    if n_kept == 0:
        rows.append('<TR><TD><FONT POINT-SIZE="13">no edges kept</FONT></TD></TR>')
    trust = trust_line(circuit.metrics, unit="edges")
    if trust is not None:
        rows.append(f'<TR><TD><FONT POINT-SIZE="11">{plain._html(trust)}</FONT></TD></TR>')
    show_zero = any(plain._effect_colour(e.score, 1) == plain.ZERO_COLOUR for e in drawn)
    legend = plain._legend(graph, largest, show_zero=show_zero, needed=plain.needed_sign(circuit))
    rows.append(f"<TR><TD>{legend}</TD></TR>")
    notes = [
        "columns: the prompt's spans (" + ", ".join(positional.spans) + "); a node sits in the "
        "column of the positions it acts at. An MLP, query or logits edge runs up its column; "
        "a k/v edge runs from the column of the key positions to the column of the queries "
        "that read them"
    ]
    if any(role_badges(r) for r in circuit.node_roles.values()):
        notes.append(
            "head badges: prev = previous-token, dup = duplicate-token, ind = induction, "
            "copy = copying, END→X = the final position attends to X (score ≥ 0.5, acd.roles)"
        )
    if any(e.inclusion is not None and e.inclusion < plain.UNSTABLE_INCLUSION for e in drawn):
        notes.append(
            f"dashed: its plain edge kept in under {100 * plain.UNSTABLE_INCLUSION:.0f} % of "
            "the prompt resamples"
        )
    for note in notes:
        rows.append(f'<TR><TD><FONT POINT-SIZE="11">{plain._html(note)}</FONT></TD></TR>')
    return '<<TABLE BORDER="0" CELLSPACING="2" CELLPADDING="1">' + "".join(rows) + "</TABLE>>"
