"""Tasks: prompt pairs (clean, corrupted, answers) and their tokenized, validated batches.

A task is data: a TOML file in tasks/ (or the user's own), or a CSV/JSONL of prompt pairs.
The code knows three task *kinds*:

- ``template``: prompts made by filling the {variables} of clean/corrupted templates with words
  drawn from lists (IOI, greater-than, and most user tasks);
- ``induction``: a random word sequence repeated once (the corrupted prompt's first half is
  replaced by other words, so nothing can be copied);
- ``pairs``: prompt pairs read from a CSV or JSONL file (EAP-IG's column names work).

The flow is one direction: ``Task.prompt_pairs(n, seed)`` gives model-independent text,
``encode_pairs(pairs, tokenizer)`` turns it into a ``PromptBatch`` of token ids for one
tokenizer, validating every pair on the way (see docs/tasks.md).
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from acd.errors import TaskError
from acd.formats.pair_file import PairRecord, read_pair_records
from acd.formats.task_file import (
    InductionFile,
    TemplateFile,
    check_pool,
    check_template_lists,
    list_entries,
    read_task_file,
    read_word_list,
    within,
)

METRIC_NAMES = ("logit_diff", "prob_diff", "logprob", "kl")


# --------------------------------------------------------------------------------------------
# Prompt pairs (text) and batches (token ids)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptPair:
    """One clean/corrupted prompt pair, as text.

    ``answers`` and ``wrongs`` are continuations of the clean prompt (with their leading space
    where the tokenizer needs one, e.g. " Mary"); each must encode to exactly one token.
    ``answer_ids``/``wrong_ids`` give the answers as token ids instead (EAP-IG's CSV columns).
    ``score_from_word`` marks, for induction, the first word of the part whose next-word
    log-probabilities the metric averages.
    """

    clean: str
    corrupted: str
    answers: tuple[str, ...] = ()
    wrongs: tuple[str, ...] = ()
    answer_ids: tuple[int, ...] = ()
    wrong_ids: tuple[int, ...] = ()
    score_from_word: int | None = None


@dataclass
class PromptBatch:
    """Token ids of N prompt pairs for one tokenizer, right-padded to a common length T.

    Shapes:
        clean, corrupted: [N, T] token ids; position 0 is the BOS token where the tokenizer
            has one; positions >= lengths[i] are padding (causal attention keeps them from
            affecting earlier positions, and no metric reads them).
        lengths: [N] number of real tokens per prompt.
        score_mask: [N, T] bool, the positions whose logits the metric reads.
        targets: [N, T] the token each scored position should predict (``logprob``); 0 elsewhere.
        correct, wrong: [N, K] answer token ids, padded; correct_mask, wrong_mask: [N, K] bool.
    """

    clean: torch.Tensor
    corrupted: torch.Tensor
    lengths: torch.Tensor
    score_mask: torch.Tensor
    targets: torch.Tensor
    correct: torch.Tensor
    correct_mask: torch.Tensor
    wrong: torch.Tensor
    wrong_mask: torch.Tensor
    metric: str
    pairs: list[PromptPair] = field(default_factory=list)

    def __len__(self) -> int:
        return self.clean.shape[0]

    def select(self, index: torch.Tensor | slice | Sequence[int]) -> PromptBatch:
        """The sub-batch of the given prompts (same padding width)."""
        if isinstance(index, slice):
            pairs = self.pairs[index]
        else:
            index = torch.as_tensor(index, dtype=torch.long)
            pairs = [self.pairs[i] for i in index.tolist()] if self.pairs else []
        return replace(
            self,
            **{name: getattr(self, name)[index] for name in BATCH_TENSOR_FIELDS},
            pairs=pairs,
        )

    def split(self, batch_size: int) -> list[PromptBatch]:
        """Consecutive sub-batches of at most ``batch_size`` prompts."""
        if batch_size < 1:
            raise TaskError(f"batch size must be at least 1, got {batch_size}")
        return [self.select(slice(i, i + batch_size)) for i in range(0, len(self), batch_size)]

    def to(self, device: torch.device | str) -> PromptBatch:
        return replace(
            self, **{name: getattr(self, name).to(device) for name in BATCH_TENSOR_FIELDS}
        )


BATCH_TENSOR_FIELDS = (
    "clean",
    "corrupted",
    "lengths",
    "score_mask",
    "targets",
    "correct",
    "correct_mask",
    "wrong",
    "wrong_mask",
)


# --------------------------------------------------------------------------------------------
# Tokenizing and validating
# --------------------------------------------------------------------------------------------


def _encode_texts(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text, BOS first where the tokenizer has one.

    BOS is added by hand (not by ``add_special_tokens``) so that GPT-2 style tokenizers, which
    add nothing, and Llama style ones, which add BOS, give the same layout.
    """
    if not texts:
        return []
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # The Rust tokenizer directly: the HF wrapper's per-text conversion doubles the cost.
        encoded = [e.ids for e in backend.encode_batch(list(texts), add_special_tokens=False)]
    else:
        encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    return [([bos] if bos is not None else []) + list(ids) for ids in encoded]


def _check_known_tokens(tokenizer: Any, text: str, ids: list[int]) -> None:
    """TaskError naming the words of ``text`` the tokenizer maps to its unknown token.

    ``ids`` starts with the BOS token where the tokenizer has one; it is not part of the text
    and is skipped (GPT-2's unknown token *is* its BOS token, ``<|endoftext|>``).
    """
    unk = tokenizer.unk_token_id
    own_ids = ids[1:] if tokenizer.bos_token_id is not None else ids
    if unk is not None and unk in own_ids:
        words = [
            w
            for w in text.replace(",", " ").replace(".", " ").split()
            if tokenizer.unk_token_id in tokenizer(w, add_special_tokens=False)["input_ids"]
        ]
        raise TaskError(
            f"prompt {text!r}: {', '.join(map(repr, words)) or 'a word'} is not in the "
            "tokenizer's vocabulary"
        )


def _continuation_ids(
    tokenizer: Any, prompts: list[str], prompt_ids: list[list[int]], continuations: list[str]
) -> list[int]:
    """The single token each continuation adds to its prompt.

    The continuation is encoded together with its prompt (so BPE merges and leading spaces come
    out as the model sees them) and must add exactly one token after an unchanged prefix.
    """
    full = _encode_texts(tokenizer, [p + c for p, c in zip(prompts, continuations)])
    out = []
    for prompt, ids, cont, full_ids in zip(prompts, prompt_ids, continuations, full):
        if len(full_ids) != len(ids) + 1 or full_ids[: len(ids)] != ids:
            n_extra = len(full_ids) - len(ids)
            raise TaskError(
                f"answer {cont!r} after prompt {prompt!r} is not a single token "
                f"(it encodes to {n_extra} tokens or changes the prompt's last token)"
            )
        if tokenizer.unk_token_id is not None and full_ids[-1] == tokenizer.unk_token_id:
            raise TaskError(f"answer {cont!r} is not in the tokenizer's vocabulary")
        out.append(full_ids[-1])
    return out


def _pad(rows: list[list[int]], width: int, value: int) -> torch.Tensor:
    return torch.tensor([r + [value] * (width - len(r)) for r in rows], dtype=torch.long)


def _answer_ids(
    tokenizer: Any, pairs: Sequence[PromptPair], clean_ids: list[list[int]], which: str
) -> list[list[int]]:
    """Token ids of every pair's answers (``which`` = "answers") or wrong answers ("wrongs")."""
    id_field = "answer_ids" if which == "answers" else "wrong_ids"
    jobs = [(i, text) for i, p in enumerate(pairs) for text in getattr(p, which)]
    ids = _continuation_ids(
        tokenizer,
        [pairs[i].clean for i, _ in jobs],
        [clean_ids[i] for i, _ in jobs],
        [text for _, text in jobs],
    )
    out: list[list[int]] = [list(getattr(p, id_field)) for p in pairs]
    for (i, _), token in zip(jobs, ids):
        out[i].append(token)
    vocab = len(tokenizer)
    for p, row in zip(pairs, out):
        if any(not 0 <= t < vocab for t in row):
            raise TaskError(f"prompt {p.clean!r}: answer token id out of range 0..{vocab - 1}")
    return out


def encode_pairs(pairs: Sequence[PromptPair], tokenizer: Any, metric: str) -> PromptBatch:
    """Tokenize and validate prompt pairs for one tokenizer.

    Raises TaskError naming the offending text when a word is unknown to the tokenizer, when a
    clean prompt and its corrupted twin differ in token length, or when an answer is not one
    token. The metric reads the last real position of each prompt, or (``score_from_word``)
    every position from that word on that predicts a word of the prompt.
    """
    if metric not in METRIC_NAMES:
        raise TaskError(f"unknown metric {metric!r}; choose one of {', '.join(METRIC_NAMES)}")
    if not pairs:
        raise TaskError("a task needs at least one prompt pair")
    clean_ids = _encode_texts(tokenizer, [p.clean for p in pairs])
    corrupt_ids = _encode_texts(tokenizer, [p.corrupted for p in pairs])
    for p, c_ids, x_ids in zip(pairs, clean_ids, corrupt_ids):
        _check_known_tokens(tokenizer, p.clean, c_ids)
        _check_known_tokens(tokenizer, p.corrupted, x_ids)
        if len(c_ids) != len(x_ids):
            raise TaskError(
                f"clean prompt {p.clean!r} has {len(c_ids)} tokens but its corrupted prompt "
                f"{p.corrupted!r} has {len(x_ids)}; they must have the same length"
            )
    correct = _answer_ids(tokenizer, pairs, clean_ids, "answers")
    wrong = _answer_ids(tokenizer, pairs, clean_ids, "wrongs")
    if metric in ("logit_diff", "prob_diff"):
        for p, c, w in zip(pairs, correct, wrong):
            if not c or not w:
                raise TaskError(f"prompt {p.clean!r} needs both an answer and a wrong answer")

    n, width = len(pairs), max(len(ids) for ids in clean_ids)
    pad = _pad_id(tokenizer)
    lengths = torch.tensor([len(ids) for ids in clean_ids])
    clean = _pad(clean_ids, width, pad)
    score_mask = torch.zeros(n, width, dtype=torch.bool)
    targets = torch.zeros(n, width, dtype=torch.long)
    bos_offset = 1 if tokenizer.bos_token_id is not None else 0
    for i, p in enumerate(pairs):
        if p.score_from_word is None:
            score_mask[i, lengths[i] - 1] = True
        else:
            # Position t predicts token t + 1: score the positions whose next token is word
            # score_from_word or later (one token per word is checked by the induction kind).
            first = bos_offset + p.score_from_word - 1
            score_mask[i, first : lengths[i] - 1] = True
            targets[i, : width - 1] = clean[i, 1:]
    targets[~score_mask] = 0
    k_c = max(1, max(len(r) for r in correct))
    k_w = max(1, max(len(r) for r in wrong))
    return PromptBatch(
        clean=clean,
        corrupted=_pad(corrupt_ids, width, pad),
        lengths=lengths,
        score_mask=score_mask,
        targets=targets,
        correct=_pad(correct, k_c, 0),
        correct_mask=_pad([[1] * len(r) for r in correct], k_c, 0).bool(),
        wrong=_pad(wrong, k_w, 0),
        wrong_mask=_pad([[1] * len(r) for r in wrong], k_w, 0).bool(),
        metric=metric,
        pairs=list(pairs),
    )


def _pad_id(tokenizer: Any) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id):
        if candidate is not None:
            return candidate
    return 0


