"""What ``acd evaluate`` re-reads from a saved circuit: the task it was found on, its model,
held-out prompts, and the metric and ablation it was evaluated with.

Each choice follows the command's option when given, else what the circuit records, and
refuses (AcdError, one line) what would be a silently wrong result: a task file that changed
since, or a model whose graph is not the circuit's. acd/heldout.py holds the prompt rules.
"""

from __future__ import annotations

from pathlib import Path

from acd.errors import AcdError


def evaluation_task(circuit, requested: str | None, circuit_file: str):
    """The task to evaluate on, and whether it is the one the circuit was found on.

    ``requested`` (--task) decides when given. Otherwise the circuit's recorded source: a
    shipped task by name, a task file from its path, refused when the file is missing or its
    sha256 changed (evaluating a changed file as if it were the same would be a silent wrong
    result). A file of an older acd records only the task's name. ``circuit_file`` names the
    circuit in messages."""
    from acd.heldout import same_task
    from acd.tasks import load_task

    if requested:
        task = load_task(requested)
        # A file that records no task (EAP-IG's) counts as the same: held_out then says that
        # the overlap with discovery's prompts is unchecked.
        records_none = not circuit.task and circuit.task_source is None
        return task, records_none or same_task(circuit.task_source, circuit.task, task)
    if circuit.task_source is None:
        return _task_by_recorded_name(circuit, circuit_file), True
    if circuit.task_source.kind == "builtin":
        return load_task(circuit.task_source.name), True
    return _recorded_task_file(circuit, circuit_file), True


def _task_by_recorded_name(circuit, circuit_file: str):
    """The shipped task a circuit of an older acd names (it records no source)."""
    from acd.errors import TaskError
    from acd.tasks import load_task

    if not circuit.task:
        raise AcdError(f"{circuit_file} names no task; give --task")
    try:
        return load_task(circuit.task)
    except TaskError:
        raise AcdError(
            f"{circuit_file} records only its task's name, {circuit.task!r}, which is not a "
            "shipped task; give the task file with --task FILE"
        ) from None


def _recorded_task_file(circuit, circuit_file: str):
    """The task file a circuit was found on, refused when missing or changed since."""
    from acd.heldout import file_sha256
    from acd.tasks import load_task

    recorded = circuit.task_source
    path = Path(recorded.path)
    if not path.is_file():
        raise AcdError(
            f"{circuit_file} was found on the task file {path}, which is missing; give the "
            "task with --task FILE"
        )
    now = file_sha256(path)
    if recorded.sha256 is not None and now != recorded.sha256:
        raise AcdError(
            f"the task file {path} changed since {circuit_file} was found on it (sha256 "
            f"{now[:12]}..., recorded {recorded.sha256[:12]}...); pass --task {path} to "
            "evaluate on it as it is now"
        )
    return load_task(path)


def evaluation_model(circuit, requested: str | None, circuit_file: str) -> str:
    """The model to evaluate on: ``requested`` (--model), else the one the circuit names."""
    name = requested or circuit.model
    if not name:
        raise AcdError(f"{circuit_file} names no model; give --model")
    return name


def evaluation_prompts(circuit, task, same: bool, requested: int | None, seed: int):
    """Where the evaluation prompts come from (acd.heldout.HeldOut), how many to draw
    (``requested``, checked against what the source holds), and a few of them to estimate
    their length."""
    from acd.heldout import held_out, resolve_prompts
    from acd.preflight import LENGTH_SAMPLE

    recorded = circuit.params.get("prompts")
    source = held_out(
        task,
        circuit.prompt_split,
        same=same,
        seed=circuit.seed,
        discovery_prompts=recorded if isinstance(recorded, int) else None,
    )
    what = "rows" if source.in_sample or not same else "held-out rows for evaluation"
    n = resolve_prompts(requested, source.size, task.name, what)
    return source, n, source.task.prompt_pairs(min(n, LENGTH_SAMPLE), seed)


def check_model_graph(circuit, graph, model_name: str) -> None:
    """Refuse (AcdError) a model whose graph is not the circuit's: its mask would mean other
    edges."""
    from acd.circuit_files import same_graph

    if not same_graph(graph, circuit.graph):
        raise AcdError(
            f"the circuit's graph ({circuit.graph.n_src} x {circuit.graph.n_dst}) is not the "
            f"graph of {model_name!r} ({graph.n_src} x {graph.n_dst}); evaluate it on its model"
        )


def weights_differ(circuit, model) -> bool:
    """Whether ``model``'s weights are not those the circuit records it was found on (False
    when it records none)."""
    from acd.models import weights_sha256

    return bool(circuit.model_sha256) and weights_sha256(model) != circuit.model_sha256


def evaluation_metric(requested: str | None, circuit, task) -> str:
    """``requested`` (--metric), else the metric the circuit was evaluated with, not an ACDC
    search's (docs/formats.md), else the task's."""
    metric = requested or circuit.evaluation_metric or task.metric
    return task.metric if metric == "task" else metric


def evaluation_ablation(requested: str | None, circuit) -> str:
    """``requested`` (--ablation), else the circuit's, else corrupted."""
    return requested or circuit.params.get("ablation") or "corrupted"
