"""Faithfulness curves and MIB's CPR / CMD areas, on the embedded toy model with IOI prompts."""

from __future__ import annotations

import math

import pytest

import acd
from acd.curves import (
    CURVE_PERCENTS,
    area_from_one,
    area_under_curve,
    cmd,
    cpr,
    edge_counts,
    faithfulness_curve,
)
from acd.errors import AcdError
from acd.evaluate import evaluate_circuit
from acd.search import select_topn

TOL = 1e-6


@pytest.fixture(scope="module")
def setup():
    model = acd.load_model("toy")
    graph = acd.ComputeGraph.from_model(model)
    batch = acd.load_task("ioi").make_batch(model.tokenizer, 6, seed=0)
    scores = acd.attribute(model, graph, batch, "eap", progress=False)
    return model, graph, batch, scores


@pytest.fixture(scope="module")
def abs_curve(setup):
    model, graph, batch, scores = setup
    return faithfulness_curve(model, graph, batch, scores, absolute=True)


# --- edge counts -----------------------------------------------------------------------------


def test_edge_counts_floor_like_mib():
    # int(pct * n) in MIB: 0.479 -> 0, 0.958 -> 0, 2.395 -> 2, ...
    assert edge_counts(CURVE_PERCENTS, 479) == (0, 0, 2, 4, 9, 23, 47, 95, 239, 479)
    assert edge_counts(CURVE_PERCENTS, 1000) == (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
    assert edge_counts((0, 29, 100), 100) == (0, 29, 100)  # 0.29 * 100 is 28.999... in floats


@pytest.mark.parametrize("bad", [(), (50, 20), (10, 10), (-1, 50), (50, 101), (math.nan,)])
def test_edge_counts_refuse_bad_percents(bad):
    with pytest.raises(AcdError):
        edge_counts(bad, 100)


# --- areas -----------------------------------------------------------------------------------


def test_area_of_constant_one():
    assert area_under_curve((0, 100), (1, 1)) == pytest.approx(1.0, abs=1e-12)
    # MIB integrates over the listed points only: 0.001 .. 1.
    assert area_under_curve(CURVE_PERCENTS, [1.0] * 10) == pytest.approx(0.999, abs=1e-12)


def test_area_of_linear_curve():
    # f = x on [0, 1]: the trapezoid rule is exact, 1/2, at any points.
    pts = (0, 10, 35, 60, 100)
    assert area_under_curve(pts, [p / 100 for p in pts]) == pytest.approx(0.5, abs=1e-12)
    # Over MIB's points: (1 - 0.001^2) / 2.
    values = [p / 100 for p in CURVE_PERCENTS]
    assert area_under_curve(CURVE_PERCENTS, values) == pytest.approx((1 - 0.001**2) / 2, abs=1e-12)


def test_area_of_step():
    # 0 up to 20 %, 1 from 50 %: trapezoid 20..50 counts half, 50..100 fully.
    pts = (0, 20, 50, 100)
    assert area_under_curve(pts, (0, 0, 1, 1)) == pytest.approx(0.15 + 0.5, abs=1e-12)
    # MIB's points, 0 up to 10 % and 1 from 20 %: half of 0.1..0.2, all of 0.2..1.
    step = [0.0 if p <= 10 else 1.0 for p in CURVE_PERCENTS]
    assert area_under_curve(CURVE_PERCENTS, step) == pytest.approx(0.05 + 0.8, abs=1e-12)
    assert area_from_one(CURVE_PERCENTS, step) == pytest.approx(0.099 + 0.05, abs=1e-12)


def test_area_from_one():
    assert area_from_one(CURVE_PERCENTS, [1.0] * 10) == 0.0
    # |1 - f| folds overshoot: f = 1.5 and f = 0.5 are equally far from the model.
    assert area_from_one((0, 100), (1.5, 1.5)) == pytest.approx(0.5)
    assert area_from_one((0, 100), (0.5, 0.5)) == pytest.approx(0.5)


def test_area_refuses_mismatch():
    with pytest.raises(AcdError):
        area_under_curve((0, 100), (1.0,))
    with pytest.raises(AcdError):
        area_under_curve((100,), (1.0,))


# --- curves on the toy model -----------------------------------------------------------------


def test_curve_shape_and_ends(setup, abs_curve):
    _, graph, _, _ = setup
    assert graph.n_edges == 479
    assert abs_curve.percents == tuple(float(p) for p in CURVE_PERCENTS)
    assert abs_curve.n_edges == edge_counts(CURVE_PERCENTS, 479)
    assert [e.n_edges for e in abs_curve.evaluations] == list(abs_curve.n_edges)
    assert abs_curve.faithfulness[-1] == 1.0  # all edges kept: the full model itself
    assert abs_curve.faithfulness[0] == 0.0  # 0.1 % of 479 edges is none: the empty circuit
    assert all(math.isfinite(f) for f in abs_curve.faithfulness)
    assert len(abs_curve.faithfulness_p05) == len(abs_curve.faithfulness_p95) == 10
    for lo, hi in zip(abs_curve.faithfulness_p05, abs_curve.faithfulness_p95):
        assert lo <= hi
    assert abs_curve.fractions[0] == pytest.approx(0.001)
    summary = abs_curve.summary()
    assert summary["area"] == pytest.approx(abs_curve.area())
    assert summary["n_edges"] == list(abs_curve.n_edges)


@pytest.mark.parametrize("absolute", [True, False])
def test_curve_points_match_separate_evaluations(setup, absolute):
    model, graph, batch, scores = setup
    percents = (0, 2, 10, 50, 100)
    curve = faithfulness_curve(model, graph, batch, scores, absolute=absolute, percents=percents)
    for p, n, f, p05, p95 in zip(
        percents,
        curve.n_edges,
        curve.faithfulness,
        curve.faithfulness_p05,
        curve.faithfulness_p95,
    ):
        mask = select_topn(scores, graph.valid, n, absolute=absolute)
        single = evaluate_circuit(model, graph, batch, mask)
        assert single.n_edges == n, p
        assert f == pytest.approx(single.faithfulness, abs=TOL), p
        assert p05 == pytest.approx(single.faithfulness_p05, abs=TOL, nan_ok=True), p
        assert p95 == pytest.approx(single.faithfulness_p95, abs=TOL, nan_ok=True), p


def test_cpr_and_cmd(setup, abs_curve):
    model, graph, batch, scores = setup
    value, curve = cmd(model, graph, batch, scores)
    assert curve.absolute
    assert curve.faithfulness == pytest.approx(abs_curve.faithfulness, abs=TOL)
    assert value == pytest.approx(area_from_one(CURVE_PERCENTS, curve.faithfulness), abs=1e-12)
    assert value >= 0

    # CPR ranks most helpful first: by -score in acd's sign (helpful edges score negative).
    value, curve = cpr(model, graph, batch, scores)
    assert not curve.absolute
    helpful_first = faithfulness_curve(model, graph, batch, -scores, absolute=False)
    assert curve.faithfulness == pytest.approx(helpful_first.faithfulness, abs=TOL)
    assert value == pytest.approx(area_under_curve(CURVE_PERCENTS, curve.faithfulness), abs=1e-12)
    assert curve.faithfulness[-1] == 1.0
    # Keeping the most helpful edges first recovers more than keeping the most harmful first.
    value_flipped, flipped = cpr(model, graph, batch, scores, higher_is_helpful=True)
    masks = [select_topn(scores, graph.valid, n, absolute=False) for n in flipped.n_edges]
    assert [e.n_edges for e in flipped.evaluations] == [int(m.sum()) for m in masks]
    assert value > value_flipped


def test_curve_refuses_wrong_score_shape(setup):
    model, graph, batch, scores = setup
    with pytest.raises(AcdError):
        faithfulness_curve(model, graph, batch, scores[:-1])
