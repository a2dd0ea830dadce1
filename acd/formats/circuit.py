"""The schema of circuit.json (format ``acd-circuit``, version 1), as ``acd.export`` writes it.

``parse_circuit(document, source)`` checks a parsed document once: the format name and
version, every field's type (strict: no coercion), finite scores, and everything that must
agree with the graph the file describes (edge and node names, the number of scores, the
recorded sizes). It returns the checked document with the graph, the kept-edge mask and the
dense scores, from which ``acd.export.circuit_from_dict`` builds the Circuit.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, PlainValidator, model_validator

from acd.errors import AcdError
from acd.formats.common import (
    Count,
    EncodedFloat,
    Expected,
    FiniteFloat,
    JsonScalar,
    Positive,
    Sha256,
    Strict,
    check_text,
    encoded_number,
    finite_number,
    sha256_hex,
    short,
    validate,
)
from acd.graph import ComputeGraph, GraphShape

if TYPE_CHECKING:
    from acd.positional.graph import PositionalCircuit

FORMAT = "acd-circuit"
FORMAT_VERSION = 1


def _share(value: Any) -> float:
    """A share in [0, 1] (an edge's inclusion frequency)."""
    number = finite_number(value)
    if not 0.0 <= number <= 1.0:
        raise Expected("expected a number between 0 and 1")
    return number


Share = Annotated[float, PlainValidator(_share)]

# Spelled out so that a type checker can read them; tests/test_formats.py checks that they
# name exactly the registries' entries (METRIC_NAMES, ABLATIONS, SELECTIONS, METHODS).
MetricName = Literal["logit_diff", "prob_diff", "logprob", "kl", "l2", "task"]
Ablation = Literal["corrupted", "zero", "mean"]
Selection = Literal["topn", "threshold", "greedy"]
ScoringMethod = Literal["eap", "eap-ig", "eap-ig-activations", "clean-corrupted", "exact"]


def _sha256_or_empty(value: Any) -> str:
    """``acd.models.weights_sha256`` of the weights, or "" when unknown."""
    if value == "" and isinstance(value, str):
        return value
    try:
        return sha256_hex(value)
    except Expected:
        raise Expected('expected a sha256 (64 lowercase hex digits) or ""') from None


def _timestamp(value: Any) -> str:
    """UTC ISO-8601 as ``acd.circuit.utc_now`` writes it, or "" (reference circuits)."""
    if not isinstance(value, str):
        raise Expected('expected an ISO-8601 time such as "2026-01-31T12:00:00Z", or ""')
    if value:
        try:
            datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise Expected('expected an ISO-8601 time such as "2026-01-31T12:00:00Z"') from None
    return value


def _tau(value: Any) -> float:
    """ACDC's threshold: a number >= 0 (``"Infinity"`` allowed: every edge goes)."""
    number = encoded_number(value)
    if not number >= 0:  # also refuses NaN
        raise Expected('expected a number >= 0 or "Infinity"')
    return number


def _seconds(value: Any) -> float:
    number = finite_number(value)
    if number < 0:
        raise Expected("expected a finite number >= 0")
    return number


def _edge_pair(value: Any) -> tuple[str, str]:
    """A kept edge: ``[source, destination]`` names."""
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)):
        raise Expected("expected a [source, destination] pair of names")
    return value[0], value[1]


ModelSha256 = Annotated[str, PlainValidator(_sha256_or_empty)]
Timestamp = Annotated[str, PlainValidator(_timestamp)]
Tau = Annotated[float, PlainValidator(_tau)]
Seconds = Annotated[float, PlainValidator(_seconds)]
EdgePair = Annotated[tuple[str, str], PlainValidator(_edge_pair)]


def _seed(value: Any) -> int:
    """A 64-bit signed integer (what torch and the CLI take as a seed)."""
    if isinstance(value, bool) or not isinstance(value, int) or not -(2**63) <= value < 2**63:
        raise Expected("expected an integer from -2**63 to 2**63 - 1")
    return value


Seed = Annotated[int, PlainValidator(_seed)]


class _Open(BaseModel):
    """An object with known fields, typed, and any other field a JSON scalar (null, bool,
    number, string; "NaN" / "Infinity" / "-Infinity" read as floats)."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)
    __pydantic_extra__: dict[str, JsonScalar]

    def as_dict(self, order: dict[str, Any]) -> dict[str, Any]:
        """The fields the file holds, in the file's order (``order``: the parsed object)."""
        values = self.model_dump(exclude_unset=True)
        return {key: values[key] for key in order}


