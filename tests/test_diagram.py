"""Graphviz diagrams of circuits (acd.diagram): the DOT text, and rendering with the real `dot`."""

from __future__ import annotations

import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch

from acd import diagram
from acd.circuit import Circuit
from acd.diagram import DiagramResult, circuit_dot, write_diagram
from acd.errors import AcdError
from acd.graph import ComputeGraph, GraphShape

needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot not installed")

# A drawn edge: "src"[:out][:n] -> "node"[:port][:s] [attrs];
EDGE_LINE = re.compile(
    r'^\s*"(?P<src>[^"]+)"(?::out)?(?::n)? -> "(?P<node>[^"]+)"(?::(?P<port>[qkv]))?(?::s)?'
    r" \[(?P<attrs>.*)\];$"
)


def make_circuit(shape: GraphShape, scored: dict[tuple[str, str], float], **kw) -> Circuit:
    """A circuit keeping exactly the named edges, with the given scores."""
    graph = ComputeGraph(shape)
    scores = torch.zeros(graph.n_src, graph.n_dst)
    for (src, dst), value in scored.items():
        scores[graph.edge_index(src, dst)] = value
    fields = dict(task="t", model="m", method="eap", metrics={"faithfulness": 0.9})
    fields.update(kw)
    return Circuit(graph=graph, mask=graph.mask_from_edges(list(scored)), scores=scores, **fields)


def random_circuit(shape: GraphShape, n_edges: int, seed: int = 0) -> Circuit:
    """Random normal scores on every valid edge; keeps the n_edges of largest |score|."""
    graph = ComputeGraph(shape)
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(graph.n_src, graph.n_dst, generator=gen) * graph.valid
    mask = torch.zeros(graph.n_src * graph.n_dst, dtype=torch.bool)
    mask[scores.abs().flatten().topk(n_edges).indices] = True
    return Circuit(
        graph=graph,
        mask=mask.view(graph.n_src, graph.n_dst),
        scores=scores,
        task="ioi",
        model="gpt2",
        method="eap-ig",
        metrics={"faithfulness": 0.873},
    )


def drawn_edges(dot: str) -> list[dict]:
    """The visible edge statements: src, node, port, colour, pen width."""
    edges = []
    for line in dot.splitlines():
        if "->" not in line or "style=invis" in line:
            continue
        match = EDGE_LINE.match(line)
        assert match, f"unparsed edge line: {line}"
        attrs = dict(re.findall(r'(\w+)="([^"]*)"', match["attrs"]))
        edges.append(
            dict(
                src=match["src"],
                node=match["node"],
                port=match["port"],
                colour=attrs["color"],
                width=float(attrs["penwidth"]),
            )
        )
    return edges


def leftovers(directory: Path) -> list[str]:
    """Temporary files atomic writes may have left."""
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


SMALL = GraphShape(n_layers=2, n_heads=2, n_kv_heads=2)
SMALL_EDGES = {
    ("input", "a0.h0<q>"): 0.5,
    ("input", "a1.h1<k>"): -0.25,
    ("a0.h0", "a1.h1<v>"): -2.0,
    ("a0.h1", "a1.h0<q>"): 1.0,
    ("a1.h0", "m1"): 0.75,
    ("m0", "a1.h0<k>"): 0.1,
    ("m1", "logits"): -1.5,
}


# --- the DOT text ------------------------------------------------------------------------------


def test_one_edge_statement_per_kept_edge_into_the_right_port():
    circuit = make_circuit(SMALL, SMALL_EDGES)
    dot = circuit_dot(circuit)
    edges = drawn_edges(dot)
    assert len(edges) == circuit.n_edges == len(SMALL_EDGES)
    # Every other "->" is in the one invisible statement that keeps the rows in order.
    invisible = [line for line in dot.splitlines() if "->" in line and "style=invis" in line]
    assert len(invisible) == 1
    assert dot.count("->") == len(edges) + invisible[0].count("->")

    drawn = {(e["src"], e["node"], e["port"]) for e in edges}
    assert drawn == {
        ("input", "a0.h0", "q"),
        ("input", "a1.h1", "k"),
        ("a0.h0", "a1.h1", "v"),
        ("a0.h1", "a1.h0", "q"),
        ("a1.h0", "m1", None),
        ("m0", "a1.h0", "k"),
        ("m1", "logits", None),
    }
    # Head nodes carry q, k and v cells as ports.
    assert re.search(r'"a1\.h1" \[shape=none.*PORT="q".*PORT="k".*PORT="v"', dot)


