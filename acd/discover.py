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
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch

from acd.circuit import Circuit
from acd.errors import AcdError, AcdWarning
from acd.evaluate import evaluate_with, separation_of
from acd.graph import ComputeGraph
from acd.heldout import available_prompts, discovery_split, resolve_prompts, task_source
from acd.methods import (
    ACDC,
    EAP,
    EAPIG,
    CleanCorrupted,
    EAPIGActivations,
    Exact,
    Greedy,
    Hybrid,
    Method,
    ScoringMethod,
    Selection,
    Threshold,
    TopN,
    checked_method,
    checked_selection,
    default_edges,
)
from acd.models import ModelAdapter, load_model, weights_sha256
from acd.nodes import (
    check_level,
    induced_edges,
    kept_components,
    node_scores_by_name,
)
from acd.positional import (
    PositionalCircuit,
    PositionalGraph,
    evaluate_positional_with,
    positional_fidelity,
    prune_positional,
)
from acd.roles import head_role_scores, roles_apply
from acd.runner import PromptRunner, check_run_options
from acd.search import prune_dangling, select_threshold, select_topn
from acd.tasks import PromptBatch, Task, load_task
from acd.trust import (
    FIDELITY_PROMPTS,
    RESAMPLE_FRACTION,
    RESAMPLES,
    TrustReport,
    fidelity,
    node_fidelity,
    resample_indices,
    stability,
)

__all__ = ["RunConfig", "default_edges", "discover"]


@dataclass(frozen=True)
class RunConfig:
    """How a discovery runs, as opposed to what it finds (that is the method and selection).

    Args:
        metric: what the scores (of eap, eap-ig, exact) and the evaluation measure; default
            the task's own metric. A search (ACDC, Hybrid) decides with its own ``metric``
            (default ``kl``); the circuit is still evaluated with this one.
        ablation: what removed edges carry: ``corrupted`` (default), ``zero`` or ``mean``.
        batch_size: prompts per forward pass, in every stage; default auto-sized to the free
            memory (acd.memory). Never changes a result.
        device, dtype: where and in what precision a model given by name is loaded.
        progress: show progress bars.
        force: score even when the sanity gate fails (``discover``).
        trust: attach the trust report (``acd.trust``: fidelity against exact patching for
            the gradient methods, stability over prompt resamples) to the circuit; False skips
            it (faster).
        resamples: prompt resamples of the stability figures; None: ``acd.trust.RESAMPLES``
            for the gradient methods (each costs one more scoring), 0 for exact and the
            searches.
        roles: attach every head's role scores (``acd.roles.head_role_scores``: previous-token,
            duplicate-token, induction, copying, and where a template task's final position
            attends) as ``Circuit.node_roles``; False skips them. Models the roles do not apply
            to (``acd.roles.roles_apply``) get none.
    """

    metric: str | None = None
    ablation: str = "corrupted"
    batch_size: int | None = None
    device: str | None = None
    dtype: str | torch.dtype | None = None
    progress: bool = True
    force: bool = False
    trust: bool = True
    resamples: int | None = None
    roles: bool = True

    def __post_init__(self) -> None:
        if self.batch_size is not None and (
            isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int)
        ):
            raise AcdError(f"batch_size must be an integer, got {self.batch_size!r}")
        check_run_options(self.metric, self.ablation, self.batch_size, error=AcdError)
        if self.resamples is not None and (
            isinstance(self.resamples, bool)
            or not isinstance(self.resamples, int)
            or self.resamples < 0
        ):
            raise AcdError(f"resamples must be an integer >= 0, got {self.resamples!r}")


