"""Task metrics: what a circuit is asked to reproduce.

Every metric maps logits of one batch to one number per prompt. They read only the positions the
batch marks in ``score_mask`` (the last real token for IOI and greater-than, the repeated half for
induction), so padding never enters a score.

    logit_diff  mean logit of the answers - mean logit of the wrong answers (IOI: IO - S)
    prob_diff   P(answers) - P(wrong answers), summed over each set (greater-than)
    logprob     mean log-probability of the target tokens at the scored positions (induction)
    kl          KL(reference || model) at the scored positions, averaged over them

Precision: each metric computes in ``compute_dtype(logits)``: float64 logits in float64 (a
float64 run is float64-accurate throughout), float32 in float32, and half precision (float16,
bfloat16) upcast to float32. Logits are never downcast.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from acd.errors import TaskError
from acd.tasks import PromptBatch

Metric = Callable[[torch.Tensor, PromptBatch], torch.Tensor]


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


TASK_METRICS: dict[str, Metric] = {
    "logit_diff": logit_diff,
    "prob_diff": prob_diff,
    "logprob": logprob,
}


def get_metric(name: str, reference_logits: torch.Tensor | None = None) -> Metric:
    """The metric called ``name``; ``kl`` needs the reference (clean model) logits [N, T, V]."""
    if name == "kl":
        if reference_logits is None:
            raise TaskError("the kl metric needs the clean model's logits as reference")
        return lambda logits, batch: kl_divergence(logits, reference_logits, batch)
    if name not in TASK_METRICS:
        known = ", ".join([*TASK_METRICS, "kl"])
        raise TaskError(f"unknown metric {name!r}; choose one of {known}")
    return TASK_METRICS[name]
