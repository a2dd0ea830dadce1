"""Task kinds: a task is a name, a metric and a way to make prompt pairs for a seed.

- ``TemplateTask``: prompts made by filling the {variables} of clean/corrupted templates with
  words drawn from lists (IOI, greater-than, and most user tasks);
- ``InductionTask``: a random word sequence repeated once (the corrupted prompt's first half is
  replaced by other words, so nothing can be copied);
- ``PairsTask``: prompt pairs read from a CSV or JSONL file (EAP-IG's column names work).

Template and induction prompts name the spans of their clean text (``PromptPair.spans``, see
docs/tasks.md, "Spans"); a pair file may give them in a ``spans`` column.
"""

from __future__ import annotations

import random
import re
import string
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

import acd.tasks
from acd.errors import TaskError
from acd.tasks.batch import PromptBatch, PromptPair


def _encode_pairs(
    pairs: Sequence[PromptPair],
    tokenizer: Any,
    metric: str,
    span_order: Sequence[str] | None = None,
) -> PromptBatch:
    """``acd.tasks.encode_pairs``, looked up on the package at each call so that one patch of
    ``acd.tasks.encode_pairs`` (tests/test_heldout.py records every encoding) sees them all.
    ``span_order`` is passed only when there is one: that recorder takes three arguments."""
    if span_order is None:
        return acd.tasks.encode_pairs(pairs, tokenizer, metric)
    return acd.tasks.encode_pairs(pairs, tokenizer, metric, span_order=span_order)


@dataclass
class Task(ABC):
    """A task: a name, a metric, and a way to make prompt pairs for a seed."""

    name: str
    kind: str
    metric: str
    description: str
    source: str

    @abstractmethod
    def prompt_pairs(self, n: int, seed: int = 0) -> list[PromptPair]:
        """``n`` prompt pairs, the same for the same seed (each kind below defines it)."""

    def encode(self, pairs: Sequence[PromptPair], tokenizer: Any) -> PromptBatch:
        return _encode_pairs(pairs, tokenizer, self.metric)

    def make_batch(self, tokenizer: Any, n: int, seed: int = 0) -> PromptBatch:
        """``n`` validated prompt pairs for ``tokenizer``, deterministic in ``seed``."""
        if n < 1:
            raise TaskError(f"the number of prompts must be at least 1, got {n}")
        return self.encode(self.prompt_pairs(n, seed), tokenizer)


