"""Reference circuits: built from the literature data, with the counts the data states."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from acd.graph import ComputeGraph
from acd.reference import REFERENCES, build_reference_circuits, reference_circuit

ROOT = Path(__file__).resolve().parents[1] / "graphs" / "reference"
SOURCE = ROOT / "source" / "canonical_circuits.json"


@pytest.fixture(scope="module")
def data() -> dict:
    return json.loads(SOURCE.read_text(encoding="utf-8"))


def hook_to_acd(hook: str, head: int | None) -> str:
    """ACDC's TransformerLens hook names, read independently of acd.reference's mapping."""
    layer = int(re.match(r"blocks\.(\d+)\.", hook)[1])
    if hook.endswith("attn.hook_result"):
        return f"a{layer}.h{head}"
    if hook.endswith("hook_mlp_out") or hook.endswith("hook_mlp_in"):
        return f"m{layer}"
    if hook == "blocks.0.hook_resid_pre":
        return "input"
    if hook.endswith("hook_resid_post"):
        return "logits"
    letter = re.search(r"hook_([qkv])_input$", hook)[1]
    return f"a{layer}.h{head}<{letter}>"


@pytest.mark.parametrize("key", sorted(REFERENCES))
def test_circuit_equals_the_hook_level_edges_and_their_count(data, key):
    circuit = reference_circuit(data, key)
    entry = data[key]
    addition = [e for e in entry["hook_edges"] if e["type"] == "ADDITION"]
    expected = circuit.graph.mask_from_edges(
        [
            (hook_to_acd(e["parent"], e["parent_head"]), hook_to_acd(e["child"], e["child_head"]))
            for e in addition
        ]
    )
    assert torch.equal(circuit.mask, expected)
    direct = len(entry["hook_edges"]) - len(addition)
    assert circuit.n_edges + direct == entry["n_edges"]  # 1,041 / 262 / 37 in ACDC's counting


def test_full_graph_counts_differ_by_one_direct_edge_per_qkv_input(data):
    sizes = data["graph_sizes_non_placeholder_edges"]
    for label, (model, _, shape, _) in [
        ("gpt2-small", REFERENCES["ioi"]),
        ("attn-only-4l", REFERENCES["docstring"]),
    ]:
        graph = ComputeGraph(shape)
        acdc = next(v for k, v in sizes.items() if k.startswith(label))
        assert graph.n_edges + 3 * shape.n_layers * shape.n_heads == acdc, model
    assert ComputeGraph(REFERENCES["ioi"][2]).n_edges == 32_491


def test_known_ioi_edges(data):
    circuit = reference_circuit(data, "ioi")
    edges = set(circuit.edges)
    assert ("a9.h9", "logits") in edges  # a name mover writes the answer
    assert ("a7.h3", "a9.h9<q>") in edges  # S-inhibition -> name mover query
    assert ("a9.h9", "a10.h0<q>") not in edges  # name movers do not feed each other
    assert ("input", "a9.h9<k>") in edges and ("input", "a9.h9<q>") not in edges


def test_committed_files_are_what_the_script_builds(tmp_path):
    from acd.export import load_circuit

    rebuilt = build_reference_circuits(SOURCE, tmp_path)
    assert len(rebuilt) == 3
    for path in rebuilt:
        committed = ROOT / path.relative_to(tmp_path)
        assert committed.read_bytes() == path.read_bytes(), (
            f"rerun python -m acd.reference ({committed})"
        )
        circuit = load_circuit(committed)
        assert circuit.method == "reference" and circuit.n_edges == circuit.params["edges_here"]
