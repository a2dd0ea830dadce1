"""Where the commands write their files by default, and saving a finished run so that it is
never lost.

Every default is relative to the working directory and made path-safe: ``acd discover`` writes
out/<model>/<task>/<method>/ (the gallery's layout, outside the gallery, so that a run in a
checkout never overwrites it), ``acd curve`` <task>_curve.png/.svg, and ``acd render`` the
diagram beside the circuit file.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from acd.errors import AcdError


def default_out_dir(model: str, task: str, method: str) -> Path:
    """out/<model>/<task>/<method>/ under the working directory (names made path-safe): the
    gallery's layout, outside the gallery, so a run in a checkout never overwrites it."""
    return Path("out", *(path_safe(p) for p in (model, task, method)))


def path_safe(name: str) -> str:
    """``name`` as one path component: a model given as an existing path is named by its
    folder; other characters than letters, digits and ``._-`` become ``--`` (hub names keep
    their owner: "a/b" -> "a--b")."""
    name = Path(name).name if ("/" in name and Path(name).exists()) else name
    return re.sub(r"[^A-Za-z0-9._-]+", "--", name).strip("-") or "model"


def discover_out_dir(out: str | None, model: str, task: str, method: str) -> Path:
    """The folder ``acd discover`` writes into: ``out`` when given, else the default."""
    return Path(out) if out else default_out_dir(model, task, method)


def curve_stem(out: str | None, task: str) -> Path:
    """The path stem of ``acd curve``'s chart: ``out`` when given, else <task>_curve."""
    return Path(out) if out else Path(f"{path_safe(task)}_curve")


def render_stem(out: str | None, circuit_file: str) -> Path:
    """The path stem of ``acd render``'s diagram: ``out`` when given, else beside the circuit
    file (circuit.json -> circuit.svg)."""
    return Path(out) if out else Path(circuit_file).with_suffix("")


def save_or_rescue(circuit, out: Path, formats: tuple[str, ...], attention: dict | None = None):
    """Save the run into ``out`` (``Circuit.save``, with the page's ``attention`` patterns;
    returns its SavedFiles); if that fails after all (the folder was checked before the work,
    but a disk can fill up or permissions change), save it into a new temporary folder instead
    and say where (AcdError), so that a finished result is never lost."""
    try:
        return circuit.save(out, formats=formats, attention=attention)
    except OSError as err:
        rescue = Path(tempfile.mkdtemp(prefix="acd-rescued-"))
        circuit.save(rescue, formats=formats, attention=attention)
        raise AcdError(
            f"could not write into {out} ({err.strerror or err}); the circuit was saved to "
            f"{rescue}/ instead"
        ) from None
