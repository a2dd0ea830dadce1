"""Tasks: prompt generation, tokenization and validation, on the toy tokenizer and a BPE one."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from acd.errors import TaskError
from acd.models.train_toy import TASK_NAMES, build_tokenizer, task_vocabulary
from acd.tasks import (
    BATCH_TENSOR_FIELDS,
    InductionTask,
    PromptBatch,
    PromptPair,
    TemplateTask,
    list_tasks,
    load_task,
    tasks_dir,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def toy_tokenizer():
    return build_tokenizer(task_vocabulary([load_task(n) for n in TASK_NAMES]))


@pytest.fixture(scope="module")
def bpe_tokenizer():
    """A byte-level BPE in GPT-2's style (leading-space tokens such as ' Mary'), trained here
    on the task texts so that names and years are single tokens, as in GPT-2."""
    tasks = [load_task(n) for n in TASK_NAMES]
    corpus = []
    for t in tasks:
        corpus += [p.clean + "".join(p.answers[:3]) for p in t.prompt_pairs(300, seed=7)]
        corpus += [p.corrupted for p in t.prompt_pairs(300, seed=7)]
    corpus += [" ".join(f"{y:02d}" for y in range(100))] * 3  # every two-digit year a token
    pool = load_task("induction").pool
    corpus += pool + [" ".join(pool)] * 3  # every pool word a token, with and without a space
    tok = Tokenizer(models.BPE())
    # Digit pairs split off first, as GPT-2 splits the years Hanna et al. use ("1732" -> 17 32).
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"\d\d"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=2000,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>"
    )


def test_shipped_tasks_are_listed():
    names = [t.name for t in list_tasks()]
    assert names == ["greater-than", "induction", "ioi"]
    assert all(t.description for t in list_tasks())


def test_unknown_task_names_the_choices():
    with pytest.raises(TaskError, match="unknown task 'iio'.*ioi"):
        load_task("iio")


@pytest.mark.parametrize("name", TASK_NAMES)
def test_prompt_pairs_are_deterministic_in_the_seed(name):
    task = load_task(name)
    assert task.prompt_pairs(20, seed=3) == task.prompt_pairs(20, seed=3)
    assert task.prompt_pairs(20, seed=3) != task.prompt_pairs(20, seed=4)


def _ioi_names(text: str, names: set[str]) -> list[str]:
    return [w for w in re.findall(r"\w+", text) if w in names]


def test_ioi_pairs_follow_the_abba_baba_and_abc_rules():
    task = load_task("ioi")
    assert isinstance(task, TemplateTask)
    names = set(task.lists["names"])
    orders = set()
    for p in task.prompt_pairs(200, seed=0):
        clean = _ioi_names(p.clean, names)
        corrupted = _ioi_names(p.corrupted, names)
        io, s = p.answers[0].strip(), p.wrongs[0].strip()
        # Clean: IO once, S twice, S repeated as the third name.
        assert sorted(clean) == sorted([io, s, s]) and clean[2] == s
        orders.add("ABBA" if clean[0] == io else "BABA")
        # Corrupted: three fresh distinct names, none of IO and S; the rest of the text equal.
        assert len(set(corrupted)) == 3 and not set(corrupted) & {io, s}
        assert re.sub(r"\w+", lambda m: "N" if m[0] in names else m[0], p.clean) == re.sub(
            r"\w+", lambda m: "N" if m[0] in names else m[0], p.corrupted
        )
    assert orders == {"ABBA", "BABA"}


def test_ioi_groups_and_fillers_move_the_names():
    task = load_task("ioi")
    assert isinstance(task, TemplateTask)
    names, fillers = set(task.lists["names"]), set(task.lists["fillers"])
    assert not names & fillers
    assert set(task.group_labels()) == {"ABBA", "BABA"}
    for group in ("ABBA", "BABA"):
        for count in (0, 3, 12):
            for p in task.restricted(group, count).prompt_pairs(30, seed=1):
                words = p.clean.split()
                # Exactly `count` filler words in front, the same in the corrupted prompt.
                assert all(w in fillers for w in words[:count]) and words[count] not in fillers
                assert p.corrupted.split()[:count] == words[:count]
                clean = _ioi_names(p.clean, names)
                io = p.answers[0].strip()
                assert (clean[0] == io) == (group == "ABBA")
    # The shipped task puts no filler in front.
    assert task.prefix_count == (0, 0)
    assert all(p.clean.split()[0] not in fillers for p in task.prompt_pairs(50, seed=2))
    with pytest.raises(TaskError, match="no templates in group"):
        task.restricted("ABC")


def test_greater_than_answers_split_the_years_at_yy():
    for p in load_task("greater-than").prompt_pairs(100, seed=1):
        m = re.fullmatch(r"The \w+ lasted from the year (\d\d)(\d\d) to the year (\d\d)", p.clean)
        assert m and m[1] == m[3]
        yy = int(m[2])
        assert p.corrupted == p.clean.replace(f"year {m[1]}{m[2]}", f"year {m[1]}01")
        assert sorted(int(a) for a in p.answers) == list(range(yy + 1, 100))
        assert sorted(int(w) for w in p.wrongs) == list(range(0, yy + 1))
    task = load_task("greater-than")
    assert isinstance(task, TemplateTask)
    for p in task.restricted(prefix_count=4).prompt_pairs(20, seed=1):
        words = p.clean.split()
        assert all(w in task.lists["fillers"] for w in words[:4]) and words[4] == "The"


def _check_induction_batch(batch) -> tuple[set[int], set[int]]:
    """Every pair repeats its sequence, shares nothing copyable with the corruption, and scores
    the repeat's words 2..L; returns the half lengths and prefix lengths seen."""
    halves, prefixes = set(), set()
    for i, p in enumerate(batch.pairs):
        words, other = p.clean.split(), p.corrupted.split()
        n_prefix = p.score_from_word - 1 - (len(words) - p.score_from_word + 1)
        half = (len(words) - n_prefix) // 2
        halves.add(half)
        prefixes.add(n_prefix)
        prefix, seq = words[:n_prefix], words[n_prefix : n_prefix + half]
        assert words[n_prefix + half :] == seq == other[n_prefix + half :]
        assert other[:n_prefix] == prefix
        corrupted_half = other[n_prefix : n_prefix + half]
        assert not set(corrupted_half) & set(words)
        assert len(set(prefix + seq + corrupted_half)) == n_prefix + 2 * half
        # Scored: the positions of the repeat's words 1..half-1, each predicting the next.
        scored = batch.score_mask[i].nonzero().flatten().tolist()
        start = 1 + n_prefix + half
        assert scored == list(range(start, start + half - 1))
        assert batch.targets[i, scored].tolist() == batch.clean[i, [t + 1 for t in scored]].tolist()
    return halves, prefixes


