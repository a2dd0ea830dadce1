"""The forward pass of a compiled transformer (tracr: a RASP program compiled into weights),
in plain torch, with hook sites at the names of acd's hook vocabulary (acd.models.adapter).

Why a forward of our own: the TransformerLens bridge cannot give per-head q/k/v inputs for a
tracr model (``set_use_split_qkv_input`` raises), and edge patching needs them. The model is
small and fixed, so the forward is written out here, exactly as tracr computes it
(tracr/transformer/model.py, with ``layer_norm=False``):

    resid = W_E[tokens] + W_pos[:pos]                       embeddings, no LayerNorm anywhere
    per block l:
        resid = resid + attn_l(resid)                      softmax over every position
        resid = resid + W_out relu(W_in resid + b_in) + b_out
    logits = resid @ W_U + b_U

Attention is non-causal (tracr's default) unless the config says ``causal: true``; scores are
divided by ``attn_scale`` (default sqrt(d_head), tracr's). No key is masked, PAD included (as
in the assembled tracr models acd/models/compile_tracr.py writes; a restart from a cached
residual would have no tokens to find pads by): every position of a prompt is attended to, so
padded prompts are not what tracr computes on the unpadded ones.

Hook sites, each ``fn(x, hook=site) -> replacement or None``, fired in forward order, several
functions on one site in the order they were registered (each sees the previous one's output):

==============================  =================================================================
site                            tensor
==============================  =================================================================
blocks.{l}.hook_resid_pre       [batch, pos, d_model] residual entering block l (l = 0: the
                                embeddings, the ``input`` node)
blocks.{l}.hook_q_input         [batch, pos, n_heads, d_model] a copy of the residual per head,
blocks.{l}.hook_k_input         read by that head's W_Q (W_K, W_V) only: changing one head's
blocks.{l}.hook_v_input         copy changes nothing else
blocks.{l}.attn.hook_pattern    [batch, n_heads, pos (query), pos (key)] after the softmax
blocks.{l}.attn.hook_result     [batch, pos, n_heads, d_model] each head's output, W_O applied,
                                b_O excluded
blocks.{l}.hook_attn_out        [batch, pos, d_model] sum over heads of the results + b_O
blocks.{l}.hook_mlp_in          [batch, pos, d_model] a copy of the residual read by the MLP only
blocks.{l}.hook_mlp_out         [batch, pos, d_model] the MLP's output added to the residual
unembed.hook_in                 [batch, pos, d_model] the final residual, read by W_U
==============================  =================================================================
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import nn

from acd.errors import AcdError

# fn(x, hook=site) -> a replacement for x, or None to keep it
HookFn = Callable[..., torch.Tensor | None]


class CompiledModelError(AcdError):
    """A compiled model asked for something it does not have (a hook, a position, a token)."""


# --------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class CompiledConfig:
    """The architecture of a compiled program, as its ``config.json`` states it."""

    name: str
    n_layers: int
    n_heads: int
    d_model: int
    d_head: int
    d_mlp: int
    n_ctx: int
    d_vocab: int  # input vocabulary (token ids the embedding reads), BOS included
    d_vocab_out: int  # output vocabulary (columns of W_U)
    act_fn: str = "relu"
    causal: bool = False
    attn_scale: float | None = None  # the divisor of the attention scores; None: sqrt(d_head)
    output_kind: str = "categorical"  # or "numerical": one output dimension, no argmax
    empty: dict[str, Any] = field(default_factory=dict)  # which heads / MLPs compile to zeros

    @property
    def score_divisor(self) -> float:
        """What the query-key products are divided by (tracr: sqrt(key_size))."""
        return self.attn_scale if self.attn_scale is not None else math.sqrt(self.d_head)


# --------------------------------------------------------------------------------------------
# Hook sites


class HookSite:
    """A named place in the forward where registered functions read or replace a tensor."""

    def __init__(self, name: str):
        self.name = name
        self.fns: list[HookFn] = []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for fn in self.fns:
            out = fn(x, hook=self)
            if out is not None:
                x = out
        return x

    def __repr__(self) -> str:
        return f"HookSite({self.name!r}, {len(self.fns)} functions)"


def hook_site_names(n_layers: int) -> list[str]:
    """Every hook site of an ``n_layers`` compiled model, in forward order."""
    names = []
    for layer in range(n_layers):
        names += [
            f"blocks.{layer}.hook_resid_pre",
            f"blocks.{layer}.hook_q_input",
            f"blocks.{layer}.hook_k_input",
            f"blocks.{layer}.hook_v_input",
            f"blocks.{layer}.attn.hook_pattern",
            f"blocks.{layer}.attn.hook_result",
            f"blocks.{layer}.hook_attn_out",
            f"blocks.{layer}.hook_mlp_in",
            f"blocks.{layer}.hook_mlp_out",
        ]
    return names + ["unembed.hook_in"]


# --------------------------------------------------------------------------------------------
# Weights, under TransformerLens' names (the state dict keys are the safetensors names)


def _weight(*shape: int) -> nn.Parameter:
    """A frozen parameter of ``shape``, filled when the weights are loaded."""
    return nn.Parameter(torch.zeros(*shape), requires_grad=False)


class _Embed(nn.Module):
    def __init__(self, d_vocab: int, d_model: int):
        super().__init__()
        self.W_E = _weight(d_vocab, d_model)


class _PosEmbed(nn.Module):
    def __init__(self, n_ctx: int, d_model: int):
        super().__init__()
        self.W_pos = _weight(n_ctx, d_model)


class _Attention(nn.Module):
    def __init__(self, cfg: CompiledConfig):
        super().__init__()
        heads, d_model, d_head = cfg.n_heads, cfg.d_model, cfg.d_head
        self.W_Q = _weight(heads, d_model, d_head)
        self.W_K = _weight(heads, d_model, d_head)
        self.W_V = _weight(heads, d_model, d_head)
        self.W_O = _weight(heads, d_head, d_model)
        self.b_Q = _weight(heads, d_head)
        self.b_K = _weight(heads, d_head)
        self.b_V = _weight(heads, d_head)
        self.b_O = _weight(d_model)


class _MLP(nn.Module):
    def __init__(self, cfg: CompiledConfig):
        super().__init__()
        self.W_in = _weight(cfg.d_model, cfg.d_mlp)
        self.b_in = _weight(cfg.d_mlp)
        self.W_out = _weight(cfg.d_mlp, cfg.d_model)
        self.b_out = _weight(cfg.d_model)


class _Block(nn.Module):
    def __init__(self, cfg: CompiledConfig):
        super().__init__()
        self.attn = _Attention(cfg)
        self.mlp = _MLP(cfg)


class _Unembed(nn.Module):
    def __init__(self, d_model: int, d_vocab_out: int):
        super().__init__()
        self.W_U = _weight(d_model, d_vocab_out)
        self.b_U = _weight(d_vocab_out)


# --------------------------------------------------------------------------------------------
# The model


class CompiledTransformer(nn.Module):
    """A compiled program's transformer: weights, forward, and hook sites.

    Offers the part of the TransformerLens bridge's interface that acd calls on
    ``ModelAdapter.bridge``: ``model(tokens)`` -> logits, ``run_with_hooks(tokens,
    fwd_hooks=[(name, fn)])``, the ``hooks(fwd_hooks)`` context, ``hook_dict``; plus
    ``run_from_block`` for the engine's restarts.
    """

    def __init__(self, cfg: CompiledConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = _Embed(cfg.d_vocab, cfg.d_model)
        self.pos_embed = _PosEmbed(cfg.n_ctx, cfg.d_model)
        self.blocks = nn.ModuleList([_Block(cfg) for _ in range(cfg.n_layers)])
        self.unembed = _Unembed(cfg.d_model, cfg.d_vocab_out)
        # A plain dict, not modules: hook sites hold no weights and stay out of the state dict.
        self.hook_dict: dict[str, HookSite] = {
            name: HookSite(name) for name in hook_site_names(cfg.n_layers)
        }

    def block_weights(self, layer: int) -> _Block:
        """Block ``layer``'s weights (``blocks[layer]``, typed)."""
        return cast(_Block, self.blocks[layer])

    # --- hooks -------------------------------------------------------------------------------

    def _site(self, name: str) -> HookSite:
        site = self.hook_dict.get(name)
        if site is None:
            raise CompiledModelError(
                f"compiled model {self.cfg.name!r} has no hook {name!r} (no LayerNorm, no "
                "final norm); its hooks are blocks.{l}.hook_resid_pre / hook_q_input / "
                "hook_k_input / hook_v_input / attn.hook_pattern / attn.hook_result / "
                "hook_attn_out / hook_mlp_in / hook_mlp_out and unembed.hook_in"
            )
        return site

    def _fire(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return self.hook_dict[name](x)

    @contextmanager
    def hooks(self, fwd_hooks: Sequence[tuple[str, HookFn]] = ()) -> Iterator[CompiledTransformer]:
        """Context: ``fwd_hooks`` registered (in order, after any already there), removed on
        exit even on error."""
        sites = [self._site(name) for name, _ in fwd_hooks]  # refuse unknown names first
        before = {id(site): (site, list(site.fns)) for site in sites}
        try:
            for site, (_, fn) in zip(sites, fwd_hooks):
                site.fns.append(fn)
            yield self
        finally:
            for site, fns in before.values():
                site.fns = fns

    def run_with_hooks(
        self, tokens: torch.Tensor, fwd_hooks: Sequence[tuple[str, HookFn]] = ()
    ) -> torch.Tensor:
        """``forward(tokens)`` with ``fwd_hooks`` registered for this call only."""
        with self.hooks(fwd_hooks):
            return self(tokens)

    # --- forward -----------------------------------------------------------------------------

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids [batch, pos] -> logits [batch, pos, d_vocab_out]."""
        residual = self.embed_tokens(tokens)
        for layer in range(self.cfg.n_layers):
            residual = self.block(layer, residual)
        return self.unembed_residual(residual)

    def run_from_block(
        self,
        residual: torch.Tensor,
        layer: int,
        fwd_hooks: Sequence[tuple[str, HookFn]] = (),
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Blocks ``layer`` .. n_layers - 1 and the unembedding, from ``residual``
        [batch, pos, d_model] (the residual entering block ``layer``, or for ``layer ==
        n_layers`` the final residual); earlier blocks do not run. The residual passes through
        ``blocks.{layer}.hook_resid_pre`` (``unembed.hook_in``) first, so a hook there sees
        it. Returns logits [batch, pos, d_vocab_out], or [batch, k, d_vocab_out] at
        ``positions`` [k] only (the unembedding is computed there only)."""
        if not 0 <= layer <= self.cfg.n_layers:
            raise IndexError(f"layer {layer} out of range 0 .. {self.cfg.n_layers}")
        with self.hooks(fwd_hooks):
            for index in range(layer, self.cfg.n_layers):
                residual = self.block(index, residual)
            return self.unembed_residual(residual, positions)

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids [batch, pos] -> token + position embeddings [batch, pos, d_model]."""
        self._check_tokens(tokens)
        positions = tokens.shape[1]
        return self.embed.W_E[tokens] + self.pos_embed.W_pos[:positions]

    def _check_tokens(self, tokens: torch.Tensor) -> None:
        """One line instead of an indexing error for ids or lengths the model cannot read."""
        if tokens.dim() != 2:
            raise CompiledModelError(f"token ids must be [batch, pos], not {tuple(tokens.shape)}")
        if tokens.shape[1] > self.cfg.n_ctx:
            raise CompiledModelError(
                f"compiled model {self.cfg.name!r} reads at most {self.cfg.n_ctx} positions "
                f"(BOS included), not {tokens.shape[1]}"
            )
        if tokens.numel() and not (int(tokens.min()) >= 0 and int(tokens.max()) < self.cfg.d_vocab):
            raise CompiledModelError(
                f"token ids of compiled model {self.cfg.name!r} lie in 0 .. {self.cfg.d_vocab - 1}"
            )

    def block(self, layer: int, residual: torch.Tensor) -> torch.Tensor:
        """Block ``layer``: residual [batch, pos, d_model] in, residual out."""
        residual = self._fire(f"blocks.{layer}.hook_resid_pre", residual)
        residual = residual + self.attention(layer, residual)
        return residual + self.mlp(layer, residual)

    def _head_copies(self, name: str, residual: torch.Tensor) -> torch.Tensor:
        """A copy of the residual per head, [batch, pos, n_heads, d_model], through hook
        ``name``. Real copies (not an expanded view), so that a hook may write into one."""
        copies = residual.unsqueeze(2).repeat(1, 1, self.cfg.n_heads, 1)
        return self._fire(name, copies)

    def attention(self, layer: int, residual: torch.Tensor) -> torch.Tensor:
        """Block ``layer``'s attention output [batch, pos, d_model] (its heads' results + b_O)
        from the residual [batch, pos, d_model]."""
        attn = self.block_weights(layer).attn
        prefix = f"blocks.{layer}"
        q_in = self._head_copies(f"{prefix}.hook_q_input", residual)
        k_in = self._head_copies(f"{prefix}.hook_k_input", residual)
        v_in = self._head_copies(f"{prefix}.hook_v_input", residual)
        # [batch, pos, n_heads, d_head] each: head h reads its own copy only
        q = torch.einsum("bphd,hde->bphe", q_in, attn.W_Q) + attn.b_Q
        k = torch.einsum("bphd,hde->bphe", k_in, attn.W_K) + attn.b_K
        v = torch.einsum("bphd,hde->bphe", v_in, attn.W_V) + attn.b_V
        scores = torch.einsum("bqhe,bkhe->bhqk", q, k) / self.cfg.score_divisor
        if self.cfg.causal:
            length = scores.shape[-1]
            later = torch.ones(length, length, dtype=torch.bool, device=scores.device).triu(1)
            scores = scores.masked_fill(later, torch.finfo(scores.dtype).min)
        pattern = self._fire(f"{prefix}.attn.hook_pattern", torch.softmax(scores, dim=-1))
        z = torch.einsum("bhqk,bkhe->bqhe", pattern, v)  # [batch, pos, n_heads, d_head]
        result = torch.einsum("bqhe,hed->bqhd", z, attn.W_O)  # [batch, pos, n_heads, d_model]
        result = self._fire(f"{prefix}.attn.hook_result", result)
        return self._fire(f"{prefix}.hook_attn_out", result.sum(dim=2) + attn.b_O)

    def mlp(self, layer: int, residual: torch.Tensor) -> torch.Tensor:
        """Block ``layer``'s MLP output [batch, pos, d_model] from the residual."""
        mlp = self.block_weights(layer).mlp
        # A copy: a hook that changes the MLP's input must not change the residual stream.
        mlp_in = self._fire(f"blocks.{layer}.hook_mlp_in", residual.clone())
        hidden = torch.relu(mlp_in @ mlp.W_in + mlp.b_in)  # [batch, pos, d_mlp]
        return self._fire(f"blocks.{layer}.hook_mlp_out", hidden @ mlp.W_out + mlp.b_out)

    def unembed_residual(
        self, residual: torch.Tensor, positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Final residual [batch, pos, d_model] -> logits [batch, pos, d_vocab_out], or
        [batch, k, d_vocab_out] at ``positions`` [k] only."""
        residual = self._fire("unembed.hook_in", residual)
        if positions is not None:
            residual = residual[:, positions.to(residual.device)]
        return residual @ self.unembed.W_U + self.unembed.b_U
