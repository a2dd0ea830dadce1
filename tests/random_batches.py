"""Random prompt batches for tests on tiny models with random weights."""

from __future__ import annotations

import torch

from acd.tasks import PromptBatch


def random_batch(n: int, pos: int, *, seed: int = 0, d_vocab: int = 50) -> PromptBatch:
    """``n`` full-length pairs of random clean/corrupted token ids (1 .. d_vocab - 1), scored
    at the last position by the logit difference of a random answer and a random wrong token.

    Built from token ids, not by a task: the ids are random, there is no text to encode.
    """
    generator = torch.Generator().manual_seed(seed)
    clean, corrupted = torch.randint(1, d_vocab, (2, n, pos), generator=generator)
    answers = torch.randint(1, d_vocab, (2, n, 1), generator=generator)
    return PromptBatch.from_token_ids(
        clean, corrupted, correct=answers[0], wrong=answers[1], metric="logit_diff"
    )