def test_induction_repeats_and_the_corruption_leaves_nothing_to_copy(toy_tokenizer, tmp_path):
    task = load_task("induction")
    assert isinstance(task, InductionTask)
    assert _check_induction_batch(task.make_batch(toy_tokenizer, 30, seed=2)) == ({10}, {0})
    fixed = task.restricted(7, 3).make_batch(toy_tokenizer, 5, seed=0)
    assert _check_induction_batch(fixed) == ({7}, {3})
    assert fixed.lengths.tolist() == [1 + 3 + 14] * 5
    # Ranges in a task file: half lengths and prefixes drawn per prompt.
    text = Path(task.source).read_text().replace("half_length = 10", "half_length = [3, 24]")
    text = text.replace("prefix_length = 0", "prefix_length = [0, 10]")
    (tmp_path / "induction.toml").write_text(text)
    (tmp_path / "induction_words.txt").write_text("\n".join(task.pool))
    varied = load_task(tmp_path / "induction.toml")
    halves, prefixes = _check_induction_batch(varied.make_batch(toy_tokenizer, 60, seed=2))
    assert len(halves) >= 10 and len(prefixes) >= 5


def test_varied_tasks_move_everything_and_keep_the_shipped_vocabulary(toy_tokenizer):
    from acd.models.train_toy import training_tasks

    varied = training_tasks(str(REPO / "tasks" / "varied"))
    shipped = [load_task(n) for n in TASK_NAMES]
    # A model trained on the varied tasks knows every word of the shipped ones.
    assert set(task_vocabulary(shipped)) <= set(task_vocabulary(varied))
    ioi, gt, induction = varied
    assert isinstance(ioi, TemplateTask) and isinstance(gt, TemplateTask)
    assert isinstance(induction, InductionTask)
    assert ioi.prefix_count == (0, 12) and len(ioi.templates) > len(shipped[0].templates)
    assert gt.prefix_count[1] > 0 and induction.half_lengths == (3, 24)
    names = set(ioi.lists["names"])
    first_name_at = {
        next(i for i, w in enumerate(re.findall(r"\w+", p.clean)) if w in names)
        for p in ioi.prompt_pairs(300, seed=2)
    }
    assert len(first_name_at) >= 10
    _check_induction_batch(induction.make_batch(toy_tokenizer, 40, seed=1))


