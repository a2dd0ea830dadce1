"""The `acd` command line: a thin layer over the Python API.

Every user mistake ends as one line on stderr (``acd: error: ...``) and exit code 2; nothing
the user typed wrong produces a traceback. Ctrl-C (and SIGTERM) end with exit code 130 and no
half-written file (every write is atomic, acd/atomic.py).

Under ``torchrun`` the commands that run the model join the process group
(acd.distributed.init_from_env), split the prompts over the processes, and only rank 0 prints
and writes files.

The parser is in acd/cli/parser.py; each command's handler (read the arguments, call the
library, print) in acd/cli/models.py (models, tasks, check-model), discover.py, evaluate.py,
saved.py (render, compare) and curve.py.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from acd.cli.common import load_model_verbose
from acd.cli.parser import build_parser
from acd.errors import AcdError
from acd.threads import apply_threads, resolve_threads

__all__ = ["build_parser", "main"]

# The model loader of every command, looked up here when a command runs
# (acd.cli.common.load_command_model): tests replace this one name to skip the load.
_load_model_verbose = load_model_verbose


def main(argv: list[str] | None = None) -> int:
    """Run the command ``argv`` (default: sys.argv) names; its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # SIGTERM (a job scheduler, `kill`) unwinds like Ctrl-C, so atomic writes clean up.
    previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    restore_threads = None
    try:
        if hasattr(args, "threads"):  # a command that runs a model
            restore_threads = _set_threads(args)
        return args.func(args)
    except AcdError as err:
        print(f"acd: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("acd: interrupted", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        if restore_threads is not None:  # an in-process caller keeps its own count
            import torch

            torch.set_num_threads(restore_threads)


def _set_threads(args: argparse.Namespace) -> int:
    """Resolve and apply the thread count before the model loads (acd/threads.py has the rule);
    print it as the first line of the run header (rank 0 only). Returns torch's previous count."""
    import torch

    choice = resolve_threads(args.threads)
    before = torch.get_num_threads()
    apply_threads(choice.n)
    args.thread_choice = choice
    if os.environ.get("RANK", "0").strip() in ("", "0"):
        print(choice.header(), flush=True)
    return before


def _raise_keyboard_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt
