"""Weights: sha256 identities of a model's weights, and parameter counts from safetensors.

Two hashes, for two questions. ``ModelAdapter.weights_hash`` (``_hash_files``, or
``_hash_state_dict`` when there are no files) names the files a model was loaded from;
``weights_sha256`` hashes the weights in memory, the same on every device.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

    from acd.models.adapter import ModelAdapter


def _safetensors_files(directory: Path | None) -> list[Path]:
    if directory is None or not directory.is_dir():
        return []
    return sorted(directory.glob("*.safetensors"))


def _hash_files(files: list[Path]) -> str:
    """sha256 over the files' bytes, in name order (one file: equals ``sha256sum``)."""
    digest = hashlib.sha256()
    for path in files:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _hash_state_dict(bridge: TransformerBridge) -> str:
    """sha256 over the bridge's state dict: names, dtypes, shapes and raw bytes, in name order."""
    digest = hashlib.sha256()
    state = bridge.state_dict()
    for key in sorted(state):
        tensor = state[key].detach().to("cpu").contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def weights_sha256(model: ModelAdapter) -> str:
    """sha256 (hex) of a loaded model's weights, the same on every device.

    Hashes the state dict (parameters and persistent buffers) of the Hugging Face model the
    bridge wraps, in sorted name order: for each tensor its name, dtype and shape, then its raw
    bytes, copied to the CPU one tensor at a time so a model on a GPU never needs a second copy
    in host memory. The bytes depend on the dtype (a model loaded in bfloat16 hashes differently
    from the same model in float32); tied weights are hashed under each of their names.
    Unlike ``ModelAdapter.weights_hash`` it never reads files, so it also identifies weights
    changed in memory.
    """
    module = getattr(model.bridge, "original_model", None)
    state = (model.bridge if module is None else module).state_dict()
    # The digest is kept with a key of every tensor's storage and version counter: an in-place
    # change bumps the counter (also under no_grad), a replaced tensor changes the storage, so
    # a changed model is always hashed again, and an unchanged one (the next discover, a
    # checkpoint header) costs no second pass over its bytes.
    key = tuple(
        (name, t.data_ptr(), t._version, t.dtype, tuple(t.shape)) for name, t in state.items()
    )
    cached = getattr(model, "_weights_sha256_cache", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(_raw_bytes(tensor))
    model._weights_sha256_cache = (key, digest.hexdigest())
    return model._weights_sha256_cache[1]


def _raw_bytes(tensor: torch.Tensor) -> memoryview:
    """The tensor's bytes in memory order, as a buffer (any dtype, bfloat16 and bool included:
    numpy has no bfloat16, so the bytes are reinterpreted as uint8 before leaving torch)."""
    flat = tensor.to("cpu").contiguous().reshape(-1)
    # numpy arrays export the buffer protocol; their stubs do not say so.
    return memoryview(cast(Any, flat.view(torch.uint8).numpy()))


def safetensors_n_params(directory: Path) -> int | None:
    """Parameter count read from the ``*.safetensors`` headers alone (no tensor data is read).

    The format starts with an 8-byte little-endian header length, then a JSON header mapping
    each tensor name to its dtype, shape and offsets.
    """
    files = _safetensors_files(directory)
    if not files:
        return None
    total = 0
    for path in files:
        with open(path, "rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(header_len))
        for key, entry in header.items():
            if key != "__metadata__":
                n = 1
                for dim in entry["shape"]:
                    n *= dim
                total += n
    return total
