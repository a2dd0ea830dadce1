"""ACDC (Conmy et al. 2023): automatic circuit discovery by greedy edge removal.

The circuit starts as every valid edge (or a candidate set, every other edge removed: the
``hybrid`` method of ``discover``). Destinations are visited from the output backwards
(``logits``, then block L - 1's destinations in reverse index order, ...); for each, its
incoming kept edges in reverse source order. Each edge e is patched out of the *current*
circuit (the edges removed so far stay patched, with what the ablation puts in their place,
exactly as ``run_patched`` defines) and compared with the current circuit itself:

    delta(e) = M(current without e) - M(current),   M averaged over prompts

With ``kl`` (the default), M = KL(full model || circuit) and e is removed when delta(e) < tau;
with a task metric, when |delta(e)| < tau. ``deltas`` records delta(e) for every tested edge
(its sign: the metric change when the edge was removed; for ``kl`` the KL increase).

Two savings keep the number of forwards and their cost down, neither of which changes a
decision:

**Restarting from a cached residual.** While destination v of block l is visited, every
destination of blocks < l still has all its (initial) edges, so the residual entering block l
is the same as in the run of the initial circuit. That run's residuals and sources are cached
once (``run_and_collect_residuals``); each evaluation runs blocks l .. L - 1 only
(``run_patched_from_layer``), computing logits only at the positions the metric reads.

**Batched speculation.** Most tested edges get removed, so for the remaining edges
e_1 .. e_n of a destination, row i of a batch is the current circuit with e_1 .. e_i *all*
removed (row 0: the current circuit). One forward evaluates a window of such rows for every
prompt (at most ``rows_per_forward`` (row, prompt) pairs); then the walk i = 1, 2, ... computes
delta_i = M(row i) - M(row i - 1), which is exactly the one-edge-at-a-time comparison as long
as e_1 .. e_{i-1} were removed. At the first e_i that is kept, the rows after i assumed it
removed and are discarded: speculation restarts at e_{i+1} with e_i kept, against row i - 1
(the current circuit, already measured). A window in which every edge is removed costs one
forward instead of one per edge.

Data parallel: each rank takes its shard of the prompts (``acd.distributed.shard``) and the
per-row metric sums are added with ``all_reduce_sum``, so every rank takes the same decisions.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from acd.atomic import atomic_write
from acd.distributed import all_reduce_sum, is_main, rank_and_size
from acd.formats import checkpoint as checkpoint_schema
from acd.formats.checkpoint import CheckpointFile, check_progress, parse_checkpoint
from acd.formats.common import parse_json, read_text
from acd.memory import accumulator_dtype
from acd.models.load import weights_sha256
from acd.patching import RestartCache
from acd.runner import PromptRunner, RunnerError, at_positions
from acd.tasks import BATCH_TENSOR_FIELDS

if TYPE_CHECKING:
    from acd.graph import ComputeGraph
    from acd.metrics import Metric, MetricFunction
    from acd.models.load import ModelAdapter
    from acd.tasks import PromptBatch

# (row, prompt) pairs per forward by default. Each costs about 3 x pos x n_src x d_model values
# (patch values, the cached sources and patch - current): ~20 MB on GPT-2 small at 15 tokens.
ROWS_PER_FORWARD = 64

# acd.formats.checkpoint holds the schema: version 2 records the weights, dtype, device and
# acd version (1 did not).
CHECKPOINT_FORMAT, CHECKPOINT_VERSION = checkpoint_schema.FORMAT, checkpoint_schema.VERSION

# What each checkpoint header field is, where its name alone does not say.
_FIELD_NAMES = {"model_sha256": "model_sha256 (the model's weights)"}


class AcdcError(RunnerError):
    """An argument of ``acdc`` that cannot be used, or a checkpoint that does not fit."""


@dataclass
class AcdcResult:
    """What ``acdc`` found.

    mask: [n_src, n_dst] bool, the edges kept.
    deltas: [n_src, n_dst] float (CPU), M(circuit without e) - M(circuit) measured when edge e
        was tested (for ``kl`` the KL increase); 0 for edges never tested.
    visited: edges tested; n_forwards: forward passes run by this process (including the
        reference runs); seconds: wall time (of this call, not of a resumed earlier one).
    n_circuits: circuits evaluated on every prompt by this call: one per tested edge, one per
        destination (its current circuit), and the speculative rows discarded after a kept
        edge (the waste of speculation).
    """

    mask: torch.Tensor
    deltas: torch.Tensor
    visited: int
    n_forwards: int
    seconds: float
    n_circuits: int = 0


# --------------------------------------------------------------------------------------------
# Entry point


def acdc(
    model: ModelAdapter,
    graph: ComputeGraph,
    batch: PromptBatch,
    *,
    tau: float,
    metric: str | Metric | MetricFunction = "kl",
    ablation: str = "corrupted",
    candidates: torch.Tensor | None = None,
    batch_size: int | None = None,
    rows_per_forward: int = ROWS_PER_FORWARD,
    progress: bool = True,
    checkpoint: str | Path | None = None,
    on_progress: Callable[[int, int, int], None] | None = None,
    runner: PromptRunner | None = None,
) -> AcdcResult:
    """Run ACDC on the prompts of ``batch`` (module docstring).

    Args:
        tau: the removal threshold (>= 0): an edge goes when removing it raises KL by less
            than ``tau`` (``kl``) or moves the task metric by less than ``tau`` in magnitude.
        metric: ``kl`` (KL(full model || circuit), default), a task metric name, ``task`` (the
            batch's own), or a function (logits [N, T, V], PromptBatch) -> [N].
        ablation: what removed edges carry: ``corrupted``, ``zero`` or ``mean``.
        candidates: [n_src, n_dst] bool; start from these edges (every other edge removed)
            and test only them. Default: every valid edge.
        batch_size: prompts per reference forward and at most per search forward.
        rows_per_forward: (row, prompt) pairs one search forward carries.
        progress: show a progress bar (edges tested / candidate edges, circuit size).
        checkpoint: a JSON file written (atomically) after each destination and resumed from
            when it exists and matches this run: the same model weights, dtype, device kind,
            acd version, graph, prompts, tau, metric, ablation and candidates (otherwise
            AcdcError says which differ). Resuming prints one line to stderr; a finished
            search deletes the file.
        on_progress: called as ``on_progress(visited, total, kept)`` after each destination
            (after its checkpoint is written).
        runner: a PromptRunner over ``batch`` to reuse (its chunks and patch values; with this
            search's metric, ``PromptRunner.with_metric``) instead of building one;
            ``metric``, ``ablation`` and ``batch_size`` are then the runner's.

    Returns: AcdcResult.
    """
    start = time.perf_counter()
    tau = check_search_arguments(tau, rows_per_forward)
    if runner is None:
        runner = PromptRunner(
            model,
            graph,
            batch,
            metric=metric,
            ablation=ablation,
            batch_size=batch_size,
            error=AcdcError,
        )
    ablation, batch_size = runner.ablation, runner.batch_size
    initial = _initial_circuit(graph, candidates)
    state = _SearchState.fresh(graph, initial, accumulator_dtype(model))
    header = None
    if checkpoint is not None:
        header = _checkpoint_header(
            model, graph, batch, tau, runner.metric.name, ablation, candidates
        )
        state = _resume(Path(checkpoint), header, graph, state)
    _, size = rank_and_size()
    evaluator = _Evaluator(
        runner,
        largest_shard=math.ceil(len(batch) / size),
        initial=initial,
        batch_size=batch_size,
        rows_per_forward=rows_per_forward,
    )
    total = int(initial.sum())
    bar = tqdm(total=total, initial=state.visited, desc="acdc", unit="edge", disable=not progress)
    bar.set_postfix(kept=state.n_kept())
    order = graph.dst_layers
    distance = runner.metric.direction == "lower"
    for v in range(state.next_dst, -1, -1):
        _visit_destination(evaluator, state, v, int(order[v]), tau, distance, bar)
        state.next_dst = v - 1
        if checkpoint is not None and header is not None and is_main():
            atomic_write(checkpoint, state.to_json(header))
        if on_progress is not None:
            on_progress(state.visited, total, state.n_kept())
    bar.close()
    if checkpoint is not None and is_main():
        # Finished: the result is complete, so a later run must not pick up a stale file.
        Path(checkpoint).unlink(missing_ok=True)
    return AcdcResult(
        mask=state.kept.clone(),
        deltas=state.deltas.clone(),
        visited=state.visited,
        n_forwards=evaluator.n_forwards,
        seconds=time.perf_counter() - start,
        n_circuits=evaluator.n_circuits,
    )


def check_search_arguments(tau: float | None, rows_per_forward: int, name: str = "ACDC") -> float:
    """Refuse the search's own unusable arguments before any forward (the runner checks the
    metric, ablation, batch size and prompts); returns tau as a float. ``acdc`` and the
    ``ACDC``/``Hybrid`` method objects (acd.methods) both check through here."""
    if tau is None:
        raise AcdcError(f"{name} needs tau= (the removal threshold, >= 0, e.g. 0.01 for KL)")
    tau = float(tau)
    if math.isnan(tau) or tau < 0:
        raise AcdcError(f"tau must be >= 0, got {tau}")
    if isinstance(rows_per_forward, bool) or not isinstance(rows_per_forward, int):
        raise AcdcError(f"rows_per_forward must be an integer >= 1, got {rows_per_forward!r}")
    if rows_per_forward < 1:
        raise AcdcError(f"rows_per_forward must be an integer >= 1, got {rows_per_forward}")
    return tau


def _initial_circuit(graph: ComputeGraph, candidates: torch.Tensor | None) -> torch.Tensor:
    """The edges ACDC starts from and tests: [n_src, n_dst] bool on the CPU."""
    if candidates is None:
        return graph.valid.clone()
    if tuple(candidates.shape) != (graph.n_src, graph.n_dst):
        raise AcdcError(
            f"candidates have shape {tuple(candidates.shape)}, expected "
            f"({graph.n_src}, {graph.n_dst})"
        )
    return candidates.detach().bool().cpu() & graph.valid


def _removable(delta: float, tau: float, distance: bool) -> bool:
    """ACDC's test: a distance from the full model (a metric whose direction is ``lower``, such
    as KL) rises by less than tau, or a task metric moves by less than tau."""
    return delta < tau if distance else abs(delta) < tau


# --------------------------------------------------------------------------------------------
# The search


def _visit_destination(
    evaluator: _Evaluator,
    state: _SearchState,
    v: int,
    layer: int,
    tau: float,
    distance: bool,
    bar: tqdm,
) -> None:
    """Test every kept edge into destination ``v`` (block ``layer``), last source first,
    removing those that pass; speculative windows as the module docstring describes."""
    edges = state.kept[:, v].nonzero().flatten().flip(0).tolist()  # reverse source order
    if not edges:
        return
    largest = evaluator.variants_per_forward
    baseline: float | None = None  # M(current circuit), measured from this layer
    if largest == 1:  # no room for the current circuit beside a speculative row
        baseline = float(evaluator.mean_metrics(layer, state.removed()[None])[0])
    size = largest  # speculative circuits in the next window
    i = 0
    while i < len(edges):
        with_baseline = baseline is None
        spec = edges[i : i + max(1, size - int(with_baseline))]
        values = evaluator.mean_metrics(
            layer, _speculative_masks(state.removed(), v, spec, with_baseline)
        )
        if with_baseline:
            baseline, values = float(values[0]), values[1:]
        removed_in_window = 0
        for u, value in zip(spec, values.tolist()):
            i += 1
            delta = value - baseline
            state.deltas[u, v] = delta
            state.visited += 1
            bar.update(1)
            if not _removable(delta, tau, distance):
                break  # the later rows assumed this edge removed: speculate again after it
            state.kept[u, v] = False
            baseline = value
            removed_in_window += 1
            bar.set_postfix(kept=state.n_kept(), refresh=False)
        # The next window: twice the run of removals just seen (doubling while every edge
        # goes), so that where edges are kept few speculative rows are wasted.
        size = min(largest, max(2, 2 * removed_in_window))


def _speculative_masks(
    removed: torch.Tensor, v: int, spec: list[int], with_baseline: bool
) -> torch.Tensor:
    """Patch masks [rows, n_src, n_dst]: row j removes spec[0 .. j] into ``v`` on top of
    ``removed`` [n_src, n_dst]; with ``with_baseline`` a first row is ``removed`` itself."""
    n = len(spec)
    masks = removed.expand(n, *removed.shape).clone()
    masks[:, spec, v] = torch.ones(n, n, dtype=torch.bool).tril()  # row j: edges 0 .. j
    if with_baseline:
        masks = torch.cat([removed[None], masks])
    return masks


class _SearchState:
    """Where the search stands: kept edges [n_src, n_dst] bool, deltas [n_src, n_dst], the next
    destination to visit (counting down; -1 when done) and the number of edges tested."""

    def __init__(
        self,
        valid: torch.Tensor,
        kept: torch.Tensor,
        deltas: torch.Tensor,
        next_dst: int,
        visited: int,
    ):
        self.valid, self.kept, self.deltas = valid, kept, deltas
        self.next_dst, self.visited = next_dst, visited

    @classmethod
    def fresh(cls, graph: ComputeGraph, initial: torch.Tensor, dtype: torch.dtype):
        deltas = torch.zeros(graph.n_src, graph.n_dst, dtype=dtype)
        return cls(graph.valid, initial.clone(), deltas, graph.n_dst - 1, 0)

    def removed(self) -> torch.Tensor:
        """The edges patched in the current circuit: [n_src, n_dst] bool (valid edges only)."""
        return self.valid & ~self.kept

    def n_kept(self) -> int:
        return int(self.kept.sum())

    # --- checkpoints ---------------------------------------------------------------------

    def to_json(self, header: dict) -> str:
        """The checkpoint: ``header``, kept edges and tested edges' deltas as flat indices
        src * n_dst + dst, the next destination and the count of edges tested."""
        flat = self.deltas.flatten()
        tested = flat.ne(0).nonzero().flatten().tolist()
        body = {
            **header,
            "kept": self.kept.flatten().nonzero().flatten().tolist(),
            # float() of a float32/float64 value prints (repr) and parses back exactly.
            "deltas": [[i, float(flat[i])] for i in tested],
            "next_destination": self.next_dst,
            "visited": self.visited,
        }
        return json.dumps(body, separators=(",", ":")) + "\n"

    @classmethod
    def load(
        cls,
        path: Path,
        header: dict,
        graph: ComputeGraph,
        dtype: torch.dtype,
        initial: torch.Tensor,
    ):
        """The state saved in ``path``; AcdcError (one line) if it belongs to another run, or
        does not fit its schema (``acd.formats.checkpoint``) or the search from ``initial``
        ([n_src, n_dst] bool, the edges this run starts from)."""
        where = f"the ACDC checkpoint {path}"
        data = parse_json(read_text(path, where, AcdcError), f"cannot read {where}", AcdcError)
        checkpoint = _check_header(path, data, header)
        try:
            check_progress(checkpoint, initial, where, AcdcError)
        except AcdcError as error:
            raise AcdcError(f"{error}; {_AGAIN}") from None
        n_edges = graph.n_src * graph.n_dst
        kept = torch.zeros(n_edges, dtype=torch.bool)
        kept[torch.tensor(checkpoint.kept, dtype=torch.long)] = True
        deltas = torch.zeros(n_edges, dtype=dtype)
        tested = torch.tensor([i for i, _ in checkpoint.deltas], dtype=torch.long)
        # Through float64: a value finite in JSON but beyond ``dtype``'s range becomes inf.
        values = torch.tensor([v for _, v in checkpoint.deltas], dtype=torch.float64).to(dtype)
        if not bool(values.isfinite().all()):
            raise AcdcError(f"{where}: deltas: a value is beyond the range of {dtype}; {_AGAIN}")
        deltas[tested] = values
        shape = (graph.n_src, graph.n_dst)
        next_dst, visited = checkpoint.next_destination, checkpoint.visited
        return cls(graph.valid, kept.view(shape), deltas.view(shape), next_dst, visited)


_AGAIN = "delete it or pass another checkpoint path"


def _check_header(path: Path, data, header: dict) -> CheckpointFile:
    """The checkpoint ``data`` (parsed JSON) checked against its schema, if it was written by
    this run: ``header``'s fields, all equal; otherwise AcdcError, in one line naming every
    field that differs. Another format, another version and missing header fields are named
    before the schema's types (an old file's problem is its version, not its fields)."""
    again = _AGAIN
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise AcdcError(f"{path} is not an ACDC checkpoint; {again}")
    if data.get("version") != CHECKPOINT_VERSION:
        raise AcdcError(
            f"the ACDC checkpoint {path} has version {_short(data.get('version'))}, not "
            f"{CHECKPOINT_VERSION} (an older or newer acd): it cannot be verified against "
            f"this model's weights, dtype and device; {again}"
        )
    missing = [key for key in header if key not in data]
    if missing:
        raise AcdcError(
            f"the ACDC checkpoint {path} records no {', '.join(missing)}, so it cannot be "
            f"verified; {again}"
        )
    try:
        checkpoint = parse_checkpoint(data, f"the ACDC checkpoint {path}", AcdcError)
    except AcdcError as error:
        raise AcdcError(f"{error}; {again}") from None
    differ = [
        f"{_FIELD_NAMES.get(key, key)}: {_short(data[key])} there, {_short(expected)} here"
        for key, expected in header.items()
        if data[key] != expected
    ]
    if differ:
        raise AcdcError(
            f"the ACDC checkpoint {path} is for a different run ({'; '.join(differ)}); {again}"
        )
    return checkpoint


def _resume(path: Path, header: dict, graph: ComputeGraph, fresh: _SearchState) -> _SearchState:
    """The state to start from: ``fresh``, or the one saved in ``path`` when it exists (then
    one line on stderr says so). Every rank reads the file and checks it; the ranks then
    agree (one all-reduce) so that all resume, all start afresh, or all raise."""
    state, error = fresh, None
    resumed = path.exists()
    if resumed:
        try:
            state = _SearchState.load(path, header, graph, fresh.deltas.dtype, fresh.kept)
        except AcdcError as refused:
            error = refused
    _, size = rank_and_size()
    votes = all_reduce_sum(torch.tensor([float(error is not None), float(resumed)]))
    if error is not None:
        raise error
    if votes[0] > 0:
        raise AcdcError(f"another process refused the ACDC checkpoint {path}")
    if 0 < votes[1] < size:
        raise AcdcError(
            f"the ACDC checkpoint {path} exists for only some of the processes; put it "
            "where every process reads it, or pass another checkpoint path"
        )
    if resumed and is_main():
        done = graph.n_dst - 1 - state.next_dst
        print(
            f"resuming ACDC from {path}: {done} of {graph.n_dst} destinations done "
            f"({state.visited} edges tested)",
            file=sys.stderr,
            flush=True,
        )
    return state


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 24 else text[:21] + "..."


def _checkpoint_header(
    model: ModelAdapter,
    graph: ComputeGraph,
    batch: PromptBatch,
    tau: float,
    metric: str,
    ablation: str,
    candidates: torch.Tensor | None,
) -> dict:
    """What a checkpoint must agree on to be resumed: what the search runs on (the weights,
    their dtype, the kind of device, acd's version) and everything that changes a decision
    (graph, prompts, tau, metric, ablation, candidates). Not ``batch_size`` or
    ``rows_per_forward``: the width of a forward changes no decision. Computed from the full
    batch and the (replicated) weights, so every rank computes the same header."""
    prompts = hashlib.sha256()
    for name in BATCH_TENSOR_FIELDS:  # tokens, scored positions, targets and answers
        tensor = getattr(batch, name).detach().cpu().contiguous()
        prompts.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        prompts.update(tensor.numpy().tobytes())
    candidate_hash = None
    if candidates is not None:
        bits = candidates.detach().bool().cpu().contiguous().numpy().tobytes()
        candidate_hash = hashlib.sha256(bits).hexdigest()
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "acd_version": _acd_version(),
        "graph": [graph.n_src, graph.n_dst],
        # dtype and device first: a checkpoint of another dtype also differs in the hash.
        "dtype": str(model.dtype).removeprefix("torch."),
        "device": torch.device(model.device).type,
        "model_sha256": weights_sha256(model),
        "tau": tau,
        "metric": metric,
        "ablation": ablation,
        "n_prompts": len(batch),
        "prompts_sha256": prompts.hexdigest(),
        "candidates_sha256": candidate_hash,
    }


def _acd_version() -> str:
    """The installed acd's version (as ``circuit.json`` records it), else ``acd.__version__``."""
    try:
        return metadata.version("acd")
    except metadata.PackageNotFoundError:
        import acd

        return acd.__version__


# --------------------------------------------------------------------------------------------
# Evaluating circuits from a cached run


class _Evaluator:
    """This rank's prompts, the cached run of the initial circuit (a RestartCache), and metric
    evaluations of patch masks from a chosen block on."""

    def __init__(
        self,
        runner: PromptRunner,
        *,
        largest_shard: int,
        initial: torch.Tensor,
        batch_size: int | None,
        rows_per_forward: int,
    ):
        self.runner, self.model, self.graph = runner, runner.model, runner.graph
        self.local, self.metric = runner.local, runner.metric
        self.n_total = runner.n_total
        self.n_forwards = 0
        self.n_circuits = 0
        # Prompts per search forward, and how many speculative rows fit beside them. Computed
        # from the largest shard, not this rank's, so every rank runs the same windows (and so
        # the same number of all-reduces).
        self.prompts_per_forward = max(1, min(batch_size or largest_shard, rows_per_forward))
        self.variants_per_forward = max(
            1, rows_per_forward // min(largest_shard, self.prompts_per_forward)
        )
        if len(self.local):
            self._cache_reference_runs(initial)

    def _cache_reference_runs(self, initial: torch.Tensor) -> None:
        """The run of the initial circuit, with the clean logits (KL's reference) at the scored
        positions, truncated after the last scored position (``RestartCache``)."""
        runner, graph = self.runner, self.graph
        self.positions = self.local.score_mask.any(dim=0).nonzero().squeeze(1)
        removed = graph.valid & ~initial  # hybrid: the non-candidate edges
        caches = []
        for i, chunk in enumerate(runner.chunks):
            caches.append(
                RestartCache.record(
                    self.model,
                    graph,
                    chunk.clean,
                    runner.patch(i),
                    self.positions.to(chunk.clean.device),
                    removed=removed,
                    check="ACDC" if i == 0 else None,
                )
            )
            self.n_forwards += 2 if runner.ablation == "corrupted" else 1
            self.n_forwards += int(bool(removed.any()))
        self.cache = RestartCache.cat(caches)

    def mean_metrics(self, layer: int, masks: torch.Tensor) -> torch.Tensor:
        """M of each circuit, averaged over every rank's prompts: masks [K, n_src, n_dst] bool
        (patched edges; only destinations of block ``layer`` on may differ from the initial
        circuit) -> [K] float64 on the CPU."""
        self.n_circuits += len(masks)
        sums = torch.zeros(len(masks), dtype=torch.float64, device=self.model.device)
        n_local = len(self.local)
        for start in range(0, n_local, self.prompts_per_forward):
            prompts = torch.arange(start, min(start + self.prompts_per_forward, n_local))
            # Row r: circuit variant[r] on prompt[r] (variant-major).
            variant = torch.arange(len(masks)).repeat_interleave(len(prompts))
            prompt = prompts.repeat(len(masks))
            sums.index_add_(
                0, variant.to(sums.device), self._row_metrics(layer, masks, variant, prompt)
            )
        return (all_reduce_sum(sums) / self.n_total).cpu()

    def _row_metrics(
        self, layer: int, masks: torch.Tensor, variant: torch.Tensor, prompt: torch.Tensor
    ) -> torch.Tensor:
        """One forward from block ``layer``: M for (circuit ``variant[r]``, prompt
        ``prompt[r]``) per row: [R] float64."""
        device = self.model.device
        p = prompt.to(device)
        logits = self.cache.run_with_masks(layer, masks.to(device)[variant.to(device)], prompt)
        self.n_forwards += 1
        rows = at_positions(self.local.select(p), self.positions.to(device))
        reference = self.cache.clean_at[p] if self.metric.needs_reference else None
        return self.metric(logits, rows, reference).to(torch.float64)
