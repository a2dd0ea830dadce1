"""Held-out evaluation and the sanity gate (acd/heldout.py, acd.evaluate.separation).

Discovery and evaluation prompts never overlap: a pair file's rows are split, a generated
task's evaluation skips the discovery prompts, and a file too small to hold anything out says
"in-sample". Before scoring, discovery stops when the model does not separate clean from
corrupted prompts.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import acd
from acd.errors import AcdError, AcdWarning, TaskError
from acd.export import circuit_to_dict, load_circuit, save_circuit_json
from acd.graph import ComputeGraph, GraphShape
from acd.heldout import (
    HELD_OUT_SHARE,
    MIN_HELD_OUT,
    PromptSplit,
    TaskSource,
    held_out,
    pair_parts,
    same_task,
    task_source,
)
from acd.tasks import PromptPair, load_task

QUIET = acd.RunConfig(progress=False)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def toy():
    return acd.load_model("toy", device="cpu")


def write_pairs(path: Path, pairs: list[PromptPair]) -> Path:
    """A CSV of prompt pairs (clean, corrupted, answer, wrong)."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["clean", "corrupted", "answer", "wrong"])
        for p in pairs:
            writer.writerow([p.clean, p.corrupted, p.answers[0], p.wrongs[0]])
    return path


def ioi_rows(n: int, seed: int = 5) -> list[PromptPair]:
    """IOI prompt pairs the embedded model does (as a user's file would hold them)."""
    return load_task("ioi").prompt_pairs(n, seed)


def keys(pairs) -> set[tuple[str, str]]:
    return {(p.clean, p.corrupted) for p in pairs}


@pytest.fixture
def encoded(monkeypatch) -> list[list[PromptPair]]:
    """Every list of prompt pairs tokenized (discovery's batch, evaluation's batch), in order."""
    import acd.tasks

    seen: list[list[PromptPair]] = []
    real = acd.tasks.encode_pairs

    def record(pairs, tokenizer, metric):
        seen.append(list(pairs))
        return real(pairs, tokenizer, metric)

    monkeypatch.setattr(acd.tasks, "encode_pairs", record)
    return seen


# --- pair files ------------------------------------------------------------------------------


def test_a_pair_file_is_split_into_disjoint_parts_by_its_seed():
    rows = ioi_rows(40)
    discovery, evaluation, in_sample = pair_parts(rows, seed=0)
    assert not in_sample
    assert (len(discovery), len(evaluation)) == (30, 10)  # one row in four held out
    assert not keys(discovery) & keys(evaluation)
    assert keys(discovery) | keys(evaluation) == keys(rows)
    assert pair_parts(rows, seed=0) == (discovery, evaluation, False)  # deterministic
    assert pair_parts(rows, seed=1)[1] != evaluation  # the seed chooses the held-out rows


def test_a_file_too_small_to_hold_out_is_in_sample():
    smallest = HELD_OUT_SHARE * MIN_HELD_OUT  # 20 rows: 5 held out
    assert [len(part) for part in pair_parts(ioi_rows(smallest), 0)[:2]] == [15, 5]
    rows = ioi_rows(smallest - 1)
    discovery, evaluation, in_sample = pair_parts(rows, 0)
    assert in_sample and discovery == evaluation == rows


def test_a_duplicated_row_cannot_leak_into_evaluation():
    rows = ioi_rows(40)
    rows = rows + rows[:10]  # ten rows twice: some copies land on both sides of the split
    discovery, evaluation, _ = pair_parts(rows, 0)
    assert not keys(discovery) & keys(evaluation)
    assert len(evaluation) < len(rows) // HELD_OUT_SHARE  # the leaking copies were dropped


def test_evaluate_scores_none_of_a_20_row_files_discovery_prompts(
    tmp_path, cached_toy, encoded, capsys
):
    """The case of the issue: a 20-row CSV. Discovery uses 15 rows, `acd evaluate circuit.json`
    re-reads the file from circuit.json and scores the other 5, and says so. (Before: evaluate
    failed with "unknown task", and with --task it scored discovery's own prompts.)"""
    from acd.cli import main

    rows = write_pairs(tmp_path / "rows.csv", ioi_rows(20))
    out = tmp_path / "out"
    args = ["discover", str(rows), "--method", "eap", "--prompts", "15", "--quiet"]
    assert main([*args, "--out", str(out)]) == 0
    discovery = encoded[0]
    document = json.loads((out / "circuit.json").read_text())
    assert document["prompt_split"] == {
        "seed": 0,
        "discovery": 15,
        "evaluation": 5,
        "in_sample": False,
    }
    assert document["task_source"] == {
        "kind": "file",
        "name": "rows",
        "path": str(rows.resolve()),
        "sha256": acd.heldout.file_sha256(rows),
    }
    capsys.readouterr()

    assert main(["evaluate", str(out / "circuit.json")]) == 0
    evaluation = encoded[-1]
    assert len(evaluation) == 5 and not keys(evaluation) & keys(discovery)
    stdout = capsys.readouterr().out
    assert "5 prompts (seed 1)" in stdout and "prompts: held out: the 5 evaluation rows" in stdout

    # The file given explicitly, with any seed and as many prompts as there are: still apart.
    for seed in ("0", "1", "7"):
        argv = ["evaluate", str(out / "circuit.json"), "--task", str(rows), "--seed", seed]
        assert main([*argv, "--prompts", "5"]) == 0
        assert not keys(encoded[-1]) & keys(discovery)


