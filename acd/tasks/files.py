"""Loading tasks: the shipped task files, a user's TOML file, or a CSV/JSONL file of pairs.

Each file is checked once against its schema (``acd.formats.task_file``,
``acd.formats.pair_file``, docs/formats.md) and turned into one of the task kinds.
"""

from __future__ import annotations

from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any

from acd.errors import TaskError
from acd.formats.pair_file import PairRecord, read_pair_records
from acd.formats.task_file import (
    CompiledFile,
    InductionFile,
    TemplateFile,
    check_pool,
    check_template_lists,
    list_entries,
    read_task_file,
    read_word_list,
    within,
)
from acd.tasks.batch import PromptPair
from acd.tasks.kinds import CompiledTask, InductionTask, PairsTask, Task, TemplateTask


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
    if isinstance(spec, CompiledFile):
        return CompiledTask(
            **common,
            program=spec.program,
            symbols=spec.symbols,
            length=spec.length,
            distinct=spec.distinct,
        )
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
        span_schema=spec.spans,
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
        spans=record.spans or (),
    )


def _first(*values: tuple | None) -> tuple:
    return next((value for value in values if value is not None), ())