@dataclass
class TemplateTask(Task):
    """Prompts from clean/corrupted templates whose {variables} are drawn from word lists."""

    lists: dict[str, list[str]] = field(default_factory=dict)
    variables: dict[str, str] = field(default_factory=dict)
    distinct: list[list[str]] = field(default_factory=list)
    templates: list[tuple[str, str]] = field(default_factory=list)
    answer: list[str] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)
    answer_sets: dict[str, dict[str, str]] = field(default_factory=dict)
    # Parallel to ``templates``: each template's group label ("" for none), e.g. ABBA / BABA.
    groups: list[str] = field(default_factory=list)
    # Leading filler: a number of entries drawn from ``lists[prefix_list]`` (uniformly in
    # ``prefix_count``, inclusive) put before both prompts of a pair, so the variables move.
    prefix_list: str | None = None
    prefix_count: tuple[int, int] = (0, 0)
    # The task file's ``spans``: the spans kept after "start", in this order (empty: "start",
    # every variable occurrence and "END"; see ``span_order``).
    span_schema: tuple[str, ...] = ()

    def encode(self, pairs: Sequence[PromptPair], tokenizer: Any) -> PromptBatch:
        return _encode_pairs(pairs, tokenizer, self.metric, self.span_order())

    def span_order(self) -> tuple[str, ...]:
        """The names of the spans kept, in their canonical order: "start" and the schema, or
        (no schema) "start", each variable occurrence (variables in their declared order,
        e.g. IO, S1, S2) and "END"."""
        if self.span_schema:
            return ("start", *self.span_schema)
        occurrences: list[str] = []
        for variable in self.variables:
            for clean, _ in self.templates:
                names, variables, _ = _template_parts(clean)
                occurrences += [n for n, v in zip(names, variables) if v == variable]
        return ("start", *dict.fromkeys(occurrences), "END")

    def restricted(self, group: str | None = None, prefix_count: int | None = None) -> TemplateTask:
        """The same task with only the templates of ``group`` and/or exactly ``prefix_count``
        filler entries in front (used to measure a model per template group and filler size)."""
        keep = [i for i, g in enumerate(self.group_labels()) if group is None or g == group]
        if not keep:
            raise TaskError(f"task {self.name!r} has no templates in group {group!r}")
        if prefix_count is not None and prefix_count > 0 and self.prefix_list is None:
            raise TaskError(f"task {self.name!r} has no [prefix] list to draw fillers from")
        return replace(
            self,
            templates=[self.templates[i] for i in keep],
            groups=[self.group_labels()[i] for i in keep],
            prefix_count=self.prefix_count if prefix_count is None else (prefix_count,) * 2,
        )

    def group_labels(self) -> list[str]:
        return self.groups or [""] * len(self.templates)

    def draw_prefix(self, rng: random.Random) -> str:
        """The filler put before a prompt pair: "" or entries of the prefix list, then a space."""
        count = _draw(rng, self.prefix_count)
        if count == 0 or self.prefix_list is None:
            return ""
        return " ".join(rng.choices(self.lists[self.prefix_list], k=count)) + " "

    def draw_values(self, rng: random.Random) -> dict[str, str]:
        """One value per variable; variables in a ``distinct`` group take different values."""
        values: dict[str, str] = {}
        group_of = {v: i for i, group in enumerate(self.distinct) for v in group}
        used: dict[int, set[str]] = {i: set() for i in range(len(self.distinct))}
        for var, list_name in self.variables.items():
            options = self.lists[list_name]
            group = group_of.get(var)
            if group is not None:
                options = [o for o in options if o not in used[group]]
                if not options:
                    raise TaskError(
                        f"task {self.name!r}: list {list_name!r} is too short for the "
                        f"distinct variables {self.distinct[group]}"
                    )
            values[var] = rng.choice(options)
            if group is not None:
                used[group].add(values[var])
        return values

    def _answer_set(self, which: str, values: dict[str, str]) -> tuple[str, ...]:
        spec = self.answer_sets[which]
        pivot = int(values[spec["with"]])
        compare = {
            ">": pivot.__lt__,
            ">=": pivot.__le__,
            "<": pivot.__gt__,
            "<=": pivot.__ge__,
        }[spec["compare"]]
        prefix = spec.get("prefix", "")
        return tuple(prefix + item for item in self.lists[spec["list"]] if compare(int(item)))

    def prompt_pairs(self, n: int, seed: int = 0) -> list[PromptPair]:
        return [pair for pair, _ in self.prompt_pairs_with_values(n, seed)]

    def prompt_pairs_with_values(
        self, n: int, seed: int = 0
    ) -> list[tuple[PromptPair, dict[str, str]]]:
        """``prompt_pairs(n, seed)``, each with the value of every template variable it was
        filled with (so that a caller can find where each variable sits, e.g. acd.roles)."""
        rng = random.Random(f"{self.name}:{seed}")
        kept = set(self.span_order())
        pairs = []
        for _ in range(n):
            clean_t, corrupt_t = rng.choice(self.templates)
            values = self.draw_values(rng)
            prefix = self.draw_prefix(rng)
            if self.answer_sets:
                answers = self._answer_set("correct", values)
                wrongs = self._answer_set("wrong", values)
            else:
                answers = tuple(a.format(**values) for a in self.answer)
                wrongs = tuple(w.format(**values) for w in self.wrong)
            pair = PromptPair(
                clean=prefix + clean_t.format(**values),
                corrupted=prefix + corrupt_t.format(**values),
                answers=answers,
                wrongs=wrongs,
                spans=kept_spans(fine_spans(prefix, clean_t, values), kept),
            )
            pairs.append((pair, values))
        return pairs


def template_span_names(template: str) -> set[str]:
    """Every fine span name a prompt of ``template`` can have (``fine_spans``)."""
    variables = _template_parts(template)[1]
    # Values of two characters: a variable at the very end keeps one besides END's.
    values = dict.fromkeys(variables, "xx")
    return {"start", "END"} | {name for name, s, e in fine_spans("", template, values) if s < e}


def fine_spans(prefix: str, template: str, values: dict[str, str]) -> list[tuple[str, int, int]]:
    """The fine spans of ``prefix + template.format(**values)``: (name, start, end) character
    ranges that tile the text, in text order (some may be empty).

    "start" is the prefix and the text before the first variable; each variable occurrence is
    named by its variable, numbered when it occurs more than once in the template (S1, S2);
    the text after occurrence X up to the next one is "X+1" (its first word) and "X+" (the
    rest); "END" is the text's last non-whitespace character.
    """
    names, variables, literals = _template_parts(template)
    spans = [("start", 0, len(prefix) + len(literals[0]))]
    position = spans[0][2]
    for name, variable, literal in zip(names, variables, literals[1:]):
        value_end = position + len(values[variable])
        first_word = re.match(r"\s*\S+", literal)
        word_end = value_end + (first_word.end() if first_word else 0)
        literal_end = value_end + len(literal)
        spans += [
            (name, position, value_end),
            (f"{name}+1", value_end, word_end),
            (f"{name}+", word_end, literal_end),
        ]
        position = literal_end
    text = prefix + template.format(**values)
    return _split_off_end(spans, len(text.rstrip()) - 1)


