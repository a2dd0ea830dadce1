"""How well a model does the shipped tasks, by the tasks' own metrics, on held-out prompts.

``acd check-model [MODEL]`` prints these figures; the embedded model must meet
``TARGETS`` (see docs/models.md). Prompts come from task seeds below
``acd.models.train_toy.TRAIN_SEED_BASE``, which training never uses.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

import torch

from acd.metrics import logit_diff, logprob, prob_diff
from acd.roles import (
    HeadRoles,
    PatternsFn,
    head_roles,
    ioi_final_attention,
    ordinary_token_ids,
)
from acd.tasks import InductionTask, PromptBatch, TemplateTask, load_task

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


def first_half_logprob(logits: torch.Tensor, batch: PromptBatch) -> torch.Tensor:
    """Mean log-prob of the first (random) half's words 2..L, per prompt. [N, T, V] -> [N].

    The scored positions of an induction batch are the repeat's; the first half is the L words
    before the repeat (L = number of scored positions + 1), so it is found from the score mask.
    """
    logp = torch.log_softmax(logits.double(), dim=-1)
    out = []
    for i in range(len(batch)):
        scored = batch.score_mask[i].nonzero().flatten()
        half = len(scored) + 1
        first_of_repeat = int(scored[0])  # position of the repeat's first word
        positions = torch.arange(first_of_repeat - half, first_of_repeat - 1)
        next_tokens = batch.clean[i, positions + 1]
        out.append(logp[i, positions, next_tokens].mean())
    return torch.stack(out)


# Cells of the mechanism checks (issue: real induction and IOI, not positional shortcuts).
INDUCTION_HALF_LENGTHS = (5, 13, 20, 24)
INDUCTION_PREFIXES = (0, 5)
IOI_GROUPS = ("ABBA", "BABA")
IOI_FILLERS = (0, 3, 12)


def induction_figures(run: LogitsFn, tokenizer, n_prompts: int, seed: int) -> list[Figure]:
    """Repeat NLL at fixed half lengths, with and without random words in front (<= 0.5 nats)."""
    task = load_task("induction")
    assert isinstance(task, InductionTask)
    figures = []
    for half in INDUCTION_HALF_LENGTHS:
        for prefix in INDUCTION_PREFIXES:
            batch = task.restricted(half, prefix).make_batch(tokenizer, n_prompts, seed)
            nll = -logprob(_batched(run, batch.clean), batch).mean().item()
            name = f"induction repeat NLL, half {half}, {prefix} words before (nats)"
            figures.append(_target(name, nll, "<=", 0.5))
    return figures


def copy_rule_probes(
    vocab_ids: list[int], bos: int | None, n_prompts: int, seed: int, half: int = 12
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Probe sequences that tell the textbook induction rule from a look-alike.

    Each probe is [BOS] p1 p2 w_1..w_L, then two words, and asks for w_{i+1} (1 < i < L-1):
    - ``current``: "x w_i" with x new — the word's own earlier copy predicts w_{i+1} (the
      textbook rule: attend to the word after the current word's earlier copy);
    - ``previous``: "w_{i-1} y" with y new — only "the word two after the *previous* word's
      earlier copy" predicts w_{i+1} (the rule models trained on skip-bigram text grew).
    On an exact repeat both rules agree, so only these probes separate them.

    Returns {probe: (tokens [N, T], targets [N])}.
    """
    rng = random.Random(f"copy-probe:{seed}")
    rows: dict[str, list[list[int]]] = {"current": [], "previous": []}
    targets: dict[str, list[int]] = {"current": [], "previous": []}
    start = [] if bos is None else [bos]
    for _ in range(n_prompts):
        words = rng.sample(vocab_ids, half + 4)
        seq, new = words[:half], words[half:]
        i = rng.randrange(1, half - 2)
        for probe, tail in (("current", [new[0], seq[i]]), ("previous", [seq[i - 1], new[1]])):
            rows[probe].append(start + new[2:4] + seq + tail)
            targets[probe].append(seq[i + 1])
    return {k: (torch.tensor(rows[k]), torch.tensor(targets[k])) for k in rows}


def copy_rule_figures(run: LogitsFn, tokenizer, n_prompts: int, seed: int) -> list[Figure]:
    """Mean probability of the copied word on the ``copy_rule_probes`` (informative: a
    textbook induction circuit scores high on ``current`` and low on ``previous``)."""
    probes = copy_rule_probes(
        ordinary_token_ids(tokenizer), tokenizer.bos_token_id, n_prompts, seed
    )
    labels = {
        "current": "copy probe: P(next) from the current word's earlier copy",
        "previous": "copy probe: P(next) from the previous word's earlier copy",
    }
    figures = []
    for probe, (tokens, targets) in probes.items():
        logits = _batched(run, tokens)[:, -1].double()
        p = torch.softmax(logits, dim=-1).gather(1, targets.unsqueeze(1)).mean().item()
        figures.append(Figure(labels[probe], p, "", None))
    return figures


