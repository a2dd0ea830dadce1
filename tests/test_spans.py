"""Named spans of token positions (docs/tasks.md, "Spans"): the character ranges each task kind
gives its clean prompts, and the [N, T] span index encode_pairs makes of them, checked against
token positions written out by hand for the embedded toy tokenizer and a GPT-2 style BPE."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from acd.errors import TaskError
from acd.tasks import (
    InductionTask,
    PairsTask,
    PromptBatch,
    PromptPair,
    TemplateTask,
    encode_pairs,
    load_task,
)
from acd.tasks.kinds import template_span_names

REPO = Path(__file__).resolve().parents[1]
IOI_SPANS = ("start", "IO", "S1", "S1+1", "S2", "END")
BOS = "<|endoftext|>"
# Prompts whose tokens the BPE below must know as the toy tokenizer does.
IOI_ABBA = "able able When Mary and John went to the store, John gave a drink to"
IOI_BABA = "able Then, John and Mary went to the store. John gave a drink to"
IOI_CORRUPTED = "able able When Tom and Anna went to the store, Paul gave a drink to"
GREATER_THAN = "The war lasted from the year 1732 to the year 17"
GREATER_THAN_CORRUPTED = "The war lasted from the year 1701 to the year 17"
# 58 characters: When 0-4, Mary 5-9, and 10-13, John 14-18, store 31-36, John 38-42, to 56-58.
PAIR_CLEAN = "When Mary and John went to the store, John gave a drink to"
PAIR_CORRUPTED = "When Tom and Anna went to the store, Paul gave a drink to"


@pytest.fixture(scope="module")
def toy_tokenizer():
    """The embedded model's word-level tokenizer (words and punctuation; BOS id 0)."""
    return AutoTokenizer.from_pretrained(REPO / "acd" / "models" / "toy")


