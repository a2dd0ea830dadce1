"""The circuit commands end to end: discover, evaluate, render, compare, curve; interrupts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import networkx as nx
import pytest

from acd.export import load_circuit, read_networkx

RUN_FILES = {
    "circuit.json",
    "circuit.graphml",
    "circuit.nodelink.json",
    "summary.md",
    "circuit.dot",
    "circuit.svg",
    "circuit.html",
    "attention.json",
}


def acd_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "acd", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
        env=env,
    )


@pytest.fixture(scope="module")
def ioi_run(tmp_path_factory) -> Path:
    """One discover run into the default folder, shared by the tests that read its files."""
    cwd = tmp_path_factory.mktemp("run")
    result = acd_cli("discover", "ioi", "--prompts", "8", "--edges", "20", "--quiet", cwd=cwd)
    assert result.returncode == 0, result.stderr
    out = cwd / "out" / "toy" / "ioi" / "eap-ig"  # outside graphs/, the committed gallery
    (out / "stdout.txt").write_text(result.stdout)
    return out


def test_discover_writes_every_file_into_the_default_folder(ioi_run):
    assert {p.name for p in ioi_run.iterdir()} >= RUN_FILES
    assert not [p for p in ioi_run.iterdir() if p.name.startswith(".")]  # no staging left
    circuit = load_circuit(ioi_run / "circuit.json")
    assert (circuit.task, circuit.model, circuit.method) == ("ioi", "toy", "eap-ig")
    assert 0 < circuit.n_edges <= 20 and len(circuit.model_sha256) == 64
    stdout = (ioi_run / "stdout.txt").read_text()
    assert f"Edges kept: {circuit.n_edges} of 479" in stdout and "wrote 8 files" in stdout
    # The networkx files hold exactly the circuit's edges, q/k/v apart.
    for name in ("circuit.graphml", "circuit.nodelink.json"):
        graph = read_networkx(ioi_run / name)
        assert isinstance(graph, nx.MultiDiGraph) and graph.number_of_edges() == circuit.n_edges
        assert sorted(key for *_, key in graph.edges(keys=True)) == sorted(
            d for _, d in circuit.edges
        )


def test_svg_is_well_formed_and_names_every_node(ioi_run):
    circuit = load_circuit(ioi_run / "circuit.json")
    root = ET.parse(ioi_run / "circuit.svg").getroot()
    text = " ".join(t for t in root.itertext())
    for node in circuit.nodes:
        assert node in text, node
    assert "ioi" in text and "faithfulness" in text


def test_evaluate_render_and_compare_read_the_run(ioi_run, tmp_path):
    circuit_file = str(ioi_run / "circuit.json")
    result = acd_cli("evaluate", circuit_file, "--prompts", "6", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (
        "faithfulness (ratio of means)" in result.stdout and "6 prompts (seed 1)" in result.stdout
    )

    result = acd_cli("render", circuit_file, "--format", "png", "--out", "fig/ioi", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    png = (tmp_path / "fig" / "ioi.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and (tmp_path / "fig" / "ioi.dot").exists()

    result = acd_cli("compare", circuit_file, circuit_file, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    jaccard = next(ln for ln in result.stdout.splitlines() if ln.startswith("Jaccard"))
    assert jaccard.split()[-1] == "1.000" and "only in A: 0 edges" in result.stdout


def test_compare_counts_edges_on_each_side(ioi_run, tmp_path):
    from acd.export import save_circuit_json

    circuit = load_circuit(ioi_run / "circuit.json")
    kept = circuit.mask.nonzero().tolist()
    smaller = load_circuit(ioi_run / "circuit.json")
    for i, j in kept[:3]:  # B drops three of A's edges
        smaller.mask[i, j] = False
    save_circuit_json(smaller, tmp_path / "b.json")
    result = acd_cli(
        "compare", str(ioi_run / "circuit.json"), str(tmp_path / "b.json"), cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    n = circuit.n_edges
    assert "only in A: 3 edges" in result.stdout and "only in B: 0 edges" in result.stdout
    rows = {ln.split("  ")[0]: ln.split() for ln in result.stdout.splitlines()}
    assert float(rows["precision (of A against B)"][-2]) == pytest.approx((n - 3) / n, abs=1e-3)
    assert float(rows["recall (of B by A)"][-2]) == 1.0


def _evaluated(capsys, circuit_file: Path, *args: str) -> tuple[str, str]:
    """``acd evaluate`` in this process: the metric named in its header, and its faithfulness."""
    from acd.cli import main

    assert main(["evaluate", str(circuit_file), *args]) == 0
    out = capsys.readouterr().out
    header = next(ln for ln in out.splitlines() if ln.startswith(str(circuit_file)))
    metric = header.split(", metric ")[1].split(",")[0]
    faithfulness = next(ln for ln in out.splitlines() if ln.startswith("faithfulness (ratio"))
    return metric, faithfulness.split()[-1]


@pytest.mark.slow  # an ACDC search end to end: the README command and CI run it
def test_evaluate_an_acdc_circuit_with_the_metric_discover_evaluated_it_with(
    tmp_path, capsys, monkeypatch
):
    """ACDC searches with kl but discover evaluates with the task's metric (logprob for
    induction): acd evaluate re-evaluates with that, not with the search's kl (its
    faithfulness is that of the circuit under logprob on the held-out prompts it draws, which
    never include discovery's). A file without ``evaluation_metric`` (older acd wrote it only
    where it differed from the search metric) uses ``params["metric"]``."""
    import acd
    import acd.cli
    from acd.export import save_circuit_json
    from acd.heldout import held_out

    model = acd.load_model("toy", device="cpu")
    monkeypatch.setattr(acd.cli, "_load_model_verbose", lambda *args, **kwargs: model)
    circuit = acd.discover(
        "induction",
        model,
        method=acd.Hybrid(0.001, candidates=30),
        prompts=6,
        run=acd.RunConfig(progress=False),
    )
    assert circuit.params["metric"] == "kl" and circuit.metrics["metric"] == "logprob"
    assert circuit.params["evaluation_metric"] == "logprob"
    save_circuit_json(circuit, tmp_path / "circuit.json")
    same_prompts = ("--prompts", "6", "--seed", "0")
    metric, faithfulness = _evaluated(capsys, tmp_path / "circuit.json", *same_prompts)
    task = acd.load_task("induction")
    pairs = held_out(task, circuit.prompt_split, same=True).draw(6, 0)
    expected = acd.evaluate_circuit(
        model, circuit.graph, task.encode(pairs, model.tokenizer), circuit.mask, metric="logprob"
    )
    assert (metric, faithfulness) == ("logprob", f"{expected.faithfulness:.4f}")
    assert circuit.evaluation_metric == "logprob"
    # --metric still decides when given.
    assert _evaluated(capsys, tmp_path / "circuit.json", *same_prompts, "--metric", "kl")[0] == "kl"

    # A file that names no evaluation metric: the one it was searched (or scored) with.
    old = acd.load_circuit(tmp_path / "circuit.json")
    del old.params["evaluation_metric"]
    assert old.evaluation_metric == "kl"
    save_circuit_json(old, tmp_path / "old.json")
    assert _evaluated(capsys, tmp_path / "old.json", *same_prompts)[0] == "kl"
    # ... and one that names no metric at all: the task's.
    del old.params["metric"]
    assert old.evaluation_metric is None
    save_circuit_json(old, tmp_path / "bare.json")
    assert _evaluated(capsys, tmp_path / "bare.json", *same_prompts)[0] == "logprob"


@pytest.mark.parametrize("task", ["greater-than", "induction"])
def test_discover_other_tasks_into_a_chosen_folder(task, tmp_path):
    result = acd_cli(
        "discover",
        task,
        "--prompts",
        "6",
        "--edges",
        "15",
        "--method",
        "eap",
        "--out",
        "out",
        "--quiet",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert {p.name for p in (tmp_path / "out").iterdir()} >= RUN_FILES
    assert load_circuit(tmp_path / "out" / "circuit.json").task == task


def test_curve_writes_the_chart_and_areas(tmp_path):
    result = acd_cli(
        "curve", "ioi", "--methods", "eap", "--prompts", "6", "--out", "c", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "c.png").exists() and (tmp_path / "c.svg").exists()
    assert "CPR" in result.stdout and "479 (100 %)" in result.stdout
    # c.json: each method's curve, for `acd render --format html --curve c.json`
    curves = json.loads((tmp_path / "c.json").read_text())
    assert curves["format"] == "acd-curves" and list(curves["curves"]) == ["eap"]
    assert curves["curves"]["eap"]["n_edges"][-1] == 479


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["discover", "no-such-task"], "no-such-task"),
        (["discover", "ioi", "--method", "acdc"], "--tau"),
        (["discover", "ioi", "--tau", "0.1"], "--tau applies"),
        (["discover", "ioi", "--edges", "100000", "--prompts", "2"], "cannot keep 100000"),
        (["discover", "ioi", "--model", "/no/such/model"], "/no/such/model"),
        (["evaluate", "missing.json"], "no circuit file"),
        (["evaluate", "notjson.json"], "not valid JSON"),
        (["compare", "small.json", "big.json"], "different graphs"),
        (["curve", "ioi", "--methods", "acdc"], "unknown"),
        (["render", "notjson.json"], "not valid JSON"),
    ],
)
@pytest.mark.slow  # a subprocess per case (tests/test_cli_mistakes.py checks them in-process)
def test_user_mistakes_give_one_line(args, message, tmp_path):
    (tmp_path / "notjson.json").write_text("this is not json")
    _write_circuit(tmp_path / "small.json", n_layers=1)
    _write_circuit(tmp_path / "big.json", n_layers=2)
    result = acd_cli(*args, cwd=tmp_path)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("acd: error:") and message in lines[0], lines


def _write_circuit(path: Path, n_layers: int) -> None:
    import torch

    from acd.circuit import Circuit
    from acd.export import save_circuit_json
    from acd.graph import ComputeGraph, GraphShape

    graph = ComputeGraph(GraphShape(n_layers=n_layers, n_heads=2, n_kv_heads=2))
    mask = torch.zeros(graph.n_src, graph.n_dst, dtype=torch.bool)
    mask[0, -1] = True
    save_circuit_json(Circuit(graph, mask, mask.float(), "ioi", "toy", "eap"), path)


@pytest.mark.slow
def test_help_of_every_circuit_command_has_examples(tmp_path):
    for command in ["discover", "evaluate", "render", "compare", "curve"]:
        result = acd_cli(command, "--help", cwd=tmp_path)
        assert result.returncode == 0 and f"acd {command} " in result.stdout.split("examples:")[1]


# --- interrupting a run while it writes ---------------------------------------------------

SLOW_WRITER = textwrap.dedent(
    """
    import signal, sys, time
    import acd.export as export

    # Ctrl-C as a terminal delivers it: a test run started in the background (nohup, `&` in a
    # script) inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler.
    signal.signal(signal.SIGINT, signal.default_int_handler)

    original = export.write_data_files

    def slow(circuit, out_dir):
        paths = original(circuit, out_dir)
        print("WRITING", flush=True)   # the data files exist in the staging folder now
        time.sleep(60)
        return paths

    export.write_data_files = slow
    from acd.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_interrupting_a_run_while_it_writes_leaves_no_partial_file(sig, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "circuit.json").write_text("previous run")  # an earlier result must survive whole
    script = tmp_path / "slow.py"
    script.write_text(SLOW_WRITER)
    args = ["discover", "ioi", "--prompts", "4", "--edges", "10", "--method", "eap"]
    proc = subprocess.Popen(
        [sys.executable, str(script), *args, "--out", str(out), "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    deadline = time.monotonic() + 300
    for line in proc.stdout:
        if "WRITING" in line or time.monotonic() > deadline:
            break
    proc.send_signal(sig)
    # communicate drains both pipes: a child blocked writing its stderr would never exit.
    _, stderr = proc.communicate(timeout=60)
    visible = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert visible == ["circuit.json"] and (out / "circuit.json").read_text() == "previous run"
    hidden = [p.name for p in out.iterdir() if p.name.startswith(".")]
    if sig == signal.SIGKILL:
        assert len(hidden) <= 1  # the staging folder of a killed process ...
        result = acd_cli(*args, "--out", str(out), "--quiet", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert not [p for p in out.iterdir() if p.name.startswith(".")]  # ... goes next run
        assert json.loads((out / "circuit.json").read_text())["format"] == "acd-circuit"
    else:
        assert proc.returncode == 130 and hidden == [], stderr


@pytest.mark.slow
@pytest.mark.parametrize("method", [["--method", "eap-ig"], ["--method", "acdc", "--tau", "0.02"]])
def test_torchrun_with_two_processes_finds_the_same_circuit(method, tmp_path):
    """`torchrun --nproc_per_node=2 -m acd discover` splits the prompts over two gloo
    processes; the circuit and its scores equal a single process's."""
    args = ["discover", "ioi", "--prompts", "7", *method, "--quiet"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    dist = subprocess.run(
        [*launcher, "--nproc_per_node=2", "-m", "acd", *args, "--out", "two"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env=env,
    )
    assert dist.returncode == 0, dist.stderr[-2000:]
    assert dist.stdout.count("wrote 8 files") == 1  # only rank 0 writes and prints
    single = acd_cli(*args, "--out", "one", cwd=tmp_path)
    assert single.returncode == 0, single.stderr
    a, b = (
        load_circuit(tmp_path / "two" / "circuit.json"),
        load_circuit(tmp_path / "one" / "circuit.json"),
    )
    assert a.edges == b.edges
    scale = float(b.scores.abs().max())
    assert float((a.scores - b.scores).abs().max()) <= 1e-6 * scale
    assert a.metrics["faithfulness"] == pytest.approx(b.metrics["faithfulness"], rel=1e-6)


@pytest.mark.slow  # an ACDC search end to end: the README command and CI run it
def test_discover_checkpoint_is_checked_resumed_and_removed(tmp_path, capsys, monkeypatch):
    """``--checkpoint``: a checkpoint of other weights is one ``acd: error:`` line (exit 2); the
    matching one is resumed, saying so on stderr, and removed once the circuit is complete."""
    import acd
    import acd.cli
    from acd.acdc import acdc
    from acd.cli import main
    from acd.graph import ComputeGraph

    model = acd.load_model("toy", device="cpu")
    monkeypatch.setattr(acd.cli, "_load_model_verbose", lambda *args, **kwargs: model)
    graph = ComputeGraph.from_model(model)
    checkpoint = tmp_path / "acdc.json"
    batch = acd.load_task("ioi").make_batch(model.tokenizer, 4, 0)  # what discover makes

    def stop(*_):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        acdc(model, graph, batch, tau=0.03, checkpoint=checkpoint, on_progress=stop)
    saved = json.loads(checkpoint.read_text())
    args = ["discover", "ioi", "--method", "acdc", "--tau", "0.03", "--prompts", "4", "--quiet"]
    args += ["--checkpoint", str(checkpoint), "--out", str(tmp_path / "out")]

    checkpoint.write_text(json.dumps({**saved, "model_sha256": "0" * 64}))
    capsys.readouterr()  # the model's loading bars
    assert main(args) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("acd: error:"), lines
    assert "model_sha256 (the model's weights)" in lines[0] and "delete it" in lines[0]

    checkpoint.write_text(json.dumps(saved))
    assert main(args) == 0
    err = capsys.readouterr().err
    assert f"resuming ACDC from {checkpoint}: 1 of {graph.n_dst} destinations done" in err
    assert not checkpoint.exists()
    assert load_circuit(tmp_path / "out" / "circuit.json").method == "acdc"
