"""How many prompts fit in memory: the one chunk-size policy of every prompt loop
(``acd.runner``), and the free memory of a device.

``batch_size`` means the same everywhere: prompts per forward pass. Left unset, the prompts
are chunked so that one chunk's buffers fit in ``MEMORY_FRACTION`` of the free memory
(``auto_batch_size``); chunking never changes a result.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from acd.graph import ComputeGraph
    from acd.models.load import ModelAdapter
    from acd.tasks import PromptBatch

# Default share of the free memory that one prompt chunk's buffers may use (auto_batch_size):
# the estimate is rough, and the allocator fragments, so leave most of it free.
MEMORY_FRACTION = 0.25


def accumulator_dtype(model: ModelAdapter) -> torch.dtype:
    """The dtype scores and metric sums accumulate in for ``model`` (``sum_dtype``)."""
    return sum_dtype(model.dtype)


def sum_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype sums of ``dtype`` values accumulate in: float64 for float64, else float32
    (half precision still sums in float32)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


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
    itemsize = max(torch.finfo(model.dtype).bits, torch.finfo(accumulator_dtype(model)).bits)
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
