"""The schema of prompt-pair files: CSV (a header row, then one pair per row) or JSONL (one
JSON object per line), with EAP-IG's column names (docs/tasks.md).

``read_pair_records(path)`` reads and checks the whole file once and returns one
``PairRecord`` per pair: UTF-8 text (a byte-order mark is skipped), CSV rows of exactly the
header's cells, JSONL lines that are JSON objects, ``clean`` and ``corrupted`` non-empty
strings, answers as text (a string, or in JSONL a list of strings) and token ids as
non-negative integers (in a CSV cell ``464`` or ``[464, 12]``), and ``spans`` as a JSON
object of span names to character ranges of the clean prompt, ``{"IO": [5, 9], "S": [[14,
18], [40, 44]]}`` (in a CSV cell its JSON text): integer ranges inside the text, no two
sharing a character, given in every row or in none. An empty cell or null is no value.
Other columns are ignored (EAP-IG's files carry more). Every problem is one ``TaskError``
line naming the file, the row or line and the column.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, PlainValidator, model_validator

from acd.errors import TaskError
from acd.formats.common import Expected, parse_json, read_text, short, validate
from acd.tasks.batch import SPAN_NAME_RESERVED, SPAN_NAME_RULE

# Token ids above this cannot be a vocabulary's (and would overflow torch's int64).
MAX_TOKEN_ID = 2**63 - 1


def label(path: str | Path) -> str:
    """How pair-file errors name the file."""
    return f"prompt-pair file {str(path)!r}"


def _prompt(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise Expected("expected a non-empty string")
    return value


def _answers(value: Any) -> tuple[str, ...] | None:
    """Answer continuations: a string (one answer), a list of strings, or nothing (null,
    "", [])."""
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) and v for v in value):
        return tuple(value)
    raise Expected("expected a string or a list of non-empty strings")


def _token_ids(value: Any) -> tuple[int, ...] | None:
    """Token ids: an integer or a list of them, or their text form in a CSV cell ("464",
    "[464, 12]"); nothing for null or ""."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip().startswith("[") else int(value)
        except (ValueError, RecursionError):
            raise Expected("expected a token id or a list of token ids") from None
    ids = value if isinstance(value, list) else [value]
    if not ids or not all(
        isinstance(i, int) and not isinstance(i, bool) and 0 <= i <= MAX_TOKEN_ID for i in ids
    ):
        raise Expected("expected a token id (an integer >= 0) or a list of token ids")
    return tuple(ids)


def _spans(value: Any) -> tuple[tuple[str, int, int], ...] | None:
    """Named character ranges: an object of name -> [start, end] or a list of them (in a CSV
    cell, its JSON text), as (name, start, end) in the object's order; nothing for null, ""
    or {}. That the ranges fit the clean text is checked by PairRecord."""
    expected = 'expected a JSON object of span names to [start, end] ranges, e.g. {"IO": [5, 9]}'
    if isinstance(value, str) and value.strip():
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):
            raise Expected(expected) from None
    if value is None or value == "" or value == {}:
        return None
    if not isinstance(value, dict):
        raise Expected(expected)
    spans = []
    for name, ranges in value.items():
        if not name:
            raise Expected(expected + " (names non-empty)")
        if any(c in name for c in SPAN_NAME_RESERVED):
            raise Expected(f"span {name!r}: {SPAN_NAME_RULE}")
        listed = (
            ranges
            if isinstance(ranges, list) and ranges and isinstance(ranges[0], list)
            else [ranges]
        )
        for bounds in listed:
            if not _is_range(bounds):
                raise Expected(f"span {name!r}: expected [start, end], integers 0 <= start <= end")
            spans.append((name, bounds[0], bounds[1]))
    return tuple(spans)


def _is_range(bounds: Any) -> bool:
    return (
        isinstance(bounds, list)
        and len(bounds) == 2
        and all(isinstance(b, int) and not isinstance(b, bool) for b in bounds)
        and 0 <= bounds[0] <= bounds[1]
    )


