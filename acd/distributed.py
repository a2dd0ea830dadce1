"""Data parallelism over prompts with torch.distributed.

Every score and metric acd computes is a sum (or mean) over prompts, so N processes can each
take a contiguous share of the prompts and add their partial sums with one all-reduce. Without
an initialised process group every function here is the one-process identity, so the engine
calls them unconditionally.

Launch with ``torchrun --nproc_per_node=N -m acd discover ...`` (docs/scale.md); the CLI calls
``init_from_env`` and only rank 0 writes files.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_and_size() -> tuple[int, int]:
    """(this process's rank, number of processes); (0, 1) without a process group."""
    if not is_distributed():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def is_main() -> bool:
    """True on rank 0 (and in a single process): the process that writes files and prints."""
    return rank_and_size()[0] == 0


def shard(n: int) -> slice:
    """This rank's contiguous share of ``n`` items (sizes differ by at most one; a rank may get
    none when n < world size). Ranks in order cover 0..n-1 exactly once."""
    rank, size = rank_and_size()
    base, extra = divmod(n, size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (1 if rank < extra else 0))


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of ``tensor`` over all ranks (a new tensor, same device/dtype).

    The sum is computed on the backend's device (CUDA for nccl, the CPU for gloo) and the result
    moved back, so callers may pass CPU score accumulators under nccl.
    """
    if not is_distributed():
        return tensor.clone()
    out = _to_backend(tensor.detach()).clone().contiguous()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.to(tensor.device)


def all_gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``tensor`` [n_rank, ...] along dim 0, in rank order.

    With ``shard`` this puts per-prompt values back in prompt order. Ranks may hold different
    numbers of rows (including none); the trailing shape and dtype must agree. The result is on
    ``tensor``'s device.
    """
    if not is_distributed():
        return tensor.clone()
    _, size = rank_and_size()
    local = _to_backend(tensor.detach())
    counts = [torch.zeros(1, dtype=torch.long, device=local.device) for _ in range(size)]
    dist.all_gather(counts, torch.tensor([local.shape[0]], device=local.device))
    longest = int(max(int(c) for c in counts))
    padded = local.new_zeros((longest, *local.shape[1:]))
    padded[: local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in range(size)]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([part[: int(c)] for part, c in zip(parts, counts)]).to(tensor.device)


def _to_backend(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` on a device the process group's backend can reduce: nccl reduces CUDA tensors
    only (this rank's current GPU), gloo CPU ones."""
    if dist.get_backend() == "nccl":
        return tensor.to(torch.device("cuda", torch.cuda.current_device()))
    return tensor.cpu()


def init_from_env() -> bool:
    """Join the process group described by torchrun's environment (RANK, WORLD_SIZE,
    MASTER_ADDR, ...), if there is one and it is not joined yet. Backend: nccl when CUDA is
    available, gloo otherwise. Returns whether a process group of more than one process is
    active afterwards."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            local_rank = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
    return is_distributed()


def shard_batch(batch):
    """This rank's contiguous share of a PromptBatch (anything with ``len`` and ``select``); the
    whole batch in one process. Every rank must pass the same batch."""
    return batch.select(shard(len(batch)))
