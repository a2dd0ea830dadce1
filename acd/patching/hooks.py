"""The graph's nodes as hook points, and one forward pass with hooks (``HookedRun``): the one
place where source outputs are recorded and destination inputs corrected (acd.patching)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from acd.graph import ComputeGraph
    from acd.models.load import ModelAdapter

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
    """The hooks where every destination reads, in index (and forward) order; each slot's
    ``n_before`` is the graph's (``graph.dst_n_before``: the sources computed before it)."""
    H, G = graph.n_heads, graph.n_kv_heads
    n_before = graph.dst_n_before.tolist()
    slots = []
    for layer in range(graph.n_layers):
        for hook, first, width in (
            (model.hook_q_input(layer), graph.dst_q(layer, 0), H),
            (model.hook_k_input(layer), graph.dst_k(layer, 0), G),
            (model.hook_v_input(layer), graph.dst_v(layer, 0), G),
        ):
            slots.append(HookSlot(hook, first, first + width, True, n_before[first]))
        if graph.shape.has_mlp:
            j = graph.dst_mlp(layer)
            slots.append(HookSlot(model.hook_mlp_in(layer), j, j + 1, False, n_before[j]))
    j = graph.dst_logits()
    slots.append(HookSlot(model.hook_final_resid(), j, j + 1, False, n_before[j]))
    return slots


# --------------------------------------------------------------------------------------------
# One forward pass with hooks


class HookedRun:
    """The state of one forward pass: recorded sources, the patch, captured destination inputs.

    Built per call (no state outlives a run). ``patch_mask`` [n_src, n_dst],
    [batch, n_src, n_dst] or [batch, pos, n_src, n_dst] (a mask per row and position) and
    ``patch_sources`` [batch, pos, n_src, d_model] turn on patching;
    ``record`` fills ``sources`` [batch, pos, n_src, d_model] (detached); ``capture_grads``
    makes every destination input ``x + zero`` with a fresh leaf ``zero`` whose gradient is
    dM/d(in_v); ``embed_override`` [batch, pos, d_model] replaces the input node's output;
    ``source_override`` (first, values [batch, pos, width, d_model]) replaces the outputs of
    sources first .. first + width - 1 (any contiguous range: one head, a layer's heads, every
    source), each written where its hook fires, so later sources are computed from it;
    ``frozen_norms`` holds every norm's statistics constant in the backward pass, the forward
    unchanged (``ModelAdapter.frozen_norms``, acd.models.norms); ``head_rows`` [batch, pos]
    (long) makes every head's output at (row b, position t) the one computed in row
    ``head_rows[b, t]`` at t, before it is recorded or added to the residual: the positional
    runs' copies (acd.positional.runs) share their heads' outputs this way.
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
        source_override: tuple[int, torch.Tensor] | None = None,
        frozen_norms: bool = False,
        head_rows: torch.Tensor | None = None,
    ):
        self.model, self.graph, self.tokens = model, graph, tokens
        batch, pos = tokens.shape
        self.head_rows = None if head_rows is None else _check_head_rows(head_rows, batch, pos)
        self.shape = (batch, pos, graph.n_src, model.spec.d_model)
        if embed_override is not None:
            if source_override is not None:
                raise ValueError("give embed_override or source_override, not both")
            source_override = (0, embed_override.unsqueeze(2))  # the input node is source 0
        self.override = source_override
        self.frozen_norms = frozen_norms
        self.sources = torch.empty(self.shape, **like(model)) if record else None
        self.capture_grads = capture_grads
        self.grad_leaves: list[torch.Tensor] = []
        self.mask = None
        if patch_mask is not None:
            if patch_sources is None:
                raise ValueError("a patch mask needs patch_sources")
            self.mask = _check_mask(patch_mask, graph, batch, pos).to(model.device, model.dtype)
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
            self.diff = None if self.differentiable else torch.empty(self.shape, **like(model))
            # Running sums of patch - current over the sources recorded so far, at every source
            # hook boundary: [batch, pos, d_model] each. With them a destination that patches
            # most of its sources costs only the few it keeps (see ``_correction``).
            self.diff_sums = {0: torch.zeros(batch, pos, self.shape[3], **like(model))}
            self.diff_chunks: list[torch.Tensor] = []
            self.diff_prefix: torch.Tensor | None = None  # the chunks' concatenation, cached
            self.n_recorded = 0  # sources recorded so far

    @property
    def recorded(self) -> torch.Tensor:
        """The source outputs recorded by this run: [batch, pos, n_src, d_model]."""
        if self.sources is None:
            raise RuntimeError("this run was built without record=True: it kept no sources")
        return self.sources

    # --- hooks ---------------------------------------------------------------------------

    def fwd_hooks(self) -> list[tuple[str, Callable]]:
        hooks = [(s.hook, self.source_hook(s)) for s in source_hooks(self.model, self.graph)]
        if self.mask is not None or self.capture_grads:
            hooks += [
                (d.hook, self.destination_hook(d))
                for d in destination_hooks(self.model, self.graph)
            ]
        return hooks

    def source_hook(self, slot: HookSlot) -> Callable:
        def hook(x: torch.Tensor, hook) -> torch.Tensor | None:
            z = x if slot.per_head else x.unsqueeze(2)  # [batch, pos, width, d_model]
            changed = False
            if self.head_rows is not None and slot.per_head:
                # Heads only (the input and MLP slots are not per head): row b's output at t
                # is taken from row head_rows[b, t] (the copy whose keys t's query reads).
                rows = self.head_rows.to(z.device)
                z = z[rows, torch.arange(z.shape[1], device=z.device)[None, :]]
                changed = True
            if self.override is not None and self._overrides(slot):
                z = self._overridden(slot, z)
                changed = True
            if changed:
                x = z if slot.per_head else z.squeeze(2)
            if self.sources is not None:
                self.sources[:, :, slot.start : slot.stop] = z.detach()
            if self.mask is not None:
                # The patch buffers live on the model's (first) device; under a device_map
                # this block may run on another.
                self._record_diff(slot, z.to(self.patch.device))
            return x if changed else None

        return hook

    def destination_hook(self, slot: HookSlot) -> Callable:
        def hook(x: torch.Tensor, hook) -> torch.Tensor | None:
            changed = False
            if self.mask is not None and self.touches(slot):
                x = x + self.correction(slot).to(x.device)
                changed = True
            if self.capture_grads:
                leaf = torch.zeros_like(x, requires_grad=True)
                self.grad_leaves.append(leaf)
                x = x + leaf
                changed = True
            return x if changed else None

        return hook

    # --- overrides -----------------------------------------------------------------------

    def _override_range(self, slot: HookSlot) -> tuple[int, int]:
        """The overridden sources [lo, hi) within ``slot`` (lo >= hi: none)."""
        assert self.override is not None  # asked only in runs with an override
        first, values = self.override
        return max(slot.start, first), min(slot.stop, first + values.shape[2])

    def _overrides(self, slot: HookSlot) -> bool:
        lo, hi = self._override_range(slot)
        return lo < hi

    def _overridden(self, slot: HookSlot, z: torch.Tensor) -> torch.Tensor:
        """``z`` [batch, pos, width, d_model] with the slot's overridden sources replaced."""
        assert self.override is not None  # asked only in runs with an override
        first, values = self.override
        lo, hi = self._override_range(slot)
        new = values[:, :, lo - first : hi - first].to(z.device, z.dtype)
        if (lo, hi) == (slot.start, slot.stop):
            return new
        # Part of a layer's heads: the others keep their computed outputs.
        before, after = z[:, :, : lo - slot.start], z[:, :, hi - slot.start :]
        return torch.cat([before, new, after], dim=2)

    # --- patching ------------------------------------------------------------------------

    def touches(self, slot: HookSlot) -> bool:
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
            assert self.diff is not None  # allocated for every non-differentiable patched run
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
            assert self.diff is not None  # allocated for every non-differentiable patched run
            return self.diff[:, :, :n_before]
        # The q, k, v and MLP hooks of a layer read the same sources: concatenate once.
        if self.diff_prefix is None or self.diff_prefix.shape[2] != self.n_recorded:
            self.diff_prefix = torch.cat(self.diff_chunks, dim=2)
        return self.diff_prefix[:, :, :n_before]

    def correction(self, slot: HookSlot) -> torch.Tensor:
        """sum_u mask[u, v] (patch_u - current_u) for the destinations v of ``slot``.

        One batched matmul, mask^T [width, n_before] @ diff [batch, pos, n_before, d_model]
        (the einsum 'bpsd,sh->bphd', which torch.einsum runs ~5x slower through permuted
        copies). Returns [batch, pos, width, d_model] for per-head slots, else
        [batch, pos, d_model].
        """
        diff = self._diff_before(slot.n_before)
        assert self.mask is not None  # corrections are made only in patched runs
        mask_t = self.mask[..., : slot.n_before, slot.start : slot.stop].transpose(-1, -2)
        if mask_t.dim() == 4:  # a mask per row and position: [batch, pos, width, n_before]
            out = torch.matmul(mask_t, diff)
        elif mask_t.dim() == 3:  # a mask per batch row: [batch, 1, width, n_before]
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
        if not self.frozen_norms:
            return self.model.run_with_hooks(self.tokens, self.fwd_hooks())
        with self.model.frozen_norms() as norm_hooks:
            # After the run's own hooks: what a norm's hook_in keeps must include their changes
            # (the logits' gradient leaf is added at ln_final.hook_in).
            return self.model.run_with_hooks(self.tokens, self.fwd_hooks() + norm_hooks)