def test_task_file_ranges_are_checked(tmp_path):
    (tmp_path / "words.txt").write_text("\n".join(f"w{i}" for i in range(30)))
    base = 'name = "x"\nkind = "induction"\npool = "words.txt"\n'
    for bad, message in (
        ("half_length = [5, 3]", "half_length must be"),
        ("half_length = 1", "half_length must be"),
        ('half_length = "ten"', "half_length must be"),
        ("half_length = [3, 12]\nprefix_length = [0, 10]", "needs 34 distinct words"),
        ("prefix_length = -1", "prefix_length must be"),
    ):
        (tmp_path / "t.toml").write_text(base + bad + "\n")
        with pytest.raises(TaskError, match=message):
            load_task(tmp_path / "t.toml")
    (tmp_path / "t.toml").write_text(base + "half_length = [3, 5]\nprefix_length = [0, 2]\n")
    task = load_task(tmp_path / "t.toml")
    assert task.half_lengths == (3, 5) and task.prefix_lengths == (0, 2)


def test_template_prefix_must_name_a_list(tmp_path):
    text = (
        'name = "x"\nkind = "template"\nanswer = " {A}"\nwrong = " {B}"\n'
        '[lists]\nn = { values = ["a", "b"] }\n[variables]\nA = "n"\nB = "n"\n'
        '[prefix]\nlist = "nope"\ncount = [0, 2]\n'
        '[[templates]]\nclean = "{A} {B}"\ncorrupted = "{B} {A}"\n'
    )
    (tmp_path / "t.toml").write_text(text)
    with pytest.raises(TaskError, match=r"\[prefix\] list 'nope'"):
        load_task(tmp_path / "t.toml")
    (tmp_path / "t.toml").write_text(text.replace('"nope"', '"n"'))
    task = load_task(tmp_path / "t.toml")
    assert isinstance(task, TemplateTask)
    counts = {len(p.clean.split()) - 2 for p in task.prompt_pairs(50, seed=0)}
    assert counts == {0, 1, 2}
    assert all(p.clean.split()[:-2] == p.corrupted.split()[:-2] for p in task.prompt_pairs(20))


@pytest.mark.parametrize("tokenizer_name", ["toy_tokenizer", "bpe_tokenizer"])
@pytest.mark.parametrize("name", TASK_NAMES)
def test_batches_decode_back_to_the_prompts(request, tokenizer_name, name):
    tokenizer = request.getfixturevalue(tokenizer_name)
    batch = load_task(name).make_batch(tokenizer, 12, seed=5)
    assert batch.clean.shape == batch.corrupted.shape == batch.score_mask.shape
    for i, p in enumerate(batch.pairs):
        n = int(batch.lengths[i])
        assert batch.clean[i, 0] == tokenizer.bos_token_id
        decoded = tokenizer.decode(batch.clean[i, 1:n])
        assert decoded.replace(" ", "") == p.clean.replace(" ", "")
        # The scored position of IOI / greater-than is the last real token.
        if name != "induction":
            assert batch.score_mask[i].nonzero().flatten().tolist() == [n - 1]
            answers = batch.correct[i][batch.correct_mask[i]].tolist()
            assert [tokenizer.decode([a]).strip() for a in answers] == [
                a.strip() for a in p.answers
            ]


