"""MIB submissions (acd.export.mib, ``acd export --mib``), and acd's CPR / CMD against MIB's own
formula, written out here from MIB's code rather than taken from acd's."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import acd.curves
from acd.circuit import Circuit
from acd.cli import main
from acd.curves import CURVE_PERCENTS, cmd, cpr
from acd.errors import AcdError
from acd.export import read_mib, read_mib_folder, save_circuit_json, write_mib
from acd.export.mib import (
    MIB_PERCENTS,
    circuit_file_name,
    mib_layout_problems,
    mib_model_name,
    mib_task_name,
)
from acd.graph import ComputeGraph, GraphShape
from acd.search import select_topn

# GPT-2 small's graph, the one model of MIB's whose graph acd's can be (no grouped queries).
GPT2 = ComputeGraph(GraphShape(n_layers=12, n_heads=12, n_kv_heads=12))


def gpt2_circuit(*, metric: str = "logit_diff", seed: int = 0, n_kept: int = 40) -> Circuit:
    """An IOI circuit of GPT-2 small's graph with random scores, its top ``n_kept`` edges kept."""
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randn(GPT2.n_src, GPT2.n_dst, generator=generator)
    mask = select_topn(scores, GPT2.valid, n_kept)
    node_scores = {"a0.h0": 0.25, "m3": -1.5}
    params = {"metric": metric}
    return Circuit(GPT2, mask, scores, "ioi", "gpt2", "eap-ig", params, node_scores=node_scores)


def assert_same_circuit(a: Circuit, b: Circuit) -> None:
    assert torch.equal(a.mask, b.mask)
    assert torch.equal(a.scores, b.scores)
    assert a.node_scores == b.node_scores


# --- the layout MIB's evaluator accepts, written out from its code --------------------------

# The folder names the leaderboard's evaluator recognises (eval_submissions.py of
# github.com/mttk/MIB-circuit-track-autoeval: TASKS_TO_HF_NAMES and MODEL_NAME_TO_FULLNAME keys
# of MIB_circuit_track/utils.py), and the pairs it scores (COL_MAPPING there).
MIB_EVALUATOR_TASKS = ["ioi", "mcqa", "arithmetic_addition", "arithmetic-addition",
                       "arithmetic_subtraction", "arithmetic-subtraction", "arc_easy", "arc-easy",
                       "arc_challenge", "arc-challenge"]  # fmt: skip
MIB_EVALUATOR_MODELS = ["gpt2", "qwen2.5", "gemma2", "llama3"]
MIB_COL_MAPPING = {"ioi_gpt2", "ioi_qwen2.5", "ioi_gemma2", "ioi_llama3", "mcqa_qwen2.5",
                   "mcqa_gemma2", "mcqa_llama3", "arithmetic-addition_llama3",
                   "arithmetic-subtraction_llama3", "arc-easy_gemma2", "arc-easy_llama3",
                   "arc-challenge_llama3"}  # fmt: skip


def mib_evaluator_accepts(folder: Path) -> bool:
    """Whether MIB's evaluator would evaluate ``folder``, as eval_submissions.py finds task and
    model in a folder's name (``dir.startswith(task) or f"_{task}" in dir``, alike for models),
    run_evaluation.py skips pairs outside COL_MAPPING, and the circuit-track README asks for
    one file of scores or nine circuits (.json or .pt) per folder."""
    name = folder.name
    task = next((t for t in MIB_EVALUATOR_TASKS if name.startswith(t) or f"_{t}" in name), None)
    model = next((m for m in MIB_EVALUATOR_MODELS if name.startswith(m) or f"_{m}" in name), None)
    if task is None or model is None or f"{task.replace('_', '-')}_{model}" not in MIB_COL_MAPPING:
        return False
    files = [f for f in folder.iterdir() if f.suffix in (".json", ".pt")]
    return len(files) in (1, 9)


def eapig_edge_names(n_layers: int, n_heads: int) -> set[str]:
    """EAP-IG's edge names of a model whose attention precedes its MLP, as ``Graph.from_model``
    of hannamw/EAP-IG builds them: every head's q, k and v input and every MLP read the input
    and all earlier nodes (the MLP also its own layer's heads); the logits read everything."""
    names = set()
    upstream = ["input"]
    for layer in range(n_layers):
        heads = [f"a{layer}.h{h}" for h in range(n_heads)]
        for head in heads:
            for letter in "qkv":
                names |= {f"{u}->{head}<{letter}>" for u in upstream}
        upstream += heads
        names |= {f"{u}->m{layer}" for u in upstream}
        upstream.append(f"m{layer}")
    return names | {f"{u}->logits" for u in upstream}


