"""Graphviz diagrams of a circuit: ``circuit.dot`` and, where Graphviz is installed, SVG/PNG/PDF.

The picture reads as the forward pass, bottom to top (``rankdir=BT``): ``input`` at the bottom,
then for each layer one row of attention heads and, above it, one row for the MLP (sequential
blocks; with parallel attention and MLP, GPT-J/NeoX style, the MLP shares its layer's row, since
it reads the same residual stream), and ``logits`` at the top. A column of grey labels (dot puts
it at the left edge) names each row; rows with no node of the circuit are left out, so a sparse
circuit stays compact.

Nodes (only those a drawn edge touches):

- a head ``a5.h1`` is a small table: its name on top (edges leave from it) and one cell per
  input it reads, ``q``, ``k``, ``v`` (edges enter the cell: ``"a5.h1":q``). A cell no drawn
  edge enters is greyed out;
- grouped-query attention: the key and value inputs of a kv group are one port each, shared by
  all the query heads of the group (``a3.g0<k>``, see ``acd.graph``). Such a group is drawn as
  its own node ``a3.g0`` in its layer's row, with ``k`` and ``v`` cells and the heads it serves
  in its label (``a3.g0 · h0-h1``); the heads themselves then have only a ``q`` cell. Drawing
  the group's edges into every head of the group instead would repeat each edge and overstate
  the circuit, so the diagram keeps one arrow per kept edge;
- an MLP ``m3`` is a green rounded box; ``input`` and ``logits`` are grey ellipses.

Edges: one arrow per drawn edge, coloured by the *effect of removing it*: red where removing
the edge takes the metric away from the full model's behaviour (the behaviour needs it), blue
where removing it helps the behaviour (the edge works against it), grey for exactly 0 or a
non-finite score; pen width from 0.5 to 5 in proportion to |score| relative to the largest drawn
|score|. Which sign is which follows from acd's score, M(patched) - M(clean)
(``acd.attribution``): for the task metrics (logit or probability difference, log-probability)
a needed edge scores negative; for ``kl`` and ``l2`` (distances to the full model, which
removing a needed edge raises) and for ACDC's deltas it scores positive. The legend says it in
words, and the LABELLED_EDGES edges of largest |score| carry their score as a label, so the
largest scores are readable in PNG and PDF too (SVG also has a tooltip on every edge). Weaker edges
are drawn first, so the strongest lie on top; nodes are drawn over edges. In SVG each edge has
a tooltip with its name and score.

The title gives task, model, method, the number of kept edges out of the graph's valid edges,
and the faithfulness (``circuit.metrics["faithfulness"]``, "n/a" when absent or not a finite
number), with a legend underneath. Past ``max_edges`` kept edges (300 by default, about what
stays legible on a GPT-2-small-sized graph) only the ``max_edges`` edges of largest |score| are
drawn, with the nodes they touch, and the title says so ("showing 300 of 1,234 edges, the
largest |score|"); ties are broken by edge index, so the choice is deterministic.

Node-level circuits (``circuit.level == "node"``, acd.nodes): the kept nodes carry their node
score under their name, the title counts nodes ("5 of 21 nodes kept"), and the edges are every
edge between kept nodes; where the method gave no edge scores (exact node patching) they are
drawn thin and grey, and the legend says that they are the induced edges.

Stability (the trust report's ``circuit.edge_inclusion``, acd.trust): an edge kept by fewer
than half of the prompt resamples' circuits is dashed, and every edge's tooltip gives its
inclusion share; the legend explains the dashes when one is drawn.

Positional circuits (``circuit.positional``, acd.positional) are drawn by
``acd.positional.diagram``: the spans as columns, the same rows, colours and widths, each node
in the cell of the span where it acts.

The DOT text is deterministic: the same circuit gives the same bytes.
"""

from __future__ import annotations

import math
import numbers
import shlex
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from html import escape as _html_escape
from pathlib import Path
from typing import TYPE_CHECKING

