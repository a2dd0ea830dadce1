"""Circuit files: circuit.json, networkx (GraphML, node-link), EAP-IG JSON, summary.md, hashes."""

from __future__ import annotations

import json
import math
from datetime import datetime
from types import SimpleNamespace

import networkx as nx
import pytest
import torch

import acd
from acd.circuit import Circuit
from acd.errors import AcdError
from acd.export import (
    circuit_to_dict,
    load_circuit,
    read_eapig_json,
    read_networkx,
    save_circuit_json,
    summary_markdown,
    to_networkx,
    write_data_files,
    write_eapig_json,
    write_graphml,
    write_nodelink,
)
from acd.graph import ComputeGraph, GraphShape
from acd.models import weights_sha256

# Kept edges of the hand-built 2-layer, 2-head circuit: one source feeds q, k and v of a1.h0.
EDGES = [
    ("input", "a0.h1<v>"),
    ("input", "a1.h0<q>"),
    ("input", "a1.h0<k>"),
    ("input", "a1.h0<v>"),
    ("a0.h1", "m0"),
    ("m0", "a1.h0<q>"),
    ("a1.h0", "logits"),
    ("m1", "logits"),
]


def small_graph() -> ComputeGraph:
    return ComputeGraph(GraphShape(n_layers=2, n_heads=2, n_kv_heads=2))


def gqa_graph() -> ComputeGraph:
    return ComputeGraph(GraphShape(n_layers=2, n_heads=4, n_kv_heads=2))


def make_circuit(graph: ComputeGraph, edges, **fields) -> Circuit:
    """A circuit with seeded random scores (float32 values that need all 9 digits) and an
    exactly representable score on every kept edge, k / 8, so expectations are exact."""
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(graph.n_src, graph.n_dst, generator=generator) / 3
    for k, (src, dst) in enumerate(edges):
        scores[graph.edge_index(src, dst)] = (-1) ** k * (k + 1) / 8
    defaults = dict(
        task="ioi",
        model="toy",
        method="eap",
        params={"edges": len(edges), "absolute": True, "threshold": None},
        seed=3,
        metrics={
            "metric": "logit_diff",
            "faithfulness": 0.75,
            "faithfulness_mean": 0.7,
            "faithfulness_std": 0.125,
            "faithfulness_p05": 0.5,
            "faithfulness_p95": 1.0,
            "n_prompts": 16,
            "metric_full": 2.0,
            "metric_circuit": 1.5,
            "metric_empty": 0.0,
            "seconds": 1.25,
        },
        node_scores={},
        model_sha256="ab" * 32,
    )
    defaults.update(fields)
    return Circuit(graph, graph.mask_from_edges(edges), scores, **defaults)


def assert_same_circuit(a: Circuit, b: Circuit) -> None:
    assert a.graph.shape == b.graph.shape
    assert torch.equal(a.mask, b.mask)
    assert a.scores.dtype == b.scores.dtype == torch.float32
    assert torch.equal(a.scores.view(torch.int32), b.scores.view(torch.int32))  # same bits
    for name in ("task", "model", "method", "params", "seed", "node_scores", "model_sha256"):
        assert getattr(a, name) == getattr(b, name), name
    assert (a.versions, a.created) == (b.versions, b.created)
    assert a.metrics.keys() == b.metrics.keys()
    for key, value in a.metrics.items():
        other = b.metrics[key]
        assert other == value or (math.isnan(value) and math.isnan(other)), key


def strict_json(text: str):
    """json.loads that refuses NaN / Infinity literals (not JSON, though Python writes them)."""

    def refuse(token):
        raise ValueError(f"non-JSON constant {token}")

    return json.loads(text, parse_constant=refuse)


# --------------------------------------------------------------------------------------------
# Circuit provenance


def test_circuit_records_versions_and_creation_time():
    circuit = make_circuit(small_graph(), EDGES[:1])
    assert circuit.versions["python"].count(".") == 2
    assert circuit.versions["torch"] == torch.__version__
    assert circuit.versions["networkx"] == nx.__version__
    created = datetime.fromisoformat(circuit.created.replace("Z", "+00:00"))
    assert created.utcoffset().total_seconds() == 0
    assert Circuit(small_graph(), circuit.mask, circuit.scores, "t", "m", "x").model_sha256 == ""


