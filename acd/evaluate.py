"""Evaluate a circuit: how much of the model's behaviour it keeps when everything else is patched.

A circuit is a set of edges (a bool [n_src, n_dst] mask). Evaluating it runs the clean prompts
with every valid edge *outside* the circuit patched (``acd.patching.run_patched``) and compares
the task metric M with the full model's (nothing patched) and the empty circuit's (every valid
edge patched):

    faithfulness f = (M(C) - M(empty)) / (M(full) - M(empty))

reported as the ratio of the means over prompts (the standard definition: one number, stable),
and per prompt, with its spread (mean, std, median, 5th and 95th percentiles), because a mean
can hide prompts the circuit fails on.

In a torch.distributed process group (``acd.distributed``; every rank calls with the same
arguments) each rank runs its contiguous shard of the prompts, and the per-prompt values are
gathered back into prompt order, so every rank computes the same summary over all prompts.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from acd.patching import run_patched
from acd.runner import PromptRunner

if TYPE_CHECKING:
    from acd.graph import ComputeGraph
    from acd.metrics import Metric
    from acd.models.load import ModelAdapter
    from acd.tasks import PromptBatch

# A prompt whose own gap |M(full) - M(empty)| is at most this fraction of the mean gap over the
# prompts gets no per-prompt faithfulness (NaN): its ratio divides by almost nothing and would
# swamp the spread statistics with arbitrarily large values. The ratio of means is unaffected.
DEGENERATE_GAP_FRACTION = 0.01


@dataclass
class CircuitEvaluation:
    """A circuit's metric on every prompt, next to the full model's and the empty circuit's.

    Per-prompt tensors are [N] (CPU, float64). ``faithfulness`` is the ratio of means;
    ``faithfulness_per_prompt`` is NaN for degenerate prompts (see DEGENERATE_GAP_FRACTION),
    which the spread statistics leave out (``n_degenerate`` counts them). ``kl_to_full`` is
    KL(full model || circuit) per prompt, at the scored positions.
    """

    metric: str
    ablation: str
    n_edges: int  # valid edges in the circuit
    n_prompts: int
    circuit: torch.Tensor
    full: torch.Tensor
    empty: torch.Tensor
    kl_to_full: torch.Tensor
    faithfulness: float
    faithfulness_per_prompt: torch.Tensor
    n_degenerate: int
    faithfulness_mean: float
    faithfulness_std: float
    faithfulness_median: float
    faithfulness_p05: float
    faithfulness_p95: float

    def summary(self) -> dict[str, float | int | str]:
        """The scalar figures, JSON-ready (for a Circuit's metrics)."""
        return {
            "metric": self.metric,
            "ablation": self.ablation,
            "n_edges": self.n_edges,
            "n_prompts": self.n_prompts,
            "faithfulness": self.faithfulness,
            "faithfulness_mean": self.faithfulness_mean,
            "faithfulness_std": self.faithfulness_std,
            "faithfulness_median": self.faithfulness_median,
            "faithfulness_p05": self.faithfulness_p05,
            "faithfulness_p95": self.faithfulness_p95,
            "n_degenerate": self.n_degenerate,
            "metric_circuit": float(self.circuit.mean()),
            "metric_full": float(self.full.mean()),
            "metric_empty": float(self.empty.mean()),
            "kl_to_full": float(self.kl_to_full.mean()),
        }


def evaluate_circuit(
    model: ModelAdapter,
    graph: ComputeGraph,
    batch: PromptBatch,
    circuit_mask: torch.Tensor,
    *,
    metric: str = "task",
    ablation: str = "corrupted",
    batch_size: int | None = None,
) -> CircuitEvaluation:
    """Evaluate one circuit on every prompt of ``batch``.

    Args:
        circuit_mask: [n_src, n_dst] bool, the edges kept clean; entries that are not valid
            edges (``graph.valid``) are ignored. Every other valid edge is patched.
        metric: "task" (the batch's own metric), or "logit_diff", "prob_diff", "logprob", "kl"
            (KL(full model || run), so M(full) = 0).
        ablation: what patched edges carry: "corrupted" (the corrupted prompts' sources),
            "zero", or "mean" (per-position mean of the clean sources over all of ``batch``).
        batch_size: prompts per forward pass (default: all at once).
    """
    return evaluate_circuits(
        model,
        graph,
        batch,
        circuit_mask.unsqueeze(0),
        metric=metric,
        ablation=ablation,
        batch_size=batch_size,
    )[0]


def evaluate_circuits(
    model: ModelAdapter,
    graph: ComputeGraph,
    batch: PromptBatch,
    circuit_masks: torch.Tensor,
    *,
    metric: str | Metric = "task",
    ablation: str = "corrupted",
    batch_size: int | None = None,
) -> list[CircuitEvaluation]:
    """Evaluate several circuits ([k, n_src, n_dst] bool) sharing the reference runs.

    Per chunk of prompts: one corrupted forward (patch values, for "corrupted"), one clean
    forward (the full model), one patched forward for the empty circuit (zero / mean ablation
    only: with corrupted ablation the empty circuit is the corrupted run), and one per circuit
    (``evaluate_with``). In a process group each rank runs its shard of the prompts (module
    docstring); a collective, so every rank must call it.
    """
    runner = PromptRunner(
        model, graph, batch, metric=metric, ablation=ablation, batch_size=batch_size
    )
    return evaluate_with(runner, circuit_masks)


def evaluate_with(runner: PromptRunner, circuit_masks: torch.Tensor) -> list[CircuitEvaluation]:
    """Evaluate circuits ([k, n_src, n_dst] bool) on the runner's prompts, reusing what it
    keeps: the full and empty circuits' metric (``PromptRunner.reference``), the clean logits
    and the patch values, so that each circuit costs one patched forward per chunk
    (``evaluate_kept``)."""
    graph = runner.graph
    if circuit_masks.dim() != 3 or circuit_masks.shape[1:] != (graph.n_src, graph.n_dst):
        raise ValueError(
            f"circuit masks have shape {tuple(circuit_masks.shape)}; expected "
            f"(k, {graph.n_src}, {graph.n_dst})"
        )
    valid = graph.valid
    kept = circuit_masks.bool().cpu() & valid  # [k, n_src, n_dst]

    def patched_logits(i: int, circuit: torch.Tensor) -> torch.Tensor:
        chunk = runner.chunks[i]
        return run_patched(runner.model, graph, chunk.clean, valid & ~circuit, runner.patch(i))

    return evaluate_kept(runner, kept, valid, patched_logits)


def evaluate_kept(
    runner: PromptRunner,
    kept: torch.Tensor,
    full: torch.Tensor,
    patched_logits: Callable[[int, torch.Tensor], torch.Tensor],
) -> list[CircuitEvaluation]:
    """The figures of each circuit in ``kept`` ([k, ...] bool, shaped like ``full``, the mask
    of every edge: the full model), plain or positional: per chunk i of the runner's prompts, the
    logits with everything the circuit does not keep patched (``patched_logits(i, circuit)``);
    a circuit keeping every edge is the full model and one keeping none the empty circuit, so
    their figures are the runner's reference (faithfulness exactly 1 and 0)."""
    reference = runner.reference()
    per_circuit: list[list[torch.Tensor]] = [[] for _ in kept]
    per_circuit_kl: list[list[torch.Tensor]] = [[] for _ in kept]
    for i in range(len(runner.chunks)):
        for c, circuit in enumerate(kept):
            if bool(circuit.eq(full).all()):  # nothing to patch: the full model
                logits = runner.clean_at(i)
            elif not bool(circuit.any()):  # everything patched: the empty circuit
                logits = runner.empty_at(i)
            else:
                logits = patched_logits(i, circuit)
            per_circuit[c].append(runner.metric_at(i, logits))
            per_circuit_kl[c].append(runner.kl_to_full(i, logits))
    columns = runner.gather(per_circuit + per_circuit_kl)
    k = len(kept)
    return [
        circuit_evaluation(
            runner.metric.name,
            runner.ablation,
            int(circuit.sum()),
            columns[c],
            reference.full,
            reference.empty,
            columns[k + c],
        )
        for c, circuit in enumerate(kept)
    ]


def faithfulness_per_prompt(
    circuit: torch.Tensor, full: torch.Tensor, empty: torch.Tensor
) -> torch.Tensor:
    """(M(C) - M(empty)) / (M(full) - M(empty)) per prompt: [N], NaN where degenerate.

    A prompt is degenerate when |M(full) - M(empty)| <= DEGENERATE_GAP_FRACTION times the
    mean of that gap over the prompts (or is exactly 0).
    """
    gap = full - empty
    floor = DEGENERATE_GAP_FRACTION * gap.abs().mean()
    degenerate = (gap.abs() <= floor) | (gap == 0)
    ratio = (circuit - empty) / torch.where(degenerate, torch.ones_like(gap), gap)
    return torch.where(degenerate, torch.full_like(gap, math.nan), ratio)


def faithfulness_of_means(circuit: torch.Tensor, full: torch.Tensor, empty: torch.Tensor) -> float:
    """(mean M(C) - mean M(empty)) / (mean M(full) - mean M(empty)); NaN if the gap is 0."""
    gap = float(full.mean() - empty.mean())
    return float(circuit.mean() - empty.mean()) / gap if gap != 0 else math.nan


# --------------------------------------------------------------------------------------------
# The sanity gate: do clean and corrupted prompts differ at all?

# Discovery refuses a task whose mean per-prompt difference d = M(clean) - M(corrupted) is
# neither significant (more than SEPARATION_STANDARD_ERRORS standard errors from 0) nor at least
# a small effect (SEPARATION_EFFECT_SIZE per-prompt standard deviations); docs/tasks.md.
SEPARATION_STANDARD_ERRORS = 2.0
SEPARATION_EFFECT_SIZE = 0.2


@dataclass(frozen=True)
class Separation:
    """How far apart the model's metric is on clean and on corrupted prompts.

    ``clean`` is mean M(clean), ``corrupted`` mean M(empty circuit) (with corrupted ablation:
    the corrupted prompts' run; with zero / mean ablation: every edge ablated), both over the
    ``n_prompts`` prompts. ``difference`` is the mean of the per-prompt differences
    d_i = M_i(clean) - M_i(corrupted), ``spread`` their sample standard deviation and
    ``standard_error`` = spread / sqrt(n) (both 0 for one prompt).

    They are *separated* when the difference is not 0 and either exceeds
    SEPARATION_STANDARD_ERRORS standard errors (the prompts' own spread cannot explain it:
    roughly a two-sided test at 5 %) or is at least SEPARATION_EFFECT_SIZE standard deviations
    (Cohen's "small" standardized effect: a difference that matters even where a few prompts
    cannot make it significant). Faithfulness divides by that difference; without separation it
    divides by noise and means nothing.
    """

    metric: str
    ablation: str
    n_prompts: int
    clean: float
    corrupted: float
    difference: float
    spread: float
    standard_error: float

    @property
    def separated(self) -> bool:
        # NaN compares False throughout: a metric that is NaN does not separate anything.
        size = abs(self.difference)
        return self.difference != 0 and (
            size > SEPARATION_STANDARD_ERRORS * self.standard_error
            or size >= SEPARATION_EFFECT_SIZE * self.spread
        )

    def message(self, task: str) -> str:
        """The one line that stops discovery when not ``separated``."""
        other = "corrupted" if self.ablation == "corrupted" else f"{self.ablation}-ablated"
        return (
            f"task {task!r}: the model does not tell clean from corrupted prompts apart: mean "
            f"{self.metric} clean {self.clean:.4g}, {other} {self.corrupted:.4g}; their "
            f"difference {self.difference:+.3g} is within {SEPARATION_STANDARD_ERRORS:g} "
            f"standard errors ({self.standard_error:.3g}) of 0 and under "
            f"{SEPARATION_EFFECT_SIZE:g} per-prompt standard deviations ({self.spread:.3g}) "
            f"over {self.n_prompts} prompts, so faithfulness would divide by noise; check the "
            "task and model, or pass --force"
        )


def separation(
    model: ModelAdapter,
    graph: ComputeGraph,
    batch: PromptBatch,
    *,
    metric: str | Metric = "task",
    ablation: str = "corrupted",
    batch_size: int | None = None,
) -> Separation:
    """M(clean) against M(corrupted) on ``batch``, for the sanity gate (``Separation``).

    Costs the reference runs of one evaluation: a corrupted forward (the patch values), a clean
    forward and, for zero / mean ablation, the everything-patched run. A collective under
    torch.distributed, like ``evaluate_circuit``.
    """
    runner = PromptRunner(
        model, graph, batch, metric=metric, ablation=ablation, batch_size=batch_size
    )
    return separation_of(runner)


def separation_of(runner: PromptRunner) -> Separation:
    """``separation`` from the runner's reference figures (kept for the evaluation after)."""
    reference = runner.reference()
    differences = reference.full - reference.empty
    n = len(differences)
    spread = float(differences.std(unbiased=True)) if n > 1 else 0.0
    return Separation(
        metric=runner.metric.name,
        ablation=runner.ablation,
        n_prompts=n,
        clean=float(reference.full.mean()),
        corrupted=float(reference.empty.mean()),
        difference=float(differences.mean()),
        spread=spread,
        standard_error=spread / math.sqrt(n),
    )


# --------------------------------------------------------------------------------------------
# Helpers


def circuit_evaluation(
    metric: str,
    ablation: str,
    n_edges: int,
    circuit: torch.Tensor,
    full: torch.Tensor,
    empty: torch.Tensor,
    kl_to_full: torch.Tensor,
) -> CircuitEvaluation:
    per_prompt = faithfulness_per_prompt(circuit, full, empty)
    finite = per_prompt[~per_prompt.isnan()]
    stats = _spread(finite)
    return CircuitEvaluation(
        metric=metric,
        ablation=ablation,
        n_edges=n_edges,
        n_prompts=len(circuit),
        circuit=circuit,
        full=full,
        empty=empty,
        kl_to_full=kl_to_full,
        faithfulness=faithfulness_of_means(circuit, full, empty),
        faithfulness_per_prompt=per_prompt,
        n_degenerate=int(per_prompt.isnan().sum()),
        faithfulness_mean=stats["mean"],
        faithfulness_std=stats["std"],
        faithfulness_median=stats["median"],
        faithfulness_p05=stats["p05"],
        faithfulness_p95=stats["p95"],
    )


def _spread(values: torch.Tensor) -> dict[str, float]:
    """Mean, std (population), median (linear interpolation) and 5th/95th percentiles."""
    if values.numel() == 0:
        return dict.fromkeys(("mean", "std", "median", "p05", "p95"), math.nan)
    q = torch.quantile(values, torch.tensor([0.5, 0.05, 0.95], dtype=values.dtype))
    return {
        "mean": float(values.mean()),
        "std": float(values.std(unbiased=False)),
        "median": float(q[0]),
        "p05": float(q[1]),
        "p95": float(q[2]),
    }