@pytest.fixture(scope="module")
def bpe_tokenizer():
    """A byte-level BPE in GPT-2's style ("Ġwar": a word with its leading space; digit pairs
    split off, so " 1732" is "Ġ" "17" "32"), trained on the prompts here so that each word is
    one token."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"\d\d"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1000, special_tokens=[BOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    texts = [IOI_ABBA, IOI_BABA, IOI_CORRUPTED, GREATER_THAN, GREATER_THAN_CORRUPTED, PAIR_CLEAN]
    tok.train_from_iterator(texts * 5, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=BOS)


class WithoutOffsets:
    """A tokenizer seen without its Rust backend: encode_pairs must find the token offsets by
    encoding prefixes of each prompt."""

    def __init__(self, tokenizer: Any):
        self._tokenizer = tokenizer

    def __getattr__(self, name: str) -> Any:
        if name == "backend_tokenizer":
            raise AttributeError(name)
        return getattr(self._tokenizer, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._tokenizer(*args, **kwargs)

    def __len__(self) -> int:
        return len(self._tokenizer)


def tokens_and_spans(batch: PromptBatch, tokenizer: Any, i: int) -> list[tuple[str, str]]:
    """(token, span name) of every real position of prompt i."""
    ids = batch.clean[i, : int(batch.lengths[i])].tolist()
    tokens = tokenizer.convert_ids_to_tokens(ids)
    spans = [batch.span_names[s] for s in batch.span_index[i, : len(ids)].tolist()]
    return list(zip(tokens, spans))


def fixed(task: TemplateTask, values: dict[str, str], template: int, fillers: int) -> TemplateTask:
    """``task`` with one template, one value per variable and ``fillers`` times "able" in front."""
    return replace(
        task,
        lists={
            **task.lists,
            **{var: [value] for var, value in values.items()},
            "fillers": ["able"],
        },
        variables={var: var for var in values},
        distinct=[],
        templates=[task.templates[template]],
        groups=[task.group_labels()[template]],
        prefix_list="fillers",
        prefix_count=(fillers, fillers),
    )


def fixed_ioi(template: int, fillers: int) -> TemplateTask:
    task = load_task("ioi")
    assert isinstance(task, TemplateTask)
    names = {"IO": "Mary", "S": "John", "N1": "Tom", "N2": "Anna", "N3": "Paul"}
    return fixed(task, {**names, "place": "store", "object": "drink"}, template, fillers)


def fixed_greater_than() -> TemplateTask:
    task = load_task("greater-than")
    assert isinstance(task, TemplateTask)
    return fixed(task, {"noun": "war", "XX": "17", "YY": "32"}, 0, 0)


def one_line_error(call: Any, match: str) -> str:
    with pytest.raises(TaskError, match=match) as caught:
        call()
    assert "\n" not in str(caught.value)
    return str(caught.value)


# --------------------------------------------------------------------------------------------
# Template tasks


def test_ioi_abba_prompt_with_fillers_has_the_shipped_spans(toy_tokenizer):
    task = fixed_ioi(template=0, fillers=2)  # "When {IO} and {S} went to the {place}, {S} ..."
    (pair,) = task.prompt_pairs(1)
    assert pair.clean == IOI_ABBA
    # "able able When " 0-15, "Mary and " 15-24, "John" 24-28, " went to the store, " 28-48,
    # "John gave a drink t" 48-67, "o" 67-68.
    assert pair.spans == (
        ("start", 0, 15),
        ("IO", 15, 24),
        ("S1", 24, 28),
        ("S1+1", 28, 48),
        ("S2", 48, 67),
        ("END", 67, 68),
    )
    batch = task.make_batch(toy_tokenizer, 1)
    assert batch.span_names == IOI_SPANS
    assert tokens_and_spans(batch, toy_tokenizer, 0) == [
        (BOS, "start"),
        ("able", "start"),
        ("able", "start"),
        ("When", "start"),
        ("Mary", "IO"),
        ("and", "IO"),
        ("John", "S1"),
        ("went", "S1+1"),
        ("to", "S1+1"),
        ("the", "S1+1"),
        ("store", "S1+1"),
        (",", "S1+1"),
        ("John", "S2"),
        ("gave", "S2"),
        ("a", "S2"),
        ("drink", "S2"),
        ("to", "END"),
    ]


def test_ioi_baba_prompt_puts_io_after_s1_but_keeps_the_declared_order(toy_tokenizer):
    task = fixed_ioi(template=5, fillers=1)  # "Then, {S} and {IO} went to the {place}. {S} ..."
    (pair,) = task.prompt_pairs(1)
    assert pair.clean == IOI_BABA
    assert pair.spans == (
        ("start", 0, 11),
        ("S1", 11, 15),
        ("S1+1", 15, 20),
        ("IO", 20, 44),
        ("S2", 44, 63),
        ("END", 63, 64),
    )
    batch = task.make_batch(toy_tokenizer, 1)
    assert batch.span_names == IOI_SPANS
    assert [span for _, span in tokens_and_spans(batch, toy_tokenizer, 0)] == (
        ["start"] * 4 + ["S1", "S1+1"] + ["IO"] * 6 + ["S2"] * 4 + ["END"]
    )
    assert batch.span_index[0].tolist() == [0] * 4 + [2, 3] + [1] * 6 + [4] * 4 + [5]


def test_abba_and_baba_prompts_share_one_layout_of_names(toy_tokenizer):
    abba, baba = fixed_ioi(0, 2), fixed_ioi(5, 0)
    pairs = abba.prompt_pairs(1) + baba.prompt_pairs(1)
    batch = abba.encode(pairs, toy_tokenizer)
    assert batch.span_names == IOI_SPANS
    # The BABA prompt, without a filler, is one token shorter: its last position is padding.
    assert batch.span_index[1].tolist() == [0] * 3 + [2, 3] + [1] * 6 + [4] * 4 + [5, -1]
    assert batch.span_positions("IO").sum(1).tolist() == [2, 6]
    assert batch.span_positions("END").nonzero().tolist() == [[0, 16], [1, 15]]


def test_greater_than_splits_the_start_year_between_two_spans(toy_tokenizer, bpe_tokenizer):
    task = fixed_greater_than()
    (pair,) = task.prompt_pairs(1)
    assert pair.clean == GREATER_THAN
    # "The " 0-4, "war lasted from the year " 4-29, "17" 29-31, "32 to the year 1" 31-47
    # (XX's second occurrence, "1", joins YY), "7" 47-48.
    assert pair.spans == (
        ("start", 0, 4),
        ("noun", 4, 29),
        ("XX1", 29, 31),
        ("YY", 31, 47),
        ("END", 47, 48),
    )
    toy = task.make_batch(toy_tokenizer, 1)
    assert toy.span_names == ("start", "noun", "XX1", "YY", "END")
    assert tokens_and_spans(toy, toy_tokenizer, 0) == [
        (BOS, "start"),
        ("The", "start"),
        ("war", "noun"),
        ("lasted", "noun"),
        ("from", "noun"),
        ("the", "noun"),
        ("year", "noun"),
        ("17", "XX1"),
        ("32", "YY"),
        ("to", "YY"),
        ("the", "YY"),
        ("year", "YY"),
        ("17", "END"),
    ]
    # GPT-2 style: the space before a year is a token of its own; it has no non-whitespace
    # character, so it joins the span before it.
    no_answers = replace(pair, answers=(), wrongs=())  # "33".."99" are no tokens of this BPE
    bpe = encode_pairs([no_answers], bpe_tokenizer, "kl", span_order=task.span_order())
    assert tokens_and_spans(bpe, bpe_tokenizer, 0) == [
        (BOS, "start"),
        ("The", "start"),
        ("Ġwar", "noun"),
        ("Ġlasted", "noun"),
        ("Ġfrom", "noun"),
        ("Ġthe", "noun"),
        ("Ġyear", "noun"),
        ("Ġ", "noun"),
        ("17", "XX1"),
        ("32", "YY"),
        ("Ġto", "YY"),
        ("Ġthe", "YY"),
        ("Ġyear", "YY"),
        ("Ġ", "YY"),
        ("17", "END"),
    ]


def test_without_a_schema_every_variable_occurrence_is_a_span(toy_tokenizer):
    task = replace(fixed_ioi(template=0, fillers=0), span_schema=())
    assert task.span_order() == ("start", "IO", "S1", "S2", "place", "object", "END")
    batch = task.make_batch(toy_tokenizer, 1)
    # BOS When | Mary and | John went to the | store , | John gave a | drink | to
    assert [batch.span_names[s] for s in batch.span_index[0].tolist()] == (
        ["start"] * 2 + ["IO"] * 2 + ["S1"] * 4 + ["place"] * 2 + ["S2"] * 3 + ["object", "END"]
    )


def test_the_fine_spans_of_a_template_name_words_after_each_occurrence():
    assert template_span_names("The {noun} lasted from the year {XX}{YY} to the year {XX}") == {
        "start",
        "noun",
        "noun+1",
        "noun+",
        "XX1",
        "YY",
        "YY+1",
        "YY+",
        "XX2",
        "END",
    }
    # No word between XX1 and YY: no "XX1+1"; a last occurrence at the end: no "XX2+1".


@pytest.mark.parametrize(
    "path", ["ioi", "greater-than", "varied/ioi.toml", "varied/greater_than.toml"]
)
def test_every_shipped_template_makes_every_span_of_its_schema(path):
    task = load_task(path if "/" not in path else REPO / "tasks" / path)
    assert isinstance(task, TemplateTask) and task.span_schema
    for clean, _ in task.templates:
        assert set(task.span_schema) <= template_span_names(clean), clean
    batch = task.encode(task.prompt_pairs(40, seed=3), _words_of(task))
    assert batch.span_names == ("start", *task.span_schema)
    for name in batch.span_names:  # every span holds positions of every prompt
        assert batch.span_positions(name).any(dim=1).all(), name
    assert batch.span_positions("END").sum(1).tolist() == [1] * 40


def _words_of(task: TemplateTask) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the words of ``task``'s prompts (the varied tasks have
    words the embedded tokenizer lacks)."""
    from acd.models.train_toy import build_tokenizer, task_vocabulary

    return build_tokenizer(task_vocabulary([task]))


