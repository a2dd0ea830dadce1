"""Node-level circuits (acd.nodes, discover(level="node"), node curves), against independent
expectations: the induced edge mask brute-forced from the names, evaluation against
hand-written hooks that replace a removed node's output by its corrupted value, selection
against a sort written out here."""

from __future__ import annotations

import math

import pytest
import torch
from test_attribution import source_outputs, source_point, tiny_batch

import acd
from acd.curves import faithfulness_curve
from acd.discover import RunConfig
from acd.errors import AcdError
from acd.evaluate import evaluate_circuit
from acd.export.circuit_json import circuit_from_dict, circuit_to_dict
from acd.graph import ComputeGraph, GraphShape
from acd.methods import TopN
from acd.metrics import get_metric
from acd.nodes import induced_edges, kept_nodes, node_names

QUIET = RunConfig(progress=False, trust=False)


@pytest.fixture(scope="module")
def gpt2(tiny_gpt2_dir):
    return acd.load_model(tiny_gpt2_dir, device="cpu", dtype=torch.float64)


@pytest.fixture(scope="module")
def llama(tiny_llama_dir):
    return acd.load_model(tiny_llama_dir, device="cpu", dtype=torch.float64)


@pytest.fixture(scope="module")
def neox(make_tiny_model_dir):
    return acd.load_model(make_tiny_model_dir("neox"), device="cpu", dtype=torch.float64)


@pytest.fixture(scope="module")
def toy():
    return acd.load_model("toy", device="cpu")


def _readers_by_name(graph: ComputeGraph, port) -> set[str]:
    """The heads/MLP that compute from ``port``, from its name alone (GQA: a group's heads)."""
    if port.kind == "logits":
        return {"logits"}
    if port.kind == "mlp":
        return {port.name}
    layer = port.layer
    if port.kind == "q":
        return {port.node}
    per_group = graph.n_heads // graph.n_kv_heads
    return {f"a{layer}.h{h}" for h in range(port.index * per_group, (port.index + 1) * per_group)}


@pytest.mark.parametrize(
    "shape",
    [
        GraphShape(n_layers=2, n_heads=3, n_kv_heads=3),
        GraphShape(n_layers=3, n_heads=4, n_kv_heads=2),  # grouped-query attention
        GraphShape(n_layers=2, n_heads=2, n_kv_heads=2, parallel_attn_mlp=True),
        GraphShape(n_layers=2, n_heads=2, n_kv_heads=2, has_mlp=False),
    ],
    ids=["gpt2", "gqa", "parallel", "attn-only"],
)
def test_induced_edges_are_the_edges_between_kept_nodes(shape):
    graph = ComputeGraph(shape)
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        kept = torch.rand(graph.n_src, generator=generator) < 0.5
        names = {graph.sources[i].name for i in kept.nonzero().flatten().tolist()} | {"logits"}
        expected = torch.zeros(graph.n_src, graph.n_dst, dtype=torch.bool)
        for i, j in graph.valid.nonzero().tolist():
            source, port = graph.sources[i].name, graph.destinations[j]
            expected[i, j] = source in names and bool(_readers_by_name(graph, port) & names)
        mask = induced_edges(kept, graph)
        assert torch.equal(mask, expected)
        # every kept node with a valid edge to a kept reader shows up again
        assert set(node_names(kept_nodes(mask, graph), graph)) <= names


def test_node_mask_shapes_are_checked():
    graph = ComputeGraph(GraphShape(n_layers=1, n_heads=2, n_kv_heads=2))
    with pytest.raises(AcdError, match="node mask has shape"):
        induced_edges(torch.ones(graph.n_src + 1, dtype=torch.bool), graph)
    with pytest.raises(AcdError, match="mask has shape"):
        kept_nodes(torch.ones(2, 2, dtype=torch.bool), graph)


def _replaced_metric(model, graph, batch, removed: list[int]) -> torch.Tensor:
    """Per-prompt metric of the clean run with each removed source's output *replaced* by its
    output in the corrupted run, with hand-written hooks at the sources' own hook points."""
    corrupt = source_outputs(model, graph, batch.corrupted)
    hooks = []
    for u in removed:
        name, head = source_point(model, graph, u)

        def replace(x, hook, u=u, head=head):
            x = x.clone()
            if head is None:
                x[:] = corrupt[u]
            else:
                x[:, :, head] = corrupt[u]
            return x

        hooks.append((name, replace))
    with torch.no_grad():
        logits = model.bridge.run_with_hooks(batch.clean, fwd_hooks=hooks)
    return get_metric(batch.metric)(logits, batch)


