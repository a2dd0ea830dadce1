"""discover: the whole flow, from a task and a model to a Circuit.

task ──► prompt pairs ──► batch ─┐
model ──► ComputeGraph ──────────┴─► scores (attribution) ─► selection (search)
                                                                 │
                                    Circuit ◄── evaluation ◄─────┘

``acdc`` and ``hybrid`` replace scores + selection by the ACDC search (acd.acdc); ``hybrid``
first narrows the search to the top edges of an attribution.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from acd.acdc import ROWS_PER_FORWARD, acdc
from acd.attribution import METHODS, attribute
from acd.circuit import Circuit
from acd.errors import AcdError, AcdWarning
from acd.evaluate import evaluate_circuit, separation
from acd.graph import ComputeGraph
from acd.heldout import available_prompts, discovery_split, resolve_prompts, task_source
from acd.models import ModelAdapter, load_model, weights_sha256
from acd.patching import ABLATIONS
from acd.search import (
    SELECTIONS,
    prune_dangling,
    select_greedy,
    select_threshold,
    select_topn,
)
from acd.tasks import PromptBatch, Task, load_task

SEARCH_METHODS = ("acdc", "hybrid")
HYBRID_SCORING = ("eap-ig", "eap")


def discover(
    task: str | Task,
    model: str | ModelAdapter = "toy",
    *,
    method: str = "eap-ig",
    edges: int | None = None,
    selection: str = "topn",
    threshold: float | None = None,
    prune: bool = True,
    prompts: int | None = None,
    seed: int = 0,
    metric: str | None = None,
    ablation: str = "corrupted",
    absolute: bool = True,
    batch_size: int | None = None,
    ig_steps: int = 5,
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
    progress: bool = True,
    tau: float | None = None,
    candidates: int | None = None,
    scoring: str = "eap-ig",
    checkpoint: str | Path | None = None,
    rows_per_forward: int = ROWS_PER_FORWARD,
    force: bool = False,
) -> Circuit:
    """Find the circuit of ``task`` in ``model``: score every edge, select, prune, evaluate.

    Args:
        task: a shipped task name, a path to a task file, or a Task.
        model: the embedded model's name, a local HF directory, a hub name, or a loaded model.
        method: edge scores, ``eap``, ``eap-ig`` or ``exact`` (see acd.attribution), followed by
            ``selection``; or a search that decides the circuit's size itself: ``acdc`` (ACDC
            over every edge, acd.acdc) or ``hybrid`` (ACDC over the ``candidates`` edges with
            the largest |``scoring``| scores, every other edge removed from the start).
        edges: how many edges to select (by |score| when ``absolute``, else by signed score);
            default ``default_edges(graph)``: 5 % of the graph's edges, at most 200 (23 on
            the embedded model, 200 on GPT-2 small). Not used by ``acdc``/``hybrid``.
        selection: ``topn`` (the best ``edges`` edges), ``greedy`` (grown from the logits
            backwards, ``edges`` of them) or ``threshold`` (every edge scoring at least
            ``threshold``); see acd.search. Not used by ``acdc``/``hybrid``.
        prune: drop the selected edges that lie on no input -> logits path, so a circuit may
            keep fewer than ``edges`` edges (``metrics["n_selected"]`` says how many were
            selected). With corrupted patching this changes no output: a source whose inputs
            are all patched emits its corrupted value anyway. Under zero or mean ablation such
            a source emits what its ablated inputs make of it, so pruning can move the metric.
        prompts: how many prompt pairs to score and evaluate on; ``seed`` chooses them.
            Default 100, or every discovery row of a smaller pair file. A pair file's rows
            are split first (``acd.heldout``): one in four is held out for ``acd evaluate``
            and discovery draws from the others; a file of fewer than 20 rows is used whole
            and the circuit says it is in-sample (``prompt_split``).
        metric: what the scores and the evaluation measure; default the task's own metric.
            For ``acdc``/``hybrid`` the search's metric, default ``kl`` (KL(full model ||
            circuit)); the evaluation then uses ``metric`` if given, else the task's metric.
            ``params["metric"]`` records the scores' (the search's) metric; for
            ``acdc``/``hybrid``, ``params["evaluation_metric"]`` records the evaluation's
            (``Circuit.evaluation_metric``, what ``acd evaluate`` re-evaluates with).
        ablation: what removed edges carry: ``corrupted`` (default), ``zero`` or ``mean``.
        batch_size: prompts per forward pass (default: all at once).
        ig_steps: interpolation steps for ``eap-ig`` (also as ``hybrid``'s scoring).
        tau: ``acdc``/``hybrid`` only, required, >= 0: an edge is removed when removing it
            raises KL by less than ``tau`` (``kl``) or moves a task metric by less than ``tau``.
        candidates: ``hybrid`` only, required: K, the number of top-scoring edges ACDC tests
            (1 .. the graph's edge count).
        scoring: ``hybrid`` only: the attribution that picks the candidates, ``eap-ig``
            (default) or ``eap``.
        rows_per_forward: ``acdc``/``hybrid`` only: (circuit, prompt) rows one forward carries
            (acd.acdc; raise it on a GPU, where a wide forward costs about as much as a
            narrow one).
        checkpoint: ``acdc``/``hybrid`` only: a JSON file the search saves its progress to
            after each destination and resumes from, if it was written for the same weights,
            dtype, device kind, prompts and search parameters (else AcdError); the finished
            search deletes it (acd.acdc).
        force: score even when the sanity gate fails. Before scoring, discover measures the
            evaluation metric on the clean prompts and on the corrupted ones (the empty
            circuit) and raises AcdError when their mean difference is both within 2 standard
            errors of 0 and under 0.2 standard deviations of the per-prompt differences
            (``acd.evaluate.Separation``): the model does not do the task, and faithfulness
            would divide by noise. With ``force`` it warns (AcdWarning) instead.

    Returns: a Circuit whose ``edges``, ``edge_scores`` (every valid edge) and
    ``metrics["faithfulness"]`` are filled. For ``acdc``/``hybrid`` the scores are ACDC's
    deltas: M(circuit without the edge) - M(circuit) when the edge was tested (for ``kl`` the
    KL increase; removed edges have deltas below ``tau``), 0 for edges never tested.
    """
    check_arguments(
        method,
        selection=selection,
        threshold=threshold,
        tau=tau,
        candidates=candidates,
        scoring=scoring,
        metric=metric,
        ablation=ablation,
    )
    searching = method in SEARCH_METHODS
    start = time.perf_counter()
    # The task first: reading it is cheap, and a mistake in it should not wait for the model.
    if not isinstance(task, Task):
        task = load_task(task)
    drawn_from, split = discovery_split(task, seed)
    held = "" if split.generated or split.in_sample else f" ({split.evaluation} more held out)"
    size = available_prompts(drawn_from)
    prompts = resolve_prompts(prompts, size, task.name, f"discovery rows{held}")
    if split.generated:
        split = replace(split, discovery=prompts)
    if not isinstance(model, ModelAdapter):
        model = load_model(model, device=device, dtype=dtype)
    graph = ComputeGraph.from_model(model)
    if not searching and selection != "threshold":
        edges = default_edges(graph) if edges is None else edges
        if not 0 <= edges <= graph.n_edges:  # before the expensive scoring, not after
            raise AcdError(
                f"cannot keep {edges} edges: the graph has {graph.n_edges} "
                f"(choose 0..{graph.n_edges})"
            )
    if method == "hybrid" and not 1 <= candidates <= graph.n_edges:
        raise AcdError(
            f"candidates must be between 1 and the graph's {graph.n_edges} edges, got {candidates}"
        )
    batch = drawn_from.make_batch(model.tokenizer, prompts, seed).to(model.device)
    # What the attribution scores (eap, eap-ig, exact) and the circuit is evaluated with; a
    # search (acdc, hybrid) decides with its own metric, ``metric`` or KL.
    evaluation_metric = metric or task.metric
    _sanity_gate(model, graph, batch, task.name, evaluation_metric, ablation, batch_size, force)
    params: dict[str, Any]

    if searching:
        scores, selected, search_params = _search(
            model,
            graph,
            batch,
            method,
            tau,
            candidates,
            scoring,
            metric,
            ablation,
            batch_size,
            ig_steps,
            progress,
            checkpoint,
            rows_per_forward,
        )
        params = {"prompts": prompts, **search_params, "ablation": ablation}
    else:
        scores = attribute(
            model,
            graph,
            batch,
            method=method,
            metric=evaluation_metric,
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
        params = {
            "edges": edges,
            "prompts": prompts,
            "metric": evaluation_metric,
            "ablation": ablation,
            "selection": selection,
            "absolute": absolute,
        }
        if method == "eap-ig":
            params["ig_steps"] = ig_steps
        if selection == "threshold":
            params["threshold"] = threshold
    params.update({"prune": prune, "batch_size": batch_size, "d_model": model.spec.d_model})
    if searching:  # params["metric"] is the search's; acd evaluate re-evaluates with this one
        params["evaluation_metric"] = evaluation_metric
    mask = prune_dangling(selected, graph) if prune else selected
    evaluation = evaluate_circuit(
        model,
        graph,
        batch,
        mask,
        metric=evaluation_metric,
        ablation=ablation,
        batch_size=batch_size,
    )
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
        model_sha256=weights_sha256(model),
        task_source=task_source(task),
        prompt_split=split,
    )


def _sanity_gate(
    model: ModelAdapter,
    graph: ComputeGraph,
    batch: PromptBatch,
    task_name: str,
    metric: str,
    ablation: str,
    batch_size: int | None,
    force: bool,
) -> None:
    """Refuse (AcdError) or, with ``force``, warn when the model's metric on the clean prompts
    is not separated from the corrupted ones (``acd.evaluate.Separation``)."""
    gap = separation(model, graph, batch, metric=metric, ablation=ablation, batch_size=batch_size)
    if gap.separated:
        return
    if not force:
        raise AcdError(gap.message(task_name))
    message = gap.message(task_name).replace(", or pass --force", "; scoring anyway (force)")
    warnings.warn(message, AcdWarning, stacklevel=3)  # reported at discover's caller


def default_edges(graph: ComputeGraph) -> int:
    """The circuit size ``discover`` keeps when given none: 5 % of the valid edges, at most
    200 — small enough to read as a diagram, large enough for the embedded model's tasks
    (docs/results.md: faithfulness >= 0.9 at 5 %)."""
    return min(200, max(1, graph.n_edges // 20))


def check_arguments(
    method: str,
    *,
    selection: str = "topn",
    threshold: float | None = None,
    tau: float | None = None,
    candidates: int | None = None,
    scoring: str = "eap-ig",
    metric: str | None = None,
    ablation: str = "corrupted",
) -> None:
    """Refuse (AcdError, one line) ``discover`` arguments that cannot work, before anything is
    loaded; the command line calls it before it loads the model."""
    if method not in METHODS and method not in SEARCH_METHODS:
        known = ", ".join([*METHODS, *SEARCH_METHODS])
        raise AcdError(f"unknown method {method!r}; choose one of {known}")
    if method in SEARCH_METHODS:
        _check_search_arguments(method, tau, candidates, scoring, metric)
    elif selection not in SELECTIONS:
        raise AcdError(f"unknown selection {selection!r}; choose one of {', '.join(SELECTIONS)}")
    elif selection == "threshold" and threshold is None:
        raise AcdError("selection 'threshold' needs threshold=")
    if ablation not in ABLATIONS:
        raise AcdError(f"unknown ablation {ablation!r}; choose one of {', '.join(ABLATIONS)}")


def _check_search_arguments(
    method: str, tau: float | None, candidates: int | None, scoring: str, metric: str | None
) -> None:
    """Refuse ``acdc``/``hybrid`` arguments that cannot work, before loading anything."""
    if tau is None:
        raise AcdError(f"method {method!r} needs tau= (the removal threshold, >= 0)")
    if not float(tau) >= 0:  # also refuses NaN
        raise AcdError(f"tau must be >= 0, got {tau}")
    if method != "hybrid":
        return
    if candidates is None:
        raise AcdError("method 'hybrid' needs candidates= (how many top-scoring edges to test)")
    if scoring not in HYBRID_SCORING:
        known = ", ".join(HYBRID_SCORING)
        raise AcdError(f"unknown scoring {scoring!r} for 'hybrid'; choose one of {known}")
    if scoring == "eap" and (metric or "kl") == "kl":
        # EAP's gradient of KL at the clean run is zero: the top-K would be arbitrary.
        raise AcdError("scoring 'eap' with metric 'kl' gives all-zero scores; use 'eap-ig'")


def _search(
    model: ModelAdapter,
    graph: ComputeGraph,
    batch: PromptBatch,
    method: str,
    tau: float,
    candidates: int | None,
    scoring: str,
    metric: str | None,
    ablation: str,
    batch_size: int | None,
    ig_steps: int,
    progress: bool,
    checkpoint: str | Path | None,
    rows_per_forward: int,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """ACDC, over every edge (``acdc``) or the top ``candidates`` by |scoring| (``hybrid``).

    Returns: ACDC's deltas [n_src, n_dst] (the circuit's scores), the kept edges
    [n_src, n_dst] bool, and the parameters to record.
    """
    metric = metric or "kl"
    params: dict[str, Any] = {"tau": float(tau), "metric": metric}
    start_from = None
    if method == "hybrid":  # candidates were checked against the graph by discover
        scores = attribute(
            model,
            graph,
            batch,
            method=scoring,
            metric=metric,
            ablation=ablation,
            batch_size=batch_size,
            ig_steps=ig_steps,
            progress=progress,
        )
        start_from = select_topn(scores, graph.valid, candidates)
        params.update({"candidates": candidates, "scoring": scoring})
        if scoring == "eap-ig":
            params["ig_steps"] = ig_steps
    result = acdc(
        model,
        graph,
        batch,
        tau=tau,
        metric=metric,
        ablation=ablation,
        candidates=start_from,
        batch_size=batch_size,
        progress=progress,
        checkpoint=checkpoint,
        rows_per_forward=rows_per_forward,
    )
    params["visited"] = result.visited
    return result.deltas, result.mask, params
