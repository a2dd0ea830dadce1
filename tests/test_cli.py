"""The command line: listings, the model check, and one-line errors for user mistakes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from acd.cli import main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """`python -m acd ...` in a subprocess, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "acd", *args], capture_output=True, text=True, timeout=300
    )


def test_tasks_lists_the_shipped_tasks(capsys):
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    for name, metric in [
        ("ioi", "logit_diff"),
        ("greater-than", "prob_diff"),
        ("induction", "logprob"),
    ]:
        assert any(line.split()[:1] == [name] and metric in line for line in out.splitlines())


def test_models_lists_the_embedded_model(capsys):
    assert main(["models"]) == 0
    toy = [line for line in capsys.readouterr().out.splitlines() if line.startswith("toy ")]
    assert toy and "embedded" in toy[0]
    assert toy[0].split()[2:5] == ["4", "4", "128"]  # layers, heads, d_model


TASK_FIGURES = [
    "ioi accuracy (IO logit > S logit)",
    "ioi mean logit difference",
    "ioi accuracy, all heads zero-ablated",
    "greater-than mean probability difference",
    "induction mean log-prob, repeated half",
    "induction mean log-prob, first half",
]


@pytest.mark.slow
def test_check_model_prints_every_figure_and_exits_1_on_a_missed_target():
    result = run_cli("check-model", "toy", "--prompts", "100", "--seed", "3")
    lines = result.stdout.splitlines()
    # The tasks' own figures are met.
    for figure in TASK_FIGURES:
        line = next(ln for ln in lines if ln.startswith(figure))
        assert line.endswith(" ok"), line
    # The mechanism figures are printed, each with its target ...
    mechanism = [
        *(
            f"induction repeat NLL, half {h}, {p} words before"
            for h in (5, 13, 20, 24)
            for p in (0, 5)
        ),
        *(f"ioi {g}, {k} fillers: accuracy" for g in ("ABBA", "BABA") for k in (0, 3, 12)),
        *(
            f"ioi {g}, {k} fillers: mean logit difference"
            for g in ("ABBA", "BABA")
            for k in (0, 3, 12)
        ),
        "best previous-token score",
        "best induction score",
    ]
    for figure in mechanism:
        assert any(ln.startswith(figure) for ln in lines), figure
    # ... with a table of every head's role scores.
    assert sum(ln.startswith("a") and ".h" in ln.split()[0] for ln in lines) == 16
    # The exit code says whether every target was met.
    assert result.returncode == (1 if "NOT MET" in result.stdout else 0), result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["check-model", "gpt2"], "could not"),
        (["check-model", "/no/such/dir"], "/no/such/dir"),
        (["check-model", "toy", "--seed", "1000000"], "used for training"),
    ],
)
@pytest.mark.slow  # a subprocess per case
def test_user_mistakes_give_one_line_and_a_nonzero_exit(args, message):
    result = run_cli(*args)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("acd: error:") and message in lines[0], lines


@pytest.mark.slow  # a subprocess
def test_bad_arguments_are_rejected_by_the_parser():
    result = run_cli("check-model", "--prompts", "0")
    assert result.returncode == 2 and "must be at least 1" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow  # a subprocess per command
def test_help_has_an_example_for_each_command():
    for command in ["models", "tasks", "check-model"]:
        result = run_cli(command, "--help")
        assert result.returncode == 0 and "example: acd " + command in result.stdout


# --threads: the CPU thread count of the commands that run a model (acd/threads.py).

# /proc/cpuinfo of one socket: 4 logical CPUs, 2 cores of 2 hyperthreads each.
HYPERTHREADED_CPUINFO = "\n\n".join(
    f"processor\t: {cpu}\nmodel name\t: x\nphysical id\t: 0\ncore id\t\t: {core}\ncpu cores\t: 2"
    for cpu, core in [(0, 0), (1, 1), (2, 0), (3, 1)]
)


def resolve(requested=None, env=None, cpus=(0, 1, 2, 3), cpuinfo=HYPERTHREADED_CPUINFO):
    from acd.threads import resolve_threads

    return resolve_threads(
        requested, env or {}, allowed_cpus=lambda: set(cpus), cpuinfo=lambda: cpuinfo
    )


