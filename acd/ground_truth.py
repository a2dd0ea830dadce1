"""True circuits of compiled programs (tracr), derived from the weights and checked by patching.

tracr gives every RASP variable its own residual-stream directions, so which component can
read which other component's output is visible in the weights: a product of the writer's output
matrix and the reader's input matrix is exactly zero or clearly not. From that:

    can_carry(model, graph)                   [n_src, n_dst] bool: the valid edges u -> v along
                                              which information can flow, by the weights alone
    true_circuit(model, graph, batch, abl)    [n_src, n_dst] bool: the edges of can_carry on an
                                              input -> logits path whose patching, alone, changes
                                              the output on some prompt; checked by intervention
    check_circuit(model, graph, batch, abl, mask)
                                              the check itself, for any mask: patching every
                                              other valid edge at once leaves every logit as it
                                              was, and patching each edge of ``mask`` alone
                                              moves the output on some prompt

An edge u -> v means "v reads u's output" (acd.patching): patching it replaces u's contribution
to what v reads with the ablation's value, everything else unchanged.

The output (``output_changed``): position 0 is BOS, whose output tracr leaves meaningless, so
only positions 1..n count (the batch's ``score_mask``). Categorical programs output
``argmax(logits)`` over the output vocabulary at each of those positions, and the output changed
when one argmax differs. Numerical programs output ``logits[..., 0]`` (W_U selects one residual
direction), and the output changed when one value moves by more than NUMERICAL_TOLERANCE.

Prompts (``program_batches``): tracr's non-causal attention reads every position, so prompts of
different lengths cannot share a padded batch; there is one batch per input length. Their
inputs are the program's whole input space (``program_inputs``: program.json's examples where
they cover it, e.g. every sequence of distinct tokens for ``sort``, else every sequence of its
vocabulary), each paired with another input of the same length by a seeded derangement (the
corrupted input).

``python -m acd.ground_truth`` writes the true circuit of every shipped program under each
ablation to ``graphs/ground_truth/<name>/<ablation>/circuit.json`` (docs/ground_truth.md).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from acd.circuit import Circuit
from acd.errors import AcdError
from acd.graph import ComputeGraph
from acd.models.compiled import CompiledAdapter
from acd.patching import patch_values, run_patched
from acd.search import prune_dangling
from acd.tasks import PromptBatch

# A weight product counts as non-zero when its largest entry exceeds this fraction of
# max|writer| * max|reader|. The products are taken in float64 from float32 weights, where each
# elementwise product is exact and a sum of d_model of them rounds at ~1e-16 relative, so a
# product of matrices that share no residual direction is exactly 0. In the shipped programs
# every weight's magnitude lies in [1, 100] and every non-zero product has an entry of at least
# 1, i.e. at least 1e-4 of the scale: 1e-9 sits far between the two.
CARRY_TOLERANCE = 1e-9

# A numerical output changed when it moved by more than this. tracr's numerical outputs are
# fractions k / n with n <= max_seq_len + 1 (differences of them for pair_balance), so distinct
# values lie at least ~1/30 apart. Measured over every single-edge patch of frac_prevs and
# pair_balance: every change is either at most 3e-8 (rounding, softmax leaks) or at least 1/30.
NUMERICAL_TOLERANCE = 1e-4

# With every non-true edge patched, every logit (positions 1..n) must stay within this of the
# clean run's. Not float32 rounding alone (measured: at most 6e-7 where it is only that): tracr's
# attention is a softmax, not a hard max, and an Aggregate whose query matches a key still gives
# BOS a weight of ~1.4e-4 (sort_freq's a4.h0: BOS scores 8.8 below the match). Zero-ablating the
# key's read of the BOS direction moves that weight to the match, so the logits move by 1.45e-4
# without any output changing. 1e-3 stays far below any output change (argmax margins and
# numerical spacings are >= 1/30).
LOGIT_TOLERANCE = 1e-3

ABLATION_CHOICES = ("corrupted", "zero")

__all__ = [
    "ABLATION_CHOICES",
    "CARRY_TOLERANCE",
    "LOGIT_TOLERANCE",
    "NUMERICAL_TOLERANCE",
    "MAX_ENUMERATED",
    "CircuitCheck",
    "Derivation",
    "GroundTruthError",
    "can_carry",
    "check_circuit",
    "derive",
    "edge_effects",
    "main",
    "output_changed",
    "program_batches",
    "program_inputs",
    "true_circuit",
]


class GroundTruthError(AcdError):
    """A derived true circuit failed its intervention check."""


# --------------------------------------------------------------------------------------------
# What the weights allow


def _compiled(model: CompiledAdapter) -> CompiledAdapter:
    """``model``, refused (one line) unless it is a compiled program."""
    if not isinstance(model, CompiledAdapter):
        raise AcdError(f"true circuits are derived for compiled programs only, not {model.name!r}")
    return model


def writer_matrices(model: CompiledAdapter, graph: ComputeGraph) -> list[torch.Tensor]:
    """For each source, in index order, the matrix whose row space it writes into the residual
    (float64): input [d_vocab + n_ctx, d_model] (W_E and W_pos stacked), head a{l}.h{h}
    W_O[h] [d_head, d_model] (its output is z @ W_O[h]), MLP m{l} W_out [d_mlp, d_model]."""
    module = _compiled(model).module
    writers = []
    for node in graph.sources:
        if node.kind == "input":
            writers.append(torch.cat([module.embed.W_E, module.pos_embed.W_pos]))
        elif node.kind == "head":
            assert node.layer is not None and node.head is not None
            writers.append(module.block_weights(node.layer).attn.W_O[node.head])
        else:
            assert node.layer is not None
            writers.append(module.block_weights(node.layer).mlp.W_out)
    return [w.detach().cpu().double() for w in writers]


def reader_matrices(model: CompiledAdapter, graph: ComputeGraph) -> list[torch.Tensor]:
    """For each destination, in index order, the matrix through which it reads the residual
    (float64): q/k/v port of head h W_Q[h] / W_K[h] / W_V[h] [d_model, d_head], MLP m{l} W_in
    [d_model, d_mlp], logits W_U [d_model, d_vocab_out]."""
    module = _compiled(model).module
    readers = []
    for port in graph.destinations:
        if port.kind == "logits":
            readers.append(module.unembed.W_U)
        elif port.kind == "mlp":
            assert port.layer is not None
            readers.append(module.block_weights(port.layer).mlp.W_in)
        else:
            assert port.layer is not None and port.index is not None
            attn = module.block_weights(port.layer).attn
            weight = {"q": attn.W_Q, "k": attn.W_K, "v": attn.W_V}[port.kind]
            readers.append(weight[port.index])
    return [r.detach().cpu().double() for r in readers]


def products_nonzero(writers: list[torch.Tensor], readers: list[torch.Tensor]) -> torch.Tensor:
    """[n_src, n_dst] bool: whether writer u's rows reach reader v's columns, i.e.
    ``writers[u] @ readers[v]`` has an entry above CARRY_TOLERANCE relative to the scale."""
    out = torch.zeros(len(writers), len(readers), dtype=torch.bool)
    for u, writer in enumerate(writers):
        for v, reader in enumerate(readers):
            scale = float(writer.abs().max()) * float(reader.abs().max())
            if scale > 0:
                out[u, v] = float((writer @ reader).abs().max()) > CARRY_TOLERANCE * scale
    return out


def live_sources(graph: ComputeGraph, reaches: torch.Tensor) -> torch.Tensor:
    """[n_src] bool: the sources whose output can vary with the input.

    The input does; a head does when its value port reads a live source (the query and key
    only shape the pattern, which mixes values: constant values give a constant output); an MLP
    does when its input reads a live source. Sources come in index order, so every source a
    port can read is decided before it.

    Args: reaches [n_src, n_dst] bool, valid edges whose weight product is non-zero.
    """
    port_of = {}  # the port whose reads make each source vary: value port or MLP input
    for j, port in enumerate(graph.destinations):
        if port.kind in ("v", "mlp"):
            port_of[graph.node_index[port.node]] = j
    live = torch.zeros(graph.n_src, dtype=torch.bool)
    live[graph.src_input()] = True
    for u in range(1, graph.n_src):
        live[u] = bool((reaches[:, port_of[u]] & live).any())
    return live


def can_carry(model: CompiledAdapter, graph: ComputeGraph) -> torch.Tensor:
    """The valid edges along which information can flow, from the weights alone.

    u -> v can carry when the product of u's writing matrix and v's reading matrix is non-zero
    (``products_nonzero``) and u's output can vary at all (``live_sources``).

    Returns: [n_src, n_dst] bool (a subset of ``graph.valid``).
    """
    reaches = graph.valid & products_nonzero(
        writer_matrices(model, graph), reader_matrices(model, graph)
    )
    return reaches & live_sources(graph, reaches)[:, None]


# --------------------------------------------------------------------------------------------
# Prompts


# Programs whose program.json samples its input space are enumerated instead, up to this many
# sequences (frac_prevs: 1,364), so that the derivation is exhaustive there too.
MAX_ENUMERATED = 10_000


def program_inputs(model: CompiledAdapter) -> dict[int, list[list[int]]]:
    """The program's inputs as token ids (BOS first), by length (BOS included).

    The examples of program.json where they cover the whole input space (which respects what a
    program requires of its inputs, e.g. distinct tokens for ``sort``); otherwise every
    sequence of 1..max_seq_len symbols of its vocabulary when there are at most MAX_ENUMERATED,
    else the examples (a seeded sample).
    """
    directory = _compiled(model).weights_dir
    if directory is None:
        raise AcdError(f"{model.name}: no directory, so no program.json to take inputs from")
    program = json.loads((Path(directory) / "program.json").read_text(encoding="utf-8"))
    rows = [[int(i) for i in example["input_ids"]] for example in program.get("examples", [])]
    vocab = [str(symbol) for symbol in program.get("vocab", [])]
    max_len = int(program.get("max_seq_len", 0))
    space = sum(len(vocab) ** n for n in range(1, max_len + 1))
    if program.get("examples_cover") != "whole input space" and 0 < space <= MAX_ENUMERATED:
        tokenizer = model.tokenizer
        ids = [tokenizer.convert_tokens_to_ids(symbol) for symbol in vocab]
        bos = tokenizer.bos_token_id
        rows = [
            [bos, *body] for n in range(1, max_len + 1) for body in itertools.product(ids, repeat=n)
        ]
    by_length: dict[int, list[list[int]]] = {}
    for row in rows:
        by_length.setdefault(len(row), []).append(row)
    return by_length


def program_batches(
    model: CompiledAdapter, max_per_length: int | None = None, seed: int = 0
) -> list[PromptBatch]:
    """Clean/corrupted prompt pairs over the program's inputs (``program_inputs``), one batch
    per input length, unpadded (non-causal attention would read padding).

    Each clean input's corrupted input is another input of the same length: a seeded random
    order, each input paired with the next one in it (cyclically), so no input is its own
    corruption. ``max_per_length`` keeps that many inputs of each length (the first ones of the
    order; all by default). A length with a single input has no pair and is left out. Every
    batch scores positions 1..n (BOS excluded).
    """
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _, rows in sorted(program_inputs(model).items()):
        order = torch.randperm(len(rows), generator=generator).tolist()[:max_per_length]
        if len(order) < 2:
            continue
        clean = torch.tensor([rows[i] for i in order])
        corrupted = torch.roll(clean, shifts=-1, dims=0)  # row i: the next input of the order
        batches.append(_batch(clean, corrupted))
    if not batches:
        raise AcdError(f"{model.name}: no two inputs of one length to pair")
    return batches


def _batch(clean: torch.Tensor, corrupted: torch.Tensor) -> PromptBatch:
    """A PromptBatch of [N, T] clean and corrupted ids (T >= 2: BOS and at least one token)
    scoring positions 1..T-1."""
    n, width = clean.shape
    score_mask = torch.zeros(n, width, dtype=torch.bool)
    score_mask[:, 1:] = True
    return PromptBatch.from_token_ids(
        clean,
        corrupted,
        correct=torch.zeros(n, 1, dtype=torch.long),
        metric="kl",
        score_mask=score_mask,
    )


def _as_batches(batch: PromptBatch | Sequence[PromptBatch]) -> list[PromptBatch]:
    return [batch] if isinstance(batch, PromptBatch) else list(batch)


# --------------------------------------------------------------------------------------------
# Reading the output


def _scored(batch: PromptBatch) -> torch.Tensor:
    """[N, T] bool: the positions whose output counts (scored, never BOS at position 0)."""
    scored = batch.score_mask.clone()
    scored[:, 0] = False
    return scored


def output_changed(
    clean: torch.Tensor, patched: torch.Tensor, scored: torch.Tensor, kind: str
) -> torch.Tensor:
    """[N] bool: whether the output of each prompt differs between two runs.

    Args:
        clean, patched: logits [N, T, d_vocab_out].
        scored: [N, T] bool, the positions read (1..n).
        kind: ``categorical`` (argmax over the output vocabulary) or ``numerical``
            (``logits[..., 0]``, changed beyond NUMERICAL_TOLERANCE).
    """
    if kind == "numerical":
        moved = (patched[..., 0] - clean[..., 0]).abs() > NUMERICAL_TOLERANCE
    else:
        moved = patched.argmax(dim=-1) != clean.argmax(dim=-1)
    return (moved & scored.to(moved.device)).any(dim=1)


def _clean_logits(model: CompiledAdapter, graph: ComputeGraph, batch: PromptBatch) -> torch.Tensor:
    """The unpatched logits [N, T, d_vocab_out] (through the same hooked path as patched
    runs, an all-False mask)."""
    empty = torch.zeros(graph.n_src, graph.n_dst, dtype=torch.bool)
    zeros = torch.zeros(1, batch.clean.shape[1], graph.n_src, model.spec.d_model)
    return run_patched(model, graph, batch.clean, empty, zeros.expand(len(batch), -1, -1, -1))


# --------------------------------------------------------------------------------------------
# Patching edges


def edge_effects(
    model: CompiledAdapter,
    graph: ComputeGraph,
    batch: PromptBatch | Sequence[PromptBatch],
    ablation: str,
    edges: torch.Tensor,
) -> torch.Tensor:
    """For each edge of ``edges``, on how many prompts patching it alone changes the output.

    Args: edges [n_src, n_dst] bool. Returns [n_src, n_dst] long (0 off ``edges``).
    """
    kind = _compiled(model).config.output_kind
    counts = torch.zeros(graph.n_src, graph.n_dst, dtype=torch.long)
    pairs = edges.nonzero().tolist()
    for part in _as_batches(batch):
        clean = _clean_logits(model, graph, part)
        values = patch_values(model, graph, part, ablation)
        scored = _scored(part)
        for u, v in pairs:
            mask = torch.zeros(graph.n_src, graph.n_dst, dtype=torch.bool)
            mask[u, v] = True
            patched = run_patched(model, graph, part.clean, mask, values)
            counts[u, v] += int(output_changed(clean, patched, scored, kind).sum())
    return counts


def patch_all(
    model: CompiledAdapter,
    graph: ComputeGraph,
    batch: PromptBatch,
    ablation: str,
    mask: torch.Tensor,
) -> tuple[float, torch.Tensor]:
    """Patch every edge of ``mask`` [n_src, n_dst] at once: (the largest |logit change| at
    positions 1..n over all prompts and output logits, [N] bool whose output changed)."""
    clean = _clean_logits(model, graph, batch)
    values = patch_values(model, graph, batch, ablation)
    patched = run_patched(model, graph, batch.clean, mask, values)
    scored = _scored(batch).to(clean.device)
    change = (patched - clean).abs().amax(dim=-1)[scored]  # [scored positions]
    largest = float(change.max()) if change.numel() else 0.0
    return largest, output_changed(clean, patched, scored, model.config.output_kind)


@dataclass(frozen=True)
class CircuitCheck:
    """The intervention check of a circuit (``check_circuit``).

    Attributes:
        mask: [n_src, n_dst] bool, the circuit checked.
        rest_change: max |logit change| (positions 1..n) with every valid edge off the circuit
            patched at once; passes at most LOGIT_TOLERANCE.
        rest_output_changes: prompts whose output changed in that run.
        edge_counts: [n_src, n_dst] long, prompts on which patching each circuit edge alone
            changes the output (0 off the circuit); every circuit edge needs at least one.
        n_prompts: prompts checked.
    """

    mask: torch.Tensor
    rest_change: float
    rest_output_changes: int
    edge_counts: torch.Tensor
    n_prompts: int

    @property
    def silent_edges(self) -> list[tuple[int, int]]:
        """(source, destination) of the circuit edges whose patching alone never changed the
        output."""
        return [tuple(pair) for pair in (self.mask & (self.edge_counts == 0)).nonzero().tolist()]

    @property
    def passed(self) -> bool:
        rest_silent = self.rest_change <= LOGIT_TOLERANCE and self.rest_output_changes == 0
        return rest_silent and not self.silent_edges


def check_circuit(
    model: CompiledAdapter,
    graph: ComputeGraph,
    batch: PromptBatch | Sequence[PromptBatch],
    ablation: str,
    mask: torch.Tensor,
) -> CircuitCheck:
    """Patch every valid edge off ``mask`` at once (the logits must not move), and each edge of
    ``mask`` alone (the output must move on some prompt). Returns what was measured; see
    ``CircuitCheck.passed``. Args: mask [n_src, n_dst] bool."""
    circuit = mask.bool().cpu() & graph.valid
    rest = graph.valid & ~circuit
    largest, changes = 0.0, 0
    for part in _as_batches(batch):
        change, changed = patch_all(_compiled(model), graph, part, ablation, rest)
        largest, changes = max(largest, change), changes + int(changed.sum())
    return CircuitCheck(
        mask=circuit,
        rest_change=largest,
        rest_output_changes=changes,
        edge_counts=edge_effects(model, graph, batch, ablation, circuit),
        n_prompts=sum(len(part) for part in _as_batches(batch)),
    )


# --------------------------------------------------------------------------------------------
# The true circuit


@dataclass(frozen=True)
class Derivation:
    """Everything ``derive`` found: the masks ([n_src, n_dst] bool) and the check."""

    can_carry: torch.Tensor
    candidates: torch.Tensor  # can_carry, pruned to input -> logits paths
    mask: torch.Tensor  # the true circuit
    check: CircuitCheck


def derive(
    model: CompiledAdapter,
    graph: ComputeGraph,
    batch: PromptBatch | Sequence[PromptBatch],
    ablation: str,
) -> Derivation:
    """The true circuit and its check (``true_circuit``, with what was measured on the way).
    Raises GroundTruthError when the check fails."""
    carry = can_carry(model, graph)
    candidates = prune_dangling(carry, graph)
    moved = edge_effects(model, graph, batch, ablation, candidates) > 0
    # Pruned again: an edge that matters alone but feeds only edges that never do would leave
    # a path the check must see broken (it fails, rather than the circuit dangling silently).
    mask = prune_dangling(moved, graph)
    check = check_circuit(model, graph, batch, ablation, mask)
    if not check.passed:
        raise GroundTruthError(
            f"{model.name} ({ablation}): the true circuit's check failed: with the "
            f"{int((graph.valid & ~mask).sum())} other edges patched the logits moved by "
            f"{check.rest_change:.3g} (tolerance {LOGIT_TOLERANCE:g}, {check.rest_output_changes} "
            f"outputs changed); {len(check.silent_edges)} circuit edges never move the output "
            "alone"
        )
    return Derivation(can_carry=carry, candidates=candidates, mask=mask, check=check)


def true_circuit(
    model: CompiledAdapter,
    graph: ComputeGraph,
    batch: PromptBatch | Sequence[PromptBatch],
    ablation: str,
) -> torch.Tensor:
    """The edges of ``can_carry`` on an input -> logits path whose patching, alone, changes the
    output (``output_changed``) on at least one prompt of ``batch`` under ``ablation``
    (``corrupted`` or ``zero``), checked by ``check_circuit``: GroundTruthError if patching
    every other valid edge at once moves a logit beyond LOGIT_TOLERANCE.

    Args: batch: one PromptBatch or several (``program_batches``: one per input length).
    Returns: [n_src, n_dst] bool.
    """
    return derive(model, graph, batch, ablation).mask


# --------------------------------------------------------------------------------------------
# The command: python -m acd.ground_truth

DEFAULT_OUT = Path("graphs/ground_truth")


def ground_truth_circuit(
    model: CompiledAdapter,
    graph: ComputeGraph,
    derivation: Derivation,
    ablation: str,
    max_per_length: int | None,
) -> Circuit:
    """The derived true circuit as an acd Circuit (scores: 1 on its edges, 0 elsewhere)."""
    name = model.config.name
    check = derivation.check
    return Circuit(
        graph=graph,
        mask=derivation.mask,
        scores=derivation.mask.float(),
        task=f"compiled/{name}",
        model=f"compiled/{name}",
        method="ground-truth",
        params={
            "ablation": ablation,
            "prompts": check.n_prompts,
            "max_per_length": max_per_length,
            "output_kind": model.config.output_kind,
            "carry_tolerance": CARRY_TOLERANCE,
            "numerical_tolerance": NUMERICAL_TOLERANCE,
            "logit_tolerance": LOGIT_TOLERANCE,
        },
        seed=0,
        metrics={
            "ablation": ablation,
            "n_edges": int(derivation.mask.sum()),
            "n_prompts": check.n_prompts,
            "n_can_carry": int(derivation.can_carry.sum()),
            "n_candidates": int(derivation.candidates.sum()),
            "rest_logit_change": check.rest_change,
            "rest_output_changes": check.rest_output_changes,
            "check": "passed" if check.passed else "failed",
        },
        model_sha256=model.weights_hash(),
    )


def _write(circuit: Circuit, path: Path) -> None:
    """Write ``circuit`` to ``path`` and read it back: the same edges, or AcdError."""
    from acd.export import load_circuit, save_circuit_json

    path.parent.mkdir(parents=True, exist_ok=True)
    save_circuit_json(circuit, path)
    if not torch.equal(load_circuit(path).mask, circuit.mask):
        raise AcdError(f"{path} does not read back to the circuit written")


def _row(cells: Sequence[object]) -> str:
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def main(argv: Sequence[str] | None = None) -> int:
    """Derive, check and write the true circuit of each shipped compiled program under each
    ablation; print a table. Returns 0, or 1 when a check failed."""
    from acd.models import load_model
    from acd.models.compiled import compiled_model_names

    parser = argparse.ArgumentParser(
        prog="python -m acd.ground_truth",
        description="True circuits of the shipped compiled programs, checked by patching.",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="default: %(default)s")
    parser.add_argument("--only", action="append", metavar="NAME", help="one program (repeatable)")
    parser.add_argument(
        "--ablation",
        action="append",
        choices=ABLATION_CHOICES,
        help="one ablation (repeatable; default: both)",
    )
    parser.add_argument(
        "--max-per-length",
        type=int,
        default=None,
        help="inputs of each length (default: every example in program.json)",
    )
    args = parser.parse_args(argv)
    names = [n.removeprefix("compiled/") for n in compiled_model_names()]
    unknown = sorted(set(args.only or []) - set(names))
    if unknown:
        parser.error(f"no shipped program {', '.join(unknown)}; choose from {', '.join(names)}")
    ablations = args.ablation or list(ABLATION_CHOICES)
    header = ["program", "valid edges", "can carry", *(f"true ({a})" for a in ablations)]
    header += ["max rest Δlogit", "check"]
    print(_row(header))
    print(_row(["---"] * len(header)))
    failed = False
    for name in args.only or names:
        model = load_model(f"compiled/{name}", device="cpu")
        assert isinstance(model, CompiledAdapter)  # compiled/<name> always loads one
        graph = ComputeGraph.from_model(model)
        batches = program_batches(model, args.max_per_length)
        counts, largest, problems = [], 0.0, []
        carry = int(can_carry(model, graph).sum())
        for ablation in ablations:
            try:
                derivation = derive(model, graph, batches, ablation)
            except GroundTruthError as err:
                counts.append("—")
                problems.append(str(err))
                continue
            counts.append(int(derivation.mask.sum()))
            largest = max(largest, derivation.check.rest_change)
            circuit = ground_truth_circuit(model, graph, derivation, ablation, args.max_per_length)
            _write(circuit, args.out / name / ablation / "circuit.json")
        failed = failed or bool(problems)
        check = "passed" if not problems else "FAILED"
        print(_row([name, graph.n_edges, carry, *counts, f"{largest:.2g}", check]), flush=True)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
