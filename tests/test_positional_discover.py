"""discover(positions=True) and ``acd discover --positions`` on the embedded model: the
positional circuit equals the pipeline run by hand, survives circuit.json, and what has no
positional form is refused before anything runs."""

from __future__ import annotations

import pytest
import torch

import acd
from acd.discover import RunConfig
from acd.errors import AcdError
from acd.export import load_circuit
from acd.positional import (
    PositionalGraph,
    evaluate_positional_with,
    positional_runner,
    positional_scores,
    prune_positional,
)
from acd.search import select_topn

PROMPTS = 12


@pytest.fixture(scope="module")
def toy():
    return acd.load_model("toy", device="cpu")


@pytest.fixture(scope="module")
def ioi_circuit(toy):
    return acd.discover(
        "ioi",
        toy,
        method=acd.EAPIG(steps=3),
        select=acd.TopN(10),
        positions=True,
        prompts=PROMPTS,
        run=RunConfig(progress=False, trust=False, roles=False),
    )


def test_positional_discover_is_the_pipeline_by_hand(toy, ioi_circuit):
    task = acd.load_task("ioi")
    batch = task.make_batch(toy.tokenizer, PROMPTS, seed=0)
    graph = acd.ComputeGraph.from_model(toy)
    pgraph = PositionalGraph.from_batch(graph, batch)
    scores = positional_scores(toy, pgraph, batch, "eap-ig", ig_steps=3, progress=False)
    mask = prune_positional(select_topn(scores, pgraph.valid, 10), pgraph)
    positional = ioi_circuit.positional
    assert positional is not None
    assert positional.spans == ("start", "IO", "S1", "S1+1", "S2", "END")
    assert torch.allclose(positional.scores, scores.float(), atol=1e-5)
    assert torch.equal(positional.mask, mask)
    assert torch.equal(ioi_circuit.mask, pgraph.plain_mask(mask))
    assert torch.allclose(ioi_circuit.scores, pgraph.aggregate(scores).float(), atol=1e-4)
    runner = positional_runner(toy, pgraph, batch, batch_size=8)
    expected = evaluate_positional_with(runner, pgraph, mask.unsqueeze(0))[0]
    assert ioi_circuit.metrics["faithfulness"] == pytest.approx(expected.faithfulness, abs=1e-6)
    assert ioi_circuit.metrics["n_edges"] == int(mask.sum())
    assert ioi_circuit.metrics["n_plain_edges"] == int(pgraph.plain_mask(mask).sum())
    assert ioi_circuit.params["positions"] is True


def test_positional_circuit_survives_circuit_json(ioi_circuit, tmp_path):
    ioi_circuit.save(tmp_path, formats=())
    back = load_circuit(tmp_path / "circuit.json")
    assert back.positional is not None and ioi_circuit.positional is not None
    assert back.positional.spans == ioi_circuit.positional.spans
    assert torch.equal(back.positional.mask, ioi_circuit.positional.mask)
    assert torch.equal(back.positional.scores, ioi_circuit.positional.scores)
    assert torch.equal(back.positional.graph.valid, ioi_circuit.positional.graph.valid)
    assert back.positional.edges == ioi_circuit.positional.edges


def test_a_broken_positions_section_is_refused(ioi_circuit, tmp_path):
    import json

    ioi_circuit.save(tmp_path, formats=())
    path = tmp_path / "circuit.json"
    document = json.loads(path.read_text())
    document["positions"]["scores"] = document["positions"]["scores"][:-1]
    path.write_text(json.dumps(document))
    with pytest.raises(AcdError, match="positions.scores"):
        load_circuit(path)
    document["positions"]["scores"].append(0.0)
    document["positions"]["edges"][0] = ["input@nowhere", "logits@END"]
    path.write_text(json.dumps(document))
    with pytest.raises(AcdError, match=r"positions.edges\[0\]"):
        load_circuit(path)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(method=acd.ACDC(tau=0.1)), "no positional form"),
        (dict(method=acd.EAPIGActivations()), "no positional form"),
        (dict(select=acd.Greedy(5)), "no positional form"),
        (dict(level="node"), "level='edge'"),
    ],
)
def test_what_has_no_positional_form_is_refused(kwargs, message):
    with pytest.raises(AcdError, match=message):
        acd.discover("ioi", "no-such-model-is-loaded", positions=True, **kwargs)