def discover(
    task: str | Task,
    model: str | ModelAdapter = "toy",
    *,
    method: str | Method = "eap-ig",
    select: str | Selection | None = None,
    prune: bool = True,
    prompts: int | None = None,
    seed: int = 0,
    level: str = "edge",
    positions: bool = False,
    run: RunConfig | None = None,
) -> Circuit:
    """Find the circuit of ``task`` in ``model``: score every edge, select, prune, evaluate.

    Args:
        task: a shipped task name, a path to a task file, or a Task.
        model: the embedded model's name, a local HF directory, a hub name, or a loaded model.
        method: a method object or its name (acd.methods): ``EAP()``, ``EAPIG(steps=5)``
            (``"eap-ig"``, the default) or ``Exact()`` score every edge and ``select`` keeps
            some; ``ACDC(tau)`` or ``Hybrid(tau, candidates=K, scoring=EAPIG())`` decide the
            circuit's size themselves (ACDC over every edge, or over the K edges with the
            largest |scoring| scores, every other edge removed from the start).
        select: for a scoring method, a selection object or its name: ``TopN(n)`` (default;
            ``n`` None: ``default_edges(graph)``, 5 % of the edges, at most 200),
            ``Greedy(n)`` (grown from the logits backwards) or ``Threshold(t)`` (every edge
            scoring at least ``t``); by |score| unless ``absolute=False`` (acd.search).
            Refused with a search.
        prune: drop the selected edges that lie on no input -> logits path, so a circuit may
            keep fewer edges than selected (``metrics["n_selected"]`` says how many were
            selected). With corrupted patching this changes no output: a source whose inputs
            are all patched emits its corrupted value anyway. Under zero or mean ablation such
            a source emits what its ablated inputs make of it, so pruning can move the metric.
        prompts: how many prompt pairs to score and evaluate on; ``seed`` chooses them.
            Default 100, or every discovery row of a smaller pair file. A pair file's rows
            are split first (``acd.heldout``): one in four is held out for ``acd evaluate``
            and discovery draws from the others; a file of fewer than 20 rows is used whole
            and the circuit says it is in-sample (``prompt_split``).
        level: ``edge`` (default) keeps edges; ``node`` keeps whole source nodes (input,
            heads, MLPs; acd.nodes): a scoring method scores each node (patched on all its
            outgoing edges; a gradient method sums its edge scores, exact measures the node
            patch), ``select`` keeps heads and MLPs (``TopN(n)`` counts them, default
            ``acd.nodes.default_nodes``; ``Threshold(t)`` compares node scores; greedy is
            refused; ``input`` is always kept) and the circuit is every edge between kept
            nodes (``induced_edges``),
            evaluated with every edge out of a removed node patched. The searches are
            edge-level only.
        positions: find a positional circuit (acd.positional): every edge split by the
            task's named spans (IO, S1, S2, END, ...; docs/tasks.md "Spans"), an edge into a
            key or value input by the span of its key and of the queries reading it. Scoring by
            ``eap``, ``eap-ig`` or ``exact`` at span resolution, ``TopN(n)`` (n counts positional
            edges; default as for plain circuits) or ``Threshold(t)``, pruning and evaluation
            per (edge, span). ``Circuit.positional`` holds the positional edges and scores;
            ``mask`` and ``scores`` are their aggregates over the spans. Every chunk of
            prompts runs as one copy per span (default 8 prompts a chunk).
        run: RunConfig (metric, ablation, batch_size, device, dtype, progress, force).

    Before scoring (for ``eap`` and ``eap-ig``, whose scoring runs are the same clean and
    corrupted forwards, just after it), discover measures the evaluation metric on the clean
    prompts and on the corrupted ones (the empty circuit) and raises AcdError when their mean
    difference is both within 2 standard errors of 0 and under 0.2 standard deviations of the
    per-prompt differences (``acd.evaluate.Separation``): the model does not do the task, and
    faithfulness would divide by noise. With ``run.force`` it warns (AcdWarning) instead.
    Those reference runs are kept (acd.runner): scoring reuses the patch values, and the
    evaluation reuses the full and empty circuits' figures, so the evaluation costs one
    patched forward per chunk.

    Returns: a Circuit whose ``edges``, ``edge_scores`` (every valid edge) and
    ``metrics["faithfulness"]`` are filled. ``params`` records the method's and selection's
    parameters, the prompts, the ablation, the search metric (``metric``) and the evaluation
    metric (``evaluation_metric``, what ``acd evaluate`` re-evaluates with). For a search the
    scores are ACDC's deltas: M(circuit without the edge) - M(circuit) when the edge was tested
    (for ``kl`` the KL increase; removed edges have deltas below ``tau``), 0 for edges never
    tested.
    """
    run = run or RunConfig()
    method = checked_method(method)
    searching = isinstance(method, ACDC)
    if searching and select is not None:
        raise AcdError(f"method {method.name!r} decides the circuit itself: give no select=")
    by_node = check_level(level) == "node"
    if by_node and searching:
        raise AcdError(
            f"method {method.name!r} searches over edges; at level 'node' choose a scoring "
            "method (eap, eap-ig, eap-ig-activations, clean-corrupted, exact)"
        )
    selection = None if searching else checked_selection(select)
    if positions:
        _check_positional(method, selection, by_node)
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
        model = load_model(model, device=run.device, dtype=run.dtype)
    graph = ComputeGraph.from_model(model)
    if selection is not None:  # sized before the expensive scoring, not after
        selection = selection.sized_nodes(graph) if by_node else selection.sized(graph)
    if isinstance(method, Hybrid):
        method.check_graph(graph)
    batch = drawn_from.make_batch(model.tokenizer, prompts, seed).to(model.device)
    pgraph = _positional_graph(graph, batch, task.name) if positions else None
    evaluation_metric = run.metric or task.metric
    runner = PromptRunner(
        model,
        graph,
        batch,
        metric=evaluation_metric,
        ablation=run.ablation,
        # A positional chunk runs as one copy per span: chunks of a few prompts.
        batch_size=run.batch_size or (min(8, len(batch)) if positions else None),
        method=method.memory_kind,
        ig_steps=method.steps if isinstance(method, (EAPIG, EAPIGActivations)) else 5,
    )
    # EAP's and EAP-IG's own runs are the gate's (the clean and corrupted forwards): for them
    # the gate comes after scoring at no cost; before the costlier methods, it saves them.
    gate_first = not isinstance(method, (EAP, EAPIG, EAPIGActivations, CleanCorrupted))
    if gate_first:
        _sanity_gate(runner, task.name, run.force)

    params: dict[str, Any] = {"prompts": prompts}
    node_scores: torch.Tensor | None = None
    positional: PositionalCircuit | None = None
    if pgraph is not None:
        assert isinstance(method, ScoringMethod) and selection is not None  # _check_positional
        gate_after = None if gate_first else task.name
        positional, selected = _positional_circuit(
            runner, pgraph, method, selection, prune, run, gate_after
        )
        scores = pgraph.aggregate(positional.scores)
        params.update(selection.params())
        params["metric"] = evaluation_metric
        params.update(method.params())
        params["positions"] = True
    elif searching:
        result = method.search(runner, batch, progress=run.progress)
        scores, selected = result.scores, result.mask
        params.update(result.params)
    else:
        assert selection is not None  # a scoring method always has one (above)
        if by_node:
            node_scores, edge_scores = method.score_nodes(runner, progress=run.progress)
            # exact measures nodes only: its circuit carries node scores, edge scores 0
            scores = edge_scores if edge_scores is not None else torch.zeros(graph.valid.shape)
        else:
            scores = method.score(runner, progress=run.progress)
        if not gate_first:
            _sanity_gate(runner, task.name, run.force)
        if node_scores is not None:
            selected = induced_edges(selection.select_nodes(node_scores, graph), graph)
            params["level"] = "node"
        else:
            selected = selection.select(scores, graph)
        chosen = selection.params()
        if by_node:  # TopN's n counts nodes here
            chosen["nodes"] = chosen.pop("edges")
        params.update(chosen)
        params["metric"] = evaluation_metric
        params.update(method.params())
    params.update(
        {
            "ablation": run.ablation,
            "prune": prune,
            "batch_size": run.batch_size,
            "d_model": model.spec.d_model,
            # params["metric"] is the scores' (a search's own); acd evaluate uses this one.
            "evaluation_metric": evaluation_metric,
        }
    )
    if positional is not None:
        assert pgraph is not None
        evaluation = evaluate_positional_with(runner, pgraph, positional.mask.unsqueeze(0))[0]
        mask = pgraph.plain_mask(positional.mask)
    else:
        mask = prune_dangling(selected, graph) if prune else selected
        evaluation = evaluate_with(runner, mask.unsqueeze(0))[0]
    metrics = evaluation.summary()
    metrics["n_selected"] = int(selected.sum())
    if positional is not None:  # n_edges counts positional edges; these, the plain ones
        metrics["n_plain_edges"] = int(mask.sum())
        metrics["n_positional_edges"] = pgraph.n_edges if pgraph is not None else 0
    if by_node:  # heads and MLPs (input is always kept)
        metrics["n_selected_nodes"] = int(kept_components(selected, graph).sum())
        metrics["n_nodes"] = int(kept_components(mask, graph).sum())
    metrics["seconds"] = round(time.perf_counter() - start, 3)
    node_roles: dict[str, dict[str, float]] = {}
    if run.roles and roles_apply(model):
        started = time.perf_counter()
        node_roles = head_role_scores(model, task, seed=seed)
        metrics["roles_seconds"] = round(time.perf_counter() - started, 3)
    inclusion = None
    if run.trust and positional is not None:
        assert pgraph is not None and isinstance(method, ScoringMethod) and selection
        report = _positional_trust(runner, batch, pgraph, method, selection, prune, positional, run)
        metrics.update(report.summary())
        inclusion = report.stability.inclusion if report.stability else None
    elif run.trust:
        report = _trust_report(
            runner, batch, method, selection, prune, scores, selected, mask, run, by_node
        )
        metrics.update(report.summary())
        inclusion = report.stability.inclusion if report.stability else None
    return Circuit(
        graph=graph,
        mask=mask,
        scores=scores,
        task=task.name,
        model=model.name,
        method=method.name,
        params=params,
        level="node" if by_node else "edge",
        node_scores={} if node_scores is None else node_scores_by_name(node_scores, graph),
        node_roles=node_roles,
        seed=seed,
        metrics=metrics,
        model_sha256=weights_sha256(model),
        task_source=task_source(task),
        prompt_split=split,
        edge_inclusion=inclusion,
        positional=positional,
    )


