"""Circuit: the result of a discovery run.

A circuit is a set of kept edges of a ComputeGraph, with the scores every valid edge received,
the metrics measured on it, and where it came from (task, model, method, parameters, seed).
Masks and scores are dense [n_src, n_dst] tensors; ``edges`` and ``edge_scores`` are views
by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from acd.graph import ComputeGraph


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
        node_scores: optional per-source-node scores, by node name.
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

    def __post_init__(self) -> None:
        shape = (self.graph.n_src, self.graph.n_dst)
        if tuple(self.mask.shape) != shape or tuple(self.scores.shape) != shape:
            raise ValueError(
                f"mask {tuple(self.mask.shape)} and scores {tuple(self.scores.shape)} must both "
                f"have the graph's shape {shape}"
            )
        self.mask = self.mask.detach().bool().cpu() & self.graph.valid
        self.scores = self.scores.detach().float().cpu() * self.graph.valid

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
        """Nodes touched by a kept edge: sources and destination nodes, in graph order."""
        used = {src for src, _ in self.edges} | {
            self.graph.destinations[j].node for j in self.mask.any(dim=0).nonzero().flatten()
        }
        return [n for n in self.graph.nodes if n in used]

    def __repr__(self) -> str:
        f = self.metrics.get("faithfulness")
        faith = f" faithfulness={f:.3f}" if isinstance(f, float) else ""
        return (
            f"Circuit(task={self.task!r}, model={self.model!r}, method={self.method!r}, "
            f"edges={self.n_edges}/{self.graph.n_edges}{faith})"
        )
