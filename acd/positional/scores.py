"""Edge scores at span resolution: EAP, EAP-IG and exact patching over positional edges.

The score of a positional edge (u at p) -> (v at q) is, as for a plain edge (acd.attribution),

    M(clean run with only that positional edge patched) - M(clean run),   averaged over prompts

estimated by the gradient methods as sum over the positions t of span p of
(p_u - z_u^clean)[t] . dM/d(in_v)[t], with the gradient of a key or value input taken through
the queries of span q only (acd.positional.runs), and measured by ``exact``. Summed over both
span axes the gradient scores are the plain scores (the copies' gradients sum to the plain
gradient), up to float rounding.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from acd.attribution import AttributionError
from acd.memory import accumulator_dtype, sum_dtype
from acd.models.norms import check_frozen_norms
from acd.patching.hooks import HookedRun
from acd.positional.runs import copy_rows, run_positional_gradients
from acd.runner import PromptRunner, at_positions

if TYPE_CHECKING:
    from acd.metrics import Metric, MetricFunction
    from acd.models.load import ModelAdapter
    from acd.positional.graph import PositionalGraph
    from acd.tasks import PromptBatch

POSITIONAL_METHODS = ("eap", "eap-ig", "exact")

# Rows one exact-scoring forward carries (an edge into a key or value input takes two), at most;
# fewer where the rows' per-position masks [rows, T, n_src, n_dst] would pass MASK_ENTRIES.
ROWS_PER_FORWARD = 256
MASK_ENTRIES = 1 << 25


def positional_scores(
    model: ModelAdapter,
    pgraph: PositionalGraph,
    batch: PromptBatch,
    method: str = "eap-ig",
    *,
    metric: str | Metric | MetricFunction | None = None,
    ablation: str = "corrupted",
    batch_size: int | None = None,
    ig_steps: int = 5,
    progress: bool = True,
    edge_mask: torch.Tensor | None = None,
    frozen_norms: bool = False,
) -> torch.Tensor:
    """Score every positional edge of ``pgraph`` on ``batch``'s prompts.

    Arguments as ``acd.attribution.attribute``; ``edge_mask`` [n_src, P, n_dst, P] limits
    ``exact`` to those edges. ``batch_size`` counts prompts (each runs as P copies); default
    8. Returns [n_src, P, n_dst, P] on the CPU, zero on invalid positional edges.
    """
    runner = positional_runner(model, pgraph, batch, metric, ablation, batch_size)
    return score_positional_with(
        runner,
        pgraph,
        method,
        ig_steps=ig_steps,
        progress=progress,
        edge_mask=edge_mask,
        frozen_norms=frozen_norms,
    )


def positional_runner(
    model: ModelAdapter,
    pgraph: PositionalGraph,
    batch: PromptBatch,
    metric: str | Metric | MetricFunction | None = None,
    ablation: str = "corrupted",
    batch_size: int | None = None,
) -> PromptRunner:
    """The prompt runner of a positional stage: the plain graph's, in chunks of ``batch_size``
    prompts (default 8: every chunk runs as P copies)."""
    if tuple(batch.span_names) != pgraph.spans:
        raise AttributionError(
            f"the prompts' spans {list(batch.span_names)} are not the graph's {list(pgraph.spans)}"
        )
    return PromptRunner(
        model,
        pgraph.graph,
        batch,
        metric=metric,
        ablation=ablation,
        batch_size=batch_size or min(8, len(batch)),
        error=AttributionError,
    )


def score_positional_with(
    runner: PromptRunner,
    pgraph: PositionalGraph,
    method: str,
    *,
    ig_steps: int = 5,
    progress: bool = True,
    edge_mask: torch.Tensor | None = None,
    frozen_norms: bool = False,
) -> torch.Tensor:
    """``positional_scores`` on a runner's prompts: [n_src, P, n_dst, P] on the CPU."""
    if frozen_norms:
        if method == "exact":
            raise AttributionError(
                "frozen_norms applies to the gradient methods, not 'exact' (it takes no gradient)"
            )
        check_frozen_norms(runner.model)
    if method not in POSITIONAL_METHODS:
        raise AttributionError(
            f"method {method!r} has no positional form; choose one of "
            f"{', '.join(POSITIONAL_METHODS)}"
        )
    if ig_steps < 1:
        raise AttributionError(f"ig_steps must be at least 1, got {ig_steps}")
    keep = pgraph.valid
    if edge_mask is not None:
        if tuple(edge_mask.shape) != pgraph.shape:
            raise AttributionError(
                f"edge_mask has shape {tuple(edge_mask.shape)}, expected {pgraph.shape}"
            )
        keep = keep & edge_mask.bool().cpu()
    if method == "exact":
        total = _exact_positional(runner, pgraph, keep, progress)
    else:
        steps = ig_steps if method == "eap-ig" else 1
        total = _gradient_positional(runner, pgraph, steps, progress, frozen_norms)
    total = runner.sum(total) / runner.n_total
    return torch.where(keep, total, torch.zeros((), dtype=total.dtype))