# --------------------------------------------------------------------------------------------
# Positional circuits


def _check_positional(method: Method, selection: Selection | None, by_node: bool) -> None:
    """Refuse, before anything loads, what has no positional form."""
    if by_node:
        raise AcdError("positional circuits keep edges: give level='edge' with positions")
    if not isinstance(method, (EAP, EAPIG, Exact)):
        raise AcdError(
            f"method {method.name!r} has no positional form; with positions choose eap, "
            "eap-ig or exact"
        )
    if isinstance(selection, Greedy) or not isinstance(selection, (TopN, Threshold)):
        name = getattr(selection, "name", selection)
        raise AcdError(
            f"selection {name!r} has no positional form; with positions choose topn or threshold"
        )


def _positional_graph(graph: ComputeGraph, batch: PromptBatch, task: str) -> PositionalGraph:
    if len(batch.span_names) < 2:
        raise AcdError(
            f"task {task!r} names no spans, so a positional circuit would be the plain one; "
            "give the task spans (docs/tasks.md, 'Spans')"
        )
    return PositionalGraph.from_batch(graph, batch)


def _positional_circuit(
    runner: PromptRunner,
    pgraph: PositionalGraph,
    method: ScoringMethod,
    selection: Selection,
    prune: bool,
    run: RunConfig,
    gate_after: str | None,
) -> tuple[PositionalCircuit, torch.Tensor]:
    """Score every positional edge, select, prune: the positional part of a circuit, and the
    selected positional edges before pruning. ``gate_after``: the task's name when the sanity
    gate runs after scoring (eap, eap-ig)."""
    scores = method.score_positions(runner, pgraph, progress=run.progress)
    if gate_after is not None:
        _sanity_gate(runner, gate_after, run.force)
    selected = _select_positional(selection, scores, pgraph)
    mask = prune_positional(selected, pgraph) if prune else selected
    return PositionalCircuit(pgraph, mask, scores), selected


