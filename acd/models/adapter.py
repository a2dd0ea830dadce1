"""The loaded model as the engine sees it: its architecture (ModelSpec) and the hook
vocabulary and run controls (ModelAdapter), the one seam between the engine and a backend.

Hook vocabulary (names are TransformerLens aliases, which the bridge maps per architecture;
shapes verified on TransformerLens 4.3 for GPT-2, Llama with grouped-query attention and GPT-NeoX):

================  ==================================  =============================================
method            hook name                           shape and meaning
================  ==================================  =============================================
hook_embed_out    blocks.0.hook_resid_pre             [batch, pos, d_model] residual stream after
                                                      the embeddings (token + position for GPT-2)
hook_resid_pre    blocks.{l}.hook_resid_pre           [batch, pos, d_model] residual into block l
hook_q_input      blocks.{l}.hook_q_input             [batch, pos, n_heads, d_model]
hook_k_input      blocks.{l}.hook_k_input             [batch, pos, n_kv_heads, d_model]
hook_v_input      blocks.{l}.hook_v_input             [batch, pos, n_kv_heads, d_model]
hook_head_result  blocks.{l}.attn.hook_result         [batch, pos, n_heads, d_model], W_O applied,
                                                      b_O excluded
hook_attn_out     blocks.{l}.hook_attn_out            [batch, pos, d_model] = sum over heads of
                                                      hook_result + b_O
hook_mlp_in       blocks.{l}.hook_mlp_in              [batch, pos, d_model]
hook_mlp_out      blocks.{l}.hook_mlp_out             [batch, pos, d_model]
hook_final_resid  ln_final.hook_in                    [batch, pos, d_model] input of the final norm
================  ==================================  =============================================

The q/k/v and MLP inputs are *residual-stream* values, before the block's LayerNorm: the bridge
gives each head (or key-value group) its own copy of the residual, fires the hook on it, then
applies the norm per copy. Changing a copy changes only that head's (or group's) input, never
the residual stream itself, which is what edge patching needs. Under grouped-query attention the
k and v inputs are per key-value group: query head h reads group ``h // (n_heads // n_kv_heads)``.

Inside a hook function, ``hook.name`` is the bridge's canonical name, which may differ from the
alias used to register it (``blocks.0.hook_resid_pre`` reports ``blocks.0.hook_in``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from acd.models.resolve import _cached_snapshot
from acd.models.weights import _hash_files, _hash_state_dict, _safetensors_files

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


@dataclass(frozen=True)
class ModelSpec:
    """What the engine needs to know about a model's architecture (plain data, JSON-able)."""

    architecture: str  # the Hugging Face class, e.g. "GPT2LMHeadModel"
    n_layers: int
    n_heads: int
    n_kv_heads: int  # == n_heads without grouped-query attention
    d_model: int
    d_head: int
    d_mlp: int | None
    d_vocab: int
    n_ctx: int
    attn_only: bool
    parallel_attn_mlp: bool  # attention and MLP read the same residual (GPT-NeoX/Pythia, GPT-J)
    has_mlp: bool
    normalization_type: str | None  # "LN", "RMS", ...
    positional_embedding_type: str  # "standard" (learned), "rotary", ...

    @property
    def heads_per_kv_group(self) -> int:
        """Query heads that share one key-value head (1 without grouped-query attention)."""
        return self.n_heads // self.n_kv_heads

    def kv_group(self, head: int) -> int:
        """The key-value group (index into hook_k_input / hook_v_input) query ``head`` reads."""
        return head // self.heads_per_kv_group

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def spec_from_bridge(bridge: TransformerBridge) -> ModelSpec:
    """Read the architecture from a booted bridge's TransformerLens config."""
    cfg = bridge.cfg
    attn_only = bool(getattr(cfg, "attn_only", False))
    n_heads = int(cfg.n_heads)
    return ModelSpec(
        architecture=str(cfg.architecture),
        n_layers=int(cfg.n_layers),
        n_heads=n_heads,
        n_kv_heads=int(getattr(cfg, "n_key_value_heads", None) or n_heads),
        d_model=int(cfg.d_model),
        d_head=int(cfg.d_head),
        d_mlp=_optional_int(getattr(cfg, "d_mlp", None)),
        d_vocab=int(cfg.d_vocab),
        n_ctx=int(cfg.n_ctx),
        attn_only=attn_only,
        parallel_attn_mlp=bool(getattr(cfg, "parallel_attn_mlp", False)),
        has_mlp=not attn_only and all("mlp" in block._modules for block in bridge.blocks),
        normalization_type=getattr(cfg, "normalization_type", None),
        positional_embedding_type=str(getattr(cfg, "positional_embedding_type", "standard")),
    )


