"""Boot a TransformerBridge (TransformerLens 4.x) and switch on the hooks the engine needs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from acd.models.errors import OFFLINE_HINT, InvalidModelDir, ModelNotAvailable, UnsupportedModel
from acd.models.resolve import _Resolved

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


def _boot(
    name: str, resolved: _Resolved, device: str | None, dtype: torch.dtype, **placement: Any
) -> TransformerBridge:
    """The one loading call, for every kind of spec; its failures become one-line errors.

    ``placement``: ``device_map`` / ``n_devices`` for a model split across devices (then
    ``device`` is None: the bridge refuses both), or ``hf_model``, an in-memory model to wrap
    (``device`` and ``dtype`` are then its own; the bridge takes its config, not the spec's)."""
    # Imported here, not at module import: transformer_lens takes seconds to import, and
    # `acd models` or `import acd` should not pay for it.
    from safetensors import SafetensorError
    from transformer_lens.model_bridge import TransformerBridge

    try:
        return TransformerBridge.boot_transformers(
            resolved.location, device=device, dtype=dtype, **placement
        )
    except (OSError, ValueError, KeyError, NotImplementedError, SafetensorError) as err:
        reason = _first_line(err)
        if resolved.source == "hub":
            raise ModelNotAvailable(
                f"model {name!r} could not be fetched from the Hugging Face hub ({reason}); "
                f"{OFFLINE_HINT}"
            ) from err
        raise InvalidModelDir(
            f"could not load model {name!r} from {resolved.location}: {reason}"
        ) from err


def _configure_hooks(bridge: TransformerBridge, name: str) -> None:
    """Switch on the hooks the engine needs; eval mode; no gradients on parameters.

    Compatibility mode (``enable_compatibility_mode()``) is deliberately NOT used: it folds the
    LayerNorms into the weights and centres the writing weights and the unembedding, so logits
    move away from Hugging Face's (by ~3e-2 on a random tiny GPT-2) and per-head results live in
    a centred basis with b_V folded into b_O. Everything the engine needs already fires without
    it, on raw Hugging Face numerics (logits equal the plain HF model's to ~1e-7): per-head
    results, pre-LayerNorm split q/k/v inputs, and hook_mlp_in. With ``no_processing=True`` it
    would only add legacy aliases we do not use.
    """
    try:
        bridge.set_use_attn_result(True)
        bridge.set_use_split_qkv_input(True)
    except NotImplementedError as err:
        raise UnsupportedModel(
            f"model {name!r} does not expose per-head attention hooks: {_first_line(err)}"
        ) from err
    bridge.set_use_hook_mlp_in(True)
    _check_pre_norm_fork(bridge, name)
    bridge.eval()
    # The bridge keeps the wrapped HF model outside its module tree: freeze both.
    bridge.requires_grad_(False)
    bridge.original_model.requires_grad_(False)


def _check_pre_norm_fork(bridge: TransformerBridge, name: str) -> None:
    """Refuse models where the q/k/v hooks would fire after the norm instead of before it.

    The bridge forks the residual *before* ln1 only when a block exposes ln1 and its attention
    supports the split fork; otherwise it silently falls back to the normed input, which is not
    a sum of source outputs and would make edge patching wrong.
    """
    for layer, block in enumerate(bridge.blocks):
        ln1 = block.submodules.get("ln1") if block.submodules else None
        attn = block._modules.get("attn")
        ok = (
            ln1 is not None
            and getattr(ln1, "original_component", None) is not None
            and getattr(attn, "supports_split_qkv_fork", False)
        )
        if not ok:
            raise UnsupportedModel(
                f"model {name!r}: block {layer} has no pre-norm q/k/v input fork "
                f"({type(attn).__name__}); acd needs a pre-LayerNorm decoder-only transformer"
            )


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]