# --------------------------------------------------------------------------------------------
# circuit.json


def test_circuit_json_round_trips_exactly(tmp_path):
    metrics = {"faithfulness": math.nan, "kl_to_full": math.inf, "low": -math.inf, "n": 3}
    circuit = make_circuit(
        small_graph(), EDGES, metrics=metrics, node_scores={"a0.h1": 0.1, "m0": -2.5}
    )
    path = save_circuit_json(circuit, tmp_path / "out" / "circuit.json")
    document = strict_json(path.read_text())  # valid JSON despite the NaN / inf metrics
    assert document["format"] == "acd-circuit" and document["format_version"] == 1
    assert document["metrics"]["faithfulness"] == "NaN"
    assert_same_circuit(load_circuit(path), circuit)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["circuit.json"]


def test_circuit_json_fields_and_scores_order():
    graph = small_graph()
    circuit = make_circuit(graph, EDGES)
    document = circuit_to_dict(circuit)
    assert document["model"] == {"name": "toy", "sha256": "ab" * 32}
    assert document["graph"] == {
        "n_layers": 2,
        "n_heads": 2,
        "n_kv_heads": 2,
        "has_mlp": True,
        "parallel_attn_mlp": False,
        "n_src": 7,  # input + 2 x (2 heads + MLP)
        "n_dst": 15,  # 2 x (3 x 2 + 1) + logits
        "n_edges": 46,
    }
    assert document["edges"] == [list(edge) for edge in EDGES]
    # Row-major order of graph.valid: source by source, destination by destination.
    expected = [
        float(circuit.scores[i, j])
        for i in range(graph.n_src)
        for j in range(graph.n_dst)
        if graph.valid[i, j]
    ]
    assert document["scores"] == expected and len(expected) == 46
    assert document["scores"][0] == float(circuit.scores[graph.edge_index("input", "a0.h0<q>")])


def test_circuit_json_keeps_scores_on_one_line(tmp_path):
    path = save_circuit_json(make_circuit(small_graph(), EDGES), tmp_path / "c.json")
    lines = path.read_text().splitlines()
    score_lines = [line for line in lines if line.startswith(' "scores"')]
    assert len(score_lines) == 1 and score_lines[0].count(",") == 45
    assert ' "task": "ioi",' in lines  # the rest is indented for reading


def test_gqa_circuit_round_trips(tmp_path):
    edges = [("input", "a1.g0<k>"), ("a0.h3", "a1.g1<v>"), ("a0.h2", "a1.h3<q>")]
    circuit = make_circuit(gqa_graph(), edges)
    assert_same_circuit(load_circuit(save_circuit_json(circuit, tmp_path / "c.json")), circuit)


def _write_modified(tmp_path, change) -> str:
    document = circuit_to_dict(make_circuit(small_graph(), EDGES))
    change(document)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(document))
    return path


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.update(format="something-else"), "not an acd circuit file"),
        (lambda d: d.update(format_version=2), "format version 2 is not supported"),
        (lambda d: d["edges"].append(["a1.h0", "a0.h0<q>"]), "a1.h0 -> a0.h0<q>"),
        (lambda d: d["edges"].append(["a7.h0", "logits"]), "no node or port named 'a7.h0'"),
        (lambda d: d["scores"].pop(), "45 scores for a graph of 46 edges"),
        (lambda d: d.pop("graph"), "missing 'graph'"),
    ],
)
def test_load_circuit_errors_are_one_line(tmp_path, change, message):
    with pytest.raises(AcdError, match=message) as err:
        load_circuit(_write_modified(tmp_path, change))
    assert "\n" not in str(err.value)


def test_load_circuit_missing_file_and_not_json(tmp_path):
    with pytest.raises(AcdError, match="no such file"):
        load_circuit(tmp_path / "absent.json")
    (tmp_path / "text.json").write_text("edges: 3\n")
    with pytest.raises(AcdError, match="not valid JSON"):
        load_circuit(tmp_path / "text.json")


