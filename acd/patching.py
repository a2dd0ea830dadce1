"""Forward passes with an edge mask: the one place where hooks live.

Every algorithm (EAP, EAP-IG, exact patching, ACDC, evaluation) is written against these runs:

    run_and_collect(model, graph, tokens)           logits and every source's output, one forward
    run_patched(model, graph, tokens, mask, patch)   a forward where masked edges read ``patch``
    run_with_gradients(model, graph, tokens, metric) dM/d(in_v) for every destination, one backward
    run_and_collect_residuals(model, graph, tokens)  run_and_collect + the residual entering
                                                     every block (the starting points of ...)
    run_from_layer(model, graph, residual, l, ...)   blocks l.. only, one delta per batch row
                                                     added at chosen destinations (exact scores)
    run_patched_from_layer(model, graph, residual, l, mask, patch, prefix)
                                                     run_patched from block l on, a mask per
                                                     row (ACDC)

Edge patching (DESIGN.md, "The mathematics"). Let z_u be source u's output, in this run, and
in_v = sum of z_u over u -> v, plus constants (b_O, biases), the residual stream destination v
reads. In ``run_patched`` every destination v reads instead

    in_v + sum_u mask[u, v] * (patch_sources[u] - z_u)

with z_u the source outputs *of this run*, which differ from the clean run's wherever an earlier
edge was patched. A bool mask patches edges outright; a float mask in [0, 1] interpolates
between the run's own value (0) and the patch value (1). With every valid edge patched, every
destination reads sum_u patch_sources[u] + constants, so with the corrupted run's sources the
patched run reproduces the corrupted run exactly.

How the graph maps onto hooks (``source_hooks``, ``destination_hooks``):

    input        hook_embed_out()            the residual entering block 0 (token + position
                                             embeddings; token embeddings for rotary models)
    a{l}.h{h}    hook_head_result(l)[:, :, h]   W_O applied, b_O excluded (b_O is a constant)
    m{l}         hook_mlp_out(l)
    <q>          hook_q_input(l)[:, :, h]    per-head copies of the residual, before the norm
    <k>, <v>     hook_k_input(l)[:, :, g]    per key-value group g under grouped-query attention
    m{l} (dst)   hook_mlp_in(l)              a copy: changing it leaves the residual alone
    logits       hook_final_resid()          the residual entering the final norm

Source hooks fire in index order as the forward proceeds and record their outputs; a
destination hook adds its correction from the sources computed before it, which are exactly the
sources with a valid edge into it (``graph.valid``): invalid mask entries are never read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from acd.graph import ComputeGraph
    from acd.models.load import ModelAdapter
    from acd.tasks import PromptBatch

ABLATIONS = ("corrupted", "zero", "mean")


# --------------------------------------------------------------------------------------------
# The graph's nodes as hook points


@dataclass(frozen=True)
class HookSlot:
    """A hook and the contiguous block of graph indices its tensor holds.

    ``per_head``: the tensor is [batch, pos, stop - start, d_model] (one slot per head or
    key-value group); otherwise it is [batch, pos, d_model] and stands for one index.
    ``n_before`` (destinations only): the number of sources computed before this hook reads,
    i.e. sources 0 .. n_before - 1 have a valid edge into it.
    """

    hook: str
    start: int
    stop: int
    per_head: bool
    n_before: int = 0


def source_hooks(model: ModelAdapter, graph: ComputeGraph) -> list[HookSlot]:
    """The hooks that produce every source, in index (and forward) order."""
    slots = [HookSlot(model.hook_embed_out(), 0, 1, per_head=False)]
    for layer in range(graph.n_layers):
        first = graph.src_head(layer, 0)
        slots.append(
            HookSlot(model.hook_head_result(layer), first, first + graph.n_heads, per_head=True)
        )
        if graph.shape.has_mlp:
            i = graph.src_mlp(layer)
            slots.append(HookSlot(model.hook_mlp_out(layer), i, i + 1, per_head=False))
    return slots


def destination_hooks(model: ModelAdapter, graph: ComputeGraph) -> list[HookSlot]:
    """The hooks where every destination reads, in index (and forward) order."""
    H, G = graph.n_heads, graph.n_kv_heads
    slots = []
    for layer in range(graph.n_layers):
        before_layer = graph.src_layer_slice(layer).start  # input and all earlier layers
        for hook, first, width in (
            (model.hook_q_input(layer), graph.dst_q(layer, 0), H),
            (model.hook_k_input(layer), graph.dst_k(layer, 0), G),
            (model.hook_v_input(layer), graph.dst_v(layer, 0), G),
        ):
            slots.append(HookSlot(hook, first, first + width, per_head=True, n_before=before_layer))
        if graph.shape.has_mlp:
            # A sequential block's MLP also reads its own layer's heads; a parallel one does not.
            n_before = before_layer + (0 if graph.shape.parallel_attn_mlp else H)
            j = graph.dst_mlp(layer)
            slots.append(HookSlot(model.hook_mlp_in(layer), j, j + 1, False, n_before))
    j = graph.dst_logits()
    slots.append(HookSlot(model.hook_final_resid(), j, j + 1, False, graph.n_src))
    return slots


# --------------------------------------------------------------------------------------------
# One forward pass with hooks


class _HookedRun:
    """The state of one forward pass: recorded sources, the patch, captured destination inputs.

    Built per call (no state outlives a run). ``patch_mask`` [n_src, n_dst] or
    [batch, n_src, n_dst] and ``patch_sources`` [batch, pos, n_src, d_model] turn on patching;
    ``record`` fills ``sources`` [batch, pos, n_src, d_model] (detached); ``capture_grads``
    makes every destination input ``x + zero`` with a fresh leaf ``zero`` whose gradient is
    dM/d(in_v); ``embed_override`` [batch, pos, d_model] replaces the input node's output.
    """

    def __init__(
        self,
        model: ModelAdapter,
        graph: ComputeGraph,
        tokens: torch.Tensor,
        *,
        patch_mask: torch.Tensor | None = None,
        patch_sources: torch.Tensor | None = None,
        record: bool = False,
        capture_grads: bool = False,
        embed_override: torch.Tensor | None = None,
    ):
        self.model, self.graph, self.tokens = model, graph, tokens
        batch, pos = tokens.shape
        self.shape = (batch, pos, graph.n_src, model.spec.d_model)
        self.embed_override = embed_override
        self.sources = torch.empty(self.shape, **_like(model)) if record else None
        self.capture_grads = capture_grads
        self.grad_leaves: list[torch.Tensor] = []
        self.mask = None
        if patch_mask is not None:
            if patch_sources is None:
                raise ValueError("a patch mask needs patch_sources")
            self.mask = _check_mask(patch_mask, graph, batch).to(model.device, model.dtype)
            self.patch = _check_patch_sources(patch_sources, self.shape)
            # Which destinations any mask entry touches, read once (one device sync), so that
            # hooks with nothing to patch skip their matmul. Not when the mask needs gradients:
            # every entry must then be part of the graph.
            self.dst_touched = (
                None
                if self.mask.requires_grad
                else self.mask.reshape(-1, graph.n_dst).ne(0).any(dim=0).cpu()
            )
            # patch - current, for the sources recorded so far: written into one buffer
            # (fast), or, when autograd must see it, kept as chunks (in-place writes into a
            # tensor that earlier corrections read would break the backward pass).
            self.differentiable = (
                capture_grads or self.mask.requires_grad or self.patch.requires_grad
            )
            self.diff = None if self.differentiable else torch.empty(self.shape, **_like(model))
            # Running sums of patch - current over the sources recorded so far, at every source
            # hook boundary: [batch, pos, d_model] each. With them a destination that patches
            # most of its sources costs only the few it keeps (see ``_correction``).
            self.diff_sums = {0: torch.zeros(batch, pos, self.shape[3], **_like(model))}
            self.diff_chunks: list[torch.Tensor] = []
            self.diff_prefix: torch.Tensor | None = None  # the chunks' concatenation, cached
            self.n_recorded = 0  # sources recorded so far

    # --- hooks ---------------------------------------------------------------------------

    def fwd_hooks(self) -> list[tuple[str, Callable]]:
        hooks = [(s.hook, self._source_hook(s)) for s in source_hooks(self.model, self.graph)]
        if self.mask is not None or self.capture_grads:
            hooks += [
                (d.hook, self._destination_hook(d))
                for d in destination_hooks(self.model, self.graph)
            ]
        return hooks

    def _source_hook(self, slot: HookSlot) -> Callable:
        def hook(x: torch.Tensor, hook) -> torch.Tensor | None:
            replaced = slot.start == 0 and self.embed_override is not None
            if replaced:
                x = self.embed_override.to(x.device, x.dtype)
            z = x if slot.per_head else x.unsqueeze(2)  # [batch, pos, width, d_model]
            if self.sources is not None:
                self.sources[:, :, slot.start : slot.stop] = z.detach()
            if self.mask is not None:
                # The patch buffers live on the model's (first) device; under a device_map
                # this block may run on another.
                self._record_diff(slot, z.to(self.patch.device))
            return x if replaced else None

        return hook

    def _destination_hook(self, slot: HookSlot) -> Callable:
        def hook(x: torch.Tensor, hook) -> torch.Tensor | None:
            changed = False
            if self.mask is not None and self._touches(slot):
                x = x + self._correction(slot).to(x.device)
                changed = True
            if self.capture_grads:
                leaf = torch.zeros_like(x, requires_grad=True)
                self.grad_leaves.append(leaf)
                x = x + leaf
                changed = True
            return x if changed else None

        return hook

    # --- patching ------------------------------------------------------------------------

    def _touches(self, slot: HookSlot) -> bool:
        return self.dst_touched is None or bool(self.dst_touched[slot.start : slot.stop].any())

    def _record_diff(self, slot: HookSlot, z: torch.Tensor) -> None:
        if self.n_recorded != slot.start:
            raise RuntimeError(
                f"source hooks fired out of order: {slot.hook} (sources {slot.start}..) after "
                f"{self.n_recorded} sources (is this a pre-norm decoder-only model?)"
            )
        patch = self.patch[:, :, slot.start : slot.stop]
        if self.differentiable:
            self.diff_chunks.append(patch - z)
        else:
            diff = self.diff[:, :, slot.start : slot.stop]
            torch.sub(patch, z, out=diff)
            self.diff_sums[slot.stop] = self.diff_sums[slot.start] + diff.sum(dim=2)
        self.n_recorded = slot.stop

    def _diff_before(self, n_before: int) -> torch.Tensor:
        """patch - current for sources 0 .. n_before - 1: [batch, pos, n_before, d_model].

        (A parallel block's MLP input fires after its layer's heads were recorded but reads
        only the sources before them: hence a prefix of what was recorded.)
        """
        if self.n_recorded < n_before:
            raise RuntimeError(
                f"a destination reads {n_before} sources but only {self.n_recorded} were "
                "recorded: hooks fired out of order (is this a pre-norm decoder-only model?)"
            )
        if not self.differentiable:
            return self.diff[:, :, :n_before]
        # The q, k, v and MLP hooks of a layer read the same sources: concatenate once.
        if self.diff_prefix is None or self.diff_prefix.shape[2] != self.n_recorded:
            self.diff_prefix = torch.cat(self.diff_chunks, dim=2)
        return self.diff_prefix[:, :, :n_before]

    def _correction(self, slot: HookSlot) -> torch.Tensor:
        """sum_u mask[u, v] (patch_u - current_u) for the destinations v of ``slot``.

        One batched matmul, mask^T [width, n_before] @ diff [batch, pos, n_before, d_model]
        (the einsum 'bpsd,sh->bphd', which torch.einsum runs ~5x slower through permuted
        copies). Returns [batch, pos, width, d_model] for per-head slots, else
        [batch, pos, d_model].
        """
        diff = self._diff_before(slot.n_before)
        mask_t = self.mask[..., : slot.n_before, slot.start : slot.stop].transpose(-1, -2)
        if mask_t.dim() == 3:  # a mask per batch row: [batch, 1, width, n_before]
            out = torch.matmul(mask_t.unsqueeze(1), diff)
        elif self.differentiable:
            out = torch.matmul(mask_t, diff)
        else:
            out = self._sparse_correction(mask_t, diff, slot.n_before)
        return out if slot.per_head else out.squeeze(2)

    def _sparse_correction(
        self, mask_t: torch.Tensor, diff: torch.Tensor, n_before: int
    ) -> torch.Tensor:
        """``mask_t @ diff`` reading only the sources that matter: [batch, pos, width, d_model].

        A circuit keeps few edges, so evaluating it patches almost every edge: then
        sum_u m_uv diff_u = sum_u diff_u - sum_u (1 - m_uv) diff_u, where the first sum is the
        running total and the second reads only sources with a kept edge into the slot. A
        search that patches few edges reads only the patched sources directly. Either way the
        cost follows the smaller set instead of all n_before sources.

        Args: mask_t [width, n_before] (values in [0, 1]), diff [batch, pos, n_before, d_model].
        """
        patched = mask_t.ne(0).any(dim=0).nonzero().flatten()
        kept = mask_t.ne(1).any(dim=0).nonzero().flatten()
        if 2 * min(len(patched), len(kept)) > n_before:
            # Gathering most sources would copy diff for nothing: the plain product is cheaper.
            return torch.matmul(mask_t, diff)
        if len(patched) <= len(kept):
            return torch.matmul(mask_t[:, patched], diff[:, :, patched])
        total = self.diff_sums[n_before].unsqueeze(2)  # [batch, pos, 1, d_model]
        return total - torch.matmul(1 - mask_t[:, kept], diff[:, :, kept])

    def start_after(self, n_prefix: int, prefix_sources: torch.Tensor) -> None:
        """Take sources 0 .. n_prefix - 1 as already recorded, with outputs ``prefix_sources``
        [batch or 1, pos, n_prefix, d_model]: for a run that starts after their blocks
        (``run_patched_from_layer``). Needs a patch mask and no gradients."""
        if self.diff is None or self.n_recorded != 0:
            raise RuntimeError("start_after needs a fresh, non-differentiable patched run")
        diff = self.diff[:, :, :n_prefix]
        torch.sub(self.patch[:, :, :n_prefix], prefix_sources, out=diff)
        self.diff_sums[n_prefix] = diff.sum(dim=2)
        self.n_recorded = n_prefix

    # --- running -------------------------------------------------------------------------

    def run(self) -> torch.Tensor:
        """The logits [batch, pos, d_vocab], on ``model.device`` (a model split by device_map
        may return them from its last device; metrics index them with the batch's tensors)."""
        logits = self.model.bridge.run_with_hooks(self.tokens, fwd_hooks=self.fwd_hooks())
        return logits.to(self.model.device)


def _like(model: ModelAdapter) -> dict:
    """Keyword arguments for new activation tensors of this model."""
    return {"device": model.device, "dtype": model.dtype}


def _check_mask(mask: torch.Tensor, graph: ComputeGraph, batch: int) -> torch.Tensor:
    edges = (graph.n_src, graph.n_dst)
    if tuple(mask.shape) == edges or (mask.dim() == 3 and tuple(mask.shape) == (batch, *edges)):
        return mask
    raise ValueError(
        f"patch mask has shape {tuple(mask.shape)}; expected {edges} or ({batch}, {edges[0]}, "
        f"{edges[1]}) for this graph and a batch of {batch}"
    )


def _check_patch_sources(patch: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    if patch.dim() != 4 or patch.shape[0] not in (1, shape[0]) or patch.shape[1:] != shape[1:]:
        raise ValueError(
            f"patch sources have shape {tuple(patch.shape)}; expected {shape} "
            "([batch, pos, n_src, d_model], batch may be 1)"
        )
    return patch


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
    run = _HookedRun(model, graph, tokens.to(model.device), record=True)
    with torch.no_grad():
        logits = run.run()
    return logits, run.sources


def collect_sources(model: ModelAdapter, graph: ComputeGraph, tokens: torch.Tensor) -> torch.Tensor:
    """Every source's output from one forward: [batch, pos, n_src, d_model]."""
    return run_and_collect(model, graph, tokens)[1]


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
    run = _HookedRun(
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
    return (logits, run.sources) if return_sources else logits


def run_with_gradients(
    model: ModelAdapter,
    graph: ComputeGraph,
    tokens: torch.Tensor,
    metric_fn: Callable[[torch.Tensor], torch.Tensor],
    *,
    embed_override: torch.Tensor | None = None,
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

    Returns: metric [batch] (detached), sources [batch, pos, n_src, d_model] (this run's source
    outputs, detached; the input node is ``embed_override`` when given), grads
    [batch, pos, n_dst, d_model] in destination index order.
    """
    tokens = tokens.to(model.device)
    if embed_override is not None:
        embed_override = embed_override.to(model.device).detach()
    run = _HookedRun(
        model, graph, tokens, record=True, capture_grads=True, embed_override=embed_override
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
    return metric.detach(), run.sources, grads


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
    total = torch.zeros(batch.clean.shape[1], graph.n_src, d_model, **_like(model))
    count = torch.zeros(batch.clean.shape[1], **_like(model))
    # A rank with no prompts still joins the all-reduce below, with zero sums and counts.
    for chunk in rows.split(batch_size or len(rows)) if len(rows) else []:
        sources = collect_sources(model, graph, chunk.clean)
        real = _real_positions(chunk).to(model.device, model.dtype)  # [n, pos]
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
        return torch.zeros(shape, **_like(model))
    if means is None:  # "mean"
        means = mean_sources(model, graph, batch, batch_size=batch_size)
    return means.to(**_like(model)).expand(shape)


def _real_positions(batch: PromptBatch) -> torch.Tensor:
    """[N, pos] bool: True at positions holding a real (non-padding) token."""
    positions = torch.arange(batch.clean.shape[1], device=batch.lengths.device)
    return positions[None, :] < batch.lengths[:, None]


# --------------------------------------------------------------------------------------------
# Runs that reuse the clean prefix (exact scores)


def run_and_collect_residuals(
    model: ModelAdapter,
    graph: ComputeGraph,
    tokens: torch.Tensor,
    *,
    patch_mask: torch.Tensor | None = None,
    patch_sources: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One plain forward (no gradients): logits, every source's output, and the residual stream
    entering every block and the final norm.

    Args: tokens [batch, pos] token ids; ``patch_mask`` and ``patch_sources`` (optional, as for
    ``run_patched``) make it the patched run's sources and residuals instead of the clean run's
    (ACDC started from a candidate set restarts from those).
    Returns: logits [batch, pos, d_vocab], sources [batch, pos, n_src, d_model], residuals
    [batch, pos, n_layers + 1, d_model]: ``residuals[:, :, l]`` enters block l, and
    ``residuals[:, :, n_layers]`` enters the final norm (the ``logits`` destination's input,
    before any patch of the ``logits`` destination's own edges).
    These are the starting points of ``run_from_layer`` and ``run_patched_from_layer``.
    """
    tokens = tokens.to(model.device)
    if patch_sources is not None:
        patch_sources = patch_sources.detach().to(**_like(model))
    run = _HookedRun(
        model, graph, tokens, record=True, patch_mask=patch_mask, patch_sources=patch_sources
    )
    n_layers = graph.n_layers
    residuals = torch.empty((*tokens.shape, n_layers + 1, model.spec.d_model), **_like(model))

    def recorder(index: int) -> Callable:
        def hook(x: torch.Tensor, hook) -> None:
            residuals[:, :, index] = x.detach()

        return hook

    names = [model.hook_resid_pre(layer) for layer in range(n_layers)]
    names.append(model.hook_final_resid())
    # The recorders go first, so that with a patch mask the residual entering the final norm
    # is recorded before the logits destination's own correction (its in_v, which is what a
    # restart at ``n_layers`` adds its correction to).
    hooks = [(name, recorder(i)) for i, name in enumerate(names)] + run.fwd_hooks()
    with torch.no_grad():
        logits = model.bridge.run_with_hooks(tokens, fwd_hooks=hooks).to(model.device)
    return logits, run.sources, residuals


def run_from_layer(
    model: ModelAdapter,
    graph: ComputeGraph,
    residual: torch.Tensor,
    layer: int,
    deltas: torch.Tensor,
    dst_mask: torch.Tensor,
    *,
    positions: torch.Tensor | None = None,
) -> torch.Tensor:
    """A forward of blocks ``layer`` .. n_layers - 1, the final norm and the unembedding only,
    starting from ``residual``, in which row b's destination v reads ``in_v + deltas[b]``
    wherever ``dst_mask[b, v]``.

    Blocks before ``layer`` do not run at all (they are left out of the wrapped Hugging Face
    model's layer list for the duration of the call), so a run from a late layer costs only
    the late layers. Given the clean run's residual (``run_and_collect_residuals``):

    - ``deltas[b] = patch_u - z_u`` (clean z_u) and ``dst_mask[b]`` one-hot at v is the clean
      run with the single edge u -> v patched: nothing upstream of v changes, so the current
      z_u is the clean one and ``run_patched``'s correction at v is exactly this delta;
    - the same delta with ``dst_mask[b] = graph.valid[u]`` patches every edge out of u, i.e.
      node u's output.

    Args:
        residual: [batch, pos, d_model] the residual stream entering block ``layer``; for
            ``layer == n_layers``, the residual entering the final norm (only the norm and the
            unembedding run).
        layer: the first block to run, 0 .. n_layers.
        deltas: [batch, pos, d_model] what each row adds to its destinations' inputs.
        dst_mask: [batch, n_dst] bool; only destinations of block ``layer`` or later (and
            ``logits``) may be set, since earlier ones do not run.
        positions: [k] ascending positions whose logits to compute (the only ones a metric
            reads); None computes all. Uses the model's ``logits_to_keep`` where it has one.

    Returns: logits [batch, pos, d_vocab], or [batch, k, d_vocab] with ``positions``.
    """
    n_layers = graph.n_layers
    if not 0 <= layer <= n_layers:
        raise ValueError(f"layer {layer} out of range 0 .. {n_layers}")
    batch = residual.shape[0]
    if deltas.shape != residual.shape or tuple(dst_mask.shape) != (batch, graph.n_dst):
        raise ValueError(
            f"deltas {tuple(deltas.shape)} and dst_mask {tuple(dst_mask.shape)} do not fit a "
            f"residual of shape {tuple(residual.shape)} and {graph.n_dst} destinations"
        )
    first_dst = graph.dst_layer_slice(layer).start if layer < n_layers else graph.dst_logits()
    if bool(dst_mask[:, :first_dst].any()):
        raise ValueError(f"dst_mask sets destinations before block {layer}, which do not run")
    residual = residual.to(**_like(model))
    deltas = deltas.to(**_like(model))
    dst_mask = dst_mask.to(model.device)

    def entry_hook(x: torch.Tensor, hook) -> torch.Tensor:
        # Whatever reached this point (the wrapped model's embedding of ``residual``) is
        # replaced by the cached residual itself.
        if layer < n_layers:
            return residual.to(x.device)
        # Starting at the final norm: the logits destination reads the residual directly.
        return (residual + dst_mask[:, graph.dst_logits(), None, None] * deltas).to(x.device)

    entry = model.hook_resid_pre(layer) if layer < n_layers else model.hook_final_resid()
    hooks = [(entry, entry_hook)]
    if layer < n_layers:
        touched = dst_mask.any(dim=0).cpu()  # one device sync: which destinations need a hook
        hooks += [
            (slot.hook, _delta_hook(slot, deltas, dst_mask))
            for slot in destination_hooks(model, graph)
            if bool(touched[slot.start : slot.stop].any())
        ]
    return _run_blocks_from(model, residual, layer, hooks, positions)


def _run_blocks_from(
    model: ModelAdapter,
    residual: torch.Tensor,
    layer: int,
    hooks: list[tuple[str, Callable]],
    positions: torch.Tensor | None,
) -> torch.Tensor:
    """Blocks ``layer`` .. end with ``hooks`` (the first replaces the input with ``residual``);
    logits [batch, pos or k, d_vocab] on ``model.device``, only at ``positions`` if given."""
    kwargs = {}
    if positions is not None and _accepts_logits_to_keep(model):
        kwargs["logits_to_keep"] = positions.to(model.device)
    # The input only drives the wrapped model (batch size, length, positions) through blocks
    # ``layer`` onward; the earlier blocks are taken out of its list for this call.
    with torch.no_grad(), _BlocksFrom(model, layer):
        logits = model.bridge.run_with_hooks(residual, fwd_hooks=hooks, **kwargs)
    logits = logits.to(model.device)  # from the last device of a model split by device_map
    if positions is not None and not kwargs:
        logits = logits[:, positions.to(logits.device)]
    return logits


def _delta_hook(slot: HookSlot, deltas: torch.Tensor, dst_mask: torch.Tensor) -> Callable:
    """x + deltas[b] at the destinations of ``slot`` that row b's mask sets."""
    mask = dst_mask[:, slot.start : slot.stop].to(deltas.dtype)  # [batch, width]

    def hook(x: torch.Tensor, hook) -> torch.Tensor:
        if slot.per_head:  # x [batch, pos, width, d_model]
            return x + (mask[:, None, :, None] * deltas[:, :, None, :]).to(x.device)
        return x + (mask[:, 0, None, None] * deltas).to(x.device)

    return hook


def run_patched_from_layer(
    model: ModelAdapter,
    graph: ComputeGraph,
    residual: torch.Tensor,
    layer: int,
    patch_mask: torch.Tensor,
    patch_sources: torch.Tensor,
    prefix_sources: torch.Tensor,
    *,
    positions: torch.Tensor | None = None,
) -> torch.Tensor:
    """``run_patched`` from block ``layer`` on: blocks ``layer`` .. n_layers - 1, the final norm
    and the unembedding only, starting from ``residual``, with a patch mask per batch row.

    Destination v of block ``layer`` or later (or ``logits``) reads, as in ``run_patched``,
    ``in_v + sum_u patch_mask[b, u, v] * (patch_sources[b, u] - z_u)``, where z_u is recorded
    in this run for the sources of block ``layer`` onward and is ``prefix_sources[b, u]`` for
    the earlier ones (input and blocks < ``layer``), which do not run. When ``residual`` and
    ``prefix_sources`` come from a run R (``run_and_collect_residuals``, clean or itself
    patched), the result equals ``run_patched`` with a mask that agrees with R's on every
    destination before block ``layer`` and with ``patch_mask`` from there on: the patches of
    later destinations cannot change what enters block ``layer`` (ACDC visits destinations from
    the output backwards, so every edge it has removed lies in block ``layer`` or later). R's
    own patches of destinations from block ``layer`` on do not matter: ``patch_mask`` replaces
    them (``run_and_collect_residuals`` records the final norm's input before the ``logits``
    destination's patch for this reason).

    Entries of ``patch_mask`` at destinations before block ``layer`` are ignored (those
    destinations do not run; R's residual already holds their effect). Runs without gradients.

    Args:
        residual: [batch, pos, d_model] the residual entering block ``layer`` (for
            ``layer == n_layers``, the residual entering the final norm).
        layer: the first block to run, 0 .. n_layers.
        patch_mask: [n_src, n_dst] or [batch, n_src, n_dst], bool or float in [0, 1].
        patch_sources: [batch or 1, pos, n_src, d_model] the values patched edges carry.
        prefix_sources: [batch or 1, pos, >= n_prefix, d_model] R's source outputs; only the
            first n_prefix = ``graph.src_layer_slice(layer).start`` (all n_src for
            ``layer == n_layers``) are read.
        positions: [k] ascending positions whose logits to compute; None computes all.

    Returns: logits [batch, pos, d_vocab], or [batch, k, d_vocab] with ``positions``.
    """
    n_layers = graph.n_layers
    if not 0 <= layer <= n_layers:
        raise ValueError(f"layer {layer} out of range 0 .. {n_layers}")
    rows, length = residual.shape[:2]
    n_prefix = graph.src_layer_slice(layer).start if layer < n_layers else graph.n_src
    # The tokens only give _HookedRun its shape: the forward starts from ``residual``.
    shape_only = torch.zeros(rows, length, dtype=torch.long, device=model.device)
    run = _HookedRun(
        model,
        graph,
        shape_only,
        patch_mask=patch_mask.detach().to(model.device),
        patch_sources=patch_sources.detach().to(**_like(model)),
    )
    run.start_after(n_prefix, prefix_sources[:, :, :n_prefix].detach().to(**_like(model)))
    residual = residual.detach().to(**_like(model))
    logits_slot = destination_hooks(model, graph)[-1]

    def entry_hook(x: torch.Tensor, hook) -> torch.Tensor:
        # Whatever reached this point is replaced by the cached residual itself.
        if layer < n_layers or not run._touches(logits_slot):
            return residual
        # Starting at the final norm: the logits destination reads the residual directly.
        return residual + run._correction(logits_slot)

    entry = model.hook_resid_pre(layer) if layer < n_layers else model.hook_final_resid()
    hooks = [(entry, entry_hook)]
    if layer < n_layers:
        first_dst = graph.dst_layer_slice(layer).start
        hooks += [
            (slot.hook, run._source_hook(slot))
            for slot in source_hooks(model, graph)
            if slot.start >= n_prefix
        ]
        hooks += [
            (slot.hook, run._destination_hook(slot))
            for slot in destination_hooks(model, graph)
            if slot.start >= first_dst
        ]
    return _run_blocks_from(model, residual, layer, hooks, positions)


def _accepts_logits_to_keep(model: ModelAdapter) -> bool:
    """Whether the wrapped Hugging Face model can compute logits at chosen positions only."""
    import inspect

    return "logits_to_keep" in inspect.signature(model.bridge.original_model.forward).parameters


class _BlocksFrom:
    """Context: blocks 0 .. layer - 1 left out of the wrapped model's list of blocks.

    The bridge's own ``start_at_layer`` swaps the residual in at block ``layer`` but still runs
    every earlier block; removing them from the list the Hugging Face forward loops over is
    what makes a run from a late layer cheap. The list is restored on exit, even on error.
    """

    def __init__(self, model: ModelAdapter, layer: int):
        self.model, self.layer = model, layer

    def __enter__(self) -> None:
        self.parent, self.name = _block_list_owner(self.model)
        self.full = getattr(self.parent, self.name)
        setattr(self.parent, self.name, torch.nn.ModuleList(list(self.full)[self.layer :]))

    def __exit__(self, *exc) -> None:
        setattr(self.parent, self.name, self.full)


def _block_list_owner(model: ModelAdapter) -> tuple[torch.nn.Module, str]:
    """The module (and attribute name) holding the wrapped model's list of blocks."""
    first = model.bridge.blocks[0]
    for module in model.bridge.original_model.modules():
        for name, child in module.named_children():
            if isinstance(child, torch.nn.ModuleList) and len(child) and child[0] is first:
                return module, name
    raise RuntimeError("cannot find the wrapped model's list of transformer blocks")