# --------------------------------------------------------------------------------------------
# Task kinds
# --------------------------------------------------------------------------------------------


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
        return encode_pairs(pairs, tokenizer, self.metric)

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
        rng = random.Random(f"{self.name}:{seed}")
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
            pairs.append(
                PromptPair(
                    clean=prefix + clean_t.format(**values),
                    corrupted=prefix + corrupt_t.format(**values),
                    answers=answers,
                    wrongs=wrongs,
                )
            )
        return pairs


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
                )
            )
        return pairs

    def restricted(self, half_length: int, prefix_length: int = 0) -> InductionTask:
        """The same task with one fixed half length and prefix length."""
        return replace(self, half_lengths=(half_length,) * 2, prefix_lengths=(prefix_length,) * 2)

    def encode(self, pairs: Sequence[PromptPair], tokenizer: Any) -> PromptBatch:
        batch = encode_pairs(pairs, tokenizer, self.metric)
        bos = 1 if tokenizer.bos_token_id is not None else 0
        for p, length in zip(pairs, batch.lengths.tolist()):
            expected = len(p.clean.split()) + bos
            if length != expected:
                raise TaskError(
                    f"induction prompt {p.clean!r} has {length} tokens, expected {expected}: "
                    "every word of the pool must be a single token"
                )
        return batch


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


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def tasks_dir() -> Path:
    """The folder of shipped task files (tasks/ in a checkout, acd/task_files when installed)."""
    return Path(str(resources.files("acd.task_files")))