# --------------------------------------------------------------------------------------------
# networkx


def test_to_networkx_has_one_edge_per_circuit_edge():
    graph = small_graph()
    circuit = make_circuit(graph, EDGES, node_scores={"m0": 9.5})
    G = circuit.to_networkx()
    assert isinstance(G, nx.MultiDiGraph)
    assert G.number_of_edges() == circuit.n_edges == len(EDGES)
    # input feeds q, k and v of a1.h0: three parallel edges, keyed by port.
    assert sorted(G["input"]["a1.h0"]) == ["a1.h0<k>", "a1.h0<q>", "a1.h0<v>"]
    assert G.edges["input", "a1.h0", "a1.h0<k>"] == {"score": 3 / 8, "port": "k"}
    assert G.edges["m0", "a1.h0", "a1.h0<q>"] == {"score": -6 / 8, "port": "q"}
    assert G.edges["m1", "logits", "logits"] == {"score": -8 / 8, "port": "none"}
    assert G.edges["a0.h1", "m0", "m0"]["port"] == "none"
    assert list(G.nodes) == ["input", "a0.h1", "m0", "a1.h0", "m1", "logits"]
    assert G.nodes["input"] == {
        "kind": "input",
        "layer": -1,
        "head": -1,
        "group": -1,
        "score": (1 + 2 + 3 + 4) / 8,  # sum of |score| over its kept outgoing edges
    }
    assert G.nodes["a1.h0"] == {"kind": "head", "layer": 1, "head": 0, "group": 0, "score": 7 / 8}
    assert G.nodes["m0"]["score"] == 9.5  # from node_scores
    assert G.nodes["logits"] == {
        "kind": "logits",
        "layer": 2,
        "head": -1,
        "group": -1,
        "score": 0.0,
    }
    assert G.graph == {
        "task": "ioi",
        "model": "toy",
        "method": "eap",
        "level": "edge",
        "n_edges": 8,
        "seed": 3,
        "model_sha256": "ab" * 32,
        "faithfulness": 0.75,
    }


def test_to_networkx_edges_carry_their_inclusion_when_measured():
    graph = small_graph()
    inclusion = torch.zeros(graph.n_src, graph.n_dst)
    inclusion[graph.edge_index("input", "a1.h0<k>")] = 0.4
    G = to_networkx(make_circuit(graph, EDGES, edge_inclusion=inclusion))
    assert G.edges["input", "a1.h0", "a1.h0<k>"]["inclusion"] == pytest.approx(0.4)
    assert G.edges["m1", "logits", "logits"]["inclusion"] == 0.0
    assert (
        "inclusion" not in to_networkx(make_circuit(graph, EDGES)).edges["m1", "logits", "logits"]
    )


def test_to_networkx_gqa_group_nodes():
    edges = [("input", "a1.g1<k>"), ("input", "a1.g1<v>"), ("a0.h0", "a1.h2<q>")]
    G = to_networkx(make_circuit(gqa_graph(), edges))
    assert G.number_of_edges() == 3
    assert G.nodes["a1.g1"] == {
        "kind": "kv_group",
        "layer": 1,
        "head": -1,
        "group": 1,
        "score": 0.0,
    }
    assert G.nodes["a0.h0"]["group"] == 0 and G.nodes["a1.h2"]["group"] == 1
    assert set(G["input"]["a1.g1"]) == {"a1.g1<k>", "a1.g1<v>"}


def _edges(G):
    return {(u, v, k): d for u, v, k, d in G.edges(keys=True, data=True)}


@pytest.mark.parametrize("writer, name", [(write_graphml, "c.graphml"), (write_nodelink, "c.json")])
def test_networkx_files_read_back_equal(tmp_path, writer, name):
    circuit = make_circuit(small_graph(), EDGES, node_scores={"m0": 9.5})
    G = to_networkx(circuit)
    back = read_networkx(writer(circuit, tmp_path / name))
    assert isinstance(back, nx.MultiDiGraph) and back.is_directed()
    assert dict(back.nodes(data=True)) == dict(G.nodes(data=True))
    assert _edges(back) == _edges(G)
    assert back.graph == G.graph
    for attrs in back.nodes.values():  # types survive, not just values
        assert [type(attrs[k]) for k in ("kind", "layer", "score")] == [str, int, float]
    assert all(type(d["score"]) is float for d in _edges(back).values())