def test_bpe_answers_carry_their_leading_space(bpe_tokenizer):
    batch = load_task("ioi").make_batch(bpe_tokenizer, 5, seed=0)
    for i, p in enumerate(batch.pairs):
        token = bpe_tokenizer.convert_ids_to_tokens(int(batch.correct[i, 0]))
        assert token == "Ġ" + p.answers[0].strip()  # byte-level BPE writes a space as Ġ


def test_unknown_word_is_named(toy_tokenizer, tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(
        json.dumps(
            {
                "clean": "When Mary and Zorblax went",
                "corrupted": "When Tom and John went",
                "answer": " Mary",
                "wrong": " John",
            }
        )
    )
    with pytest.raises(TaskError, match="'Zorblax' is not in the tokenizer's vocabulary"):
        load_task(path).make_batch(toy_tokenizer, 1)


def test_an_unknown_token_that_is_also_bos_is_only_flagged_in_the_text(tmp_path):
    """GPT-2's tokenizer uses <|endoftext|> as BOS and as unknown token: the BOS acd puts in
    front of every prompt must not count as an unknown word."""
    words = ["<|endoftext|>", "When", "Mary", "and", "John", "went", "to"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=words[0]))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=words[0], unk_token=words[0]
    )
    path = tmp_path / "p.jsonl"
    ok = {
        "clean": "When Mary and John went to",
        "corrupted": "When John and Mary went to",
        "answer": " Mary",
        "wrong": " John",
    }
    path.write_text(json.dumps(ok) + "\n")
    assert load_task(path).make_batch(tokenizer, 1).clean[0].tolist() == [0, 1, 2, 3, 4, 5, 6]
    path.write_text(json.dumps({**ok, "clean": "When Mary and Zed went to"}) + "\n")
    with pytest.raises(TaskError, match="'Zed' is not in the tokenizer's vocabulary"):
        load_task(path).make_batch(tokenizer, 1)


def test_length_mismatch_names_both_prompts(toy_tokenizer, tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text(
        "clean,corrupted,answer,wrong\n"
        '"When Mary and John went to the store, John gave a drink to",'
        '"When Tom and Amy went to the store, Kate gave a drink",Mary,John\n'
    )
    with pytest.raises(
        TaskError,
        match=r"clean prompt 'When Mary.*has 15 tokens but its "
        r"corrupted prompt 'When Tom.*has 14",
    ):
        load_task(path).make_batch(toy_tokenizer, 1)


def test_multi_token_answer_is_named(bpe_tokenizer, tmp_path):
    path = tmp_path / "pairs.jsonl"
    row = {
        "clean": "When Mary and John went to the store, John gave a drink to",
        "corrupted": "When Tom and Amy went to the store, Kate gave a drink to",
        "answer": " Maryjohnxyz",
        "wrong": " John",
    }
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(
        TaskError, match="answer ' Maryjohnxyz' after prompt 'When Mary.*not a single token"
    ):
        load_task(path).make_batch(bpe_tokenizer, 1)


def test_eap_ig_csv_with_token_ids(toy_tokenizer, tmp_path):
    mary, john = toy_tokenizer.convert_tokens_to_ids(["Mary", "John"])
    path = tmp_path / "ioi.csv"
    path.write_text(
        "clean,corrupted,correct_idx,incorrect_idx\n"
        '"When Mary and John went to the store, John gave a drink to",'
        f'"When Tom and Amy went to the store, Kate gave a drink to",{mary},{john}\n'
    )
    batch = load_task(path).make_batch(toy_tokenizer, 1)
    assert batch.correct[0, 0] == mary and batch.wrong[0, 0] == john
    assert batch.metric == "logit_diff"


def test_too_many_prompts_from_a_file(toy_tokenizer, tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"clean": "a", "corrupted": "b"}) + "\n")
    with pytest.raises(TaskError, match="has 1 prompt pairs, 5 were asked for"):
        load_task(path).prompt_pairs(5)


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('kind = "template"\n[variables]\nA = "names"\n', "uses list 'names'"),
        ('kind = "magic"\n', "unknown kind 'magic'"),
        ('name = "x"\n', "missing the key 'kind'"),
        ('kind = "template"\nmetric = "acc"\n', "unknown metric 'acc'"),
        (
            'kind = "template"\n[lists]\nn = { values = ["a"] }\n[variables]\nA = "n"\n'
            '[[templates]]\nclean = "{A} {B}"\ncorrupted = "{A}"\n',
            r"\{B\} in '\{A\} \{B\}'",
        ),
        ("kind = [", "not valid TOML"),
    ],
)
def test_bad_task_files_give_one_clear_line(tmp_path, toml, message):
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(TaskError, match=message) as info:
        load_task(path)
    assert "\n" not in str(info.value)


