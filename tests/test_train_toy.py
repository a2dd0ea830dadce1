"""The embedded model's training data (acd.models.train_toy): which predictions weigh."""

from __future__ import annotations

import random

import torch
from transformers import AutoTokenizer

from acd.models.train_toy import training_sequences
from acd.tasks import load_task


def test_unscored_weight_weighs_all_but_the_repeat_from_its_second_word():
    """An induction prompt of p prefix words and two halves of L: position 0 is BOS, the
    repeat is positions p + L + 1 .. p + 2L; its words from the second on (predictable by
    copying) weigh 1, every earlier word ``unscored_weight`` — by position arithmetic,
    independent of the task's score mask."""
    tokenizer = AutoTokenizer.from_pretrained("acd/models/toy")
    task = load_task("tasks/varied/induction.toml")
    batch = task.make_batch(tokenizer, 6, seed=3)
    _, everything = training_sequences(batch, random.Random(0), 4.0)
    _, repeat = training_sequences(batch, random.Random(0), 4.0, unscored_weight=0.0)
    _, tenth = training_sequences(batch, random.Random(0), 4.0, unscored_weight=0.1)
    for i, pair in enumerate(batch.pairs):
        words = pair.clean.split()
        half = (len(words) - pair.score_from_word + 1) if pair.score_from_word else 0
        prefix = len(words) - 2 * half
        expected = torch.zeros(repeat.shape[1])
        expected[prefix + half + 2 : prefix + 2 * half + 1] = 1.0
        assert torch.equal(repeat[i], expected), i
        assert everything[i, 1 : len(words) + 1].eq(1).all()  # by default: every prediction
        expected[1 : prefix + half + 2] = 0.1  # BOS's successor .. the repeat's first word
        assert torch.equal(tenth[i], expected), i
