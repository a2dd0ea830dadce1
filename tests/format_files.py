"""Valid files of every kind acd reads, written by acd's own writers on the tiny random models
of tests/conftest.py, for the schema tests (test_formats.py, test_formats_fuzz.py).

Each builder is cached per model, so both test modules share one discovery run and one ACDC
run per session.
"""

from __future__ import annotations

import atexit
import contextlib
import csv
import functools
import io
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from random_batches import random_batch

import acd
from acd.acdc import _checkpoint_header
from acd.export import circuit_json
from acd.memory import accumulator_dtype

REPO = Path(__file__).resolve().parents[1]

# Prompt pairs in the tiny tokenizer's vocabulary (TINY_VOCAB): clean and corrupted prompts
# of equal length, single-token answers.
NAMES = ["Mary", "John", "Alice", "Bob", "Tom", "Anna", "Paul", "Sara"]


def pair_rows(n: int = 24) -> list[dict]:
    """``n`` prompt-pair records (IOI-like), as a JSONL or CSV file holds them."""
    rows = []
    for i in range(n):
        io_, s = NAMES[i % 8], NAMES[(i + 3) % 8]
        other = [NAMES[(i + k) % 8] for k in (1, 5, 6)]
        rows.append(
            {
                "clean": f"when {io_} and {s} went to the store {s} gave a w1 to",
                "corrupted": f"when {other[0]} and {other[1]} went to the store {other[2]} "
                "gave a w1 to",
                "answer": f" {io_}",
                "wrong": f" {s}",
            }
        )
    return rows


def jsonl_text(rows: list[dict]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def csv_text(rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


@functools.cache
def _scratch() -> Path:
    """A folder for the files the builders write, removed when the tests end."""
    directory = Path(tempfile.mkdtemp(prefix="acd-test-formats-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    return directory


def _per_model(build):
    """``build`` cached by the identity of its arguments (models are not hashable)."""
    cache: dict[tuple[int, ...], object] = {}

    @functools.wraps(build)
    def cached(*args):
        key = tuple(id(a) for a in args)
        if key not in cache:
            cache[key] = (build(*args), args)  # the arguments kept alive: their ids stay theirs
        return cache[key][0]

    return cached


@_per_model
def _discovered(model) -> acd.Circuit:
    path = _scratch() / "pairs.jsonl"
    path.write_text(jsonl_text(pair_rows()))
    quiet = acd.RunConfig(progress=False)
    return acd.discover(path, model, method="eap", select=acd.TopN(12), prompts=8, run=quiet)


def circuit_text(model) -> str:
    """circuit.json of a circuit ``acd.discover`` found on ``model`` (EAP on a pair file)."""
    return circuit_json(_discovered(model))


def eapig_text(model) -> str:
    """The same circuit as EAP-IG graph JSON (``acd.write_eapig_json``'s document)."""
    from acd.export import eapig_dict

    return json.dumps(eapig_dict(_discovered(model), d_model=32))


@dataclass
class CheckpointCase:
    """An ACDC checkpoint written mid-search, with what a resumed run checks it against."""

    text: str
    header: dict
    graph: acd.ComputeGraph
    initial: torch.Tensor
    dtype: torch.dtype


class _Stop(KeyboardInterrupt):
    pass


@_per_model
def checkpoint_case(model, graph) -> CheckpointCase:
    """The checkpoint ``acd.acdc`` writes after 12 of the tiny graph's 27 destinations."""
    batch = random_batch(4, 7, seed=0, d_vocab=60)
    path = _scratch() / "acdc-checkpoint.json"
    done = []

    def stop(*_):
        done.append(1)
        if len(done) == 12:
            raise _Stop

    with contextlib.suppress(_Stop):
        acd.acdc(model, graph, batch, tau=0.001, checkpoint=path, on_progress=stop, progress=False)
    header = _checkpoint_header(model, graph, batch, 0.001, "kl", "corrupted", None)
    text = path.read_text()
    path.unlink()
    return CheckpointCase(text, header, graph, graph.valid.clone(), accumulator_dtype(model))


def task_folder(directory: Path) -> Path:
    """The shipped task files (tasks/*.toml and their word lists) copied into ``directory``,
    with a pair file and a TOML of kind ``pairs`` naming it."""
    for path in (REPO / "tasks").iterdir():
        if path.suffix in (".toml", ".txt"):
            shutil.copy(path, directory / path.name)
    (directory / "pairs.jsonl").write_text(jsonl_text(pair_rows()))
    (directory / "pairs.csv").write_text(csv_text(pair_rows()))
    (directory / "pairs.toml").write_text(
        'name = "pairs"\nkind = "pairs"\nmetric = "prob_diff"\nfile = "pairs.jsonl"\n'
    )
    return directory
