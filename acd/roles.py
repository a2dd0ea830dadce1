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
  A[END, S1] + A[END, S2] over IOI prompts;
- **final-position attention per template variable** (``final_attention_by_variable``): for a
  template task, mean of A[END, p] where p is where a variable's value sits in the prompt; a
  variable that occurs k > 1 times gets one score per occurrence (``S1``, ``S2`` for IOI's
  subject), found from the values the task filled its template with;
- **copying** (after Wang et al. 2022's copy score and Elhage et al. 2021's OV-circuit copying;
  here measured on the forward itself, ``copying_scores``): on the repeated random sequences,
  at each query position q where the head reads something besides BOS (at least 0.1 of its
  attention off position 0), the attention-weighted share of the keys k >= 1 whose token is
  among the COPY_TOP_K tokens whose logits the head's output raises most *directly* (the logits
  of the final residual minus those of the final residual without the head's output at q);
  averaged over those positions. A head whose OV circuit copies what it attends to scores near
  1; a head writing something else near COPY_TOP_K / vocabulary size.

``head_role_scores`` gathers them for a loaded model (``Circuit.node_roles``), and
``role_badges`` gives a head's short labels: a role whose score is at least ROLE_THRESHOLD
(``prev``, ``dup``, ``ind``, ``copy``, ``END→IO`` ...).

Patterns come from a ``PatternsFn``: token ids [N, T] -> attention weights [N, n_layers,
n_heads, T, T] (query, key). ``adapter_patterns`` gives one for a loaded ``ModelAdapter``;
``hf_gpt2_patterns`` for a plain ``transformers`` GPT-2 built with eager attention.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from acd.tasks import PromptBatch, TemplateTask

# tokens [N, T] -> patterns [N, n_layers, n_heads, T(query), T(key)]
PatternsFn = Callable[[torch.Tensor], torch.Tensor]

# A head has a role when more than half of its attention goes where the role says.
ROLE_THRESHOLD = 0.5

# Half lengths of the repeated random sequences the attention roles are measured on.
ROLE_HALF_LENGTHS = (5, 10, 20)

# Copying: the tokens whose direct logits a head raises most, and its sequences (each one
# unembedding per head, so fewer and shorter than for the attention roles).
COPY_TOP_K = 5
COPY_PROMPTS, COPY_HALF_LENGTH = 8, 10

# Badges: role score name -> short label (``role_badges``); per-variable attention scores
# ("end_to_IO") get "END→IO".
BADGES = {
    "previous_token": "prev",
    "duplicate_token": "dup",
    "induction": "ind",
    "copying": "copy",
}


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