def test_graph_attributes_without_faithfulness_still_write(tmp_path):
    circuit = make_circuit(small_graph(), EDGES, metrics={"faithfulness": None})
    assert "faithfulness" not in to_networkx(circuit).graph
    back = read_networkx(write_graphml(circuit, tmp_path / "c.graphml"))
    assert back.graph["n_edges"] == 8 and "faithfulness" not in back.graph


def test_nodelink_is_strict_json(tmp_path):
    circuit = make_circuit(small_graph(), EDGES, metrics={"faithfulness": math.nan})
    data = strict_json(write_nodelink(circuit, tmp_path / "c.json").read_text())
    assert data["graph"]["faithfulness"] is None
    assert len(data["edges"]) == 8 and data["multigraph"] is True


# --------------------------------------------------------------------------------------------
# EAP-IG


def eapig_edge_names(n_layers: int, n_heads: int) -> set[str]:
    """Every edge name of EAP-IG's Graph.from_model (sequential attention + MLP), rebuilt here
    from its construction loop, independently of ComputeGraph."""
    names, residual = set(), ["input"]
    for layer in range(n_layers):
        heads = [f"a{layer}.h{h}" for h in range(n_heads)]
        names |= {f"{u}->{h}<{x}>" for u in residual for h in heads for x in "qkv"}
        residual += heads
        names |= {f"{u}->m{layer}" for u in residual}
        residual.append(f"m{layer}")
    return names | {f"{u}->logits" for u in residual}


def test_eapig_json_matches_eapig_edge_names_and_round_trips(tmp_path):
    circuit = make_circuit(small_graph(), EDGES, node_scores={"a0.h1": 0.5})
    path = write_eapig_json(circuit, tmp_path / "g.json", d_model=32)
    document = json.loads(path.read_text())
    assert document["cfg"] == {
        "n_layers": 2,
        "n_heads": 2,
        "parallel_attn_mlp": False,
        "d_model": 32,
    }
    assert set(document["edges"]) == eapig_edge_names(2, 2)
    assert document["edges"]["input->a1.h0<k>"] == {"score": 3 / 8, "in_graph": True}
    assert document["edges"]["input->a0.h0<q>"]["in_graph"] is False
    assert document["nodes"]["a0.h1"] == {"in_graph": True, "score": 0.5}
    assert document["nodes"]["a0.h0"] == {"in_graph": False}
    assert list(document["nodes"]) == ["input", "a0.h0", "a0.h1", "m0", "a1.h0", "a1.h1", "m1"] + [
        "logits"
    ]
    back = read_eapig_json(path, task="ioi", model="toy")
    assert torch.equal(back.mask, circuit.mask)
    assert torch.equal(back.scores.view(torch.int32), circuit.scores.view(torch.int32))
    assert back.node_scores == {"a0.h1": 0.5}
    assert (back.task, back.model) == ("ioi", "toy")


def test_eapig_legacy_node_form(tmp_path):
    circuit = make_circuit(small_graph(), EDGES)
    path = write_eapig_json(circuit, tmp_path / "g.json", legacy_nodes=True)
    nodes = json.loads(path.read_text())["nodes"]
    assert nodes["a0.h1"] is True and nodes["a0.h0"] is False
    assert torch.equal(read_eapig_json(path).mask, circuit.mask)


