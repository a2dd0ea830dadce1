"""Edge scores: EAP, EAP-IG (inputs and activations), clean-corrupted and exact patching.

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
             end excluded, the clean end included, so m = 1 is plain EAP). MIB's and
             EAP-IG's "EAP-IG-inputs".
    eap-ig-activations
             MIB's "EAP-IG-activations" (hannamw/EAP-IG, ``attribute(method=
             'EAP-IG-activations')``, ``get_scores_ig_activations``): the path runs through
             one layer's activations at a time instead of the input embeddings. The layer
             slots L are EAP-IG's nodes: the input, each layer's heads (all of them at once),
             each layer's MLP. For u in slot L(u):

                 score(u -> v) = (p_u - z_u^clean) . (1/m) sum_{k=1..m} dM/d(in_v) [run L(u), k]

             where run (L, k) is the clean forward in which L's outputs are set to
             z_L(a_k) = p_L + a_k (z_L^clean - p_L), a_k = k/m, and held there (constants: the
             sources before L stay clean, every source after L is recomputed from z_L(a_k)).
             k = m is the clean run for every slot and is shared, so m = 1 is plain EAP; one
             chunk costs 1 + n_slots (m - 1) forward + backward passes (n_slots = 2 n_layers + 1
             with MLPs).
             Two deliberate differences from EAP-IG's code: it adds every run's gradients to
             every edge (not only to the edges out of the interpolated slot) and divides by
             n_slots m, which mixes in runs where a slot between v and the logits is held
             constant (cutting v's gradient through it) and makes m = 1 differ from EAP; and for
             mean ablation it interpolates towards zero (its corrupted activations stay unset)
             while multiplying by (mean - clean). acd scores each edge from its own slot's runs
             and interpolates towards p_u.
    clean-corrupted
             EAP-IG's two-point variant (``method='clean-corrupted'``,
             ``get_scores_clean_corrupted``): the gradient averaged at the two ends of the input
             path, (p_u - z_u^clean) . (dM/d(in_v)[clean] + dM/d(in_v)[corrupted]) / 2, where
             the corrupted end is the run whose input node outputs p_input (EAP-IG-inputs at
             k = 0): for corrupted ablation exactly the corrupted run (EAP-IG runs the corrupted
             prompt and allows no other ablation). Two passes per chunk. The metric keeps the
             clean run as its reference at both ends (KL: from the clean logits), as EAP-IG's.
    exact    the difference itself, one patched forward per edge and prompt, batched: many
             (edge, prompt) variants share a forward, and each forward starts at the edge's
             destination layer from the cached clean residual (``patching.run_from_layer``),
             computing logits only at the positions the metric reads.

Node scores (``node_scores``) follow the same convention for a source u patched on all of its
outgoing edges at once (its output replaced by p_u): ``exact`` measures it; the gradient methods
estimate it by (p_u - z_u^clean) . dM/dz_u (averaged as their edge gradients are), which equals
the sum of u's edge scores because z_u reaches M only through its destinations' inputs, each
with coefficient 1.

References: EAP-IG, Hanna et al. 2024 (arXiv:2403.17806) and its code (github.com/hannamw/EAP-IG,
src/eap/attribute.py); MIB, Mueller et al. 2025 (arXiv:2504.13151), whose circuit track compares
EAP-IG-inputs, EAP-IG-activations and the others by their code.

EAP-IG's own code (hannamw/EAP-IG) has used both k = 1 .. m and, currently, k = 0 .. m - 1 (the
corrupted end included, the clean end excluded); the two Riemann sums differ by
(grad at clean - grad at corrupted) / m. acd uses k = 1 .. m.

Frozen norms. With ``frozen_norms=True`` (the gradient methods only; GIM's frozen-norm backward
rule, Edin et al. 2025) every gradient is taken with each LayerNorm / RMSNorm's per-position
statistics, the mean mu and s = 1/sqrt(var + eps), held constant: the forward is unchanged (the
logits bit for bit), the backward that of x -> (x - mu) s gamma + beta, so dM/dx = dM/dy * gamma
* s. Where a norm saturates, the statistics' term dominates the true gradient and says little
about what a source writes. The rule lives in ``run_with_gradients(frozen_norms=True)``
(acd.models.norms: where the bridge computes each norm, and why its ``hook_scale`` is not
enough). ``exact`` takes no gradient and refuses it; so does a model without norms.

Scale. Scores are means over prompts, so in a torch.distributed process group
(``acd.distributed``; every rank calls with the same arguments) each rank scores only its
contiguous shard of the prompts, the partial sums are all-reduced and divided by the global
prompt count: every rank returns the same scores as one process would. Without ``batch_size``
the prompts are chunked so that one chunk's buffers fit in a fraction of the free memory
(``acd.memory.auto_batch_size``); chunking never changes the scores. Sharding, chunking, patch
values and the metric come from one ``acd.runner.PromptRunner``; ``score_with`` scores with a
runner a caller already holds (``discover``: its sanity gate's patch values are reused).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from acd.distributed import is_main
from acd.memory import accumulator_dtype, auto_batch_size  # noqa: F401 (auto_batch_size: API)
from acd.models.norms import check_frozen_norms
from acd.patching import RestartCache, run_with_gradients, source_hooks
from acd.runner import PromptRunner, RunnerError, at_positions

if TYPE_CHECKING:
    from acd.graph import ComputeGraph
    from acd.metrics import Metric, MetricFunction
    from acd.models.load import ModelAdapter
    from acd.tasks import PromptBatch

METHODS = ("eap", "eap-ig", "eap-ig-activations", "clean-corrupted", "exact")

# (edge, prompt) variants one exact-scoring forward carries by default: large enough to keep
# the matrix products efficient, small enough that a GPT-2-small forward stays well under 1 GB.
VARIANTS_PER_FORWARD = 256

# EAP's difference p_u - z_u^clean is formed this many bytes at a time (a block of sources), so
# that a huge graph never needs a second copy of all its source outputs at once.
DIFF_BLOCK_BYTES = 1 << 28


class AttributionError(RunnerError):
    """An argument of ``attribute``/``node_scores`` that cannot be used."""


# --------------------------------------------------------------------------------------------
# Public entry points


def attribute(
    model: ModelAdapter,
    graph: ComputeGraph,
    batch: PromptBatch,
    method: str = "eap",
    *,
    metric: str | Metric | MetricFunction | None = None,
    ablation: str = "corrupted",
    batch_size: int | None = None,
    ig_steps: int = 5,
    progress: bool = True,
    edge_mask: torch.Tensor | None = None,
    variants_per_forward: int = VARIANTS_PER_FORWARD,
    frozen_norms: bool = False,
) -> torch.Tensor:
    """Score every valid edge of ``graph`` on the prompts of ``batch``.

    Args:
        method: ``eap``, ``eap-ig``, ``eap-ig-activations``, ``clean-corrupted`` or
            ``exact`` (module docstring).
        metric: a metric name (``logit_diff``, ``prob_diff``, ``logprob``, ``kl`` — KL from the
            clean model's output — or ``task``, the batch's own), an ``acd.metrics.Metric``, or
            a function (logits [N, T, V], PromptBatch) -> [N] that reads logits only where
            ``batch.score_mask`` is set (it is passed logits at the scored positions only).
            Default: ``task``. (With ``kl``, EAP scores are ~0: the clean run is KL's minimum,
            where its gradient vanishes. Use ``eap-ig`` or ``exact`` with KL.)
        ablation: what a patched edge carries: ``corrupted`` (the corrupted prompt's source
            outputs), ``zero``, or ``mean`` (per-position means of the clean sources over all
            prompts of ``batch``).
        batch_size: prompts per forward pass; does not change the scores. Default: as many
            as fit in a fraction of the free memory (``acd.memory.auto_batch_size``).
        ig_steps: m, the number of interpolation points of ``eap-ig`` and
            ``eap-ig-activations`` (per layer slot).
        progress: show a progress bar (on rank 0 only).
        edge_mask: [n_src, n_dst] bool; score only these edges (the others are 0). For
            ``exact`` this is what the cost scales with.
        variants_per_forward: ``exact`` only: how many (edge, prompt) variants one forward
            carries.
        frozen_norms: gradient methods only: take every gradient with each LayerNorm /
            RMSNorm's statistics held constant (module docstring, "Frozen norms"); refused
            for ``exact`` and for a model without norms.

    Returns: scores [n_src, n_dst] on the CPU (float32; float64 for a float64 model), zero on
    invalid edges: the mean over prompts of the estimated (gradient methods) or measured (exact)
    M(clean with u -> v patched) - M(clean). In a process group: the same on every rank
    (module docstring, "Scale").
    """
    _check_arguments(method, ig_steps, variants_per_forward)
    _check_frozen_norms(model, method, frozen_norms)
    runner = _runner(model, graph, batch, method, metric, ablation, batch_size, ig_steps)
    return score_with(
        runner,
        method,
        ig_steps=ig_steps,
        progress=progress,
        edge_mask=edge_mask,
        variants_per_forward=variants_per_forward,
        frozen_norms=frozen_norms,
    )


def score_with(
    runner: PromptRunner,
    method: str,
    *,
    ig_steps: int = 5,
    progress: bool = True,
    edge_mask: torch.Tensor | None = None,
    variants_per_forward: int = VARIANTS_PER_FORWARD,
    frozen_norms: bool = False,
) -> torch.Tensor:
    """``attribute`` on the runner's prompts, metric and ablation: [n_src, n_dst] on the CPU."""
    _check_arguments(method, ig_steps, variants_per_forward)
    _check_frozen_norms(runner.model, method, frozen_norms)
    graph = runner.graph
    keep = graph.valid if edge_mask is None else _check_edge_mask(edge_mask, graph)
    progress = progress and is_main()
    if method == "exact":
        variants = _edge_variants(graph, keep)
        effects = _exact_effects(runner, variants, variants_per_forward, progress)
        scores = torch.zeros(graph.n_src, graph.n_dst, dtype=effects.dtype)
        scores[variants.src, variants.dst] = runner.sum(effects)
    else:
        scores = runner.sum(_gradient_scores(runner, method, ig_steps, progress, frozen_norms))
    return torch.where(keep, scores / runner.n_total, torch.zeros((), dtype=scores.dtype))