def _recorded(model, tokens: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """What a plain forward of a ``ModelAdapter`` on ``tokens`` passes through the hook points
    ``names``, by name (detached, on the model's device)."""
    store: dict[str, torch.Tensor] = {}

    def keep(tensor, hook):
        store[hook.name] = tensor.detach()

    with torch.no_grad():
        model.bridge.run_with_hooks(
            tokens.to(model.device), fwd_hooks=[(name, keep) for name in names]
        )
    return store


def adapter_patterns(model) -> PatternsFn:
    """Attention patterns of a loaded ``ModelAdapter``, read at each layer's pattern hook."""
    names = [model.hook_attn_pattern(layer) for layer in range(model.spec.n_layers)]

    def patterns(tokens: torch.Tensor) -> torch.Tensor:
        store = _recorded(model, tokens, names)
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


def final_attention_by_variable(
    patterns_fn: PatternsFn, task: TemplateTask, tokenizer, n_prompts: int = 50, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Where the final position attends, per template variable: {label: [n_layers, n_heads]}.

    For each of ``n_prompts`` clean prompts of ``task``, each variable's value is looked up by
    token id (with and without a leading space; values that are not one token are skipped) at
    the positions before the final one; a variable found once is labelled by its name, one
    found k > 1 times by its name and occurrence (``S1``, ``S2``). Each label's score is the
    mean of A[END, position] over the prompts that have it.
    """
    pairs = task.prompt_pairs_with_values(n_prompts, seed)
    batch = task.encode([pair for pair, _ in pairs], tokenizer)
    with torch.no_grad():
        patterns = patterns_fn(batch.clean).float()
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    for i, (_, values) in enumerate(pairs):
        end = int(batch.lengths[i]) - 1
        prompt = batch.clean[i, :end].tolist()
        for variable, value in values.items():
            ids = _single_token_ids(tokenizer, value)
            found = [p for p, token in enumerate(prompt) if token in ids]
            for k, position in enumerate(found, start=1):
                label = variable if len(found) == 1 else f"{variable}{k}"
                row = patterns[i, :, :, end, position]  # [L, H]
                sums[label] = sums.get(label, torch.zeros_like(row)) + row
                counts[label] = counts.get(label, 0) + 1
    return {label: sums[label] / counts[label] for label in sums}


def _single_token_ids(tokenizer, word: str) -> set[int]:
    """The ids ``word`` encodes to as one token, with and without a leading space."""
    ids = set()
    for text in (word, " " + word):
        encoded = tokenizer([text], add_special_tokens=False)["input_ids"][0]
        if len(encoded) == 1:
            ids.add(int(encoded[0]))
    return ids


def copy_share(patterns: torch.Tensor, raised: torch.Tensor, tokens: torch.Tensor) -> float:
    """One head's copying score from its patterns [N, T, T], the ids of the tokens its output
    raises most directly at each position [N, T, k], and the token ids [N, T] (module
    docstring): the mean, over positions that put at least 0.1 of the attention off position
    0, of the attention share on keys k >= 1 whose token is in that position's ``raised``."""
    keys = tokens[:, None, 1:]  # [N, 1, T-1]: the key tokens, BOS left out
    hit = (raised[:, :, :, None] == keys[:, :, None, :]).any(dim=2)  # [N, T, T-1]
    attention = patterns[:, :, 1:]
    reads = attention.sum(-1)  # [N, T]
    share = (attention * hit).sum(-1) / reads.clamp_min(1e-12)
    counted = reads >= 0.1
    if not bool(counted.any()):
        return 0.0
    return float(share[counted].mean())


def copying_scores(
    model, vocab_ids: Sequence[int], n_prompts: int = COPY_PROMPTS, seed: int = 0
) -> torch.Tensor:
    """Every head's copying score on ``n_prompts`` repeated random sequences of half length
    COPY_HALF_LENGTH drawn from ``vocab_ids``: [n_layers, n_heads] (module docstring)."""
    bos = model.tokenizer.bos_token_id
    tokens = repeated_random_tokens(vocab_ids, n_prompts, COPY_HALF_LENGTH, seed, bos)
    patterns, results, final = _heads_and_final_residual(model, tokens)
    n_layers, n_heads = patterns.shape[1], patterns.shape[2]
    full = _logits_from_final(model, final)
    scores = torch.zeros(n_layers, n_heads)
    for layer in range(n_layers):
        for head in range(n_heads):
            without = _logits_from_final(model, final - results[:, layer, head])
            raised = (full - without).topk(COPY_TOP_K, dim=-1).indices.cpu()
            scores[layer, head] = copy_share(patterns[:, layer, head], raised, tokens)
    return scores


def _heads_and_final_residual(model, tokens: torch.Tensor):
    """Patterns [N, L, H, T, T], head outputs [N, L, H, T, d_model] and the final residual
    [N, T, d_model] of one plain forward (CPU, float32 patterns)."""
    n_layers = model.spec.n_layers
    names = [model.hook_attn_pattern(layer) for layer in range(n_layers)]
    results = [model.hook_head_result(layer) for layer in range(n_layers)]
    final = model.hook_final_resid()
    store = _recorded(model, tokens, [*names, *results, final])
    patterns = torch.stack([store[name].float().cpu() for name in names], dim=1)
    # hook_result is [N, T, H, d]; heads first, like the patterns
    outputs = torch.stack([store[name].transpose(1, 2) for name in results], dim=1)
    return patterns, outputs, store[final]


def _logits_from_final(model, residual: torch.Tensor) -> torch.Tensor:
    """The final norm and unembedding of a final residual [N, T, d_model]: [N, T, vocab]."""
    n_layers = model.spec.n_layers

    def entry(x, hook):
        return residual.to(x.device)

    return model.run_from_block(residual, n_layers, [(model.hook_final_resid(), entry)]).float()


def roles_apply(model) -> bool:
    """Whether the role scores are defined for ``model``: a causal language model with enough
    ordinary tokens for the repeated random sequences (not, e.g., a compiled RASP program,
    whose few symbols and fixed length the sequences cannot be drawn from)."""
    if not getattr(model, "causal", True) or getattr(model, "tokenizer", None) is None:
        return False
    return len(ordinary_token_ids(model.tokenizer)) >= max(ROLE_HALF_LENGTHS)


def head_role_scores(
    model, task=None, n_prompts: int = 50, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Every head's role scores for ``Circuit.node_roles``: {head name: {role: score}} with
    ``previous_token``, ``duplicate_token``, ``induction``, ``copying`` and, for a template
    task, ``end_to_<label>`` per variable occurrence (``final_attention_by_variable``)."""
    tokenizer = model.tokenizer
    patterns = adapter_patterns(model)
    vocab = ordinary_token_ids(tokenizer)
    roles = head_roles(patterns, vocab, tokenizer.bos_token_id, n_prompts, seed)
    copying = copying_scores(model, vocab, seed=seed)
    per_variable = {}
    if isinstance(task, TemplateTask):
        per_variable = final_attention_by_variable(patterns, task, tokenizer, n_prompts, seed)
    out: dict[str, dict[str, float]] = {}
    for layer, head in roles.heads():
        scores = {
            "previous_token": float(roles.previous_token[layer, head]),
            "duplicate_token": float(roles.duplicate_token[layer, head]),
            "induction": float(roles.induction[layer, head]),
            "copying": float(copying[layer, head]),
        }
        for label, values in per_variable.items():
            scores[f"end_to_{label}"] = float(values[layer, head])
        out[f"a{layer}.h{head}"] = {k: min(1.0, max(0.0, v)) for k, v in scores.items()}
    return out


def role_badges(scores: dict[str, float], threshold: float = ROLE_THRESHOLD) -> list[str]:
    """A head's short labels: every role whose score is at least ``threshold``, in the order
    of BADGES, then the template variables the final position attends to (``END→IO``)."""
    badges = [label for role, label in BADGES.items() if scores.get(role, 0.0) >= threshold]
    for role, value in scores.items():
        if role.startswith("end_to_") and value >= threshold:
            badges.append("END→" + role.removeprefix("end_to_"))
    return badges