# --------------------------------------------------------------------------------------------
# Induction


def test_induction_spans_are_the_prefix_and_the_two_halves(toy_tokenizer):
    task = load_task("induction")
    assert isinstance(task, InductionTask)
    with_prefix = task.restricted(half_length=3, prefix_length=2)
    batch = with_prefix.make_batch(toy_tokenizer, 2, seed=4)
    assert batch.span_names == ("start", "first", "second")
    for i in range(2):
        assert batch.span_index[i].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    (pair,) = with_prefix.prompt_pairs(1, seed=4)
    words = pair.clean.split()
    start_end = len(" ".join(words[:2]))
    first_end = len(" ".join(words[:5]))
    assert pair.spans == (
        ("start", 0, start_end),
        ("first", start_end, first_end),
        ("second", first_end, len(pair.clean)),
    )
    # No prefix: "start" is the BOS alone.
    bare = task.restricted(half_length=2).make_batch(toy_tokenizer, 1)
    assert bare.span_index[0].tolist() == [0, 1, 1, 2, 2]


# --------------------------------------------------------------------------------------------
# Pair files


def _write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _load_pairs(path: Path) -> PairsTask:
    task = load_task(path)
    assert isinstance(task, PairsTask)
    return task


def _pair_row(spans: Any) -> dict[str, str]:
    row = {"clean": PAIR_CLEAN, "corrupted": PAIR_CORRUPTED, "answer": " Mary", "wrong": " John"}
    return {**row, "spans": json.dumps(spans) if not isinstance(spans, str) else spans}


