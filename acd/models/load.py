"""Load a model: the embedded default, a local Hugging Face directory, or a hub name.

All three go through one call, ``TransformerBridge.boot_transformers(path_or_name)``
(TransformerLens 4.x), so the offline path (embedded model, local directory) exercises the same
code as ``gpt2`` from the hub. The bridge wraps the plain Hugging Face model and keeps its raw
weights; ``load_model`` switches on the hooks the engine needs and returns a ``ModelAdapter``
that describes them.

The steps live in modules of one job each; this module puts them together, and re-exports
their public names so that ``from acd.models.load import ...`` keeps working:

- ``acd.models.adapter``: ModelSpec, spec_from_bridge, ModelAdapter (the hook vocabulary);
- ``acd.models.resolve``: what a spec names (embedded, local, HF cache, hub), model_config;
- ``acd.models.device``: device and dtype resolution, check_device;
- ``acd.models.boot``: booting the TransformerBridge and switching on its hooks;
- ``acd.models.weights``: weight hashes (weights_sha256) and safetensors parameter counts;
- ``acd.models.listing``: what is available offline (list_models, ``acd models``);
- ``acd.models.errors``: the ModelError family;
- ``acd.models.compiled``: compiled programs (tracr), which load without the bridge.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch

from acd.models.adapter import ModelAdapter, ModelSpec, spec_from_bridge
from acd.models.boot import _boot, _configure_hooks
from acd.models.compiled import compiled_model_dir, load_compiled_model, refuse_placement
from acd.models.device import _in_memory_placement, _resolve_device, _resolve_dtype, check_device
from acd.models.errors import (
    OFFLINE_HINT,
    InvalidModelDir,
    ModelError,
    ModelNotAvailable,
    UnsupportedModel,
)
from acd.models.listing import ModelInfo, list_models
from acd.models.resolve import (
    HUB_PROBE_TIMEOUT_S,
    TOKENIZER_FILES,
    _resolve,
    _Resolved,
    embedded_model_names,
    embedded_models_dir,
)
from acd.models.resolve import model_config as _hf_model_config
from acd.models.weights import safetensors_n_params, weights_sha256

__all__ = [
    "DEFAULT_MODEL",
    "HUB_PROBE_TIMEOUT_S",
    "OFFLINE_HINT",
    "TOKENIZER_FILES",
    "InvalidModelDir",
    "ModelAdapter",
    "ModelError",
    "ModelInfo",
    "ModelNotAvailable",
    "ModelSpec",
    "UnsupportedModel",
    "check_device",
    "embedded_model_names",
    "embedded_models_dir",
    "list_models",
    "load_model",
    "model_config",
    "safetensors_n_params",
    "spec_from_bridge",
    "weights_sha256",
]

# The embedded model the engine uses when the user names none.
DEFAULT_MODEL = "toy"


def load_model(
    spec: str | os.PathLike = DEFAULT_MODEL,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    *,
    device_map: str | dict[str, str | int] | None = None,
    n_devices: int | None = None,
    hf_model: torch.nn.Module | None = None,
) -> ModelAdapter:
    """Load a model by embedded name, local Hugging Face directory, or hub name.

    Or wrap a Hugging Face model already in memory (``hf_model``), e.g. one built with random
    weights directly on a GPU for a benchmark, so that it is never written to disk.

    Args:
        spec: ``toy`` (an embedded model), ``/path/to/hf_dir``, or a hub name such as ``gpt2``;
            or a compiled program (tracr): its directory, or ``compiled/<name>`` for a shipped
            one, loaded as an ``acd.models.compiled.CompiledAdapter`` (no placement options).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...; default CUDA when available, else CPU.
            Not together with ``device_map`` or ``n_devices`` > 1.
        dtype: ``torch.float32`` (default), ``torch.bfloat16``, ... or their names as strings.
        device_map: a model too big for one GPU, split across devices by Hugging Face
            Accelerate: ``"auto"``, ``"balanced"``, or a dict from module names to devices
            (``{"": "cpu"}`` puts everything on the CPU). Passed to the bridge's boot, which
            loads the Hugging Face model with it; the adapter's ``device`` is then the
            embedding's device, where token ids and the engine's buffers go (docs/scale.md).
        n_devices: split the model evenly across this many CUDA devices (the bridge turns it
            into a balanced device_map); 1 or None: one device.
        hf_model: a Hugging Face causal LM (``LlamaForCausalLM(config)``, ...) to wrap as it
            is: it stays on its device(s) in its dtype, and the adapter's ``device`` and
            ``dtype`` are those of its first parameter (``device`` / ``dtype``, if given, must
            agree). ``spec`` then only says where the tokenizer comes from: a directory with a
            tokenizer (weights not needed) or a hub name; the architecture is read from
            ``hf_model.config``. The model is changed in place: eval mode, parameters frozen,
            eager attention (the bridge's hooks need it). Not with ``device_map`` /
            ``n_devices``: place the model before passing it. ``source`` is ``memory`` and
            ``weights_hash()`` hashes the state dict.

    Raises:
        ModelNotAvailable: a hub name that cannot be fetched and is not cached.
        InvalidModelDir: a path that is not a Hugging Face model directory.
        UnsupportedModel: an architecture without the per-head hooks the engine needs.
        ModelError: ``hf_model`` with ``device_map`` / ``n_devices``, or with a ``device`` or
            ``dtype`` other than its own.
    """
    name = str(spec)
    compiled = compiled_model_dir(name)
    if compiled is not None:
        refuse_placement(name, device_map=device_map, n_devices=n_devices, hf_model=hf_model)
        return load_compiled_model(name, compiled[0], compiled[1], device, dtype)
    if hf_model is not None:
        if device_map is not None or n_devices is not None:
            raise ModelError("hf_model is already placed: pass it without device_map / n_devices")
        device, dtype = _in_memory_placement(hf_model, device, dtype)
    resolved = _resolve(name, need_weights=hf_model is None)
    if hf_model is not None:
        # The weights are the in-memory ones, not whatever files sit next to the tokenizer.
        resolved = _Resolved("memory", resolved.location, None)
    split = device_map is not None or (n_devices is not None and n_devices > 1)
    if split and device is not None:
        raise ModelError("pass either device or device_map / n_devices, not both")
    device = None if split else _resolve_device(device)
    dtype = _resolve_dtype(dtype)
    placement = {"device_map": device_map, "n_devices": n_devices} if split else {}
    if hf_model is not None:
        placement["hf_model"] = hf_model
    bridge = _boot(name, resolved, device, dtype, **placement)
    _configure_hooks(bridge, name)
    adapter = ModelAdapter(
        name=name,
        path=resolved.location,
        source=resolved.source,
        bridge=bridge,
        tokenizer=bridge.tokenizer,
        device=torch.device(bridge.cfg.device or "cpu"),
        dtype=dtype,
        spec=spec_from_bridge(bridge),
        weights_dir=resolved.weights_dir,
    )
    missing = [h for h in adapter.vocabulary_hooks() if h not in bridge.hook_dict]
    if missing:
        raise UnsupportedModel(
            f"model {name!r} ({adapter.spec.architecture}) lacks hooks the engine needs: "
            f"{', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}"
        )
    return adapter


def model_config(spec: str | os.PathLike) -> dict[str, Any] | None:
    """The config.json of the model ``spec`` names, read without loading the model: a compiled
    program's own, else ``acd.models.resolve.model_config``'s (which see)."""
    compiled = compiled_model_dir(str(spec))
    if compiled is None:
        return _hf_model_config(spec)
    try:
        config = json.loads((compiled[1] / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None