def node_scores(
    model: ModelAdapter,
    graph: ComputeGraph,
    batch: PromptBatch,
    method: str = "eap",
    *,
    metric: str | Metric | MetricFunction | None = None,
    ablation: str = "corrupted",
    batch_size: int | None = None,
    ig_steps: int = 5,
    progress: bool = True,
    variants_per_forward: int = VARIANTS_PER_FORWARD,
    frozen_norms: bool = False,
) -> torch.Tensor:
    """Score every source node (``graph.sources`` order: input, heads, MLPs).

    The score of u is M(clean with u's output patched on every outgoing edge) - M(clean),
    averaged over prompts: measured for ``exact`` (one forward per node and prompt, starting at
    u's first destination layer), estimated by the gradient methods by
    (p_u - z_u^clean) . dM/dz_u, which is the sum of u's edge scores (module docstring).
    Arguments as for ``attribute``.

    Returns: scores [n_src] on the CPU.
    """
    _check_arguments(method, ig_steps, variants_per_forward)
    _check_frozen_norms(model, method, frozen_norms)
    runner = _runner(model, graph, batch, method, metric, ablation, batch_size, ig_steps)
    if method != "exact":
        return score_with(
            runner, method, ig_steps=ig_steps, progress=progress, frozen_norms=frozen_norms
        ).sum(dim=1)
    return exact_node_scores(runner, progress=progress, variants_per_forward=variants_per_forward)


