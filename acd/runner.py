"""The prompt runner: every loop over prompts (scoring, ACDC, evaluation, the sanity gate).

A ``PromptRunner`` is built once for a model, a graph, the prompts, a metric, an ablation and a
``batch_size``, and owns what each of those loops needs:

- **sharding**: in a torch.distributed process group each rank holds its contiguous shard of
  the prompts (``acd.distributed``); ``sum`` and ``gather`` combine every rank's results;
- **chunking**: one policy, ``batch_size`` prompts per forward pass or, left unset, as many as
  fit in a fraction of the free memory (``acd.memory.auto_batch_size``). Every stage iterates
  over the same chunks;
- **patch values**: what patched edges carry, per chunk; mean ablation's means are computed once,
  over every prompt of every rank;
- **the metric** (``acd.metrics.Metric``), bound to a chunk's prompts at their scored positions
  and, when it needs one, to the clean logits there;
- **what a later stage needs**, kept instead of recomputed: the clean logits at the scored
  positions, the full model's and the empty circuit's metric per prompt (the sanity gate's
  figures, which evaluation reuses), and the corrupted sources when they fit in
  ``acd.memory.MEMORY_FRACTION`` of the free memory.

A chunk's *scored positions* are the positions where any of its prompts is scored; logits are
kept only there (metrics read nothing else), and ``scored_batch`` is the chunk seen at those
positions only.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch

from acd.distributed import all_gather_rows, all_reduce_sum, shard_batch
from acd.errors import AcdError, TaskError
from acd.memory import MEMORY_FRACTION, auto_batch_size, free_memory_bytes
from acd.metrics import KL, METRICS, Metric, MetricFunction, resolve_metric
from acd.patching import ABLATIONS, mean_sources, patch_values, run_and_collect, run_patched

if TYPE_CHECKING:
    from acd.graph import ComputeGraph
    from acd.models.load import ModelAdapter
    from acd.tasks import PromptBatch


class RunnerError(AcdError, ValueError):
    """An argument of a prompt loop that cannot be used."""


@dataclass(frozen=True)
class Reference:
    """The full model's metric (``full``) and the empty circuit's (``empty``: every valid edge
    patched) on every prompt, in prompt order: [N] float64 on the CPU."""

    full: torch.Tensor
    empty: torch.Tensor


class PromptRunner:
    """This rank's prompts in chunks, their patch values, the metric, and what later stages reuse
    (module docstring).

    Args:
        batch: every prompt (every rank passes the same batch).
        metric: a metric name, ``task`` or None (the batch's own), a Metric, or a function
            (logits [N, T, V], PromptBatch) -> [N].
        ablation: ``corrupted``, ``zero`` or ``mean``.
        batch_size: prompts per forward pass; None: auto-sized for ``method``'s buffers.
        method: whose buffers size the chunks when ``batch_size`` is None (``eap``, ``eap-ig``
            or ``exact``; ``exact`` for plain forwards, which record every source too).
        ig_steps: EAP-IG's steps, for the same estimate.
        error: the AcdError subclass a bad argument raises (the caller's: AttributionError,
            AcdcError, ...).

    A collective under torch.distributed when ``ablation`` is ``mean`` (the means are
    all-reduced): every rank must build it.
    """

    def __init__(
        self,
        model: ModelAdapter,
        graph: ComputeGraph,
        batch: PromptBatch,
        *,
        metric: str | Metric | MetricFunction | None = None,
        ablation: str = "corrupted",
        batch_size: int | None = None,
        method: str = "exact",
        ig_steps: int = 5,
        error: type[AcdError] = RunnerError,
    ):
        self.metric = check_run_arguments(metric, ablation, batch_size, batch, error=error)
        self.model, self.graph, self.ablation = model, graph, ablation
        self.task_metric = batch.metric
        self.n_total = len(batch)
        self.local = shard_batch(batch)
        local = self.local
        # ``batch_size`` as asked (None: auto), the same on every rank, for what must agree
        # across ranks (ACDC's windows); ``chunk_size`` this rank's resolved chunk size.
        self.batch_size = batch_size
        self.chunk_size = batch_size
        self.chunks: list[PromptBatch] = []  # none on a rank without prompts (it still joins
        if len(local):  # every collective)
            size = batch_size or auto_batch_size(model, graph, local, method, ig_steps=ig_steps)
            self.chunk_size = size
            self.chunks = [c.to(model.device) for c in local.split(size)]
        self.positions = [c.score_mask.any(dim=0).nonzero().squeeze(1) for c in self.chunks]
        self.means = None
        if ablation == "mean":
            self.means = mean_sources(
                model, graph, batch, batch_size=self.chunk_size, across_ranks=True
            )
        self._keep_patch = ablation == "corrupted" and self._patch_values_fit()
        self._patch: dict[int, torch.Tensor] = {}
        self._clean_at: dict[int, torch.Tensor] = {}
        self._empty_at: dict[int, torch.Tensor] = {}
        self._reference: Reference | None = None

    def with_metric(self, metric: str | Metric | MetricFunction | None) -> PromptRunner:
        """The same prompts, chunks and kept runs with another metric (a search's own): the
        patch values and clean logits are shared, nothing is recomputed."""
        other = copy.copy(self)
        other.metric = resolve_metric(metric, self.task_metric)
        other._reference = None
        return other

    # --- per chunk -----------------------------------------------------------------------

    def patch(self, i: int) -> torch.Tensor:
        """What chunk ``i``'s patched edges carry: [n, pos, n_src, d_model] (kept, when it fits,
        after the first call: one corrupted forward per chunk for all stages)."""
        if i in self._patch:
            return self._patch[i]
        chunk = self.chunks[i]
        if self.ablation != "corrupted":
            return patch_values(self.model, self.graph, chunk, self.ablation, means=self.means)
        logits, sources = run_and_collect(self.model, self.graph, chunk.corrupted)
        if self._keep_patch:
            self._patch[i] = sources
        # With corrupted sources, the empty circuit is the corrupted run (acd.patching).
        self._empty_at.setdefault(i, logits[:, self.positions[i]])
        return sources

    def scored_batch(self, i: int) -> PromptBatch:
        """Chunk ``i`` seen only at its scored positions: the batch of logits [n, k, V]."""
        return at_positions(self.chunks[i], self.positions[i])

    def clean_at(self, i: int) -> torch.Tensor:
        """The clean run's logits at chunk ``i``'s scored positions: [n, k, d_vocab] (one plain
        forward the first time; kept)."""
        if i not in self._clean_at:
            self.remember_clean(i, self.model.logits(self.chunks[i].clean))
        return self._clean_at[i]

    def remember_clean(self, i: int, logits: torch.Tensor) -> None:
        """Keep the clean logits of chunk ``i`` (all positions [n, pos, V], or its scored
        positions [n, k, V]) that a stage computed anyway."""
        if i in self._clean_at:
            return
        if logits.shape[1] != len(self.positions[i]):
            logits = logits[:, self.positions[i]]
        self._clean_at[i] = logits.detach()

    def empty_at(self, i: int) -> torch.Tensor:
        """The empty circuit's logits (every valid edge patched) at chunk ``i``'s scored
        positions: [n, k, d_vocab]. Corrupted ablation: the corrupted run's, from ``patch``."""
        if i not in self._empty_at:
            patch = self.patch(i)
            if i not in self._empty_at:  # zero / mean: one patched forward
                logits = run_patched(
                    self.model, self.graph, self.chunks[i].clean, self.graph.valid, patch
                )
                self._empty_at[i] = logits[:, self.positions[i]]
        return self._empty_at[i]

    def metric_at(self, i: int, logits: torch.Tensor) -> torch.Tensor:
        """The metric of chunk ``i``'s prompts from logits at its scored positions
        ([n, k, V]) or at every position ([n, pos, V]): [n] (detached, in the metric's
        precision)."""
        return self.bind(i)(logits).detach()

    def bind(self, i: int):
        """logits [n, k or pos, V] -> [n] for chunk ``i`` (differentiable): the metric at the
        scored positions, with the clean logits as reference when it needs one."""
        positions, rows = self.positions[i], self.scored_batch(i)
        reference = self.clean_at(i) if self.metric.needs_reference else None

        def metric(logits: torch.Tensor) -> torch.Tensor:
            if logits.shape[1] != len(positions):
                logits = logits[:, positions]
            return self.metric(logits, rows, reference)

        return metric

    def kl_to_full(self, i: int, logits: torch.Tensor) -> torch.Tensor:
        """KL(full model || run) per prompt of chunk ``i``, from logits at its scored positions
        or at every position: [n]."""
        if logits.shape[1] != len(self.positions[i]):
            logits = logits[:, self.positions[i]]
        return KL(logits, self.scored_batch(i), self.clean_at(i)).detach()

    # --- every prompt ----------------------------------------------------------------------

    def reference(self) -> Reference:
        """The full model's and the empty circuit's metric on every prompt (computed once: a
        clean and a corrupted forward per chunk, and for zero / mean ablation one
        everything-patched forward). A collective under torch.distributed."""
        if self._reference is None:
            full = [self.metric_at(i, self.clean_at(i)) for i in range(len(self.chunks))]
            empty = [self.metric_at(i, self.empty_at(i)) for i in range(len(self.chunks))]
            table = self.gather([full, empty])
            self._reference = Reference(full=table[0], empty=table[1])
        return self._reference

    def gather(self, columns: list[list[torch.Tensor]]) -> list[torch.Tensor]:
        """Per-prompt values of every rank in prompt order: each column is this rank's chunks'
        values ([n] each, chunk order); returns one [N] float64 CPU tensor per column (one
        all-gather for all columns; the identity in one process). A collective."""
        local = [_cat_rows(parts) for parts in columns]
        table = all_gather_rows(torch.stack(local, dim=1))  # [N, n_columns]
        return [column.contiguous() for column in table.unbind(dim=1)]

    @staticmethod
    def sum(values: torch.Tensor) -> torch.Tensor:
        """``values`` summed over every rank (the identity in one process). A collective."""
        return all_reduce_sum(values)

    # --- memory --------------------------------------------------------------------------

    def _patch_values_fit(self) -> bool:
        """Whether every chunk's corrupted sources fit in MEMORY_FRACTION of the free memory
        (unknown free memory: they are kept only if under 1 GiB)."""
        n, pos = len(self.local), self.local.clean.shape[1] if len(self.local) else 0
        itemsize = torch.finfo(self.model.dtype).bits // 8
        needed = n * pos * self.graph.n_src * self.model.spec.d_model * itemsize
        free = free_memory_bytes(self.model.device)
        return needed <= (MEMORY_FRACTION * free if free is not None else 1 << 30)


def check_run_options(
    metric: str | Metric | MetricFunction | None,
    ablation: str,
    batch_size: int | None,
    *,
    error: type[AcdError] = RunnerError,
) -> None:
    """Refuse (``error``, one line) an ablation, a batch size below 1 or an unknown metric
    name, before any prompt is known (``RunConfig`` checks through here, as every prompt loop
    does through ``check_run_arguments``)."""
    if ablation not in ABLATIONS:
        raise error(f"unknown ablation {ablation!r}; choose one of {', '.join(ABLATIONS)}")
    if batch_size is not None and batch_size < 1:
        raise error(f"batch_size must be at least 1, got {batch_size}")
    if isinstance(metric, str) and metric != "task" and metric not in METRICS:
        raise error(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")


def check_run_arguments(
    metric: str | Metric | MetricFunction | None,
    ablation: str,
    batch_size: int | None,
    batch: PromptBatch,
    *,
    error: type[AcdError] = RunnerError,
) -> Metric:
    """Refuse (``error``, one line) a metric, ablation, batch size or batch no prompt loop can
    use; returns the Metric (``acd.metrics.resolve_metric``)."""
    check_run_options(None, ablation, batch_size, error=error)
    if len(batch) == 0:
        raise error("the batch holds no prompts")
    try:
        return resolve_metric(metric, batch.metric)
    except TaskError as unknown:
        raise error(str(unknown)) from None


def at_positions(batch: PromptBatch, positions: torch.Tensor) -> PromptBatch:
    """``batch`` seen only at ``positions`` (the logits of a run that kept only those)."""
    return replace(
        batch,
        clean=batch.clean[:, positions],
        corrupted=batch.corrupted[:, positions],
        score_mask=batch.score_mask[:, positions],
        targets=batch.targets[:, positions],
        span_index=batch.span_index[:, positions],
    )


def _cat_rows(parts: list[torch.Tensor]) -> torch.Tensor:
    """This rank's per-prompt values, chunk after chunk: [n_local] (CPU, float64)."""
    if not parts:  # a rank without prompts
        return torch.zeros(0, dtype=torch.float64)
    return torch.cat(parts).to("cpu", torch.float64)
