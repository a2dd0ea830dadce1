"""Frozen norms: every LayerNorm / RMSNorm of a model with its statistics held constant in the
backward pass, the forward unchanged (GIM, Edin et al. 2025, "frozen-norm backward rules").

A norm computes y = (x - mu) * s * gamma + beta per position, with mu the mean of x over d_model
(0 for RMSNorm) and s = 1 / sqrt(var + eps) (var the mean of (x - mu)^2). Frozen, its backward
is that of the same map with mu and s constants: dL/dx = dL/dy * gamma * s, elementwise. Where
a norm saturates (a large residual direction dominates var), the true gradient is mostly the
statistics' term, which says little about what a component writes.

Where the bridge computes a norm (TransformerLens 4, checked on GPT-2, Llama, GPT-NeoX):

- ``ln2`` and ``ln_final`` (and any bridge-level norm call): the NormalizationBridge module
  fires ``{name}.hook_in`` on its input and ``{name}.hook_out`` on its output. GPT-2's bridge
  computes the norm itself (``_python_norm_forward``); Llama's and NeoX's call the Hugging Face
  module (``use_native_layernorm_autograd``).
- ``ln1`` of the per-head q/k/v copies (``use_split_qkv_input``): the attention bridge calls
  the *raw* Hugging Face module ``ln1.original_component`` on each copy, with no bridge hook.

So the bridge's ``hook_scale`` cannot freeze the statistics: detaching it would leave the mean's
gradient (LayerNorm), would miss the per-head ln1 calls, and on the native path (Llama, NeoX)
an edited hook_scale makes the bridge rebuild the output from the hooked values, which changes
the logits at rounding scale. Instead the output is replaced by
``y.detach() + (x - x.detach()) * gamma * s`` at both places: ``hook_out`` (with x captured at
``hook_in``, after every earlier hook at that point, so the logits' gradient leaf is included)
and a forward hook on the raw Hugging Face module. ``x - x.detach()`` is exactly zero, so the
forward value is bit-identical, and the gradient is the frozen one. On the native path both
fire (the bridge module calls the raw one); the outer replacement detaches the inner.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch

from acd.models.errors import ModelError

if TYPE_CHECKING:
    from acd.models.adapter import ModelAdapter

# hook functions for ``run_with_hooks``: (hook name, fn(x, hook) -> replacement or None)
Hooks = list[tuple[str, Callable]]


def norm_components(model: ModelAdapter) -> list[tuple[str, Any]]:
    """The model's LayerNorm / RMSNorm bridge components as (name, module), forward order:
    ``blocks.0.ln1``, ``blocks.0.ln2``, ..., ``ln_final``. Empty for a model without norms
    (the compiled models, whose ``bridge`` is no TransformerBridge)."""
    from transformer_lens.model_bridge.generalized_components.normalization import (
        NormalizationBridge,
    )

    hook_dict = getattr(model.bridge, "hook_dict", {})
    norms = []
    for hook_name in hook_dict:
        if not hook_name.endswith(".hook_scale"):
            continue
        name = hook_name.removesuffix(".hook_scale")
        module = model.bridge.get_submodule(name)
        # A hook_scale of another kind of module (none known) is not a norm we can freeze.
        if isinstance(module, NormalizationBridge):
            norms.append((name, module))
    return norms


def check_frozen_norms(model: ModelAdapter) -> None:
    """Refuse (ModelError, one line) ``frozen_norms`` on a model with nothing to freeze.

    Why refuse rather than ignore: the option would change nothing, and a user who asks for it
    on such a model (a compiled tracr program) has most likely mistaken what it is."""
    if not norm_components(model):
        raise ModelError(
            f"model {model.name!r} has no LayerNorm or RMSNorm: frozen_norms has nothing to "
            "freeze; drop it"
        )


@contextmanager
def frozen_norms(model: ModelAdapter) -> Iterator[Hooks]:
    """Context: every norm's statistics are constants in the backward pass (module docstring).

    Yields the bridge-level hooks, which the caller must append *after* its own hooks to the
    run's hook list (so that what they capture at ``hook_in`` includes the caller's changes);
    the raw Hugging Face modules' forward hooks are registered here and removed on exit.
    """
    check_frozen_norms(model)
    hooks: Hooks = []
    handles = []
    try:
        for name, module in norm_components(model):
            rule = _FrozenRule(module)
            if rule.identity:
                continue  # a non-normalizing slot: no statistics
            hooks += _bridge_hooks(name, rule)
            handles.append(
                module.original_component.register_forward_hook(rule.raw_hook, with_kwargs=True)
            )
        yield hooks
    finally:
        for handle in handles:
            handle.remove()


# --------------------------------------------------------------------------------------------
# The backward rule of one norm


class _FrozenRule:
    """The frozen-statistics backward of one NormalizationBridge (and its raw HF module)."""

    def __init__(self, module: Any):
        from transformer_lens.model_bridge.generalized_components.normalization import (
            LayerNormPreBridge,
            RMSNormPreBridge,
        )

        raw = module.original_component
        self.identity = isinstance(raw, torch.nn.Identity)
        self.rms = bool(module.uses_rms_norm)
        # The same eps lookup as the bridge's own norm computation.
        eps = getattr(raw, "eps", None)
        if eps is None:
            eps = getattr(raw, "variance_epsilon", None)
        self.eps = getattr(module.config, "eps", 1e-05) if eps is None else eps
        weight = None
        if not isinstance(module, (LayerNormPreBridge, RMSNormPreBridge)):
            weight = getattr(raw, "weight", None)
        if weight is not None and module.uses_weight_offset:
            weight = 1.0 + weight  # Gemma-style RMSNorm, LayerNorm1P: the weight is 1 + w
        self.weight: torch.Tensor | None = None if weight is None else weight.detach()

    def apply(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``y`` (the norm's output for input ``x``, both [..., d_model]) with its value kept
        bit for bit and the gradient of x -> (x - mu) * s * gamma with mu, s constants."""
        stat = x.detach()
        # Statistics in at least float32, as the bridge and Hugging Face compute them.
        if stat.dtype not in (torch.float32, torch.float64):
            stat = stat.float()
        centered = stat if self.rms else stat - stat.mean(-1, keepdim=True)
        inv_scale = torch.rsqrt(centered.pow(2).mean(-1, keepdim=True) + self.eps)  # [..., 1]
        gain = inv_scale if self.weight is None else inv_scale * self.weight.to(stat.dtype)
        # x - x.detach() is exactly 0 (the value stays y's) with derivative 1 (the gradient is
        # gain's): the straight-through form of the frozen map.
        linear = ((x - x.detach()).to(stat.dtype) * gain).to(y.dtype)
        return y.detach() + linear

    def raw_hook(
        self, module: torch.nn.Module, args: tuple, kwargs: dict, output: torch.Tensor
    ) -> torch.Tensor:
        """Forward hook on the raw HF module (the per-head ln1 calls, the native path)."""
        x = args[0] if args else next(iter(kwargs.values()))
        return self.apply(x, output)


def _bridge_hooks(name: str, rule: _FrozenRule) -> Hooks:
    """``{name}.hook_in`` keeps the norm's input, ``{name}.hook_out`` replaces its output."""
    captured: list[torch.Tensor] = []  # the input of the call in progress

    def keep_input(x: torch.Tensor, hook) -> None:
        captured[:] = [x]

    def freeze_output(y: torch.Tensor, hook) -> torch.Tensor:
        x = captured.pop()
        return rule.apply(x, y)

    return [(f"{name}.hook_in", keep_input), (f"{name}.hook_out", freeze_output)]
