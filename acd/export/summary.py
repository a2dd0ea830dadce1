"""summary.md: a short human-readable summary of a circuit."""

from __future__ import annotations

from typing import Any

from acd.circuit import Circuit
from acd.heldout import split_line
from acd.trust import trust_line


def summary_markdown(circuit: Circuit, *, top: int = 10) -> str:
    """A short Markdown summary: what was run, how big the circuit is, how faithful, how long,
    and the ``top`` kept edges by |score|; a positional circuit also names its spans and lists
    every kept positional edge (``_positional_section``)."""
    m = circuit.metrics
    unit = "nodes" if circuit.level == "node" else "edges"
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
        *_nodes_line(circuit),
        *_positional_lines(circuit),
        f"- Edges kept: {circuit.n_edges} of {total} ({share:.2f}%)"
        + (" (every edge between the kept nodes)" if circuit.level == "node" else "")
        + (" (plain edges with a kept positional part)" if circuit.positional is not None else ""),
        f"- Faithfulness: {_faithfulness_line(m)}",
        f"- Metric ({m.get('metric', 'n/a')}): clean {_num(m.get('metric_full'))}, circuit "
        f"{_num(m.get('metric_circuit'))}, corrupted (empty circuit) {_num(m.get('metric_empty'))}",
        f"- Time: {_num(m.get('seconds'))} s"
        + (
            f" (and {_num(m['trust_seconds'])} s for the trust report)"
            if "trust_seconds" in m
            else ""
        ),
        *([f"- Trust: {trust}"] if (trust := trust_line(m, unit)) else []),
        *_roles_line(circuit),
        f"- Created: {circuit.created or 'n/a'}",
        "",
        f"## Top {top} kept edges by |score|"
        + (
            " (plain edges: scores summed over the spans)" if circuit.positional is not None else ""
        ),
        "",
        _sign_sentence(circuit),
        "",
        "| # | source | destination | score |",
        "|---|---|---|---|",
    ]
    if circuit.level == "node" and not bool(circuit.scores.any()):
        # exact node patching measures nodes only; its edges carry no scores to rank
        lines[-6:] = ["(The method measured nodes only: the edges carry no scores.)"]
    else:
        for rank, (src, dst, score) in enumerate(_top_edges(circuit, top), start=1):
            lines.append(f"| {rank} | {src} | {dst} | {score:.4g} |")
        if not circuit.n_edges:
            lines.append("| - | (no edges kept) | | |")
    if circuit.level == "node":
        lines += _node_table(circuit)
    lines += _positional_section(circuit)
    return "\n".join(lines) + "\n"


def _positional_lines(circuit: Circuit) -> list[str]:
    """A positional circuit's spans and its size in positional edges."""
    positional = circuit.positional
    if positional is None:
        return []
    total = positional.graph.n_edges
    share = 100.0 * positional.n_edges / total if total else 0.0
    return [
        f"- Spans: {', '.join(positional.spans)} (a positional circuit: each edge at the "
        "spans where it acts)",
        f"- Positional edges kept: {positional.n_edges} of {total} ({share:.2f}%)",
    ]


def _positional_section(circuit: Circuit) -> list[str]:
    """Every kept positional edge, largest |score| first (ties in index order)."""
    positional = circuit.positional
    if positional is None:
        return []
    kept = positional.kept_index()
    names = positional.edges  # the same index order as kept_index
    values = [float(positional.scores[i]) for i in kept]
    order = sorted(range(len(kept)), key=lambda n: -abs(values[n]))
    lines = [
        "",
        "## Kept positional edges by |score|",
        "",
        "An edge source@p → port@q carries the source's output at the positions of span p into "
        "what the port reads for span q: the same span for MLP, query and logits inputs, while a "
        "key or value (k/v) edge across spans carries the source's output at the key positions "
        "(span p) into the keys or values that the head's queries at span q attend to.",
        "",
        "| # | source@span | port@span | score |",
        "|---|---|---|---|",
    ]
    for rank, n in enumerate(order, start=1):
        src, dst = names[n]
        lines.append(f"| {rank} | {src} | {dst} | {values[n]:.4g} |")
    if not kept:
        lines.append("| - | (no positional edges kept) | | |")
    return lines


def _nodes_line(circuit: Circuit) -> list[str]:
    """A node-level circuit's size in nodes (acd.nodes)."""
    if circuit.level != "node":
        return []
    kept = circuit.kept_components
    most = circuit.graph.n_src - 1
    listed = ", ".join(kept) or "none"
    return [f"- Nodes kept (node level): {len(kept)} of {most} heads and MLPs: {listed}"]


def _node_table(circuit: Circuit) -> list[str]:
    """Every kept node with its node score (the effect of patching all its outputs)."""
    lines = ["", "## Kept nodes by |score|", "", "| # | node | score |", "|---|---|---|"]
    kept = circuit.kept_sources
    ranked = sorted(kept, key=lambda n: -abs(circuit.node_scores.get(n, 0.0)))
    for rank, name in enumerate(ranked, start=1):
        score = circuit.node_scores.get(name)
        lines.append(f"| {rank} | {name} | {'n/a' if score is None else f'{score:.4g}'} |")
    return lines


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


def _sign_sentence(circuit: Circuit) -> str:
    """What a score's sign means for this circuit's metric, in words (acd.diagram's colours)."""
    from acd.diagram import needed_sign

    if needed_sign(circuit) > 0:
        return (
            "A score is how much patching the edge changes the metric, a distance to the full "
            "model: positive means removing the edge raises it — the behaviour needs the edge "
            "(red in the diagram); negative means the edge works against the behaviour (blue)."
        )
    return (
        "A score is M(patched) − M(clean), the change in the metric when the edge is removed: "
        "negative means removing the edge lowers the metric — the behaviour needs the edge "
        "(red in the diagram), not that it inhibits anything; positive means the edge works "
        "against the behaviour (blue)."
    )


def _roles_line(circuit: Circuit) -> list[str]:
    """The kept heads that have a role badge (acd.roles), e.g. ``a1.h2 prev, a2.h0 ind``."""
    from acd.roles import ROLE_THRESHOLD, role_badges

    if not circuit.node_roles:
        return []
    kept = set(circuit.kept_sources)
    named = [
        f"{name} {' '.join(badges)}"
        for name, scores in circuit.node_roles.items()
        if name in kept and (badges := role_badges(scores))
    ]
    listed = ", ".join(named) if named else "none of the kept heads"
    return [f"- Head roles (score ≥ {ROLE_THRESHOLD}, acd.roles): {listed}"]
