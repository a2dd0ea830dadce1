"""The trust report of a positional circuit (acd.trust at span resolution): the gradient
method's positional scores against exact positional patching on a sample of positional edges,
and the stability of the positional edge set over prompt resamples."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from acd.trust import FIDELITY_EDGES, Fidelity, _fidelity_figures, sample_valid

if TYPE_CHECKING:
    from acd.positional.graph import PositionalGraph
    from acd.runner import PromptRunner


def sample_positional_edges(
    pgraph: PositionalGraph, selected: torch.Tensor, n: int = FIDELITY_EDGES, seed: int = 0
) -> torch.Tensor:
    """[n_src, P, n_dst, P] bool: every selected positional edge, then seeded random other
    positional edges up to ``n`` in all (``acd.trust.sample_valid`` over positional edges)."""
    return sample_valid(pgraph.valid, selected, n, seed)


def positional_fidelity(
    runner: PromptRunner,
    pgraph: PositionalGraph,
    scores: torch.Tensor,
    selected: torch.Tensor,
    *,
    n_edges: int = FIDELITY_EDGES,
    seed: int = 0,
) -> Fidelity:
    """Positional ``scores`` against exact positional patching on the sampled positional edges
    (the runner's prompts, metric and ablation)."""
    from acd.positional.scores import score_positional_with

    sample = sample_positional_edges(pgraph, selected, n_edges, seed)
    exact = score_positional_with(runner, pgraph, "exact", progress=False, edge_mask=sample)
    kept = (selected.bool().cpu() & pgraph.valid)[sample]
    return _fidelity_figures(scores.detach().double().cpu()[sample], exact.double()[sample], kept)