def test_a_task_without_spans_is_refused(toy, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    rows = [
        '{"clean": "When Mary and John went to the store, John gave a drink to", '
        '"corrupted": "When Anna and Paul went to the store, Mark gave a drink to", '
        '"answer": " Mary", "wrong": " John"}'
    ] * 4
    pairs.write_text("\n".join(rows) + "\n")
    with pytest.raises(AcdError, match="names no spans"):
        acd.discover(str(pairs), toy, positions=True, prompts=4, run=RunConfig(progress=False))


def test_induction_positional_circuit_reads_keys_across_halves(toy):
    circuit = acd.discover(
        "induction",
        toy,
        method=acd.EAP(),
        select=acd.TopN(30),
        positions=True,
        prompts=PROMPTS,
        run=RunConfig(progress=False, trust=False, roles=False),
    )
    positional = circuit.positional
    assert positional is not None and positional.spans == ("start", "first", "second")
    # Every kept edge into the logits is at the scored span; every edge that crosses spans
    # runs from the first half to the second (keys and values sit at or before their
    # queries), and some key input of the second half reads the first (what induction's
    # K-composition needs: the previous-token head's output at the earlier copy).
    pgraph = positional.graph
    names = positional.edges
    assert all(dst.endswith("@second") for src, dst in names if dst.startswith("logits"))
    crossing = [(s, d) for s, d in names if s.split("@")[1] != d.split("@")[1]]
    assert crossing and all(s.endswith("@first") and d.endswith("@second") for s, d in crossing)
    assert any("<k>@" in d for _, d in crossing), crossing
    assert pgraph.n_edges > circuit.graph.n_edges


def test_acd_discover_positions_writes_a_positional_circuit(cached_toy, tmp_path, capsys):
    from acd.cli import main

    out = tmp_path / "x"
    code = main(
        ["discover", "ioi", "--positions", "--method", "eap", "--prompts", "8", "--edges", "12"]
        + ["--no-trust", "--no-roles", "--quiet", "--out", str(out)]
    )
    assert code == 0
    circuit = acd.load_circuit(out / "circuit.json")
    assert circuit.positional is not None and circuit.params["positions"] is True
    assert circuit.metrics["n_selected"] == 12
    assert circuit.positional.n_edges == circuit.metrics["n_edges"] <= 12


@pytest.mark.parametrize(
    "args, message",
    [
        (["--method", "acdc", "--tau", "0.1"], "--positions applies to --method eap"),
        (["--level", "node"], "not with --level node"),
        (["--selection", "greedy", "--edges", "5"], "no positional form"),
    ],
)
def test_acd_discover_positions_refuses_what_it_cannot_do(tmp_path, capsys, args, message):
    from acd.cli import main

    code = main(["discover", "ioi", "--positions", *args, "--out", str(tmp_path / "x")])
    assert code != 0
    assert message in capsys.readouterr().err


def test_acd_discover_positions_needs_a_task_with_spans(tmp_path, capsys):
    from acd.cli import main

    pairs = tmp_path / "pairs.jsonl"
    row = (
        '{"clean": "When Mary and John went to the store, John gave a drink to", '
        '"corrupted": "When Anna and Paul went to the store, Mark gave a drink to", '
        '"answer": " Mary", "wrong": " John"}'
    )
    pairs.write_text("\n".join([row] * 4) + "\n")
    code = main(["discover", str(pairs), "--positions", "--out", str(tmp_path / "x")])
    assert code != 0
    assert "names no spans" in capsys.readouterr().err


def test_eap_ig_json_of_a_positional_circuit_is_its_aggregate(ioi_circuit, tmp_path):
    """EAP-IG's (and MIB's) graph files hold plain edges: a positional circuit is written as
    the sum of its positional scores per plain edge, every plain edge with a kept part in the
    graph — computed here from the positional tensors directly."""
    from acd.export import read_eapig_json, write_eapig_json

    positional = ioi_circuit.positional
    assert positional is not None
    path = write_eapig_json(ioi_circuit, tmp_path / "graph.json")
    back = read_eapig_json(path)
    graph = ioi_circuit.graph
    summed = torch.zeros(graph.n_src, graph.n_dst)
    kept = torch.zeros(graph.n_src, graph.n_dst, dtype=torch.bool)
    for u, p, v, q in positional.scores.nonzero().tolist():
        summed[u, v] += positional.scores[u, p, v, q]
    for u, _, v, _ in positional.kept_index():
        kept[u, v] = True
    assert torch.allclose(back.scores, summed, atol=1e-5)
    assert torch.equal(back.mask, kept)


def test_acd_evaluate_patches_a_positional_circuit_per_span(
    ioi_circuit, toy, tmp_path, capsys, monkeypatch
):
    """``acd evaluate`` re-evaluates a positional circuit per (edge, span): the figure it prints
    is the positional evaluation on its prompts, which differs from evaluating the plain
    aggregate (that keeps every span of each touched plain edge)."""
    from acd.cli import main
    from acd.evaluate import evaluate_circuit
    from acd.positional.evaluate import evaluate_positional_circuit

    positional = ioi_circuit.positional
    assert positional is not None
    batch = acd.load_task("ioi").make_batch(toy.tokenizer, 16, seed=5)
    got = evaluate_positional_circuit(toy, positional, batch)
    pgraph = PositionalGraph.from_batch(ioi_circuit.graph, batch)
    runner = positional_runner(toy, pgraph, batch)
    expected = evaluate_positional_with(runner, pgraph, (positional.mask & pgraph.valid)[None])
    assert got.faithfulness == pytest.approx(expected[0].faithfulness, abs=1e-9)
    plain = evaluate_circuit(toy, ioi_circuit.graph, batch, ioi_circuit.mask)
    assert abs(plain.faithfulness - got.faithfulness) > 1e-4
    ioi_circuit.save(tmp_path, formats=())
    import acd.cli as cli

    monkeypatch.setattr(cli, "_load_model_verbose", lambda *a, **k: toy)  # as cached_toy does
    assert main(["evaluate", str(tmp_path / "circuit.json"), "--prompts", "16", "--seed", "5"]) == 0
    assert f"{got.faithfulness:.4f}" in capsys.readouterr().out


def test_positional_stability_uses_the_requested_resamples(toy):
    """The positional trust report refinds the circuit on ``run.resamples`` halves of the
    prompts (as the plain one does): the Jaccard figures equal the resamples' circuits found
    by hand, and no resamples means no stability figures."""
    from acd.trust import RESAMPLE_FRACTION, jaccard, resample_indices

    def found(resamples):
        return acd.discover(
            "ioi",
            toy,
            method=acd.EAP(),
            select=acd.TopN(10),
            positions=True,
            prompts=8,
            run=RunConfig(progress=False, roles=False, resamples=resamples),
        )

    circuit = found(2)
    assert circuit.metrics["trust_stability_resamples"] == 2
    batch = acd.load_task("ioi").make_batch(toy.tokenizer, 8, seed=0)
    pgraph = PositionalGraph.from_batch(acd.ComputeGraph.from_model(toy), batch)
    masks = []
    for rows in resample_indices(8, 2, RESAMPLE_FRACTION, seed=1):
        scores = positional_scores(toy, pgraph, batch.select(rows), "eap", progress=False)
        masks.append(prune_positional(select_topn(scores, pgraph.valid, 10), pgraph))
    assert circuit.positional is not None
    expected = [jaccard(m, circuit.positional.mask) for m in masks]
    assert circuit.metrics["trust_stability_jaccard_mean"] == pytest.approx(
        sum(expected) / 2, abs=1e-9
    )
    assert circuit.metrics["trust_stability_jaccard_min"] == pytest.approx(min(expected))
    assert "trust_stability_resamples" not in found(0).metrics
