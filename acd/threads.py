"""How many CPU threads a command that runs a model gives torch.

torch's own default is one thread per core of the machine, whatever else runs on it. On a
shared CPU that oversubscribes: `acd discover ioi --prompts 32` on a loaded 2-core machine
took several times longer with torch's 2 threads than with 1 (docs/performance.md). The
commands therefore set the count themselves, before the model loads; the rule, first match:

1. ``--threads N``;
2. the environment variable ``ACD_THREADS``;
3. ``OMP_NUM_THREADS`` (its first value, as OpenMP reads ``4,2``; ``torchrun`` with more
   than one process per node sets it to 1 unless it is set already);
4. the physical cores among the CPUs this process may run on (``os.sched_getaffinity``; cores
   are told apart by ``physical id`` / ``core id`` in /proc/cpuinfo, and where that file does
   not say, every allowed CPU counts as one), divided by ``LOCAL_WORLD_SIZE`` (the processes
   per node under ``torchrun``), at least 1.

An empty variable counts as unset. A value that is not a positive integer is a user mistake
(:class:`~acd.errors.AcdError`). CPU quotas of a container (cgroup ``cpu.max``) are not read.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from acd.errors import AcdError

CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True)
class ThreadChoice:
    """The thread count chosen and where it came from (printed in the run header)."""

    n: int
    source: str

    def header(self) -> str:
        chosen = self.source in ("--threads", "ACD_THREADS", "OMP_NUM_THREADS")
        hint = "" if chosen else "; set --threads or OMP_NUM_THREADS"
        return f"threads: {self.n} ({self.source}{hint})"


def resolve_threads(
    requested: str | None,
    environ: Mapping[str, str] | None = None,
    *,
    allowed_cpus: Callable[[], Iterable[int]] | None = None,
    cpuinfo: Callable[[], str] | None = None,
) -> ThreadChoice:
    """The thread count by the rule in the module docstring.

    ``requested`` is the text of ``--threads`` (None when not given). ``environ``,
    ``allowed_cpus`` and ``cpuinfo`` default to the process's own (os.environ,
    os.sched_getaffinity(0), the text of /proc/cpuinfo); tests pass their own.
    """
    env = os.environ if environ is None else environ
    if requested is not None:
        return ThreadChoice(_positive(requested, "--threads"), "--threads")
    for name in ("ACD_THREADS", "OMP_NUM_THREADS"):
        text = env.get(name, "").strip()
        if text:
            # OMP_NUM_THREADS may list one count per nesting level; the first is the outer one.
            first = text.split(",")[0] if name == "OMP_NUM_THREADS" else text
            return ThreadChoice(_positive(first, name, shown=text), name)
    cpus = sorted((allowed_cpus or _allowed_cpus)())
    cores = physical_cores(cpus, (cpuinfo or _read_cpuinfo)())
    source = "physical cores" if cores is not None else "CPUs"
    n = cores if cores is not None else len(cpus)
    local = env.get("LOCAL_WORLD_SIZE", "").strip()
    if local:
        processes = _positive(local, "LOCAL_WORLD_SIZE")
        if processes > 1:
            source += f" / {processes} local processes"
            n //= processes
    return ThreadChoice(max(1, n), source)


def physical_cores(cpus: Iterable[int], cpuinfo_text: str) -> int | None:
    """Distinct (physical id, core id) pairs among ``cpus`` in /proc/cpuinfo's text.

    None where the text does not name the core of every one of ``cpus`` (some virtual
    machines and ARM kernels leave ``core id`` out).
    """
    cores: dict[int, tuple[str, str]] = {}
    for block in cpuinfo_text.split("\n\n"):
        fields = {}
        for line in block.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields[key.strip()] = value.strip()
        if "processor" in fields and "core id" in fields and fields["processor"].isdigit():
            cores[int(fields["processor"])] = (fields.get("physical id", "0"), fields["core id"])
    cpus = list(cpus)
    if not cpus or any(cpu not in cores for cpu in cpus):
        return None
    return len({cores[cpu] for cpu in cpus})


def apply_threads(n: int) -> None:
    """torch.set_num_threads(n), and the inter-op pool to n where torch still allows it.

    torch lets the inter-op count be set once, before any parallel work; a second call (an
    in-process caller that ran torch already) raises, and is then left as it is.
    """
    import torch

    torch.set_num_threads(n)
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(n)


def _positive(text: str, name: str, *, shown: str | None = None) -> int:
    shown = text if shown is None else shown
    try:
        value = int(text.strip())
    except ValueError:
        raise AcdError(f"{name} {shown!r}: not an integer (a thread count, e.g. 1)") from None
    if value < 1:
        raise AcdError(f"{name} {shown!r}: must be at least 1")
    return value


def _allowed_cpus() -> Iterable[int]:
    if hasattr(os, "sched_getaffinity"):
        return os.sched_getaffinity(0)
    return range(os.cpu_count() or 1)


def _read_cpuinfo() -> str:
    try:
        return CPUINFO.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