def _select_positional(
    selection: Selection, scores: torch.Tensor, pgraph: PositionalGraph
) -> torch.Tensor:
    """TopN(n) (n counts positional edges; None: the plain graph's default) or Threshold(t)
    over positional scores: [n_src, P, n_dst, P] bool."""
    if isinstance(selection, Threshold):
        return select_threshold(scores, pgraph.valid, selection.t, absolute=selection.absolute)
    assert isinstance(selection, TopN)
    n = default_edges(pgraph.graph) if selection.n is None else selection.n
    if not 0 <= n <= pgraph.n_edges:
        raise AcdError(
            f"cannot keep {n} positional edges: the graph has {pgraph.n_edges} "
            f"(choose 0..{pgraph.n_edges})"
        )
    return select_topn(scores, pgraph.valid, n, absolute=selection.absolute)


def _positional_trust(
    runner: PromptRunner,
    batch: PromptBatch,
    pgraph: PositionalGraph,
    method: ScoringMethod,
    selection: Selection,
    prune: bool,
    positional: PositionalCircuit,
    run: RunConfig,
) -> TrustReport:
    """The trust report over positional edges: fidelity of a gradient method against exact
    positional patching (sampled positional edges, the first prompts), and the stability of
    the positional edge set over ``run.resamples`` prompt resamples (inclusion reported per
    plain edge)."""
    start = time.perf_counter()
    gradient = not isinstance(method, Exact)
    found = None
    if gradient:
        sub = _runner_like(runner, _first_prompts(batch), method)
        sub_scores = method.score_positions(sub, pgraph, progress=False)
        selected = _select_positional(selection, sub_scores, pgraph)
        found = positional_fidelity(sub, pgraph, sub_scores, selected)

    def refound(prompts: PromptBatch) -> torch.Tensor:
        sub = _runner_like(runner, prompts, method)
        kept = _select_positional(
            selection, method.score_positions(sub, pgraph, progress=False), pgraph
        )
        return prune_positional(kept, pgraph) if prune else kept

    masks = _resampled_masks(batch, _resample_count(run, gradient), refound)
    stable = None
    if masks:
        stable = stability(masks, positional.mask, RESAMPLE_FRACTION)
        plain = [pgraph.plain_mask(m) for m in masks]
        inclusion = torch.stack([m.double() for m in plain]).mean(dim=0).float()
        stable = replace(stable, inclusion=inclusion)
    return TrustReport(fidelity=found, stability=stable, seconds=time.perf_counter() - start)


