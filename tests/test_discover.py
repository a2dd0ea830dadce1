"""The public API end to end: acd.discover on the embedded model."""

from __future__ import annotations

import pytest
import torch

import acd
from acd.discover import RunConfig
from acd.methods import Greedy, Threshold, TopN
from acd.search import prune_dangling

QUIET = RunConfig(progress=False)


@pytest.fixture(scope="module")
def toy():
    return acd.load_model("toy", device="cpu")


@pytest.fixture(scope="module")
def ioi_circuit(toy):
    return acd.discover(
        "ioi", toy, method="eap", select=TopN(40), prompts=16, seed=0, prune=False, run=QUIET
    )


def test_discover_fills_the_documented_fields(ioi_circuit, toy):
    c = ioi_circuit
    graph = acd.ComputeGraph.from_model(toy)
    assert (c.task, c.model, c.method, c.seed) == ("ioi", "toy", "eap", 0)
    assert len(c.edges) == c.n_edges == 40
    assert len(c.edge_scores) == graph.n_edges == 479  # 4 layers x 4 heads with MLPs
    assert all(edge in c.edge_scores for edge in c.edges)
    assert 0.0 < c.metrics["faithfulness"] <= 1.5
    for key in ["faithfulness_std", "faithfulness_p05", "faithfulness_p95", "metric_full"]:
        assert key in c.metrics
    assert c.params["edges"] == 40 and c.params["prompts"] == 16


def test_kept_edges_are_the_top_scores_by_magnitude(ioi_circuit):
    scores = ioi_circuit.edge_scores
    kept = {abs(scores[e]) for e in ioi_circuit.edges}
    dropped = [abs(v) for e, v in scores.items() if e not in set(ioi_circuit.edges)]
    assert min(kept) >= max(dropped)


def test_pruning_drops_exactly_the_selected_edges_off_every_input_logits_path(toy):
    graph = acd.ComputeGraph.from_model(toy)
    kwargs = {"method": "eap", "select": TopN(40), "prompts": 16, "seed": 0, "run": QUIET}
    whole = acd.discover("ioi", toy, prune=False, **kwargs)
    pruned = acd.discover("ioi", toy, **kwargs)  # prune=True is the default
    assert pruned.metrics["n_selected"] == whole.n_edges == 40
    assert torch.equal(pruned.mask, prune_dangling(whole.mask, graph))
    assert pruned.n_edges < 40  # EAP's top edges include some that feed nothing that matters
    # Dropping them cannot change the output: same circuit metric, to float precision.
    assert pruned.metrics["metric_circuit"] == pytest.approx(
        whole.metrics["metric_circuit"], abs=1e-5
    )


def test_greedy_and_threshold_selections(toy):
    kwargs = {"prompts": 8, "seed": 0, "run": QUIET, "prune": False}
    greedy = acd.discover("ioi", toy, select=Greedy(15), **kwargs)
    assert greedy.n_edges == 15 and greedy.params["selection"] == "greedy"
    assert any(dst == "logits" for _, dst in greedy.edges)  # grown from the logits
    scores = greedy.scores.abs()
    cut = float(scores.flatten().sort(descending=True).values[9])  # the 10th largest |score|
    by_threshold = acd.discover("ioi", toy, select=Threshold(cut), **kwargs)
    assert by_threshold.n_edges == 10 and by_threshold.params["threshold"] == cut


def test_scores_are_the_attribution_scores(ioi_circuit, toy):
    """discover's scores are exactly what acd.attribute gives on the same prompts."""
    graph = acd.ComputeGraph.from_model(toy)
    batch = acd.load_task("ioi").make_batch(toy.tokenizer, 16, seed=0)
    scores = acd.attribute(toy, graph, batch, "eap", progress=False)
    torch.testing.assert_close(ioi_circuit.scores, scores * graph.valid, atol=0, rtol=0)


def test_the_whole_graph_is_fully_faithful_and_the_empty_one_not_at_all(toy):
    graph = acd.ComputeGraph.from_model(toy)
    full = acd.discover("greater-than", toy, select=TopN(graph.n_edges), prompts=8, run=QUIET)
    empty = acd.discover("greater-than", toy, select=TopN(0), prompts=8, run=QUIET)
    assert full.metrics["faithfulness"] == pytest.approx(1.0, abs=1e-6)
    assert empty.metrics["faithfulness"] == pytest.approx(0.0, abs=1e-6)
    assert full.metrics["kl_to_full"] == pytest.approx(0.0, abs=1e-5)


def test_same_seed_same_circuit(toy):
    a = acd.discover("induction", toy, select=TopN(20), prompts=6, seed=3, run=QUIET)
    b = acd.discover("induction", toy, select=TopN(20), prompts=6, seed=3, run=QUIET)
    assert a.edges == b.edges and torch.equal(a.scores, b.scores)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "magic"}, "unknown method 'magic'"),
        ({"select": TopN(10_000)}, "cannot keep 10000 edges"),
        ({"prompts": 0}, "prompts must be at least 1"),
        ({"select": "best"}, "unknown selection 'best'"),
        ({"select": "threshold"}, "needs threshold="),
    ],
)
def test_bad_arguments_are_one_line_errors(toy, kwargs, message):
    with pytest.raises(acd.AcdError, match=message):
        acd.discover("ioi", toy, **{"run": QUIET, "prompts": 4, **kwargs})


def test_a_loaded_circuit_rebuilds_its_method_and_selection(toy, tmp_path):
    """circuit.json records the method's and selection's parameters; the objects rebuilt
    from them find the same circuit again."""
    from acd.export import load_circuit, save_circuit_json
    from acd.methods import EAPIG

    found = acd.discover(
        "ioi", toy, method=EAPIG(steps=2), select=Greedy(12), prompts=6, seed=1, run=QUIET
    )
    save_circuit_json(found, tmp_path / "circuit.json")
    loaded = load_circuit(tmp_path / "circuit.json")
    assert loaded.method_spec == EAPIG(steps=2)
    assert loaded.selection_spec == Greedy(12)
    again = acd.discover(
        "ioi",
        toy,
        method=loaded.method_spec,
        select=loaded.selection_spec,
        prompts=6,
        seed=1,
        run=QUIET,
    )
    assert again.edges == found.edges


def test_a_search_circuit_rebuilds_its_search_and_records_both_metrics(toy, tmp_path):
    from acd.methods import ACDC

    found = acd.discover(
        "ioi",
        toy,
        method=ACDC(0.05, metric="logit_diff"),
        prompts=4,
        run=RunConfig(metric="prob_diff", progress=False),
    )
    assert found.params["metric"] == "logit_diff"  # the search's
    assert found.params["evaluation_metric"] == "prob_diff" == found.metrics["metric"]
    assert found.method_spec == ACDC(0.05, metric="logit_diff")
    assert found.selection_spec is None