from acd.atomic import atomic_paths, atomic_write
from acd.errors import AcdError
from acd.roles import role_badges
from acd.trust import trust_line

if TYPE_CHECKING:
    from acd.circuit import Circuit
    from acd.graph import ComputeGraph, Port

# Output formats rendered by Graphviz's ``dot`` (the .dot source is always written).
RENDER_FORMATS = ("svg", "png", "pdf")

# The Graphviz program; a module attribute so tests can point it elsewhere.
DOT_PROGRAM = "dot"

# Seconds a render may take before it is abandoned (300 capped edges render in about a second).
RENDER_TIMEOUT_S = 300

NEEDED_COLOUR = "#b2182b"  # red: removing the edge harms the behaviour
AGAINST_COLOUR = "#2166ac"  # blue: removing the edge helps the behaviour
# The edges of largest |score| that carry their score as a label.
LABELLED_EDGES = 8
# Metrics that measure a distance to the full model: removing a needed edge raises them.
DISTANCE_METRICS = ("kl", "l2")
ZERO_COLOUR = "#999999"
MIN_PEN, MAX_PEN = 0.5, 5.0

_FONT = "Helvetica,Arial,sans-serif"
_HEAD_FILL = "#fff2cc"  # pale yellow: neither edge colour, so heads never read as a sign
_GROUP_FILL = "#e8e0f5"  # lavender: a GQA key/value group
_MLP_FILL = "#d9ead3"  # pale green
_END_FILL = "#e6e6e6"  # grey: input and logits
_USED_PORT_TEXT = "#000000"
_UNUSED_PORT_TEXT = "#bbbbbb"
_AXIS_TEXT = "#888888"
# Edges are slightly translucent so that crossing and overlapping edges stay distinguishable.
_EDGE_ALPHA = "d0"


@dataclass
class DiagramResult:
    """What ``write_diagram`` wrote: the .dot first, then each rendered file; ``message`` is a
    one-line note for the user (how to render by hand when Graphviz is missing), else None."""

    paths: list[Path]
    message: str | None = None


@dataclass(frozen=True)
class _Edge:
    src: int  # source index
    dst: int  # destination index
    score: float
    inclusion: float | None = None  # share of the trust report's resamples keeping it


# An edge kept by fewer than this share of the prompt resamples' circuits is drawn dashed.
UNSTABLE_INCLUSION = 0.5


# --- DOT source ------------------------------------------------------------------------------


def circuit_dot(circuit: Circuit, *, max_edges: int = 300) -> str:
    """The Graphviz DOT source of ``circuit`` (see the module docstring for the design; a
    positional circuit's is ``acd.positional.diagram.positional_circuit_dot``).

    Draws every kept edge, or past ``max_edges`` the ``max_edges`` edges of largest |score|
    (ties by edge index) and says so in the title. Deterministic: the same circuit gives the
    same text.

    Raises:
        AcdError: ``max_edges`` below 1.
    """
    if isinstance(max_edges, bool) or not isinstance(max_edges, int) or max_edges < 1:
        raise AcdError(f"max_edges must be a whole number of at least 1; got {max_edges!r}")
    if circuit.positional is not None:
        # imported here: acd.positional.diagram builds on this module's helpers
        from acd.positional.diagram import positional_circuit_dot

        return positional_circuit_dot(circuit, max_edges=max_edges)
    graph = circuit.graph
    kept = _kept_edges(circuit)
    drawn = _largest_edges(kept, max_edges)
    ports = graph.destinations
    used_ports = {(ports[e.dst].node, ports[e.dst].kind) for e in drawn}
    nodes = _touched_nodes(graph, drawn)
    largest = max((_magnitude(e.score) for e in drawn), default=0.0)
    node_scores = circuit.node_scores if circuit.level == "node" else {}
    dashed = any(_unstable(e) for e in drawn)

    lines = [
        "digraph circuit {",
        "  graph ["
        + _attrs(
            rankdir="BT",
            splines="spline",
            nodesep="0.18",
            ranksep="0.8",
            outputorder="edgesfirst",
            labelloc="t",
            fontname=_FONT,
            bgcolor="white",
            pad="0.3",
        )
        + ", label="
        + _title_label(
            circuit,
            n_kept=len(kept),
            n_drawn=len(drawn),
            largest=largest,
            show_zero=any(_effect_colour(e.score, 1) == ZERO_COLOUR for e in drawn),
            show_dashed=dashed,
        )
        + "];",
        "  node [" + _attrs(fontname=_FONT, fontsize="11") + "];",
        "  edge [" + _attrs(arrowsize="0.5") + "];",
    ]
    rows = _rows(graph, nodes)
    lines += _axis_statements(rows)
    for row_name, members in rows:
        lines.append("  { rank=same; " + " ".join(_id(n) for n in [row_name, *members]) + "; }")
    for name in nodes:
        score = node_scores.get(name)
        badges = role_badges(circuit.node_roles[name]) if name in circuit.node_roles else []
        lines.append(f"  {_id(name)} [{_node_attrs(graph, name, used_ports, score, badges)}];")
    needed = needed_sign(circuit)
    # no labels when every drawn score is 0 or not finite: there is no size to read
    labelled = {(e.src, e.dst) for e in _largest_edges(drawn, LABELLED_EDGES)} if largest else set()
    for edge in sorted(drawn, key=lambda e: (_magnitude(e.score), e.src, e.dst)):
        label = (edge.src, edge.dst) in labelled
        lines.append("  " + _edge_statement(graph, edge, largest, needed, label))
    lines.append("}")
    return "\n".join(lines) + "\n"


