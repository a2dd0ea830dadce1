"""circuit.html: one self-contained, interactive page of a circuit.

The page is a single file that opens from disk (file://): no server, no network, no library.
Its script (``html_assets/page.js``) and style (``page.css``) are read here and inlined, and
the data it draws is one JSON blob in ``<script type="application/json" id="acd-data">``:

    shape        the GraphShape and n_src / n_dst / n_valid
    nodes        every node of the graph (the sources first, so a source index is a node id):
                 {name, kind, layer, head, group}
    ports        every destination: [name, node id, kind]
    edges        the ranked edges, [src, dst, score], largest |score| first: the
                 ``max_ranked_edges`` valid edges of largest |score| (ties by edge index, as
                 the diagram breaks them) and every kept edge; ``n_top`` says how many of them
                 are the global top (rank = position + 1), ``extra_ranks`` the global rank of
                 each one after those (kept edges outside the top)
    kept         positions in ``edges`` of the circuit's kept edges; ``inclusion`` their
                 share of the trust report's prompt resamples (or null)
    effect       how to read a score's sign, as the diagram reads it: the metric the scores
                 were measured with, its direction, ``needed_sign`` (the sign of an edge whose
                 removal harms the behaviour: -1 for task metrics such as logit_diff, +1 for
                 kl and l2) and the diagram's colours for needed / against / zero
    metrics, trust, node_scores, roles, badges, level, curve, reference, attention
    positional   null for a plain circuit. For a positional circuit (``circuit.positional``):
                 {spans, n_valid (valid positional edges), n_plain_kept, n_plain_valid}; then
                 ``edges`` are positional edges [src, dst, score, p, q] (p, q: the source's and
                 the destination's span index), ranked, embedded and kept as above but over
                 the positional edges, and ``inclusion`` is each kept edge's plain edge's
                 share (the trust report measures stability per plain edge). The page then
                 lays the nodes out by span column and layer row, one copy of each node per
                 span, as circuit.svg does. A reference overlay needs a plain circuit.

Numbers are rounded to 4 significant digits (attention weights to 3 decimals) and every ``<``
is written as ``\\u003c``, so no string in the data can close the script element.

``attention_examples(model, batch)`` builds the ``attention`` argument (and attention.json):
``{"prompts": [{"tokens": [str, ...], "heads": {"a0.h1": [[float] * T] * T}}]}``, row =
query position, column = key position.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from acd.atomic import atomic_write
from acd.circuit import Circuit
from acd.errors import AcdError
from acd.export._json import finite_or_none, read_json
from acd.metrics import METRICS
from acd.trust import trust_line

if TYPE_CHECKING:
    from acd.graph import ComputeGraph
    from acd.tasks import PromptBatch

ASSETS = Path(__file__).with_name("html_assets")
ATTENTION_FORMAT = "acd-attention"
CURVES_FORMAT = "acd-curves"
SIGNIFICANT_DIGITS = 4
ATTENTION_DECIMALS = 3
_HEAD_NAME = re.compile(r"a(\d+)\.h(\d+)")


# --- the page --------------------------------------------------------------------------------


def circuit_html(
    circuit: Circuit,
    *,
    attention: dict | None = None,
    curve: dict | None = None,
    reference: torch.Tensor | None = None,
    reference_name: str | None = None,
    max_ranked_edges: int = 2000,
) -> str:
    """The circuit's page as one HTML string (see the module docstring).

    Args:
        attention: attention patterns to show when a head is clicked (``attention_examples``).
        curve: a faithfulness curve, ``{"n_edges": [...], "faithfulness": [...]}`` (what
            ``FaithfulnessCurve.summary()`` gives): the slider shows the measured faithfulness
            at the nearest measured size.
        reference: [n_src, n_dst] bool, a circuit to overlay (edges in both, only here, only
            there); ``reference_name`` names it in the legend.
        max_ranked_edges: how many of the largest-|score| edges the page embeds (the slider's
            range; every kept edge is embedded besides).

    Raises:
        AcdError: a malformed ``attention`` or ``curve``, a reference of the wrong shape, or
            ``max_ranked_edges`` below 1.
    """
    data = page_data(
        circuit,
        attention=attention,
        curve=curve,
        reference=reference,
        reference_name=reference_name,
        max_ranked_edges=max_ranked_edges,
    )
    title = f"{circuit.task} · {circuit.model} · {circuit.method} — circuit"
    return _fill_template(title, data)


def write_circuit_html(circuit: Circuit, path: str | Path, **options: Any) -> Path:
    """Write ``circuit_html(circuit, **options)`` to ``path`` atomically; returns the path."""
    return atomic_write(path, circuit_html(circuit, **options))


def _fill_template(title: str, data: dict) -> str:
    """page.html with its four slots filled in one pass (so no filled-in text is rescanned)."""
    blob = json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    parts = {
        "title": html.escape(title),
        "css": (ASSETS / "page.css").read_text(encoding="utf-8"),
        "js": (ASSETS / "page.js").read_text(encoding="utf-8"),
        # "<" only occurs inside JSON strings, where \u003c is the same character.
        "data": blob.replace("<", "\\u003c"),
    }
    template = (ASSETS / "page.html").read_text(encoding="utf-8")
    return re.sub(r"\{\{(title|css|js|data)\}\}", lambda m: parts[m.group(1)], template)


def page_data(
    circuit: Circuit,
    *,
    attention: dict | None = None,
    curve: dict | None = None,
    reference: torch.Tensor | None = None,
    reference_name: str | None = None,
    max_ranked_edges: int = 2000,
) -> dict[str, Any]:
    """The JSON the page draws (module docstring); ``circuit_html`` embeds it."""
    if isinstance(max_ranked_edges, bool) or not isinstance(max_ranked_edges, int):
        raise AcdError(f"max_ranked_edges must be a whole number, got {max_ranked_edges!r}")
    if max_ranked_edges < 1:
        raise AcdError(f"max_ranked_edges must be at least 1, got {max_ranked_edges}")
    if reference is not None and circuit.positional is not None:
        raise AcdError(
            "a reference overlay compares plain edges; for a positional circuit draw its plain "
            "view, dataclasses.replace(circuit, positional=None)"
        )
    graph = circuit.graph
    edges = _page_edges(circuit, max_ranked_edges)
    return {
        "title": {
            "task": circuit.task,
            "model": circuit.model,
            "method": circuit.method,
            "created": circuit.created,
            "seed": circuit.seed,
        },
        "level": circuit.level,
        "shape": _shape(graph),
        "nodes": [
            {"name": n.name, "kind": n.kind, "layer": n.layer, "head": n.head, "group": n.group}
            for n in graph.node_views
        ],
        "ports": [
            [port.name, int(node), port.kind]
            for port, node in zip(graph.destinations, graph.dst_node_ids.tolist())
        ],
        **edges,
        "effect": score_effect(circuit),
        "metrics": _scalar_metrics(circuit.metrics),
        "trust": trust_line(circuit.metrics, "nodes" if circuit.level == "node" else "edges"),
        "node_scores": {name: _round(v) for name, v in circuit.node_scores.items()},
        "roles": {
            head: {role: _round(v) for role, v in scores.items()}
            for head, scores in circuit.node_roles.items()
        },
        "badges": _badges(circuit.node_roles),
        "curve": _curve_for(circuit, curve) if curve is not None else None,
        "reference": _reference(reference, reference_name, circuit),
        "attention": check_attention(attention, graph) if attention is not None else None,
    }


def _page_edges(circuit: Circuit, limit: int) -> dict[str, Any]:
    """The data's ``edges``, ``n_top``, ``extra_ranks``, ``kept``, ``inclusion`` and
    ``positional``: over the plain edges, or a positional circuit's positional edges."""
    graph = circuit.graph
    positional = circuit.positional
    if positional is None:
        scores, mask, valid = circuit.scores, circuit.mask, graph.valid
    else:
        scores, mask, valid = positional.scores, positional.mask, positional.graph.valid
    flat, ranks = _ranked_flat(scores, mask, valid, limit)
    n_top = min(limit, int(valid.sum()))
    position = {f: i for i, f in enumerate(flat)}
    kept = sorted(position[f] for f in mask.flatten().nonzero().flatten().tolist())
    if positional is None:
        rows = _edge_rows(flat, scores, graph)
    else:
        rows = _positional_edge_rows(flat, scores)
    inclusion = None
    if circuit.edge_inclusion is not None:
        # a positional edge's share is its plain edge's (stability is measured per plain edge)
        values = circuit.edge_inclusion
        inclusion = [_round(float(values[rows[i][0], rows[i][1]])) for i in kept]
    info = None
    if positional is not None:
        info = {
            "spans": list(positional.spans),
            "n_valid": positional.graph.n_edges,
            "n_plain_kept": circuit.n_edges,
            "n_plain_valid": graph.n_edges,
        }
    return {
        "edges": rows,
        "n_top": n_top,
        "extra_ranks": ranks[n_top:],
        "kept": kept,
        "inclusion": inclusion,
        "positional": info,
    }


