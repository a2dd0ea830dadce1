"""Circuit files: circuit.json, networkx (GraphML, node-link JSON), EAP-IG's graph JSON, summary.md.

Every writer goes through ``acd.atomic``, so an interrupted run leaves either the old file or
the complete new one. docs/formats.md describes each format with examples.

    circuit.json          the whole Circuit; ``load_circuit`` reads it back bit for bit
    circuit.graphml       the kept edges as a networkx MultiDiGraph (``to_networkx``)
    circuit.nodelink.json the same graph as node-link JSON
    EAP-IG JSON           hannamw/EAP-IG's ``Graph.to_json`` / ``Graph.from_json`` (also MIB's)
    summary.md            a short human-readable summary
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import networkx as nx
import torch

from acd.atomic import atomic_paths, atomic_write
from acd.circuit import Circuit
from acd.errors import AcdError
from acd.formats.circuit import FORMAT, FORMAT_VERSION, parse_circuit
from acd.formats.common import parse_json, read_text
from acd.formats.eapig import parse_eapig
from acd.graph import ComputeGraph
from acd.heldout import PromptSplit, TaskSource, split_line

# --------------------------------------------------------------------------------------------
# circuit.json


def circuit_to_dict(circuit: Circuit) -> dict[str, Any]:
    """The circuit.json document (format ``acd-circuit``, version 1) as plain JSON data.

    ``scores`` holds every valid edge's score, a flat list of ``graph.n_edges`` floats in
    row-major order of ``graph.valid`` ([n_src, n_dst]: source by source, and within a source
    destination by destination), the order of ``circuit.edge_scores``.
    """
    graph = circuit.graph
    _check_finite_scores(circuit)
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "task": circuit.task,
        "model": {"name": circuit.model, "sha256": circuit.model_sha256},
        "method": circuit.method,
        "params": _encode(circuit.params),
        "seed": circuit.seed,
        "metrics": _encode(circuit.metrics),
        "versions": dict(circuit.versions),
        "created": circuit.created,
        "graph": _shape_dict(graph),
        "edges": [list(edge) for edge in circuit.edges],
        # float(x) of a float32 is exact, and its repr reads back to the same float32 bits.
        "scores": _encode(circuit.scores[graph.valid].tolist()),
        "node_scores": _encode({k: float(v) for k, v in circuit.node_scores.items()}),
        # Optional (absent when unknown): where the task came from, how prompts were split.
        **({"task_source": circuit.task_source.to_dict()} if circuit.task_source else {}),
        **({"prompt_split": circuit.prompt_split.to_dict()} if circuit.prompt_split else {}),
    }


def circuit_json(circuit: Circuit) -> str:
    """circuit.json's text: indented for reading, with the (long) scores list on one line."""
    document = circuit_to_dict(circuit)
    edges, scores = document.pop("edges"), document.pop("scores")
    text = json.dumps(document, indent=1, allow_nan=False)
    # Append the edges (one pair per line) and the scores (one line) before the closing brace:
    # json.dumps(indent=1) would give each of the ~32k scores a line of its own.
    pairs = ",\n  ".join(json.dumps(edge) for edge in edges)
    edges_text = f"[\n  {pairs}\n ]" if edges else "[]"
    scores_text = json.dumps(scores, separators=(",", ":"), allow_nan=False)
    head = text[: text.rindex("}")].rstrip()
    return f'{head},\n "edges": {edges_text},\n "scores": {scores_text}\n}}\n'


def save_circuit_json(circuit: Circuit, path: str | Path) -> Path:
    """Write ``circuit`` to ``path`` as circuit.json, atomically."""
    return atomic_write(path, circuit_json(circuit))


def load_circuit(path: str | Path) -> Circuit:
    """Read a circuit.json written by ``save_circuit_json`` (or ``Circuit.save``).

    The file is checked against its schema (``acd.formats.circuit``, docs/formats.md) once:
    any problem (a missing or unreadable file, text that is not JSON, another format or
    version, a field of the wrong type, a non-finite score, a name the graph does not have,
    the wrong number of scores) is one AcdError line naming the file and the field.
    """
    return circuit_from_dict(_read_json(path), source=str(path))