def test_threads_default_is_the_physical_cores_the_process_may_use():
    assert resolve().n == 2  # 4 hyperthreads on 2 cores
    assert resolve(cpus=(0, 2)).n == 1  # two hyperthreads of core 0
    assert resolve(cpus=(0, 1)).n == 2
    assert resolve().header() == "threads: 2 (physical cores; set --threads or OMP_NUM_THREADS)"
    # No core ids in /proc/cpuinfo (some VMs, ARM): every allowed CPU counts.
    no_cores = "processor\t: 0\n\nprocessor\t: 1\n\nprocessor\t: 2"
    assert (resolve(cpus=(0, 1, 2), cpuinfo=no_cores).n, resolve(cpuinfo="").source) == (3, "CPUs")


def test_threads_default_is_divided_among_torchrun_processes():
    eight = "\n\n".join(f"processor : {c}\nphysical id : 0\ncore id : {c}" for c in range(8))
    cpus = range(8)
    assert resolve(env={"LOCAL_WORLD_SIZE": "1"}, cpus=cpus, cpuinfo=eight).n == 8
    four = resolve(env={"LOCAL_WORLD_SIZE": "4"}, cpus=cpus, cpuinfo=eight)
    assert (four.n, four.source) == (2, "physical cores / 4 local processes")
    assert resolve(env={"LOCAL_WORLD_SIZE": "16"}, cpus=cpus, cpuinfo=eight).n == 1


def test_threads_option_beats_acd_threads_beats_omp_num_threads():
    env = {"ACD_THREADS": "3", "OMP_NUM_THREADS": "5", "LOCAL_WORLD_SIZE": "2"}
    assert (resolve("7", env).n, resolve("7", env).source) == (7, "--threads")
    assert resolve("7", env).header() == "threads: 7 (--threads)"
    # An explicit count is per process: LOCAL_WORLD_SIZE does not divide it.
    assert (resolve(None, env).n, resolve(None, env).source) == (3, "ACD_THREADS")
    assert resolve(None, env).header() == "threads: 3 (ACD_THREADS)"
    omp = resolve(None, {"OMP_NUM_THREADS": "5", "ACD_THREADS": " "})  # empty counts as unset
    assert (omp.n, omp.source) == (5, "OMP_NUM_THREADS")
    assert resolve(None, {"OMP_NUM_THREADS": "4,2"}).n == 4  # OpenMP's nested form: the outer


@pytest.mark.parametrize("bad", ["0", "-2", "two", "1.5", ""])
def test_bad_thread_counts_are_user_mistakes(bad):
    from acd.errors import AcdError

    with pytest.raises(AcdError, match="--threads"):
        resolve(bad)
    if bad.strip():
        with pytest.raises(AcdError, match="ACD_THREADS"):
            resolve(None, {"ACD_THREADS": bad})
        with pytest.raises(AcdError, match="OMP_NUM_THREADS"):
            resolve(None, {"OMP_NUM_THREADS": bad})


def test_threads_of_this_machine_are_within_its_allowed_cpus():
    import os

    from acd.threads import resolve_threads

    choice = resolve_threads(None, {})
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert 1 <= choice.n <= allowed and choice.source in ("physical cores", "CPUs")


def test_every_command_that_runs_a_model_takes_threads_and_no_other_does():
    from acd.cli import build_parser

    parser = build_parser()
    for command in (["check-model"], ["discover", "ioi"], ["evaluate", "c.json"], ["curve", "ioi"]):
        assert parser.parse_args([*command, "--threads", "2"]).threads == "2"
        assert parser.parse_args(command).threads is None
    for command in (["render", "c.json"], ["compare", "a.json", "b.json"], ["tasks"], ["models"]):
        with pytest.raises(SystemExit):
            parser.parse_args([*command, "--threads", "2"])