def ranked_edges(
    scores: torch.Tensor, mask: torch.Tensor, graph: ComputeGraph, limit: int
) -> tuple[list[int], list[int]]:
    """The embedded edges as flat indices (src * n_dst + dst), largest |score| first, and each
    one's 1-based rank among all valid edges: the ``limit`` top-ranked edges, then the kept
    edges ranked below them. Ties go to the lower edge index; a non-finite score ranks as 0."""
    return _ranked_flat(scores, mask, graph.valid, limit)


def _ranked_flat(
    scores: torch.Tensor, mask: torch.Tensor, valid_mask: torch.Tensor, limit: int
) -> tuple[list[int], list[int]]:
    """``ranked_edges`` over any tensor of edges (plain [n_src, n_dst] or positional
    [n_src, P, n_dst, P]): flat indices into it and 1-based ranks among ``valid_mask``."""
    valid = valid_mask.flatten().nonzero().flatten()
    magnitude = torch.nan_to_num(scores.flatten()[valid].double().abs(), nan=0.0, posinf=0.0)
    order = torch.sort(-magnitude, stable=True).indices  # stable: ties keep index order
    ranked = valid[order]
    rank_at = torch.full((scores.numel(),), -1, dtype=torch.long)
    rank_at[ranked] = torch.arange(1, len(ranked) + 1)
    top = ranked[:limit].tolist()
    kept_ranks = sorted(r for r in rank_at[mask.flatten()].tolist() if r > limit)
    extra = [int(ranked[r - 1]) for r in kept_ranks]
    return top + extra, list(range(1, len(top) + 1)) + kept_ranks


