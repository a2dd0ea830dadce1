"""The schema of task TOML files (docs/tasks.md) and of the word lists they name.

``read_task_file(path)`` reads and checks a task file once: TOML syntax, the ``kind``, every
key's type (strict: ``half_length = "ten"`` and ``variables = "names"`` are refused, not
coerced), unknown keys (a misspelt key would otherwise be ignored), and what must agree
within the file (variables name lists, every ``{name}`` of a template is a plain placeholder
of a variable, ``[prefix]`` and ``[answers]`` name lists and variables, every name in ``spans``
is a span some template makes). It returns a
``TemplateFile``, ``InductionFile``, ``PairsFile`` or ``CompiledFile``; ``acd.tasks`` builds
the task from it, reading the word lists with ``read_word_list`` / ``list_entries`` and
checking what depends on their contents with ``check_template_lists`` and ``check_pool``.
Every problem is one ``TaskError`` line: ``task file 'x.toml': <key>: <what was expected>, got
<value>``.
"""

from __future__ import annotations

import re
import string
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, PlainValidator, model_validator

from acd.errors import TaskError
from acd.formats.common import Expected, Strict, read_text, short, validate, validate_nested

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

# Counts drawn per prompt (half lengths, prefix lengths, filler counts) are at most this: a
# mistyped 10**9 must be refused, not turned into a prompt of a billion words.
MAX_COUNT = 10_000
# A { range = [lo, hi] } list holds at most this many entries.
MAX_RANGE = 100_000


def label(path: str | Path) -> str:
    """How task-file errors name the file."""
    return f"task file {str(path)!r}"


# --------------------------------------------------------------------------------------------
# Value types


def _metric(value: Any) -> str:
    from acd.tasks import METRIC_NAMES  # acd.tasks imports this module

    if not isinstance(value, str) or value not in METRIC_NAMES:
        raise ValueError(f"unknown metric {short(value)}; choose one of {', '.join(METRIC_NAMES)}")
    return value


def _task_name(value: Any) -> str:
    """A task's name: it seeds the prompts and names output folders, so it is one line."""
    if not isinstance(value, str) or not value or not value.isprintable():
        raise Expected("expected a non-empty name of printable characters")
    return value


def _int_range(low: int) -> PlainValidator:
    """An inclusive range of integers, ``n`` or ``[lo, hi]``, with low <= lo <= hi <= MAX_COUNT."""

    def check(value: Any) -> tuple[int, int]:
        bounds = [value, value] if isinstance(value, int) else value
        if (
            not isinstance(bounds, list)
            or len(bounds) != 2
            or not all(isinstance(b, int) and not isinstance(b, bool) for b in bounds)
            or not low <= bounds[0] <= bounds[1] <= MAX_COUNT
        ):
            raise Expected(
                f"must be an integer >= {low} or [lo, hi] with {low} <= lo <= hi "
                f"(at most {MAX_COUNT})"
            )
        return bounds[0], bounds[1]

    return PlainValidator(check)


def _entry(value: Any) -> str:
    """An inline list entry: a non-empty string, or an integer (written in decimal)."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise Expected("expected a non-empty string or an integer")


def _texts(value: Any) -> tuple[str, ...]:
    """``answer`` / ``wrong``: one template string or a list of them."""
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise Expected("expected a string or a list of strings")


def _symbols(value: Any) -> tuple[str, ...]:
    """``symbols``: the program's input symbols, distinct strings without spaces."""
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise Expected("expected a non-empty list of strings")
    if any(not v or " " in v for v in value) or len(set(value)) != len(value):
        raise Expected("expected distinct symbols without spaces")
    return tuple(value)


def _span_schema(value: Any) -> tuple[str, ...]:
    """``spans``: the names of the spans kept after "start", in order (docs/tasks.md, "Spans")."""
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise Expected("expected a non-empty list of span names")
    if len(set(value)) != len(value):
        raise Expected("expected distinct span names")
    if "start" in value:
        raise Expected('expected the spans after "start" ("start" is always kept, first)')
    return tuple(value)


def _positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise Expected("expected an integer >= 1")
    return value


Metric = Annotated[str, PlainValidator(_metric)]
TaskName = Annotated[str, PlainValidator(_task_name)]
Entry = Annotated[str, PlainValidator(_entry)]
Texts = Annotated[tuple[str, ...], PlainValidator(_texts)]


# --------------------------------------------------------------------------------------------
# Lists


@dataclass(frozen=True)
class FileList:
    """A list read from a word-list file beside the task file."""

    file: str


class ValuesList(Strict):
    values: Annotated[list[Entry], Field(min_length=1)]


