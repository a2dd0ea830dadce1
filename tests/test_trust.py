"""The trust report (acd.trust): fidelity against exact patching and stability over prompt
resamples, checked against scipy / hand computations and through discover and circuit.json."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import pearsonr, spearmanr

import acd
from acd.attribution import attribute
from acd.export import circuit_json, load_circuit, save_circuit_json
from acd.runner import PromptRunner
from acd.trust import (
    FIDELITY_EDGES,
    fidelity,
    jaccard,
    resample_indices,
    sample_edges,
    stability,
)


@pytest.fixture(scope="module")
def toy():
    model = acd.load_model("toy", device="cpu")
    return model, acd.ComputeGraph.from_model(model)


def test_sampled_edges_hold_every_selected_edge_and_are_seeded(toy):
    _, graph = toy
    selected = torch.zeros(graph.n_src, graph.n_dst, dtype=torch.bool)
    selected[graph.valid.nonzero()[:30].unbind(1)] = True
    sample = sample_edges(graph, selected, 100, seed=3)
    assert int(sample.sum()) == 100
    assert bool((selected <= sample).all()) and not bool((sample & ~graph.valid).any())
    assert torch.equal(sample, sample_edges(graph, selected, 100, seed=3))
    assert not torch.equal(sample, sample_edges(graph, selected, 100, seed=4))


def test_fidelity_figures_are_scipys_on_the_sampled_edges(toy):
    model, graph = toy
    batch = acd.load_task("ioi").make_batch(model.tokenizer, 8, seed=0)
    runner = PromptRunner(model, graph, batch)
    scores = attribute(model, graph, batch, "eap", progress=False)
    selected = acd.TopN(20).select(scores, graph)
    found = fidelity(runner, scores, selected, n_edges=60)
    sample = sample_edges(graph, selected, 60)
    exact = attribute(model, graph, batch, "exact", edge_mask=sample, progress=False)
    x, y = scores[sample].double().numpy(), exact[sample].double().numpy()
    assert found.n_edges == 60
    assert found.pearson == pytest.approx(pearsonr(x, y).statistic, abs=1e-9)
    assert found.spearman == pytest.approx(spearmanr(x, y).statistic, abs=1e-9)
    assert found.sign_agreement == pytest.approx(float(((x > 0) == (y > 0)).mean()), abs=1e-12)
    weak = selected[sample].numpy() & (abs(y) < 0.01 * abs(y).max())
    assert found.n_weak == int(weak.sum())
    # Exact scores are their own exact effects: perfect agreement.
    own = fidelity(runner, exact, selected, n_edges=60)
    assert own.pearson == pytest.approx(1.0) and own.sign_agreement == 1.0 and own.n_weak >= 0


def test_stability_is_the_jaccard_of_the_resampled_circuits():
    a = torch.tensor([[1, 1, 0, 0]], dtype=torch.bool)
    b = torch.tensor([[1, 0, 1, 0]], dtype=torch.bool)
    assert jaccard(a, b) == pytest.approx(1 / 3) and jaccard(a, a) == 1.0
    assert jaccard(torch.zeros_like(a), torch.zeros_like(a)) == 1.0
    found = stability([a, b, a], a, 0.5)
    assert found.jaccard_mean == pytest.approx(
        (1 + 1 / 3 + 1) / 3
    ) and found.jaccard_min == pytest.approx(1 / 3)
    assert found.inclusion[0].tolist() == pytest.approx([1.0, 2 / 3, 1 / 3, 0.0])
    draws = resample_indices(10, 4, 0.5, seed=0)
    assert len(draws) == 4 and all(len(d) == 5 and len(set(d.tolist())) == 5 for d in draws)
    assert resample_indices(1, 2, 0.5, seed=0)[0].tolist() == [0]


def test_discover_attaches_the_report_and_circuit_json_keeps_it(toy, tmp_path):
    model, graph = toy
    run = acd.RunConfig(progress=False, resamples=3)
    circuit = acd.discover("ioi", model, method="eap", select=acd.TopN(20), prompts=10, run=run)
    m = circuit.metrics
    assert m["trust_fidelity_edges"] == FIDELITY_EDGES and m["trust_stability_resamples"] == 3
    assert -1 <= m["trust_fidelity_spearman"] <= 1 and 0 <= m["trust_stability_jaccard_min"] <= 1
    assert m["trust_stability_jaccard_min"] <= m["trust_stability_jaccard_mean"] <= 1
    inclusion = circuit.edge_inclusion
    assert inclusion is not None and not bool((inclusion[~graph.valid] != 0).any())
    assert set((inclusion[circuit.mask] * 3).round().tolist()) <= {0.0, 1.0, 2.0, 3.0}
    save_circuit_json(circuit, tmp_path / "circuit.json")
    again = load_circuit(tmp_path / "circuit.json")
    assert again.edge_inclusion is not None
    assert torch.equal(again.edge_inclusion[circuit.mask], inclusion[circuit.mask])
    assert "- Trust: fidelity to exact patching" in circuit.summary_markdown()
    plain = acd.discover(
        "ioi",
        model,
        method="eap",
        select=acd.TopN(20),
        prompts=10,
        run=acd.RunConfig(progress=False, trust=False),
    )
    assert not any(k.startswith("trust") for k in plain.metrics)
    assert plain.edge_inclusion is None and "edge_inclusion" not in circuit_json(plain)
    assert plain.edges == circuit.edges  # the report changes nothing found
    exact = acd.discover("ioi", model, method="exact", select=acd.TopN(20), prompts=4, run=run)
    assert "trust_fidelity_edges" not in exact.metrics  # measured effects: no fidelity
    assert exact.metrics["trust_stability_resamples"] == 3
    assert math.isfinite(exact.metrics["trust_stability_jaccard_mean"])


def test_a_bad_resample_count_is_refused():
    with pytest.raises(acd.AcdError, match="resamples must be an integer >= 0"):
        acd.RunConfig(resamples=-1)
