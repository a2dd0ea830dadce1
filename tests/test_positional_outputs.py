"""What a positional circuit's files show (acd.positional, issue 15): the networkx graph and its
GraphML and node-link files, summary.md, the Graphviz diagram and circuit.html, each checked
against the circuit's own positional tensors. One discovery run serves the whole module."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess

import networkx as nx
import pytest
import torch
from test_html_page import (  # the browser tests' helpers
    assert_no_script_errors,
    browser,  # noqa: F401  (a fixture)
    css,
    hover_point,
    open_page,
)

import acd
from acd.circuit import Circuit
from acd.diagram import circuit_dot
from acd.discover import RunConfig
from acd.errors import AcdError
from acd.export import summary_markdown, to_networkx, write_graphml, write_nodelink
from acd.export.html_page import page_data, write_circuit_html
from acd.graph import ComputeGraph, GraphShape
from acd.positional import PositionalCircuit, PositionalGraph


@pytest.fixture(scope="module")
def circuit():
    """The embedded model's positional IOI circuit: spans start, IO, S1, S1+1, S2, END."""
    run = RunConfig(progress=False, trust=False)
    return acd.discover("ioi", "toy", positions=True, prompts=12, run=run)


def expected_edges(circuit) -> dict[tuple[str, str, str], dict]:
    """Every kept positional edge, from the tensors: (u@p, node of v@q, port of v@q) -> the
    attributes the networkx edge should carry."""
    graph, positional = circuit.graph, circuit.positional
    spans = positional.spans
    edges = {}
    for u, p, v, q in positional.mask.nonzero().tolist():
        port = graph.destinations[v]
        key = (
            f"{graph.sources[u].name}@{spans[p]}",
            f"{port.node}@{spans[q]}",
            f"{port.name}@{spans[q]}",
        )
        edges[key] = {
            "score": float(positional.scores[u, p, v, q]),
            "port": port.kind if port.kind in ("q", "k", "v") else "none",
            "span_src": spans[p],
            "span_dst": spans[q],
        }
    return edges


def test_the_circuit_has_edges_across_spans(circuit):
    """The fixture is worth testing with: some kept key/value edge carries one span into
    another, and some edge stays in its span."""
    index = circuit.positional.kept_index()
    assert any(p != q for _, p, _, q in index) and any(p == q for _, p, _, q in index)


# --- networkx ----------------------------------------------------------------------------------


def test_networkx_has_one_edge_per_kept_positional_edge(circuit):
    G = to_networkx(circuit)
    expected = expected_edges(circuit)
    got = {(u, v, k): data for u, v, k, data in G.edges(keys=True, data=True)}
    assert set(got) == set(expected)
    for key, attrs in expected.items():
        assert got[key] == pytest.approx(attrs), key
    positional = circuit.positional
    assert G.graph["spans"] == ",".join(positional.spans)
    assert G.graph["n_edges"] == int(positional.mask.sum()) == G.number_of_edges()
    assert G.graph["n_plain_edges"] == int(circuit.mask.sum())


def test_networkx_nodes_are_nodes_at_spans_with_their_outgoing_weight(circuit):
    G = to_networkx(circuit)
    graph, positional = circuit.graph, circuit.positional
    spans = positional.spans
    endpoints = {name for u, v, _ in expected_edges(circuit) for name in (u, v)}
    assert set(G.nodes) == endpoints
    # sum of |score| of each source's kept positional edges at each span: [n_src, P]
    weight = (positional.scores.abs() * positional.mask).sum(dim=(2, 3))
    for name, data in G.nodes(data=True):
        plain, span = name.rsplit("@", 1)
        assert (data["node"], data["span"]) == (plain, span)
        node = graph.node(plain)
        assert data["kind"] == node.kind
        assert data["layer"] == int(graph.node_layers[graph.node_index[plain]])
        if plain in graph.src_index:
            expected = float(weight[graph.src_index[plain], spans.index(span)])
            assert data["score"] == pytest.approx(expected, rel=1e-5)
    assert "logits@END" in G and G.nodes["logits@END"]["score"] == 0.0