def test_distinct_variables_need_enough_words(tmp_path):
    path = tmp_path / "t.toml"
    path.write_text(
        'kind = "template"\n[lists]\nn = { values = ["a", "b"] }\n'
        '[variables]\nA = "n"\nB = "n"\nC = "n"\n'
        '[constraints]\ndistinct = [["A", "B", "C"]]\n'
        '[[templates]]\nclean = "{A} {B}"\ncorrupted = "{B} {C}"\n'
    )
    with pytest.raises(TaskError, match="too short for the distinct variables"):
        load_task(path).prompt_pairs(1)


def _toml_blocks(markdown: str) -> list[str]:
    return re.findall(r"```toml\n(.*?)```", markdown, flags=re.S)


def test_docs_worked_example_runs(toy_tokenizer, tmp_path):
    """docs/tasks.md's worked example: the TOML and its word list, written out and used."""
    doc = (REPO / "docs" / "tasks.md").read_text()
    blocks = _toml_blocks(doc)
    assert blocks, "docs/tasks.md has no ```toml example"
    (tmp_path / "gifts.txt").write_text(re.search(r"```text\n(.*?)```", doc, flags=re.S)[1])
    (tmp_path / "names.txt").write_text((REPO / "tasks" / "names.txt").read_text())
    (tmp_path / "my_task.toml").write_text(blocks[0])
    task = load_task(tmp_path / "my_task.toml")
    batch = task.make_batch(toy_tokenizer, 8, seed=0)
    assert len(batch) == 8
    assert torch.equal(batch.score_mask.sum(1), torch.ones(8, dtype=torch.long))


# --------------------------------------------------------------------------------------------
# PromptBatch.from_token_ids


def _ids(tokenizer, text: str) -> list[int]:
    """BOS, then the text's token ids: the layout encode_pairs gives."""
    return [tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"]


def _answer_id(tokenizer, prompt: str, answer: str) -> int:
    """The one token ``answer`` adds after ``prompt``."""
    return _ids(tokenizer, prompt + answer)[-1]


def _induction_mask(pairs, lengths: list[int]) -> torch.Tensor:
    """[N, T] bool: from the position before word ``score_from_word`` (after BOS) to the one
    before the last token."""
    mask = torch.zeros(len(pairs), max(lengths), dtype=torch.bool)
    for i, (p, length) in enumerate(zip(pairs, lengths)):
        mask[i, p.score_from_word : length - 1] = True
    return mask


@pytest.mark.parametrize("tokenizer_name", ["toy_tokenizer", "bpe_tokenizer"])
@pytest.mark.parametrize("name", TASK_NAMES)
def test_a_batch_from_token_ids_is_the_encoded_batch(request, tokenizer_name, name):
    tokenizer = request.getfixturevalue(tokenizer_name)
    task = load_task(name)
    pairs = task.prompt_pairs(6, seed=1)
    clean = [_ids(tokenizer, p.clean) for p in pairs]
    # The encoder's padding: the pad token, else EOS (the BPE tokenizer has no pad token).
    pad_id = next(t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id) if t is not None)
    encoded = task.encode(pairs, tokenizer)
    built = PromptBatch.from_token_ids(
        clean,
        [_ids(tokenizer, p.corrupted) for p in pairs],
        correct=[[_answer_id(tokenizer, p.clean, a) for a in p.answers] for p in pairs],
        wrong=[[_answer_id(tokenizer, p.clean, w) for w in p.wrongs] for p in pairs],
        metric=task.metric,
        score_mask=_induction_mask(pairs, [len(r) for r in clean]) if name == "induction" else None,
        pad_id=pad_id,
        pairs=pairs,
        # Spans come from the text (tests/test_spans.py); here they are passed through.
        span_names=encoded.span_names,
        span_index=encoded.span_index,
    )
    for field in BATCH_TENSOR_FIELDS:
        assert getattr(built, field).dtype == getattr(encoded, field).dtype, field
        assert torch.equal(getattr(built, field), getattr(encoded, field)), field
    assert (built.metric, built.pairs, built.span_names) == (
        encoded.metric,
        encoded.pairs,
        encoded.span_names,
    )
    if name == "induction":  # the default targets: each scored position's next token
        assert built.targets[built.score_mask].ne(0).all()


