"""Device and dtype: what the caller asked for, checked before anything is loaded."""

from __future__ import annotations

import torch

from acd.models.errors import ModelError


def _in_memory_placement(
    hf_model: torch.nn.Module, device: str | torch.device | None, dtype: str | torch.dtype | None
) -> tuple[str, torch.dtype]:
    """The device and dtype of an in-memory model (its first parameter's), checked against
    what the caller asked for: the model is wrapped as it is, never moved or cast."""
    try:
        first = next(hf_model.parameters())
    except (AttributeError, StopIteration) as err:
        raise ModelError("hf_model has no parameters: pass a Hugging Face model") from err
    if device is not None and not _same_device(torch.device(device), first.device):
        raise ModelError(f"hf_model is on {first.device}, not {device}: move it first")
    if dtype is not None and _resolve_dtype(dtype) != first.dtype:
        raise ModelError(f"hf_model is in {first.dtype}, not {dtype}: cast it first")
    return str(first.device), first.dtype


def _same_device(asked: torch.device, actual: torch.device) -> bool:
    """``cuda`` (no index) matches any CUDA device; otherwise type and index must agree."""
    return asked.type == actual.type and asked.index in (None, actual.index)


def _resolve_device(device: str | torch.device | None) -> str:
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    check_device(device)
    return str(device)


def check_device(device: str | torch.device | None) -> None:
    """Refuse, in one line (ModelError), a device this process cannot use: a name torch does
    not know (``tpu9``), CUDA without a CUDA device, a CUDA index past the last device, MPS
    where it is unavailable, or a kind acd does not run on. None (the default) is always fine.
    Cheap: nothing is allocated, so commands call it before loading anything."""
    if device is None:
        return
    try:
        kind = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ModelError(f"unknown device {str(device)!r}; use cpu, cuda, cuda:N or mps") from None
    if kind.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch has no CUDA support" if torch.version.cuda is None else "no GPU"
            raise ModelError(f"device {str(device)!r}: CUDA is not available ({why}); use cpu")
        count = torch.cuda.device_count()
        if kind.index is not None and kind.index >= count:
            raise ModelError(
                f"device {str(device)!r}: there are {count} CUDA devices (cuda:0 .. "
                f"cuda:{count - 1})"
            )
    elif kind.type == "mps":
        if not torch.backends.mps.is_available():
            raise ModelError(f"device {str(device)!r}: MPS is not available here; use cpu")
    elif kind.type != "cpu":
        raise ModelError(f"device {str(device)!r}: acd runs on cpu, cuda or mps")


def _resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(value, torch.dtype):
        raise ModelError(f"unknown dtype {dtype!r} (use float32, bfloat16 or float16)")
    return value
