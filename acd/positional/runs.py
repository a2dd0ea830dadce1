"""Forward passes over positional edges: patched runs and gradient runs (acd.positional).

A key or value input is read by queries at many positions, and a positional edge into it
changes what the queries of one span see (acd.positional.graph). One forward cannot give the
same key two values, so a positional run carries **one copy of each prompt per query span**:
copy c (batch rows c * n .. c * n + n - 1) computes the keys and values that the queries of
span c read. Everything else is shared: after every attention layer each head's output at a
position t is taken from the copy of t's own span (``HookedRun(head_rows=)``), so every copy
holds the same residual stream, that of the positionally patched model, and copy 0's logits
are the run's logits. Destinations that read their own position (queries, MLPs, logits) get
the same correction in every copy.

Costs: a run is P forwards (P spans) in one batch. The gradient run's destination gradients
split the same way: a key input's gradient in copy c is dM/d(key input) through the queries
of span c only, and the copies' gradients of any destination sum to the plain run's gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from acd.patching.hooks import HookedRun

if TYPE_CHECKING:
    from acd.models.load import ModelAdapter
    from acd.positional.graph import PositionalGraph


def copy_rows(n: int, n_copies: int) -> torch.Tensor:
    """[n_copies * n] long: the prompt of every row of a copied batch (copy-major)."""
    return torch.arange(n).repeat(n_copies)


def head_rows(span_index: torch.Tensor, copy_of_span: torch.Tensor, n_copies: int) -> torch.Tensor:
    """[n_copies * n, T] long: the row whose head outputs each (row, position) takes.

    Row c * n + i at position t takes row copy_of_span[span(i, t)] * n + i; padding (span -1)
    keeps its own row. Args: span_index [n, T] (-1 on padding), copy_of_span [P] long.
    """
    n, _ = span_index.shape
    own = torch.arange(n_copies * n)[:, None].expand(-1, span_index.shape[1])
    copy = copy_of_span[span_index.clamp(min=0)]  # [n, T]
    source = copy * n + torch.arange(n)[:, None]
    source = torch.where(span_index >= 0, source, -1).repeat(n_copies, 1)
    return torch.where(source >= 0, source, own)


def position_masks(
    pgraph: PositionalGraph, patch: torch.Tensor, span_index: torch.Tensor
) -> torch.Tensor:
    """The per-(row, position) plain masks of a positional patch, one copy per span.

    Row c * n + i at position t (span p): a destination that reads its own position patches
    u -> v where ``patch[u, p, v, p]``; a key or value input patches u -> v where
    ``patch[u, p, v, c]`` (what span c's queries see of position t's key). Padding: nothing.

    Args: patch [n_src, P, n_dst, P] bool or float in [0, 1]; span_index [n, T].
    Returns: [P * n, T, n_src, n_dst] float, zero on the plain graph's invalid edges.
    """
    n_spans = pgraph.n_spans
    patch = (patch.float() * pgraph.graph.valid[:, None, :, None]).permute(1, 3, 0, 2)
    diagonal = patch[torch.arange(n_spans), torch.arange(n_spans)]  # [P, n_src, n_dst]
    span = span_index.cpu().clamp(min=0)
    real = (span_index.cpu() >= 0)[:, :, None, None].float()
    copies = []
    for c in range(n_spans):
        table = torch.where(pgraph.cross[None, None, :], patch[:, c], diagonal)  # [P, s, d]
        copies.append(table[span] * real)
    return torch.cat(copies, dim=0)


def run_positional_patched(
    model: ModelAdapter,
    pgraph: PositionalGraph,
    tokens: torch.Tensor,
    span_index: torch.Tensor,
    patch: torch.Tensor,
    patch_sources: torch.Tensor,
) -> torch.Tensor:
    """A forward of ``tokens`` [n, T] with the positional edges of ``patch`` [n_src, P, n_dst, P]
    reading ``patch_sources`` [n or 1, T, n_src, d_model]: logits [n, T, d_vocab]."""
    n_spans, n = pgraph.n_spans, tokens.shape[0]
    rows = copy_rows(n, n_spans)
    sources = patch_sources.expand(n, *patch_sources.shape[1:])[rows]
    run = HookedRun(
        model,
        pgraph.graph,
        tokens.to(model.device)[rows.to(model.device)],
        patch_mask=position_masks(pgraph, patch, span_index),
        patch_sources=sources.to(model.device, model.dtype),
        head_rows=head_rows(span_index.cpu(), torch.arange(n_spans), n_spans),
    )
    with torch.no_grad():
        return run.run()[:n]


def run_positional_gradients(
    model: ModelAdapter,
    pgraph: PositionalGraph,
    tokens: torch.Tensor,
    span_index: torch.Tensor,
    metric_fn: Callable[[torch.Tensor], torch.Tensor],
    *,
    embed_override: torch.Tensor | None = None,
    frozen_norms: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One forward and backward of ``tokens`` [n, T] with one copy per span.

    Returns metric [n] (detached), sources [n, T, n_src, d_model] (the run's, detached) and
    grads [P, n, T, n_dst, d_model]: copy c's gradient at every destination; for a key or
    value input the gradient through span c's queries, for the others a share whose sum over
    copies is the plain gradient (module docstring). ``embed_override`` [n, T, d_model]
    replaces the input node's output in every copy (EAP-IG).
    """
    n_spans, n = pgraph.n_spans, tokens.shape[0]
    rows = copy_rows(n, n_spans).to(model.device)
    if embed_override is not None:
        embed_override = embed_override.to(model.device).detach()[rows]
    run = HookedRun(
        model,
        pgraph.graph,
        tokens.to(model.device)[rows],
        record=True,
        capture_grads=True,
        embed_override=embed_override,
        frozen_norms=frozen_norms,
        head_rows=head_rows(span_index.cpu(), torch.arange(n_spans), n_spans),
    )
    with torch.enable_grad():
        logits = run.run()
        metric = metric_fn(logits[:n])
        grads = torch.autograd.grad(metric.sum(), run.grad_leaves, allow_unused=True)
    pos, d_model = tokens.shape[1], model.spec.d_model
    blocks = [torch.zeros_like(leaf) if g is None else g for leaf, g in zip(run.grad_leaves, grads)]
    grads = torch.cat(
        [g.reshape(n_spans * n, pos, -1, d_model).to(model.device) for g in blocks], dim=2
    )
    return metric.detach(), run.recorded[:n], grads.reshape(n_spans, n, pos, -1, d_model)
