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
def test_user_mistakes_give_one_line_and_a_nonzero_exit(args, message):
    result = run_cli(*args)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("acd: error:") and message in lines[0], lines


def test_bad_arguments_are_rejected_by_the_parser():
    result = run_cli("check-model", "--prompts", "0")
    assert result.returncode == 2 and "must be at least 1" in result.stderr
    assert "Traceback" not in result.stderr


def test_help_has_an_example_for_each_command():
    for command in ["models", "tasks", "check-model"]:
        result = run_cli(command, "--help")
        assert result.returncode == 0 and "example: acd " + command in result.stdout