class RangeList(Strict):
    range: list[int]
    format: str = "d"

    @model_validator(mode="after")
    def _check(self) -> RangeList:
        if len(self.range) != 2 or self.range[0] > self.range[1]:
            raise ValueError(f"range must be [lo, hi] with lo <= hi, got {short(self.range)}")
        lo, hi = self.range
        if hi - lo + 1 > MAX_RANGE:
            raise ValueError(f"range [{lo}, {hi}] holds more than {MAX_RANGE} entries")
        if re.search(r"\d{3,}", self.format):  # a width of 10^9 would fill the memory
            raise ValueError(f"format {self.format!r}: widths and precisions are at most 99")
        try:
            format(lo, self.format)
            format(hi, self.format)
        except (ValueError, TypeError):
            raise ValueError(
                f"format {self.format!r} is not a format for integers (e.g. 'd', '02d')"
            ) from None
        return self


def _list_spec(value: Any) -> FileList | ValuesList | RangeList:
    """A list: a file name, ``{ values = [...] }`` or ``{ range = [lo, hi], format = ... }``."""
    if isinstance(value, str) and value:
        return FileList(value)
    if isinstance(value, dict) and "values" in value:
        return validate_nested(ValuesList, value)
    if isinstance(value, dict) and "range" in value:
        return validate_nested(RangeList, value)
    raise Expected("expected a file name, { values = [...] } or { range = [lo, hi], format = ... }")


ListSpec = Annotated[Any, PlainValidator(_list_spec)]


# --------------------------------------------------------------------------------------------
# The three kinds


class Template(Strict):
    clean: str
    corrupted: str
    group: str = ""


class Constraints(Strict):
    distinct: list[list[str]] = []


class AnswerSet(Strict):
    """Answers compared as integers with a variable: the entries of ``list`` that are
    ``compare`` the value of ``with``, each after ``prefix``."""

    list: str
    compare: Literal[">", ">=", "<", "<="]
    with_: str = Field(alias="with")
    prefix: str = ""


class AnswerSets(Strict):
    correct: AnswerSet
    wrong: AnswerSet


class Prefix(Strict):
    list: str
    count: Annotated[tuple[int, int], _int_range(0)] = (0, 0)


class _Common(Strict):
    kind: str
    name: TaskName | None = None
    metric: Metric = "logit_diff"
    description: str = ""


class TemplateFile(_Common):
    """``kind = "template"``: prompts from templates whose {variables} are drawn from lists."""

    lists: dict[str, ListSpec] = {}
    variables: dict[str, str]
    constraints: Constraints = Constraints()
    # Checked non-empty after the variables (the order of the errors acd always gave).
    templates: list[Template] = []
    answer: Texts = ()
    wrong: Texts = ()
    answers: AnswerSets | None = None
    prefix: Prefix | None = None
    spans: Annotated[tuple[str, ...], PlainValidator(_span_schema)] = ()

    @model_validator(mode="after")
    def _check(self) -> TemplateFile:
        for var, list_name in self.variables.items():
            if list_name not in self.lists:
                raise ValueError(
                    f"variable {var!r} uses list {list_name!r}, which is not defined under [lists]"
                )
        if not self.templates:
            raise ValueError("needs at least one [[templates]] entry (clean and corrupted)")
        for group in self.constraints.distinct:
            for var in group:
                if var not in self.variables:
                    raise ValueError(f"[constraints] distinct names {var!r}, not a variable")
        if self.prefix is not None and self.prefix.list not in self.lists:
            raise ValueError(f"[prefix] list {self.prefix.list!r} is not defined under [lists]")
        if self.answers is not None:
            if self.answer or self.wrong:
                raise ValueError("give answer and wrong, or [answers], not both")
            for which, spec in (("correct", self.answers.correct), ("wrong", self.answers.wrong)):
                if spec.list not in self.lists or spec.with_ not in self.variables:
                    raise ValueError(
                        f"[answers] {which} names list {spec.list!r} and variable "
                        f"{spec.with_!r}: each must be defined"
                    )
        texts = [t for entry in self.templates for t in (entry.clean, entry.corrupted)]
        for text in texts + list(self.answer) + list(self.wrong):
            _check_placeholders(text, self.variables)
        _check_span_schema(self.spans, [t.clean for t in self.templates])
        return self


def _check_span_schema(schema: tuple[str, ...], templates: list[str]) -> None:
    """Every name of the ``spans`` schema must be a span that some clean template makes."""
    from acd.tasks.kinds import template_span_names  # acd.tasks imports this module

    made = set().union(*(template_span_names(t) for t in templates))
    unknown = next((name for name in schema if name not in made), None)
    if unknown is not None:
        raise ValueError(
            f"spans: no template makes a span {unknown!r}; they make {', '.join(sorted(made))}"
        )


def _check_placeholders(text: str, variables: dict[str, str]) -> None:
    """Every ``{...}`` in ``text`` must be a plain ``{name}`` of a variable (no format spec or
    conversion, which could fail on a drawn word mid-run); ``{{`` and ``}}`` are braces."""
    try:
        fields = list(string.Formatter().parse(text))
    except ValueError as err:
        raise ValueError(
            f"{text!r} is not a valid template ({err}); write {{{{ and }}}} for a brace"
        ) from None
    for _, name, spec, conversion in fields:
        if name is None:
            continue
        if name not in variables:
            raise ValueError(f"{{{name}}} in {text!r} is not a variable")
        if spec or conversion:
            raise ValueError(f"{text!r}: only plain {{name}} placeholders are allowed")


