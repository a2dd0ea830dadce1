"""MIB circuit-localization submissions: a circuit's scores in the folder layout MIB evaluates.

The layout, as the MIB circuit track describes it (README of github.com/hannamw/MIB-circuit-track,
"Submitting to the MIB Leaderboard", and the leaderboard's evaluator, ``eval_submissions.py`` /
``MIB_circuit_track/evaluation.py`` of github.com/mttk/MIB-circuit-track-autoeval):

    DIR/                         the folder whose URL is submitted (one per method)
      ioi_gpt2/                  one folder per task and model: "{task}_{model}"
        importances.json         either ONE file of edge scores (kind="importances") ...
      ioi_gpt2/
        circuit_0.1pct.json      ... or NINE circuits (kind="circuits"), with at most
        circuit_0.2pct.json      0.1, 0.2, 0.5, 1, 2, 5, 10, 20 and 50 % of the edges
        ...                      (MIB adds the full model as the tenth point itself)
        circuit_50pct.json

Each file is EAP-IG's graph JSON (``acd.export.eapig``; edges named ``"src->dst"`` as EAP-IG
names them, nodes in the ``{"in_graph": ..}`` form MIB's ``load_graph_from_json`` reads). MIB
evaluates an importances file by taking the top-n edges itself at each size; for nine circuits
it evaluates each file's ``in_graph`` edges as they are, smallest first, so any other .json in
the folder would be taken for a circuit: the folder holds the submission's files only.

Task folder names use MIB's spelling with dashes (``arithmetic-addition``, ``arc-easy``): the
evaluator splits its result names at ``_``. Of acd's shipped tasks only ``ioi`` is a MIB task;
``greater-than``, ``induction`` and the compiled programs are not (MIB's tasks are IOI, MCQA,
arithmetic addition / subtraction, ARC easy / challenge). Of MIB's models only GPT-2 small
can come from acd: Qwen-2.5, Gemma-2 and Llama-3.1 use grouped-query attention, which MIB
ungroups into one k/v input per head while acd's graphs keep one per group (and EAP-IG's
format has none; ``eapig_dict`` refuses them).

Signs. MIB ranks an importances file by signed score for CPR, most helpful first, with its
scores attributed to a loss (minus the metric); acd's scores under a task metric are the
metric's change, so a helpful edge scores negative (``acd.curves``). The scores are therefore
written negated, unless ``higher_is_helpful`` (e.g. a circuit scored or searched with
``metric="kl"``, which removing a helpful edge raises); the readers undo it alike.

Folders are written whole: the files are staged in a hidden folder beside the target and
renamed into place, so an interruption leaves the old folder or the complete new one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from acd.atomic import atomic_write
from acd.circuit import Circuit
from acd.curves import CURVE_PERCENTS, edge_counts
from acd.errors import AcdError
from acd.export._json import read_json
from acd.export.eapig import eapig_dict, eapig_from_dict
from acd.export.save import _STAGING_PREFIX, _remove_dead_staging
from acd.search import select_topn

# MIB's task names as its folders spell them (the evaluator's TASKS_TO_HF_NAMES keys).
MIB_TASKS = (
    "ioi",
    "mcqa",
    "arithmetic-addition",
    "arithmetic-subtraction",
    "arc-easy",
    "arc-challenge",
)

# The task / model pairs MIB scores (``COL_MAPPING`` of MIB_circuit_track/utils.py); the
# evaluator skips any other folder.
MIB_TASK_MODELS = {
    "ioi": ("gpt2", "qwen2.5", "gemma2", "llama3"),
    "mcqa": ("qwen2.5", "gemma2", "llama3"),
    "arithmetic-addition": ("llama3",),
    "arithmetic-subtraction": ("llama3",),
    "arc-easy": ("gemma2", "llama3"),
    "arc-challenge": ("llama3",),
}

# The percentages of the nine circuits: MIB's sizes without the full model (100 %).
MIB_PERCENTS = tuple(p for p in CURVE_PERCENTS if p < 100)

IMPORTANCES_FILE = "importances.json"

Kind = Literal["importances", "circuits"]


@dataclass(frozen=True)
class MibModel:
    """One of MIB's models: its folder name, the names acd may know it by, and the shape of its
    EAP-IG graph (``n_edges`` is MIB's ``EDGE_COUNTS``, with grouped-query attention ungrouped)."""

    name: str
    aliases: tuple[str, ...]
    n_layers: int
    n_heads: int
    d_model: int
    n_edges: int


MIB_MODELS = {
    m.name: m
    for m in (
        MibModel("gpt2", ("gpt2", "gpt2-small", "openai-community/gpt2"), 12, 12, 768, 32491),
        MibModel("qwen2.5", ("qwen2.5", "qwen/qwen2.5-0.5b"), 24, 14, 896, 179749),
        MibModel("gemma2", ("gemma2", "google/gemma-2-2b"), 26, 8, 2304, 74218),
        MibModel(
            "llama3",
            ("llama3", "meta-llama/llama-3.1-8b", "meta-llama/meta-llama-3.1-8b"),
            32,
            32,
            4096,
            1592881,
        ),
    )
}


@dataclass
class MibFolder:
    """One ``{task}_{model}`` folder of a submission, read back (``read_mib_folder``).

    ``importances`` is the circuit of the one file of scores, or None; ``circuits`` maps each
    percentage of ``MIB_PERCENTS`` to its circuit (empty for an importances folder).
    """

    path: Path
    task: str
    model: str
    importances: Circuit | None = None
    circuits: dict[float, Circuit] = field(default_factory=dict)

    @property
    def kind(self) -> Kind:
        return "importances" if self.importances is not None else "circuits"


def mib_task_name(task: str) -> str | None:
    """MIB's name of ``task`` (acd's task name, or MIB's with ``_`` or ``-``), None if MIB
    has no such task (``greater-than``, ``induction``, the compiled programs ...)."""
    name = task.strip().lower().replace("_", "-")
    return name if name in MIB_TASKS else None


def mib_model_name(model: str) -> str | None:
    """MIB's name of ``model`` (MIB's own name or a hub name of it), None if MIB has none."""
    name = model.strip().lower()
    for m in MIB_MODELS.values():
        if name in m.aliases:
            return m.name
    return None


def circuit_file_name(percent: float) -> str:
    """The file of the circuit with at most ``percent`` % of the edges: circuit_0.1pct.json."""
    return f"circuit_{percent:g}pct.json"


def mib_folder_name(task: str, model: str) -> str:
    """``{task}_{model}`` of MIB's names, refused (AcdError) unless MIB scores that pair."""
    if task not in MIB_TASK_MODELS:
        raise AcdError(f"{task!r} is not a MIB task; MIB's tasks: {', '.join(MIB_TASKS)}")
    if model not in MIB_MODELS:
        raise AcdError(f"{model!r} is not a MIB model; MIB's models: {', '.join(MIB_MODELS)}")
    if model not in MIB_TASK_MODELS[task]:
        raise AcdError(
            f"MIB does not score {task} on {model} (only on {', '.join(MIB_TASK_MODELS[task])})"
        )
    return f"{task}_{model}"


def write_mib(
    circuit: Circuit,
    directory: str | Path,
    *,
    kind: Kind = "importances",
    task: str | None = None,
    model: str | None = None,
    absolute: bool = True,
    higher_is_helpful: bool | None = None,
) -> Path:
    """Write ``circuit`` as the ``{task}_{model}`` folder of a MIB submission in ``directory``;
    return that folder. An existing folder of that name is replaced whole.

    Args:
        kind: ``"importances"``: one file, importances.json, of every edge's score (MIB picks
            the top edges itself); ``"circuits"``: the nine circuits of ``MIB_PERCENTS``, each
            the top floor(p / 100 * n_edges) edges (``acd.curves.edge_counts``).
        task, model: MIB's names (default: the circuit's task and model, mapped by
            ``mib_task_name`` / ``mib_model_name``).
        absolute: for ``"circuits"``, rank edges by |score| (CMD's order) rather than signed
            score, most helpful first (CPR's).
        higher_is_helpful: whether the circuit's scores are already MIB's sign (module
            docstring); default: when the circuit's scoring metric is ``kl``.
    """
    if kind not in ("importances", "circuits"):
        raise AcdError(f"unknown MIB submission kind {kind!r}; choose importances or circuits")
    if circuit.level != "edge":
        raise AcdError(
            "MIB submissions are written from edge scores; this circuit is node-level "
            "(acd discover --level node): discover it at --level edge to export it"
        )
    # A name given is taken in MIB's spelling where it has one ("arc_easy" -> "arc-easy");
    # mib_folder_name refuses any other.
    if task is not None:
        task = mib_task_name(task) or task
    else:
        task = _required_name(mib_task_name(circuit.task), circuit.task, "task")
    if model is not None:
        model = mib_model_name(model) or model
    else:
        model = _required_name(mib_model_name(circuit.model), circuit.model, "model")
    folder_name = mib_folder_name(task, model)
    mib_model = MIB_MODELS[model]
    _check_graph(circuit, mib_model)
    if higher_is_helpful is None:
        higher_is_helpful = circuit.params.get("metric") == "kl"
    signed = _with_sign(circuit, flip=not higher_is_helpful)

    if kind == "importances":
        documents = {IMPORTANCES_FILE: _document(signed, signed.mask, mib_model)}
    else:
        counts = edge_counts(MIB_PERCENTS, circuit.graph.n_edges)
        documents = {
            circuit_file_name(p): _document(
                signed,
                select_topn(signed.scores, circuit.graph.valid, n, absolute=absolute),
                mib_model,
            )
            for p, n in zip(MIB_PERCENTS, counts)
        }
    return _write_folder(Path(directory), folder_name, documents)


def read_mib_folder(folder: str | Path, *, higher_is_helpful: bool = False) -> MibFolder:
    """Read one ``{task}_{model}`` folder: its importances file (any one .json) or its nine
    circuits (``circuit_file_name``). Scores are given back in acd's sign unless
    ``higher_is_helpful`` (pass what ``write_mib`` was given)."""
    folder = Path(folder)
    task, model = _parse_folder_name(folder)
    files = _submission_files(folder)
    if any(f.suffix == ".pt" for f in files):
        raise AcdError(f"{folder}: acd reads MIB's .json circuit files only, not .pt")
    flip = not higher_is_helpful
    if len(files) == 1:
        return MibFolder(folder, task, model, importances=_read(files[0], task, model, flip))
    expected = [folder / circuit_file_name(p) for p in MIB_PERCENTS]
    if sorted(files) != sorted(expected):
        raise AcdError(
            f"{folder}: expected one .json of scores or the nine files "
            f"{circuit_file_name(MIB_PERCENTS[0])} ... {circuit_file_name(MIB_PERCENTS[-1])}; "
            f"found {', '.join(f.name for f in files) or 'none'}"
        )
    circuits = {p: _read(path, task, model, flip) for p, path in zip(MIB_PERCENTS, expected)}
    return MibFolder(folder, task, model, circuits=circuits)


def read_mib(directory: str | Path, *, higher_is_helpful: bool = False) -> dict[str, MibFolder]:
    """Every ``{task}_{model}`` folder of the submission in ``directory``, by folder name
    (hidden folders, e.g. an interrupted write's staging, are skipped)."""
    root = Path(directory)
    if not root.is_dir():
        raise AcdError(f"{root}: no such folder")
    return {
        sub.name: read_mib_folder(sub, higher_is_helpful=higher_is_helpful)
        for sub in sorted(root.iterdir())
        if sub.is_dir() and not sub.name.startswith(".")
    }


def mib_layout_problems(directory: str | Path) -> list[str]:
    """What MIB's submission check would object to in ``directory`` (empty: none), one line
    each: a folder not named ``{task}_{model}`` of a pair MIB scores, a folder with neither
    one nor nine circuit files, and fewer than two tasks or two models in all (MIB's rule
    against trivial submissions)."""
    root = Path(directory)
    if not root.is_dir():
        return [f"{root}: no such folder"]
    problems = []
    tasks, models = set(), set()
    for sub in sorted(root.iterdir()):
        if not sub.is_dir() or sub.name.startswith("."):
            continue
        try:
            task, model = _parse_folder_name(sub)
        except AcdError as err:
            problems.append(str(err))
            continue
        tasks.add(task)
        models.add(model)
        n_files = len(_submission_files(sub))
        if n_files not in (1, len(MIB_PERCENTS)):
            problems.append(f"{sub}: {n_files} circuit files; MIB takes 1 (scores) or 9 (circuits)")
    if len(tasks) < 2 or len(models) < 2:
        problems.append(
            f"MIB needs circuits of at least 2 tasks and 2 models; {root} has "
            f"{len(tasks)} task(s) ({', '.join(sorted(tasks)) or 'none'}) and "
            f"{len(models)} model(s) ({', '.join(sorted(models)) or 'none'})"
        )
    return problems


# --- helpers ---------------------------------------------------------------------------------


def _required_name(mapped: str | None, name: str, what: str) -> str:
    """``mapped``, or an AcdError saying that ``name`` has no MIB counterpart."""
    if mapped is not None:
        return mapped
    choices = MIB_TASKS if what == "task" else tuple(MIB_MODELS)
    raise AcdError(
        f"the circuit's {what} {name!r} is not one of MIB's ({', '.join(choices)}); give MIB's "
        f"name ({what}= in Python, --mib-{what} on the command line) if it is one of them"
    )


def _check_graph(circuit: Circuit, model: MibModel) -> None:
    """Refuse a circuit whose graph is not the EAP-IG graph MIB evaluates ``model`` with."""
    graph = circuit.graph
    if graph.n_kv_heads != graph.n_heads:
        raise AcdError(
            f"MIB evaluates {model.name} with one key/value input per head; this circuit's "
            f"graph has {graph.n_kv_heads} key/value groups for {graph.n_heads} heads, which "
            "EAP-IG's format cannot hold"
        )
    shape = (graph.n_layers, graph.n_heads, graph.shape.has_mlp, graph.n_edges)
    if shape != (model.n_layers, model.n_heads, True, model.n_edges):
        raise AcdError(
            f"this circuit's graph ({graph.n_layers} layers x {graph.n_heads} heads, "
            f"{graph.n_edges:,} edges) is not MIB's {model.name} graph ({model.n_layers} x "
            f"{model.n_heads}, {model.n_edges:,} edges)"
        )
    recorded = circuit.params.get("d_model")
    if recorded is not None and int(recorded) != model.d_model:
        raise AcdError(
            f"the circuit's d_model is {recorded}; MIB's {model.name} has {model.d_model}"
        )


def _with_sign(circuit: Circuit, *, flip: bool) -> Circuit:
    """``circuit`` with its edge and node scores negated when ``flip``."""
    if not flip:
        return circuit
    return dataclasses.replace(
        circuit,
        scores=-circuit.scores,
        node_scores={name: -score for name, score in circuit.node_scores.items()},
    )


def _document(circuit: Circuit, mask: torch.Tensor, model: MibModel) -> dict:
    """The EAP-IG document of ``circuit`` with ``mask`` as its kept edges."""
    kept = dataclasses.replace(circuit, mask=mask)
    return eapig_dict(kept, d_model=model.d_model)


def _write_folder(root: Path, name: str, documents: dict[str, dict]) -> Path:
    """Write ``documents`` (file name -> JSON document) as the folder ``root/name``, replacing
    any folder of that name whole, through a hidden staging folder in ``root`` (the one
    ``acd.export.save`` uses, so a SIGKILLed write's leftovers are removed by the next)."""
    if root.exists() and not root.is_dir():
        raise AcdError(f"cannot write the submission into {root}: it is a file, not a folder")
    root.mkdir(parents=True, exist_ok=True)
    _remove_dead_staging(root)
    target = root / name
    if target.exists() and not target.is_dir():
        raise AcdError(f"cannot write the MIB folder {target}: a file has that name")
    staging = Path(
        tempfile.mkdtemp(dir=root, prefix=f"{_STAGING_PREFIX}{os.getpid()}-", suffix=".tmp")
    )
    try:
        folder = staging / name
        folder.mkdir()
        for file_name, document in documents.items():
            # EAP-IG writes with Python's json too (NaN node scores as NaN).
            atomic_write(folder / file_name, json.dumps(document))
        if target.exists():
            # Out of the way into the staging folder; put back if the rename below fails.
            old = staging / f"{name}.old"
            os.rename(target, old)
            try:
                os.rename(folder, target)
            except BaseException:
                os.rename(old, target)
                raise
        else:
            os.rename(folder, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _parse_folder_name(folder: Path) -> tuple[str, str]:
    """MIB's task and model of a ``{task}_{model}`` folder; AcdError for another name."""
    task, sep, model = folder.name.partition("_")
    if not sep or task not in MIB_TASK_MODELS or model not in MIB_TASK_MODELS[task]:
        pairs = ", ".join(f"{t}_{m}" for t, ms in MIB_TASK_MODELS.items() for m in ms)
        raise AcdError(f"{folder}: not a MIB task_model folder name (MIB's: {pairs})")
    return task, model


def _submission_files(folder: Path) -> list[Path]:
    """The circuit files of a folder as MIB's evaluator downloads them: .json and .pt."""
    return sorted(f for f in folder.iterdir() if f.is_file() and f.suffix in (".json", ".pt"))


def _read(path: Path, task: str, model: str, flip: bool) -> Circuit:
    """The circuit of one EAP-IG file of the submission, with acd's sign when ``flip``."""
    circuit = eapig_from_dict(read_json(path), source=str(path), task=task, model=model)
    return _with_sign(circuit, flip=flip)