def load_any_circuit(path: str | Path) -> Circuit:
    """A circuit.json of acd, or an EAP-IG / MIB graph JSON (recognised by its "cfg" key),
    read once and checked against its schema; every problem is one AcdError line."""
    document = _read_json(path)
    if isinstance(document, dict) and "cfg" in document and "edges" in document:
        return eapig_from_dict(document, source=str(path))
    return circuit_from_dict(document, source=str(path))


def circuit_from_dict(document: Any, *, source: str = "circuit.json") -> Circuit:
    """The Circuit a circuit.json document describes (checked by
    ``acd.formats.circuit.parse_circuit``); ``source`` names it in errors."""
    parsed = parse_circuit(document, source)
    doc = parsed.document
    return Circuit(
        graph=parsed.graph,
        mask=parsed.mask,
        scores=parsed.scores,
        task=doc.task,
        model=doc.model.name,
        method=doc.method,
        params=parsed.params,
        seed=doc.seed,
        metrics=parsed.metrics,
        node_scores=dict(doc.node_scores),
        model_sha256=doc.model.sha256,
        versions=dict(doc.versions),
        created=doc.created,
        task_source=TaskSource(**doc.task_source.model_dump()) if doc.task_source else None,
        prompt_split=PromptSplit(**doc.prompt_split.model_dump()) if doc.prompt_split else None,
    )


def _check_finite_scores(circuit: Circuit) -> None:
    """circuit.json holds finite scores only (its reader refuses NaN and infinities, which
    would draw as grey, zero-width edges): refuse to write a circuit that has others."""
    graph = circuit.graph
    bad = graph.valid & ~circuit.scores.isfinite()
    if bool(bad.any()):
        i, j = (int(x) for x in bad.nonzero()[0])
        raise AcdError(
            f"cannot write the circuit: {int(bad.sum())} edge scores are not finite (e.g. "
            f"{graph.sources[i].name} -> {graph.destinations[j].name}: "
            f"{float(circuit.scores[i, j])}); the scoring produced NaN or infinity"
        )
    for name, value in circuit.node_scores.items():
        if not math.isfinite(float(value)):
            raise AcdError(f"cannot write the circuit: node {name}'s score is {float(value)}")


def _shape_dict(graph: ComputeGraph) -> dict[str, Any]:
    shape = graph.shape
    return {
        "n_layers": shape.n_layers,
        "n_heads": shape.n_heads,
        "n_kv_heads": shape.n_kv_heads,
        "has_mlp": shape.has_mlp,
        "parallel_attn_mlp": shape.parallel_attn_mlp,
        "n_src": graph.n_src,
        "n_dst": graph.n_dst,
        "n_edges": graph.n_edges,
    }


# --------------------------------------------------------------------------------------------
# networkx


def to_networkx(circuit: Circuit) -> nx.MultiDiGraph:
    """The kept edges as a networkx MultiDiGraph, one networkx edge per circuit edge.

    Nodes are ``circuit.nodes`` (GQA key/value groups such as ``a3.g0`` included) with
    attributes ``kind`` ("input" | "head" | "mlp" | "logits" | "kv_group"), ``layer`` (input -1,
    logits ``n_layers``), ``head`` and ``group`` (-1 where none) and ``score`` (the node's score
    from ``circuit.node_scores`` when present, else the sum of |score| of its kept outgoing
    edges; always a float, since GraphML cannot store None).

    An edge goes from the source node to the node that reads it (``Port.node``) and is keyed by
    the destination port's name, e.g. ``"a2.h3<q>"``: one source feeding a head's query, key and
    value inputs gives three parallel edges, which a DiGraph would merge into one. Edge
    attributes: ``score`` (float) and ``port`` ("q" | "k" | "v" | "none").
    """
    graph = circuit.graph
    G = nx.MultiDiGraph()
    G.graph.update(_graph_attributes(circuit))
    out_weight = _kept_out_weight(circuit)
    for name in circuit.nodes:
        attrs = _node_attributes(graph, name)
        score = circuit.node_scores.get(name, out_weight.get(name, 0.0))
        G.add_node(name, **attrs, score=float(score))
    for i, j in circuit.mask.nonzero().tolist():
        port = graph.destinations[j]
        G.add_edge(
            graph.sources[i].name,
            port.node,
            key=port.name,
            score=float(circuit.scores[i, j]),
            port=port.kind if port.kind in ("q", "k", "v") else "none",
        )
    return G