# --------------------------------------------------------------------------------------------
# EAP and EAP-IG


def _gradient_positional(
    runner: PromptRunner,
    pgraph: PositionalGraph,
    steps: int,
    progress: bool,
    frozen_norms: bool = False,
) -> torch.Tensor:
    """Sum over this rank's prompts of the positional gradient products (module docstring):
    [n_src, P, n_dst, P] on the CPU, invalid edges not yet zeroed."""
    model = runner.model
    total = torch.zeros(pgraph.shape, dtype=accumulator_dtype(model))
    bar = tqdm(total=len(runner.chunks) * steps, desc="positional", disable=not progress)
    for i, chunk in enumerate(runner.chunks):
        metric_fn = runner.bind(i)
        patch = runner.patch(i)
        _, clean, grads = run_positional_gradients(
            model, pgraph, chunk.clean, chunk.span_index, metric_fn, frozen_norms=frozen_norms
        )
        bar.update(1)
        for k in range(1, steps):  # EAP-IG's path k = 1 .. m - 1; the clean end was k = m
            embed = patch[:, :, 0] + (k / steps) * (clean[:, :, 0] - patch[:, :, 0])
            grads = (
                grads
                + run_positional_gradients(
                    model,
                    pgraph,
                    chunk.clean,
                    chunk.span_index,
                    metric_fn,
                    embed_override=embed,
                    frozen_norms=frozen_norms,
                )[2]
            )
            bar.update(1)
        total += _span_products(pgraph, patch - clean, grads / steps, chunk.span_index).cpu()
    bar.close()
    return total


def _span_products(
    pgraph: PositionalGraph, diff: torch.Tensor, grads: torch.Tensor, span_index: torch.Tensor
) -> torch.Tensor:
    """Sum over prompts and the positions t of span p of diff[., t, u] . grads[c, ., t, v]:
    with c = q for key and value inputs, summed over copies (on p = q) for the others.

    Args: diff [n, T, n_src, d]; grads [P, n, T, n_dst, d]; span_index [n, T].
    Returns [n_src, P, n_dst, P] in the accumulator dtype.
    """
    n_spans = pgraph.n_spans
    dtype = sum_dtype(diff.dtype)
    one_hot = (span_index[:, :, None] == torch.arange(n_spans, device=span_index.device)).to(
        dtype
    )  # [n, T, P]
    one_hot = one_hot.to(diff.device)
    # by_span[p, n, T, u, d]: the difference at span p's positions only.
    by_span = one_hot.permute(2, 0, 1)[:, :, :, None, None] * diff.to(dtype)[None]
    n_src, n_dst = diff.shape[2], grads.shape[3]
    left = by_span.permute(0, 3, 1, 2, 4).reshape(n_spans * n_src, -1)  # [(p u), (n T d)]
    per_copy = grads.to(dtype).permute(1, 2, 4, 0, 3).reshape(-1, n_spans * n_dst)
    cross = (left @ per_copy).reshape(n_spans, n_src, n_spans, n_dst)  # [p, u, q, v]
    summed = grads.to(dtype).sum(dim=0).permute(0, 1, 3, 2).reshape(-1, n_dst)  # [(n T d), v]
    own = (left @ summed).reshape(n_spans, n_src, n_dst)  # [p, u, v]
    same = torch.diag_embed(own.permute(1, 2, 0))  # [u, v, p, q] with p = q
    same = same.permute(0, 2, 1, 3)  # [u, p, v, q]
    cross = cross.permute(1, 0, 3, 2)  # [u, p, v, q]
    is_cross = pgraph.cross.to(cross.device)[None, None, :, None]
    return torch.where(is_cross, cross, same)


# --------------------------------------------------------------------------------------------
# Exact patching


