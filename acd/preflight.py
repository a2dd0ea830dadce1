"""Checks of a command's arguments that need no model, run before anything is loaded.

A mistake should cost a second, not the minutes of loading a model and scoring edges: the
command line checks the output folder, the device, the model's name and the number of prompts
(against the task's size and a memory estimate) first, and only then loads the model. Each
check raises AcdError with one line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from acd.errors import AcdError

# Bytes one prompt pair takes on the host besides its token tensors: its text and answers as
# Python objects (a greater-than pair carries ~50 answer strings), the metric values per prompt.
HOST_BYTES_PER_PROMPT = 1024
# Bytes per token of a prompt pair's tensors: clean, corrupted, targets (int64) and the mask.
HOST_BYTES_PER_TOKEN = 32
# Prompts whose length is sampled to estimate the number of tokens of one prompt.
LENGTH_SAMPLE = 16


# --------------------------------------------------------------------------------------------
# Output locations


def check_out_dir(path: str | Path, option: str = "--out") -> None:
    """Refuse an output folder that cannot be written: an existing file, a path through a
    file, or a folder (or its nearest existing parent, where it would be made) that this
    process may not write. Nothing is created: a refused run leaves the disk as it was."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise AcdError(f"{option} {path} is a file, not a folder; give a folder")
    _check_writable(path, path, option)


def check_out_file(path: str | Path, option: str) -> None:
    """Refuse a file to be written (a path stem, a checkpoint) that cannot be: a folder in its
    place, or a folder it would go into that cannot be written (files are replaced by rename,
    so the folder's permission is what counts)."""
    path = Path(path)
    if path.is_dir():
        raise AcdError(f"{option} {path} is a folder; give a file path")
    _check_writable(path.absolute().parent, path, option)


def check_out_stem(stem: str | Path, option: str = "--out") -> None:
    """Refuse a path stem (``figures/ioi`` for ``figures/ioi.svg``, ``.dot``, ...) whose folder
    cannot be written."""
    stem = Path(stem)
    _check_writable(stem.absolute().parent, stem, option)


def _check_writable(folder: Path, path: Path, option: str) -> None:
    """``folder``, or its nearest existing ancestor where it would be made, must be a folder
    this process may write into."""
    base = _nearest_existing(folder)
    if not base.is_dir():
        raise AcdError(f"{option} {path}: {base} is a file, so nothing can be made inside it")
    if not os.access(base, os.W_OK | os.X_OK):
        raise AcdError(f"{option} {path}: {base} is not writable; choose another place")


def _nearest_existing(path: Path) -> Path:
    """The path itself or its nearest ancestor that exists."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


# --------------------------------------------------------------------------------------------
# Memory


@dataclass(frozen=True)
class MemoryEstimate:
    """A lower bound of the memory a run needs, in bytes: ``host`` for the prompts themselves,
    ``device`` for one evaluation forward over ``chunk`` prompts (patch values and their
    difference [chunk, pos, n_src, d_model], and the full, empty-circuit and circuit logits
    [chunk, pos, vocab]). Attribution chunks its prompts to fit (acd.attribution), evaluation
    runs ``batch_size`` prompts at a time, all of them by default."""

    host: int
    device: int
    chunk: int
    tokens: int


def estimate_memory(
    n_prompts: int, tokens: int, config: dict[str, Any], batch_size: int | None
) -> MemoryEstimate | None:
    """The estimate for ``n_prompts`` prompts of ``tokens`` tokens on the model ``config``
    (config.json); None when the config lacks the sizes."""
    sizes = _model_sizes(config)
    if sizes is None:
        return None
    n_src, d_model, vocab, itemsize = sizes
    chunk = min(batch_size or n_prompts, n_prompts)
    per_token = 2 * n_src * d_model + 3 * vocab
    return MemoryEstimate(
        host=n_prompts * (HOST_BYTES_PER_PROMPT + HOST_BYTES_PER_TOKEN * tokens),
        device=chunk * tokens * per_token * itemsize,
        chunk=chunk,
        tokens=tokens,
    )


def check_memory(
    n_prompts: int,
    tokens: int,
    config: dict[str, Any] | None,
    batch_size: int | None,
    device: str | None,
) -> None:
    """Refuse a prompt count whose estimated memory (``estimate_memory``) exceeds what is free:
    host and device memory together on the CPU, each on its own with a GPU. Unknown sizes or
    free memory: no check."""
    from acd.memory import free_memory_bytes

    estimate = estimate_memory(n_prompts, tokens, config, batch_size) if config else None
    if estimate is None:
        return
    on_gpu = device is not None and not str(device).startswith("cpu")
    host_free = free_memory_bytes("cpu")
    device_free = _gpu_memory(device) if on_gpu else None
    if on_gpu:
        needs = [(estimate.host, host_free, "host"), (estimate.device, device_free, str(device))]
    else:
        needs = [(estimate.host + estimate.device, host_free, "host")]
    for need, free, where in needs:
        if free is not None and need > free:
            raise AcdError(
                f"--prompts {n_prompts}: needs at least {_size(need)} of {where} memory "
                f"({_size(estimate.host)} for the prompts, {_size(estimate.device)} to evaluate "
                f"{estimate.chunk} prompts of ~{tokens} tokens at once) but {_size(free)} is "
                "free; use fewer prompts"
                + ("" if estimate.chunk < n_prompts else " or --batch-size N")
            )


def prompt_tokens(pairs: list[Any]) -> int:
    """A lower bound of the tokens in the longest of ``pairs``: its words, plus BOS."""
    return max((len(p.clean.split()) + 1 for p in pairs), default=1)


def _model_sizes(config: dict[str, Any]) -> tuple[int, int, int, int] | None:
    """(sources of the graph, d_model, vocabulary, bytes per element) from a config.json."""
    from acd.graph import ComputeGraph

    def first(*keys: str) -> int | None:
        return next((config[k] for k in keys if isinstance(config.get(k), int)), None)

    d_model = first("hidden_size", "n_embd", "d_model")
    vocab = first("vocab_size", "d_vocab")
    try:
        n_src = ComputeGraph.from_config(config).n_src
    except (ValueError, TypeError, KeyError):
        return None
    if d_model is None or vocab is None:
        return None
    return n_src, d_model, vocab, 4  # float32 unless --dtype says less: a lower bound anyway


def _gpu_memory(device: str | None) -> int | None:
    """The total memory of a CUDA device (free memory is not known before the model loads)."""
    import torch

    try:
        # None: the current CUDA device (what torch.device(None) would fail on).
        which = torch.cuda.current_device() if device is None else torch.device(device)
        return int(torch.cuda.get_device_properties(which).total_memory)
    except (RuntimeError, AssertionError, ValueError):
        return None


def _size(n_bytes: int) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.1f} {unit}"
    return f"{n_bytes / 1e3:.1f} kB"
