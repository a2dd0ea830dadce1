"""The positional graph: every node of the plain graph once per named span of the prompts.

A positional edge (u at span p) -> (v at span q) is the part of the plain edge u -> v that
carries u's output at the positions of span p into what v reads for span q:

- an MLP or a query input, and the logits, read the residual stream at their own position, so
  the edge exists only for p = q (and for the logits only at a span the metric scores);
- a key or value input is read by the head's queries at other positions: the edge carries u's
  output at the *key* positions of span p into the keys (values) that the head's queries at the
  positions of span q see. It exists when, in some prompt, a position of p is at or before a
  position of q (attention reads earlier positions only).

Summing a positional score tensor over both span axes gives the plain graph's scores
(``aggregate``). Tensors have the shape [n_src, P, n_dst, P] (source, its span, destination,
its span); node and edge names are views (``edge_name``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from acd.graph import ComputeGraph
    from acd.tasks import PromptBatch


@dataclass(frozen=True, eq=False)
class PositionalGraph:
    """The plain ``graph`` with a span axis on sources and destinations.

    ``spans``: the P span names; ``present`` [P] bool: spans with a position in some prompt;
    ``order`` [P, P] bool: (p, q) where some prompt has a position of p at or before one of q;
    ``scored`` [P] bool: spans holding a position the metric reads.
    """

    graph: ComputeGraph
    spans: tuple[str, ...]
    present: torch.Tensor
    order: torch.Tensor
    scored: torch.Tensor

    @classmethod
    def from_batch(cls, graph: ComputeGraph, batch: PromptBatch) -> PositionalGraph:
        """The positional graph of ``batch``'s spans (``batch.span_names``, ``span_index``)."""
        return cls.from_layout(graph, batch.span_names, batch.span_index, batch.score_mask)

    @classmethod
    def from_layout(
        cls,
        graph: ComputeGraph,
        spans: tuple[str, ...] | list[str],
        span_index: torch.Tensor,
        score_mask: torch.Tensor,
    ) -> PositionalGraph:
        """From span_index [N, T] (span of each position, -1 on padding) and score_mask [N, T]."""
        spans = tuple(spans)
        n_spans = len(spans)
        span_index = span_index.cpu().long()
        pos = torch.arange(span_index.shape[1])
        one_hot = span_index[:, :, None] == torch.arange(n_spans)[None, None, :]  # [N, T, P]
        present = one_hot.any(dim=(0, 1))
        big = span_index.shape[1]
        # first[i, p] / last[i, p]: the first and last position of span p in prompt i.
        first = torch.where(one_hot, pos[None, :, None], big).amin(dim=1)
        last = torch.where(one_hot, pos[None, :, None], -1).amax(dim=1)
        order = (first[:, :, None] <= last[:, None, :]).any(dim=0)
        scored = (one_hot & score_mask.cpu()[:, :, None]).any(dim=(0, 1))
        return cls(graph, spans, present, order, scored)

    @property
    def n_spans(self) -> int:
        return len(self.spans)

    @cached_property
    def cross(self) -> torch.Tensor:
        """[n_dst] bool: the key and value inputs, whose edges cross positions."""
        return torch.tensor([port.kind in ("k", "v") for port in self.graph.destinations])

    @cached_property
    def valid(self) -> torch.Tensor:
        """[n_src, P, n_dst, P] bool: the positional edges (module docstring)."""
        graph, n_spans = self.graph, self.n_spans
        same = torch.eye(n_spans, dtype=torch.bool) & self.present[:, None]
        logits = same & self.scored[None, :]
        span_ok = torch.where(self.cross[:, None, None], self.order[None], same[None])
        span_ok[graph.dst_logits()] = logits
        # span_ok: [n_dst, P, P] -> [1, P, n_dst, P]
        return graph.valid[:, None, :, None] & span_ok.permute(1, 0, 2).unsqueeze(0)

    @property
    def n_edges(self) -> int:
        return int(self.valid.sum())

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.graph.n_src, self.n_spans, self.graph.n_dst, self.n_spans)

    def aggregate(self, scores: torch.Tensor) -> torch.Tensor:
        """Positional scores [n_src, P, n_dst, P] summed over both span axes: [n_src, n_dst]."""
        return scores.sum(dim=(1, 3))

    def plain_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """A positional mask [n_src, P, n_dst, P] -> [n_src, n_dst]: the plain edges with at
        least one kept positional part."""
        return (mask.bool() & self.valid).any(dim=3).any(dim=1)

    def edge_name(self, src: int, p: int, dst: int, q: int) -> tuple[str, str]:
        """("a0.h1@S1", "a1.h2<k>@END") for one positional edge."""
        graph = self.graph
        return (
            f"{graph.sources[src].name}@{self.spans[p]}",
            f"{graph.destinations[dst].name}@{self.spans[q]}",
        )

    def edge_names(self, mask: torch.Tensor) -> list[tuple[str, str]]:
        """Names of the valid positional edges where ``mask`` is True, in index order."""
        if tuple(mask.shape) != self.shape:
            raise ValueError(f"mask has shape {tuple(mask.shape)}, expected {self.shape}")
        index = (mask.bool().cpu() & self.valid).nonzero().tolist()
        return [self.edge_name(*i) for i in index]

    def edge_index(self, src: str, dst: str) -> tuple[int, int, int, int]:
        """The index of a positional edge from its two names (``edge_name``'s form)."""
        (u, _, p), (v, _, q) = src.rpartition("@"), dst.rpartition("@")
        graph = self.graph
        try:
            index = (
                graph.src_index[u],
                self.spans.index(p),
                graph.dst_index[v],
                self.spans.index(q),
            )
        except (KeyError, ValueError):
            raise KeyError(f"no positional edge {src} -> {dst} in this graph") from None
        if not self.valid[index]:
            raise KeyError(f"{src} -> {dst} is not a positional edge of this graph")
        return index

    def __repr__(self) -> str:
        return (
            f"PositionalGraph(spans={list(self.spans)}, plain_edges={self.graph.n_edges}, "
            f"edges={self.n_edges})"
        )