def test_colour_follows_sign_and_width_follows_abs_score():
    circuit = make_circuit(SMALL, SMALL_EDGES)
    edges = {(e["src"], e["node"], e["port"]): e for e in drawn_edges(circuit_dot(circuit))}
    by_name = {
        ("input", "a0.h0<q>"): ("input", "a0.h0", "q"),
        ("input", "a1.h1<k>"): ("input", "a1.h1", "k"),
        ("a0.h0", "a1.h1<v>"): ("a0.h0", "a1.h1", "v"),
        ("a0.h1", "a1.h0<q>"): ("a0.h1", "a1.h0", "q"),
        ("a1.h0", "m1"): ("a1.h0", "m1", None),
        ("m0", "a1.h0<k>"): ("m0", "a1.h0", "k"),
        ("m1", "logits"): ("m1", "logits", None),
    }
    for name, score in SMALL_EDGES.items():
        colour = edges[by_name[name]]["colour"]
        expected = diagram.AGAINST_COLOUR if score > 0 else diagram.NEEDED_COLOUR
        assert colour.startswith(expected), (name, colour)
    widths = {name: edges[key]["width"] for name, key in by_name.items()}
    widest = max(widths, key=widths.get)
    assert widest == ("a0.h0", "a1.h1<v>")  # |-2.0| is the largest |score|
    assert widths[widest] == pytest.approx(diagram.MAX_PEN)
    ordered = sorted(SMALL_EDGES, key=lambda n: abs(SMALL_EDGES[n]))
    assert [widths[n] for n in ordered] == sorted(widths.values())
    assert min(widths.values()) >= diagram.MIN_PEN


def test_only_touched_nodes_are_drawn_with_kind_styles():
    circuit = make_circuit(SMALL, {("a0.h1", "a1.h0<q>"): 1.0, ("m0", "logits"): -1.0})
    dot = circuit_dot(circuit)
    declared = set(re.findall(r'^  "([^"]+)" \[', dot, flags=re.M))
    nodes = {n for n in declared if not n.startswith("row: ")}
    assert nodes == {"a0.h1", "a1.h0", "m0", "logits"}
    assert re.search(r'"m0" \[shape="box", style="rounded,filled"', dot)
    assert re.search(r'"logits" \[shape="ellipse"', dot)
    # Rows, bottom to top, follow the forward pass and skip empty ones.
    assert '"row: layer 0 attn" -> "row: layer 0 MLP" -> "row: layer 1 attn" -> "row: logits"' in (
        dot
    )


def test_gqa_groups_are_nodes_with_key_and_value_ports():
    shape = GraphShape(n_layers=2, n_heads=4, n_kv_heads=2)
    circuit = make_circuit(
        shape,
        {
            ("a0.h1", "a1.g0<k>"): 1.0,
            ("a0.h2", "a1.g1<v>"): -1.0,
            ("input", "a1.h3<q>"): 0.5,
        },
    )
    dot = circuit_dot(circuit)
    edges = {(e["src"], e["node"], e["port"]) for e in drawn_edges(dot)}
    assert edges == {("a0.h1", "a1.g0", "k"), ("a0.h2", "a1.g1", "v"), ("input", "a1.h3", "q")}
    group = re.search(r'^  "a1\.g0" \[(.*)\];$', dot, flags=re.M)[1]
    assert "a1.g0 · h0-h1" in group and 'PORT="k"' in group and 'PORT="v"' in group
    head = re.search(r'^  "a1\.h3" \[(.*)\];$', dot, flags=re.M)[1]
    assert 'PORT="q"' in head and 'PORT="k"' not in head  # keys and values live on the group
    # Groups share their layer's attention row.
    assert re.search(r'rank=same; "row: layer 1 attn" "a1.h3" "a1.g0" "a1.g1";', dot)


def test_attention_only_graph_has_no_mlp_rows():
    shape = GraphShape(n_layers=2, n_heads=2, n_kv_heads=2, has_mlp=False)
    circuit = make_circuit(shape, {("input", "a0.h1<v>"): 1.0, ("a0.h1", "logits"): 2.0})
    dot = circuit_dot(circuit)
    assert len(drawn_edges(dot)) == 2
    assert "MLP" not in dot and '"m0"' not in dot
    assert '"row: input" -> "row: layer 0 attn" -> "row: logits"' in dot


def test_parallel_mlp_shares_its_layers_row():
    shape = GraphShape(n_layers=2, n_heads=2, n_kv_heads=2, parallel_attn_mlp=True)
    circuit = make_circuit(shape, {("a0.h0", "m1"): 1.0, ("a0.h1", "a1.h0<q>"): 1.0})
    dot = circuit_dot(circuit)
    assert re.search(r'rank=same; "row: layer 1" "a1.h0" "m1";', dot)