def _trust_report(
    runner: PromptRunner,
    batch: PromptBatch,
    method: Method,
    selection: Selection | None,
    prune: bool,
    scores: torch.Tensor,
    selected: torch.Tensor,
    mask: torch.Tensor,
    run: RunConfig,
    by_node: bool = False,
) -> TrustReport:
    """The circuit's trust report (acd.trust): fidelity for a gradient method, and stability
    over ``run.resamples`` random halves of the prompts (default: for gradient methods).

    At node level both are over nodes: fidelity compares node scores with exact node patching
    on every source node, and the Jaccard figures compare the resamples' node sets (the edge
    inclusion is still per induced edge)."""
    start = time.perf_counter()
    graph = runner.graph
    gradient = isinstance(method, ScoringMethod) and not isinstance(method, Exact)
    found = None
    if isinstance(method, ScoringMethod) and gradient:
        # The method's scores and exact effects, on the same (first few) prompts.
        sub = _runner_like(runner, _first_prompts(batch), method)
        if by_node:
            sub_nodes = method.score_nodes(sub, progress=False)[0]
            found = node_fidelity(sub, sub_nodes, kept_components(selected, graph))
        else:
            found = fidelity(sub, method.score(sub, progress=False), selected)
    masks = _resampled_masks(
        batch,
        _resample_count(run, gradient),
        lambda prompts: _refound(runner, prompts, method, selection, prune, by_node),
    )
    stable = stability(masks, mask, RESAMPLE_FRACTION) if masks else None
    if stable is not None and by_node:
        nodes = [kept_components(m, graph) for m in masks]
        by_nodes = stability(nodes, kept_components(mask, graph), RESAMPLE_FRACTION)
        stable = replace(by_nodes, inclusion=stable.inclusion)
    return TrustReport(fidelity=found, stability=stable, seconds=time.perf_counter() - start)


