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

from acd.patching.hooks import HookedRun, HookSlot, destination_hooks, source_hooks
from acd.patching.restart import (
    RestartCache,
    RestartError,
    check_restarts,
    run_and_collect_residuals,
    run_from_layer,
    run_patched_from_layer,
)
from acd.patching.runs import collect_sources, run_and_collect, run_patched, run_with_gradients
from acd.patching.values import ABLATIONS, mean_sources, patch_values, real_positions

__all__ = [
    "ABLATIONS",
    "HookSlot",
    "HookedRun",
    "RestartCache",
    "RestartError",
    "check_restarts",
    "collect_sources",
    "destination_hooks",
    "mean_sources",
    "patch_values",
    "real_positions",
    "run_and_collect",
    "run_and_collect_residuals",
    "run_from_layer",
    "run_patched",
    "run_patched_from_layer",
    "run_with_gradients",
    "source_hooks",
]