def write_graphml(circuit: Circuit, path: str | Path) -> Path:
    """Write ``to_networkx(circuit)`` as GraphML, atomically (int, float and str types kept)."""
    with atomic_paths([path]) as (tmp,):
        nx.write_graphml(to_networkx(circuit), tmp)
    return Path(path)


def write_nodelink(circuit: Circuit, path: str | Path) -> Path:
    """Write ``to_networkx(circuit)`` as node-link JSON (``nx.node_link_data(G, edges="edges")``),
    atomically; non-finite floats are written as null, so the file is strict JSON."""
    data = _finite_or_none(nx.node_link_data(to_networkx(circuit), edges="edges"))
    return atomic_write(path, json.dumps(data, indent=1, allow_nan=False) + "\n")


def read_networkx(path: str | Path) -> nx.MultiDiGraph:
    """Read circuit.graphml or circuit.nodelink.json back into a MultiDiGraph (by suffix:
    ``.graphml`` is GraphML, anything else node-link JSON)."""
    path = Path(path)
    if not path.is_file():
        raise AcdError(f"{path}: no such file")
    if path.suffix.lower() == ".graphml":
        # edge_key_type=str: the keys are port names; the default int would try to convert them.
        G = nx.read_graphml(path, force_multigraph=True, edge_key_type=str)
        # networkx's GraphML reader adds these bookkeeping entries; they are not ours.
        for key in ("node_default", "edge_default"):
            if not G.graph.get(key):
                G.graph.pop(key, None)
        return G
    data = _read_json(path)
    return nx.node_link_graph(data, directed=True, multigraph=True, edges="edges")


def _graph_attributes(circuit: Circuit) -> dict[str, Any]:
    """Graph-level attributes; None values are left out (GraphML cannot store None)."""
    attrs: dict[str, Any] = {
        "task": circuit.task,
        "model": circuit.model,
        "method": circuit.method,
        "n_edges": circuit.n_edges,
        "seed": int(circuit.seed),
    }
    if circuit.model_sha256:
        attrs["model_sha256"] = circuit.model_sha256
    faithfulness = circuit.metrics.get("faithfulness")
    if isinstance(faithfulness, int | float) and not isinstance(faithfulness, bool):
        attrs["faithfulness"] = float(faithfulness)
    return attrs


def _node_attributes(graph: ComputeGraph, name: str) -> dict[str, Any]:
    """kind, layer, head and group of a node name (sources, logits or a GQA kv group)."""
    source = graph.sources[graph.src_index[name]] if name in graph.src_index else None
    if source is not None:
        layer = -1 if source.layer is None else source.layer
        head = -1 if source.head is None else source.head
        group = graph.kv_group(head) if source.kind == "head" else -1
        return {"kind": source.kind, "layer": layer, "head": head, "group": group}
    if name == "logits":
        return {"kind": "logits", "layer": graph.n_layers, "head": -1, "group": -1}
    port = next(p for p in graph.destinations if p.node == name)  # a GQA group: a{l}.g{g}
    return {"kind": "kv_group", "layer": port.layer, "head": -1, "group": port.index}


def _kept_out_weight(circuit: Circuit) -> dict[str, float]:
    """Sum of |score| over each source's kept outgoing edges, by source name."""
    weights = (circuit.scores.abs() * circuit.mask).sum(dim=1).tolist()  # [n_src]
    return {node.name: w for node, w in zip(circuit.graph.sources, weights)}


