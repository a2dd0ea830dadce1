"""What the file schemas share: reading a file's text, parsing JSON, one-line errors, and the
strict value types (finite numbers, encoded non-finite numbers, JSON scalars, hashes).

Every problem is raised as one line, ``<file>: <field>: <what was expected>, got <value>``,
as ``AcdError`` or the subclass the caller names (``TaskError`` for task files): the command
line prints that line after ``acd: error:`` and exits 2.
"""

from __future__ import annotations

import json
import math
import re
import reprlib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, ValidationError

from acd.errors import AcdError

Model = TypeVar("Model", bound=BaseModel)

# circuit.json writes the non-finite floats as these strings (JSON has no literal for them).
NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


class Strict(BaseModel):
    """A schema object: values of the wrong type are refused, not coerced (strict mode), and
    unknown fields are refused (a misspelt field would otherwise be silently ignored)."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class Expected(ValueError):
    """Raised by a field validator: the message says what was expected; the one-line error
    appends the value that was found (``..., got 4.0``)."""


class Nested(ValueError):
    """Raised by a field validator that validated a part of its value with another schema:
    carries that schema's first problem, whose location continues the field's."""

    def __init__(self, problem: Mapping[str, Any]):
        super().__init__(problem.get("msg", ""))
        self.problem = problem


def validate_nested(schema: type[Model], value: Any) -> Model:
    """``schema`` validated from ``value`` inside a field validator (a value of several
    forms, dispatched by hand): its first problem is raised as ``Nested``."""
    try:
        return schema.model_validate(value)
    except ValidationError as err:
        raise Nested(err.errors(include_url=False)[0]) from None


# --------------------------------------------------------------------------------------------
# Reading


def read_text(
    path: str | Path, label: str, error: type[AcdError] = AcdError, *, encoding: str = "utf-8"
) -> str:
    """The text of ``path`` decoded as UTF-8 (``utf-8-sig`` also skips a byte-order mark); a
    file that cannot be read or is not UTF-8 is one ``error`` line starting with ``label``."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise error(f"{label}: cannot read it ({err.strerror or err})") from None
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as err:
        raise error(
            f"{label}: not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start})"
        ) from None


def parse_json(text: str, label: str, error: type[AcdError] = AcdError) -> Any:
    """``json.loads(text)``, with every way it can fail as one ``error`` line: malformed
    text, nesting too deep for Python's parser (a RecursionError otherwise), an integer of
    more digits than Python converts, and strings holding a lone surrogate (not text)."""
    try:
        document = json.loads(text)
    except RecursionError:
        raise error(f"{label}: not valid JSON (nested too deeply)") from None
    except ValueError as err:  # json.JSONDecodeError is a ValueError; so is a 5000-digit int
        raise error(f"{label}: not valid JSON ({err})") from None
    if _SURROGATE_ESCAPE.search(text):  # only an escape can make a lone surrogate
        check_text(document, label, error)
    return document