def test_a_small_file_says_in_sample_in_the_summary_circuit_json_and_evaluate(
    tmp_path, cached_toy, capsys
):
    from acd.cli import main

    rows = write_pairs(tmp_path / "few.csv", ioi_rows(12))
    out = tmp_path / "out"
    assert main(["discover", str(rows), "--method", "eap", "--quiet", "--out", str(out)]) == 0
    summary = capsys.readouterr().out
    assert "- Prompts: 12 of the file's 12 rows (seed 0); in-sample" in summary
    assert "in-sample" in (out / "summary.md").read_text()
    assert load_circuit(out / "circuit.json").prompt_split == PromptSplit(0, 12, 12, True)
    assert main(["evaluate", str(out / "circuit.json")]) == 0
    assert "prompts: in-sample: the task's 12 rows" in capsys.readouterr().out


def test_a_toml_of_pair_rows_is_recorded_and_reread_as_the_toml(tmp_path, cached_toy, capsys):
    """A TOML of kind pairs names its metric: the circuit records the TOML, not the CSV, so
    evaluate re-reads the metric too."""
    from acd.cli import main

    write_pairs(tmp_path / "rows.csv", ioi_rows(24))
    toml = tmp_path / "mine.toml"
    toml.write_text('name = "mine"\nkind = "pairs"\nfile = "rows.csv"\nmetric = "prob_diff"\n')
    out = tmp_path / "out"
    assert main(["discover", str(toml), "--method", "eap", "--quiet", "--out", str(out)]) == 0
    circuit = load_circuit(out / "circuit.json")
    assert circuit.task_source.path == str(toml.resolve())
    assert circuit.prompt_split == PromptSplit(0, 18, 6, False)
    capsys.readouterr()
    assert main(["evaluate", str(out / "circuit.json")]) == 0
    assert "metric prob_diff" in capsys.readouterr().out


# --- generated tasks ------------------------------------------------------------------------


def test_generated_evaluation_prompts_skip_the_discovery_prompts():
    """Seeds 0 and 1 of greater-than share prompts (408 of 3,000): evaluation skips them."""
    task = load_task("greater-than")
    discovery = task.prompt_pairs(3000, 0)
    assert len(keys(discovery) & keys(task.prompt_pairs(3000, 1))) > 100  # seeds alone collide
    source = held_out(task, PromptSplit(0, 3000, 0, False), same=True)
    assert not source.in_sample and "none of the 3000 discovery prompts" in source.note
    evaluation = source.draw(3000, 1)
    assert len(evaluation) == 3000 and not keys(evaluation) & keys(discovery)
    assert source.draw(3000, 1) == evaluation  # deterministic
    assert not keys(source.draw(50, 0)) & keys(discovery)  # even with discovery's own seed


def test_a_task_too_small_for_fresh_prompts_is_one_line(tmp_path):
    toml = tmp_path / "tiny.toml"
    toml.write_text(
        'kind = "template"\nanswer = " {A}"\nwrong = " {B}"\n'
        '[lists]\nn = { values = ["Mary", "John", "Anna"] }\n[variables]\nA = "n"\nB = "n"\n'
        '[constraints]\ndistinct = [["A", "B"]]\n'
        '[[templates]]\nclean = "{A} and {B} then"\ncorrupted = "{B} and {A} then"\n'
    )
    task = load_task(toml)  # 6 distinct prompts in all
    source = held_out(task, PromptSplit(0, 20, 0, False), same=True)
    with pytest.raises(TaskError, match="differ from the 6 discovery prompts") as info:
        source.draw(3, 1)
    assert "\n" not in str(info.value)


def test_a_circuit_of_an_older_acd_is_held_out_from_its_seed_and_prompt_count():
    task = load_task("greater-than")
    source = held_out(task, None, same=True, seed=0, discovery_prompts=3000)
    assert not keys(source.draw(500, 1)) & keys(task.prompt_pairs(3000, 0))
    rows = ioi_rows(30)
    pairs = acd.tasks.PairsTask("rows", "pairs", "logit_diff", "", "", rows=rows)
    old = held_out(pairs, None, same=True, seed=0, discovery_prompts=20)  # drew 20 of 30 rows
    assert old.size == 10 and not keys(old.draw(10, 1)) & keys(pairs.prompt_pairs(20, 0))
    unknown = held_out(task, None, same=True, seed=0, discovery_prompts=None)
    assert "not checked" in unknown.note


def test_another_task_is_not_held_out_and_says_so():
    source = held_out(load_task("ioi"), PromptSplit(0, 100, 0, False), same=False)
    assert "not the one the circuit was found on" in source.note and not source.exclude


# --- what circuit.json records --------------------------------------------------------------


