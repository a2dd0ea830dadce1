"""The embedded model's training (acd.models.train_toy): what weighs, what progress shows."""

from __future__ import annotations

import random
import re
from collections import Counter

import pytest
import torch
from transformers import AutoTokenizer, GPT2LMHeadModel

from acd.models import load_model
from acd.models.resolve import embedded_models_dir
from acd.models.train_toy import (
    build_tokenizer,
    parse_weights,
    report_quality,
    task_vocabulary,
    training_sequences,
    training_tasks,
    with_solved_context,
)
from acd.roles import adapter_patterns, ioi_final_attention
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


def test_solved_context_leaves_the_indirect_object_the_only_name_that_occurs_once():
    """IOI prompts with solved IOI sentences in front: counted by hand on the text, every name
    of the context occurs twice (its subject twice in the sentence, its indirect object once
    in it and once as the filled-in answer), the prompt's own subject twice, and the answer
    name exactly once; both prompts of a pair keep the same context and token length."""
    tokenizer = build_tokenizer(task_vocabulary(training_tasks("tasks/varied")))
    task = load_task("tasks/varied/ioi.toml")
    names = set(task.lists["names"])
    plain = task.prompt_pairs(300, seed=4)
    pairs = with_solved_context(task, plain, random.Random(1), most=2, max_tokens=60)
    sentences = []
    for pair, original in zip(pairs, plain):
        context = pair.clean[: len(pair.clean) - len(original.clean)]
        assert pair.clean == context + original.clean
        assert pair.corrupted == context + original.corrupted
        counts = Counter(w for w in re.findall(r"\w+", pair.clean) if w in names)
        (answer,) = pair.answers
        (wrong,) = pair.wrongs
        assert [n for n, c in counts.items() if c == 1] == [answer.strip()], pair.clean
        assert counts[wrong.strip()] == 2
        assert all(c == 2 for n, c in counts.items() if n != answer.strip())
        # a solved sentence holds four names: its subject twice, its indirect object twice
        in_context = [w for w in re.findall(r"\w+", context) if w in names]
        assert len(in_context) % 4 == 0
        sentences.append(len(in_context) // 4)
    # 0, 1 and 2 sentences all occur (the longest prompts leave room for fewer).
    assert set(sentences) == {0, 1, 2}
    batch = task.encode(pairs, tokenizer)
    assert int(batch.lengths.max()) <= 60
    assert torch.equal(batch.lengths, (batch.corrupted != tokenizer.pad_token_id).sum(1))


def test_prompt_weight_trains_a_template_prompt_on_its_answer_only():
    """``prompt_weight`` weighs an IOI prompt's own next-word predictions: with 0 only the
    answer appended after the prompt (at index 1 + its word count: BOS first) weighs, with
    ``answer_weight``; with 0.5 every prediction from BOS's successor to the prompt's last
    word weighs 0.5; the answer drawn is the same either way (the one correct name)."""
    tokenizer = AutoTokenizer.from_pretrained("acd/models/toy")
    batch = load_task("ioi").make_batch(tokenizer, 5, seed=2)
    ids_all, everything = training_sequences(batch, random.Random(0), 4.0)
    ids_answer, answer = training_sequences(batch, random.Random(0), 4.0, prompt_weight=0.0)
    _, half = training_sequences(batch, random.Random(0), 4.0, prompt_weight=0.5)
    assert torch.equal(ids_all, ids_answer)
    for i in range(5):
        length = 1 + len(tokenizer(batch.pairs[i].clean)["input_ids"])  # BOS, then the words
        expected = torch.zeros(answer.shape[1])
        expected[length] = 4.0
        assert torch.equal(answer[i], expected), i
        assert tokenizer.decode(ids_answer[i, length]).strip() == batch.pairs[i].answers[0].strip()
        expected[1:length] = 0.5
        assert torch.equal(half[i], expected), i
        expected[1:length] = 1.0
        assert torch.equal(everything[i], expected), i


def test_prompt_weight_spec_names_template_tasks_with_weights_of_zero_or_more():
    assert parse_weights("ioi=0,greater-than=0.5") == {"ioi": 0.0, "greater-than": 0.5}
    for bad in ("ioi", "ioi=-1", "ioi=x", "text=0", "ioi=0;induction=1"):
        with pytest.raises(ValueError, match="--prompt-weight"):
            parse_weights(bad)


def test_progress_line_names_the_head_leaning_most_to_io_as_the_loaded_model_measures_it(capsys):
    # report_quality reads the patterns of the transformers GPT-2 being trained; acd's loaded
    # model (another code path to the same attention) must find the same head and figures.
    path = embedded_models_dir() / "toy"
    report_quality(GPT2LMHeadModel.from_pretrained(path), AutoTokenizer.from_pretrained(path))
    shown = re.search(r"END→IO/S a(\d+)\.h(\d+) ([\d.]+)/([\d.]+)", capsys.readouterr().out)
    assert shown, "no END→IO/S figure in the progress line"
    toy = load_model("toy", device="cpu")
    task = load_task("ioi").restricted(prefix_count=3)
    to_io, to_s = ioi_final_attention(
        adapter_patterns(toy), task.make_batch(toy.tokenizer, 40, seed=0)
    )
    layer, head = divmod(int((to_io - to_s).argmax()), to_io.shape[1])
    assert (int(shown[1]), int(shown[2])) == (layer, head)
    assert float(shown[3]) == pytest.approx(float(to_io[layer, head]), abs=0.006)
    assert float(shown[4]) == pytest.approx(float(to_s[layer, head]), abs=0.006)