def test_a_csv_spans_column_names_ranges_of_the_clean_prompt(toy_tokenizer, tmp_path):
    text = PAIR_CLEAN
    assert (text[0:4], text[5:9], text[14:18], text[38:42], text[56:58]) == (
        "When",
        "Mary",
        "John",
        "John",
        "to",
    )
    spans = {"start": [0, 4], "IO": [5, 9], "S": [[14, 18], [38, 42]], "END": [56, 58]}
    task = _load_pairs(_write_csv(tmp_path / "rows.csv", [_pair_row(spans)]))
    assert task.rows[0].spans == (
        ("start", 0, 4),
        ("IO", 5, 9),
        ("S", 14, 18),
        ("S", 38, 42),
        ("END", 56, 58),
    )
    batch = task.encode(task.rows, toy_tokenizer)
    assert batch.span_names == ("start", "IO", "S", "END")
    # BOS When | Mary and | John went to the store , John gave a drink | to
    assert batch.span_index[0].tolist() == [0, 0, 1, 1] + [2] * 10 + [3]


def test_a_jsonl_spans_field_and_the_first_span_before_any_range(toy_tokenizer, tmp_path):
    second = "Tom and Anna went to the store. Anna gave a ring to"  # Tom 0-3, Anna 8-12
    rows = [
        {**_pair_row(None), "spans": {"IO": [5, 9], "S": [14, 18]}},
        {
            "clean": second,
            "corrupted": "Tom and Paul went to the store. Anna gave a ring to",
            "answer": " Tom",
            "wrong": " Anna",
            "spans": {"S": [8, 12], "IO": [0, 3]},
        },
    ]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    task = _load_pairs(path)
    batch = task.encode(task.rows, toy_tokenizer)
    assert batch.span_names == ("IO", "S")  # the names in the order they first appear
    # Row 1: BOS and "When" come before every range: the first span, IO.
    assert batch.span_index.tolist() == [
        [0, 0, 0, 0] + [1] * 11,
        [0, 0, 0] + [1] * 11 + [-1],  # BOS Tom and | Anna ... to | padding
    ]
    # Row 2 alone names S first, but the file's order holds for any sample of its rows.
    alone = task.encode(task.rows[1:], toy_tokenizer)
    assert (alone.span_names, alone.span_index.tolist()) == (("IO", "S"), [[0, 0, 0] + [1] * 11])


