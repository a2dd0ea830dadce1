"""User mistakes on the command line: each is one ``acd: error:`` line and exit code 2, with no
traceback, caught before the model loads, and leaves the output folder as it was.

The commands run in this process (acd.cli.main). ``no_model`` makes loading a model fail the
test, so a mistake found only after the (expensive) load cannot pass.
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

import pytest
import torch

import acd
from acd.cli import main
from acd.export import save_circuit_json
from acd.graph import ComputeGraph, GraphShape
from acd.heldout import PromptSplit, TaskSource, file_sha256
from acd.tasks import load_task

PREVIOUS = "previous run"


@pytest.fixture
def no_model(monkeypatch):
    """Loading a model fails the test: every mistake here must be caught before."""
    import acd.cli
    import acd.models

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the mistake was caught")

    monkeypatch.setattr(acd.cli, "_load_model_verbose", refuse)
    monkeypatch.setattr(acd.models, "load_model", refuse)


@pytest.fixture
def out(tmp_path) -> Path:
    """An output folder holding an earlier run's file, which a refused run must leave alone."""
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "circuit.json").write_text(PREVIOUS)
    return folder


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file and folder under ``folder``: contents and modification time."""
    return {
        str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else b"", p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
    } | {".": (b"", folder.stat().st_mtime_ns)}


def assert_refused(capsys, argv: list[str], folder: Path, message: str) -> str:
    """``acd ARGV`` exits 2 with exactly one ``acd: error:`` line containing ``message`` on
    stderr, and ``folder`` is unchanged. Returns the line."""
    before = snapshot(folder)
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as stop:  # argparse's own checks (choices, types) exit from the parser
        code = stop.code
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("acd: error:"), lines
    assert message in lines[0], lines[0]
    assert snapshot(folder) == before
    return lines[0]


def ioi_csv(path: Path, n: int) -> Path:
    """A CSV of ``n`` IOI prompt pairs the embedded model does."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["clean", "corrupted", "answer", "wrong"])
        for p in load_task("ioi").prompt_pairs(n, 5):
            writer.writerow([p.clean, p.corrupted, p.answers[0], p.wrongs[0]])
    return path


def circuit_file(path: Path, task: str = "rows", **fields) -> Path:
    """A small circuit.json (a 1-layer graph) with the given provenance fields."""
    graph = ComputeGraph(GraphShape(n_layers=1, n_heads=2, n_kv_heads=2))
    mask = torch.zeros(graph.n_src, graph.n_dst, dtype=torch.bool)
    mask[0, -1] = True
    save_circuit_json(acd.Circuit(graph, mask, mask.float(), task, "toy", "eap", **fields), path)
    return path


# --- discover: refused before the model loads -----------------------------------------------

NO_CUDA = not torch.cuda.is_available()
CUDA_DEVICE = "cuda" if NO_CUDA else f"cuda:{torch.cuda.device_count()}"

DISCOVER_MISTAKES: list[tuple[str, list[str], str]] = [
    ("unknown task", ["nosuchtask"], "unknown task 'nosuchtask'"),
    ("missing task file", ["missing.toml"], "does not exist"),
    ("unknown model", ["ioi", "--model", "./no/such/model"], "no such model directory"),
    ("unknown device", ["ioi", "--device", "tpu9"], "unknown device 'tpu9'"),
    ("unusable CUDA device", ["ioi", "--device", CUDA_DEVICE], f"device '{CUDA_DEVICE}'"),
    ("unknown dtype", ["ioi", "--dtype", "float8"], "invalid choice: 'float8'"),
    ("no prompts", ["ioi", "--prompts", "0"], "must be at least 1"),
    ("prompts beyond memory", ["ioi", "--prompts", "100000000"], "of host memory"),
    (
        "prompts beyond memory in chunks",
        ["ioi", "--prompts", "100000000", "--batch-size", "8"],
        "for the prompts",
    ),
    ("more edges than the graph", ["ioi", "--edges", "100000"], "cannot keep 100000 edges"),
    ("--checkpoint with eap", ["ioi", "--method", "eap", "--checkpoint", "c.json"], "--checkpoint"),
    ("--ig-steps with eap", ["ioi", "--method", "eap", "--ig-steps", "3"], "--ig-steps applies"),
    (
        "--ig-steps with hybrid's eap scoring",
        ["ioi", "--method", "hybrid", "--tau", "0.1", "--candidates", "9", "--scoring", "eap"]
        + ["--metric", "logit_diff", "--ig-steps", "3"],
        "not --method hybrid --scoring eap",
    ),
    ("--tau with eap-ig", ["ioi", "--tau", "0.1"], "--tau applies to --method acdc or hybrid"),
    ("--candidates with exact", ["ioi", "--method", "exact", "--candidates", "9"], "--candidates"),
    ("--scoring with acdc", ["ioi", "--method", "acdc", "--tau", "0.1", "--scoring", "eap"], "--s"),
    ("--rows-per-forward with eap", ["ioi", "--method", "eap", "--rows-per-forward", "8"], "--r"),
    ("--edges with acdc", ["ioi", "--method", "acdc", "--tau", "0.1", "--edges", "9"], "--edges"),
    ("--threshold with acdc", ["ioi", "--method", "acdc", "--tau", "1", "--threshold", "1"], "--t"),
    ("--selection with hybrid", ["ioi", "--method", "hybrid", "--selection", "greedy"], "--sel"),
    ("acdc without --tau", ["ioi", "--method", "acdc"], "needs --tau"),
    ("hybrid without --candidates", ["ioi", "--method", "hybrid", "--tau", "0.1"], "--candidates"),
    ("negative --tau", ["ioi", "--method", "acdc", "--tau", "-1"], "tau must be >= 0"),
    ("--nodes at edge level", ["ioi", "--nodes", "3"], "--nodes applies to --level node"),
    ("--edges at node level", ["ioi", "--level", "node", "--edges", "3"], "give --nodes N"),
    ("more nodes than the graph", ["ioi", "--level", "node", "--nodes", "21"], "keep 21 nodes"),
    ("node-level acdc", ["ioi", "--level", "node", "--method", "acdc", "--tau", "1"], "edge-lev"),
    ("node-level greedy", ["ioi", "--level", "node", "--selection", "greedy"], "greedy grows"),
    ("--nodes with acdc", ["ioi", "--method", "acdc", "--tau", "1", "--nodes", "3"], "--nodes"),
    ("unknown level", ["ioi", "--level", "head"], "invalid choice: 'head'"),
]