def list_tasks() -> list[Task]:
    """Every task shipped in tasks/, sorted by name."""
    return sorted((load_task(p) for p in tasks_dir().glob("*.toml")), key=lambda t: t.name)


def load_task(spec: str | Path) -> Task:
    """A task from a shipped name ("ioi", "greater-than", "induction"), a .toml file, or a
    .csv/.jsonl file of prompt pairs."""
    path = Path(spec)
    if path.suffix.lower() in (".csv", ".jsonl"):
        return _load_pairs_file(path, name=path.stem, metric="logit_diff", description="")
    if path.suffix.lower() == ".toml":
        return _load_toml(path)
    for candidate in (str(spec), str(spec).replace("-", "_")):
        shipped = tasks_dir() / f"{candidate}.toml"
        if shipped.is_file():
            return _load_toml(shipped)
    names = sorted(p.stem.replace("_", "-") for p in tasks_dir().glob("*.toml"))
    raise TaskError(
        f"unknown task {str(spec)!r}: use one of {', '.join(names)}, "
        "or a path to a .toml, .csv or .jsonl file"
    )


def _load_toml(path: Path) -> Task:
    """A task from a TOML file, checked once against its schema (``acd.formats.task_file``,
    docs/formats.md): every problem is one TaskError line naming the file and the key."""
    spec = read_task_file(path)
    common = {
        "name": spec.name if spec.name is not None else path.stem,
        "kind": spec.kind,
        "metric": spec.metric,
        "description": spec.description,
        "source": str(path),
    }
    if isinstance(spec, TemplateFile):
        return _template_task(spec, path, common)
    if isinstance(spec, InductionFile):
        with within(path, "pool"):
            pool = read_word_list(path.parent / spec.pool)
        check_pool(spec, pool, path)
        halves, prefixes = spec.half_length, spec.prefix_length
        return InductionTask(**common, pool=pool, half_lengths=halves, prefix_lengths=prefixes)
    with within(path, "file"):
        task = _load_pairs_file(
            path.parent / spec.file, common["name"], common["metric"], common["description"]
        )
    # The TOML is the task's source (its name and metric): what a circuit records.
    return replace(task, source=str(path))