def _first_prompts(batch: PromptBatch) -> PromptBatch:
    """The prompts the fidelity figures compare on: the first ``FIDELITY_PROMPTS``."""
    return batch.select(list(range(min(len(batch), FIDELITY_PROMPTS))))


def _resample_count(run: RunConfig, gradient: bool) -> int:
    """How many prompt resamples the stability figures use: ``run.resamples``, else
    ``RESAMPLES`` for a gradient method and none for measured effects (exact, ACDC)."""
    return run.resamples if run.resamples is not None else (RESAMPLES if gradient else 0)


def _resampled_masks(
    batch: PromptBatch, count: int, refound: Callable[[PromptBatch], torch.Tensor]
) -> list[torch.Tensor]:
    """The circuit found again on each of ``count`` random shares of the prompts (seed 1,
    so a rerun draws the same shares): a list of masks shaped like the circuit's."""
    draws = resample_indices(len(batch), count, RESAMPLE_FRACTION, seed=1)
    return [refound(batch.select(rows)) for rows in draws]


def _refound(
    runner: PromptRunner,
    prompts: PromptBatch,
    method: Method,
    selection: Selection | None,
    prune: bool,
    by_node: bool = False,
) -> torch.Tensor:
    """The circuit ``method`` (and ``selection``) finds on ``prompts``: [n_src, n_dst] bool."""
    graph = runner.graph
    sub = _runner_like(runner, prompts, method)
    if isinstance(method, ACDC):  # a resample's search must not touch the main checkpoint
        kept = replace(method, checkpoint=None).search(sub, prompts, progress=False).mask
    elif by_node:
        assert selection is not None and isinstance(method, ScoringMethod)
        nodes = selection.select_nodes(method.score_nodes(sub, progress=False)[0], graph)
        kept = induced_edges(nodes, graph)
    else:
        assert selection is not None
        kept = selection.select(method.score(sub, progress=False), graph)
    return prune_dangling(kept, graph) if prune else kept


def _runner_like(
    runner: PromptRunner, prompts: PromptBatch, method: Method | ScoringMethod
) -> PromptRunner:
    """A runner over ``prompts`` with ``runner``'s model, graph, metric and ablation."""
    return PromptRunner(
        runner.model,
        runner.graph,
        prompts,
        metric=runner.metric,
        ablation=runner.ablation,
        batch_size=runner.batch_size,
        method=method.memory_kind,
    )


def _sanity_gate(runner: PromptRunner, task_name: str, force: bool) -> None:
    """Refuse (AcdError) or, with ``force``, warn when the model's metric on the clean prompts
    is not separated from the corrupted ones (``acd.evaluate.Separation``). Its runs are the
    evaluation's reference runs, kept by the runner."""
    gap = separation_of(runner)
    if gap.separated:
        return
    if not force:
        raise AcdError(gap.message(task_name))
    message = gap.message(task_name).replace(", or pass --force", "; scoring anyway (force)")
    warnings.warn(message, AcdWarning, stacklevel=3)  # reported at discover's caller