@pytest.mark.parametrize(
    ("spans", "message"),
    [
        ({"IO": [5, 9], "S": [8, 12]}, "row 1 .*'IO' and 'S' overlap at character 8"),
        ({"IO": [5, 90]}, "row 1 .*'IO' range \\[5, 90\\] ends after the clean prompt"),
        ({"IO": [5.0, 9]}, "row 1 .*spans: span 'IO': expected \\[start, end\\]"),
        ({"IO": [9, 5]}, "row 1 .*spans: span 'IO': expected \\[start, end\\]"),
        ({"IO": "5-9"}, "row 1 .*spans: span 'IO': expected \\[start, end\\]"),
        ("[5, 9]", "row 1 .*spans: expected a JSON object"),
        ("{not json", "row 1 .*spans: expected a JSON object"),
        ({"IO,S": [5, 9]}, "row 1 .*span 'IO,S': a span name may not contain ','"),
        ({"IO@x": [5, 9]}, "row 1 .*span 'IO@x': a span name may not contain ',' or '@'"),
    ],
)
def test_bad_pair_file_spans_are_one_line_errors_naming_the_row(tmp_path, spans, message):
    path = _write_csv(tmp_path / "rows.csv", [_pair_row(spans)])
    one_line_error(lambda: load_task(path), message)


def test_spans_in_some_rows_only_are_refused(toy_tokenizer, tmp_path):
    path = _write_csv(tmp_path / "rows.csv", [_pair_row({"IO": [5, 9]}), _pair_row("")])
    one_line_error(lambda: load_task(path), "row 2 .*gives no spans, unlike .*row 1")
    named = PromptPair("When Mary", "When John", spans=(("IO", 5, 9),))
    pairs = [named, PromptPair("When Tom", "When Anna")]
    one_line_error(lambda: encode_pairs(pairs, toy_tokenizer, "kl"), "'When Tom' names no spans")


# --------------------------------------------------------------------------------------------
# The default span, END, batches


def test_pairs_without_spans_are_all_in_one_span(toy_tokenizer):
    pairs = [PromptPair(PAIR_CLEAN, PAIR_CORRUPTED), PromptPair("When Mary", "When John")]
    batch = encode_pairs(pairs, toy_tokenizer, "kl")
    assert batch.span_names == ("all",)
    assert batch.span_index.tolist() == [[0] * 15, [0, 0, 0] + [-1] * 12]
    built = PromptBatch.from_token_ids(
        [[1, 2, 3], [1, 2]], [[1, 2, 4], [1, 5]], correct=[[]] * 2, metric="kl"
    )
    assert (built.span_names, built.span_index.tolist()) == (("all",), [[0, 0, 0], [0, 0, -1]])
    direct = PromptBatch(  # built field by field, as some tests do: the default is filled in
        **{
            f: getattr(built, f) for f in ("clean", "corrupted", "lengths", "score_mask", "targets")
        },
        **{f: getattr(built, f) for f in ("correct", "correct_mask", "wrong", "wrong_mask")},
        metric="kl",
    )
    assert (direct.span_names, direct.span_index.tolist()) == (("all",), [[0, 0, 0], [0, 0, -1]])


def test_end_is_the_last_token_whatever_range_covers_it(toy_tokenizer):
    # S's range runs to the end of the text; END names no character (an empty range).
    pair = PromptPair(
        PAIR_CLEAN, PAIR_CORRUPTED, spans=(("IO", 5, 9), ("S", 14, 58), ("END", 58, 58))
    )
    batch = encode_pairs([pair], toy_tokenizer, "kl")
    assert batch.span_names == ("IO", "S", "END")
    assert batch.span_index[0].tolist() == [0, 0, 0, 0] + [1] * 10 + [2]


