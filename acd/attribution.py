"""Edge scores: EAP, EAP-IG and exact activation patching.

Every method scores an edge u -> v with the same quantity, or an estimate of it:

    score(u -> v) = M(clean run with only u -> v patched) - M(clean run),   averaged over prompts

where "patched" means v reads in_v + (p_u - z_u^clean) instead of in_v, with p_u what the
ablation puts in u's place (the corrupted run's z_u by default; zeros; per-position means), and
M the per-prompt metric (the task's by default). **Sign:** a positive score means patching the
edge *raises* the metric; for a logit-difference task an important edge usually has a large
negative score (corrupting it destroys the behaviour). Rank by |score| unless the sign matters.

    eap      first-order estimate: (p_u - z_u^clean) . dM/d(in_v), the gradient at the clean
             run, summed over positions and d_model. One clean forward + backward and one
             corrupted forward per prompt batch; every edge from one einsum.
    eap-ig   the same with dM/d(in_v) averaged over m = ig_steps runs whose input embeddings
             are e_k = p_input + (k/m) (z_input^clean - p_input), k = 1 .. m (the corrupted
             end excluded, the clean end included, so m = 1 is plain EAP).
    exact    the difference itself, one patched forward per edge and prompt, batched: many
             (edge, prompt) variants share a forward, and each forward starts at the edge's
             destination layer from the cached clean residual (``patching.run_from_layer``),
             computing logits only at the positions the metric reads.

Node scores (``node_scores``) follow the same convention for a source u patched on all of its
outgoing edges at once (its output replaced by p_u): ``exact`` measures it; ``eap``/``eap-ig``
estimate it by (p_u - z_u^clean) . dM/dz_u, which equals the sum of u's edge scores because z_u
reaches M only through its destinations' inputs, each with coefficient 1.

EAP-IG's own code (hannamw/EAP-IG) has used both k = 1 .. m and, currently, k = 0 .. m - 1 (the
corrupted end included, the clean end excluded); the two Riemann sums differ by
(grad at clean - grad at corrupted) / m. acd uses k = 1 .. m.

Scale. Scores are means over prompts, so in a torch.distributed process group
(``acd.distributed``; every rank calls with the same arguments) each rank scores only its
contiguous shard of the prompts, the partial sums are all-reduced and divided by the global
prompt count: every rank returns the same scores as one process would. Without ``batch_size``
the prompts are chunked so that one chunk's buffers fit in a fraction of the free memory
(``auto_batch_size``); chunking never changes the scores.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from acd.distributed import all_reduce_sum, is_main, shard_batch
from acd.errors import AcdError
from acd.metrics import TASK_METRICS, Metric, get_metric
from acd.patching import (
    ABLATIONS,
    mean_sources,
    patch_values,
    run_and_collect,
    run_and_collect_residuals,
    run_from_layer,
    run_with_gradients,
)

if TYPE_CHECKING:
    from acd.graph import ComputeGraph
    from acd.models.load import ModelAdapter
    from acd.tasks import PromptBatch

METHODS = ("eap", "eap-ig", "exact")

# (edge, prompt) variants one exact-scoring forward carries by default: large enough to keep
# the matrix products efficient, small enough that a GPT-2-small forward stays well under 1 GB.
VARIANTS_PER_FORWARD = 256

# Default share of the free memory that one prompt chunk's buffers may use (auto_batch_size):
# the estimate is rough, and the allocator fragments, so leave most of it free.
MEMORY_FRACTION = 0.25

# EAP's difference p_u - z_u^clean is formed this many bytes at a time (a block of sources), so
# that a huge graph never needs a second copy of all its source outputs at once.
DIFF_BLOCK_BYTES = 1 << 28


class AttributionError(AcdError, ValueError):
    """An argument of ``attribute``/``node_scores`` that cannot be used."""


# --------------------------------------------------------------------------------------------
# Public entry points


def attribute(
    model: ModelAdapter,
    graph: ComputeGraph,
    batch: PromptBatch,
    method: str = "eap",
    *,
    metric: str | Metric | None = None,
    ablation: str = "corrupted",
    batch_size: int | None = None,
    ig_steps: int = 5,
    progress: bool = True,
    edge_mask: torch.Tensor | None = None,
    variants_per_forward: int = VARIANTS_PER_FORWARD,
) -> torch.Tensor:
    """Score every valid edge of ``graph`` on the prompts of ``batch``.

    Args:
        method: ``eap``, ``eap-ig`` or ``exact`` (module docstring).
        metric: a metric name (``logit_diff``, ``prob_diff``, ``logprob``, ``kl`` — KL from the
            clean model's output — or ``task``, the batch's own), or a function (logits
            [N, T, V], PromptBatch) -> [N] that reads logits only where ``batch.score_mask`` is
            set (exact scoring passes it logits at those positions only). Default: ``task``.
            (With ``kl``, EAP scores are ~0: the clean run is KL's minimum, where its gradient
            vanishes. Use ``eap-ig`` or ``exact`` with KL.)
        ablation: what a patched edge carries: ``corrupted`` (the corrupted prompt's source
            outputs), ``zero``, or ``mean`` (per-position means of the clean sources over all
            prompts of ``batch``).
        batch_size: prompts per forward pass; does not change the scores. Default: as many
            as fit in MEMORY_FRACTION of the free memory (``auto_batch_size``).
        ig_steps: m, the number of interpolation points of ``eap-ig``.
        progress: show a progress bar (on rank 0 only).
        edge_mask: [n_src, n_dst] bool; score only these edges (the others are 0). For
            ``exact`` this is what the cost scales with.
        variants_per_forward: ``exact`` only: how many (edge, prompt) variants one forward
            carries.

    Returns: scores [n_src, n_dst] on the CPU (float32; float64 for a float64 model), zero on
    invalid edges: the mean over prompts of the estimated (eap, eap-ig) or measured (exact)
    M(clean with u -> v patched) - M(clean). In a process group: the same on every rank
    (module docstring, "Scale").
    """
    _check_arguments(method, ablation, batch_size, ig_steps, variants_per_forward, batch)
    metric = _resolve_metric(metric, batch)
    keep = graph.valid if edge_mask is None else _check_edge_mask(edge_mask, graph)
    means = _means(model, graph, batch, ablation, batch_size)
    chunks = _local_chunks(model, graph, batch, method, batch_size, ig_steps)
    progress = progress and is_main()
    if method == "exact":
        variants = _edge_variants(graph, keep)
        effects = _exact_effects(
            model, graph, chunks, metric, ablation, means, variants, variants_per_forward, progress
        )
        scores = torch.zeros(graph.n_src, graph.n_dst, dtype=effects.dtype)
        scores[variants.src, variants.dst] = all_reduce_sum(effects)
    else:
        scores = _gradient_scores(
            model, graph, chunks, metric, ablation, means, method, ig_steps, progress
        )
        scores = all_reduce_sum(scores)
    return torch.where(keep, scores / len(batch), torch.zeros((), dtype=scores.dtype))


def node_scores(
    model: ModelAdapter,
    graph: ComputeGraph,
    batch: PromptBatch,
    method: str = "eap",
    *,
    metric: str | Metric | None = None,
    ablation: str = "corrupted",
    batch_size: int | None = None,
    ig_steps: int = 5,
    progress: bool = True,
    variants_per_forward: int = VARIANTS_PER_FORWARD,
) -> torch.Tensor:
    """Score every source node (``graph.sources`` order: input, heads, MLPs).

    The score of u is M(clean with u's output patched on every outgoing edge) - M(clean),
    averaged over prompts: measured for ``exact`` (one forward per node and prompt, starting at
    u's first destination layer), estimated for ``eap``/``eap-ig`` by
    (p_u - z_u^clean) . dM/dz_u, which is the sum of u's edge scores (module docstring).
    Arguments as for ``attribute``.

    Returns: scores [n_src] on the CPU.
    """
    _check_arguments(method, ablation, batch_size, ig_steps, variants_per_forward, batch)
    if method != "exact":
        edges = attribute(
            model,
            graph,
            batch,
            method,
            metric=metric,
            ablation=ablation,
            batch_size=batch_size,
            ig_steps=ig_steps,
            progress=progress,
        )
        return edges.sum(dim=1)
    metric = _resolve_metric(metric, batch)
    means = _means(model, graph, batch, ablation, batch_size)
    chunks = _local_chunks(model, graph, batch, method, batch_size, ig_steps)
    variants = _node_variants(graph)
    effects = _exact_effects(
        model,
        graph,
        chunks,
        metric,
        ablation,
        means,
        variants,
        variants_per_forward,
        progress and is_main(),
    )
    return all_reduce_sum(effects) / len(batch)


# --------------------------------------------------------------------------------------------
# Arguments


def _check_arguments(
    method: str,
    ablation: str,
    batch_size: int | None,
    ig_steps: int,
    variants_per_forward: int,
    batch: PromptBatch,
) -> None:
    if method not in METHODS:
        raise AttributionError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if ablation not in ABLATIONS:
        raise AttributionError(
            f"unknown ablation {ablation!r}; choose one of {', '.join(ABLATIONS)}"
        )
    if batch_size is not None and batch_size < 1:
        raise AttributionError(f"batch_size must be at least 1, got {batch_size}")
    if ig_steps < 1:
        raise AttributionError(f"ig_steps must be at least 1, got {ig_steps}")
    if variants_per_forward < 1:
        raise AttributionError(
            f"variants_per_forward must be at least 1, got {variants_per_forward}"
        )
    if len(batch) == 0:
        raise AttributionError("the batch holds no prompts")


def _check_edge_mask(edge_mask: torch.Tensor, graph: ComputeGraph) -> torch.Tensor:
    if tuple(edge_mask.shape) != (graph.n_src, graph.n_dst):
        raise AttributionError(
            f"edge_mask has shape {tuple(edge_mask.shape)}, expected ({graph.n_src}, {graph.n_dst})"
        )
    return edge_mask.bool().cpu() & graph.valid


def _resolve_metric(metric: str | Metric | None, batch: PromptBatch) -> str | Metric:
    """The metric's name, checked now (before any forward), or the user's function."""
    if metric is None or metric == "task":
        metric = batch.metric
    if callable(metric):
        return metric
    if metric != "kl" and metric not in TASK_METRICS:
        known = ", ".join([*TASK_METRICS, "kl"])
        raise AttributionError(f"unknown metric {metric!r}; choose one of {known}")
    return metric


def _bind_metric(
    metric: str | Metric, rows: PromptBatch, reference: torch.Tensor | None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """logits [n, T, V] -> [n] for the prompts ``rows``; ``reference`` [n, T, V] for ``kl``."""
    fn = metric if callable(metric) else get_metric(metric, reference)
    return lambda logits: fn(logits, rows)


def _accumulator_dtype(model: ModelAdapter) -> torch.dtype:
    # Half-precision models still sum scores in float32.
    return torch.float64 if model.dtype == torch.float64 else torch.float32


# --------------------------------------------------------------------------------------------
# Prompt chunks and memory


def _local_chunks(
    model: ModelAdapter,
    graph: ComputeGraph,
    batch: PromptBatch,
    method: str,
    batch_size: int | None,
    ig_steps: int,
) -> list[PromptBatch]:
    """This rank's shard of ``batch`` (all of it in one process), in chunks of ``batch_size``
    prompts or of ``auto_batch_size``'s choice; none for a rank without prompts."""
    local = shard_batch(batch)
    if len(local) == 0:
        return []
    size = batch_size or auto_batch_size(model, graph, local, method, ig_steps=ig_steps)
    return local.split(size)


def auto_batch_size(
    model: ModelAdapter,
    graph: ComputeGraph,
    batch: PromptBatch,
    method: str,
    *,
    ig_steps: int = 5,
    fraction: float = MEMORY_FRACTION,
) -> int:
    """The most prompts of ``batch`` (at least 1) whose scoring buffers fit in ``fraction`` of
    the free memory of the model's device (``free_memory_bytes``); all of them when the free
    memory cannot be read.

    The estimate (``bytes_per_prompt``) counts EAP's source buffers [pos, n_src, d_model]
    (clean, patch, difference), its gradients [pos, n_dst, d_model] and, roughly, the model's
    activations kept for the backward pass; for exact scoring the same buffers without
    gradients plus the cached residuals and logits. It is a guide, not a guarantee: lower
    ``fraction`` or pass ``batch_size`` if a run still runs out of memory.
    """
    free = free_memory_bytes(model.device)
    if free is None:
        return len(batch)
    per_prompt = bytes_per_prompt(model, graph, batch.clean.shape[1], method, ig_steps)
    return max(1, min(len(batch), int(fraction * free) // per_prompt))


def bytes_per_prompt(
    model: ModelAdapter, graph: ComputeGraph, pos: int, method: str, ig_steps: int = 5
) -> int:
    """Rough peak memory of scoring one prompt of ``pos`` tokens by ``method``, in bytes."""
    spec, d_model = model.spec, model.spec.d_model
    sources = pos * graph.n_src * d_model  # elements of one [pos, n_src, d_model] buffer
    grads = pos * graph.n_dst * d_model
    # Per block: per-head copies of the residual for q, k, v and their normed copies, the head
    # results (~8 H d), attention scores and pattern (2 H pos), the MLP's hidden layer before
    # and after its activation, the residual and norms; then logits and their log-softmax.
    block = 8 * spec.n_heads * d_model + 2 * spec.n_heads * pos + 2 * (spec.d_mlp or 0)
    activations = pos * (graph.n_layers * (block + 4 * d_model) + 2 * spec.d_vocab)
    if method == "exact":
        residuals = pos * (graph.n_layers + 1) * d_model
        elements = 3 * sources + residuals + activations
    else:
        # clean sources, patch, difference; the grad leaves' gradients and their concatenation
        # (and EAP-IG's running sum of path gradients); activations and their gradients.
        elements = 3 * sources + (4 if method == "eap-ig" and ig_steps > 1 else 2) * grads
        elements += 2 * activations
    itemsize = max(torch.finfo(model.dtype).bits, torch.finfo(_accumulator_dtype(model)).bits)
    return elements * itemsize // 8


def free_memory_bytes(device: torch.device | str) -> int | None:
    """Memory that a new allocation on ``device`` can use, in bytes, or None if unknown.

    CUDA: the device's free memory plus what PyTorch's caching allocator holds unused. CPU: the
    kernel's MemAvailable (/proc/meminfo), else the free physical pages (os.sysconf).
    """
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + cached)
    if device.type == "cpu":
        return _mem_available() or _free_physical_pages()
    return None


def _mem_available() -> int | None:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # reported in kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def _free_physical_pages() -> int | None:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


# --------------------------------------------------------------------------------------------
# What patched edges carry


def _means(
    model: ModelAdapter,
    graph: ComputeGraph,
    batch: PromptBatch,
    ablation: str,
    batch_size: int | None,
) -> torch.Tensor | None:
    """Per-position source means over *all* prompts (``mean`` ablation), so that the chunking
    into batches cannot change what a patched edge carries: [pos, n_src, d_model]."""
    if ablation != "mean":
        return None
    local = shard_batch(batch)
    if batch_size is None and len(local):
        # The means' forward records every source, as exact scoring's does.
        batch_size = auto_batch_size(model, graph, local, "exact")
    return mean_sources(model, graph, batch, batch_size=batch_size, across_ranks=True)


# --------------------------------------------------------------------------------------------
# EAP and EAP-IG


def _gradient_scores(
    model: ModelAdapter,
    graph: ComputeGraph,
    chunks: list[PromptBatch],
    metric: str | Metric,
    ablation: str,
    means: torch.Tensor | None,
    method: str,
    ig_steps: int,
    progress: bool,
) -> torch.Tensor:
    """Sum over prompts of (p_u - z_u^clean) . g_v, g_v = dM/d(in_v) at the clean run (EAP) or
    its mean along the interpolation path (EAP-IG): [n_src, n_dst], on the CPU, invalid edges
    not yet zeroed."""
    dtype = _accumulator_dtype(model)
    steps = ig_steps if method == "eap-ig" else 1
    total = torch.zeros(graph.n_src, graph.n_dst, device=model.device, dtype=dtype)
    bar = tqdm(total=len(chunks) * steps, desc=method, unit="pass", disable=not progress)
    for chunk in chunks:
        chunk = chunk.to(model.device)
        # KL needs the clean logits before the gradient runs: one more forward, for KL only.
        reference = run_and_collect(model, graph, chunk.clean)[0] if metric == "kl" else None
        metric_fn = _bind_metric(metric, chunk, reference)
        # The clean end of the path (k = m) is the plain clean run: all that EAP needs.
        _, clean_sources, grads = run_with_gradients(model, graph, chunk.clean, metric_fn)
        bar.update(1)
        patch = patch_values(model, graph, chunk, ablation, means=means)
        if steps > 1:
            path = _path_gradients(
                model, graph, chunk, metric_fn, clean_sources[:, :, 0], patch[:, :, 0], steps, bar
            )
            grads = (grads + path) / steps
        _add_edge_products(total, patch, clean_sources, grads)
    bar.close()
    return total.cpu()


def _add_edge_products(
    total: torch.Tensor, patch: torch.Tensor, clean_sources: torch.Tensor, grads: torch.Tensor
) -> None:
    """total[u, v] += sum over (prompt, position) of (patch - clean)[., ., u] . grads[., ., v].

    The einsum 'bpsd,bpnd->sn' as batched matmuls accumulated in place, which need no copy of
    grads (torch.einsum makes one: most of EAP's memory on GPT-2 small), over blocks of
    sources of at most DIFF_BLOCK_BYTES, so the difference is never formed for all sources at
    once. Args: total [n_src, n_dst]; patch, clean_sources [n, pos, n_src, d_model]; grads
    [n, pos, n_dst, d_model].
    """
    n, pos, n_src, d_model = clean_sources.shape
    grads_t = grads.to(total.dtype).flatten(0, 1).transpose(1, 2)  # [n * pos, d_model, n_dst]
    per_source = n * pos * d_model * total.element_size()
    block = max(1, DIFF_BLOCK_BYTES // per_source)
    for start in range(0, n_src, block):
        rows = slice(start, start + block)
        diff = (patch[:, :, rows] - clean_sources[:, :, rows]).to(total.dtype)
        total[rows].addbmm_(diff.flatten(0, 1), grads_t)


def _path_gradients(
    model: ModelAdapter,
    graph: ComputeGraph,
    chunk: PromptBatch,
    metric_fn: Callable[[torch.Tensor], torch.Tensor],
    clean_embed: torch.Tensor,
    patch_embed: torch.Tensor,
    steps: int,
    bar: tqdm,
) -> torch.Tensor:
    """Sum of dM/d(in_v) over the input embeddings e_k = p + (k/m)(clean - p), k = 1 .. m - 1
    (the clean end k = m is the caller's): [n, pos, n_dst, d_model].

    Args: clean_embed, patch_embed [n, pos, d_model] the input node's clean and patch values.
    """
    total = None
    for k in range(1, steps):
        embed = patch_embed + (k / steps) * (clean_embed - patch_embed)
        grads = run_with_gradients(model, graph, chunk.clean, metric_fn, embed_override=embed)[2]
        total = grads if total is None else total + grads
        bar.update(1)
    return total


# --------------------------------------------------------------------------------------------
# Exact patching


class _Variants:
    """What exact scoring patches, one entry per variant: source ``src`` [V] patched into
    destination ``dst`` [V] (an edge), or into all of its destinations where ``dst`` is -1 (a
    node); ``layer`` [V] is the first block whose input changes (n_layers: only the logits)."""

    def __init__(self, src: torch.Tensor, dst: torch.Tensor, layer: torch.Tensor):
        self.src, self.dst, self.layer = src, dst, layer

    def __len__(self) -> int:
        return len(self.src)


def _dst_layers(graph: ComputeGraph) -> torch.Tensor:
    """The block each destination belongs to: [n_dst] (n_layers for ``logits``)."""
    return torch.tensor(
        [graph.n_layers if p.layer is None else p.layer for p in graph.destinations]
    )


def _edge_variants(graph: ComputeGraph, keep: torch.Tensor) -> _Variants:
    src, dst = keep.nonzero(as_tuple=True)
    return _Variants(src, dst, _dst_layers(graph)[dst])


def _node_variants(graph: ComputeGraph) -> _Variants:
    layers = _dst_layers(graph)
    # A node's first destination layer: the earliest block that reads it.
    first = torch.where(graph.valid, layers, graph.n_layers + 1).min(dim=1).values
    src = torch.arange(graph.n_src)
    return _Variants(src, torch.full_like(src, -1), first)


def _exact_effects(
    model: ModelAdapter,
    graph: ComputeGraph,
    chunks: list[PromptBatch],
    metric: str | Metric,
    ablation: str,
    means: torch.Tensor | None,
    variants: _Variants,
    per_forward: int,
    progress: bool,
) -> torch.Tensor:
    """Sum over prompts of M(clean with the variant patched) - M(clean): [V], on the CPU."""
    total = torch.zeros(len(variants), dtype=_accumulator_dtype(model))
    n_prompts = sum(len(chunk) for chunk in chunks)
    bar = tqdm(total=len(variants) * n_prompts, desc="exact", unit="run", disable=not progress)
    for i, chunk in enumerate(chunks):
        chunk = chunk.to(model.device)
        clean_logits, clean_sources, residuals = run_and_collect_residuals(
            model, graph, chunk.clean
        )
        if i == 0:
            _check_prefix_runs(model, graph, residuals[:1], clean_logits[:1])
        clean_metric = _bind_metric(metric, chunk, clean_logits)(clean_logits).cpu()
        patch = patch_values(model, graph, chunk, ablation, means=means)
        diff = patch - clean_sources  # [n, pos, n_src, d_model]
        run = _ExactChunk(model, graph, chunk, metric, clean_logits, residuals, diff)
        for layer in variants.layer.unique().tolist():
            which = (variants.layer == layer).nonzero().squeeze(1)
            # Prompt-major order: a forward holds few prompts, so few positions need logits.
            prompt = torch.arange(len(chunk)).repeat_interleave(len(which))
            variant = which.repeat(len(chunk))
            for start in range(0, len(prompt), per_forward):
                p, v = prompt[start : start + per_forward], variant[start : start + per_forward]
                effect = run.patched_metric(layer, p, variants.src[v], variants.dst[v])
                total.index_add_(0, v, (effect.cpu() - clean_metric[p]).to(total.dtype))
                bar.update(len(p))
    bar.close()
    return total


class _ExactChunk:
    """The cached clean run of one prompt chunk, and patched forwards from it."""

    def __init__(
        self,
        model: ModelAdapter,
        graph: ComputeGraph,
        chunk: PromptBatch,
        metric: str | Metric,
        clean_logits: torch.Tensor,
        residuals: torch.Tensor,
        diff: torch.Tensor,
    ):
        self.model, self.graph, self.chunk, self.metric_spec = model, graph, chunk, metric
        self.clean_logits, self.residuals, self.diff = clean_logits, residuals, diff

    def patched_metric(
        self, layer: int, prompt: torch.Tensor, src: torch.Tensor, dst: torch.Tensor
    ):
        """M of each row: prompt ``prompt[r]`` with source ``src[r]`` patched into ``dst[r]``
        (-1: all of its destinations), rerun from block ``layer``. All [R] -> [R]."""
        graph, device = self.graph, self.model.device
        rows = len(prompt)
        # Only the scored positions need logits, and causal attention lets the run stop at the
        # last of them.
        positions = self.chunk.score_mask[prompt.to(device)].any(dim=0).nonzero().squeeze(1)
        length = int(positions[-1]) + 1
        dst_mask = torch.zeros(rows, graph.n_dst, dtype=torch.bool)
        edge = dst >= 0
        dst_mask[edge.nonzero().squeeze(1), dst[edge]] = True
        dst_mask[~edge] = graph.valid[src[~edge]]
        prompt_d, src_d = prompt.to(device), src.to(device)
        logits = run_from_layer(
            self.model,
            graph,
            self.residuals[prompt_d, :length, layer],
            layer,
            self.diff[prompt_d, :length, src_d],  # [R, length, d_model]
            dst_mask,
            positions=positions,
        )
        rows_batch = _at_positions(self.chunk.select(prompt_d), positions)
        reference = None
        if self.metric_spec == "kl":  # positions first: [R, pos, d_vocab] can be large
            reference = self.clean_logits[:, positions][prompt_d]
        return _bind_metric(self.metric_spec, rows_batch, reference)(logits)


def _at_positions(batch: PromptBatch, positions: torch.Tensor) -> PromptBatch:
    """``batch`` seen only at ``positions`` (the logits of a run that kept only those)."""
    return replace(
        batch,
        clean=batch.clean[:, positions],
        corrupted=batch.corrupted[:, positions],
        score_mask=batch.score_mask[:, positions],
        targets=batch.targets[:, positions],
    )


def _check_prefix_runs(
    model: ModelAdapter,
    graph: ComputeGraph,
    residuals: torch.Tensor,
    clean_logits: torch.Tensor,
    *,
    method: str = "exact scoring",
) -> None:
    """Refuse ``method`` (exact scoring, ACDC) where a run from a cached residual does not
    reproduce the clean logits (an architecture whose forward does not loop over its block list
    as expected).

    Args: residuals [1, pos, n_layers + 1, d_model] and clean_logits [1, pos, d_vocab] of one
    prompt.
    """
    exact = model.dtype in (torch.float32, torch.float64)
    tolerance = (1e-3 if exact else 5e-2) * (1 + float(clean_logits.abs().max()))
    no_patch = torch.zeros(1, graph.n_dst, dtype=torch.bool)
    for layer in range(graph.n_layers + 1):
        residual = residuals[:, :, layer]
        logits = run_from_layer(model, graph, residual, layer, torch.zeros_like(residual), no_patch)
        error = float((logits - clean_logits).abs().max())
        if not error <= tolerance:
            raise AttributionError(
                f"{method} cannot restart {model.name!r} at block {layer}: the logits "
                f"differ from the full forward's by {error:.3g}; use method='eap' or 'eap-ig'"
            )