def _ioi_task() -> TemplateTask:
    """The shipped IOI task, whose cells (order x fillers) are drawn with ``restricted``."""
    task = load_task("ioi")
    assert isinstance(task, TemplateTask)
    return task


def ioi_cell_figures(run: LogitsFn, tokenizer, n_prompts: int, seed: int) -> list[Figure]:
    """IOI accuracy (>= 0.95) and mean logit difference (>= 3) per order x number of fillers."""
    task = _ioi_task()
    figures = []
    for group in IOI_GROUPS:
        for fillers in IOI_FILLERS:
            batch = task.restricted(group, fillers).make_batch(tokenizer, n_prompts, seed)
            ld = logit_diff(_batched(run, batch.clean), batch)
            cell = f"ioi {group}, {fillers} fillers"
            figures.append(_target(f"{cell}: accuracy", (ld > 0).float().mean().item(), ">=", 0.95))
            figures.append(_target(f"{cell}: mean logit difference", ld.mean().item(), ">=", 3.0))
    return figures


def ioi_lean(
    patterns: PatternsFn, tokenizer, n_prompts: int, seed: int, fillers: int = 3
) -> tuple[str, float, float]:
    """The head whose attention from IOI's final position leans most to IO over S, on prompts
    with ``fillers`` words in front (so a head keyed to a position cannot pass for it), as
    (head, END->IO, END->S); a name mover attends mostly to IO."""
    batch = _ioi_task().restricted(prefix_count=fillers).make_batch(tokenizer, n_prompts, seed)
    to_io, to_s = ioi_final_attention(patterns, batch)
    layer, head = _leaning_head(to_io, to_s)
    return f"a{layer}.h{head}", float(to_io[layer, head]), float(to_s[layer, head])


def _leaning_head(to_io: torch.Tensor, to_s: torch.Tensor) -> tuple[int, int]:
    """(layer, head) of the head whose END->IO most exceeds its END->S ([n_layers, n_heads]
    each): a name mover attends to IO, not to both names, so the head attending most to IO
    (a head copying both names can) is not the one to name."""
    layer, head = divmod(int((to_io - to_s).argmax()), to_io.shape[1])
    return layer, head


def role_figures(
    patterns: PatternsFn, tokenizer, n_prompts: int, seed: int
) -> tuple[list[Figure], str]:
    """The best previous-token (>= 0.8) and induction (>= 0.5) heads, and a table of every
    head's role scores (returned as text)."""
    roles = head_roles(
        patterns, ordinary_token_ids(tokenizer), tokenizer.bos_token_id, min(n_prompts, 50), seed
    )
    ioi = load_task("ioi").make_batch(tokenizer, min(n_prompts, 200), seed)
    to_io, to_s = ioi_final_attention(patterns, ioi)
    figures = []
    for label, scores, bound in (
        ("previous-token", roles.previous_token, 0.8),
        ("induction", roles.induction, 0.5),
    ):
        layer, head = divmod(int(scores.argmax()), scores.shape[1])
        figures.append(
            _target(f"best {label} score (a{layer}.h{head})", scores.max().item(), ">=", bound)
        )
    layer, head = _leaning_head(to_io, to_s)
    label = f"ioi END attention to IO, head leaning most to IO (a{layer}.h{head}; to S "
    figures.append(Figure(f"{label}{to_s[layer, head]:.3f})", float(to_io[layer, head]), "", None))
    return figures, format_role_table(roles, to_io, to_s)


def format_role_table(roles: HeadRoles, to_io: torch.Tensor, to_s: torch.Tensor) -> str:
    lines = ["head     prev-token  duplicate  induction  ioi END->IO  ioi END->S"]
    for layer, head in roles.heads():
        cells = [
            roles.previous_token[layer, head],
            roles.duplicate_token[layer, head],
            roles.induction[layer, head],
            to_io[layer, head],
            to_s[layer, head],
        ]
        lines.append(f"a{layer}.h{head:<4}" + "".join(f"{float(c):11.3f}" for c in cells))
    return "\n".join(lines)


def task_figures(
    run: LogitsFn,
    run_without_heads: LogitsFn,
    tokenizer,
    n_prompts: int = 500,
    seed: int = 0,
    mechanisms: bool = True,
) -> list[Figure]:
    """Quality figures of a model on ``n_prompts`` held-out prompts per task (per cell for the
    mechanism checks, which ``mechanisms=False`` leaves out). The head-role figures come from
    ``role_figures``, which needs attention patterns.

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
    first = first_half_logprob(logits, ind).mean().item()
    chance = -math.log(len(induction.pool))
    figures.append(
        Figure(
            "induction mean log-prob, first half (nats)",
            first,
            f"near chance ({chance:.2f} ± 0.5)",
            abs(first - chance) <= 0.5,
        )
    )
    if mechanisms:
        cell_prompts = max(1, n_prompts // 5)
        figures += induction_figures(run, tokenizer, cell_prompts, seed)
        figures += copy_rule_figures(run, tokenizer, cell_prompts, seed)
        figures += ioi_cell_figures(run, tokenizer, cell_prompts, seed)
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
