"""discover: the whole flow, from a task and a model to a Circuit.

task ──► prompt pairs ──► batch ─┐
model ──► ComputeGraph ──────────┴─► scores (attribution) ─► selection (search)
                                                                 │
                                    Circuit ◄── evaluation ◄─────┘
"""

from __future__ import annotations

import time
from typing import Any

import torch

from acd.attribution import METHODS, attribute
from acd.circuit import Circuit
from acd.errors import AcdError
from acd.evaluate import evaluate_circuit
from acd.graph import ComputeGraph
from acd.models import ModelAdapter, load_model
from acd.search import (
    SELECTIONS,
    prune_dangling,
    select_greedy,
    select_threshold,
    select_topn,
)
from acd.tasks import Task, load_task


def discover(
    task: str | Task,
    model: str | ModelAdapter = "toy",
    *,
    method: str = "eap",
    edges: int = 200,
    selection: str = "topn",
    threshold: float | None = None,
    prune: bool = True,
    prompts: int = 100,
    seed: int = 0,
    metric: str | None = None,
    ablation: str = "corrupted",
    absolute: bool = True,
    batch_size: int | None = None,
    ig_steps: int = 5,
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
    progress: bool = True,
) -> Circuit:
    """Find the circuit of ``task`` in ``model``: score every edge, select, prune, evaluate.

    Args:
        task: a shipped task name, a path to a task file, or a Task.
        model: the embedded model's name, a local HF directory, a hub name, or a loaded model.
        method: edge scores, ``eap``, ``eap-ig`` or ``exact`` (see acd.attribution).
        edges: how many edges to select (by |score| when ``absolute``, else by signed score).
        selection: ``topn`` (the best ``edges`` edges), ``greedy`` (grown from the logits
            backwards, ``edges`` of them) or ``threshold`` (every edge scoring at least
            ``threshold``); see acd.search.
        prune: drop the selected edges that lie on no input -> logits path, so a circuit may
            keep fewer than ``edges`` edges (``metrics["n_selected"]`` says how many were
            selected). With corrupted patching this changes no output: a source whose inputs
            are all patched emits its corrupted value anyway. Under zero or mean ablation such
            a source emits what its ablated inputs make of it, so pruning can move the metric.
        prompts: how many prompt pairs to score and evaluate on; ``seed`` chooses them.
        metric: what the scores and the evaluation measure; default the task's own metric.
        ablation: what removed edges carry: ``corrupted`` (default), ``zero`` or ``mean``.
        batch_size: prompts per forward pass (default: all at once).
        ig_steps: interpolation steps for ``eap-ig``.

    Returns: a Circuit whose ``edges``, ``edge_scores`` (every valid edge) and
    ``metrics["faithfulness"]`` are filled.
    """
    if method not in METHODS:
        raise AcdError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if selection not in SELECTIONS:
        raise AcdError(f"unknown selection {selection!r}; choose one of {', '.join(SELECTIONS)}")
    if selection == "threshold" and threshold is None:
        raise AcdError("selection 'threshold' needs threshold=")
    start = time.perf_counter()
    if not isinstance(model, ModelAdapter):
        model = load_model(model, device=device, dtype=dtype)
    if not isinstance(task, Task):
        task = load_task(task)
    batch = task.make_batch(model.tokenizer, prompts, seed).to(model.device)
    graph = ComputeGraph.from_model(model)
    metric = metric or task.metric

    scores = attribute(
        model,
        graph,
        batch,
        method=method,
        metric=metric,
        ablation=ablation,
        batch_size=batch_size,
        ig_steps=ig_steps,
        progress=progress,
    )
    if selection == "topn":
        selected = select_topn(scores, graph.valid, edges, absolute=absolute)
    elif selection == "greedy":
        selected = select_greedy(scores, graph, edges, absolute=absolute)
    else:
        selected = select_threshold(scores, graph.valid, threshold, absolute=absolute)
    mask = prune_dangling(selected, graph) if prune else selected
    evaluation = evaluate_circuit(
        model, graph, batch, mask, metric=metric, ablation=ablation, batch_size=batch_size
    )
    params: dict[str, Any] = {
        "edges": edges,
        "prompts": prompts,
        "metric": metric,
        "ablation": ablation,
        "selection": selection,
        "absolute": absolute,
        "prune": prune,
        "batch_size": batch_size,
    }
    if method == "eap-ig":
        params["ig_steps"] = ig_steps
    if selection == "threshold":
        params["threshold"] = threshold
    metrics = evaluation.summary()
    metrics["n_selected"] = int(selected.sum())
    metrics["seconds"] = round(time.perf_counter() - start, 3)
    return Circuit(
        graph=graph,
        mask=mask,
        scores=scores,
        task=task.name,
        model=model.name,
        method=method,
        params=params,
        seed=seed,
        metrics=metrics,
    )
