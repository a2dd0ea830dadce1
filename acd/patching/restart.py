"""Runs that restart from a cached residual: a run from block l on costs only blocks l ..
(exact scores, ACDC; acd.patching)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from acd.errors import AcdError
from acd.patching.hooks import HookedRun, HookSlot, destination_hooks, like, source_hooks

if TYPE_CHECKING:
    from acd.graph import ComputeGraph
    from acd.models.load import ModelAdapter

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
        patch_sources = patch_sources.detach().to(**like(model))
    run = HookedRun(
        model, graph, tokens, record=True, patch_mask=patch_mask, patch_sources=patch_sources
    )
    n_layers = graph.n_layers
    residuals = torch.empty((*tokens.shape, n_layers + 1, model.spec.d_model), **like(model))

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
        logits = model.run_with_hooks(tokens, hooks)
    return logits, run.recorded, residuals


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
    residual = residual.to(**like(model))
    deltas = deltas.to(**like(model))
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
    return model.run_from_block(residual, layer, hooks, positions)


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
    # The tokens only give HookedRun its shape: the forward starts from ``residual``.
    shape_only = torch.zeros(rows, length, dtype=torch.long, device=model.device)
    run = HookedRun(
        model,
        graph,
        shape_only,
        patch_mask=patch_mask.detach().to(model.device),
        patch_sources=patch_sources.detach().to(**like(model)),
    )
    run.start_after(n_prefix, prefix_sources[:, :, :n_prefix].detach().to(**like(model)))
    residual = residual.detach().to(**like(model))
    logits_slot = destination_hooks(model, graph)[-1]

    def entry_hook(x: torch.Tensor, hook) -> torch.Tensor:
        # Whatever reached this point is replaced by the cached residual itself.
        if layer < n_layers or not run.touches(logits_slot):
            return residual
        # Starting at the final norm: the logits destination reads the residual directly.
        return residual + run.correction(logits_slot)

    entry = model.hook_resid_pre(layer) if layer < n_layers else model.hook_final_resid()
    hooks = [(entry, entry_hook)]
    if layer < n_layers:
        first_dst = graph.dst_layer_slice(layer).start
        hooks += [
            (slot.hook, run.source_hook(slot))
            for slot in source_hooks(model, graph)
            if slot.start >= n_prefix
        ]
        hooks += [
            (slot.hook, run.destination_hook(slot))
            for slot in destination_hooks(model, graph)
            if slot.start >= first_dst
        ]
    return model.run_from_block(residual, layer, hooks, positions)


# --------------------------------------------------------------------------------------------
# The restart engine


@dataclass
class RestartCache:
    """The starting points of runs from a later block, for some prompts (exact scoring, ACDC).

    A run R of the prompts (the clean run, or the clean run with some edges patched) recorded
    up to ``length`` positions (the last scored position for a causal model: causal attention
    lets nothing later matter; every position otherwise): ``residuals``
    [n, length, n_layers + 1, d_model] entering every block and the final norm, ``sources``
    [n, length, n_src, d_model] R's source outputs, ``patch`` [n, length, n_src, d_model]
    what patched edges carry, and ``clean_at`` [n, k, d_vocab] the
    *clean* run's logits at ``positions`` [k] (the scored positions, ascending).

    ``run_with_deltas`` patches single edges or nodes into the cached run (exact scores);
    ``run_with_masks`` patches whole circuits from a block on (ACDC). Both compute logits at
    the given positions only.
    """

    model: ModelAdapter
    graph: ComputeGraph
    residuals: torch.Tensor
    sources: torch.Tensor
    patch: torch.Tensor
    clean_at: torch.Tensor
    positions: torch.Tensor

    @classmethod
    def record(
        cls,
        model: ModelAdapter,
        graph: ComputeGraph,
        tokens: torch.Tensor,
        patch: torch.Tensor,
        positions: torch.Tensor,
        *,
        removed: torch.Tensor | None = None,
        check: str | None = None,
    ) -> RestartCache:
        """Record the clean run of ``tokens`` [n, pos] (or, with ``removed`` [n_src, n_dst]
        bool, the run with those edges patched with ``patch`` [n or 1, pos, n_src, d_model])
        up to the last of ``positions``.

        ``check``: the name of the method that will restart from this cache; it is refused
        (AcdError, one line) when a restart from the clean run's cached residual does not
        reproduce the clean logits of the first prompt (an architecture whose forward does not
        loop over its block list as expected).
        """
        # Causal attention lets nothing after the last scored position matter.
        length = int(positions[-1]) + 1 if model.causal else tokens.shape[1]
        tokens, patch = tokens[:, :length], patch[:, :length]
        logits, sources, residuals = run_and_collect_residuals(model, graph, tokens)
        if check is not None:
            check_restarts(model, graph, residuals[:1], logits[:1], method=check)
        if removed is not None and bool(removed.any()):
            _, sources, residuals = run_and_collect_residuals(
                model, graph, tokens, patch_mask=removed, patch_sources=patch
            )
        return cls(model, graph, residuals, sources, patch, logits[:, positions], positions)

    @classmethod
    def cat(cls, caches: list[RestartCache]) -> RestartCache:
        """One cache of the prompts of ``caches`` (all recorded at the same positions)."""
        first = caches[0]
        joined = {
            name: torch.cat([getattr(c, name) for c in caches])
            for name in ("residuals", "sources", "patch", "clean_at")
        }
        return cls(first.model, first.graph, positions=first.positions, **joined)

    def __len__(self) -> int:
        return len(self.residuals)

    def run_with_deltas(
        self,
        layer: int,
        prompt: torch.Tensor,
        src: torch.Tensor,
        dst_mask: torch.Tensor,
        positions: torch.Tensor,
    ) -> torch.Tensor:
        """Row r: prompt ``prompt[r]`` with source ``src[r]`` patched into the destinations
        ``dst_mask[r]`` [n_dst] bool (one for an edge, all of its valid ones for a node), rerun
        from block ``layer`` (``run_from_layer``). Exact for the clean run only (nothing
        upstream of a destination changes, so the delta is patch - clean z).

        Args: prompt, src [R]; dst_mask [R, n_dst]; positions [k'] ascending, a subset of the
        cache's. Returns logits [R, k', d_vocab].
        """
        device = self.model.device
        length = int(positions[-1]) + 1 if self.model.causal else self.residuals.shape[1]
        p, s = prompt.to(device), src.to(device)
        deltas = self.patch[p, :length, s] - self.sources[p, :length, s]  # [R, length, d]
        return run_from_layer(
            self.model,
            self.graph,
            self.residuals[p, :length, layer],
            layer,
            deltas,
            dst_mask,
            positions=positions,
        )

    def run_with_masks(self, layer: int, masks: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        """Row r: prompt ``prompt[r]`` with the edges ``masks[r]`` [n_src, n_dst] patched, from
        block ``layer`` on (``run_patched_from_layer``: only destinations of block ``layer`` or
        later may differ from the cached run's own patches).

        Args: masks [R, n_src, n_dst] bool; prompt [R]. Returns logits [R, k, d_vocab] at the
        cache's positions.
        """
        graph, device = self.graph, self.model.device
        p = prompt.to(device)
        # Only the sources before block ``layer`` are read from the cache: gather just those.
        n_prefix = graph.src_layer_slice(layer).start if layer < graph.n_layers else graph.n_src
        return run_patched_from_layer(
            self.model,
            graph,
            self.residuals[p, :, layer],
            layer,
            masks.to(device),
            self.patch[p],
            self.sources[:, :, :n_prefix][p],
            positions=self.positions,
        )


def check_restarts(
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
            raise RestartError(
                f"{method} cannot restart {model.name!r} at block {layer}: the logits "
                f"differ from the full forward's by {error:.3g}; use method='eap' or 'eap-ig'"
            )


class RestartError(AcdError, ValueError):
    """A model whose runs from a cached residual do not reproduce its forward."""