@pytest.mark.parametrize(
    ("argv", "message"),
    [case[1:] for case in DISCOVER_MISTAKES],
    ids=[case[0] for case in DISCOVER_MISTAKES],
)
def test_discover_mistakes_are_refused_before_any_work(argv, message, out, no_model, capsys):
    args = ["discover", *argv, "--out", str(out), "--quiet"]
    assert_refused(capsys, args, out, message)


def test_more_prompts_than_a_pair_files_discovery_rows(tmp_path, out, no_model, capsys):
    rows = ioi_csv(tmp_path / "rows.csv", 20)  # 15 discovery rows, 5 held out
    args = ["discover", str(rows), "--prompts", "16", "--out", str(out)]
    line = assert_refused(capsys, args, out, "16 prompts asked for")
    assert "has 15 discovery rows (5 more held out); ask for at most 15" in line


def test_out_is_an_existing_file(tmp_path, out, no_model, capsys):
    target = out / "circuit.json"
    args = ["discover", "ioi", "--out", str(target)]
    assert_refused(capsys, args, out, "is a file, not a folder")


def test_out_inside_a_file(out, no_model, capsys):
    args = ["discover", "ioi", "--out", str(out / "circuit.json" / "run")]
    assert_refused(capsys, args, out, "is a file, so nothing can be made inside it")


def test_out_in_a_read_only_folder(out, no_model, capsys):
    out.chmod(0o555)
    try:
        if os.access(out, os.W_OK):
            pytest.skip("permission bits do not bind this user (root)")
        args = ["discover", "ioi", "--out", str(out / "run")]
        assert_refused(capsys, args, out, "is not writable")
    finally:
        out.chmod(0o755)


def test_out_on_a_read_only_file_system(out, no_model, capsys):
    """Where permission bits do not bind (root), a read-only mount still refuses writes."""
    read_only = Path("/proc/sys")
    if not read_only.is_dir() or os.access(read_only, os.W_OK):
        pytest.skip("no read-only file system to try")
    args = ["discover", "ioi", "--out", str(read_only / "acd-out")]
    assert_refused(capsys, args, out, "/proc/sys is not writable")
    assert not (read_only / "acd-out").exists()


def test_checkpoint_that_cannot_be_written(out, no_model, capsys):
    args = ["discover", "ioi", "--method", "acdc", "--tau", "0.1", "--out", str(out)]
    args += ["--checkpoint", str(out / "circuit.json" / "acdc.json")]
    assert_refused(capsys, args, out, "--checkpoint")


# --- evaluate, render, curve ----------------------------------------------------------------


