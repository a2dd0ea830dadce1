"""Evaluate a positional circuit: its kept positional edges clean, every other part patched.

A positional circuit is a bool [n_src, P, n_dst, P] mask. Evaluating it patches, at every
position, every plain edge whose positional part there is not kept: for a destination that
reads its own position t (span p), u -> v is patched unless (u@p -> v@p) is kept; for a key or
value input, what the queries of span q see of position t's key is patched unless
(u@p -> v@q) is kept. Parts that are not positional edges (a span that no prompt of the
discovery batch had, a key after every query) are patched as well, so that the figures do not
depend on which prompts built the graph. Patching everything is the plain empty circuit and
keeping everything the full model, so faithfulness is measured against the same two ends as
for plain circuits (acd.evaluate).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from acd.errors import AcdError
from acd.evaluate import CircuitEvaluation, evaluate_kept
from acd.positional.runs import run_positional_patched

if TYPE_CHECKING:
    from acd.metrics import Metric
    from acd.models.load import ModelAdapter
    from acd.positional.graph import PositionalCircuit, PositionalGraph
    from acd.runner import PromptRunner
    from acd.tasks import PromptBatch


def evaluate_positional_with(
    runner: PromptRunner, pgraph: PositionalGraph, masks: torch.Tensor
) -> list[CircuitEvaluation]:
    """Evaluate positional circuits ([k, n_src, P, n_dst, P] bool) on the runner's prompts
    (``acd.positional.scores.positional_runner``): one positional forward (P copies) per
    circuit and chunk; the full and empty circuits come from the runner's reference."""
    if masks.dim() != 5 or tuple(masks.shape[1:]) != pgraph.shape:
        raise ValueError(
            f"positional circuit masks have shape {tuple(masks.shape)}; expected (k, "
            f"{', '.join(map(str, pgraph.shape))})"
        )
    kept = masks.bool().cpu() & pgraph.valid
    everything = pgraph.graph.valid[:, None, :, None].expand(pgraph.shape)

    def patched_logits(i: int, circuit: torch.Tensor) -> torch.Tensor:
        chunk = runner.chunks[i]
        return run_positional_patched(
            runner.model,
            pgraph,
            chunk.clean,
            chunk.span_index,
            everything & ~circuit,
            runner.patch(i),
        )

    return evaluate_kept(runner, kept, pgraph.valid, patched_logits)


def evaluate_positional_circuit(
    model: ModelAdapter,
    positional: PositionalCircuit,
    batch: PromptBatch,
    *,
    metric: str | Metric = "task",
    ablation: str = "corrupted",
    batch_size: int | None = None,
) -> CircuitEvaluation:
    """A saved positional circuit on other prompts (``acd evaluate``): the prompts must name the
    circuit's spans; their own positional graph decides nothing here, since every part the
    circuit does not keep is patched (module docstring)."""
    from acd.positional.graph import PositionalGraph
    from acd.positional.scores import positional_runner

    spans = positional.graph.spans
    if tuple(batch.span_names) != spans:
        raise AcdError(
            f"the circuit's spans are {list(spans)} but these prompts name "
            f"{list(batch.span_names)}: evaluate it on prompts of the task it was found on"
        )
    pgraph = PositionalGraph.from_batch(positional.graph.graph, batch)
    runner = positional_runner(model, pgraph, batch, metric, ablation, batch_size)
    # Parts kept by the circuit but not positional edges of these prompts carry nothing here.
    kept = positional.mask & pgraph.valid
    return evaluate_positional_with(runner, pgraph, kept.unsqueeze(0))[0]