@dataclass(eq=False)
class PositionalCircuit:
    """The positional part of a circuit (``Circuit.positional``): kept positional edges and
    every positional edge's score. ``mask`` [n_src, P, n_dst, P] bool (a subset of
    ``graph.valid``), ``scores`` [n_src, P, n_dst, P] float (0 off the valid edges).
    The circuit's plain ``mask`` and ``scores`` are their aggregates (``plain_mask``,
    ``aggregate``): what the plain-graph writers (EAP-IG JSON, MIB) read."""

    graph: PositionalGraph
    mask: torch.Tensor
    scores: torch.Tensor

    def __post_init__(self) -> None:
        shape = self.graph.shape
        if tuple(self.mask.shape) != shape or tuple(self.scores.shape) != shape:
            raise ValueError(
                f"positional mask {tuple(self.mask.shape)} and scores "
                f"{tuple(self.scores.shape)} must both have the positional graph's shape {shape}"
            )
        valid = self.graph.valid
        self.mask = self.mask.detach().bool().cpu() & valid
        scores = self.scores.detach().float().cpu()
        self.scores = torch.where(valid, scores, torch.zeros((), dtype=scores.dtype))

    @property
    def spans(self) -> tuple[str, ...]:
        return self.graph.spans

    @property
    def n_edges(self) -> int:
        return int(self.mask.sum())

    @property
    def edges(self) -> list[tuple[str, str]]:
        """Kept positional edges by name, e.g. ("a0.h1@S1", "a1.h2<k>@END"), in index order."""
        return self.graph.edge_names(self.mask)

    def kept_index(self) -> list[tuple[int, int, int, int]]:
        """(u, p, v, q) of every kept positional edge, in index order."""
        return [tuple(i) for i in self.mask.nonzero().tolist()]  # type: ignore[misc]