def _template_task(spec: TemplateFile, path: Path, common: dict[str, Any]) -> TemplateTask:
    """The template task of a checked task file, its lists read (and checked) here."""
    lists = {name: list_entries(entry, path, name) for name, entry in spec.lists.items()}
    check_template_lists(spec, lists, path)
    answer_sets = {}
    if spec.answers is not None:
        for which, entry in (("correct", spec.answers.correct), ("wrong", spec.answers.wrong)):
            answer_sets[which] = {
                "list": entry.list,
                "compare": entry.compare,
                "with": entry.with_,
                "prefix": entry.prefix,
            }
    return TemplateTask(
        **common,
        lists=lists,
        variables=dict(spec.variables),
        distinct=[list(group) for group in spec.constraints.distinct],
        templates=[(t.clean, t.corrupted) for t in spec.templates],
        answer=list(spec.answer),
        wrong=list(spec.wrong),
        answer_sets=answer_sets,
        groups=[t.group for t in spec.templates],
        prefix_list=spec.prefix.list if spec.prefix else None,
        prefix_count=spec.prefix.count if spec.prefix else (0, 0),
    )


def _load_pairs_file(path: Path, name: str, metric: str, description: str) -> PairsTask:
    """Prompt pairs from a CSV or JSONL file, checked once against its schema
    (``acd.formats.pair_file``): every problem is one TaskError line naming the row."""
    rows = [_pair_from_record(record) for record in read_pair_records(path)]
    return PairsTask(
        name=name,
        kind="pairs",
        metric=metric,
        description=description,
        source=str(path),
        rows=rows,
    )


def _pair_from_record(record: PairRecord) -> PromptPair:
    """A prompt pair from a checked record. EAP-IG's CSVs name the answers either as text or
    as token ids, under two names each; of two columns that mean the same, the first given
    wins (answer before correct, wrong before incorrect, correct_idx before answer_idx,
    incorrect_idx before wrong_idx)."""
    return PromptPair(
        clean=record.clean,
        corrupted=record.corrupted,
        answers=_first(record.answer, record.correct),
        wrongs=_first(record.wrong, record.incorrect),
        answer_ids=_first(record.correct_idx, record.answer_idx),
        wrong_ids=_first(record.incorrect_idx, record.wrong_idx),
    )


def _first(*values: tuple | None) -> tuple:
    return next((value for value in values if value is not None), ())