def kept_spans(
    fine: list[tuple[str, int, int]], kept: set[str]
) -> tuple[tuple[str, int, int], ...]:
    """The fine spans with each one not in ``kept`` merged into the nearest non-empty kept span
    before it ("start", which comes first, is always kept). Adjacent ranges of one name are
    joined and empty ones dropped; "start" comes first even when empty (BOS is in it)."""
    out = [("start", 0, 0)]
    current = "start"
    for name, start, end in fine:
        if start == end:
            continue
        if name in kept:
            current = name
        last_name, last_start, last_end = out[-1]
        if last_name == current and last_end == start:
            out[-1] = (current, last_start, end)
        else:
            out.append((current, start, end))
    return tuple(out)


def _template_parts(template: str) -> tuple[list[str], list[str], list[str]]:
    """A template's variable occurrences: their span names (the variable, numbered when it
    occurs more than once: S1, S2), their variables, and the k + 1 literal texts around the k
    occurrences (before the first, between, after the last; ``{{`` already made ``{``)."""
    variables: list[str] = []
    literals = [""]
    for literal, name, _, _ in string.Formatter().parse(template):
        literals[-1] += literal
        if name is not None:
            variables.append(name)
            literals.append("")
    counts, seen = Counter(variables), Counter()
    names = []
    for variable in variables:
        seen[variable] += 1
        names.append(variable if counts[variable] == 1 else f"{variable}{seen[variable]}")
    return names, variables, literals


def _split_off_end(spans: list[tuple[str, int, int]], last: int) -> list[tuple[str, int, int]]:
    """The spans with character ``last`` taken out of the one holding it, as the span "END"."""
    out = []
    for name, start, end in spans:
        if start <= last < end:
            out += [(name, start, last), ("END", last, last + 1), (name, last + 1, end)]
        else:
            out.append((name, start, end))
    return out


@dataclass
class InductionTask(Task):
    """Random word sequences repeated once, after a random prefix; the metric scores the repeat.

    Each prompt draws its half length uniformly from ``half_lengths`` and its number of leading
    random words from ``prefix_lengths`` (both inclusive ranges), so the repeat sits at varied
    offsets and distances: only copying from the earlier occurrence predicts it, not a fixed
    positional offset.
    """

    pool: list[str] = field(default_factory=list)
    half_lengths: tuple[int, int] = (10, 10)
    prefix_lengths: tuple[int, int] = (0, 0)

    def prompt_pairs(self, n: int, seed: int = 0) -> list[PromptPair]:
        rng = random.Random(f"{self.name}:{seed}")
        pairs = []
        for _ in range(n):
            half = _draw(rng, self.half_lengths)
            n_prefix = _draw(rng, self.prefix_lengths)
            # Draw every word at once so the prefix, the sequence and the corrupted first half
            # share no word: nothing but the sequence's own first half can be copied.
            words = rng.sample(self.pool, n_prefix + 2 * half)
            prefix, seq = words[:n_prefix], words[n_prefix : n_prefix + half]
            other = words[n_prefix + half :]
            pairs.append(
                PromptPair(
                    clean=" ".join(prefix + seq + seq),
                    corrupted=" ".join(prefix + other + seq),
                    # The repeat's second word is the first one that can be predicted by copying.
                    score_from_word=n_prefix + half + 1,
                    spans=_induction_spans(prefix, seq),
                )
            )
        return pairs

    def span_order(self) -> tuple[str, ...]:
        return INDUCTION_SPANS

    def restricted(self, half_length: int, prefix_length: int = 0) -> InductionTask:
        """The same task with one fixed half length and prefix length."""
        return replace(self, half_lengths=(half_length,) * 2, prefix_lengths=(prefix_length,) * 2)

    def encode(self, pairs: Sequence[PromptPair], tokenizer: Any) -> PromptBatch:
        batch = _encode_pairs(pairs, tokenizer, self.metric, self.span_order())
        bos = 1 if tokenizer.bos_token_id is not None else 0
        for p, length in zip(pairs, batch.lengths.tolist()):
            expected = len(p.clean.split()) + bos
            if length != expected:
                raise TaskError(
                    f"induction prompt {p.clean!r} has {length} tokens, expected {expected}: "
                    "every word of the pool must be a single token"
                )
        return batch


# An induction prompt's spans: BOS and the random prefix words, the sequence, its repeat.
INDUCTION_SPANS = ("start", "first", "second")