def check_mib_file(path: Path) -> dict:
    """The document of one circuit file, checked as MIB's ``load_graph_from_json`` reads it
    (keys cfg, nodes, edges; a node's ``in_graph``; each edge's ``in_graph`` and ``score``) and
    as EAP-IG's ``Graph.from_json`` builds the graph (cfg with n_layers, n_heads,
    parallel_attn_mlp and d_model)."""
    document = json.loads(path.read_text())
    assert set(document) == {"cfg", "nodes", "edges"}
    assert {"n_layers": 12, "n_heads": 12, "parallel_attn_mlp": False, "d_model": 768}.items() <= (
        document["cfg"].items()
    )
    assert all(isinstance(node["in_graph"], bool) for node in document["nodes"].values())
    assert set(document["edges"]) == eapig_edge_names(12, 12)
    for edge in document["edges"].values():
        assert isinstance(edge["in_graph"], bool) and math.isfinite(edge["score"])
    return document


# --- (a) the round trip ---------------------------------------------------------------------


def test_importances_round_trip(tmp_path):
    circuit = gpt2_circuit()
    folder = write_mib(circuit, tmp_path)
    assert folder == tmp_path / "ioi_gpt2"
    assert [p.name for p in folder.iterdir()] == ["importances.json"]
    document = check_mib_file(folder / "importances.json")
    # Written in MIB's sign: a helpful edge (negative in acd under logit_diff) scores positive.
    for (src, dst), score in list(circuit.edge_scores.items())[:50]:
        assert document["edges"][f"{src}->{dst}"]["score"] == -score
    assert sum(e["in_graph"] for e in document["edges"].values()) == circuit.n_edges

    submission = read_mib(tmp_path)
    assert list(submission) == ["ioi_gpt2"]
    back = submission["ioi_gpt2"]
    assert (back.task, back.model, back.kind, back.circuits) == ("ioi", "gpt2", "importances", {})
    assert back.importances is not None
    assert_same_circuit(back.importances, circuit)