@pytest.mark.parametrize("has_mlp, parallel", [(False, False), (True, True)])
def test_eapig_round_trip_attention_only_and_parallel(tmp_path, has_mlp, parallel):
    graph = ComputeGraph(GraphShape(2, 2, 2, has_mlp=has_mlp, parallel_attn_mlp=parallel))
    circuit = make_circuit(graph, [("input", "a1.h1<v>"), ("a0.h0", "logits")])
    document = json.loads(write_eapig_json(circuit, tmp_path / "g.json").read_text())
    assert ("m0" in document["nodes"]) is has_mlp
    assert document["cfg"].get("attn_only", False) is not has_mlp
    back = read_eapig_json(tmp_path / "g.json")
    assert back.graph.shape == graph.shape
    assert torch.equal(back.mask, circuit.mask) and torch.equal(back.scores, circuit.scores)


def test_read_hand_written_eapig_json(tmp_path):
    document = {
        "cfg": {"n_layers": 2, "n_heads": 2, "parallel_attn_mlp": False, "d_model": 8},
        "nodes": {"input": True, "a0.h1": {"in_graph": True, "score": float("nan")}},
        "edges": {
            "input->a0.h1<v>": {"score": 0.5, "in_graph": True},
            "a0.h1->a1.h0<k>": {"score": -0.25, "in_graph": True},
            "a0.h1->m0": {"score": 2.0, "in_graph": False},
            "m1->logits": {"score": None, "in_graph": True},
        },
    }
    (tmp_path / "g.json").write_text(json.dumps(document))
    circuit = read_eapig_json(tmp_path / "g.json")
    graph = circuit.graph
    assert (graph.n_layers, graph.n_heads, graph.n_kv_heads) == (2, 2, 2)
    assert circuit.edges == [("input", "a0.h1<v>"), ("a0.h1", "a1.h0<k>"), ("m1", "logits")]
    assert circuit.scores[graph.edge_index("a0.h1", "m0")] == 2.0
    assert circuit.scores[graph.edge_index("m1", "logits")] == 0.0  # None -> 0
    assert circuit.scores.abs().sum() == 2.75
    assert circuit.node_scores == {}  # NaN is EAP-IG's "no score"


def test_eapig_errors(tmp_path):
    gqa = make_circuit(gqa_graph(), [("input", "a1.g0<k>")])
    with pytest.raises(AcdError, match="no grouped-query ports"):
        write_eapig_json(gqa, tmp_path / "g.json")
    assert not (tmp_path / "g.json").exists()
    document = {"cfg": {"n_layers": 2, "n_heads": 2}, "nodes": {}, "edges": {"a3.h0->logits": {}}}
    (tmp_path / "bad.json").write_text(json.dumps(document))
    with pytest.raises(AcdError, match="'a3.h0->logits' is not in a 2-layer, 2-head graph"):
        read_eapig_json(tmp_path / "bad.json")
    (tmp_path / "nocfg.json").write_text(json.dumps({"nodes": {}, "edges": {}}))
    with pytest.raises(AcdError, match="missing 'cfg'"):
        read_eapig_json(tmp_path / "nocfg.json")


# --------------------------------------------------------------------------------------------
# summary.md and the data files


def test_summary_markdown():
    text = summary_markdown(make_circuit(small_graph(), EDGES))
    lines = text.splitlines()
    assert lines[0] == "# Circuit: ioi in toy"
    assert f"- Model: toy (sha256 {'ab' * 6})" in lines
    assert "- Edges kept: 8 of 46 (17.39%)" in lines
    assert "- Parameters: edges=8, absolute=True, threshold=None" in lines
    assert (
        "- Faithfulness: 0.75 (per prompt: mean 0.7, std 0.125, p05–p95 0.5–1, 16 prompts)" in lines
    )
    assert "- Metric (logit_diff): clean 2, circuit 1.5, corrupted (empty circuit) 0" in lines
    assert "- Time: 1.25 s" in lines
    table = [line for line in lines if line.startswith("| ") and line[2].isdigit()]
    assert len(table) == 8  # fewer than 10 kept edges: all of them, largest |score| first
    assert table[0] == "| 1 | m1 | logits | -1 |"
    assert table[1] == "| 2 | a1.h0 | logits | 0.875 |"


