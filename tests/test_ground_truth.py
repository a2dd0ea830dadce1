"""True circuits of compiled programs (acd.ground_truth): derived from the weights, checked by
patching.

- ``reverse``'s derived circuit equals edge sets listed by hand from its RASP program;
- every shipped program's derived circuit passes the intervention check (corrupted ablation);
- ``can_carry`` on a random compiled directory with chosen weight blocks zeroed is exactly what
  the construction allows;
- the command writes circuit files that read back, and the committed ones match the derivation.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest
import torch
from safetensors.numpy import load_file, save_file
from test_compiled import write_compiled_dir

from acd.export import load_circuit
from acd.graph import ComputeGraph
from acd.ground_truth import (
    LOGIT_TOLERANCE,
    Derivation,
    can_carry,
    check_circuit,
    derive,
    main,
    program_batches,
    true_circuit,
)
from acd.models import load_model
from acd.models.compiled import CompiledAdapter, compiled_model_names

SHIPPED = [name.removeprefix("compiled/") for name in compiled_model_names()]
COMMITTED = Path(__file__).resolve().parent.parent / "graphs" / "ground_truth"

pytestmark = pytest.mark.skipif(not SHIPPED, reason="no compiled programs shipped")


@cache
def loaded(name: str) -> tuple[CompiledAdapter, ComputeGraph]:
    model = load_model(f"compiled/{name}", device="cpu")
    assert isinstance(model, CompiledAdapter)
    return model, ComputeGraph.from_model(model)


@cache
def derived(name: str, ablation: str) -> Derivation:
    """The derivation on every example of the program (at most 363 inputs: all are cheap)."""
    model, graph = loaded(name)
    return derive(model, graph, program_batches(model), ablation)


# --------------------------------------------------------------------------------------------
# reverse, by hand

# Written from the RASP program and tracr's layer allocation (config.json's ground_truth), not
# from acd.ground_truth; see test_reverse_matches_the_program for the reasoning.
REVERSE_ZERO = {
    ("input", "a0.h0<v>"),  # SelectorWidth's value: the BOS flag
    ("input", "m0"),  # SelectorWidth's MLP: the "one" direction (its bias)
    ("a0.h0", "m0"),  # ... and the head's 1 / (n + 1)
    ("m0", "m1"),  # opp_idx = length - indices: length
    ("input", "m1"),  # ... indices, and "one" (a SequenceMap's bias)
    ("m1", "m2"),  # opp_idx - 1 = Map of opp_idx
    ("m2", "a3.h0<q>"),  # the flip selector's query: opp_idx - 1
    ("input", "a3.h0<k>"),  # ... its key: indices
    ("input", "a3.h0<v>"),  # Aggregate's value: tokens
    ("a3.h0", "logits"),  # reverse
}
REVERSE_CORRUPTED = {
    ("input", "a3.h0<v>"),
    ("a3.h0", "logits"),
}


def test_reverse_matches_the_program():
    """``reverse`` is

        length = SelectorWidth(Select(tokens, tokens, TRUE))
        opp_idx = length - indices;  opp_idx-1 = opp_idx - 1
        reverse = Aggregate(Select(indices, opp_idx-1, EQ), tokens)

    tracr allocates (config.json's ground_truth): a0.h0 and m0 compute length (SelectorWidth:
    an attention layer whose value reads the BOS flag and writes 1 / (n + 1), then an MLP that
    reads it with the "one" direction as bias and writes length one-hot), m1 opp_idx (a
    SequenceMap of length and indices, bias from "one"), m2 opp_idx-1 (a Map of opp_idx: a
    table lookup, no bias), a3.h0 reverse (query opp_idx-1, key indices, value tokens, written
    where W_U reads). Layers 1 and 2 have no attention and layer 3 no MLP. The embeddings hold
    tokens, the BOS flag and "one" (W_E) and indices (W_pos).

    Zero ablation: every one of those reads matters (REVERSE_ZERO), except three that tracr
    wires but that never change an output. (1, 2) length's selector is all-true, so with its
    query or its key zeroed every score is equal: the same uniform pattern over BOS and the n
    tokens that SelectorWidth relies on (input -> a0.h0<q> and <k>). (3) The flip's query
    reads "one" only to fall back to BOS when no key matches, and opp_idx-1 always matches
    exactly one index (input -> a3.h0<q>).

    Corrupted ablation (another input of the same length): length, indices, opp_idx and
    opp_idx-1 depend on the length only, so they are the same in both runs; only the tokens
    that the Aggregate moves differ (REVERSE_CORRUPTED).
    """
    model, graph = loaded("reverse")
    batches = program_batches(model)
    for ablation, expected in (("zero", REVERSE_ZERO), ("corrupted", REVERSE_CORRUPTED)):
        assert set(graph.edge_names(true_circuit(model, graph, batches, ablation))) == expected
    # The three wired-but-silent reads can carry information by the weights.
    silent = {("input", "a0.h0<q>"), ("input", "a0.h0<k>"), ("input", "a3.h0<q>")}
    assert set(graph.edge_names(can_carry(model, graph))) == REVERSE_ZERO | silent


def test_hand_listed_reverse_passes_the_check():
    """The hand-listed sets pass the intervention check on their own (not only as the
    derivation's output), and dropping an edge of one breaks it."""
    model, graph = loaded("reverse")
    batches = program_batches(model)
    mask = graph.mask_from_edges(sorted(REVERSE_ZERO))
    assert check_circuit(model, graph, batches, "zero", mask).passed
    mask[graph.edge_index("m1", "m2")] = False
    check = check_circuit(model, graph, batches, "zero", mask)
    assert check.rest_output_changes > 0 and not check.passed


# --------------------------------------------------------------------------------------------
# Every shipped program


@pytest.mark.parametrize("name", SHIPPED)
def test_true_circuit_passes_the_intervention_check(name):
    """Corrupted ablation, every example of the program: the derivation's own check passed
    (derive raises otherwise); here its measurements are asserted again."""
    model, graph = loaded(name)
    derivation = derived(name, "corrupted")
    check = derivation.check
    assert check.passed
    assert check.rest_change <= LOGIT_TOLERANCE and check.rest_output_changes == 0
    assert bool((check.edge_counts[derivation.mask] > 0).all())
    # The circuit lies within what the weights allow, and on input -> logits paths.
    assert not bool((derivation.mask & ~derivation.can_carry).any())
    assert not bool((derivation.can_carry & ~graph.valid).any())
    assert check.n_prompts == sum(len(b) for b in program_batches(model))


def test_length_has_no_corrupted_circuit():
    """Same-length corruption cannot change a length: nothing matters, so the true circuit is
    empty, and patching every edge (the corrupted run) leaves the logits as they were."""
    assert int(derived("length", "corrupted").mask.sum()) == 0


# --------------------------------------------------------------------------------------------
# can_carry by construction


def test_can_carry_on_a_constructed_model(tmp_path):
    """A random compiled directory (2 blocks, 2 heads, d_model 12): every product is non-zero
    except where weight blocks are zeroed here:

    - a0.h1's W_O: the head writes nothing, so no edge leaves it;
    - a1.h0's W_V: its value reads nothing, so its output is constant (b_V @ W_O): no edge
      leaves it, and the edges into its value port carry nothing;
    - m0 writes residual dims 0..5 only and a1.h1's W_Q reads dims 6..11 only: m0 -> a1.h1<q>
      carries nothing, while m0's other edges and a1.h1's other query edges still do.
    """
    directory = write_compiled_dir(tmp_path / "random")
    weights = load_file(str(directory / "model.safetensors"))
    weights["blocks.0.attn.W_O"][1] = 0
    weights["blocks.1.attn.W_V"][0] = 0
    weights["blocks.0.mlp.W_out"][:, 6:] = 0
    weights["blocks.1.attn.W_Q"][1, :6] = 0
    save_file(weights, str(directory / "model.safetensors"))
    model = load_model(directory, device="cpu")
    assert isinstance(model, CompiledAdapter)
    graph = ComputeGraph.from_model(model)

    expected = graph.valid.clone()
    expected[graph.src_index["a0.h1"]] = False
    expected[graph.src_index["a1.h0"]] = False
    expected[:, graph.dst_index["a1.h0<v>"]] = False
    expected[graph.edge_index("m0", "a1.h1<q>")] = False
    carry = can_carry(model, graph)
    assert set(graph.edge_names(carry)) == set(graph.edge_names(expected))
    assert graph.edge_names(graph.valid & ~carry)  # the construction removed something


# --------------------------------------------------------------------------------------------
# The command and the committed files


def test_command_writes_circuits_that_read_back(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--only", "increment_mod"]) == 0
    table = capsys.readouterr().out
    assert "| increment_mod |" in table and "passed" in table
    for ablation in ("corrupted", "zero"):
        circuit = load_circuit(tmp_path / "increment_mod" / ablation / "circuit.json")
        assert circuit.method == "ground-truth" and circuit.model == "compiled/increment_mod"
        assert circuit.params["ablation"] == ablation
        assert set(circuit.edges) == {("input", "m0"), ("m0", "logits")}


@pytest.mark.parametrize("name", SHIPPED)
def test_committed_circuit_matches_the_derivation(name):
    """graphs/ground_truth/<name>/corrupted/circuit.json is what the derivation gives now
    (regenerate with ``python -m acd.ground_truth``)."""
    path = COMMITTED / name / "corrupted" / "circuit.json"
    assert path.is_file(), f"{path} missing: run python -m acd.ground_truth"
    circuit = load_circuit(path)
    assert torch.equal(circuit.mask, derived(name, "corrupted").mask)
    assert (COMMITTED / name / "zero" / "circuit.json").is_file()


# --------------------------------------------------------------------------------------------
# The methods recover the true circuit


@pytest.mark.parametrize("ablation", ["corrupted", "zero"])
def test_exact_and_acdc_recover_reverses_true_circuit_on_its_task(ablation):
    """On reverse's own task (inputs of 5 symbols), exact scores rank every true edge above
    every other edge (ROC AUC 1), and ACDC keeps exactly the true circuit; the truth is the
    derivation over every input of that length, the methods see 60 random prompts."""
    import acd
    from acd.comparison import compare
    from acd.ground_truth import derive, program_batches

    model = load_model("compiled/reverse")
    graph = ComputeGraph.from_model(model)
    task = acd.load_task("compiled/reverse")
    batches = [b for b in program_batches(model) if b.clean.shape[1] == task.length + 1]
    truth = derive(model, graph, batches, ablation).mask
    assert 0 < int(truth.sum()) < graph.n_edges
    run = acd.RunConfig(ablation=ablation, progress=False)
    exact = acd.discover(
        task, model, method="exact", select=acd.TopN(int(truth.sum())), prompts=60, run=run
    )
    assert compare(graph, exact.scores.double(), truth).edge_roc_auc == 1.0
    assert torch.equal(exact.mask, truth)
    searched = acd.discover(task, model, method=acd.ACDC(1e-3), prompts=60, run=run)
    assert torch.equal(searched.mask, truth)
    assert searched.metrics["faithfulness"] == pytest.approx(1.0, abs=1e-5)