def exact_node_scores(
    runner: PromptRunner,
    *,
    progress: bool = True,
    variants_per_forward: int = VARIANTS_PER_FORWARD,
) -> torch.Tensor:
    """``node_scores(method="exact")`` on the runner's prompts, metric and ablation: one
    patched forward per source node and prompt (batched), each starting at the node's first
    destination layer. Returns [n_src] on the CPU."""
    variants = _node_variants(runner.graph)
    effects = _exact_effects(runner, variants, variants_per_forward, progress and is_main())
    return runner.sum(effects) / runner.n_total


# --------------------------------------------------------------------------------------------
# Arguments


def _check_arguments(method: str, ig_steps: int, variants_per_forward: int) -> None:
    """Refuse the scoring arguments the runner does not check (it checks the rest)."""
    if method not in METHODS:
        raise AttributionError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if ig_steps < 1:
        raise AttributionError(f"ig_steps must be at least 1, got {ig_steps}")
    if variants_per_forward < 1:
        raise AttributionError(
            f"variants_per_forward must be at least 1, got {variants_per_forward}"
        )


def _check_frozen_norms(model: ModelAdapter, method: str, frozen_norms: bool) -> None:
    """Refuse ``frozen_norms`` where it cannot apply (before any forward): exact scoring takes
    no gradient, and a model without norms has nothing to freeze (ModelError)."""
    if not frozen_norms:
        return
    if method == "exact":
        raise AttributionError(
            "frozen_norms applies to the gradient methods, not 'exact' (it takes no gradient)"
        )
    check_frozen_norms(model)