def test_write_data_files(tmp_path):
    circuit = make_circuit(small_graph(), EDGES)
    paths = write_data_files(circuit, tmp_path / "run")
    names = ["circuit.json", "circuit.graphml", "circuit.nodelink.json", "summary.md"]
    assert [p.name for p in paths] == names
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == sorted(names)  # no temps
    assert_same_circuit(load_circuit(paths[0]), circuit)
    expected = _edges(to_networkx(circuit))
    assert _edges(read_networkx(paths[1])) == _edges(read_networkx(paths[2])) == expected
    assert paths[3].read_text() == summary_markdown(circuit)


def test_public_names():
    assert acd.load_circuit is load_circuit
    assert acd.read_eapig_json is read_eapig_json and acd.write_eapig_json is write_eapig_json


# Every name imported from acd.export in acd/, tests/, bench/ and the docs.
EXPORTED = {
    "circuit_json": ["circuit_from_dict", "circuit_json", "circuit_to_dict", "load_any_circuit"],
    "eapig": ["eapig_dict", "eapig_from_dict", "read_eapig_json", "write_eapig_json"],
    "networkx_graph": ["read_networkx", "to_networkx", "write_graphml", "write_nodelink"],
    "save": ["SavedFiles", "save_circuit", "write_data_files"],
    "summary": ["summary_markdown"],
}


def test_the_export_package_re_exports_each_writer_from_its_module():
    import importlib

    import acd.export

    for module_name, names in EXPORTED.items():
        module = importlib.import_module(f"acd.export.{module_name}")
        for name in names:
            assert getattr(acd.export, name) is getattr(module, name), name
    assert acd.export.load_circuit is load_circuit and "save_circuit_json" in acd.export.__all__


def test_the_circuit_module_imports_no_writer_when_loaded():
    """The dependency goes one way: acd.export imports acd.circuit, never the reverse at
    import time (Circuit's conveniences import acd.export when called)."""
    import ast
    from pathlib import Path

    import acd.circuit

    tree = ast.parse(Path(acd.circuit.__file__).read_text(encoding="utf-8"))
    imported = [n.module for n in tree.body if isinstance(n, ast.ImportFrom)]
    assert imported and not [m for m in imported if m and m.startswith("acd.export")]


def test_circuit_save_goes_through_the_package_and_leaves_nothing_on_failure(tmp_path, monkeypatch):
    import acd.export

    circuit = make_circuit(small_graph(), EDGES)
    saved = circuit.save(tmp_path / "run", formats=())
    assert [p.name for p in saved.paths] == [
        "circuit.json",
        "circuit.graphml",
        "circuit.nodelink.json",
        "summary.md",
        "circuit.dot",
        "circuit.html",
    ]
    assert saved.note is None and circuit.to_networkx().number_of_edges() == len(EDGES)

    def full_disk(circuit, out_dir):
        raise OSError("No space left on device")

    # acd.export.write_data_files is the seam a test replaces to interrupt a save.
    monkeypatch.setattr(acd.export, "write_data_files", full_disk)
    with pytest.raises(OSError, match="No space"):
        circuit.save(tmp_path / "failed", formats=())
    assert list((tmp_path / "failed").iterdir()) == []  # no staging folder, no file


# --------------------------------------------------------------------------------------------
# weights_sha256


def _adapter(module: torch.nn.Module):
    return SimpleNamespace(bridge=SimpleNamespace(original_model=module))


def test_weights_sha256_on_a_small_module_in_bfloat16():
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.LayerNorm(2)).to(torch.bfloat16)
    module.register_buffer("flag", torch.tensor(True))
    first = weights_sha256(_adapter(module))
    assert len(first) == 64 and first == weights_sha256(_adapter(module))
    with torch.no_grad():
        module[0].weight[0, 0] += 1
    assert weights_sha256(_adapter(module)) != first


def test_weights_sha256_of_the_toy_model():
    first, second = acd.load_model("toy", device="cpu"), acd.load_model("toy", device="cpu")
    digest = weights_sha256(first)
    assert digest == weights_sha256(second)
    parameter = next(second.bridge.original_model.parameters())
    with torch.no_grad():
        parameter.view(-1)[0] += 1e-3
    assert weights_sha256(second) != digest