@pytest.mark.parametrize("name", ["gpt2", "llama", "neox"])
def test_a_node_circuit_evaluates_as_its_removed_nodes_replaced(name, request):
    """Evaluating the induced mask of a node set is the node patch: every removed node's
    output replaced by the corrupted run's, whatever it reads (GPT-2, grouped-query Llama,
    parallel-block NeoX)."""
    model = request.getfixturevalue(name)
    graph = ComputeGraph.from_model(model)
    batch = tiny_batch(model)
    generator = torch.Generator().manual_seed(1)
    for _ in range(4):
        kept = torch.rand(graph.n_src, generator=generator) < 0.6
        removed = (~kept).nonzero().flatten().tolist()
        got = evaluate_circuit(model, graph, batch, induced_edges(kept, graph))
        torch.testing.assert_close(
            got.circuit, _replaced_metric(model, graph, batch, removed), rtol=1e-9, atol=1e-9
        )


@pytest.mark.parametrize("name", ["llama", "neox"])
def test_exact_node_scores_are_single_node_replacements(name, request):
    """acd.node_scores(exact) = mean M(u's output replaced by the corrupted one) - mean M(clean),
    node by node, with the hand hooks above (GPT-2 is checked in test_attribution)."""
    model = request.getfixturevalue(name)
    graph = ComputeGraph.from_model(model)
    batch = tiny_batch(model)
    scores = acd.node_scores(model, graph, batch, "exact", progress=False)
    clean = _replaced_metric(model, graph, batch, []).mean()
    for u in range(graph.n_src):
        expected = _replaced_metric(model, graph, batch, [u]).mean() - clean
        torch.testing.assert_close(scores[u], expected, rtol=1e-7, atol=1e-10)


def test_topn_and_threshold_select_heads_and_mlps_by_a_plain_sort_and_keep_input():
    graph = ComputeGraph(GraphShape(n_layers=2, n_heads=2, n_kv_heads=2))
    scores = torch.tensor([9.0, -3.0, 2.0, 0.0, -1.0, 2.0, 0.1])  # index 0 is input
    assert len(scores) == graph.n_src and graph.sources[0].name == "input"
    order = sorted(range(1, graph.n_src), key=lambda i: (-abs(float(scores[i])), i))
    for n in range(graph.n_src):
        got = TopN(n).select_nodes(scores, graph)
        assert sorted(got.nonzero().flatten().tolist()) == sorted([0, *order[:n]])
    signed = TopN(2, absolute=False).select_nodes(scores, graph)
    assert signed.nonzero().flatten().tolist() == [0, 2, 5]
    threshold = acd.methods.Threshold(1.0).select_nodes(scores, graph)
    assert threshold.nonzero().flatten().tolist() == [0, 1, 2, 4, 5]
    with pytest.raises(AcdError, match="cannot keep 7 nodes: the graph has 6 heads and MLPs"):
        TopN(7).select_nodes(scores, graph)
    with pytest.raises(AcdError, match="greedy"):
        acd.methods.Greedy(2).select_nodes(scores, graph)


@pytest.mark.parametrize("method", ["eap", "exact"])
def test_discover_at_node_level(toy, method):
    """The kept nodes are the top n by |node score| (before pruning), the mask their induced
    edges pruned, the faithfulness the hand-replaced metric's; circuit.json keeps the level
    and the rebuilt selection finds the same circuit."""
    task = acd.load_task("ioi")
    circuit = acd.discover(
        task, toy, method=method, select=TopN(4), level="node", prompts=6, run=QUIET
    )
    graph = circuit.graph
    assert circuit.level == "node" and circuit.params["nodes"] == 4
    scores = torch.tensor([circuit.node_scores[s.name] for s in graph.sources])
    top = sorted(range(1, graph.n_src), key=lambda i: (-abs(float(scores[i])), i))[:4]
    kept = torch.zeros(graph.n_src, dtype=torch.bool)
    kept[[0, *top]] = True  # input is always kept
    assert circuit.metrics["n_selected"] == int(induced_edges(kept, graph).sum())
    assert torch.equal(circuit.mask, acd.search.prune_dangling(induced_edges(kept, graph), graph))
    assert set(circuit.kept_sources) <= {"input", *(graph.sources[i].name for i in top)}
    assert circuit.metrics["n_nodes"] == len(circuit.kept_sources) - 1
    if method == "exact":
        assert not bool(circuit.scores.any())  # nodes measured, no edge scores
    else:
        edges = acd.attribute(
            toy, graph, task.make_batch(toy.tokenizer, 6, 0), "eap", progress=False
        )
        torch.testing.assert_close(scores, edges.sum(dim=1).float(), rtol=1e-5, atol=1e-6)

    batch = task.make_batch(toy.tokenizer, 6, 0)
    removed = [u for u in range(graph.n_src) if not bool(circuit.mask[u].any())]
    metric = _replaced_metric(toy, graph, batch, removed).mean()
    full, empty = circuit.metrics["metric_full"], circuit.metrics["metric_empty"]
    assert circuit.metrics["faithfulness"] == pytest.approx(
        (float(metric) - empty) / (full - empty), rel=1e-4
    )

    back = circuit_from_dict(circuit_to_dict(circuit))
    assert back.level == "node" and back.node_scores == circuit.node_scores
    again = acd.discover(
        task,
        toy,
        method=back.method_spec,
        select=back.selection_spec,
        level=back.level,
        prompts=6,
        run=QUIET,
    )
    assert torch.equal(again.mask, circuit.mask)


