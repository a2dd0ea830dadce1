"""What patched edges carry: the corrupted run's sources, zeros, or per-position means
(acd.patching)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from acd.patching.hooks import like
from acd.patching.runs import collect_sources

if TYPE_CHECKING:
    from acd.graph import ComputeGraph
    from acd.models.load import ModelAdapter
    from acd.tasks import PromptBatch

ABLATIONS = ("corrupted", "zero", "mean")

# --------------------------------------------------------------------------------------------
# What patched edges carry


def mean_sources(
    model: ModelAdapter,
    graph: ComputeGraph,
    batch: PromptBatch,
    *,
    batch_size: int | None = None,
    across_ranks: bool = False,
) -> torch.Tensor:
    """Per-position mean of the clean run's source outputs over the prompts: [pos, n_src, d].

    Position t averages over the prompts that are at least t + 1 tokens long (padding never
    enters); positions no prompt reaches are zero. Means are per position, not over positions,
    because position 0 (BOS) and early positions have activations unlike the rest (attention
    sinks, large norms): averaging them in would patch in values no position ever sees.

    ``across_ranks``: in a torch.distributed process group (``acd.distributed``), every rank
    passes the same ``batch``, runs only its own shard of it, and the per-position sums and
    counts are all-reduced, so every rank returns the mean over all of ``batch``. A collective:
    every rank must call it. Without a process group it changes nothing. Off by default, so
    that a rank averaging a batch of its own (``patch_values`` without ``means``) stays local.
    """
    from acd.distributed import all_reduce_sum, shard_batch

    rows = shard_batch(batch) if across_ranks else batch
    d_model = model.spec.d_model
    total = torch.zeros(batch.clean.shape[1], graph.n_src, d_model, **like(model))
    count = torch.zeros(batch.clean.shape[1], **like(model))
    # A rank with no prompts still joins the all-reduce below, with zero sums and counts.
    for chunk in rows.split(batch_size or len(rows)) if len(rows) else []:
        sources = collect_sources(model, graph, chunk.clean)
        real = real_positions(chunk).to(model.device, model.dtype)  # [n, pos]
        total += torch.einsum("bp,bpsd->psd", real, sources)
        count += real.sum(dim=0)
    if across_ranks:
        total, count = all_reduce_sum(total), all_reduce_sum(count)
    return total / count.clamp(min=1)[:, None, None]


def patch_values(
    model: ModelAdapter,
    graph: ComputeGraph,
    batch: PromptBatch,
    ablation: str = "corrupted",
    *,
    means: torch.Tensor | None = None,
    batch_size: int | None = None,
) -> torch.Tensor:
    """The values patched edges carry, for every prompt of ``batch``: [N, pos, n_src, d_model].

    ``corrupted``: the sources of the corrupted prompts (one forward per ``batch_size``);
    ``zero``: zeros, so a patched edge removes its source's contribution (constants such as b_O
    and the other biases stay);
    ``mean``: ``means`` [pos, n_src, d_model] if given (``mean_sources`` over a larger set of
    prompts), else ``mean_sources`` over ``batch``; the same for every prompt (an expanded view,
    no copy).
    """
    if ablation not in ABLATIONS:
        raise ValueError(f"unknown ablation {ablation!r}; choose one of {', '.join(ABLATIONS)}")
    shape = (len(batch), batch.clean.shape[1], graph.n_src, model.spec.d_model)
    if ablation == "corrupted":
        chunks = batch.split(batch_size or len(batch))
        return torch.cat([collect_sources(model, graph, c.corrupted) for c in chunks])
    if ablation == "zero":
        return torch.zeros(shape, **like(model))
    if means is None:  # "mean"
        means = mean_sources(model, graph, batch, batch_size=batch_size)
    return means.to(**like(model)).expand(shape)


def real_positions(batch: PromptBatch) -> torch.Tensor:
    """[N, pos] bool: True at positions holding a real (non-padding) token."""
    positions = torch.arange(batch.clean.shape[1], device=batch.lengths.device)
    return positions[None, :] < batch.lengths[:, None]