def _kept_edges(circuit: Circuit) -> list[_Edge]:
    """Kept edges in index (row-major) order with their scores."""
    pairs = circuit.mask.nonzero().tolist()
    scores = circuit.scores[circuit.mask].tolist()  # same row-major order as nonzero()
    inclusion = (
        circuit.edge_inclusion[circuit.mask].tolist()
        if circuit.edge_inclusion is not None
        else [None] * len(pairs)
    )
    return [
        _Edge(i, j, float(s), None if f is None else float(f))
        for (i, j), s, f in zip(pairs, scores, inclusion)
    ]


def _unstable(edge: _Edge) -> bool:
    return edge.inclusion is not None and edge.inclusion < UNSTABLE_INCLUSION


def _largest_edges(edges: list[_Edge], limit: int) -> list[_Edge]:
    """The ``limit`` edges of largest |score| (ties by index), or all of them."""
    if len(edges) <= limit:
        return edges
    ranked = sorted(edges, key=lambda e: (-_magnitude(e.score), e.src, e.dst))
    return sorted(ranked[:limit], key=lambda e: (e.src, e.dst))


def _magnitude(score: float) -> float:
    """|score|, with NaN and infinities counted as 0 so they neither win the cap nor set the
    width scale."""
    return abs(score) if math.isfinite(score) else 0.0


def _touched_nodes(graph: ComputeGraph, edges: Iterable[_Edge]) -> list[str]:
    """Names of the nodes the edges touch (a port's node: a GQA k/v port's kv group), in
    graph order."""
    used = set()
    for edge in edges:
        used.add(int(graph.src_node_ids[edge.src]))
        used.add(int(graph.dst_node_ids[edge.dst]))
    return [graph.nodes[i] for i in sorted(used)]


def _row_position(graph: ComputeGraph, name: str) -> int:
    """The node's row in forward-pass order: input 0, attention l at 1 + 2l, MLP l at 2 + 2l
    (1 + 2l, the attention row, for a parallel block), logits 2L + 1."""
    node = graph.node(name)
    if node.kind == "input":
        return 0
    if node.kind == "logits":
        return 2 * graph.n_layers + 1
    sequential_mlp = node.kind == "mlp" and not graph.shape.parallel_attn_mlp
    assert node.layer is not None  # heads, groups and MLPs belong to a block
    return 1 + 2 * node.layer + (1 if sequential_mlp else 0)