class Params(_Open):
    """``discover``'s arguments (``params``); fields another writer adds are scalars."""

    edges: Count | None = None
    nodes: Count | None = None  # a node-level circuit's TopN size (acd.nodes)
    level: Literal["edge", "node"] | None = None
    prompts: Positive | None = None
    metric: MetricName | None = None
    evaluation_metric: MetricName | None = None
    ablation: Ablation | None = None
    selection: Selection | None = None
    absolute: bool | None = None
    prune: bool | None = None
    ig_steps: Positive | None = None
    batch_size: Positive | None = None
    d_model: Positive | None = None
    threshold: EncodedFloat | None = None
    tau: Tau | None = None
    candidates: Positive | None = None
    scoring: ScoringMethod | None = None
    visited: Count | None = None
    positions: bool | None = None  # a positional circuit (acd.positional)


class Metrics(_Open):
    """What the evaluation measured (``CircuitEvaluation.summary`` and ``discover``)."""

    metric: MetricName | None = None
    ablation: Ablation | None = None
    n_edges: Count | None = None
    n_prompts: Count | None = None
    n_degenerate: Count | None = None
    n_selected: Count | None = None
    faithfulness: EncodedFloat | None = None
    faithfulness_mean: EncodedFloat | None = None
    faithfulness_std: EncodedFloat | None = None
    faithfulness_median: EncodedFloat | None = None
    faithfulness_p05: EncodedFloat | None = None
    faithfulness_p95: EncodedFloat | None = None
    metric_circuit: EncodedFloat | None = None
    metric_full: EncodedFloat | None = None
    metric_empty: EncodedFloat | None = None
    kl_to_full: EncodedFloat | None = None
    seconds: Seconds | None = None


class ModelInfo(Strict):
    name: str
    sha256: ModelSha256 = ""


class GraphInfo(Strict):
    """The ``GraphShape`` and the sizes it implies (checked against the shape)."""

    n_layers: Positive
    n_heads: Positive
    n_kv_heads: Positive
    has_mlp: bool
    parallel_attn_mlp: bool
    n_src: Count | None = None
    n_dst: Count | None = None
    n_edges: Count | None = None

    @property
    def shape(self) -> GraphShape:
        return GraphShape(
            self.n_layers, self.n_heads, self.n_kv_heads, self.has_mlp, self.parallel_attn_mlp
        )


class TaskSource(Strict):
    """Where the task came from (``acd.heldout.TaskSource``), so ``acd evaluate`` re-reads
    the same one: a shipped task by name, a task file by path and sha256."""

    kind: Literal["builtin", "file"]
    name: str
    path: str | None
    sha256: Sha256 | None

    @model_validator(mode="after")
    def _file_has_a_path(self) -> TaskSource:
        if self.kind == "file" and (self.path is None or self.sha256 is None):
            raise ValueError('a task_source of kind "file" needs its path and sha256')
        return self


class PromptSplit(Strict):
    """How the prompts were split between discovery and evaluation."""

    seed: int
    discovery: Count
    evaluation: Count
    in_sample: bool


class PositionsInfo(Strict):
    """A positional circuit's part (``Circuit.positional``): the spans, which positional edges
    exist (``present``, ``order``, ``scored``: ``acd.positional.PositionalGraph``), the kept
    positional edges by name and every valid positional edge's score in row-major order of
    the [n_src, P, n_dst, P] valid mask."""

    spans: list[str]
    present: list[bool]
    order: list[list[bool]]
    scored: list[bool]
    edges: list[EdgePair]
    scores: list[FiniteFloat]


class CircuitFile(Strict):
    """circuit.json; ``format`` and ``format_version`` are checked before the rest."""

    format: Literal["acd-circuit"]
    format_version: Literal[1]
    task: str
    model: ModelInfo
    method: str
    params: Params = Params.model_construct()
    seed: Seed = 0
    metrics: Metrics = Metrics.model_construct()
    versions: dict[str, str] = {}
    created: Timestamp = ""
    graph: GraphInfo
    edges: list[EdgePair]
    scores: list[FiniteFloat]
    node_scores: dict[str, FiniteFloat] = {}
    level: Literal["edge", "node"] = "edge"
    node_roles: dict[str, dict[str, Share]] = {}
    task_source: TaskSource | None = None
    prompt_split: PromptSplit | None = None
    edge_inclusion: list[Share] | None = None
    positions: PositionsInfo | None = None


