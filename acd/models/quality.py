"""How well a model does the shipped tasks, by the tasks' own metrics, on held-out prompts.

``acd check-model [MODEL]`` prints these figures; the embedded model must meet
``TARGETS`` (see docs/models.md). Prompts come from task seeds below
``acd.models.train_toy.TRAIN_SEED_BASE``, which training never uses.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from acd.metrics import logit_diff, logprob, prob_diff
from acd.tasks import InductionTask, PromptBatch, load_task

# tokens [N, T] -> logits [N, T, V]
LogitsFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Figure:
    name: str
    value: float
    target: str  # e.g. ">= 0.95"; "" where the figure is informative only
    met: bool | None  # None where there is no target


def _target(name: str, value: float, op: str, bound: float) -> Figure:
    met = value >= bound if op == ">=" else value <= bound
    return Figure(name, value, f"{op} {bound:g}", met)


def _batched(fn: LogitsFn, tokens: torch.Tensor, batch_size: int = 100) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat(
            [fn(tokens[i : i + batch_size]) for i in range(0, len(tokens), batch_size)]
        )


def first_half_logprob(logits: torch.Tensor, batch: PromptBatch, half: int) -> torch.Tensor:
    """Mean log-prob of words 2..half of the first (random) half. [N, T, V] -> [N]."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    bos = int(batch.lengths[0]) - 2 * half  # 1 with a BOS token, else 0
    positions = torch.arange(bos, bos + half - 1)  # position t predicts token t + 1
    next_tokens = batch.clean[:, positions + 1]
    return logp[:, positions].gather(2, next_tokens.unsqueeze(-1)).squeeze(-1).mean(dim=1)


def task_figures(
    run: LogitsFn,
    run_without_heads: LogitsFn,
    tokenizer,
    n_prompts: int = 500,
    seed: int = 0,
) -> list[Figure]:
    """Quality figures of a model on ``n_prompts`` held-out prompts per task.

    ``run`` maps token ids [N, T] to logits [N, T, V]; ``run_without_heads`` does the same with
    every attention head's output zeroed (the model must need its attention for IOI).
    """
    figures = []
    ioi = load_task("ioi").make_batch(tokenizer, n_prompts, seed)
    ld = logit_diff(_batched(run, ioi.clean), ioi)
    figures.append(
        _target("ioi accuracy (IO logit > S logit)", (ld > 0).float().mean().item(), ">=", 0.95)
    )
    figures.append(_target("ioi mean logit difference", ld.mean().item(), ">=", 3.0))
    ablated = logit_diff(_batched(run_without_heads, ioi.clean), ioi)
    acc_ablated = (ablated > 0).float().mean().item()
    # Chance is 0.5; allow the sampling spread of n prompts (3 standard errors) around it.
    spread = 3 * math.sqrt(0.25 / n_prompts)
    figures.append(
        Figure(
            "ioi accuracy, all heads zero-ablated",
            acc_ablated,
            f"chance (0.5 ± {spread:.2f})",
            abs(acc_ablated - 0.5) <= spread,
        )
    )

    gt = load_task("greater-than").make_batch(tokenizer, n_prompts, seed)
    pd = prob_diff(_batched(run, gt.clean), gt)
    figures.append(_target("greater-than mean probability difference", pd.mean().item(), ">=", 0.7))

    induction = load_task("induction")
    assert isinstance(induction, InductionTask)
    ind = induction.make_batch(tokenizer, n_prompts, seed)
    logits = _batched(run, ind.clean)
    figures.append(
        _target(
            "induction mean log-prob, repeated half (nats)",
            logprob(logits, ind).mean().item(),
            ">=",
            -0.5,
        )
    )
    first = first_half_logprob(logits, ind, induction.half_length).mean().item()
    chance = -math.log(len(induction.pool))
    figures.append(
        Figure(
            "induction mean log-prob, first half (nats)",
            first,
            f"near chance ({chance:.2f} ± 0.5)",
            abs(first - chance) <= 0.5,
        )
    )
    return figures


def format_figures(figures: list[Figure]) -> str:
    width = max(len(f.name) for f in figures)
    lines = []
    for f in figures:
        status = "" if f.met is None else ("ok" if f.met else "NOT MET")
        lines.append(f"{f.name:<{width}}  {f.value:8.3f}   target {f.target:<20} {status}")
    return "\n".join(lines)


def hf_gpt2_runners(model) -> tuple[LogitsFn, LogitsFn]:
    """``run`` and ``run_without_heads`` for a plain ``transformers`` GPT-2 model.

    Heads are ablated by zeroing the input of each attention's output projection (the
    concatenated head outputs z), so only the output bias b_O remains.
    """

    def run(tokens: torch.Tensor) -> torch.Tensor:
        return model(tokens).logits

    def run_without_heads(tokens: torch.Tensor) -> torch.Tensor:
        handles = [
            block.attn.c_proj.register_forward_pre_hook(
                lambda _m, args: (torch.zeros_like(args[0]),)
            )
            for block in model.transformer.h
        ]
        try:
            return model(tokens).logits
        finally:
            for h in handles:
                h.remove()

    return run, run_without_heads


def adapter_runners(model) -> tuple[LogitsFn, LogitsFn]:
    """``run`` and ``run_without_heads`` for a loaded ``ModelAdapter`` (the TransformerLens bridge).

    Heads are ablated by zeroing every head's result (W_O applied), so only b_O remains.
    """
    zero_heads = [
        (model.hook_head_result(layer), lambda tensor, hook: torch.zeros_like(tensor))
        for layer in range(model.spec.n_layers)
    ]

    def run(tokens: torch.Tensor) -> torch.Tensor:
        return model.bridge(tokens.to(model.device))

    def run_without_heads(tokens: torch.Tensor) -> torch.Tensor:
        return model.bridge.run_with_hooks(tokens.to(model.device), fwd_hooks=zero_heads)

    return run, run_without_heads