def _induction_spans(prefix: list[str], seq: list[str]) -> tuple[tuple[str, int, int], ...]:
    """The character ranges of ``" ".join(prefix + seq + seq)``'s three spans (the space
    before a part goes with it; "start" is empty when there is no prefix)."""
    start_end = len(" ".join(prefix))
    first_end = len(" ".join(prefix + seq))
    return (
        ("start", 0, start_end),
        ("first", start_end, first_end),
        ("second", first_end, len(" ".join(prefix + seq + seq))),
    )


def _draw(rng: random.Random, bounds: tuple[int, int]) -> int:
    """A number in the inclusive range; a fixed range draws nothing (so prompts stay the same
    as a task file without ranges gave)."""
    lo, hi = bounds
    return lo if lo == hi else rng.randint(lo, hi)


@dataclass
class PairsTask(Task):
    """Prompt pairs read from a CSV or JSONL file."""

    rows: list[PromptPair] = field(default_factory=list)

    def prompt_pairs(self, n: int, seed: int = 0) -> list[PromptPair]:
        """The first ``n`` pairs in a seeded shuffle of the file's rows."""
        if n > len(self.rows):
            raise TaskError(
                f"task {self.name!r} has {len(self.rows)} prompt pairs, {n} were asked for"
            )
        order = list(range(len(self.rows)))
        random.Random(f"{self.name}:{seed}").shuffle(order)
        return [self.rows[i] for i in order[:n]]

    def encode(self, pairs: Sequence[PromptPair], tokenizer: Any) -> PromptBatch:
        return _encode_pairs(pairs, tokenizer, self.metric, self.span_order() or None)

    def span_order(self) -> tuple[str, ...]:
        """The span names of all the file's rows, in the order they first appear: every
        sample of rows (discovery's, evaluation's) gets the same names in the same order."""
        return tuple(dict.fromkeys(name for row in self.rows for name, _, _ in row.spans))


@dataclass
class CompiledTask(Task):
    """Random inputs of a compiled program (acd/models/compiled/<name>/): clean and corrupted
    are ``length`` symbols each (``distinct``: no symbol twice, for programs such as ``sort``
    whose keys must be unique), the corrupted one a different draw. Every position after BOS
    is scored: the metric compares the program's whole output (``kl`` for categorical
    outputs, ``l2`` for numerical ones, both against the full model)."""

    program: str = ""
    symbols: tuple[str, ...] = ()
    length: int = 1
    distinct: bool = False

    def prompt_pairs(self, n: int, seed: int = 0) -> list[PromptPair]:
        rng = random.Random(seed)
        pairs = []
        for _ in range(n):
            clean = self._draw_input(rng)
            corrupted = self._draw_input(rng)
            while corrupted == clean and self._inputs_differ_at_all():
                corrupted = self._draw_input(rng)
            pairs.append(PromptPair(clean=" ".join(clean), corrupted=" ".join(corrupted)))
        return pairs

    def _draw_input(self, rng: random.Random) -> list[str]:
        if self.distinct:
            return rng.sample(list(self.symbols), self.length)
        return [rng.choice(self.symbols) for _ in range(self.length)]

    def _inputs_differ_at_all(self) -> bool:
        """Whether two different inputs exist (else a corrupted twin cannot differ)."""
        return len(self.symbols) > 1 or (self.distinct and self.length > 1)

    def encode(self, pairs: Sequence[PromptPair], tokenizer: Any) -> PromptBatch:
        """Token ids (BOS first) of each input, every position after BOS scored."""
        if not pairs:
            raise TaskError("a task needs at least one prompt pair")
        clean = [self._ids(tokenizer, p.clean) for p in pairs]
        corrupted = [self._ids(tokenizer, p.corrupted) for p in pairs]
        if any(len(c) != len(x) for c, x in zip(clean, corrupted)):
            raise TaskError("a compiled task's clean and corrupted inputs must have one length")
        width = max(len(ids) for ids in clean)
        score_mask = torch.zeros(len(pairs), width, dtype=torch.bool)
        for i, ids in enumerate(clean):
            score_mask[i, 1 : len(ids)] = True  # position 0 is BOS: its output means nothing
        return PromptBatch.from_token_ids(
            clean,
            corrupted,
            correct=[[] for _ in pairs],
            metric=self.metric,
            score_mask=score_mask,
            pairs=pairs,
        )

    def _ids(self, tokenizer: Any, text: str) -> list[int]:
        symbols = text.split()
        unknown = [s for s in symbols if s not in self.symbols]
        if unknown:
            raise TaskError(f"task {self.name!r}: {unknown[0]!r} is not one of its symbols")
        bos = tokenizer.bos_token_id
        if bos is None:
            raise TaskError(f"task {self.name!r} needs a tokenizer with a BOS token")
        return [bos, *tokenizer.convert_tokens_to_ids(symbols)]