def _edge_rows(flat: list[int], scores: torch.Tensor, graph: ComputeGraph) -> list[list]:
    values = scores.flatten()[torch.tensor(flat, dtype=torch.long)].tolist() if flat else []
    return [[f // graph.n_dst, f % graph.n_dst, _round(v)] for f, v in zip(flat, values)]


def _positional_edge_rows(flat: list[int], scores: torch.Tensor) -> list[list]:
    """Positional edges [src, dst, score, p, q] from flat indices into [n_src, P, n_dst, P]."""
    _, n_spans, n_dst, _ = scores.shape
    values = scores.flatten()[torch.tensor(flat, dtype=torch.long)].tolist() if flat else []
    rows = []
    for f, value in zip(flat, values):
        rest, q = divmod(f, n_spans)
        rest, dst = divmod(rest, n_dst)
        src, p = divmod(rest, n_spans)
        rows.append([src, dst, _round(value), p, q])
    return rows


def _shape(graph: ComputeGraph) -> dict[str, Any]:
    s = graph.shape
    return {
        "n_layers": s.n_layers,
        "n_heads": s.n_heads,
        "n_kv_heads": s.n_kv_heads,
        "has_mlp": s.has_mlp,
        "parallel_attn_mlp": s.parallel_attn_mlp,
        "n_src": graph.n_src,
        "n_dst": graph.n_dst,
        "n_valid": graph.n_edges,
    }


def score_effect(circuit: Circuit) -> dict[str, Any]:
    """How the page reads a score's sign, as the diagram does (``acd.diagram.needed_sign``): an
    acd score is M(patched) - M(clean), so removing an edge the behaviour needs lowers a task
    metric (negative score) and raises a distance from the full model, kl or l2 (positive).
    The metric is the scores' own (``params["metric"]``: a search's is its search metric);
    ``known`` is False when the file records none (then it is read as a task metric). The
    colours are the diagram's, so circuit.svg and circuit.html agree."""
    from acd.diagram import AGAINST_COLOUR, NEEDED_COLOUR, ZERO_COLOUR, needed_sign, scores_metric

    name = scores_metric(circuit)
    sign = needed_sign(circuit)
    return {
        "metric": name if isinstance(name, str) and name != "task" else "the task metric",
        "direction": "lower" if sign > 0 else "higher",
        "needed_sign": sign,
        "known": isinstance(name, str) and name in METRICS,
        "colours": {"needed": NEEDED_COLOUR, "against": AGAINST_COLOUR, "zero": ZERO_COLOUR},
    }


def _scalar_metrics(metrics: dict) -> dict[str, Any]:
    """The metrics that are one number or one word, numbers rounded (non-finite: null)."""
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        item = getattr(value, "item", None)
        if getattr(value, "shape", None) == () and callable(item):  # 0-d tensor or array
            value = item()
        if isinstance(value, (bool, str)):
            out[key] = value
        elif isinstance(value, (int, float)):
            out[key] = value if isinstance(value, int) else _round(float(value))
    return out


def _badges(roles: dict[str, dict[str, float]]) -> dict[str, list[str]]:
    """Each head's role labels (``acd.roles.role_badges``), for the heads that have any."""
    from acd.roles import role_badges

    return {head: labels for head, scores in roles.items() if (labels := role_badges(scores))}


def _reference(
    reference: torch.Tensor | None, name: str | None, circuit: Circuit
) -> dict[str, Any] | None:
    """The reference circuit's edges as [src, dst, score] (scores from ``circuit``)."""
    if reference is None:
        return None
    graph = circuit.graph
    expected = (graph.n_src, graph.n_dst)
    if not isinstance(reference, torch.Tensor) or tuple(reference.shape) != expected:
        shape = tuple(reference.shape) if isinstance(reference, torch.Tensor) else type(reference)
        raise AcdError(f"the reference mask must be a tensor of shape {expected}, got {shape}")
    mask = reference.detach().bool().cpu() & graph.valid
    flat = mask.flatten().nonzero().flatten().tolist()
    return {"name": name or "the reference", "edges": _edge_rows(flat, circuit.scores, graph)}


def _round(value: float, digits: int = SIGNIFICANT_DIGITS) -> float | None:
    """``value`` to ``digits`` significant digits; None (JSON null) when not finite."""
    value = float(value)
    return float(f"{value:.{digits}g}") if math.isfinite(value) else None


# --- checks of what the page is given --------------------------------------------------------


# What a curve's x axis counts: edges, nodes (``acd curve --level node``) or positional edges
# (``acd curve --positions``).
CURVE_LEVELS = ("edge", "node", "positional")


def _curve_for(circuit: Circuit, curve: dict) -> dict[str, Any]:
    """``check_curve``, refusing a curve over other edges than the page's slider ranks: a
    positional circuit's slider counts positional edges, a plain one's plain edges."""
    checked = check_curve(curve)
    positional = circuit.positional is not None
    if (checked["level"] == "positional") != positional:
        kind, wanted = (
            ("positional", "acd curve --positions") if positional else ("plain", "acd curve")
        )
        raise AcdError(
            f"a {checked['level']} curve does not fit a {kind} circuit's page: "
            f"give the curve of {wanted}"
        )
    return checked


def check_curve(curve: dict) -> dict[str, Any]:
    """A curve's points for the page: ``n_edges`` and ``faithfulness`` (null where not finite)
    of equal length, its ``level`` and ``method`` where given; AcdError when malformed."""
    if not isinstance(curve, dict):
        raise AcdError(f"the curve must be a dict with n_edges and faithfulness, got {curve!r}")
    sizes, values = curve.get("n_edges"), curve.get("faithfulness")
    if not isinstance(sizes, list) or not isinstance(values, list) or len(sizes) != len(values):
        raise AcdError("the curve needs lists n_edges and faithfulness of the same length")
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in sizes):
        raise AcdError("the curve's n_edges must be whole numbers >= 0")
    if not all(v is None or isinstance(v, (int, float)) for v in values):
        raise AcdError("the curve's faithfulness values must be numbers (or null)")
    level = curve.get("level", "edge")
    return {
        "n_edges": list(sizes),
        "faithfulness": [None if v is None else _round(v) for v in values],
        "level": level if level in CURVE_LEVELS else "edge",
        "method": curve.get("method") if isinstance(curve.get("method"), str) else None,
    }


def check_attention(attention: dict, graph: ComputeGraph) -> dict[str, Any]:
    """Attention examples for the page: every prompt's tokens (strings) and, per head of
    ``graph``, a T x T matrix of numbers (T = the number of tokens); AcdError otherwise."""
    prompts = attention.get("prompts") if isinstance(attention, dict) else None
    if not isinstance(prompts, list):
        raise AcdError('attention must be a dict {"prompts": [{"tokens": ..., "heads": ...}]}')
    checked = []
    for i, prompt in enumerate(prompts):
        where = f"attention prompt {i}"
        tokens = prompt.get("tokens") if isinstance(prompt, dict) else None
        heads = prompt.get("heads") if isinstance(prompt, dict) else None
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise AcdError(f"{where}: tokens must be a list of strings")
        if not isinstance(heads, dict):
            raise AcdError(f"{where}: heads must map head names to patterns")
        for name, rows in heads.items():
            _check_head_name(name, graph, where)
            _check_pattern(rows, len(tokens), f"{where}, head {name}")
        checked.append({"tokens": tokens, "heads": heads})
    return {"prompts": checked}


def _check_head_name(name: object, graph: ComputeGraph, where: str) -> None:
    match = _HEAD_NAME.fullmatch(name) if isinstance(name, str) else None
    if not match or int(match[1]) >= graph.n_layers or int(match[2]) >= graph.n_heads:
        raise AcdError(
            f"{where}: {name!r} is not a head of this graph ({graph.n_layers} layers x "
            f"{graph.n_heads} heads): the patterns are of another model"
        )


def _check_pattern(rows: object, n_tokens: int, where: str) -> None:
    if not isinstance(rows, list) or len(rows) != n_tokens:
        raise AcdError(f"{where}: the pattern must have one row per token ({n_tokens})")
    for row in rows:
        if not isinstance(row, list) or len(row) != n_tokens:
            raise AcdError(f"{where}: every row must have one value per token ({n_tokens})")
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in row):
            raise AcdError(f"{where}: the attention weights must be finite numbers")