# --------------------------------------------------------------------------------------------
# EAP-IG graph JSON


def eapig_dict(
    circuit: Circuit, *, d_model: int | None = None, legacy_nodes: bool = False
) -> dict[str, Any]:
    """hannamw/EAP-IG's ``Graph.to_json`` document for ``circuit``.

    ``{"cfg": {n_layers, n_heads, parallel_attn_mlp[, d_model][, attn_only]},
    "nodes": {name: {"in_graph": bool[, "score": float]}},
    "edges": {"src->dst": {"score": float, "in_graph": bool}}}``. Nodes are in the graph when a
    kept edge touches them. ``legacy_nodes`` writes nodes as ``{name: bool}``, the form of older
    EAP-IG versions and of MIB's ``load_graph_from_json``. Current EAP-IG's ``from_json`` needs
    ``d_model`` (default: ``circuit.params["d_model"]`` when recorded; otherwise left out).

    EAP-IG has one key and one value input per query head, so grouped-query circuits (whose
    k/v ports belong to a group of heads) are refused.
    """
    graph = circuit.graph
    if graph.n_kv_heads != graph.n_heads:
        raise AcdError(
            f"EAP-IG's graph format has no grouped-query ports; this circuit's graph has "
            f"{graph.n_kv_heads} key/value heads for {graph.n_heads} query heads"
        )
    cfg: dict[str, Any] = {
        "n_layers": graph.n_layers,
        "n_heads": graph.n_heads,
        "parallel_attn_mlp": graph.shape.parallel_attn_mlp,
    }
    d_model = d_model if d_model is not None else circuit.params.get("d_model")
    if d_model is not None:
        cfg["d_model"] = int(d_model)
    if not graph.shape.has_mlp:
        cfg["attn_only"] = True  # TransformerLens's name; EAP-IG ignores it (see docs)
    used = set(circuit.nodes)
    nodes: dict[str, Any] = {}
    for name in graph.nodes:
        entry: dict[str, Any] = {"in_graph": name in used}
        if name in circuit.node_scores:
            entry["score"] = float(circuit.node_scores[name])
        nodes[name] = entry["in_graph"] if legacy_nodes else entry
    valid = graph.valid
    names = graph.edge_names(valid)
    kept = circuit.mask[valid].tolist()
    values = circuit.scores[valid].tolist()
    edges = {
        f"{src}->{dst}": {"score": score, "in_graph": bool(k)}
        for (src, dst), score, k in zip(names, values, kept)
    }
    return {"cfg": cfg, "nodes": nodes, "edges": edges}


def write_eapig_json(
    circuit: Circuit,
    path: str | Path,
    *,
    d_model: int | None = None,
    legacy_nodes: bool = False,
) -> Path:
    """Write ``circuit`` in EAP-IG's graph JSON (``eapig_dict``), atomically."""
    document = eapig_dict(circuit, d_model=d_model, legacy_nodes=legacy_nodes)
    return atomic_write(path, json.dumps(document))  # EAP-IG writes NaN as Python's json does


def read_eapig_json(
    path: str | Path, *, task: str = "", model: str = "", method: str = ""
) -> Circuit:
    """A Circuit from an EAP-IG (or MIB) graph JSON: graph from ``cfg``, mask from the edges'
    ``in_graph``, scores from their ``score`` (None -> 0), node scores from the nodes' ``score``
    where present and not NaN (EAP-IG's "no score"). Both node forms are read."""
    return eapig_from_dict(
        _read_json(path), source=str(path), task=task, model=model, method=method
    )


def eapig_from_dict(
    document: Any, *, source: str = "EAP-IG JSON", task: str = "", model: str = "", method: str = ""
) -> Circuit:
    """The Circuit an EAP-IG graph document describes (``read_eapig_json``); ``source`` names
    it in errors."""
    parsed = parse_eapig(document, source)  # the schema: acd.formats.eapig
    return Circuit(
        graph=parsed.graph,
        mask=parsed.mask,
        scores=parsed.scores,
        task=task,
        model=model,
        method=method,
        node_scores=parsed.node_scores,
    )


