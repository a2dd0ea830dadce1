"""Published reference circuits, as acd circuits.

``build_reference_circuits`` turns the literature data of ``canonical_circuits.json`` (a copy
ships in graphs/reference/source/) into circuit.json files of acd's own format:

    graphs/reference/gpt2-small/ioi.json            Wang et al. 2022, as ACDC encodes it
    graphs/reference/gpt2-small/greater-than.json   Hanna et al. 2023
    graphs/reference/attn-only-4l/docstring.json    Heimersheim & Janiak 2023

Regenerate them with ``python -m acd.reference`` (arguments: source JSON, output folder).

Mapping from ACDC's graph to acd's. ACDC counts two kinds of edges: ADDITION edges, from a
component's output to an input that reads the residual stream (a head's q/k/v input, an MLP's
input, the final residual), and DIRECT_COMPUTATION edges, from a head's q/k/v *input* to its
q/k/v *activation* inside the head. acd's graph has only the first kind: a head's q input is
the destination ``a{l}.h{h}<q>`` and what happens inside the head is not an edge. So

    ACDC embed        -> input          ACDC a{l}.{h} (attn.hook_result)  -> a{l}.h{h}
    ACDC m{l}         -> m{l}           ACDC a{l}.{h} with letter x       -> a{l}.h{h}<x>
    ACDC resid_post   -> logits

and ACDC's count is acd's plus one DIRECT_COMPUTATION edge per q/k/v input in use: GPT-2 small
has 32,923 edges for ACDC and 32,491 here (the difference, 432 = 12 layers x 12 heads x 3, is
every head's q/k/v DIRECT edge); the IOI circuit's 1,041 edges are 963 here plus 78 DIRECT
ones; greater-than 262 = 235 + 27; docstring 37 = 24 + 13 (attn-only-4l: 1,377 = 1,281 + 96).
Each file's ``params`` records both counts and the source.

Reference circuits have no scores (every score is 0) and no model weights hash: they describe
the real GPT-2 small / attn-only-4l models, which acd cannot download here.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import torch

from acd.circuit import Circuit
from acd.errors import AcdError
from acd.graph import ComputeGraph, GraphShape

# circuit key in the source data -> (model folder, acd task name, graph shape, citation)
REFERENCES = {
    "ioi": (
        "gpt2-small",
        "ioi",
        GraphShape(n_layers=12, n_heads=12, n_kv_heads=12),
        "Wang et al. 2022, as encoded by Conmy et al. 2023 (ACDC repository)",
    ),
    "greaterthan": (
        "gpt2-small",
        "greater-than",
        GraphShape(n_layers=12, n_heads=12, n_kv_heads=12),
        "Hanna et al. 2023, as encoded by Conmy et al. 2023 (ACDC repository)",
    ),
    "docstring": (
        "attn-only-4l",
        "docstring",
        GraphShape(n_layers=4, n_heads=8, n_kv_heads=8, has_mlp=False),
        "Heimersheim & Janiak 2023, as encoded by Conmy et al. 2023 (ACDC repository)",
    ),
}

_HEAD = re.compile(r"^a(\d+)\.(\d+)$")


def acdc_component_to_acd(name: str, qkv: str | None = None) -> str:
    """An ACDC component name (``embed``, ``a9.9``, ``m3``, ``resid_post``), with the q/k/v
    letter of the input it names, as an acd node or port name."""
    if name == "embed":
        return "input"
    if name == "resid_post":
        return "logits"
    head = _HEAD.match(name)
    if head:
        node = f"a{head[1]}.h{head[2]}"
        return f"{node}<{qkv}>" if qkv else node
    if re.fullmatch(r"m\d+", name):
        return name
    raise AcdError(f"unknown ACDC component name {name!r}")


def reference_circuit(data: dict, key: str) -> Circuit:
    """The circuit ``key`` (``ioi``, ``greaterthan``, ``docstring``) of the source data."""
    model, task, shape, citation = REFERENCES[key]
    entry = data[key]
    graph = ComputeGraph(shape)
    edges = [
        (acdc_component_to_acd(e["src"]), acdc_component_to_acd(e["dst"], e["qkv"]))
        for e in entry["component_edges"]
    ]
    mask = graph.mask_from_edges(edges)
    if int(mask.sum()) != len(edges):
        raise AcdError(f"{key}: the source lists an edge twice")
    n_direct = sum(e["type"] == "DIRECT_COMPUTATION" for e in entry["hook_edges"])
    return Circuit(
        graph=graph,
        mask=mask,
        scores=torch.zeros(graph.n_src, graph.n_dst),
        task=task,
        model=model,
        method="reference",
        params={
            "source": citation,
            "source_data": data["_about"]["source_repo"],
            "acdc_edges": entry["n_edges"],
            "acdc_direct_computation_edges": n_direct,
            "edges_here": len(edges),
            "counting": "acd counts ACDC's ADDITION edges; DIRECT_COMPUTATION edges (q/k/v "
            "input -> q/k/v inside a head) have no counterpart (acd.reference)",
        },
        seed=0,
        metrics={},
    )


def build_reference_circuits(source: str | Path, out_dir: str | Path) -> list[Path]:
    """Write every reference circuit of ``source`` into ``out_dir``/<model>/<task>.json."""
    from acd.export import save_circuit_json

    try:
        data = json.loads(Path(source).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise AcdError(f"cannot read the reference data {source}: {err}") from None
    written = []
    for key, (model, task, _, _) in REFERENCES.items():
        circuit = reference_circuit(data, key)
        # Fixed provenance, so rebuilding gives the same bytes.
        circuit.versions = {}
        circuit.created = ""
        written.append(save_circuit_json(circuit, Path(out_dir) / model / f"{task}.json"))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m acd.reference", description=(__doc__ or "").split("\n\n")[0]
    )
    root = Path("graphs/reference")
    parser.add_argument("source", nargs="?", default=root / "source/canonical_circuits.json")
    parser.add_argument("out", nargs="?", default=root)
    args = parser.parse_args(argv)
    try:
        for path in build_reference_circuits(args.source, args.out):
            print(path)
    except AcdError as err:
        print(f"acd: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