def _row_title(graph: ComputeGraph, position: int) -> str:
    """The axis label of a row position (see ``_row_position``)."""
    if position == 0:
        return "input"
    if position == 2 * graph.n_layers + 1:
        return "logits"
    layer, part = divmod(position - 1, 2)
    if graph.shape.parallel_attn_mlp:
        return f"layer {layer}"
    return f"layer {layer} {'MLP' if part else 'attn'}"


def _rows(graph: ComputeGraph, nodes: list[str]) -> list[tuple[str, list[str]]]:
    """The non-empty rows, bottom to top: (axis node name, member nodes in graph order)."""
    by_position: dict[int, list[str]] = {}
    for name in nodes:
        by_position.setdefault(_row_position(graph, name), []).append(name)
    return [
        (f"row: {_row_title(graph, pos)}", members) for pos, members in sorted(by_position.items())
    ]


def _axis_statements(rows: list[tuple[str, list[str]]]) -> list[str]:
    """The row labels on the left, chained by invisible edges so rows keep forward-pass order
    even where no drawn edge links them (the only edges of the DOT that are not kept edges)."""
    if not rows:
        return []
    lines = []
    for axis, _ in rows:
        label = axis.removeprefix("row: ")
        lines.append(
            f"  {_id(axis)} ["
            + _attrs(shape="plaintext", label=label, fontcolor=_AXIS_TEXT, fontsize="10")
            + "];"
        )
    if len(rows) > 1:
        chain = " -> ".join(_id(axis) for axis, _ in rows)
        lines.append(f"  {chain} [style=invis];")
    return lines


def _node_attrs(
    graph: ComputeGraph,
    name: str,
    used_ports: set[tuple[str, str]],
    score: float | None = None,
    badges: Sequence[str] = (),
) -> str:
    """DOT attributes of one node: shape, fill and label by kind; a node-level circuit's node
    shows its ``score`` after its name, a head its role ``badges`` (acd.roles)."""
    node = graph.node(name)
    label = name if score is None else f"{name} {score:+.3g}"
    if node.kind in ("input", "logits"):
        return _attrs(
            shape="ellipse", style="filled", fillcolor=_END_FILL, label=label, fontsize="12"
        )
    if node.kind == "mlp":
        return _attrs(shape="box", style="rounded,filled", fillcolor=_MLP_FILL, label=label)
    grouped = graph.n_kv_heads != graph.n_heads
    if node.kind == "kv_group":  # a GQA key/value group, a{l}.g{g}
        first, last = node.heads[0], node.heads[-1]
        heads = f"h{first}-h{last}" if len(node.heads) > 1 else f"h{first}"
        title = f"{name} · {heads}"
        return "shape=none, margin=0, label=" + _port_table(
            name, title, ("k", "v"), used_ports, _GROUP_FILL
        )
    cells = ("q",) if grouped else ("q", "k", "v")
    title = name if score is None else f"{name} {score:+.3g}"
    if badges:
        title += " · " + " ".join(badges)
    return "shape=none, margin=0, label=" + _port_table(name, title, cells, used_ports, _HEAD_FILL)


def _port_table(
    node: str,
    title: str,
    cells: Sequence[str],
    used_ports: set[tuple[str, str]],
    fill: str,
) -> str:
    """An HTML-like table label: the title on top (port ``out``), one cell per input port below
    (edges come from below in a bottom-to-top layout)."""
    port_cells = "".join(
        f'<TD PORT="{c}"><FONT COLOR="'
        + (_USED_PORT_TEXT if (node, c) in used_ports else _UNUSED_PORT_TEXT)
        + f'">{c}</FONT></TD>'
        for c in cells
    )
    return (
        f'<<TABLE BORDER="0" CELLBORDER="1" CELLSPACING="0" CELLPADDING="2" BGCOLOR="{fill}">'
        f'<TR><TD PORT="out" COLSPAN="{len(cells)}"><B>{_html(title)}</B></TD></TR>'
        f"<TR>{port_cells}</TR></TABLE>>"
    )


