"""Circuit: the result of a discovery run.

A circuit is a set of kept edges of a ComputeGraph, with the scores every valid edge received,
the metrics measured on it, and where it came from (task, model, method, parameters, seed).
Masks and scores are dense [n_src, n_dst] tensors; ``edges`` and ``edge_scores`` are views
by name.

This module knows no file format: the writers and readers live in ``acd.export``, which imports
it. ``save``, ``summary_markdown`` and ``to_networkx`` are thin conveniences over them for the
callers that use them (``acd.cli``, the README); they import ``acd.export`` when called, so the
import goes one way.
"""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from typing import TYPE_CHECKING, Any

import torch

from acd.graph import ComputeGraph
from acd.methods import Method, Selection, method_from_params, selection_from_params

if TYPE_CHECKING:
    from pathlib import Path

    import networkx as nx

    from acd.export.save import SavedFiles
    from acd.heldout import PromptSplit, TaskSource
    from acd.positional.graph import PositionalCircuit

# The packages whose versions a circuit records (see ``package_versions``).
RECORDED_PACKAGES = ("acd", "torch", "transformer_lens", "transformers", "networkx")


def package_versions() -> dict[str, str]:
    """Versions of Python and the packages a result depends on; a package not installed is
    left out rather than recorded as unknown. Read once per process (the metadata lookups cost
    milliseconds, and installed versions do not change under a running process)."""
    return dict(_installed_versions())


@functools.cache
def _installed_versions() -> tuple[tuple[str, str], ...]:
    versions = {"python": platform.python_version()}
    for package in RECORDED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return tuple(versions.items())