# --------------------------------------------------------------------------------------------
# summary.md and the set of data files


def summary_markdown(circuit: Circuit, *, top: int = 10) -> str:
    """A short Markdown summary: what was run, how big the circuit is, how faithful, how long,
    and the ``top`` kept edges by |score|."""
    m = circuit.metrics
    total = circuit.graph.n_edges
    share = 100.0 * circuit.n_edges / total if total else 0.0
    sha = f" (sha256 {circuit.model_sha256[:12]})" if circuit.model_sha256 else ""
    params = ", ".join(f"{k}={v}" for k, v in circuit.params.items()) or "none"
    lines = [
        f"# Circuit: {circuit.task} in {circuit.model}",
        "",
        f"- Task: {circuit.task}",
        f"- Model: {circuit.model}{sha}",
        f"- Method: {circuit.method}; seed {circuit.seed}",
        *_prompts_lines(circuit),
        f"- Parameters: {params}",
        f"- Edges kept: {circuit.n_edges} of {total} ({share:.2f}%)",
        f"- Faithfulness: {_faithfulness_line(m)}",
        f"- Metric ({m.get('metric', 'n/a')}): clean {_num(m.get('metric_full'))}, circuit "
        f"{_num(m.get('metric_circuit'))}, corrupted (empty circuit) {_num(m.get('metric_empty'))}",
        f"- Time: {_num(m.get('seconds'))} s",
        f"- Created: {circuit.created or 'n/a'}",
        "",
        f"## Top {top} kept edges by |score|",
        "",
        "| # | source | destination | score |",
        "|---|---|---|---|",
    ]
    for rank, (src, dst, score) in enumerate(_top_edges(circuit, top), start=1):
        lines.append(f"| {rank} | {src} | {dst} | {score:.4g} |")
    if not circuit.n_edges:
        lines.append("| - | (no edges kept) | | |")
    return "\n".join(lines) + "\n"


def write_data_files(circuit: Circuit, out_dir: str | Path) -> list[Path]:
    """Write circuit.json, circuit.graphml, circuit.nodelink.json and summary.md into
    ``out_dir``; all four are renamed into place together, so a failure replaces none."""
    out = Path(out_dir)
    names = ["circuit.json", "circuit.graphml", "circuit.nodelink.json", "summary.md"]
    targets = [out / name for name in names]
    G = to_networkx(circuit)
    nodelink = _finite_or_none(nx.node_link_data(G, edges="edges"))
    with atomic_paths(targets) as (json_tmp, graphml_tmp, nodelink_tmp, summary_tmp):
        json_tmp.write_text(circuit_json(circuit), encoding="utf-8")
        nx.write_graphml(G, graphml_tmp)
        nodelink_tmp.write_text(json.dumps(nodelink, indent=1, allow_nan=False) + "\n")
        summary_tmp.write_text(summary_markdown(circuit), encoding="utf-8")
    return targets


@dataclass
class SavedFiles:
    """What ``save_circuit`` wrote: the paths, and a one-line note (e.g. how to render the
    diagram when Graphviz's ``dot`` is missing) or None."""

    paths: list[Path]
    note: str | None = None


# Staging folders inside the output directory: ".acd-save-<pid>-<random>.tmp".
_STAGING_PREFIX = ".acd-save-"