def scores_metric(circuit: Circuit) -> str | None:
    """The metric the circuit's scores were measured with (``params["metric"]``: a search's is
    its own), else the evaluation's recorded in ``metrics``; None when neither is recorded."""
    return circuit.params.get("metric") or circuit.metrics.get("metric")


def needed_sign(circuit: Circuit) -> int:
    """The sign of the score of an edge the behaviour needs: -1 for the task metrics (removing
    it lowers them), +1 for the distances kl and l2 (removing it raises them)."""
    return 1 if scores_metric(circuit) in DISTANCE_METRICS else -1


def _edge_statement(
    graph: ComputeGraph, edge: _Edge, largest: float, needed: int = -1, label: bool = False
) -> str:
    """One ``tail -> head [...]`` line: colour by the effect of removal (``needed``: the sign
    of a needed edge's score), width by |score|, the score as a label when ``label``."""
    source = graph.sources[edge.src]
    port = graph.destinations[edge.dst]
    tail = _id(source.name) + (":out:n" if source.kind == "head" else ":n")
    head = _edge_head(port)
    width = _pen_width(edge.score, largest)
    tooltip = f"{source.name} → {port.name}: {edge.score:+.4g}"
    if edge.inclusion is not None:
        tooltip += f" · kept in {100 * edge.inclusion:.0f} % of the prompt resamples"
    style = {"style": "dashed"} if _unstable(edge) else {}
    if label:
        style.update(label=f" {edge.score:+.3g}", fontsize="9", fontcolor="#444444")
    return (
        f"{tail} -> {head} ["
        + _attrs(
            color=_effect_colour(edge.score, needed) + _EDGE_ALPHA,
            penwidth=f"{width:.2f}",
            tooltip=tooltip,
            **style,
        )
        + "];"
    )


def _edge_head(port: Port) -> str:
    """Where an edge enters: the q/k/v cell of a head or kv group, else the node itself."""
    if port.kind in ("q", "k", "v"):
        return f"{_id(port.node)}:{port.kind}:s"
    return f"{_id(port.node)}:s"


def _effect_colour(score: float, needed: int) -> str:
    """Red where the score's sign is a needed edge's (``needed``), blue for the other sign."""
    if not math.isfinite(score) or score == 0:
        return ZERO_COLOUR
    return NEEDED_COLOUR if (score > 0) == (needed > 0) else AGAINST_COLOUR


def _pen_width(score: float, largest: float) -> float:
    """MIN_PEN .. MAX_PEN in proportion to |score| / largest |score| drawn."""
    if largest <= 0:
        return MIN_PEN
    return MIN_PEN + (MAX_PEN - MIN_PEN) * _magnitude(score) / largest


def _faithfulness_text(metrics: dict) -> str:
    value = metrics.get("faithfulness")
    item = getattr(value, "item", None)
    if getattr(value, "shape", None) == () and callable(item):  # a 0-d tensor or numpy array
        value = item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return "n/a"
    value = float(value)
    return f"{value:.3f}" if math.isfinite(value) else "n/a"