def test_title_names_task_model_method_counts_and_faithfulness():
    circuit = make_circuit(SMALL, SMALL_EDGES)
    dot = circuit_dot(circuit)
    assert "t · m · eap" in dot
    assert f"7 of {circuit.graph.n_edges:,} edges kept · faithfulness 0.900" in dot
    assert "showing" not in dot
    as_tensor = make_circuit(SMALL, SMALL_EDGES, metrics={"faithfulness": torch.tensor(0.5)})
    assert "faithfulness 0.500" in circuit_dot(as_tensor)
    for metrics in ({}, {"faithfulness": "high"}, {"faithfulness": float("nan")}, {"f": 1}):
        other = make_circuit(SMALL, SMALL_EDGES, metrics=metrics)
        assert "faithfulness n/a" in circuit_dot(other)


def test_max_edges_draws_the_largest_and_says_so():
    circuit = random_circuit(GraphShape(n_layers=3, n_heads=3, n_kv_heads=3), 40)
    dot = circuit_dot(circuit, max_edges=10)
    edges = drawn_edges(dot)
    assert len(edges) == 10
    assert "showing 10 of 40 edges, the largest |score|" in dot
    kept = sorted(circuit.scores[circuit.mask].abs().tolist(), reverse=True)
    drawn_scores = sorted(
        (float(s) for s in re.findall(r'tooltip="[^"]*: ([-+][^"]*)"', dot)),
        key=abs,
        reverse=True,
    )
    assert [abs(s) for s in drawn_scores] == pytest.approx(kept[:10], rel=1e-3)
    with pytest.raises(AcdError, match="max_edges"):
        circuit_dot(circuit, max_edges=0)


def test_dot_is_deterministic_and_escapes_names():
    first = circuit_dot(random_circuit(GraphShape(4, 4, 4), 40))
    assert first == circuit_dot(random_circuit(GraphShape(4, 4, 4), 40))
    odd = make_circuit(SMALL, SMALL_EDGES, task='a "quoted" <task> & \\ back', model="m\nx")
    dot = circuit_dot(odd)
    assert "a &quot;quoted&quot;" not in dot  # quotes need no escaping inside HTML labels
    assert 'a "quoted" &lt;task&gt; &amp; \\ back' in dot
    assert "m x" in dot


def test_zero_scores_are_grey_and_explained():
    dot = circuit_dot(make_circuit(SMALL, {("input", "logits"): 0.0, ("m0", "logits"): 1.0}))
    colours = {e["src"]: e["colour"] for e in drawn_edges(dot)}
    assert colours["input"].startswith(diagram.ZERO_COLOUR)
    assert "zero / not finite" in dot
    assert "zero / not finite" not in circuit_dot(make_circuit(SMALL, SMALL_EDGES))


def test_empty_circuit_is_a_title_only():
    circuit = make_circuit(SMALL, {})
    dot = circuit_dot(circuit)
    assert drawn_edges(dot) == [] and "no edges kept" in dot


# --- rendering -----------------------------------------------------------------------------------


@needs_dot
def test_svg_is_well_formed_and_labels_every_node(tmp_path):
    odd = 'ioi & "friends" <2>'
    circuit = make_circuit(SMALL, SMALL_EDGES, task=odd)
    result = write_diagram(circuit, tmp_path / "circuit", ("svg", "png", "pdf"))
    assert isinstance(result, DiagramResult) and result.message is None
    assert result.paths == [tmp_path / f"circuit.{x}" for x in ("dot", "svg", "png", "pdf")]
    assert all(p.stat().st_size > 0 for p in result.paths)
    root = ET.parse(result.paths[1]).getroot()
    texts = {"".join(t.itertext()) for t in root.iter("{http://www.w3.org/2000/svg}text")}
    for label in circuit.nodes:
        assert label in texts, label
    assert f"{odd} · m · eap" in texts
    assert any("faithfulness 0.900" in t for t in texts)
    assert leftovers(tmp_path) == []