def _evaluate_cases(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    rows = ioi_csv(tmp_path / "rows.csv", 20)
    split = PromptSplit(0, 15, 5, False)
    found_on = TaskSource("file", "rows", str(rows.resolve()), file_sha256(rows))
    gone = TaskSource("file", "rows", str(tmp_path / "gone.csv"), "ab" * 32)
    changed = TaskSource("file", "rows", str(rows.resolve()), "ab" * 32)
    files = {
        "ok": circuit_file(tmp_path / "ok.json", task_source=found_on, prompt_split=split),
        "gone": circuit_file(tmp_path / "gone.json", task_source=gone, prompt_split=split),
        "changed": circuit_file(tmp_path / "changed.json", task_source=changed),
        "older": circuit_file(tmp_path / "older.json"),  # names task "rows", records no source
    }
    return {
        "task file missing": ([str(files["gone"])], "which is missing; give the task with --task"),
        "task file changed": ([str(files["changed"])], f"pass --task {rows.resolve()}"),
        "only a task name": ([str(files["older"])], "records only its task's name, 'rows'"),
        "more prompts than held out": (
            [str(files["ok"]), "--prompts", "6"],
            "has 5 held-out rows for evaluation; ask for at most 5",
        ),
        "unknown device": ([str(files["ok"]), "--device", "tpu9"], "unknown device"),
        "unknown model": ([str(files["ok"]), "--model", "./no/such/model"], "no such model"),
        "prompts beyond memory": (
            [str(files["ok"]), "--task", "ioi", "--prompts", "100000000"],
            "of host memory",
        ),
    }


EVALUATE_MISTAKES = [
    "task file missing",
    "task file changed",
    "only a task name",
    "more prompts than held out",
    "unknown device",
    "unknown model",
    "prompts beyond memory",
]


@pytest.mark.parametrize("case", EVALUATE_MISTAKES)
def test_evaluate_mistakes_are_refused_before_any_work(case, tmp_path, no_model, capsys):
    argv, message = _evaluate_cases(tmp_path)[case]
    assert_refused(capsys, ["evaluate", *argv], tmp_path, message)


def test_render_into_a_folder_that_cannot_be_made(tmp_path, out, capsys):
    circuit = circuit_file(tmp_path / "c.json")
    args = ["render", str(circuit), "--out", str(out / "circuit.json" / "fig")]
    assert_refused(capsys, args, out, "is a file, so nothing can be made inside it")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--out", "{out}/circuit.json/curve"], "is a file, so nothing can be made inside it"),
        (["--prompts", "100000000", "--out", "{out}/curve"], "of host memory"),
        (["--device", "tpu9", "--out", "{out}/curve"], "unknown device"),
    ],
)
def test_curve_mistakes_are_refused_before_any_work(argv, message, out, no_model, capsys):
    args = ["curve", "ioi", "--methods", "eap", *(a.format(out=out) for a in argv)]
    assert_refused(capsys, args, out, message)


# --- the sanity gate and a failed save: after the model loads -------------------------------


@pytest.fixture(scope="module")
def toy():
    return acd.load_model("toy", device="cpu")


def _identical_pairs(path: Path) -> Path:
    """A pair file whose corrupted prompts are its clean ones: nothing to tell apart."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["clean", "corrupted", "answer", "wrong"])
        for p in load_task("ioi").prompt_pairs(8, 5):
            writer.writerow([p.clean, p.clean, p.answers[0], p.wrongs[0]])
    return path


def test_a_task_the_model_does_not_separate_stops_discovery(tmp_path, out, cached_toy, capsys):
    same = _identical_pairs(tmp_path / "same.csv")
    args = ["discover", str(same), "--method", "eap", "--quiet", "--out", str(out)]
    line = assert_refused(capsys, args, out, "does not tell clean from corrupted prompts apart")
    clean, corrupted = re.search(r"logit_diff clean (\S+), corrupted (\S+);", line).groups()
    assert clean == corrupted and float(clean) > 1  # both numbers named: the same, IOI's
    assert "--force" in line


def test_force_scores_a_task_that_fails_the_gate_with_a_warning(tmp_path, cached_toy, capsys):
    same = _identical_pairs(tmp_path / "same.csv")
    out = tmp_path / "forced"
    args = ["discover", str(same), "--method", "eap", "--quiet", "--out", str(out), "--force"]
    assert main(args) == 0
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("warning: task 'same': the model does not tell")
    assert (out / "circuit.json").is_file()


def test_a_failed_save_keeps_the_result_and_says_where(tmp_path, cached_toy, monkeypatch, capsys):
    """The folder is checked before the work; should writing still fail (a full disk), the
    finished circuit is saved elsewhere and the one error line says where."""
    import errno

    import acd.export

    out = tmp_path / "out"
    real = acd.export.save_circuit

    def full_disk(circuit, out_dir, **kwargs):
        if Path(out_dir) == out:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(circuit, out_dir, **kwargs)

    monkeypatch.setattr(acd.export, "save_circuit", full_disk)
    argv = ["discover", "ioi", "--method", "eap", "--prompts", "4", "--quiet", "--out", str(out)]
    capsys.readouterr()
    assert main(argv) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "No space left on device" in lines[0], lines
    rescued = Path(lines[0].split("saved to ")[1].split("/ instead")[0])
    assert acd.load_circuit(rescued / "circuit.json").task == "ioi"
