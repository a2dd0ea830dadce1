"""Faithfulness curves over positional edges (acd.positional.curve, ``acd curve --positions``):
each point is the positional circuit of the top positional edges, ranked here by hand; the
curve file feeds a positional circuit's page and is refused by a plain one's."""

from __future__ import annotations

import json

import pytest
import torch

import acd
from acd.cli import main
from acd.curves import CURVE_PERCENTS, edge_counts
from acd.errors import AcdError
from acd.export.html_page import page_data, read_curve_json
from acd.positional import (
    PositionalGraph,
    evaluate_positional_with,
    positional_faithfulness_curve,
    positional_runner,
    positional_scores,
)

PROMPTS = 6


@pytest.fixture(scope="module")
def setup():
    model = acd.load_model("toy", device="cpu")
    batch = acd.load_task("ioi").make_batch(model.tokenizer, PROMPTS, seed=0)
    pgraph = PositionalGraph.from_batch(acd.ComputeGraph.from_model(model), batch)
    scores = positional_scores(model, pgraph, batch, "eap", progress=False)
    return model, batch, pgraph, scores


def _top_by_hand(scores: torch.Tensor, valid: torch.Tensor, n: int, absolute: bool):
    """The n valid positional edges of largest (|)score(|), by a full sort: [n_src, P, n_dst, P]."""
    key = (scores.abs() if absolute else scores).flatten().double()
    key[~valid.flatten()] = -float("inf")
    mask = torch.zeros(key.numel(), dtype=torch.bool)
    mask[torch.sort(key, descending=True, stable=True).indices[:n]] = True
    return mask.view(scores.shape)


@pytest.mark.parametrize("absolute", [True, False])
def test_each_point_is_the_positional_circuit_of_the_top_edges(setup, absolute):
    model, batch, pgraph, scores = setup
    percents = (0, 1, 5, 100)
    curve = positional_faithfulness_curve(
        model, pgraph, batch, scores, absolute=absolute, percents=percents
    )
    counts = edge_counts(percents, pgraph.n_edges)
    assert curve.level == "positional" and curve.n_edges == counts
    assert curve.faithfulness[0] == 0.0 and curve.faithfulness[-1] == 1.0
    runner = positional_runner(model, pgraph, batch)
    masks = torch.stack([_top_by_hand(scores, pgraph.valid, n, absolute) for n in counts])
    expected = evaluate_positional_with(runner, pgraph, masks)
    for got, want in zip(curve.faithfulness, expected):
        assert got == pytest.approx(want.faithfulness, abs=1e-9)


def test_bad_scores_are_refused(setup):
    model, batch, pgraph, scores = setup
    with pytest.raises(AcdError, match="positional scores have shape"):
        positional_faithfulness_curve(model, pgraph, batch, scores[0])


def test_acd_curve_positions_feeds_the_positional_page_only(setup, tmp_path, capsys):
    model, batch, pgraph, _ = setup
    stem = tmp_path / "c"
    argv = ["curve", "ioi", "--positions", "--methods", "eap", "--prompts", str(PROMPTS)]
    assert main([*argv, "--out", str(stem)]) == 0
    out = capsys.readouterr().out
    assert "positional edges kept" in out and f"{pgraph.n_edges:,} (100 %)" in out
    document = json.loads(stem.with_suffix(".json").read_text())
    eap = document["curves"]["eap"]
    assert eap["level"] == "positional"
    assert eap["n_edges"] == list(edge_counts(CURVE_PERCENTS, pgraph.n_edges))
    curve = read_curve_json(stem.with_suffix(".json"))
    run = acd.RunConfig(progress=False, trust=False, roles=False)
    positional = acd.discover("ioi", model, method="eap", positions=True, prompts=PROMPTS, run=run)
    assert page_data(positional, curve=curve)["curve"]["level"] == "positional"
    plain = acd.discover("ioi", model, method="eap", prompts=PROMPTS, run=run)
    with pytest.raises(AcdError, match="give the curve of acd curve$"):
        page_data(plain, curve=curve)
    plain_curve = {**curve, "level": "edge"}
    with pytest.raises(AcdError, match="give the curve of acd curve --positions"):
        page_data(positional, curve=plain_curve)


def test_positions_with_node_level_or_a_task_without_spans_are_refused(tmp_path, capsys):
    assert main(["curve", "ioi", "--positions", "--level", "node"]) == 2
    assert "not with --level node" in capsys.readouterr().err
    pairs = tmp_path / "pairs.jsonl"
    row = (
        '{"clean": "When Mary and John went to the store, John gave a drink to", '
        '"corrupted": "When Anna and Paul went to the store, Mark gave a drink to", '
        '"answer": " Mary", "wrong": " John"}\n'
    )
    pairs.write_text(row * 4)
    argv = ["curve", str(pairs), "--positions", "--prompts", "4", "--out", str(tmp_path / "c")]
    assert main(argv) == 2
    assert "names no spans" in capsys.readouterr().err
    assert not list(tmp_path.glob("c.*"))


@pytest.mark.parametrize("task", ["ioi", "greater-than", "induction"])
def test_the_gallery_positional_pages_carry_their_positional_curve(task):
    """graphs/toy/<task>/eap-ig-positions (graphs/regenerate.sh): curve.json is a positional
    EAP-IG curve over the circuit's own positional graph, and circuit.html shows its points."""
    from pathlib import Path

    from test_html_page import embedded

    from acd.export import load_circuit

    folder = Path(__file__).resolve().parents[1] / "graphs" / "toy" / task / "eap-ig-positions"
    circuit = load_circuit(folder / "circuit.json")
    assert circuit.positional is not None
    curve = read_curve_json(folder / "curve.json", "eap-ig")
    assert curve["level"] == "positional" and curve["method"] == "eap-ig"
    n_valid = circuit.positional.graph.n_edges
    assert curve["n_edges"] == list(edge_counts(CURVE_PERCENTS, n_valid))
    assert curve["faithfulness"][-1] == 1.0  # 100 %: the full model
    assert embedded((folder / "circuit.html").read_text())["curve"] == curve