def test_missing_dot_writes_only_the_source_and_says_how_to_render(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    out = tmp_path / "out"
    result = write_diagram(make_circuit(SMALL, SMALL_EDGES), out / "circuit", ("svg", "png"))
    assert result.paths == [out / "circuit.dot"]
    assert sorted(p.name for p in out.iterdir()) == ["circuit.dot"]
    assert "`dot` was not found" in result.message
    assert f"dot -Tsvg {out / 'circuit.dot'} -o {out / 'circuit.svg'}" in result.message
    assert "\n" not in result.message


def test_failing_dot_leaves_no_rendered_or_temporary_file(tmp_path, monkeypatch):
    fake = tmp_path / "bin"
    fake.mkdir()
    script = fake / "dot"
    # Writes half an output file, then fails, as a crashing renderer might.
    script.write_text(
        '#!/bin/sh\nfor a; do out="$a"; done\necho "<svg" > "$out"\n'
        'echo "Error: syntax error in line 3" >&2\necho "more" >&2\nexit 1\n'
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", str(fake))
    out = tmp_path / "out"
    with pytest.raises(AcdError, match=r"exit status 1\): Error: syntax error in line 3$"):
        write_diagram(make_circuit(SMALL, SMALL_EDGES), out / "circuit", ("svg", "png"))
    assert sorted(p.name for p in out.iterdir()) == ["circuit.dot"]  # the complete source stays


def test_false_as_dot_raises_and_keeps_the_previous_svg(tmp_path, monkeypatch):
    if shutil.which("false") is None:
        pytest.skip("no `false` program")
    (tmp_path / "circuit.svg").write_text("old")
    monkeypatch.setattr(diagram, "DOT_PROGRAM", "false")
    with pytest.raises(AcdError, match="dot failed rendering svg"):
        write_diagram(make_circuit(SMALL, SMALL_EDGES), tmp_path / "circuit")
    assert (tmp_path / "circuit.svg").read_text() == "old"
    assert leftovers(tmp_path) == []


def test_unknown_format_is_rejected_before_writing(tmp_path):
    with pytest.raises(AcdError, match="unknown diagram format 'jpg'"):
        write_diagram(make_circuit(SMALL, SMALL_EDGES), tmp_path / "circuit", ("svg", "jpg"))
    assert list(tmp_path.iterdir()) == []


@needs_dot
def test_300_edges_on_a_12_by_12_graph_render_to_svg(tmp_path):
    """Every edge drawn, and an SVG that parses (the render's speed: bench/bench_select.py)."""
    circuit = random_circuit(GraphShape(n_layers=12, n_heads=12, n_kv_heads=12), 300)
    result = write_diagram(circuit, tmp_path / "big", ("svg",))
    ET.parse(result.paths[1])
    assert len(drawn_edges(result.paths[0].read_text())) == 300


def test_a_multi_query_group_names_all_its_heads_and_sits_in_its_attention_row():
    """One key/value group for every head (multi-query attention): the group's label lists
    them all, and the group, not a head, is drawn in layer 1's attention row below its MLP."""
    shape = GraphShape(n_layers=2, n_heads=4, n_kv_heads=1)
    circuit = make_circuit(shape, {("m0", "a1.g0<v>"): 1.0, ("a1.h2", "m1"): -0.5})
    dot = circuit_dot(circuit)
    group = re.search(r'^  "a1\.g0" \[(.*)\];$', dot, flags=re.M)[1]
    assert "a1.g0 · h0-h3" in group
    rows = re.findall(r'rank=same; "row: ([^"]*)"((?: "[^"]*")*);', dot)
    assert rows == [
        ("layer 0 MLP", ' "m0"'),
        ("layer 1 attn", ' "a1.h2" "a1.g0"'),
        ("layer 1 MLP", ' "m1"'),
    ]


def test_unstable_edges_are_dashed_and_their_inclusion_is_in_the_tooltip():
    base = make_circuit(SMALL, SMALL_EDGES)
    inclusion = base.mask.float()  # every kept edge in every resample ...
    shaky = base.graph.edge_index("a0.h1", "a1.h0<q>")
    inclusion[shaky] = 0.2  # ... but one, kept by 1 of 5
    circuit = make_circuit(SMALL, SMALL_EDGES, edge_inclusion=inclusion)
    dot = circuit_dot(circuit)
    lines = [line for line in dot.splitlines() if "->" in line and "invis" not in line]
    dashed = [line for line in lines if 'style="dashed"' in line]
    assert len(dashed) == 1 and dashed[0].lstrip().startswith('"a0.h1"')
    assert "kept in 20 % of the prompt resamples" in dashed[0]
    assert sum("kept in 100 % of the prompt resamples" in line for line in lines) == len(lines) - 1
    assert "dashed: kept in under 50 % of the prompt resamples" in dot
    assert "dashed" not in circuit_dot(base)  # no stability measured: nothing dashed or said


def test_a_node_level_circuit_shows_node_scores_and_counts_nodes():
    scores = {"input": -1.5, "a0.h0": 0.25, "a1.h0": 2.0, "m1": -0.5}
    circuit = make_circuit(SMALL, SMALL_EDGES, level="node", node_scores=scores)
    dot = circuit_dot(circuit)
    kept = len(circuit.kept_sources) - 1  # heads and MLPs; input is always kept
    assert (
        f"{kept} of {circuit.graph.n_src - 1} heads and MLPs kept ({len(SMALL_EDGES)} edges" in dot
    )
    assert 'label="input -1.5"' in dot and "<B>a0.h0 +0.25</B>" in dot
    assert 'label="m1 -0.5"' in dot
    assert "node level: each kept node shows its score" in dot
    # the same circuit at edge level shows no node scores
    edge_level = circuit_dot(make_circuit(SMALL, SMALL_EDGES, node_scores=scores))
    assert 'label="input"' in edge_level and "MLPs kept" not in edge_level