def test_the_aggregate_view_is_the_plain_graph(circuit):
    G = to_networkx(circuit, aggregate=True)
    graph = circuit.graph
    expected = {
        (graph.sources[i].name, graph.destinations[j].node, graph.destinations[j].name)
        for i, j in circuit.mask.nonzero().tolist()
    }
    assert set(G.edges(keys=True)) == expected
    assert not any("@" in name for name in G.nodes) and "spans" not in G.graph
    plain = to_networkx(dataclasses.replace(circuit, positional=None))
    assert nx.utils.graphs_equal(G, plain)


def test_graphml_and_nodelink_files_read_back_with_networkx(circuit, tmp_path):
    expected = expected_edges(circuit)
    graphml = nx.read_graphml(
        write_graphml(circuit, tmp_path / "c.graphml"), force_multigraph=True, edge_key_type=str
    )
    text = write_nodelink(circuit, tmp_path / "c.nodelink.json").read_text()
    nodelink = nx.node_link_graph(json.loads(text), directed=True, multigraph=True, edges="edges")
    for G in (graphml, nodelink):
        got = {(u, v, k): data for u, v, k, data in G.edges(keys=True, data=True)}
        assert set(got) == set(expected)
        for key, attrs in expected.items():
            assert got[key] == pytest.approx(attrs), key
        assert G.graph["spans"].split(",") == list(circuit.positional.spans)
        for name, data in G.nodes(data=True):
            node, span = name.split("@")
            assert (data["node"], data["span"]) == (node, span), name


# --- summary.md --------------------------------------------------------------------------------


def test_the_summary_lists_exactly_the_kept_positional_edges(circuit):
    text = summary_markdown(circuit)
    section = text.split("## Kept positional edges by |score|", 1)[1]
    rows = re.findall(r"^\| (\d+) \| (\S+) \| (\S+) \| (\S+) \|$", section, re.M)
    positional = circuit.positional
    listed = {(src, dst): float(score) for _, src, dst, score in rows}
    assert len(rows) == len(listed) == int(positional.mask.sum())
    spans = positional.spans
    graph = circuit.graph
    for u, p, v, q in positional.kept_index():
        key = (f"{graph.sources[u].name}@{spans[p]}", f"{graph.destinations[v].name}@{spans[q]}")
        assert listed[key] == pytest.approx(float(positional.scores[u, p, v, q]), rel=1e-3)
    magnitudes = [abs(float(score)) for *_, score in rows]
    assert magnitudes == sorted(magnitudes, reverse=True)
    assert f"- Spans: {', '.join(spans)} " in text
    assert f"- Positional edges kept: {positional.n_edges} of {positional.graph.n_edges} " in text
    assert f"- Edges kept: {circuit.n_edges} of {graph.n_edges} " in text
    assert "k/v" in section and "key positions" in section


def test_a_plain_summary_has_no_positional_part(circuit):
    text = summary_markdown(dataclasses.replace(circuit, positional=None))
    assert "positional" not in text.lower() and "Spans:" not in text


# --- the diagram -------------------------------------------------------------------------------


def dot_edges(source: str) -> list[tuple[str, str, str]]:
    """(tail node, head node, head port or "") of every edge of the DOT between two nodes at
    spans (``name@span``; the other edges are the grid's scaffolding): an end is ``"node"``,
    ``"node":compass`` or ``"node":port:compass``."""
    end = r'"([^"]+)"((?::\w+)*)'
    pattern = re.compile(rf"^  {end} -> {end} \[")
    edges = []
    for line in source.splitlines():
        match = pattern.match(line)
        if match and "@" in match[1] and "@" in match[3]:
            head_parts = match[4].split(":")[1:]
            edges.append((match[1], match[3], head_parts[0] if len(head_parts) == 2 else ""))
    return edges


