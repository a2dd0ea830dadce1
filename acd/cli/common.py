"""What the command modules share: loading the model with a one-line account, and the plain
text tables and cells they print."""

from __future__ import annotations

import time


def load_model_verbose(name: str, device, dtype, *, quiet: bool = False):
    """The model, loaded with one line saying what and where (``quiet``: no line, as on a
    torchrun process other than rank 0)."""
    from acd.models import load_model

    start = time.perf_counter()
    if not quiet:
        print(f"loading model {name} ...", end="", flush=True)
    model = load_model(name, device=device, dtype=dtype)
    if not quiet:
        print(
            f" {model.spec.n_layers} layers x {model.spec.n_heads} heads on {model.device} "
            f"({time.perf_counter() - start:.1f} s)"
        )
    return model


def load_command_model(name: str, device, dtype, *, quiet: bool = False):
    """The model a command runs, loaded by ``acd.cli._load_model_verbose``.

    Looked up there when called, not imported: that one name is what tests replace to answer
    every load with a model already loaded (tests/conftest.py, ``cached_toy``)."""
    import acd.cli

    return acd.cli._load_model_verbose(name, device, dtype, quiet=quiet)


def quiet_transformers() -> None:
    """No per-load "Loading weights" bar: the command prints its own, shorter account.

    The command line owns its process, so switching transformers' bars off here is harmless;
    the library itself leaves them alone.
    """
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def diagram_formats(requested: list[str] | None) -> tuple[str, ...]:
    """The diagram formats of repeated --format options, in order, once each; svg if none."""
    return tuple(dict.fromkeys(requested or ["svg"]))


def table(rows: list[tuple[str, ...]]) -> str:
    """``rows`` as left-aligned columns two spaces apart, the first row the header."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows
    )


def cell(value: object) -> str:
    """A table cell: "-" for None, integers with thousands separators."""
    return "-" if value is None else f"{value:,}" if isinstance(value, int) else str(value)


def figure(value: float | None) -> str:
    """A figure to 3 decimals, "-" for None (undefined, e.g. precision of an empty circuit)."""
    return "-" if value is None else f"{value:.3f}"