def test_select_split_and_to_carry_the_span_index(toy_tokenizer):
    abba, baba = fixed_ioi(0, 2), fixed_ioi(5, 0)
    batch = abba.encode(
        baba.prompt_pairs(1) + abba.prompt_pairs(1) + baba.prompt_pairs(1), toy_tokenizer
    )
    baba_row = [0] * 3 + [2, 3] + [1] * 6 + [4] * 4 + [5, -1]
    abba_row = [0] * 4 + [1] * 2 + [2] + [3] * 5 + [4] * 4 + [5]
    assert batch.span_index.tolist() == [baba_row, abba_row, baba_row]
    picked = batch.select([1])
    assert (picked.span_names, picked.span_index.tolist()) == (IOI_SPANS, [abba_row])
    parts = batch.split(2)
    assert [p.span_index.tolist() for p in parts] == [[baba_row, abba_row], [baba_row]]
    assert all(p.span_names == IOI_SPANS for p in parts)
    assert torch.equal(batch.to("cpu").span_index, batch.span_index)


def test_span_positions_of_an_unknown_span_is_an_error(toy_tokenizer):
    batch = fixed_ioi(0, 0).make_batch(toy_tokenizer, 1)
    one_line_error(lambda: batch.span_positions("S"), "unknown span 'S'; the spans are start, IO")


# --------------------------------------------------------------------------------------------
# Bad span layouts and schemas


@pytest.mark.parametrize(
    ("names", "index", "message"),
    [
        (("a", "b"), torch.zeros(2, 2, dtype=torch.long), "span_index must have shape \\(2, 3\\)"),
        (("a", "b"), None, "give span_names and span_index together"),
        (None, torch.zeros(2, 3, dtype=torch.long), "give span_names and span_index together"),
        (("a", "b"), torch.tensor([[0, 1, 2], [0, 1, -1]]), "values must lie in -1..1"),
        (("a", "b"), torch.tensor([[0, 1, 1], [0, 1, 1]]), "prompt 1 must be -1 exactly"),
        (("a", "b"), torch.tensor([[0, -1, 1], [0, 1, -1]]), "prompt 0 must be -1 exactly"),
        (("a", "a"), torch.tensor([[0, 1, 1], [0, 1, -1]]), "must be distinct"),
        (("a", "b,c"), torch.tensor([[0, 1, 1], [0, 1, -1]]), "\\['b,c'\\]: a span name may"),
        (("a@1", "b"), torch.tensor([[0, 1, 1], [0, 1, -1]]), "\\['a@1'\\]: a span name may"),
        (("a", "b"), torch.tensor([[0.0, 1, 1], [0, 1, -1]]), "span_index must be integers"),
    ],
)
def test_from_token_ids_checks_the_span_layout(names, index, message):
    def build():
        PromptBatch.from_token_ids(
            [[1, 2, 3], [1, 2]],
            [[1, 2, 4], [1, 5]],
            correct=[[]] * 2,
            metric="kl",
            span_names=names,
            span_index=index,
        )

    one_line_error(build, message)


def test_from_token_ids_keeps_a_good_span_layout():
    good = torch.tensor([[0, 1, 1], [0, 1, -1]])
    built = PromptBatch.from_token_ids(
        [[1, 2, 3], [1, 2]],
        [[1, 2, 4], [1, 5]],
        correct=[[]] * 2,
        metric="kl",
        span_names=["a", "b"],
        span_index=good,
    )
    assert built.span_names == ("a", "b") and torch.equal(built.span_index, good)


def test_overlapping_or_outside_prompt_pair_spans_are_refused(toy_tokenizer):
    overlapping = PromptPair(PAIR_CLEAN, PAIR_CORRUPTED, spans=(("IO", 5, 9), ("S", 8, 18)))
    one_line_error(
        lambda: encode_pairs([overlapping], toy_tokenizer, "kl"),
        "'IO' and 'S' overlap at character 8",
    )
    outside = PromptPair(PAIR_CLEAN, PAIR_CORRUPTED, spans=(("IO", 5, 99),))
    one_line_error(lambda: encode_pairs([outside], toy_tokenizer, "kl"), "outside the text")


TASK_FILE = """
name = "x"
kind = "template"
answer = " {{A}}"
wrong = " {{B}}"
{spans}
[lists]
names = {{ values = ["Mary", "John"] }}
[variables]
A = "names"
B = "names"
[[templates]]
clean = "When {{A}} met {{B}}, {{B}} thanked"
corrupted = "When {{B}} met {{A}}, {{B}} thanked"
"""


def test_a_schema_of_spans_the_templates_make_is_loaded(tmp_path):
    path = tmp_path / "x.toml"
    path.write_text(TASK_FILE.format(spans='spans = ["B2", "A+1", "END"]'))
    task = load_task(path)
    assert isinstance(task, TemplateTask)
    assert task.span_order() == ("start", "B2", "A+1", "END")
    (pair,) = task.prompt_pairs(1)
    # A is not kept: it joins "start" before it; " met B, " (A+1, A+, B1, B1+1, B1+) is A+1;
    # "B thanke" is B2 and the last character END.
    a, b = pair.clean.split()[1], pair.clean.split()[3].rstrip(",")
    assert pair.clean == f"When {a} met {b}, {b} thanked"
    b2 = len(f"When {a} met {b}, ")
    assert pair.spans == (
        ("start", 0, 5 + len(a)),
        ("A+1", 5 + len(a), b2),
        ("B2", b2, len(pair.clean) - 1),
        ("END", len(pair.clean) - 1, len(pair.clean)),
    )


@pytest.mark.parametrize(
    ("spans", "message"),
    [
        ('spans = ["A", "C"]', "spans: no template makes a span 'C'; they make A, A\\+, A\\+1"),
        ('spans = ["B"]', "no template makes a span 'B'"),  # B occurs twice: B1, B2
        ('spans = ["start", "A"]', 'spans: expected the spans after "start"'),
        ('spans = ["A", "A"]', "spans: expected distinct span names"),
        ("spans = []", "spans: expected a non-empty list of span names"),
        ('spans = "A"', "spans: expected a non-empty list of span names"),
    ],
)
def test_a_bad_schema_is_a_one_line_error_at_load(tmp_path, spans, message):
    path = tmp_path / "x.toml"
    path.write_text(TASK_FILE.format(spans=spans))
    assert one_line_error(lambda: load_task(path), message).startswith(f"task file '{path}'")


# --------------------------------------------------------------------------------------------
# Offsets without the Rust tokenizer


@pytest.mark.parametrize("tokenizer_name", ["toy_tokenizer", "bpe_tokenizer"])
def test_offsets_from_prefixes_give_the_rust_offsets_spans(request, tokenizer_name):
    tokenizer = request.getfixturevalue(tokenizer_name)
    ioi = fixed_ioi(0, 2).prompt_pairs(1) + fixed_ioi(5, 1).prompt_pairs(1)
    greater_than = fixed_greater_than().prompt_pairs(1)
    for pairs, order in ((ioi, IOI_SPANS), (greater_than, fixed_greater_than().span_order())):
        pairs = [replace(p, answers=(), wrongs=()) for p in pairs]
        rust = encode_pairs(pairs, tokenizer, "kl", span_order=order)
        slow = encode_pairs(pairs, WithoutOffsets(tokenizer), "kl", span_order=order)
        assert torch.equal(rust.clean, slow.clean)
        assert slow.span_names == rust.span_names
        assert torch.equal(slow.span_index, rust.span_index)