def test_threads_are_set_before_the_model_loads_and_printed(monkeypatch, tmp_path, capsys):
    import torch

    import acd.models

    before = torch.get_num_threads()
    wanted = before + 1  # differs from the count this process runs with
    real_load, seen = acd.models.load_model, []

    def load_model(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real_load(*args, **kwargs)

    monkeypatch.setattr(acd.models, "load_model", load_model)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # --threads wins over the environment
    argv = ["discover", "ioi", "--method", "eap", "--prompts", "4", "--edges", "10"]
    argv += ["--out", str(tmp_path / "out"), "--quiet", "--threads", str(wanted)]
    assert main(argv) == 0
    assert seen == [wanted]
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"threads: {wanted} (--threads)" and lines[1].startswith("loading model")
    assert sum(ln.startswith("threads:") for ln in lines) == 1
    assert torch.get_num_threads() == before  # an in-process caller gets its count back


@pytest.mark.parametrize(
    ("args", "env"),
    [(["--threads", "0"], {}), (["--threads", "two"], {}), ([], {"ACD_THREADS": "-1"})],
)
def test_bad_threads_give_one_error_line_and_exit_2(args, env, tmp_path):
    import os

    result = subprocess.run(
        [sys.executable, "-m", "acd", "discover", "ioi", "--out", str(tmp_path), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("acd: error:"), lines
    assert ("--threads" if args else "ACD_THREADS") in lines[0]
    assert not any(tmp_path.iterdir())  # stopped before any work


# The library functions the command handlers call (acd/outputs.py, acd/run_checks.py,
# acd/reevaluation.py, acd/circuit_files.py): each decides one thing without printing.


def test_the_cli_package_keeps_its_entry_points():
    """``acd`` (pyproject: acd.cli:main), ``python -m acd`` and ``python -m acd.cli`` reach one
    main; the tests' model-loading seam is acd.cli._load_model_verbose."""
    import acd.cli
    from acd.cli.common import load_model_verbose

    assert callable(acd.cli.main) and callable(acd.cli.build_parser)
    assert acd.cli._load_model_verbose is load_model_verbose
    result = subprocess.run(
        [sys.executable, "-m", "acd.cli", "tasks"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0 and result.stdout.startswith("name ")


def test_a_command_loads_its_model_through_the_package_seam(monkeypatch):
    import acd.cli
    from acd.cli.common import load_command_model

    calls = []
    monkeypatch.setattr(acd.cli, "_load_model_verbose", lambda *a, **k: calls.append((a, k)))
    load_command_model("toy", "cpu", None, quiet=True)
    assert calls == [(("toy", "cpu", None), {"quiet": True})]


def test_default_output_locations_are_path_safe(tmp_path):
    from pathlib import Path

    from acd.outputs import curve_stem, default_out_dir, discover_out_dir, path_safe, render_stem

    assert default_out_dir("toy", "ioi", "eap-ig") == Path("out/toy/ioi/eap-ig")
    assert path_safe("EleutherAI/pythia-70m") == "EleutherAI--pythia-70m"  # a hub name
    model_dir = tmp_path / "my model"
    model_dir.mkdir()
    assert path_safe(str(model_dir)) == "my--model"  # a path: its folder's name
    assert path_safe("///") == "model"
    assert discover_out_dir(None, "toy", "my task", "acdc") == Path("out/toy/my--task/acdc")
    assert discover_out_dir("here", "toy", "ioi", "acdc") == Path("here")
    assert curve_stem(None, "greater-than") == Path("greater-than_curve")
    assert curve_stem("fig/gt", "greater-than") == Path("fig/gt")
    assert render_stem(None, "runs/circuit.json") == Path("runs/circuit")
    assert render_stem("fig/ioi", "runs/circuit.json") == Path("fig/ioi")


def test_a_failed_save_is_rescued_into_a_temporary_folder(tmp_path):
    from pathlib import Path

    from acd.errors import AcdError
    from acd.outputs import save_or_rescue

    class Circuit:
        """Refuses to save into ``out``; records every folder it is saved into."""

        saved: list = []

        def save(self, out_dir, *, formats, attention=None):
            if Path(out_dir) == tmp_path:
                raise OSError(28, "No space left on device")
            self.saved.append((Path(out_dir), formats))
            return "saved"

    circuit = Circuit()
    with pytest.raises(AcdError, match="No space left on device") as caught:
        save_or_rescue(circuit, tmp_path, ("svg",))
    [(rescue, formats)] = circuit.saved
    assert formats == ("svg",) and f"saved to {rescue}/ instead" in str(caught.value)
    assert rescue.name.startswith("acd-rescued-")
    rescue.rmdir()
    assert save_or_rescue(circuit, tmp_path / "elsewhere", ("png",)) == "saved"


def test_graph_size_is_checked_against_the_config():
    from acd.errors import AcdError
    from acd.graph import ComputeGraph
    from acd.run_checks import check_graph_size

    config = {"n_layers": 2, "n_heads": 2, "d_model": 8}
    n_edges = ComputeGraph.from_config(config).n_edges
    check_graph_size(config, n_edges, n_edges)  # all of them is fine
    with pytest.raises(AcdError, match=f"cannot keep {n_edges + 1} edges"):
        check_graph_size(config, n_edges + 1, None)
    with pytest.raises(AcdError, match="--candidates"):
        check_graph_size(config, None, n_edges + 1)
    check_graph_size(None, 10**9, 10**9)  # no config: discover checks on the loaded model
    check_graph_size({"unusual": True}, 10**9, None)


def test_a_model_check_refuses_training_seeds():
    from acd.errors import AcdError
    from acd.models.train_toy import TRAIN_SEED_BASE
    from acd.run_checks import check_held_out_seed

    check_held_out_seed(TRAIN_SEED_BASE - 1)
    with pytest.raises(AcdError, match="used for training"):
        check_held_out_seed(TRAIN_SEED_BASE)


def test_evaluation_task_follows_the_option_else_the_circuits_record():
    from types import SimpleNamespace

    from acd.errors import AcdError
    from acd.heldout import TaskSource
    from acd.reevaluation import evaluation_task

    def circuit(task="", source=None):
        return SimpleNamespace(task=task, task_source=source)

    task, same = evaluation_task(circuit("ioi", TaskSource("builtin", "ioi")), None, "c.json")
    assert (task.name, same) == ("ioi", True)
    task, same = evaluation_task(circuit("ioi", TaskSource("builtin", "ioi")), "induction", "c")
    assert (task.name, same) == ("induction", False)
    task, same = evaluation_task(circuit("ioi"), None, "c.json")  # an older acd's file
    assert (task.name, same) == ("ioi", True)
    # A file that records no task (EAP-IG's) counts as the same: the overlap is unchecked.
    assert evaluation_task(circuit(), "ioi", "c.json")[1] is True
    with pytest.raises(AcdError, match="c.json names no task; give --task"):
        evaluation_task(circuit(), None, "c.json")
    with pytest.raises(AcdError, match="not a shipped task"):
        evaluation_task(circuit("mine"), None, "c.json")


def test_evaluation_model_metric_and_ablation_defaults():
    from types import SimpleNamespace

    from acd.errors import AcdError
    from acd.reevaluation import evaluation_ablation, evaluation_metric, evaluation_model

    task = SimpleNamespace(metric="logit_diff")
    found = SimpleNamespace(model="toy", evaluation_metric="task", params={"ablation": "mean"})
    bare = SimpleNamespace(model="", evaluation_metric=None, params={})
    assert evaluation_model(found, None, "c.json") == "toy"
    assert evaluation_model(bare, "gpt2", "c.json") == "gpt2"
    with pytest.raises(AcdError, match="names no model"):
        evaluation_model(bare, None, "c.json")
    assert evaluation_metric(None, found, task) == "logit_diff"  # "task": the task's metric
    assert evaluation_metric("kl", found, task) == "kl"
    assert evaluation_metric(None, bare, task) == "logit_diff"
    assert evaluation_ablation(None, found) == "mean"
    assert evaluation_ablation("zero", found) == "zero"
    assert evaluation_ablation(None, bare) == "corrupted"


def test_circuits_of_different_graphs_are_refused(tmp_path):
    from types import SimpleNamespace

    from acd.circuit_files import check_comparable, load_circuit_file, same_graph
    from acd.errors import AcdError
    from acd.graph import ComputeGraph

    small = ComputeGraph.from_config({"n_layers": 1, "n_heads": 2})
    large = ComputeGraph.from_config({"n_layers": 2, "n_heads": 2})
    assert same_graph(small, ComputeGraph.from_config({"n_layers": 1, "n_heads": 2}))
    assert not same_graph(small, large)
    with pytest.raises(AcdError, match="a.json and b.json are circuits of different graphs"):
        check_comparable(
            SimpleNamespace(graph=small), SimpleNamespace(graph=large), "a.json", "b.json"
        )
    with pytest.raises(AcdError, match="no circuit file at"):
        load_circuit_file(str(tmp_path / "missing.json"))