# --------------------------------------------------------------------------------------------
# The loaded model


@dataclass
class ModelAdapter:
    """A loaded model: the TransformerLens bridge, its tokenizer, and the hook vocabulary.

    ``name`` is what the user asked for (``toy``, a path, ``gpt2``); ``path`` is where it was
    loaded from (a local directory, or the hub name for an online hub load); ``source`` is one of
    ``embedded``, ``local``, ``hf-cache``, ``hub``, or ``memory`` for a model passed as
    ``hf_model`` (``path`` is then where its tokenizer came from).

    Forward passes take token ids, ``[batch, pos]`` int64 on ``device``, and return logits
    ``[batch, pos, d_vocab]``: ``adapter.bridge(tokens)``, or with hooks
    ``adapter.bridge.run_with_hooks(tokens, fwd_hooks=[(name, fn), ...])``. The bridge never
    adds BOS to token ids; ``adapter.tokenizer(text)`` *does* prepend BOS (TransformerLens loads
    it with ``add_bos_token=True``): pass ``add_special_tokens=False`` for fragments.

    A run from a late layer (the engine's restarts) costs only the late layers inside
    ``with adapter.blocks_from(layer):``, and computes logits at chosen positions only when
    ``adapter.accepts_logits_to_keep``: what the backend can do is asked here, not of the bridge.
    """

    name: str
    path: str
    source: str
    bridge: TransformerBridge = field(repr=False)
    tokenizer: Any = field(repr=False)
    device: torch.device
    dtype: torch.dtype
    spec: ModelSpec
    weights_dir: Path | None = field(default=None, repr=False)
    _weights_hash: str | None = field(default=None, init=False, repr=False)
    # weights_sha256's last digest, with the tensor versions it was computed at.
    _weights_sha256_cache: tuple | None = field(default=None, init=False, repr=False)

    # --- size and identity -------------------------------------------------------------------

    @property
    def n_params(self) -> int:
        """Parameters of the underlying Hugging Face model (tied weights counted once)."""
        return int(self.bridge.n_params_total)

    def weights_hash(self) -> str:
        """sha256 (hex) identifying the weights, computed once.

        For a model loaded from a directory (embedded, local, HF cache, or a hub download found in
        the cache) it is the sha256 of the bytes of its ``*.safetensors`` files, so for a single
        ``model.safetensors`` it equals ``sha256sum model.safetensors``. Otherwise it is the sha256
        of the bridge's state dict (names, dtypes, shapes, bytes), which depends on ``dtype``.
        """
        if self._weights_hash is None:
            files = _safetensors_files(self.weights_dir) if self.weights_dir else []
            if not files and self.source == "hub":
                files = _safetensors_files(_cached_snapshot(self.path))
            self._weights_hash = _hash_files(files) if files else _hash_state_dict(self.bridge)
        return self._weights_hash

    # --- hook vocabulary ---------------------------------------------------------------------

    def _layer(self, layer: int) -> int:
        if not 0 <= layer < self.spec.n_layers:
            raise IndexError(f"layer {layer} out of range for {self.spec.n_layers} layers")
        return layer

    def hook_embed_out(self) -> str:
        """Residual stream after the embeddings (the ``input`` node): [batch, pos, d_model]."""
        return "blocks.0.hook_resid_pre"

    def hook_resid_pre(self, layer: int) -> str:
        """Residual stream entering block ``layer``: [batch, pos, d_model]."""
        return f"blocks.{self._layer(layer)}.hook_resid_pre"

    def hook_q_input(self, layer: int) -> str:
        """Per-head copy of the residual read by the queries: [batch, pos, n_heads, d_model].

        Pre-LayerNorm: the norm is applied to each copy after the hook.
        """
        return f"blocks.{self._layer(layer)}.hook_q_input"

    def hook_k_input(self, layer: int) -> str:
        """Per-KV-group residual copy read by the keys: [batch, pos, n_kv_heads, d_model]."""
        return f"blocks.{self._layer(layer)}.hook_k_input"

    def hook_v_input(self, layer: int) -> str:
        """Per-KV-group residual copy read by the values: [batch, pos, n_kv_heads, d_model]."""
        return f"blocks.{self._layer(layer)}.hook_v_input"

    def hook_head_result(self, layer: int) -> str:
        """Each head's output, W_O applied, b_O excluded: [batch, pos, n_heads, d_model].

        The bridge sums this over heads and adds b_O (``attn_output_bias``) to form
        ``hook_attn_out``; returning a modified tensor from this hook changes that sum.
        """
        return f"blocks.{self._layer(layer)}.attn.hook_result"

    def hook_attn_pattern(self, layer: int) -> str:
        """Attention weights after the softmax: [batch, n_heads, pos (query), pos (key)]."""
        return f"blocks.{self._layer(layer)}.attn.hook_pattern"

    def hook_attn_out(self, layer: int) -> str:
        """Attention block output added to the residual: [batch, pos, d_model]."""
        return f"blocks.{self._layer(layer)}.hook_attn_out"

    def hook_mlp_in(self, layer: int) -> str:
        """Residual read by the MLP, before its LayerNorm: [batch, pos, d_model].

        A copy: changing it changes the MLP's input only, not the residual stream. (The alias
        ``hook_resid_mid`` fires *after* this hook, so it shows the changed value; do not read
        the residual from it while patching the MLP input.)
        """
        return f"blocks.{self._layer(layer)}.hook_mlp_in"

    def hook_mlp_out(self, layer: int) -> str:
        """MLP output added to the residual: [batch, pos, d_model]."""
        return f"blocks.{self._layer(layer)}.hook_mlp_out"

    def hook_final_resid(self) -> str:
        """Residual stream entering the final norm (the ``logits`` node): [batch, pos, d_model]."""
        return "ln_final.hook_in"

    def hook_point(self, name: str):
        """The bridge's HookPoint for a hook name (alias or canonical)."""
        return self.bridge.hook_dict[name]

    def attn_output_bias(self, layer: int) -> torch.Tensor:
        """b_O of layer ``layer``: [d_model], zeros for bias-free attention (Llama).

        Not part of any head's output: it is a constant term of every later destination's input.
        """
        o_proj = self.bridge.blocks[self._layer(layer)].attn.o.original_component
        bias = getattr(o_proj, "bias", None)
        if bias is None:
            return torch.zeros(self.spec.d_model, device=self.device, dtype=self.dtype)
        return bias.detach()

    def vocabulary_hooks(self) -> list[str]:
        """Every hook name of the vocabulary for this model (used to check it at load time)."""
        names = [self.hook_embed_out(), self.hook_final_resid()]
        for layer in range(self.spec.n_layers):
            names += [
                self.hook_resid_pre(layer),
                self.hook_q_input(layer),
                self.hook_k_input(layer),
                self.hook_v_input(layer),
                self.hook_head_result(layer),
                self.hook_attn_out(layer),
            ]
            if self.spec.has_mlp:
                names += [self.hook_mlp_in(layer), self.hook_mlp_out(layer)]
        return names

    # --- running the model (the seam another backend implements) ---------------------------

    causal: bool = field(default=True, init=False, repr=False)
    """Whether position t reads only positions <= t (every Hugging Face decoder): the engine
    then stops a run after the last scored position."""

    def run_with_hooks(
        self, tokens: torch.Tensor, hooks: list[tuple[str, Callable]]
    ) -> torch.Tensor:
        """A forward on ``tokens`` [batch, pos] with ``hooks`` (hook name, fn(x, hook) -> a
        replacement or None) at this adapter's hook names: logits [batch, pos, d_vocab] on
        ``device`` (a model split by device_map may return them from its last device)."""
        return self.bridge.run_with_hooks(tokens, fwd_hooks=list(hooks)).to(self.device)

    def frozen_norms(self) -> AbstractContextManager[list[tuple[str, Callable]]]:
        """Context: every LayerNorm / RMSNorm keeps its forward but has its statistics (mean,
        1/sqrt(var + eps)) constant in the backward pass (acd.models.norms). Yields hooks to
        append after the run's own to ``run_with_hooks``'s list. A model without norms (the
        compiled ones) is refused (ModelError, one line)."""
        from acd.models.norms import frozen_norms

        return frozen_norms(self)

    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """A plain forward without gradients: logits [batch, pos, d_vocab] on ``device``."""
        with torch.no_grad():
            return self.bridge(tokens).to(self.device)

    def run_from_block(
        self,
        residual: torch.Tensor,
        layer: int,
        hooks: list[tuple[str, Callable]],
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Blocks ``layer`` .. n_layers - 1, the final norm and the unembedding only, without
        gradients. ``hooks[0]`` must be at ``hook_resid_pre(layer)`` (or ``hook_final_resid()``
        for ``layer == n_layers``) and replace what arrives there with ``residual``
        [batch, pos, d_model]. Returns logits [batch, pos, d_vocab], or [batch, k, d_vocab] at
        ``positions`` [k] only (computed there only where ``accepts_logits_to_keep``)."""
        kwargs = {}
        if positions is not None and self.accepts_logits_to_keep:
            kwargs["logits_to_keep"] = positions.to(self.device)
        # The input only drives the wrapped model (batch size, length, positions) through
        # blocks ``layer`` onward; the earlier blocks are taken out of its list for this call.
        with torch.no_grad(), self.blocks_from(layer):
            logits = self.bridge.run_with_hooks(residual, fwd_hooks=list(hooks), **kwargs)
        logits = logits.to(self.device)  # from the last device of a model split by device_map
        if positions is not None and not kwargs:
            logits = logits[:, positions.to(logits.device)]
        return logits

    # --- running part of the model ----------------------------------------------------------

    @cached_property
    def accepts_logits_to_keep(self) -> bool:
        """Whether the wrapped Hugging Face model can compute logits at chosen positions only.

        Its forward then takes ``logits_to_keep`` (positions, [k] int64), and the bridge passes
        it through, so logits come back [batch, k, d_vocab] without paying the unembedding at
        every position. Read once from the forward's signature: it does not change.
        """
        return "logits_to_keep" in inspect.signature(self.bridge.original_model.forward).parameters

    @contextmanager
    def blocks_from(self, layer: int) -> Iterator[None]:
        """Context: blocks 0 .. ``layer`` - 1 left out of the wrapped model's list of blocks.

        Why: the bridge's own ``start_at_layer`` swaps the residual in at block ``layer`` but
        still runs every earlier block; removing them from the list the Hugging Face forward
        loops over is what makes a run from a late layer cost only the late layers. Inside,
        a forward runs blocks ``layer`` .. n_layers - 1 (none for ``layer == n_layers``), so the
        caller must supply the residual at ``hook_resid_pre(layer)`` (or at
        ``hook_final_resid()``) with a hook. The full list is restored on exit, even on error.
        """
        if not 0 <= layer <= self.spec.n_layers:
            raise IndexError(f"layer {layer} out of range 0 .. {self.spec.n_layers}")
        parent, name = self._block_list_owner()
        full = getattr(parent, name)
        setattr(parent, name, torch.nn.ModuleList(list(full)[layer:]))
        try:
            yield
        finally:
            setattr(parent, name, full)

    def _block_list_owner(self) -> tuple[torch.nn.Module, str]:
        """The module (and attribute name) holding the wrapped model's list of blocks.

        Found by identity rather than by name (``transformer.h``, ``model.layers``,
        ``gpt_neox.layers``, ...): the bridge puts its block wrappers into the Hugging Face
        model's own list, so the list whose first entry is ``bridge.blocks[0]`` is the one.
        """
        first = self.bridge.blocks[0]
        for module in self.bridge.original_model.modules():
            for name, child in module.named_children():
                if isinstance(child, torch.nn.ModuleList) and len(child) and child[0] is first:
                    return module, name
        raise RuntimeError("cannot find the wrapped model's list of transformer blocks")