@pytest.mark.parametrize("absolute", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_nine_circuits_round_trip(tmp_path, absolute):
    circuit = gpt2_circuit(seed=1)
    folder = write_mib(circuit, tmp_path, kind="circuits", absolute=absolute)
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(circuit_file_name(p) for p in MIB_PERCENTS)
    assert "circuit_0.1pct.json" in names and "circuit_50pct.json" in names

    back = read_mib_folder(folder)
    assert back.kind == "circuits" and back.importances is None
    assert list(back.circuits) == [0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50]
    for percent, got in back.circuits.items():
        n = math.floor(percent * GPT2.n_edges / 100)  # "no more than p % of the edges"
        assert got.n_edges == n <= percent / 100 * GPT2.n_edges
        # MIB's ranking: |score|, or signed with the most helpful (most negative in acd) first.
        expected = select_topn(circuit.scores if absolute else -circuit.scores, GPT2.valid, n,
                               absolute=absolute)  # fmt: skip
        assert torch.equal(got.mask, expected)
        assert torch.equal(got.scores, circuit.scores) and got.node_scores == circuit.node_scores
    smallest = back.circuits[0.1]
    if not absolute:
        assert bool(smallest.mask.flatten()[circuit.scores.flatten().argmin()])


def test_kl_scores_keep_their_sign(tmp_path):
    circuit = gpt2_circuit(metric="kl")
    folder = write_mib(circuit, tmp_path)
    document = json.loads((folder / "importances.json").read_text())
    (src, dst), score = next(iter(circuit.edge_scores.items()))
    assert document["edges"][f"{src}->{dst}"]["score"] == score
    back = read_mib_folder(folder, higher_is_helpful=True)
    assert back.importances is not None
    assert_same_circuit(back.importances, circuit)


def test_a_second_write_replaces_the_folder_whole(tmp_path):
    circuit = gpt2_circuit()
    write_mib(circuit, tmp_path, kind="circuits")
    folder = write_mib(circuit, tmp_path)  # nine files then one: none of the nine may stay
    assert [p.name for p in folder.iterdir()] == ["importances.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["ioi_gpt2"]


def test_a_failed_write_leaves_the_old_folder(tmp_path, monkeypatch):
    import acd.export.mib as mib

    circuit = gpt2_circuit()
    write_mib(circuit, tmp_path)
    before = (tmp_path / "ioi_gpt2" / "importances.json").read_bytes()
    calls = []
    real = mib.atomic_write

    def failing(path, data):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C on the third of the nine files
        return real(path, data)

    monkeypatch.setattr(mib, "atomic_write", failing)
    with pytest.raises(KeyboardInterrupt):
        write_mib(circuit, tmp_path, kind="circuits")
    assert [p.name for p in tmp_path.iterdir()] == ["ioi_gpt2"]  # no staging folder left
    assert [p.name for p in (tmp_path / "ioi_gpt2").iterdir()] == ["importances.json"]
    assert (tmp_path / "ioi_gpt2" / "importances.json").read_bytes() == before


def test_task_and_model_names():
    assert mib_task_name("ioi") == "ioi"
    assert mib_task_name("arithmetic_addition") == "arithmetic-addition"
    for not_mib in ("greater-than", "induction", "compiled/reverse"):
        assert mib_task_name(not_mib) is None
    assert mib_model_name("openai-community/gpt2") == "gpt2"
    assert mib_model_name("Qwen/Qwen2.5-0.5B") == "qwen2.5"
    assert mib_model_name("toy") is None


def test_refusals(tmp_path):
    circuit = gpt2_circuit()
    with pytest.raises(AcdError, match="greater-than.*--mib-task"):
        write_mib(Circuit(GPT2, circuit.mask, circuit.scores, "greater-than", "gpt2", "eap"),
                  tmp_path)  # fmt: skip
    with pytest.raises(AcdError, match="does not score mcqa on gpt2"):
        write_mib(circuit, tmp_path, task="mcqa")
    with pytest.raises(AcdError, match="is not a MIB model"):
        write_mib(circuit, tmp_path, model="toy")
    toy = ComputeGraph(GraphShape(n_layers=4, n_heads=4, n_kv_heads=4))
    with pytest.raises(AcdError, match="not MIB's gpt2 graph"):
        write_mib(Circuit(toy, toy.valid, toy.valid.float(), "ioi", "gpt2", "eap"), tmp_path)
    qwen = ComputeGraph(GraphShape(n_layers=24, n_heads=14, n_kv_heads=2))
    with pytest.raises(AcdError, match="one key/value input per head"):
        write_mib(Circuit(qwen, qwen.valid, qwen.valid.float(), "ioi", "qwen2.5", "eap"), tmp_path)
    with pytest.raises(AcdError, match="importances or circuits"):
        write_mib(circuit, tmp_path, kind="both")  # type: ignore[arg-type]
    assert not any(tmp_path.iterdir())  # every refusal before anything is written


# --- (b) CPR and CMD as MIB computes them -----------------------------------------------------

# MIB's sizes, fractions of the edges (``percentages`` of evaluate_area_under_curve).
MIB_FRACTIONS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1)


def mib_cpr_cmd(faithfulnesses: list[float], *, log_scale: bool = False) -> tuple[float, float]:
    """MIB's two areas, transcribed from ``evaluate_area_under_curve`` in
    MIB_circuit_track/evaluation.py (github.com/hannamw/MIB-circuit-track; read in its copies
    cisnlp/MIB-circuit-track@8284199 and mttk/MIB-circuit-track-autoeval):

        for i in range(len(faithfulnesses) - 1):
            x_1, x_2 = percentages[i], percentages[i + 1]
            if log_scale: x_1, x_2 = math.log(x_1), math.log(x_2)
            area_from_1 += (x_2 - x_1) * ((abs(1. - f[i]) + abs(1. - f[i + 1])) / 2)
            area_under += (x_2 - x_1) * ((f[i] + f[i + 1]) / 2)

    CPR is ``area_under`` of the curve ranked by signed score (``absolute=False``) and CMD
    ``area_from_1`` of the curve ranked by |score| (the leaderboard's eval_submissions.py files
    the ``abs-False`` run as CPR and ``abs-True`` as CMD). The x axis is the fraction of edges:
    ``log_scale`` defaults to False and the track's scripts/run_evaluation.py leaves it so
    (the autoeval repository's run_evaluation.py passes log_scale=True; acd follows the track).
    """
    xs = [math.log(x) for x in MIB_FRACTIONS] if log_scale else list(MIB_FRACTIONS)
    f = faithfulnesses
    area_under = area_from_1 = 0.0
    for i in range(len(f) - 1):
        width = xs[i + 1] - xs[i]
        area_from_1 += width * ((abs(1.0 - f[i]) + abs(1.0 - f[i + 1])) / 2)
        area_under += width * ((f[i] + f[i + 1]) / 2)
    return area_under, area_from_1


CURVES = [
    [0.0, -0.2, 0.3, 0.8, 1.3, 0.9, 1.1, 1.0, 0.95, 1.0],  # below 0 and above 1: |1 - f| matters
    [0.05 * i for i in range(10)],
    [1.0] * 10,
]


@pytest.mark.parametrize("faithfulness", CURVES)
def test_cpr_and_cmd_are_mibs_areas(monkeypatch, faithfulness):
    """acd's ``cpr`` and ``cmd``, end to end with the model's evaluation replaced by the given
    faithfulness values, against MIB's formula above."""
    graph = ComputeGraph(GraphShape(n_layers=2, n_heads=2, n_kv_heads=2))
    scores = torch.randn(graph.n_src, graph.n_dst, generator=torch.Generator().manual_seed(0))
    seen = []

    def fake_evaluations(model, graph_, batch, masks, **kwargs):
        seen.append(masks)
        return [
            SimpleNamespace(
                faithfulness=f, faithfulness_p05=f, faithfulness_p95=f, metric="m", n_prompts=1
            )
            for f in faithfulness
        ]

    monkeypatch.setattr(acd.curves, "evaluate_circuits", fake_evaluations)
    assert tuple(p / 100 for p in CURVE_PERCENTS) == pytest.approx(MIB_FRACTIONS, abs=1e-15)
    want_cpr, want_cmd = mib_cpr_cmd(faithfulness)
    got_cpr, cpr_curve = cpr(None, graph, None, scores)  # type: ignore[arg-type]
    got_cmd, cmd_curve = cmd(None, graph, None, scores)  # type: ignore[arg-type]
    assert got_cpr == pytest.approx(want_cpr, abs=1e-12)
    assert got_cmd == pytest.approx(want_cmd, abs=1e-12)
    # The same values through the public area functions of acd.curves.
    assert acd.curves.area_under_curve(CURVE_PERCENTS, faithfulness) == pytest.approx(want_cpr)
    assert acd.curves.area_from_one(CURVE_PERCENTS, faithfulness) == pytest.approx(want_cmd)
    # CPR ranks by signed score, most helpful (most negative in acd) first; CMD by |score|.
    cpr_masks, cmd_masks = seen
    n = cpr_curve.n_edges[-2]
    assert torch.equal(cpr_masks[-2], select_topn(-scores, graph.valid, n, absolute=False))
    assert torch.equal(cmd_masks[-2], select_topn(scores, graph.valid, n, absolute=True))
    assert cmd_curve.n_edges == tuple(int(f * graph.n_edges) for f in MIB_FRACTIONS)


def test_the_x_axis_is_the_fraction_not_its_log():
    """The log-scale variant gives other areas; acd's are the linear ones (see mib_cpr_cmd)."""
    values = CURVES[0]
    linear, log = mib_cpr_cmd(values), mib_cpr_cmd(values, log_scale=True)
    assert acd.curves.area_under_curve(CURVE_PERCENTS, values) == pytest.approx(linear[0])
    assert linear[0] != pytest.approx(log[0])


# --- (c) the command line -------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["importances", "circuits"])
def test_acd_export_writes_a_folder_mib_accepts(tmp_path, capsys, kind):
    circuit_path = save_circuit_json(gpt2_circuit(), tmp_path / "circuit.json")
    submission = tmp_path / "submission"
    assert main(["export", str(circuit_path), "--mib", str(submission), "--kind", kind]) == 0
    out = capsys.readouterr().out
    folder = submission / "ioi_gpt2"
    assert f"wrote {folder}/" in out
    assert [p.name for p in submission.iterdir()] == ["ioi_gpt2"]
    assert mib_evaluator_accepts(folder)
    files = sorted(folder.iterdir())
    assert len(files) == (1 if kind == "importances" else 9)
    for path in files:
        check_mib_file(path)
    # One folder is not yet a whole submission: MIB asks for two tasks and two models.
    assert "note: MIB needs circuits of at least 2 tasks and 2 models" in out


def test_layout_problems(tmp_path):
    write_mib(gpt2_circuit(), tmp_path)
    (tmp_path / "ioi_llama3").mkdir()  # a name MIB knows, but no circuit file
    (tmp_path / "greater-than_gpt2").mkdir()
    problems = mib_layout_problems(tmp_path)
    assert any("greater-than_gpt2: not a MIB task_model folder name" in p for p in problems)
    assert any("ioi_llama3: 0 circuit files" in p for p in problems)
    assert any("at least 2 tasks and 2 models" in p for p in problems)


def test_acd_export_mistakes_are_one_line(tmp_path, capsys):
    toy = ComputeGraph(GraphShape(n_layers=4, n_heads=4, n_kv_heads=4))
    path = save_circuit_json(Circuit(toy, toy.valid, toy.valid.float(), "ioi", "toy", "eap"),
                             tmp_path / "circuit.json")  # fmt: skip
    assert main(["export", str(path), "--mib", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("acd: error: the circuit's model 'toy'")
    assert main(["export", str(path), "--mib", str(tmp_path / "s"), "--mib-model", "gpt2"]) == 2
    assert "not MIB's gpt2 graph" in capsys.readouterr().err
    assert not (tmp_path / "s" / "ioi_gpt2").exists()