def test_the_dot_draws_every_kept_positional_edge_between_cells(circuit):
    source = circuit_dot(circuit)
    graph, positional = circuit.graph, circuit.positional
    spans = positional.spans
    expected = []
    for u, p, v, q in positional.kept_index():
        port = graph.destinations[v]
        head_port = port.kind if port.kind in ("q", "k", "v") else ""
        expected.append(
            (f"{graph.sources[u].name}@{spans[p]}", f"{port.node}@{spans[q]}", head_port)
        )
    assert sorted(dot_edges(source)) == sorted(expected)
    for src, dst in positional.edges:
        assert f"{src} → {dst}: " in source  # each edge's tooltip names it with its spans
    assert f"{positional.n_edges:,} of {positional.graph.n_edges:,} positional edges kept" in source


def pinned_positions(source: str) -> dict[str, tuple[float, float]]:
    """Each node's pinned position in the DOT (``pos="x,y!"``)."""
    found = re.findall(r'^  "([^"]+)" \[.*pos="([-0-9.]+),([-0-9.]+)!"\];$', source, re.M)
    return {name: (float(x), float(y)) for name, x, y in found}


def rendered_positions(source: str) -> dict[str, tuple[float, float]]:
    """Each node's position as Graphviz laid it out (``dot -Tjson``), which it does without a
    warning (neato warns, and draws straight edges, where pinned nodes overlap)."""
    done = subprocess.run(["dot", "-Tjson"], input=source, capture_output=True, text=True)
    assert done.returncode == 0 and not done.stderr, done.stderr  # no warning: nodes overlapping
    objects = json.loads(done.stdout)["objects"]
    where = {}
    for obj in objects:
        if "pos" in obj:
            x, y = obj["pos"].split(",")
            where[obj["name"]] = (float(x), float(y))
    return where


def assert_grid(circuit, where: dict[str, tuple[float, float]]) -> None:
    """Columns: the lines between them vertical and left to right, each span's header and each
    drawn node at a span between its span's lines. Rows: a row's nodes at one height, input at
    the bottom, every layer's row above the one before, the headers on top."""
    spans = circuit.positional.spans
    lines = [
        (where[f"column {p}: bottom"], where[f"column {p}: top"]) for p in range(1, len(spans))
    ]
    assert all(low[0] == high[0] and low[1] < high[1] for low, high in lines)
    xs = [low[0] for low, _ in lines]
    assert xs == sorted(xs)

    def column(x: float) -> int:
        return sum(1 for line_x in xs if line_x < x)

    headers = [where[f"span: {span}"] for span in spans]
    assert [column(x) for x, _ in headers] == list(range(len(spans)))
    graph = circuit.graph
    height: dict[int, set[float]] = {}  # row position (acd.diagram) -> its nodes' heights
    for u, p, v, q in circuit.positional.kept_index():
        for node, span in ((graph.sources[u].name, p), (graph.destinations[v].node, q)):
            x, y = where[f"{node}@{spans[span]}"]
            assert column(x) == span, (node, spans[span], x, xs)
            height.setdefault(row_position(graph, node), set()).add(y)
    assert all(len(ys) == 1 for ys in height.values())
    bottom_to_top = [height[position].pop() for position in sorted(height)]
    assert bottom_to_top == sorted(bottom_to_top) and len(set(bottom_to_top)) == len(height)
    assert all(y > bottom_to_top[-1] for _, y in headers)


def row_position(graph, name: str) -> int:
    """The forward-pass row of a node: input 0, attention of layer l 1 + 2l, its MLP 2 + 2l
    (with parallel attention and MLP, the attention's row), logits last."""
    node = graph.node(name)
    if node.kind == "input":
        return 0
    if node.kind == "logits":
        return 2 * graph.n_layers + 1
    mlp = node.kind == "mlp" and not graph.shape.parallel_attn_mlp
    return 1 + 2 * node.layer + int(mlp)


def test_the_dot_pins_every_node_to_its_span_column_and_layer_row(circuit):
    source = circuit_dot(circuit)
    assert_grid(circuit, pinned_positions(source))
    headers = re.findall(r'^  "span: ([^"]+)" \[', source, re.M)
    assert headers == list(circuit.positional.spans)