def _runner(
    model: ModelAdapter,
    graph: ComputeGraph,
    batch: PromptBatch,
    method: str,
    metric: str | Metric | MetricFunction | None,
    ablation: str,
    batch_size: int | None,
    ig_steps: int,
) -> PromptRunner:
    """The prompt runner of one scoring call, its chunks sized for ``method``."""
    # The two new gradient methods hold what EAP-IG holds: a second gradient buffer at most
    # (clean-corrupted's corrupted-end gradients), so they are sized as EAP-IG with m >= 2.
    memory_kind = "eap-ig" if method in ("eap-ig-activations", "clean-corrupted") else method
    return PromptRunner(
        model,
        graph,
        batch,
        metric=metric,
        ablation=ablation,
        batch_size=batch_size,
        method=memory_kind,
        ig_steps=max(ig_steps, 2) if method == "clean-corrupted" else ig_steps,
        error=AttributionError,
    )


def _check_edge_mask(edge_mask: torch.Tensor, graph: ComputeGraph) -> torch.Tensor:
    if tuple(edge_mask.shape) != (graph.n_src, graph.n_dst):
        raise AttributionError(
            f"edge_mask has shape {tuple(edge_mask.shape)}, expected ({graph.n_src}, {graph.n_dst})"
        )
    return edge_mask.bool().cpu() & graph.valid


# --------------------------------------------------------------------------------------------
# EAP and EAP-IG


def _gradient_scores(
    runner: PromptRunner, method: str, ig_steps: int, progress: bool, frozen_norms: bool = False
) -> torch.Tensor:
    """Sum over this rank's prompts of (p_u - z_u^clean) . g_uv, with g_uv = dM/d(in_v) at the
    clean run (EAP) or averaged as ``method`` says (module docstring): [n_src, n_dst], on the
    CPU, invalid edges not yet zeroed. ``frozen_norms``: every gradient run holds the norms'
    statistics constant (module docstring, "Frozen norms")."""
    model, graph = runner.model, runner.graph
    dtype = accumulator_dtype(model)
    steps = ig_steps if method in ("eap-ig", "eap-ig-activations") else 1
    total = torch.zeros(graph.n_src, graph.n_dst, device=model.device, dtype=dtype)
    passes = _passes_per_chunk(method, steps, model, graph)
    bar = tqdm(total=len(runner.chunks) * passes, desc=method, unit="pass", disable=not progress)
    for i, chunk in enumerate(runner.chunks):
        # KL needs the clean logits before the gradient runs (the runner keeps them).
        metric_fn = runner.bind(i)

        # The clean end of the path (k = m) is the plain clean run: all that EAP needs. Its
        # logits are the later stages' clean logits (the gate's, the evaluation's), for free.
        clean_metric = _remembering(runner, i, metric_fn)
        _, clean_sources, grads = run_with_gradients(
            model, graph, chunk.clean, clean_metric, frozen_norms=frozen_norms
        )
        bar.update(1)
        patch = runner.patch(i)
        if method == "eap-ig-activations":
            # Every layer's k = m run is this clean run; the caller divides by m.
            _add_edge_products(total, patch, clean_sources, grads)
            del grads
            _add_activation_paths(
                total,
                model,
                graph,
                chunk,
                metric_fn,
                clean_sources,
                patch,
                steps,
                bar,
                frozen_norms=frozen_norms,
            )
            continue
        if method == "clean-corrupted":
            # The corrupted end: EAP-IG's input path at k = 0 (for corrupted ablation, exactly
            # the corrupted run).
            corrupted = run_with_gradients(
                model,
                graph,
                chunk.clean,
                metric_fn,
                embed_override=patch[:, :, 0],
                frozen_norms=frozen_norms,
            )[2]
            bar.update(1)
            grads = (grads + corrupted) / 2
        elif steps > 1:
            path = _path_gradients(
                model,
                graph,
                chunk,
                metric_fn,
                clean_sources[:, :, 0],
                patch[:, :, 0],
                steps,
                bar,
                frozen_norms=frozen_norms,
            )
            grads = (grads + path) / steps
        _add_edge_products(total, patch, clean_sources, grads)
    bar.close()
    if method == "eap-ig-activations":
        total /= steps
    return total.cpu()