def like(model: ModelAdapter) -> dict:
    """Keyword arguments for new activation tensors of this model."""
    return {"device": model.device, "dtype": model.dtype}


def _check_mask(mask: torch.Tensor, graph: ComputeGraph, batch: int, pos: int) -> torch.Tensor:
    edges = (graph.n_src, graph.n_dst)
    if tuple(mask.shape) in (edges, (batch, *edges), (batch, pos, *edges)):
        return mask
    raise ValueError(
        f"patch mask has shape {tuple(mask.shape)}; expected {edges}, ({batch}, {edges[0]}, "
        f"{edges[1]}) or ({batch}, {pos}, {edges[0]}, {edges[1]}) for this graph and a batch "
        f"of {batch} x {pos}"
    )


def _check_head_rows(rows: torch.Tensor, batch: int, pos: int) -> torch.Tensor:
    if tuple(rows.shape) != (batch, pos) or rows.dtype != torch.long:
        raise ValueError(
            f"head_rows must be a long tensor of shape ({batch}, {pos}), got "
            f"{rows.dtype} {tuple(rows.shape)}"
        )
    if int(rows.min()) < 0 or int(rows.max()) >= batch:
        raise ValueError(f"head_rows must index rows 0..{batch - 1}")
    return rows


def _check_patch_sources(patch: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    if patch.dim() != 4 or patch.shape[0] not in (1, shape[0]) or patch.shape[1:] != shape[1:]:
        raise ValueError(
            f"patch sources have shape {tuple(patch.shape)}; expected {shape} "
            "([batch, pos, n_src, d_model], batch may be 1)"
        )
    return patch
