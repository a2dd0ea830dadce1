"""Held-out evaluation: ``acd evaluate`` never scores the prompts ``discover`` found a circuit on.

A circuit records where its task came from (``TaskSource``: a shipped name, or a file's path
and sha256) and how its prompts were split (``PromptSplit``), so that evaluation re-reads the
same task and draws from the other side of the split:

- **pair files** (CSV / JSONL, or a TOML of kind ``pairs``): the rows are split once, by a
  shuffle seeded with the discovery seed; one row in ``HELD_OUT_SHARE`` (rounded down) is held
  out for evaluation and discovery draws only from the others. A held-out row whose prompts
  (clean and corrupted text) equal a discovery row's is dropped, so duplicated rows cannot leak
  across. A file whose evaluation part would hold fewer than ``MIN_HELD_OUT`` rows (a file of
  fewer than 20 rows) is too small to hold any out: discovery and evaluation then use every
  row, and both say **in-sample**.
- **generated tasks** (templates, induction): evaluation draws with its own seed and skips any
  prompt pair equal to one of the discovery prompts, which it regenerates from the recorded
  discovery seed and count. Different seeds alone do not suffice: 3,000 greater-than prompts of
  seed 0 and of seed 1 share 408.

docs/tasks.md ("Discovery and evaluation prompts") states the rules for users.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from acd.errors import TaskError
from acd.tasks import PairsTask, PromptPair, Task, tasks_dir

# One row in HELD_OUT_SHARE of a pair file is held out for evaluation ...
HELD_OUT_SHARE = 4
# ... when that makes at least MIN_HELD_OUT rows (a file of 20 rows or more); else in-sample.
MIN_HELD_OUT = 5
# The prompt count when none is asked for (pair files: at most the rows available).
DEFAULT_PROMPTS = 100


# --------------------------------------------------------------------------------------------
# What a circuit records


@dataclass(frozen=True)
class TaskSource:
    """Where a circuit's task came from (circuit.json's ``task_source``; the file's schema,
    checked when it is read, is ``acd.formats.circuit.TaskSource``).

    ``kind`` is ``builtin`` (a task shipped with acd, re-read by ``name``) or ``file`` (re-read
    from ``path``, the task file's absolute path, refused if its bytes no longer hash to
    ``sha256``). For a TOML task the hash covers the TOML file, not the word lists or pair file
    it names.
    """

    kind: str
    name: str
    path: str | None = None
    sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PromptSplit:
    """How discovery and evaluation prompts were kept apart (circuit.json's ``prompt_split``;
    schema ``acd.formats.circuit.PromptSplit``).

    ``seed`` is the discovery seed (which also seeds a pair file's row split). ``discovery`` and
    ``evaluation`` count the prompt pairs on each side: for a pair file its rows in each part
    (both the whole file when ``in_sample``); for a generated task ``discovery`` is the number
    of discovery prompts (which evaluation skips) and ``evaluation`` is 0, since evaluation
    prompts are generated afresh rather than taken from a fixed part.
    """

    seed: int
    discovery: int
    evaluation: int
    in_sample: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def generated(self) -> bool:
        """True for a generated task's split (no fixed evaluation part)."""
        return self.evaluation == 0 and not self.in_sample


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def task_source(task: Task) -> TaskSource | None:
    """What to record for ``task``: ``builtin`` for a task shipped in tasks/, ``file`` (absolute
    path, sha256) for any other task file; None for a task built in memory (no file)."""
    path = Path(task.source) if task.source else None
    if path is None or not path.is_file():
        return None
    path = path.resolve()
    if path.parent == tasks_dir().resolve():
        return TaskSource("builtin", task.name)
    return TaskSource("file", task.name, str(path), file_sha256(path))


def same_task(recorded: TaskSource | None, recorded_name: str, task: Task) -> bool:
    """Whether ``task`` is the task a circuit was found on: the same shipped name, or a file
    with the same sha256; for a circuit that records no source (older files), the same name."""
    if recorded is None:
        return bool(recorded_name) and task.name == recorded_name
    here = task_source(task)
    if here is None:
        return False
    if recorded.kind == "builtin":
        return here.kind == "builtin" and here.name == recorded.name
    return here.kind == "file" and here.sha256 == recorded.sha256


# --------------------------------------------------------------------------------------------
# Discovery's side


def pair_parts(
    rows: list[PromptPair], seed: int
) -> tuple[list[PromptPair], list[PromptPair], bool]:
    """A pair file's (discovery rows, evaluation rows, in_sample), each part in file order.

    The split depends only on the number of rows and ``seed``, so evaluation recomputes it from
    what circuit.json records. Held-out rows equal in text to a discovery row are dropped.
    """
    order = list(range(len(rows)))
    random.Random(f"acd-split:{seed}").shuffle(order)
    held = set(order[: len(rows) // HELD_OUT_SHARE])
    discovery = [r for i, r in enumerate(rows) if i not in held]
    seen = {_key(r) for r in discovery}
    evaluation = [r for i, r in enumerate(rows) if i in held and _key(r) not in seen]
    if len(evaluation) < MIN_HELD_OUT:
        return list(rows), list(rows), True
    return discovery, evaluation, False


def discovery_split(task: Task, seed: int) -> tuple[Task, PromptSplit]:
    """The task discovery draws from (a pair file's discovery rows) and the split to record;
    for a generated task ``discovery`` is 0 here: the caller puts in the prompt count."""
    if isinstance(task, PairsTask):
        discovery, evaluation, in_sample = pair_parts(task.rows, seed)
        split = PromptSplit(seed, len(discovery), len(evaluation), in_sample)
        return replace(task, rows=discovery), split
    return task, PromptSplit(seed, 0, 0, False)


def available_prompts(task: Task) -> int | None:
    """How many prompt pairs ``task`` can give: a pair task's rows, None for a generator."""
    return len(task.rows) if isinstance(task, PairsTask) else None


def resolve_prompts(requested: int | None, size: int | None, task_name: str, what: str) -> int:
    """The prompt count to use: ``requested``, refused (TaskError) above ``size``, the prompt
    pairs there are (None: a generator, no limit); when None, DEFAULT_PROMPTS or all of a
    smaller ``size``. ``what`` names the pairs in the message ("discovery rows", ...)."""
    if requested is None:
        return DEFAULT_PROMPTS if size is None else min(DEFAULT_PROMPTS, size)
    if requested < 1:
        raise TaskError(f"the number of prompts must be at least 1, got {requested}")
    if size is not None and requested > size:
        raise TaskError(
            f"{requested} prompts asked for, but task {task_name!r} has {size} {what}; "
            f"ask for at most {size}"
        )
    return requested


def split_line(split: PromptSplit, n_prompts: int) -> str:
    """One line for a discovery summary: which prompts were used and what evaluation gets."""
    if split.in_sample:
        return (
            f"{n_prompts} of the file's {split.discovery} rows (seed {split.seed}); in-sample: "
            f"too few rows to hold any out (fewer than {HELD_OUT_SHARE * MIN_HELD_OUT}), so "
            "`acd evaluate` scores prompts the circuit was found on"
        )
    if split.generated:
        return f"{n_prompts} generated (seed {split.seed}); `acd evaluate` skips them"
    return (
        f"{n_prompts} of {split.discovery} discovery rows (seed {split.seed}); "
        f"{split.evaluation} rows held out for `acd evaluate`"
    )


# --------------------------------------------------------------------------------------------
# Evaluation's side


@dataclass(frozen=True)
class HeldOut:
    """Where evaluation draws its prompts from.

    ``task`` is what to draw from (a pair file's evaluation rows, or the whole task), minus any
    prompt in ``exclude`` (a generated task's discovery prompts, as (clean, corrupted) text).
    ``size`` is how many pairs there are to draw (None: a generator). ``in_sample`` says the
    prompts are those the circuit was found on; ``note`` is one line saying which prompts these
    are, for the command's output.
    """

    task: Task
    in_sample: bool
    size: int | None
    note: str
    exclude: frozenset[tuple[str, str]] = field(default_factory=frozenset)

    def draw(self, n: int, seed: int) -> list[PromptPair]:
        """``n`` prompt pairs for ``seed``: the first ``n`` of the task's draws not excluded."""
        if not self.exclude:
            return self.task.prompt_pairs(n, seed)
        want = n + len(self.exclude)
        for _ in range(8):  # draws repeat in a small task: ask for more, a few times
            fresh = [p for p in self.task.prompt_pairs(want, seed) if _key(p) not in self.exclude]
            if len(fresh) >= n:
                return fresh[:n]
            want *= 2
        raise TaskError(
            f"task {self.task.name!r}: only {len(fresh)} of {want // 2} prompts drawn with seed "
            f"{seed} differ from the {len(self.exclude)} discovery prompts; ask for fewer"
        )


def held_out(
    task: Task,
    split: PromptSplit | None,
    *,
    same: bool,
    seed: int = 0,
    discovery_prompts: int | None = None,
) -> HeldOut:
    """The evaluation prompts' source for a circuit.

    Args:
        task: the task to evaluate on.
        split: the circuit's ``prompt_split``; None for a circuit from an older acd, whose
            discovery prompts are rebuilt from ``seed`` and ``discovery_prompts`` (its
            ``seed`` and ``params["prompts"]``; unknown when None).
        same: whether ``task`` is the task the circuit was found on (``same_task``); if not,
            nothing can be held out and the note says so.
    """
    if not same:
        return HeldOut(
            task,
            False,
            available_prompts(task),
            f"task {task.name!r} is not the one the circuit was found on: its prompts are not "
            "checked against the discovery prompts",
        )
    if split is None:
        return _held_out_of_older_circuit(task, seed, discovery_prompts)
    if isinstance(task, PairsTask):
        discovery, evaluation, in_sample = pair_parts(task.rows, split.seed)
        return _pair_held_out(task, discovery, evaluation, in_sample)
    exclude = frozenset(map(_key, task.prompt_pairs(split.discovery, split.seed)))
    return HeldOut(
        task,
        False,
        None,
        f"held out: generated prompts, none of the {split.discovery} discovery prompts "
        f"(seed {split.seed})",
        exclude,
    )


def _pair_held_out(
    task: PairsTask, discovery: list[PromptPair], evaluation: list[PromptPair], in_sample: bool
) -> HeldOut:
    if in_sample:
        return HeldOut(
            task,
            True,
            len(task.rows),
            f"in-sample: the task's {len(task.rows)} rows are too few to hold any out (fewer "
            f"than {HELD_OUT_SHARE * MIN_HELD_OUT}); these are prompts the circuit was found on",
        )
    return HeldOut(
        replace(task, rows=evaluation),
        False,
        len(evaluation),
        f"held out: the {len(evaluation)} evaluation rows of {task.name!r} (discovery drew from "
        f"the other {len(discovery)})",
    )


def _held_out_of_older_circuit(task: Task, seed: int, prompts: int | None) -> HeldOut:
    """A circuit without ``prompt_split`` drew ``prompts`` pairs with ``seed`` from the whole
    task: exclude exactly those."""
    if prompts is None:
        return HeldOut(
            task,
            False,
            available_prompts(task),
            "the circuit records no discovery prompts: overlap with them is not checked",
        )
    if isinstance(task, PairsTask):
        used = {_key(p) for p in task.prompt_pairs(min(prompts, len(task.rows)), seed)}
        evaluation = [r for r in task.rows if _key(r) not in used]
        discovery = [r for r in task.rows if _key(r) in used]
        return _pair_held_out(task, discovery, evaluation, len(evaluation) < MIN_HELD_OUT)
    return held_out(task, PromptSplit(seed, prompts, 0, False), same=True)


def _key(pair: PromptPair) -> tuple[str, str]:
    """What makes two prompt pairs the same prompts: their clean and corrupted text."""
    return (pair.clean, pair.corrupted)