def test_from_token_ids_fills_the_defaults():
    """Ragged rows are right-padded; lengths, the last-token score mask, targets (none at the
    last token) and the answer masks follow from the ids."""
    batch = PromptBatch.from_token_ids(
        [[5, 6, 7], [5, 8]],
        [[5, 9, 7], [5, 9]],
        correct=[[1, 2], [3]],
        metric="logit_diff",
        pad_id=4,
    )
    assert batch.clean.tolist() == [[5, 6, 7], [5, 8, 4]]
    assert batch.corrupted.tolist() == [[5, 9, 7], [5, 9, 4]]
    assert batch.lengths.tolist() == [3, 2]
    assert batch.score_mask.tolist() == [[False, False, True], [False, True, False]]
    assert not batch.targets.any()
    assert batch.correct.tolist() == [[1, 2], [3, 0]]
    assert batch.correct_mask.tolist() == [[True, True], [True, False]]
    assert batch.wrong.tolist() == [[0], [0]] and not batch.wrong_mask.any()
    full = PromptBatch.from_token_ids(
        torch.tensor([[1, 2, 3]]),
        torch.tensor([[1, 3, 3]]),
        correct=torch.tensor([[2]]),
        metric="logprob",
        score_mask=torch.tensor([[True, True, False]]),
    )
    assert full.lengths.tolist() == [3] and full.targets.tolist() == [[2, 3, 0]]
    assert full.correct_mask.tolist() == [[True]]


TWO = torch.tensor([[1, 2, 3], [1, 2, 3]])
BAD_BATCHES = [
    ({"clean": torch.tensor([1, 2, 3])}, "clean token ids must be a non-empty \\[N, T\\] tensor"),
    ({"clean": TWO.float()}, "clean token ids must be integers"),
    ({"corrupted": TWO[:, :2]}, "do not match the clean ones"),
    ({"clean": [[1, 2], [1]], "corrupted": [[1, 2], [1, 2]]}, "do not match the clean ones"),
    ({"clean": [], "corrupted": []}, "at least one prompt"),
    ({"lengths": [3]}, "lengths must have shape \\(2,\\)"),
    ({"lengths": [3, 4]}, "lengths must lie in 1..3"),
    ({"score_mask": torch.ones(2, 2, dtype=torch.bool)}, "score_mask must have shape \\(2, 3\\)"),
    ({"score_mask": torch.ones(2, 3, dtype=torch.long)}, "score_mask must be a bool tensor"),
    ({"lengths": [3, 2], "score_mask": torch.ones(2, 3, dtype=torch.bool)}, "padding of prompt 1"),
    ({"score_mask": torch.zeros(2, 3, dtype=torch.bool)}, "scores no position of prompt 0"),
    ({"targets": torch.zeros(2, 4, dtype=torch.long)}, "targets must have shape \\(2, 3\\)"),
    ({"correct": torch.tensor([5, 6])}, "correct answer ids must be an \\[N, K\\] tensor"),
    ({"wrong": [[5]]}, "wrong answer ids: 1 lists given for 2 prompts"),
    ({"correct": [[5], [-1]]}, "correct answer ids must be non-negative"),
    ({"metric": "accuracy"}, "unknown metric 'accuracy'"),
    ({"pairs": [PromptPair("a", "b")]}, "1 prompt pairs given for 2 prompts"),
]