# --- attention examples ----------------------------------------------------------------------


def attention_examples(
    model: Any, batch: PromptBatch, n_prompts: int = 3, heads: Sequence[str] | None = None
) -> dict[str, Any]:
    """Attention patterns of ``model`` (a loaded ModelAdapter) on the first ``n_prompts``
    clean prompts of ``batch``, for the page and attention.json (module docstring).

    Each prompt keeps its real tokens only (``batch.lengths``), as the tokenizer's token
    strings; weights are rounded to 3 decimals. ``heads`` names the heads to keep
    (``"a0.h1"``, ...); None keeps every head.

    Raises:
        AcdError: ``n_prompts`` below 1 or an unknown head name.
    """
    from acd.graph import ComputeGraph
    from acd.roles import adapter_patterns

    if isinstance(n_prompts, bool) or not isinstance(n_prompts, int) or n_prompts < 1:
        raise AcdError(f"n_prompts must be a whole number of at least 1, got {n_prompts!r}")
    graph = ComputeGraph.from_model(model)
    every = [f"a{layer}.h{h}" for layer in range(graph.n_layers) for h in range(graph.n_heads)]
    wanted = every if heads is None else list(heads)
    for name in wanted:
        _check_head_name(name, graph, "attention_examples")
    n = min(n_prompts, len(batch))
    tokens = batch.clean[:n]
    patterns = adapter_patterns(model)(tokens).float()  # [n, L, H, T, T]
    prompts = []
    for i in range(n):
        length = int(batch.lengths[i])
        ids = tokens[i, :length].tolist()
        real = patterns[i, :, :, :length, :length]
        prompts.append(
            {
                "tokens": [str(t) for t in model.tokenizer.convert_ids_to_tokens(ids)],
                "heads": {name: _pattern_rows(real, name) for name in wanted},
            }
        )
    return {
        "format": ATTENTION_FORMAT,
        "format_version": 1,
        "model": model.name,
        "prompts": prompts,
    }


