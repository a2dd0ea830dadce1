"""The schema of ACDC checkpoints (``acd.acdc``; format ``acd-acdc-checkpoint``, version 2).

A checkpoint is one JSON object: the header a resumed run must match field for field
(``acd.acdc`` compares it), then the progress. ``parse_checkpoint`` checks the types of both
(strict: no coercion), and ``check_progress`` that the progress is one an ACDC search over the
run's initial circuit could have reached: destinations are visited from the last one down, so
every destination up to ``next_destination`` still holds all its initial edges, every tested
edge (``deltas``) enters a visited destination, and ``visited`` counts exactly the initial
edges into visited destinations. Every problem is one line naming the file and the field.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import torch
from pydantic import Field, PlainValidator

from acd.errors import AcdError
from acd.formats.common import (
    Count,
    Expected,
    Positive,
    Sha256,
    Strict,
    finite_number,
    sha256_hex,
    validate,
)

FORMAT = "acd-acdc-checkpoint"
VERSION = 2


def _tau(value: Any) -> float:
    """A number >= 0; Python's json writes an infinite tau as the literal Infinity."""
    if value == float("inf") and isinstance(value, float):
        return value
    number = finite_number(value)
    if number < 0:
        raise Expected("expected a number >= 0")
    return number


def _delta(value: Any) -> tuple[int, float]:
    """One tested edge: [flat index, finite delta]."""
    if not (isinstance(value, list) and len(value) == 2):
        raise Expected("expected an [edge index, delta] pair")
    index, delta = value
    if isinstance(index, bool) or not isinstance(index, int):
        raise Expected("expected an [edge index, delta] pair with an integer index")
    try:
        return index, finite_number(delta)
    except Expected:
        raise Expected("expected an [edge index, delta] pair with a finite delta") from None


def _optional_sha256(value: Any) -> str | None:
    return None if value is None else sha256_hex(value)


class CheckpointFile(Strict):
    """Header (``acd.acdc._checkpoint_header``) and progress (``_SearchState.to_json``)."""

    format: Literal["acd-acdc-checkpoint"]
    version: Literal[2]
    acd_version: str
    graph: Annotated[list[Positive], Field(min_length=2, max_length=2)]
    dtype: str
    device: str
    model_sha256: Sha256
    tau: Annotated[float, PlainValidator(_tau)]
    metric: str
    ablation: str
    n_prompts: Positive
    prompts_sha256: Sha256
    candidates_sha256: Annotated[str | None, PlainValidator(_optional_sha256)]
    kept: list[int]
    deltas: list[Annotated[tuple[int, float], PlainValidator(_delta)]]
    next_destination: int
    visited: Count


def parse_checkpoint(data: Any, source: str, error: type[AcdError] = AcdError) -> CheckpointFile:
    """The checked checkpoint document (its types); ``error`` (one line) otherwise."""
    return validate(CheckpointFile, data, source, error)


def check_progress(
    checkpoint: CheckpointFile,
    initial: torch.Tensor,
    source: str,
    error: type[AcdError] = AcdError,
) -> None:
    """``error`` unless the progress fits the search over ``initial`` ([n_src, n_dst] bool,
    the edges ACDC started from), as the module docstring says."""
    n_src, n_dst = initial.shape
    flat_initial = initial.flatten()
    kept = _indices(checkpoint.kept, n_src * n_dst, "kept", source, error)
    tested = _indices([i for i, _ in checkpoint.deltas], n_src * n_dst, "deltas", source, error)
    if not -1 <= checkpoint.next_destination < n_dst:
        raise error(
            f"{source}: next_destination: expected -1 .. {n_dst - 1}, got "
            f"{checkpoint.next_destination}"
        )
    if not bool(flat_initial[kept].all()):
        raise error(f"{source}: kept: holds an edge the search did not start from")
    if not bool(flat_initial[tested].all()):
        raise error(f"{source}: deltas: holds an edge the search did not start from")
    visited_dst = torch.zeros(n_dst, dtype=torch.bool)
    visited_dst[checkpoint.next_destination + 1 :] = True
    if not bool(visited_dst[tested % n_dst].all()):
        raise error(f"{source}: deltas: holds an edge into a destination not visited yet")
    kept_mask = torch.zeros(n_src * n_dst, dtype=torch.bool)
    kept_mask[kept] = True
    waiting = ~visited_dst.expand(n_src, n_dst)
    if not torch.equal(kept_mask.view(n_src, n_dst)[waiting], initial[waiting]):
        raise error(
            f"{source}: kept: a destination not visited yet (up to next_destination "
            f"{checkpoint.next_destination}) must still hold all its initial edges"
        )
    expected = int(initial[:, visited_dst].sum())
    if checkpoint.visited != expected:
        raise error(
            f"{source}: visited: {checkpoint.visited} edges tested, but the destinations "
            f"after next_destination hold {expected}"
        )


def _indices(
    values: list[int], size: int, name: str, source: str, error: type[AcdError]
) -> torch.Tensor:
    """Flat edge indices, each in 0 .. size - 1 and listed once, as a long tensor."""
    for k, value in enumerate(values):
        if not 0 <= value < size:
            raise error(
                f"{source}: {name}[{k}]: expected an edge index 0 .. {size - 1}, got {value}"
            )
    if len(set(values)) != len(values):
        raise error(f"{source}: {name}: an edge is listed twice")
    return torch.tensor(values, dtype=torch.long)
