"""Checks of a run that read the model's config or the task, made before the model loads.

They complement acd/preflight.py (output folders, memory): the device and the model's name,
the sizes asked for against the graph the model's config implies, the seed of a model check,
and the number of prompts against what the task can give. Each raises AcdError with one line.
"""

from __future__ import annotations

from acd.errors import AcdError


def check_model(name: str, device: str | None) -> dict | None:
    """The device and the model's name or path, checked without loading; the model's
    config.json when it is on disk (for the size checks), else None."""
    from acd.models import check_device, model_config

    check_device(device)
    return model_config(name)


def check_graph_size(
    config: dict | None, edges: int | None, candidates: int | None, nodes: int | None = None
) -> None:
    """``edges`` (--edges), ``candidates`` (--candidates) and ``nodes`` (--nodes) against the
    graph the model's config implies; nothing to check without a config."""
    from acd.graph import ComputeGraph
    from acd.nodes import n_selectable

    if config is None:
        return
    try:
        graph = ComputeGraph.from_config(config)
    except (ValueError, TypeError, KeyError):
        return  # an unusual config: discover checks against the loaded model's graph
    n_edges = graph.n_edges
    if edges is not None and edges > n_edges:
        raise AcdError(f"cannot keep {edges} edges: the graph has {n_edges} (choose 0..{n_edges})")
    most = n_selectable(graph)  # heads and MLPs: input is always kept
    if nodes is not None and nodes > most:
        raise AcdError(
            f"cannot keep {nodes} nodes: the graph has {most} heads and MLPs (choose 0..{most})"
        )
    if candidates is not None and candidates > n_edges:
        raise AcdError(f"--candidates {candidates}: the graph has only {n_edges} edges")


def check_held_out_seed(seed: int) -> None:
    """A model check's prompt seed must be below the seeds the toy model was trained on, so
    that its prompts are held out from training."""
    from acd.models.train_toy import TRAIN_SEED_BASE

    if seed >= TRAIN_SEED_BASE:
        raise AcdError(
            f"--seed {seed}: seeds from {TRAIN_SEED_BASE} on are used for training; "
            "held-out prompts need a smaller seed"
        )


def discovery_prompts(task, requested: int | None, seed: int) -> tuple[int, list]:
    """The number of discovery prompts (checked against a pair file's discovery rows), and a
    few of them to estimate their length."""
    from acd.heldout import available_prompts, discovery_split, resolve_prompts
    from acd.preflight import LENGTH_SAMPLE

    drawn_from, split = discovery_split(task, seed)
    held = "" if split.generated or split.in_sample else f" ({split.evaluation} more held out)"
    size = available_prompts(drawn_from)
    n = resolve_prompts(requested, size, task.name, f"discovery rows{held}")
    return n, drawn_from.prompt_pairs(min(n, LENGTH_SAMPLE), seed)


def curve_prompts(task, requested: int | None, seed: int) -> tuple[int, list]:
    """The number of prompts of a curve (checked against a pair file's rows: a curve scores
    and evaluates the same prompts, as MIB does, so it may use all of them), and a few of them
    to estimate their length."""
    from acd.heldout import available_prompts, resolve_prompts
    from acd.preflight import LENGTH_SAMPLE

    n = resolve_prompts(requested, available_prompts(task), task.name, "rows")
    return n, task.prompt_pairs(min(n, LENGTH_SAMPLE), seed)