class InductionFile(_Common):
    """``kind = "induction"``: a random word sequence repeated once."""

    pool: str
    half_length: Annotated[tuple[int, int], _int_range(2)] = (10, 10)
    prefix_length: Annotated[tuple[int, int], _int_range(0)] = (0, 0)


class PairsFile(_Common):
    """``kind = "pairs"``: prompt pairs from a CSV or JSONL file beside the task file."""

    file: str


class CompiledFile(_Common):
    """``kind = "compiled"``: random inputs of a compiled program (acd/models/compiled/,
    docs/ground_truth.md), each clean input paired with another input of the same length."""

    program: str
    symbols: Annotated[tuple[str, ...], PlainValidator(_symbols)]
    length: Annotated[int, PlainValidator(_positive_int)]
    distinct: bool = False


SCHEMAS: dict[str, type[TemplateFile | InductionFile | PairsFile | CompiledFile]] = {
    "template": TemplateFile,
    "induction": InductionFile,
    "pairs": PairsFile,
    "compiled": CompiledFile,
}


# --------------------------------------------------------------------------------------------
# Reading


def read_task_file(path: str | Path) -> TemplateFile | InductionFile | PairsFile | CompiledFile:
    """The checked contents of a task TOML file (module docstring); TaskError in one line."""
    path = Path(path)
    where = label(path)
    if not path.is_file():
        raise TaskError(f"{where} does not exist")
    text = read_text(path, where, TaskError)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise TaskError(f"{where} is not valid TOML: {_one_line(str(err))}") from None
    except RecursionError:
        raise TaskError(f"{where} is not valid TOML (nested too deeply)") from None
    if "kind" not in data:
        raise TaskError(f"{where} is missing the key 'kind'")
    kind = data["kind"]
    if not isinstance(kind, str) or kind not in SCHEMAS:
        kinds = "template, induction, pairs or compiled"
        raise TaskError(f"{where}: unknown kind {short(kind)}; choose {kinds}")
    return validate(SCHEMAS[kind], data, where, TaskError, noun="key")


def read_word_list(path: str | Path) -> list[str]:
    """A word list: UTF-8 text, one entry per line (stripped); blank lines and lines starting
    with # are skipped; at least one entry."""
    path = Path(path)
    where = f"word list {str(path)!r}"
    if not path.is_file():
        raise TaskError(f"{where} does not exist")
    lines = read_text(path, where, TaskError).splitlines()
    words = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
    if not words:
        raise TaskError(f"{where} is empty")
    return words


@contextmanager
def within(task_path: Path, key: str) -> Iterator[None]:
    """A TaskError raised inside (reading a word list or a pair file the task file names)
    also names the task file and its key: the file to fix may be either."""
    try:
        yield
    except TaskError as err:
        raise TaskError(f"{label(task_path)}: {key}: {err}") from None


def list_entries(
    spec: FileList | ValuesList | RangeList, task_path: Path, name: str = "?"
) -> list[str]:
    """The entries of the list ``name`` of a template task file."""
    if isinstance(spec, FileList):
        with within(task_path, f"lists.{name}"):
            return read_word_list(task_path.parent / spec.file)
    if isinstance(spec, ValuesList):
        return list(spec.values)
    lo, hi = spec.range
    return [format(i, spec.format) for i in range(lo, hi + 1)]


def check_template_lists(spec: TemplateFile, lists: dict[str, list[str]], task_path: Path) -> None:
    """What depends on the lists' contents: ``[answers]`` compare entries as integers, so
    its lists and the lists of its ``with`` variables must hold integers only."""
    if spec.answers is None:
        return
    for answer_set in (spec.answers.correct, spec.answers.wrong):
        for list_name in (answer_set.list, spec.variables[answer_set.with_]):
            bad = next((e for e in lists[list_name] if not _is_int(e)), None)
            if bad is not None:
                raise TaskError(
                    f"{label(task_path)}: [answers] compares list {list_name!r} as integers, "
                    f"but it holds {bad!r}"
                )


def check_pool(spec: InductionFile, pool: list[str], task_path: Path) -> None:
    """An induction pool must hold distinct words, enough for the longest prompt."""
    need = 2 * spec.half_length[1] + spec.prefix_length[1]
    if len(set(pool)) != len(pool):
        duplicate = next(w for i, w in enumerate(pool) if w in pool[:i])
        raise TaskError(
            f"{label(task_path)}: pool {spec.pool!r} lists {duplicate!r} twice; every word of "
            "a prompt must be distinct"
        )
    if need > len(pool):
        raise TaskError(
            f"{label(task_path)}: the longest prompt needs {need} distinct words "
            f"(2 x half_length + prefix_length) but the pool has {len(pool)}"
        )


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def _one_line(text: str) -> str:
    return " ".join(text.split())
