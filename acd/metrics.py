"""Task metrics: what a circuit is asked to reproduce.

Every metric maps logits of one batch to one number per prompt. They read only the positions the
batch marks in ``score_mask`` (the last real token for IOI and greater-than, the repeated half for
induction), so padding never enters a score.

    logit_diff  mean logit of the answers - mean logit of the wrong answers (IOI: IO - S)
    prob_diff   P(answers) - P(wrong answers), summed over each set (greater-than)
    logprob     mean log-probability of the target tokens at the scored positions (induction)
    kl          KL(reference || model) at the scored positions, averaged over them
    l2          squared distance of the logits from the reference's at the scored positions,
                averaged over them (for outputs that are values, not a distribution: a
                compiled program's numerical output)

Each is a ``Metric``: the function and what it needs (``needs_reference``: the full model's
logits, as KL does) and which way is better (``direction``), so that the engine never asks a
metric for its name. ``resolve_metric`` turns what a user passes (a name, ``task``, a Metric or a
plain function (logits, batch) -> [N]) into one.

Precision: each metric computes in ``compute_dtype(logits)``: float64 logits in float64 (a
float64 run is float64-accurate throughout), float32 in float32, and half precision (float16,
bfloat16) upcast to float32. Logits are never downcast.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch

from acd.errors import TaskError

if TYPE_CHECKING:
    from acd.tasks import PromptBatch

MetricFunction = Callable[[torch.Tensor, "PromptBatch"], torch.Tensor]


def compute_dtype(logits: torch.Tensor) -> torch.dtype:
    """The dtype a metric computes in: the logits' own when float32 or float64, else float32."""
    return logits.dtype if logits.dtype in (torch.float32, torch.float64) else torch.float32


def scored_logits(logits: torch.Tensor, batch: PromptBatch) -> torch.Tensor:
    """Logits at the single scored position of each prompt.

    Args: logits [N, T, V]. Returns [N, V].
    """
    counts = batch.score_mask.sum(dim=1)
    if not bool((counts == 1).all()):
        raise TaskError("this metric needs exactly one scored position per prompt")
    position = batch.score_mask.float().argmax(dim=1)  # [N]
    return logits[torch.arange(logits.shape[0], device=logits.device), position]