def _exact_positional(
    runner: PromptRunner, pgraph: PositionalGraph, keep: torch.Tensor, progress: bool
) -> torch.Tensor:
    """Sum over this rank's prompts of M(clean with one positional edge patched) - M(clean),
    for every edge in ``keep``: [n_src, P, n_dst, P] on the CPU.

    An edge that reads its own position patches u -> v at span p's positions in one row; an
    edge into a key or value input takes two rows, a clean copy and one whose key (value)
    input is patched at span p's positions, whose head outputs the positions of span q take.
    """
    model = runner.model
    edges = keep.nonzero()  # [E, 4]: u, p, v, q
    total = torch.zeros(pgraph.shape, dtype=accumulator_dtype(model))
    n_prompts = sum(len(chunk) for chunk in runner.chunks)
    bar = tqdm(total=len(edges) * n_prompts, desc="exact", unit="run", disable=not progress)
    rows_per_variant = torch.where(pgraph.cross[edges[:, 2]], 2, 1)
    for i, chunk in enumerate(runner.chunks):
        per_row = chunk.clean.shape[1] * pgraph.graph.n_src * pgraph.graph.n_dst
        budget = max(2, min(ROWS_PER_FORWARD, MASK_ENTRIES // per_row))
        clean_metric = runner.metric_at(i, runner.clean_at(i)).cpu()
        prompt = torch.arange(len(chunk)).repeat_interleave(len(edges))
        edge = torch.arange(len(edges)).repeat(len(chunk))
        start = 0
        while start < len(prompt):
            stop = _fill(rows_per_variant[edge], start, budget)
            p, e = prompt[start:stop], edge[start:stop]
            effect = _patched_positional_metric(runner, pgraph, i, p, edges[e])
            u, sp, v, sq = edges[e].unbind(dim=1)
            total.index_put_(
                (u, sp, v, sq), (effect.cpu() - clean_metric[p]).to(total.dtype), accumulate=True
            )
            bar.update(len(p))
            start = stop
    bar.close()
    return total


def _fill(rows: torch.Tensor, start: int, budget: int) -> int:
    """The end of the variants from ``start`` whose rows fit in ``budget`` (at least one)."""
    used = torch.cumsum(rows[start:], dim=0)
    return start + max(1, int((used <= budget).sum()))


def _patched_positional_metric(
    runner: PromptRunner,
    pgraph: PositionalGraph,
    i: int,
    prompt: torch.Tensor,
    edges: torch.Tensor,
) -> torch.Tensor:
    """M of chunk ``i``'s prompt ``prompt[r]`` with only positional edge ``edges[r]``
    (u, p, v, q) patched: [R]."""
    model, graph, chunk = runner.model, pgraph.graph, runner.chunks[i]
    span_index = chunk.span_index.cpu()
    n_variants, pos = len(prompt), chunk.clean.shape[1]
    cross = pgraph.cross[edges[:, 2]]
    second = torch.cumsum(cross.long(), dim=0) - 1 + n_variants  # row of each cross copy
    n_rows = n_variants + int(cross.sum())
    rows = torch.cat([prompt, prompt[cross]])
    mask = torch.zeros(n_rows, pos, graph.n_src, graph.n_dst, dtype=model.dtype)
    own_rows = torch.arange(n_rows)[:, None].expand(-1, pos).clone()
    for r in range(n_variants):
        u, p, v, q = edges[r].tolist()
        at_p = span_index[prompt[r]] == p
        if cross[r]:
            c = int(second[r])
            mask[c, at_p, u, v] = 1
            # The patched copy's head outputs serve span q's queries; the clean row the rest.
            at_q = span_index[prompt[r]] == q
            own_rows[r, at_q] = c
            own_rows[c] = own_rows[r]
        else:
            mask[r, at_p, u, v] = 1
    patch = runner.patch(i)[rows.to(runner.patch(i).device)]
    run = HookedRun(
        model,
        graph,
        chunk.clean[rows.to(chunk.clean.device)],
        patch_mask=mask,
        patch_sources=patch,
        head_rows=own_rows,
    )
    with torch.no_grad():
        logits = run.run()[:n_variants]
    positions = runner.positions[i]
    p = prompt.to(chunk.score_mask.device)
    reference = runner.clean_at(i)[p] if runner.metric.needs_reference else None
    return runner.metric(logits[:, positions], at_positions(chunk.select(p), positions), reference)


__all__ = ["POSITIONAL_METHODS", "copy_rows", "positional_runner", "positional_scores"]
