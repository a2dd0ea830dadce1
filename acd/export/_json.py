"""JSON helpers shared by the writers and readers of acd.export."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from acd.errors import AcdError
from acd.formats.common import parse_json, read_text


def read_json(path: str | Path) -> Any:
    """The parsed JSON of ``path``; a missing, unreadable, non-UTF-8 or malformed file (or
    one nested too deeply to parse) is one AcdError line."""
    path = Path(path)
    if not path.is_file():
        raise AcdError(f"{path}: no such file")
    return parse_json(read_text(path, str(path)), str(path))


def finite_or_none(value: Any) -> Any:
    """Copy with non-finite floats replaced by None (strict JSON for node-link files)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite_or_none(v) for v in value]
    return value