def _set_mean(values: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of values[n, ids[n, k]] over the k where mask[n, k]. values [N, V] -> [N]."""
    picked = values.gather(1, ids) * mask
    return picked.sum(dim=1) / mask.sum(dim=1).clamp(min=1)


def _set_sum(values: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values.gather(1, ids) * mask).sum(dim=1)


def logit_diff(logits: torch.Tensor, batch: PromptBatch) -> torch.Tensor:
    """Mean answer logit minus mean wrong-answer logit. logits [N, T, V] -> [N]."""
    last = scored_logits(logits, batch)
    last = last.to(compute_dtype(last))
    return _set_mean(last, batch.correct, batch.correct_mask) - _set_mean(
        last, batch.wrong, batch.wrong_mask
    )


def prob_diff(logits: torch.Tensor, batch: PromptBatch) -> torch.Tensor:
    """P(answer set) minus P(wrong set) at the scored position. logits [N, T, V] -> [N]."""
    last = scored_logits(logits, batch)
    probs = torch.softmax(last.to(compute_dtype(last)), dim=-1)
    return _set_sum(probs, batch.correct, batch.correct_mask) - _set_sum(
        probs, batch.wrong, batch.wrong_mask
    )


def logprob(logits: torch.Tensor, batch: PromptBatch) -> torch.Tensor:
    """Mean log-probability of ``targets`` over the scored positions. [N, T, V] -> [N]."""
    logp = torch.log_softmax(logits.to(compute_dtype(logits)), dim=-1)
    per_pos = logp.gather(2, batch.targets.unsqueeze(-1)).squeeze(-1)  # [N, T]
    mask = batch.score_mask.to(per_pos.dtype)
    return (per_pos * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)


def kl_divergence(
    logits: torch.Tensor, reference_logits: torch.Tensor, batch: PromptBatch
) -> torch.Tensor:
    """KL(reference || model), averaged over the scored positions. [N, T, V] x2 -> [N]."""
    dtype = torch.promote_types(compute_dtype(logits), compute_dtype(reference_logits))
    logp = torch.log_softmax(logits.to(dtype), dim=-1)
    ref_logp = torch.log_softmax(reference_logits.to(dtype), dim=-1)
    per_pos = (ref_logp.exp() * (ref_logp - logp)).sum(dim=-1)  # [N, T]
    mask = batch.score_mask.to(per_pos.dtype)
    return (per_pos * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)


@dataclass(frozen=True)
class Metric:
    """A per-prompt metric: logits [N, T, V] of one batch -> [N].

    ``function`` is called as ``function(logits, batch)``, or, when ``needs_reference``, as
    ``function(logits, reference, batch)`` with the full (clean) model's logits [N, T, V] at
    the same positions. ``direction`` says which way is better: ``higher`` for task metrics
    (the behaviour), ``lower`` for a distance from the full model such as KL (0 at the full
    model). ACDC reads it: an edge goes when removing it raises a ``lower`` metric by less
    than tau (any decrease included), or moves a ``higher`` one by less than tau either way.
    """

    name: str
    function: Callable[..., torch.Tensor]
    needs_reference: bool = False
    direction: Literal["higher", "lower"] = "higher"

    def __call__(
        self,
        logits: torch.Tensor,
        batch: PromptBatch,
        reference: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if not self.needs_reference:
            return self.function(logits, batch)
        if reference is None:
            raise TaskError(f"the {self.name} metric needs the clean model's logits as reference")
        return self.function(logits, reference, batch)

    def bind(
        self, batch: PromptBatch, reference: torch.Tensor | None = None
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """logits [N, T, V] -> [N] for the prompts of ``batch`` (and the reference logits)."""
        return lambda logits: self(logits, batch, reference)


def l2_distance(
    logits: torch.Tensor, reference_logits: torch.Tensor, batch: PromptBatch
) -> torch.Tensor:
    """Squared distance ||logits - reference||^2 over the vocabulary, averaged over the scored
    positions. [N, T, V] x2 -> [N]."""
    dtype = torch.promote_types(compute_dtype(logits), compute_dtype(reference_logits))
    per_pos = (logits.to(dtype) - reference_logits.to(dtype)).pow(2).sum(dim=-1)  # [N, T]
    mask = batch.score_mask.to(per_pos.dtype)
    return (per_pos * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)


TASK_METRICS: dict[str, Metric] = {
    "logit_diff": Metric("logit_diff", logit_diff),
    "prob_diff": Metric("prob_diff", prob_diff),
    "logprob": Metric("logprob", logprob),
}
KL = Metric("kl", kl_divergence, needs_reference=True, direction="lower")
L2 = Metric("l2", l2_distance, needs_reference=True, direction="lower")
METRICS: dict[str, Metric] = {**TASK_METRICS, "kl": KL, "l2": L2}


def resolve_metric(metric: str | Metric | MetricFunction | None, task_metric: str) -> Metric:
    """The Metric meant by ``metric``: a name from METRICS, ``task`` or None (``task_metric``,
    the batch's own), a Metric, or a function (logits [N, T, V], PromptBatch) -> [N] that
    reads logits only where ``batch.score_mask`` is set (direction ``higher``)."""
    if isinstance(metric, Metric):
        return metric
    if callable(metric):
        return Metric(getattr(metric, "__name__", "custom"), metric)
    name = task_metric if metric is None or metric == "task" else metric
    if name not in METRICS:
        raise TaskError(f"unknown metric {name!r}; choose one of {', '.join(METRICS)}")
    return METRICS[name]


def get_metric(name: str, reference_logits: torch.Tensor | None = None) -> MetricFunction:
    """The metric called ``name`` as a function (logits, batch) -> [N]; ``kl`` needs the
    reference (clean model) logits [N, T, V]."""
    metric = resolve_metric(name, name)
    if metric.needs_reference and reference_logits is None:
        raise TaskError(f"the {name} metric needs the clean model's logits as reference")
    return lambda logits, batch: metric(logits, batch, reference_logits)