def check_text(value: Any, label: str, error: type[AcdError] = AcdError) -> None:
    """Refuse a JSON value whose strings hold a lone surrogate: ``"\\ud800"`` parses to a str
    that cannot be written out again (as UTF-8, GraphML, a terminal line)."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise error(f"{label}: a string holds a lone surrogate (\\ud800-\\udfff)") from None


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


# --------------------------------------------------------------------------------------------
# Validating


def validate(
    schema: type[Model],
    data: Any,
    label: str,
    error: type[AcdError] = AcdError,
    noun: str = "field",
) -> Model:
    """``schema`` validated from ``data`` (parsed JSON or TOML), or one ``error`` line naming
    ``label`` (the file), the first field at fault and what it expected. ``noun`` is what an
    unknown name is called in the message ("field" in JSON, "key" in TOML)."""
    try:
        return schema.model_validate(data)
    except ValidationError as err:
        raise error(one_line(err, label, noun)) from None


def one_line(err: ValidationError, label: str, noun: str = "field") -> str:
    """The first problem of ``err`` as ``<label>: <field>: <expected>, got <value>`` (and how
    many more there are), on one line whatever the input holds."""
    problems = err.errors(include_url=False)
    line = f"{_single_line(label)}: {problem_text(problems[0], noun)}"
    more = len(problems) - 1
    return line + (f" (and {more} more problem{'s' if more > 1 else ''})" if more else "")


def problem_text(problem: Mapping[str, Any], noun: str = "field") -> str:
    """One pydantic error dict as text: the field, what it expected, the value found."""
    error = (problem.get("ctx") or {}).get("error")
    if isinstance(error, Nested):  # the inner schema's problem, at the joined location
        inner = dict(error.problem, loc=tuple(problem["loc"]) + tuple(error.problem["loc"]))
        return problem_text(inner, noun)
    kind, field = problem["type"], field_name(problem["loc"])
    if kind == "missing":  # "missing 'graph'" (JSON), "missing the key 'templates'" (TOML)
        return f"missing {'the key ' if noun == 'key' else ''}{field!r}"
    if kind == "extra_forbidden":
        return f"unknown {noun} {field!r}"
    if kind == "value_error" and not isinstance(error, Expected):
        text, got = str(error), ""  # a validator's own sentence, which names the value
    else:
        text, got = _expected(problem), f", got {short(problem.get('input'))}"
    if not field:
        return text + got
    joiner = " " if text.startswith("must ") else ": "  # "half_length must be ..."
    return f"{field}{joiner}{text}{got}"


def field_name(loc: tuple[Any, ...]) -> str:
    """A location as one path: ``graph.n_layers``, ``scores[3]``, ``edges['a->b'].score``."""
    parts = []
    for part in loc:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(part)):
            parts.append(f".{part}" if parts else str(part))
        else:
            parts.append(f"[{str(part)!r}]")
    return "".join(parts)


_EXPECTED = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "finite_number": "a finite number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "list_type": "a list",
    "tuple_type": "a list",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
}


def _expected(problem: Mapping[str, Any]) -> str:
    """'expected ...' for one pydantic error type."""
    kind, ctx = problem["type"], problem.get("ctx") or {}
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}"
    if kind == "literal_error":
        return f"expected {ctx['expected']}"
    bounds = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<="}
    if kind in bounds or kind == "less_than":
        limit = next(iter(ctx.values()))
        what = "an integer" if isinstance(problem.get("input"), int) else "a number"
        return f"expected {what} {bounds.get(kind, '<')} {limit}"
    if kind == "too_short":
        return f"expected at least {ctx['min_length']} item(s)"
    if kind == "too_long":
        return f"expected at most {ctx['max_length']} item(s)"
    if kind == "value_error":
        return str(ctx["error"])
    message = str(problem.get("msg", kind))
    return message.replace("Input should be ", "expected ").replace("Value error, ", "")


_SHORT = reprlib.Repr()
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlevel = 40, 40, 2
_SHORT.maxlist = _SHORT.maxdict = _SHORT.maxtuple = 4


def short(value: Any) -> str:
    """A bounded, one-line repr (a huge or deeply nested value prints as a few characters)."""
    return _single_line(_SHORT.repr(value))


def _single_line(text: str) -> str:
    return text.replace("\r", "\\r").replace("\n", "\\n")


# --------------------------------------------------------------------------------------------
# Value types


def finite_number(value: Any) -> float:
    """A JSON number (int or float, not bool) that is finite, as a float."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Expected("expected a finite number")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond float range
        raise Expected("expected a finite number") from None
    if not math.isfinite(number):
        raise Expected("expected a finite number")
    return number


def encoded_number(value: Any) -> float:
    """A finite number, or one of circuit.json's "NaN", "Infinity", "-Infinity" (a float
    infinity from JSON, e.g. 1e400, is refused: only the strings say non-finite)."""
    if isinstance(value, str) and value in NONFINITE:
        return NONFINITE[value]
    try:
        return finite_number(value)
    except Expected:
        raise Expected('expected a finite number or "NaN", "Infinity", "-Infinity"') from None


def _json_scalar(value: Any) -> Any:
    """null, true/false, an integer, a finite number or a string (the non-finite strings
    become floats, as circuit.json writes them): an open field's value."""
    if value is None or isinstance(value, bool | int | str):
        return NONFINITE.get(value, value) if isinstance(value, str) else value
    if isinstance(value, float):
        return encoded_number(value)
    raise Expected("expected a string, number, true/false or null")


def sha256_hex(value: Any) -> str:
    if not (isinstance(value, str) and re.fullmatch(r"[0-9a-f]{64}", value)):
        raise Expected("expected a sha256 (64 lowercase hex digits)")
    return value


FiniteFloat = Annotated[float, PlainValidator(finite_number)]
EncodedFloat = Annotated[float, PlainValidator(encoded_number)]
JsonScalar = Annotated[Any, PlainValidator(_json_scalar)]
Sha256 = Annotated[str, PlainValidator(sha256_hex)]
Count = Annotated[int, Field(ge=0)]
Positive = Annotated[int, Field(ge=1)]