@pytest.mark.parametrize(("change", "message"), BAD_BATCHES)
def test_bad_token_id_batches_are_one_line_errors(change, message):
    arguments = {"clean": TWO, "corrupted": TWO, "correct": [[5], [6]], "metric": "logit_diff"}
    arguments.update(change)
    clean, corrupted = arguments.pop("clean"), arguments.pop("corrupted")
    with pytest.raises(TaskError, match=message) as caught:
        PromptBatch.from_token_ids(clean, corrupted, **arguments)
    assert "\n" not in str(caught.value)


# --------------------------------------------------------------------------------------------
# Compiled programs' tasks


def test_a_compiled_task_draws_inputs_of_its_symbols_and_scores_every_output():
    from acd.models import load_model
    from acd.tasks import CompiledTask

    task = load_task("compiled/sort")
    assert isinstance(task, CompiledTask) and task.metric == "kl" and task.distinct
    pairs = task.prompt_pairs(40, seed=3)
    assert pairs == task.prompt_pairs(40, seed=3) and pairs != task.prompt_pairs(40, seed=4)
    for pair in pairs:
        clean, corrupted = pair.clean.split(), pair.corrupted.split()
        assert len(clean) == len(corrupted) == task.length == 4
        assert len(set(clean)) == 4 and len(set(corrupted)) == 4  # distinct symbols
        assert set(clean) <= set(task.symbols) and clean != corrupted
    model = load_model("compiled/sort")
    batch = task.make_batch(model.tokenizer, 5, seed=0)
    bos = model.tokenizer.bos_token_id
    assert batch.clean.shape == (5, 5) and bool((batch.clean[:, 0] == bos).all())
    expected = model.tokenizer.convert_tokens_to_ids(task.prompt_pairs(5, 0)[0].clean.split())
    assert batch.clean[0, 1:].tolist() == expected
    assert not batch.score_mask[:, 0].any() and bool(batch.score_mask[:, 1:].all())


def test_every_shipped_compiled_task_matches_its_program():
    """Each task file's symbols are its program's input vocabulary (BOS and PAD excluded) and
    its length fits the program's context."""
    import json

    from acd.models.compiled import compiled_models_dir

    for toml in sorted((tasks_dir() / "compiled").glob("*.toml")):
        task = load_task(toml)
        encodings = json.loads((compiled_models_dir() / toml.stem / "encodings.json").read_text())
        symbols = [t for t in encodings["input"] if t not in (encodings["bos"], encodings["pad"])]
        assert task.program == f"compiled/{toml.stem}" and list(task.symbols) == symbols
        assert 1 <= task.length <= encodings["max_seq_len"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('symbols = ["a b"]', "symbols: expected distinct symbols without spaces"),
        ('symbols = ["a", "a"]', "symbols: expected distinct symbols without spaces"),
        ("symbols = []", "symbols: expected a non-empty list of strings"),
        ("length = 0", "length: expected an integer >= 1"),
    ],
)
def test_bad_compiled_task_files_are_one_line_errors(tmp_path, line, message):
    key = line.split(" = ")[0]
    body = {"symbols": 'symbols = ["a", "b"]', "length": "length = 3"}
    body[key] = line
    path = tmp_path / "bad.toml"
    path.write_text(
        'kind = "compiled"\nprogram = "compiled/x"\nmetric = "kl"\n' + "\n".join(body.values())
    )
    with pytest.raises(TaskError, match=message) as info:
        load_task(path)
    assert "\n" not in str(info.value)