@pytest.mark.skipif(shutil.which("dot") is None, reason="needs Graphviz")
def test_graphviz_keeps_the_grid(circuit):
    assert_grid(circuit, rendered_positions(circuit_dot(circuit)))


def test_a_plain_circuit_keeps_the_plain_diagram(circuit):
    source = circuit_dot(dataclasses.replace(circuit, positional=None))
    assert '"span: ' not in source and not dot_edges(source)  # no columns, no nodes at spans
    assert len(re.findall(r'tooltip="[^"@]+ → [^"@]+: ', source)) == circuit.n_edges


def test_save_writes_a_positional_diagram_even_without_graphviz(circuit, tmp_path, monkeypatch):
    import acd.diagram

    monkeypatch.setattr(acd.diagram, "DOT_PROGRAM", "no-such-dot-program")
    saved = circuit.save(tmp_path)
    assert (tmp_path / "circuit.dot").read_text() == circuit_dot(circuit)
    assert not (tmp_path / "circuit.svg").exists() and "dot" in (saved.note or "")


# --- circuit.html ------------------------------------------------------------------------------


def test_the_page_embeds_positional_edges_with_their_spans(circuit):
    data = page_data(circuit)
    positional = circuit.positional
    assert data["positional"] == {
        "spans": list(positional.spans),
        "n_valid": positional.graph.n_edges,
        "n_plain_kept": circuit.n_edges,
        "n_plain_valid": circuit.graph.n_edges,
    }
    kept = {tuple(data["edges"][i][k] for k in (0, 3, 1, 4)) for i in data["kept"]}
    assert kept == set(positional.kept_index())
    for src, dst, score, p, q in data["edges"]:
        assert positional.graph.valid[src, p, dst, q]
        assert score == pytest.approx(float(positional.scores[src, p, dst, q]), rel=1e-3)
    assert data["n_top"] == min(2000, positional.graph.n_edges)


def test_a_plain_page_is_unchanged_by_the_positional_part(circuit):
    data = page_data(dataclasses.replace(circuit, positional=None))
    assert data["positional"] is None and {len(row) for row in data["edges"]} == {3}


def test_a_reference_overlay_on_a_positional_page_is_refused(circuit):
    with pytest.raises(AcdError, match="plain"):
        page_data(circuit, reference=circuit.mask)