def save_circuit(
    circuit: Circuit,
    out_dir: str | Path,
    *,
    formats: tuple[str, ...] = ("svg",),
    max_edges: int = 300,
) -> SavedFiles:
    """Write every file of a run into ``out_dir``: circuit.json, circuit.graphml,
    circuit.nodelink.json, summary.md, circuit.dot and the diagram in ``formats``
    (``acd.diagram.write_diagram``; svg, png, pdf).

    All files are first written into a hidden staging folder inside ``out_dir`` and then
    renamed into place one after the other, so an interruption leaves complete files only:
    Ctrl-C or SIGTERM removes the staging folder on the way out; after a SIGKILL (nothing can
    run) the hidden folder stays until the next save into the same directory removes it.
    """
    from acd.diagram import write_diagram  # the diagram module reads circuits, not files

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise AcdError(f"cannot write the circuit into {out}: it is a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    _remove_dead_staging(out)
    staging = Path(
        tempfile.mkdtemp(dir=out, prefix=f"{_STAGING_PREFIX}{os.getpid()}-", suffix=".tmp")
    )
    try:
        written = write_data_files(circuit, staging)
        diagram = write_diagram(circuit, staging / "circuit", formats, max_edges=max_edges)
        written += diagram.paths
        targets = []
        for path in written:
            os.replace(path, out / path.name)
            targets.append(out / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    note = diagram.message.replace(str(staging), str(out)) if diagram.message else None
    return SavedFiles(targets, note)


def _remove_dead_staging(out: Path) -> None:
    """Remove staging folders left by saves whose process no longer runs (killed)."""
    for folder in out.glob(f"{_STAGING_PREFIX}*.tmp"):
        pid_text = folder.name[len(_STAGING_PREFIX) :].split("-", 1)[0]
        if pid_text.isdigit() and not _process_alive(int(pid_text)):
            shutil.rmtree(folder, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # a folder of our own pid is from an earlier, dead process of that pid
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def _prompts_lines(circuit: Circuit) -> list[str]:
    """Which prompts the circuit was found on, and whether evaluation can hold any out."""
    if circuit.prompt_split is None:
        return []
    n = circuit.params.get("prompts", circuit.prompt_split.discovery)
    return [f"- Prompts: {split_line(circuit.prompt_split, n)}"]


def _faithfulness_line(m: dict[str, Any]) -> str:
    """``faithfulness`` (of the mean metrics), then the per-prompt spread where recorded."""
    if "faithfulness" not in m:
        return "n/a"
    spread = []
    if "faithfulness_mean" in m:
        spread.append(f"mean {_num(m['faithfulness_mean'])}")
    if "faithfulness_std" in m:
        spread.append(f"std {_num(m['faithfulness_std'])}")
    if "faithfulness_p05" in m and "faithfulness_p95" in m:
        spread.append(f"p05–p95 {_num(m['faithfulness_p05'])}–{_num(m['faithfulness_p95'])}")
    if "n_prompts" in m:
        spread.append(f"{m['n_prompts']} prompts")
    line = _num(m["faithfulness"])
    return f"{line} (per prompt: {', '.join(spread)})" if spread else line


def _top_edges(circuit: Circuit, top: int) -> list[tuple[str, str, float]]:
    """The ``top`` kept edges by |score|, largest first (ties in index order)."""
    graph = circuit.graph
    kept = circuit.mask.nonzero().tolist()
    values = circuit.scores[circuit.mask].tolist()  # same row-major order as ``kept``
    order = sorted(range(len(kept)), key=lambda n: -abs(values[n]))[:top]
    return [
        (graph.sources[kept[n][0]].name, graph.destinations[kept[n][1]].name, values[n])
        for n in order
    ]


def _num(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "n/a" if value is None else str(value)
    return f"{value:.4g}"


# --------------------------------------------------------------------------------------------
# JSON helpers


def _read_json(path: str | Path) -> Any:
    """The parsed JSON of ``path``; a missing, unreadable, non-UTF-8 or malformed file (or
    one nested too deeply to parse) is one AcdError line."""
    path = Path(path)
    if not path.is_file():
        raise AcdError(f"{path}: no such file")
    return parse_json(read_text(path, str(path)), str(path))


def _encode(value: Any) -> Any:
    """JSON-ready copy: non-finite floats become "NaN" / "Infinity" / "-Infinity"; tuples
    become lists; anything else unknown becomes its str."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_encode(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return _encode(value.item())
    return str(value)


def _finite_or_none(value: Any) -> Any:
    """Copy with non-finite floats replaced by None (strict JSON for node-link files)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_none(v) for v in value]
    return value
