"""Whole forward passes: plain with every source recorded, patched, and with the gradient at
every destination (acd.patching)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Literal, overload

import torch

from acd.patching.hooks import HookedRun

if TYPE_CHECKING:
    from acd.graph import ComputeGraph
    from acd.models.load import ModelAdapter

# --------------------------------------------------------------------------------------------
# Public runs


def run_and_collect(
    model: ModelAdapter, graph: ComputeGraph, tokens: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One plain forward (no gradients) giving logits and every source's output.

    Args: tokens [batch, pos] token ids.
    Returns: logits [batch, pos, d_vocab], sources [batch, pos, n_src, d_model] (index order of
    ``graph.sources``; the input node is the residual entering block 0).
    """
    run = HookedRun(model, graph, tokens.to(model.device), record=True)
    with torch.no_grad():
        logits = run.run()
    return logits, run.recorded


def collect_sources(model: ModelAdapter, graph: ComputeGraph, tokens: torch.Tensor) -> torch.Tensor:
    """Every source's output from one forward: [batch, pos, n_src, d_model]."""
    return run_and_collect(model, graph, tokens)[1]


@overload
def run_patched(
    model: ModelAdapter,
    graph: ComputeGraph,
    tokens: torch.Tensor,
    patch_mask: torch.Tensor,
    patch_sources: torch.Tensor,
    *,
    return_sources: Literal[False] = False,
) -> torch.Tensor: ...


@overload
def run_patched(
    model: ModelAdapter,
    graph: ComputeGraph,
    tokens: torch.Tensor,
    patch_mask: torch.Tensor,
    patch_sources: torch.Tensor,
    *,
    return_sources: Literal[True],
) -> tuple[torch.Tensor, torch.Tensor]: ...


def run_patched(
    model: ModelAdapter,
    graph: ComputeGraph,
    tokens: torch.Tensor,
    patch_mask: torch.Tensor,
    patch_sources: torch.Tensor,
    *,
    return_sources: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """A forward on ``tokens`` in which the masked edges read ``patch_sources``.

    Every destination v reads ``in_v + sum_u patch_mask[u, v] * (patch_sources[u] - z_u)``,
    where in_v is what v would read in this run and z_u is source u's output in this run
    (recorded as the forward proceeds, so downstream effects of earlier patches are included).
    Only valid edges (``graph.valid``) are read; other mask entries are ignored. The input
    node's edges are patched like any other (its z is the residual entering block 0), and the
    logits destination is the residual entering the final norm, so patching every valid edge
    with the corrupted run's sources reproduces the corrupted run's logits.

    Args:
        tokens: [batch, pos] token ids.
        patch_mask: [n_src, n_dst], or [batch, n_src, n_dst] to patch a different set of edges
            in each batch row (e.g. one edge per row for exact scores); bool (patch or not) or
            float in [0, 1] (interpolation: 0 keeps the run's value, 1 takes the patch).
        patch_sources: [batch, pos, n_src, d_model] (batch may be 1) values the patched edges
            carry: the corrupted run's sources, zeros or means (``patch_values``).
        return_sources: also return this run's own source outputs z (detached).

    Autograd tracks the run only when ``patch_mask`` or ``patch_sources`` requires grad (e.g.
    learning a float mask); otherwise it runs without gradients.

    Returns: logits [batch, pos, d_vocab] (and sources [batch, pos, n_src, d_model]).
    """
    tokens = tokens.to(model.device)
    run = HookedRun(
        model,
        graph,
        tokens,
        patch_mask=patch_mask,
        patch_sources=patch_sources.to(model.device, model.dtype),
        record=return_sources,
    )
    needs_grad = patch_mask.requires_grad or patch_sources.requires_grad
    with torch.set_grad_enabled(torch.is_grad_enabled() and needs_grad):
        logits = run.run()
    return (logits, run.recorded) if return_sources else logits


def run_with_gradients(
    model: ModelAdapter,
    graph: ComputeGraph,
    tokens: torch.Tensor,
    metric_fn: Callable[[torch.Tensor], torch.Tensor],
    *,
    embed_override: torch.Tensor | None = None,
    source_override: tuple[int, torch.Tensor] | None = None,
    frozen_norms: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One forward and one backward: the gradient of the summed metric at every destination.

    Every destination input becomes ``in_v + 0`` with a fresh zero leaf, so the leaf's gradient
    is d(sum over prompts of metric)/d(in_v) through the whole downstream computation; q inputs
    are per head, k and v inputs per key-value group (per head without grouped-query
    attention). Prompts do not interact, so row b holds prompt b's own gradient dM_b/d(in_v).

    Args:
        tokens: [batch, pos] token ids.
        metric_fn: logits [batch, pos, d_vocab] -> [batch] per-prompt metric (differentiable).
        embed_override: [batch, pos, d_model] replaces the input node's output (the residual
            entering block 0); EAP-IG passes embeddings interpolated between corrupted and clean.
        source_override: (first, values [batch, pos, width, d_model]): sources first ..
            first + width - 1 output ``values`` instead of what they compute (EAP-IG-activations
            passes one layer's interpolated outputs); later sources are computed from them.
            Constants: no gradient flows through an overridden source to what feeds it, which
            leaves dM/d(in_v) of every destination after it unchanged.
        frozen_norms: take the gradient with every LayerNorm / RMSNorm's statistics (mean,
            1/sqrt(var + eps), per position) held constant, the forward unchanged (GIM's
            frozen-norm rule; acd.models.norms). A model without norms is refused.

    Returns: metric [batch] (detached), sources [batch, pos, n_src, d_model] (this run's source
    outputs, detached; overridden sources hold their override), grads
    [batch, pos, n_dst, d_model] in destination index order.
    """
    tokens = tokens.to(model.device)
    if embed_override is not None:
        embed_override = embed_override.to(model.device).detach()
    if source_override is not None:
        first, values = source_override
        source_override = (first, values.to(model.device).detach())
    run = HookedRun(
        model,
        graph,
        tokens,
        record=True,
        capture_grads=True,
        embed_override=embed_override,
        source_override=source_override,
        frozen_norms=frozen_norms,
    )
    with torch.enable_grad():
        logits = run.run()
        metric = metric_fn(logits)
        grads = torch.autograd.grad(metric.sum(), run.grad_leaves, allow_unused=True)
    batch, pos = tokens.shape
    d_model = model.spec.d_model
    blocks = [torch.zeros_like(leaf) if g is None else g for leaf, g in zip(run.grad_leaves, grads)]
    # The hooks fire in destination index order (q, k, v, MLP per layer, then logits).
    # .to: under device_map, each destination's gradient lives on its own layer's device.
    grads = torch.cat([g.reshape(batch, pos, -1, d_model).to(model.device) for g in blocks], dim=2)
    return metric.detach(), run.recorded, grads