@dataclass
class ParsedCircuit:
    """A checked circuit.json: the document, its graph, kept edges and dense scores."""

    document: CircuitFile
    graph: ComputeGraph
    mask: torch.Tensor  # [n_src, n_dst] bool
    scores: torch.Tensor  # [n_src, n_dst] float32
    params: dict[str, Any]
    metrics: dict[str, Any]
    edge_inclusion: torch.Tensor | None = None  # [n_src, n_dst] float, when recorded
    positional: PositionalCircuit | None = None  # a positional circuit's part


def parse_circuit(data: Any, source: str = "circuit.json") -> ParsedCircuit:
    """Check a parsed circuit.json document (module docstring); AcdError in one line."""
    _check_format(data, source)
    document = validate(CircuitFile, data, source)
    # The strings (scores and edge names aside, which are numbers and the graph's names),
    # for a document parsed elsewhere: parse_json checks its own.
    check_text({k: v for k, v in data.items() if k not in ("scores", "edges", "positions")}, source)
    graph = _graph(document.graph, len(document.scores), source)
    nodes = set(graph.nodes)
    for name in document.node_roles:
        if name not in graph.src_index or graph.sources[graph.src_index[name]].kind != "head":
            raise AcdError(f"{source}: node_roles: {name!r} is not a head of this graph")
    for name in document.node_scores:
        if name not in nodes:
            raise AcdError(f"{source}: node_scores: {name!r} is not a node of this graph")
    scores = torch.zeros(graph.n_src, graph.n_dst, dtype=torch.float32)
    scores[graph.valid] = torch.tensor(document.scores, dtype=torch.float32)
    if not bool(scores.isfinite().all()):  # finite as a double, beyond float32's range
        index = int((~scores[graph.valid].isfinite()).nonzero()[0])
        raise AcdError(f"{source}: scores[{index}]: beyond the range of a float32 score")
    mask = _mask(graph, document.edges, source)
    return ParsedCircuit(
        document=document,
        graph=graph,
        mask=mask,
        scores=scores,
        params=document.params.as_dict(data.get("params", {})),
        metrics=document.metrics.as_dict(data.get("metrics", {})),
        edge_inclusion=_inclusion(document.edge_inclusion, graph, document.edges, source),
        positional=_positional(document.positions, graph, source),
    )


def _positional(
    info: PositionsInfo | None, graph: ComputeGraph, source: str
) -> PositionalCircuit | None:
    """The positional part of a circuit.json, checked against its graph; None when absent."""
    if info is None:
        return None
    from acd.positional.graph import PositionalCircuit, PositionalGraph

    n_spans = len(info.spans)
    if n_spans == 0 or len(set(info.spans)) != n_spans or any("@" in s for s in info.spans):
        raise AcdError(f"{source}: positions.spans: expected distinct span names without '@'")
    for name, values in (("present", info.present), ("scored", info.scored)):
        if len(values) != n_spans:
            raise AcdError(f"{source}: positions.{name}: {len(values)} values for {n_spans} spans")
    if len(info.order) != n_spans or any(len(row) != n_spans for row in info.order):
        raise AcdError(f"{source}: positions.order: expected {n_spans} rows of {n_spans}")
    pgraph = PositionalGraph(
        graph,
        tuple(info.spans),
        torch.tensor(info.present),
        torch.tensor(info.order),
        torch.tensor(info.scored),
    )
    valid = pgraph.valid
    if len(info.scores) != int(valid.sum()):
        raise AcdError(
            f"{source}: positions.scores: {len(info.scores)} scores for {int(valid.sum())} "
            "positional edges"
        )
    scores = torch.zeros(pgraph.shape, dtype=torch.float32)
    scores[valid] = torch.tensor(info.scores, dtype=torch.float32)
    mask = torch.zeros(pgraph.shape, dtype=torch.bool)
    for i, (src, dst) in enumerate(info.edges):
        try:
            mask[pgraph.edge_index(src, dst)] = True
        except KeyError as err:
            raise AcdError(f"{source}: positions.edges[{i}]: {err.args[0]}") from None
    return PositionalCircuit(pgraph, mask, scores)


