"""Faithfulness curves over positional edges: the top p % of the valid positional edges by
score, for each p, evaluated as positional circuits (``acd.positional.evaluate``) — the
positional form of ``acd.curves.faithfulness_curve``, with the same points and areas."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from acd.curves import CURVE_PERCENTS, FaithfulnessCurve, edge_counts
from acd.errors import AcdError
from acd.positional.evaluate import evaluate_positional_with
from acd.positional.scores import positional_runner
from acd.search import select_topn

if TYPE_CHECKING:
    from acd.metrics import Metric
    from acd.models.load import ModelAdapter
    from acd.positional.graph import PositionalGraph
    from acd.tasks import PromptBatch


def positional_faithfulness_curve(
    model: ModelAdapter,
    pgraph: PositionalGraph,
    batch: PromptBatch,
    scores: torch.Tensor,
    *,
    absolute: bool = True,
    percents: Sequence[float] = CURVE_PERCENTS,
    metric: str | Metric = "task",
    ablation: str = "corrupted",
    batch_size: int | None = None,
) -> FaithfulnessCurve:
    """Evaluate the top-p % positional circuits of ``scores`` for every p of ``percents``.

    Each point keeps ``select_topn(scores, pgraph.valid, n, absolute=absolute)`` with n from
    ``edge_counts(percents, pgraph.n_edges)`` (no pruning, as for plain curves); all points
    share one runner's full-model and empty-circuit runs, so 100 % has f = 1 and 0 % f = 0.
    The curve's ``n_edges`` count positional edges and its ``level`` is "positional".

    Args:
        scores: [n_src, P, n_dst, P] positional edge scores (``positional_scores``).
        batch: prompts with ``pgraph``'s spans; batch_size counts prompts (P copies each).
    """
    if tuple(scores.shape) != pgraph.shape:
        raise AcdError(
            f"positional scores have shape {tuple(scores.shape)}; expected {pgraph.shape}"
        )
    percents = tuple(float(p) for p in percents)
    counts = edge_counts(percents, pgraph.n_edges)
    masks = torch.stack(
        [select_topn(scores, pgraph.valid, n, absolute=absolute) for n in counts]
    )  # [k, n_src, P, n_dst, P]
    runner = positional_runner(model, pgraph, batch, metric, ablation, batch_size)
    evaluations = evaluate_positional_with(runner, pgraph, masks)
    return FaithfulnessCurve.of(percents, counts, evaluations, absolute, ablation, "positional")