def test_task_sources_of_shipped_and_file_tasks(tmp_path):
    assert task_source(load_task("greater-than")) == TaskSource("builtin", "greater-than")
    rows = write_pairs(tmp_path / "rows.csv", ioi_rows(4))
    recorded = task_source(load_task(rows))
    assert (recorded.kind, recorded.name, recorded.path) == ("file", "rows", str(rows.resolve()))
    assert len(recorded.sha256) == 64
    assert same_task(recorded, "rows", load_task(rows))
    rows.write_text(rows.read_text() + rows.read_text().splitlines()[1] + "\n")
    assert not same_task(recorded, "rows", load_task(rows))  # other bytes: another task
    assert same_task(None, "ioi", load_task("ioi")) and not same_task(None, "ioi", load_task(rows))


def _circuit(**fields) -> acd.Circuit:
    graph = ComputeGraph(GraphShape(n_layers=1, n_heads=2, n_kv_heads=2))
    mask = torch.zeros(graph.n_src, graph.n_dst, dtype=torch.bool)
    return acd.Circuit(graph, mask, mask.float(), "rows", "toy", "eap", **fields)


def test_circuit_json_round_trips_the_source_and_split_and_reads_files_without_them(tmp_path):
    source = TaskSource("file", "rows", "/data/rows.csv", "ab" * 32)
    split = PromptSplit(3, 15, 5, False)
    save_circuit_json(_circuit(task_source=source, prompt_split=split), tmp_path / "c.json")
    back = load_circuit(tmp_path / "c.json")
    assert (back.task_source, back.prompt_split) == (source, split)
    # A file of an earlier acd has neither field, and loads.
    save_circuit_json(_circuit(), tmp_path / "old.json")
    document = json.loads((tmp_path / "old.json").read_text())
    assert "task_source" not in document and "prompt_split" not in document
    old = load_circuit(tmp_path / "old.json")
    assert old.task_source is None and old.prompt_split is None


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("task_source", {"kind": "url", "name": "x", "path": None, "sha256": None}),
        ("task_source", {"kind": "file", "name": "x", "path": None, "sha256": None}),
        ("task_source", "ioi"),
        ("prompt_split", {"seed": 0, "discovery": -1, "evaluation": 0, "in_sample": False}),
        ("prompt_split", {"seed": 0, "discovery": 1, "evaluation": 0, "in_sample": "no"}),
    ],
)
def test_a_malformed_source_or_split_is_one_line(tmp_path, key, value):
    document = circuit_to_dict(_circuit())
    document[key] = value
    (tmp_path / "c.json").write_text(json.dumps(document))
    with pytest.raises(AcdError, match=key) as info:
        load_circuit(tmp_path / "c.json")
    assert "\n" not in str(info.value)


# --- the sanity gate ------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["ioi", "greater-than", "induction"])
def test_the_shipped_tasks_pass_the_gate_on_the_embedded_model(toy, task):
    from acd.evaluate import SEPARATION_EFFECT_SIZE, SEPARATION_STANDARD_ERRORS, separation

    batch = load_task(task).make_batch(toy.tokenizer, 32, seed=0)
    gap = separation(toy, ComputeGraph.from_model(toy), batch)
    assert gap.separated, gap.message(task)
    assert abs(gap.difference) > 2.5 * SEPARATION_EFFECT_SIZE * gap.spread  # by a wide margin
    assert abs(gap.difference) > 2 * SEPARATION_STANDARD_ERRORS * gap.standard_error


def test_the_docs_gift_example_fails_the_gate(toy, tmp_path):
    """docs/tasks.md's worked example: the embedded model does not do it (logit_diff 0.221
    clean, 0.217 corrupted); discover stops with one line naming both numbers."""
    doc = (REPO / "docs" / "tasks.md").read_text()
    (tmp_path / "gifts.txt").write_text(re.search(r"```text\n(.*?)```", doc, flags=re.S)[1])
    (tmp_path / "names.txt").write_text((REPO / "tasks" / "names.txt").read_text())
    (tmp_path / "gift.toml").write_text(re.findall(r"```toml\n(.*?)```", doc, flags=re.S)[0])
    with pytest.raises(AcdError, match="does not tell clean from corrupted") as info:
        acd.discover(str(tmp_path / "gift.toml"), toy, method="eap", run=QUIET)
    message = str(info.value)
    assert "\n" not in message
    assert re.search(r"clean 0\.221\d*, corrupted 0\.217\d*", message), message
    assert "--force" in message


def test_identical_clean_and_corrupted_prompts_stop_discovery_unless_forced(toy):
    rows = [replace(p, corrupted=p.clean) for p in ioi_rows(8)]
    task = acd.tasks.PairsTask("same", "pairs", "logit_diff", "", "", rows=rows)
    with pytest.raises(AcdError, match=r"difference \+0 is within 2 standard errors"):
        acd.discover(task, toy, method="eap", run=QUIET)
    with pytest.warns(AcdWarning, match="scoring anyway"):
        circuit = acd.discover(
            task, toy, method="eap", run=acd.RunConfig(progress=False, force=True)
        )
    assert circuit.metrics["metric_full"] == circuit.metrics["metric_empty"]
