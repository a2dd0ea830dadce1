"""Random prompt batches for tests on tiny models with random weights."""

from __future__ import annotations

import torch

from acd.tasks import PromptBatch


def random_batch(n: int, pos: int, *, seed: int = 0, d_vocab: int = 50) -> PromptBatch:
    """``n`` full-length pairs of random clean/corrupted token ids (1 .. d_vocab - 1), scored
    at the last position by the logit difference of a random answer and a random wrong token.

    Built directly, not by a task: the tiny test tokenizer's unknown token is its BOS, which the
    task encoder's vocabulary check would refuse.
    """
    generator = torch.Generator().manual_seed(seed)
    clean, corrupted = torch.randint(1, d_vocab, (2, n, pos), generator=generator)
    answers = torch.randint(1, d_vocab, (2, n, 1), generator=generator)
    score_mask = torch.zeros(n, pos, dtype=torch.bool)
    score_mask[:, -1] = True
    ones = torch.ones(n, 1, dtype=torch.bool)
    return PromptBatch(
        clean=clean,
        corrupted=corrupted,
        lengths=torch.full((n,), pos),
        score_mask=score_mask,
        targets=torch.zeros(n, pos, dtype=torch.long),
        correct=answers[0],
        correct_mask=ones,
        wrong=answers[1],
        wrong_mask=ones,
        metric="logit_diff",
    )
