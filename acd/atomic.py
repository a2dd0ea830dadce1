"""Atomic file writes: a temporary file in the target's directory, then one rename.

``os.replace`` within one directory is atomic on POSIX and Windows, so a reader (or a user
looking after a crash or Ctrl-C) sees either the old file or the complete new one, never a
half-written file. Temporary names start with ``.`` and end with ``.tmp`` and are removed on
any failure, KeyboardInterrupt included.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path


def atomic_write(path: str | Path, data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` atomically; create missing parent folders."""
    with atomic_paths([path]) as (tmp,):
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)


@contextmanager
def atomic_paths(paths: Sequence[str | Path]) -> Iterator[list[Path]]:
    """Temporary paths beside ``paths``, moved onto them only if the block completes.

    All files are written first and renamed together at the end, so a failure while writing
    any of them leaves none of them replaced and no temporary file behind::

        with atomic_paths(["a.png", "a.svg"]) as (png, svg):
            render(png); render(svg)
    """
    targets = [Path(p) for p in paths]
    temps: list[Path] = []
    try:
        for target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
            os.close(fd)
            temps.append(Path(name))
        yield list(temps)
        for tmp, target in zip(temps, targets):
            # mkstemp creates 0600 files; give the result the permissions of a normal file.
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, target)
        temps.clear()
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