def _inclusion(
    values: list[float] | None,
    graph: ComputeGraph,
    edges: list[tuple[str, str]],
    source: str,
) -> torch.Tensor | None:
    """The per-edge inclusion frequencies (one per kept edge, in the file's order of
    ``edges``) as a dense [n_src, n_dst] tensor, or None when the file records none."""
    if values is None:
        return None
    if len(values) != len(edges):
        raise AcdError(f"{source}: edge_inclusion: {len(values)} values for {len(edges)} edges")
    dense = torch.zeros(graph.n_src, graph.n_dst, dtype=torch.float32)
    for (src, dst), value in zip(edges, values):
        dense[graph.edge_index(src, dst)] = value
    return dense


def _check_format(data: Any, source: str) -> None:
    """Another format, or a newer version, is refused before its fields are read: their
    errors would only confuse."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else None
        raise AcdError(
            f"{source}: not an acd circuit file (format {short(found)}, expected {FORMAT!r})"
        )
    version = data.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version != FORMAT_VERSION:
        newer = isinstance(version, int) and not isinstance(version, bool) and version > 1
        raise AcdError(
            f"{source}: format_version: circuit format version {short(version)} is not "
            f"supported (this acd reads version {FORMAT_VERSION})"
            + ("; upgrade acd" if newer else "")
        )


def graph_sizes(shape: GraphShape) -> tuple[int, int, int]:
    """(n_src, n_dst, n_edges) of ``ComputeGraph(shape)`` by arithmetic, without building
    its dense [n_src, n_dst] mask (a file claiming 10^6 layers must not allocate it)."""
    L, H, G = shape.n_layers, shape.n_heads, shape.n_kv_heads
    mlp = int(shape.has_mlp)
    per_src, per_dst = H + mlp, H + 2 * G + mlp
    n_src, n_dst = 1 + L * per_src, L * per_dst + 1
    # A destination of layer l reads the input and every source of layers < l: 1 + l * per_src.
    reads = L + per_src * L * (L - 1) // 2
    n_edges = (H + 2 * G) * reads + n_src  # attention inputs, then logits (reads everything)
    if shape.has_mlp:  # a sequential MLP also reads its own layer's heads
        n_edges += reads + (0 if shape.parallel_attn_mlp else L * H)
    return n_src, n_dst, n_edges


def _graph(info: GraphInfo, n_scores: int, source: str) -> ComputeGraph:
    """The graph of ``info``, after checking the recorded sizes and the number of scores
    against the shape's (so a wrong shape never allocates a graph larger than the file)."""
    if info.n_heads % info.n_kv_heads:
        raise AcdError(
            f"{source}: graph.n_kv_heads: {info.n_kv_heads} does not divide "
            f"graph.n_heads ({info.n_heads})"
        )
    sizes = dict(zip(("n_src", "n_dst", "n_edges"), graph_sizes(info.shape)))
    for key, size in sizes.items():
        recorded = getattr(info, key)
        if recorded is not None and recorded != size:
            raise AcdError(
                f"{source}: graph.{key} is {recorded} but a graph of that shape has {size}; "
                "the file is inconsistent"
            )
    if n_scores != sizes["n_edges"]:
        raise AcdError(
            f"{source}: scores: {n_scores} scores for a graph of {sizes['n_edges']} edges; the "
            "scores list must hold one score per valid edge"
        )
    return ComputeGraph(info.shape)


def _printable(name: str) -> str:
    """A node name as an error shows it: as is when printable, else quoted by ``short`` (a
    file may hold any character, and the error must stay one line)."""
    return name if name.isprintable() and len(name) <= 80 else short(name)


def _mask(graph: ComputeGraph, edges: list[tuple[str, str]], source: str) -> torch.Tensor:
    """[n_src, n_dst] bool mask of the kept edges; each must be an edge, listed once."""
    mask = torch.zeros(graph.n_src, graph.n_dst, dtype=torch.bool)
    for k, (src, dst) in enumerate(edges):
        try:
            i, j = graph.edge_index(src, dst)
        except KeyError as err:
            pair = f"{_printable(src)} -> {_printable(dst)}"
            raise AcdError(f"{source}: edges[{k}]: {pair}: {err.args[0]}") from None
        if mask[i, j]:
            pair = f"{_printable(src)} -> {_printable(dst)}"
            raise AcdError(f"{source}: edges[{k}]: {pair} is listed twice")
        mask[i, j] = True
    return mask