def _pattern_rows(patterns: torch.Tensor, name: str) -> list[list[float]]:
    """One head's [T, T] pattern out of [L, H, T, T], rounded to ATTENTION_DECIMALS."""
    match = _HEAD_NAME.fullmatch(name)
    assert match is not None  # checked by the caller
    rows = patterns[int(match[1]), int(match[2])].tolist()
    return [[round(v, ATTENTION_DECIMALS) for v in row] for row in rows]


# --- attention.json and the curves file ------------------------------------------------------


def write_attention_json(attention: dict, path: str | Path) -> Path:
    """Write attention examples as strict JSON (atomically)."""
    return atomic_write(path, json.dumps(attention, separators=(",", ":"), ensure_ascii=False))


def read_attention_json(path: str | Path) -> dict:
    """attention.json as written by ``write_attention_json`` (checked when a page uses it)."""
    doc = read_json(path)
    if not isinstance(doc, dict) or doc.get("format", ATTENTION_FORMAT) != ATTENTION_FORMAT:
        raise AcdError(f"{path}: not an acd attention file (format {ATTENTION_FORMAT!r})")
    return doc


def curves_document(curves: dict[str, dict], *, task: str, model: str) -> dict[str, Any]:
    """The curves file of ``acd curve``: each method's ``FaithfulnessCurve.summary()``, with
    non-finite values as null (strict JSON)."""
    return {
        "format": CURVES_FORMAT,
        "format_version": 1,
        "task": task,
        "model": model,
        "curves": {method: finite_or_none(summary) for method, summary in curves.items()},
    }


def read_curve_json(path: str | Path, method: str | None = None) -> dict[str, Any]:
    """One curve from a curves file (``acd curve``'s <stem>.json): ``method``'s if the file has
    it, else the first; a file holding one curve's summary itself is read as that curve."""
    doc = read_json(path)
    if isinstance(doc, dict) and "n_edges" in doc:
        return check_curve(doc)
    curves = doc.get("curves") if isinstance(doc, dict) else None
    if not isinstance(curves, dict) or not curves:
        raise AcdError(
            f"{path}: no curves in it (expected acd curve's .json, format {CURVES_FORMAT!r})"
        )
    name = method if method in curves else next(iter(curves))
    return check_curve({**curves[name], "method": name})