def test_node_level_refuses_searches_and_greedy(toy):
    with pytest.raises(AcdError, match="searches over edges"):
        acd.discover("ioi", toy, method=acd.methods.ACDC(0.1), level="node", prompts=2, run=QUIET)
    with pytest.raises(AcdError, match="greedy"):
        acd.discover("ioi", toy, select="greedy", level="node", prompts=2, run=QUIET)
    with pytest.raises(AcdError, match="unknown level"):
        acd.discover("ioi", toy, level="nodes", prompts=2, run=QUIET)


def test_node_trust_report_compares_node_scores_with_node_patching(toy):
    circuit = acd.discover(
        "ioi",
        toy,
        method="eap",
        select=TopN(3),
        level="node",
        prompts=8,
        run=RunConfig(progress=False, resamples=3),
    )
    graph = circuit.graph
    m = circuit.metrics
    assert m["trust_fidelity_edges"] == graph.n_src  # every node measured
    # the same figures by hand: EAP node scores vs exact node patching on the first 8 prompts
    batch = acd.load_task("ioi").make_batch(toy.tokenizer, 8, 0)
    x = acd.node_scores(toy, graph, batch, "eap", progress=False).double()
    y = acd.node_scores(toy, graph, batch, "exact", progress=False).double()
    pearson = float(torch.corrcoef(torch.stack([x, y]))[0, 1])
    assert m["trust_fidelity_pearson"] == pytest.approx(pearson, rel=1e-4)
    assert m["trust_fidelity_sign_agreement"] == pytest.approx(
        float((torch.sign(x) == torch.sign(y)).double().mean())
    )
    assert 0 <= m["trust_stability_jaccard_min"] <= m["trust_stability_jaccard_mean"] <= 1
    assert circuit.edge_inclusion is not None


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_node_curve_points_are_the_induced_circuits(name, request):
    gpt2 = request.getfixturevalue(name)
    graph = ComputeGraph.from_model(gpt2)
    batch = tiny_batch(gpt2)
    scores = acd.node_scores(gpt2, graph, batch, "exact", progress=False)
    percents = (0, 20, 50, 100)
    curve = faithfulness_curve(gpt2, graph, batch, scores, percents=percents)
    assert curve.level == "node"
    counts = [math.floor(p * (graph.n_src - 1) / 100 + 1e-9) for p in percents]
    assert list(curve.n_edges) == counts
    order = sorted(range(1, graph.n_src), key=lambda i: (-abs(float(scores[i])), i))
    for n, f in zip(counts, curve.faithfulness):
        kept = torch.zeros(graph.n_src, dtype=torch.bool)
        kept[[0, *order[:n]]] = True  # input always, then the top n heads and MLPs
        expected = evaluate_circuit(gpt2, graph, batch, induced_edges(kept, graph)).faithfulness
        assert f == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert curve.faithfulness[-1] == pytest.approx(1.0)


def test_the_command_line_writes_node_level_circuits_and_curves(tmp_path, capsys):
    from acd.cli import main
    from acd.export import load_circuit

    out = tmp_path / "run"
    argv = ["discover", "ioi", "--level", "node", "--nodes", "4", "--method", "exact"]
    assert main([*argv, "--prompts", "8", "--out", str(out), "--quiet", "--no-trust"]) == 0
    circuit = load_circuit(out / "circuit.json")
    assert circuit.level == "node" and circuit.params["nodes"] == 4
    components = len(circuit.kept_sources) - 1  # input is always kept
    assert components <= 4 and circuit.metrics["n_nodes"] == components
    summary = (out / "summary.md").read_text()
    assert f"Nodes kept (node level): {components} of 20 heads and MLPs" in summary
    assert "the edges carry no scores" in summary
    assert f"{components} of 20 heads and MLPs kept" in (out / "circuit.dot").read_text()

    stem = tmp_path / "curve"
    argv = ["curve", "ioi", "--level", "node", "--methods", "eap", "--prompts", "8"]
    assert main([*argv, "--out", str(stem)]) == 0
    printed = capsys.readouterr().out
    assert "nodes kept by |score|" in printed and "20 (100 %)" in printed
    assert (tmp_path / "curve.svg").is_file()
