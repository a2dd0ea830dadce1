"""Circuit evaluation: faithfulness and its spread, against numbers computed by hand from plain
forwards and hand-written hooks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from random_batches import random_batch

from acd.evaluate import (
    DEGENERATE_GAP_FRACTION,
    evaluate_circuit,
    evaluate_circuits,
    faithfulness_per_prompt,
)
from acd.graph import ComputeGraph
from acd.metrics import get_metric, kl_divergence
from acd.models import load_model
from acd.patching import patch_values, run_patched
from acd.tasks import load_task

TOL = 1e-5


@pytest.fixture(scope="module")
def setup(tiny_gpt2_dir):
    model = load_model(tiny_gpt2_dir, device="cpu")
    return model, ComputeGraph.from_model(model), random_batch(5, 7, seed=0)


def plain_logits(model, tokens):
    with torch.no_grad():
        return model.bridge(tokens)


def task_metric(logits, batch):
    return get_metric(batch.metric)(logits, batch).double()


# --------------------------------------------------------------------------------------------
# Full and empty circuits


@pytest.mark.parametrize("ablation", ["corrupted", "zero", "mean"])
def test_full_and_empty_circuits_are_exactly_one_and_zero(setup, ablation):
    model, graph, batch = setup
    empty = torch.zeros(graph.n_src, graph.n_dst, dtype=torch.bool)
    everything = torch.ones(graph.n_src, graph.n_dst, dtype=torch.bool)  # invalid entries too
    full_ev, empty_ev = evaluate_circuits(
        model, graph, batch, torch.stack([everything, empty]), ablation=ablation
    )
    assert full_ev.n_edges == graph.n_edges and empty_ev.n_edges == 0
    assert full_ev.faithfulness == 1.0 and empty_ev.faithfulness == 0.0
    for ev, value in ((full_ev, 1.0), (empty_ev, 0.0)):
        per_prompt = ev.faithfulness_per_prompt
        assert bool(((per_prompt == value) | per_prompt.isnan()).all())
        assert ev.faithfulness_median == value
    assert not full_ev.kl_to_full.any()
    # The full model's metric is the plain model's.
    clean = task_metric(plain_logits(model, batch.clean), batch)
    assert (full_ev.full - clean).abs().max() <= TOL
    assert torch.equal(full_ev.circuit, full_ev.full)


@pytest.mark.parametrize("ablation", ["corrupted", "zero", "mean"])
def test_full_and_empty_circuits_are_their_patched_runs(setup, ablation):
    """evaluate_circuits takes a circuit of every edge from the plain clean run and one of no
    edge from its empty reference (with corrupted ablation: the corrupted run) instead of
    patching; the patched runs they stand for, made here, give the same figures."""
    model, graph, batch = setup
    patch = patch_values(model, graph, batch, ablation)  # mean: over the batch, as evaluate's
    nothing = torch.zeros(graph.n_src, graph.n_dst, dtype=torch.bool)
    full_logits = run_patched(model, graph, batch.clean, nothing, patch)
    empty_logits = run_patched(model, graph, batch.clean, graph.valid, patch)
    full_ev, empty_ev = evaluate_circuits(
        model, graph, batch, torch.stack([graph.valid, nothing]), ablation=ablation
    )
    full, empty = task_metric(full_logits, batch), task_metric(empty_logits, batch)
    for got in (full_ev.circuit, full_ev.full, empty_ev.full):
        assert (got - full).abs().max() <= TOL
    for got in (empty_ev.circuit, full_ev.empty, empty_ev.empty):
        assert (got - empty).abs().max() <= TOL
    clean_logits = plain_logits(model, batch.clean)
    for ev, logits in ((full_ev, full_logits), (empty_ev, empty_logits)):
        expected_kl = kl_divergence(logits, clean_logits, batch).double()
        assert (ev.kl_to_full - expected_kl).abs().max() <= TOL


def test_corrupted_empty_circuit_is_the_corrupted_run(setup):
    model, graph, batch = setup
    empty = torch.zeros(graph.n_src, graph.n_dst, dtype=torch.bool)
    ev = evaluate_circuit(model, graph, batch, empty)
    corrupted_logits = plain_logits(model, batch.corrupted)
    assert (ev.empty - task_metric(corrupted_logits, batch)).abs().max() <= TOL
    expected_kl = kl_divergence(corrupted_logits, plain_logits(model, batch.clean), batch)
    assert (ev.kl_to_full - expected_kl.double()).abs().max() <= TOL


TASKS = ("ioi", "greater-than", "induction")


@pytest.fixture(scope="module")
def toy():
    model = load_model("toy", device="cpu")
    return model, ComputeGraph.from_model(model)


@pytest.mark.parametrize("task", TASKS)
def test_toy_full_circuit_keeps_the_model(toy, task):
    model, graph = toy
    batch = load_task(task).make_batch(model.tokenizer, 3, seed=2)
    clean = task_metric(plain_logits(model, batch.clean), batch)
    corrupted = task_metric(plain_logits(model, batch.corrupted), batch)
    for ablation in ("corrupted", "zero", "mean"):
        ev = evaluate_circuit(model, graph, batch, graph.valid, ablation=ablation)
        assert (ev.circuit - clean).abs().max() <= TOL
        assert ev.kl_to_full.abs().max() <= TOL
        if ablation == "corrupted":
            assert (ev.empty - corrupted).abs().max() <= TOL


# --------------------------------------------------------------------------------------------
# Hand-built circuits


def head_hook_values(model, tokens, layer):
    with torch.no_grad():
        _, cache = model.bridge.run_with_cache(
            tokens, names_filter=[model.hook_head_result(layer), model.hook_embed_out()]
        )
    return cache[model.hook_head_result(layer)], cache[model.hook_embed_out()]


def test_circuit_missing_two_edges_by_hand(setup):
    """Patch input -> a0.h1<q> and a1.h2 -> logits; everything else kept.

    By hand: head 1 of layer 0 reads the corrupted embedding in its query; the logits read
    the final residual plus (z^corrupt - z^current) of a1.h2, where z^current is a1.h2's
    output in this same run (changed by the first patch), recorded by a hook.
    """
    model, graph, batch = setup
    head_corrupt, embed_corrupt = head_hook_values(model, batch.corrupted, 1)
    _, embed_clean = head_hook_values(model, batch.clean, 1)
    current = {}

    def patch_query(x, hook):
        x = x.clone()
        x[:, :, 1] += embed_corrupt - embed_clean
        return x

    def record_head(x, hook):
        current["z"] = x[:, :, 2].clone()

    def patch_logits(x, hook):
        return x + head_corrupt[:, :, 2] - current["z"]

    with torch.no_grad():
        logits = model.bridge.run_with_hooks(
            batch.clean,
            fwd_hooks=[
                (model.hook_q_input(0), patch_query),
                (model.hook_head_result(1), record_head),
                (model.hook_final_resid(), patch_logits),
            ],
        )
    expected_circuit = task_metric(logits, batch)
    full = task_metric(plain_logits(model, batch.clean), batch)
    empty = task_metric(plain_logits(model, batch.corrupted), batch)

    circuit = graph.valid.clone()
    circuit[graph.edge_index("input", "a0.h1<q>")] = False
    circuit[graph.edge_index("a1.h2", "logits")] = False
    ev = evaluate_circuit(model, graph, batch, circuit)

    assert ev.n_edges == graph.n_edges - 2
    assert (ev.circuit - expected_circuit).abs().max() <= TOL
    expected_f = (expected_circuit.mean() - empty.mean()) / (full.mean() - empty.mean())
    assert abs(ev.faithfulness - float(expected_f)) <= 1e-4
    per_prompt = ((expected_circuit - empty) / (full - empty)).numpy()
    assert np.allclose(ev.faithfulness_per_prompt.numpy(), per_prompt, atol=1e-4)
    assert ev.n_degenerate == 0
    assert math.isclose(ev.faithfulness_mean, per_prompt.mean(), abs_tol=1e-4)
    assert math.isclose(ev.faithfulness_std, per_prompt.std(), abs_tol=1e-4)
    assert math.isclose(ev.faithfulness_median, np.median(per_prompt), abs_tol=1e-4)
    assert math.isclose(ev.faithfulness_p05, np.percentile(per_prompt, 5), abs_tol=1e-4)
    assert math.isclose(ev.faithfulness_p95, np.percentile(per_prompt, 95), abs_tol=1e-4)
    expected_kl = kl_divergence(logits, plain_logits(model, batch.clean), batch).double()
    assert (ev.kl_to_full - expected_kl).abs().max() <= TOL
    summary = ev.summary()
    assert summary["faithfulness"] == ev.faithfulness and summary["n_prompts"] == len(batch)


def test_kl_metric_measures_against_the_full_model(setup):
    model, graph, batch = setup
    circuit = graph.valid & (torch.rand(graph.n_src, graph.n_dst, generator=_gen(1)) < 0.5)
    ev = evaluate_circuit(model, graph, batch, circuit, metric="kl")
    assert ev.metric == "kl" and not ev.full.any()
    assert torch.allclose(ev.circuit, ev.kl_to_full)
    expected = 1 - ev.circuit.mean() / ev.empty.mean()
    assert math.isclose(ev.faithfulness, float(expected), rel_tol=1e-9)


def test_batch_size_does_not_change_the_result(setup):
    model, graph, batch = setup
    circuit = graph.valid & (torch.rand(graph.n_src, graph.n_dst, generator=_gen(2)) < 0.5)
    for ablation in ("corrupted", "mean"):
        whole = evaluate_circuit(model, graph, batch, circuit, ablation=ablation)
        chunked = evaluate_circuit(model, graph, batch, circuit, ablation=ablation, batch_size=2)
        for name in ("circuit", "full", "empty", "kl_to_full"):
            assert (getattr(whole, name) - getattr(chunked, name)).abs().max() <= TOL, name


# --------------------------------------------------------------------------------------------
# Per-prompt faithfulness


def test_degenerate_prompts_get_no_per_prompt_faithfulness():
    full = torch.tensor([1.0, 2.0, 1.001, 3.0], dtype=torch.float64)
    empty = torch.tensor([0.0, 0.0, 1.0, 0.0], dtype=torch.float64)
    circuit = torch.tensor([0.5, 1.0, 5.0, 3.0], dtype=torch.float64)
    per_prompt = faithfulness_per_prompt(circuit, full, empty)
    # Prompt 2's gap (0.001) is under DEGENERATE_GAP_FRACTION of the mean gap (~1.5).
    assert DEGENERATE_GAP_FRACTION * 1.5 > 0.001
    assert per_prompt[2].isnan()
    assert torch.allclose(per_prompt[[0, 1, 3]], torch.tensor([0.5, 0.5, 1.0], dtype=torch.float64))
    assert faithfulness_per_prompt(circuit, empty, empty).isnan().all()


def test_bad_arguments_are_refused(setup):
    model, graph, batch = setup
    with pytest.raises(ValueError, match="unknown ablation"):
        evaluate_circuit(model, graph, batch, graph.valid, ablation="resample")
    with pytest.raises(ValueError, match="circuit masks have shape"):
        evaluate_circuit(model, graph, batch, graph.valid[:-1])


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)