def test_compare_html_draws_a_positional_a_by_its_plain_edges(circuit, tmp_path, capsys):
    """``acd compare A B --html`` with a positional A: the page is A's plain view (each plain
    edge kept when any of its positional parts is) with B overlaid, as the figures compare."""
    from test_html_page import embedded

    from acd.cli import main
    from acd.export import save_circuit_json

    plain = dataclasses.replace(circuit, positional=None)
    b_mask = circuit.mask.clone()
    first = circuit.mask.nonzero()[0].tolist()
    b_mask[first[0], first[1]] = False  # B: A's plain edges but one
    save_circuit_json(circuit, tmp_path / "a.json")
    save_circuit_json(dataclasses.replace(plain, mask=b_mask), tmp_path / "b.json")
    page = tmp_path / "a_vs_b.html"
    argv = ["compare", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--html", str(page)]
    assert main(argv) == 0
    assert "A's plain edges" in capsys.readouterr().out
    data = embedded(page.read_text())
    assert data["positional"] is None
    assert len(data["kept"]) == int(circuit.mask.sum())
    assert len(data["reference"]["edges"]) == int(b_mask.sum())


@pytest.mark.slow
def test_the_page_draws_every_kept_positional_edge_and_hover_shows_its_spans(
    browser,  # noqa: F811  (the fixture imported above)
    circuit,
    tmp_path,
):
    open_page(browser, write_circuit_html(circuit, tmp_path / "circuit.html"))
    graph, positional = circuit.graph, circuit.positional
    spans = positional.spans
    expected = {f"{u},{v},{p},{q}": (u, p, v, q) for u, p, v, q in positional.kept_index()}
    drawn = [e.get_attribute("data-key") for e in css(browser, "#acd-edges .acd-edge")]
    assert sorted(drawn) == sorted(expected)
    assert len(css(browser, ".acd-node")) == graph.n_nodes * len(spans)
    labels = [t.text for t in css(browser, ".acd-span-label")]
    assert labels == list(spans)
    subtitle = css(browser, "#acd-subtitle")[0].text
    assert (
        f"{len(expected)} of {positional.graph.n_edges:,} valid positional edges kept" in subtitle
    )
    # Every kept edge's tooltip, through a mouseover on its hover path: a weak edge can lie under
    # stronger ones along its whole length (two edges from one source into one head's k and v
    # cells, say), where no pointer position reaches it.
    for key in expected:
        browser.execute_script(MOUSEOVER, key)
        assert_tooltip_shows(browser, circuit, expected[key])
    # The real pointer, on the strongest edge across spans (drawn over the weaker ones).
    across = [i for i in expected.values() if i[1] != i[3]]
    strongest = max(across, key=lambda i: abs(float(positional.scores[i])))
    u, p, v, q = strongest
    hover_point(browser, *exposed_point(browser, f"{u},{v},{p},{q}"))
    assert_tooltip_shows(browser, circuit, strongest)
    browser.execute_script("acdPage.setSize(40)")  # the slider ranks positional edges
    assert browser.execute_script("return acdPage.drawnEdgeCount()") == 40
    assert "the top 40 positional edges by |score|" in css(browser, "#acd-size")[0].text
    assert_no_script_errors(browser)


# A mouseover event on edge arguments[0]'s hover path, as the pointer would send.
MOUSEOVER = """
const path = document.querySelector('#acd-hits .acd-hit[data-key="' + arguments[0] + '"]');
const box = path.getBoundingClientRect();
const event = {bubbles: true, clientX: box.x, clientY: box.y};
path.dispatchEvent(new MouseEvent('mouseover', event));
"""


def assert_tooltip_shows(driver, circuit, index: tuple[int, int, int, int]) -> None:
    """The tooltip is up and names positional edge ``index`` as source@span → port@span, with
    its score and what its spans mean."""
    graph, positional = circuit.graph, circuit.positional
    spans = positional.spans
    u, p, v, q = index
    tip = css(driver, "#acd-tooltip")[0]
    assert tip.is_displayed()
    text = tip.text
    name = f"{graph.sources[u].name}@{spans[p]} → {graph.destinations[v].name}@{spans[q]}"
    assert name in text, (index, text)
    shown = re.search(r"score ([+-]?[0-9.e-]+)", text)
    assert shown, text
    assert float(shown[1]) == pytest.approx(float(positional.scores[index]), rel=1e-3, abs=1e-6)
    if graph.destinations[v].kind in ("k", "v"):
        assert f"at the {spans[p]} positions" in text and f"the {spans[q]} queries" in text
    else:
        assert f"span: {spans[p]} " in text


# Where along an edge to try hovering it: the middle first, then towards the ends, where edges
# from one source (or into one port) part.
SHARES = [0.5, 0.4, 0.6, 0.3, 0.7, 0.2, 0.8, 0.9, 0.1, 0.95, 0.97, 0.98, 0.99, 0.995, 0.05, 0.02]


# The first point along edge arguments[0]'s hover path, at the shares of its length in
# arguments[1], where the path is the topmost element; null where there is none.
EXPOSED_POINT = """
const path = document.querySelector('#acd-hits .acd-hit[data-key="' + arguments[0] + '"]');
path.scrollIntoView({block: 'center', inline: 'center'});
const length = path.getTotalLength();
for (const share of arguments[1]) {
  const p = path.getPointAtLength(length * share).matrixTransform(path.getScreenCTM());
  const top = document.elementFromPoint(p.x, p.y);
  if (top && top.dataset.key === arguments[0]) return [p.x, p.y];
}
return null;
"""


def exposed_point(driver, key: str) -> tuple[float, float]:
    """A point, in viewport coordinates, where edge ``key``'s hover path is the topmost
    element: edges may cross or share a stretch, so points along it are tried in turn."""
    point = driver.execute_script(EXPOSED_POINT, key, SHARES)
    assert point is not None, f"edge {key} is covered along its whole length"
    return point


# --- other architectures -------------------------------------------------------------------------

ARCHITECTURES = {
    "gqa": GraphShape(2, 4, 2),  # the k/v ports belong to key/value groups
    "parallel": GraphShape(2, 4, 4, parallel_attn_mlp=True),
    "attn-only": GraphShape(2, 4, 4, has_mlp=False),
}


def synthetic_positional_circuit(shape: GraphShape, n_kept: int = 30, seed: int = 0) -> Circuit:
    """A positional circuit of seeded normal scores keeping ``n_kept`` random positional edges,
    on prompts whose spans are start, A, B, END (the metric reads END)."""
    graph = ComputeGraph(shape)
    span_index = torch.tensor([[0, 1, 1, 2, 3], [0, 2, 1, 1, 3]])
    score_mask = span_index == 3
    pgraph = PositionalGraph.from_layout(graph, ("start", "A", "B", "END"), span_index, score_mask)
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randn(pgraph.shape, generator=generator) * pgraph.valid
    valid = pgraph.valid.flatten().nonzero().flatten()
    chosen = valid[torch.randperm(len(valid), generator=generator)[:n_kept]]
    mask = torch.zeros(pgraph.valid.numel(), dtype=torch.bool)
    mask[chosen] = True
    positional = PositionalCircuit(pgraph, mask.view(pgraph.shape), scores)
    return Circuit(
        graph,
        pgraph.plain_mask(positional.mask),
        pgraph.aggregate(positional.scores),
        task="synthetic",
        model="synthetic",
        method="eap",
        params={"metric": "logit_diff", "positions": True},
        positional=positional,
    )


@pytest.mark.parametrize("shape", ARCHITECTURES.values(), ids=ARCHITECTURES.keys())
def test_other_architectures_draw_every_positional_edge_into_its_port(shape):
    circuit = synthetic_positional_circuit(shape)
    graph, positional = circuit.graph, circuit.positional
    assert positional is not None
    spans = positional.spans
    expected = []
    for u, p, v, q in positional.kept_index():
        port = graph.destinations[v]  # with GQA a k/v port's node is its key/value group
        head_port = port.kind if port.kind in ("q", "k", "v") else ""
        expected.append(
            (f"{graph.sources[u].name}@{spans[p]}", f"{port.node}@{spans[q]}", head_port)
        )
    source = circuit_dot(circuit)
    assert sorted(dot_edges(source)) == sorted(expected)
    assert_grid(circuit, pinned_positions(source))
    if shutil.which("dot") is not None:
        assert_grid(circuit, rendered_positions(source))
    keyed = {
        (src, dst, f"{graph.destinations[v].name}@{spans[q]}")
        for (src, dst, _), (_, _, v, q) in zip(expected, positional.kept_index())
    }
    assert set(to_networkx(circuit).edges(keys=True)) == keyed


@pytest.mark.slow
@pytest.mark.parametrize("shape", ARCHITECTURES.values(), ids=ARCHITECTURES.keys())
def test_other_architectures_pages_draw_every_positional_edge(
    browser,  # noqa: F811  (the fixture imported above)
    shape,
    tmp_path,
):
    circuit = synthetic_positional_circuit(shape)
    open_page(browser, write_circuit_html(circuit, tmp_path / "circuit.html"))
    assert circuit.positional is not None
    expected = {f"{u},{v},{p},{q}" for u, p, v, q in circuit.positional.kept_index()}
    drawn = [e.get_attribute("data-key") for e in css(browser, "#acd-edges .acd-edge")]
    assert sorted(drawn) == sorted(expected)
    assert len(css(browser, ".acd-node")) == circuit.graph.n_nodes * 4
    assert_no_script_errors(browser)
