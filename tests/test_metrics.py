"""The task metrics against plain-Python hand computations, and the precision they compute in."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from acd.metrics import get_metric, kl_divergence, logit_diff, logprob, prob_diff
from acd.tasks import PromptBatch

N, T, V = 3, 4, 7
# float64 agreement: far below float32's ~1e-7, so a metric rounded through float32 fails it.
TOL64 = 1e-12
METRICS = ("prob_diff", "logit_diff", "logprob", "kl")


def hand_batch() -> PromptBatch:
    """Three prompts; one scored position each for prob_diff / logit_diff (batch ``single``) and
    two for logprob / kl (``score_mask`` replaced in ``multi_position``); answer sets padded."""
    score_mask = torch.zeros(N, T, dtype=torch.bool)
    score_mask[0, 3] = score_mask[1, 2] = score_mask[2, 3] = True
    return PromptBatch.from_token_ids(
        torch.ones(N, T, dtype=torch.long),
        torch.ones(N, T, dtype=torch.long),
        lengths=[4, 3, 4],
        score_mask=score_mask,
        # Targets at unscored positions too: multi_position scores more of them.
        targets=torch.tensor([[0, 1, 2, 3], [4, 5, 6, 0], [6, 5, 4, 3]]),
        correct=[[1, 2], [3], [5, 6]],
        wrong=[[4], [5, 6], [2]],
        metric="prob_diff",
    )


def multi_position(batch: PromptBatch) -> PromptBatch:
    score_mask = torch.zeros(N, T, dtype=torch.bool)
    score_mask[0, 2:] = score_mask[1, 1:3] = score_mask[2, :2] = True
    return replace(batch, score_mask=score_mask)


def random_logits(seed: int, dtype=torch.float64) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (3 * torch.randn(N, T, V, generator=generator, dtype=torch.float64)).to(dtype)


def _log_softmax(row: list[float]) -> list[float]:
    top = max(row)
    log_sum = top + math.log(math.fsum(math.exp(x - top) for x in row))
    return [x - log_sum for x in row]


def _picked(values: list[float], ids, mask) -> list[float]:
    return [values[i] for i, keep in zip(ids.tolist(), mask.tolist()) if keep]


def hand_prob_diff(logits: torch.Tensor, batch: PromptBatch) -> list[float]:
    out = []
    for n in range(N):
        (t,) = batch.score_mask[n].nonzero().flatten().tolist()
        probs = [math.exp(x) for x in _log_softmax(logits[n, t].tolist())]
        right = _picked(probs, batch.correct[n], batch.correct_mask[n])
        wrong = _picked(probs, batch.wrong[n], batch.wrong_mask[n])
        out.append(math.fsum(right) - math.fsum(wrong))
    return out


def hand_logit_diff(logits: torch.Tensor, batch: PromptBatch) -> list[float]:
    out = []
    for n in range(N):
        (t,) = batch.score_mask[n].nonzero().flatten().tolist()
        row = logits[n, t].tolist()
        right = _picked(row, batch.correct[n], batch.correct_mask[n])
        wrong = _picked(row, batch.wrong[n], batch.wrong_mask[n])
        out.append(math.fsum(right) / len(right) - math.fsum(wrong) / len(wrong))
    return out


def hand_logprob(logits: torch.Tensor, batch: PromptBatch) -> list[float]:
    out = []
    for n in range(N):
        positions = batch.score_mask[n].nonzero().flatten().tolist()
        values = [_log_softmax(logits[n, t].tolist())[int(batch.targets[n, t])] for t in positions]
        out.append(math.fsum(values) / len(values))
    return out


def hand_kl(logits: torch.Tensor, reference: torch.Tensor, batch: PromptBatch) -> list[float]:
    out = []
    for n in range(N):
        positions = batch.score_mask[n].nonzero().flatten().tolist()
        per_pos = []
        for t in positions:
            logp = _log_softmax(logits[n, t].tolist())
            ref = _log_softmax(reference[n, t].tolist())
            per_pos.append(math.fsum(math.exp(r) * (r - p) for r, p in zip(ref, logp)))
        out.append(math.fsum(per_pos) / len(per_pos))
    return out


def _assert_close(got: torch.Tensor, expected: list[float], tol: float) -> None:
    assert got.shape == (N,)
    worst = max(abs(g - e) for g, e in zip(got.tolist(), expected))
    assert worst <= tol, f"off by {worst:.3g} (tolerance {tol:g})"


def _computed_and_by_hand(name: str, logits: torch.Tensor, reference: torch.Tensor):
    """(the metric ``name`` of ``logits``, its hand computation) on the hand batch."""
    batch = hand_batch()
    if name in ("logprob", "kl"):
        batch = multi_position(batch)
    if name == "kl":
        exact = (logits.double(), reference.double(), batch)
        return kl_divergence(logits, reference, batch), hand_kl(*exact)
    metric, by_hand = {
        "prob_diff": (prob_diff, hand_prob_diff),
        "logit_diff": (logit_diff, hand_logit_diff),
        "logprob": (logprob, hand_logprob),
    }[name]
    return metric(logits, batch), by_hand(logits.double(), batch)


@pytest.mark.parametrize("name", METRICS)
def test_float64_metrics_match_a_float64_hand_computation(name):
    """A float64 model's metrics are float64-accurate, not rounded through float32."""
    got, expected = _computed_and_by_hand(name, random_logits(0), random_logits(1))
    _assert_close(got, expected, TOL64)
    assert got.dtype == torch.float64


def test_get_metric_kl_is_kl_divergence():
    batch, logits, reference = multi_position(hand_batch()), random_logits(0), random_logits(1)
    expected = kl_divergence(logits, reference, batch)
    assert torch.equal(get_metric("kl", reference)(logits, batch), expected)


@pytest.mark.parametrize("name", METRICS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_lower_precision_metrics_compute_in_float32(name, dtype):
    """float32 stays float32; half and bfloat16 logits are upcast to float32, never kept."""
    logits, reference = random_logits(0, dtype), random_logits(1, dtype)
    got, expected = _computed_and_by_hand(name, logits, reference)
    assert got.dtype == torch.float32
    _assert_close(got, expected, 1e-5)  # of the values given, exactly; float32 rounding only


def test_l2_is_the_squared_distance_at_the_scored_positions():
    from acd.metrics import METRICS, l2_distance

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(N, T, 5, generator=generator, dtype=torch.float64)
    reference = torch.randn(N, T, 5, generator=generator, dtype=torch.float64)
    batch = multi_position(hand_batch())
    mask = batch.score_mask
    expected = []
    for n in range(N):
        rows = [((logits[n, t] - reference[n, t]) ** 2).sum() for t in range(T) if mask[n, t]]
        expected.append(sum(rows) / len(rows))
    got = l2_distance(logits, reference, batch)
    assert torch.allclose(got, torch.stack(expected), rtol=1e-12, atol=0)
    assert METRICS["l2"].needs_reference and METRICS["l2"].direction == "lower"
    assert float(METRICS["l2"](reference, batch, reference).abs().max()) == 0.0