Prompt = Annotated[str, PlainValidator(_prompt)]
Answers = Annotated[tuple[str, ...] | None, PlainValidator(_answers)]
TokenIds = Annotated[tuple[int, ...] | None, PlainValidator(_token_ids)]
Spans = Annotated[tuple[tuple[str, int, int], ...] | None, PlainValidator(_spans)]


class PairRecord(BaseModel):
    """One prompt pair as the file gives it; alias columns (``answer`` / ``correct``, ...)
    are kept apart here and resolved by ``acd.tasks`` (the first one given wins)."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    clean: Prompt
    corrupted: Prompt
    answer: Answers = None
    correct: Answers = None
    wrong: Answers = None
    incorrect: Answers = None
    correct_idx: TokenIds = None
    answer_idx: TokenIds = None
    incorrect_idx: TokenIds = None
    wrong_idx: TokenIds = None
    spans: Spans = None

    @model_validator(mode="after")
    def _check_spans(self) -> PairRecord:
        """The spans' ranges lie in the clean prompt and no two share a character."""
        ranges = sorted((start, end, name) for name, start, end in self.spans or () if start < end)
        for start, end, name in ranges:
            if end > len(self.clean):
                raise ValueError(
                    f"spans: {name!r} range [{start}, {end}] ends after the clean prompt "
                    f"({len(self.clean)} characters)"
                )
        for (_, end, name), (start, _, other) in zip(ranges, ranges[1:]):
            if start < end:
                raise ValueError(f"spans: {name!r} and {other!r} overlap at character {start}")
        return self


def read_pair_records(path: str | Path) -> list[PairRecord]:
    """Every pair of a CSV (``.csv``) or JSONL (any other suffix) file, checked (module
    docstring); TaskError in one line, also for a file with no pairs."""
    path = Path(path)
    where = label(path)
    if not path.is_file():
        raise TaskError(f"{where} does not exist")
    text = read_text(path, where, TaskError, encoding="utf-8-sig")
    rows = _csv_rows(text, where) if path.suffix.lower() == ".csv" else _jsonl_rows(text, where)
    records = [validate(PairRecord, row, place, TaskError) for place, row in rows]
    if not records:
        raise TaskError(f"{where} has no rows")
    _check_spans_everywhere_or_nowhere(records, [place for place, _ in rows])
    return records


def _check_spans_everywhere_or_nowhere(records: list[PairRecord], places: list[str]) -> None:
    """Spans name the positions of every prompt of a batch: all rows give them, or none."""
    given = [record.spans is not None for record in records]
    if any(given) and not all(given):
        odd = given.index(not given[0])
        state = "gives spans" if given[odd] else "gives no spans"
        raise TaskError(
            f"{places[odd]}: {state}, unlike {places[0]}; give spans in every row or in none"
        )


def _csv_rows(text: str, where: str) -> list[tuple[str, dict[str, str]]]:
    """(where the row is, {column: cell}) per data row; blank lines are skipped."""
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        rows = [(reader.line_num, row) for row in reader if row]
    except csv.Error as err:
        raise TaskError(f"{where}: line {reader.line_num}: not valid CSV ({err})") from None
    if not rows:
        return []
    _, header = rows[0]
    duplicate = next((c for i, c in enumerate(header) if c in header[:i]), None)
    if duplicate is not None:
        raise TaskError(f"{where}: the header names column {duplicate!r} twice")
    out = []
    for n, (line, row) in enumerate(rows[1:], start=1):
        place = f"{where} row {n} (line {line})"
        if len(row) != len(header):
            raise TaskError(f"{place}: {len(row)} cells, but the header has {len(header)}")
        out.append((place, dict(zip(header, row))))
    return out


def _jsonl_rows(text: str, where: str) -> list[tuple[str, dict[str, Any]]]:
    """(where the line is, its object) per non-blank line. Lines are split at \\n only: a
    JSON string may hold U+2028 and other characters str.splitlines() splits at."""
    out = []
    for n, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        place = f"{where} line {n}"
        record = parse_json(line, place, TaskError)
        if not isinstance(record, dict):
            raise TaskError(
                f"{place}: expected a JSON object with clean and corrupted, got {short(record)}"
            )
        out.append((place, record))
    return out