def _passes_per_chunk(method: str, steps: int, model: ModelAdapter, graph: ComputeGraph) -> int:
    """Forward + backward passes ``_gradient_scores`` makes per chunk (for the progress bar)."""
    if method == "clean-corrupted":
        return 2
    if method == "eap-ig-activations":
        return 1 + len(source_hooks(model, graph)) * (steps - 1)
    return steps


def _remembering(
    runner: PromptRunner, i: int, metric_fn: Callable[[torch.Tensor], torch.Tensor]
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``metric_fn`` that also hands chunk ``i``'s clean logits to the runner."""

    def metric(logits: torch.Tensor) -> torch.Tensor:
        runner.remember_clean(i, logits)
        return metric_fn(logits)

    return metric


def _add_edge_products(
    total: torch.Tensor,
    patch: torch.Tensor,
    clean_sources: torch.Tensor,
    grads: torch.Tensor,
    first: int = 0,
    stop: int | None = None,
) -> None:
    """total[u, v] += sum over (prompt, position) of (patch - clean)[., ., u] . grads[., ., v],
    for the sources u in first .. stop - 1 (default: all).

    The einsum 'bpsd,bpnd->sn' as batched matmuls accumulated in place, which need no copy of
    grads (torch.einsum makes one: most of EAP's memory on GPT-2 small), over blocks of
    sources of at most DIFF_BLOCK_BYTES, so the difference is never formed for all sources at
    once. Args: total [n_src, n_dst]; patch, clean_sources [n, pos, n_src, d_model]; grads
    [n, pos, n_dst, d_model].
    """
    n, pos, n_src, d_model = clean_sources.shape
    stop = n_src if stop is None else stop
    grads_t = grads.to(total.dtype).flatten(0, 1).transpose(1, 2)  # [n * pos, d_model, n_dst]
    per_source = n * pos * d_model * total.element_size()
    block = max(1, DIFF_BLOCK_BYTES // per_source)
    for start in range(first, stop, block):
        rows = slice(start, min(start + block, stop))
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
    frozen_norms: bool = False,
) -> torch.Tensor:
    """Sum of dM/d(in_v) over the input embeddings e_k = p + (k/m)(clean - p), k = 1 .. m - 1
    (the clean end k = m is the caller's): [n, pos, n_dst, d_model].

    Args: clean_embed, patch_embed [n, pos, d_model] the input node's clean and patch values.
    """
    total = torch.zeros(())  # broadcasts; steps >= 2 here, so at least one gradient is added
    for k in range(1, steps):
        embed = patch_embed + (k / steps) * (clean_embed - patch_embed)
        grads = run_with_gradients(
            model, graph, chunk.clean, metric_fn, embed_override=embed, frozen_norms=frozen_norms
        )[2]
        total = grads if k == 1 else total + grads
        bar.update(1)
    return total


def _add_activation_paths(
    total: torch.Tensor,
    model: ModelAdapter,
    graph: ComputeGraph,
    chunk: PromptBatch,
    metric_fn: Callable[[torch.Tensor], torch.Tensor],
    clean_sources: torch.Tensor,
    patch: torch.Tensor,
    steps: int,
    bar: tqdm,
    frozen_norms: bool = False,
) -> None:
    """EAP-IG-activations' runs k = 1 .. m - 1 (k = m is the caller's clean run): for each
    layer slot L (the input; a layer's heads; a layer's MLP) and each k, one gradient run with
    L's outputs set to p_L + (k/m)(z_L^clean - p_L), whose gradients score only the edges out
    of L: total[L, :] += (p_L - z_L^clean) . g. Not divided by m (the caller does).

    Args: total [n_src, n_dst]; clean_sources, patch [n, pos, n_src, d_model].
    """
    for slot in source_hooks(model, graph):
        rows = slice(slot.start, slot.stop)
        clean, base = clean_sources[:, :, rows], patch[:, :, rows]
        for k in range(1, steps):
            values = base + (k / steps) * (clean - base)  # [n, pos, width, d_model]
            grads = run_with_gradients(
                model,
                graph,
                chunk.clean,
                metric_fn,
                source_override=(slot.start, values),
                frozen_norms=frozen_norms,
            )[2]
            _add_edge_products(total, patch, clean_sources, grads, slot.start, slot.stop)
            bar.update(1)


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


def _edge_variants(graph: ComputeGraph, keep: torch.Tensor) -> _Variants:
    src, dst = keep.nonzero(as_tuple=True)
    return _Variants(src, dst, graph.dst_layers[dst])


def _node_variants(graph: ComputeGraph) -> _Variants:
    layers = graph.dst_layers
    # A node's first destination layer: the earliest block that reads it.
    first = torch.where(graph.valid, layers, graph.n_layers + 1).min(dim=1).values
    src = torch.arange(graph.n_src)
    return _Variants(src, torch.full_like(src, -1), first)


def _exact_effects(
    runner: PromptRunner, variants: _Variants, per_forward: int, progress: bool
) -> torch.Tensor:
    """Sum over this rank's prompts of M(clean with the variant patched) - M(clean): [V], on
    the CPU. Each chunk's clean run is cached once (``RestartCache``) and every variant reruns
    only the blocks from its destination on."""
    model, graph = runner.model, runner.graph
    total = torch.zeros(len(variants), dtype=accumulator_dtype(model))
    n_prompts = sum(len(chunk) for chunk in runner.chunks)
    bar = tqdm(total=len(variants) * n_prompts, desc="exact", unit="run", disable=not progress)
    for i, chunk in enumerate(runner.chunks):
        cache = RestartCache.record(
            model,
            graph,
            chunk.clean,
            runner.patch(i),
            runner.positions[i],
            check="exact scoring" if i == 0 else None,
        )
        runner.remember_clean(i, cache.clean_at)
        clean_metric = runner.metric_at(i, cache.clean_at).cpu()
        for layer in variants.layer.unique().tolist():
            which = (variants.layer == layer).nonzero().squeeze(1)
            # Prompt-major order: a forward holds few prompts, so few positions need logits.
            prompt = torch.arange(len(chunk)).repeat_interleave(len(which))
            variant = which.repeat(len(chunk))
            for start in range(0, len(prompt), per_forward):
                p, v = prompt[start : start + per_forward], variant[start : start + per_forward]
                effect = _patched_metric(
                    runner, i, cache, layer, p, variants.src[v], variants.dst[v]
                )
                total.index_add_(0, v, (effect.cpu() - clean_metric[p]).to(total.dtype))
                bar.update(len(p))
    bar.close()
    return total


def _patched_metric(
    runner: PromptRunner,
    i: int,
    cache: RestartCache,
    layer: int,
    prompt: torch.Tensor,
    src: torch.Tensor,
    dst: torch.Tensor,
) -> torch.Tensor:
    """M of each row: chunk ``i``'s prompt ``prompt[r]`` with source ``src[r]`` patched into
    ``dst[r]`` (-1: all of its destinations), rerun from block ``layer``. All [R] -> [R]."""
    graph, chunk = runner.graph, runner.chunks[i]
    # Only the positions these prompts score need logits, and causal attention lets the run
    # stop at the last of them.
    p = prompt.to(chunk.score_mask.device)
    positions = chunk.score_mask[p].any(dim=0).nonzero().squeeze(1)
    dst_mask = torch.zeros(len(prompt), graph.n_dst, dtype=torch.bool)
    edge = dst >= 0
    dst_mask[edge.nonzero().squeeze(1), dst[edge]] = True
    dst_mask[~edge] = graph.valid[src[~edge]]
    logits = cache.run_with_deltas(layer, prompt, src, dst_mask, positions)
    rows = at_positions(chunk.select(p), positions)
    reference = None
    if runner.metric.needs_reference:  # the cache's clean logits, at these positions
        index = torch.searchsorted(cache.positions, positions.to(cache.positions.device))
        reference = cache.clean_at[p][:, index.to(cache.clean_at.device)]
    return runner.metric(logits, rows, reference)