def _title_label(
    circuit: Circuit,
    *,
    n_kept: int,
    n_drawn: int,
    largest: float,
    show_zero: bool,
    show_dashed: bool = False,
) -> str:
    """The graph label: title lines and the legend, as one HTML-like table."""
    graph = circuit.graph
    name = " · ".join(_html(s) for s in (circuit.task, circuit.model, circuit.method))
    size = f"{n_kept:,} of {graph.n_edges:,} edges kept"
    if circuit.level == "node":
        n_nodes = len(circuit.kept_components)
        size = (
            f"{n_nodes:,} of {graph.n_src - 1:,} heads and MLPs kept "
            f"({n_kept:,} edges between them and input)"
        )
    counts = f"{size} · faithfulness {_faithfulness_text(circuit.metrics)}"
    rows = [
        f'<TR><TD><FONT POINT-SIZE="18"><B>{name}</B></FONT></TD></TR>',
        f'<TR><TD><FONT POINT-SIZE="13">{counts}</FONT></TD></TR>',
    ]
    if n_drawn < n_kept:
        rows.append(
            f'<TR><TD><FONT POINT-SIZE="13">showing {n_drawn:,} of {n_kept:,} edges, '
            "the largest |score|</FONT></TD></TR>"
        )
    if n_kept == 0:
        rows.append('<TR><TD><FONT POINT-SIZE="13">no edges kept</FONT></TD></TR>')
    trust = trust_line(circuit.metrics, unit="nodes" if circuit.level == "node" else "edges")
    if trust is not None:
        rows.append(f'<TR><TD><FONT POINT-SIZE="11">{_html(trust)}</FONT></TD></TR>')
    legend = _legend(graph, largest, show_zero=show_zero, needed=needed_sign(circuit))
    rows.append(f"<TR><TD>{legend}</TD></TR>")
    notes = []
    if circuit.level == "node":
        notes.append(
            "node level: each kept node shows its score (the effect of patching all its "
            "outputs); the edges are every edge between kept nodes"
            + ("" if bool(circuit.scores.any()) else " (measured per node: no edge scores)")
        )
    if any(role_badges(r) for r in circuit.node_roles.values()):
        notes.append(
            "head badges: prev = previous-token, dup = duplicate-token, ind = induction, "
            "copy = copying, END→X = the final position attends to X (score ≥ 0.5, acd.roles)"
        )
    if show_dashed:
        notes.append(
            f"dashed: kept in under {100 * UNSTABLE_INCLUSION:.0f} % of the prompt resamples"
        )
    for note in notes:
        rows.append(f'<TR><TD><FONT POINT-SIZE="11">{_html(note)}</FONT></TD></TR>')
    return '<<TABLE BORDER="0" CELLSPACING="2" CELLPADDING="1">' + "".join(rows) + "</TABLE>>"


def _legend(graph: ComputeGraph, largest: float, *, show_zero: bool, needed: int = -1) -> str:
    """A one-row table: what the colours mean (grey only when some drawn edge scores 0 or not a
    finite number), what width means, what the port cells mean."""

    def swatch(colour: str) -> str:
        return f'<TD BGCOLOR="{colour}" WIDTH="26" HEIGHT="4" FIXEDSIZE="TRUE"></TD>'

    def text(s: str) -> str:
        return f'<TD ALIGN="LEFT"><FONT POINT-SIZE="11">{s}</FONT></TD>'

    gap = '<TD WIDTH="14"></TD>'
    if graph.n_kv_heads != graph.n_heads:
        per = graph.n_heads // graph.n_kv_heads
        ports = (
            "head cell q = query input; kv group a{l}.g{g} (e.g. a0.g0 · h0-h"
            f"{per - 1}) cells k, v = key, value inputs shared by its heads"
        )
    else:
        ports = "head cells q, k, v = query, key, value inputs"
    metric = "the distance to the full model" if needed > 0 else "the metric"
    moves = ("raises", "lowers") if needed > 0 else ("lowers", "raises")
    cells = [
        swatch(NEEDED_COLOUR),
        text(f"needed: removing it {moves[0]} {metric}"),
        gap,
        swatch(AGAINST_COLOUR),
        text(f"works against: removing it {moves[1]} {metric}"),
        gap,
        *([swatch(ZERO_COLOUR), text("zero / not finite"), gap] if show_zero else []),
        text(f"width ∝ |score| (widest {largest:.3g})"),
        gap,
        text(ports),
    ]
    return (
        '<TABLE BORDER="1" COLOR="#cccccc" CELLBORDER="0" CELLSPACING="3" CELLPADDING="1">'
        f"<TR>{''.join(cells)}</TR></TABLE>"
    )


def _id(name: str) -> str:
    """A DOT quoted identifier (or quoted attribute value)."""
    cleaned = name.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ").replace("\r", " ")
    return f'"{cleaned}"'


def _html(text: str) -> str:
    """Text for an HTML-like label: markup characters escaped, control characters dropped
    (Graphviz rejects them)."""
    printable = "".join(ch if ch.isprintable() else " " for ch in str(text))
    return _html_escape(printable, quote=False)