def utc_now() -> str:
    """The current UTC time, ISO-8601 to the second, e.g. ``2026-01-31T12:00:00Z``."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass
class Circuit:
    """Kept edges, every edge's score, metrics and provenance.

    Attributes:
        graph: the model's ComputeGraph.
        mask: [n_src, n_dst] bool, the kept edges (always a subset of ``graph.valid``).
        scores: [n_src, n_dst] float, every valid edge's score (0 on invalid entries); the
            sign convention is the scoring method's (see acd.attribution).
        task, model, method: names; ``params`` the selection and scoring arguments; ``seed``.
        metrics: measured on the prompts used (faithfulness mean and spread, metric values).
        node_scores: optional per-source-node scores, by node name (every source node's, for
            a node-level circuit).
        node_roles: optional role scores per head (``acd.roles``): head name -> {role name:
            score in [0, 1]}, e.g. ``{"a1.h2": {"previous_token": 0.93, "induction": 0.02}}``;
            ``acd.roles.role_badges`` turns one head's scores into its short labels.
        level: ``edge`` (the circuit keeps edges) or ``node`` (it keeps source nodes and is
            every edge between them: ``acd.nodes``).
        model_sha256: sha256 of the model's weights (``acd.models.weights_sha256``), "" if unknown.
        versions: Python and package versions when the circuit was made (``package_versions``).
        created: when the circuit was made, UTC ISO-8601 (``utc_now``).
        task_source: where the task came from (``acd.heldout.TaskSource``: a shipped name, or
            a file's path and sha256), so that ``acd evaluate`` re-reads the same task; None
            when unknown (a task built in memory, files of older acd versions).
        prompt_split: how discovery's prompts were kept apart from evaluation's
            (``acd.heldout.PromptSplit``); None when unknown.
        edge_inclusion: [n_src, n_dst] float in [0, 1], the share of the trust report's
            prompt resamples whose circuit keeps each edge (``acd.trust``); None when the
            stability was not measured.
        positional: for a positional circuit (``discover(positions=True)``), its kept
            positional edges and their scores per span (``acd.positional.PositionalCircuit``);
            ``mask`` and ``scores`` are then their aggregates over the spans. None otherwise.
    """

    graph: ComputeGraph
    mask: torch.Tensor
    scores: torch.Tensor
    task: str
    model: str
    method: str
    params: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    node_scores: dict[str, float] = field(default_factory=dict)
    level: str = "edge"
    node_roles: dict[str, dict[str, float]] = field(default_factory=dict)
    model_sha256: str = ""
    versions: dict[str, str] = field(default_factory=package_versions)
    created: str = field(default_factory=utc_now)
    task_source: TaskSource | None = None
    prompt_split: PromptSplit | None = None
    edge_inclusion: torch.Tensor | None = None
    positional: PositionalCircuit | None = None

    def __post_init__(self) -> None:
        shape = (self.graph.n_src, self.graph.n_dst)
        if tuple(self.mask.shape) != shape or tuple(self.scores.shape) != shape:
            raise ValueError(
                f"mask {tuple(self.mask.shape)} and scores {tuple(self.scores.shape)} must both "
                f"have the graph's shape {shape}"
            )
        if self.level not in ("edge", "node"):
            raise ValueError(f"level must be 'edge' or 'node', got {self.level!r}")
        self.mask = self.mask.detach().bool().cpu() & self.graph.valid
        # where, not multiplication: x * 0 leaves -0.0 (and NaN) on invalid entries.
        scores = self.scores.detach().float().cpu()
        self.scores = torch.where(self.graph.valid, scores, torch.zeros((), dtype=scores.dtype))
        if self.edge_inclusion is not None:
            if tuple(self.edge_inclusion.shape) != shape:
                raise ValueError(f"edge_inclusion must have the graph's shape {shape}")
            self.edge_inclusion = self.edge_inclusion.detach().float().cpu() * self.graph.valid
        if self.positional is not None and self.positional.graph.graph.shape != self.graph.shape:
            raise ValueError("the positional circuit's graph is not this circuit's graph")

    @property
    def evaluation_metric(self) -> str | None:
        """The metric ``metrics`` were evaluated with, as ``acd evaluate`` re-evaluates it.

        ``params["evaluation_metric"]`` where recorded (ACDC and hybrid circuits, whose
        ``params["metric"]`` is the search's metric, ``kl`` by default), else
        ``params["metric"]``: attribution methods score and evaluate with one metric, and
        earlier versions of ``discover`` recorded ``evaluation_metric`` for a search only
        where it differed from the search's metric. None when neither is recorded (then the
        task's metric applies). May be ``"task"`` (the task's metric).
        """
        for key in ("evaluation_metric", "metric"):
            value = self.params.get(key)
            if isinstance(value, str) and value:
                return value
        return None

    @property
    def method_spec(self) -> Method:
        """The method object (acd.methods) this circuit was found with, rebuilt from
        ``method`` and ``params`` (so ``acd.discover(..., method=circuit.method_spec)`` runs
        it again); parameters an older file lacks get their defaults."""
        return method_from_params(self.method, self.params)

    @property
    def selection_spec(self) -> Selection | None:
        """The selection object (acd.methods) of a scoring method's circuit; None for a
        search's (ACDC, hybrid), which chose its edges itself."""
        return selection_from_params(self.params)

    @property
    def edges(self) -> list[tuple[str, str]]:
        """Kept edges by name, e.g. ``[("a0.h1", "a2.h3<k>"), ...]``, in index order."""
        return self.graph.edge_names(self.mask)

    @property
    def n_edges(self) -> int:
        return int(self.mask.sum())

    @property
    def edge_scores(self) -> dict[tuple[str, str], float]:
        """The score of every valid edge (kept or not), by name."""
        names = self.graph.edge_names(self.graph.valid)
        values = self.scores[self.graph.valid].tolist()  # same (row-major) order as names
        return dict(zip(names, values))

    @property
    def nodes(self) -> list[str]:
        """Nodes touched by a kept edge: sources and the nodes the ports are named after (a
        GQA k/v port's kv group), in graph order."""
        graph = self.graph
        used = torch.zeros(graph.n_nodes, dtype=torch.bool)
        used[graph.src_node_ids[self.mask.any(dim=1)]] = True
        used[graph.dst_node_ids[self.mask.any(dim=0)]] = True
        return [graph.nodes[i] for i in used.nonzero().flatten().tolist()]

    @property
    def kept_sources(self) -> list[str]:
        """The source nodes (input, heads, MLPs) with a kept outgoing edge, in source order:
        for a node-level circuit, its nodes (``acd.nodes``)."""
        from acd.nodes import kept_nodes, node_names

        return node_names(kept_nodes(self.mask, self.graph), self.graph)

    @property
    def kept_components(self) -> list[str]:
        """``kept_sources`` without ``input``: the heads and MLPs the circuit keeps (what a
        node-level circuit's size counts)."""
        from acd.nodes import kept_components, node_names

        return node_names(kept_components(self.mask, self.graph), self.graph)

    def save(
        self,
        out_dir: str | Path,
        *,
        formats: tuple[str, ...] = ("svg",),
        max_edges: int = 300,
        attention: dict | None = None,
    ) -> SavedFiles:
        """Write circuit.json, circuit.graphml, circuit.nodelink.json, summary.md, circuit.dot
        and the diagram (``formats``: svg, png, pdf) into ``out_dir``; see
        ``acd.export.save_circuit``. Returns the paths written and a note or None."""
        # Looked up in acd.export at call time: acd.export imports this module (and tests
        # replace acd.export.save_circuit).
        from acd.export import save_circuit

        return save_circuit(
            self, out_dir, formats=formats, max_edges=max_edges, attention=attention
        )

    def summary_markdown(self) -> str:
        """The summary.md text: what was run, size, faithfulness, time, top edges (see
        ``acd.export.summary_markdown``)."""
        from acd.export import summary_markdown  # at call time: acd.export imports this module

        return summary_markdown(self)

    def to_networkx(self, *, aggregate: bool = False) -> nx.MultiDiGraph:
        """The kept edges as a networkx MultiDiGraph (see ``acd.export.to_networkx``): for a
        positional circuit its positional graph, or with ``aggregate`` its plain view."""
        from acd.export import to_networkx  # at call time: acd.export imports this module

        return to_networkx(self, aggregate=aggregate)

    def __repr__(self) -> str:
        f = self.metrics.get("faithfulness")
        faith = f" faithfulness={f:.3f}" if isinstance(f, float) else ""
        n_nodes = f"{len(self.kept_components)}/{self.graph.n_src - 1}"
        nodes = f"nodes={n_nodes} " if self.level == "node" else ""
        positional = self.positional
        spans = (
            f"positional_edges={positional.n_edges}/{positional.graph.n_edges} "
            f"spans={list(positional.spans)} "
            if positional is not None
            else ""
        )
        return (
            f"Circuit(task={self.task!r}, model={self.model!r}, method={self.method!r}, "
            f"{nodes}{spans}edges={self.n_edges}/{self.graph.n_edges}{faith})"
        )
