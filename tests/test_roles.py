"""Head-role scores on attention patterns whose roles are known by construction."""

from __future__ import annotations

import torch

from acd.roles import head_roles, ioi_final_attention, scores_on_repeats
from acd.tasks import PromptPair, encode_pairs


def _planted_patterns(tokens: torch.Tensor) -> torch.Tensor:
    """Two layers, two heads: a0.h0 attends to the previous token, a0.h1 to BOS, a1.h0 to the
    token after the earlier copy of the current token (induction), a1.h1 to that copy itself
    (duplicate). Heads fall back to BOS where their target does not exist. [N, 2, 2, T, T]."""
    n, t = tokens.shape
    patterns = torch.zeros(n, 2, 2, t, t)
    for b in range(n):
        for q in range(t):
            earlier = [k for k in range(q) if tokens[b, k] == tokens[b, q]]
            targets = {
                (0, 0): q - 1 if q >= 1 else 0,
                (0, 1): 0,
                (1, 0): earlier[-1] + 1 if earlier else 0,
                (1, 1): earlier[-1] if earlier else 0,
            }
            for (layer, head), k in targets.items():
                patterns[b, layer, head, q, k] = 1.0
    return patterns


def test_planted_heads_get_their_roles_and_nothing_else():
    roles = head_roles(_planted_patterns, range(10, 60), bos=0, n_prompts=8)
    assert roles.previous_token[0, 0] == 1.0
    assert roles.induction[1, 0] == 1.0 and roles.duplicate_token[1, 1] == 1.0
    assert roles.with_role("previous_token") == ["a0.h0"]
    assert roles.with_role("induction") == ["a1.h0"]
    assert roles.with_role("duplicate_token") == ["a1.h1"]
    # The BOS head has no role; the induction head is not a previous-token head.
    assert roles.previous_token[0, 1] < 0.2 and roles.previous_token[1, 0] < 0.2


def test_repeat_scores_by_hand_on_one_sequence():
    # [BOS] x y z x y z; a uniform pattern over keys 0..q gives A[q, k] = 1 / (q + 1).
    t = 7
    uniform = torch.tril(torch.ones(t, t)) / torch.arange(1, t + 1).unsqueeze(1)
    roles = scores_on_repeats(uniform.expand(1, 1, 1, t, t), half=3, offset=1)
    prev = sum(1 / (q + 1) for q in range(1, t)) / (t - 1)
    dup = sum(1 / (q + 1) for q in (4, 5, 6)) / 3
    ind = sum(1 / (q + 1) for q in (4, 5)) / 2
    assert torch.allclose(roles.previous_token, torch.tensor([[prev]]))
    assert torch.allclose(roles.duplicate_token, torch.tensor([[dup]]))
    assert torch.allclose(roles.induction, torch.tensor([[ind]]))


class _WordTokenizer:
    bos_token_id, eos_token_id, unk_token_id, pad_token_id = 0, 0, None, 0
    vocab = ["<bos>", "When", "Mary", "John", "went", "gave", "it", "to"]
    backend_tokenizer = None

    def __call__(self, texts, add_special_tokens=False):
        texts = [texts] if isinstance(texts, str) else texts
        return {"input_ids": [[self.vocab.index(w) for w in t.split()] for t in texts]}

    def __len__(self):
        return len(self.vocab)


def test_ioi_final_attention_finds_io_and_both_subjects():
    pair = PromptPair(
        clean="When Mary John went John gave it to",
        corrupted="When John Mary went Mary gave it to",
        answers=(" Mary",),
        wrongs=(" John",),
    )
    batch = encode_pairs([pair], _WordTokenizer(), "logit_diff")
    t = batch.clean.shape[1]  # BOS + 8 words; IO (Mary) at 2, S (John) at 3 and 5, END at 8
    patterns = torch.zeros(1, 1, 2, t, t)
    patterns[0, 0, 0, -1, 2] = 0.7  # head 0: a name mover, mostly IO
    patterns[0, 0, 0, -1, 0] = 0.3
    patterns[0, 0, 1, -1, 3] = 0.4  # head 1: both subject positions
    patterns[0, 0, 1, -1, 5] = 0.5
    patterns[0, 0, 1, -1, 0] = 0.1
    to_io, to_s = ioi_final_attention(lambda tokens: patterns, batch)
    assert torch.allclose(to_io, torch.tensor([[0.7, 0.0]]))
    assert torch.allclose(to_s, torch.tensor([[0.0, 0.9]]))


def _rule_model(vocab_size: int, rule: str):
    """logits [N, T, V] of a hand-written copying rule at every position: ``current`` puts all
    mass on the word after the latest earlier copy of the current word (textbook induction);
    ``previous`` on the word two after the latest earlier copy of the previous word."""

    def run(tokens: torch.Tensor) -> torch.Tensor:
        n, t = tokens.shape
        logits = torch.zeros(n, t, vocab_size)
        for row in range(n):
            seq = tokens[row].tolist()
            for pos in range(1, t):
                key, shift = (seq[pos], 1) if rule == "current" else (seq[pos - 1], 2)
                back = pos if rule == "current" else pos - 1
                earlier = [m for m in range(back) if seq[m] == key and m + shift <= pos]
                if earlier:
                    logits[row, pos, seq[earlier[-1] + shift]] = 50.0
        return logits

    return run


def test_copy_probes_tell_the_textbook_rule_from_the_previous_word_rule():
    from acd.models.quality import copy_rule_figures
    from acd.models.train_toy import TASK_NAMES, build_tokenizer, task_vocabulary
    from acd.tasks import load_task

    toy_tokenizer = build_tokenizer(task_vocabulary([load_task(n) for n in TASK_NAMES]))
    vocab = len(toy_tokenizer)
    textbook = copy_rule_figures(_rule_model(vocab, "current"), toy_tokenizer, 30, seed=0)
    lookalike = copy_rule_figures(_rule_model(vocab, "previous"), toy_tokenizer, 30, seed=0)
    assert [f.value > 0.99 for f in textbook] == [True, False]
    assert [f.value > 0.99 for f in lookalike] == [False, True]
    assert max(textbook[1].value, lookalike[0].value) < 0.01