def _attrs(**values: str) -> str:
    """``key="value", ...`` in the order given, values quoted and escaped."""
    return ", ".join(f"{key}={_id(str(value))}" for key, value in values.items())


# --- rendering -------------------------------------------------------------------------------


def write_diagram(
    circuit: Circuit,
    stem: str | Path,
    formats: Sequence[str] | str = ("svg",),
    *,
    max_edges: int = 300,
) -> DiagramResult:
    """Write ``<stem>.dot`` and, with Graphviz's ``dot`` program, ``<stem>.<fmt>`` per format.

    ``formats`` are among "svg", "png", "pdf" (a single string is one format). The .dot is
    always written first (atomically). Each format is then rendered by ``dot -T<fmt>`` into a
    temporary file beside its target, and all of them are renamed into place together only
    once every render succeeded, so a failure leaves no rendered file half-written or stale-new
    and no temporary file behind (the complete .dot stays).

    Without ``dot`` on PATH only the .dot is written and ``message`` says how to render it.

    Returns:
        DiagramResult: the paths written (.dot first), and the message or None.

    Raises:
        AcdError: an unknown format, ``max_edges`` below 1, or ``dot`` failing (its exit
            status and the first line of what it printed) or taking over RENDER_TIMEOUT_S.
    """
    wanted = _check_formats(formats)
    stem = Path(stem)
    source = circuit_dot(circuit, max_edges=max_edges).encode("utf-8")
    dot_path = stem.with_name(stem.name + ".dot")
    atomic_write(dot_path, source)
    if not wanted:
        return DiagramResult([dot_path])

    program = shutil.which(DOT_PROGRAM)
    if program is None:
        example = stem.with_name(f"{stem.name}.{wanted[0]}")
        command = shlex.join(["dot", f"-T{wanted[0]}", str(dot_path), "-o", str(example)])
        return DiagramResult(
            [dot_path],
            f"Graphviz's `dot` was not found: the diagram is in {dot_path}; render it with "
            f"`{command}` after installing Graphviz (apt-get install graphviz / "
            "brew install graphviz)",
        )

    targets = [stem.with_name(f"{stem.name}.{fmt}") for fmt in wanted]
    with atomic_paths(targets) as temps:
        for fmt, tmp in zip(wanted, temps):
            _render(program, source, fmt, tmp)
    return DiagramResult([dot_path, *targets])


def _check_formats(formats: Sequence[str] | str) -> list[str]:
    """The requested formats, lower-cased, without repeats; AcdError on an unknown one."""
    if isinstance(formats, str):
        formats = [formats]
    wanted: list[str] = []
    for fmt in formats:
        key = str(fmt).lower().lstrip(".")
        if key not in RENDER_FORMATS:
            raise AcdError(
                f"unknown diagram format {fmt!r}: choose among {', '.join(RENDER_FORMATS)} "
                "(the .dot source is always written)"
            )
        if key not in wanted:
            wanted.append(key)
    return wanted


def _render(program: str, source: bytes, fmt: str, out: Path) -> None:
    """Run ``dot -T<fmt> -o <out>`` on the DOT source; AcdError on failure."""
    try:
        done = subprocess.run(
            [program, f"-T{fmt}", "-o", str(out)],
            input=source,
            capture_output=True,
            timeout=RENDER_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise AcdError(
            f"Graphviz's dot took over {RENDER_TIMEOUT_S} s to render {fmt}; "
            "draw fewer edges (max_edges)"
        ) from None
    except OSError as err:
        raise AcdError(f"could not run Graphviz's dot ({program}): {err}") from None
    if done.returncode != 0:
        message = (
            done.stderr.decode("utf-8", "replace").strip()
            or done.stdout.decode("utf-8", "replace").strip()
        )
        first = message.splitlines()[0] if message else "no message"
        raise AcdError(
            f"Graphviz's dot failed rendering {fmt} (exit status {done.returncode}): {first}"
        )
