"""Head roles from attention patterns: previous-token, duplicate-token, induction, and where the
final position of a task's prompts attends.

Every score is a mean attention weight, so it lies in [0, 1] and 1 means the head puts all of its
attention where the role says (docs/models.md, "Head roles", gives the formulas):

- **previous-token** (Olsson et al. 2022; TransformerLens' ``detect_head("previous_token_head")``):
  mean over query positions t >= 1 of A[t, t-1];
- **duplicate-token** (Wang et al. 2022, IOI): on a random sequence of L distinct tokens repeated
  once, mean over the second half's positions t of A[t, t-L], the earlier copy of the same token;
- **induction** (Olsson et al. 2022): on the same sequences, mean over the second half's
  positions t (but the last) of A[t, t-L+1], the token *after* the earlier copy;
- **IOI final-position attention** (Wang et al. 2022's name movers): mean of A[END, IO] and of
  A[END, S1] + A[END, S2] over IOI prompts.

Patterns come from a ``PatternsFn``: token ids [N, T] -> attention weights [N, n_layers,
n_heads, T, T] (query, key). ``adapter_patterns`` gives one for a loaded ``ModelAdapter``;
``hf_gpt2_patterns`` for a plain ``transformers`` GPT-2 built with eager attention.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from acd.tasks import PromptBatch

# tokens [N, T] -> patterns [N, n_layers, n_heads, T(query), T(key)]
PatternsFn = Callable[[torch.Tensor], torch.Tensor]

# A head has a role when more than half of its attention goes where the role says.
ROLE_THRESHOLD = 0.5

# Half lengths of the repeated random sequences the attention roles are measured on.
ROLE_HALF_LENGTHS = (5, 10, 20)


@dataclass(frozen=True)
class HeadRoles:
    """Role scores of every head, each [n_layers, n_heads] in [0, 1]."""

    previous_token: torch.Tensor
    duplicate_token: torch.Tensor
    induction: torch.Tensor

    def heads(self) -> list[tuple[int, int]]:
        n_layers, n_heads = self.previous_token.shape
        return [(layer, head) for layer in range(n_layers) for head in range(n_heads)]

    def with_role(self, role: str, threshold: float = ROLE_THRESHOLD) -> list[str]:
        """Names (``a<layer>.h<head>``) of the heads whose ``role`` score is >= ``threshold``.

        ``role`` is ``previous_token``, ``duplicate_token`` or ``induction``.
        """
        scores = getattr(self, role)
        return [
            f"a{layer}.h{head}" for layer, head in self.heads() if scores[layer, head] >= threshold
        ]


def repeated_random_tokens(
    candidates: Sequence[int], n: int, half: int, seed: int, bos: int | None
) -> torch.Tensor:
    """``n`` sequences [BOS] r_1..r_L r_1..r_L of L = ``half`` distinct tokens: [n, 1 + 2L]."""
    rng = random.Random(f"roles:{seed}:{half}")
    rows = []
    for _ in range(n):
        seq = rng.sample(list(candidates), half)
        rows.append(([bos] if bos is not None else []) + seq + seq)
    return torch.tensor(rows, dtype=torch.long)


def scores_on_repeats(patterns: torch.Tensor, half: int, offset: int) -> HeadRoles:
    """Role scores from patterns [N, L, H, T, T] of repeated sequences of half length ``half``
    whose first token sits at position ``offset`` (1 after a BOS token, else 0)."""
    positions = torch.arange(patterns.shape[-1])
    q = positions[1:]
    previous = patterns[..., q, q - 1].mean(dim=(0, -1))
    second = torch.arange(offset + half, offset + 2 * half)  # the repeat's positions
    duplicate = patterns[..., second, second - half].mean(dim=(0, -1))
    before_last = second[:-1]
    induction = patterns[..., before_last, before_last - half + 1].mean(dim=(0, -1))
    return HeadRoles(previous, duplicate, induction)


def head_roles(
    patterns_fn: PatternsFn,
    vocab_ids: Sequence[int],
    bos: int | None,
    n_prompts: int = 50,
    seed: int = 0,
    half_lengths: Sequence[int] = ROLE_HALF_LENGTHS,
) -> HeadRoles:
    """Previous-token, duplicate-token and induction scores, averaged over ``half_lengths``.

    ``vocab_ids`` are the token ids the random sequences draw from (ordinary tokens, no special
    ones); each half has distinct tokens, so every token's earlier copy is unique.
    """
    offset = 1 if bos is not None else 0
    parts = []
    for half in half_lengths:
        tokens = repeated_random_tokens(vocab_ids, n_prompts, half, seed, bos)
        with torch.no_grad():
            parts.append(scores_on_repeats(patterns_fn(tokens).float(), half, offset))
    return HeadRoles(
        *(
            torch.stack([getattr(p, f) for p in parts]).mean(0)
            for f in HeadRoles.__dataclass_fields__
        )
    )


def ioi_final_attention(
    patterns_fn: PatternsFn, batch: PromptBatch
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention from the final position to the IO name and to the S name (both occurrences).

    Returns (to_io, to_s), each [n_layers, n_heads]: means over the prompts in which the IO
    token occurs exactly once and S at least once before the final position (names are found
    by token id, so a name tokenized differently at a sentence start is not counted).
    """
    with torch.no_grad():
        patterns = patterns_fn(batch.clean).float()
    to_io, to_s = [], []
    for i in range(len(batch)):
        end = int(batch.lengths[i]) - 1
        prompt = batch.clean[i, : end + 1]
        io_pos = (prompt == batch.correct[i, 0]).nonzero().flatten()
        s_pos = (prompt == batch.wrong[i, 0]).nonzero().flatten()
        if len(io_pos) != 1 or len(s_pos) == 0:
            continue
        row = patterns[i, :, :, end]  # [L, H, T]
        to_io.append(row[..., io_pos].sum(-1))
        to_s.append(row[..., s_pos].sum(-1))
    if not to_io:
        raise ValueError("no IOI prompt has its IO name as a single, findable token")
    return torch.stack(to_io).mean(0), torch.stack(to_s).mean(0)


def ordinary_token_ids(tokenizer) -> list[int]:
    """Token ids of the tokenizer's vocabulary without its special tokens."""
    special = set(tokenizer.all_special_ids)
    return [i for i in range(len(tokenizer)) if i not in special]


def adapter_patterns(model) -> PatternsFn:
    """Attention patterns of a loaded ``ModelAdapter``, read at each layer's pattern hook."""
    names = [model.hook_attn_pattern(layer) for layer in range(model.spec.n_layers)]

    def patterns(tokens: torch.Tensor) -> torch.Tensor:
        store: dict[str, torch.Tensor] = {}

        def keep(tensor, hook):
            store[hook.name] = tensor.detach()

        with torch.no_grad():
            model.bridge.run_with_hooks(
                tokens.to(model.device), fwd_hooks=[(name, keep) for name in names]
            )
        return torch.stack([store[name].cpu() for name in names], dim=1)

    return patterns


def hf_gpt2_patterns(model) -> PatternsFn:
    """Attention patterns of a ``transformers`` GPT-2.

    Only eager attention returns its weights; GPT-2's attention reads the implementation from
    its config at each forward, so it is switched to eager for these forwards only.
    """

    def patterns(tokens: torch.Tensor) -> torch.Tensor:
        config = model.config
        before = config._attn_implementation
        config._attn_implementation = "eager"
        try:
            with torch.no_grad():
                out = model(tokens, output_attentions=True)
        finally:
            config._attn_implementation = before
        return torch.stack(out.attentions, dim=1)

    return patterns
